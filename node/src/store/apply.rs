//! What each command does to the state: the semantics of every operation (keys with revisions,
//! transactions, leases, idempotency), applied to a RocksDB write batch. The openraft glue
//! (`state_machine.rs`) commits each batch with the applied log id, atomically.
//!
//! Every command that changes anything takes exactly one revision; one that changes nothing
//! (a delete of a missing key, a rejected command, a transaction with nothing to write) takes
//! none. A rejection changes nothing.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io;

use rocksdb::WriteBatch;
use serde_json::Value;

use super::CF_HISTORY;
use super::CF_IDEMPOTENCY;
use super::CF_KV;
use super::CF_LEASES;
use super::Store;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::records::Command;
use super::records::CompareOpRecord;
use super::records::CompareRecord;
use super::records::CompareTargetRecord;
use super::records::EventKind;
use super::records::EventRecord;
use super::records::IdempotencyRecord;
use super::records::KeyRecord;
use super::records::LeaseRecord;
use super::records::Operation;
use super::records::RejectCode;
use super::records::Response;
use super::records::TxnOpRecord;
use super::records::TxnOpResultRecord;
use super::u64_key;

/// Applies commands to a write batch, with overlays so later commands in the same batch see
/// the effects of earlier ones. Every command that changes anything takes exactly one revision.
pub struct Batch<'a> {
    store: &'a Store,
    wb: WriteBatch,
    overlay: HashMap<String, Option<KeyRecord>>,
    leases: HashMap<u64, Option<LeaseRecord>>,
    idempotency: HashMap<String, Response>,
    /// The last revision taken by a command applied so far.
    revision: u64,
    /// Whether the command being applied has written at `revision + 1`.
    writing: bool,
    command_version: u32,
}

fn reject(code: RejectCode, message: impl Into<String>) -> Response {
    Response::Rejected {
        code,
        message: message.into(),
    }
}

fn lease_not_found(id: u64) -> Response {
    reject(
        RejectCode::LeaseNotFound,
        format!("lease {id} does not exist or has expired"),
    )
}

/// Whether `actual` relates to `wanted` as `op` says.
fn ordered<T: PartialOrd>(actual: T, op: CompareOpRecord, wanted: T) -> bool {
    match op {
        CompareOpRecord::Equal => actual == wanted,
        CompareOpRecord::NotEqual => actual != wanted,
        CompareOpRecord::Greater => actual > wanted,
        CompareOpRecord::Less => actual < wanted,
    }
}

fn compare_holds(c: &CompareRecord, kv: Option<&KeyRecord>) -> bool {
    let number = |n: u64| match c.value.as_u64() {
        Some(w) => ordered(n, c.op, w),
        None => false,
    };
    match c.target {
        CompareTargetRecord::Exists => match c.value.as_bool() {
            Some(w) => ordered(kv.is_some(), c.op, w),
            None => false,
        },
        CompareTargetRecord::CreateRevision => number(kv.map_or(0, |k| k.create_revision)),
        CompareTargetRecord::ModRevision => number(kv.map_or(0, |k| k.mod_revision)),
        CompareTargetRecord::Version => number(kv.map_or(0, |k| k.version)),
        CompareTargetRecord::Lease => number(kv.and_then(|k| k.lease).unwrap_or(0)),
        CompareTargetRecord::Value => {
            let Some(kv) = kv else { return false };
            match c.op {
                CompareOpRecord::Equal => kv.value == c.value,
                CompareOpRecord::NotEqual => kv.value != c.value,
                op => match (&kv.value, &c.value) {
                    (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
                        (Some(a), Some(b)) => ordered(a, op, b),
                        _ => false,
                    },
                    (Value::String(a), Value::String(b)) => ordered(a, op, b),
                    _ => false,
                },
            }
        }
    }
}

impl<'a> Batch<'a> {
    /// A batch over `store`, whose state is at `revision` with `command_version` enabled.
    pub fn new(store: &'a Store, revision: u64, command_version: u32) -> Self {
        Batch {
            store,
            wb: WriteBatch::default(),
            overlay: HashMap::new(),
            leases: HashMap::new(),
            idempotency: HashMap::new(),
            revision,
            writing: false,
            command_version,
        }
    }

    /// The last revision a command of this batch took (the state's, if none did).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The command set enabled once this batch is applied.
    pub fn command_version(&self) -> u32 {
        self.command_version
    }

    /// The writes to commit, atomically with the applied log id.
    pub fn into_write_batch(self) -> WriteBatch {
        self.wb
    }

