//! Messages between nodes: our own versioned types, converted to and from the Raft library's.
//!
//! Every message travels in a [`PeerMessage`] naming the protocol version, the cluster UUID
//! and the sender; a node refuses messages from another cluster or a newer protocol.

use serde::Deserialize;
use serde::Serialize;

use crate::store::types::LogId;
use crate::store::types::TypeConfig;
use crate::store::types::entry_from_record;
use crate::store::types::entry_to_record;
use crate::store::types::log_id_from_record;
use crate::store::types::log_id_to_record;
use crate::store::types::vote_from_record;
use crate::store::types::vote_to_record;
use concordance_client::ErrorDetail;

use crate::store::records::Command;
use crate::store::records::LogEntryRecord;
use crate::store::records::LogIdRecord;
use crate::store::records::Response;
use crate::store::records::StoredMembershipRecord;
use crate::store::records::VoteRecord;
use crate::store::state_hash::StateHash;

/// The peer protocol this binary speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The header of a stream hello (the upgrade request and its `101` answer) that names what the
/// sender's binary serves: [`Capabilities`].
pub const CAPABILITIES_HEADER: &str = "concordance-capabilities";

/// What a binary serves besides its streams, told in each stream hello: the side that opens a
/// stream sends its own with the upgrade request, the other side answers with its own in the
/// `101`. Tokens this binary does not know are ignored. A binary of the previous version sends
/// no header, and serves everything of [`Capabilities::PREVIOUS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Takes forwarded writes as requests (`POST /api/v1/raft/write-batch`): a follower whose
    /// forward stream cannot carry a batch may send it that way (token `write-batch`).
    pub write_batch: bool,
    /// Takes single appends as requests (`POST /api/v1/raft/append`): a leader whose append
    /// stream to it cannot be opened may replicate that way (token `append`).
    pub append: bool,
}

impl Capabilities {
    /// This binary's.
    pub const THIS: Capabilities = Capabilities {
        write_batch: true,
        append: true,
    };
    /// Those of a binary that sends no header (the previous version, with both streams).
    pub const PREVIOUS: Capabilities = Capabilities {
        write_batch: true,
        append: true,
    };

    pub fn header_value(self) -> String {
        let tokens = [("write-batch", self.write_batch), ("append", self.append)];
        let on: Vec<&str> = tokens.iter().filter(|t| t.1).map(|t| t.0).collect();
        on.join(",")
    }

    /// A peer's capabilities from its hello's header, if it sent one.
    pub fn from_header(value: Option<&str>) -> Capabilities {
        let Some(value) = value else {
            return Capabilities::PREVIOUS;
        };
        let tokens: Vec<&str> = value.split(',').map(str::trim).collect();
        Capabilities {
            write_batch: tokens.contains(&"write-batch"),
            append: tokens.contains(&"append"),
        }
    }
}

