//! Fault injection into a running environment, for tests. Works from the state folder the
//! kubelet writes (pid files, network namespace names, pod addresses) and, for volumes, the
//! API server.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;

use crate::runtime::sh;

#[derive(Subcommand)]
pub enum Fault {
    /// Kill a pod's container process (default SIGKILL); the kubelet restarts it by policy.
    Kill {
        /// namespace/pod (or pod, in namespace default)
        pod: String,
        /// Only this container (default: every container of the pod).
        #[arg(long)]
        container: Option<String>,
        #[arg(long, default_value = "KILL")]
        signal: String,
    },
    /// Empty a PersistentVolumeClaim's folder (a lost disk). With --kill, also kill the
    /// processes of every pod on this kubelet that mounts it.
    LoseVolume {
        /// namespace/claim
        claim: String,
        #[arg(long)]
        kill: bool,
    },
    /// The node reports Ready=False (its kubelet keeps its lease).
    NodeNotReady { node: String },
    /// The node's kubelet goes silent: no lease, no status, no restarts, no deletions, as if
    /// it lost the API server. Its pods keep running unless --kill-pods.
    NodeStop {
        node: String,
        #[arg(long)]
        kill_pods: bool,
    },
    /// Undo node-not-ready / node-stop.
    NodeHeal { node: String },
    /// Drop every packet between two pods (both directions), in their network namespaces.
    Partition { a: String, b: String },
    /// Undo partition between two pods, or every partition with --all.
    Heal {
        a: Option<String>,
        b: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

fn state_dir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("CONCORDANCE_K8S_DIR") {
        return Ok(PathBuf::from(d));
    }
    let active = std::fs::read_to_string("/run/concordance-k8s/active")
        .context("no running environment (set CONCORDANCE_K8S_DIR)")?;
    Ok(PathBuf::from(active.trim()))
}

fn split(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => ("default".to_string(), name.to_string()),
    }
}

/// The folder of the running incarnation of a pod.
fn pod_dir(state: &Path, pod: &str) -> Result<PathBuf> {
    let (ns, name) = split(pod);
    let prefix = format!("{ns}_{name}_");
    let mut found = Vec::new();
    for e in std::fs::read_dir(state.join("kubelet/pods"))? {
        let e = e?;
        let file = e.file_name().to_string_lossy().into_owned();
        // Pod names cannot contain '_', so the prefix is unambiguous.
        if file.starts_with(&prefix) {
            found.push((e.metadata()?.modified()?, e.path()));
        }
    }
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow!("pod {ns}/{name} is not running on this kubelet"))
}

fn signal(name: &str) -> Result<i32> {
    Ok(match name.trim_start_matches("SIG") {
        "KILL" | "9" => libc::SIGKILL,
        "TERM" | "15" => libc::SIGTERM,
        "STOP" | "19" => libc::SIGSTOP,
        "CONT" | "18" => libc::SIGCONT,
        "INT" | "2" => libc::SIGINT,
        "HUP" | "1" => libc::SIGHUP,
        other => bail!("unknown signal {other}"),
    })
}

fn kill_pod(dir: &Path, container: Option<&str>, sig: i32) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        let Some(cname) = file.strip_suffix(".pid") else {
            continue;
        };
        if container.is_some_and(|c| c != cname) {
            continue;
        }
        let pid: i32 = std::fs::read_to_string(&path)?.trim().parse()?;
        // The whole process group: the container's children too.
        if unsafe { libc::kill(-pid, sig) } == 0 || unsafe { libc::kill(pid, sig) } == 0 {
            n += 1;
        }
    }
    Ok(n)
}

async fn nft_in(netns: &str, script: &str) -> Result<()> {
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .await?;
    let status = child.wait().await?;
    if !status.success() {
        bail!("nft in {netns} failed");
    }
    Ok(())
}

const TABLE: &str = "inet concordance_partition";

/// Adds `peer` to the pod's drop set (creating the table on first use).
async fn block(netns: &str, peer: &str) -> Result<()> {
    let exists = sh(&[
        "ip",
        "netns",
        "exec",
        netns,
        "nft",
        "list",
        "table",
        "inet",
        "concordance_partition",
    ])
    .await
    .is_ok();
    if !exists {
        nft_in(
            netns,
            &format!(
                "table {TABLE} {{
  set peers {{ type ipv4_addr; }}
  chain input {{ type filter hook input priority -10; ip saddr @peers drop; }}
  chain output {{ type filter hook output priority -10; ip daddr @peers drop; }}
}}
"
            ),
        )
        .await?;
    }
    let element = format!("{{ {peer} }}");
    sh(&[
        "ip",
        "netns",
        "exec",
        netns,
        "nft",
        "add",
        "element",
        "inet",
        "concordance_partition",
        "peers",
        &element,
    ])
    .await
}

