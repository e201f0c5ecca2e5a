//! Peer messages: the frames of the append and forward streams (a 4-byte big-endian length,
//! then JSON) read as the node reads them, in the pieces a connection happens to deliver; the
//! header at the start of a snapshot upload; and the JSON bodies of peer requests and their
//! answers.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::Context;
use std::task::Poll;

use bytes::Bytes;
use bytes::BytesMut;
use concordance_client::ErrorBody;
use concordance_client::ErrorCode;
use concordance_client::ErrorDetail;
use futures::StreamExt;
use proptest::collection::vec;
use proptest::prelude::*;
use tokio::io::AsyncRead;
use tokio::io::ReadBuf;
use tokio_util::codec::Encoder;
use tokio_util::codec::FramedRead;

use super::LengthField;
use super::Seed;
use super::config;
use super::inputs;
use super::measure;
use super::reach;
use super::records;
use super::within;
use crate::raft::upgrade::frame_codec;
use crate::raft::wire;
use crate::raft::wire::PeerMessage;
use crate::store::records::LogIdRecord;
use crate::store::records::Operation;
use crate::store::records::Response;
use crate::store::records::VoteRecord;

fn vote() -> VoteRecord {
    VoteRecord {
        term: 3,
        node: 1,
        committed: true,
    }
}

fn envelope<T>(body: T) -> PeerMessage<T> {
    PeerMessage {
        protocol: wire::PROTOCOL_VERSION,
        cluster: "6f1c2e0a-0000-4000-8000-000000000001".into(),
        from: 1,
        body,
    }
}

fn append_request() -> wire::AppendRequest {
    wire::AppendRequest {
        vote: vote(),
        prev_log_id: Some(records::log_id(9)),
        entries: records::entries(),
        leader_commit: Some(records::log_id(9)),
    }
}

fn forwarded_writes() -> wire::ForwardedWrites {
    wire::ForwardedWrites {
        commands: vec![
            records::command(Operation::Delete { key: "a".into() }),
            records::command(Operation::LeaseGrant {
                id: 7,
                ttl_ms: 5000,
                owner: Some("agent-a17".into()),
            }),
        ],
    }
}

fn forwarded_reply() -> wire::ForwardedWritesReply {
    wire::ForwardedWritesReply {
        results: vec![
            wire::ForwardedResult::Applied {
                response: Response::Put {
                    revision: 10,
                    prev: Some(records::key_record()),
                },
            },
            wire::ForwardedResult::Failed {
                status: 503,
                error: ErrorDetail {
                    code: ErrorCode::NotLeader,
                    message: "not the leader".into(),
                    leader: Some("n2".into()),
                    leader_address: Some("127.0.0.1:7002".into()),
                    oldest_revision: None,
                },
            },
        ],
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serializes")
}

/// A stream of frames as the node's framing writes them, with where their lengths are.
fn framed(name: &str, messages: Vec<Vec<u8>>) -> Seed {
    let mut codec = frame_codec();
    let mut out = BytesMut::new();
    let mut lengths = Vec::new();
    for message in messages {
        lengths.push(LengthField {
            at: out.len(),
            big_endian: true,
        });
        codec
            .encode(Bytes::from(message), &mut out)
            .expect("frame encodes");
    }
    Seed {
        name: name.into(),
        bytes: out.to_vec(),
        lengths,
    }
}

/// Each direction of both streams, a few frames each.
fn frame_seeds() -> Arc<Vec<Seed>> {
    static SEEDS: OnceLock<Arc<Vec<Seed>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let mut notice = append_request();
            notice.entries.clear();
            let replies = [
                wire::StreamAppendReply::Accepted {
                    matching: Some(records::log_id(14)),
                },
                wire::StreamAppendReply::Conflict {
                    at: records::log_id(9),
                },
                wire::StreamAppendReply::HigherVote { vote: vote() },
                wire::StreamAppendReply::Failed {
                    message: "stopping".into(),
                },
            ];
            Arc::new(vec![
                framed(
                    "append stream, leader to follower",
                    vec![
                        json(&append_request()),
                        json(&notice),
                        json(&append_request()),
                    ],
                ),
                framed(
                    "append stream, follower to leader",
                    replies.iter().map(json).collect(),
                ),
                framed(
                    "forward stream, follower to leader",
                    vec![json(&forwarded_writes()), json(&forwarded_writes())],
                ),
                framed(
                    "forward stream, leader to follower",
                    vec![json(&forwarded_reply()), json(&forwarded_reply())],
                ),
            ])
        })
        .clone()
}

