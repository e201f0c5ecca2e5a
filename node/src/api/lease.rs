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
use crate::auth::AccessDenied;
use crate::auth::Caller;
use crate::auth::Role;
use crate::error::NodeError;
use crate::service::SharedNode;

pub async fn grant(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<LeaseGrantRequest>,
) -> Result<Json<LeaseGrantResponse>, ApiError> {
    validate::lease_ttl(req.ttl_ms)?;
    let ik = validate::idempotency_key(&headers)?;
    Ok(Json(node.lease_grant(req.ttl_ms, &caller.name, ik).await?))
}

pub async fn keep_alive(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<LeaseKeepAliveResponse>, ApiError> {
    let id = validate::lease_id(&id)?;
    let ik = validate::idempotency_key(&headers)?;
    may_use_lease(&node, &caller, id, Use::Hold).await?;
    Ok(Json(node.lease_keep_alive(id, ik).await?))
}

pub async fn revoke(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<LeaseRevokeResponse>, ApiError> {
    let id = validate::lease_id(&id)?;
    let ik = validate::idempotency_key(&headers)?;
    may_use_lease(&node, &caller, id, Use::Revoke).await?;
    Ok(Json(node.lease_revoke(id, ik).await?))
}

/// What a request does with a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Revoking it deletes its keys.
    Revoke,
    /// Keeping it alive, putting a key on it, or a lock or an election's place held with it.
    Hold,
}

/// Only a lease's owner, or an admin, may use it. A lease granted before every member knew
/// owners (command set 7) has none: revoking it needs the right to delete every key it holds
/// now. A lease that does not exist is let through: the request itself answers why.
pub async fn may_use_lease(
    node: &SharedNode,
    caller: &Caller,
    id: u64,
    what: Use,
) -> Result<(), ApiError> {
    if caller.role == Role::Admin {
        return Ok(());
    }
    // The owner never changes: this member's copy tells it, once it has the grant.
    let owner = match node.reader.lease(id).map_err(NodeError::storage)? {
        Some(lease) => lease.owner,
        None => match node.lease(id, Consistency::Linearizable).await {
            Ok(lease) => lease.owner,
            Err(_) => return Ok(()),
        },
    };
    match owner {
        Some(owner) if *owner == *caller.name => Ok(()),
        Some(owner) => Err(AccessDenied {
            credential: caller.name.clone(),
            action: "use",
            target: format!("lease {id}, which belongs to the {owner} credential"),
        }
        .into()),
        None if what == Use::Revoke && !caller.writes_every_key() => {
            let lease = node.lease(id, Consistency::Linearizable).await?;
            for key in &lease.keys {
                caller.may_write(key)?;
            }
            Ok(())
        }
        None => Ok(()),
    }
}

/// Whether the caller may see a lease, whose answer names its keys and its owner: its owner
/// and an admin may, and a credential that reads every key; another only when the lease
/// holds keys and it may read each of them.
fn may_see(caller: &Caller, lease: &LeaseInfo) -> bool {
    caller.reads_every_key()
        || lease.owner.as_deref() == Some(&*caller.name)
        || (!lease.keys.is_empty() && lease.keys.iter().all(|k| caller.may_read(k).is_ok()))
}

pub async fn get(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<LeaseInfo>, ApiError> {
    let id = validate::lease_id(&id)?;
    let lease = node.lease(id, params.consistency).await?;
    if !may_see(&caller, &lease) {
        return Err(AccessDenied {
            credential: caller.name.clone(),
            action: "read",
            target: format!(
                "lease {id}: it is another credential's and holds keys outside its read rules"
            ),
        }
        .into());
    }
    Ok(Json(lease))
}

/// The leases the caller may see ([`may_see`]): a list is filtered, as it names no prefix.
pub async fn list(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<LeaseListResponse>, ApiError> {
    let mut answer = node.leases(params.consistency).await?;
    answer.leases.retain(|lease| may_see(&caller, lease));
    Ok(Json(answer))
}