async fn unblock(netns: &str, peer: Option<&str>) -> Result<()> {
    match peer {
        Some(p) => {
            let _ = sh(&[
                "ip",
                "netns",
                "exec",
                netns,
                "nft",
                "delete",
                "element",
                "inet",
                "concordance_partition",
                "peers",
                &format!("{{ {p} }}"),
            ])
            .await;
        }
        None => {
            let _ = sh(&[
                "ip",
                "netns",
                "exec",
                netns,
                "nft",
                "delete",
                "table",
                "inet",
                "concordance_partition",
            ])
            .await;
        }
    }
    Ok(())
}

fn read(dir: &Path, file: &str) -> Result<String> {
    Ok(std::fs::read_to_string(dir.join(file))?.trim().to_string())
}

pub async fn run(fault: Fault) -> Result<()> {
    let state = state_dir()?;
    let faults = state.join("kubelet/faults");
    match fault {
        Fault::Kill {
            pod,
            container,
            signal: s,
        } => {
            let dir = pod_dir(&state, &pod)?;
            let n = kill_pod(&dir, container.as_deref(), signal(&s)?)?;
            if n == 0 {
                bail!("no running process of {pod}");
            }
            println!("signalled {n} process(es) of {pod}");
        }
        Fault::LoseVolume { claim, kill } => {
            let (ns, name) = split(&claim);
            let client = crate::client_from(&state.join("kubeconfig")).await?;
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client, &ns);
            let pvc = claims.get(&name).await?;
            let pv = pvc
                .spec
                .and_then(|s| s.volume_name)
                .ok_or_else(|| anyhow!("claim {claim} is not bound"))?;
            let dir = state.join("kubelet/volumes").join(&pv);
            for e in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
            println!("emptied {} ({claim})", dir.display());
            if kill {
                for e in std::fs::read_dir(state.join("kubelet/pods"))? {
                    let pdir = e?.path();
                    let file = pdir.file_name().unwrap().to_string_lossy().into_owned();
                    if !file.starts_with(&format!("{ns}_")) {
                        continue;
                    }
                    // Folders are <ns>_<pod>_<uid>; which claims a pod mounts is in its spec.
                    let pod_name = file[ns.len() + 1..]
                        .rsplit_once('_')
                        .map(|(name, _uid)| name.to_string())
                        .unwrap_or_default();
                    let client = crate::client_from(&state.join("kubeconfig")).await?;
                    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &ns);
                    if let Some(p) = pods.get_opt(&pod_name).await?
                        && p.spec
                            .iter()
                            .flat_map(|s| s.volumes.iter().flatten())
                            .any(|v| {
                                v.persistent_volume_claim
                                    .as_ref()
                                    .is_some_and(|c| c.claim_name == name)
                            })
                    {
                        let n = kill_pod(&pdir, None, libc::SIGKILL)?;
                        println!("killed {n} process(es) of {ns}/{pod_name}");
                    }
                }
            }
        }
        Fault::NodeNotReady { node } => {
            std::fs::write(faults.join(&node), "not-ready")?;
            println!("{node}: not ready");
        }
        Fault::NodeStop { node, kill_pods } => {
            std::fs::write(faults.join(&node), "stopped")?;
            if kill_pods {
                // Give the kubelet a moment to see the fault so it does not restart them.
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                for e in std::fs::read_dir(state.join("kubelet/pods"))? {
                    let pdir = e?.path();
                    if read(&pdir, "node").ok().as_deref() == Some(node.as_str()) {
                        kill_pod(&pdir, None, libc::SIGKILL)?;
                    }
                }
            }
            println!("{node}: stopped");
        }
        Fault::NodeHeal { node } => {
            let _ = std::fs::remove_file(faults.join(&node));
            println!("{node}: healed");
        }
        Fault::Partition { a, b } => {
            let (da, db) = (pod_dir(&state, &a)?, pod_dir(&state, &b)?);
            let (na, nb) = (read(&da, "netns")?, read(&db, "netns")?);
            let (ia, ib) = (read(&da, "ip")?, read(&db, "ip")?);
            block(&na, &ib).await?;
            block(&nb, &ia).await?;
            println!("partitioned {a} ({ia}) from {b} ({ib})");
        }
        Fault::Heal { a, b, all } => {
            if all {
                for e in std::fs::read_dir(state.join("kubelet/pods"))? {
                    if let Ok(ns) = read(&e?.path(), "netns") {
                        unblock(&ns, None).await?;
                    }
                }
                println!("healed every partition");
            } else {
                let (a, b) = (
                    a.context("two pods or --all")?,
                    b.context("two pods or --all")?,
                );
                let (da, db) = (pod_dir(&state, &a)?, pod_dir(&state, &b)?);
                unblock(&read(&da, "netns")?, Some(&read(&db, "ip")?)).await?;
                unblock(&read(&db, "netns")?, Some(&read(&da, "ip")?)).await?;
                println!("healed {a} <-> {b}");
            }
        }
    }
    Ok(())
}
