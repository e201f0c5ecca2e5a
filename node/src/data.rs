//! The data operations a node offers (keys, transactions, leases, the change history), in the
//! API's own types: each builds its command from the request, proposes it or reads the local
//! replica, and answers in API types. The stored records stay below this module; the HTTP layer
//! only parses, validates and maps.

use concordance_client::Compare;
use concordance_client::CompareOp;
use concordance_client::CompareTarget;
use concordance_client::Consistency;
use concordance_client::DeleteResponse;
use concordance_client::ErrorCode;
use concordance_client::EventType;
use concordance_client::GetResponse;
use concordance_client::KeyValue;
use concordance_client::LeaseGrantResponse;
use concordance_client::LeaseInfo;
use concordance_client::LeaseKeepAliveResponse;
use concordance_client::LeaseListResponse;
use concordance_client::LeaseRevokeResponse;
use concordance_client::ListResponse;
use concordance_client::PutRequest;
use concordance_client::PutResponse;
use concordance_client::TxnOp;
use concordance_client::TxnOpResult;
use concordance_client::TxnRequest;
use concordance_client::TxnResponse;
use concordance_client::WatchEvent;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::raft::wire;
use crate::service::Node;
use crate::store::records::COMMAND_VERSION_LEADER_LEASES;
use crate::store::records::COMMAND_VERSION_LEASE_OWNERS;
use crate::store::records::CompareOpRecord;
use crate::store::records::CompareRecord;
use crate::store::records::CompareTargetRecord;
use crate::store::records::EventKind;
use crate::store::records::EventRecord;
use crate::store::records::KeyRecord;
use crate::store::records::LeaseRecord;
use crate::store::records::Operation;
use crate::store::records::Response;
use crate::store::records::TxnOpRecord;
use crate::store::records::TxnOpResultRecord;

/// Lease ids stay below 2^53 so every JSON implementation reads them exactly.
pub const MAX_LEASE_ID: u64 = (1 << 53) - 1;

/// A key and its record, as the API shows it.
pub fn key_value(key: String, r: KeyRecord) -> KeyValue {
    KeyValue {
        key,
        value: r.value,
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
        lease: r.lease,
        value_omitted: r.value_omitted,
    }
}

/// One change of the history, at its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: u64,
    pub event: WatchEvent,
}

pub(crate) fn change(e: EventRecord) -> Change {
    let event = match e.kind {
        EventKind::Put => WatchEvent {
            kind: EventType::Put,
            kv: e.kv.map(|kv| key_value(e.key.clone(), kv)),
            key: e.key,
        },
        EventKind::Delete => WatchEvent {
            kind: EventType::Delete,
            key: e.key,
            kv: None,
        },
    };
    Change {
        revision: e.revision,
        event,
    }
}

/// A lease as the API shows it, with `remaining_ms` left (`None`: from its stored wall-clock
/// deadline, as before command set 5).
fn lease_info(l: LeaseRecord, remaining_ms: Option<u64>) -> LeaseInfo {
    LeaseInfo {
        id: l.id,
        ttl_ms: l.ttl_ms,
        remaining_ms: remaining_ms.unwrap_or_else(|| l.expires_at_ms.saturating_sub(now_ms())),
        keys: l.keys,
        owner: l.owner,
    }
}

/// At most this many leases' time left asked of the leader in one message.
const TIME_LEFT_BATCH: usize = 10_000;

fn unexpected_lease_reply(reply: &wire::LeaseReply) -> NodeError {
    NodeError::internal(format!(
        "the leader answered a lease request with {reply:?}"
    ))
}

pub(crate) fn lease_not_found(id: u64) -> NodeError {
    NodeError::Rejected(
        ErrorCode::LeaseNotFound,
        format!("lease {id} does not exist or has expired"),
    )
}

/// The answer to a retried request whose `Idempotency-Key` belonged to another request.
fn reused_key(other: &Response) -> NodeError {
    NodeError::Rejected(
        ErrorCode::IdempotencyKeyReused,
        format!(
            "this Idempotency-Key was already used for a different kind of request (answered {}); use a new key per request",
            match other {
                Response::None => "nothing",
                Response::Put { .. } => "a put",
                Response::Delete { .. } => "a delete",
                Response::Rejected { .. } => "a rejection",
                Response::Txn { .. } => "a transaction",
                Response::Lease { .. } => "a lease grant or keep-alive",
                Response::LeaseRevoked { .. } => "a lease revoke",
                Response::LeasesExpired { .. } => "a lease expiry",
                Response::Swept { .. } => "a sweep",
                Response::Enabled { .. } => "a feature enable",
                Response::Checked { .. } => "a state check",
            }
        ),
    )
}

