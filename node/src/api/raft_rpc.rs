//! The serving side of the peer protocol (`/api/v1/raft/*`): Raft RPCs, append and forward
//! streams, forwarded writes and read-index requests. All need the admin key and a message from
//! this cluster in a protocol this binary speaks. The calling side is `raft/client.rs`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use concordance_client::ErrorCode;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use super::JsonBody;
use super::body::QueryParams;
use crate::error::NodeError;
use crate::raft::stream::UPGRADE_PROTOCOL;
use crate::raft::wire;
use crate::raft::wire::PeerMessage;
use crate::service::SharedNode;
use crate::store::records::Command;
use crate::store::records::Response;
use crate::store::snapshot::SnapshotFile;

fn check<T>(node: &SharedNode, msg: &PeerMessage<T>) -> Result<(), ApiError> {
    if msg.protocol > wire::PROTOCOL_VERSION {
        return Err(ApiError::new(
            ErrorCode::ProtocolUnsupported,
            format!(
                "peer protocol {} is newer than this node's {}; upgrade this node",
                msg.protocol,
                wire::PROTOCOL_VERSION
            ),
        ));
    }
    let ours = node.peers.cluster();
    if ours.is_empty() || msg.cluster != ours {
        return Err(ApiError::new(
            ErrorCode::ClusterMismatch,
            format!(
                "message from cluster {:?}, this node is in cluster {ours:?}",
                msg.cluster
            ),
        ));
    }
    Ok(())
}

fn fatal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::RaftStopped, e.to_string())
}

async fn rpc<Req, Resp, F, Fut>(
    node: SharedNode,
    msg: PeerMessage<Req>,
    f: F,
) -> Result<Json<Resp>, ApiError>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(SharedNode, Req) -> Fut,
    Fut: Future<Output = Result<Resp, ApiError>>,
{
    check(&node, &msg)?;
    f(node, msg.body).await.map(Json)
}

pub async fn append(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::AppendRequest>>,
) -> Result<Json<wire::AppendResponse>, ApiError> {
    rpc(node, msg, |node, req| async move {
        let req = req
            .into_raft()
            .map_err(|e| ApiError::new(ErrorCode::InvalidEntry, e.to_string()))?;
        let last_sent = req
            .entries
            .last()
            .map(|e| e.log_id.index)
            .or(req.prev_log_id.as_ref().map(|l| l.index));
        let holds_commit = req.leader_commit.as_ref().map(|c| c.index) <= last_sent;
        let r = node.raft.append_entries(req).await.map_err(fatal)?;
        if matches!(
            r,
            openraft::raft::AppendEntriesResponse::Success
                | openraft::raft::AppendEntriesResponse::PartialSuccess(_)
        ) {
            let all_accepted = matches!(r, openraft::raft::AppendEntriesResponse::Success);
            node.leader_contact.record(holds_commit && all_accepted);
        }
        Ok(wire::AppendResponse::from_raft(&r))
    })
    .await
}

/// Who opens a stream: the query of `GET /api/v1/raft/stream` and `GET /api/v1/raft/forward`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHello {
    protocol: u32,
    cluster: String,
    from: u64,
}

/// Upgrades the connection to an append stream (`raft/stream.rs`).
pub async fn stream(
    State(node): State<SharedNode>,
    QueryParams(hello): QueryParams<StreamHello>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let upgrade = switching(&node, hello, request, UPGRADE_PROTOCOL)?;
    let follower = crate::raft::stream::Follower {
        raft: node.raft.clone(),
        raft_runtime: node.raft_runtime.clone(),
        contact: node.leader_contact.clone(),
        stopping: node.stopping.clone(),
    };
    tokio::spawn(crate::raft::stream::accept(follower, upgrade));
    switched(UPGRADE_PROTOCOL)
}

/// Upgrades the connection to a forward stream (`forward/stream.rs`).
pub async fn forward_stream(
    State(node): State<SharedNode>,
    QueryParams(hello): QueryParams<StreamHello>,
    request: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let protocol = crate::forward::stream::UPGRADE_PROTOCOL;
    let upgrade = switching(&node, hello, request, protocol)?;
    let raft_runtime = node.raft_runtime.clone();
    // Once the node is stopping, batches in flight still get their answers and new ones are
    // refused (`shutting_down`: not applied), as HTTP requests are while a node drains.
    let propose = move |commands: Vec<Command>| {
        let node = node.clone();
        let refused = node.stopping.is_cancelled();
        async move {
            if refused {
                let stopping = NodeError::ShuttingDown("the leader is stopping".into());
                return forwarded_reply(commands.iter().map(|_| Err(stopping.clone())).collect());
            }
            forwarded_reply(node.propose_forwarded(commands).await)
        }
    };
    tokio::spawn(crate::forward::stream::accept(
        raft_runtime,
        upgrade,
        propose,
    ));
    switched(protocol)
}