    fn current(&self, key: &str) -> io::Result<Option<KeyRecord>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.store.key_record(key).map_err(io_err)
    }

    fn lease(&self, id: u64) -> io::Result<Option<LeaseRecord>> {
        if let Some(l) = self.leases.get(&id) {
            return Ok(l.clone());
        }
        self.store.lease_record(id).map_err(io_err)
    }

    fn set_lease(&mut self, rec: LeaseRecord) {
        self.wb.put_cf(
            self.store.cf(CF_LEASES),
            u64_key(rec.id),
            codec::encode(RecordKind::Lease, &rec),
        );
        self.leases.insert(rec.id, Some(rec));
    }

    fn remove_lease(&mut self, id: u64) {
        self.wb.delete_cf(self.store.cf(CF_LEASES), u64_key(id));
        self.leases.insert(id, None);
    }

    /// The revision the current command writes at.
    fn write_revision(&mut self) -> u64 {
        self.writing = true;
        self.revision + 1
    }

    /// The current command's revision if it wrote, else the last one.
    fn command_revision(&self) -> u64 {
        self.revision + u64::from(self.writing)
    }

    fn record_event(&mut self, event: &EventRecord) {
        let mut k = u64_key(event.revision).to_vec();
        k.extend_from_slice(event.key.as_bytes());
        self.wb.put_cf(
            self.store.cf(CF_HISTORY),
            k,
            codec::encode(RecordKind::Event, event),
        );
    }

    fn attach(&mut self, lease: Option<u64>, key: &str, attach: bool) -> io::Result<()> {
        let Some(id) = lease else { return Ok(()) };
        let Some(mut rec) = self.lease(id)? else {
            return Ok(());
        };
        match (rec.keys.binary_search_by(|k| k.as_str().cmp(key)), attach) {
            (Err(at), true) => rec.keys.insert(at, key.to_string()),
            (Ok(at), false) => {
                rec.keys.remove(at);
            }
            _ => return Ok(()),
        }
        self.set_lease(rec);
        Ok(())
    }

    fn put(
        &mut self,
        key: String,
        value: Value,
        lease: Option<u64>,
    ) -> io::Result<(u64, Option<KeyRecord>)> {
        let prev = self.current(&key)?;
        let revision = self.write_revision();
        let rec = KeyRecord {
            value,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        let prev_lease = prev.as_ref().and_then(|p| p.lease);
        if prev_lease != lease {
            self.attach(prev_lease, &key, false)?;
            self.attach(lease, &key, true)?;
        }
        self.wb.put_cf(
            self.store.cf(CF_KV),
            key.as_bytes(),
            codec::encode(RecordKind::KeyValue, &rec),
        );
        self.record_event(&EventRecord {
            revision,
            key: key.clone(),
            kind: EventKind::Put,
            kv: Some(rec.clone()),
        });
        self.overlay.insert(key, Some(rec));
        Ok((revision, prev))
    }

    /// Deletes a key if it exists (deleting nothing changes nothing and takes no revision).
    fn delete(&mut self, key: String) -> io::Result<Option<KeyRecord>> {
        let prev = self.current(&key)?;
        let Some(p) = &prev else { return Ok(None) };
        let lease = p.lease;
        let revision = self.write_revision();
        self.attach(lease, &key, false)?;
        self.wb.delete_cf(self.store.cf(CF_KV), key.as_bytes());
        self.record_event(&EventRecord {
            revision,
            key: key.clone(),
            kind: EventKind::Delete,
            kv: None,
        });
        self.overlay.insert(key, None);
        Ok(prev)
    }

    /// Live keys under `prefix`, seen through the overlay.
    fn keys_with_prefix(&self, prefix: &str) -> io::Result<BTreeSet<String>> {
        let mut keys = BTreeSet::new();
        let stored =
            self.store
                .scan::<KeyRecord>(CF_KV, prefix.as_bytes(), RecordKind::KeyValue, "key");
        for item in stored {
            let (k, _) = item.map_err(io_err)?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            keys.insert(String::from_utf8(k).map_err(|_| io_err("stored key is not UTF-8"))?);
        }
        for (k, v) in &self.overlay {
            if k.starts_with(prefix) {
                if v.is_some() {
                    keys.insert(k.clone());
                } else {
                    keys.remove(k);
                }
            }
        }
        Ok(keys)
    }

    fn txn(
        &mut self,
        compare: Vec<CompareRecord>,
        success: Vec<TxnOpRecord>,
        failure: Vec<TxnOpRecord>,
    ) -> io::Result<Response> {
        let mut succeeded = true;
        for c in &compare {
            let kv = self.current(&c.key)?;
            if !compare_holds(c, kv.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { success } else { failure };
        // Checked before anything is written, so a rejected transaction changes nothing.
        for op in &ops {
            if let TxnOpRecord::Put {
                lease: Some(id),
                key,
                ..
            } = op
                && self.lease(*id)?.is_none()
            {
                return Ok(reject(
                    RejectCode::LeaseNotFound,
                    format!("lease {id} (for key {key:?}) does not exist or has expired"),
                ));
            }
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOpRecord::Put { key, value, lease } => {
                    let (revision, prev) = self.put(key.clone(), value, lease)?;
                    TxnOpResultRecord::Put {
                        key,
                        revision,
                        prev,
                    }
                }
                TxnOpRecord::Get { key } => {
                    let kv = self.current(&key)?;
                    TxnOpResultRecord::Get { key, kv }
                }
                TxnOpRecord::Delete { key } => TxnOpResultRecord::Delete {
                    prev: self.delete(key.clone())?,
                    key,
                },
                TxnOpRecord::DeletePrefix { prefix } => {
                    let mut deleted = 0;
                    for key in self.keys_with_prefix(&prefix)? {
                        deleted += u64::from(self.delete(key)?.is_some());
                    }
                    TxnOpResultRecord::DeletePrefix { deleted }
                }
            });
        }
        Ok(Response::Txn {
            succeeded,
            revision: self.command_revision(),
            results,
        })
    }

    /// Deletes a lease and every key still attached to it.
    fn end_lease(&mut self, lease: LeaseRecord) -> io::Result<u64> {
        let mut deleted = 0;
        for key in &lease.keys {
            // Only keys still attached: a key re-put without the lease is no longer its.
            if self
                .current(key)?
                .is_some_and(|k| k.lease == Some(lease.id))
            {
                deleted += u64::from(self.delete(key.clone())?.is_some());
            }
        }
        self.remove_lease(lease.id);
        Ok(deleted)
    }

    /// What `op` does, at the command's replicated time `now_ms`. One arm per operation and
    /// no catch-all: a new operation cannot be added without saying what it does.
    fn apply_op(&mut self, op: Operation, now_ms: u64) -> io::Result<Response> {
        match op {
            Operation::Put { key, value, lease } => self.put_op(key, value, lease),
            Operation::Delete { key } => {
                let prev = self.delete(key)?;
                Ok(Response::Delete {
                    revision: self.command_revision(),
                    prev,
                })
            }
            Operation::Txn {
                compare,
                success,
                failure,
            } => self.txn(compare, success, failure),
            Operation::LeaseGrant { id, ttl_ms } => self.lease_grant(id, ttl_ms, now_ms),
            Operation::LeaseKeepAlive { id } => self.lease_keep_alive(id, now_ms),
            Operation::LeaseRevoke { id } => self.lease_revoke(id),
            Operation::ExpireLeases { ids } => self.expire_leases(ids, now_ms),
            Operation::SweepIdempotency { older_than_ms } => {
                self.sweep_idempotency(now_ms.saturating_sub(older_than_ms))
            }
            Operation::EnableCommandVersion { version } => {
                self.command_version = self.command_version.max(version);
                Ok(Response::Enabled {
                    version: self.command_version,
                })
            }
        }
    }

    fn put_op(&mut self, key: String, value: Value, lease: Option<u64>) -> io::Result<Response> {
        if let Some(id) = lease
            && self.lease(id)?.is_none()
        {
            return Ok(lease_not_found(id));
        }
        let (revision, prev) = self.put(key, value, lease)?;
        Ok(Response::Put { revision, prev })
    }

    fn lease_grant(&mut self, id: u64, ttl_ms: u64, now_ms: u64) -> io::Result<Response> {
        if self.lease(id)?.is_some() {
            return Ok(reject(
                RejectCode::LeaseExists,
                format!("lease {id} already exists"),
            ));
        }
        self.set_lease(LeaseRecord {
            id,
            ttl_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            keys: Vec::new(),
        });
        Ok(Response::Lease { id, ttl_ms })
    }

    /// Restarts a lease's time to live from `now_ms` (never shortening it).
    fn lease_keep_alive(&mut self, id: u64, now_ms: u64) -> io::Result<Response> {
        let Some(mut rec) = self.lease(id)? else {
            return Ok(lease_not_found(id));
        };
        rec.expires_at_ms = rec.expires_at_ms.max(now_ms.saturating_add(rec.ttl_ms));
        let ttl_ms = rec.ttl_ms;
        self.set_lease(rec);
        Ok(Response::Lease { id, ttl_ms })
    }

    fn lease_revoke(&mut self, id: u64) -> io::Result<Response> {
        let Some(rec) = self.lease(id)? else {
            return Ok(lease_not_found(id));
        };
        let deleted = self.end_lease(rec)?;
        Ok(Response::LeaseRevoked {
            id,
            revision: self.command_revision(),
            deleted,
        })
    }

    /// Ends the leases still past their deadline at `now_ms` (a keep-alive ordered before
    /// this command wins), with their keys, at one revision.
    fn expire_leases(&mut self, ids: Vec<u64>, now_ms: u64) -> io::Result<Response> {
        let mut expired = Vec::new();
        for id in ids {
            if let Some(rec) = self.lease(id)?
                && rec.expires_at_ms <= now_ms
            {
                self.end_lease(rec)?;
                expired.push(id);
            }
        }
        Ok(Response::LeasesExpired {
            revision: self.command_revision(),
            ids: expired,
        })
    }

    /// Forgets the idempotency answers given before `cutoff_ms`.
    fn sweep_idempotency(&mut self, cutoff_ms: u64) -> io::Result<Response> {
        let old = self
            .store
            .idempotency_older_than(cutoff_ms)
            .map_err(io_err)?;
        let removed = old.len() as u64;
        for k in old {
            self.wb.delete_cf(self.store.cf(CF_IDEMPOTENCY), &k);
            if let Ok(s) = String::from_utf8(k) {
                self.idempotency.remove(&s);
            }
        }
        Ok(Response::Swept { removed })
    }

    /// Applies one command: its answer, or the answer first given to its idempotency key.
    pub fn apply(&mut self, cmd: Command) -> io::Result<Response> {
        if let Some(ik) = &cmd.idempotency_key {
            if let Some(seen) = self.idempotency.get(ik) {
                return Ok(seen.clone());
            }
            let seen: Option<IdempotencyRecord> = self
                .store
                .get_record(
                    CF_IDEMPOTENCY,
                    ik.as_bytes(),
                    RecordKind::Idempotency,
                    "idempotency record",
                )
                .map_err(io_err)?;
            if let Some(seen) = seen {
                return Ok(seen.response);
            }
        }
        self.writing = false;
        let response = self.apply_op(cmd.op, cmd.proposed_at_ms)?;
        self.revision = self.command_revision();
        if let Some(ik) = cmd.idempotency_key {
            let rec = IdempotencyRecord {
                response: response.clone(),
                applied_at_ms: cmd.proposed_at_ms,
            };
            self.wb.put_cf(
                self.store.cf(CF_IDEMPOTENCY),
                ik.as_bytes(),
                codec::encode(RecordKind::Idempotency, &rec),
            );
            self.idempotency.insert(ik, response.clone());
        }
        Ok(response)
    }
}

