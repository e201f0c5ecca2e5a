//! One pod's lifecycle: network namespace and address, volumes, container processes with
//! restarts and probes, truthful status, graceful deletion.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, watch};

use crate::node::{NodeAgent, NodeFault};
use crate::runtime::{Mount, ProcessSpec, resolve_image};
use crate::{probe, volumes};

fn now() -> Time {
    Time(Timestamp::now())
}

struct CState {
    name: String,
    image: String,
    restart_count: i32,
    state: ContainerState,
    last_state: Option<ContainerState>,
    ready: bool,
    started: bool,
    container_id: Option<String>,
    /// Set once it will never run again (restart policy satisfied).
    finished: bool,
}

#[derive(Default)]
struct Shared {
    init: Vec<CState>,
    containers: Vec<CState>,
    pod_ip: Option<String>,
    start_time: Option<Time>,
    sandbox_ready: bool,
    initialized: bool,
    terminating: bool,
    message: Option<String>,
    /// Condition type -> (status, lastTransitionTime).
    transitions: HashMap<String, (String, Time)>,
}

/// The last 80 lines (at most 2 KiB) of a container's log, as Kubernetes keeps them.
fn log_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
    let start = tail.len().saturating_sub(2048);
    let start = (start..=tail.len()).find(|i| tail.is_char_boundary(*i))?;
    Some(tail[start..].to_string()).filter(|t| !t.is_empty())
}

/// What a container left at its termination-message path, as Kubernetes keeps it (4 KiB).
fn termination_message(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
    Some(text).filter(|t| !t.is_empty())
}

/// A fresh, empty file for one run of a container to leave its termination message in,
/// bound at its `terminationMessagePath`; writable by any user, as the kubelet makes it.
fn termination_file(pod_dir: &Path, c: &Container, restarts: i32) -> Result<Mount> {
    use std::os::unix::fs::PermissionsExt;
    let dir = pod_dir.join("termination");
    std::fs::create_dir_all(&dir)?;
    let source = dir.join(format!("{}-{restarts}", c.name));
    std::fs::write(&source, b"")?;
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o666))?;
    let target = c
        .termination_message_path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/dev/termination-log".into());
    Ok(Mount {
        source,
        target: PathBuf::from(target),
        read_only: false,
    })
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

type SharedRef = Arc<Mutex<Shared>>;

/// Everything a container loop needs.
#[derive(Clone)]
struct PodCtx {
    node: Arc<NodeAgent>,
    pod: Pod,
    shared: SharedRef,
    changed: Arc<Notify>,
    stop: watch::Receiver<Option<i64>>,
    pod_dir: PathBuf,
    netns: String,
    ip: String,
    volumes: Arc<HashMap<String, PathBuf>>,
}

pub struct PodWorker {
    node: Arc<NodeAgent>,
    rx: watch::Receiver<Option<Pod>>,
}

impl PodWorker {
    pub fn new(node: Arc<NodeAgent>, rx: watch::Receiver<Option<Pod>>) -> Self {
        PodWorker { node, rx }
    }

    fn client(&self) -> Client {
        self.node.client.clone()
    }

