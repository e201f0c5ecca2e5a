//! Membership changes (admin key): join, remove, transfer leadership. Each change may name the
//! membership version it expects (`ClusterStatus::membership_version`), and fails with a 409
//! if the membership moved meanwhile. Also the cluster's alarms and history compaction.

use crate::client::Call;
use crate::client::Client;
use crate::error::Error;
use crate::types::AlarmsResponse;
use crate::types::CompactRequest;
use crate::types::CompactResponse;
use crate::types::DisarmRequest;
pub use crate::types::JoinRequest;
pub use crate::types::MembershipReply;
pub use crate::types::RemoveRequest;
pub use crate::types::TransferReply;
pub use crate::types::TransferRequest;

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

    /// Hands leadership to `node_id`, or to the most caught-up voter that is answering.
    pub async fn transfer_leader(&self, node_id: Option<&str>) -> Result<TransferReply, Error> {
        self.execute(
            Call::post("cluster/transfer-leader").json(&TransferRequest {
                node_id: node_id.map(str::to_string),
            }),
        )
        .await
    }

    /// The alarms raised in the cluster.
    pub async fn alarms(&self) -> Result<AlarmsResponse, Error> {
        self.execute(Call::get("cluster/alarms")).await
    }

    /// Ends the `no_space` alarm of `member` (or of every member), refused with
    /// `alarm_still_raised` until every such member is clear of its bounds; the alarms left.
    pub async fn disarm_no_space(&self, member: Option<&str>) -> Result<AlarmsResponse, Error> {
        self.execute(Call::post("cluster/alarms/disarm").json(&DisarmRequest {
            kind: crate::types::AlarmKind::NoSpace,
            member: member.map(str::to_string),
        }))
        .await
    }

    /// Forgets the change history below `revision` (default: the current one) on every member.
    pub async fn compact(&self, revision: Option<u64>) -> Result<CompactResponse, Error> {
        self.execute(Call::post("cluster/compact").json(&CompactRequest { revision }))
            .await
    }
}
