//! Every check of a request that does not depend on state: keys, sizes, limits, names, ids,
//! roles, and the shape of a transaction. What passes here can only be refused by the state
//! (a missing lease), and then as a whole.

use std::time::Duration;

use axum::http::HeaderMap;
use concordance_client::Compare;
use concordance_client::CompareOp;
use concordance_client::CompareTarget;
use concordance_client::ErrorCode;
use concordance_client::TxnOp;
use concordance_client::TxnRequest;

use super::ApiError;
use crate::auth::Caller;
use crate::auth::Role;
use crate::data::MAX_LEASE_ID;
use crate::locks::RESERVED_PREFIX;

pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 1 << 20;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
pub const DEFAULT_LIST_LIMIT: usize = 1000;
pub const MAX_LIST_LIMIT: usize = 10_000;
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
pub const MAX_LEASE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most compares, and most operations per branch, in one transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Longest lock or election name.
const MAX_NAME_BYTES: usize = 256;
/// How long a lock or campaign waits by default, and at most.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);

pub fn key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidKey, "the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            format!(
                "the key is {} bytes; the limit is {MAX_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            "the key contains control characters",
        ));
    }
    Ok(())
}

/// A prefix (of a list, a watch or a prefix delete): at most as long as a key.
pub fn prefix(prefix: &str) -> Result<(), ApiError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            "the prefix is longer than a key may be",
        ));
    }
    Ok(())
}

/// Refuses an agent's direct write to a reserved key, and a write its rules do not allow.
pub fn writable(caller: &Caller, key: &str) -> Result<(), ApiError> {
    if caller.role < Role::Admin && key.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "keys under {RESERVED_PREFIX:?} belong to locks and elections: use the lock and \
                 election endpoints (an agent may not write {key:?} directly)"
            ),
        ));
    }
    Ok(caller.may_write(key)?)
}

/// Refuses an agent's prefix delete that would reach reserved keys, or keys its rules do not
/// let it write.
pub fn prefix_writable(caller: &Caller, prefix: &str) -> Result<(), ApiError> {
    if caller.role < Role::Admin
        && (RESERVED_PREFIX.starts_with(prefix) || prefix.starts_with(RESERVED_PREFIX))
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "a prefix delete of {prefix:?} would reach keys under {RESERVED_PREFIX:?}, which \
                 belong to locks and elections; an agent may not"
            ),
        ));
    }
    Ok(caller.may_write_prefix(prefix)?)
}

/// How deep a value may nest arrays and objects. Answers wrap a value a few levels deeper
/// (an answer, its list of changes, the key's record), and common JSON parsers stop at 128
/// levels (serde_json's default, so the client crate's too): a deeper value would be stored
/// and then unreadable by the clients that wrote it.
pub const MAX_VALUE_DEPTH: usize = 64;

/// A value's size and depth are within the limits.
pub fn value(value: &serde_json::Value) -> Result<(), ApiError> {
    let depth = depth_of(value);
    if depth > MAX_VALUE_DEPTH {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!(
                "the value nests arrays and objects {depth} levels deep; the limit is {MAX_VALUE_DEPTH}"
            ),
        ));
    }
    let size = serde_json::to_vec(value).map_or(0, |v| v.len());
    if size > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("the value is {size} bytes of JSON; the limit is {MAX_VALUE_BYTES}"),
        ));
    }
    Ok(())
}

/// The deepest nesting of arrays and objects in `value` (a scalar is 0), without recursion.
fn depth_of(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|c| (c, depth + 1))),
            serde_json::Value::Object(fields) => {
                stack.extend(fields.values().map(|c| (c, depth + 1)))
            }
            _ => continue,
        }
        deepest = deepest.max(depth + 1);
    }
    deepest
}

/// The lease a key is written with: none, or a real one (0 is not a lease).
pub fn attached_lease(lease: Option<u64>) -> Result<(), ApiError> {
    if lease == Some(0) {
        return Err(ApiError::new(
            ErrorCode::InvalidLease,
            "lease 0 is not a lease; omit it",
        ));
    }
    Ok(())
}

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be ASCII",
        )
    })?;
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidIdempotencyKey,
            format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} characters"),
        ));
    }
    Ok(Some(s.to_string()))
}

