//! The "container runtime": network namespaces with a veth on the host bridge, and container
//! processes started inside them with a private mount and UTS namespace.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use crate::RunArgs;

/// A bind mount into a container's mount namespace.
#[derive(Clone, Debug)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// What a container process needs to start.
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub netns: String,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    pub log: PathBuf,
}

pub struct Runtime {
    pub args: Arc<RunArgs>,
    /// Pod IPs in use, per node CIDR prefix (e.g. "10.244.1.").
    ips: Mutex<HashSet<String>>,
    /// Process groups of running containers, stopped on shutdown.
    pgids: Mutex<HashSet<i32>>,
    netns: Mutex<HashSet<String>>,
    created_dirs: Mutex<()>,
}

impl Runtime {
    pub fn new(args: Arc<RunArgs>) -> Self {
        Runtime {
            args,
            ips: Mutex::default(),
            pgids: Mutex::default(),
            netns: Mutex::default(),
            created_dirs: Mutex::default(),
        }
    }

    /// Picks a free address in the node's pod CIDR (a /24; .0, .1 and .255 are never used:
    /// .1 may be the bridge's own address).
    pub fn allocate_ip(&self, pod_cidr: &str) -> Result<String> {
        let (net, len) = pod_cidr
            .split_once('/')
            .context("pod CIDR without a length")?;
        if len != "24" {
            bail!("pod CIDR {pod_cidr} is not a /24");
        }
        let prefix = net.rsplit_once('.').context("not an IPv4 CIDR")?.0;
        let mut ips = self.ips.lock().unwrap();
        for host in 2..255 {
            let ip = format!("{prefix}.{host}");
            if ips.insert(ip.clone()) {
                return Ok(ip);
            }
        }
        bail!("no free address in {pod_cidr}")
    }

    pub fn release_ip(&self, ip: &str) {
        self.ips.lock().unwrap().remove(ip);
    }

