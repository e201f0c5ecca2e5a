//! Append streams: a leader's replication to one follower over one long-lived connection,
//! appends sent as they come (pipelined) and the follower's answers read back in order.
//!
//! Why not one HTTP request per append: the follower's HTTP loop handed each append to its
//! Raft thread and the answer back (two thread wake-ups per append on every follower), and
//! the leader waited for each answer before sending the next append.
//!
//! The leader opens a stream with `GET /api/v1/raft/stream?protocol=..&cluster=..&from=..`
//! (admin key) asking to upgrade the connection to [`UPGRADE_PROTOCOL`]. The follower answers
//! `101 Switching Protocols` and moves the raw connection onto its Raft thread. Each direction
//! then carries frames: a 4-byte big-endian length and that many bytes of JSON,
//! [`wire::AppendRequest`] from the leader and one [`wire::StreamAppendReply`] per request
//! back, in order. A stream ends when the leader closes it or at the first answer that is not
//! `accepted`. A follower running an older binary answers 404, and the leader then sends single
//! requests (`POST /api/v1/raft/append`), asking again after [`REFUSED_RETRY`](super::upgrade::REFUSED_RETRY).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::tls::Conn;
use bytes::Bytes;
use futures::FutureExt;
use futures::SinkExt;
use futures::StreamExt;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::raft::StreamAppendResult;
use tokio::io::ReadHalf;
use tokio::io::WriteHalf;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::codec::FramedWrite;

use super::LeaderContact;
use super::Raft;
use super::client::PeerContext;
use super::client::PeerError;
use super::upgrade::FrameCodec;
pub use super::upgrade::OpenError;
use super::upgrade::frame_codec;
use super::wire;
use super::wire::RaftAppendRequest as RaftAppend;
use crate::store::types::LogId;
use crate::store::types::TypeConfig;
use crate::store::types::log_id_to_record;

/// The `Upgrade` token of an append stream.
pub const UPGRADE_PROTOCOL: &str = "concordance-append/1";

/// The longest a follower may take to answer the oldest unanswered append.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The leader's end of an open stream.
pub struct AppendStream {
    answers: FramedRead<ReadHalf<reqwest::Upgraded>, FrameCodec>,
    requests: FramedWrite<WriteHalf<reqwest::Upgraded>, FrameCodec>,
}

/// Opens a stream to the follower at `addr`.
pub async fn open(ctx: &PeerContext, addr: &str) -> Result<AppendStream, OpenError> {
    // Single appends are only for a follower without streams (it answers 404), so what an
    // answering one serves besides does not matter here.
    let (io, _serves) = super::upgrade::open(ctx, addr, "raft/stream", UPGRADE_PROTOCOL).await?;
    let (read, write) = tokio::io::split(io);
    Ok(AppendStream {
        answers: FramedRead::new(read, frame_codec()),
        requests: FramedWrite::new(write, frame_codec()),
    })
}

/// One answer of a session, as openraft takes it.
pub type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The longest a commit notice (an append without entries) waits for the next append to
/// carry it instead. At one write at a time every commit was followed by a notice of its own,
/// and the next write's append came a fraction of a millisecond later carrying the same
/// commit: half of all frames, each one waking a follower's Raft thread and the leader's to
/// read the answer. A held notice delays only when a follower applies a commit (its
/// serializable reads and watches), by at most this much; the write's client already has
/// its answer.
pub const COMMIT_NOTICE_HOLD: Duration = Duration::from_millis(2);

/// One session on a stream: sends `requests` as they come and yields the answers in order.
/// At a clean end (requests exhausted, every one answered) the stream goes back to `slot`
/// for the next session; after any error it is dropped, which closes it.
pub fn session<'s, S>(
    stream: AppendStream,
    requests: S,
    slot: &'s mut Option<AppendStream>,
    addr: String,
) -> BoxStream<'s, Answer>
where
    S: futures::Stream<Item = RaftAppend> + Send + Unpin + 'static,
{
    let session = Session {
        stream: Some(stream),
        requests: Some(requests),
        pipeline: Pipeline::default(),
        ready: VecDeque::new(),
        deadline: Instant::now(),
        slot,
        addr,
    };
    futures::stream::unfold(session, |mut s| async move {
        let answer = s.next_answer().await?;
        Some((answer, s))
    })
    .boxed()
}

