//! A local single-node Concordance run as a child process, for development and tests:
//!
//! ```no_run
//! # async fn demo() -> Result<(), concordance_client::Error> {
//! use concordance_client::dev::{LocalNode, LocalNodeOptions};
//! let node = LocalNode::spawn(LocalNodeOptions::default()).await?;
//! node.client().put("hello", &serde_json::json!("world")).await?;
//! node.shutdown().await?; // or drop it: the child is killed
//! # Ok(()) }
//! ```

use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use crate::client::Client;
use crate::client::RetryPolicy;
use crate::error::Error;

/// Environment variable naming the `concordance` binary.
pub const BIN_ENV: &str = "CONCORDANCE_BIN";

/// How to start the node. Every field has a default.
#[derive(Debug, Clone)]
pub struct LocalNodeOptions {
    /// The `concordance` binary; default: `$CONCORDANCE_BIN`, else `concordance` on `PATH`.
    pub binary: Option<PathBuf>,
    /// Where the node keeps its data; default: a temporary folder removed on drop.
    pub data_dir: Option<PathBuf>,
    /// Loopback port to serve on; default: a free one.
    pub port: Option<u16>,
    pub node_id: String,
    /// Admin key the node requires (and the returned client sends); default: none (a loopback
    /// node without keys serves anyone on this machine).
    pub api_key: Option<String>,
    /// How long to wait for `/ready`.
    pub ready_timeout: Duration,
    /// Join the cluster of this member (`host:port`) instead of bootstrapping a new one: a
    /// few local nodes make a development cluster.
    pub join: Option<String>,
    /// More `concordance` arguments.
    pub extra_args: Vec<String>,
}

impl Default for LocalNodeOptions {
    fn default() -> Self {
        Self {
            binary: None,
            data_dir: None,
            port: None,
            node_id: "dev".into(),
            api_key: None,
            ready_timeout: Duration::from_secs(30),
            join: None,
            extra_args: Vec::new(),
        }
    }
}

/// A running child `concordance`; killed (SIGKILL) when dropped, see [`LocalNode::shutdown`]
/// for a graceful stop.
#[derive(Debug)]
pub struct LocalNode {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    client: Client,
    // Declared last: removed after the child is gone.
    _temp: Option<tempfile::TempDir>,
}

/// The binary to run: `explicit`, else `$CONCORDANCE_BIN`, else `concordance` on `PATH`.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return checked(p.to_path_buf(), "the given path");
    }
    if let Some(p) = std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        return checked(PathBuf::from(p), BIN_ENV);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("concordance"))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            Error::LocalNode(format!(
                "no `concordance` binary: pass one, set {BIN_ENV}, or put it on PATH \
                 (build it with `cargo build --release -p concordance`)"
            ))
        })
}

fn checked(p: PathBuf, from: &str) -> Result<PathBuf, Error> {
    if is_executable(&p) {
        Ok(p)
    } else {
        Err(Error::LocalNode(format!(
            "{} (from {from}) is not an executable file",
            p.display()
        )))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A loopback port free right now, for a process about to listen on it.
///
/// Taken below the kernel's ephemeral port range when there is room. A port from that range,
/// released here and listened on a moment later, can meanwhile become the local end of some
/// outgoing connection: the listen then fails, and a client may reach another server on the
/// same port. Below the range only listeners take ports. Each process starts at its own place
/// in that span and never hands the same port out twice while the span lasts.
pub fn free_port() -> Result<u16, Error> {
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    if let Some((first, end)) = ports_below_ephemeral_range() {
        let span = end - first;
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
            let port = first + start.wrapping_add(n) % span;
            if let Ok(port) = u16::try_from(port)
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::LocalNode(format!("no free port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| Error::LocalNode(e.to_string()))?
        .port())
}

/// Up to 12,000 ports just below the kernel's ephemeral range (32768 by default), never
/// under 10,000; `None` when that leaves fewer than 1,000 or the range cannot be read.
fn ports_below_ephemeral_range() -> Option<(u32, u32)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let end: u32 = range.split_whitespace().next()?.parse().ok()?;
    let first = end.saturating_sub(12_000).max(10_000);
    (end >= first + 1_000).then_some((first, end))
}

impl LocalNode {
    /// Starts `concordance --bootstrap` (or `--join`) on a loopback port and waits until it is
    /// ready.
    pub async fn spawn(opts: LocalNodeOptions) -> Result<Self, Error> {
        let binary = find_binary(opts.binary.as_deref())?;
        let (temp, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("concordance-dev-")
                    .tempdir()
                    .map_err(|e| Error::LocalNode(format!("temporary folder: {e}")))?;
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let log = match &temp {
            Some(t) => t.path().join("node.log"),
            None => data_dir.with_extension("log"),
        };
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::LocalNode(format!("log file {}: {e}", log.display())))?;
        let mut cmd = Command::new(&binary);
        cmd.arg(format!("--node-id={}", opts.node_id))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(match &opts.join {
                Some(member) => format!("--join={member}"),
                None => "--bootstrap".into(),
            })
            .args(&opts.extra_args)
            // Only what the options say: no keys inherited from the parent's environment.
            .env_remove("CONCORDANCE_API_KEY")
            .env_remove("CONCORDANCE_AGENT_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(k) = &opts.api_key {
            cmd.env("CONCORDANCE_API_KEY", k);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::LocalNode(format!("starting {}: {e}", binary.display())))?;
        let mut client = Client::builder()
            .endpoint(format!("127.0.0.1:{port}"))
            .retry(RetryPolicy::default());
        if let Some(k) = &opts.api_key {
            client = client.api_key(k.clone());
        }
        let mut node = Self {
            child: Some(child),
            port,
            data_dir,
            log,
            client: client.build()?,
            _temp: temp,
        };
        node.wait_ready(opts.ready_timeout).await?;
        Ok(node)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let probe = Client::new(&self.address())?;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(Error::LocalNode(format!(
                    "concordance exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                )));
            }
            if probe.ready().await.is_ok_and(|r| r.ready) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Error::LocalNode(format!(
                    "not ready within {timeout:?}; its log:\n{}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of this node (retries on, the node's key if one was set).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's log (its stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (up to 30 s, then SIGKILL) for the node to exit.
    pub async fn shutdown(mut self) -> Result<std::process::ExitStatus, Error> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::LocalNode("not running".into()));
        };
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| Error::LocalNode("pid out of range".into()))?;
        // SAFETY: kill(2) with a pid we own (our unreaped child) and a valid signal.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => {
                    let _ = child.kill();
                    let status = child.wait().map_err(|e| Error::LocalNode(e.to_string()))?;
                    return Err(Error::LocalNode(format!(
                        "did not stop within 30 s of SIGTERM; killed ({status})"
                    )));
                }
                Err(e) => return Err(Error::LocalNode(e.to_string())),
            }
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.kill();
    }
}