/// A list's page size (default [`DEFAULT_LIST_LIMIT`]).
pub fn list_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::new(
            ErrorCode::InvalidLimit,
            format!("limit must be 1-{MAX_LIST_LIMIT}"),
        ));
    }
    Ok(limit)
}

/// A lease id as a path segment or a number in a body.
pub fn lease_id(raw: &str) -> Result<u64, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if (1..=MAX_LEASE_ID).contains(&id) => Ok(id),
        _ => Err(ApiError::new(
            ErrorCode::InvalidLease,
            format!("{raw:?} is not a lease id (a positive integer below 2^53)"),
        )),
    }
}

pub fn lease_ttl(ttl_ms: u64) -> Result<(), ApiError> {
    if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ttl_ms) {
        return Err(ApiError::new(
            ErrorCode::InvalidTtl,
            format!("ttlMs must be {MIN_LEASE_TTL_MS}-{MAX_LEASE_TTL_MS}"),
        ));
    }
    Ok(())
}

/// A lock or election name.
pub fn name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidName,
            format!("a name is 1-{MAX_NAME_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

/// How long a lock or campaign may wait (default 30 s, at most 300 s).
pub fn wait(timeout_ms: Option<u64>) -> Result<Duration, ApiError> {
    let d = timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    if d > MAX_WAIT {
        return Err(ApiError::new(
            ErrorCode::InvalidTimeout,
            format!("timeoutMs is at most {}", MAX_WAIT.as_millis()),
        ));
    }
    Ok(d)
}

fn invalid_compare(i: usize, why: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidCompare, format!("compare[{i}]: {why}"))
}

fn compare(i: usize, c: &Compare) -> Result<(), ApiError> {
    key(&c.key)?;
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
            value(&c.value)?;
        }
        CompareTarget::CreateRevision
        | CompareTarget::ModRevision
        | CompareTarget::Version
        | CompareTarget::Lease => {
            if c.value.as_u64().is_none() {
                return Err(invalid_compare(
                    i,
                    "revisions, version and lease compare with a non-negative integer",
                ));
            }
        }
    }
    Ok(())
}

/// One branch: keys, sizes, roles, and that no key is written twice (all writes share one
/// revision, so a second write to a key would hide the first from watches).
fn branch(caller: &Caller, name: &str, ops: &[TxnOp]) -> Result<(), ApiError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError::new(
            ErrorCode::TxnTooLarge,
            format!(
                "{name} has {} operations; the limit is {MAX_TXN_OPS}",
                ops.len()
            ),
        ));
    }
    let mut written: Vec<&str> = Vec::new();
    let mut prefixes: Vec<&str> = Vec::new();
    let duplicate = |what: &str| {
        ApiError::new(
            ErrorCode::DuplicateKey,
            format!(
                "{name} writes {what} more than once; a transaction writes each key at most once"
            ),
        )
    };
    for op in ops {
        match op {
            TxnOp::Put {
                key: k,
                value,
                lease,
            } => {
                key(k)?;
                writable(caller, k)?;
                self::value(value)?;
                attached_lease(*lease)?;
                written.push(k);
            }
            TxnOp::Delete { key: k } => {
                key(k)?;
                writable(caller, k)?;
                written.push(k);
            }
            TxnOp::Get { key: k } => {
                key(k)?;
                caller.may_read(k)?;
            }
            TxnOp::DeletePrefix { prefix: p } => {
                prefix(p)?;
                prefix_writable(caller, p)?;
                prefixes.push(p);
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
    Ok(())
}

/// A whole transaction, as the caller may send it: it reads every key it compares.
pub fn txn(caller: &Caller, req: &TxnRequest) -> Result<(), ApiError> {
    if req.compare.len() > MAX_TXN_OPS {
        return Err(ApiError::new(
            ErrorCode::TxnTooLarge,
            format!("{} compares; the limit is {MAX_TXN_OPS}", req.compare.len()),
        ));
    }
    for (i, c) in req.compare.iter().enumerate() {
        compare(i, c)?;
        caller.may_read(&c.key)?;
    }
    branch(caller, "success", &req.success)?;
    branch(caller, "failure", &req.failure)
}
