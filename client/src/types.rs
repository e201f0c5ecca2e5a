//! Request and response bodies of the HTTP API (`/api/v1`), shared by the node, the operator,
//! the tests and users. Field names are camelCase on the wire.

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyValue {
    pub key: String,
    pub value: Value,
    /// Revision of the change that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last change to the key.
    pub mod_revision: u64,
    /// Writes since creation: 1 after the first.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Only in the answer to a retried write (same `Idempotency-Key`) whose first answer was
    /// over 4 KiB: that answer was kept without its values, so `value` is null here. The
    /// revisions are exact.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub value_omitted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutRequest {
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PutResponse {
    /// The revision this write created.
    pub revision: u64,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GetResponse {
    pub kv: KeyValue,
    /// The store's revision when the read was served.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    /// The revision of the delete, or the current revision if there was nothing to delete.
    pub revision: u64,
    pub deleted: u64,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    pub kvs: Vec<KeyValue>,
    pub revision: u64,
    /// More keys match: ask again with `after` set to `next`.
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// How a read is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Consistency {
    /// Confirmed with a quorum (read index): sees every write acknowledged before it began.
    #[default]
    Linearizable,
    /// The local replica as it is: may be stale, works without quorum.
    Serializable,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Serializable => "serializable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthResponse {
    pub status: String,
    pub node_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadyResponse {
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub node_id: String,
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
    pub voter: bool,
    /// Entries behind the leader's last log entry; known only on the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub node_id: String,
    pub cluster_id: Option<String>,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub revision: u64,
    /// Log index of the membership in force; pass it as `expectedVersion` to change membership.
    pub membership_version: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub version: String,
    /// While this member is fenced by an alarm (its state differs from the cluster's): why.
    /// It is not ready and serves nothing; replace it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
    /// This member's wall clock as it answered, in Unix ms (0 from a build before it). Leases
    /// and timeouts never use it; compare members' to see their clocks' skew.
    #[serde(default)]
    pub wall_clock_ms: u64,
    /// This member's disk space as last measured (absent from a build before it, or before
    /// the first measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageUse>,
    /// The cluster's alarms as this member has applied them (absent while there is none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<Alarm>,
}

/// One member's disk space, measured every 250 ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageUse {
    /// Bytes the data dir takes on disk: database, Raft log, snapshots.
    pub used_bytes: u64,
    /// Bytes still free on its volume.
    pub free_bytes: u64,
    /// `--quota-bytes`: the data dir may take this much.
    pub quota_bytes: u64,
    /// `--reserve-bytes`: the volume keeps this much free.
    pub reserve_bytes: u64,
    /// Over the quota or under the reserve: the member raises the `no_space` alarm.
    pub over: bool,
}

/// `POST /api/v1/cluster/alarms/disarm`: ends `no_space` alarms once their members are clear
/// of their bounds (a tenth under the quota, half the reserve over it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisarmRequest {
    /// The alarm's kind: only `no_space` is disarmed (a `corrupt` member is replaced).
    pub kind: AlarmKind,
    /// The member whose alarm ends (default: every member with this alarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// `POST /api/v1/cluster/compact`: forgets the change history below a revision on every
/// member, and gives its space back to the volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompactRequest {
    /// History below this revision is forgotten (default: the current revision, keeping
    /// none). Watches from before it are answered `compacted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompactResponse {
    /// History below this revision is gone.
    pub compacted_revision: u64,
}

/// `GET /api/v1/cluster/alarms`: the alarms raised in the cluster. An alarm stays until its
/// member is removed from the membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlarmsResponse {
    pub alarms: Vec<Alarm>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alarm {
    /// The member's name (its Raft id in hex if it is no longer known).
    pub member: String,
    pub kind: AlarmKind,
    pub detail: String,
}

/// What an alarm says about its member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// Its state hash differed from a majority's at the same log index: the member is fenced.
    Corrupt,
    /// Its data dir went over its quota or its volume under its reserve: writes that grow the
    /// state are refused until it is disarmed.
    NoSpace,
    /// A kind this version does not know (raised by a newer node): read the detail.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// Declares [`ErrorCode`] from one list: each variant with its wire string, so the enum, its
/// strings and [`ErrorCode::ALL`] cannot drift apart (a test checks serde agrees with
/// [`ErrorCode::as_str`]).
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $code:literal,)+) => {
        /// Every error code the node answers with, as `error.code` (stable, snake_case). A code
        /// this version does not know (a newer node's) reads as [`ErrorCode::Unknown`], so an
        /// older client or peer still reads the rest of the error.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
            /// A code this version does not know (sent by a newer version): read the message.
            #[serde(other)]
            #[schemars(skip)]
            Unknown,
        }

        impl ErrorCode {
            /// Every code a node sends (all but [`ErrorCode::Unknown`]).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code as it is on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                    ErrorCode::Unknown => "unknown",
                }
            }
        }
    };
}

