//! Locks with fencing tokens, and leader elections: thin endpoints over keys, leases and
//! transactions, so they inherit their guarantees (linearizable, replicated, failover-safe).
//!
//! A lock (or election) `name` is a queue of keys `_concordance/<kind>/<name>/<lease as 16
//! hex digits>`, each attached to its candidate's lease. Joining is a transaction "create the
//! key if absent, else read it", so a retry (after a timeout or a node's death) keeps its
//! place. The candidate whose key has the lowest create revision holds the lock (leads); its
//! create revision is the fencing token, strictly increasing from holder to holder. Waiters
//! re-check after every applied change, with a linearizable read; a holder's key vanishes when
//! it releases or its lease ends (expiry decided by the leader through the log), and the next
//! key in create order holds. Agents may not write under `_concordance/` directly, so a
//! queue key always carries its candidate's lease.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use concordance_client::CampaignRequest;
use concordance_client::CampaignResponse;
use concordance_client::Consistency;
use concordance_client::ElectionLeader;
use concordance_client::ElectionLeaderResponse;
use concordance_client::LockRequest;
use concordance_client::LockResponse;
use concordance_client::ResignRequest;
use concordance_client::ResignResponse;
use concordance_client::UnlockRequest;
use concordance_client::UnlockResponse;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::JsonBody;
use super::body::QueryParams;
use super::kv::MAX_LIST_LIMIT;
use super::kv::RESERVED_PREFIX;
use super::kv::check_value_size;
use super::kv::validate_key;
use super::lease::not_found as lease_not_found;
use crate::error::ApiError;
use crate::service::SharedNode;
use crate::store::records::CompareOpRecord;
use crate::store::records::CompareRecord;
use crate::store::records::CompareTargetRecord;
use crate::store::records::KeyRecord;
use crate::store::records::Operation;
use crate::store::records::Response;
use crate::store::records::TxnOpRecord;

const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Waiters re-check at least this often, even without a change (e.g. while without quorum).
const RECHECK: Duration = Duration::from_secs(1);
const MAX_NAME_BYTES: usize = 256;

#[derive(Clone, Copy)]
enum Kind {
    Lock,
    Election,
}

impl Kind {
    fn segment(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Election => "election",
        }
    }
}

fn queue_prefix(kind: Kind, name: &str) -> String {
    format!("{RESERVED_PREFIX}{}/{name}/", kind.segment())
}

fn queue_key(kind: Kind, name: &str, lease: u64) -> String {
    format!("{}{lease:016x}", queue_prefix(kind, name))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("a name is 1-{MAX_NAME_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_lease(lease: u64) -> Result<(), ApiError> {
    super::lease::parse_id(&lease.to_string()).map(|_| ())
}

fn wait_for(timeout_ms: Option<u64>) -> Result<Duration, ApiError> {
    let d = timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    if d > MAX_WAIT {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            format!("timeoutMs is at most {}", MAX_WAIT.as_millis()),
        ));
    }
    Ok(d)
}

/// The queue's members in create order: the first holds the lock (leads the election).
async fn members(
    node: &SharedNode,
    prefix: &str,
    consistency: Consistency,
) -> Result<Vec<(String, KeyRecord)>, ApiError> {
    node.read_barrier(consistency).await?;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, more) = node
            .reader
            .list(prefix, after.as_deref(), MAX_LIST_LIMIT)
            .map_err(ApiError::storage)?;
        after = page.last().map(|(k, _)| k.clone());
        out.extend(page.into_iter().filter(|(k, _)| {
            let rest = &k[prefix.len()..];
            rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit())
        }));
        if !more {
            break;
        }
    }
    out.sort_by_key(|(_, kv)| kv.create_revision);
    Ok(out)
}

/// Joins the queue (or finds this lease already in it). Returns whether this call created
/// the key.
async fn enqueue(node: &SharedNode, key: &str, value: Value, lease: u64) -> Result<bool, ApiError> {
    let op = Operation::Txn {
        compare: vec![CompareRecord {
            key: key.to_string(),
            target: CompareTargetRecord::CreateRevision,
            op: CompareOpRecord::Equal,
            value: Value::from(0),
        }],
        success: vec![TxnOpRecord::Put {
            key: key.to_string(),
            value,
            lease: Some(lease),
        }],
        failure: vec![TxnOpRecord::Get {
            key: key.to_string(),
        }],
    };
    match node.propose(op, None).await? {
        Response::Txn { succeeded, .. } => Ok(succeeded),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a queue join: {other:?}"
        ))),
    }
}

enum Wait {
    Turn(KeyRecord),
    Held(u64),
    TimedOut(Option<ApiError>),
}

/// Waits until `key` is first in its queue, or the deadline.
async fn wait_turn(
    node: &SharedNode,
    prefix: &str,
    key: &str,
    lease: u64,
    wait: bool,
    deadline: Instant,
) -> Result<Wait, ApiError> {
    loop {
        // Subscribed before reading, so a change right after the read still wakes us.
        let mut changes = node.reader.subscribe();
        let mut last_error = None;
        match members(node, prefix, Consistency::Linearizable).await {
            Ok(list) => {
                let Some((_, own)) = list.iter().find(|(k, _)| k == key) else {
                    if node
                        .reader
                        .lease(lease)
                        .map_err(ApiError::storage)?
                        .is_none()
                    {
                        return Err(lease_not_found(lease));
                    }
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "lock_lost",
                        "this lease's place in the queue was deleted (released or resigned) while waiting",
                    ));
                };
                if list[0].0 == key {
                    return Ok(Wait::Turn(own.clone()));
                }
                if !wait {
                    return Ok(Wait::Held(list[0].1.create_revision));
                }
            }
            // No quorum for now (e.g. a leader change): keep waiting until the deadline.
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => last_error = Some(e),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Wait::TimedOut(last_error));
        }
        let pause = (deadline - now).min(RECHECK);
        tokio::select! {
            _ = tokio::time::timeout(pause, changes.changed()) => {}
            // The place in the queue stays: the client's retry on another member keeps it.
            _ = node.stopping.cancelled() => {
                return Err(ApiError::unavailable(
                    "shutting_down",
                    "this node is stopping; retry on another member (the place in the queue is kept)",
                ));
            }
        }
    }
}

