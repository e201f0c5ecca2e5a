//! The replicated state machine: keys with revisions, the revision history, leases and the
//! idempotency table, all in RocksDB and all inside snapshots.
//!
//! Every applied batch is one atomic RocksDB write that also records the last applied log id,
//! so after a crash the state machine is exactly at some applied index and Raft re-applies
//! the rest from the log.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use rocksdb::WriteBatch;
use serde_json::Value;

use super::CF_APPLIED;
use super::CF_HISTORY;
use super::CF_IDEMPOTENCY;
use super::CF_KV;
use super::CF_LEASES;
use super::KEY_APPLIED;
use super::Store;
use super::StoreError;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::records::AppliedStateRecord;
use super::records::COMMAND_VERSION_BASE;
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
use super::records::Response;
use super::records::TxnOpRecord;
use super::records::TxnOpResultRecord;
use super::snapshot;
use super::snapshot::SnapshotFile;
use super::types::LogId;
use super::types::SnapshotMeta;
use super::types::StoredMembershipOf;
use super::types::TypeConfig;
use super::types::log_id_from_record;
use super::types::log_id_to_record;
use super::types::stored_membership_from_record;
use super::types::stored_membership_to_record;
use super::u64_key;
use crate::metrics::Metrics;

/// How many revisions of history are kept for watches by default (`--history-revisions`).
/// Every replica with the same setting compacts at the same revisions; the setting only
/// decides how far back a watch served by this node may start.
pub const HISTORY_RETAINED_REVISIONS: u64 = 100_000;

/// Compaction runs once this many revisions beyond the retained window have piled up, so it
/// is an occasional range delete rather than one per write.
fn compaction_step(keep: u64) -> u64 {
    (keep / 100).clamp(1, 1_000)
}

pub struct StateMachine {
    store: Store,
    applied: AppliedStateRecord,
    reader: KvReader,
    metrics: Metrics,
    history_revisions: u64,
}

/// Read access to the applied state, shared with the HTTP API.
#[derive(Clone)]
pub struct KvReader {
    store: Store,
    revision: Arc<AtomicU64>,
    compacted: Arc<AtomicU64>,
    command_version: Arc<AtomicU32>,
    /// Signals every applied batch (with its revision), for watches and lock waiters.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl StateMachine {
    /// Opens the state machine, finishing an interrupted snapshot install if there was one.
    pub fn open(store: Store, metrics: Metrics) -> Result<Self, StoreError> {
        let applied = store.applied_state()?;
        if let Some(meta) = snapshot::installing(&store)? {
            tracing::warn!(snapshot = %meta.file, "finishing a snapshot install interrupted by a crash");
            snapshot::load_into_state_machine(&store, &meta)?;
            return Self::open(store, metrics);
        }
        let reader = KvReader {
            store: store.clone(),
            revision: Arc::new(AtomicU64::new(applied.revision)),
            compacted: Arc::new(AtomicU64::new(applied.compacted_revision)),
            command_version: Arc::new(AtomicU32::new(
                applied.command_version.unwrap_or(COMMAND_VERSION_BASE),
            )),
            changes: Arc::new(tokio::sync::watch::Sender::new(applied.revision)),
        };
        Ok(Self {
            store,
            applied,
            reader,
            metrics,
            history_revisions: HISTORY_RETAINED_REVISIONS,
        })
    }

    /// Keeps this many revisions of history for watches (at least 1).
    pub fn with_history_revisions(mut self, revisions: u64) -> Self {
        self.history_revisions = revisions.max(1);
        self
    }

    pub fn reader(&self) -> KvReader {
        self.reader.clone()
    }

    fn stored_membership(&self) -> io::Result<StoredMembershipOf> {
        match &self.applied.membership {
            Some(m) => stored_membership_from_record(m),
            None => Ok(StoredMembershipOf::default()),
        }
    }

    fn reload_applied(&mut self) -> io::Result<()> {
        self.applied = self.store.applied_state().map_err(io_err)?;
        self.reader.publish(&self.applied);
        Ok(())
    }
}

impl KvReader {
    /// The revision of the last applied change.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// History below this revision is gone; a watch may start at it or later (1 if none is).
    pub fn oldest_revision(&self) -> u64 {
        self.compacted.load(Ordering::Acquire).max(1)
    }

    /// The command set the cluster has enabled.
    pub fn command_version(&self) -> u32 {
        self.command_version.load(Ordering::Acquire)
    }

