//! Locks and elections through the client, against a real node.

mod common;

use std::time::Duration;
use std::time::Instant;

use concordance_client::CampaignRequest;
use concordance_client::Client;
use concordance_client::Consistency;
use concordance_client::KeyValue;
use concordance_client::LockRequest;
use serde_json::json;

use crate::common::*;

/// Waits (bounded) until the queue under `prefix` holds `n` candidates, in create order.
async fn queue_of(c: &Client, prefix: &str, n: usize) -> Vec<KeyValue> {
    eventually(
        &format!("{n} candidates queued under {prefix}"),
        Duration::from_secs(20),
        || async {
            let mut kvs = c
                .list(prefix, None, Some(100), Consistency::Linearizable)
                .await
                .ok()?
                .kvs;
            kvs.sort_by_key(|kv| kv.create_revision);
            (kvs.len() == n).then_some(kvs)
        },
    )
    .await
}

fn lock_req(name: &str, lease: u64, wait: bool) -> LockRequest {
    LockRequest {
        name: name.into(),
        lease,
        wait,
        timeout_ms: Some(20_000),
    }
}

#[tokio::test]
async fn a_lock_passes_to_the_next_waiter_with_a_larger_fencing_token() {
    let node = single().await;
    let c = node.client().clone();
    let a = c.lease_grant(Duration::from_secs(30)).await.unwrap().id;
    let b = c.lease_grant(Duration::from_secs(30)).await.unwrap().id;

    let held = c.lock(&lock_req("deploy", a, true)).await.unwrap();
    assert_eq!(held.lease, a);
    let busy = c.lock(&lock_req("deploy", b, false)).await.unwrap_err();
    assert_eq!(busy.code(), Some("lock_held"), "{busy}");

    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let r = c.lock(&lock_req("deploy", b, true)).await;
            (r, Instant::now())
        })
    };
    // b waits in the queue, behind a, and was not answered; an answer must come only after
    // a let go, however late a wrong early one would arrive.
    let queue = queue_of(&c, "_concordance/lock/deploy/", 2).await;
    assert_eq!(queue[1].lease, Some(b), "{queue:?}");
    assert!(!waiter.is_finished(), "b got the lock while a held it");
    let released_at = Instant::now();
    assert!(c.unlock("deploy", a).await.unwrap().released);
    let (next, answered_at) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    let next = next.unwrap();
    assert!(
        answered_at > released_at,
        "b got the lock before a released it"
    );
    assert_eq!(next.lease, b);
    assert_eq!(next.fencing_token, queue[1].create_revision);
    assert!(next.fencing_token > held.fencing_token);

    // The holder's lease ending releases the lock too.
    c.lease_revoke(b).await.unwrap();
    let again = c.lock(&lock_req("deploy", a, false)).await.unwrap();
    assert!(again.fencing_token > next.fencing_token);
}

#[tokio::test]
async fn an_election_hands_over_on_resign() {
    let node = single().await;
    let c = node.client().clone();
    let a = c.lease_grant(Duration::from_secs(30)).await.unwrap().id;
    let b = c.lease_grant(Duration::from_secs(30)).await.unwrap().id;
    let none = c.election_leader("sched").await.unwrap();
    assert!(none.leader.is_none());

    let won = c
        .campaign(&CampaignRequest {
            name: "sched".into(),
            lease: a,
            value: json!("node-a"),
            timeout_ms: Some(20_000),
        })
        .await
        .unwrap();
    assert_eq!(won.leader.lease, a);
    let second = {
        let c = c.clone();
        tokio::spawn(async move {
            let r = c
                .campaign(&CampaignRequest {
                    name: "sched".into(),
                    lease: b,
                    value: json!("node-b"),
                    timeout_ms: Some(20_000),
                })
                .await;
            (r, Instant::now())
        })
    };
    // b campaigns behind a (seen in the queue), and leads only once a resigned.
    let queue = queue_of(&c, "_concordance/election/sched/", 2).await;
    assert_eq!(queue[1].lease, Some(b), "{queue:?}");
    assert!(!second.is_finished(), "b was told it leads while a did");
    let now = c.election_leader("sched").await.unwrap();
    assert_eq!(now.leader.unwrap().value, json!("node-a"));
    let resigned_at = Instant::now();
    assert!(c.resign("sched", a).await.unwrap().resigned);
    let (b_leads, answered_at) = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .unwrap()
        .unwrap();
    let b_leads = b_leads.unwrap();
    assert!(
        answered_at > resigned_at,
        "b was told it leads before a resigned"
    );
    assert_eq!(b_leads.leader.value, json!("node-b"));
    assert!(b_leads.leader.revision > won.leader.revision);
    let now = c.election_leader("sched").await.unwrap();
    assert_eq!(now.leader.unwrap().lease, b);
}