    pub async fn run(mut self) {
        let Some(pod) = self.rx.borrow().clone() else {
            return;
        };
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            self.finish_deletion(&pod).await;
            return;
        }
        if phase == "Succeeded" || phase == "Failed" {
            // Finished before this kubelet started; only its deletion is left to do.
            self.wait_deleted_then_finish().await;
            return;
        }
        if let Err(e) = self.run_pod(pod).await {
            tracing::error!(pod = %key, "{e:#}");
        }
    }

    async fn wait_deleted_then_finish(&mut self) {
        loop {
            let pod = self.rx.borrow_and_update().clone();
            match pod {
                None => return,
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    self.finish_deletion(&p).await;
                    return;
                }
                Some(_) => {}
            }
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The final delete a kubelet issues once the pod's processes are gone.
    async fn finish_deletion(&self, pod: &Pod) {
        let api: Api<Pod> = Api::namespaced(self.client(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        if let Err(e) = api.delete(&pod.name_any(), &dp).await {
            tracing::debug!(pod = %pod.name_any(), "final delete: {e}");
        }
    }

    async fn wait_not_stopped(node: &NodeAgent) {
        let mut rx = node.fault.subscribe();
        while *rx.borrow_and_update() == NodeFault::Stopped {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn run_pod(&mut self, pod: Pod) -> Result<()> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().context("pod without spec")?;
        let args = self.node.args.clone();

        // The node's pod CIDR comes from kube-controller-manager's IPAM.
        let mut cidr_rx = self.node.pod_cidr.subscribe();
        let cidr = loop {
            if let Some(c) = cidr_rx.borrow_and_update().clone() {
                break c;
            }
            tokio::select! {
                _ = cidr_rx.changed() => {}
                _ = self.rx.changed() => {
                    if self.deleted_or_deleting() { return Ok(()); }
                }
            }
        };
        let runtime = self.node.runtime.clone();
        let ip = runtime.allocate_ip(&cidr)?;
        let netns = format!("{}{}", args.netns_prefix, &uid);
        let pod_dir = args
            .kubelet_dir()
            .join("pods")
            .join(format!("{ns}_{name}_{uid}"));
        std::fs::create_dir_all(&pod_dir)?;
        std::fs::write(pod_dir.join("netns"), &netns)?;
        std::fs::write(pod_dir.join("ip"), &ip)?;
        std::fs::write(pod_dir.join("node"), &self.node.name)?;

        let shared: SharedRef = Arc::new(Mutex::new(Shared::default()));
        {
            let mut s = shared.lock().unwrap();
            let mk = |c: &Container| CState {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                restart_count: 0,
                state: waiting("ContainerCreating", None),
                last_state: None,
                ready: false,
                started: false,
                container_id: None,
                finished: false,
            };
            s.init = spec.init_containers.iter().flatten().map(mk).collect();
            for c in &mut s.init {
                c.state = waiting("PodInitializing", None);
            }
            s.containers = spec.containers.iter().map(mk).collect();
            s.start_time = Some(now());
            s.initialized = s.init.is_empty();
        }
        let changed = Arc::new(Notify::new());
        let status_task = tokio::spawn(status_loop(
            self.node.clone(),
            pod.clone(),
            shared.clone(),
            changed.clone(),
        ));
        changed.notify_one();

        let result = self
            .run_sandbox(&pod, &shared, &changed, &netns, &ip, &pod_dir)
            .await;
        if let Err(e) = &result {
            tracing::error!(pod = %name, "{e:#}");
        }
        // Teardown: processes are gone; the namespace and the pod's own folders go too.
        runtime.delete_netns(&netns).await;
        runtime.release_ip(&ip);
        // Pid files go now; the folder (logs, emptyDirs) stays until the pod is deleted.
        for c in pod.spec.iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        }) {
            let _ = std::fs::remove_file(pod_dir.join(format!("{}.pid", c.name)));
        }
        changed.notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        status_task.abort();
        if self.deleted_or_deleting() {
            Self::wait_not_stopped(&self.node).await;
            // One last truthful status, then the final delete.
            let latest = self.rx.borrow().clone();
            if let Some(p) = latest {
                push_status(&self.node, &p, &shared).await.ok();
                self.finish_deletion(&p).await;
            }
        } else {
            push_status(&self.node, &pod, &shared).await.ok();
            self.wait_deleted_then_finish().await;
        }
        let _ = std::fs::remove_dir_all(&pod_dir);
        Ok(())
    }

    fn deleted_or_deleting(&self) -> bool {
        match &*self.rx.borrow() {
            None => true,
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Grace period of the pending deletion: the API's deletionGracePeriodSeconds (0 when the
    /// pod was removed outright).
    fn deletion_grace(&self) -> Option<i64> {
        match &*self.rx.borrow() {
            None => Some(0),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Some(
                p.metadata
                    .deletion_grace_period_seconds
                    .or(p
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(30),
            ),
            Some(_) => None,
        }
    }

    async fn run_sandbox(
        &mut self,
        pod: &Pod,
        shared: &SharedRef,
        changed: &Arc<Notify>,
        netns: &str,
        ip: &str,
        pod_dir: &Path,
    ) -> Result<()> {
        let args = self.node.args.clone();
        let spec = pod.spec.clone().unwrap_or_default();
        let runtime = self.node.runtime.clone();
        runtime.create_netns(netns, ip).await?;
        {
            let mut s = shared.lock().unwrap();
            s.sandbox_ready = true;
            s.pod_ip = Some(ip.to_string());
        }
        changed.notify_one();

        // DNS and host files, as a real kubelet writes them.
        let ns = pod.namespace().unwrap_or_default();
        let hostname = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
        let hostname: String = hostname.chars().take(63).collect();
        let domain = &args.cluster_domain;
        let resolv = if spec.dns_policy.as_deref() == Some("Default") {
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        } else {
            format!(
                "search {ns}.svc.{domain} svc.{domain} {domain}\nnameserver {}\noptions ndots:5\n",
                args.cluster_dns
            )
        };
        std::fs::write(pod_dir.join("resolv.conf"), resolv)?;
        let fqdn = match &spec.subdomain {
            Some(sub) => format!("{hostname}.{sub}.{ns}.svc.{domain} {hostname}"),
            None => hostname.clone(),
        };
        std::fs::write(
            pod_dir.join("hosts"),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{fqdn}\n"
            ),
        )?;
        std::fs::write(pod_dir.join("hostname"), format!("{hostname}\n"))?;

        // Volumes: retried until they can be prepared (a claim not yet bound, a Secret not
        // yet created), as a real kubelet does.
        let vols = loop {
            match volumes::prepare(&self.node.client, pod, pod_dir, ip, &args.gateway).await {
                Ok(v) => break v,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::info!(pod = %pod.name_any(), "volumes not ready: {msg}");
                    {
                        let mut s = shared.lock().unwrap();
                        let s = &mut *s;
                        for c in s.containers.iter_mut().chain(s.init.iter_mut()) {
                            c.state = waiting("ContainerCreating", Some(msg.clone()));
                        }
                    }
                    changed.notify_one();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = self.rx.changed() => {}
                    }
                    if self.deleted_or_deleting() {
                        return Ok(());
                    }
                }
            }
        };

        let (stop_tx, stop_rx) = watch::channel(None);
        let ctx = PodCtx {
            node: self.node.clone(),
            pod: pod.clone(),
            shared: shared.clone(),
            changed: changed.clone(),
            stop: stop_rx,
            pod_dir: pod_dir.to_path_buf(),
            netns: netns.to_string(),
            ip: ip.to_string(),
            volumes: Arc::new(vols),
        };

        // Init containers, one at a time, each to success.
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            let mut task = tokio::spawn(container_loop(ctx.clone(), c.clone(), i, true));
            loop {
                tokio::select! {
                    res = &mut task => {
                        if !res.unwrap_or(false) {
                            // Failed for good (restartPolicy Never) or stopped.
                            return self.wait_for_deletion(&stop_tx).await;
                        }
                        break;
                    }
                    _ = self.rx.changed() => {
                        if let Some(g) = self.deletion_grace() {
                            stop_tx.send_replace(Some(g));
                        }
                    }
                }
            }
        }
        shared.lock().unwrap().initialized = true;
        changed.notify_one();

        let mut tasks = tokio::task::JoinSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            tasks.spawn(container_loop(ctx.clone(), c.clone(), i, false));
        }
        loop {
            tokio::select! {
                res = tasks.join_next() => {
                    if res.is_none() {
                        // Every container finished for good: the pod is complete.
                        break;
                    }
                }
                _ = self.rx.changed() => {
                    if let Some(g) = self.deletion_grace() {
                        Self::wait_not_stopped(&self.node).await;
                        shared.lock().unwrap().terminating = true;
                        changed.notify_one();
                        stop_tx.send_replace(Some(g));
                    }
                }
            }
        }
        Ok(())
    }

    async fn wait_for_deletion(&mut self, _stop: &watch::Sender<Option<i64>>) -> Result<()> {
        while !self.deleted_or_deleting() {
            if self.rx.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// Expands $(VAR) references as Kubernetes does: `$$` escapes, unknown names stay as is.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

async fn container_env(ctx: &PodCtx, c: &Container) -> Result<BTreeMap<String, String>> {
    let args = &ctx.node.args;
    let client = &ctx.node.client;
    let ns = ctx.pod.namespace().unwrap_or_default();
    let hostname = std::fs::read_to_string(ctx.pod_dir.join("hostname")).unwrap_or_default();
    let (host, port) = (&args.api_service_host, args.api_service_port);
    let mut env = BTreeMap::from([
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOSTNAME".into(), hostname.trim().to_string()),
        ("HOME".into(), "/root".into()),
        ("KUBERNETES_SERVICE_HOST".into(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}")),
        (
            format!("KUBERNETES_PORT_{port}_TCP"),
            format!("tcp://{host}:{port}"),
        ),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
    ]);
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(s) = &from.secret_ref {
            match volumes::env_from_secret(client, &ns, &s.name).await? {
                Some(d) => d,
                None if s.optional == Some(true) => continue,
                None => return Err(anyhow!("secret \"{}\" not found", s.name)),
            }
        } else if let Some(cm) = &from.config_map_ref {
            match volumes::env_from_configmap(client, &ns, &cm.name).await? {
                Some(d) => d,
                None if cm.optional == Some(true) => continue,
                None => return Err(anyhow!("configmap \"{}\" not found", cm.name)),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            env.insert(format!("{prefix}{k}"), v);
        }
    }
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            expand(v, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(s) = &from.secret_key_ref {
                match volumes::secret_key(client, &ns, &s.name, &s.key).await? {
                    Some(v) => v,
                    None if s.optional == Some(true) => continue,
                    None => {
                        return Err(anyhow!("secret \"{}\" key \"{}\" not found", s.name, s.key));
                    }
                }
            } else if let Some(cm) = &from.config_map_key_ref {
                match volumes::configmap_key(client, &ns, &cm.name, &cm.key).await? {
                    Some(v) => v,
                    None if cm.optional == Some(true) => continue,
                    None => {
                        return Err(anyhow!(
                            "configmap \"{}\" key \"{}\" not found",
                            cm.name,
                            cm.key
                        ));
                    }
                }
            } else if let Some(f) = &from.field_ref {
                volumes::field_ref(&ctx.pod, f, &ctx.ip, &args.gateway)?
            } else if let Some(r) = &from.resource_field_ref {
                // Limits are not enforced; report the declared value, or 0.
                let res = c.resources.as_ref();
                let q = res
                    .and_then(|r| r.limits.as_ref())
                    .or(res.and_then(|r| r.requests.as_ref()))
                    .and_then(|m| {
                        m.get(
                            r.resource
                                .trim_start_matches("limits.")
                                .trim_start_matches("requests."),
                        )
                    });
                q.map(|q| q.0.clone()).unwrap_or_else(|| "0".into())
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

fn container_mounts(ctx: &PodCtx, c: &Container) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let mut source = ctx
            .volumes
            .get(&vm.name)
            .cloned()
            .ok_or_else(|| anyhow!("volume mount {}: no such volume", vm.name))?;
        if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            source = source.join(sub);
            if !source.exists() {
                std::fs::create_dir_all(&source)?;
            }
        }
        mounts.push(Mount {
            source,
            target: PathBuf::from(&vm.mount_path),
            read_only: vm.read_only.unwrap_or(false),
        });
    }
    for f in ["resolv.conf", "hosts", "hostname"] {
        mounts.push(Mount {
            source: ctx.pod_dir.join(f),
            target: PathBuf::from("/etc").join(f),
            read_only: false,
        });
    }
    Ok(mounts)
}

fn set_state(ctx: &PodCtx, idx: usize, init: bool, f: impl FnOnce(&mut CState)) {
    {
        let mut s = ctx.shared.lock().unwrap();
        let list = if init { &mut s.init } else { &mut s.containers };
        f(&mut list[idx]);
    }
    ctx.changed.notify_one();
}

enum Outcome {
    Exited(std::process::ExitStatus),
    LivenessFailed(String),
    Stop(i64),
}

/// Runs one container until it is finished for good (true: it succeeded) or the pod stops.
async fn container_loop(mut ctx: PodCtx, c: Container, idx: usize, init: bool) -> bool {
    let args = ctx.node.args.clone();
    let policy = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let log_dir = ctx.pod_dir.join("logs");
    let _ = std::fs::create_dir_all(&log_dir);
    let pid_file = ctx.pod_dir.join(format!("{}.pid", c.name));
    let image = c.image.clone().unwrap_or_default();
    let mut backoff = Duration::from_secs(args.backoff);
    let mut restarts = 0;
    loop {
        PodWorker::wait_not_stopped(&ctx.node).await;
        if ctx.stop.borrow().is_some() {
            return false;
        }
        // Resolve everything first so a configuration error is reported as the kubelet would.
        let prepared: Result<ProcessSpec, (&str, String)> = async {
            let env = container_env(&ctx, &c)
                .await
                .map_err(|e| ("CreateContainerConfigError", format!("{e:#}")))?;
            let mut mounts = container_mounts(&ctx, &c)
                .map_err(|e| ("CreateContainerError", format!("{e:#}")))?;
            mounts.push(
                termination_file(&ctx.pod_dir, &c, restarts)
                    .map_err(|e| ("CreateContainerError", format!("{e:#}")))?,
            );
            let mut argv: Vec<String> = Vec::new();
            match c.command.as_ref().filter(|v| !v.is_empty()) {
                Some(cmd) => {
                    let first = expand(&cmd[0], &env);
                    // A command naming a host program runs it; otherwise it names the image's
                    // own entrypoint.
                    if first.starts_with('/') && Path::new(&first).is_file() {
                        argv.push(first);
                    } else {
                        argv.push(image_binary(&args.state_dir, &image)?);
                    }
                    argv.extend(cmd[1..].iter().map(|a| expand(a, &env)));
                }
                None => argv.push(image_binary(&args.state_dir, &image)?),
            }
            argv.extend(c.args.iter().flatten().map(|a| expand(a, &env)));
            let hostname =
                std::fs::read_to_string(ctx.pod_dir.join("hostname")).unwrap_or_default();
            Ok(ProcessSpec {
                argv,
                env,
                workdir: c.working_dir.clone().filter(|w| Path::new(w).is_dir()),
                netns: ctx.netns.clone(),
                hostname: hostname.trim().to_string(),
                mounts,
                log: log_dir.join(format!("{}-{restarts}.log", c.name)),
            })
        }
        .await;
        let spawned = prepared.and_then(|spec| {
            ctx.node
                .runtime
                .spawn(&spec)
                .map_err(|e| ("RunContainerError", format!("{e:#}")))
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err((reason, msg)) => {
                tracing::warn!(pod = %ctx.pod.name_any(), container = %c.name, "{reason}: {msg}");
                set_state(&ctx, idx, init, |s| s.state = waiting(reason, Some(msg)));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = ctx.stop.changed() => {}
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or(0) as i32;
        let _ = std::fs::write(&pid_file, pid.to_string());
        let started_at = now();
        let has_startup = c.startup_probe.is_some();
        let has_readiness = c.readiness_probe.is_some();
        set_state(&ctx, idx, init, |s| {
            s.state = ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..Default::default()
            };
            s.container_id = Some(format!("process://{pid}"));
            s.started = !has_startup;
            s.ready = !has_readiness && !init;
        });
        tracing::info!(pod = %ctx.pod.name_any(), container = %c.name, pid, "started");

        let probes = probe_loop(ctx.clone(), c.clone(), idx, init);
        let outcome = tokio::select! {
            status = child.wait() => Outcome::Exited(status.unwrap_or_else(|_| std::process::ExitStatus::from_raw(255 << 8))),
            reason = probes => Outcome::LivenessFailed(reason),
            grace = async {
                loop {
                    if let Some(g) = *ctx.stop.borrow_and_update() { return g; }
                    if ctx.stop.changed().await.is_err() { return 0; }
                }
            } => Outcome::Stop(grace),
        };
        let grace = match &outcome {
            Outcome::Stop(g) => *g,
            _ => c_grace(&ctx.pod),
        };
        let status = match outcome {
            Outcome::Exited(s) => s,
            Outcome::LivenessFailed(ref why) => {
                tracing::info!(pod = %ctx.pod.name_any(), container = %c.name, "liveness failed: {why}; restarting");
                terminate(&mut child, pid, grace).await
            }
            Outcome::Stop(_) => terminate(&mut child, pid, grace).await,
        };
        // Whatever it left behind in its process group goes with it.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        ctx.node.runtime.forget_process(pid);
        let _ = std::fs::remove_file(&pid_file);
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        // As a kubelet does: what the container left at its termination-message path, else,
        // for `FallbackToLogsOnError`, the log's tail explains a failure.
        let left = termination_message(
            &ctx.pod_dir
                .join("termination")
                .join(format!("{}-{restarts}", c.name)),
        );
        let message = left.or_else(|| {
            (code != 0 && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"))
                .then(|| log_tail(&log_dir.join(format!("{}-{restarts}.log", c.name))))
                .flatten()
        });
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                signal: status.signal(),
                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                started_at: Some(started_at.clone()),
                finished_at: Some(now()),
                container_id: Some(format!("process://{pid}")),
                message,
            }),
            ..Default::default()
        };
        tracing::info!(pod = %ctx.pod.name_any(), container = %c.name, code, "exited");
        let stopping = ctx.stop.borrow().is_some();
        let restart = !stopping
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => !init || code != 0,
            };
        if !restart {
            set_state(&ctx, idx, init, |s| {
                s.state = terminated;
                s.ready = false;
                s.finished = true;
            });
            return code == 0 && !stopping;
        }
        // A long run resets the back-off, as in Kubernetes (which waits 10 minutes).
        let ran = Timestamp::now().duration_since(started_at.0).as_secs();
        if ran >= 60 {
            backoff = Duration::from_secs(args.backoff);
        }
        restarts += 1;
        set_state(&ctx, idx, init, |s| {
            s.last_state = Some(terminated);
            s.state = waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container",
                    backoff.as_secs()
                )),
            );
            s.ready = false;
            s.started = false;
            s.restart_count += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = ctx.stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(args.max_backoff));
    }
}

