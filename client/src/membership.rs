//! Membership changes (admin key): join, remove, transfer leadership. Each change may name the
//! membership version it expects (`ClusterStatus::membership_version`), and fails with a 409
//! if the membership moved meanwhile.

use serde::Deserialize;
use serde::Serialize;

use crate::client::Call;
use crate::client::Client;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub node_id: String,
    pub address: String,
    pub raft_id: u64,
    /// The joiner's cluster UUID, when its data dir already belongs to a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveRequest {
    pub node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRequest {
    /// The voter to hand leadership to (default: the most caught-up one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipReply {
    pub cluster_id: String,
    pub membership_version: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferReply {
    pub leader: String,
    pub term: u64,
}

impl Client {
    /// Adds a node (as a learner, promoted to voter once caught up).
    pub async fn member_join(&self, req: &JoinRequest) -> Result<MembershipReply, Error> {
        self.execute(Call::post("cluster/join").json(req)).await
    }

    pub async fn member_remove(
        &self,
        node_id: &str,
        expected_version: Option<u64>,
    ) -> Result<MembershipReply, Error> {
        self.execute(Call::post("cluster/remove").json(&RemoveRequest {
            node_id: node_id.into(),
            expected_version,
        }))
        .await
    }

    /// Hands leadership to `node_id`, or to the most caught-up voter.
    pub async fn transfer_leader(&self, node_id: Option<&str>) -> Result<TransferReply, Error> {
        self.execute(
            Call::post("cluster/transfer-leader").json(&TransferRequest {
                node_id: node_id.map(str::to_string),
            }),
        )
        .await
    }
}
