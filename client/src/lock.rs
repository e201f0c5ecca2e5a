//! Locks with fencing tokens and leader elections, both held by a lease.

use std::time::Duration;

use crate::client::Call;
use crate::client::Client;
use crate::error::Error;
use crate::types::*;

/// The server's wait when a request names none.
const DEFAULT_WAIT_MS: u64 = 30_000;

impl Client {
    /// Acquires (or queues for) a lock; see [`LockRequest`]. The answer's fencing token
    /// increases strictly from holder to holder.
    pub async fn lock(&self, req: &LockRequest) -> Result<LockResponse, Error> {
        let wait = if req.wait {
            req.timeout_ms.unwrap_or(DEFAULT_WAIT_MS)
        } else {
            0
        };
        self.execute(
            Call::post("lock/acquire")
                .json(req)
                .wait(Duration::from_millis(wait)),
        )
        .await
    }

    pub async fn unlock(&self, name: &str, lease: u64) -> Result<UnlockResponse, Error> {
        self.execute(Call::post("lock/release").json(&UnlockRequest {
            name: name.into(),
            lease,
        }))
        .await
    }

    /// Campaigns in an election; returns once this candidate leads.
    pub async fn campaign(&self, req: &CampaignRequest) -> Result<CampaignResponse, Error> {
        let wait = req.timeout_ms.unwrap_or(DEFAULT_WAIT_MS);
        self.execute(
            Call::post("election/campaign")
                .json(req)
                .wait(Duration::from_millis(wait)),
        )
        .await
    }

    /// The election's current leader, if any.
    pub async fn election_leader(&self, name: &str) -> Result<ElectionLeaderResponse, Error> {
        self.execute(Call::get("election/leader").query("name", name))
            .await
    }

    pub async fn resign(&self, name: &str, lease: u64) -> Result<ResignResponse, Error> {
        self.execute(Call::post("election/resign").json(&ResignRequest {
            name: name.into(),
            lease,
        }))
        .await
    }
}
