//! A small builder for transactions: `Txn::new().when(..).then(..).otherwise(..)`.

use serde_json::Value;

use crate::types::Compare;
use crate::types::CompareOp;
use crate::types::CompareTarget;
use crate::types::TxnOp;
use crate::types::TxnRequest;

/// Builds a [`TxnRequest`]:
///
/// ```
/// use concordance_client::{Compare, Txn, TxnOp};
/// let txn = Txn::new()
///     .when(Compare::missing("jobs/42/owner"))
///     .then(TxnOp::put("jobs/42/owner", serde_json::json!("a17")))
///     .otherwise(TxnOp::get("jobs/42/owner"))
///     .build();
/// assert_eq!(txn.compare.len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Txn(TxnRequest);

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition (all must hold for `then` to run).
    pub fn when(mut self, compare: Compare) -> Self {
        self.0.compare.push(compare);
        self
    }

    /// Adds an operation run when every condition holds.
    pub fn then(mut self, op: TxnOp) -> Self {
        self.0.success.push(op);
        self
    }

    /// Adds an operation run when some condition does not hold.
    pub fn otherwise(mut self, op: TxnOp) -> Self {
        self.0.failure.push(op);
        self
    }

    pub fn build(self) -> TxnRequest {
        self.0
    }
}

impl From<Txn> for TxnRequest {
    fn from(t: Txn) -> Self {
        t.0
    }
}

impl Compare {
    pub fn new(key: impl Into<String>, target: CompareTarget, op: CompareOp, value: Value) -> Self {
        Self {
            key: key.into(),
            target,
            op,
            value,
        }
    }

    /// The key's value equals `value`.
    pub fn value_equals(key: impl Into<String>, value: Value) -> Self {
        Self::new(key, CompareTarget::Value, CompareOp::Equal, value)
    }

    /// The key was last changed at `revision` (0: it does not exist).
    pub fn mod_revision_equals(key: impl Into<String>, revision: u64) -> Self {
        Self::new(
            key,
            CompareTarget::ModRevision,
            CompareOp::Equal,
            revision.into(),
        )
    }

    pub fn version_equals(key: impl Into<String>, version: u64) -> Self {
        Self::new(
            key,
            CompareTarget::Version,
            CompareOp::Equal,
            version.into(),
        )
    }

    pub fn exists(key: impl Into<String>) -> Self {
        Self::new(key, CompareTarget::Exists, CompareOp::Equal, true.into())
    }

    pub fn missing(key: impl Into<String>) -> Self {
        Self::new(key, CompareTarget::Exists, CompareOp::Equal, false.into())
    }
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: Value) -> Self {
        TxnOp::Put {
            key: key.into(),
            value,
            lease: None,
        }
    }

    pub fn put_leased(key: impl Into<String>, value: Value, lease: u64) -> Self {
        TxnOp::Put {
            key: key.into(),
            value,
            lease: Some(lease),
        }
    }

    pub fn get(key: impl Into<String>) -> Self {
        TxnOp::Get { key: key.into() }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        TxnOp::DeletePrefix {
            prefix: prefix.into(),
        }
    }
}
