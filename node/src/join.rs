//! `--join`: ask a member (any; it follows to the leader) to add this node, retrying with
//! backoff until the target answers.

use std::time::Duration;

use concordance_client::ClusterStatus;
use concordance_client::ErrorCode;
use concordance_client::TerminationMessage;
use concordance_client::VersionInfo;

use crate::membership::JoinRequest;
use crate::membership::MembershipReply;
use crate::raft::client::PeerError;
use crate::service::Node;
use crate::store::records::COMMAND_VERSION;

/// Joins, or says why the cluster refused this node for good (as the node's termination
/// message: the operator reads the code).
pub async fn join_cluster(
    node: &Node,
    target: &str,
    advertise: &str,
) -> Result<(), TerminationMessage> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match try_join(node, target, advertise).await {
            Ok(reply) => {
                tracing::info!(target, cluster = %reply.cluster_id, "{}", reply.message);
                return Ok(());
            }
            Err(JoinError::Refused(why)) => return Err(why),
            Err(JoinError::Retry(why)) => {
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(target, attempt, "cannot join yet, retrying: {why}");
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

enum JoinError {
    /// The target answered no: retrying would not help.
    Refused(TerminationMessage),
    Retry(String),
}

fn refused(code: ErrorCode, message: String) -> JoinError {
    JoinError::Refused(TerminationMessage { code, message })
}

async fn try_join(
    node: &Node,
    target: &str,
    advertise: &str,
) -> Result<MembershipReply, JoinError> {
    let status: ClusterStatus = node
        .peers
        .get(target, "cluster/status", Duration::from_secs(3))
        .await
        .map_err(|e| JoinError::Retry(e.to_string()))?;
    let Some(cluster) = status.cluster_id else {
        return Err(JoinError::Retry(format!(
            "{target} is not in a cluster yet"
        )));
    };
    let ours = node.peers.cluster();
    if !ours.is_empty() && ours != cluster {
        return Err(refused(
            ErrorCode::ClusterMismatch,
            format!(
                "this data dir belongs to cluster {ours}, but {target} is in cluster {cluster}; \
                 start with an empty data dir to join it as a new member"
            ),
        ));
    }
    if ours.is_empty() {
        let mut identity = node.identity.clone();
        identity.cluster_uuid = Some(cluster.clone());
        node.store
            .save_identity(&identity)
            .map_err(|e| refused(ErrorCode::StorageError, e.to_string()))?;
        node.peers.set_cluster(&cluster);
    }
    // A binary that cannot apply what the cluster has enabled would stop at the first such
    // entry: say so now. (A target too old to answer the route has enabled the base set only.)
    if let Ok(version) = node
        .peers
        .http
        .get(node.peers.url(target, "cluster/version"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .and_then(|r| r.error_for_status())
    {
        let info: VersionInfo = version
            .json()
            .await
            .map_err(|e| JoinError::Retry(format!("undecodable version: {e}")))?;
        if info.cluster_command_version > COMMAND_VERSION {
            return Err(refused(
                ErrorCode::CommandSetUnsupported,
                format!(
                    "the cluster has enabled command set {}, and this binary applies sets up to {COMMAND_VERSION}: run a build at least as new as the cluster's",
                    info.cluster_command_version
                ),
            ));
        }
    }
    let req = JoinRequest {
        node_id: node.identity.name.clone(),
        address: advertise.to_string(),
        raft_id: node.identity.raft_id,
        cluster_id: Some(cluster),
        expected_version: None,
    };
    node.peers
        .post(target, "cluster/join", &req, Duration::from_secs(40))
        .await
        .map_err(|e| match &e {
            PeerError::Api(_, status, code, _)
                if matches!(
                    code,
                    ErrorCode::NameInUse
                        | ErrorCode::ClusterMismatch
                        | ErrorCode::Unauthorized
                        | ErrorCode::Forbidden
                        | ErrorCode::InvalidNodeId
                        | ErrorCode::CommandSetUnsupported
                ) || *status == 400 =>
            {
                refused(*code, e.to_string())
            }
            _ => JoinError::Retry(e.to_string()),
        })
}