/// The leader's answers to forwarded writes, each as the follower's client is to see it.
fn forwarded_reply(results: Vec<Result<Response, NodeError>>) -> wire::ForwardedWritesReply {
    let result = |r: Result<Response, NodeError>| match r {
        Ok(response) => wire::ForwardedResult::Applied { response },
        Err(e) => {
            let e = ApiError::from(e);
            wire::ForwardedResult::Failed {
                status: e.status.as_u16(),
                error: e.detail,
            }
        }
    };
    wire::ForwardedWritesReply {
        results: results.into_iter().map(result).collect(),
    }
}

/// Checks who asks and that they ask to upgrade to `protocol`; the connection to take over
/// once the `101` answer is sent.
fn switching(
    node: &SharedNode,
    hello: StreamHello,
    mut request: axum::extract::Request,
    protocol: &str,
) -> Result<hyper::upgrade::OnUpgrade, ApiError> {
    check(
        node,
        &PeerMessage {
            protocol: hello.protocol,
            cluster: hello.cluster,
            from: hello.from,
            body: (),
        },
    )?;
    let asks_for_it = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes() == protocol.as_bytes());
    let upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>();
    match (asks_for_it, upgrade) {
        (true, Some(upgrade)) => Ok(upgrade),
        _ => Err(ApiError::new(
            ErrorCode::UpgradeRequired,
            format!("send Connection: upgrade and Upgrade: {protocol}"),
        )),
    }
}

fn switched(protocol: &str) -> Result<axum::response::Response, ApiError> {
    axum::response::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, protocol)
        .header(
            wire::CAPABILITIES_HEADER,
            wire::Capabilities::THIS.header_value(),
        )
        .body(Body::empty())
        .map_err(ApiError::internal)
}

pub async fn vote(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::VoteRequest>>,
) -> Result<Json<wire::VoteResponse>, ApiError> {
    rpc(node, msg, |node, req| async move {
        let r = node.raft.vote(req.into_raft()).await.map_err(fatal)?;
        Ok(wire::VoteResponse::from_raft(&r))
    })
    .await
}

pub async fn pre_vote(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::VoteRequest>>,
) -> Result<Json<wire::VoteResponse>, ApiError> {
    rpc(node, msg, |node, req| async move {
        let r = node.raft.pre_vote(req.into_raft()).await.map_err(fatal)?;
        Ok(wire::VoteResponse::from_raft(&r))
    })
    .await
}

pub async fn transfer_leader(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::TransferLeaderRequest>>,
) -> Result<Json<Result<(), String>>, ApiError> {
    rpc(node, msg, |node, req| async move {
        let r = node
            .raft
            .handle_transfer_leader(req.into_raft())
            .await
            .map_err(fatal)?;
        Ok(r.map_err(|e| e.to_string()))
    })
    .await
}

/// One forwarded write. Kept for followers of the previous version, which send a lone write
/// here when they have no forward stream; this version sends `raft/write-batch` only.
pub async fn write(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::ForwardedWrite>>,
) -> Result<Json<wire::ForwardedWriteReply>, ApiError> {
    rpc(node, msg, |node, req| async move {
        let response = node.propose_local(req.command).await?;
        Ok(wire::ForwardedWriteReply { response })
    })
    .await
}

pub async fn write_batch(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::ForwardedWrites>>,
) -> Result<Json<wire::ForwardedWritesReply>, ApiError> {
    rpc(node, msg, |node, req| async move {
        if req.commands.len() > crate::forward::MAX_BATCH {
            return Err(ApiError::new(
                ErrorCode::BatchTooLarge,
                format!(
                    "{} forwarded writes in one batch; at most {}",
                    req.commands.len(),
                    crate::forward::MAX_BATCH
                ),
            ));
        }
        Ok(forwarded_reply(node.propose_forwarded(req.commands).await))
    })
    .await
}

