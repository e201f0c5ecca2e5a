//! The leader's housekeeping, every decision replicated through the log:
//! - lease expiry: leases past their deadline are ended by an `ExpireLeases` command;
//! - the idempotency sweep: answers older than the retention are forgotten by a
//!   `SweepIdempotency` command (replicas agree because the age is measured against the
//!   command's replicated proposal time);
//! - enabling a newer command set once every member supports it (see [`crate::features`]).
//!
//! Failover: a new leader does not know when clients last kept their leases alive under the
//! old leader (its applied state may even lag). So it expires a lease only once it has itself
//! led for at least that lease's TTL: every lease gets a full TTL after a leader change, and a
//! client that keeps its lease alive through the new leader never loses it.

use std::time::Duration;
use std::time::Instant;

use openraft::ServerState;

use crate::clock::now_ms;
use crate::service::SharedNode;
use crate::store::records::COMMAND_VERSION;
use crate::store::records::COMMAND_VERSION_BASE;
use crate::store::records::Command;
use crate::store::records::Operation;

const TICK: Duration = Duration::from_millis(200);
/// At most this many leases end in one command, to keep entries small.
const EXPIRE_BATCH: usize = 1000;
const ENABLE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long an `Idempotency-Key`'s answer is kept.
    pub idempotency_retention: Duration,
}

impl Settings {
    fn sweep_every(&self) -> Duration {
        (self.idempotency_retention / 4).clamp(Duration::from_millis(500), Duration::from_secs(60))
    }
}

pub fn spawn(node: SharedNode, settings: Settings) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When this node became leader, and in which term.
        let mut leading: Option<(u64, Instant)> = None;
        let mut last_sweep = Instant::now();
        let mut last_enable: Option<Instant> = None;
        loop {
            tick.tick().await;
            let m = crate::raft::metrics_of(&node.raft);
            if m.state != ServerState::Leader {
                leading = None;
                continue;
            }
            let since = match leading {
                Some((term, since)) if term == m.current_term => since,
                _ => {
                    let now = Instant::now();
                    leading = Some((m.current_term, now));
                    now
                }
            };
            let version = node.reader.command_version();
            if version < COMMAND_VERSION && last_enable.is_none_or(|t| t.elapsed() >= ENABLE_EVERY)
            {
                last_enable = Some(Instant::now());
                if let Err(e) =
                    crate::features::enable(&node.raft, &node.reader, COMMAND_VERSION).await
                {
                    tracing::debug!(error = %e, "newer command set not enabled yet");
                }
            }
            if version == COMMAND_VERSION_BASE {
                // Leases and the sweep are commands of a newer set.
                continue;
            }
            expire_leases(&node, since.elapsed()).await;
            if last_sweep.elapsed() >= settings.sweep_every() {
                last_sweep = Instant::now();
                sweep(&node, settings.idempotency_retention).await;
            }
        }
    });
}

async fn propose(node: &SharedNode, op: Operation) {
    let what = format!(
        "{}",
        Command {
            op: op.clone(),
            idempotency_key: None,
            proposed_at_ms: 0
        }
    );
    let cmd = Command {
        op,
        idempotency_key: None,
        proposed_at_ms: now_ms(),
    };
    if let Err(e) = node.propose_local(cmd).await {
        tracing::warn!(error = %e, "housekeeping proposal failed: {what}");
    }
}

async fn expire_leases(node: &SharedNode, leading_for: Duration) {
    let leases = match node.reader.leases() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot read leases");
            return;
        }
    };
    let now = now_ms();
    let due: Vec<u64> = leases
        .iter()
        .filter(|l| l.expires_at_ms <= now && leading_for.as_millis() as u64 >= l.ttl_ms)
        .map(|l| l.id)
        .take(EXPIRE_BATCH)
        .collect();
    if !due.is_empty() {
        tracing::info!(leases = ?due, "expiring leases");
        propose(node, Operation::ExpireLeases { ids: due }).await;
    }
}

async fn sweep(node: &SharedNode, retention: Duration) {
    let retention_ms = retention.as_millis() as u64;
    match node
        .reader
        .idempotency_older_than(now_ms().saturating_sub(retention_ms))
    {
        Ok(0) => {}
        Ok(n) => {
            tracing::debug!(records = n, "sweeping old idempotency records");
            propose(
                node,
                Operation::SweepIdempotency {
                    older_than_ms: retention_ms,
                },
            )
            .await;
        }
        Err(e) => tracing::error!(error = %e, "cannot read the idempotency table"),
    }
}
