//! The command-set gate: a new kind of command is proposed only once every member runs a
//! binary that can apply it (rolling upgrades mix versions, and a node meeting a command it
//! does not know stops).
//!
//! Each binary reports the newest command set it applies at `GET /api/v1/cluster/version`.
//! The cluster's enabled set is part of the replicated state. When a command needs a newer
//! set, the leader asks every member (voters and learners) for its version; if all support
//! it, the leader proposes `EnableCommandVersion` (itself a new command, safe for the same
//! reason) and goes on; otherwise the request fails with 503 `feature_unavailable`. Once
//! enabled, a set stays enabled: members must not be downgraded below it.

use std::sync::OnceLock;
use std::time::Duration;

use concordance_client::ErrorCode;
use concordance_client::VersionInfo;
use openraft::ServerState;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::raft::QUORUM_TIMEOUT;
use crate::raft::Raft;
use crate::raft::client::PeerContext;
use crate::store::reader::KvReader;
use crate::store::records::COMMAND_VERSION;
use crate::store::records::COMMAND_VERSION_BASE;
use crate::store::records::Command;
use crate::store::records::Operation;

const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Serializes enabling, so concurrent requests ask the members once.
fn gate() -> &'static tokio::sync::Mutex<()> {
    static GATE: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    GATE.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// What this node (named `node_id`) reports about its versions.
pub fn version_info(node_id: &str, reader: &KvReader) -> VersionInfo {
    VersionInfo {
        node_id: node_id.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command_version: COMMAND_VERSION,
        cluster_command_version: reader.command_version(),
    }
}

/// The command set a member's binary applies; a binary without the version route predates
/// the gate and knows the base set only. `None` when the member cannot be asked.
pub async fn member_version(peers: &PeerContext, addr: &str) -> Option<u32> {
    let resp = peers
        .http
        .get(peers.url(addr, "cluster/version"))
        .timeout(ASK_TIMEOUT)
        .send()
        .await
        .ok()?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Some(COMMAND_VERSION_BASE);
    }
    resp.json::<VersionInfo>()
        .await
        .ok()
        .map(|v| v.command_version)
}

/// Makes sure the cluster has enabled command set `needed`, enabling it if every member
/// supports it. On a node that is not the leader (or no longer is) this does nothing: the
/// proposal that follows fails with `not_leader`, naming the leader, by itself.
pub async fn enable(
    raft: &Raft,
    reader: &KvReader,
    peers: &PeerContext,
    needed: u32,
) -> Result<(), NodeError> {
    if needed > COMMAND_VERSION {
        return Err(NodeError::Internal(format!(
            "command set {needed} is newer than this binary's {COMMAND_VERSION}"
        )));
    }
    let _serial = gate().lock().await;
    if reader.command_version() >= needed {
        return Ok(());
    }
    let m = crate::raft::metrics_of(raft);
    if m.state != ServerState::Leader {
        return Ok(());
    }
    let members: Vec<(u64, String, String)> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.name.clone(), n.addr.clone()))
        .collect();
    let asks = members.iter().map(|(id, name, addr)| async move {
        let v = if *id == m.id {
            Some(COMMAND_VERSION)
        } else {
            member_version(peers, addr).await
        };
        (name.clone(), v)
    });
    let versions = futures::future::join_all(asks).await;
    let lacking: Vec<String> = versions
        .iter()
        .filter(|(_, v)| v.is_none_or(|v| v < needed))
        .map(|(name, v)| match v {
            Some(v) => format!("{name} (command set {v})"),
            None => format!("{name} (unreachable)"),
        })
        .collect();
    if !lacking.is_empty() {
        return Err(NodeError::Rejected(
            ErrorCode::FeatureUnavailable,
            format!(
                "this operation needs command set {needed}, which the cluster enables only once \
                 every member runs a binary that supports it; not yet: {}. Upgrade (or wait for) \
                 those members and retry",
                lacking.join(", ")
            ),
        ));
    }
    let version = versions
        .iter()
        .filter_map(|(_, v)| *v)
        .min()
        .unwrap_or(needed)
        .min(COMMAND_VERSION);
    let cmd = Command {
        op: Operation::EnableCommandVersion { version },
        idempotency_key: None,
        proposed_at_ms: now_ms(),
    };
    match tokio::time::timeout(QUORUM_TIMEOUT, raft.client_write(cmd)).await {
        Ok(Ok(_)) => {
            tracing::info!(
                version,
                "enabled a new command set: every member supports it"
            );
            Ok(())
        }
        Ok(Err(e)) if e.forward_to_leader().is_some() => Ok(()),
        Ok(Err(e)) => Err(NodeError::Rejected(ErrorCode::RaftError, e.to_string())),
        Err(_) => Err(NodeError::NoQuorum(
            "enabling the new command set was not committed in time".into(),
        )),
    }
}
