//! The data API: put, get, delete and prefix list of keys with revisions.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use concordance_client::Consistency;
use concordance_client::DeleteResponse;
use concordance_client::GetResponse;
use concordance_client::KeyValue;
use concordance_client::ListResponse;
use concordance_client::PutRequest;
use concordance_client::PutResponse;
use serde::Deserialize;

use super::JsonBody;
use super::body::KeyPath;
use super::body::QueryParams;
use crate::auth::Role;
use crate::error::ApiError;
use crate::service::SharedNode;
use crate::store::records::KeyRecord;
use crate::store::records::Operation;
use crate::store::records::Response;

pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
pub const DEFAULT_LIST_LIMIT: usize = 1000;
pub const MAX_LIST_LIMIT: usize = 10_000;

pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("invalid_key", "the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!(
                "the key is {} bytes; the limit is {MAX_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_key",
            "the key contains control characters",
        ));
    }
    Ok(())
}

/// Keys under this prefix belong to locks and elections: only their endpoints (or an admin
/// repairing them) may write there, so a lock key always carries its holder's lease.
pub const RESERVED_PREFIX: &str = "_concordance/";

/// Refuses an agent's direct write to a reserved key.
pub fn check_writable(role: Role, key: &str) -> Result<(), ApiError> {
    if role < Role::Admin && key.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::forbidden(format!(
            "keys under {RESERVED_PREFIX:?} belong to locks and elections: use the lock and              election endpoints (the agent key may not write {key:?} directly)"
        )));
    }
    Ok(())
}

/// Refuses an agent's prefix delete that would reach reserved keys.
pub fn check_prefix_writable(role: Role, prefix: &str) -> Result<(), ApiError> {
    if role < Role::Admin
        && (RESERVED_PREFIX.starts_with(prefix) || prefix.starts_with(RESERVED_PREFIX))
    {
        return Err(ApiError::forbidden(format!(
            "a prefix delete of {prefix:?} would reach keys under {RESERVED_PREFIX:?}, which              belong to locks and elections; the agent key may not"
        )));
    }
    Ok(())
}

/// The answer to a retried request whose `Idempotency-Key` belonged to another request.
pub fn reused_key(other: &Response) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        format!(
            "this Idempotency-Key was already used for a different kind of request (answered {}); use a new key per request",
            match other {
                Response::None => "nothing",
                Response::Put { .. } => "a put",
                Response::Delete { .. } => "a delete",
                Response::Rejected { .. } => "a rejection",
                Response::Txn { .. } => "a transaction",
                Response::Lease { .. } => "a lease grant or keep-alive",
                Response::LeaseRevoked { .. } => "a lease revoke",
                Response::LeasesExpired { .. } => "a lease expiry",
                Response::Swept { .. } => "a sweep",
                Response::Enabled { .. } => "a feature enable",
            }
        ),
    )
}

pub fn check_value_size(value: &serde_json::Value) -> Result<(), ApiError> {
    let size = serde_json::to_vec(value).map_or(0, |v| v.len());
    if size > MAX_VALUE_BYTES {
        return Err(ApiError::bad_request(
            "value_too_large",
            format!("the value is {size} bytes of JSON; the limit is {MAX_VALUE_BYTES}"),
        ));
    }
    Ok(())
}

pub fn to_kv(key: String, r: KeyRecord) -> KeyValue {
    KeyValue {
        key,
        value: r.value,
        create_revision: r.create_revision,
        mod_revision: r.mod_revision,
        version: r.version,
        lease: r.lease,
    }
}

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be ASCII")
    })?;
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} characters"),
        ));
    }
    Ok(Some(s.to_string()))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// `linearizable` (default) or `serializable` (the local replica, may be stale).
    #[serde(default)]
    pub consistency: Consistency,
}

pub async fn put(
    State(node): State<SharedNode>,
    Extension(role): Extension<Role>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PutRequest>,
) -> Result<Json<PutResponse>, ApiError> {
    validate_key(&key)?;
    check_writable(role, &key)?;
    check_value_size(&req.value)?;
    if req.lease == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_lease",
            "lease 0 is not a lease; omit it",
        ));
    }
    let ik = idempotency_key(&headers)?;
    let op = Operation::Put {
        key: key.clone(),
        value: req.value,
        lease: req.lease,
    };
    match node.propose(op, ik).await? {
        Response::Put { revision, prev } => Ok(Json(PutResponse {
            revision,
            prev_kv: prev.map(|p| to_kv(key, p)),
        })),
        other => Err(reused_key(&other)),
    }
}

pub async fn get(
    State(node): State<SharedNode>,
    KeyPath(key): KeyPath,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<GetResponse>, ApiError> {
    validate_key(&key)?;
    node.read_barrier(params.consistency).await?;
    let revision = node.reader.revision();
    match node.reader.get(&key).map_err(ApiError::storage)? {
        Some(r) => Ok(Json(GetResponse {
            kv: to_kv(key, r),
            revision,
        })),
        None => Err(ApiError::not_found(
            "key_not_found",
            format!("key {key:?} does not exist"),
        )),
    }
}

pub async fn delete(
    State(node): State<SharedNode>,
    Extension(role): Extension<Role>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
) -> Result<Json<DeleteResponse>, ApiError> {
    validate_key(&key)?;
    check_writable(role, &key)?;
    let ik = idempotency_key(&headers)?;
    match node
        .propose(Operation::Delete { key: key.clone() }, ik)
        .await?
    {
        Response::Delete { revision, prev } => Ok(Json(DeleteResponse {
            revision,
            deleted: u64::from(prev.is_some()),
            prev_kv: prev.map(|p| to_kv(key, p)),
        })),
        other => Err(reused_key(&other)),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Keys starting with this (default: every key).
    #[serde(default)]
    prefix: String,
    /// Continue strictly after this key (the previous page's `next`).
    after: Option<String>,
    /// At most this many keys (default 1000, at most 10000).
    limit: Option<usize>,
    /// `linearizable` (default) or `serializable`.
    #[serde(default)]
    consistency: Consistency,
}

pub async fn list(
    State(node): State<SharedNode>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<ListResponse>, ApiError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1-{MAX_LIST_LIMIT}"),
        ));
    }
    if params.prefix.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_key",
            "the prefix is longer than a key may be",
        ));
    }
    node.read_barrier(params.consistency).await?;
    let revision = node.reader.revision();
    let (items, more) = node
        .reader
        .list(&params.prefix, params.after.as_deref(), limit)
        .map_err(ApiError::storage)?;
    let next = if more {
        items.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok(Json(ListResponse {
        kvs: items.into_iter().map(|(k, r)| to_kv(k, r)).collect(),
        revision,
        more,
        next,
    }))
}
