//! A cluster of real `concordance` processes on loopback, and the faults done to it.
//!
//! Partitions are real packet filters: every node runs as its own user id, and an nftables
//! table of this process (named `rel<pid>x<n>`) drops, in the output hook, the packets a
//! node's sockets send to another node's port (`meta skuid U tcp dport P drop`). Blocking
//! both directions of a pair cuts every connection between the two, whichever side opened
//! it, while the test's own clients (root) still reach every node. A lossy link drops a share
//! of those packets at random (`numgen random mod 100 < N`). Without root there are no user
//! ids to switch to and no packet filter: a run that needs them fails.
//!
//! Every node runs under libfaketime with its own clock file: a clock fault moves its wall
//! clock (not its monotonic clock) by what the file says.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use concordance_client::Client;
use serde_json::json;

use crate::common::NodeProc;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

static TABLES: AtomicUsize = AtomicUsize::new(0);

pub fn is_root() -> bool {
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

fn nft(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "nft failed on:\n{script}");
}

/// An nftables table of this test: dropped (node uid -> node port) pairs.
pub struct PacketFilter {
    table: String,
}

impl PacketFilter {
    pub fn new() -> Self {
        let table = format!(
            "rel{}x{}",
            std::process::id(),
            TABLES.fetch_add(1, Ordering::SeqCst)
        );
        nft(&format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}\n"
        ));
        Self { table }
    }

    /// Replaces the rules: packets from `uid`'s sockets to `port` are dropped, for each pair.
    pub fn set(&self, drops: &[(u32, u16)]) {
        self.set_lossy(drops, 100);
    }

    /// Replaces the rules: `percent` % of the packets from `uid`'s sockets to `port` are
    /// dropped at random, for each pair (this kernel has no netem; nftables draws the loss).
    pub fn set_lossy(&self, drops: &[(u32, u16)], percent: u32) {
        let mut s = format!("flush chain inet {} out\n", self.table);
        let draw = if percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        for (uid, port) in drops {
            s.push_str(&format!(
                "add rule inet {} out meta skuid {uid} tcp dport {port} {draw}drop\n",
                self.table
            ));
        }
        nft(&s);
    }
}

impl Drop for PacketFilter {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// A node slot: a live or stopped process, or a member that was removed for good.
pub struct Member {
    pub proc: NodeProc,
    pub uid: Option<u32>,
    pub paused: bool,
    pub down: bool,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: BTreeMap<String, Member>,
    pub filter: Option<PacketFilter>,
    next_id: usize,
    seed_node: String,
    /// Environment of every node: libfaketime preloaded (each node's wall clock can be moved,
    /// `set_clock`), and the unsynced-data shim when asked for.
    env: Vec<(String, String)>,
    /// Flags of every node (a new member's too), besides its identity and `--join`.
    extra: Vec<String>,
    /// With a size, every member's data dir is a tmpfs of that size of its own.
    volume: Option<String>,
    /// The tmpfs mounted, unmounted on drop.
    mounts: Vec<PathBuf>,
}

/// Builds a client that gives up quickly (faults make nodes unresponsive).
pub fn client_for(port: u16) -> Client {
    Client::new(&format!("127.0.0.1:{port}")).unwrap()
}

impl Cluster {
    /// Starts `size` nodes: the first bootstraps, the others join it one at a time. With
    /// `lose_unsynced`, every node runs with the shim of `durability`: a SIGKILL loses what
    /// the node had not fsynced.
    pub async fn start(size: usize, extra: &[&str], lose_unsynced: bool) -> Self {
        Self::start_on(size, extra, lose_unsynced, None).await
    }

