//! Test harness: real `concordance` processes on unique ports and folders, killed on drop.
#![allow(dead_code)]

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use concordance_client::Client;
#[allow(unused_imports)] // not every test file waits
pub use concordance_test_support::eventually;

pub const ADMIN_KEY: &str = "test-admin-key";
pub const AGENT_KEY: &str = "test-agent-key";
pub const WAIT: Duration = Duration::from_secs(30);

/// A node's Prometheus text, asked with the admin key.
pub async fn admin_metrics(node: &NodeProc) -> String {
    let mut http = reqwest::Client::builder();
    if let Some(ca) = &node.ca {
        http = http.add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap(),
        );
    }
    http.build()
        .unwrap()
        .get(node.url("/api/v1/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Value number `i` of `bytes` letters no compression shrinks (RocksDB compresses its
/// tables): a volume fills with them as it would with real data.
pub fn incompressible(i: usize, bytes: usize) -> serde_json::Value {
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut s = format!("{i}:");
    s.extend((0..bytes).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        LETTERS[(state >> 58) as usize] as char
    }));
    serde_json::Value::String(s)
}

/// Waits until `c`'s member is clear of its space bounds (its `no_space` alarm may end), at
/// most until `deadline`; its last measure if it is not by then.
pub async fn space_clear(
    c: &Client,
    deadline: Instant,
) -> Result<(), Option<concordance_client::StorageUse>> {
    loop {
        let usage = c.status().await.ok().and_then(|s| s.storage);
        if usage
            .as_ref()
            .is_some_and(|u| concordance::space::not_clear(u).is_none())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(usage);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the cluster has enabled this build's newest command set: a new cluster enables
/// it a moment after it is ready, and what it adds (lease owners) only counts from then.
pub async fn newest_command_set(node: &NodeProc) {
    let c = node.client();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(v) = c.version().await
            && v.cluster_command_version == v.command_version
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the newest command set was not enabled",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Mounts a tmpfs at `at` (made if missing) with these mount options (`size=128m`, ...).
pub fn mount_tmpfs(at: &Path, options: &str) {
    std::fs::create_dir_all(at).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(at)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mounting a tmpfs ({options}) at {}: {}",
        at.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_concordance")
}

/// A free loopback port, outside the range outgoing connections take theirs from.
pub fn free_port() -> u16 {
    concordance_client::dev::free_port().expect("a free loopback port")
}

pub struct NodeProc {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Runs the process as this user and group id (packet filters can then tell nodes
    /// apart), from this copy of the binary (one that user may execute).
    pub run_as: Option<(u32, PathBuf)>,
    /// Another build of the node to run instead of this one's (`None`: this build).
    pub program: Option<PathBuf>,
    /// The CA of a node serving TLS: [`NodeProc::client`] then speaks https and trusts it.
    pub ca: Option<PathBuf>,
    child: Option<Child>,
}

impl NodeProc {
    /// Starts `concordance` with `--node-id`, `--listen`, `--data-dir` plus `extra`.
    pub fn start(name: &str, dir: &Path, extra: &[&str]) -> Self {
        Self::start_env(name, dir, extra, &[])
    }

    /// Like [`start`], with extra environment variables (e.g. keys).
    pub fn start_env(name: &str, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), name, dir, extra, env)
    }

    /// Like [`start_env`], on a given port.
    pub fn start_on(
        port: u16,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_as(port, name, dir, extra, env, None)
    }

    /// Like [`start_on`], as user and group `uid` running `program`, when given.
    pub fn start_as(
        port: u16,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        run_as: Option<(u32, PathBuf)>,
    ) -> Self {
        let mut n = Self::unstarted(port, name, dir, extra, env, run_as);
        n.spawn();
        n
    }

    fn unstarted(
        port: u16,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        run_as: Option<(u32, PathBuf)>,
    ) -> Self {
        let data_dir = dir.join(name);
        let mut args = vec![
            format!("--node-id={name}"),
            format!("--listen=127.0.0.1:{port}"),
            format!("--data-dir={}", data_dir.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self {
            name: name.into(),
            port,
            log: dir.join(format!("{name}.log")),
            data_dir,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            run_as,
            program: None,
            ca: None,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.run_as {
            Some((uid, program)) => {
                use std::os::unix::process::CommandExt;
                let mut c = Command::new(program);
                c.uid(*uid).gid(*uid);
                c
            }
            None => Command::new(self.program.as_deref().unwrap_or(Path::new(bin()))),
        };
        let child = cmd
            .args(&self.args)
            .env_remove("CONCORDANCE_API_KEY")
            .env_remove("CONCORDANCE_AGENT_API_KEY")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn concordance");
        self.child = Some(child);
    }

    pub fn client(&self) -> Client {
        match &self.ca {
            None => Client::new(&format!("127.0.0.1:{}", self.port)).unwrap(),
            Some(ca) => Client::builder()
                .endpoint(format!("https://127.0.0.1:{}", self.port))
                .ca_file(ca)
                .unwrap()
                .retry(concordance_client::RetryPolicy::none())
                .auto_idempotency(false)
                .follow_leader(false)
                .build()
                .unwrap(),
        }
    }

    pub fn admin(&self) -> Client {
        self.client().with_key(ADMIN_KEY)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status if the process has ended by itself (it is then no longer running).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; panics with the node's log otherwise.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not stop after SIGTERM; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "node {} exited with {status} after SIGTERM; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Like [`start_env`], running `program` (another build of the node) instead of this
    /// build: [`restart`] runs it again, until `program` is changed.
    pub fn start_program(
        program: &Path,
        name: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut n = Self::unstarted(free_port(), name, dir, extra, env, None);
        n.program = Some(program.to_path_buf());
        n.spawn();
        n
    }

    /// Starts the same node again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits for the process to exit by itself; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("node {} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process has ended (a zombie not yet reaped), without reaping it.
    pub fn has_exited(&self) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            // The state follows the command name, which is in parentheses.
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_none_or(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        let c = self.client();
        let deadline = Instant::now() + WAIT;
        loop {
            // A node that could not start (its port taken, say) must not pass for ready
            // because something else answers on that port.
            assert!(
                !self.has_exited(),
                "node {} exited before it was ready; log:\n{}",
                self.name,
                self.log_text()
            );
            if let Ok(r) = c.ready().await
                && r.ready
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} not ready within {WAIT:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the binary to completion (for subcommands and refused starts).
pub fn run_bin(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("CONCORDANCE_API_KEY")
        .env_remove("CONCORDANCE_AGENT_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Bounded: a refused start exits at once; a start that wrongly serves is killed.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
