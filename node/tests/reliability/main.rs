//! Reliability: real clusters under faults, every client operation recorded, and the history
//! checked for linearizability and the store's invariants; a lease kept alive all through
//! must live and one left alone must end, wall-clock jumps and lossy links among the faults.
//! See docs/reliability.md.
//!
//! Two seeds run with the test suite (as root: partitions are packet filters on the nodes'
//! user ids); the soak runs for as long as asked, and `scripts/test --long` runs several:
//! `SOAK_SECONDS=600 SEED=7 NODES=5 cargo test --release -p concordance --test reliability -- --ignored --nocapture soak`

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod cluster;
mod corruption;
mod disk;
mod durability;
mod failing_disk;
mod fuzz;
mod history;
mod leases;
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

// Floors on what a run did (see `check_floors`), far below what any run on this machine does
// (docs/reliability.md's results), so only a run that mostly failed trips them.

/// Acknowledged writes (each with a revision of its own) per second of client load.
const MIN_ACKED_WRITES_PER_SECOND: f64 = 10.0;
/// Share of operations answered.
const MIN_OK_SHARE: f64 = 0.6;
/// Share of operations given to the linearizability checker with their answer (reads that
/// answered and acknowledged writes; indeterminate writes do not count here).
const MIN_CHECKED_WITH_ANSWER_SHARE: f64 = 0.4;
/// Share of operations that were serializable reads that answered.
const MIN_SERIALIZABLE_SHARE: f64 = 0.03;

pub struct RunConfig {
    pub seed: u64,
    pub nodes: usize,
    pub faults_for: Duration,
    pub clients: usize,
    pub keys: usize,
    /// Nodes run with the unsynced-data shim: a SIGKILL loses their unsynced tail.
    pub lose_unsynced: bool,
    /// Every node's `--snapshot-entries`. With it the run must see a snapshot built, one
    /// installed on a member and a member's Raft log purged, all under the faults.
    pub snapshot_entries: Option<u64>,
    pub plan: Plan,
    /// With a size (e.g. `128m`), every member's data dir is a tmpfs of its own.
    pub volume: Option<&'static str>,
}

/// What the run does to the cluster while the clients run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The seed's fault schedule, for `faults_for` and then until every fault kind has
    /// taken effect at least once.
    Faults,
    /// A majority of the nodes down for all of `faults_for`: no write can commit, so the run
    /// must fail its floors (the control for them).
    MajorityDown,
    /// The members' volumes filled to the `no_space` alarm and emptied again, for
    /// `faults_for` and at least twice.
    DiskFull,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub faults: Vec<String>,
    pub faults_by_kind: BTreeMap<nemesis::Fault, usize>,
    pub ops: usize,
    pub ok: usize,
    pub indeterminate: usize,
    pub failed: usize,
    pub checked_linearizable: usize,
    pub checked_with_answer: usize,
    pub checked_serializable: usize,
    pub acknowledged_writes: usize,
    pub leader_terms: usize,
    pub terms_with_two_leaders: usize,
    pub final_revision: u64,
    pub watch_changes: usize,
    pub watch_resumes: usize,
    pub snapshots_built: usize,
    pub snapshots_installed: usize,
    pub max_purged_index: u64,
    /// How long the clients ran.
    pub load_seconds: f64,
    /// Keep-alives of the kept lease answered, failed, and the longest gap between answers.
    pub keep_alives_ok: usize,
    pub keep_alives_failed: usize,
    pub longest_keep_alive_gap: Duration,
    /// What was written outside the workload's prefix (the full-disk fault's filler).
    pub outside_prefix: watcher::Outside,
}