/// The semantics as a table: commands applied in batches, as Raft applies them, to a real
/// RocksDB store → each command's answer, then what the state holds.
#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use serde_json::json;

    use super::super::StateMachine;
    use super::super::records::*;
    use super::super::types::Entry;
    use super::super::types::log_id_from_record;
    use super::*;
    use crate::metrics::Metrics;

    /// A command as proposed: the operation, the leader's time, an idempotency key.
    struct Cmd(Command);

    impl Cmd {
        fn at(mut self, ms: u64) -> Self {
            self.0.proposed_at_ms = ms;
            self
        }

        fn once(mut self, key: &str) -> Self {
            self.0.idempotency_key = Some(key.into());
            self
        }
    }

    fn cmd(op: Operation) -> Cmd {
        Cmd(Command {
            op,
            idempotency_key: None,
            proposed_at_ms: 0,
        })
    }

    fn put(key: &str, value: Value) -> Cmd {
        cmd(Operation::Put {
            key: key.into(),
            value,
            lease: None,
        })
    }

    fn put_leased(key: &str, value: Value, lease: u64) -> Cmd {
        cmd(Operation::Put {
            key: key.into(),
            value,
            lease: Some(lease),
        })
    }

    fn del(key: &str) -> Cmd {
        cmd(Operation::Delete { key: key.into() })
    }

    fn txn(
        compare: Vec<CompareRecord>,
        success: Vec<TxnOpRecord>,
        failure: Vec<TxnOpRecord>,
    ) -> Cmd {
        cmd(Operation::Txn {
            compare,
            success,
            failure,
        })
    }

    fn grant(id: u64, ttl_ms: u64) -> Cmd {
        cmd(Operation::LeaseGrant { id, ttl_ms })
    }

    fn keep(id: u64) -> Cmd {
        cmd(Operation::LeaseKeepAlive { id })
    }

    fn revoke(id: u64) -> Cmd {
        cmd(Operation::LeaseRevoke { id })
    }

    fn expire(ids: &[u64]) -> Cmd {
        cmd(Operation::ExpireLeases { ids: ids.to_vec() })
    }

    fn sweep(older_than_ms: u64) -> Cmd {
        cmd(Operation::SweepIdempotency { older_than_ms })
    }

    fn enable(version: u32) -> Cmd {
        cmd(Operation::EnableCommandVersion { version })
    }

    fn compare(
        key: &str,
        target: CompareTargetRecord,
        op: CompareOpRecord,
        value: Value,
    ) -> CompareRecord {
        CompareRecord {
            key: key.into(),
            target,
            op,
            value,
        }
    }

    fn t_put(key: &str, value: Value) -> TxnOpRecord {
        TxnOpRecord::Put {
            key: key.into(),
            value,
            lease: None,
        }
    }

    fn t_get(key: &str) -> TxnOpRecord {
        TxnOpRecord::Get { key: key.into() }
    }

    fn t_del(key: &str) -> TxnOpRecord {
        TxnOpRecord::Delete { key: key.into() }
    }

    fn t_del_prefix(prefix: &str) -> TxnOpRecord {
        TxnOpRecord::DeletePrefix {
            prefix: prefix.into(),
        }
    }

    /// A key's record: value, create and modify revisions, version.
    fn kv(value: Value, create_revision: u64, mod_revision: u64, version: u64) -> KeyRecord {
        KeyRecord {
            value,
            create_revision,
            mod_revision,
            version,
            lease: None,
        }
    }

    fn leased(mut k: KeyRecord, lease: u64) -> KeyRecord {
        k.lease = Some(lease);
        k
    }

    fn put_ok(revision: u64, prev: Option<KeyRecord>) -> Response {
        Response::Put { revision, prev }
    }

    fn del_ok(revision: u64, prev: Option<KeyRecord>) -> Response {
        Response::Delete { revision, prev }
    }

    fn txn_ok(succeeded: bool, revision: u64, results: Vec<TxnOpResultRecord>) -> Response {
        Response::Txn {
            succeeded,
            revision,
            results,
        }
    }

    fn lease_ok(id: u64, ttl_ms: u64) -> Response {
        Response::Lease { id, ttl_ms }
    }

    fn no_lease(id: u64) -> Response {
        Response::Rejected {
            code: RejectCode::LeaseNotFound,
            message: format!("lease {id} does not exist or has expired"),
        }
    }

    fn r_get(key: &str, kv: Option<KeyRecord>) -> TxnOpResultRecord {
        TxnOpResultRecord::Get {
            key: key.into(),
            kv,
        }
    }

    /// What the state holds after a case's batches.
    enum Check {
        Revision(u64),
        Key(&'static str, Option<KeyRecord>),
        /// A lease's deadline and keys, or that it is gone.
        Lease(u64, Option<(u64, Vec<&'static str>)>),
        /// The changes recorded at a revision, by key.
        Changes(u64, Vec<(&'static str, EventKind)>),
        /// The oldest revision a watch may start from.
        Oldest(u64),
        CommandVersion(u32),
    }

    struct Case {
        name: &'static str,
        /// Kept revisions of history (`--history-revisions`).
        history: u64,
        /// Batches of commands, each with the answer it must get.
        batches: Vec<Vec<(Cmd, Response)>>,
        then: Vec<Check>,
    }

    fn case(name: &'static str, batches: Vec<Vec<(Cmd, Response)>>, then: Vec<Check>) -> Case {
        Case {
            name,
            history: 1000,
            batches,
            then,
        }
    }

    use CompareOpRecord::*;
    use CompareTargetRecord as T;

    /// One compare on the state {a: 7 (created at 1, modified at 2, version 2), s: "m" (3),
    /// l: true (4, lease 9), o: {"x": 1} (5)}, and whether it holds.
    fn compares() -> Vec<(CompareRecord, bool)> {
        vec![
            (compare("a", T::Value, Equal, json!(7)), true),
            (compare("a", T::Value, Equal, json!(5)), false),
            (compare("a", T::Value, NotEqual, json!(5)), true),
            (compare("a", T::Value, NotEqual, json!(7)), false),
            (compare("a", T::Value, Greater, json!(6)), true),
            (compare("a", T::Value, Greater, json!(7)), false),
            (compare("a", T::Value, Less, json!(7.5)), true),
            (compare("a", T::Value, Less, json!(7)), false),
            (compare("a", T::Value, Greater, json!("6")), false),
            (compare("s", T::Value, Greater, json!("a")), true),
            (compare("s", T::Value, Less, json!("a")), false),
            (compare("s", T::Value, Equal, json!("m")), true),
            (compare("o", T::Value, Equal, json!({"x": 1})), true),
            (compare("o", T::Value, Greater, json!({"x": 0})), false),
            (compare("zz", T::Value, Equal, json!(null)), false),
            (compare("zz", T::Value, NotEqual, json!(1)), false),
            (compare("a", T::CreateRevision, Equal, json!(1)), true),
            (compare("a", T::CreateRevision, NotEqual, json!(1)), false),
            (compare("a", T::CreateRevision, Greater, json!(0)), true),
            (compare("a", T::CreateRevision, Less, json!(1)), false),
            (compare("zz", T::CreateRevision, Equal, json!(0)), true),
            (compare("a", T::ModRevision, Equal, json!(2)), true),
            (compare("a", T::ModRevision, NotEqual, json!(2)), false),
            (compare("a", T::ModRevision, Greater, json!(1)), true),
            (compare("a", T::ModRevision, Less, json!(2)), false),
            (compare("a", T::Version, Equal, json!(2)), true),
            (compare("a", T::Version, Less, json!(3)), true),
            (compare("a", T::Version, Greater, json!(2)), false),
            (compare("a", T::Version, Equal, json!("2")), false),
            (compare("zz", T::Version, Equal, json!(0)), true),
            (compare("l", T::Lease, Equal, json!(9)), true),
            (compare("l", T::Lease, NotEqual, json!(9)), false),
            (compare("l", T::Lease, Greater, json!(8)), true),
            (compare("l", T::Lease, Less, json!(9)), false),
            (compare("a", T::Lease, Equal, json!(0)), true),
            (compare("a", T::Exists, Equal, json!(true)), true),
            (compare("a", T::Exists, NotEqual, json!(true)), false),
            (compare("zz", T::Exists, Equal, json!(false)), true),
            (compare("zz", T::Exists, NotEqual, json!(false)), false),
            (compare("a", T::Exists, Equal, json!(1)), false),
        ]
    }

    fn cases() -> Vec<Case> {
        let a1 = kv(json!(1), 1, 1, 1);
        vec![
            case(
                "a put creates at the next revision, a second one bumps version and revision",
                vec![vec![
                    (put("a", json!(1)), put_ok(1, None)),
                    (put("a", json!(2)), put_ok(2, Some(a1.clone()))),
                    (put("b", json!("x")), put_ok(3, None)),
                ]],
                vec![
                    Check::Revision(3),
                    Check::Key("a", Some(kv(json!(2), 1, 2, 2))),
                    Check::Key("b", Some(kv(json!("x"), 3, 3, 1))),
                    Check::Changes(1, vec![("a", EventKind::Put)]),
                    Check::Changes(2, vec![("a", EventKind::Put)]),
                    Check::Changes(3, vec![("b", EventKind::Put)]),
                ],
            ),
            case(
                "later batches build on what earlier ones stored",
                vec![
                    vec![(put("a", json!(1)), put_ok(1, None))],
                    vec![(put("a", json!(2)), put_ok(2, Some(a1.clone())))],
                    vec![(del("a"), del_ok(3, Some(kv(json!(2), 1, 2, 2))))],
                ],
                vec![Check::Revision(3), Check::Key("a", None)],
            ),
            case(
                "a delete takes a revision only when it deletes; a new key starts over",
                vec![vec![
                    (put("a", json!(1)), put_ok(1, None)),
                    (del("a"), del_ok(2, Some(a1.clone()))),
                    (del("a"), del_ok(2, None)),
                    (del("never"), del_ok(2, None)),
                    (put("a", json!(3)), put_ok(3, None)),
                ]],
                vec![
                    Check::Revision(3),
                    Check::Key("a", Some(kv(json!(3), 3, 3, 1))),
                    Check::Changes(2, vec![("a", EventKind::Delete)]),
                ],
            ),
            case(
                "a put naming a missing lease is rejected and changes nothing",
                vec![vec![
                    (put_leased("a", json!(1), 7), no_lease(7)),
                    (put("b", json!(1)), put_ok(1, None)),
                ]],
                vec![Check::Revision(1), Check::Key("a", None)],
            ),
            case(
                "keys attach to a lease, move between leases and detach",
                vec![
                    vec![
                        (grant(10, 5000).at(1000), lease_ok(10, 5000)),
                        (grant(11, 5000).at(1000), lease_ok(11, 5000)),
                        (
                            grant(10, 9000),
                            Response::Rejected {
                                code: RejectCode::LeaseExists,
                                message: "lease 10 already exists".into(),
                            },
                        ),
                        (put_leased("a", json!(1), 10), put_ok(1, None)),
                        (put_leased("b", json!(1), 10), put_ok(2, None)),
                    ],
                    vec![
                        (
                            put_leased("a", json!(2), 11),
                            put_ok(3, Some(leased(a1.clone(), 10))),
                        ),
                        (
                            put("b", json!(2)),
                            put_ok(4, Some(leased(kv(json!(1), 2, 2, 1), 10))),
                        ),
                    ],
                ],
                vec![
                    Check::Revision(4),
                    Check::Lease(10, Some((6000, vec![]))),
                    Check::Lease(11, Some((6000, vec!["a"]))),
                    Check::Key("a", Some(leased(kv(json!(2), 1, 3, 2), 11))),
                    Check::Key("b", Some(kv(json!(2), 2, 4, 2))),
                ],
            ),
            case(
                "deleting a leased key detaches it",
                vec![vec![
                    (grant(1, 5000), lease_ok(1, 5000)),
                    (put_leased("a", json!(1), 1), put_ok(1, None)),
                    (put_leased("b", json!(1), 1), put_ok(2, None)),
                    (del("a"), del_ok(3, Some(leased(a1.clone(), 1)))),
                ]],
                vec![Check::Lease(1, Some((5000, vec!["b"])))],
            ),
            case(
                "a keep-alive restarts the TTL from its own time and never shortens it",
                vec![vec![
                    (grant(1, 1000).at(0), lease_ok(1, 1000)),
                    (keep(1).at(5000), lease_ok(1, 1000)),
                    (keep(1).at(2000), lease_ok(1, 1000)),
                    (keep(99).at(2000), no_lease(99)),
                ]],
                vec![Check::Lease(1, Some((6000, vec![]))), Check::Revision(0)],
            ),
            case(
                "a revoke deletes the lease's keys at one revision",
                vec![vec![
                    (grant(1, 5000), lease_ok(1, 5000)),
                    (grant(2, 5000), lease_ok(2, 5000)),
                    (put_leased("a", json!(1), 1), put_ok(1, None)),
                    (put_leased("b", json!(1), 1), put_ok(2, None)),
                    (put("c", json!(1)), put_ok(3, None)),
                    (
                        revoke(1),
                        Response::LeaseRevoked {
                            id: 1,
                            revision: 4,
                            deleted: 2,
                        },
                    ),
                    (revoke(1), no_lease(1)),
                    (
                        revoke(2),
                        Response::LeaseRevoked {
                            id: 2,
                            revision: 4,
                            deleted: 0,
                        },
                    ),
                ]],
                vec![
                    Check::Revision(4),
                    Check::Key("a", None),
                    Check::Key("b", None),
                    Check::Key("c", Some(kv(json!(1), 3, 3, 1))),
                    Check::Lease(1, None),
                    Check::Lease(2, None),
                    Check::Changes(4, vec![("a", EventKind::Delete), ("b", EventKind::Delete)]),
                ],
            ),
            case(
                "a key put again without its lease outlives the lease",
                vec![vec![
                    (grant(1, 5000), lease_ok(1, 5000)),
                    (put_leased("a", json!(1), 1), put_ok(1, None)),
                    (put("a", json!(2)), put_ok(2, Some(leased(a1.clone(), 1)))),
                    (
                        revoke(1),
                        Response::LeaseRevoked {
                            id: 1,
                            revision: 2,
                            deleted: 0,
                        },
                    ),
                ]],
                vec![Check::Key("a", Some(kv(json!(2), 1, 2, 2)))],
            ),
            case(
                "expiry ends leases past their deadline at the command's time; a keep-alive first wins",
                vec![
                    vec![
                        (grant(1, 1000).at(0), lease_ok(1, 1000)),
                        (grant(2, 1000).at(0), lease_ok(2, 1000)),
                        (put_leased("a", json!(1), 1), put_ok(1, None)),
                        (put_leased("b", json!(1), 2), put_ok(2, None)),
                        (keep(2).at(900), lease_ok(2, 1000)),
                    ],
                    vec![
                        (
                            expire(&[1, 2, 3]).at(1500),
                            Response::LeasesExpired {
                                revision: 3,
                                ids: vec![1],
                            },
                        ),
                        (
                            expire(&[2]).at(1899),
                            Response::LeasesExpired {
                                revision: 3,
                                ids: vec![],
                            },
                        ),
                    ],
                    vec![(
                        expire(&[2]).at(1900),
                        Response::LeasesExpired {
                            revision: 4,
                            ids: vec![2],
                        },
                    )],
                ],
                vec![
                    Check::Revision(4),
                    Check::Key("a", None),
                    Check::Key("b", None),
                    Check::Lease(1, None),
                    Check::Lease(2, None),
                    Check::Changes(3, vec![("a", EventKind::Delete)]),
                    Check::Changes(4, vec![("b", EventKind::Delete)]),
                ],
            ),
            case(
                "a transaction's success branch writes at one revision, each result in order",
                vec![
                    vec![
                        (put("a", json!(1)), put_ok(1, None)),
                        (put("p/1", json!(1)), put_ok(2, None)),
                        (put("p/2", json!(1)), put_ok(3, None)),
                    ],
                    vec![(
                        txn(
                            vec![compare("a", T::Exists, Equal, json!(true))],
                            vec![
                                t_put("b", json!("new")),
                                t_get("b"),
                                t_del("a"),
                                t_del_prefix("p/"),
                                t_get("a"),
                            ],
                            vec![t_put("never", json!(0))],
                        ),
                        txn_ok(
                            true,
                            4,
                            vec![
                                TxnOpResultRecord::Put {
                                    key: "b".into(),
                                    revision: 4,
                                    prev: None,
                                },
                                r_get("b", Some(kv(json!("new"), 4, 4, 1))),
                                TxnOpResultRecord::Delete {
                                    key: "a".into(),
                                    prev: Some(a1.clone()),
                                },
                                TxnOpResultRecord::DeletePrefix { deleted: 2 },
                                r_get("a", None),
                            ],
                        ),
                    )],
                ],
                vec![
                    Check::Revision(4),
                    Check::Key("never", None),
                    Check::Changes(
                        4,
                        vec![
                            ("a", EventKind::Delete),
                            ("b", EventKind::Put),
                            ("p/1", EventKind::Delete),
                            ("p/2", EventKind::Delete),
                        ],
                    ),
                ],
            ),
            case(
                "a transaction whose compares fail runs the failure branch; one writing nothing takes no revision",
                vec![vec![
                    (put("a", json!(1)), put_ok(1, None)),
                    (
                        txn(
                            vec![
                                compare("a", T::Exists, Equal, json!(true)),
                                compare("a", T::Version, Equal, json!(5)),
                            ],
                            vec![t_put("s", json!(1))],
                            vec![t_put("f", json!(1)), t_get("a")],
                        ),
                        txn_ok(
                            false,
                            2,
                            vec![
                                TxnOpResultRecord::Put {
                                    key: "f".into(),
                                    revision: 2,
                                    prev: None,
                                },
                                r_get("a", Some(a1.clone())),
                            ],
                        ),
                    ),
                    (
                        txn(vec![], vec![t_get("zz"), t_del("zz")], vec![]),
                        txn_ok(
                            true,
                            2,
                            vec![
                                r_get("zz", None),
                                TxnOpResultRecord::Delete {
                                    key: "zz".into(),
                                    prev: None,
                                },
                            ],
                        ),
                    ),
                ]],
                vec![Check::Revision(2), Check::Key("s", None)],
            ),
            case(
                "a transaction naming a missing lease in the branch that runs changes nothing",
                vec![vec![
                    (put("a", json!(1)), put_ok(1, None)),
                    (
                        txn(
                            vec![compare("a", T::Exists, Equal, json!(true))],
                            vec![
                                t_del("a"),
                                TxnOpRecord::Put {
                                    key: "b".into(),
                                    value: json!(1),
                                    lease: Some(42),
                                },
                            ],
                            vec![],
                        ),
                        Response::Rejected {
                            code: RejectCode::LeaseNotFound,
                            message: "lease 42 (for key \"b\") does not exist or has expired"
                                .into(),
                        },
                    ),
                    (
                        txn(
                            vec![compare("a", T::Exists, Equal, json!(false))],
                            vec![TxnOpRecord::Put {
                                key: "b".into(),
                                value: json!(1),
                                lease: Some(42),
                            }],
                            vec![t_put("c", json!(1))],
                        ),
                        txn_ok(
                            false,
                            2,
                            vec![TxnOpResultRecord::Put {
                                key: "c".into(),
                                revision: 2,
                                prev: None,
                            }],
                        ),
                    ),
                ]],
                vec![
                    Check::Revision(2),
                    Check::Key("a", Some(a1.clone())),
                    Check::Key("b", None),
                ],
            ),
            case(
                "a prefix delete sees the batch's own writes and deletes",
                vec![vec![
                    (put("q/1", json!(1)), put_ok(1, None)),
                    (put("q/2", json!(1)), put_ok(2, None)),
                    (put("qq", json!(1)), put_ok(3, None)),
                    (put("q/3", json!(1)), put_ok(4, None)),
                    (del("q/3"), del_ok(5, Some(kv(json!(1), 4, 4, 1)))),
                    (
                        txn(vec![], vec![t_del_prefix("q/")], vec![]),
                        txn_ok(
                            true,
                            6,
                            vec![TxnOpResultRecord::DeletePrefix { deleted: 2 }],
                        ),
                    ),
                    (
                        txn(vec![], vec![t_del_prefix("none/")], vec![]),
                        txn_ok(
                            true,
                            6,
                            vec![TxnOpResultRecord::DeletePrefix { deleted: 0 }],
                        ),
                    ),
                ]],
                vec![
                    Check::Key("q/1", None),
                    Check::Key("q/2", None),
                    Check::Key("qq", Some(kv(json!(1), 3, 3, 1))),
                    Check::Changes(
                        6,
                        vec![("q/1", EventKind::Delete), ("q/2", EventKind::Delete)],
                    ),
                ],
            ),
            case(
                "a replayed idempotency key answers the first answer and takes no revision",
                vec![
                    vec![
                        (put("a", json!(1)).once("k1"), put_ok(1, None)),
                        (put("a", json!(2)).once("k1"), put_ok(1, None)),
                        (del("a").once("k1"), put_ok(1, None)),
                        (put_leased("b", json!(1), 5).once("k2"), no_lease(5)),
                        (grant(5, 5000), lease_ok(5, 5000)),
                        (put_leased("b", json!(1), 5).once("k2"), no_lease(5)),
                    ],
                    vec![
                        (put("a", json!(3)).once("k1"), put_ok(1, None)),
                        (put_leased("b", json!(1), 5).once("k2"), no_lease(5)),
                    ],
                ],
                vec![
                    Check::Revision(1),
                    Check::Key("a", Some(a1.clone())),
                    Check::Key("b", None),
                ],
            ),
            case(
                "a sweep forgets answers older than its cutoff, so their keys apply again",
                vec![
                    vec![
                        (put("a", json!(1)).once("old").at(1000), put_ok(1, None)),
                        (put("b", json!(1)).once("new").at(5000), put_ok(2, None)),
                    ],
                    vec![(sweep(3000).at(6000), Response::Swept { removed: 1 })],
                    vec![
                        (
                            put("a", json!(9)).once("old").at(7000),
                            put_ok(3, Some(a1.clone())),
                        ),
                        (put("b", json!(9)).once("new").at(7000), put_ok(2, None)),
                    ],
                ],
                vec![
                    Check::Revision(3),
                    Check::Key("a", Some(kv(json!(9), 1, 3, 2))),
                    Check::Key("b", Some(kv(json!(1), 2, 2, 1))),
                ],
            ),
            case(
                "a command set once enabled stays enabled",
                vec![vec![
                    (enable(2), Response::Enabled { version: 2 }),
                    (enable(1), Response::Enabled { version: 2 }),
                ]],
                vec![Check::CommandVersion(2), Check::Revision(0)],
            ),
            Case {
                name: "history keeps the configured revisions, compacted in steps",
                history: 10,
                batches: vec![
                    (1..=11)
                        .map(|i| (put(&format!("k{i:02}"), json!(i)), put_ok(i, None)))
                        .collect(),
                    vec![(put("k12", json!(12)), put_ok(12, None))],
                ],
                then: vec![
                    Check::Revision(12),
                    Check::Oldest(2),
                    Check::Changes(1, vec![]),
                    Check::Changes(2, vec![("k02", EventKind::Put)]),
                ],
            },
            {
                // The compare table: every target and operator, on one state.
                let setup = vec![
                    (put("a", json!(5)), put_ok(1, None)),
                    (put("a", json!(7)), put_ok(2, Some(kv(json!(5), 1, 1, 1)))),
                    (put("s", json!("m")), put_ok(3, None)),
                    (grant(9, 5000), lease_ok(9, 5000)),
                    (put_leased("l", json!(true), 9), put_ok(4, None)),
                    (put("o", json!({"x": 1})), put_ok(5, None)),
                ];
                let a = kv(json!(7), 1, 2, 2);
                let checks = compares()
                    .into_iter()
                    .map(|(c, holds)| {
                        let answer = txn_ok(
                            holds,
                            5,
                            if holds {
                                vec![r_get("a", Some(a.clone()))]
                            } else {
                                vec![]
                            },
                        );
                        (txn(vec![c], vec![t_get("a")], vec![]), answer)
                    })
                    .collect();
                case(
                    "every compare target and operator",
                    vec![setup, checks],
                    vec![Check::Revision(5)],
                )
            },
        ]
    }

    fn entry(index: u64, command: Command) -> Entry {
        Entry {
            log_id: log_id_from_record(&LogIdRecord {
                term: 1,
                leader: 1,
                index,
            }),
            payload: EntryPayload::Normal(command),
        }
    }

    #[test]
    fn history_reads_stop_between_revisions_at_the_byte_bound_but_never_before_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(store, Metrics::new()).unwrap();
        let reader = sm.reader();
        // Revisions 1-4, each one ~10 KiB value; revision 3 a transaction of two puts.
        let value = || json!("v".repeat(10 * 1024));
        let op = |key: &str| TxnOpRecord::Put {
            key: key.into(),
            value: value(),
            lease: None,
        };
        let cmds = vec![
            put("h/1", value()),
            put("h/2", value()),
            txn(vec![], vec![op("h/3a"), op("h/3b")], vec![]),
            put("h/4", value()),
        ];
        let entries = cmds
            .into_iter()
            .enumerate()
            .map(|(i, Cmd(c))| entry(i as u64 + 1, c))
            .collect();
        sm.apply_entries(entries).unwrap();
        let revisions = |max_bytes| -> Vec<u64> {
            reader
                .history(1, 4, 100, max_bytes)
                .unwrap()
                .iter()
                .map(|e| e.revision)
                .collect()
        };
        assert_eq!(revisions(usize::MAX), [1, 2, 3, 3, 4]);
        assert_eq!(revisions(1), [1], "one revision even over the bound");
        // Past the first revision's bytes, the second is read whole, and so on.
        assert_eq!(revisions(15 * 1024), [1, 2]);
        assert_eq!(
            revisions(25 * 1024),
            [1, 2, 3, 3],
            "a revision is never split"
        );
    }

    #[test]
    fn commands_applied_in_order_answer_and_leave_the_state_the_table_says() {
        for case in cases() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut sm = StateMachine::open(store.clone(), Metrics::new())
                .unwrap()
                .with_history_revisions(case.history);
            let reader = sm.reader();
            let mut index = 0;
            for (b, batch) in case.batches.into_iter().enumerate() {
                let (cmds, expected): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let entries = cmds
                    .into_iter()
                    .map(|Cmd(c)| {
                        index += 1;
                        entry(index, c)
                    })
                    .collect();
                let answers = sm.apply_entries(entries).unwrap();
                for (i, (got, want)) in answers.iter().zip(&expected).enumerate() {
                    assert_eq!(got, want, "{}: batch {b}, command {i}", case.name);
                }
                assert_eq!(answers.len(), expected.len(), "{}", case.name);
            }
            let name = case.name;
            for check in case.then {
                match check {
                    Check::Revision(r) => assert_eq!(reader.revision(), r, "{name}: revision"),
                    Check::Key(k, want) => {
                        assert_eq!(reader.get(k).unwrap(), want, "{name}: key {k}")
                    }
                    Check::Lease(id, want) => {
                        let got = reader.lease(id).unwrap().map(|l| (l.expires_at_ms, l.keys));
                        let want = want.map(|(at, keys)| {
                            (at, keys.into_iter().map(String::from).collect::<Vec<_>>())
                        });
                        assert_eq!(got, want, "{name}: lease {id}");
                    }
                    Check::Changes(revision, want) => {
                        let got: Vec<(String, EventKind)> = reader
                            .history(revision, revision, 1, usize::MAX)
                            .unwrap()
                            .into_iter()
                            .filter(|e| e.revision == revision)
                            .map(|e| (e.key, e.kind))
                            .collect();
                        let want: Vec<(String, EventKind)> =
                            want.into_iter().map(|(k, e)| (k.to_string(), e)).collect();
                        assert_eq!(got, want, "{name}: changes at {revision}");
                    }
                    Check::Oldest(r) => {
                        assert_eq!(reader.oldest_revision(), r, "{name}: oldest revision")
                    }
                    Check::CommandVersion(v) => {
                        assert_eq!(reader.command_version(), v, "{name}: command set");
                        assert_eq!(store.applied_state().unwrap().command_version, Some(v));
                    }
                }
            }
            // What was applied survives a reopen, as after a restart.
            let reopened = StateMachine::open(store.clone(), Metrics::new()).unwrap();
            assert_eq!(reopened.reader().revision(), reader.revision(), "{name}");
            assert_eq!(
                store.applied_state().unwrap().last_applied.map(|l| l.index),
                Some(index).filter(|i| *i > 0),
                "{name}: last applied"
            );
        }
    }
}