error_codes! {
    // Requests the node cannot read.
    /// The body is empty, not a JSON object, or not the expected fields.
    InvalidBody = "invalid_body",
    /// The body is over the size limit or could not be read.
    BodyTooLarge = "body_too_large",
    /// A query parameter is missing, unknown or malformed.
    InvalidQuery = "invalid_query",
    /// No route for this method and path.
    NotFound = "not_found",
    /// The path is served, but not with this method.
    MethodNotAllowed = "method_not_allowed",
    // Keys, values and options.
    /// This credential has as many watch streams open as a member allows
    /// (`--max-watches-per-credential`): close one first.
    TooManyWatches = "too_many_watches",
    /// This credential is over its request rate on this member (`requestsPerSecond` in the
    /// credentials file): retry after the answer's `Retry-After` seconds.
    RateLimited = "rate_limited",
    /// A key or prefix is empty, too long or has control characters.
    InvalidKey = "invalid_key",
    /// A value is over the size limit.
    ValueTooLarge = "value_too_large",
    /// An `Idempotency-Key` header that is not 1-128 ASCII characters.
    InvalidIdempotencyKey = "invalid_idempotency_key",
    /// An `Idempotency-Key` already answered a different kind of request.
    IdempotencyKeyReused = "idempotency_key_reused",
    /// A list limit outside 1-10000.
    InvalidLimit = "invalid_limit",
    /// The key does not exist.
    KeyNotFound = "key_not_found",
    /// A watch's start revision or `Last-Event-ID` is not a revision.
    InvalidRevision = "invalid_revision",
    /// A watch asked for history no longer kept; `oldestRevision` says where it may start.
    Compacted = "compacted",
    // Transactions.
    /// A compare's value does not fit its target or operator.
    InvalidCompare = "invalid_compare",
    /// More compares or operations than a transaction may have, or an answer (gets and previous
    /// values) over the byte bound.
    TxnTooLarge = "txn_too_large",
    /// A transaction branch writes a key more than once.
    DuplicateKey = "duplicate_key",
    // Leases, locks and elections.
    /// Not a lease id, or lease 0.
    InvalidLease = "invalid_lease",
    /// A TTL outside the allowed range.
    InvalidTtl = "invalid_ttl",
    /// The lease does not exist or has expired.
    LeaseNotFound = "lease_not_found",
    /// A lease with this id already exists.
    LeaseExists = "lease_exists",
    /// A lock or election name that is empty, too long or has control characters.
    InvalidName = "invalid_name",
    /// A wait longer than allowed.
    InvalidTimeout = "invalid_timeout",
    /// The lock is held (`wait: false`).
    LockHeld = "lock_held",
    /// The lock was not obtained in time.
    LockTimeout = "lock_timeout",
    /// The candidate did not come to lead in time.
    ElectionTimeout = "election_timeout",
    /// This lease's place in the queue was deleted while it waited.
    LockLost = "lock_lost",
    // Keys and roles.
    /// No key, or not a valid one.
    Unauthorized = "unauthorized",
    /// The key does not grant this (the agent key on an admin route or a reserved key).
    Forbidden = "forbidden",
    // The cluster.
    /// This node is not the leader; `leader` and `leaderAddress` name the one that is.
    NotLeader = "not_leader",
    /// No quorum (or no leader) right now: retry.
    NoQuorum = "no_quorum",
    /// The leader changed while the request was in flight: a write may or may not have applied.
    LeaderChanged = "leader_changed",
    /// The node is stopping: retry on another member.
    ShuttingDown = "shutting_down",
    /// Too many writes are waiting: nothing was proposed. Retry after the answer's
    /// `Retry-After` seconds (the client does).
    Overloaded = "overloaded",
    /// The operation needs a command set not every member supports yet.
    FeatureUnavailable = "feature_unavailable",
    /// This binary cannot apply the command set the cluster (or this data dir) has enabled:
    /// run a build at least as new as the cluster's.
    CommandSetUnsupported = "command_set_unsupported",
    /// A member is out of disk space (the `no_space` alarm): writes that grow the state are
    /// refused until an admin makes room and disarms it. Reads, deletes and revokes work.
    NoSpace = "no_space",
    /// The write would take the keys under a prefix past their storage quota (the
    /// credentials file's `quotas`): nothing was written. Not retried: delete keys under the
    /// prefix, write smaller values, or have the quota raised.
    QuotaExceeded = "quota_exceeded",
    /// The alarm is still warranted (its member is not yet clear of its bounds), or is not one
    /// that is disarmed.
    AlarmStillRaised = "alarm_still_raised",
    /// This member is fenced: its state differs from the cluster's (the `corrupt` alarm). It
    /// serves nothing until it is replaced: use another member (the client does).
    MemberFenced = "member_fenced",
    /// Raft refused or failed the request.
    RaftError = "raft_error",
    /// Raft has stopped on this node.
    RaftStopped = "raft_stopped",
    /// A stored record is unreadable, or storage failed.
    StorageError = "storage_error",
    /// An unexpected failure on the node.
    Internal = "internal",
    // Membership.
    /// The membership is not at the expected version.
    MembershipChanged = "membership_changed",
    /// Raft refused the membership change.
    MembershipError = "membership_error",
    /// Not a valid node name.
    InvalidNodeId = "invalid_node_id",
    /// The name is still bound to another member.
    NameInUse = "name_in_use",
    /// The data (or a message) belongs to another cluster.
    ClusterMismatch = "cluster_mismatch",
    /// No member has this name.
    MemberNotFound = "member_not_found",
    /// The last voter cannot be removed.
    LastVoter = "last_voter",
    /// The removal would leave the voters without a reachable majority.
    WouldLoseQuorum = "would_lose_quorum",
    /// The member named to lead is not a voter.
    NotAVoter = "not_a_voter",
    /// There is no other voter to hand leadership to.
    NoOtherVoter = "no_other_voter",
    /// The new leader did not take over in time.
    TransferTimeout = "transfer_timeout",
    // The peer protocol (node to node).
    /// A peer message of a newer protocol than this node speaks.
    ProtocolUnsupported = "protocol_unsupported",
    /// A stream route asked for without its `Upgrade` header.
    UpgradeRequired = "upgrade_required",
    /// A log entry a peer sent cannot be read.
    InvalidEntry = "invalid_entry",
    /// More forwarded writes in one batch than allowed.
    BatchTooLarge = "batch_too_large",
    /// A snapshot's transfer was cut off.
    SnapshotInterrupted = "snapshot_interrupted",
    /// A received snapshot is not valid.
    InvalidSnapshot = "invalid_snapshot",
    // Starting.
    /// The node refused to start: a flag, or the data dir, does not fit (only in a node's
    /// termination message, never in an HTTP answer).
    InvalidConfig = "invalid_config",
}

