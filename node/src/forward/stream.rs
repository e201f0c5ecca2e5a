//! Forward streams: a follower's writes to the leader over one long-lived connection, each
//! batch sent as it forms (pipelined) and the leader's answers read back in order.
//!
//! Why not one HTTP request per batch: on the leader each request went through an HTTP loop
//! and was handed to the Raft thread and back (two thread wake-ups per batch), and on the
//! follower through the HTTP client's connection pool and its connection task.
//!
//! The follower opens a stream with `GET /api/v1/raft/forward?protocol=..&cluster=..&from=..`
//! (admin key) asking to upgrade the connection to [`UPGRADE_PROTOCOL`]. The leader answers
//! `101 Switching Protocols` and serves the raw connection on its Raft thread. Each direction
//! then carries frames: a 4-byte big-endian length and that many bytes of JSON,
//! [`wire::ForwardedWrites`] from the follower and one [`wire::ForwardedWritesReply`] per
//! batch back, in order. Both hellos carry the sender's [`Capabilities`]. A leader running a
//! binary from before forward streams answers 404, and the follower then sends batches as
//! requests (`POST /api/v1/raft/write-batch`).

use std::collections::VecDeque;

use crate::tls::Conn;
use bytes::Bytes;
use futures::SinkExt;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use tokio_util::codec::FramedWrite;

use crate::raft::client::PeerContext;
use crate::raft::client::PeerError;
use crate::raft::upgrade::OpenError;
use crate::raft::upgrade::frame_codec;
use crate::raft::wire;
use crate::raft::wire::Capabilities;
use crate::store::records::Command;

/// The `Upgrade` token of a forward stream.
pub const UPGRADE_PROTOCOL: &str = "concordance-forward/1";

/// Why a batch got no answer.
#[derive(Debug)]
pub enum CallError {
    /// The stream had ended before the batch was handed to it: nothing was sent, so the
    /// batch can go another way.
    NotSent,
    /// Sent, but the stream ended before its answer: the writes may or may not apply.
    Lost(PeerError),
}

/// A batch handed to the stream's task, with where its answer goes.
struct Call {
    frame: Bytes,
    answer: oneshot::Sender<Result<wire::ForwardedWritesReply, PeerError>>,
}

/// The follower's end of an open stream. Dropping it closes the stream.
pub struct ForwardStream {
    calls: mpsc::UnboundedSender<Call>,
}

impl ForwardStream {
    /// Opens a stream to the leader at `addr`, with what the leader serves besides (its
    /// hello's answer); the stream's task runs on the current runtime.
    pub async fn open(ctx: &PeerContext, addr: &str) -> Result<(Self, Capabilities), OpenError> {
        let (io, serves) =
            crate::raft::upgrade::open(ctx, addr, "raft/forward", UPGRADE_PROTOCOL).await?;
        let (calls, queued) = mpsc::unbounded_channel();
        tokio::spawn(run(io, queued, addr.to_string()));
        Ok((Self { calls }, serves))
    }

    /// False once the stream has ended (the leader closed it or it failed).
    pub fn is_open(&self) -> bool {
        !self.calls.is_closed()
    }

    /// Sends one batch and waits for the leader's answer to it.
    pub async fn call(
        &self,
        writes: &wire::ForwardedWrites,
    ) -> Result<wire::ForwardedWritesReply, CallError> {
        let frame = Bytes::from(serde_json::to_vec(writes).expect("commands serialize"));
        let (answer, answered) = oneshot::channel();
        self.calls
            .send(Call { frame, answer })
            .map_err(|_| CallError::NotSent)?;
        match answered.await {
            Ok(reply) => reply.map_err(CallError::Lost),
            // The task ended without a word: only when the node stops.
            Err(_) => Err(CallError::Lost(PeerError::Unreachable(
                "the leader".into(),
                "the forward stream stopped".into(),
            ))),
        }
    }
}

