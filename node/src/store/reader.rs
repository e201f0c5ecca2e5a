//! The read side of the state machine: what the API reads (keys, prefix lists, leases, the
//! change history) and the applied revision, published after every applied batch.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use super::CF_HISTORY;
use super::CF_KV;
use super::CF_LEASES;
use super::Store;
use super::codec::RecordKind;
use super::io_err;
use super::records::AlarmKind;
use super::records::AlarmRecord;
use super::records::AppliedStateRecord;
use super::records::COMMAND_VERSION_BASE;
use super::records::EventRecord;
use super::records::KeyRecord;
use super::records::LeaseRecord;
use super::state_hash::StateHashes;
use super::time_index;
use super::u64_key;
use super::usage::PrefixUsage;
use super::usage::Usage;
use crate::lease_clock::LeaseClock;

/// Read access to the applied state, shared with the HTTP API.
#[derive(Clone)]
pub struct KvReader {
    store: Store,
    revision: Arc<AtomicU64>,
    compacted: Arc<AtomicU64>,
    command_version: Arc<AtomicU32>,
    /// Signals every applied batch (with its revision), for watches and lock waiters.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// The idempotency index's sweep floor as of the last applied batch.
    sweep_floor: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    /// The alarms raised, as of the last applied batch.
    alarms: Arc<std::sync::RwLock<Vec<AlarmRecord>>>,
    /// The state hashes this replica computed lately.
    state_hashes: StateHashes,
    /// When each lease may end, on this member's monotonic clock.
    lease_clock: Arc<LeaseClock>,
    /// What the keys under each prefix with a storage quota take.
    usage: Arc<PrefixUsage>,
}

impl KvReader {
    /// A reader of `store`, whose state machine is at `applied`.
    pub(super) fn new(store: Store, applied: &AppliedStateRecord) -> Self {
        Self {
            store,
            revision: Arc::new(AtomicU64::new(applied.revision)),
            compacted: Arc::new(AtomicU64::new(applied.compacted_revision)),
            command_version: Arc::new(AtomicU32::new(
                applied.command_version.unwrap_or(COMMAND_VERSION_BASE),
            )),
            changes: Arc::new(tokio::sync::watch::Sender::new(applied.revision)),
            sweep_floor: Arc::default(),
            alarms: Arc::new(std::sync::RwLock::new(applied.alarms.clone())),
            state_hashes: StateHashes::default(),
            lease_clock: Arc::default(),
            usage: Arc::default(),
        }
    }

    /// The alarms raised in the cluster, oldest first.
    pub fn alarms(&self) -> Vec<AlarmRecord> {
        self.alarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The alarm fencing member `id`, if one was raised (`corrupt`; `no_space` fences no one).
    pub fn fence_on(&self, id: u64) -> Option<AlarmRecord> {
        self.alarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| a.member == id && a.kind.fences())
            .cloned()
    }

