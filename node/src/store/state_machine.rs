//! The replicated state machine as openraft drives it: applies each batch of log entries as
//! one atomic RocksDB write that also records the last applied log id (so after a crash the
//! state machine is exactly at some applied index and Raft re-applies the rest from the log),
//! compacts the history, and builds and installs snapshots. What each command does is
//! [`super::apply`]; what the API reads is [`super::reader`].

use std::io;

use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;

use super::CF_APPLIED;
use super::CF_HISTORY;
use super::KEY_APPLIED;
use super::Store;
use super::StoreError;
use super::apply::AlarmChange;
use super::apply::Batch;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::reader::KvReader;
use super::records::AppliedStateRecord;
use super::records::COMMAND_VERSION_BASE;
use super::records::Operation;
use super::records::Response;
use super::snapshot;
use super::snapshot::SnapshotFile;
use super::time_index;
use super::types::Entry;
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
    /// Bytes of history this member keeps at most (`--history-bytes`); `None`: no bound.
    history_bytes: Option<u64>,
    /// The history kept, by bytes: per applied batch, its last revision and the bytes of
    /// events it wrote (what was there at open counts as one step at the revision then).
    history_steps: std::collections::VecDeque<(u64, u64)>,
    history_kept_bytes: u64,
}

/// Retention by bytes compacts down to this share of the bound, so it runs now and then
/// rather than at every batch once the bound is reached.
const HISTORY_BYTES_LOW_WATER: f64 = 0.75;

impl StateMachine {
    /// Opens the state machine, finishing an interrupted snapshot install if there was one and
    /// rebuilding the time indexes if the last applied batch did not keep them.
    pub fn open(store: Store, metrics: Metrics) -> Result<Self, StoreError> {
        let applied = store.applied_state()?;
        if let Some(meta) = snapshot::installing(&store)? {
            tracing::warn!(snapshot = %meta.file, "finishing a snapshot install interrupted by a crash");
            snapshot::load_into_state_machine(&store, &meta)?;
            return Self::open(store, metrics);
        }
        let applied_index = applied.last_applied.as_ref().map(|l| l.index);
        if !time_index::current(&store, applied_index)? {
            tracing::info!("rebuilding the time indexes: the last applied batch did not keep them");
            time_index::rebuild(&store, applied_index)?;
        }
        let reader = KvReader::new(store.clone(), &applied);
        time_leases(&reader)?;
        let at_open = history_size(&store);
        Ok(Self {
            store,
            history_steps: [(applied.revision, at_open)].into(),
            history_kept_bytes: at_open,
            applied,
            reader,
            metrics,
            history_revisions: HISTORY_RETAINED_REVISIONS,
            history_bytes: None,
        })
    }

    /// Keeps this many revisions of history for watches (at least 1).
    pub fn with_history_revisions(mut self, revisions: u64) -> Self {
        self.history_revisions = revisions.max(1);
        self
    }

    /// Keeps at most about this many bytes of history (the oldest goes first); at least the
    /// last batch's is kept.
    pub fn with_history_bytes(mut self, bytes: Option<u64>) -> Self {
        self.history_bytes = bytes;
        self
    }

    /// Where retention by bytes compacts the history to, if it is over its bound: the first
    /// revision kept once the oldest steps are dropped down to the low water mark.
    fn history_over_bytes(&mut self, written: u64, revision: u64) -> Option<u64> {
        if written > 0 {
            self.history_steps.push_back((revision, written));
            self.history_kept_bytes += written;
        }
        let bound = self.history_bytes?;
        if self.history_kept_bytes <= bound {
            return None;
        }
        let low = (bound as f64 * HISTORY_BYTES_LOW_WATER) as u64;
        let mut upto = None;
        while self.history_kept_bytes > low && self.history_steps.len() > 1 {
            let (last_revision, bytes) = self.history_steps.pop_front()?;
            self.history_kept_bytes -= bytes;
            upto = Some(last_revision + 1);
        }
        upto
    }