/// Leaves the queue after giving up (best effort: the lease's end removes it otherwise).
async fn leave(node: &SharedNode, key: &str) {
    if let Err(e) = node
        .propose(
            Operation::Delete {
                key: key.to_string(),
            },
            None,
        )
        .await
    {
        tracing::warn!(error = %e, key, "could not leave a lock queue; the lease's end will");
    }
}

async fn join_and_wait(
    node: &SharedNode,
    kind: Kind,
    name: &str,
    lease: u64,
    value: Value,
    wait: bool,
    timeout: Duration,
) -> Result<(String, KeyRecord), ApiError> {
    check_name(name)?;
    check_lease(lease)?;
    let key = queue_key(kind, name, lease);
    validate_key(&key)?;
    let deadline = Instant::now() + timeout;
    let created = enqueue(node, &key, value, lease).await?;
    let prefix = queue_prefix(kind, name);
    let outcome = wait_turn(node, &prefix, &key, lease, wait, deadline).await;
    let what = kind.segment();
    let failure = match outcome {
        Ok(Wait::Turn(kv)) => return Ok((key, kv)),
        Ok(Wait::Held(token)) => ApiError::new(
            StatusCode::CONFLICT,
            &format!("{what}_held"),
            format!("{what} {name:?} is held (fencing token {token})"),
        ),
        Ok(Wait::TimedOut(last)) => ApiError::new(
            StatusCode::CONFLICT,
            &format!("{what}_timeout"),
            format!(
                "{what} {name:?} was not obtained within {} ms{}",
                timeout.as_millis(),
                last.map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ),
        ),
        Err(e) => return Err(e),
    };
    if created {
        leave(node, &key).await;
    }
    Err(failure)
}

/// `POST /api/v1/lock/acquire`
pub async fn acquire(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<LockRequest>,
) -> Result<Json<LockResponse>, ApiError> {
    let timeout = wait_for(req.timeout_ms)?;
    let (key, kv) = join_and_wait(
        &node,
        Kind::Lock,
        &req.name,
        req.lease,
        Value::Null,
        req.wait,
        timeout,
    )
    .await?;
    Ok(Json(LockResponse {
        name: req.name,
        key,
        fencing_token: kv.create_revision,
        lease: req.lease,
    }))
}

async fn remove(node: &SharedNode, key: String) -> Result<(bool, u64), ApiError> {
    match node.propose(Operation::Delete { key }, None).await? {
        Response::Delete { revision, prev } => Ok((prev.is_some(), revision)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a delete: {other:?}"
        ))),
    }
}

/// `POST /api/v1/lock/release`
pub async fn release(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<UnlockRequest>,
) -> Result<Json<UnlockResponse>, ApiError> {
    check_name(&req.name)?;
    check_lease(req.lease)?;
    let (released, revision) = remove(&node, queue_key(Kind::Lock, &req.name, req.lease)).await?;
    Ok(Json(UnlockResponse { released, revision }))
}

fn leader_of(key: String, kv: KeyRecord) -> ElectionLeader {
    ElectionLeader {
        key,
        value: kv.value,
        lease: kv.lease.unwrap_or(0),
        revision: kv.create_revision,
    }
}

/// `POST /api/v1/election/campaign`
pub async fn campaign(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<CampaignRequest>,
) -> Result<Json<CampaignResponse>, ApiError> {
    let timeout = wait_for(req.timeout_ms)?;
    check_value_size(&req.value)?;
    let (key, kv) = join_and_wait(
        &node,
        Kind::Election,
        &req.name,
        req.lease,
        req.value,
        true,
        timeout,
    )
    .await?;
    Ok(Json(CampaignResponse {
        name: req.name,
        leader: leader_of(key, kv),
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
    QueryParams(params): QueryParams<LeaderParams>,
) -> Result<Json<ElectionLeaderResponse>, ApiError> {
    check_name(&params.name)?;
    let prefix = queue_prefix(Kind::Election, &params.name);
    let list = members(&node, &prefix, params.consistency).await?;
    let revision = node.reader.revision();
    Ok(Json(ElectionLeaderResponse {
        name: params.name,
        leader: list.into_iter().next().map(|(k, kv)| leader_of(k, kv)),
        watch_prefix: prefix,
        revision,
    }))
}

/// `POST /api/v1/election/resign`
pub async fn resign(
    State(node): State<SharedNode>,
    JsonBody(req): JsonBody<ResignRequest>,
) -> Result<Json<ResignResponse>, ApiError> {
    check_name(&req.name)?;
    check_lease(req.lease)?;
    let (resigned, revision) =
        remove(&node, queue_key(Kind::Election, &req.name, req.lease)).await?;
    Ok(Json(ResignResponse { resigned, revision }))
}