/// The oldest an answer to an append may be, counted from the append's sending, and still
/// reach Raft while newer requests are out. Raft credits an answer with the sending time of
/// the newest request it acknowledges (a commit notice sent after the append, answered by the
/// append's answer), and confirms a read's leadership by those times. A follower grants no
/// vote within the leader lease (the maximum election timeout) of hearing from its leader,
/// so crediting is safe only while the answer arrives within that lease of the append's
/// sending: after a freeze or a slow network it may come from a follower that has since
/// voted for another leader. Such an answer ends the session instead (Raft sends again);
/// four fifths of the lease leaves room for timer slack.
pub const STALE_ANSWER: Duration = Duration::from_millis(super::ELECTION_TIMEOUT_MAX_MS * 4 / 5);

/// A request on the wire, awaiting its answer.
struct Sent {
    prev_log_id: Option<LogId>,
    at: Instant,
    /// Commit notices it stands for, sent before it by Raft and answered just before it.
    folded: usize,
}

/// A commit notice held back, waiting for an append to carry it.
struct Held {
    request: RaftAppend,
    /// Earlier notices it replaced (same place in the log, older commit).
    folded: usize,
    until: Instant,
}

/// The bookkeeping of a session, apart from its I/O: which of Raft's requests go on the wire
/// and which ride on a later one, and so how each wire answer becomes Raft's answers.
///
/// Why folding is sound: a notice is folded only into the next request from the same place
/// in the log (same vote, same previous log id) with a newer or equal commit. The follower
/// accepting that request has that previous log id, which is all the notice asked; refusing
/// it (a conflict there, a higher vote), it would have refused the notice the same way.
#[derive(Default)]
struct Pipeline {
    held: Option<Held>,
    sent: VecDeque<Sent>,
}

impl Pipeline {
    /// Takes Raft's next request; returns what goes on the wire now, in order.
    fn request(&mut self, request: RaftAppend, now: Instant) -> Vec<RaftAppend> {
        let mut out = Vec::new();
        let (folded, until) = match self.held.take() {
            Some(held)
                if held.request.vote == request.vote
                    && held.request.prev_log_id == request.prev_log_id =>
            {
                (held.folded + 1, held.until)
            }
            Some(held) => {
                out.push(self.send(held.request, held.folded, now));
                (0, now + COMMIT_NOTICE_HOLD)
            }
            None => (0, now + COMMIT_NOTICE_HOLD),
        };
        if request.entries.is_empty() {
            self.held = Some(Held {
                request,
                folded,
                until,
            });
        } else {
            out.push(self.send(request, folded, now));
        }
        out
    }

    /// The held notice, to send now (its time is up, or no request will follow).
    fn release(&mut self, now: Instant) -> Option<RaftAppend> {
        let held = self.held.take()?;
        Some(self.send(held.request, held.folded, now))
    }

    fn send(&mut self, request: RaftAppend, folded: usize, now: Instant) -> RaftAppend {
        self.sent.push_back(Sent {
            prev_log_id: request.prev_log_id,
            at: now,
            folded,
        });
        request
    }

    /// The follower's answer to the oldest request on the wire, as Raft's answers in order:
    /// the notices folded into it first. After a refusal only the first is given: the
    /// session ends there.
    fn answered(
        &mut self,
        answer: StreamAppendResult<TypeConfig>,
    ) -> Vec<StreamAppendResult<TypeConfig>> {
        let Some(sent) = self.sent.pop_front() else {
            return vec![answer];
        };
        match answer {
            Ok(matching) => {
                let mut answers = vec![Ok(sent.prev_log_id); sent.folded];
                answers.push(Ok(matching));
                answers
            }
            Err(refused) => vec![Err(refused)],
        }
    }

