//! What each command does to the state: the semantics of every operation (keys with revisions,
//! transactions, leases, idempotency), applied to a RocksDB write batch. The openraft glue
//! (`state_machine.rs`) commits each batch with the applied log id, atomically.
//!
//! Every command that changes anything takes exactly one revision; one that changes nothing
//! (a delete of a missing key, a rejected command, a transaction with nothing to write) takes
//! none. A rejection changes nothing.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::HashSet;
use std::io;

use rocksdb::WriteBatch;
use serde_json::Value;

use super::CF_HISTORY;
use super::CF_IDEMPOTENCY;
use super::CF_KV;
use super::CF_LEASES;
use super::CF_META;
use super::Store;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::records::AlarmKind;
use super::records::AlarmRecord;
use super::records::COMMAND_VERSION_NO_SPACE;
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
use super::time_index;
use super::u64_key;
use crate::lease_clock::LeaseChange;

/// The most a transaction's answer may hold (its gets, and the previous values of the keys it
/// writes or deletes), about: beyond it the transaction is rejected whole, before it writes,
/// so no answer of 128 values of 1 MiB is built, kept for its idempotency key and sent. Part of
/// the semantics (every replica must reject alike): changing it needs a new command set.
pub const TXN_ANSWER_BYTES: usize = 16 << 20;
/// The command set that bounds transaction answers.
const BOUNDED_TXN_ANSWERS: u32 = 3;

/// About how many bytes `value` takes as JSON (strings without their escapes): cheap, and
/// close enough for a bound.
fn json_size(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => items.iter().map(|v| json_size(v) + 1).sum::<usize>() + 2,
        Value::Object(fields) => {
            fields
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
                + 2
        }
    }
}

/// Applies commands to a write batch, with overlays so later commands in the same batch see
/// the effects of earlier ones. Every command that changes anything takes exactly one revision.
pub struct Batch<'a> {
    store: &'a Store,
    wb: WriteBatch,
    overlay: HashMap<String, Option<KeyRecord>>,
    leases: HashMap<u64, Option<LeaseRecord>>,
    idempotency: HashMap<String, Response>,
    /// Idempotency answers given in this batch, by (time, key): not yet in the stored index, but
    /// a sweep later in the batch must see them as a replica applying in smaller batches would.
    answers_given: BTreeSet<(u64, Vec<u8>)>,
    /// Index entries a sweep in this batch forgot, and their keys: still stored until the
    /// batch commits. (A key answered again after that is in `idempotency`.)
    answers_forgotten: HashSet<(u64, Vec<u8>)>,
    keys_forgotten: HashSet<Vec<u8>>,
    /// An idempotency index key no live entry is below (see [`time_index::idempotency_before`]):
    /// raised by sweeps, lowered by an answer given below it.
    sweep_floor: Option<Vec<u8>>,
    /// The last revision taken by a command applied so far.
    revision: u64,
    /// Whether the command being applied has written at `revision + 1`.
    writing: bool,
    command_version: u32,
    /// Alarms raised and disarmed by this batch's commands, in order.
    alarm_changes: Vec<AlarmChange>,
    /// The revision below which a `CompactHistory` of this batch forgets the history.
    compact_to: Option<u64>,
    /// Bytes of history events written by this batch.
    history_bytes: u64,
    /// Grants, replicated keep-alives and ends, for the members' lease clocks.
    lease_changes: Vec<LeaseChange>,
}

/// An alarm raised or disarmed by a command.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmChange {
    Raised(AlarmRecord),
    Disarmed { member: u64, kind: AlarmKind },
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

/// A batch, applied: what to commit and what to tell once it is.
pub struct Parts {
    pub writes: WriteBatch,
    pub sweep_floor: Option<Vec<u8>>,
    pub lease_changes: Vec<LeaseChange>,
    pub touched: HashMap<String, Option<KeyRecord>>,
}

