//! Storage. A data dir holds `db`, one RocksDB database with the node's identity, the Raft
//! vote and the state machine (keys, revision history, leases, idempotency table); `log`, the
//! Raft log's segment files (`log_file`); and `snapshots`.
//!
//! The database's layout by column family:
//! - `meta`: identity, vote, committed and purged log ids, current snapshot; under `index/`,
//!   the time indexes of idempotency answers and lease deadlines (`time_index`).
//! - `log`: empty; older versions kept the Raft log here (moved out at open, `log_store`).
//! - `kv`: live keys. `history`: one event per change, by revision. `leases`, `idempotency`.
//! - `applied`: the state machine's last applied log id, membership and revision.

mod apply;
pub mod codec;
pub mod log_cache;
pub mod log_file;
pub mod log_store;
pub mod reader;
pub mod records;
pub mod snapshot;
pub mod state_hash;
pub mod state_machine;
pub mod time_index;
pub mod types;
pub mod usage;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::ColumnFamilyDescriptor;
use rocksdb::DB;
use rocksdb::Options;

use self::codec::DecodeError;
use self::codec::RecordKind;
pub use self::log_store::LogStore;
use self::records::AppliedStateRecord;
use self::records::IdentityRecord;
use self::records::KeyRecord;
use self::records::LogEntryRecord;
use self::records::LogIdRecord;
pub use self::state_machine::StateMachine;

pub const CF_META: &str = "meta";
pub const CF_LOG: &str = "log";
pub const CF_KV: &str = "kv";
pub const CF_HISTORY: &str = "history";
pub const CF_LEASES: &str = "leases";
pub const CF_IDEMPOTENCY: &str = "idempotency";
pub const CF_APPLIED: &str = "applied";

/// Column families that make up the state machine (and so a snapshot).
pub const STATE_MACHINE_CFS: [&str; 5] = [CF_KV, CF_HISTORY, CF_LEASES, CF_IDEMPOTENCY, CF_APPLIED];
const ALL_CFS: [&str; 7] = [
    CF_META,
    CF_LOG,
    CF_KV,
    CF_HISTORY,
    CF_LEASES,
    CF_IDEMPOTENCY,
    CF_APPLIED,
];

/// The Raft log's segment files, beside the database (`db`) in a data dir.
pub const LOG_DIR: &str = "log";

pub const KEY_IDENTITY: &[u8] = b"identity";
pub const KEY_VOTE: &[u8] = b"vote";
pub const KEY_COMMITTED: &[u8] = b"committed";
pub const KEY_PURGED: &[u8] = b"purged";
pub const KEY_SNAPSHOT: &[u8] = b"snapshot";
pub const KEY_APPLIED: &[u8] = b"applied";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage at {path}: {source}")]
    Rocks {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("{what} in {path} is unreadable: {source}")]
    Corrupt {
        what: String,
        path: PathBuf,
        source: DecodeError,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Per column family tuning. Every put reads the key's current record from `kv` first; a
/// point lookup in a large memtable full of versions of the same keys is slow (a deep skip
/// list walk), so `kv` gets small memtables and bloom filters on its tables.
fn cf_options(name: &str, memtable_bytes: usize) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(memtable_bytes);
    if name == CF_KV {
        o.set_write_buffer_size(memtable_bytes.min(8 << 20));
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(0.1);
    }
    o
}

/// Removes what a process stopped in the middle leaves in the data dir and nothing reads: a
/// snapshot being received (`snapshots/incoming-*.part`), and backups that builds before
/// streamed backups staged there (`backups/*`). Each can be as big as the state, and would
/// otherwise stay for good.
fn remove_leftovers(dir: &Path) {
    let leftovers = std::fs::read_dir(dir.join("snapshots"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("incoming-") && name.ends_with(".part")
        })
        .chain(
            std::fs::read_dir(dir.join(BACKUPS_DIR))
                .into_iter()
                .flatten()
                .filter_map(Result::ok),
        );
    for entry in leftovers {
        let path = entry.path();
        let bytes = entry.metadata().map_or(0, |m| m.len());
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), bytes, "removed a partial file left by an earlier run")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial file left by an earlier run")
            }
        }
    }
}

/// Where builds before streamed backups staged online backups while they were sent.
pub const BACKUPS_DIR: &str = "backups";

/// A shared handle to the node's database.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    dir: PathBuf,
    /// Set once [`Store::reclaim_in_background`] finished: the member's snapshot still holds
    /// the files it dropped, until a new snapshot replaces it.
    reclaimed: Arc<std::sync::atomic::AtomicBool>,
    /// Set while a reclaim runs: a snapshot taken now would hold the files it is replacing.
    reclaiming: Arc<std::sync::atomic::AtomicBool>,
}

/// How RocksDB replays its write-ahead log at open. Its default (point in time) stops at the
/// first damaged record and silently drops every record after it, synced or not: acknowledged
/// writes would vanish without a word. Only an incomplete last record is expected (a write
/// cut short by a crash, never acknowledged); damage anywhere else stops the open with an
/// error.
const WAL_RECOVERY: rocksdb::DBRecoveryMode = rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords;