/// Writes batches as they are handed over and matches answers to them in order, until the
/// handle is dropped or the connection ends; batches still unanswered then get the error.
async fn run(io: reqwest::Upgraded, mut calls: mpsc::UnboundedReceiver<Call>, addr: String) {
    let (read, write) = tokio::io::split(io);
    let mut answers = FramedRead::new(read, frame_codec());
    let mut requests = FramedWrite::new(write, frame_codec());
    let mut waiting = VecDeque::new();
    let failure = loop {
        tokio::select! {
            call = calls.recv() => {
                let Some(Call { frame, answer }) = call else {
                    break "closed by this node".to_string();
                };
                waiting.push_back(answer);
                if let Err(e) = requests.send(frame).await {
                    break format!("sending a batch: {e}");
                }
            }
            // Read while idle too, so that a leader closing the stream is seen before the
            // next batch is written into it.
            frame = answers.next() => match frame {
                Some(Ok(frame)) => {
                    let reply = serde_json::from_slice::<wire::ForwardedWritesReply>(&frame)
                        .map_err(|e| format!("an unreadable answer: {e}"));
                    let Some(answer) = waiting.pop_front() else {
                        break "an answer to no batch".to_string();
                    };
                    match reply {
                        Ok(reply) => {
                            let _ = answer.send(Ok(reply));
                        }
                        Err(e) => {
                            waiting.push_front(answer);
                            break e;
                        }
                    }
                }
                Some(Err(e)) => break e.to_string(),
                None => break "the leader closed the stream".to_string(),
            },
        }
    };
    // Closed first, so no batch is handed to this stream after the failure is decided.
    calls.close();
    while let Ok(Call { answer, .. }) = calls.try_recv() {
        waiting.push_back(answer);
    }
    if !waiting.is_empty() {
        tracing::debug!(leader = %addr, error = %failure, unanswered = waiting.len(), "a forward stream ended");
    }
    for answer in waiting {
        let _ = answer.send(Err(PeerError::Unreachable(addr.clone(), failure.clone())));
    }
}

/// The leader's end: takes over an upgraded connection, on the Raft thread, so forwarded
/// writes reach Raft and their answers leave without a thread hand-off.
///
/// `propose` proposes a batch and answers each write (or refuses the batch, once the node is
/// stopping: batches in flight still get their answers).
pub async fn accept<P, Answers>(
    raft_runtime: tokio::runtime::Handle,
    upgrade: hyper::upgrade::OnUpgrade,
    propose: P,
) where
    P: Fn(Vec<Command>) -> Answers + Send + 'static,
    Answers: Future<Output = wire::ForwardedWritesReply> + Send + 'static,
{
    crate::raft::upgrade::serve_on_raft_thread(
        raft_runtime,
        upgrade,
        "a forward stream",
        |conn, ahead| serve(propose, conn, ahead),
    )
    .await;
}

/// Proposes each batch as it arrives and writes the answers back in order, until the follower
/// closes the stream (answers still due are written first) or a frame is unreadable.
async fn serve<P, Answers>(propose: P, conn: Conn, read_ahead: Bytes)
where
    P: Fn(Vec<Command>) -> Answers,
    Answers: Future<Output = wire::ForwardedWritesReply>,
{
    let (read, write) = conn.split();
    let mut batches = FramedRead::new(read, frame_codec());
    batches.read_buffer_mut().extend_from_slice(&read_ahead);
    let mut answers = FramedWrite::new(write, frame_codec());
    let mut proposed = FuturesOrdered::new();
    let mut follower_done = false;
    loop {
        tokio::select! {
            frame = batches.next(), if !follower_done => match frame {
                Some(Ok(frame)) => match decode(&frame) {
                    Ok(writes) => proposed.push_back(propose(writes.commands)),
                    Err(e) => {
                        tracing::warn!(error = %e, "closing a forward stream");
                        return;
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "a forward stream failed");
                    return;
                }
                None => follower_done = true,
            },
            Some(reply) = proposed.next(), if !proposed.is_empty() => {
                let frame = serde_json::to_vec(&reply).expect("answers serialize");
                if answers.send(Bytes::from(frame)).await.is_err() {
                    return;
                }
            }
        }
        if follower_done && proposed.is_empty() {
            return;
        }
    }
}

pub(crate) fn decode(frame: &[u8]) -> Result<wire::ForwardedWrites, String> {
    let writes = serde_json::from_slice::<wire::ForwardedWrites>(frame)
        .map_err(|e| format!("an unreadable batch: {e}"))?;
    if writes.commands.len() > super::MAX_BATCH {
        return Err(format!(
            "{} forwarded writes in one batch; at most {}",
            writes.commands.len(),
            super::MAX_BATCH
        ));
    }
    Ok(writes)
}