fn compare_record(c: Compare) -> CompareRecord {
    CompareRecord {
        key: c.key,
        target: match c.target {
            CompareTarget::Value => CompareTargetRecord::Value,
            CompareTarget::CreateRevision => CompareTargetRecord::CreateRevision,
            CompareTarget::ModRevision => CompareTargetRecord::ModRevision,
            CompareTarget::Version => CompareTargetRecord::Version,
            CompareTarget::Lease => CompareTargetRecord::Lease,
            CompareTarget::Exists => CompareTargetRecord::Exists,
        },
        op: match c.op {
            CompareOp::Equal => CompareOpRecord::Equal,
            CompareOp::NotEqual => CompareOpRecord::NotEqual,
            CompareOp::Greater => CompareOpRecord::Greater,
            CompareOp::Less => CompareOpRecord::Less,
        },
        value: c.value,
    }
}

fn txn_op_record(op: TxnOp) -> TxnOpRecord {
    match op {
        TxnOp::Put { key, value, lease } => TxnOpRecord::Put { key, value, lease },
        TxnOp::Get { key } => TxnOpRecord::Get { key },
        TxnOp::Delete { key } => TxnOpRecord::Delete { key },
        TxnOp::DeletePrefix { prefix } => TxnOpRecord::DeletePrefix { prefix },
    }
}

fn txn_op_result(r: TxnOpResultRecord) -> TxnOpResult {
    match r {
        TxnOpResultRecord::Put {
            key,
            revision,
            prev,
        } => TxnOpResult::Put {
            revision,
            prev_kv: prev.map(|p| key_value(key, p)),
        },
        TxnOpResultRecord::Get { key, kv } => TxnOpResult::Get {
            kv: kv.map(|k| key_value(key.clone(), k)),
            key,
        },
        TxnOpResultRecord::Delete { key, prev } => TxnOpResult::Delete {
            deleted: u64::from(prev.is_some()),
            prev_kv: prev.map(|p| key_value(key, p)),
        },
        TxnOpResultRecord::DeletePrefix { deleted } => TxnOpResult::DeletePrefix { deleted },
    }
}

/// The command of a transaction (validated by the caller).
pub fn txn_operation(req: TxnRequest) -> Operation {
    Operation::Txn {
        compare: req.compare.into_iter().map(compare_record).collect(),
        success: req.success.into_iter().map(txn_op_record).collect(),
        failure: req.failure.into_iter().map(txn_op_record).collect(),
    }
}

/// A list page ends early once its keys and values pass this many stored bytes (it always
/// holds at least one key), with `more` and `next` as at its `limit`: a page of 10,000 keys of
/// 1 MiB each would otherwise be built whole in memory, twice (records, then JSON).
pub const LIST_PAGE_BYTES: usize = 4 << 20;

impl Node {
    /// Writes `key` (its checks done by the caller).
    pub async fn put(
        &self,
        key: String,
        req: PutRequest,
        idempotency_key: Option<String>,
    ) -> Result<PutResponse, NodeError> {
        let op = Operation::Put {
            key: key.clone(),
            value: req.value,
            lease: req.lease,
        };
        match self.propose(op, idempotency_key).await? {
            Response::Put { revision, prev } => Ok(PutResponse {
                revision,
                prev_kv: prev.map(|p| key_value(key, p)),
            }),
            other => Err(reused_key(&other)),
        }
    }

    pub async fn delete(
        &self,
        key: String,
        idempotency_key: Option<String>,
    ) -> Result<DeleteResponse, NodeError> {
        let op = Operation::Delete { key: key.clone() };
        match self.propose(op, idempotency_key).await? {
            Response::Delete { revision, prev } => Ok(DeleteResponse {
                revision,
                deleted: u64::from(prev.is_some()),
                prev_kv: prev.map(|p| key_value(key, p)),
            }),
            other => Err(reused_key(&other)),
        }
    }

