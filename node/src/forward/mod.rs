//! Writes a follower forwards to the leader. Writes that arrive while earlier ones are in
//! flight travel together in one batch, so under load a follower sends one message per batch
//! instead of one per write: the leader parses fewer and both sides wake fewer threads. A
//! lone write goes at once, alone. Batches go over a forward stream ([`stream`]) to a leader
//! that serves one, else as HTTP requests (`raft/write-batch`).

pub mod stream;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use axum::http::StatusCode;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::raft::QUORUM_TIMEOUT;
use crate::raft::Raft;
use crate::raft::peer::PeerContext;
use crate::raft::peer::PeerError;
use crate::raft::upgrade::OpenError;
use crate::raft::upgrade::REFUSED_RETRY;
use crate::raft::wire;
use crate::store::records::Command;
use crate::store::records::Response;

/// Most writes in one forwarded batch. Client bodies are at most 2 MiB, so a batch stays far
/// below the peer body limit.
pub const MAX_BATCH: usize = 64;
/// Batches in flight from this follower at once: while they are out, new writes queue and
/// leave together in the next one.
const BATCHES_IN_FLIGHT: usize = 2;

struct Pending {
    leader: u64,
    addr: String,
    command: Command,
    reply: oneshot::Sender<Result<Response, ApiError>>,
}

/// The follower side: queues writes for the leader and sends them in batches.
pub struct Forwarder {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Forwarder {
    /// Starts the sending task on the current runtime.
    pub fn start(peers: PeerContext, raft: Raft, metrics: Metrics) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(rx, Sender::new(peers, raft), metrics));
        Self { queue }
    }

    /// Forwards one write to `leader` and waits for its applied answer.
    pub async fn write(
        &self,
        leader: u64,
        addr: String,
        command: Command,
    ) -> Result<Response, ApiError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            leader,
            addr,
            command,
            reply,
        };
        let stopping = || ApiError::unavailable("shutting_down", "this node is stopping");
        if self.queue.send(pending).is_err() {
            return Err(stopping());
        }
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }
}

async fn send_loop(mut rx: mpsc::UnboundedReceiver<Pending>, sender: Sender, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let sender = Arc::new(sender);
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets a batch grow under load.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        metrics.observe_forwarded_batch(batch.len());
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.send(batch).await;
            drop(slot);
        });
    }
}

struct Sender {
    peers: PeerContext,
    raft: Raft,
    /// A leader found not to serve `raft/write-batch` (an older version during a rolling
    /// upgrade): it gets one request per write.
    unbatched_leader: AtomicU64,
    /// The open forward stream, to the leader it was opened to.
    stream: tokio::sync::Mutex<Option<LeaderStream>>,
    /// A leader that answered 404 to a forward stream, and when.
    stream_refused: std::sync::Mutex<Option<(u64, Instant)>>,
}

struct LeaderStream {
    leader: u64,
    addr: String,
    stream: Arc<stream::ForwardStream>,
}

impl Sender {
    fn new(peers: PeerContext, raft: Raft) -> Self {
        Self {
            peers,
            raft,
            unbatched_leader: AtomicU64::new(0),
            stream: tokio::sync::Mutex::new(None),
            stream_refused: std::sync::Mutex::new(None),
        }
    }

