//! Probes, cluster status, metrics and operations on the cluster.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use concordance_client::AlarmsResponse;
use concordance_client::ClusterStatus;
use concordance_client::CompactRequest;
use concordance_client::CompactResponse;
use concordance_client::DisarmRequest;
use concordance_client::ErrorCode;
use concordance_client::HealthResponse;
use concordance_client::ReadyResponse;

use super::ApiError;
use super::JsonBody;
use crate::error::NodeError;
use crate::membership::JoinRequest;
use crate::membership::MembershipReply;
use crate::membership::RemoveRequest;
use crate::membership::TransferReply;
use crate::membership::TransferRequest;
use crate::service::SharedNode;

/// Liveness: the process answers and its storage can be read.
pub async fn health(State(node): State<SharedNode>) -> Result<Json<HealthResponse>, ApiError> {
    node.store.identity().map_err(|e| {
        ApiError::with_status(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StorageError,
            format!("storage is not readable: {e}"),
        )
    })?;
    if let Err(e) = &crate::raft::metrics_of(&node.raft).running_state {
        return Err(ApiError::new(
            ErrorCode::RaftStopped,
            format!("raft has stopped: {e}"),
        ));
    }
    Ok(Json(HealthResponse {
        status: "ok".into(),
        node_id: node.identity.name.clone(),
    }))
}

pub async fn ready(State(node): State<SharedNode>) -> (StatusCode, Json<ReadyResponse>) {
    match node.ready() {
        Ok(()) => (
            StatusCode::OK,
            Json(ReadyResponse {
                ready: true,
                reason: None,
            }),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ReadyResponse {
                ready: false,
                reason: Some(reason),
            }),
        ),
    }
}

pub async fn status(State(node): State<SharedNode>) -> Json<ClusterStatus> {
    Json(node.status())
}

/// The command sets this binary supports and the cluster has enabled (see `features`).
pub async fn version(State(node): State<SharedNode>) -> Json<concordance_client::VersionInfo> {
    Json(crate::features::version_info(
        &node.identity.name,
        &node.reader,
    ))
}

pub async fn metrics(State(node): State<SharedNode>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.render_metrics(),
    )
}

/// Takes a snapshot now (and so compacts the log).
pub async fn snapshot(State(node): State<SharedNode>) -> Result<Json<serde_json::Value>, ApiError> {
    node.raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(serde_json::json!({"triggered": true})))
}

/// Runs a membership operation here if this node leads, else on the leader.
async fn on_leader<B, T, F, Fut>(
    node: &SharedNode,
    path: &str,
    body: B,
    op: F,
) -> Result<Json<T>, ApiError>
where
    B: serde::Serialize,
    T: serde::de::DeserializeOwned,
    F: FnOnce(B) -> Fut,
    Fut: Future<Output = Result<T, NodeError>>,
{
    let leader = crate::raft::metrics_of(&node.raft).current_leader;
    if leader == Some(node.identity.raft_id) {
        return Ok(Json(op(body).await?));
    }
    let not_leader = node.not_leader_error(leader);
    Ok(Json(node.forward_to_leader(path, &body, not_leader).await?))
}

pub async fn join(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> Result<Json<MembershipReply>, ApiError> {
    on_leader(&node, "cluster/join", req, |req| node.join(req)).await
}

pub async fn remove(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<RemoveRequest>,
) -> Result<Json<MembershipReply>, ApiError> {
    on_leader(&node, "cluster/remove", req, |req| node.remove(req)).await
}

/// The body is optional: no body (or `{}`) picks the most caught-up voter that is answering.
pub async fn transfer_leader(
    State(node): State<SharedNode>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<TransferReply>, ApiError> {
    // The body is optional here, so not `JsonBody`; its rejection still gets our error body.
    let body = body.map_err(|e| {
        ApiError::with_status(
            e.status(),
            ErrorCode::BodyTooLarge,
            format!("request body is over the limit or unreadable: {e}"),
        )
    })?;
    let req: TransferRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TransferRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidBody,
                format!("request body is not valid: {e}"),
            )
        })?
    };
    on_leader(&node, "cluster/transfer-leader", req, |req| {
        node.transfer_leader(req, std::time::Duration::from_secs(10))
    })
    .await
}

/// A consistent online backup: the state machine as of one applied index, as a
/// self-checking file that `concordance restore` turns into a new data dir.
pub async fn backup(State(node): State<SharedNode>) -> Result<impl IntoResponse, ApiError> {
    // A fenced member's state differs from the cluster's: no backup of it.
    node.check_not_fenced()?;
    // Include every write acknowledged before the request, even when served by a follower.
    node.read_barrier(concordance_client::Consistency::Linearizable)
        .await?;
    // Sent as it is read from one RocksDB snapshot: nothing is staged on the data disk, so
    // a backup needs no free space there (and a member short of space can still be backed
    // up). Its size is not known up front: the file's trailing checksum shows a cut-off
    // download to `restore`.
    let (chunks, mut body_chunks) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let (covers, covered) = tokio::sync::oneshot::channel();
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || {
        let out = std::io::BufWriter::with_capacity(
            1 << 20,
            ChannelWriter {
                chunks: chunks.clone(),
            },
        );
        let written = crate::store::snapshot::stream(&store, out, |_, applied| {
            let _ = covers.send(applied.revision);
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "a backup was cut short");
            let _ = chunks.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let revision = match covered.await {
        Ok(revision) => revision,
        Err(_) => {
            let why = match body_chunks.recv().await {
                Some(Err(e)) => e.to_string(),
                _ => "the backup's reader stopped".to_string(),
            };
            return Err(ApiError::storage(why));
        }
    };
    let body =
        axum::body::Body::from_stream(futures::stream::unfold(body_chunks, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }));
    let name = format!("attachment; filename=\"concordance-backup-rev{revision}.snap\"");
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream".to_string()),
            (axum::http::header::CONTENT_DISPOSITION, name),
            (
                axum::http::HeaderName::from_static("x-concordance-revision"),
                revision.to_string(),
            ),
        ],
        body,
    ))
}

/// The alarms raised in the cluster (as this member has applied them).
pub async fn alarms(State(node): State<SharedNode>) -> Json<AlarmsResponse> {
    Json(AlarmsResponse {
        alarms: node.alarms(),
    })
}

/// Ends `no_space` alarms whose members are back under their bounds; the alarms left.
pub async fn disarm(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<DisarmRequest>,
) -> Result<Json<AlarmsResponse>, ApiError> {
    Ok(Json(node.disarm(req).await?))
}

/// Forgets the change history below a revision on every member.
pub async fn compact(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<CompactRequest>,
) -> Result<Json<CompactResponse>, ApiError> {
    Ok(Json(node.compact(req).await?))
}

/// Hands what a backup's writer writes to the response body, a chunk at a time; fails once
/// the client went away (the body, and so the receiver, dropped).
struct ChannelWriter {
    chunks: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.chunks
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
