//! Raft RPCs between nodes, over the same HTTP port as the API (`/api/v1/raft/*`),
//! authenticated with the admin key and stamped with the cluster UUID.

use std::future::Future;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use concordance_client::ErrorBody;
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

use super::Member;
use super::TypeConfig;
use super::Vote;
use super::log_id_to_record;
use super::stored_membership_to_record;
use super::stream;
use super::stream::AppendStream;
use super::vote_to_record;
use super::wire;
use super::wire::PeerMessage;
use crate::store::snapshot::Snapshot;
use crate::store::snapshot::SnapshotFile;

/// What every outgoing peer request needs: an HTTP client, the admin key, the cluster UUID.
#[derive(Clone)]
pub struct PeerContext {
    pub http: reqwest::Client,
    key: Option<String>,
    cluster: Arc<RwLock<String>>,
    self_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("{0} answered {1}: {2}")]
    Refused(String, u16, String),
    #[error("{0} answered {1}: {2}: {3}")]
    Api(String, u16, String, String),
}

impl PeerError {
    pub fn code(&self) -> Option<&str> {
        match self {
            PeerError::Api(_, _, code, _) => Some(code),
            _ => None,
        }
    }
}

impl PeerContext {
    pub fn new(key: Option<String>, cluster: Option<String>, self_id: u64) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client builds");
        Self {
            http,
            key,
            cluster: Arc::new(RwLock::new(cluster.unwrap_or_default())),
            self_id,
        }
    }

    pub fn set_cluster(&self, uuid: &str) {
        *self.cluster.write().expect("not poisoned") = uuid.to_string();
    }

    pub fn cluster(&self) -> String {
        self.cluster.read().expect("not poisoned").clone()
    }

    pub fn envelope<T>(&self, body: T) -> PeerMessage<T> {
        PeerMessage {
            protocol: wire::PROTOCOL_VERSION,
            cluster: self.cluster(),
            from: self.self_id,
            body,
        }
    }

    pub(super) fn request(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let rb = self
            .http
            .request(method, format!("http://{addr}/api/v1/{path}"));
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    /// POSTs a JSON message to a peer and decodes its JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let resp = self
            .request(reqwest::Method::POST, addr, path)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| PeerError::Unreachable(addr.into(), e.to_string()))?;
        decode(addr, resp).await
    }
}

pub(super) async fn decode<T: DeserializeOwned>(
    addr: &str,
    resp: reqwest::Response,
) -> Result<T, PeerError> {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| PeerError::Unreachable(addr.into(), e.to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| {
            PeerError::Refused(
                addr.into(),
                status.as_u16(),
                format!("undecodable answer: {e}"),
            )
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => Err(PeerError::Api(
            addr.into(),
            status.as_u16(),
            b.error.code,
            b.error.message,
        )),
        Err(_) => Err(PeerError::Refused(
            addr.into(),
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )),
    }
}

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

pub(super) fn rpc_error<E: std::error::Error>(e: PeerError) -> RPCError<TypeConfig, E> {
    match e {
        PeerError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
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
            let file = tokio::fs::File::open(&snapshot.snapshot.path)
                .await
                .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
            let header = serde_json::to_vec(&header).expect("serializes");
            // Body: [header length u32 LE][header JSON][snapshot file bytes].
            let mut prefix = (header.len() as u32).to_le_bytes().to_vec();
            prefix.extend_from_slice(&header);
            let head = futures::stream::once(async move {
                Ok::<_, std::io::Error>(bytes::Bytes::from(prefix))
            });
            let body = futures::StreamExt::chain(
                head,
                tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
            );
            let mut rb = self
                .ctx
                .http
                .post(format!("http://{addr}/api/v1/raft/snapshot"))
                .timeout(option.hard_ttl().max(Duration::from_secs(600)))
                .body(reqwest::Body::wrap_stream(body));
            if let Some(k) = &self.ctx.key {
                rb = rb.bearer_auth(k);
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
            let reply: wire::SnapshotReply = decode(&addr, resp)
                .await
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            Ok(SnapshotResponse::new(super::vote_from_record(&reply.vote)))
        };
        tokio::select! {
            r = send => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
