//! The typed client against real `concordance` processes (spawned with `dev::LocalNode`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concordance_client::Client;
use concordance_client::Compare;
use concordance_client::Consistency;
use concordance_client::Error;
use concordance_client::Txn;
use concordance_client::TxnOp;
use concordance_client::TxnOpResult;
use concordance_client::dev::LocalNode;
use concordance_client::dev::LocalNodeOptions;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn keys_and_pagination_on_a_spawned_node() {
    let node = single().await;
    let c = node.client();

    let first = c.put("app/a", &json!({"n": 1})).await.unwrap();
    let second = c.put("app/a", &json!({"n": 2})).await.unwrap();
    assert!(second.revision > first.revision);
    assert_eq!(second.prev_kv.unwrap().value, json!({"n": 1}));
    let got = c.get("app/a").await.unwrap().unwrap();
    assert_eq!(got.kv.value, json!({"n": 2}));
    assert_eq!(got.kv.version, 2);
    assert!(c.get("app/missing").await.unwrap().is_none());

    for i in 0..25 {
        c.put(&format!("list/{i:02}"), &json!(i)).await.unwrap();
    }
    let page = c
        .list("list/", None, Some(10), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 10);
    assert!(page.more);
    let all = c
        .list_all("list/", 7, Consistency::Linearizable)
        .await
        .unwrap();
    let keys: Vec<String> = all.iter().map(|kv| kv.key.clone()).collect();
    let want: Vec<String> = (0..25).map(|i| format!("list/{i:02}")).collect();
    assert_eq!(keys, want);

    let del = c.delete("app/a").await.unwrap();
    assert_eq!(del.deleted, 1);
    assert!(c.get("app/a").await.unwrap().is_none());

    let v = c.version().await.unwrap();
    assert_eq!(v.node_id, "solo");
    assert!(v.cluster_command_version >= 1);
    let s = c.status().await.unwrap();
    assert_eq!(s.role, "leader");
    assert!(c.health().await.is_ok());
}

#[tokio::test]
async fn transactions_through_the_builder() {
    let node = single().await;
    let c = node.client();

    let claim = Txn::new()
        .when(Compare::missing("jobs/42/owner"))
        .then(TxnOp::put("jobs/42/owner", json!("a17")))
        .otherwise(TxnOp::get("jobs/42/owner"))
        .build();
    let won = c.txn(&claim).await.unwrap();
    assert!(won.succeeded);
    let lost = c.txn(&claim).await.unwrap();
    assert!(!lost.succeeded);
    match &lost.results[..] {
        [TxnOpResult::Get { kv: Some(kv), .. }] => assert_eq!(kv.value, json!("a17")),
        other => panic!("unexpected results {other:?}"),
    }
    // A compare on the modification revision: only the writer that read it wins.
    let rev = c
        .get("jobs/42/owner")
        .await
        .unwrap()
        .unwrap()
        .kv
        .mod_revision;
    let cas = Txn::new()
        .when(Compare::mod_revision_equals("jobs/42/owner", rev))
        .then(TxnOp::put("jobs/42/owner", json!("b2")))
        .then(TxnOp::delete_prefix("jobs/43/"))
        .build();
    assert!(c.txn(&cas).await.unwrap().succeeded);
    assert!(!c.txn(&cas).await.unwrap().succeeded);

    // A refused transaction is a typed error with the API's code.
    let bad = Txn::new().then(TxnOp::put("", json!(1))).build();
    let err = c.txn(&bad).await.unwrap_err();
    assert!(matches!(err, Error::Api { .. }), "{err:?}");
    assert_eq!(err.status().unwrap().as_u16(), 400, "{err}");
}