impl Store {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Checks every block's checksum on read, so corruption is reported, never served.
        opts.set_paranoid_checks(true);
        opts.set_wal_recovery_mode(WAL_RECOVERY);
        // On a small volume, memtables and the write-ahead log they keep are bounded by the
        // volume: a flush writes a memtable out at once, and the log is kept until every
        // memtable holding its writes is flushed (two copies of every value, until then).
        let room = crate::space::free_bytes(dir)
            .unwrap_or(u64::MAX)
            .saturating_add(crate::space::bytes_on_disk(dir));
        let memtable_bytes = (room / 32).clamp(2 << 20, 64 << 20) as usize;
        opts.set_max_total_wal_size((room / 16).clamp(8 << 20, 512 << 20));
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, memtable_bytes)));
        let db_path = dir.join("db");
        let db =
            DB::open_cf_descriptors(&opts, &db_path, cfs).map_err(|source| StoreError::Rocks {
                path: db_path.clone(),
                source,
            })?;
        std::fs::create_dir_all(dir.join("snapshots"))?;
        remove_leftovers(dir);
        Ok(Self {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            reclaimed: Arc::default(),
            reclaiming: Arc::default(),
        })
    }

    /// Asks RocksDB to rewrite the state machine's files now, so that what deletes and a
    /// history compaction dropped is given back to the volume (otherwise it comes back only
    /// with RocksDB's next compaction of those files). Runs on its own thread: it can take
    /// seconds, and an apply must not wait for it.
    pub fn reclaim_in_background(&self) {
        let store = self.clone();
        self.reclaiming
            .store(true, std::sync::atomic::Ordering::Release);
        let spawned = std::thread::Builder::new()
            .name("reclaim".into())
            .spawn(move || {
                // Every level, the last included: its tables hold the values the deletes
                // and the history compaction dropped.
                let mut options = rocksdb::CompactOptions::default();
                options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
                for cf in [CF_HISTORY, CF_KV, CF_IDEMPOTENCY, CF_LEASES] {
                    store.db.compact_range_cf_opt(
                        store.cf(cf),
                        None::<&[u8]>,
                        None::<&[u8]>,
                        &options,
                    );
                }
                store
                    .reclaimed
                    .store(true, std::sync::atomic::Ordering::Release);
                store
                    .reclaiming
                    .store(false, std::sync::atomic::Ordering::Release);
                tracing::info!("space of compacted history and deleted keys reclaimed");
            });
        if let Err(e) = spawned {
            self.reclaiming
                .store(false, std::sync::atomic::Ordering::Release);
            tracing::warn!(error = %e, "cannot start reclaiming space");
        }
    }

    /// Opens an existing database read-only (for `inspect`, safe beside a running node).
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let db_path = dir.join("db");
        if !db_path.join("CURRENT").exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} holds no Concordance data", dir.display()),
            )));
        }
        let mut opts = Options::default();
        opts.set_paranoid_checks(true);
        opts.set_wal_recovery_mode(WAL_RECOVERY);
        let db = DB::open_cf_for_read_only(&opts, &db_path, ALL_CFS, false).map_err(|source| {
            StoreError::Rocks {
                path: db_path.clone(),
                source,
            }
        })?;
        Ok(Self {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            reclaimed: Arc::default(),
            reclaiming: Arc::default(),
        })
    }

    /// Whether a reclaim finished since the last [`Store::snapshot_taken_after_reclaim`]: a
    /// new snapshot then gives back what the old one still holds (its checkpoint links the
    /// tables the reclaim replaced).
    pub fn reclaimed(&self) -> bool {
        self.reclaimed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a reclaim is running.
    pub fn reclaiming(&self) -> bool {
        self.reclaiming.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn snapshot_taken_after_reclaim(&self) {
        self.reclaimed
            .store(false, std::sync::atomic::Ordering::Release);
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    /// Makes everything written durable and stops RocksDB's background flushes and
    /// compactions, waiting for a running one to finish. Called last before the process
    /// exits: the database is never dropped (Raft's tasks hold it to the end), and exiting
    /// while a background job runs lets the C++ static destructors pull state out from under
    /// that job, which can crash the process on its way out.
    pub fn close(&self) -> Result<(), rocksdb::Error> {
        self.db.flush_wal(true)?;
        self.db.cancel_all_background_work(true);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join(LOG_DIR)
    }

    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn rocks_err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.dir.clone(),
            source,
        }
    }

    /// Reads and decodes one record, naming what was unreadable on failure.
    pub fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
        kind: RecordKind,
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(cf), key)
            .map_err(|e| self.rocks_err(e))?
        else {
            return Ok(None);
        };
        self.decode_record(kind, &bytes, what).map(Some)
    }

    /// Decodes one record read from this store (or from a view of it), naming what was
    /// unreadable on failure.
    pub fn decode_record<T: serde::de::DeserializeOwned>(
        &self,
        kind: RecordKind,
        bytes: &[u8],
        what: &str,
    ) -> Result<T, StoreError> {
        codec::decode(kind, bytes).map_err(|source| StoreError::Corrupt {
            what: what.to_string(),
            path: self.dir.clone(),
            source,
        })
    }

    /// The records of column family `cf` in key order, from the first key at or after `from`,
    /// each decoded as `kind` (`what` names one in an error). Stops at the first error (a
    /// record that does not decode, or the iterator's own); drop it to stop early.
    pub fn scan<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        from: &[u8],
        kind: RecordKind,
        what: &'static str,
    ) -> Scan<'_, T> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek(from);
        Scan {
            store: self,
            it,
            kind,
            what,
            done: false,
            last_size: 0,
            decoded: std::marker::PhantomData,
        }
    }

    /// Writes one record and syncs it to disk before returning.
    pub fn put_record_synced<T: serde::Serialize>(
        &self,
        cf: &str,
        key: &[u8],
        kind: RecordKind,
        value: &T,
    ) -> Result<(), StoreError> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf(cf), key, codec::encode(kind, value), &wo)
            .map_err(|e| self.rocks_err(e))
    }

    pub fn identity(&self) -> Result<Option<IdentityRecord>, StoreError> {
        self.get_record(CF_META, KEY_IDENTITY, RecordKind::Identity, "node identity")
    }

    pub fn save_identity(&self, identity: &IdentityRecord) -> Result<(), StoreError> {
        self.put_record_synced(CF_META, KEY_IDENTITY, RecordKind::Identity, identity)
    }

    /// The state machine's bookkeeping (default when nothing was applied yet).
    pub fn applied_state(&self) -> Result<AppliedStateRecord, StoreError> {
        Ok(self
            .get_record(
                CF_APPLIED,
                KEY_APPLIED,
                RecordKind::AppliedState,
                "applied state",
            )?
            .unwrap_or_default())
    }

    /// A live key's record.
    pub fn key_record(&self, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.get_record(
            CF_KV,
            key.as_bytes(),
            RecordKind::KeyValue,
            &format!("key {key:?}"),
        )
    }

    pub fn lease_record(&self, id: u64) -> Result<Option<records::LeaseRecord>, StoreError> {
        self.get_record(
            CF_LEASES,
            &u64_key(id),
            RecordKind::Lease,
            &format!("lease {id}"),
        )
    }

    /// The log id of the last entry in the `log` column family, which held the Raft log before
    /// it had files of its own (`log_file`); empty once a node has opened the data dir.
    pub fn last_log_entry(&self) -> Result<Option<LogIdRecord>, StoreError> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_LOG));
        it.seek_to_last();
        it.status().map_err(|e| self.rocks_err(e))?;
        match it.value() {
            None => Ok(None),
            Some(v) => codec::decode::<LogEntryRecord>(RecordKind::LogEntry, v)
                .map(|r| Some(r.log_id))
                .map_err(|source| StoreError::Corrupt {
                    what: "the last log entry".into(),
                    path: self.dir.clone(),
                    source,
                }),
        }
    }

    /// Bytes in the memtables: what a flush (before a checkpoint) writes out.
    pub fn memtable_bytes(&self) -> u64 {
        ALL_CFS
            .iter()
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
            })
            .sum()
    }

    /// Approximate bytes on disk of live data (SST files plus memtables, and the Raft log's
    /// segments, which are allocated whole).
    pub fn size_bytes(&self) -> u64 {
        let log: u64 = std::fs::read_dir(self.log_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>()
            })
            .unwrap_or(0);
        log + ALL_CFS
            .iter()
            .map(|cf| {
                let h = self.cf(cf);
                let sst = self
                    .db
                    .property_int_value_cf(h, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let mem = self
                    .db
                    .property_int_value_cf(h, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                sst + mem
            })
            .sum::<u64>()
    }
}

