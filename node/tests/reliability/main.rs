//! Reliability: real clusters under faults, every client operation recorded, and the history
//! checked for linearizability and the store's invariants. See docs/reliability.md.
//!
//! Quick seeds run with the test suite; the soak runs for as long as asked:
//! `SOAK_SECONDS=600 SEED=7 NODES=5 cargo test --release -p concordance --test reliability -- --ignored --nocapture soak`

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod cluster;
mod corruption;
mod durability;
mod fuzz;
mod history;
mod nemesis;
mod watcher;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use concordance_client::Consistency;

use crate::checker::Input;
use crate::checker::Operation;
use crate::checker::Output;
use crate::cluster::Cluster;
use crate::history::Record;
use crate::history::Status;
use crate::workload::Endpoints;
use crate::workload::Workload;
use crate::workload::since;

/// Search steps the checker may take per key before giving up.
const CHECK_BUDGET: u64 = 20_000_000;

pub struct RunConfig {
    pub seed: u64,
    pub nodes: usize,
    pub faults_for: Duration,
    pub clients: usize,
    pub keys: usize,
    /// Nodes run with the unsynced-data shim: a SIGKILL loses their unsynced tail.
    pub lose_unsynced: bool,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub faults: Vec<String>,
    pub ops: usize,
    pub ok: usize,
    pub indeterminate: usize,
    pub failed: usize,
    pub checked_linearizable: usize,
    pub checked_serializable: usize,
    pub acknowledged_writes: usize,
    pub leader_terms: usize,
    pub terms_with_two_leaders: usize,
    pub final_revision: u64,
    pub watch_changes: usize,
    pub watch_resumes: usize,
}

/// Writes the run's history (one operation per line) where a failing run can be studied.
fn dump(cfg: &RunConfig, history: &[Record]) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "reliability-seed{}-{}nodes.history",
        cfg.seed, cfg.nodes
    ));
    let mut sorted: Vec<&Record> = history.iter().collect();
    sorted.sort_by_key(|r| r.op.call);
    let text: String = sorted.iter().map(|r| format!("{r:?}\n")).collect();
    if std::fs::write(&path, text).is_ok() {
        println!("history of seed {}: {}", cfg.seed, path.display());
    }
}

fn endpoints_of(c: &Cluster) -> Vec<(String, u16)> {
    c.names()
        .into_iter()
        .map(|n| (n.clone(), c.port(&n)))
        .collect()
}