#[tokio::test]
async fn leases_keep_alive_and_revoke() {
    let node = single().await;
    let c = node.client();

    let lease = c.lease_grant(Duration::from_secs(2)).await.unwrap();
    assert_eq!(lease.ttl_ms, 2000);
    c.put_leased("sessions/a", &json!("here"), lease.id)
        .await
        .unwrap();
    let info = c.lease_get(lease.id).await.unwrap().unwrap();
    assert_eq!(info.keys, vec!["sessions/a".to_string()]);
    assert!(
        c.lease_list()
            .await
            .unwrap()
            .leases
            .iter()
            .any(|l| l.id == lease.id)
    );

    // Kept alive well past its TTL, the key stays.
    let keeper = c.keep_alive_task(lease.id, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!keeper.is_lost());
    assert!(c.get("sessions/a").await.unwrap().is_some());
    drop(keeper);

    // Without keep-alives it ends, and its key with it.
    eventually("the lease to expire", Duration::from_secs(15), || async {
        c.get("sessions/a").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(c.lease_get(lease.id).await.unwrap().is_none());
    let err = c.lease_keep_alive(lease.id).await.unwrap_err();
    assert_eq!(err.code(), Some("lease_not_found"));

    // Revoked: its keys go at once.
    let other = c.lease_grant(Duration::from_secs(60)).await.unwrap();
    c.put_leased("sessions/b", &json!(1), other.id)
        .await
        .unwrap();
    let mut keeper = c.keep_alive_task(other.id, Duration::from_secs(60));
    let revoked = c.lease_revoke(other.id).await.unwrap();
    assert_eq!(revoked.deleted, 1);
    assert!(c.get("sessions/b").await.unwrap().is_none());
    // The keep-alive task notices the lease is gone.
    let why = tokio::time::timeout(Duration::from_secs(60), keeper.lost())
        .await
        .unwrap();
    assert!(why.contains("lease_not_found"), "{why}");
}

#[tokio::test]
async fn a_spawned_node_requires_its_key_and_stops_gracefully() {
    let node = LocalNode::spawn(LocalNodeOptions {
        api_key: Some("dev-secret".into()),
        ..options("keyed")
    })
    .await
    .unwrap();
    node.client().put("k", &json!(1)).await.unwrap();
    let anonymous = Client::new(&node.address()).unwrap();
    let err = anonymous.get("k").await.unwrap_err();
    assert_eq!(err.code(), Some("unauthorized"), "{err}");
    let pid = node.pid().unwrap();
    let status = node.shutdown().await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[tokio::test]
async fn a_missing_binary_is_a_clear_error() {
    let err = LocalNode::spawn(LocalNodeOptions {
        binary: Some("/nonexistent/concordance".into()),
        ..LocalNodeOptions::default()
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/concordance"),
        "{err}"
    );
}

/// Writes keep succeeding through a leader's SIGKILL, and each applies exactly once: a put
/// applied twice would show version 2.
#[tokio::test]
async fn writes_retry_across_a_leader_kill_and_apply_once() {
    let mut nodes = cluster3().await;
    let leader = leader_index(&nodes).await;
    // The leader first, so the first writes go to it and are cut off by the kill.
    let endpoints = leader_first(&nodes, leader);
    let client = Client::connect(endpoints).unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let client = client.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut revisions = BTreeMap::new();
            for i in 0..200u32 {
                let r = client
                    .put(&format!("seq/{i:03}"), &json!(i))
                    .await
                    .unwrap_or_else(|e| panic!("put {i}: {e}"));
                revisions.insert(i, r.revision);
                done.fetch_add(1, Ordering::SeqCst);
            }
            revisions
        })
    };
    eventually("20 writes", Duration::from_secs(30), || async {
        (done.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;
    nodes[leader].kill();
    let at_kill = done.load(Ordering::SeqCst);
    assert!(
        at_kill < 150,
        "the kill came too late to matter ({at_kill} writes done)"
    );
    let revisions = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("writes finish")
        .unwrap();
    assert_eq!(revisions.len(), 200);

    let all = client
        .list_all("seq/", 50, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
    for kv in &all {
        assert_eq!(kv.version, 1, "{} applied more than once", kv.key);
    }
    // A retry with a caller's key after the crash answers the original write.
    let ik = "client-test-retry";
    let body = concordance_client::PutRequest {
        value: json!("once"),
        lease: None,
    };
    let a = client.put_with("idem", &body, Some(ik)).await.unwrap();
    let b = client.put_with("idem", &body, Some(ik)).await.unwrap();
    assert_eq!(a.revision, b.revision);
    assert_eq!(client.get("idem").await.unwrap().unwrap().kv.version, 1);
}

/// A keep-alive task with several endpoints carries a lease through its leader's SIGKILL.
#[tokio::test]
async fn a_kept_lease_survives_a_leader_kill() {
    let mut nodes = cluster3().await;
    let leader = leader_index(&nodes).await;
    let client = Client::connect(nodes.iter().map(|n| n.address())).unwrap();
    let ttl = Duration::from_secs(3);
    let lease = client.lease_grant(ttl).await.unwrap();
    client
        .put_leased("holder", &json!("me"), lease.id)
        .await
        .unwrap();
    let keeper = client.keep_alive_task(lease.id, ttl);
    nodes[leader].kill();
    // Well past the TTL, counting the election.
    let mut keeper = keeper;
    if let Ok(why) = tokio::time::timeout(Duration::from_secs(8), keeper.lost()).await {
        panic!("the keep-alive task lost the lease: {why}");
    }
    let kv = client
        .get("holder")
        .await
        .unwrap()
        .expect("the key lives on");
    assert_eq!(kv.kv.lease, Some(lease.id));
    drop(keeper);
    eventually(
        "the lease to end once not kept",
        Duration::from_secs(20),
        || async { client.get("holder").await.unwrap().is_none().then_some(()) },
    )
    .await;
}

/// With only unreachable endpoints, a call gives up after the policy's attempts.
#[tokio::test]
async fn unreachable_endpoints_give_up_with_a_transport_error() {
    let port = concordance_client::dev::free_port().unwrap();
    let client = Client::builder()
        .endpoint(format!("127.0.0.1:{port}"))
        .retry(concordance_client::RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_total_delay: Duration::from_secs(1),
        })
        .build()
        .unwrap();
    let err = client.put("k", &json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
}
