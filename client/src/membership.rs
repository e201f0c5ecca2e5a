//! Membership changes (admin key): join, remove, transfer leadership. Each change may name the
//! membership version it expects (`ClusterStatus::membership_version`), and fails with a 409
//! if the membership moved meanwhile.

use crate::client::Call;
use crate::client::Client;
use crate::error::Error;
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
}
