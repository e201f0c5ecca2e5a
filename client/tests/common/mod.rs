//! Test harness: real `concordance` processes started through [`LocalNode`].
//!
//! The node binary is found through `CONCORDANCE_BIN` or, by default, next to this test's
//! own target folder (`<target>/release/concordance`): `cargo test --workspace` builds it;
//! for `cargo test -p concordance-client` alone, run `cargo build --release -p concordance`
//! first.
#![allow(dead_code)]

use std::time::Duration;

use concordance_client::Client;
use concordance_client::dev::LocalNode;
use concordance_client::dev::LocalNodeOptions;
pub use concordance_test_support::concordance_bin;
pub use concordance_test_support::eventually;

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

/// Every node's address, the leader's first (so the first requests go to it).
pub fn leader_first(nodes: &[LocalNode], leader: usize) -> Vec<String> {
    let mut endpoints = vec![nodes[leader].address()];
    endpoints.extend(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, n)| n.address()),
    );
    endpoints
}
