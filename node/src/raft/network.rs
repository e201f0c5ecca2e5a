//! Raft RPCs between nodes, over the same HTTP port as the API (`/api/v1/raft/*`),
//! authenticated with the admin key and stamped with the cluster UUID.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use futures::Stream;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::network::stream_append_sequential;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::PeerContext;
use super::client::PeerError;
use super::client::rpc_error;
use super::stream;
use super::stream::AppendStream;
use super::wire;
use crate::store::records::Member;
use crate::store::snapshot::Snapshot;
use crate::store::snapshot::SnapshotFile;
use crate::store::types::TypeConfig;
use crate::store::types::Vote;
use crate::store::types::log_id_to_record;
use crate::store::types::stored_membership_to_record;
use crate::store::types::vote_to_record;

/// Creates a connection per peer.
#[derive(Clone)]
pub struct Network {
    pub ctx: PeerContext,
}

pub struct PeerConnection {
    ctx: PeerContext,
    member: Member,
    /// The append stream the last session left open, for the next one. Only ever reached
    /// through `&mut self` (`get_mut`, no locking): the mutex makes the connection `Sync`,
    /// which an upgraded HTTP connection is not.
    stream: std::sync::Mutex<Option<AppendStream>>,
    /// When the peer last refused an append stream (an older binary).
    stream_refused: Option<Instant>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, _target: u64, node: &Member) -> PeerConnection {
        PeerConnection {
            ctx: self.ctx.clone(),
            member: node.clone(),
            stream: Default::default(),
            stream_refused: None,
        }
    }
}

/// The longest a follower may take to store and acknowledge one append request.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

impl PeerConnection {
    fn kept_stream(&mut self) -> &mut Option<AppendStream> {
        self.stream.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: B,
        option: &RPCOption,
    ) -> Result<T, PeerError> {
        let msg = self.ctx.envelope(body);
        self.ctx
            .post(&self.member.addr, path, &msg, option.hard_ttl())
            .await
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotFile;

    /// Replication and heartbeats: over an append stream (`raft/stream.rs`), kept open
    /// between sessions; single requests to a peer that refuses streams.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, stream::Answer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let stream = match self.kept_stream().take() {
                Some(stream) => stream,
                None if self
                    .stream_refused
                    .is_some_and(|at| at.elapsed() < super::upgrade::REFUSED_RETRY) =>
                {
                    return stream_append_sequential(self, input, option).await;
                }
                None => match stream::open(&self.ctx, &self.member.addr).await {
                    Ok(stream) => {
                        self.stream_refused = None;
                        stream
                    }
                    Err(stream::OpenError::Unsupported) => {
                        tracing::info!(
                            peer = %self.member.name,
                            "the peer does not take append streams (an older binary): sending single appends"
                        );
                        self.stream_refused = Some(Instant::now());
                        return stream_append_sequential(self, input, option).await;
                    }
                    Err(stream::OpenError::Peer(e)) => return Err(rpc_error(e)),
                },
            };
            let addr = self.member.addr.clone();
            Ok(stream::session(stream, input, self.kept_stream(), addr))
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft bounds a replication request by the heartbeat interval (100 ms). A batch of
        // large values, fsynced by a follower whose disk is busy, takes longer than that: cut
        // off, it was sent again and again, replication stalled and followers called elections
        // (9 leader changes while writing 1 GiB of 64 KiB values). Heartbeats keep their own
        // bound (openraft's, around this call).
        let option = RPCOption::new(option.hard_ttl().max(APPEND_TIMEOUT));
        let r: wire::AppendResponse = self
            .call("raft/append", wire::AppendRequest::from_raft(&rpc), &option)
            .await
            .map_err(rpc_error)?;
        Ok(r.into_raft())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r: wire::VoteResponse = self
            .call("raft/vote", wire::VoteRequest::from_raft(&rpc), &option)
            .await
            .map_err(rpc_error)?;
        Ok(r.into_raft())
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r: wire::VoteResponse = self
            .call("raft/pre-vote", wire::VoteRequest::from_raft(&rpc), &option)
            .await
            .map_err(rpc_error)?;
        Ok(r.into_raft())
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let accepted: Result<(), String> = self
            .call(
                "raft/transfer-leader",
                wire::TransferLeaderRequest::from_raft(&req),
                &option,
            )
            .await
            .map_err(rpc_error)?;
        // The receiver's refusal reasons are diagnostics; retrying is the leader's call.
        accepted.map_err(|e| RPCError::Network(NetworkError::from_string(e)))?;
        Ok(Ok(()))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = self.ctx.envelope(wire::SnapshotHeader {
            vote: vote_to_record(&vote),
            last_log_id: snapshot.meta.last_log_id.as_ref().map(log_id_to_record),
            membership: stored_membership_to_record(&snapshot.meta.last_membership),
        });
        let addr = self.member.addr.clone();
        let send = async {
            let data = snapshot_body(snapshot.snapshot);
            // Body: [header length u32 LE][header JSON][snapshot file bytes].
            let prefix = wire::snapshot_upload_head(&header);
            let head = futures::stream::once(async move {
                Ok::<_, std::io::Error>(bytes::Bytes::from(prefix))
            });
            let body = futures::StreamExt::chain(head, data);
            let resp = self
                .ctx
                .request(reqwest::Method::POST, &addr, "raft/snapshot")
                .timeout(option.hard_ttl().max(Duration::from_secs(600)))
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
            let reply: wire::SnapshotReply = super::client::decode(&addr, resp)
                .await
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            Ok(SnapshotResponse::new(
                crate::store::types::vote_from_record(&reply.vote),
            ))
        };
        tokio::select! {
            r = send => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

/// The bytes of a snapshot in the file format, written on a blocking thread (from a checkpoint
/// it reads the whole state) and handed over a small channel: the follower's pace bounds the
/// memory.
fn snapshot_body(
    data: SnapshotFile,
) -> futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter(tx.clone()));
        if let Err(e) = data.write_to(out) {
            // Ends the body with an error: the follower never takes a cut-short snapshot.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }).boxed()
}

/// Hands written bytes to an async body; fails once the body is dropped (the send ended).
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the send ended"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