/// Largest peer message accepted (Raft append batches), as a request body or a stream frame.
pub const PEER_BODY_BYTES: usize = 512 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMessage<T> {
    pub protocol: u32,
    /// The sender's cluster UUID.
    pub cluster: String,
    /// The sender's Raft id.
    pub from: u64,
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppendRequest {
    pub vote: VoteRecord,
    pub prev_log_id: Option<LogIdRecord>,
    pub entries: Vec<LogEntryRecord>,
    pub leader_commit: Option<LogIdRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum AppendResponse {
    Success,
    PartialSuccess { matching: Option<LogIdRecord> },
    Conflict,
    HigherVote { vote: VoteRecord },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoteRequest {
    pub vote: VoteRecord,
    pub last_log_id: Option<LogIdRecord>,
    #[serde(default)]
    pub leadership_transfer: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoteResponse {
    pub vote: VoteRecord,
    pub granted: bool,
    pub last_log_id: Option<LogIdRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferLeaderRequest {
    pub from_leader: VoteRecord,
    pub to: u64,
    pub last_log_id: Option<LogIdRecord>,
}

/// A follower's answer to one request on an append stream (`raft/stream.rs`); answers come
/// in the order of the requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum StreamAppendReply {
    /// Stored and fsynced up to `matching`.
    Accepted { matching: Option<LogIdRecord> },
    /// The follower's log differs from the leader's at `at`; the stream ends.
    Conflict { at: LogIdRecord },
    /// The follower has seen a newer leader; the stream ends.
    HigherVote { vote: VoteRecord },
    /// The follower cannot go on (its Raft stopped, or a request was unreadable); the stream
    /// ends.
    Failed { message: String },
}

/// Sent in a header beside a snapshot file's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotHeader {
    pub vote: VoteRecord,
    pub last_log_id: Option<LogIdRecord>,
    pub membership: StoredMembershipRecord,
}

/// The most a snapshot upload's JSON header (vote, last log id, membership) may claim.
pub const MAX_SNAPSHOT_HEADER: usize = 1 << 20;

/// The start of a snapshot upload, `[header length u32 LE][header JSON]`; the snapshot file's
/// bytes follow it.
pub fn snapshot_upload_head(header: &PeerMessage<SnapshotHeader>) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("snapshot headers serialize");
    let mut head = (json.len() as u32).to_le_bytes().to_vec();
    head.extend_from_slice(&json);
    head
}

/// The header of a snapshot upload once `head`, its first bytes as received, holds all of it:
/// the header and how many bytes of `head` it took (the file's bytes start there). `None`
/// while more bytes are needed.
pub fn snapshot_upload_header(
    head: &[u8],
) -> Result<Option<(PeerMessage<SnapshotHeader>, usize)>, String> {
    let Some(len) = head.get(..4) else {
        return Ok(None);
    };
    let n = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    // Refused before it is buffered: a claimed length would otherwise keep the whole stream in
    // memory, waiting for a header that never ends.
    if n > MAX_SNAPSHOT_HEADER {
        return Err(format!(
            "the snapshot header claims {n} bytes; the limit is {MAX_SNAPSHOT_HEADER}"
        ));
    }
    let Some(json) = head.get(4..4 + n) else {
        return Ok(None);
    };
    let header = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok(Some((header, 4 + n)))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotReply {
    pub vote: VoteRecord,
}

/// A write forwarded by a follower to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardedWrite {
    pub command: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardedWriteReply {
    pub response: Response,
}

/// Writes forwarded together by a follower to the leader; the leader answers each in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardedWrites {
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardedWritesReply {
    /// One per command, in the order sent.
    pub results: Vec<ForwardedResult>,
}

/// One forwarded write's outcome: its applied answer, or the error the leader gave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase", deny_unknown_fields)]
pub enum ForwardedResult {
    Applied { response: Response },
    Failed { status: u16, error: ErrorDetail },
}

/// A lease question only the leader can answer (command set 5 on): it alone renews leases
/// and knows how long each has left.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum LeaseRequest {
    KeepAlive { id: u64 },
    TimeLeft { ids: Vec<u64> },
}

/// The leader's answer to a [`LeaseRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum LeaseReply {
    #[serde(rename_all = "camelCase")]
    KeptAlive { ttl_ms: u64 },
    /// Per id asked, in order: the milliseconds left, `None` for a lease it does not know.
    #[serde(rename_all = "camelCase")]
    TimeLeft { remaining_ms: Vec<Option<u64>> },
}

/// The leader's answer to a follower's read-index request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadIndexReply {
    pub read_log_id: LogIdRecord,
}

pub type RaftAppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type RaftAppendResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type RaftVoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type RaftVoteResponse = openraft::raft::VoteResponse<TypeConfig>;

fn opt(l: &Option<LogId>) -> Option<LogIdRecord> {
    l.as_ref().map(log_id_to_record)
}

fn unopt(l: &Option<LogIdRecord>) -> Option<LogId> {
    l.as_ref().map(log_id_from_record)
}

impl AppendRequest {
    pub fn from_raft(r: &RaftAppendRequest) -> Self {
        Self {
            vote: vote_to_record(&r.vote),
            prev_log_id: opt(&r.prev_log_id),
            entries: r.entries.iter().map(entry_to_record).collect(),
            leader_commit: opt(&r.leader_commit),
        }
    }

    pub fn into_raft(self) -> std::io::Result<RaftAppendRequest> {
        Ok(RaftAppendRequest {
            vote: vote_from_record(&self.vote),
            prev_log_id: unopt(&self.prev_log_id),
            entries: self
                .entries
                .into_iter()
                .map(entry_from_record)
                .collect::<std::io::Result<_>>()?,
            leader_commit: unopt(&self.leader_commit),
        })
    }
}

impl AppendResponse {
    pub fn from_raft(r: &RaftAppendResponse) -> Self {
        match r {
            RaftAppendResponse::Success => Self::Success,
            RaftAppendResponse::PartialSuccess(m) => Self::PartialSuccess { matching: opt(m) },
            RaftAppendResponse::Conflict => Self::Conflict,
            RaftAppendResponse::HigherVote(v) => Self::HigherVote {
                vote: vote_to_record(v),
            },
        }
    }