    /// The forward stream to `leader`, opened if need be; `None` if it has none to offer (an
    /// older binary) or cannot be reached, and the batch then goes as a request.
    async fn stream_to(&self, leader: u64, addr: &str) -> Option<Arc<stream::ForwardStream>> {
        let mut kept = self.stream.lock().await;
        if let Some(s) = kept.as_ref()
            && s.leader == leader
            && s.addr == addr
            && s.stream.is_open()
        {
            return Some(s.stream.clone());
        }
        *kept = None;
        if self
            .stream_refused
            .lock()
            .expect("not poisoned")
            .is_some_and(|(refused, at)| refused == leader && at.elapsed() < REFUSED_RETRY)
        {
            return None;
        }
        match stream::ForwardStream::open(&self.peers, addr).await {
            Ok(s) => {
                let s = Arc::new(s);
                *kept = Some(LeaderStream {
                    leader,
                    addr: addr.to_string(),
                    stream: s.clone(),
                });
                Some(s)
            }
            Err(OpenError::Unsupported) => {
                *self.stream_refused.lock().expect("not poisoned") = Some((leader, Instant::now()));
                None
            }
            Err(OpenError::Peer(e)) => {
                tracing::debug!(error = %e, "no forward stream to the leader");
                None
            }
        }
    }

    /// Forgets `failed` if it is still the kept stream, so the next batch opens another.
    async fn drop_stream(&self, failed: &Arc<stream::ForwardStream>) {
        let mut kept = self.stream.lock().await;
        if kept
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(&s.stream, failed))
        {
            *kept = None;
        }
    }

    async fn send(&self, mut batch: Vec<Pending>) {
        // Normally every write names the same leader; split if a change raced the batch.
        while !batch.is_empty() {
            let (leader, addr) = (batch[0].leader, batch[0].addr.clone());
            let (group, rest): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|p| p.leader == leader && p.addr == addr);
            batch = rest;
            let group = match self.stream_to(leader, &addr).await {
                Some(stream) => match self.send_on_stream(leader, &addr, &stream, group).await {
                    Some(unsent) => unsent,
                    None => continue,
                },
                None => group,
            };
            if group.len() == 1 || self.unbatched_leader.load(Ordering::Relaxed) == leader {
                futures::future::join_all(group.into_iter().map(|p| self.send_one(p))).await;
            } else {
                self.send_group(leader, &addr, group).await;
            }
        }
    }

    /// Sends a group over the forward stream and hands out the answers; gives the group back
    /// if the stream had ended before it was sent.
    async fn send_on_stream(
        &self,
        leader: u64,
        addr: &str,
        stream: &Arc<stream::ForwardStream>,
        group: Vec<Pending>,
    ) -> Option<Vec<Pending>> {
        let (commands, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|p| (p.command, p.reply)).unzip();
        let writes = wire::ForwardedWrites { commands };
        // A batch lost on the stream is a failure; one never sent goes another way.
        let call = async {
            match stream.call(&writes).await {
                Err(stream::CallError::Lost(e)) => Err(peer_failure(e)),
                sent_or_not => Ok(sent_or_not),
            }
        };
        match while_leader(&self.raft, leader, call).await {
            Ok(Ok(reply)) => {
                hand_out(replies, Ok(reply));
                None
            }
            Ok(Err(_not_sent)) => {
                self.drop_stream(stream).await;
                let again = writes.commands.into_iter().zip(replies);
                Some(
                    again
                        .map(|(command, reply)| Pending {
                            leader,
                            addr: addr.to_string(),
                            command,
                            reply,
                        })
                        .collect(),
                )
            }
            Err(e) => {
                self.drop_stream(stream).await;
                hand_out(replies, Err(e));
                None
            }
        }
    }

    async fn send_one(&self, p: Pending) {
        let msg = self
            .peers
            .envelope(wire::ForwardedWrite { command: p.command });
        let r: Result<wire::ForwardedWriteReply, ApiError> = to_leader(
            &self.peers,
            &self.raft,
            p.leader,
            &p.addr,
            "raft/write",
            &msg,
        )
        .await;
        let _ = p
            .reply
            .send(r.and_then(|r| crate::error::answer(r.response)));
    }

    async fn send_group(&self, leader: u64, addr: &str, group: Vec<Pending>) {
        let (commands, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|p| (p.command, p.reply)).unzip();
        let msg = self.peers.envelope(wire::ForwardedWrites { commands });
        let r: Result<wire::ForwardedWritesReply, ApiError> = to_leader(
            &self.peers,
            &self.raft,
            leader,
            addr,
            "raft/write-batch",
            &msg,
        )
        .await;
        match r {
            Err(e) if e.status == StatusCode::NOT_FOUND && e.detail.code == "not_found" => {
                // An older leader: nothing applied. Send each write on its own.
                self.unbatched_leader.store(leader, Ordering::Relaxed);
                let wire::ForwardedWrites { commands } = msg.body;
                let again = commands
                    .into_iter()
                    .zip(replies)
                    .map(|(command, reply)| Pending {
                        leader,
                        addr: addr.to_string(),
                        command,
                        reply,
                    });
                futures::future::join_all(again.map(|p| self.send_one(p))).await;
            }
            r => hand_out(replies, r),
        }
    }
}