/// Bytes as a connection delivers them: in pieces of the sizes given, in turn.
struct Pieces<'a> {
    bytes: &'a [u8],
    sizes: &'a [usize],
    turn: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()];
        let n = size.min(self.bytes.len()).min(buf.remaining());
        buf.put_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        self.turn += 1;
        Poll::Ready(Ok(()))
    }
}

/// Reads frames as both ends of both streams do, each frame decoded as every message a stream
/// carries (the follower's and the leader's decoders among them), until the stream ends or
/// fails; how many frames were read, and how many of them decoded as some message.
fn read_frames(bytes: &[u8], sizes: &[usize]) -> (usize, usize) {
    let mut frames = FramedRead::new(
        Pieces {
            bytes,
            sizes,
            turn: 0,
        },
        frame_codec(),
    );
    futures::executor::block_on(async {
        let (mut read, mut decoded) = (0, 0);
        while let Some(Ok(frame)) = frames.next().await {
            let reply = serde_json::from_slice::<wire::StreamAppendReply>(&frame)
                .map(|reply| reply.into_raft())
                .is_ok();
            let batch = crate::forward::stream::decode(&frame).is_ok();
            let answers = serde_json::from_slice::<wire::ForwardedWritesReply>(&frame).is_ok();
            let append = crate::raft::stream::decode_append(Ok(frame)).is_ok();
            read += 1;
            decoded += (reply || batch || answers || append) as usize;
        }
        (read, decoded)
    })
}

/// The target starts from valid streams: each is read whole, in pieces of any size.
#[test]
fn every_frame_seed_reads_whole() {
    for seed in frame_seeds().iter() {
        for sizes in [vec![1], vec![7, 4096], vec![1 << 20]] {
            let frames = seed.lengths.len();
            assert_eq!(
                read_frames(&seed.bytes, &sizes),
                (frames, frames),
                "seed {}",
                seed.name
            );
        }
    }
}

/// Most inputs give frames, and many of those frames still decode.
#[test]
fn inputs_reach_the_message_decoders() {
    let strategy = || (inputs(frame_seeds(), None), vec(1usize..4096, 1..6));
    let framed = reach(strategy(), 1000, |(case, sizes)| {
        read_frames(&case.bytes, sizes).0 > 0
    });
    let decoded = reach(strategy(), 1000, |(case, sizes)| {
        read_frames(&case.bytes, sizes).1 > 0
    });
    eprintln!("stream frames: of 1000 inputs, {framed} gave frames, {decoded} a decoded message");
    assert!(
        framed >= 300 && decoded >= 150,
        "{framed} framed, {decoded} decoded"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stream_frames_are_read_or_refused_cleanly(
        case in inputs(frame_seeds(), None),
        sizes in vec(1usize..4096, 1..6),
    ) {
        let (_, usage) = measure(|| read_frames(&case.bytes, &sizes));
        within(usage, case.bytes.len(), 0)?;
    }
}

/// Snapshot uploads as a leader starts them, followed by the first bytes of a snapshot file.
fn upload_seeds() -> Arc<Vec<Seed>> {
    static SEEDS: OnceLock<Arc<Vec<Seed>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let header = |last_log_id: Option<LogIdRecord>| {
                let mut bytes = wire::snapshot_upload_head(&envelope(wire::SnapshotHeader {
                    vote: vote(),
                    last_log_id,
                    membership: records::membership(),
                }));
                bytes.extend_from_slice(b"CONCSNAP\x01");
                Seed {
                    name: format!("snapshot upload covering {last_log_id:?}"),
                    bytes,
                    lengths: vec![LengthField {
                        at: 0,
                        big_endian: false,
                    }],
                }
            };
            Arc::new(vec![header(Some(records::log_id(14))), header(None)])
        })
        .clone()
}

/// How reading an upload's header ended.
#[derive(Debug, PartialEq)]
enum Upload {
    Header,
    Refused,
    /// The body ended first.
    Ended,
}

/// Receives an upload of `body` then `more` bytes (the rest of a snapshot file) in pieces of
/// `sizes`, as the peer route does until it has the header; how that ended, and the most bytes
/// it held waiting for the header.
fn receive(body: &[u8], more: usize, sizes: &[usize]) -> (Upload, usize) {
    static FILE: [u8; 64 << 10] = [0x5a; 64 << 10];
    let mut head = Vec::new();
    let mut held = 0;
    let (mut at, mut turn) = (0, 0);
    while at < body.len() + more {
        let size = sizes[turn % sizes.len()];
        turn += 1;
        let end = (at + size).min(body.len() + more);
        if at < body.len() {
            head.extend_from_slice(&body[at..end.min(body.len())]);
        }
        if end > body.len() {
            let from = at.max(body.len()) - body.len();
            let to = end - body.len();
            // The file's bytes after the body's: any bytes will do.
            head.extend_from_slice(&FILE[..to - from]);
        }
        at = end;
        held = held.max(head.len());
        match wire::snapshot_upload_header(&head) {
            Ok(Some(_)) => return (Upload::Header, held),
            Err(_) => return (Upload::Refused, held),
            Ok(None) => {}
        }
    }
    (Upload::Ended, held)
}

