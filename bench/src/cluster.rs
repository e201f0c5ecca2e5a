//! Local clusters on loopback for measurements: Concordance or etcd members as child
//! processes with their own ports and data dirs under one temporary folder, killed on drop.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use serde_json::Value;

use crate::driver::System;
use crate::tls::TlsFiles;

/// How long a member may take to become ready.
const READY_WAIT: Duration = Duration::from_secs(120);

fn free_port() -> anyhow::Result<u16> {
    Ok(concordance_client::dev::free_port()?)
}

/// The flags that give each Concordance member `http_threads` HTTP threads (none for `None`:
/// the node's default, one per core).
pub fn http_threads_args(http_threads: Option<u16>) -> Vec<String> {
    http_threads
        .map(|n| format!("--http-threads={n}"))
        .into_iter()
        .collect()
}

/// One member process; restartable with the same arguments.
pub struct Member {
    pub name: String,
    pub client_addr: String,
    pub data_dir: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit (SIGKILL after 30 s).
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct LocalCluster {
    pub system: System,
    pub members: Vec<Member>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Every member serves TLS (and talks mutual TLS to its peers) with these.
    tls: Option<TlsFiles>,
}

impl LocalCluster {
    /// Starts `n` Concordance members: the first bootstraps, the others join one at a time.
    pub async fn concordance(
        bin: &Path,
        n: usize,
        work_dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        Self::concordance_with(bin, n, work_dir, extra, None).await
    }

    /// [`LocalCluster::concordance`], serving TLS with `tls` when given.
    pub async fn concordance_with(
        bin: &Path,
        n: usize,
        work_dir: &Path,
        extra: &[String],
        tls: Option<&TlsFiles>,
    ) -> anyhow::Result<Self> {
        let mut c = Self::empty(System::Concordance, bin, work_dir, tls)?;
        for i in 1..=n {
            let join = if i == 1 {
                "--bootstrap".to_string()
            } else {
                format!("--join={}", c.members[0].client_addr)
            };
            let mut args = vec![join];
            args.extend(extra.iter().cloned());
            args.extend(tls.map(TlsFiles::concordance_args).unwrap_or_default());
            c.add_concordance_member(&format!("node{i}"), &args)?;
            c.wait_ready(i - 1).await?;
        }
        Ok(c)
    }

    /// Starts one more Concordance member (e.g. `--join=...`) without waiting for it.
    pub fn add_concordance_member(&mut self, name: &str, extra: &[String]) -> anyhow::Result<()> {
        let port = free_port()?;
        let data_dir = self.dir.path().join(name);
        let mut args = vec![
            format!("--node-id={name}"),
            format!("--listen=127.0.0.1:{port}"),
            format!("--data-dir={}", data_dir.display()),
            "--log=warn".to_string(),
        ];
        args.extend(extra.iter().cloned());
        self.push_member(name, format!("127.0.0.1:{port}"), data_dir, args)
    }

    /// Starts an `n`-member etcd cluster with its defaults (fsync on every commit).
    pub async fn etcd(bin: &Path, n: usize, work_dir: &Path) -> anyhow::Result<Self> {
        Self::etcd_with(bin, n, work_dir, None).await
    }