    /// Like [`Cluster::start`], with every member's data dir on a tmpfs of `volume` (e.g.
    /// `128m`) of its own when given.
    pub async fn start_on(
        size: usize,
        extra: &[&str],
        lose_unsynced: bool,
        volume: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = is_root();
        if root {
            // The nodes run as other users: they must reach their data dirs.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            // ...and run a binary they may execute (the build's is under root's home).
            std::fs::copy(crate::common::bin(), dir.path().join("concordance")).unwrap();
        }
        let mut c = Self {
            dir,
            members: BTreeMap::new(),
            filter: root.then(PacketFilter::new),
            next_id: 1,
            seed_node: String::new(),
            // openraft's start-up state and snapshot installs, to explain a failing run.
            env: vec![(
                "CONCORDANCE_LOG".into(),
                "info,openraft=warn,openraft::storage=info,\
                 openraft::engine::handler::following_handler=info"
                    .into(),
            )],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            volume: volume.map(String::from),
            mounts: Vec::new(),
        };
        assert!(
            Path::new(FAKETIME).exists(),
            "{FAKETIME} is missing: scripts/install-deps --test installs libfaketime"
        );
        let mut preload = vec![FAKETIME.to_string()];
        if lose_unsynced {
            // A copy every node's user may read.
            let so = c.dir.path().join("lose_unsynced.so");
            std::fs::copy(crate::durability::shim(), &so).unwrap();
            preload.push(so.display().to_string());
        }
        c.env.push(("LD_PRELOAD".into(), preload.join(":")));
        // The wall clock moves by what the node's clock file says, read at most once a
        // second; the monotonic clock stays real.
        c.env
            .push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
        c.env.push(("FAKETIME_CACHE_DURATION".into(), "1".into()));
        let mut args = vec!["--bootstrap".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let first = c.spawn(&args).await;
        c.seed_node = first.clone();
        for _ in 1..size {
            c.add_member().await;
        }
        c
    }

    async fn spawn(&mut self, args: &[String]) -> String {
        let name = format!("n{}", self.next_id);
        let uid = is_root().then_some(61000 + self.next_id as u32);
        let run_as = uid.map(|u| (u, self.dir.path().join("concordance")));
        self.next_id += 1;
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        if let Some(size) = &self.volume {
            let at = self.dir.path().join(&name);
            crate::common::mount_tmpfs(&at, &format!("size={size},mode=0777"));
            self.mounts.push(at);
        }
        let clock = self.clock_file(&name);
        std::fs::write(&clock, "+0").unwrap();
        let clock = clock.display().to_string();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("FAKETIME_TIMESTAMP_FILE", &clock));
        let proc = NodeProc::start_as(
            crate::common::free_port(),
            &name,
            self.dir.path(),
            &args,
            &env,
            run_as,
        );
        self.members.insert(
            name.clone(),
            Member {
                proc,
                uid,
                paused: false,
                down: false,
            },
        );
        name
    }

    /// A new node joins (through any live member) and becomes a ready voter.
    pub async fn add_member(&mut self) -> String {
        let via = self
            .live()
            .into_iter()
            .next()
            .expect("a live member to join through");
        let via_addr = self.members[&via].proc.addr();
        let mut args = vec![format!("--join={via_addr}")];
        args.extend(self.extra.iter().cloned());
        let name = self.spawn(&args).await;
        self.members[&name].proc.wait_ready().await;
        name
    }

    pub fn names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// Members whose process runs and is not paused.
    pub fn live(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| !m.paused && !m.down)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn port(&self, name: &str) -> u16 {
        self.members[name].proc.port
    }

    pub fn client(&self, name: &str) -> Client {
        client_for(self.port(name))
    }

    /// Waits (bounded) until the live members agree on a leader; `None` if they never do.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until `name` reports itself leader.
    pub async fn wait_leads(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match tokio::time::timeout(
                Duration::from_secs(2),
                self.client(name).status(),
            )
            .await
            {
                Ok(Ok(s)) if s.role == "leader" => return Ok(()),
                other => format!("{other:?}"),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} did not report leading within {timeout:?}: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader as the live members see it (a majority of them naming the same node).
    pub async fn leader(&self) -> Option<String> {
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for n in self.live() {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(700), self.client(&n).status()).await
                && let Some(l) = s.leader
            {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, v)| *v)
            .map(|(l, _)| l)
            .filter(|l| self.members.contains_key(l))
    }

