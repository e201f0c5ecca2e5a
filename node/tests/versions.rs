//! Two real builds side by side: the earlier build of the node (the binary of the image of
//! `PREVIOUS_NODE_COMMIT`, tests/k8s/versions.env; `CONCORDANCE_PREVIOUS_NODE` names it, which
//! `scripts/test` sets from `tests/k8s/previous-binary`) and this one. Under a writer, a
//! 3-member cluster of the earlier build is upgraded member by member, rolled back before the
//! new command sets can be enabled, then upgraded for good; every acknowledged write reads
//! back, and a lease kept alive all along lives on (by replicated keep-alives on the earlier
//! set, by the leader's clock on this one). Leases granted on the earlier set keep no owner;
//! those granted once this build's set is enabled are their granter's. Once it is enabled,
//! the earlier build is refused at join.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use concordance::store::records::COMMAND_VERSION;
use concordance_client::Client;
use concordance_client::Consistency;

const KEYS: &[(&str, &str)] = &[
    ("CONCORDANCE_API_KEY", ADMIN_KEY),
    ("CONCORDANCE_AGENT_API_KEY", AGENT_KEY),
];

const LEASE_TTL: Duration = Duration::from_secs(10);

fn previous_build() -> PathBuf {
    let path = std::env::var_os("CONCORDANCE_PREVIOUS_NODE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .expect(
            "this test runs the earlier build of the node beside this one: \
             CONCORDANCE_PREVIOUS_NODE=$(tests/k8s/previous-binary) (scripts/test sets it)",
        );
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// What the writer saw: acknowledged writes (key -> value) and failed ones.
#[derive(Default)]
struct Written {
    acknowledged: BTreeMap<String, u64>,
    failed: Vec<String>,
}

/// An agent's client that knows every member and retries through them.
fn agent_of_every(endpoints: Vec<String>) -> Client {
    Client::builder()
        .endpoints(endpoints)
        .api_key(AGENT_KEY)
        .build()
        .unwrap()
}

/// Writes `w/<n>` = n, one after another, through a client that knows every member and
/// retries (each write with its own idempotency key), until `stop`.
fn start_writer(
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<Written>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = agent_of_every(endpoints);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("w/{n:06}");
            match client.put(&key, &serde_json::json!(n)).await {
                Ok(_) => written.lock().unwrap().acknowledged.insert(key, n),
                Err(e) => {
                    written.lock().unwrap().failed.push(format!("{key}: {e}"));
                    None
                }
            };
            n += 1;
        }
    })
}

/// Keeps lease `id` alive every second through a client that knows every member, until
/// `stop`; the keep-alives that failed.
fn start_keeper(
    endpoints: Vec<String>,
    id: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = agent_of_every(endpoints);
        let mut failed = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = client.lease_keep_alive(id).await {
                failed.push(e.to_string());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        failed
    })
}

fn acknowledged(written: &Mutex<Written>) -> usize {
    written.lock().unwrap().acknowledged.len()
}

/// Restarts member `i` on `program` (the earlier build, or this one with `None`) and waits
/// until it is ready and the writer has been acknowledged again.
async fn restart_on(
    nodes: &mut [NodeProc],
    i: usize,
    program: Option<PathBuf>,
    written: &Mutex<Written>,
) {
    nodes[i].stop();
    nodes[i].program = program;
    nodes[i].restart();
    nodes[i].wait_ready().await;
    let before = acknowledged(written);
    eventually("the writer acknowledged again", WAIT, || async {
        (acknowledged(written) > before).then_some(())
    })
    .await;
}

async fn owner_of(client: &Client, lease: u64) -> Option<String> {
    let info = client.lease_get(lease).await.unwrap();
    info.expect("the lease lives").owner
}