    /// [`LocalCluster::etcd`], serving TLS with `tls` when given (etcd's own TLS flags).
    pub async fn etcd_with(
        bin: &Path,
        n: usize,
        work_dir: &Path,
        tls: Option<&TlsFiles>,
    ) -> anyhow::Result<Self> {
        let mut c = Self::empty(System::Etcd, bin, work_dir, tls)?;
        let scheme = c.scheme();
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("node{}={scheme}://127.0.0.1:{peer}", i + 1))
            .collect();
        let token = format!("bench-{}", std::process::id());
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("node{}", i + 1);
            let data_dir = c.dir.path().join(&name);
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data_dir.display()),
                format!("--listen-client-urls={scheme}://127.0.0.1:{client}"),
                format!("--advertise-client-urls={scheme}://127.0.0.1:{client}"),
                format!("--listen-peer-urls={scheme}://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls={scheme}://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", initial.join(",")),
                format!("--initial-cluster-token={token}"),
                "--initial-cluster-state=new".to_string(),
                "--log-level=warn".to_string(),
            ];
            args.extend(tls.map(TlsFiles::etcd_args).unwrap_or_default());
            c.push_member(&name, format!("127.0.0.1:{client}"), data_dir, args)?;
        }
        for i in 0..n {
            c.wait_ready(i).await?;
        }
        Ok(c)
    }

    fn empty(
        system: System,
        bin: &Path,
        work_dir: &Path,
        tls: Option<&TlsFiles>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work_dir)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-{}-", system.name()))
            .tempdir_in(work_dir)?;
        if !bin.is_file() {
            bail!("{} binary not found at {}", system.name(), bin.display());
        }
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(tls.ca_certificate()?);
        }
        Ok(Self {
            system,
            members: Vec::new(),
            http: http.build()?,
            dir,
            bin: bin.to_path_buf(),
            tls: tls.cloned(),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `<scheme>://<addr><path>`: a member's URL for this cluster's scheme.
    fn url(&self, addr: &str, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme())
    }

    /// The TLS files every member serves with, if any.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn push_member(
        &mut self,
        name: &str,
        client_addr: String,
        data_dir: PathBuf,
        args: Vec<String>,
    ) -> anyhow::Result<()> {
        let mut m = Member {
            name: name.into(),
            client_addr,
            data_dir,
            bin: self.bin.clone(),
            args,
            log: self.dir.path().join(format!("{name}.log")),
            child: None,
        };
        m.spawn()?;
        self.members.push(m);
        Ok(())
    }

    /// The running members' client addresses: `host:port`, or `https://host:port` with TLS.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| match self.tls {
                None => m.client_addr.clone(),
                Some(_) => self.url(&m.client_addr, ""),
            })
            .collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(Member::pid).collect()
    }

    /// Whether member `i` answers its readiness probe.
    pub async fn is_ready(&self, i: usize) -> bool {
        let addr = &self.members[i].client_addr;
        match self.system {
            System::Concordance => self
                .http
                .get(self.url(addr, "/api/v1/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            System::Etcd => match self.http.get(self.url(addr, "/health")).send().await {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["health"] == "true"),
                Err(_) => false,
            },
        }
    }

    pub async fn wait_ready(&self, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < READY_WAIT {
            if self.is_ready(i).await {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "{} member {} not ready within {READY_WAIT:?}; log:\n{}",
            self.system.name(),
            self.members[i].name,
            self.members[i].log_tail()
        )
    }

    pub async fn wait_all_ready(&self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].is_running() {
                self.wait_ready(i).await?;
            }
        }
        Ok(())
    }

    /// Index of the member that currently leads, as the running members see it.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let started = Instant::now();
        while started.elapsed() < READY_WAIT {
            for m in self.members.iter().filter(|m| m.is_running()) {
                if let Some(i) = self.leader_seen_by(m).await {
                    return Ok(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no leader within {READY_WAIT:?}")
    }

    async fn leader_seen_by(&self, m: &Member) -> Option<usize> {
        let addr = &m.client_addr;
        match self.system {
            System::Concordance => {
                let v: Value = self
                    .http
                    .get(self.url(addr, "/api/v1/cluster/status"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let leader = v["leader"].as_str()?;
                self.members.iter().position(|m| m.name == leader)
            }
            System::Etcd => {
                // Each member reports its own id and the leader's: the leader is the member
                // whose own id is the leader id.
                for (i, other) in self.members.iter().enumerate() {
                    if !other.is_running() {
                        continue;
                    }
                    let v: Value = self
                        .http
                        .post(self.url(&other.client_addr, "/v3/maintenance/status"))
                        .body("{}")
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                        return Some(i);
                    }
                }
                None
            }
        }
    }

    /// SIGTERM every member and wait for them.
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.terminate();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