    /// How old the oldest request on the wire is, when its answer would also acknowledge
    /// newer requests Raft handed over after it (sent, or a held notice) and it is older than
    /// [`STALE_ANSWER`].
    fn stale_answer(&self, now: Instant) -> Option<Duration> {
        let oldest = self.sent.front()?;
        let newer = self.sent.len() > 1 || self.held.is_some();
        let age = now.saturating_duration_since(oldest.at);
        (newer && age >= STALE_ANSWER).then_some(age)
    }

    fn hold_until(&self) -> Option<Instant> {
        self.held.as_ref().map(|h| h.until)
    }

    fn awaiting_answers(&self) -> bool {
        !self.sent.is_empty()
    }
}

struct Session<'s, S> {
    /// `None` once the session has ended.
    stream: Option<AppendStream>,
    /// `None` once the caller has no more requests.
    requests: Option<S>,
    pipeline: Pipeline,
    /// Answers due to Raft, oldest first.
    ready: VecDeque<Answer>,
    /// When the oldest unanswered request is overdue.
    deadline: Instant,
    slot: &'s mut Option<AppendStream>,
    addr: String,
}

/// What woke a session.
enum Event {
    Request(Option<RaftAppend>),
    Answer(Option<std::io::Result<bytes::BytesMut>>),
    HoldOver,
    Overdue,
}

impl<S> Session<'_, S>
where
    S: futures::Stream<Item = RaftAppend> + Unpin,
{
    fn fail(&mut self, e: PeerError) -> Answer {
        self.stream = None;
        Err(super::client::rpc_error(e))
    }

    fn unreachable(&mut self, why: impl ToString) -> Answer {
        let e = PeerError::Unreachable(self.addr.clone(), why.to_string());
        self.fail(e)
    }

    async fn send(&mut self, requests: Vec<RaftAppend>) -> Result<(), Answer> {
        for request in requests {
            let frame = serde_json::to_vec(&wire::AppendRequest::from_raft(&request))
                .expect("append requests serialize");
            let stream = self.stream.as_mut().expect("sending on an open stream");
            // Fed, not flushed, one by one: requests released together leave in one write.
            if let Err(e) = stream.requests.feed(Bytes::from(frame)).await {
                return Err(self.unreachable(e));
            }
        }
        let stream = self.stream.as_mut().expect("sending on an open stream");
        if let Err(e) = SinkExt::<Bytes>::flush(&mut stream.requests).await {
            return Err(self.unreachable(e));
        }
        Ok(())
    }

    async fn next_answer(&mut self) -> Option<Answer> {
        loop {
            if let Some(answer) = self.ready.pop_front() {
                return Some(answer);
            }
            let stream = self.stream.as_mut()?;
            let awaiting = self.pipeline.awaiting_answers();
            if self.requests.is_none() && !awaiting {
                *self.slot = self.stream.take();
                return None;
            }
            let hold_until = self.pipeline.hold_until();
            let requests = &mut self.requests;
            let event = tokio::select! {
                // Sending first: a new append goes out before the answers to earlier ones.
                biased;
                next = async { requests.as_mut().expect("guarded").next().await }, if requests.is_some() => Event::Request(next),
                frame = stream.answers.next(), if awaiting => Event::Answer(frame),
                _ = tokio::time::sleep_until(hold_until.unwrap_or(self.deadline)), if hold_until.is_some() => Event::HoldOver,
                _ = tokio::time::sleep_until(self.deadline), if awaiting => Event::Overdue,
            };
            let to_send =
                match event {
                    Event::Request(Some(request)) => self.pipeline.request(request, Instant::now()),
                    // No request follows a held notice: it goes now.
                    Event::Request(None) => {
                        self.requests = None;
                        self.pipeline.release(Instant::now()).into_iter().collect()
                    }
                    Event::HoldOver => self.pipeline.release(Instant::now()).into_iter().collect(),
                    Event::Overdue => {
                        return Some(self.unreachable(format!(
                            "no answer to an append within {ANSWER_TIMEOUT:?}"
                        )));
                    }
                    Event::Answer(frame) => {
                        if let Some(answer) = self.answer(frame) {
                            return Some(answer);
                        }
                        continue;
                    }
                };
            if to_send.is_empty() {
                continue;
            }
            // The first request on the wire starts the clock for its answer.
            if !awaiting {
                self.deadline = Instant::now() + ANSWER_TIMEOUT;
            }
            if let Err(failed) = self.send(to_send).await {
                return Some(failed);
            }
        }
    }

    /// Reads one answer frame into `ready`; returns an answer that ends the session.
    fn answer(&mut self, frame: Option<std::io::Result<bytes::BytesMut>>) -> Option<Answer> {
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Some(self.unreachable(e)),
            None => return Some(self.unreachable("the follower closed the stream")),
        };
        self.deadline = Instant::now() + ANSWER_TIMEOUT;
        let reply = match serde_json::from_slice::<wire::StreamAppendReply>(&frame) {
            Ok(reply) => reply,
            Err(e) => {
                let e =
                    PeerError::Refused(self.addr.clone(), 200, format!("undecodable answer: {e}"));
                return Some(self.fail(e));
            }
        };
        match reply.into_raft() {
            Ok(answer) => {
                if answer.is_ok()
                    && let Some(age) = self.pipeline.stale_answer(Instant::now())
                {
                    return Some(self.unreachable(format!(
                        "an answer came {age:?} after its append, too late to confirm leadership \
                         for the newer requests it would acknowledge; sending again"
                    )));
                }
                if answer.is_err() {
                    // The follower ends the stream after a refusal.
                    self.stream = None;
                }
                self.ready
                    .extend(self.pipeline.answered(answer).into_iter().map(Ok));
                None
            }
            Err(message) => {
                self.stream = None;
                Some(Err(RPCError::Network(NetworkError::from_string(format!(
                    "{}: {message}",
                    self.addr
                )))))
            }
        }
    }
}