/// Gives each forwarded write its answer from the leader's reply to the batch.
fn hand_out(
    replies: Vec<oneshot::Sender<Result<Response, ApiError>>>,
    reply: Result<wire::ForwardedWritesReply, ApiError>,
) {
    match reply {
        Ok(reply) if reply.results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(reply.results) {
                let _ = reply.send(result.into_result());
            }
        }
        Ok(reply) => {
            let e = ApiError::internal(format!(
                "the leader answered {} results for {} forwarded writes; they may or may not have applied",
                reply.results.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

impl wire::ForwardedResult {
    pub fn from_result(r: Result<Response, ApiError>) -> Self {
        match r {
            Ok(response) => Self::Applied { response },
            Err(e) => Self::Failed {
                status: e.status.as_u16(),
                error: e.detail,
            },
        }
    }

    /// The answer the follower's client sees, as if it had asked the leader itself.
    fn into_result(self) -> Result<Response, ApiError> {
        match self {
            Self::Applied { response } => crate::error::answer(response),
            Self::Failed { status, error } => Err(ApiError {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                detail: error,
            }),
        }
    }
}

/// Sends a request to the leader, giving up as soon as this node sees another leader
/// (a partitioned old leader would otherwise hold the request until it times out).
pub async fn to_leader<B: serde::Serialize, T: serde::de::DeserializeOwned>(
    peers: &PeerContext,
    raft: &Raft,
    leader: u64,
    addr: &str,
    path: &str,
    body: &B,
) -> Result<T, ApiError> {
    let request = async {
        peers
            .post(addr, path, body, QUORUM_TIMEOUT + Duration::from_secs(1))
            .await
            .map_err(peer_failure)
    };
    while_leader(raft, leader, request).await
}

/// Waits for `exchange` with `leader` while this node still sees it lead, and for at most
/// as long as a write may take to commit (plus a second).
async fn while_leader<T>(
    raft: &Raft,
    leader: u64,
    exchange: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let moved = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if crate::raft::metrics_of(raft).current_leader != Some(leader) {
                return;
            }
        }
    };
    let limit = QUORUM_TIMEOUT + Duration::from_secs(1);
    tokio::select! {
        r = exchange => r,
        _ = moved => Err(ApiError::unavailable(
            "leader_changed",
            "the leader changed while the request was in flight; a write may or may not have \
             applied: retry it (with an Idempotency-Key to make the retry safe)",
        )),
        () = tokio::time::sleep(limit) => Err(ApiError::unavailable(
            "no_quorum",
            format!("the leader did not answer within {limit:?}; a write may or may not have applied"),
        )),
    }
}

/// Maps a peer's failure to the error a client should see.
pub fn peer_failure(e: PeerError) -> ApiError {
    match e {
        PeerError::Api(_, status, code, message) => ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            &code,
            message,
        ),
        PeerError::Unreachable(addr, why) => ApiError::unavailable(
            "no_quorum",
            format!("the leader at {addr} is unreachable ({why}); the cluster may have no quorum"),
        ),
        other => ApiError::unavailable("no_quorum", other.to_string()),
    }
}
