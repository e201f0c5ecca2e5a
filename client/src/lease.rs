//! Leases: grant, keep alive, revoke, inspect; and a task that keeps one alive.

use std::time::Duration;

use reqwest::Method;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Call;
use crate::client::Client;
use crate::error::Error;
use crate::types::*;

impl Client {
    /// A new lease with this time to live (whole milliseconds, 1 s to 7 days).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrantResponse, Error> {
        self.execute(Call::post("lease").json(&LeaseGrantRequest {
            ttl_ms: ttl.as_millis() as u64,
        }))
        .await
    }

    /// Restarts the lease's time to live; `lease_not_found` once it has ended.
    pub async fn lease_keep_alive(&self, id: u64) -> Result<LeaseKeepAliveResponse, Error> {
        self.execute(Call::post(format!("lease/{id}/keepalive")))
            .await
    }

    /// Ends the lease now, deleting its keys.
    pub async fn lease_revoke(&self, id: u64) -> Result<LeaseRevokeResponse, Error> {
        self.execute(Call::new(Method::DELETE, format!("lease/{id}")))
            .await
    }

    /// The lease, or `Ok(None)` when it does not exist (any more).
    pub async fn lease_get(&self, id: u64) -> Result<Option<LeaseInfo>, Error> {
        match self.execute(Call::get(format!("lease/{id}"))).await {
            Err(e) if e.error_code() == Some(ErrorCode::LeaseNotFound) => Ok(None),
            other => other.map(Some),
        }
    }

    pub async fn lease_list(&self) -> Result<LeaseListResponse, Error> {
        self.execute(Call::get("lease")).await
    }

    /// Keeps the lease alive from a background task, every third of `ttl`, until the handle
    /// is dropped or stopped. Each keep-alive is retried under the client's policy, and a
    /// failed one again at the next tick. The task ends, and [`KeepAlive::lost`] resolves with
    /// why, when the lease is gone (`lease_not_found`), on an error retrying cannot fix, or
    /// when no keep-alive succeeded for `ttl`: from then on the holder must assume the lease
    /// ended (a lock it held may have passed on).
    pub fn keep_alive_task(&self, id: u64, ttl: Duration) -> KeepAlive {
        let client = self.clone();
        let interval = (ttl / 3).max(Duration::from_millis(100));
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut confirmed = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let sent = tokio::time::Instant::now();
                match client.lease_keep_alive(id).await {
                    Ok(_) => confirmed = sent,
                    Err(e) if e.is_retryable() && confirmed.elapsed() < ttl => continue,
                    Err(e) => {
                        let _ = tx.send(Some(e.to_string()));
                        return;
                    }
                }
            }
        });
        KeepAlive { id, task, lost: rx }
    }
}

/// A running keep-alive task (see [`Client::keep_alive_task`]); stopped on drop.
#[derive(Debug)]
pub struct KeepAlive {
    id: u64,
    task: JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

impl KeepAlive {
    pub fn lease(&self) -> u64 {
        self.id
    }

    /// Resolves when the task stopped keeping the lease alive, with why.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "keep-alive task ended".into(),
        }
    }

    /// Whether the lease was lost (the task ended with an error).
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    pub fn stop(self) {}
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}