    /// Runs a transaction (validated by the caller).
    pub async fn txn(
        &self,
        req: TxnRequest,
        idempotency_key: Option<String>,
    ) -> Result<TxnResponse, NodeError> {
        let response = self.propose(txn_operation(req), idempotency_key).await?;
        let Response::Txn {
            succeeded,
            revision,
            results,
        } = response
        else {
            return Err(reused_key(&response));
        };
        Ok(TxnResponse {
            succeeded,
            revision,
            results: results.into_iter().map(txn_op_result).collect(),
        })
    }

    pub async fn get(
        &self,
        key: String,
        consistency: Consistency,
    ) -> Result<GetResponse, NodeError> {
        self.read_barrier(consistency).await?;
        let revision = self.reader.revision();
        match self.reader.get(&key).map_err(NodeError::storage)? {
            Some(r) => Ok(GetResponse {
                kv: key_value(key, r),
                revision,
            }),
            None => Err(NodeError::Rejected(
                ErrorCode::KeyNotFound,
                format!("key {key:?} does not exist"),
            )),
        }
    }

    /// Keys under `prefix` in order, after `after`, at most `limit` (and [`LIST_PAGE_BYTES`]),
    /// with whether more remain.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<ListResponse, NodeError> {
        self.read_barrier(consistency).await?;
        let revision = self.reader.revision();
        let (kvs, more) = self.list_local(prefix, after, limit)?;
        let next = if more {
            kvs.last().map(|kv| kv.key.clone())
        } else {
            None
        };
        Ok(ListResponse {
            kvs,
            revision,
            more,
            next,
        })
    }

    /// [`Node::list`] of this replica as it is, without a read barrier.
    pub fn list_local(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool), NodeError> {
        let (items, more) =
            off_the_async_workers(|| self.reader.list(prefix, after, limit, LIST_PAGE_BYTES))
                .map_err(NodeError::storage)?;
        let kvs = items.into_iter().map(|(k, r)| key_value(k, r)).collect();
        Ok((kvs, more))
    }

    /// Grants a lease under a new random id, owned by the credential `owner` once every
    /// member knows owners (command set 7; before, it has none).
    pub async fn lease_grant(
        &self,
        ttl_ms: u64,
        owner: &str,
        idempotency_key: Option<String>,
    ) -> Result<LeaseGrantResponse, NodeError> {
        let id = rand::random_range(1..=MAX_LEASE_ID);
        // Before command set 7 is enabled, the leader (this build) enables it on the way when
        // every member supports it (a new cluster's first lease, before the leader's own
        // check); refused as unavailable (a member runs an older build: nothing was
        // proposed), the lease has no owner. A follower does not send an owner to a leader
        // that may not know owners.
        let owners_known = self.reader.command_version() >= COMMAND_VERSION_LEASE_OWNERS
            || crate::raft::metrics_of(&self.raft).state == openraft::ServerState::Leader;
        let owned = Operation::LeaseGrant {
            id,
            ttl_ms,
            owner: owners_known.then(|| owner.to_string()),
        };
        let answer = match self.propose(owned, idempotency_key.clone()).await {
            Err(NodeError::Rejected(ErrorCode::FeatureUnavailable, _))
                if self.reader.command_version() < COMMAND_VERSION_LEASE_OWNERS =>
            {
                let unowned = Operation::LeaseGrant {
                    id,
                    ttl_ms,
                    owner: None,
                };
                self.propose(unowned, idempotency_key).await?
            }
            answer => answer?,
        };
        match answer {
            Response::Lease { id, ttl_ms } => Ok(LeaseGrantResponse { id, ttl_ms }),
            other => Err(reused_key(&other)),
        }
    }

    /// Restarts a lease's TTL. From command set 5 the leader does it on its own clock, with no
    /// Raft entry (a keep-alive repeated is harmless, so the idempotency key is not needed);
    /// before, it is a replicated command.
    pub async fn lease_keep_alive(
        &self,
        id: u64,
        idempotency_key: Option<String>,
    ) -> Result<LeaseKeepAliveResponse, NodeError> {
        if self.reader.command_version() >= COMMAND_VERSION_LEADER_LEASES {
            return match self
                .ask_leader_about_leases(wire::LeaseRequest::KeepAlive { id })
                .await?
            {
                wire::LeaseReply::KeptAlive { ttl_ms } => Ok(LeaseKeepAliveResponse { id, ttl_ms }),
                other => Err(unexpected_lease_reply(&other)),
            };
        }
        match self
            .propose(Operation::LeaseKeepAlive { id }, idempotency_key)
            .await?
        {
            Response::Lease { id, ttl_ms } => Ok(LeaseKeepAliveResponse { id, ttl_ms }),
            other => Err(reused_key(&other)),
        }
    }

    pub async fn lease_revoke(
        &self,
        id: u64,
        idempotency_key: Option<String>,
    ) -> Result<LeaseRevokeResponse, NodeError> {
        match self
            .propose(Operation::LeaseRevoke { id }, idempotency_key)
            .await?
        {
            Response::LeaseRevoked {
                id,
                revision,
                deleted,
            } => Ok(LeaseRevokeResponse {
                id,
                revision,
                deleted,
            }),
            other => Err(reused_key(&other)),
        }
    }

    pub async fn lease(&self, id: u64, consistency: Consistency) -> Result<LeaseInfo, NodeError> {
        self.read_barrier(consistency).await?;
        let Some(l) = self.reader.lease(id).map_err(NodeError::storage)? else {
            return Err(lease_not_found(id));
        };
        let remaining = self.time_left(&[id], consistency).await?;
        Ok(lease_info(l, remaining[0]))
    }

    /// How long each lease of `ids` has left (from command set 5; before, `None` each). A
    /// linearizable read asks the leader, which alone sees keep-alives; a serializable one
    /// answers from this member's clock (on a follower: since the grant it applied, so it
    /// may read low). A lease the clock does not know (ended meanwhile) has 0 left.
    async fn time_left(
        &self,
        ids: &[u64],
        consistency: Consistency,
    ) -> Result<Vec<Option<u64>>, NodeError> {
        if self.reader.command_version() < COMMAND_VERSION_LEADER_LEASES {
            return Ok(vec![None; ids.len()]);
        }
        if consistency != Consistency::Linearizable {
            let clock = self.reader.lease_clock();
            let now = std::time::Instant::now();
            return Ok(ids
                .iter()
                .map(|id| {
                    Some(
                        clock
                            .time_left(*id, now)
                            .map_or(0, |d| d.as_millis() as u64),
                    )
                })
                .collect());
        }
        let mut left = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(TIME_LEFT_BATCH) {
            let request = wire::LeaseRequest::TimeLeft {
                ids: chunk.to_vec(),
            };
            match self.ask_leader_about_leases(request).await? {
                wire::LeaseReply::TimeLeft { remaining_ms }
                    if remaining_ms.len() == chunk.len() =>
                {
                    left.extend(remaining_ms.into_iter().map(|r| Some(r.unwrap_or(0))));
                }
                other => return Err(unexpected_lease_reply(&other)),
            }
        }
        Ok(left)
    }

    /// Whether lease `id` exists in this replica as it is.
    pub fn lease_exists(&self, id: u64) -> Result<bool, NodeError> {
        Ok(self.reader.lease(id).map_err(NodeError::storage)?.is_some())
    }

    pub async fn leases(&self, consistency: Consistency) -> Result<LeaseListResponse, NodeError> {
        self.read_barrier(consistency).await?;
        let revision = self.reader.revision();
        let leases = off_the_async_workers(|| self.reader.leases()).map_err(NodeError::storage)?;
        let ids: Vec<u64> = leases.iter().map(|l| l.id).collect();
        let remaining = self.time_left(&ids, consistency).await?;
        Ok(LeaseListResponse {
            leases: leases
                .into_iter()
                .zip(remaining)
                .map(|(l, r)| lease_info(l, r))
                .collect(),
            revision,
        })
    }

    /// The changes with `from <= revision <= to` this replica keeps, in revision order, at
    /// most `limit` revisions' worth and about `max_bytes` stored (whole revisions only, at
    /// least one).
    pub fn history(
        &self,
        from: u64,
        to: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Change>, NodeError> {
        let events = off_the_async_workers(|| self.reader.history(from, to, limit, max_bytes))
            .map_err(NodeError::storage)?;
        Ok(events.into_iter().map(change).collect())
    }
}

/// Runs a read that can take milliseconds (a list page or a history step of up to 4 MiB, the
/// lease table) without holding up the other tasks of its async worker: tokio moves them to
/// another worker meanwhile (`block_in_place`, on the multi-threaded runtime a node runs on;
/// elsewhere, as in unit tests, the read runs in place). Point reads stay inline: a handoff
/// would cost more than they take.
fn off_the_async_workers<T>(read: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(read)
        }
        _ => read(),
    }
}
