//! Leases: grant, keep alive, revoke, inspect. Keys attach to a lease through a put or a
//! transaction's put with `lease`; they vanish when it is revoked or expires (decided by the
//! leader, see [`crate::coordination`]).

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use concordance_client::LeaseGrantRequest;
use concordance_client::LeaseGrantResponse;
use concordance_client::LeaseInfo;
use concordance_client::LeaseKeepAliveResponse;
use concordance_client::LeaseListResponse;
use concordance_client::LeaseRevokeResponse;

use super::JsonBody;
use super::body::QueryParams;
use super::kv::ReadParams;
use super::kv::idempotency_key;
use super::kv::reused_key;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::service::SharedNode;
use crate::store::records::LeaseRecord;
use crate::store::records::Operation;
use crate::store::records::Response;

pub const MIN_LEASE_TTL_MS: u64 = 1_000;
pub const MAX_LEASE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Lease ids stay below 2^53 so every JSON implementation reads them exactly.
const MAX_LEASE_ID: u64 = (1 << 53) - 1;

pub fn parse_id(raw: &str) -> Result<u64, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if (1..=MAX_LEASE_ID).contains(&id) => Ok(id),
        _ => Err(ApiError::bad_request(
            "invalid_lease",
            format!("{raw:?} is not a lease id (a positive integer below 2^53)"),
        )),
    }
}

pub fn not_found(id: u64) -> ApiError {
    ApiError::not_found(
        "lease_not_found",
        format!("lease {id} does not exist or has expired"),
    )
}

fn info(l: LeaseRecord) -> LeaseInfo {
    LeaseInfo {
        id: l.id,
        ttl_ms: l.ttl_ms,
        remaining_ms: l.expires_at_ms.saturating_sub(now_ms()),
        keys: l.keys,
    }
}

pub async fn grant(
    State(node): State<SharedNode>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LeaseGrantRequest>,
) -> Result<Json<LeaseGrantResponse>, ApiError> {
    if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&req.ttl_ms) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttlMs must be {MIN_LEASE_TTL_MS}-{MAX_LEASE_TTL_MS}"),
        ));
    }
    let ik = idempotency_key(&headers)?;
    let id = rand::random_range(1..=MAX_LEASE_ID);
    match node
        .propose(
            Operation::LeaseGrant {
                id,
                ttl_ms: req.ttl_ms,
            },
            ik,
        )
        .await?
    {
        Response::Lease { id, ttl_ms } => Ok(Json(LeaseGrantResponse { id, ttl_ms })),
        other => Err(reused_key(&other)),
    }
}

pub async fn keep_alive(
    State(node): State<SharedNode>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<LeaseKeepAliveResponse>, ApiError> {
    let id = parse_id(&id)?;
    let ik = idempotency_key(&headers)?;
    match node.propose(Operation::LeaseKeepAlive { id }, ik).await? {
        Response::Lease { id, ttl_ms } => Ok(Json(LeaseKeepAliveResponse { id, ttl_ms })),
        other => Err(reused_key(&other)),
    }
}

pub async fn revoke(
    State(node): State<SharedNode>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<LeaseRevokeResponse>, ApiError> {
    let id = parse_id(&id)?;
    let ik = idempotency_key(&headers)?;
    match node.propose(Operation::LeaseRevoke { id }, ik).await? {
        Response::LeaseRevoked {
            id,
            revision,
            deleted,
        } => Ok(Json(LeaseRevokeResponse {
            id,
            revision,
            deleted,
        })),
        other => Err(reused_key(&other)),
    }
}

pub async fn get(
    State(node): State<SharedNode>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<LeaseInfo>, ApiError> {
    let id = parse_id(&id)?;
    node.read_barrier(params.consistency).await?;
    match node.reader.lease(id).map_err(ApiError::storage)? {
        Some(l) => Ok(Json(info(l))),
        None => Err(not_found(id)),
    }
}

pub async fn list(
    State(node): State<SharedNode>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<LeaseListResponse>, ApiError> {
    node.read_barrier(params.consistency).await?;
    let revision = node.reader.revision();
    let leases = node.reader.leases().map_err(ApiError::storage)?;
    Ok(Json(LeaseListResponse {
        leases: leases.into_iter().map(info).collect(),
        revision,
    }))
}