/// An iterator over one column family's records ([`Store::scan`]).
pub struct Scan<'a, T> {
    store: &'a Store,
    it: rocksdb::DBRawIterator<'a>,
    kind: RecordKind,
    what: &'static str,
    done: bool,
    last_size: usize,
    decoded: std::marker::PhantomData<T>,
}

impl<T> Scan<'_, T> {
    /// The stored size (key and encoded record) of the item `next` returned last: what a
    /// page bounded by bytes counts.
    pub fn last_size(&self) -> usize {
        self.last_size
    }
}

impl<T: serde::de::DeserializeOwned> Iterator for Scan<'_, T> {
    /// A record's key and the record.
    type Item = Result<(Vec<u8>, T), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match (self.it.key(), self.it.value()) {
            (Some(k), Some(v)) => {
                self.last_size = k.len() + v.len();
                codec::decode(self.kind, v)
                    .map(|record| (k.to_vec(), record))
                    .map_err(|source| StoreError::Corrupt {
                        what: format!("{} {:?}", self.what, String::from_utf8_lossy(k)),
                        path: self.store.dir.clone(),
                        source,
                    })
            }
            _ => {
                self.done = true;
                return self.it.status().err().map(|e| Err(self.store.rocks_err(e)));
            }
        };
        self.done = item.is_err();
        self.it.next();
        Some(item)
    }
}

/// Big-endian index key: keeps log entries and revisions in numeric order.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn u64_from_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

pub fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
