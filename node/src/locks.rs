//! Locks with fencing tokens, and leader elections: recipes over keys, leases and
//! transactions, so they inherit their guarantees (linearizable, replicated, failover-safe).
//!
//! A lock (or election) `name` is a queue of keys `_concordance/<kind>/<name>/<lease as 16
//! hex digits>`, each attached to its candidate's lease. Joining is a transaction "create the
//! key if absent, else read it", so a retry (after a timeout or a node's death) keeps its
//! place. The candidate whose key has the lowest create revision holds the lock (leads); its
//! create revision is the fencing token, strictly increasing from holder to holder. Waiters
//! re-check after every applied change, with a linearizable read; a holder's key vanishes when
//! it releases or its lease ends (expiry decided by the leader through the log), and the next
//! key in create order holds. Agents may not write under [`RESERVED_PREFIX`] directly, so a
//! queue key always carries its candidate's lease.

use std::time::Duration;

use concordance_client::Compare;
use concordance_client::CompareOp;
use concordance_client::CompareTarget;
use concordance_client::Consistency;
use concordance_client::KeyValue;
use concordance_client::TxnOp;
use concordance_client::TxnRequest;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::NodeError;
use crate::service::Node;

/// Keys under this prefix belong to locks and elections: only their endpoints (or an admin
/// repairing them) may write there, so a lock key always carries its holder's lease.
pub const RESERVED_PREFIX: &str = "_concordance/";

/// Waiters re-check at least this often, even without a change (e.g. while without quorum).
const RECHECK: Duration = Duration::from_secs(1);
/// Queue members read per page.
const PAGE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lock,
    Election,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Election => "election",
        }
    }
}

/// The prefix of the queue of `name`: watch it to follow who holds (leads).
pub fn queue_prefix(kind: Kind, name: &str) -> String {
    format!("{RESERVED_PREFIX}{}/{name}/", kind.segment())
}

/// The key `lease` holds its place in the queue with.
pub fn queue_key(kind: Kind, name: &str, lease: u64) -> String {
    format!("{}{lease:016x}", queue_prefix(kind, name))
}

/// A queue member: its key, value, lease, and the revision that queued it (the fencing token,
/// or the leader's term).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub key: String,
    pub value: Value,
    pub lease: u64,
    pub revision: u64,
}

impl From<KeyValue> for Member {
    fn from(kv: KeyValue) -> Self {
        Member {
            key: kv.key,
            value: kv.value,
            lease: kv.lease.unwrap_or(0),
            revision: kv.create_revision,
        }
    }
}

/// Why a candidate did not come first.
#[derive(Debug, Clone)]
pub enum QueueError {
    /// Another holds it and the candidate did not wait; the holder's fencing token.
    Held { token: u64 },
    /// Not first before the deadline; the last error met while waiting (no quorum, say).
    TimedOut { last: Option<NodeError> },
    /// The candidate's place was deleted (released or resigned) while it waited.
    Lost,
    /// The candidate's lease does not exist (or has expired).
    LeaseNotFound { lease: u64 },
    /// The node is stopping: the place in the queue is kept for a retry elsewhere.
    ShuttingDown,
    /// The node could not do its part (read, propose).
    Node(NodeError),
}

impl From<NodeError> for QueueError {
    fn from(e: NodeError) -> Self {
        QueueError::Node(e)
    }
}