/// A run passes only if it did enough for its checks to mean something: a floor on
/// acknowledged writes per second of load, on the share of operations that answered, that
/// the checker got with their answers and that were serializable reads, and every key
/// written. The checks themselves pass on an empty history (nothing to contradict), and an
/// error after a request was sent makes a write indeterminate, which the checker may place
/// "never": a run whose writes all fail would otherwise pass. Returns every floor missed.
pub fn check_floors(s: &Summary, keys_written: usize, keys: usize) -> Result<(), String> {
    let mut missed = Vec::new();
    let ops = s.ops.max(1) as f64;
    let want_acked = (MIN_ACKED_WRITES_PER_SECOND * s.load_seconds).ceil() as usize;
    if s.acknowledged_writes < want_acked {
        missed.push(format!(
            "{} acknowledged writes in {:.1} s of load, below the floor of {want_acked}",
            s.acknowledged_writes, s.load_seconds
        ));
    }
    let shares = [
        ("answered", s.ok, MIN_OK_SHARE),
        (
            "checked for linearizability with their answer",
            s.checked_with_answer,
            MIN_CHECKED_WITH_ANSWER_SHARE,
        ),
        (
            "serializable reads that answered",
            s.checked_serializable,
            MIN_SERIALIZABLE_SHARE,
        ),
    ];
    for (what, n, min) in shares {
        if (n as f64) < min * ops {
            missed.push(format!(
                "{n} of {} operations {what} ({:.1} %), below the floor of {:.0} %",
                s.ops,
                100.0 * n as f64 / ops,
                100.0 * min
            ));
        }
    }
    if keys_written < keys {
        missed.push(format!(
            "only {keys_written} of {keys} keys got an acknowledged write"
        ));
    }
    if missed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the run did too little for its checks to mean anything:\n  {}",
            missed.join("\n  ")
        ))
    }
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
/// Every node's `--state-check-interval-secs` in a run.
const STATE_CHECK_SECS: u64 = 2;

