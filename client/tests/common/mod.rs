//! Test harness: real `concordance` processes started through [`LocalNode`].
//!
//! The node binary is found through `CONCORDANCE_BIN` or, by default, next to this test's
//! own target folder (`<target>/release/concordance`): `cargo test --workspace` builds it;
//! for `cargo test -p concordance-client` alone, run `cargo build --release -p concordance`
//! first.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use concordance_client::Client;
use concordance_client::dev::LocalNode;
use concordance_client::dev::LocalNodeOptions;

pub fn concordance_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONCORDANCE_BIN") {
        return PathBuf::from(p);
    }
    // <target>/release/deps/<this test> -> <target>/release/concordance
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target folder")
        .join("concordance");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --release -p concordance` (or set CONCORDANCE_BIN)",
        bin.display()
    );
    bin
}

pub fn options(node_id: &str) -> LocalNodeOptions {
    LocalNodeOptions {
        binary: Some(concordance_bin()),
        node_id: node_id.into(),
        ..LocalNodeOptions::default()
    }
}

/// A single node.
pub async fn single() -> LocalNode {
    LocalNode::spawn(options("solo")).await.expect("local node")
}

/// node1 bootstraps, node2 and node3 join it; all ready.
pub async fn cluster3() -> Vec<LocalNode> {
    let first = LocalNode::spawn(options("node1")).await.expect("node1");
    let mut nodes = vec![];
    let join = first.address();
    nodes.push(first);
    for name in ["node2", "node3"] {
        let node = LocalNode::spawn(LocalNodeOptions {
            join: Some(join.clone()),
            ..options(name)
        })
        .await
        .expect(name);
        nodes.push(node);
    }
    // Every member a voter before a test kills one.
    eventually("three voters", Duration::from_secs(30), || async {
        let s = nodes[0].client().status().await.ok()?;
        (s.members.iter().filter(|m| m.voter).count() == 3).then_some(())
    })
    .await;
    nodes
}

/// The index of the node that leads, as node 0 sees it.
pub async fn leader_index(nodes: &[LocalNode]) -> usize {
    eventually("a leader", Duration::from_secs(30), || async {
        for n in nodes {
            let Ok(s) = Client::new(&n.address()).unwrap().status().await else {
                continue;
            };
            if s.role == "leader" {
                return nodes.iter().position(|m| m.address() == n.address());
            }
        }
        None
    })
    .await
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
