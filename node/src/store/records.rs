//! Our own stored record types. Each is written inside the versioned, checksummed envelope
//! of [`super::codec`]; none of them is a library's internal type, so an upgrade of the Raft
//! library can never change what is on disk.
//!
//! Enums are closed: a record or command of a kind this binary does not know fails to decode,
//! and the node stops with that error instead of skipping it.

use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

/// The identity a node draws at first start. An empty data dir always means a new identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRecord {
    /// Random Raft id: never reused, so a node that lost its disk can never vote as its old self.
    pub raft_id: u64,
    /// The name users see (`--node-id`).
    pub name: String,
    /// Set once the node bootstrapped a cluster or was admitted to one.
    pub cluster_uuid: Option<String>,
    /// Unix milliseconds of the first start, for `inspect`.
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogIdRecord {
    pub term: u64,
    /// Raft id of the leader that proposed the entry.
    pub leader: u64,
    pub index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteRecord {
    pub term: u64,
    pub node: u64,
    pub committed: bool,
}

/// A member as the cluster knows it: its user-facing name and the address peers dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: String,
    pub addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipRecord {
    /// One voter set, or two during a joint change.
    pub configs: Vec<Vec<u64>>,
    /// Every member, voters and learners, by Raft id.
    pub nodes: Vec<(u64, Member)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMembershipRecord {
    pub log_id: Option<LogIdRecord>,
    pub membership: MembershipRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum PayloadRecord {
    Blank,
    Command { command: Command },
    Membership { membership: MembershipRecord },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntryRecord {
    pub log_id: LogIdRecord,
    pub payload: PayloadRecord,
}

/// A state-machine command: what a client asked for, stamped by the proposing node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Command {
    pub op: Operation,
    /// A retried write with the same key applies once (see the idempotency table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The proposer's wall clock in Unix ms. Replicated, so every replica derives the same
    /// expiry decisions from the log rather than from its own clock.
    pub proposed_at_ms: u64,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            Operation::Put { key, .. } => write!(f, "put {key}"),
            Operation::Delete { key } => write!(f, "delete {key}"),
            Operation::Txn {
                compare,
                success,
                failure,
            } => write!(
                f,
                "txn ({} compares, {} success ops, {} failure ops)",
                compare.len(),
                success.len(),
                failure.len()
            ),
            Operation::LeaseGrant {
                id,
                ttl_ms,
                owner: None,
            } => write!(f, "grant lease {id} ttl {ttl_ms} ms"),
            Operation::LeaseGrant {
                id,
                ttl_ms,
                owner: Some(owner),
            } => write!(f, "grant lease {id} ttl {ttl_ms} ms to {owner}"),
            Operation::LeaseKeepAlive { id } => write!(f, "keep lease {id} alive"),
            Operation::LeaseRevoke { id } => write!(f, "revoke lease {id}"),
            Operation::ExpireLeases { ids } => write!(f, "expire leases {ids:?}"),
            Operation::EndLeases { ids } => write!(f, "end leases {ids:?}"),
            Operation::SweepIdempotency { older_than_ms } => {
                write!(f, "sweep idempotency records older than {older_than_ms} ms")
            }
            Operation::SweepIdempotencyOldest {
                older_than_ms,
                limit,
            } => write!(
                f,
                "sweep the oldest {limit} idempotency records older than {older_than_ms} ms"
            ),
            Operation::EnableCommandVersion { version } => {
                write!(f, "enable command set {version}")
            }
            Operation::CheckState {} => write!(f, "check the replicas' state"),
            Operation::RaiseAlarm { member, alarm, .. } => {
                write!(f, "raise the {} alarm on member {member}", alarm.as_str())
            }
            Operation::DisarmAlarm { member, alarm } => {
                write!(f, "disarm the {} alarm on member {member}", alarm.as_str())
            }
            Operation::CompactHistory { revision } => {
                write!(f, "compact the history below revision {revision}")
            }
        }
    }
}

/// The command set the first release knew: put and delete.
pub const COMMAND_VERSION_BASE: u32 = 1;
/// The newest command set this binary applies: 2 added transactions, leases and idempotency
/// sweeps; 3 the bounded idempotency sweep; 4 state checks and alarms; 5 leases timed on the
/// leader's monotonic clock (keep-alives no longer replicated, ends by `EndLeases`); 6 the
/// `no_space` alarm, disarming alarms, compacting the history on demand, and idempotency
/// answers kept without their values when large; 7 leases owned by the credential that
/// granted them.
pub const COMMAND_VERSION: u32 = 7;
/// The command set from which leases are timed on the leader's monotonic clock.
pub const COMMAND_VERSION_LEADER_LEASES: u32 = 5;
/// The command set of the `no_space` alarm, `DisarmAlarm`, `CompactHistory`, and of large
/// idempotency answers kept without their values.
pub const COMMAND_VERSION_NO_SPACE: u32 = 6;
/// The command set of leases with an owner (`LeaseGrant.owner`, `LeaseRecord.owner`).
pub const COMMAND_VERSION_LEASE_OWNERS: u32 = 7;

impl Operation {
    /// The command set that introduced this operation: it is proposed only once the cluster
    /// has enabled that set (every member runs a binary that knows it).
    pub fn command_version(&self) -> u32 {
        match self {
            Operation::Put { .. } | Operation::Delete { .. } => COMMAND_VERSION_BASE,
            Operation::LeaseGrant { owner: Some(_), .. } => COMMAND_VERSION_LEASE_OWNERS,
            Operation::Txn { .. }
            | Operation::LeaseGrant { .. }
            | Operation::LeaseKeepAlive { .. }
            | Operation::LeaseRevoke { .. }
            | Operation::ExpireLeases { .. }
            | Operation::SweepIdempotency { .. }
            | Operation::EnableCommandVersion { .. } => 2,
            Operation::SweepIdempotencyOldest { .. } => 3,
            Operation::RaiseAlarm {
                alarm: AlarmKind::NoSpace,
                ..
            } => COMMAND_VERSION_NO_SPACE,
            Operation::CheckState {} | Operation::RaiseAlarm { .. } => 4,
            Operation::EndLeases { .. } => COMMAND_VERSION_LEADER_LEASES,
            Operation::DisarmAlarm { .. } | Operation::CompactHistory { .. } => {
                COMMAND_VERSION_NO_SPACE
            }
        }
    }

    /// Whether applying it may make the stored state bigger: what the `no_space` alarm
    /// refuses. Deletes, revokes, expiries, sweeps, compaction and alarms only shrink it or
    /// keep it as it is (a transaction counts as growing if either branch puts).
    pub fn grows_state(&self) -> bool {
        match self {
            Operation::Put { .. } | Operation::LeaseGrant { .. } => true,
            Operation::Txn {
                success, failure, ..
            } => success
                .iter()
                .chain(failure)
                .any(|op| matches!(op, TxnOpRecord::Put { .. })),
            Operation::Delete { .. }
            | Operation::LeaseKeepAlive { .. }
            | Operation::LeaseRevoke { .. }
            | Operation::ExpireLeases { .. }
            | Operation::EndLeases { .. }
            | Operation::SweepIdempotency { .. }
            | Operation::SweepIdempotencyOldest { .. }
            | Operation::EnableCommandVersion { .. }
            | Operation::CheckState {}
            | Operation::RaiseAlarm { .. }
            | Operation::DisarmAlarm { .. }
            | Operation::CompactHistory { .. } => false,
        }
    }
}

/// The operations a command carries. New variants are proposed only once every member runs
/// a binary that knows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Operation {
    Put {
        key: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
    },
    Delete {
        key: String,
    },
    /// Compares, then one branch of operations, all at one revision. Validated before it is
    /// proposed; a reference to a missing lease rejects it as a whole.
    Txn {
        compare: Vec<CompareRecord>,
        success: Vec<TxnOpRecord>,
        failure: Vec<TxnOpRecord>,
    },
    /// Creates a lease expiring `ttl_ms` after the command's proposal time, owned by the
    /// credential `owner` (command set 7; before, no owner).
    #[serde(rename_all = "camelCase")]
    LeaseGrant {
        id: u64,
        ttl_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
    },
    /// Restarts a lease's time to live from the command's proposal time.
    LeaseKeepAlive {
        id: u64,
    },
    /// Ends a lease now, deleting its keys at one revision.
    LeaseRevoke {
        id: u64,
    },
    /// Proposed by the leader: ends these leases if, by the proposal time, they are still
    /// past their deadline (a keep-alive ordered before this command wins).
    ExpireLeases {
        ids: Vec<u64>,
    },
    /// Proposed by the leader: ends these leases, which its monotonic clock found past their
    /// deadline (command set 5 on; keep-alives are the leader's alone and not in the log).
    EndLeases {
        ids: Vec<u64>,
    },
    /// Proposed by the leader: forgets idempotency answers older than this at proposal time.
    #[serde(rename_all = "camelCase")]
    SweepIdempotency {
        older_than_ms: u64,
    },
    /// Proposed by the leader: forgets the oldest idempotency answers older than this at
    /// proposal time, at most `limit` (a full batch means more may be due).
    #[serde(rename_all = "camelCase")]
    SweepIdempotencyOldest {
        older_than_ms: u64,
        limit: u32,
    },
    /// Proposed by the leader once every member reported it can apply this command set.
    EnableCommandVersion {
        version: u32,
    },
    /// Proposed by the leader: every replica hashes its state as of this entry
    /// (`store::state_hash`), and the leader compares the hashes.
    CheckState {},
    /// Proposed by the leader: `member`'s state differs from the cluster's. The member is
    /// fenced (not ready, serves nothing) until it is replaced.
    RaiseAlarm {
        member: u64,
        alarm: AlarmKind,
        detail: String,
    },
    /// Asked for by an admin once `member` is back under its bounds: ends its alarm of this
    /// kind (only `no_space`; a corrupt member is replaced, never disarmed).
    DisarmAlarm {
        member: u64,
        alarm: AlarmKind,
    },
    /// Forgets the change history below `revision` (at most the current revision), as the
    /// retention does by itself: watches from an older revision are answered `compacted`.
    CompactHistory {
        revision: u64,
    },
}