    /// Forgets the bytes of the history below `upto`, compacted for another reason.
    fn history_compacted_to(&mut self, upto: u64) {
        while self
            .history_steps
            .front()
            .is_some_and(|(last, _)| *last < upto && self.history_steps.len() > 1)
        {
            if let Some((_, bytes)) = self.history_steps.pop_front() {
                self.history_kept_bytes -= bytes;
            }
        }
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

    /// Applies `entries`, the answers in order: as one atomic write, except that a batch
    /// ends at each `CheckState` entry, whose state is then hashed (see [`super::state_hash`]);
    /// its answer is the index the replicas hash at.
    pub(crate) fn apply_entries(&mut self, entries: Vec<Entry>) -> io::Result<Vec<Response>> {
        let mut responses = Vec::with_capacity(entries.len());
        let mut batch = Vec::new();
        for entry in entries {
            let checks_state = matches!(
                &entry.payload,
                EntryPayload::Normal(cmd) if matches!(cmd.op, Operation::CheckState {})
            );
            let index = entry.log_id.index;
            batch.push(entry);
            if checks_state {
                responses.extend(self.apply_batch(std::mem::take(&mut batch))?);
                self.reader.state_hashes().hash_now(&self.store, index);
                if let Some(last) = responses.last_mut() {
                    *last = Response::Checked { index };
                }
            }
        }
        if !batch.is_empty() {
            responses.extend(self.apply_batch(batch)?);
        }
        Ok(responses)
    }

    /// Applies `entries` as one atomic write with the last one's log id, compacting the
    /// history if it is due; the answers, in order. Readers see the new state once it is
    /// written.
    fn apply_batch(&mut self, entries: Vec<Entry>) -> io::Result<Vec<Response>> {
        let command_version = self.applied.command_version.unwrap_or(COMMAND_VERSION_BASE);
        let mut batch = Batch::new(
            &self.store,
            self.applied.revision,
            command_version,
            self.reader.sweep_floor(),
        );
        let mut applied = self.applied.clone();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            applied.last_applied = Some(log_id_to_record(&entry.log_id));
            responses.push(match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(cmd) => batch.apply(cmd)?,
                EntryPayload::Membership(m) => {
                    applied.membership = Some(stored_membership_to_record(
                        &StoredMembershipOf::new(Some(entry.log_id), m),
                    ));
                    Response::None
                }
            });
        }
        applied.revision = batch.revision();
        if batch.command_version() > COMMAND_VERSION_BASE {
            applied.command_version = Some(batch.command_version());
        }
        for change in batch.alarm_changes() {
            match change {
                AlarmChange::Raised(alarm) => {
                    if !applied
                        .alarms
                        .iter()
                        .any(|a| a.member == alarm.member && a.kind == alarm.kind)
                    {
                        applied.alarms.push(alarm.clone());
                    }
                }
                AlarmChange::Disarmed { member, kind } => applied
                    .alarms
                    .retain(|a| !(a.member == *member && a.kind == *kind)),
            }
        }
        let compact_to = batch.compact_to();
        let history_written = batch.history_bytes();
        if !applied.alarms.is_empty()
            && let Some(m) = &applied.membership
        {
            // An alarm goes with its member: one removed from the membership is fenced no more.
            let membership = stored_membership_from_record(m)?;
            applied
                .alarms
                .retain(|a| membership.membership().get_node(&a.member).is_some());
        }
        let super::apply::Parts {
            writes: mut wb,
            sweep_floor,
            lease_changes,
            touched,
        } = batch.into_parts();
        let by_bytes = self.history_over_bytes(history_written, applied.revision);
        // History compaction: a function of the revision and the configured retention.
        let keep = self.history_revisions;
        let mut upto = None;
        if applied.revision > applied.compacted_revision + keep + compaction_step(keep) {
            upto = Some(applied.revision - keep);
        }
        // Asked for (an admin freeing space): the whole range goes now, and RocksDB is told
        // to reclaim its files, or the space would come back only with its next compaction.
        let asked = compact_to.filter(|&r| r > applied.compacted_revision);
        for r in [asked, by_bytes].into_iter().flatten() {
            upto = Some(upto.unwrap_or(0).max(r));
        }
        if let Some(upto) = upto.filter(|&u| u > applied.compacted_revision) {
            wb.delete_range_cf(self.store.cf(CF_HISTORY), u64_key(0), u64_key(upto));
            applied.compacted_revision = upto;
            self.history_compacted_to(upto);
        }
        wb.put_cf(
            self.store.cf(CF_APPLIED),
            KEY_APPLIED,
            codec::encode(RecordKind::AppliedState, &applied),
        );
        if let Some(last) = &applied.last_applied {
            time_index::mark_indexed(&self.store, &mut wb, last.index);
        }
        // The quota counts change with the state, under one lock: a count is never of a
        // state between two applied indexes.
        let mut counted = self.reader.usage().lock();
        let usage_changes = counted.changes(&touched, &self.store)?;
        // Not synced here: the log is synced, and a lost tail of applied state is re-applied.
        self.store.db().write(wb).map_err(io_err)?;
        counted.apply(usage_changes);
        drop(counted);
        self.reader.set_sweep_floor(sweep_floor);
        self.reader
            .lease_clock()
            .applied(&lease_changes, std::time::Instant::now());
        self.applied = applied;
        self.reader.publish(&self.applied);
        if asked.is_some() {
            self.store.reclaim_in_background();
        }
        Ok(responses)
    }

    fn reload_applied(&mut self) -> io::Result<()> {
        self.applied = self.store.applied_state().map_err(io_err)?;
        self.reader.publish(&self.applied);
        // A snapshot brought its own history.
        let size = history_size(&self.store);
        self.history_steps = [(self.applied.revision, size)].into();
        self.history_kept_bytes = size;
        Ok(())
    }
}

/// RocksDB's estimate of the bytes of history stored.
fn history_size(store: &Store) -> u64 {
    store
        .db()
        .property_int_value_cf(store.cf(CF_HISTORY), "rocksdb.estimate-live-data-size")
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Times every lease in the state from now: at start and after a snapshot install, nothing is
/// known of earlier keep-alives, and each lease gets one full TTL.
fn time_leases(reader: &KvReader) -> Result<(), StoreError> {
    let leases = reader.leases().map_err(StoreError::from)?;
    reader.lease_clock().reset(
        leases.into_iter().map(|l| (l.id, l.ttl_ms)),
        std::time::Instant::now(),
    );
    Ok(())
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
        let (entries, responders): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let responses = self.apply_entries(entries)?;
        let n = responses.len();
        for (responder, response) in responders.into_iter().zip(responses) {
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
        let mut counted = self.reader.usage().lock();
        snapshot::install(&self.store, meta, snapshot).map_err(io_err)?;
        counted.forget_all();
        drop(counted);
        // Snapshots hold the tables, not their indexes.
        let applied_index = meta.last_log_id.as_ref().map(|l| l.index);
        time_index::rebuild(&self.store, applied_index).map_err(io_err)?;
        self.reader.set_sweep_floor(None);
        time_leases(&self.reader).map_err(io_err)?;
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
