//! Writes a follower forwards to the leader. Writes that arrive while earlier ones are in
//! flight travel together in one batch, so under load a follower sends one message per batch
//! instead of one per write: the leader parses fewer and both sides wake fewer threads. A
//! lone write goes at once, alone. Batches go over a forward stream ([`stream`]); one the
//! stream cannot carry (a leader without streams, a stream that cannot be opened) goes as an
//! HTTP request (`raft/write-batch`) to a leader whose stream hello says it takes those.

pub mod stream;

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::error::NodeError;
use crate::metrics::Metrics;
use crate::raft::QUORUM_TIMEOUT;
use crate::raft::Raft;
use crate::raft::client::PeerContext;
use crate::raft::client::PeerError;
use crate::raft::upgrade::OpenError;
use crate::raft::upgrade::REFUSED_RETRY;
use crate::raft::wire;
use crate::raft::wire::Capabilities;
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
    reply: oneshot::Sender<Result<Response, NodeError>>,
}

/// The follower side: queues writes for the leader and sends them in batches.
pub struct Forwarder {
    queue: mpsc::Sender<Pending>,
    metrics: Metrics,
}

impl Forwarder {
    /// Starts the sending task on the current runtime. At most `max_queued` writes wait for a
    /// batch; more are refused as `overloaded` rather than queued without end.
    pub fn start(peers: PeerContext, raft: Raft, metrics: Metrics, max_queued: usize) -> Self {
        let (queue, rx) = mpsc::channel(max_queued.max(1));
        tokio::spawn(send_loop(rx, Sender::new(peers, raft), metrics.clone()));
        Self { queue, metrics }
    }

    /// Forwards one write to `leader` and waits for its applied answer.
    pub async fn write(
        &self,
        leader: u64,
        addr: String,
        command: Command,
    ) -> Result<Response, NodeError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            leader,
            addr,
            command,
            reply,
        };
        let stopping = || NodeError::ShuttingDown("this node is stopping".into());
        match self.queue.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.write_shed("forward_queue");
                return Err(NodeError::Overloaded(format!(
                    "writes queued on this follower for the leader: {}, at its bound \
                     (--max-pending-writes); nothing was sent: retry after Retry-After",
                    self.queue.max_capacity()
                )));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopping()),
        }
        answer.await.unwrap_or_else(|_| Err(stopping()))
    }
}

async fn send_loop(mut rx: mpsc::Receiver<Pending>, sender: Sender, metrics: Metrics) {
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
    /// The open forward stream, to the leader it was opened to.
    stream: tokio::sync::Mutex<Option<LeaderStream>>,
    /// How the leader last answered a stream hello, and when.
    hello: std::sync::Mutex<Option<LeaderHello>>,
}

struct LeaderStream {
    leader: u64,
    addr: String,
    stream: Arc<stream::ForwardStream>,
}

struct LeaderHello {
    leader: u64,
    at: Instant,
    answer: HelloAnswer,
}

enum HelloAnswer {
    /// It opened the stream, and serves these besides.
    Served(Capabilities),
    /// It answered 404: a binary from before forward streams, which takes batches as requests.
    Refused,
}

impl Sender {
    fn new(peers: PeerContext, raft: Raft) -> Self {
        Self {
            peers,
            raft,
            stream: tokio::sync::Mutex::new(None),
            hello: std::sync::Mutex::new(None),
        }
    }

    fn remember(&self, leader: u64, answer: HelloAnswer) {
        *self.hello.lock().expect("not poisoned") = Some(LeaderHello {
            leader,
            at: Instant::now(),
            answer,
        });
    }

    /// Whether a batch the forward stream did not carry may go to `leader` as a request: as its
    /// last hello said, and yes for a leader that refused streams or was never heard (the
    /// versions without the capability all take `raft/write-batch`).
    fn takes_requests(&self, leader: u64) -> bool {
        match &*self.hello.lock().expect("not poisoned") {
            Some(h) if h.leader == leader => match h.answer {
                HelloAnswer::Served(c) => c.write_batch,
                HelloAnswer::Refused => true,
            },
            _ => true,
        }
    }

    /// The forward stream to `leader`, opened if need be; `None` if it has none to offer (a
    /// binary from before forward streams, asked again after [`REFUSED_RETRY`]) or cannot be
    /// reached.
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
        let refused_lately = self
            .hello
            .lock()
            .expect("not poisoned")
            .as_ref()
            .is_some_and(|h| {
                h.leader == leader
                    && matches!(h.answer, HelloAnswer::Refused)
                    && h.at.elapsed() < REFUSED_RETRY
            });
        if refused_lately {
            return None;
        }
        match stream::ForwardStream::open(&self.peers, addr).await {
            Ok((s, serves)) => {
                self.remember(leader, HelloAnswer::Served(serves));
                let s = Arc::new(s);
                *kept = Some(LeaderStream {
                    leader,
                    addr: addr.to_string(),
                    stream: s.clone(),
                });
                Some(s)
            }
            Err(OpenError::Unsupported) => {
                self.remember(leader, HelloAnswer::Refused);
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
            if self.takes_requests(leader) {
                self.send_as_request(leader, &addr, group).await;
            } else {
                let replies = group.into_iter().map(|p| p.reply).collect();
                let e = NodeError::NoQuorum(format!(
                    "no forward stream to the leader at {addr}, which takes forwarded writes on one only; nothing was sent"
                ));
                hand_out(replies, Err(e));
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

    /// Sends a group as one `raft/write-batch` request (a lone write too).
    async fn send_as_request(&self, leader: u64, addr: &str, group: Vec<Pending>) {
        let (commands, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|p| (p.command, p.reply)).unzip();
        let msg = self.peers.envelope(wire::ForwardedWrites { commands });
        let r = to_leader(
            &self.peers,
            &self.raft,
            leader,
            addr,
            "raft/write-batch",
            &msg,
        )
        .await;
        hand_out(replies, r);
    }
}

/// Gives each forwarded write its answer from the leader's reply to the batch.
fn hand_out(
    replies: Vec<oneshot::Sender<Result<Response, NodeError>>>,
    reply: Result<wire::ForwardedWritesReply, NodeError>,
) {
    match reply {
        Ok(reply) if reply.results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(reply.results) {
                let _ = reply.send(result.into_result());
            }
        }
        Ok(reply) => {
            let e = NodeError::Internal(format!(
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
    /// The answer the follower's client sees, as if it had asked the leader itself.
    fn into_result(self) -> Result<Response, NodeError> {
        match self {
            Self::Applied { response } => crate::error::answer(response),
            Self::Failed { status, error } => Err(NodeError::Remote {
                status,
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
) -> Result<T, NodeError> {
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
    exchange: impl Future<Output = Result<T, NodeError>>,
) -> Result<T, NodeError> {
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
        _ = moved => Err(NodeError::LeaderChanged),
        () = tokio::time::sleep(limit) => Err(NodeError::NoQuorum(
            format!("the leader did not answer within {limit:?}; a write may or may not have applied"),
        )),
    }
}

/// Maps a peer's failure to the error a client should see.
pub fn peer_failure(e: PeerError) -> NodeError {
    match e {
        PeerError::Api(_, status, code, message) => NodeError::Remote {
            status,
            detail: concordance_client::ErrorDetail {
                code,
                message,
                leader: None,
                leader_address: None,
                oldest_revision: None,
            },
        },
        PeerError::Unreachable(addr, why) => NodeError::NoQuorum(format!(
            "the leader at {addr} is unreachable ({why}); the cluster may have no quorum"
        )),
        other => NodeError::NoQuorum(other.to_string()),
    }
}