    /// A receiver woken after every applied batch.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn publish(&self, applied: &AppliedStateRecord) {
        self.compacted
            .store(applied.compacted_revision, Ordering::Release);
        self.command_version.store(
            applied.command_version.unwrap_or(COMMAND_VERSION_BASE),
            Ordering::Release,
        );
        self.revision.store(applied.revision, Ordering::Release);
        self.changes.send_replace(applied.revision);
    }

    /// History events with `from <= revision <= to`, in revision order, at most `limit`
    /// revisions' worth (whole revisions only). Checks compaction after reading, so a
    /// concurrent compaction is reported rather than silently skipping events.
    pub fn history(&self, from: u64, to: u64, limit: usize) -> io::Result<Vec<EventRecord>> {
        let mut out: Vec<EventRecord> = Vec::new();
        let mut it = self.store.db().raw_iterator_cf(self.store.cf(CF_HISTORY));
        it.seek(u64_key(from));
        let mut revisions = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let rev = super::u64_from_key(k).ok_or_else(|| io_err("bad history key"))?;
            if rev > to {
                break;
            }
            if out.last().is_none_or(|e| e.revision != rev) {
                if revisions == limit {
                    break;
                }
                revisions += 1;
            }
            out.push(
                codec::decode(RecordKind::Event, v)
                    .map_err(|e| io_err(format!("history event at {rev} is unreadable: {e}")))?,
            );
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok(out)
    }

    pub fn lease(&self, id: u64) -> io::Result<Option<LeaseRecord>> {
        self.store.lease_record(id).map_err(io_err)
    }

    /// Every lease, by id.
    pub fn leases(&self) -> io::Result<Vec<LeaseRecord>> {
        let mut out = Vec::new();
        let mut it = self.store.db().raw_iterator_cf(self.store.cf(CF_LEASES));
        it.seek_to_first();
        while let Some(v) = it.value() {
            out.push(
                codec::decode(RecordKind::Lease, v)
                    .map_err(|e| io_err(format!("lease record unreadable: {e}")))?,
            );
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok(out)
    }

    /// How many idempotency answers are older than `cutoff_ms` (the sweep's work).
    pub fn idempotency_older_than(&self, cutoff_ms: u64) -> io::Result<u64> {
        let mut n = 0;
        let mut it = self
            .store
            .db()
            .raw_iterator_cf(self.store.cf(CF_IDEMPOTENCY));
        it.seek_to_first();
        while let Some(v) = it.value() {
            let rec: IdempotencyRecord = codec::decode(RecordKind::Idempotency, v)
                .map_err(|e| io_err(format!("idempotency record unreadable: {e}")))?;
            n += u64::from(rec.applied_at_ms < cutoff_ms);
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok(n)
    }

    pub fn get(&self, key: &str) -> io::Result<Option<KeyRecord>> {
        self.store.key_record(key).map_err(io_err)
    }

    /// Keys starting with `prefix`, in order, strictly after `after` when given; at most `limit`.
    /// Returns the keys and whether more remain.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> io::Result<(Vec<(String, KeyRecord)>, bool)> {
        let mut it = self.store.db().raw_iterator_cf(self.store.cf(CF_KV));
        match after {
            Some(a) if a >= prefix => {
                it.seek(a.as_bytes());
                if it.key() == Some(a.as_bytes()) {
                    it.next();
                }
            }
            _ => it.seek(prefix.as_bytes()),
        }
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let key =
                String::from_utf8(k.to_vec()).map_err(|_| io_err("stored key is not UTF-8"))?;
            let rec: KeyRecord = codec::decode(RecordKind::KeyValue, v)
                .map_err(|e| io_err(format!("key {key:?} is unreadable: {e}")))?;
            out.push((key, rec));
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok((out, false))
    }
}

/// Applies commands to a write batch, with overlays so later commands in the same batch see
/// the effects of earlier ones. Every command that changes anything takes exactly one revision.
struct Batch<'a> {
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

