//! A full disk: members on small file systems of their own (tmpfs, mounted here, so the tests
//! run as root) are filled through every member until the cluster refuses with the `no_space`
//! alarm. Nothing may stop: no member exits, Raft keeps running, every acknowledged write
//! reads back, and deletes keep working; after deletes, a compaction and a disarm, writes go
//! on.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use common::*;
use concordance_client::AlarmKind;
use concordance_client::Client;
use concordance_client::ErrorCode;
use concordance_client::PutRequest;
use serde_json::Value;

const KEYS: &[(&str, &str)] = &[
    ("CONCORDANCE_API_KEY", ADMIN_KEY),
    ("CONCORDANCE_AGENT_API_KEY", AGENT_KEY),
];
/// Each write puts this much: a few hundred fill a 128 MiB volume.
const VALUE_BYTES: usize = 256 << 10;
/// A bound on the writes tried: far more than a volume holds.
const MAX_WRITES: usize = 3000;
/// At least this many writes are acknowledged before the refusal (the volume holds more).
const MIN_ACKNOWLEDGED: usize = 40;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs of its own, unmounted on drop (after the nodes using it were killed).
struct Volume {
    path: PathBuf,
}

impl Volume {
    fn mount(path: &Path, size: &str) -> Self {
        mount_tmpfs(path, &format!("size={size}"));
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn value(i: usize) -> Value {
    incompressible(i, VALUE_BYTES)
}

/// Waits until `check` holds, at most `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Dropped in this order: the nodes killed, their volumes unmounted, the folder removed.
struct Filled {
    nodes: Vec<NodeProc>,
    _volumes: Vec<Volume>,
    dir: tempfile::TempDir,
}

/// `n` members on 128 MiB volumes with the default quota and reserve.
async fn start(n: usize) -> Filled {
    assert!(
        is_root(),
        "this test mounts a small file system per member: run it as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let volumes: Vec<Volume> = (1..=n)
        .map(|i| Volume::mount(&dir.path().join(format!("node{i}")), "128m"))
        .collect();
    let first = NodeProc::start_env("node1", dir.path(), &["--bootstrap"], KEYS);
    first.wait_ready().await;
    let join = format!("--join={}", first.addr());
    let mut nodes = vec![first];
    for i in 2..=n {
        let node = NodeProc::start_env(&format!("node{i}"), dir.path(), &[&join], KEYS);
        node.wait_ready().await;
        nodes.push(node);
    }
    Filled {
        nodes,
        _volumes: volumes,
        dir,
    }
}

fn clients(f: &Filled) -> Vec<Client> {
    f.nodes.iter().map(NodeProc::admin).collect()
}

/// Writes through every member in turn until refused; the acknowledged writes' numbers.
async fn fill(clients: &[Client]) -> Vec<usize> {
    let mut acknowledged = Vec::new();
    for i in 0..MAX_WRITES {
        let c = &clients[i % clients.len()];
        match c.put(&format!("fill/{i:05}"), &value(i)).await {
            Ok(_) => acknowledged.push(i),
            Err(e) if e.error_code() == Some(ErrorCode::NoSpace) => {
                assert!(
                    e.to_string().contains("no_space"),
                    "the refusal names the alarm: {e}"
                );
                assert_eq!(e.status().map(|s| s.as_u16()), Some(507), "{e}");
                return acknowledged;
            }
            Err(e) => panic!("write {i} failed with something else than no_space: {e}"),
        }
    }
    panic!("{MAX_WRITES} writes of {VALUE_BYTES} bytes were all accepted on 128 MiB volumes");
}

async fn fill_refuse_and_recover(n: usize) {
    let f = start(n).await;
    let clients = clients(&f);
    let acknowledged = fill(&clients).await;
    eprintln!(
        "{n} member(s): {} writes of {VALUE_BYTES} bytes acknowledged before the refusal",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= MIN_ACKNOWLEDGED,
        "only {} writes acknowledged before the refusal",
        acknowledged.len()
    );

    // Nothing stopped: every member runs, its Raft too, and the alarm is everyone's.
    for (node, c) in f.nodes.iter().zip(&clients) {
        assert!(
            !node.has_exited(),
            "{} exited:\n{}",
            node.name,
            node.log_text()
        );
        c.health()
            .await
            .unwrap_or_else(|e| panic!("{} is not healthy: {e}", node.name));
        within(
            Duration::from_secs(10),
            "every member has the alarm",
            || async {
                c.status()
                    .await
                    .is_ok_and(|s| s.alarms.iter().any(|a| a.kind == AlarmKind::NoSpace))
            },
        )
        .await;
        let usage = c.status().await.unwrap().storage.expect("space measured");
        assert!(
            usage.free_bytes > 0,
            "{} has a full volume: {usage:?}",
            node.name
        );
    }
    let metrics = admin_metrics(&f.nodes[0]).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("concordance_alarms{kind=\"no_space\"}") && !l.ends_with(" 0")),
        "metrics show the alarm:\n{metrics}"
    );

    // Every acknowledged write reads back, through every member.
    for (k, i) in acknowledged.iter().enumerate() {
        let c = &clients[k % clients.len()];
        let got = c
            .get(&format!("fill/{i:05}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write {i} is lost"));
        assert!(got.kv.value == value(*i), "write {i} reads back changed");
    }

    // A backup of a full member: streamed, so it needs no room on the member's volume, and
    // `restore` takes it whole.
    let backup = backup_and_restore(&f.nodes[0], f.dir.path()).await;
    assert!(
        backup >= (acknowledged.len() * VALUE_BYTES) as u64,
        "a backup of {backup} bytes for {} acknowledged writes of {VALUE_BYTES}",
        acknowledged.len()
    );

    // Still refused; deletes work.
    let refused = clients[0]
        .put("after/0", &Value::from(1))
        .await
        .unwrap_err();
    assert_eq!(refused.error_code(), Some(ErrorCode::NoSpace), "{refused}");
    for (k, i) in acknowledged.iter().enumerate() {
        clients[k % clients.len()]
            .delete(&format!("fill/{i:05}"))
            .await
            .unwrap_or_else(|e| panic!("delete {i} during the alarm: {e}"));
    }
    clients[0].compact(None).await.unwrap();

    // The space comes back, then the alarm is disarmed.
    for (node, c) in f.nodes.iter().zip(&clients) {
        if let Err(usage) = space_clear(c, Instant::now() + Duration::from_secs(90)).await {
            let du = Command::new("du")
                .args(["-a", "-k"])
                .arg(&node.data_dir)
                .output()
                .unwrap();
            panic!(
                "{}: the space did not come back within 90 s of deletes and a compaction: \
                 {usage:?}\n{}\nlog:\n{}",
                node.name,
                String::from_utf8_lossy(&du.stdout),
                node.log_text()
            );
        }
        assert!(
            !node.has_exited(),
            "{} exited:\n{}",
            node.name,
            node.log_text()
        );
    }
    // As an admin would: again while a member's measure moves around the margin.
    let raised_before: Vec<usize> = f.nodes.iter().map(raises_in_log).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let left = loop {
        match clients[0].disarm_no_space(None).await {
            Ok(left) => break left,
            Err(e)
                if e.error_code() == Some(ErrorCode::AlarmStillRaised)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("disarm: {e}"),
        }
    };
    // Every member sees the disarm. An alarm still shown must be one raised anew since by its
    // member's housekeeping (a reclaim rewriting tables the last snapshot still holds), which
    // that member logs; the writes below disarm it again.
    let raised_anew = |alarms: &[concordance_client::Alarm]| {
        alarms.iter().all(|a| {
            f.nodes
                .iter()
                .zip(&raised_before)
                .any(|(node, &before)| node.name == a.member && raises_in_log(node) > before)
        })
    };
    assert!(raised_anew(&left.alarms), "alarms left: {:?}", left.alarms);
    for c in &clients {
        within(
            Duration::from_secs(10),
            "every member sees the disarm",
            || async { c.status().await.is_ok_and(|s| raised_anew(&s.alarms)) },
        )
        .await;
    }

    // Writes go on, through every member, and read back.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut raised_again = 0;
    for (k, c) in clients.iter().enumerate() {
        for j in 0..20 {
            let key = format!("after/{k}/{j}");
            raised_again += put_after_disarm(c, &key, &Value::from(j), deadline).await;
        }
    }
    println!(
        "{n} member(s): writes refused {raised_again} time(s) by an alarm raised again after the disarm"
    );
    for (k, c) in clients.iter().enumerate() {
        for j in 0..20 {
            let got = c.get(&format!("after/{k}/{j}")).await.unwrap().unwrap();
            assert_eq!(got.kv.value, Value::from(j));
        }
    }
    for node in &f.nodes {
        assert!(
            !node.has_exited(),
            "{} exited:\n{}",
            node.name,
            node.log_text()
        );
    }
}

/// How many times this member raised the `no_space` alarm, by its log.
fn raises_in_log(node: &NodeProc) -> usize {
    node.log_text()
        .matches("out of space: raising the no_space alarm")
        .count()
}

/// A put after the disarm. A member's own housekeeping (a snapshot received or taken,
/// RocksDB rewriting its tables) can take its volume under the reserve again for a moment and
/// raise the alarm anew; an admin then disarms again once it is clear, as here. Returns how
/// many times the put was refused so.
async fn put_after_disarm(c: &Client, key: &str, value: &Value, deadline: Instant) -> usize {
    let mut refused = 0;
    loop {
        match c.put(key, value).await {
            Ok(_) => return refused,
            Err(e) if e.error_code() == Some(ErrorCode::NoSpace) && Instant::now() < deadline => {
                println!("put {key}: the alarm was raised again after the disarm: {e}");
                refused += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                // Refused while the member is not yet clear; asked again at the next refusal.
                let _ = c.disarm_no_space(None).await;
            }
            Err(e) => panic!("put {key} after the disarm: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_member_on_a_small_volume_refuses_growth_before_enospc_and_recovers() {
    fill_refuse_and_recover(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_filled_through_each_refuse_growth_before_enospc_and_recover() {
    fill_refuse_and_recover(3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disarm_is_refused_while_the_member_is_still_over_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start_env("node1", dir.path(), &["--bootstrap"], KEYS);
    node.wait_ready().await;
    let c = node.admin();
    let request = PutRequest {
        value: Value::from("first"),
        lease: None,
    };
    let first = c
        .put_with("retried", &request, Some("retry-1"))
        .await
        .unwrap();
    // Restarted with a quota its data dir is already over: the alarm is raised at once, and
    // stays.
    node.args.push("--quota-bytes=1MiB".into());
    node.restart();
    node.wait_ready().await;
    within(Duration::from_secs(10), "the alarm is raised", || async {
        c.alarms().await.is_ok_and(|a| {
            a.alarms
                .iter()
                .any(|a| a.kind == AlarmKind::NoSpace && a.member == "node1")
        })
    })
    .await;
    let refused = c.disarm_no_space(Some("node1")).await.unwrap_err();
    assert_eq!(
        refused.error_code(),
        Some(ErrorCode::AlarmStillRaised),
        "{refused}"
    );
    assert!(refused.to_string().contains("quota"), "{refused}");
    let unknown = c.disarm_no_space(Some("node9")).await.unwrap_err();
    assert_eq!(unknown.error_code(), Some(ErrorCode::MemberNotFound));
    let put = c.put("k", &Value::from(1)).await.unwrap_err();
    assert_eq!(put.error_code(), Some(ErrorCode::NoSpace), "{put}");
    // A retry of a write that was applied gets its first answer, not a refusal that would
    // say it was not applied.
    let again = c
        .put_with("retried", &request, Some("retry-1"))
        .await
        .unwrap();
    assert_eq!(again.revision, first.revision);
    // Reads and deletes work.
    assert!(c.get("k").await.unwrap().is_none());
    c.delete("k").await.unwrap();
    let inspect = run_bin_after_stop(node);
    assert!(inspect.contains("no_space on node1"), "{inspect}");
}

/// With no reserve, the volume fills: the member stops at its first failed write (its
/// supervisor restarts it), never staying up as a member whose Raft has stopped. Restarted
/// on a grown volume, it has every acknowledged write.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_hits_enospc_stops_the_member_and_a_restart_with_room_loses_nothing() {
    assert!(
        is_root(),
        "this test mounts a small file system: run it as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::mount(&dir.path().join("node1"), "128m");
    let mut node = NodeProc::start_env(
        "node1",
        dir.path(),
        &["--bootstrap", "--reserve-bytes=0"],
        KEYS,
    );
    node.wait_ready().await;
    let c = node.admin();
    let mut acknowledged = Vec::new();
    for i in 0..MAX_WRITES {
        match c.put(&format!("fill/{i:05}"), &value(i)).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                eprintln!("write {i} failed: {e}");
                break;
            }
        }
    }
    assert!(
        acknowledged.len() >= MIN_ACKNOWLEDGED && acknowledged.len() < MAX_WRITES,
        "{} writes acknowledged",
        acknowledged.len()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.has_exited() {
        assert!(
            Instant::now() < deadline,
            "the member did not stop within 20 s of a failed write; log:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = node.wait_exit(Duration::from_secs(1));
    assert_eq!(
        status.code(),
        Some(4),
        "exit status; log:\n{}",
        node.log_text()
    );
    assert!(
        node.log_text().contains("raft stopped on a storage error"),
        "{}",
        node.log_text()
    );

    let grown = Command::new("mount")
        .args(["-o", "remount,size=512m"])
        .arg(&volume.path)
        .status()
        .unwrap();
    assert!(grown.success());
    node.restart();
    node.wait_ready().await;
    for i in &acknowledged {
        let got = c
            .get(&format!("fill/{i:05}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write {i} is lost after the restart"));
        assert!(got.kv.value == value(*i), "write {i} reads back changed");
    }
    c.put("after", &Value::from(1)).await.unwrap();
    drop(node);
}

/// Downloads a backup from `node` and restores it into a new data dir under `dir` (off the
/// node's volume); the backup's size.
async fn backup_and_restore(node: &NodeProc, dir: &Path) -> u64 {
    let resp = reqwest::Client::new()
        .get(node.url("/api/v1/cluster/backup"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let bytes = resp.bytes().await.unwrap();
    let file = dir.join("backup.snap");
    std::fs::write(&file, &bytes).unwrap();
    let out = run_bin(
        &[
            "restore",
            &format!("--backup={}", file.display()),
            &format!("--data-dir={}", dir.join("restored").display()),
            "--node-id=restored",
            "--advertise=127.0.0.1:1",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bytes.len() as u64
}

/// Stops the node and prints `concordance inspect` of its data dir.
fn run_bin_after_stop(mut node: NodeProc) -> String {
    node.stop();
    let out = run_bin(
        &[
            "inspect",
            &format!("--data-dir={}", node.data_dir.display()),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