/// The leaders' state checks (every replica's hash at one log index) ran during the run and
/// never found replicas that differ: no alarm raised, no check that mismatched or could not
/// decide. Waits (bounded) for at least one check that every voter answered.
async fn check_state_checks_agreed(c: &Cluster) -> Result<(), String> {
    let http = reqwest::Client::new();
    let get = |port: u16, path: &'static str| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/api/v1/{path}"))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())
        }
    };
    let count = |metrics: &str, outcome: &str| -> f64 {
        let name = format!("concordance_state_checks_total{{outcome=\"{outcome}\"}}");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str())?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(STATE_CHECK_SECS * 15);
    loop {
        let mut matched = 0.0;
        for n in c.names() {
            let port = c.port(&n);
            let alarms: concordance_client::AlarmsResponse =
                serde_json::from_str(&get(port, "cluster/alarms").await?)
                    .map_err(|e| format!("alarms of {n}: {e}"))?;
            if !alarms.alarms.is_empty() {
                return Err(format!("{n} lists alarms: {:?}", alarms.alarms));
            }
            let metrics = get(port, "metrics").await?;
            for bad in ["mismatch", "undecided"] {
                if count(&metrics, bad) > 0.0 {
                    return Err(format!("{n} counted a state check with outcome {bad}"));
                }
            }
            matched += count(&metrics, "match");
        }
        if matched > 0.0 {
            println!(
                "state checks: {matched} matched (summed over the members that led), none differed"
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("no state check that every voter answered during the run".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

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
    if !cluster::is_root() {
        return Err(
            "a run under faults needs root: partitions are packet filters on the \
                    nodes' user ids (run as root, as CI does)"
                .into(),
        );
    }
    let extra: Vec<String> = cfg
        .snapshot_entries
        .map(|n| format!("--snapshot-entries={n}"))
        .into_iter()
        // The replicas' states are compared all through the run, faults included.
        .chain([format!("--state-check-interval-secs={STATE_CHECK_SECS}")])
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_on(cfg.nodes, &extra, cfg.lose_unsynced, cfg.volume).await;
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

/// Runs the plan's faults while the clients run. Every fault must take effect, and with
/// [`Plan::Faults`] every kind at least once: the run goes on past `faults_for` until each
/// has (the schedule's first pass holds each kind once), for at most a minute more.
async fn do_faults(
    cluster: &mut Cluster,
    cfg: &RunConfig,
    t0: Instant,
    endpoints: &Endpoints,
    summary: &mut Summary,
) -> Result<(), String> {
    match cfg.plan {
        Plan::Faults => {
            let mut schedule = nemesis::Schedule::new(cfg.seed);
            let faults_end = Instant::now() + cfg.faults_for;
            let hard_end = faults_end + Duration::from_secs(60);
            loop {
                let covered = nemesis::ALL
                    .iter()
                    .all(|f| summary.faults_by_kind.contains_key(f));
                let now = Instant::now();
                if now >= hard_end || (now >= faults_end && covered) {
                    break;
                }
                let step = schedule.next_step();
                let applied = nemesis::apply(cluster, &step).await;
                *endpoints.write().unwrap() = endpoints_of(cluster);
                let what = applied
                    .map_err(|e| format!("fault {:?} did not take effect: {e}", step.fault))?;
                println!(
                    "[seed {} t={:>6.1}s] {what}",
                    cfg.seed,
                    t0.elapsed().as_secs_f64()
                );
                summary.faults.push(what);
                *summary.faults_by_kind.entry(step.fault).or_default() += 1;
            }
            let missing: Vec<nemesis::Fault> = nemesis::ALL
                .into_iter()
                .filter(|f| !summary.faults_by_kind.contains_key(f))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "fault kinds that never took effect in this run: {missing:?} (applied: {:?})",
                    summary.faults_by_kind
                ));
            }
        }
        Plan::DiskFull => {
            let end = Instant::now() + cfg.faults_for;
            let mut round = 0;
            while round < 2 || Instant::now() < end {
                let what = disk::fill_then_make_room(
                    &endpoints_of(cluster),
                    round,
                    &mut summary.outside_prefix,
                )
                .await
                .map_err(|e| format!("the full-disk fault did not take effect: {e}"))?;
                println!(
                    "[seed {} t={:>6.1}s] {what}",
                    cfg.seed,
                    t0.elapsed().as_secs_f64()
                );
                summary.faults.push(what);
                round += 1;
            }
        }
        Plan::MajorityDown => {
            let names = cluster.names();
            for n in &names[..names.len() / 2 + 1] {
                cluster.kill(n);
            }
            tokio::time::sleep(cfg.faults_for).await;
            summary.faults.push(format!(
                "{:?} down for {:?}",
                &names[..names.len() / 2 + 1],
                cfg.faults_for
            ));
        }
    }
    Ok(())
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
    let leases = leases::grant_both(&endpoints).await?;
    let workload = Workload {
        // Only under the full-disk plan: its refusals are then definite, and the checker
        // would otherwise have thousands of indeterminate writes to place.
        single_attempt: cfg.plan == Plan::DiskFull,
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
    let keeper = tokio::spawn(leases::keep(endpoints.clone(), stop.clone(), leases));
    let watch_until = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watch = tokio::spawn(watcher::watch(
        cfg.seed,
        "reg/",
        endpoints.clone(),
        stop.clone(),
        watch_until.clone(),
    ));

    let mut summary = Summary::default();
    let faults = do_faults(cluster, cfg, t0, &endpoints, &mut summary).await;
    if cfg.plan == Plan::MajorityDown {
        // The control: the clients stop before the majority is back, so no load meets a
        // healed cluster (its writes would meet the floors and hide the control's point).
        stop.store(true, Ordering::SeqCst);
    }
    cluster.heal_all();
    *endpoints.write().unwrap() = endpoints_of(cluster);
    if let Err(e) = faults {
        stop.store(true, Ordering::SeqCst);
        return Err(e);
    }
    // A little load on the healed cluster, then the clients stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    summary.load_seconds = t0.elapsed().as_secs_f64();
    let mut history = clients.await.map_err(|e| e.to_string())?;
    let samples = sampler.await.map_err(|e| e.to_string())?;
    let lease_log = keeper.await.map_err(|e| e.to_string())?;
    summary.keep_alives_ok = lease_log.keep_alives_ok;
    summary.keep_alives_failed = lease_log.keep_alives_failed;
    summary.longest_keep_alive_gap = lease_log.longest_gap;
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
    summary.checked_with_answer = ops.iter().filter(|o| o.ret.is_some()).count();
    summary.checked_serializable = history
        .iter()
        .filter(|r| r.serializable && r.status == Status::Ok)
        .count();
    let acked = history::acknowledged_writes(&history);
    summary.acknowledged_writes = acked.len();
    let keys_written = acked
        .iter()
        .map(|r| r.op.key.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // Before the checks: they all pass on a history with nothing in it.
    check_floors(&summary, keys_written, cfg.keys).inspect_err(|_| {
        println!("{}", report(cfg, &summary));
    })?;

    leases::check(&endpoints, &lease_log).await?;
    let (final_recs, finals) = final_reads(cluster, cfg.keys, t0).await?;
    history.extend(final_recs);
    dump(cfg, &history);
    summary.final_revision = cluster.wait_converged(Duration::from_secs(60)).await?;
    check_replicas_equal(cluster).await?;
    check_state_checks_agreed(cluster).await?;
    watch_until.store(summary.final_revision.max(1), Ordering::SeqCst);
    let watch_log = tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .map_err(|_| "the watcher did not reach the final revision within 60 s".to_string())?
        .map_err(|e| e.to_string())?;
    summary.watch_changes = watch_log.changes.len();
    summary.watch_resumes = watch_log.resumes;

    let verdict = checker::check_history(&history::for_checker(&history), CHECK_BUDGET);
    if !matches!(verdict, checker::Verdict::Linearizable) {
        return Err(checker::describe(&verdict));
    }
    history::check_revisions(&history)?;
    watcher::check_watch(
        &watch_log,
        &history,
        summary.final_revision,
        &summary.outside_prefix,
    )?;
    summary.checked_serializable = history::check_serializable(&history)?;
    summary.acknowledged_writes = history::check_no_lost_writes(&history, &finals)?;
    let leaders = history::check_leaders(&samples)?;
    summary.leader_terms = leaders.terms;
    summary.terms_with_two_leaders = leaders.terms_with_two_leaders;
    if leaders.terms == 0 {
        return Err(format!(
            "the status sampler never saw a leader in {} samples",
            samples.len()
        ));
    }
    if cfg.snapshot_entries.is_some() {
        check_snapshots_and_compaction(cluster, &mut summary)?;
    }
    Ok(summary)
}

/// With a small `--snapshot-entries`, the faults ran while members built snapshots, sent them
/// to members that lagged or were new, and purged their logs. Counted from the node logs
/// (every member's, removed ones too) and, for the purge, from each stopped member's data
/// dir (`concordance inspect`).
fn check_snapshots_and_compaction(cluster: &mut Cluster, s: &mut Summary) -> Result<(), String> {
    s.snapshots_built = cluster.count_in_logs("snapshot built");
    s.snapshots_installed = cluster.count_in_logs("snapshot installed");
    for n in cluster.names() {
        cluster.kill(&n);
        let i = durability::inspect(&cluster.members[&n].proc.data_dir);
        s.max_purged_index = s
            .max_purged_index
            .max(i["purged"]["index"].as_u64().unwrap_or(0));
    }
    if s.snapshots_built == 0 || s.snapshots_installed == 0 || s.max_purged_index == 0 {
        return Err(format!(
            "no snapshot or log compaction under faults: {} snapshots built, {} installed, \
             logs purged up to index {} at most",
            s.snapshots_built, s.snapshots_installed, s.max_purged_index
        ));
    }
    Ok(())
}

fn report(cfg: &RunConfig, s: &Summary) -> String {
    format!(
        "seed {}: {} faults {:?}; {} operations ({} ok, {} indeterminate, {} failed) in {:.1} s; \
         {} checked for linearizability ({} with their answer), {} serializable reads checked, \
         {} acknowledged writes all present; {} terms led ({} by two nodes in turn); final \
         revision {}; watch saw {} changes, gap-free across {} resumes; snapshots: {} built, \
         {} installed, logs purged up to {}; the kept lease lived ({} keep-alives answered, {} \
         failed, longest gap {:.1} s) and the abandoned one ended",
        cfg.seed,
        s.faults.len(),
        s.faults_by_kind,
        s.ops,
        s.ok,
        s.indeterminate,
        s.failed,
        s.load_seconds,
        s.checked_linearizable,
        s.checked_with_answer,
        s.checked_serializable,
        s.acknowledged_writes,
        s.leader_terms,
        s.terms_with_two_leaders,
        s.final_revision,
        s.watch_changes,
        s.watch_resumes,
        s.snapshots_built,
        s.snapshots_installed,
        s.max_purged_index,
        s.keep_alives_ok,
        s.keep_alives_failed,
        s.longest_keep_alive_gap.as_secs_f64()
    )
}

async fn run_and_report(cfg: RunConfig) {
    println!(
        "reliability run: seed {} on {} nodes, {:?} of faults, {} clients on {} keys, \
         unsynced writes lost on SIGKILL: {}, snapshot every {:?} entries",
        cfg.seed,
        cfg.nodes,
        cfg.faults_for,
        cfg.clients,
        cfg.keys,
        cfg.lose_unsynced,
        cfg.snapshot_entries
    );
    match run(&cfg).await {
        Ok(s) => println!("{} passed", report(&cfg, &s)),
        Err(e) => panic!(
            "seed {} FAILED on {} nodes (reproduce: SEED={} NODES={} SOAK_SECONDS={} \
             SNAPSHOT_ENTRIES={} cargo test --release -p concordance --test reliability -- \
             --ignored --nocapture soak):\n{e}",
            cfg.seed,
            cfg.nodes,
            cfg.seed,
            cfg.nodes,
            cfg.faults_for.as_secs(),
            cfg.snapshot_entries.unwrap_or(0)
        ),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Three nodes, every fault kind at least once (about 30 s), a snapshot every 200 entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_under_faults_seed_1() {
    run_and_report(RunConfig {
        seed: 1,
        nodes: 3,
        faults_for: Duration::from_secs(20),
        clients: 4,
        keys: 4,
        lose_unsynced: true,
        snapshot_entries: Some(200),
        plan: Plan::Faults,
        volume: None,
    })
    .await;
}

/// The soak shortened to two minutes, on five nodes, for CI: every fault kind, several
/// times for most, a snapshot every 300 entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_under_faults_for_two_minutes_seed_2() {
    run_and_report(RunConfig {
        seed: 2,
        nodes: 5,
        faults_for: Duration::from_secs(120),
        clients: 6,
        keys: 6,
        lose_unsynced: true,
        snapshot_entries: Some(300),
        plan: Plan::Faults,
        volume: None,
    })
    .await;
}

/// The control for the floors: with a majority down for the whole run no write commits, and
/// every check over the history would still pass (nothing acknowledged, nothing to
/// contradict). The run must fail, on its floors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_writes_cannot_commit_fails() {
    let cfg = RunConfig {
        seed: 3,
        nodes: 3,
        faults_for: Duration::from_secs(8),
        clients: 4,
        keys: 4,
        lose_unsynced: false,
        snapshot_entries: None,
        plan: Plan::MajorityDown,
        volume: None,
    };
    let err = run(&cfg)
        .await
        .expect_err("a run without a committed write passed");
    assert!(
        err.contains("did too little") && err.contains("acknowledged writes"),
        "the run failed, but not on its floors: {err}"
    );
}

/// Three members on 128 MiB volumes of their own, filled by large writes through every
/// member until the cluster refuses them (`no_space`), then emptied, compacted and disarmed,
/// at least twice, while the clients run: every check over the history holds (refused writes
/// are never applied, no acknowledged write is lost), and the replicas end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_whose_volumes_fill_up_under_the_workload_seed_4() {
    run_and_report(RunConfig {
        seed: 4,
        nodes: 3,
        faults_for: Duration::from_secs(15),
        clients: 4,
        keys: 4,
        lose_unsynced: false,
        snapshot_entries: None,
        plan: Plan::DiskFull,
        volume: Some("128m"),
    })
    .await;
}

/// The long run: `SOAK_SECONDS` of faults (default 300), seed `SEED` (default 7), `NODES`
/// (default 5), `CLIENTS` (default 6), `KEYS` (6), `SNAPSHOT_ENTRIES` (300; 0 for the
/// node's default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn soak() {
    let snapshot_entries = env_u64("SNAPSHOT_ENTRIES", 300);
    run_and_report(RunConfig {
        seed: env_u64("SEED", 7),
        nodes: env_u64("NODES", 5) as usize,
        faults_for: Duration::from_secs(env_u64("SOAK_SECONDS", 300)),
        clients: env_u64("CLIENTS", 6) as usize,
        keys: env_u64("KEYS", 6) as usize,
        lose_unsynced: env_u64("LOSE_UNSYNCED", 1) == 1,
        snapshot_entries: (snapshot_entries > 0).then_some(snapshot_entries),
        plan: Plan::Faults,
        volume: None,
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

/// The control for the shim's Raft-log half (the test above shows its write-ahead-log half
/// bites): the fault runs trust it to drop a log segment's unsynced writes on SIGKILL. With
/// segment fsyncs made to lie (the shim then keeps a segment's writes through an fsync, as a
/// disk that acknowledged a sync it never did), a SIGKILL must lose log entries the node had
/// acknowledged; with the shim as the fault runs use it, the same entries survive. Were the
/// shim to stop intercepting the node's segment writes (a path it no longer recognises, a
/// syscall other than `pwrite`), both would survive and this would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_raft_log_segment_writes_are_lost_on_sigkill_with_the_shim() {
    let shim = durability::shim().display().to_string();
    for lying in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![("LD_PRELOAD", shim.as_str())];
        if lying {
            env.push(("LOSE_UNSYNCED_LYING_SEGMENT_SYNC", "1"));
        }
        let mut n = common::NodeProc::start_env("n1", dir.path(), &["--bootstrap"], &env);
        n.wait_ready().await;
        let c = n.client();
        for i in 0..20 {
            c.put(&format!("seg/{i}"), &serde_json::json!(i))
                .await
                .unwrap();
        }
        let acknowledged = c.status().await.unwrap().last_log_index.unwrap();
        n.kill();
        let i = durability::inspect(&n.data_dir);
        let on_disk = i["lastLog"]["index"].as_u64().unwrap_or(0);
        if lying {
            assert!(
                on_disk < acknowledged,
                "segment writes kept through a lying fsync survived a SIGKILL: the shim does \
                 not hold them (log on disk ends at {on_disk}, {acknowledged} acknowledged): {i}"
            );
        } else {
            assert!(
                on_disk >= acknowledged,
                "with honest fsyncs every acknowledged entry is on disk ({on_disk} < \
                 {acknowledged}): {i}"
            );
        }
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
/// three-node cluster (so forwarding to the leader is fuzzed too). `FUZZ_SEED` (default 11;
/// the cluster gets the next seed) and `FUZZ_REQUESTS` (default 1500 on the single node, 8/15
/// of that through the follower) make it longer (`scripts/test --long`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_http_requests_never_5xx_crash_or_half_apply() {
    let admin = format!("--api-key={}", common::ADMIN_KEY);
    let agent = format!("--agent-key={}", common::AGENT_KEY);
    let seed = env_u64("FUZZ_SEED", 11);
    let requests = env_u64("FUZZ_REQUESTS", 1500) as usize;
    for (nodes, seed, count) in [(1, seed, requests), (3, seed + 1, requests * 8 / 15)] {
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

/// Damage done to a stopped node's data dir: every case is refused at start, with a message
/// naming the damage (`start_damaged` also checks that a node that did start would never
/// serve a wrong value or call a written key missing). The second field: whether the
/// writes were flushed from the write-ahead log into table files before the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_dirs_are_refused_at_start_never_served() {
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
            "bytes flipped in the write-ahead log's second-to-last record",
            false,
            |d| flip_wal_before_last_record(&files_with(d, ".log")[0]),
        ),
        ("bytes flipped in the middle of the Raft log", false, |d| {
            flip_written(
                &files_with(&d.parent().unwrap().join("log"), ".seg")[0],
                0.5,
            )
        }),
    ];
    let mut served = Vec::new();
    for (what, flushed, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut node = prepared_node(dir.path(), flushed).await;
        let db = node.data_dir.join("db");
        let before = fingerprint(&node.data_dir);
        damage(&db);
        assert_ne!(
            before,
            fingerprint(&node.data_dir),
            "{what}: the damage changed nothing"
        );
        let outcome = start_damaged(&mut node).await;
        println!("{what}: {outcome:?}");
        if outcome != Outcome::Refused {
            served.push(format!("{what}: {outcome:?}"));
        }
    }
    assert!(
        served.is_empty(),
        "damaged data dirs a node started on instead of refusing: {served:?}"
    );
}
