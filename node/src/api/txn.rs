//! `POST /api/v1/txn`: compares, then the success or failure branch, atomically at one
//! revision. Everything that can be checked before proposing is checked first
//! ([`validate::txn`]), so the state machine only ever rejects what depends on state (a
//! missing lease), and then as a whole.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use concordance_client::TxnRequest;
use concordance_client::TxnResponse;

use super::ApiError;
use super::JsonBody;
use super::validate;
use crate::auth::Role;
use crate::service::SharedNode;

pub async fn txn(
    State(node): State<SharedNode>,
    Extension(role): Extension<Role>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<TxnRequest>,
) -> Result<Json<TxnResponse>, ApiError> {
    let ik = validate::idempotency_key(&headers)?;
    validate::txn(role, &req)?;
    Ok(Json(node.txn(req, ik).await?))
}