impl ErrorCode {
    /// The cluster cannot answer this now (no leader, no quorum, a leadership change, a member
    /// stopping, a feature not yet on every member): the same request may succeed later or on
    /// another member. The node answers these with 503 and the client retries them; this is
    /// the one list of them.
    pub fn is_unavailable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::NoQuorum
                | ErrorCode::LeaderChanged
                | ErrorCode::ShuttingDown
                | ErrorCode::Overloaded
                | ErrorCode::FeatureUnavailable
                | ErrorCode::MemberFenced
                | ErrorCode::RaftError
                | ErrorCode::RaftStopped
                | ErrorCode::TransferTimeout
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node that refused to start leaves at its termination-message path
/// (`/dev/termination-log` in a Kubernetes container): why, as a code and a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TerminationMessage {
    pub code: ErrorCode,
    pub message: String,
}

/// Every error answer: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Stable, machine-readable: e.g. `key_not_found`, `unauthorized`, `no_quorum`.
    pub code: ErrorCode,
    pub message: String,
    /// The leader's name and address, for `not_leader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_address: Option<String>,
    /// For `compacted`: the oldest revision a watch may still start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_revision: Option<u64>,
}

/// What a node's binary supports and what its cluster has enabled (`GET /cluster/version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub node_id: String,
    /// The binary's release version.
    pub version: String,
    /// The newest command set this binary can apply.
    pub command_version: u32,
    /// The command set the cluster has enabled (replicated): commands newer than this are
    /// refused with `feature_unavailable` until every member supports them.
    pub cluster_command_version: u32,
}