    pub fn into_raft(self) -> RaftAppendResponse {
        match self {
            Self::Success => RaftAppendResponse::Success,
            Self::PartialSuccess { matching } => {
                RaftAppendResponse::PartialSuccess(unopt(&matching))
            }
            Self::Conflict => RaftAppendResponse::Conflict,
            Self::HigherVote { vote } => RaftAppendResponse::HigherVote(vote_from_record(&vote)),
        }
    }
}

impl StreamAppendReply {
    pub fn from_raft(r: &openraft::raft::StreamAppendResult<TypeConfig>) -> Self {
        match r {
            Ok(matching) => Self::Accepted {
                matching: opt(matching),
            },
            Err(openraft::raft::StreamAppendError::Conflict(at)) => Self::Conflict {
                at: log_id_to_record(at),
            },
            Err(openraft::raft::StreamAppendError::HigherVote(v)) => Self::HigherVote {
                vote: vote_to_record(v),
            },
        }
    }

    /// The Raft result, or the follower's reason for failing.
    pub fn into_raft(self) -> Result<openraft::raft::StreamAppendResult<TypeConfig>, String> {
        match self {
            Self::Accepted { matching } => Ok(Ok(unopt(&matching))),
            Self::Conflict { at } => Ok(Err(openraft::raft::StreamAppendError::Conflict(
                log_id_from_record(&at),
            ))),
            Self::HigherVote { vote } => Ok(Err(openraft::raft::StreamAppendError::HigherVote(
                vote_from_record(&vote),
            ))),
            Self::Failed { message } => Err(message),
        }
    }
}

impl VoteRequest {
    pub fn from_raft(r: &RaftVoteRequest) -> Self {
        Self {
            vote: vote_to_record(&r.vote),
            last_log_id: opt(&r.last_log_id),
            leadership_transfer: r.leadership_transfer,
        }
    }

    pub fn into_raft(self) -> RaftVoteRequest {
        let mut r = RaftVoteRequest::new(vote_from_record(&self.vote), unopt(&self.last_log_id));
        r.leadership_transfer = self.leadership_transfer;
        r
    }
}

impl VoteResponse {
    pub fn from_raft(r: &RaftVoteResponse) -> Self {
        Self {
            vote: vote_to_record(&r.vote),
            granted: r.vote_granted,
            last_log_id: opt(&r.last_log_id),
        }
    }

    pub fn into_raft(self) -> RaftVoteResponse {
        RaftVoteResponse::new(
            vote_from_record(&self.vote),
            unopt(&self.last_log_id),
            self.granted,
        )
    }
}

impl TransferLeaderRequest {
    pub fn from_raft(r: &openraft::raft::TransferLeaderRequest<TypeConfig>) -> Self {
        Self {
            from_leader: vote_to_record(r.from_leader()),
            to: *r.to_node_id(),
            last_log_id: r.last_log_id().map(log_id_to_record),
        }
    }

    pub fn into_raft(self) -> openraft::raft::TransferLeaderRequest<TypeConfig> {
        openraft::raft::TransferLeaderRequest::new(
            vote_from_record(&self.from_leader),
            self.to,
            unopt(&self.last_log_id),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Capabilities;

    #[test]
    fn capabilities_travel_as_tokens_and_a_silent_peer_is_the_previous_version() {
        assert_eq!(
            Capabilities::from_header(Some(&Capabilities::THIS.header_value())),
            Capabilities::THIS
        );
        assert_eq!(Capabilities::from_header(None), Capabilities::PREVIOUS);
        assert_eq!(
            Capabilities::from_header(Some("append, something-newer")),
            Capabilities {
                write_batch: false,
                append: true,
            }
        );
        assert_eq!(
            Capabilities::from_header(Some("")),
            Capabilities {
                write_batch: false,
                append: false,
            }
        );
    }
}

/// The leader asks a member for its state hash at a `CheckState` entry's index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateHashRequest {
    pub index: u64,
}

/// A member's state hash at the index asked, as it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase", deny_unknown_fields)]
pub enum StateHashReply {
    /// Computed.
    Done { hash: StateHash },
    /// Being computed, or the entry not applied here yet: ask again.
    Pending,
    /// The entry was applied too long ago: the hash is no longer kept.
    Gone,
    /// The state could not be read.
    Failed { error: String },
}

/// What a state check found: every voter's hash at one index, and the members whose state
/// differs from a majority's (each then fenced by the `corrupt` alarm).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateCheckReply {
    pub index: u64,
    /// `match`, `mismatch`, `undecided` (no hash held by a majority) or `incomplete` (a
    /// voter did not answer; those that did agree).
    pub outcome: String,
    /// The members found to differ, by name.
    pub odd: Vec<String>,
    /// Each voter's hash (or why there is none), by name.
    pub hashes: Vec<(String, String)>,
}
