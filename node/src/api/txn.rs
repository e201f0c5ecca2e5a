//! `POST /api/v1/txn`: compares, then the success or failure branch, atomically at one
//! revision. Everything that can be checked before proposing is checked here, so the state
//! machine only ever rejects what depends on state (a missing lease), and then as a whole.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use concordance_client::Compare;
use concordance_client::CompareOp;
use concordance_client::CompareTarget;
use concordance_client::TxnOp;
use concordance_client::TxnOpResult;
use concordance_client::TxnRequest;
use concordance_client::TxnResponse;

use super::JsonBody;
use super::kv::MAX_KEY_BYTES;
use super::kv::check_prefix_writable;
use super::kv::check_value_size;
use super::kv::check_writable;
use super::kv::idempotency_key;
use super::kv::reused_key;
use super::kv::to_kv;
use super::kv::validate_key;
use crate::auth::Role;
use crate::error::ApiError;
use crate::service::SharedNode;
use crate::store::records::CompareOpRecord;
use crate::store::records::CompareRecord;
use crate::store::records::CompareTargetRecord;
use crate::store::records::Operation;
use crate::store::records::Response;
use crate::store::records::TxnOpRecord;
use crate::store::records::TxnOpResultRecord;

/// Most compares, and most operations per branch, in one transaction.
pub const MAX_TXN_OPS: usize = 128;

fn invalid_compare(i: usize, why: &str) -> ApiError {
    ApiError::bad_request("invalid_compare", format!("compare[{i}]: {why}"))
}

fn compare_record(i: usize, c: Compare) -> Result<CompareRecord, ApiError> {
    validate_key(&c.key)?;
    let ordering = matches!(c.op, CompareOp::Greater | CompareOp::Less);
    match c.target {
        CompareTarget::Exists => {
            if !c.value.is_boolean() {
                return Err(invalid_compare(i, "`exists` compares with true or false"));
            }
            if ordering {
                return Err(invalid_compare(i, "`exists` takes equal or notEqual only"));
            }
        }
        CompareTarget::Value => {
            if ordering && !(c.value.is_number() || c.value.is_string()) {
                return Err(invalid_compare(
                    i,
                    "greater/less on a value compares numbers or strings only",
                ));
            }
            check_value_size(&c.value)?;
        }
        _ => {
            if c.value.as_u64().is_none() {
                return Err(invalid_compare(
                    i,
                    "revisions, version and lease compare with a non-negative integer",
                ));
            }
        }
    }
    Ok(CompareRecord {
        key: c.key,
        target: match c.target {
            CompareTarget::Value => CompareTargetRecord::Value,
            CompareTarget::CreateRevision => CompareTargetRecord::CreateRevision,
            CompareTarget::ModRevision => CompareTargetRecord::ModRevision,
            CompareTarget::Version => CompareTargetRecord::Version,
            CompareTarget::Lease => CompareTargetRecord::Lease,
            CompareTarget::Exists => CompareTargetRecord::Exists,
        },
        op: match c.op {
            CompareOp::Equal => CompareOpRecord::Equal,
            CompareOp::NotEqual => CompareOpRecord::NotEqual,
            CompareOp::Greater => CompareOpRecord::Greater,
            CompareOp::Less => CompareOpRecord::Less,
        },
        value: c.value,
    })
}