    // --- faults -------------------------------------------------------------------------

    pub fn kill(&mut self, name: &str) {
        let m = self.members.get_mut(name).unwrap();
        m.proc.kill();
        m.down = true;
    }

    pub fn restart(&mut self, name: &str) {
        let m = self.members.get_mut(name).unwrap();
        m.proc.restart();
        m.down = false;
        m.paused = false;
    }

    pub fn pause(&mut self, name: &str) {
        let m = self.members.get_mut(name).unwrap();
        m.proc.signal("STOP");
        m.paused = true;
    }

    pub fn resume(&mut self, name: &str) {
        let m = self.members.get_mut(name).unwrap();
        if m.paused {
            m.proc.signal("CONT");
            m.paused = false;
        }
    }

    pub fn can_partition(&self) -> bool {
        self.filter.is_some()
    }

    /// Cuts every link between nodes of different groups (names missing from every group
    /// stay connected to everyone).
    pub fn partition(&self, groups: &[Vec<String>]) {
        let Some(f) = &self.filter else { return };
        let group_of = |n: &str| groups.iter().position(|g| g.iter().any(|x| x == n));
        let mut drops = Vec::new();
        for a in self.members.keys() {
            for b in self.members.keys() {
                if a == b {
                    continue;
                }
                if let (Some(ga), Some(gb)) = (group_of(a), group_of(b))
                    && ga != gb
                {
                    drops.push((self.members[a].uid.unwrap(), self.port(b)));
                }
            }
        }
        f.set(&drops);
    }

    /// Cuts exactly the listed links, both directions.
    pub fn cut_links(&self, links: &[(String, String)]) {
        let Some(f) = &self.filter else { return };
        let mut drops = Vec::new();
        for (a, b) in links {
            drops.push((self.members[a].uid.unwrap(), self.port(b)));
            drops.push((self.members[b].uid.unwrap(), self.port(a)));
        }
        f.set(&drops);
    }

    /// Drops `percent` % of the packets on every link between members, both ways.
    pub fn lossy_links(&self, percent: u32) {
        let Some(f) = &self.filter else { return };
        let mut drops = Vec::new();
        for (a, m) in &self.members {
            for b in self.members.keys().filter(|b| *b != a) {
                drops.push((m.uid.unwrap(), self.port(b)));
            }
        }
        f.set_lossy(&drops, percent);
    }

    pub fn heal_network(&self) {
        if let Some(f) = &self.filter {
            f.set(&[]);
        }
    }

    fn clock_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.clock"))
    }

    /// Moves `name`'s wall clock `offset_secs` from the real one (libfaketime reads it within
    /// a second).
    pub fn set_clock(&self, name: &str, offset_secs: i64) {
        std::fs::write(self.clock_file(name), format!("{offset_secs:+}")).unwrap();
    }