    /// Creates network namespace `name` with eth0 = `ip`/16 on the host bridge, default route
    /// via the bridge address.
    pub async fn create_netns(&self, name: &str, ip: &str) -> Result<()> {
        // Host-side veth names are limited to 15 bytes; derive one from the namespace name.
        let host_if = veth_name(name);
        let _ = sh(&["ip", "netns", "delete", name]).await;
        let _ = sh(&["ip", "link", "delete", &host_if]).await;
        self.netns.lock().unwrap().insert(name.to_string());
        sh(&["ip", "netns", "add", name]).await?;
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ])
        .await?;
        sh(&[
            "ip",
            "link",
            "set",
            &host_if,
            "master",
            &self.args.bridge,
            "up",
        ])
        .await?;
        let cidr = format!("{ip}/16");
        let gw = self.args.gateway.clone();
        for cmd in [
            vec!["ip", "addr", "add", &cidr, "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "route", "add", "default", "via", &gw],
        ] {
            let mut full = vec!["ip", "netns", "exec", name];
            full.extend(cmd);
            sh(&full).await?;
        }
        Ok(())
    }

    pub async fn delete_netns(&self, name: &str) {
        // Processes left in the namespace (e.g. children of a killed container) go too.
        if let Ok(out) = tokio::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .await
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = sh(&["ip", "netns", "delete", name]).await;
        let _ = sh(&["ip", "link", "delete", &veth_name(name)]).await;
        self.netns.lock().unwrap().remove(name);
    }

    /// Creates `dir` (and missing parents) on the host, recording the topmost folder created
    /// so `down` can remove it: mount targets must exist on the host to bind over them.
    pub fn ensure_host_dir(&self, dir: &Path) -> Result<()> {
        let _guard = self.created_dirs.lock().unwrap();
        let mut missing = dir.to_path_buf();
        let mut topmost = None;
        while !missing.exists() {
            topmost = Some(missing.clone());
            match missing.parent() {
                Some(p) => missing = p.to_path_buf(),
                None => break,
            }
        }
        if let Some(top) = topmost {
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.args.kubelet_dir().join("created-dirs"))?;
            writeln!(f, "{}", top.display())?;
            // Parents between top and dir are removed by rmdir of each level in down.
            let mut p = dir.to_path_buf();
            while p != top {
                writeln!(f, "{}", p.display())?;
                p = p.parent().unwrap().to_path_buf();
            }
        }
        Ok(())
    }

    /// Starts a container process: joins the pod's network namespace, gets private mount and
    /// UTS namespaces with the pod's volumes bound in, and its own session (so a signal to
    /// its process group reaches its children too).
    pub fn spawn(&self, spec: &ProcessSpec) -> Result<tokio::process::Child> {
        for m in &spec.mounts {
            if m.source.is_dir() {
                self.ensure_host_dir(&m.target)?;
            } else if !m.target.exists() {
                if let Some(parent) = m.target.parent() {
                    self.ensure_host_dir(parent)?;
                }
                std::fs::File::create(&m.target)?;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.args.kubelet_dir().join("created-files"))?;
                writeln!(f, "{}", m.target.display())?;
            }
        }
        let netns = std::fs::File::open(format!("/run/netns/{}", spec.netns))
            .with_context(|| format!("network namespace {}", spec.netns))?;
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let mounts: Vec<(CString, CString, bool)> = spec
            .mounts
            .iter()
            .map(|m| (cstr(&m.source), cstr(&m.target), m.read_only))
            .collect();
        let hostname = spec.hostname.clone().into_bytes();
        let root = CString::new("/").unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)?;

        let program = &spec.argv[0];
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir(spec.workdir.as_deref().unwrap_or("/"));
        let netns_fd = netns.as_raw_fd();
        unsafe {
            cmd.pre_exec(move || {
                // Only async-signal-safe calls here: we are in the forked child.
                let check = |r: libc::c_int| {
                    if r < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                check(libc::setsid())?;
                check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
                check(libc::sethostname(
                    hostname.as_ptr() as *const libc::c_char,
                    hostname.len(),
                ))?;
                // Our mounts must not propagate back to the host.
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (src, dst, ro) in &mounts {
                    check(libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    if *ro {
                        check(libc::mount(
                            std::ptr::null(),
                            dst.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ))?;
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
        drop(netns);
        if let Some(pid) = child.id() {
            self.pgids.lock().unwrap().insert(pid as i32);
        }
        Ok(child)
    }

    pub fn forget_process(&self, pid: i32) {
        self.pgids.lock().unwrap().remove(&pid);
    }

    /// Stops every container and network namespace (the kubelet is going away).
    pub async fn shutdown(&self) {
        let pgids: Vec<i32> = self.pgids.lock().unwrap().iter().copied().collect();
        for pg in &pgids {
            unsafe { libc::kill(-pg, libc::SIGTERM) };
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline && pgids.iter().any(|pg| process_alive(*pg)) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for pg in &pgids {
            unsafe { libc::kill(-pg, libc::SIGKILL) };
        }
        let names: Vec<String> = self.netns.lock().unwrap().iter().cloned().collect();
        for n in names {
            self.delete_netns(&n).await;
        }
    }
}

/// True while `pid` runs; a zombie (exited, not yet reaped) counts as gone.
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

pub fn veth_name(netns: &str) -> String {
    let mut h: u32 = 2166136261;
    for b in netns.bytes() {
        h = (h ^ b as u32).wrapping_mul(16777619);
    }
    format!("vcc{h:08x}")
}

/// Runs a command, failing with its stderr.
pub async fn sh(argv: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .await
        .with_context(|| format!("running {}", argv[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Image name -> binary, from the `images` file: lines `name[:tag] path`; an exact
/// `name:tag` wins over a tag-less `name`. Read at every start so tests can add builds.
pub fn resolve_image(images_file: &Path, image: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(images_file)
        .with_context(|| format!("reading {}", images_file.display()))?;
    let map: HashMap<&str, &str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    // Registry and repository prefixes do not matter here: `ghcr.io/x/concordance:1` is
    // `concordance:1`.
    let short = image.rsplit('/').next().unwrap_or(image);
    let (name, tag) = match short.split_once(':') {
        Some((n, t)) => (n, t),
        None => (short, "latest"),
    };
    for key in [image.to_string(), format!("{name}:{tag}"), name.to_string()] {
        if let Some(path) = map.get(key.as_str()) {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!(
                    "image {image} maps to {}, which does not exist",
                    path.display()
                );
            }
            return Ok(path);
        }
    }
    bail!("image {image} is not in {}", images_file.display())
}
