//! Time: leases are timed on the leader's monotonic clock, so a jump of the wall clock neither
//! keeps an abandoned lease alive nor ends a kept one, and keep-alives are answered by the
//! leader without a Raft entry. The wall clock is moved under a running node with libfaketime
//! (preloaded, its monotonic clock left real, the offset read from a file on every call), and
//! the node's status (`wallClockMs`) must show it moved.

mod common;

use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use common::*;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const TTL: Duration = Duration::from_secs(3);
/// How late after its TTL an abandoned lease may end on a healthy leader (docs/design.md says
/// within a second: the leader's 200 ms tick and one commit), with a margin for a busy machine.
const LATE_BOUND: Duration = Duration::from_millis(2500);

/// A node whose wall clock is offset by what `offset_file` says (libfaketime's format:
/// "+0", "-3600", ...).
fn start_with_movable_wall_clock(dir: &Path, offset_file: &Path, extra: &[&str]) -> NodeProc {
    assert!(
        Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: scripts/install-deps --test installs libfaketime"
    );
    std::fs::write(offset_file, "+0").unwrap();
    let file = offset_file.to_str().unwrap();
    NodeProc::start_env(
        "n1",
        dir,
        extra,
        &[
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", file),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

/// The node's wall clock as its status shows it, minus this machine's, in seconds.
async fn wall_clock_offset(node: &NodeProc) -> i64 {
    let theirs = node.client().status().await.unwrap().wall_clock_ms as i64;
    let ours = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (theirs - ours) / 1000
}

/// Moves the node's wall clock to `offset` from the real one, and checks that it moved.
async fn set_wall_clock(node: &NodeProc, offset_file: &Path, offset_secs: i64) {
    std::fs::write(offset_file, format!("{offset_secs:+}")).unwrap();
    let seen = wall_clock_offset(node).await;
    assert!(
        (seen - offset_secs).abs() <= 2,
        "the node's wall clock is {seen} s off, not {offset_secs} s: the preload did not take"
    );
}

/// Grants a lease of [`TTL`]; its id and the instants the grant was sent and answered.
async fn grant(node: &NodeProc) -> (u64, Instant, Instant) {
    let sent = Instant::now();
    let id = node.client().lease_grant(TTL).await.unwrap().id;
    (id, sent, Instant::now())
}

/// Reads lease `id` every 50 ms until it is gone (at most 30 s): the instants the first read
/// that found it gone was sent and answered.
async fn gone(node: &NodeProc, id: u64) -> (Instant, Instant) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let sent = Instant::now();
        if node.client().lease_get(id).await.unwrap().is_none() {
            return (sent, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lease {id} was not gone within {WAIT:?}");
}

/// An abandoned lease ends no sooner than its TTL after its grant was sent, and no later than
/// [`LATE_BOUND`] after that from its grant's answer.
async fn assert_ends_on_time(node: &NodeProc, id: u64, sent: Instant, answered: Instant) {
    let (gone_sent, gone_answered) = gone(node, id).await;
    assert!(
        gone_sent >= sent + TTL,
        "lease {id} ended {:?} after its grant: before its TTL",
        gone_sent - sent
    );
    assert!(
        gone_answered <= answered + TTL + LATE_BOUND,
        "lease {id} ended {:?} after its grant: more than {LATE_BOUND:?} late",
        gone_answered - answered
    );
}

/// Keeps lease `id` alive every 500 ms until told to stop; the failures seen.
fn keep_alive(
    node_addr: String,
    id: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = concordance_client::Client::new(&node_addr).unwrap();
        let mut failures = Vec::new();
        while !*stop.borrow() {
            if let Err(e) = client.lease_keep_alive(id).await {
                failures.push(e.to_string());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        failures
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn wall_clock_jumps_neither_keep_an_abandoned_lease_nor_end_a_kept_one() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("wall-clock-offset");
    let node = start_with_movable_wall_clock(dir.path(), &offset, &["--bootstrap"]);
    node.wait_ready().await;
    // The control: moving the offset moves the node's wall clock.
    set_wall_clock(&node, &offset, 0).await;

    let (kept, _, _) = grant(&node).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let keeper = keep_alive(node.addr(), kept, stop_rx);

    // An hour back: an abandoned lease still ends on time (timed by the wall clock, it would
    // have lived an hour more).
    let (abandoned, sent, answered) = grant(&node).await;
    set_wall_clock(&node, &offset, -3600).await;
    assert_ends_on_time(&node, abandoned, sent, answered).await;

    // An hour forward: a new lease is not ended at once, and still ends on time.
    let (abandoned, sent, answered) = grant(&node).await;
    set_wall_clock(&node, &offset, 3600).await;
    assert_ends_on_time(&node, abandoned, sent, answered).await;

    // The kept lease lived through both jumps, every keep-alive answered.
    stop_tx.send(true).unwrap();
    let failures = keeper.await.unwrap();
    assert!(failures.is_empty(), "keep-alives failed: {failures:?}");
    assert!(
        node.client().lease_get(kept).await.unwrap().is_some(),
        "the kept lease ended"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alives_are_answered_by_the_leader_without_a_log_entry() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProc::start("n1", dir.path(), &["--bootstrap"]);
    first.wait_ready().await;
    let join = format!("--join={}", first.addr());
    let second = NodeProc::start("n2", dir.path(), &[&join]);
    second.wait_ready().await;
    let (leader, follower) = if first.client().status().await.unwrap().role == "leader" {
        (&first, &second)
    } else {
        (&second, &first)
    };
    eventually("the newest command set", WAIT, || async {
        let v = leader.client().version().await.ok()?;
        (v.cluster_command_version == v.command_version).then_some(())
    })
    .await;
    let id = leader.client().lease_grant(TTL).await.unwrap().id;
    let before = leader.client().status().await.unwrap().last_log_index;
    let started = Instant::now();
    for i in 0..60 {
        // Half through the follower, which forwards them.
        let node = if i % 2 == 0 { leader } else { follower };
        let kept = node.client().lease_keep_alive(id).await.unwrap();
        assert_eq!(kept.ttl_ms, TTL.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = leader.client().status().await.unwrap().last_log_index;
    // The lease outlived its TTL twice over on keep-alives alone.
    assert!(started.elapsed() > 2 * TTL);
    assert!(leader.client().lease_get(id).await.unwrap().is_some());
    // Housekeeping may write a few entries meanwhile (an idempotency sweep), never one per
    // keep-alive.
    let written = after.unwrap_or(0) - before.unwrap_or(0);
    assert!(written < 5, "{written} log entries for 60 keep-alives");
    // Time left is the leader's, through either member.
    for node in [leader, follower] {
        let info = node.client().lease_get(id).await.unwrap().unwrap();
        assert!(
            info.remaining_ms > TTL.as_millis() as u64 / 2,
            "{} ms left, read on {}",
            info.remaining_ms,
            node.name
        );
    }
    // Abandoned, it ends within its TTL and the bound; a keep-alive then finds it gone.
    let stopped = Instant::now();
    let (_, gone_answered) = gone(follower, id).await;
    assert!(gone_answered - stopped <= TTL + LATE_BOUND);
    let refused = follower.client().lease_keep_alive(id).await.unwrap_err();
    assert!(refused.to_string().contains("lease_not_found"), "{refused}");
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th of them, in clock ticks (100 a second on Linux).
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The cluster's CPU per keep-alive: 3 members of `program` (`None`: this build), `leases`
/// leases kept alive `rounds` times each by 32 clients, through the leader only or through
/// every member in turn (followers forward them). In µs.
async fn keep_alive_cpu(
    program: Option<&Path>,
    leases: usize,
    rounds: usize,
    leader_only: bool,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 1..=3 {
        let join = nodes.first().map(|n| format!("--join={}", n.addr()));
        let args = [join.as_deref().unwrap_or("--bootstrap")];
        let name = format!("node{i}");
        let node = match program {
            Some(p) => NodeProc::start_program(p, &name, dir.path(), &args, &[]),
            None => NodeProc::start(&name, dir.path(), &args),
        };
        node.wait_ready().await;
        nodes.push(node);
    }
    eventually("the newest command set", WAIT, || async {
        let v = nodes[0].client().version().await.ok()?;
        (v.cluster_command_version == v.command_version).then_some(())
    })
    .await;
    let mut clients: Vec<concordance_client::Client> = Vec::new();
    for n in &nodes {
        if !leader_only || n.client().status().await.unwrap().role == "leader" {
            clients.push(n.client());
        }
    }
    let mut ids = Vec::with_capacity(leases);
    for chunk in 0..leases.div_ceil(64) {
        let grants = (0..64.min(leases - chunk * 64))
            .map(|i| clients[i % clients.len()].lease_grant(Duration::from_secs(600)));
        for g in futures::future::join_all(grants).await {
            ids.push(g.unwrap().id);
        }
    }
    let pids: Vec<u32> = nodes.iter().map(NodeProc::pid).collect();
    let before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let ids = std::sync::Arc::new(ids);
    let workers = (0..32).map(|w| {
        let ids = ids.clone();
        let client = clients[w % clients.len()].clone();
        tokio::spawn(async move {
            for round in 0..rounds {
                for id in ids.iter().skip(w).step_by(32) {
                    client
                        .lease_keep_alive(*id)
                        .await
                        .unwrap_or_else(|e| panic!("round {round}: {e}"));
                }
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w.unwrap();
    }
    let after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    (after - before) * 1e6 / (leases * rounds) as f64
}

/// The figure in docs/benchmarks.md ("Lease keep-alives"): the cluster's CPU per keep-alive at
/// 10,000 leases, the earlier build (a Raft entry per keep-alive) against this one:
/// `CONCORDANCE_PREVIOUS_NODE=$(tests/k8s/previous-binary) scripts/cargo test --release
/// --locked --workspace --test time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: about 15 s"]
async fn what_a_keep_alive_costs_at_ten_thousand_leases() {
    let previous = std::env::var_os("CONCORDANCE_PREVIOUS_NODE")
        .map(std::path::PathBuf::from)
        .expect("CONCORDANCE_PREVIOUS_NODE=$(tests/k8s/previous-binary)");
    for (leader_only, through) in [(true, "the leader"), (false, "every member in turn")] {
        let earlier = keep_alive_cpu(Some(&previous), 10_000, 3, leader_only).await;
        let this = keep_alive_cpu(None, 10_000, 3, leader_only).await;
        println!(
            "keep-alives at 10,000 leases through {through}, the cluster's CPU per keep-alive: \
             earlier build {earlier:.0} µs, this build {this:.0} µs ({:.2}x less)",
            earlier / this
        );
    }
}