// ---------------------------------------------------------------------------------------------
// Transactions: `POST /api/v1/txn`
// ---------------------------------------------------------------------------------------------

/// An atomic transaction: if every compare holds, `success` runs, else `failure`; the whole
/// transaction is one revision (none when it changes nothing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TxnRequest {
    #[serde(default)]
    pub compare: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<TxnOp>,
    #[serde(default)]
    pub failure: Vec<TxnOp>,
}

/// One condition on a key's current state. A missing key has `createRevision`, `modRevision`,
/// `version` and `lease` 0, `exists` false, and no value (every `value` compare on it is false).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    #[serde(default)]
    pub op: CompareOp,
    /// A JSON value for `value`, a number for revisions, version and lease, a bool for `exists`.
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CompareTarget {
    /// The JSON value: equal/notEqual on any JSON; greater/less between two numbers or two
    /// strings (false for other types).
    Value,
    CreateRevision,
    ModRevision,
    Version,
    /// The lease id the key is attached to (0: none).
    Lease,
    /// Whether the key exists: equal/notEqual with `true` or `false`.
    Exists,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CompareOp {
    #[default]
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One operation of a transaction branch. A branch may write a key at most once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum TxnOp {
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
    #[serde(rename_all = "camelCase")]
    DeletePrefix {
        prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TxnResponse {
    /// Whether the compares held (and so `success` ran).
    pub succeeded: bool,
    /// The transaction's revision if it wrote anything, else the store's revision.
    pub revision: u64,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<TxnOpResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TxnOpResult {
    #[serde(rename_all = "camelCase")]
    Put {
        revision: u64,
        prev_kv: Option<KeyValue>,
    },
    /// The key as the transaction saw it at that point (after its earlier operations).
    Get {
        key: String,
        kv: Option<KeyValue>,
    },
    #[serde(rename_all = "camelCase")]
    Delete {
        deleted: u64,
        prev_kv: Option<KeyValue>,
    },
    DeletePrefix {
        deleted: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// Leases: `/api/v1/lease`
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseGrantRequest {
    /// Time to live in milliseconds; each keep-alive restarts it.
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseGrantResponse {
    /// The lease id (below 2^53, so JSON numbers carry it exactly).
    pub id: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseKeepAliveResponse {
    pub id: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRevokeResponse {
    pub id: u64,
    /// The revision that deleted the lease's keys (the store's revision if it had none).
    pub revision: u64,
    pub deleted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_ms: u64,
    /// Time left by the serving node's clock (approximate: expiry is the leader's decision,
    /// and a new leader grants every lease a full TTL after it takes over).
    pub remaining_ms: u64,
    /// Keys attached to the lease, in order.
    pub keys: Vec<String>,
    /// The credential that granted it: only it or an admin may revoke it, keep it alive, or
    /// release a lock and resign an election held with it. None for a lease granted before
    /// every member knew owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseListResponse {
    pub leases: Vec<LeaseInfo>,
    pub revision: u64,
}

// ---------------------------------------------------------------------------------------------
// Locks and elections: `/api/v1/lock/*`, `/api/v1/election/*`
// ---------------------------------------------------------------------------------------------

/// Acquire a named lock for a lease. Waiters queue in arrival order; the lock passes to the
/// next one when the holder releases it or its lease ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockRequest {
    pub name: String,
    pub lease: u64,
    /// Wait for the lock (default) or fail at once with `lock_held`.
    #[serde(default = "default_true")]
    pub wait: bool,
    /// How long to wait, in ms (default 30000, at most 300000); then `lock_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockResponse {
    pub name: String,
    /// The key that holds the lock (deleted on release or when the lease ends).
    pub key: String,
    /// The revision that queued this holder: strictly increasing across successive holders,
    /// so a resource can refuse writes carrying an older token.
    pub fencing_token: u64,
    pub lease: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnlockRequest {
    pub name: String,
    pub lease: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnlockResponse {
    /// Whether this lease held (or waited for) the lock.
    pub released: bool,
    pub revision: u64,
}

/// Campaign to lead a named election with a lease; blocks until this candidate leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    pub lease: u64,
    /// What observers see while this candidate leads (e.g. its address).
    pub value: Value,
    /// How long to wait, in ms (default 30000, at most 300000); then `election_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElectionLeader {
    pub key: String,
    pub value: Value,
    pub lease: u64,
    /// The revision that made this candidate: strictly increasing across leaders (a term).
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CampaignResponse {
    pub name: String,
    pub leader: ElectionLeader,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElectionLeaderResponse {
    pub name: String,
    /// The current leader, if any candidate is campaigning.
    pub leader: Option<ElectionLeader>,
    /// Watch this prefix (`GET /watch?prefix=...`) to observe leader changes.
    pub watch_prefix: String,
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResignRequest {
    pub name: String,
    pub lease: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResignResponse {
    /// Whether this lease was a candidate (leading or waiting).
    pub resigned: bool,
    pub revision: u64,
}

// ---------------------------------------------------------------------------------------------
// Watches: `GET /api/v1/watch` (Server-Sent Events)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventType {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub key: String,
    /// The key after a put (absent for a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KeyValue>,
}

/// The `data` of an SSE `event: change`, whose `id` is `revision`: every matching change
/// made at that revision (a transaction or lease expiry may change several keys at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchChange {
    pub revision: u64,
    pub events: Vec<WatchEvent>,
}

/// The `data` of an SSE `event: progress` (id = `revision`): nothing matching happened up to
/// and including `revision`; resuming after it skips nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchProgress {
    pub revision: u64,
}

// ---------------------------------------------------------------------------------------------
// Membership (admin key): `POST /api/v1/cluster/join|remove|transfer-leader`. Each change may
// name the membership version it expects (`ClusterStatus::membership_version`) and fails with
// a 409 `membership_changed` if the membership moved meanwhile.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoveRequest {
    pub node_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferRequest {
    /// The voter to hand leadership to (default: the most caught-up one that is answering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembershipReply {
    pub cluster_id: String,
    pub membership_version: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferReply {
    pub leader: String,
    pub term: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_round_trips_as_its_string() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap();
            assert_eq!(wire, Value::from(code.as_str()), "{code:?}");
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
            assert!(seen.insert(code.as_str()), "{code:?} listed twice");
            assert_ne!(code, ErrorCode::Unknown);
        }
    }

    #[test]
    fn a_code_this_version_does_not_know_reads_as_unknown_with_the_rest_intact() {
        let body: ErrorBody = serde_json::from_value(serde_json::json!({
            "error": {"code": "some_future_code", "message": "why", "leader": "n2"}
        }))
        .unwrap();
        assert_eq!(body.error.code, ErrorCode::Unknown);
        assert_eq!(body.error.message, "why");
        assert_eq!(body.error.leader.as_deref(), Some("n2"));
    }

    #[test]
    fn a_termination_message_is_a_code_and_a_message() {
        let m = TerminationMessage {
            code: ErrorCode::NameInUse,
            message: "the name is taken".into(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"code":"name_in_use","message":"the name is taken"}"#
        );
        assert_eq!(
            serde_json::from_str::<TerminationMessage>(&text).unwrap(),
            m
        );
    }
}