/// Validates one branch: keys, sizes, roles, and that no key is written twice (all writes
/// share one revision, so a second write to a key would hide the first from watches).
fn branch(role: Role, name: &str, ops: Vec<TxnOp>) -> Result<Vec<TxnOpRecord>, ApiError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_request(
            "txn_too_large",
            format!(
                "{name} has {} operations; the limit is {MAX_TXN_OPS}",
                ops.len()
            ),
        ));
    }
    let mut written: Vec<&str> = Vec::new();
    let mut prefixes: Vec<&str> = Vec::new();
    let duplicate = |what: &str| {
        ApiError::bad_request(
            "duplicate_key",
            format!(
                "{name} writes {what} more than once; a transaction writes each key at most once"
            ),
        )
    };
    for op in &ops {
        match op {
            TxnOp::Put { key, value, lease } => {
                validate_key(key)?;
                check_writable(role, key)?;
                check_value_size(value)?;
                if *lease == Some(0) {
                    return Err(ApiError::bad_request(
                        "invalid_lease",
                        "lease 0 is not a lease; omit it",
                    ));
                }
                written.push(key);
            }
            TxnOp::Delete { key } => {
                validate_key(key)?;
                check_writable(role, key)?;
                written.push(key);
            }
            TxnOp::Get { key } => validate_key(key)?,
            TxnOp::DeletePrefix { prefix } => {
                if prefix.len() > MAX_KEY_BYTES {
                    return Err(ApiError::bad_request(
                        "invalid_key",
                        "the prefix is longer than a key may be",
                    ));
                }
                check_prefix_writable(role, prefix)?;
                prefixes.push(prefix);
            }
        }
    }
    let mut sorted = written.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(duplicate(&format!("key {:?}", w[0])));
    }
    for (i, p) in prefixes.iter().enumerate() {
        if let Some(k) = written.iter().find(|k| k.starts_with(p)) {
            return Err(duplicate(&format!(
                "key {k:?} (also under deletePrefix {p:?})"
            )));
        }
        if let Some(q) = prefixes
            .iter()
            .enumerate()
            .find(|(j, q)| *j != i && q.starts_with(p))
        {
            return Err(duplicate(&format!(
                "the keys under {:?} (overlapping deletePrefix {p:?})",
                q.1
            )));
        }
    }
    Ok(ops
        .into_iter()
        .map(|op| match op {
            TxnOp::Put { key, value, lease } => TxnOpRecord::Put { key, value, lease },
            TxnOp::Get { key } => TxnOpRecord::Get { key },
            TxnOp::Delete { key } => TxnOpRecord::Delete { key },
            TxnOp::DeletePrefix { prefix } => TxnOpRecord::DeletePrefix { prefix },
        })
        .collect())
}

/// Validates a request and turns it into the command to propose.
pub fn operation(role: Role, req: TxnRequest) -> Result<Operation, ApiError> {
    if req.compare.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_request(
            "txn_too_large",
            format!("{} compares; the limit is {MAX_TXN_OPS}", req.compare.len()),
        ));
    }
    let compare = req
        .compare
        .into_iter()
        .enumerate()
        .map(|(i, c)| compare_record(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Operation::Txn {
        compare,
        success: branch(role, "success", req.success)?,
        failure: branch(role, "failure", req.failure)?,
    })
}

pub fn response(response: Response) -> Result<TxnResponse, ApiError> {
    let Response::Txn {
        succeeded,
        revision,
        results,
    } = response
    else {
        return Err(reused_key(&response));
    };
    let results = results
        .into_iter()
        .map(|r| match r {
            TxnOpResultRecord::Put {
                key,
                revision,
                prev,
            } => TxnOpResult::Put {
                revision,
                prev_kv: prev.map(|p| to_kv(key, p)),
            },
            TxnOpResultRecord::Get { key, kv } => TxnOpResult::Get {
                kv: kv.map(|k| to_kv(key.clone(), k)),
                key,
            },
            TxnOpResultRecord::Delete { key, prev } => TxnOpResult::Delete {
                deleted: u64::from(prev.is_some()),
                prev_kv: prev.map(|p| to_kv(key, p)),
            },
            TxnOpResultRecord::DeletePrefix { deleted } => TxnOpResult::DeletePrefix { deleted },
        })
        .collect();
    Ok(TxnResponse {
        succeeded,
        revision,
        results,
    })
}

pub async fn txn(
    State(node): State<SharedNode>,
    Extension(role): Extension<Role>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<TxnRequest>,
) -> Result<Json<TxnResponse>, ApiError> {
    let ik = idempotency_key(&headers)?;
    let op = operation(role, req)?;
    response(node.propose(op, ik).await?).map(Json)
}