impl Node {
    /// The queue's members in create order: the first holds the lock (leads the election).
    pub async fn queue(
        &self,
        kind: Kind,
        name: &str,
        consistency: Consistency,
    ) -> Result<Vec<Member>, NodeError> {
        self.read_barrier(consistency).await?;
        let prefix = queue_prefix(kind, name);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self.list_local(&prefix, after.as_deref(), PAGE)?;
            after = page.last().map(|kv| kv.key.clone());
            out.extend(
                page.into_iter()
                    .filter(|kv| {
                        let rest = &kv.key[prefix.len()..];
                        rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit())
                    })
                    .map(Member::from),
            );
            if !more {
                break;
            }
        }
        out.sort_by_key(|m| m.revision);
        Ok(out)
    }

    /// Joins the queue of `name` with `lease` (or finds it already there) and waits until it
    /// comes first, at most `timeout`; without `wait`, a queue another heads is refused at once
    /// (`timeout` still bounds waiting out a leader change). A candidate that gives up leaves
    /// the queue if this call put it there (best effort: its lease's end removes it otherwise).
    pub async fn join_queue(
        &self,
        kind: Kind,
        name: &str,
        lease: u64,
        value: Value,
        wait: bool,
        timeout: Duration,
    ) -> Result<Member, QueueError> {
        let key = queue_key(kind, name, lease);
        let deadline = Instant::now() + timeout;
        let created = self.enqueue(&key, value, lease).await?;
        let failure = match self
            .wait_turn(kind, name, &key, lease, wait, deadline)
            .await
        {
            Ok(first) => return Ok(first),
            Err(e @ (QueueError::Held { .. } | QueueError::TimedOut { .. })) => e,
            Err(e) => return Err(e),
        };
        if created {
            self.leave(&key).await;
        }
        Err(failure)
    }

    /// Takes `lease`'s place out of the queue of `name`: whether it had one, and the revision.
    pub async fn quit_queue(
        &self,
        kind: Kind,
        name: &str,
        lease: u64,
    ) -> Result<(bool, u64), NodeError> {
        let deleted = self.delete(queue_key(kind, name, lease), None).await?;
        Ok((deleted.deleted > 0, deleted.revision))
    }

    /// Joins the queue (or finds this lease already in it). Returns whether this call created
    /// the key.
    async fn enqueue(&self, key: &str, value: Value, lease: u64) -> Result<bool, NodeError> {
        let join = TxnRequest {
            compare: vec![Compare {
                key: key.to_string(),
                target: CompareTarget::CreateRevision,
                op: CompareOp::Equal,
                value: Value::from(0),
            }],
            success: vec![TxnOp::Put {
                key: key.to_string(),
                value,
                lease: Some(lease),
            }],
            failure: vec![TxnOp::Get {
                key: key.to_string(),
            }],
        };
        Ok(self.txn(join, None).await?.succeeded)
    }

    /// Waits until `key` is first in its queue, or its patience ends.
    async fn wait_turn(
        &self,
        kind: Kind,
        name: &str,
        key: &str,
        lease: u64,
        wait: bool,
        deadline: Instant,
    ) -> Result<Member, QueueError> {
        loop {
            // Subscribed before reading, so a change right after the read still wakes us.
            let mut changes = self.reader.subscribe();
            let mut last_error = None;
            match self.queue(kind, name, Consistency::Linearizable).await {
                Ok(members) => {
                    let Some(own) = members.iter().find(|m| m.key == key) else {
                        if !self.lease_exists(lease)? {
                            return Err(QueueError::LeaseNotFound { lease });
                        }
                        return Err(QueueError::Lost);
                    };
                    if members[0].key == key {
                        return Ok(own.clone());
                    }
                    if !wait {
                        return Err(QueueError::Held {
                            token: members[0].revision,
                        });
                    }
                }
                // No quorum for now (e.g. a leader change): keep waiting until the deadline.
                Err(e) if e.is_unavailable() => last_error = Some(e),
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QueueError::TimedOut { last: last_error });
            }
            let pause = (deadline - now).min(RECHECK);
            tokio::select! {
                _ = tokio::time::timeout(pause, changes.changed()) => {}
                // The place in the queue stays: the client's retry on another member keeps it.
                _ = self.stopping.cancelled() => return Err(QueueError::ShuttingDown),
            }
        }
    }

    /// Leaves the queue after giving up (best effort: the lease's end removes it otherwise).
    async fn leave(&self, key: &str) {
        if let Err(e) = self.delete(key.to_string(), None).await {
            tracing::warn!(error = %e, key, "could not leave a lock queue; the lease's end will");
        }
    }
}
