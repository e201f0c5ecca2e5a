//! The leader's housekeeping, every decision replicated through the log:
//! - lease expiry: leases past their deadline on the leader's monotonic clock
//!   ([`crate::lease_clock`]) are ended by an `EndLeases` command (before command set 5: those
//!   past their replicated wall-clock deadline, by `ExpireLeases`);
//! - the idempotency sweep: answers older than the retention are forgotten, the oldest first,
//!   by `SweepIdempotencyOldest` commands of at most [`SWEEP_BATCH`] each (replicas agree
//!   because the age is measured against the command's replicated proposal time);
//! - enabling a newer command set once every member supports it (see [`crate::features`]).
//!
//! Failover: a new leader does not know when clients last kept their leases alive under the
//! old leader (its applied state may even lag). So it expires a lease only once it has itself
//! led for at least that lease's TTL: every lease gets a full TTL after a leader change, and a
//! client that keeps its lease alive through the new leader never loses it.
//!
//! Both look only at what is due (the lease clock's deadline order, the idempotency time
//! index in `store::time_index`), never a whole table, so neither the leader's tick nor a
//! replica's apply grows with the tables.

use std::time::Duration;
use std::time::Instant;

use openraft::ServerState;

use crate::clock::now_ms;
use crate::service::SharedNode;
use crate::store::records::COMMAND_VERSION;
use crate::store::records::COMMAND_VERSION_BASE;
use crate::store::records::COMMAND_VERSION_LEADER_LEASES;
use crate::store::records::Command;
use crate::store::records::Operation;
use crate::store::records::Response;

const TICK: Duration = Duration::from_millis(200);
/// At most this many leases end in one command, to keep entries small.
const EXPIRE_BATCH: usize = 1000;
/// At most this many due leases are looked at per tick (those a new leader must still wait
/// for are skipped), so a tick stays short whatever the number of leases.
const EXPIRE_LOOK_AT: usize = 4 * EXPIRE_BATCH;
/// At most this many idempotency answers are forgotten by one command: its apply deletes only
/// these, well under a millisecond, whatever the table's size.
pub const SWEEP_BATCH: u32 = 1000;
/// Sweep commands per tick while a backlog remains (at most 50,000 answers a second).
const SWEEP_BATCHES_PER_TICK: usize = 10;
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
        let mut last_sweep = Instant::now();
        // Whether the last sweep stopped with answers still due.
        let mut sweep_backlog = false;
        let mut last_enable: Option<Instant> = None;
        loop {
            tick.tick().await;
            let m = crate::raft::metrics_of(&node.raft);
            if m.state != ServerState::Leader {
                node.reader.lease_clock().not_leading();
                continue;
            }
            // When this node became leader in this term (the lease clock keeps it).
            let since = node
                .reader
                .lease_clock()
                .leading(m.current_term, Instant::now());
            let version = node.reader.command_version();
            if version < COMMAND_VERSION && last_enable.is_none_or(|t| t.elapsed() >= ENABLE_EVERY)
            {
                last_enable = Some(Instant::now());
                if let Err(e) =
                    crate::features::enable(&node.raft, &node.reader, &node.peers, COMMAND_VERSION)
                        .await
                {
                    tracing::debug!(error = %e, "newer command set not enabled yet");
                }
            }
            if version == COMMAND_VERSION_BASE {
                // Leases and the sweep are commands of a newer set.
                continue;
            }
            if version >= COMMAND_VERSION_LEADER_LEASES {
                end_leases(&node).await;
            } else {
                expire_leases(&node, since.elapsed()).await;
            }
            if sweep_backlog || last_sweep.elapsed() >= settings.sweep_every() {
                last_sweep = Instant::now();
                sweep_backlog = sweep(&node, settings.idempotency_retention, version).await;
            }
        }
    });
}

/// Proposes a housekeeping command; its answer, or `None` (logged) if it failed.
async fn propose(node: &SharedNode, op: Operation) -> Option<Response> {
    let cmd = Command {
        op,
        idempotency_key: None,
        proposed_at_ms: now_ms(),
    };
    let what = cmd.to_string();
    match node.propose_local(cmd).await {
        Ok(response) => Some(response),
        Err(e) => {
            tracing::warn!(error = %e, "housekeeping proposal failed: {what}");
            None
        }
    }
}

/// Ends the leases past their deadline on this leader's monotonic clock (which counts one full
/// TTL from when it began to lead).
async fn end_leases(node: &SharedNode) {
    let ids = node.reader.lease_clock().due(Instant::now(), EXPIRE_BATCH);
    if !ids.is_empty() {
        tracing::info!(leases = ?ids, "ending leases past their deadline");
        // Lost (a leader change, a timeout): the clock offers them again after a pause, and
        // keep-alives stay refused meanwhile.
        propose(node, Operation::EndLeases { ids }).await;
    }
}

/// Before command set 5: ends the leases past their replicated wall-clock deadline that this
/// leader may end (it has led for their TTL), reading only the due part of the deadline index.
async fn expire_leases(node: &SharedNode, leading_for: Duration) {
    let now = now_ms();
    let leading_for_ms = leading_for.as_millis() as u64;
    let due = match node.reader.leases_due(now, EXPIRE_LOOK_AT) {
        Ok(due) => due,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the lease deadlines");
            return;
        }
    };
    let mut ids = Vec::new();
    for id in due {
        match node.reader.lease(id) {
            Ok(Some(l)) if l.expires_at_ms <= now && leading_for_ms >= l.ttl_ms => ids.push(id),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read lease {id}");
                return;
            }
        }
        if ids.len() == EXPIRE_BATCH {
            break;
        }
    }
    if !ids.is_empty() {
        tracing::info!(leases = ?ids, "expiring leases");
        propose(node, Operation::ExpireLeases { ids }).await;
    }
}

/// Forgets the idempotency answers older than the retention, oldest first, in bounded
/// commands. Returns whether answers may still be due (the tick's share of batches ran out).
async fn sweep(node: &SharedNode, retention: Duration, command_version: u32) -> bool {
    let older_than_ms = retention.as_millis() as u64;
    for _ in 0..SWEEP_BATCHES_PER_TICK {
        match node
            .reader
            .idempotency_due(now_ms().saturating_sub(older_than_ms))
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the idempotency index");
                return false;
            }
        }
        let op = Operation::SweepIdempotencyOldest {
            older_than_ms,
            limit: SWEEP_BATCH,
        };
        if command_version < op.command_version() {
            // A member still runs a binary without the bounded sweep: the whole sweep, which
            // reads only the due entries of the index here too.
            if let Some(Response::Swept { removed }) =
                propose(node, Operation::SweepIdempotency { older_than_ms }).await
            {
                node.metrics.answers_swept(removed);
            }
            return false;
        }
        match propose(node, op).await {
            Some(Response::Swept { removed }) => {
                node.metrics.answers_swept(removed);
                if removed < u64::from(SWEEP_BATCH) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}