/// Why a member is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// Its state hash differs from the others' at the same log index: the member is fenced.
    Corrupt,
    /// Its data dir is over its quota, or its volume under its free-space reserve: the
    /// cluster refuses writes that grow the state until an admin disarms it (command set 6).
    NoSpace,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 2] = [AlarmKind::Corrupt, AlarmKind::NoSpace];

    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Corrupt => "corrupt",
            AlarmKind::NoSpace => "no_space",
        }
    }

    /// The kind as the API names it.
    pub fn to_client(self) -> concordance_client::AlarmKind {
        match self {
            AlarmKind::Corrupt => concordance_client::AlarmKind::Corrupt,
            AlarmKind::NoSpace => concordance_client::AlarmKind::NoSpace,
        }
    }

    /// Whether the member it is raised on is fenced (serves nothing until replaced).
    pub fn fences(self) -> bool {
        matches!(self, AlarmKind::Corrupt)
    }
}

/// A raised alarm, part of the replicated state (in [`AppliedStateRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlarmRecord {
    pub member: u64,
    pub kind: AlarmKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CompareTargetRecord {
    Value,
    CreateRevision,
    ModRevision,
    Version,
    Lease,
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CompareOpRecord {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompareRecord {
    pub key: String,
    pub target: CompareTargetRecord,
    pub op: CompareOpRecord,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum TxnOpRecord {
    Put {
        key: String,
        value: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
    },
    Get {
        key: String,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum TxnOpResultRecord {
    Put {
        key: String,
        revision: u64,
        prev: Option<KeyRecord>,
    },
    Get {
        key: String,
        kv: Option<KeyRecord>,
    },
    Delete {
        key: String,
        prev: Option<KeyRecord>,
    },
    DeletePrefix {
        deleted: u64,
    },
}

/// What applying a command answers. Stored in the idempotency table, so it is a record too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Response {
    /// Entries that carry no command (blank, membership).
    None,
    Put {
        revision: u64,
        prev: Option<KeyRecord>,
    },
    Delete {
        revision: u64,
        prev: Option<KeyRecord>,
    },
    /// The command was refused as a whole and changed nothing.
    Rejected {
        code: RejectCode,
        message: String,
    },
    Txn {
        succeeded: bool,
        revision: u64,
        results: Vec<TxnOpResultRecord>,
    },
    #[serde(rename_all = "camelCase")]
    Lease {
        id: u64,
        ttl_ms: u64,
    },
    LeaseRevoked {
        id: u64,
        revision: u64,
        deleted: u64,
    },
    LeasesExpired {
        revision: u64,
        ids: Vec<u64>,
    },
    Swept {
        removed: u64,
    },
    Enabled {
        version: u32,
    },
    /// A `CheckState` entry: the log index every replica hashes its state at.
    Checked {
        index: u64,
    },
}

/// Why the state machine refused a command (the only refusals that depend on state; the
/// API checks everything else before proposing). Written as the API's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// A lease the command names does not exist (or has expired).
    LeaseNotFound,
    /// A grant for a lease id that exists.
    LeaseExists,
    /// A transaction whose answer would exceed the byte bound (command set 3).
    AnswerTooLarge,
}

/// A live key's value and its revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRecord {
    pub value: Value,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Number of writes since creation (1 on create).
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Only in a kept idempotency answer (command set 6 on): the value was not kept (`value`
    /// is null), as the answer was over [`ANSWER_KEPT_WHOLE_BYTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub value_omitted: bool,
}

/// An idempotency answer up to this size is kept whole; a bigger one (previous values,
/// transaction reads) is kept without its values, so that retries of large writes do not
/// store every value again (command set 6 on).
pub const ANSWER_KEPT_WHOLE_BYTES: u64 = 4096;

impl Response {
    /// The answer as the idempotency table keeps it: whole up to [`ANSWER_KEPT_WHOLE_BYTES`],
    /// else without the values of previous and read keys (their revisions stay).
    pub fn kept(&self) -> Response {
        if crate::store::codec::json_bytes(self) <= ANSWER_KEPT_WHOLE_BYTES {
            return self.clone();
        }
        let omit = |kv: &Option<KeyRecord>| {
            kv.as_ref().map(|k| KeyRecord {
                value: serde_json::Value::Null,
                value_omitted: true,
                ..k.clone()
            })
        };
        match self {
            Response::Put { revision, prev } => Response::Put {
                revision: *revision,
                prev: omit(prev),
            },
            Response::Delete { revision, prev } => Response::Delete {
                revision: *revision,
                prev: omit(prev),
            },
            Response::Txn {
                succeeded,
                revision,
                results,
            } => Response::Txn {
                succeeded: *succeeded,
                revision: *revision,
                results: results
                    .iter()
                    .map(|r| match r {
                        TxnOpResultRecord::Put {
                            key,
                            revision,
                            prev,
                        } => TxnOpResultRecord::Put {
                            key: key.clone(),
                            revision: *revision,
                            prev: omit(prev),
                        },
                        TxnOpResultRecord::Get { key, kv } => TxnOpResultRecord::Get {
                            key: key.clone(),
                            kv: omit(kv),
                        },
                        TxnOpResultRecord::Delete { key, prev } => TxnOpResultRecord::Delete {
                            key: key.clone(),
                            prev: omit(prev),
                        },
                        TxnOpResultRecord::DeletePrefix { deleted } => {
                            TxnOpResultRecord::DeletePrefix { deleted: *deleted }
                        }
                    })
                    .collect(),
            },
            other => other.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    Put,
    Delete,
}

/// One change in the revision history, kept for watches until compacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventRecord {
    pub revision: u64,
    pub key: String,
    pub kind: EventKind,
    /// The key after the change (absent for deletes).
    pub kv: Option<KeyRecord>,
}

/// A lease: keys attached to it vanish when it expires. Expiry is decided by the leader
/// and replicated, so `expires_at_ms` is only ever compared with replicated clocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRecord {
    pub id: u64,
    pub ttl_ms: u64,
    pub expires_at_ms: u64,
    pub keys: Vec<String>,
    /// The credential that granted it (command set 7): only it or an admin may revoke it,
    /// keep it alive, or release a lock and resign an election in its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The answer to an applied command carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdempotencyRecord {
    pub response: Response,
    pub applied_at_ms: u64,
}

/// The state machine's own bookkeeping, written atomically with every applied batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppliedStateRecord {
    pub last_applied: Option<LogIdRecord>,
    pub membership: Option<StoredMembershipRecord>,
    /// The cluster-wide revision: bumped once by every change.
    pub revision: u64,
    /// History below this revision has been compacted away.
    pub compacted_revision: u64,
    /// The command set the cluster enabled (absent: the base set). Written only once a newer
    /// set is enabled, so older binaries read the state as long as they can apply the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_version: Option<u32>,
    /// Members fenced by an alarm (command set 4; absent while there is none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<AlarmRecord>,
}

/// Describes a snapshot file: what it covers, for `inspect` and for installing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotMetaRecord {
    pub last_log_id: Option<LogIdRecord>,
    pub membership: StoredMembershipRecord,
    pub file: String,
    pub size: u64,
}
