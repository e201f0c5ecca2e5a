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
use super::lease::Use;
use super::lease::may_use_lease;
use super::validate;
use crate::auth::Caller;
use crate::service::SharedNode;

pub async fn txn(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    audit: Option<Extension<crate::audit::Note>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<TxnRequest>,
) -> Result<Json<TxnResponse>, ApiError> {
    let ik = validate::idempotency_key(&headers)?;
    validate::txn(&caller, &req)?;
    // A key is put on a lease only by whoever may hold the lease.
    for op in req.success.iter().chain(&req.failure) {
        if let concordance_client::TxnOp::Put {
            lease: Some(lease), ..
        } = op
        {
            may_use_lease(&node, &caller, *lease, Use::Hold).await?;
        }
    }
    // A prefix delete is audited, with its prefixes.
    if let Some(Extension(audit)) = audit {
        for op in req.success.iter().chain(&req.failure) {
            if let concordance_client::TxnOp::DeletePrefix { prefix } = op {
                audit.prefix_deleted(prefix);
            }
        }
    }
    Ok(Json(node.txn(req, ik).await?))
}