fn reject(code: &str, message: impl Into<String>) -> Response {
    Response::Rejected {
        code: code.into(),
        message: message.into(),
    }
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

impl Batch<'_> {
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
        let mut it = self.store.db().raw_iterator_cf(self.store.cf(CF_KV));
        it.seek(prefix.as_bytes());
        while let Some(k) = it.key() {
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            keys.insert(
                String::from_utf8(k.to_vec()).map_err(|_| io_err("stored key is not UTF-8"))?,
            );
            it.next();
        }
        it.status().map_err(io_err)?;
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
                    "lease_not_found",
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

    fn apply_op(&mut self, op: Operation, now_ms: u64) -> io::Result<Response> {
        Ok(match op {
            Operation::Put { key, value, lease } => {
                if let Some(id) = lease
                    && self.lease(id)?.is_none()
                {
                    return Ok(reject(
                        "lease_not_found",
                        format!("lease {id} does not exist or has expired"),
                    ));
                }
                let (revision, prev) = self.put(key, value, lease)?;
                Response::Put { revision, prev }
            }
            Operation::Delete { key } => {
                let prev = self.delete(key)?;
                Response::Delete {
                    revision: self.command_revision(),
                    prev,
                }
            }
            Operation::Txn {
                compare,
                success,
                failure,
            } => self.txn(compare, success, failure)?,
            Operation::LeaseGrant { id, ttl_ms } => {
                if self.lease(id)?.is_some() {
                    return Ok(reject("lease_exists", format!("lease {id} already exists")));
                }
                self.set_lease(LeaseRecord {
                    id,
                    ttl_ms,
                    expires_at_ms: now_ms.saturating_add(ttl_ms),
                    keys: Vec::new(),
                });
                Response::Lease { id, ttl_ms }
            }
            Operation::LeaseKeepAlive { id } => {
                let Some(mut rec) = self.lease(id)? else {
                    return Ok(reject(
                        "lease_not_found",
                        format!("lease {id} does not exist or has expired"),
                    ));
                };
                rec.expires_at_ms = rec.expires_at_ms.max(now_ms.saturating_add(rec.ttl_ms));
                let ttl_ms = rec.ttl_ms;
                self.set_lease(rec);
                Response::Lease { id, ttl_ms }
            }
            Operation::LeaseRevoke { id } => {
                let Some(rec) = self.lease(id)? else {
                    return Ok(reject(
                        "lease_not_found",
                        format!("lease {id} does not exist or has expired"),
                    ));
                };
                let deleted = self.end_lease(rec)?;
                Response::LeaseRevoked {
                    id,
                    revision: self.command_revision(),
                    deleted,
                }
            }
            Operation::ExpireLeases { ids } => {
                let mut expired = Vec::new();
                for id in ids {
                    if let Some(rec) = self.lease(id)?
                        && rec.expires_at_ms <= now_ms
                    {
                        self.end_lease(rec)?;
                        expired.push(id);
                    }
                }
                Response::LeasesExpired {
                    revision: self.command_revision(),
                    ids: expired,
                }
            }
            Operation::SweepIdempotency { older_than_ms } => {
                let cutoff = now_ms.saturating_sub(older_than_ms);
                let mut removed = 0;
                let mut it = self
                    .store
                    .db()
                    .raw_iterator_cf(self.store.cf(CF_IDEMPOTENCY));
                it.seek_to_first();
                let mut old = Vec::new();
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    let rec: IdempotencyRecord = codec::decode(RecordKind::Idempotency, v)
                        .map_err(|e| io_err(format!("idempotency record unreadable: {e}")))?;
                    if rec.applied_at_ms < cutoff {
                        old.push(k.to_vec());
                    }
                    it.next();
                }
                it.status().map_err(io_err)?;
                for k in old {
                    self.wb.delete_cf(self.store.cf(CF_IDEMPOTENCY), &k);
                    if let Ok(s) = String::from_utf8(k) {
                        self.idempotency.remove(&s);
                    }
                    removed += 1;
                }
                Response::Swept { removed }
            }
            Operation::EnableCommandVersion { version } => {
                self.command_version = self.command_version.max(version);
                Response::Enabled {
                    version: self.command_version,
                }
            }
        })
    }

    fn apply(&mut self, cmd: Command) -> io::Result<Response> {
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
        self.writing = false;
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

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembershipOf)> {
        let last = self.applied.last_applied.as_ref().map(log_id_from_record);
        Ok((last, self.stored_membership()?))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: futures::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        let started = std::time::Instant::now();
        let entries: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = Batch {
            store: &self.store,
            wb: WriteBatch::default(),
            overlay: HashMap::new(),
            leases: HashMap::new(),
            idempotency: HashMap::new(),
            revision: self.applied.revision,
            writing: false,
            command_version: self.applied.command_version.unwrap_or(COMMAND_VERSION_BASE),
        };
        let mut applied = self.applied.clone();
        let mut responses = Vec::with_capacity(entries.len());
        for (entry, responder) in entries {
            applied.last_applied = Some(log_id_to_record(&entry.log_id));
            let response = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => batch.apply(cmd)?,
                EntryPayload::Membership(m) => {
                    applied.membership = Some(stored_membership_to_record(
                        &StoredMembershipOf::new(Some(entry.log_id), m),
                    ));
                    Response::None
                }
            };
            responses.push((responder, response));
        }
        applied.revision = batch.revision;
        if batch.command_version > COMMAND_VERSION_BASE {
            applied.command_version = Some(batch.command_version);
        }
        let mut wb = batch.wb;
        // History compaction: a function of the revision and the configured retention.
        let keep = self.history_revisions;
        if applied.revision > applied.compacted_revision + keep + compaction_step(keep) {
            let upto = applied.revision - keep;
            wb.delete_range_cf(self.store.cf(CF_HISTORY), u64_key(0), u64_key(upto));
            applied.compacted_revision = upto;
        }
        wb.put_cf(
            self.store.cf(CF_APPLIED),
            KEY_APPLIED,
            codec::encode(RecordKind::AppliedState, &applied),
        );
        // Not synced here: the log is synced, and a lost tail of applied state is re-applied.
        self.store.db().write(wb).map_err(io_err)?;
        self.applied = applied;
        self.reader.publish(&self.applied);
        let n = responses.len();
        for (responder, response) in responses {
            if let Some(r) = responder {
                r.send(response);
            }
        }
        self.metrics.observe_apply(started.elapsed(), n);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        snapshot::install(&self.store, meta, snapshot).map_err(io_err)?;
        self.reload_applied()
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>> {
        snapshot::current(&self.store).map_err(io_err)
    }
}

pub struct SnapshotBuilder {
    store: Store,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || snapshot::build(&store))
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }
}
