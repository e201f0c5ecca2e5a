//! The watch stream against real nodes: every change once, in order, across a node's death;
//! a compacted start as a typed error.

mod common;

use std::time::Duration;

use concordance_client::Client;
use concordance_client::Consistency;
use concordance_client::Error;
use concordance_client::EventType;
use concordance_client::WatchOptions;
use concordance_client::dev::LocalNode;
use concordance_client::dev::LocalNodeOptions;
use futures::StreamExt;
use serde_json::json;

use crate::common::*;

const WRITES: usize = 100;

/// A watch served by the leader keeps going after the leader is SIGKILLed: the stream
/// reconnects to another node from the revision after the last one it saw, and delivers every
/// write exactly once, in revision order.
#[tokio::test]
async fn a_watch_resumes_on_another_node_after_its_node_is_killed() {
    let mut nodes = cluster3().await;
    let leader = leader_index(&nodes).await;
    let endpoints = leader_first(&nodes, leader);
    let watcher = Client::connect(endpoints.clone()).unwrap();
    let writer = Client::connect(endpoints).unwrap();

    let start = writer
        .list("w/", None, Some(1), Consistency::Linearizable)
        .await
        .unwrap()
        .revision
        + 1;
    let mut stream = watcher.watch(
        WatchOptions::prefix("w/")
            .from_revision(start)
            .progress_every(Duration::from_secs(1)),
    );
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < WRITES {
            let change = stream.next().await.expect("stream ended").expect("watch");
            for e in change.events {
                assert_eq!(e.kind, EventType::Put);
                seen.push((change.revision, e.key));
            }
        }
        // Nothing extra follows: a repeat would show up here.
        let extra = tokio::time::timeout(Duration::from_secs(3), stream.next()).await;
        assert!(
            extra.is_err(),
            "unexpected event after the last write: {extra:?}"
        );
        seen
    });

    for i in 0..WRITES {
        if i == WRITES / 3 {
            nodes[leader].kill();
        }
        writer
            .put(&format!("w/{i:03}"), &json!(i))
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    let seen = tokio::time::timeout(Duration::from_secs(90), collector)
        .await
        .expect("the watch delivered every write")
        .unwrap();
    let keys: Vec<String> = seen.iter().map(|(_, k)| k.clone()).collect();
    let want: Vec<String> = (0..WRITES).map(|i| format!("w/{i:03}")).collect();
    assert_eq!(keys, want, "lost, repeated or reordered changes");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    // It did move: the killed node no longer serves it.
    assert_ne!(
        watcher.endpoint(),
        format!("http://{}", nodes[leader].address())
    );
}

#[tokio::test]
async fn a_key_watch_and_a_compacted_start() {
    let node = LocalNode::spawn(LocalNodeOptions {
        extra_args: vec!["--history-revisions=5".into()],
        ..options("compact")
    })
    .await
    .unwrap();
    let c = node.client();

    let now = c
        .list("", None, Some(1), Consistency::Linearizable)
        .await
        .unwrap()
        .revision;
    let mut one = c.watch(WatchOptions::key("solo/k").from_revision(now + 1));
    let first = tokio::spawn(async move {
        let a = one.next().await.unwrap().unwrap();
        let b = one.next().await.unwrap().unwrap();
        (a, b)
    });
    c.put("solo/other", &json!(0)).await.unwrap();
    c.put("solo/k", &json!(1)).await.unwrap();
    c.delete("solo/k").await.unwrap();
    let (a, b) = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.events.len(), 1);
    assert_eq!(a.events[0].key, "solo/k");
    assert_eq!(a.events[0].kv.as_ref().unwrap().value, json!(1));
    assert_eq!(b.events[0].kind, EventType::Delete);
    assert!(b.revision > a.revision);

    for i in 0..40 {
        c.put(&format!("fill/{i}"), &json!(i)).await.unwrap();
    }
    let mut old = c.watch(WatchOptions::prefix("").from_revision(1));
    match old.next().await {
        Some(Err(Error::Compacted {
            requested,
            oldest_revision,
        })) => {
            assert_eq!(requested, 1);
            assert!(oldest_revision > 1);
        }
        other => panic!("expected a compacted error, got {other:?}"),
    }
    assert!(
        old.next().await.is_none(),
        "the stream ends after the error"
    );
}