fn image_binary(state_dir: &Path, image: &str) -> Result<String, (&'static str, String)> {
    resolve_image(&state_dir.join("images"), image)
        .map(|p| p.display().to_string())
        .map_err(|e| ("ErrImagePull", format!("{e:#}")))
}

fn c_grace(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

/// SIGTERM, then SIGKILL after `grace` seconds.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: i32,
    grace: i64,
) -> std::process::ExitStatus {
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let grace = Duration::from_secs(grace.max(0) as u64);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            child
                .wait()
                .await
                .unwrap_or_else(|_| std::process::ExitStatus::from_raw(9))
        }
    }
}

/// Runs the container's probes; returns only when liveness (or startup) fails for good.
async fn probe_loop(ctx: PodCtx, c: Container, idx: usize, init: bool) -> String {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .build()
        .expect("HTTP client");
    if let Some(p) = &c.startup_probe {
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0) as u64
        ))
        .await;
        let mut failures = 0;
        loop {
            match probe::check(&http, &c, p, &ctx.ip).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if failures >= p.failure_threshold.unwrap_or(3) {
                        return format!("startup probe: {e:#}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(p.period_seconds.unwrap_or(10) as u64)).await;
        }
        set_state(&ctx, idx, init, |s| s.started = true);
    }
    let period = |p: &k8s_openapi::api::core::v1::Probe| {
        Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64)
    };
    let started = tokio::time::Instant::now();
    let mut next_ready = c
        .readiness_probe
        .as_ref()
        .map(|p| started + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0) as u64));
    let mut next_live = c
        .liveness_probe
        .as_ref()
        .map(|p| started + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0) as u64));
    let (mut r_ok, mut r_fail, mut l_fail) = (0, 0, 0);
    loop {
        let next = [next_ready, next_live].into_iter().flatten().min();
        let Some(next) = next else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(next).await;
        let now_i = tokio::time::Instant::now();
        if let (Some(t), Some(p)) = (next_ready, &c.readiness_probe)
            && t <= now_i
        {
            match probe::check(&http, &c, p, &ctx.ip).await {
                Ok(()) => {
                    r_ok += 1;
                    r_fail = 0;
                    if r_ok >= p.success_threshold.unwrap_or(1) {
                        set_state(&ctx, idx, init, |s| s.ready = true);
                    }
                }
                Err(e) => {
                    r_ok = 0;
                    r_fail += 1;
                    if r_fail >= p.failure_threshold.unwrap_or(3) {
                        tracing::debug!(container = %c.name, "readiness: {e:#}");
                        set_state(&ctx, idx, init, |s| s.ready = false);
                    }
                }
            }
            next_ready = Some(now_i + period(p));
        }
        if let (Some(t), Some(p)) = (next_live, &c.liveness_probe)
            && t <= now_i
        {
            match probe::check(&http, &c, p, &ctx.ip).await {
                Ok(()) => l_fail = 0,
                Err(e) => {
                    l_fail += 1;
                    if l_fail >= p.failure_threshold.unwrap_or(3) {
                        return format!("liveness probe: {e:#}");
                    }
                }
            }
            next_live = Some(now_i + period(p));
        }
    }
}