impl<'a> Batch<'a> {
    /// A batch over `store`, whose state is at `revision` with `command_version` enabled and
    /// no live idempotency index entry below `sweep_floor`.
    pub fn new(
        store: &'a Store,
        revision: u64,
        command_version: u32,
        sweep_floor: Option<Vec<u8>>,
    ) -> Self {
        Batch {
            store,
            wb: WriteBatch::default(),
            overlay: HashMap::new(),
            leases: HashMap::new(),
            idempotency: HashMap::new(),
            answers_given: BTreeSet::new(),
            answers_forgotten: HashSet::new(),
            keys_forgotten: HashSet::new(),
            sweep_floor,
            revision,
            writing: false,
            command_version,
            alarm_changes: Vec::new(),
            compact_to: None,
            history_bytes: 0,
            lease_changes: Vec::new(),
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

    /// The alarms this batch's commands raised and disarmed, in order (the state machine
    /// keeps the raised ones with the applied state).
    pub fn alarm_changes(&self) -> &[AlarmChange] {
        &self.alarm_changes
    }

    /// The revision below which this batch's commands asked the history forgotten.
    pub fn compact_to(&self) -> Option<u64> {
        self.compact_to
    }

    /// The writes to commit, atomically with the applied log id; the sweep floor and the
    /// lease changes once they are; and the keys written or deleted, each as the batch leaves
    /// it.
    pub fn into_parts(self) -> Parts {
        Parts {
            writes: self.wb,
            sweep_floor: self.sweep_floor,
            lease_changes: self.lease_changes,
            touched: self.overlay,
        }
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

    fn remove_lease(&mut self, id: u64, deadline_ms: u64) {
        self.wb.delete_cf(self.store.cf(CF_LEASES), u64_key(id));
        self.unindex_lease(id, deadline_ms);
        self.leases.insert(id, None);
    }

    fn index_lease(&mut self, id: u64, deadline_ms: u64) {
        self.wb.put_cf(
            self.store.cf(CF_META),
            time_index::lease_entry(deadline_ms, id),
            [],
        );
    }

    fn unindex_lease(&mut self, id: u64, deadline_ms: u64) {
        self.wb.delete_cf(
            self.store.cf(CF_META),
            time_index::lease_entry(deadline_ms, id),
        );
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
        let v = codec::encode(RecordKind::Event, event);
        self.history_bytes += (k.len() + v.len()) as u64;
        self.wb.put_cf(self.store.cf(CF_HISTORY), k, v);
    }

    /// The bytes of history events this batch wrote.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes
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
            value_omitted: false,
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
        if self.command_version >= BOUNDED_TXN_ANSWERS {
            let bytes = self.txn_answer_bound(&ops)?;
            if bytes > TXN_ANSWER_BYTES {
                return Ok(reject(
                    RejectCode::AnswerTooLarge,
                    format!(
                        "this transaction's answer would hold about {bytes} bytes of values (its \
                         gets and the previous values of the keys it writes or deletes); the \
                         limit is {TXN_ANSWER_BYTES}: split it into smaller transactions"
                    ),
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

    /// At least the bytes of values the answer to `ops` holds: each get, put and delete answers
    /// the key's value as it is when the operation runs, the stored one or one an earlier put
    /// of the transaction wrote (a branch writes a key once).
    fn txn_answer_bound(&self, ops: &[TxnOpRecord]) -> io::Result<usize> {
        let mut written: HashMap<&str, usize> = HashMap::new();
        let mut bytes = 0usize;
        for op in ops {
            let key = match op {
                TxnOpRecord::Get { key }
                | TxnOpRecord::Put { key, .. }
                | TxnOpRecord::Delete { key } => key,
                TxnOpRecord::DeletePrefix { .. } => continue,
            };
            let stored = self.current(key)?.map_or(0, |k| json_size(&k.value));
            bytes =
                bytes.saturating_add(stored.max(written.get(key.as_str()).copied().unwrap_or(0)));
            if let TxnOpRecord::Put { value, .. } = op {
                written.insert(key, json_size(value));
            }
        }
        Ok(bytes)
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
        self.remove_lease(lease.id, lease.expires_at_ms);
        self.lease_changes.push(LeaseChange::Ended { id: lease.id });
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
            Operation::LeaseGrant { id, ttl_ms, owner } => {
                self.lease_grant(id, ttl_ms, owner, now_ms)
            }
            Operation::LeaseKeepAlive { id } => self.lease_keep_alive(id, now_ms),
            Operation::LeaseRevoke { id } => self.lease_revoke(id),
            Operation::ExpireLeases { ids } => self.expire_leases(ids, now_ms),
            Operation::EndLeases { ids } => self.end_leases(ids),
            Operation::SweepIdempotency { older_than_ms } => {
                self.sweep_idempotency(now_ms.saturating_sub(older_than_ms), usize::MAX)
            }
            Operation::SweepIdempotencyOldest {
                older_than_ms,
                limit,
            } => self.sweep_idempotency(now_ms.saturating_sub(older_than_ms), limit as usize),
            Operation::EnableCommandVersion { version } => {
                self.command_version = self.command_version.max(version);
                Ok(Response::Enabled {
                    version: self.command_version,
                })
            }
            // The state machine hashes the state once this entry is applied; nothing changes.
            Operation::CheckState {} => Ok(Response::None),
            Operation::RaiseAlarm {
                member,
                alarm,
                detail,
            } => {
                self.alarm_changes.push(AlarmChange::Raised(AlarmRecord {
                    member,
                    kind: alarm,
                    detail,
                }));
                Ok(Response::None)
            }
            Operation::DisarmAlarm { member, alarm } => {
                // A corrupt member's state is wrong whatever an admin says: it is replaced.
                if !alarm.fences() {
                    self.alarm_changes.push(AlarmChange::Disarmed {
                        member,
                        kind: alarm,
                    });
                }
                Ok(Response::None)
            }
            Operation::CompactHistory { revision } => {
                let upto = revision.min(self.revision);
                self.compact_to = Some(self.compact_to.unwrap_or(0).max(upto));
                Ok(Response::None)
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

    fn lease_grant(
        &mut self,
        id: u64,
        ttl_ms: u64,
        owner: Option<String>,
        now_ms: u64,
    ) -> io::Result<Response> {
        if self.lease(id)?.is_some() {
            return Ok(reject(
                RejectCode::LeaseExists,
                format!("lease {id} already exists"),
            ));
        }
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        self.set_lease(LeaseRecord {
            id,
            ttl_ms,
            expires_at_ms,
            keys: Vec::new(),
            owner,
        });
        self.index_lease(id, expires_at_ms);
        self.lease_changes.push(LeaseChange::Granted { id, ttl_ms });
        Ok(Response::Lease { id, ttl_ms })
    }

    /// Restarts a lease's time to live from `now_ms` (never shortening it).
    fn lease_keep_alive(&mut self, id: u64, now_ms: u64) -> io::Result<Response> {
        let Some(mut rec) = self.lease(id)? else {
            return Ok(lease_not_found(id));
        };
        let before = rec.expires_at_ms;
        rec.expires_at_ms = before.max(now_ms.saturating_add(rec.ttl_ms));
        if rec.expires_at_ms != before {
            self.unindex_lease(id, before);
            self.index_lease(id, rec.expires_at_ms);
        }
        let ttl_ms = rec.ttl_ms;
        self.set_lease(rec);
        self.lease_changes.push(LeaseChange::KeptAlive { id });
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

    /// Ends these leases, with their keys, at one revision: the leader found them past their
    /// deadline on its monotonic clock (`crate::lease_clock`), which alone decides from
    /// command set 5 on; the stored deadline is the grant's, not renewed by keep-alives.
    fn end_leases(&mut self, ids: Vec<u64>) -> io::Result<Response> {
        let mut ended = Vec::new();
        for id in ids {
            if let Some(rec) = self.lease(id)? {
                self.end_lease(rec)?;
                ended.push(id);
            }
        }
        Ok(Response::LeasesExpired {
            revision: self.command_revision(),
            ids: ended,
        })
    }

    /// Forgets the oldest idempotency answers given before `cutoff_ms`, at most `limit`, in
    /// (time, key) order: every replica forgets the same ones whatever its batch boundaries.
    /// Reads only the time index's due entries, never the whole table.
    fn sweep_idempotency(&mut self, cutoff_ms: u64, limit: usize) -> io::Result<Response> {
        let stored = time_index::idempotency_before(
            self.store,
            self.sweep_floor.as_deref(),
            cutoff_ms,
            limit.saturating_add(self.answers_forgotten.len()),
        )
        .map_err(io_err)?;
        let mut due: BTreeSet<(u64, Vec<u8>)> = stored
            .into_iter()
            .filter(|entry| !self.answers_forgotten.contains(entry))
            .collect();
        due.extend(
            self.answers_given
                .iter()
                .take_while(|(at, _)| *at < cutoff_ms)
                .cloned(),
        );
        let mut removed = 0u64;
        for (at, key) in due.into_iter().take(limit) {
            self.wb.delete_cf(self.store.cf(CF_IDEMPOTENCY), &key);
            let index_key = time_index::idempotency_entry(at, &key);
            self.wb.delete_cf(self.store.cf(CF_META), &index_key);
            // Oldest first: every entry below this one is forgotten too.
            self.sweep_floor = Some(index_key);
            if let Ok(s) = std::str::from_utf8(&key) {
                self.idempotency.remove(s);
            }
            self.keys_forgotten.insert(key.clone());
            let entry = (at, key);
            self.answers_given.remove(&entry);
            self.answers_forgotten.insert(entry);
            removed += 1;
        }
        Ok(Response::Swept { removed })
    }

    /// Applies one command: its answer, or the answer first given to its idempotency key.
    pub fn apply(&mut self, cmd: Command) -> io::Result<Response> {
        if let Some(ik) = &cmd.idempotency_key {
            if let Some(seen) = self.idempotency.get(ik) {
                return Ok(seen.clone());
            }
            // An answer forgotten earlier in this batch is still stored until it commits.
            if !self.keys_forgotten.contains(ik.as_bytes()) {
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
        }
        self.writing = false;
        let response = self.apply_op(cmd.op, cmd.proposed_at_ms)?;
        self.revision = self.command_revision();
        if let Some(ik) = cmd.idempotency_key {
            let kept = if self.command_version >= COMMAND_VERSION_NO_SPACE {
                response.kept()
            } else {
                response.clone()
            };
            let rec = IdempotencyRecord {
                response: kept,
                applied_at_ms: cmd.proposed_at_ms,
            };
            self.wb.put_cf(
                self.store.cf(CF_IDEMPOTENCY),
                ik.as_bytes(),
                codec::encode(RecordKind::Idempotency, &rec),
            );
            let index_key = time_index::idempotency_entry(rec.applied_at_ms, ik.as_bytes());
            if self
                .sweep_floor
                .as_ref()
                .is_some_and(|floor| index_key < *floor)
            {
                self.sweep_floor = Some(index_key.clone());
            }
            self.wb.put_cf(self.store.cf(CF_META), index_key, []);
            self.answers_given
                .insert((rec.applied_at_ms, ik.as_bytes().to_vec()));
            // A retry later in this batch gets what a retry in a later batch would.
            self.idempotency.insert(ik, rec.response.clone());
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
        cmd(Operation::LeaseGrant {
            id,
            ttl_ms,
            owner: None,
        })
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

    fn sweep_oldest(older_than_ms: u64, limit: u32) -> Cmd {
        cmd(Operation::SweepIdempotencyOldest {
            older_than_ms,
            limit,
        })
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
            value_omitted: false,
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
                "a bounded sweep forgets the oldest due answers first, the batch's own too",
                vec![
                    vec![
                        (put("a", json!(1)).once("i1").at(1000), put_ok(1, None)),
                        (put("b", json!(1)).once("i2").at(2000), put_ok(2, None)),
                    ],
                    vec![
                        (put("c", json!(1)).once("i3").at(2500), put_ok(3, None)),
                        (put("d", json!(1)).once("i4").at(3500), put_ok(4, None)),
                        // Cutoff 3000: i1, i2 and i3 are due; the oldest two go first.
                        (
                            sweep_oldest(1000, 2).at(4000),
                            Response::Swept { removed: 2 },
                        ),
                        // i3, given in this very batch, is next.
                        (
                            sweep_oldest(1000, 2).at(4000),
                            Response::Swept { removed: 1 },
                        ),
                        (
                            sweep_oldest(1000, 2).at(4000),
                            Response::Swept { removed: 0 },
                        ),
                        // Forgotten in this batch (still stored until it commits): applies anew.
                        (
                            put("a", json!(9)).once("i1").at(4000),
                            put_ok(5, Some(a1.clone())),
                        ),
                        (
                            put("c", json!(9)).once("i3").at(4000),
                            put_ok(6, Some(kv(json!(1), 3, 3, 1))),
                        ),
                        // Not due: still answers its first answer.
                        (put("d", json!(9)).once("i4").at(4000), put_ok(4, None)),
                    ],
                    vec![
                        // i1 and i3 again (given at 4000) and i4 are due at cutoff 9000.
                        (
                            sweep_oldest(1000, 10).at(10_000),
                            Response::Swept { removed: 3 },
                        ),
                    ],
                ],
                vec![
                    Check::Revision(6),
                    Check::Key("a", Some(kv(json!(9), 1, 5, 2))),
                    Check::Key("d", Some(kv(json!(1), 4, 4, 1))),
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

    /// Applies `commands` as one batch of entries numbered on from `index`.
    fn apply_numbered(sm: &mut StateMachine, index: &mut u64, commands: Vec<Command>) {
        sm_answers(sm, index, commands);
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
    fn no_space_alarms_are_raised_and_disarmed_corrupt_ones_never_and_history_compacts_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(store.clone(), Metrics::new()).unwrap();
        let reader = sm.reader();
        let raise = |member, alarm| {
            cmd(Operation::RaiseAlarm {
                member,
                alarm,
                detail: "d".into(),
            })
            .0
        };
        let disarm = |member, alarm| cmd(Operation::DisarmAlarm { member, alarm }).0;
        let mut index = 0;
        let mut apply = |commands: Vec<Command>| apply_numbered(&mut sm, &mut index, commands);
        apply(vec![
            raise(1, AlarmKind::NoSpace),
            raise(2, AlarmKind::Corrupt),
            raise(1, AlarmKind::NoSpace),
        ]);
        assert_eq!(reader.alarms_of(AlarmKind::NoSpace).len(), 1);
        assert!(reader.fence_on(1).is_none(), "no_space fences no one");
        assert!(reader.fence_on(2).is_some());
        apply(vec![
            disarm(1, AlarmKind::NoSpace),
            disarm(2, AlarmKind::Corrupt),
        ]);
        assert!(reader.alarms_of(AlarmKind::NoSpace).is_empty());
        assert!(
            reader.fence_on(2).is_some(),
            "a corrupt alarm is never disarmed"
        );
        // Raised and disarmed in one batch: the order holds.
        apply(vec![
            disarm(3, AlarmKind::NoSpace),
            raise(3, AlarmKind::NoSpace),
        ]);
        assert_eq!(reader.alarms_of(AlarmKind::NoSpace).len(), 1);

        apply((0..10).map(|i| put(&format!("k{i}"), json!(i)).0).collect());
        let revision = reader.revision();
        assert_eq!(reader.oldest_revision(), 1);
        // Past the current revision, it compacts up to it only.
        apply(vec![
            cmd(Operation::CompactHistory { revision: 4 }).0,
            cmd(Operation::CompactHistory {
                revision: revision + 100,
            })
            .0,
        ]);
        assert_eq!(reader.oldest_revision(), revision);
        apply(vec![cmd(Operation::CompactHistory { revision: 2 }).0]);
        assert_eq!(reader.oldest_revision(), revision, "never goes back");
        assert!(!Operation::CompactHistory { revision: 1 }.grows_state());
        assert!(put("k", json!(1)).0.op.grows_state());
    }

    #[test]
    fn large_idempotency_answers_are_kept_without_their_values_from_command_set_6() {
        let big = json!("b".repeat(10_000));
        for (set, omitted) in [(5, false), (6, true)] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut sm = StateMachine::open(store, Metrics::new()).unwrap();
            let mut index = 0;
            // `c` replaces the big value: its answer holds it, over the bound.
            let c = put("k", json!("small again")).once("c").0;
            let first = sm_answers(
                &mut sm,
                &mut index,
                vec![
                    cmd(Operation::EnableCommandVersion { version: set }).0,
                    put("k", json!("small")).once("a").0,
                    put("k", big.clone()).once("b").0,
                    c.clone(),
                ],
            );
            assert!(
                matches!(&first[3], Response::Put { prev: Some(p), .. } if p.value == big),
                "the first answer is whole: {:?}",
                first[3]
            );
            // Retries, in a later batch.
            let retried = sm_answers(&mut sm, &mut index, vec![c, put("k", json!(1)).once("b").0]);
            match &retried[0] {
                Response::Put {
                    prev: Some(prev), ..
                } => {
                    assert_eq!(prev.value_omitted, omitted, "set {set}");
                    assert_eq!(prev.value == Value::Null, omitted, "set {set}");
                    assert_eq!(prev.mod_revision, 2, "the revisions stay exact");
                }
                other => panic!("set {set}: {other:?}"),
            }
            // A small answer is kept whole under either set.
            match &retried[1] {
                Response::Put {
                    prev: Some(prev), ..
                } => {
                    assert!(!prev.value_omitted);
                    assert_eq!(prev.value, json!("small"));
                }
                other => panic!("set {set}: {other:?}"),
            }
        }
    }

    /// Applies `commands` as one batch; their answers.
    fn sm_answers(sm: &mut StateMachine, index: &mut u64, commands: Vec<Command>) -> Vec<Response> {
        let entries = commands
            .into_iter()
            .map(|c| {
                *index += 1;
                entry(*index, c)
            })
            .collect();
        sm.apply_entries(entries).unwrap()
    }

    /// The quota counts kept by batches equal a scan of the state after them, through
    /// overwrites, deletes, transactions, prefix deletes and revokes in one batch and many.
    #[test]
    fn prefix_counts_kept_by_batches_equal_a_scan_of_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(store, Metrics::new()).unwrap();
        let reader = sm.reader();
        let mut index = 0;
        let prefixes = ["a/", "a/b/", "z/"];
        let counted = |reader: &crate::store::reader::KvReader| {
            reader.prefix_usage(&prefixes, &prefixes).unwrap()
        };
        let scanned = |reader: &crate::store::reader::KvReader| {
            reader.prefix_usage(&[], &[]).unwrap();
            counted(reader)
        };
        sm_answers(&mut sm, &mut index, vec![put("a/1", json!("x")).0]);
        // Counted from here on; the first count is a scan.
        let first = counted(&reader);
        assert_eq!((first[0].keys, first[0].bytes), (1, 3 + 3));
        let steps: Vec<Vec<Command>> = vec![
            vec![put("a/2", json!({"v": [1, 2]})).0, put("a/b/1", json!(7)).0],
            vec![put("a/1", json!("a longer value")).0, del("a/2").0],
            vec![grant(9, 60_000).0, put_leased("a/b/2", json!(true), 9).0],
            vec![txn(vec![], vec![t_put("a/3", json!(3)), t_del("a/1")], vec![]).0],
            vec![put("b/1", json!(1)).0, put("z", json!(1)).0],
            vec![revoke(9).0, put("a/b/3", json!(null)).0, del("a/b/3").0],
            vec![
                txn(
                    vec![],
                    vec![t_del_prefix("a/b/"), t_put("a/b/4", json!("y"))],
                    vec![],
                )
                .0,
            ],
        ];
        for (i, batch) in steps.into_iter().enumerate() {
            sm_answers(&mut sm, &mut index, batch);
            let kept = counted(&reader);
            assert_eq!(kept, scanned(&reader), "after step {i}");
        }
        let end = counted(&reader);
        // a/3 = 3 and a/b/4 = "y": 3 + 1 and 5 + 3 bytes.
        assert_eq!((end[0].keys, end[0].bytes), (2, 4 + 8));
        assert_eq!((end[1].keys, end[1].bytes), (1, 8));
        assert_eq!((end[2].keys, end[2].bytes), (0, 0));
    }

    #[test]
    fn history_is_kept_by_bytes_as_well_as_by_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(store.clone(), Metrics::new())
            .unwrap()
            .with_history_bytes(Some(100_000));
        let reader = sm.reader();
        let big = json!("h".repeat(10_000));
        for i in 0..50 {
            let c = put(&format!("k{}", i % 5), big.clone()).0;
            sm.apply_entries(vec![entry(i + 1, c)]).unwrap();
        }
        // Each event is a little over 10 KB: about ten are kept, never the bound's worth more.
        let kept = store
            .db()
            .iterator_cf(store.cf(CF_HISTORY), rocksdb::IteratorMode::Start)
            .count();
        assert!((5..=10).contains(&kept), "{kept} events kept");
        assert_eq!(reader.oldest_revision(), 51 - kept as u64);
        // Without a bound by bytes, the revision bound (100,000) keeps them all.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(store.clone(), Metrics::new()).unwrap();
        for i in 0..50 {
            let c = put(&format!("k{}", i % 5), big.clone()).0;
            sm.apply_entries(vec![entry(i + 1, c)]).unwrap();
        }
        assert_eq!(sm.reader().oldest_revision(), 1);
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

    /// Every state-machine record and every time-index entry, by column family and key. Not the
    /// history, nor how far it is compacted: each member keeps its own window of it.
    fn dump(store: &Store) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for cf in crate::store::STATE_MACHINE_CFS.into_iter().chain([CF_META]) {
            let records = store
                .db()
                .iterator_cf(store.cf(cf), rocksdb::IteratorMode::Start);
            for item in records {
                let (k, v) = item.unwrap();
                let v = match cf {
                    CF_HISTORY => continue,
                    CF_META if !k.starts_with(b"index/") || &*k == b"index/applied" => continue,
                    crate::store::CF_APPLIED => {
                        let mut applied: AppliedStateRecord =
                            codec::decode(RecordKind::AppliedState, &v).unwrap();
                        applied.compacted_revision = 0;
                        codec::encode(RecordKind::AppliedState, &applied)
                    }
                    _ => v.to_vec(),
                };
                out.push((cf, k.to_vec(), v));
            }
        }
        out
    }

    /// Applies `batches` to a new store; its dump.
    fn applied_in(
        batches: Vec<Vec<Command>>,
        history: u64,
    ) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(store.clone(), Metrics::new())
            .unwrap()
            .with_history_revisions(history);
        let mut index = 0;
        for batch in batches {
            apply_numbered(&mut sm, &mut index, batch);
        }
        let kept = dump(&store);
        // The indexes kept batch by batch are the ones rebuilt from the tables.
        crate::store::time_index::rebuild(&store, Some(index).filter(|i| *i > 0)).unwrap();
        assert_eq!(
            dump(&store),
            kept,
            "rebuilt indexes differ from the kept ones"
        );
        kept
    }

    /// Gets (and previous values) of 17 values of 1 MiB are over the answer bound once command
    /// set 3 is on: rejected whole, nothing written. Under set 2 they are answered, as before.
    #[test]
    fn a_transaction_whose_answer_is_over_the_byte_bound_is_rejected_whole_from_set_3() {
        let big = json!("x".repeat(1 << 20));
        let n = TXN_ANSWER_BYTES / (1 << 20) + 1;
        for version in [2, 3] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let mut sm = StateMachine::open(store.clone(), Metrics::new()).unwrap();
            let mut cmds = vec![enable(version)];
            cmds.extend((0..n).map(|i| put(&format!("big/{i:02}"), big.clone())));
            let gets = |count: usize| (0..count).map(|i| t_get(&format!("big/{i:02}"))).collect();
            let mut overwrite: Vec<TxnOpRecord> = gets(n - 1);
            overwrite.push(t_put("big/00", json!(1)));
            cmds.push(txn(vec![], gets(n), vec![]));
            cmds.push(txn(vec![], overwrite, vec![]));
            cmds.push(txn(vec![], gets(n - 2), vec![]));
            let entries = cmds
                .into_iter()
                .enumerate()
                .map(|(i, Cmd(c))| entry(i as u64 + 1, c))
                .collect();
            let answers = sm.apply_entries(entries).unwrap();
            let rejected = |a: &Response| {
                matches!(
                    a,
                    Response::Rejected {
                        code: RejectCode::AnswerTooLarge,
                        ..
                    }
                )
            };
            let last = &answers[answers.len() - 3..];
            if version == 3 {
                assert!(
                    rejected(&last[0]),
                    "{n} gets of 1 MiB: {:?}",
                    rejected(&last[0])
                );
                assert!(rejected(&last[1]), "gets plus a put's previous value");
                assert!(!rejected(&last[2]), "{} gets fit", n - 2);
                assert_eq!(sm.reader().get("big/00").unwrap().unwrap().value, big);
                assert_eq!(sm.reader().revision(), n as u64, "nothing written");
            } else {
                assert!(last.iter().all(|a| !rejected(a)), "set 2 has no bound");
            }
        }
    }

    /// A binary from before the indexes applied the last batch (a rollback, then forward
    /// again): the next open finds them not current and rebuilds them.
    #[test]
    fn indexes_missing_or_stale_at_open_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(store.clone(), Metrics::new()).unwrap();
        let cmds = vec![
            put("a", json!(1)).once("i1").at(1000),
            grant(7, 5000).at(1000),
            put_leased("b", json!(1), 7).once("i2").at(2000),
            keep(7).at(3000),
        ];
        let entries = cmds
            .into_iter()
            .enumerate()
            .map(|(i, Cmd(c))| entry(i as u64 + 1, c))
            .collect();
        sm.apply_entries(entries).unwrap();
        let kept = dump(&store);
        assert_eq!(
            kept.iter().filter(|(cf, _, _)| *cf == CF_META).count(),
            3,
            "two answers and one lease indexed"
        );
        let reader = sm.reader();
        assert_eq!(reader.leases_due(8000, 10).unwrap(), [7]);
        assert!(reader.leases_due(7999, 10).unwrap().is_empty());
        assert!(reader.idempotency_due(1001).unwrap());
        assert!(!reader.idempotency_due(1000).unwrap());
        drop((sm, reader));
        // As an older binary leaves them: no index entries, and no mark for the last batch.
        store
            .db()
            .delete_range_cf(store.cf(CF_META), b"index/", b"index0")
            .unwrap();
        StateMachine::open(store.clone(), Metrics::new()).unwrap();
        assert_eq!(dump(&store), kept);
    }

    /// Replicas apply the same log in different batches (a follower catching up applies
    /// larger ones): the state, indexes included, must not depend on where batches end.
    #[test]
    fn where_batches_end_changes_nothing_in_the_state_or_its_indexes() {
        for case in cases() {
            let batches: Vec<Vec<Command>> = case
                .batches
                .into_iter()
                .map(|b| b.into_iter().map(|(Cmd(c), _)| c).collect())
                .collect();
            let as_given = applied_in(batches.clone(), case.history);
            let all: Vec<Command> = batches.iter().flatten().cloned().collect();
            let one_by_one =
                applied_in(all.iter().map(|c| vec![c.clone()]).collect(), case.history);
            let all_at_once = applied_in(vec![all], case.history);
            assert!(
                as_given == one_by_one,
                "{}: one command per batch differs",
                case.name
            );
            assert!(
                as_given == all_at_once,
                "{}: one batch for all differs",
                case.name
            );
        }
    }
}
