//! The replicated state machine: keys with revisions, the revision history, leases and the
//! idempotency table, all in RocksDB and all inside snapshots.
//!
//! Every applied batch is one atomic RocksDB write that also records the last applied log id,
//! so after a crash the state machine is exactly at some applied index and Raft re-applies
//! the rest from the log.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
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
use super::KEY_APPLIED;
use super::Store;
use super::StoreError;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::records::AppliedStateRecord;
use super::records::Command;
use super::records::EventKind;
use super::records::EventRecord;
use super::records::IdempotencyRecord;
use super::records::KeyRecord;
use super::records::Operation;
use super::records::Response;
use super::snapshot;
use super::snapshot::SnapshotFile;
use super::u64_key;
use crate::metrics::Metrics;
use crate::raft::LogId;
use crate::raft::SnapshotMeta;
use crate::raft::StoredMembershipOf;
use crate::raft::TypeConfig;
use crate::raft::log_id_from_record;
use crate::raft::log_id_to_record;
use crate::raft::stored_membership_from_record;
use crate::raft::stored_membership_to_record;

/// How many revisions of history are kept for watches. Part of the replicated state's
/// definition: every replica compacts at the same revisions.
pub const HISTORY_RETAINED_REVISIONS: u64 = 100_000;
/// Compaction runs when this many revisions beyond the retained window have piled up.
const HISTORY_COMPACTION_STEP: u64 = 1_000;

pub struct StateMachine {
    store: Store,
    applied: AppliedStateRecord,
    reader: KvReader,
    metrics: Metrics,
}

/// Read access to the applied state, shared with the HTTP API.
#[derive(Clone)]
pub struct KvReader {
    store: Store,
    revision: Arc<AtomicU64>,
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
        };
        Ok(Self {
            store,
            applied,
            reader,
            metrics,
        })
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
        self.reader
            .revision
            .store(self.applied.revision, Ordering::Release);
        Ok(())
    }
}

impl KvReader {
    /// The revision of the last applied change.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
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

/// Applies commands to a write batch, with an overlay so later commands in the same batch see
/// the effects of earlier ones.
struct Batch<'a> {
    store: &'a Store,
    wb: WriteBatch,
    overlay: HashMap<String, Option<KeyRecord>>,
    revision: u64,
}

impl Batch<'_> {
    fn current(&self, key: &str) -> io::Result<Option<KeyRecord>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.store.key_record(key).map_err(io_err)
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

    fn put(&mut self, key: String, value: Value, lease: Option<u64>) -> io::Result<Response> {
        let prev = self.current(&key)?;
        self.revision += 1;
        let rec = KeyRecord {
            value,
            create_revision: prev.as_ref().map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        self.wb.put_cf(
            self.store.cf(CF_KV),
            key.as_bytes(),
            codec::encode(RecordKind::KeyValue, &rec),
        );
        self.record_event(&EventRecord {
            revision: self.revision,
            key: key.clone(),
            kind: EventKind::Put,
            kv: Some(rec.clone()),
        });
        self.overlay.insert(key, Some(rec));
        Ok(Response::Put {
            revision: self.revision,
            prev,
        })
    }

    fn delete(&mut self, key: String) -> io::Result<Response> {
        let prev = self.current(&key)?;
        if prev.is_none() {
            // Deleting nothing changes nothing, so it takes no revision.
            return Ok(Response::Delete {
                revision: self.revision,
                prev: None,
            });
        }
        self.revision += 1;
        self.wb.delete_cf(self.store.cf(CF_KV), key.as_bytes());
        self.record_event(&EventRecord {
            revision: self.revision,
            key: key.clone(),
            kind: EventKind::Delete,
            kv: None,
        });
        self.overlay.insert(key, None);
        Ok(Response::Delete {
            revision: self.revision,
            prev,
        })
    }

    fn apply(&mut self, cmd: Command) -> io::Result<Response> {
        if let Some(ik) = &cmd.idempotency_key {
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
        let response = match cmd.op {
            Operation::Put { key, value, lease } => self.put(key, value, lease)?,
            Operation::Delete { key } => self.delete(key)?,
        };
        if let Some(ik) = &cmd.idempotency_key {
            let rec = IdempotencyRecord {
                response: response.clone(),
                applied_at_ms: cmd.proposed_at_ms,
            };
            self.wb.put_cf(
                self.store.cf(CF_IDEMPOTENCY),
                ik.as_bytes(),
                codec::encode(RecordKind::Idempotency, &rec),
            );
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
            revision: self.applied.revision,
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
        let mut wb = batch.wb;
        // Deterministic history compaction: a function of the revision alone.
        if applied.revision
            > applied.compacted_revision + HISTORY_RETAINED_REVISIONS + HISTORY_COMPACTION_STEP
        {
            let upto = applied.revision - HISTORY_RETAINED_REVISIONS;
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
        self.reader
            .revision
            .store(self.applied.revision, Ordering::Release);
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
