//! Leases: grant, keep alive, revoke, inspect. Keys attach to a lease through a put or a
//! transaction's put with `lease`; they vanish when it is revoked or expires (decided by the
//! leader, see [`crate::coordination`]).

use axum::Extension;
use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use concordance_client::Consistency;
use concordance_client::LeaseGrantRequest;
use concordance_client::LeaseGrantResponse;
use concordance_client::LeaseInfo;
use concordance_client::LeaseKeepAliveResponse;
use concordance_client::LeaseListResponse;
use concordance_client::LeaseRevokeResponse;

use super::ApiError;
use super::JsonBody;
use super::body::QueryParams;
use super::kv::ReadParams;
use super::validate;
use crate::auth::Caller;
use crate::service::SharedNode;

pub async fn grant(
    State(node): State<SharedNode>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LeaseGrantRequest>,
) -> Result<Json<LeaseGrantResponse>, ApiError> {
    validate::lease_ttl(req.ttl_ms)?;
    let ik = validate::idempotency_key(&headers)?;
    Ok(Json(node.lease_grant(req.ttl_ms, ik).await?))
}

pub async fn keep_alive(
    State(node): State<SharedNode>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<LeaseKeepAliveResponse>, ApiError> {
    let id = validate::lease_id(&id)?;
    let ik = validate::idempotency_key(&headers)?;
    Ok(Json(node.lease_keep_alive(id, ik).await?))
}

/// Leases have no owner yet: a credential whose rules do not cover every key may revoke a
/// lease only if it may delete every key attached to it now.
pub async fn revoke(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<LeaseRevokeResponse>, ApiError> {
    let id = validate::lease_id(&id)?;
    let ik = validate::idempotency_key(&headers)?;
    if !caller.writes_every_key() {
        let lease = node.lease(id, Consistency::Linearizable).await?;
        for key in &lease.keys {
            caller.may_write(key)?;
        }
    }
    Ok(Json(node.lease_revoke(id, ik).await?))
}

pub async fn get(
    State(node): State<SharedNode>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<LeaseInfo>, ApiError> {
    let id = validate::lease_id(&id)?;
    Ok(Json(node.lease(id, params.consistency).await?))
}

pub async fn list(
    State(node): State<SharedNode>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<LeaseListResponse>, ApiError> {
    Ok(Json(node.leases(params.consistency).await?))
}
