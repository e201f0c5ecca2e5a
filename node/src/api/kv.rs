//! The data API: put, get, delete and prefix list of keys with revisions.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use concordance_client::Consistency;
use concordance_client::DeleteResponse;
use concordance_client::GetResponse;
use concordance_client::ListResponse;
use concordance_client::PutRequest;
use concordance_client::PutResponse;
use serde::Deserialize;

use super::ApiError;
use super::JsonBody;
use super::body::KeyPath;
use super::body::QueryParams;
use super::lease::Use;
use super::lease::may_use_lease;
use super::validate;
use crate::auth::Caller;
use crate::service::SharedNode;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// `linearizable` (default) or `serializable` (the local replica, may be stale).
    #[serde(default)]
    pub consistency: Consistency,
}

pub async fn put(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PutRequest>,
) -> Result<Json<PutResponse>, ApiError> {
    validate::key(&key)?;
    validate::writable(&caller, &key)?;
    validate::value(&req.value)?;
    validate::attached_lease(req.lease)?;
    if let Some(lease) = req.lease {
        may_use_lease(&node, &caller, lease, Use::Hold).await?;
    }
    let ik = validate::idempotency_key(&headers)?;
    Ok(Json(node.put(key, req, ik).await?))
}

pub async fn get(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    KeyPath(key): KeyPath,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<GetResponse>, ApiError> {
    validate::key(&key)?;
    caller.may_read(&key)?;
    Ok(Json(node.get(key, params.consistency).await?))
}

pub async fn delete(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
) -> Result<Json<DeleteResponse>, ApiError> {
    validate::key(&key)?;
    validate::writable(&caller, &key)?;
    let ik = validate::idempotency_key(&headers)?;
    Ok(Json(node.delete(key, ik).await?))
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Keys starting with this (default: every key).
    #[serde(default)]
    prefix: String,
    /// Continue strictly after this key (the previous page's `next`).
    after: Option<String>,
    /// At most this many keys (default 1000, at most 10000); a page also ends at 4 MiB of data.
    limit: Option<usize>,
    /// `linearizable` (default) or `serializable`.
    #[serde(default)]
    consistency: Consistency,
}

pub async fn list(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<ListResponse>, ApiError> {
    let limit = validate::list_limit(params.limit)?;
    validate::prefix(&params.prefix)?;
    caller.may_read_prefix(&params.prefix)?;
    let page = node
        .list(
            &params.prefix,
            params.after.as_deref(),
            limit,
            params.consistency,
        )
        .await?;
    Ok(Json(page))
}
