//! The Raft log (in segment files of our own, `log_file`) and the vote (in the `meta` column
//! family).
//!
//! Appends are written to the active segment at once (so readers see them) and acknowledged
//! to Raft only after a background thread has fsynced it. That thread syncs once for every
//! append that arrived while it was busy: a group commit, so concurrent writers share one
//! fsync and nothing is acknowledged before it is on disk.

use std::fmt::Debug;
use std::fs::File;
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
use super::StoreError;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::log_cache::LogCache;
use super::log_file;
use super::log_file::LogFiles;
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

type SyncRequest = (IOFlushed<TypeConfig>, Arc<File>);

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    files: Arc<Mutex<LogFiles>>,
    syncer: mpsc::Sender<SyncRequest>,
    /// Shared by the store and its readers (replication, apply).
    recent: Arc<Mutex<LogCache>>,
    /// When the committed pointer was last written (see `save_committed`).
    committed_written: Option<Instant>,
}

/// How often, at most, the committed pointer is written.
const COMMITTED_EVERY: Duration = Duration::from_millis(100);

impl LogStore {
    /// Opens the log of `store`'s data dir, first moving the entries of a data dir written by
    /// a version that kept them in the database.
    pub fn open(store: Store, metrics: Metrics) -> Result<Self, StoreError> {
        let dir = store.log_dir();
        migrate_from_database(&store, &dir)?;
        let purged = read_purged(&store)?.map(|l| l.index);
        let files = LogFiles::open(&dir, purged)?;
        let (tx, rx) = mpsc::channel::<SyncRequest>();
        std::thread::Builder::new()
            .name("log-sync".into())
            .spawn(move || sync_loop(rx, metrics))?;
        Ok(Self {
            store,
            files: Arc::new(Mutex::new(files)),
            syncer: tx,
            recent: Arc::default(),
            committed_written: None,
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, LogCache> {
        self.recent.lock().expect("log cache lock")
    }

    fn files(&self) -> std::sync::MutexGuard<'_, LogFiles> {
        self.files.lock().expect("log files lock")
    }

    fn read_log_id(&self, key: &[u8], what: &str) -> io::Result<Option<LogId>> {
        let rec: Option<LogIdRecord> = self
            .store
            .get_record(CF_META, key, RecordKind::LogPointer, what)
            .map_err(io_err)?;
        Ok(rec.as_ref().map(log_id_from_record))
    }

    fn last_entry_log_id(&self) -> io::Result<Option<LogId>> {
        let files = self.files();
        let Some(last) = files.last_index() else {
            return Ok(None);
        };
        let read = files.read(last, last + 1)?;
        drop(files);
        match read.first() {
            Some((index, bytes)) => Ok(Some(log_id_from_record(
                &decode_entry(*index, bytes)?.log_id,
            ))),
            None => Ok(None),
        }
    }
}

fn read_purged(store: &Store) -> Result<Option<LogIdRecord>, StoreError> {
    store.get_record(CF_META, KEY_PURGED, RecordKind::LogPointer, "purged log id")
}

fn decode_entry(index: u64, bytes: &[u8]) -> io::Result<LogEntryRecord> {
    let rec: LogEntryRecord = codec::decode(RecordKind::LogEntry, bytes)
        .map_err(|e| io_err(format!("log entry {index} is unreadable: {e}")))?;
    if rec.log_id.index != index {
        return Err(io_err(format!(
            "log entry stored at index {index} says it is entry {}",
            rec.log_id.index
        )));
    }
    Ok(rec)
}

/// Data dirs written before the log had files of its own kept its entries in the `log`
/// column family. They are copied into a new log (synced), then deleted from the database;
/// should the process stop in between, the column family still holds them all and the copy
/// is made again.
fn migrate_from_database(store: &Store, dir: &std::path::Path) -> Result<(), StoreError> {
    let mut it = store.db().raw_iterator_cf(store.cf(CF_LOG));
    it.seek_to_first();
    if !it.valid() {
        it.status().map_err(io_err)?;
        return Ok(());
    }
    log_file::remove_all(dir)?;
    let mut files = LogFiles::open(dir, read_purged(store)?.map(|l| l.index))?;
    let mut batch = Vec::new();
    let mut moved = 0u64;
    let mut to_sync = None;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let index = u64_from_key(k).ok_or_else(|| io_err("log key is not a u64 index"))?;
        batch.push((index, v.to_vec()));
        if batch.len() == 1000 {
            to_sync = files.append(&batch)?.or(to_sync);
            moved += batch.len() as u64;
            batch.clear();
        }
        it.next();
    }
    it.status().map_err(io_err)?;
    moved += batch.len() as u64;
    to_sync = files.append(&batch)?.or(to_sync);
    if let Some(file) = to_sync {
        file.sync_data()?;
    }
    let mut wb = WriteBatch::default();
    wb.delete_range_cf(store.cf(CF_LOG), u64_key(0), u64_key(u64::MAX));
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    store.db().write_opt(wb, &wo).map_err(io_err)?;
    tracing::info!(
        entries = moved,
        dir = %dir.display(),
        "moved the Raft log out of the database into log files of its own"
    );
    Ok(())
}

/// Fsyncs the segments of every batch of pending appends, then acknowledges them in order.
fn sync_loop(rx: mpsc::Receiver<SyncRequest>, metrics: Metrics) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        pending.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let mut synced: Vec<&Arc<File>> = Vec::new();
        let mut result = Ok(());
        for (_, file) in &pending {
            if !synced.iter().any(|s| Arc::ptr_eq(s, file)) {
                if let Err(e) = file.sync_data() {
                    result = Err(e.to_string());
                }
                synced.push(file);
            }
        }
        metrics.observe_log_sync(started.elapsed(), pending.len());
        for (cb, _) in pending {
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
        let read = self.files().read(start, end.unwrap_or(u64::MAX))?;
        read.into_iter()
            .map(|(index, bytes)| entry_from_record(decode_entry(index, &bytes)?))
            .collect()
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
        let mut encoded = Vec::new();
        let mut written = Vec::new();
        for entry in entries {
            let bytes = codec::encode(RecordKind::LogEntry, &entry_to_record(&entry));
            written.push((entry, bytes.len()));
            encoded.push((written.last().expect("pushed").0.log_id.index, bytes));
        }
        let to_sync = self.files().append(&encoded)?;
        let mut recent = self.recent();
        for (entry, len) in written {
            recent.appended(entry, len);
        }
        drop(recent);
        match to_sync {
            Some(file) => self
                .syncer
                .send((callback, file))
                .map_err(|_| io_err("log sync thread has stopped")),
            None => {
                callback.io_completed(Ok(()));
                Ok(())
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        // Dropped from the cache first: a reader must never get an entry the log no longer has.
        self.recent().truncated_after(last_log_id.map(|l| l.index));
        self.files().truncate_from(from)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The pointer first, synced: that also syncs the database's write-ahead log, so the
        // state the purged entries led to is on disk before they go.
        self.store
            .put_record_synced(
                CF_META,
                KEY_PURGED,
                RecordKind::LogPointer,
                &log_id_to_record(&log_id),
            )
            .map_err(io_err)?;
        self.recent().purged_upto(log_id.index);
        self.files().purge_upto(log_id.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::PayloadRecord;

    fn old_entry(index: u64) -> Vec<u8> {
        let rec = LogEntryRecord {
            log_id: LogIdRecord {
                term: 1,
                leader: 7,
                index,
            },
            payload: PayloadRecord::Blank,
        };
        codec::encode(RecordKind::LogEntry, &rec)
    }

    #[tokio::test]
    async fn a_log_kept_in_the_database_moves_to_log_files_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..3 {
            store
                .db()
                .put_cf(store.cf(CF_LOG), u64_key(i), old_entry(i))
                .unwrap();
        }
        for _ in 0..2 {
            let mut log = LogStore::open(store.clone(), Metrics::new()).unwrap();
            assert_eq!(store.last_log_entry().unwrap(), None, "moved out");
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_log_id.map(|l| l.index), Some(2));
            let entries = log.try_get_log_entries(0..10).await.unwrap();
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(indexes, vec![0, 1, 2]);
        }
    }
}
