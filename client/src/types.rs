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
    pub code: String,
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
    /// How long to wait, in ms (default 30000, at most 300000); then `campaign_timeout`.
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