    /// The raised alarms of one kind, oldest first.
    pub fn alarms_of(&self, kind: AlarmKind) -> Vec<AlarmRecord> {
        self.alarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|a| a.kind == kind)
            .cloned()
            .collect()
    }

    /// When each lease may end on this member's monotonic clock (see [`crate::lease_clock`]).
    pub fn lease_clock(&self) -> &LeaseClock {
        &self.lease_clock
    }

    /// The state hashes this replica computed lately (see [`super::state_hash`]).
    pub(super) fn usage(&self) -> &PrefixUsage {
        &self.usage
    }

    /// What the keys under each of `wanted` take in the applied state. Every prefix of
    /// `quotas` (the storage quotas' prefixes) is counted from then on by every batch; the
    /// others stop being counted.
    pub fn prefix_usage(&self, quotas: &[&str], wanted: &[&str]) -> io::Result<Vec<Usage>> {
        let mut counted = self.usage.lock();
        counted.keep_only(quotas);
        wanted.iter().map(|p| counted.of(p, &self.store)).collect()
    }

    pub fn state_hashes(&self) -> &StateHashes {
        &self.state_hashes
    }

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

    /// Makes a newly applied state visible: its revision last, so whoever sees the revision
    /// finds everything up to it.
    pub(super) fn publish(&self, applied: &AppliedStateRecord) {
        let alarms_changed =
            *self.alarms.read().unwrap_or_else(|p| p.into_inner()) != applied.alarms;
        if alarms_changed {
            *self.alarms.write().unwrap_or_else(|p| p.into_inner()) = applied.alarms.clone();
        }
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
    /// revisions' worth and about `max_bytes` (whole revisions only, at least one). Checks
    /// compaction after reading, so a concurrent compaction is reported rather than silently
    /// skipping events.
    pub fn history(
        &self,
        from: u64,
        to: u64,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<EventRecord>> {
        let mut out: Vec<EventRecord> = Vec::new();
        let (mut revisions, mut bytes) = (0, 0);
        let mut events =
            self.store
                .scan::<EventRecord>(CF_HISTORY, &u64_key(from), RecordKind::Event, "event");
        while let Some(item) = events.next() {
            let (_, event) = item.map_err(io_err)?;
            if event.revision > to {
                break;
            }
            if out.last().is_none_or(|e| e.revision != event.revision) {
                // A new revision starts: stop if either bound is reached (never before the
                // first, so a revision larger than the byte bound is still read whole).
                if revisions == limit || (revisions > 0 && bytes >= max_bytes) {
                    break;
                }
                revisions += 1;
            }
            bytes += events.last_size();
            out.push(event);
        }
        Ok(out)
    }

    pub fn lease(&self, id: u64) -> io::Result<Option<LeaseRecord>> {
        self.store.lease_record(id).map_err(io_err)
    }

    /// Every lease, by id.
    pub fn leases(&self) -> io::Result<Vec<LeaseRecord>> {
        self.store
            .scan::<LeaseRecord>(CF_LEASES, &[], RecordKind::Lease, "lease")
            .map(|item| item.map(|(_, lease)| lease).map_err(io_err))
            .collect()
    }

    /// Leases whose deadline is at or before `now_ms`, earliest first, at most `limit`.
    pub fn leases_due(&self, now_ms: u64, limit: usize) -> io::Result<Vec<u64>> {
        time_index::leases_due(&self.store, now_ms, limit).map_err(io_err)
    }

    /// Whether an answer is kept for this idempotency key: a retry of it changes nothing.
    pub fn answered(&self, idempotency_key: &str) -> bool {
        self.store
            .db()
            .get_pinned_cf(
                self.store.cf(super::CF_IDEMPOTENCY),
                idempotency_key.as_bytes(),
            )
            .is_ok_and(|v| v.is_some())
    }

    /// Whether any idempotency answer was given before `cutoff_ms` (the sweep has work).
    pub fn idempotency_due(&self, cutoff_ms: u64) -> io::Result<bool> {
        let floor = self.sweep_floor();
        Ok(
            !time_index::idempotency_before(&self.store, floor.as_deref(), cutoff_ms, 1)
                .map_err(io_err)?
                .is_empty(),
        )
    }

    pub(super) fn sweep_floor(&self) -> Option<Vec<u8>> {
        self.sweep_floor.lock().expect("not poisoned").clone()
    }

    pub(super) fn set_sweep_floor(&self, floor: Option<Vec<u8>>) {
        *self.sweep_floor.lock().expect("not poisoned") = floor;
    }

    pub fn get(&self, key: &str) -> io::Result<Option<KeyRecord>> {
        self.store.key_record(key).map_err(io_err)
    }

    /// Keys starting with `prefix`, in order, strictly after `after` when given; at most `limit`
    /// keys and, past the first, at most `max_bytes` stored bytes (keys and records), so one page
    /// of large values cannot take the node's memory. Returns the keys and whether more remain.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<(String, KeyRecord)>, bool)> {
        let from = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut keys =
            self.store
                .scan::<KeyRecord>(CF_KV, from.as_bytes(), RecordKind::KeyValue, "key");
        while let Some(item) = keys.next() {
            let size = keys.last_size();
            let (key, record) = item.map_err(io_err)?;
            if after.is_some_and(|a| a.as_bytes() == key) {
                continue;
            }
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            if out.len() == limit || (!out.is_empty() && bytes.saturating_add(size) > max_bytes) {
                return Ok((out, true));
            }
            bytes = bytes.saturating_add(size);
            let key = String::from_utf8(key).map_err(|_| io_err("stored key is not UTF-8"))?;
            out.push((key, record));
        }
        Ok((out, false))
    }
}