#[test]
fn every_upload_seed_gives_its_header() {
    for seed in upload_seeds().iter() {
        for sizes in [vec![1], vec![3, 5000]] {
            assert_eq!(receive(&seed.bytes, 0, &sizes).0, Upload::Header);
        }
    }
}

/// Some inputs still give a header, some are refused.
#[test]
fn upload_inputs_reach_the_header_decoder() {
    let outcome = |case: &super::Case, want: Upload| receive(&case.bytes, 0, &[1000]).0 == want;
    let headers = reach(inputs(upload_seeds(), None), 1000, |c| {
        outcome(c, Upload::Header)
    });
    let refused = reach(inputs(upload_seeds(), None), 1000, |c| {
        outcome(c, Upload::Refused)
    });
    eprintln!("snapshot uploads: of 1000 inputs, {headers} gave a header, {refused} were refused");
    assert!(
        headers >= 5 && refused >= 300,
        "{headers} headers, {refused} refused"
    );
}

proptest! {
    #![proptest_config(config())]

    /// However long the upload, the bytes held waiting for its header stay within the header's
    /// limit (plus the piece that brought them).
    #[test]
    fn snapshot_upload_headers_are_read_or_refused_within_their_limit(
        case in inputs(upload_seeds(), None),
        more in prop_oneof![Just(0usize), 0usize..(2 << 20)],
        sizes in vec(1usize..(64 << 10), 1..6),
    ) {
        let ((_, held), usage) = measure(|| receive(&case.bytes, more, &sizes));
        let piece = sizes.iter().max().copied().unwrap_or(0);
        prop_assert!(
            held <= 4 + wire::MAX_SNAPSHOT_HEADER + piece,
            "{held} bytes held waiting for the header"
        );
        within(usage, case.bytes.len() + more, 0)?;
    }
}

/// Every peer request body and every answer, as the node encodes them.
fn body_seeds() -> Arc<Vec<Seed>> {
    static SEEDS: OnceLock<Arc<Vec<Seed>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let vote_request = wire::VoteRequest {
                vote: vote(),
                last_log_id: Some(records::log_id(14)),
                leadership_transfer: true,
            };
            let bodies: Vec<(&str, Vec<u8>)> = vec![
                ("append", json(&envelope(append_request()))),
                ("vote", json(&envelope(vote_request))),
                (
                    "transfer leader",
                    json(&envelope(wire::TransferLeaderRequest {
                        from_leader: vote(),
                        to: 2,
                        last_log_id: None,
                    })),
                ),
                (
                    "forwarded write",
                    json(&envelope(wire::ForwardedWrite {
                        command: records::command(Operation::LeaseRevoke { id: 7 }),
                    })),
                ),
                ("forwarded writes", json(&envelope(forwarded_writes()))),
                ("read index", json(&envelope(()))),
                (
                    "append answer",
                    json(&wire::AppendResponse::PartialSuccess {
                        matching: Some(records::log_id(12)),
                    }),
                ),
                (
                    "append answer, higher vote",
                    json(&wire::AppendResponse::HigherVote { vote: vote() }),
                ),
                (
                    "vote answer",
                    json(&wire::VoteResponse {
                        vote: vote(),
                        granted: true,
                        last_log_id: Some(records::log_id(14)),
                    }),
                ),
                (
                    "transfer answer",
                    json(&Err::<(), String>("not now".into())),
                ),
                (
                    "forwarded write answer",
                    json(&wire::ForwardedWriteReply {
                        response: Response::LeasesExpired {
                            revision: 3,
                            ids: vec![1, 2],
                        },
                    }),
                ),
                ("forwarded writes answer", json(&forwarded_reply())),
                (
                    "read index answer",
                    json(&wire::ReadIndexReply {
                        read_log_id: records::log_id(14),
                    }),
                ),
                (
                    "lease request",
                    json(&envelope(wire::LeaseRequest::TimeLeft { ids: vec![1, 2] })),
                ),
                (
                    "lease answer",
                    json(&wire::LeaseReply::TimeLeft {
                        remaining_ms: vec![Some(900), None],
                    }),
                ),
                (
                    "snapshot answer",
                    json(&wire::SnapshotReply { vote: vote() }),
                ),
                (
                    "state hash request",
                    json(&envelope(wire::StateHashRequest { index: 14 })),
                ),
                (
                    "state hash answer",
                    json(&wire::StateHashReply::Done {
                        hash: crate::store::state_hash::StateHash {
                            index: 14,
                            revision: 9,
                            sha256: "ab".repeat(32),
                            records: 3,
                            took_ms: 1,
                        },
                    }),
                ),
                (
                    "state check answer",
                    json(&wire::StateCheckReply {
                        index: 14,
                        outcome: "mismatch".into(),
                        odd: vec!["n3".into()],
                        hashes: vec![("n1".into(), "ab".into()), ("n3".into(), "cd".into())],
                    }),
                ),
                (
                    "error answer",
                    json(&ErrorBody {
                        error: forwarded_reply_error(),
                    }),
                ),
            ];
            Arc::new(
                bodies
                    .into_iter()
                    .map(|(name, bytes)| Seed {
                        name: name.into(),
                        bytes,
                        lengths: Vec::new(),
                    })
                    .collect(),
            )
        })
        .clone()
}