async fn versions(nodes: &[NodeProc]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for n in nodes {
        let v = n.client().version().await.unwrap();
        out.push((v.command_version, v.cluster_command_version));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_rollback_with_the_earlier_build_lose_no_acknowledged_write() {
    let previous = previous_build();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 1..=3 {
        let join = nodes.first().map(|n| format!("--join={}", n.addr()));
        let args = [join.as_deref().unwrap_or("--bootstrap")];
        let node = NodeProc::start_program(&previous, &format!("node{i}"), dir.path(), &args, KEYS);
        node.wait_ready().await;
        nodes.push(node);
    }
    let started_on = versions(&nodes).await;
    let earlier_set = started_on[0].0;
    assert!(
        earlier_set < COMMAND_VERSION,
        "the earlier build applies command set {earlier_set}, this one {COMMAND_VERSION}: \
         move PREVIOUS_NODE_COMMIT to a build with an older set"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Written::default()));
    let writer = start_writer(
        nodes.iter().map(NodeProc::addr).collect(),
        stop.clone(),
        written.clone(),
    );
    // A lease kept alive all along: by replicated keep-alives on the earlier set, by the
    // leader's clock once this build's set is enabled.
    let kept = nodes[0]
        .client()
        .with_key(AGENT_KEY)
        .lease_grant(LEASE_TTL)
        .await
        .unwrap()
        .id;
    let keeper_stop = Arc::new(AtomicBool::new(false));
    let keeper = start_keeper(
        nodes.iter().map(NodeProc::addr).collect(),
        kept,
        keeper_stop.clone(),
    );

    // Upgrade two members: the third still runs the earlier build, so no newer set can be
    // enabled, and the way back stays open.
    restart_on(&mut nodes, 0, None, &written).await;
    restart_on(&mut nodes, 1, None, &written).await;
    let mixed = versions(&nodes).await;
    assert!(
        mixed.iter().all(|(_, enabled)| *enabled <= earlier_set),
        "a newer command set was enabled while a member runs the earlier build: {mixed:?}"
    );
    // Roll back: both to the earlier build again, on the data dirs this build wrote.
    restart_on(&mut nodes, 0, Some(previous.clone()), &written).await;
    restart_on(&mut nodes, 1, Some(previous.clone()), &written).await;
    // Upgrade for good: once every member runs this build, its command set is enabled.
    for i in 0..3 {
        restart_on(&mut nodes, i, None, &written).await;
    }
    eventually("this build's command set enabled", WAIT, || async {
        let v = versions(&nodes).await;
        v.iter()
            .all(|(s, enabled)| *s == COMMAND_VERSION && *enabled == COMMAND_VERSION)
            .then_some(())
    })
    .await;
    // Two TTLs on the new set: the kept lease lives on keep-alives the leader alone answers,
    // and a lease granted and left alone ends.
    let admin = nodes[0].admin();
    let abandoned = admin.lease_grant(LEASE_TTL).await.unwrap().id;
    // A lease granted on the earlier set has no owner (any agent keeps it alive, as the
    // keeper does); one granted on this build's set is its granter's.
    assert_eq!(owner_of(&admin, kept).await, None);
    assert_eq!(owner_of(&admin, abandoned).await.as_deref(), Some("admin"));
    tokio::time::sleep(2 * LEASE_TTL).await;
    keeper_stop.store(true, Ordering::Relaxed);
    let keep_alives_failed = keeper.await.unwrap();
    assert!(
        admin.lease_get(kept).await.unwrap().is_some(),
        "the lease kept alive through the upgrade ended; keep-alives that failed: {keep_alives_failed:?}"
    );
    eventually("the abandoned lease ended", WAIT, || async {
        admin
            .lease_get(abandoned)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // Every acknowledged write reads back, through each member.
    let written = std::mem::take(&mut *written.lock().unwrap());
    assert!(
        written.acknowledged.len() >= 100,
        "the writer did too little to show anything: {} acknowledged, failed: {:?}",
        written.acknowledged.len(),
        written.failed
    );
    for node in &nodes {
        let listed: BTreeMap<String, u64> = node
            .admin()
            .list_all("w/", 10_000, Consistency::Linearizable)
            .await
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key, kv.value.as_u64().unwrap()))
            .collect();
        let lost: Vec<&String> = written
            .acknowledged
            .iter()
            .filter(|(k, v)| listed.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            lost.is_empty(),
            "{}: {} acknowledged writes missing, e.g. {:?}",
            node.name,
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    println!(
        "versions: started on set {earlier_set}, upgraded, rolled back, upgraded to set {COMMAND_VERSION}: {} writes acknowledged and read back on every member, {} failed (retries exhausted during restarts)",
        written.acknowledged.len(),
        written.failed.len()
    );

    // The earlier build cannot apply what is now enabled: the leader refuses its join, or,
    // from a build that reads the cluster's command set first, it refuses itself.
    let late = NodeProc::start_program(
        &previous,
        "node4",
        dir.path(),
        &[&format!("--join={}", nodes[0].addr())],
        KEYS,
    );
    let by_leader = format!(
        "applies command sets up to {earlier_set}, and the cluster has enabled {COMMAND_VERSION}"
    );
    let by_itself = format!(
        "code=command_set_unsupported error=the cluster has enabled command set {COMMAND_VERSION}, and this binary applies sets up to {earlier_set}"
    );
    let refused = |log: &str| log.contains(&by_leader) || log.contains(&by_itself);
    let seen = tokio::time::timeout(WAIT, async {
        while !refused(&late.log_text()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if seen.is_err() {
        let log = late.log_text();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "the earlier build's join was not refused ({by_leader:?} or {by_itself:?}) within {WAIT:?}; the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let members = nodes[0].admin().status().await.unwrap().members;
    assert!(
        members.iter().all(|m| m.node_id != "node4"),
        "the earlier build joined: {members:?}"
    );
}