    /// Waits (at most 5 s) until `name`'s wall clock, as its status shows it (`wallClockMs`),
    /// is `offset_secs` from this machine's (within 2 s): the proof a clock fault took effect.
    pub async fn wait_clock(&self, name: &str, offset_secs: i64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = String::new();
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), self.client(name).status()).await {
                Ok(Ok(s)) => {
                    let ours = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis() as i64;
                    let seen = (s.wall_clock_ms as i64 - ours) / 1000;
                    if (seen - offset_secs).abs() <= 2 {
                        return Ok(());
                    }
                    last = format!("its clock reads {seen} s off");
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "status timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "{name}'s wall clock did not move to {offset_secs:+} s: {last}"
        ))
    }

    /// Every fault undone: network healed, clocks set right, paused nodes resumed, stopped
    /// nodes restarted.
    pub fn heal_all(&mut self) {
        self.heal_network();
        for n in self.names() {
            self.set_clock(&n, 0);
        }
        let names = self.names();
        for n in &names {
            self.resume(n);
            if self.members[n].down {
                self.restart(n);
            }
        }
    }

    /// Removes `name` from Raft (through any live member). Accepted, or `name` is no longer a
    /// member (an earlier request that timed out may have been applied): `Ok`.
    pub async fn remove_member(&self, name: &str) -> Result<(), String> {
        let via = self
            .live()
            .into_iter()
            .find(|n| n != name)
            .ok_or("no live member")?;
        let r: Result<Result<serde_json::Value, _>, _> = tokio::time::timeout(
            Duration::from_secs(15),
            self.client(&via).call(
                reqwest::Method::POST,
                "cluster/remove",
                Some(&json!({ "nodeId": name })),
            ),
        )
        .await;
        let refused = match r {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "remove timed out".to_string(),
        };
        // The membership as a member that knows a leader sees it.
        match tokio::time::timeout(Duration::from_secs(5), self.client(&via).status()).await {
            Ok(Ok(s)) if s.leader.is_some() && s.members.iter().all(|m| m.node_id != name) => {
                Ok(())
            }
            _ => Err(refused),
        }
    }

    /// Stops a removed member for good and deletes its data dir: a member whose disk is lost.
    pub fn forget_member(&mut self, name: &str) {
        let mut m = self.members.remove(name).unwrap();
        m.proc.kill();
        let _ = std::fs::remove_dir_all(&m.proc.data_dir);
    }

    pub async fn transfer_leader(&self, to: &str) -> Result<(), String> {
        let via = self.live().into_iter().next().ok_or("no live member")?;
        let r: Result<serde_json::Value, _> = tokio::time::timeout(
            Duration::from_secs(15),
            self.client(&via).call(
                reqwest::Method::POST,
                "cluster/transfer-leader",
                Some(&json!({ "nodeId": to })),
            ),
        )
        .await
        .map_err(|_| "transfer timed out".to_string())?;
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Waits until every member applied the same index, which is the leader's commit index,
    /// and answers the same revision: the replicas converged.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut applied = BTreeMap::new();
            let mut ok = true;
            for n in self.names() {
                match tokio::time::timeout(Duration::from_secs(2), self.client(&n).status()).await {
                    Ok(Ok(s)) => {
                        applied.insert(n, (s.applied_index, s.commit_index, s.revision));
                    }
                    other => {
                        ok = false;
                        last = format!("{n}: {other:?}");
                    }
                }
            }
            if ok {
                let vals: Vec<_> = applied.values().collect();
                if vals
                    .windows(2)
                    .all(|w| w[0].0 == w[1].0 && w[0].2 == w[1].2)
                    && vals.iter().all(|v| v.0.is_some() && v.0 == v.1)
                {
                    return Ok(vals[0].2);
                }
                last = format!("{applied:?}");
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "replicas did not converge within {timeout:?}: {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Copies the whole log (all its lives) of every node this cluster ever ran, removed
    /// members' too, to a folder that outlives the run.
    pub fn keep_logs(&self, label: &str) -> PathBuf {
        let to = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("reliability-logs-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&to).unwrap();
        for log in std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
        {
            let _ = std::fs::copy(&log, to.join(log.file_name().unwrap()));
        }
        to
    }

    /// Lines containing `needle` in the logs of every node this cluster ever ran (removed
    /// members' too: a node's log is `<name>.log` in the cluster's folder).
    pub fn count_in_logs(&self, needle: &str) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .count()
            })
            .sum()
    }

    /// Log tails of every member, for a failing run's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (n, m) in &self.members {
            let t = m.proc.log_text();
            let tail: Vec<&str> = t.lines().rev().take(15).collect();
            s.push_str(&format!("--- {n} (last lines)\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL ends paused processes too.
        for m in self.members.values_mut() {
            m.proc.kill();
        }
        for at in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(at).status();
        }
    }
}
