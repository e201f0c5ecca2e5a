//! Locks and elections over HTTP: parses the request, runs the queue ([`crate::locks`]) and
//! maps its outcome to an answer.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use concordance_client::CampaignRequest;
use concordance_client::CampaignResponse;
use concordance_client::Consistency;
use concordance_client::ElectionLeader;
use concordance_client::ElectionLeaderResponse;
use concordance_client::ErrorCode;
use concordance_client::LockRequest;
use concordance_client::LockResponse;
use concordance_client::ResignRequest;
use concordance_client::ResignResponse;
use concordance_client::UnlockRequest;
use concordance_client::UnlockResponse;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use super::JsonBody;
use super::body::QueryParams;
use super::lease::Use;
use super::lease::may_use_lease;
use super::validate;
use crate::auth::Action;
use crate::auth::Caller;
use crate::locks::Kind;
use crate::locks::Member;
use crate::locks::QueueError;
use crate::locks::queue_key;
use crate::locks::queue_prefix;
use crate::service::SharedNode;

/// The answer to a candidate that did not come first.
fn refused(kind: Kind, name: &str, timeout: Duration, e: QueueError) -> ApiError {
    let what = match kind {
        Kind::Lock => "lock",
        Kind::Election => "election",
    };
    let timed_out = match kind {
        Kind::Lock => ErrorCode::LockTimeout,
        Kind::Election => ErrorCode::ElectionTimeout,
    };
    match e {
        // Only a lock is tried without waiting: a campaign waits for its turn.
        QueueError::Held { token } => ApiError::new(
            match kind {
                Kind::Lock => ErrorCode::LockHeld,
                Kind::Election => timed_out,
            },
            format!("{what} {name:?} is held (fencing token {token})"),
        ),
        QueueError::TimedOut { last } => ApiError::new(
            timed_out,
            format!(
                "{what} {name:?} was not obtained within {} ms{}",
                timeout.as_millis(),
                last.map(|e| format!(" (last error: {})", ApiError::from(e)))
                    .unwrap_or_default()
            ),
        ),
        QueueError::Lost => ApiError::new(
            ErrorCode::LockLost,
            "this lease's place in the queue was deleted (released or resigned) while waiting",
        ),
        QueueError::LeaseNotFound { lease } => ApiError::new(
            ErrorCode::LeaseNotFound,
            format!("lease {lease} does not exist or has expired"),
        ),
        QueueError::ShuttingDown => ApiError::new(
            ErrorCode::ShuttingDown,
            "this node is stopping; retry on another member (the place in the queue is kept)",
        ),
        QueueError::Node(e) => e.into(),
    }
}

/// Checks a candidate's name and lease, and that its queue key is a valid key.
fn candidate(kind: Kind, name: &str, lease: u64) -> Result<(), ApiError> {
    validate::name(name)?;
    validate::lease_id(&lease.to_string())?;
    validate::key(&queue_key(kind, name, lease))
}

/// `POST /api/v1/lock/acquire`
pub async fn acquire(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<LockRequest>,
) -> Result<Json<LockResponse>, ApiError> {
    let timeout = validate::wait(req.timeout_ms)?;
    candidate(Kind::Lock, &req.name, req.lease)?;
    caller.may_use_name(Action::Write, "lock", &req.name)?;
    may_use_lease(&node, &caller, req.lease, Use::Hold).await?;
    let holder = node
        .join_queue(
            Kind::Lock,
            &req.name,
            req.lease,
            Value::Null,
            req.wait,
            timeout,
        )
        .await
        .map_err(|e| refused(Kind::Lock, &req.name, timeout, e))?;
    Ok(Json(LockResponse {
        name: req.name,
        key: holder.key,
        fencing_token: holder.revision,
        lease: req.lease,
    }))
}

/// `POST /api/v1/lock/release`
pub async fn release(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<UnlockRequest>,
) -> Result<Json<UnlockResponse>, ApiError> {
    validate::name(&req.name)?;
    caller.may_use_name(Action::Write, "lock", &req.name)?;
    may_use_lease(&node, &caller, req.lease, Use::Hold).await?;
    validate::lease_id(&req.lease.to_string())?;
    let (released, revision) = node.quit_queue(Kind::Lock, &req.name, req.lease).await?;
    Ok(Json(UnlockResponse { released, revision }))
}

fn leader_of(m: Member) -> ElectionLeader {
    ElectionLeader {
        key: m.key,
        value: m.value,
        lease: m.lease,
        revision: m.revision,
    }
}

/// `POST /api/v1/election/campaign`
pub async fn campaign(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CampaignRequest>,
) -> Result<Json<CampaignResponse>, ApiError> {
    let timeout = validate::wait(req.timeout_ms)?;
    validate::value(&req.value)?;
    candidate(Kind::Election, &req.name, req.lease)?;
    caller.may_use_name(Action::Write, "election", &req.name)?;
    may_use_lease(&node, &caller, req.lease, Use::Hold).await?;
    let leader = node
        .join_queue(
            Kind::Election,
            &req.name,
            req.lease,
            req.value,
            true,
            timeout,
        )
        .await
        .map_err(|e| refused(Kind::Election, &req.name, timeout, e))?;
    Ok(Json(CampaignResponse {
        name: req.name,
        leader: leader_of(leader),
    }))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderParams {
    /// The election's name.
    pub name: String,
    /// `linearizable` (default) or `serializable`.
    #[serde(default)]
    pub consistency: Consistency,
}

/// `GET /api/v1/election/leader?name=`
pub async fn leader(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    QueryParams(params): QueryParams<LeaderParams>,
) -> Result<Json<ElectionLeaderResponse>, ApiError> {
    validate::name(&params.name)?;
    caller.may_use_name(Action::Read, "election", &params.name)?;
    let queue = node
        .queue(Kind::Election, &params.name, params.consistency)
        .await?;
    let revision = node.reader.revision();
    Ok(Json(ElectionLeaderResponse {
        watch_prefix: queue_prefix(Kind::Election, &params.name),
        name: params.name,
        leader: queue.into_iter().next().map(leader_of),
        revision,
    }))
}

/// `POST /api/v1/election/resign`
pub async fn resign(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ResignRequest>,
) -> Result<Json<ResignResponse>, ApiError> {
    validate::name(&req.name)?;
    caller.may_use_name(Action::Write, "election", &req.name)?;
    may_use_lease(&node, &caller, req.lease, Use::Hold).await?;
    validate::lease_id(&req.lease.to_string())?;
    let (resigned, revision) = node
        .quit_queue(Kind::Election, &req.name, req.lease)
        .await?;
    Ok(Json(ResignResponse { resigned, revision }))
}