/// Reads every key linearizably once the cluster is whole again, retrying through any node.
async fn final_reads(
    c: &Cluster,
    keys: usize,
    t0: Instant,
) -> Result<(Vec<Record>, BTreeMap<String, Option<(String, u64)>>), String> {
    let mut recs = Vec::new();
    let mut finals = BTreeMap::new();
    for k in 0..keys {
        let key = format!("reg/{k}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = c.names()[k % c.names().len()].clone();
            let call = since(t0);
            match tokio::time::timeout(Duration::from_secs(5), c.client(&node).get(&key)).await {
                Ok(Ok(r)) => {
                    let seen = r.as_ref().map(|r| {
                        (
                            r.kv.value.as_str().unwrap_or_default().to_string(),
                            r.kv.mod_revision,
                        )
                    });
                    recs.push(Record {
                        op: Operation {
                            key: key.clone(),
                            client: usize::MAX,
                            input: Input::Get,
                            output: Output::Read(seen.as_ref().map(|s| s.0.clone())),
                            call,
                            ret: Some(since(t0)),
                        },
                        node,
                        serializable: false,
                        status: Status::Ok,
                        revision: r.as_ref().map(|r| r.revision),
                        mod_revision: seen.as_ref().map(|s| s.1),
                    });
                    finals.insert(key, seen);
                    break;
                }
                other if Instant::now() > deadline => {
                    return Err(format!("final read of {key} kept failing: {other:?}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok((recs, finals))
}

/// Every replica's full listing (serializable, i.e. its own state) must be the same.
async fn check_replicas_equal(c: &Cluster) -> Result<usize, String> {
    let mut listings = BTreeMap::new();
    for n in c.names() {
        let l = c
            .client(&n)
            .list("", None, Some(10000), Consistency::Serializable)
            .await
            .map_err(|e| format!("listing {n}: {e}"))?;
        let kvs: Vec<String> = l
            .kvs
            .iter()
            .map(|kv| {
                format!(
                    "{} {} c{} m{} v{}",
                    kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version
                )
            })
            .collect();
        listings.insert(n, (l.revision, kvs));
    }
    let first = listings.values().next().cloned().unwrap();
    for (n, l) in &listings {
        if *l != first {
            return Err(format!(
                "replica {n} differs after healing:\n{l:?}\nvs\n{first:?}"
            ));
        }
    }
    Ok(first.1.len())
}

/// One run: a cluster, clients under a seed's fault schedule, then every check.
pub async fn run(cfg: &RunConfig) -> Result<Summary, String> {
    let mut cluster = Cluster::start(cfg.nodes, &[], cfg.lose_unsynced).await;
    for n in cluster.names() {
        cluster.members[&n].proc.wait_ready().await;
    }
    let result = drive(&mut cluster, cfg).await;
    result.map_err(|e| {
        eprintln!("{}", cluster.logs());
        let kept = cluster.keep_logs(&format!("seed{}", cfg.seed));
        format!("{e}\n(whole node logs: {})", kept.display())
    })
}

async fn drive(cluster: &mut Cluster, cfg: &RunConfig) -> Result<Summary, String> {
    let t0 = Instant::now();
    // Aligns the history's times (from t0) with the node logs' wall-clock stamps.
    println!(
        "[seed {}] t=0 is {:.3} s after the Unix epoch",
        cfg.seed,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    );
    let endpoints: Endpoints = Arc::new(RwLock::new(endpoints_of(cluster)));
    let stop = Arc::new(AtomicBool::new(false));
    let workload = Workload {
        keys: cfg.keys,
        clients: cfg.clients,
    };
    let clients = {
        let (e, s, seed) = (endpoints.clone(), stop.clone(), cfg.seed);
        tokio::spawn(async move { workload.run(seed, t0, e, s).await })
    };
    let sampler = tokio::spawn(workload::sample_leaders(
        t0,
        endpoints.clone(),
        stop.clone(),
    ));
    let watch_until = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watch = tokio::spawn(watcher::watch(
        cfg.seed,
        "reg/",
        endpoints.clone(),
        stop.clone(),
        watch_until.clone(),
    ));

    let mut summary = Summary::default();
    let mut schedule = nemesis::Schedule::new(cfg.seed);
    let faults_end = Instant::now() + cfg.faults_for;
    while Instant::now() < faults_end {
        let step = schedule.next_step();
        let what = nemesis::apply(cluster, &step).await;
        *endpoints.write().unwrap() = endpoints_of(cluster);
        println!(
            "[seed {} t={:>6.1}s] {what}",
            cfg.seed,
            t0.elapsed().as_secs_f64()
        );
        summary.faults.push(what);
    }
    cluster.heal_all();
    // A little load on the healed cluster, then the clients stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut history = clients.await.map_err(|e| e.to_string())?;
    let samples = sampler.await.map_err(|e| e.to_string())?;

    let (final_recs, finals) = final_reads(cluster, cfg.keys, t0).await?;
    history.extend(final_recs);
    summary.final_revision = cluster.wait_converged(Duration::from_secs(60)).await?;
    check_replicas_equal(cluster).await?;
    watch_until.store(summary.final_revision.max(1), Ordering::SeqCst);
    let watch_log = tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .map_err(|_| "the watcher did not reach the final revision within 60 s".to_string())?
        .map_err(|e| e.to_string())?;
    summary.watch_changes = watch_log.changes.len();
    summary.watch_resumes = watch_log.resumes;
    dump(cfg, &history);

    summary.ops = history.len();
    summary.ok = history.iter().filter(|r| r.status == Status::Ok).count();
    summary.indeterminate = history
        .iter()
        .filter(|r| matches!(r.status, Status::Indeterminate(_)))
        .count();
    summary.failed = history
        .iter()
        .filter(|r| matches!(r.status, Status::Fail(_)))
        .count();

    let ops = history::for_checker(&history);
    summary.checked_linearizable = ops.len();
    let verdict = checker::check_history(&ops, CHECK_BUDGET);
    if !matches!(verdict, checker::Verdict::Linearizable) {
        return Err(checker::describe(&verdict));
    }
    history::check_revisions(&history)?;
    watcher::check_watch(&watch_log, &history, summary.final_revision)?;
    summary.checked_serializable = history::check_serializable(&history)?;
    summary.acknowledged_writes = history::check_no_lost_writes(&history, &finals)?;
    let leaders = history::check_leaders(&samples)?;
    summary.leader_terms = leaders.terms;
    summary.terms_with_two_leaders = leaders.terms_with_two_leaders;
    Ok(summary)
}

async fn run_and_report(cfg: RunConfig) {
    println!(
        "reliability run: seed {} on {} nodes, {:?} of faults, {} clients on {} keys, \
         unsynced writes lost on SIGKILL: {}",
        cfg.seed, cfg.nodes, cfg.faults_for, cfg.clients, cfg.keys, cfg.lose_unsynced
    );
    match run(&cfg).await {
        Ok(s) => println!(
            "seed {} passed: {} faults; {} operations ({} ok, {} indeterminate, {} failed); \
             {} checked for linearizability, {} serializable reads checked, {} acknowledged \
             writes all present; {} terms led ({} by two nodes in turn); final revision {}; \
             watch saw {} changes, gap-free across {} resumes",
            cfg.seed,
            s.faults.len(),
            s.ops,
            s.ok,
            s.indeterminate,
            s.failed,
            s.checked_linearizable,
            s.checked_serializable,
            s.acknowledged_writes,
            s.leader_terms,
            s.terms_with_two_leaders,
            s.final_revision,
            s.watch_changes,
            s.watch_resumes
        ),
        Err(e) => panic!(
            "seed {} FAILED on {} nodes (reproduce: SEED={} NODES={} SOAK_SECONDS={} cargo test \
             --release -p concordance --test reliability -- --ignored --nocapture soak):\n{e}",
            cfg.seed,
            cfg.nodes,
            cfg.seed,
            cfg.nodes,
            cfg.faults_for.as_secs()
        ),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_under_faults_seed_1() {
    run_and_report(RunConfig {
        seed: 1,
        nodes: 3,
        faults_for: Duration::from_secs(20),
        clients: 4,
        keys: 4,
        lose_unsynced: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_under_faults_seed_2() {
    run_and_report(RunConfig {
        seed: 2,
        nodes: 5,
        faults_for: Duration::from_secs(20),
        clients: 4,
        keys: 4,
        lose_unsynced: true,
    })
    .await;
}

/// The long run: `SOAK_SECONDS` of faults (default 300), seed `SEED` (default 7), `NODES`
/// (default 5), `CLIENTS` (default 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn soak() {
    run_and_report(RunConfig {
        seed: env_u64("SEED", 7),
        nodes: env_u64("NODES", 5) as usize,
        faults_for: Duration::from_secs(env_u64("SOAK_SECONDS", 300)),
        clients: env_u64("CLIENTS", 6) as usize,
        keys: env_u64("KEYS", 6) as usize,
        lose_unsynced: env_u64("LOSE_UNSYNCED", 1) == 1,
    })
    .await;
}

/// The shim bites on a real node: a write's log entry is fsynced before the answer, the
/// state machine's apply of it is not (it is replayed from the log), so after a SIGKILL with
/// the shim the data dir has the entry but not its apply; without the shim, both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_tail_is_lost_on_sigkill_with_the_shim_and_writes_survive() {
    for lose in [false, true] {
        let mut c = Cluster::start(1, &[], lose).await;
        let n = c.names()[0].clone();
        c.members[&n].proc.wait_ready().await;
        let put = c
            .client(&n)
            .put("dur/k", &serde_json::json!("v1"))
            .await
            .unwrap();
        // Let the apply reach RocksDB (it is in its memtable and, without the shim, the WAL).
        common::eventually("applied", common::WAIT, || async {
            let s = c.client(&n).status().await.ok()?;
            (s.revision >= put.revision).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.kill(&n);
        let i = durability::inspect(&c.members[&n].proc.data_dir);
        let last_log = i["lastLog"]["index"].as_u64().unwrap();
        let applied = i["lastApplied"]["index"].as_u64().unwrap_or(0);
        if lose {
            assert!(
                applied < last_log,
                "with the shim the unsynced apply must be gone: {i}"
            );
        } else {
            assert_eq!(applied, last_log, "without the shim nothing is lost: {i}");
        }
        c.restart(&n);
        c.members[&n].proc.wait_ready().await;
        let got = c
            .client(&n)
            .get("dur/k")
            .await
            .unwrap()
            .expect("acknowledged write");
        assert_eq!(got.kv.value, serde_json::json!("v1"));
        assert_eq!(got.kv.mod_revision, put.revision);
    }
}

/// `recover` keeps every write in the survivor's log, not only the applied ones: with the
/// shim, a SIGKILL leaves an acknowledged write in the log but not in the applied state, and
/// the recovered one-member cluster must still hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_keeps_acknowledged_writes_the_survivor_logged_but_had_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let shim = durability::shim();
    let shim = shim.display().to_string();
    let mut n =
        common::NodeProc::start_env("n1", dir.path(), &["--bootstrap"], &[("LD_PRELOAD", &shim)]);
    n.wait_ready().await;
    let c = n.client();
    let mut last = 0;
    for i in 0..5 {
        last = c
            .put(&format!("rec/{i}"), &serde_json::json!(i))
            .await
            .unwrap()
            .revision;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    n.kill();
    let before = durability::inspect(&n.data_dir);
    let last_log = before["lastLog"]["index"].as_u64().unwrap();
    let applied = before["lastApplied"]["index"].as_u64().unwrap_or(0);
    assert!(
        applied < last_log,
        "the setup needs logged but unapplied writes: {before}"
    );

    let out = common::run_bin(
        &["recover", &format!("--data-dir={}", n.data_dir.display())],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("not yet applied: applied now"), "{text}");
    let after = durability::inspect(&n.data_dir);
    assert!(
        after["lastApplied"]["index"].as_u64().unwrap() >= last_log,
        "recover applies the whole log: {after}"
    );

    n.restart();
    n.wait_ready().await;
    let c = n.client();
    for i in 0..5 {
        let got = c
            .get(&format!("rec/{i}"))
            .await
            .unwrap()
            .expect("acknowledged write");
        assert_eq!(got.kv.value, serde_json::json!(i));
    }
    assert!(c.status().await.unwrap().revision >= last);
    c.put("rec/after", &serde_json::json!(1)).await.unwrap();
}

/// Random and mutated requests on every route, on a single node and through a follower of a
/// three-node cluster (so forwarding to the leader is fuzzed too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_http_requests_never_5xx_crash_or_half_apply() {
    let admin = format!("--api-key={}", common::ADMIN_KEY);
    let agent = format!("--agent-key={}", common::AGENT_KEY);
    for (nodes, seed, count) in [(1, 11, 1500), (3, 12, 800)] {
        let c = Cluster::start(nodes, &[&admin, &agent], false).await;
        for n in c.names() {
            c.members[&n].proc.wait_ready().await;
        }
        let leader = c.leader().await;
        let target = c
            .names()
            .into_iter()
            .find(|n| nodes == 1 || Some(n) != leader.as_ref())
            .unwrap();
        let base = format!("http://127.0.0.1:{}", c.port(&target));
        let r = fuzz::fuzz_http(&base, common::ADMIN_KEY, common::AGENT_KEY, seed, count).await;
        println!(
            "fuzz seed {seed} on {nodes} node(s): {} requests, statuses {:?}, {} accepted writes",
            r.requests, r.by_status, r.accepted_writes
        );
        for n in c.names() {
            let h = c.client(&n).health().await;
            assert!(h.is_ok(), "{n} is down after fuzzing: {h:?}\n{}", c.logs());
        }
    }
}

/// Damage done to a stopped node's data dir, and what the node must do about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_dirs_are_detected_never_served() {
    use corruption::*;
    type Damage = fn(&std::path::Path);
    let cases: [(&str, bool, Damage); 7] = [
        ("bytes flipped in every table file", true, |d| {
            for f in files_with(d, ".sst") {
                flip(&f, 0.3);
            }
        }),
        ("largest table file truncated", true, |d| {
            truncate(&files_with(d, ".sst")[0], 0.5)
        }),
        ("MANIFEST truncated", true, |d| {
            truncate(
                &files_with(d, "")
                    .into_iter()
                    .find(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("MANIFEST")
                    })
                    .unwrap(),
                0.3,
            )
        }),
        ("CURRENT names a missing MANIFEST", true, |d| {
            std::fs::write(d.join("CURRENT"), "MANIFEST-999999\n").unwrap()
        }),
        (
            "bytes flipped in the middle of the write-ahead log",
            false,
            |d| flip(&files_with(d, ".log")[0], 0.5),
        ),
        (
            "bytes flipped near the end of the write-ahead log",
            false,
            |d| flip(&files_with(d, ".log")[0], 0.97),
        ),
        ("bytes flipped in the middle of the Raft log", false, |d| {
            flip_written(
                &files_with(&d.parent().unwrap().join("log"), ".seg")[0],
                0.5,
            )
        }),
    ];
    for (what, flushed, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut node = prepared_node(dir.path(), flushed).await;
        damage(&node.data_dir.join("db"));
        let outcome = start_damaged(&mut node).await;
        println!("{what}: {outcome:?}");
    }
}