fn build_status(shared: &mut Shared, node_ip: &str) -> PodStatus {
    let cs = |c: &CState| ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: format!("process://{}", c.image),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(c.state.clone()),
        last_state: c.last_state.clone(),
        ..Default::default()
    };
    let containers: Vec<ContainerStatus> = shared.containers.iter().map(cs).collect();
    let init: Vec<ContainerStatus> = shared.init.iter().map(cs).collect();
    let all_finished = shared.containers.iter().all(|c| c.finished);
    let any_failed = shared.containers.iter().chain(shared.init.iter()).any(|c| {
        c.finished
            && c.state
                .terminated
                .as_ref()
                .is_some_and(|t| t.exit_code != 0)
    });
    let init_failed = shared.init.iter().any(|c| {
        c.finished
            && c.state
                .terminated
                .as_ref()
                .is_some_and(|t| t.exit_code != 0)
    });
    let any_started = shared
        .containers
        .iter()
        .any(|c| c.state.waiting.is_none() || c.restart_count > 0);
    let phase = if init_failed || (all_finished && any_failed) {
        "Failed"
    } else if all_finished && !shared.terminating {
        "Succeeded"
    } else if any_started {
        "Running"
    } else {
        "Pending"
    };
    let ready = !shared.terminating
        && !shared.containers.is_empty()
        && shared.containers.iter().all(|c| c.ready);
    let mut conds = Vec::new();
    for (t, v) in [
        ("PodReadyToStartContainers", shared.sandbox_ready),
        ("Initialized", shared.initialized),
        ("ContainersReady", ready),
        ("Ready", ready),
    ] {
        let status = if v { "True" } else { "False" }.to_string();
        let entry = shared
            .transitions
            .entry(t.to_string())
            .or_insert_with(|| (status.clone(), now()));
        if entry.0 != status {
            *entry = (status.clone(), now());
        }
        conds.push(PodCondition {
            type_: t.into(),
            status,
            last_transition_time: Some(entry.1.clone()),
            reason: (!v && (t == "Ready" || t == "ContainersReady"))
                .then(|| "ContainersNotReady".into()),
            ..Default::default()
        });
    }
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conds),
        host_ip: Some(node_ip.into()),
        host_ips: Some(vec![HostIP { ip: node_ip.into() }]),
        pod_ip: shared.pod_ip.clone(),
        pod_ips: shared.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: shared.start_time.clone(),
        container_statuses: Some(containers),
        init_container_statuses: (!init.is_empty()).then_some(init),
        message: shared.message.clone(),
        ..Default::default()
    }
}

async fn push_status(node: &NodeAgent, pod: &Pod, shared: &SharedRef) -> Result<()> {
    let status = build_status(&mut shared.lock().unwrap(), &node.args.gateway);
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    Ok(())
}

/// Patches the pod status whenever something changed (coalesced), plus every 30s.
async fn status_loop(node: Arc<NodeAgent>, pod: Pod, shared: SharedRef, changed: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        PodWorker::wait_not_stopped(&node).await;
        if let Err(e) = push_status(&node, &pod, &shared).await {
            tracing::debug!(pod = %pod.name_any(), "status: {e:#}");
            changed.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