pub async fn read_index(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<()>>,
) -> Result<Json<wire::ReadIndexReply>, ApiError> {
    rpc(node, msg, |node, ()| async move {
        let index = node.read_index_local().await?;
        let m = crate::raft::metrics_of(&node.raft);
        let term = m.current_term;
        Ok(wire::ReadIndexReply {
            read_log_id: crate::store::records::LogIdRecord {
                term,
                leader: m.id,
                index,
            },
        })
    })
    .await
}

/// A follower's lease question (keep-alive, time left), answered on the leader's clock.
pub async fn lease(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::LeaseRequest>>,
) -> Result<Json<wire::LeaseReply>, ApiError> {
    rpc(node, msg, |node, req| async move {
        Ok(node.answer_about_leases_local(req).await?)
    })
    .await
}

/// Receives a whole snapshot: `[header length u32 LE][header JSON][snapshot file]`, written
/// to a file, verified end to end, then installed.
pub async fn snapshot(
    State(node): State<SharedNode>,
    body: Body,
) -> Result<Json<wire::SnapshotReply>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut head = Vec::new();
    let dir = node.store.dir().join("snapshots");
    let tmp = dir.join(format!("incoming-{}.part", uuid::Uuid::new_v4()));
    let mut file: Option<tokio::fs::File> = None;
    let mut header: Option<PeerMessage<wire::SnapshotHeader>> = None;
    let io = |e: std::io::Error| ApiError::storage(format!("writing a received snapshot: {e}"));
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(ErrorCode::SnapshotInterrupted, e.to_string()))?;
        let mut data: &[u8] = &chunk;
        if header.is_none() {
            head.extend_from_slice(data);
            data = &[];
            if let Some((h, used)) = wire::snapshot_upload_header(&head)
                .map_err(|e| ApiError::new(ErrorCode::InvalidSnapshot, e))?
            {
                check(&node, &h)?;
                header = Some(h);
                let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
                f.write_all(&head[used..]).await.map_err(io)?;
                file = Some(f);
            }
        }
        if let Some(f) = file.as_mut()
            && !data.is_empty()
        {
            f.write_all(data).await.map_err(io)?;
        }
    }
    let (Some(header), Some(f)) = (header, file) else {
        return Err(ApiError::new(
            ErrorCode::InvalidSnapshot,
            "the snapshot body ended before its header",
        ));
    };
    f.sync_all().await.map_err(io)?;
    drop(f);
    let result = install(&node, header.body, tmp.clone()).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    result
}

async fn install(
    node: &SharedNode,
    h: wire::SnapshotHeader,
    path: std::path::PathBuf,
) -> Result<Json<wire::SnapshotReply>, ApiError> {
    let verify_path = path.clone();
    tokio::task::spawn_blocking(move || crate::store::snapshot::verify(&verify_path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::new(ErrorCode::InvalidSnapshot, e.to_string()))?;
    let meta = crate::store::types::SnapshotMeta {
        last_log_id: h
            .last_log_id
            .as_ref()
            .map(crate::store::types::log_id_from_record),
        last_membership: crate::store::types::stored_membership_from_record(&h.membership)
            .map_err(|e| ApiError::new(ErrorCode::InvalidSnapshot, e.to_string()))?,
    };
    let snapshot = crate::store::snapshot::Snapshot {
        meta,
        snapshot: SnapshotFile::received(path),
    };
    let r = node
        .raft
        .install_full_snapshot(crate::store::types::vote_from_record(&h.vote), snapshot)
        .await
        .map_err(fatal)?;
    node.leader_contact.record(false);
    Ok(Json(wire::SnapshotReply {
        vote: crate::store::types::vote_to_record(&r.vote),
    }))
}

/// The leader asks for this member's state hash at a `CheckState` entry (`crate::integrity`).
pub async fn state_hash(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<wire::StateHashRequest>>,
) -> Result<Json<wire::StateHashReply>, ApiError> {
    rpc(node, msg, |node, req| async move {
        Ok(crate::integrity::own_hash(&node, req.index))
    })
    .await
}

/// A member that has just started asks the leader to check the replicas' state now.
pub async fn check_state(
    State(node): State<SharedNode>,
    JsonBody(msg): JsonBody<PeerMessage<()>>,
) -> Result<Json<wire::StateCheckReply>, ApiError> {
    rpc(node, msg, |node, ()| async move {
        Ok(crate::integrity::check(&node).await?)
    })
    .await
}