/// The follower's end: takes over an upgraded connection, on the Raft thread, so appends
/// reach Raft and answers leave without a thread hand-off.
pub async fn accept(follower: Follower, upgrade: hyper::upgrade::OnUpgrade) {
    let raft_runtime = follower.raft_runtime.clone();
    super::upgrade::serve_on_raft_thread(
        raft_runtime,
        upgrade,
        "an append stream",
        |conn, ahead| serve(follower, conn, ahead),
    )
    .await;
}

/// What the follower's end of a stream works with.
pub struct Follower {
    pub raft: Raft,
    /// The thread Raft runs on, where the stream is served.
    pub raft_runtime: tokio::runtime::Handle,
    pub contact: std::sync::Arc<LeaderContact>,
    /// Cancelled when the node stops: the stream ends.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// Appends read together are handed to Raft as one (see [`merge`]): this many at most, and
/// no more are added once they hold this many bytes (appends of large values stay apart).
const MERGE_AT_MOST: usize = 64;
const MERGE_BYTES: usize = 4 << 20;

fn frame_len(frame: &std::io::Result<bytes::BytesMut>) -> usize {
    frame.as_ref().map_or(0, |f| f.len())
}

/// What the answers to one append handed to Raft go back as: one per request the leader
/// sent, in order.
struct Handed {
    /// The last log id of each request merged into the append.
    lasts: Vec<Option<LogId>>,
    /// The commit index the append carried.
    commit: Option<u64>,
}

/// Feeds the leader's appends to Raft and writes Raft's answers back, until the leader closes
/// the stream, an answer is a refusal, or the node stops.
async fn serve(node: Follower, conn: Conn, read_ahead: Bytes) {
    let (read, write) = conn.split();
    let mut frames_in = FramedRead::new(read, frame_codec());
    frames_in.read_buffer_mut().extend_from_slice(&read_ahead);
    let mut frames_out = FramedWrite::new(write, frame_codec());
    let (to_raft, from_leader) = futures::channel::mpsc::channel(64);
    let handed: Mutex<VecDeque<Handed>> = Mutex::default();

    let reading = async {
        let mut to_raft = to_raft;
        while let Some(frame) = frames_in.next().await {
            // Every append already received goes to Raft as one: one log write and fsync.
            let mut bytes = frame_len(&frame);
            let mut requests = vec![decode_append(frame)?];
            while requests.len() < MERGE_AT_MOST
                && bytes < MERGE_BYTES
                && let Some(Some(frame)) = frames_in.next().now_or_never()
            {
                bytes += frame_len(&frame);
                requests.push(decode_append(frame)?);
            }
            for (request, lasts) in merge(requests) {
                let commit = request.leader_commit.as_ref().map(|c| c.index);
                handed
                    .lock()
                    .expect("not poisoned")
                    .push_back(Handed { lasts, commit });
                if to_raft.send(request).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok::<(), String>(())
    };
    let answers = node.raft.stream_append(from_leader);
    let writing = async {
        let mut answers = std::pin::pin!(answers);
        while let Some(answer) = answers.next().await {
            let Some(Handed { lasts, commit }) = handed.lock().expect("not poisoned").pop_front()
            else {
                return;
            };
            let replies = match &answer {
                Ok(Ok(matching)) => {
                    // Holding the leader's commit: this node's log is confirmed current.
                    node.contact
                        .record(commit <= matching.as_ref().map(|m| m.index));
                    lasts
                        .iter()
                        .map(|last| wire::StreamAppendReply::Accepted {
                            matching: (*last).min(*matching).as_ref().map(log_id_to_record),
                        })
                        .collect()
                }
                Ok(refused) => vec![wire::StreamAppendReply::from_raft(refused)],
                Err(fatal) => vec![wire::StreamAppendReply::Failed {
                    message: fatal.to_string(),
                }],
            };
            for reply in replies {
                let frame = serde_json::to_vec(&reply).expect("answers serialize");
                if frames_out.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
                if !matches!(reply, wire::StreamAppendReply::Accepted { .. }) {
                    return;
                }
            }
        }
    };
    let mut reading = std::pin::pin!(reading);
    let mut writing = std::pin::pin!(writing);
    let mut leader_done = false;
    loop {
        tokio::select! {
            read = &mut reading, if !leader_done => match read {
                // The leader closed its side: the answers still due drain, then the stream ends.
                Ok(()) => leader_done = true,
                Err(e) => {
                    tracing::warn!(error = %e, "closing an append stream");
                    return;
                }
            },
            () = &mut writing => return,
            () = node.stopping.cancelled() => return,
        }
    }
}

pub(crate) fn decode_append(frame: std::io::Result<bytes::BytesMut>) -> Result<RaftAppend, String> {
    let frame = frame.map_err(|e| e.to_string())?;
    serde_json::from_slice::<wire::AppendRequest>(&frame)
        .map_err(|e| format!("unreadable append: {e}"))?
        .into_raft()
        .map_err(|e| format!("invalid entry: {e}"))
}

/// The last log id an append leaves the follower's log at, if accepted.
fn last_of(request: &RaftAppend) -> Option<LogId> {
    request
        .entries
        .last()
        .map(|e| e.log_id)
        .or(request.prev_log_id)
}

/// Joins appends that continue one another (same vote, each starting where the previous
/// ended) into one, which Raft stores with one write and one fsync; each comes with the last
/// log ids of the requests it stands for. Taken one by one, the same appends would leave the
/// same log and the latest commit index.
fn merge(requests: Vec<RaftAppend>) -> Vec<(RaftAppend, Vec<Option<LogId>>)> {
    let mut merged: Vec<(RaftAppend, Vec<Option<LogId>>)> = Vec::new();
    for request in requests {
        let last = last_of(&request);
        if let Some((into, lasts)) = merged.last_mut()
            && into.vote == request.vote
            && last_of(into) == request.prev_log_id
            && into.leader_commit <= request.leader_commit
        {
            into.entries.extend(request.entries);
            into.leader_commit = request.leader_commit;
            lasts.push(last);
            continue;
        }
        merged.push((request, vec![last]));
    }
    merged
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::raft::StreamAppendError;

    use super::*;
    use crate::store::types::Entry;
    use crate::store::types::Vote;

    fn id(term: u64, index: u64) -> LogId {
        crate::store::types::log_id_from_record(&crate::store::records::LogIdRecord {
            term,
            leader: 1,
            index,
        })
    }

    /// An append from the leader of `term` after `prev`, with entries `first..=last` (none
    /// when `first > last`) and commit index `commit`.
    fn append(term: u64, prev: u64, first: u64, last: u64, commit: u64) -> RaftAppend {
        RaftAppend {
            vote: Vote::new_committed(term, 1),
            prev_log_id: Some(id(term, prev)),
            entries: (first..=last)
                .map(|i| Entry {
                    log_id: id(term, i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(id(term, commit)),
        }
    }

    fn shape(merged: &[(RaftAppend, Vec<Option<LogId>>)]) -> Vec<(u64, usize, u64, Vec<u64>)> {
        merged
            .iter()
            .map(|(r, lasts)| {
                (
                    r.prev_log_id.as_ref().unwrap().index,
                    r.entries.len(),
                    r.leader_commit.as_ref().unwrap().index,
                    lasts.iter().map(|l| l.as_ref().unwrap().index).collect(),
                )
            })
            .collect()
    }

    /// One step of a leader's session, as the pipeline sees it.
    enum Step {
        /// Raft's next request.
        Raft(RaftAppend),
        /// The held notice's time is up (or Raft has no more requests).
        Release,
        /// The follower's answer to the oldest request on the wire.
        Reply(StreamAppendResult<TypeConfig>),
    }
    use Step::*;

    fn accepted(term: u64, index: u64) -> Step {
        Reply(Ok(Some(id(term, index))))
    }

    /// What the pipeline did, one line per request sent or answer given to Raft.
    fn transcript(steps: Vec<Step>) -> Vec<String> {
        let mut pipeline = Pipeline::default();
        let mut out = Vec::new();
        let sent = |out: &mut Vec<String>, requests: Vec<RaftAppend>| {
            for r in requests {
                let prev = r.prev_log_id.map(|p| p.index).unwrap_or(0);
                let commit = r.leader_commit.map(|c| c.index).unwrap_or(0);
                out.push(format!(
                    "send after {prev}, {} entries, commit {commit}",
                    r.entries.len()
                ));
            }
        };
        for step in steps {
            match step {
                Raft(request) => sent(&mut out, pipeline.request(request, Instant::now())),
                Release => sent(
                    &mut out,
                    pipeline.release(Instant::now()).into_iter().collect(),
                ),
                Reply(answer) => {
                    for a in pipeline.answered(answer) {
                        out.push(match a {
                            Ok(m) => format!("answer ok {}", m.map(|m| m.index).unwrap_or(0)),
                            Err(StreamAppendError::Conflict(at)) => {
                                format!("answer conflict at {}", at.index)
                            }
                            Err(StreamAppendError::HigherVote(_)) => "answer higher vote".into(),
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn commit_notices_ride_on_the_next_append_from_the_same_place() {
        let cases: [(&str, Vec<Step>, Vec<&str>); 5] = [
            (
                // Raft's requests: a notice of commit 10, then entry 11 (carrying commit 10).
                "a notice followed by an append goes with it, and is answered first",
                vec![
                    Raft(append(2, 10, 11, 10, 10)),
                    Raft(append(2, 10, 11, 11, 10)),
                    accepted(2, 11),
                ],
                vec![
                    "send after 10, 1 entries, commit 10",
                    "answer ok 10",
                    "answer ok 11",
                ],
            ),
            (
                "notices in a row fold into the newest, which goes when its time is up",
                vec![
                    Raft(append(2, 10, 11, 10, 9)),
                    Raft(append(2, 10, 11, 10, 10)),
                    Release,
                    accepted(2, 10),
                ],
                vec![
                    "send after 10, 0 entries, commit 10",
                    "answer ok 10",
                    "answer ok 10",
                ],
            ),
            (
                // After the notice Raft went back to entry 8 (a probe): not the same place.
                "a notice is not folded into an append from another place or leader",
                vec![
                    Raft(append(2, 10, 11, 10, 10)),
                    Raft(append(2, 7, 8, 8, 10)),
                    Raft(append(2, 8, 9, 8, 10)),
                    Raft(append(3, 8, 9, 9, 10)),
                    accepted(2, 10),
                    accepted(2, 8),
                    accepted(2, 8),
                    accepted(3, 9),
                ],
                vec![
                    "send after 10, 0 entries, commit 10",
                    "send after 7, 1 entries, commit 10",
                    "send after 8, 0 entries, commit 10",
                    "send after 8, 1 entries, commit 10",
                    "answer ok 10",
                    "answer ok 8",
                    "answer ok 8",
                    "answer ok 9",
                ],
            ),
            (
                // The follower does not hold entry 10: the notice, asked alone, would have
                // been refused the same way; the session ends at the first refusal.
                "a refused append refuses the notices folded into it",
                vec![
                    Raft(append(2, 10, 11, 10, 10)),
                    Raft(append(2, 10, 11, 11, 10)),
                    Reply(Err(StreamAppendError::Conflict(id(2, 10)))),
                ],
                vec![
                    "send after 10, 1 entries, commit 10",
                    "answer conflict at 10",
                ],
            ),
            (
                "appends with entries are never held",
                vec![
                    Raft(append(2, 10, 11, 11, 10)),
                    Raft(append(2, 11, 12, 12, 10)),
                    accepted(2, 11),
                ],
                vec![
                    "send after 10, 1 entries, commit 10",
                    "send after 11, 1 entries, commit 10",
                    "answer ok 11",
                ],
            ),
        ];
        for (case, steps, expected) in cases {
            assert_eq!(transcript(steps), expected, "{case}");
        }
    }

    #[test]
    fn appends_merge_only_when_each_continues_the_one_before() {
        type Shape = Vec<(u64, usize, u64, Vec<u64>)>;
        let cases: [(&str, Vec<RaftAppend>, Shape); 2] = [
            (
                // Entries 11-12, a commit notice, entries 13-15: one append of five entries
                // that carries the last commit, answered as three.
                "continuing appends become one",
                vec![
                    append(2, 10, 11, 12, 10),
                    append(2, 12, 13, 12, 12),
                    append(2, 12, 13, 15, 12),
                ],
                vec![(10, 5, 12, vec![12, 12, 15])],
            ),
            (
                // After the first: a gap (the leader went back to probe), the same place
                // under a newer leader, a commit index lower than the one before.
                "a gap, a new leader or an older commit starts a new append",
                vec![
                    append(2, 10, 11, 12, 10),
                    append(2, 13, 14, 14, 10),
                    append(3, 14, 15, 15, 10),
                    append(3, 15, 16, 16, 9),
                ],
                vec![
                    (10, 2, 10, vec![12]),
                    (13, 1, 10, vec![14]),
                    (14, 1, 10, vec![15]),
                    (15, 1, 9, vec![16]),
                ],
            ),
        ];
        for (case, appends, expected) in cases {
            assert_eq!(shape(&merge(appends)), expected, "{case}");
        }
    }

    #[test]
    fn an_old_answer_is_refused_only_when_it_would_acknowledge_newer_requests() {
        let t0 = Instant::now();
        let mut p = Pipeline::default();
        p.request(append(1, 5, 6, 10, 5), t0);
        // A commit notice handed over after it, within the bound: fresh enough.
        p.request(append(1, 10, 11, 10, 10), t0 + STALE_ANSWER / 2);
        assert_eq!(p.stale_answer(t0 + STALE_ANSWER / 2), None);
        assert_eq!(p.stale_answer(t0 + STALE_ANSWER), Some(STALE_ANSWER));

        // Alone on the wire, however old: Raft credits its own sending time.
        let mut alone = Pipeline::default();
        alone.request(append(1, 5, 6, 10, 5), t0);
        assert_eq!(alone.stale_answer(t0 + STALE_ANSWER * 4), None);
        // A second append on the wire behind it makes it stale too.
        alone.request(append(1, 10, 11, 12, 10), t0 + STALE_ANSWER * 3);
        assert_eq!(
            alone.stale_answer(t0 + STALE_ANSWER * 4),
            Some(STALE_ANSWER * 4)
        );
    }
}
