//! The Raft log and vote, in the `log` and `meta` column families.
//!
//! Appends are written to RocksDB at once (so readers see them) and acknowledged to Raft only
//! after a background thread has fsynced the write-ahead log. That thread syncs once for
//! every append that arrived while it was busy: a group commit, so concurrent writers share
//! one fsync and nothing is acknowledged before it is on disk.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use openraft::LogState;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use super::CF_LOG;
use super::CF_META;
use super::KEY_COMMITTED;
use super::KEY_PURGED;
use super::KEY_VOTE;
use super::Store;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::log_cache::LogCache;
use super::records::LogEntryRecord;
use super::records::LogIdRecord;
use super::records::VoteRecord;
use super::types::Entry;
use super::types::LogId;
use super::types::TypeConfig;
use super::types::Vote;
use super::types::entry_from_record;
use super::types::entry_to_record;
use super::types::log_id_from_record;
use super::types::log_id_to_record;
use super::types::vote_from_record;
use super::types::vote_to_record;
use super::u64_from_key;
use super::u64_key;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    syncer: mpsc::Sender<IOFlushed<TypeConfig>>,
    /// Shared by the store and its readers (replication, apply).
    recent: Arc<Mutex<LogCache>>,
    /// When the committed pointer was last written (see `save_committed`).
    committed_written: Option<Instant>,
}

/// How often, at most, the committed pointer is written.
const COMMITTED_EVERY: Duration = Duration::from_millis(100);

impl LogStore {
    pub fn new(store: Store, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let sync_store = store.clone();
        std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || sync_loop(sync_store, rx, metrics))
            .expect("spawn log sync thread");
        Self {
            store,
            syncer: tx,
            recent: Arc::default(),
            committed_written: None,
        }
    }

    fn write_synced(&self, batch: WriteBatch) -> io::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.store.db().write_opt(batch, &wo).map_err(io_err)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, LogCache> {
        self.recent.lock().expect("log cache lock")
    }

    fn read_log_id(&self, key: &[u8], what: &str) -> io::Result<Option<LogId>> {
        let rec: Option<LogIdRecord> = self
            .store
            .get_record(CF_META, key, RecordKind::LogPointer, what)
            .map_err(io_err)?;
        Ok(rec.as_ref().map(log_id_from_record))
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let last = self.store.last_log_entry().map_err(io_err)?;
        Ok(last.as_ref().map(log_id_from_record))
    }
}

/// Fsyncs the WAL for every batch of pending appends, then acknowledges them in order.
fn sync_loop(store: Store, rx: mpsc::Receiver<IOFlushed<TypeConfig>>, metrics: Metrics) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        pending.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = store.db().flush_wal(true);
        metrics.observe_log_sync(started.elapsed(), pending.len());
        for cb in pending {
            cb.io_completed(result.clone().map_err(io_err));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x + 1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(end) = end
            && let Some(entries) = self.recent().get(start..end)
        {
            return Ok(entries);
        }
        let mut out = Vec::new();
        let mut it = self.store.db().raw_iterator_cf(self.store.cf(CF_LOG));
        it.seek(u64_key(start));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let index = u64_from_key(k).ok_or_else(|| io_err("log key is not a u64 index"))?;
            if !range.contains(&index) {
                break;
            }
            let rec: LogEntryRecord = codec::decode(RecordKind::LogEntry, v)
                .map_err(|e| io_err(format!("log entry {index} is unreadable: {e}")))?;
            if rec.log_id.index != index {
                return Err(io_err(format!(
                    "log entry stored at index {index} says it is entry {}",
                    rec.log_id.index
                )));
            }
            out.push(entry_from_record(rec)?);
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        let rec: Option<VoteRecord> = self
            .store
            .get_record(CF_META, KEY_VOTE, RecordKind::Vote, "vote")
            .map_err(io_err)?;
        Ok(rec.as_ref().map(vote_from_record))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = self.read_log_id(KEY_PURGED, "purged log id")?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        // A vote must be on disk before it is answered: a node never votes twice in a term.
        self.store
            .put_record_synced(CF_META, KEY_VOTE, RecordKind::Vote, &vote_to_record(vote))
            .map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced, and written at most every COMMITTED_EVERY: an older committed index is
        // still a committed one, and it only speeds up restart (the rest is learnt from the
        // leader). Writing it for every commit cost a store write on the way to each answer.
        let Some(c) = committed else { return Ok(()) };
        if self
            .committed_written
            .is_some_and(|at| at.elapsed() < COMMITTED_EVERY)
        {
            return Ok(());
        }
        self.committed_written = Some(Instant::now());
        let bytes = codec::encode(RecordKind::LogPointer, &log_id_to_record(&c));
        self.store
            .db()
            .put_cf(self.store.cf(CF_META), KEY_COMMITTED, bytes)
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        self.read_log_id(KEY_COMMITTED, "committed log id")
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = self.store.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        let mut written = Vec::new();
        for entry in entries {
            let bytes = codec::encode(RecordKind::LogEntry, &entry_to_record(&entry));
            batch.put_cf(cf, u64_key(entry.log_id.index), &bytes);
            written.push((entry, bytes.len()));
        }
        self.store.db().write(batch).map_err(io_err)?;
        let mut recent = self.recent();
        for (entry, len) in written {
            recent.appended(entry, len);
        }
        drop(recent);
        self.syncer
            .send(callback)
            .map_err(|_| io_err("log sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.store.cf(CF_LOG), u64_key(from), u64_key(u64::MAX));
        // Dropped from the cache first: a reader must never get an entry the log no longer has.
        self.recent().truncated_after(last_log_id.map(|l| l.index));
        self.write_synced(batch)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.cf(CF_META),
            KEY_PURGED,
            codec::encode(RecordKind::LogPointer, &log_id_to_record(&log_id)),
        );
        batch.delete_range_cf(self.store.cf(CF_LOG), u64_key(0), u64_key(log_id.index + 1));
        self.recent().purged_upto(log_id.index);
        self.write_synced(batch)
    }
}
