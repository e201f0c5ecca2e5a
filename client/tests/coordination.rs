//! Locks and elections through the client, against a real node.

mod common;

use std::time::Duration;

use concordance_client::CampaignRequest;
use concordance_client::LockRequest;
use serde_json::json;

use crate::common::*;

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
        tokio::spawn(async move { c.lock(&lock_req("deploy", b, true)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "b got the lock while a held it");
    assert!(c.unlock("deploy", a).await.unwrap().released);
    let next = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.lease, b);
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
            c.campaign(&CampaignRequest {
                name: "sched".into(),
                lease: b,
                value: json!("node-b"),
                timeout_ms: Some(20_000),
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = c.election_leader("sched").await.unwrap();
    assert_eq!(now.leader.unwrap().value, json!("node-a"));
    assert!(c.resign("sched", a).await.unwrap().resigned);
    let b_leads = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(b_leads.leader.value, json!("node-b"));
    assert!(b_leads.leader.revision > won.leader.revision);
    let now = c.election_leader("sched").await.unwrap();
    assert_eq!(now.leader.unwrap().lease, b);
}