fn forwarded_reply_error() -> ErrorDetail {
    match forwarded_reply().results.pop() {
        Some(wire::ForwardedResult::Failed { error, .. }) => error,
        _ => unreachable!("the second result failed"),
    }
}

/// Decodes `bytes` as every peer request body (as the peer routes take them: objects only) and
/// every answer (as the calling side takes them), converting what decodes as the node would;
/// how many it decoded as.
fn decode_bodies(bytes: &[u8]) -> usize {
    fn take<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
        serde_json::from_slice(bytes).ok()
    }
    let mut decoded = 0;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        if let Some(m) = take::<PeerMessage<wire::AppendRequest>>(bytes) {
            let _ = m.body.into_raft();
            decoded += 1;
        }
        if let Some(m) = take::<PeerMessage<wire::VoteRequest>>(bytes) {
            let _ = m.body.into_raft();
            decoded += 1;
        }
        if let Some(m) = take::<PeerMessage<wire::TransferLeaderRequest>>(bytes) {
            let _ = m.body.into_raft();
            decoded += 1;
        }
        decoded += take::<PeerMessage<wire::ForwardedWrite>>(bytes).is_some() as usize;
        decoded += take::<PeerMessage<wire::ForwardedWrites>>(bytes).is_some() as usize;
        decoded += take::<PeerMessage<()>>(bytes).is_some() as usize;
    }
    if let Some(r) = take::<wire::AppendResponse>(bytes) {
        let _ = r.into_raft();
        decoded += 1;
    }
    if let Some(r) = take::<wire::VoteResponse>(bytes) {
        let _ = r.into_raft();
        decoded += 1;
    }
    decoded += take::<Result<(), String>>(bytes).is_some() as usize;
    decoded += take::<wire::ForwardedWriteReply>(bytes).is_some() as usize;
    decoded += take::<wire::ForwardedWritesReply>(bytes).is_some() as usize;
    decoded += take::<wire::ReadIndexReply>(bytes).is_some() as usize;
    decoded += take::<wire::SnapshotReply>(bytes).is_some() as usize;
    decoded += take::<PeerMessage<wire::LeaseRequest>>(bytes).is_some() as usize;
    decoded += take::<wire::LeaseReply>(bytes).is_some() as usize;
    decoded += take::<PeerMessage<wire::StateHashRequest>>(bytes).is_some() as usize;
    decoded += take::<wire::StateHashReply>(bytes).is_some() as usize;
    decoded += take::<wire::StateCheckReply>(bytes).is_some() as usize;
    decoded += take::<ErrorBody>(bytes).is_some() as usize;
    decoded
}

/// Some mutated bodies still decode.
#[test]
fn body_inputs_reach_the_decoders() {
    let decoded = reach(inputs(body_seeds(), None), 1000, |c| {
        decode_bodies(&c.bytes) > 0
    });
    eprintln!("peer bodies: of 1000 inputs, {decoded} decoded");
    assert!(decoded >= 30, "{decoded} decoded");
}

#[test]
fn every_body_seed_decodes() {
    for seed in body_seeds().iter() {
        assert!(decode_bodies(&seed.bytes) >= 1, "seed {}", seed.name);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn peer_bodies_decode_or_fail_cleanly(case in inputs(body_seeds(), None)) {
        let (_, usage) = measure(|| decode_bodies(&case.bytes));
        within(usage, case.bytes.len(), 0)?;
    }
}
