//! Storage quotas per key prefix (the credentials file's `quotas`): the keys under a prefix
//! may take at most so many bytes (names and values as JSON) and be at most so many, whoever
//! writes them, so that one agent held to its prefix cannot fill the cluster.
//!
//! The leader checks each write that grows the state before proposing it, against what the
//! keys take in its applied state ([`crate::store::usage`]) and what the write replaces. A
//! write that adds nothing under a prefix (an overwrite by a smaller value, a delete) always
//! passes, so a prefix over its quota can be brought back under it. Writes proposed at once
//! and not yet applied are not counted against each other: they may pass a quota together by
//! their own size.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::RwLock;

use concordance_client::ErrorCode;
use serde_json::Value;

use crate::error::NodeError;
use crate::store::reader::KvReader;
use crate::store::records::Operation;
use crate::store::records::TxnOpRecord;
use crate::store::usage::entry_bytes;

/// At most this many bytes and keys under `prefix` (either bound may be absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub prefix: String,
    pub max_bytes: Option<u64>,
    pub max_keys: Option<u64>,
}

/// The quotas in force, replaced whole when the credentials file changes.
#[derive(Debug, Default)]
pub struct Quotas {
    current: RwLock<Arc<Vec<Quota>>>,
}

impl Quotas {
    pub fn set(&self, quotas: Vec<Quota>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(quotas);
    }

    pub fn current(&self) -> Arc<Vec<Quota>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refuses `op` if it would take the keys under a prefix past its quota.
    pub fn check(&self, op: &Operation, reader: &KvReader) -> Result<(), NodeError> {
        let quotas = self.current();
        if quotas.is_empty() {
            return Ok(());
        }
        for branch in branches(op) {
            check_branch(&quotas, &branch, reader)?;
        }
        Ok(())
    }
}

/// The keys each outcome of `op` writes (a value) or deletes (none), the last word on each.
/// A transaction is checked by both its branches, as which one runs is known only when it
/// applies; a prefix delete frees room that is not counted here.
fn branches(op: &Operation) -> Vec<BTreeMap<&str, Option<&Value>>> {
    match op {
        Operation::Put { key, value, .. } => vec![BTreeMap::from([(key.as_str(), Some(value))])],
        Operation::Txn {
            success, failure, ..
        } => vec![txn_writes(success), txn_writes(failure)],
        _ => Vec::new(),
    }
}

fn txn_writes(ops: &[TxnOpRecord]) -> BTreeMap<&str, Option<&Value>> {
    ops.iter()
        .filter_map(|o| match o {
            TxnOpRecord::Put { key, value, .. } => Some((key.as_str(), Some(value))),
            TxnOpRecord::Delete { key } => Some((key.as_str(), None)),
            TxnOpRecord::Get { .. } | TxnOpRecord::DeletePrefix { .. } => None,
        })
        .collect()
}

fn check_branch(
    quotas: &[Quota],
    writes: &BTreeMap<&str, Option<&Value>>,
    reader: &KvReader,
) -> Result<(), NodeError> {
    let concerned: Vec<&Quota> = quotas
        .iter()
        .filter(|q| writes.keys().any(|k| k.starts_with(q.prefix.as_str())))
        .collect();
    if concerned.is_empty() {
        return Ok(());
    }
    // What each key written takes now and will take: read once, whatever the prefixes.
    let mut sizes = BTreeMap::new();
    for (&key, value) in writes {
        if !concerned.iter().any(|q| key.starts_with(q.prefix.as_str())) {
            continue;
        }
        let was = reader
            .get(key)
            .map_err(NodeError::storage)?
            .map(|r| entry_bytes(key, &r.value));
        let is = value.map(|v| entry_bytes(key, v));
        sizes.insert(key, (was, is));
    }
    let all: Vec<&str> = quotas.iter().map(|q| q.prefix.as_str()).collect();
    let wanted: Vec<&str> = concerned.iter().map(|q| q.prefix.as_str()).collect();
    let usage = reader
        .prefix_usage(&all, &wanted)
        .map_err(NodeError::storage)?;
    for (quota, used) in concerned.into_iter().zip(usage) {
        let (mut keys, mut bytes) = (0i64, 0i64);
        for (key, (was, is)) in &sizes {
            if key.starts_with(quota.prefix.as_str()) {
                keys += i64::from(is.is_some()) - i64::from(was.is_some());
                bytes += is.unwrap_or(0) as i64 - was.unwrap_or(0) as i64;
            }
        }
        let past = |now: u64, added: i64, max: Option<u64>| {
            max.filter(|&max| added > 0 && now.saturating_add(added as u64) > max)
        };
        if let Some(max) = past(used.bytes, bytes, quota.max_bytes) {
            return Err(over(
                quota,
                format!(
                    "they take {} bytes and this write adds {bytes}, past their quota of {max} \
                     bytes",
                    used.bytes
                ),
            ));
        }
        if let Some(max) = past(used.keys, keys, quota.max_keys) {
            return Err(over(
                quota,
                format!(
                    "they are {} keys and this write adds {keys}, past their quota of {max} keys",
                    used.keys
                ),
            ));
        }
    }
    Ok(())
}

fn over(quota: &Quota, why: String) -> NodeError {
    NodeError::Rejected(
        ErrorCode::QuotaExceeded,
        format!(
            "refused by the storage quota of the keys under {:?}: {why}. Nothing was written; \
             delete keys under it, write smaller values, or raise the quota (quotas in the \
             credentials file)",
            quota.prefix
        ),
    )
}
