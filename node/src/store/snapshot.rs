//! Snapshots: a point-in-time copy of the state machine's column families.
//!
//! A member's own snapshot is a RocksDB checkpoint (`snapshots/ckpt-<term>-<index>/db`): its
//! memtables flushed and its table files hard-linked, so building one writes almost nothing.
//! A follower that needs it gets it in the snapshot file format (below), read straight from the
//! checkpoint ([`SnapshotFile::write_to`]); only a receiving member writes the file. Writing
//! the whole state and its history at every snapshot, as before, made each snapshot cost as
//! much disk as the state (docs/benchmarks.md, "Snapshots as checkpoints").
//!
//! File layout: `CONCSNAP` magic, format version byte, then length-prefixed frames
//! (`[len u32 LE][bytes]`): first the meta record, then one frame per stored pair
//! (`[cf u8][key len u32 LE][key][value]`), then an empty frame and the CRC32 of every byte
//! before it. Values keep their own record envelopes, so each is checked again on load.

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use rocksdb::FlushOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use super::CF_APPLIED;
use super::CF_META;
use super::KEY_APPLIED;
use super::KEY_SNAPSHOT;
use super::STATE_MACHINE_CFS;
use super::Store;
use super::StoreError;
use super::codec;
use super::codec::RecordKind;
use super::io_err;
use super::records::AppliedStateRecord;
use super::records::SnapshotMetaRecord;
use super::records::StoredMembershipRecord;
use super::types::SnapshotMeta;
use super::types::TypeConfig;
use super::types::log_id_from_record;
use super::types::log_id_to_record;
use super::types::stored_membership_from_record;
use super::types::stored_membership_to_record;

const MAGIC: &[u8; 8] = b"CONCSNAP";
const FILE_VERSION: u8 = 1;
const KEY_INSTALLING: &[u8] = b"snapshot-installing";
/// Bytes per write batch when loading a snapshot, to bound memory on large states.
const LOAD_BATCH_BYTES: usize = 8 << 20;

/// The state machine's snapshot data: a snapshot file (received), or for a snapshot this
/// member built, its checkpoint, sent in the file's format read straight from it.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// The file, or the checkpoint's directory.
    pub path: PathBuf,
    /// Whether `path` is a checkpoint (this member's own snapshot) rather than a file.
    pub checkpoint: bool,
}

impl SnapshotFile {
    /// A snapshot file as received (verified by the caller).
    pub fn received(path: PathBuf) -> Self {
        Self {
            path,
            checkpoint: false,
        }
    }

    /// Writes the snapshot in the file format to `out` (blocking: it reads the whole state).
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<(), StoreError> {
        if !self.checkpoint {
            io::copy(&mut File::open(&self.path)?, &mut out)?;
            out.flush()?;
            return Ok(());
        }
        let started = std::time::Instant::now();
        let view = Store::open_read_only(&self.path)?;
        let (meta, applied, _) = write_snapshot(&view, out)?;
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            revision = applied.revision,
            seconds = started.elapsed().as_secs_f64(),
            "snapshot written from its checkpoint"
        );
        Ok(())
    }
}

pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

fn corrupt(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {} is corrupted: {why}", path.display()),
    )
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn frame(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len()).map_err(|_| io_err("snapshot frame over 4 GiB"))?;
        self.write_all(&len.to_le_bytes())?;
        self.write_all(bytes)
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
    /// Bytes left in the file: a length field claiming more is refused before anything is
    /// allocated for it (a damaged or hostile frame could claim 4 GiB).
    remaining: u64,
}

impl CrcReader<BufReader<File>> {
    fn open(path: &Path, buffer: usize) -> io::Result<Self> {
        let file = File::open(path)?;
        let remaining = file.metadata()?.len();
        Ok(CrcReader {
            inner: BufReader::with_capacity(buffer, file),
            crc: crc32fast::Hasher::new(),
            remaining,
        })
    }
}

impl<R: Read> CrcReader<R> {
    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        if n as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{n} bytes claimed, only {} left in the file",
                    self.remaining
                ),
            ));
        }
        let mut buf = vec![0u8; n];
        self.inner.read_exact(&mut buf)?;
        self.remaining -= n as u64;
        self.crc.update(&buf);
        Ok(buf)
    }
    fn frame(&mut self) -> io::Result<Vec<u8>> {
        let len = u32::from_le_bytes(self.exact(4)?.try_into().expect("4 bytes"));
        self.exact(len as usize)
    }
}

fn snapshot_path(store: &Store, meta: &SnapshotMetaRecord) -> PathBuf {
    let (term, index) = meta.last_log_id.map_or((0, 0), |l| (l.term, l.index));
    store
        .dir()
        .join("snapshots")
        .join(format!("snap-{term:020}-{index:020}.snap"))
}

fn to_openraft_meta(rec: &SnapshotMetaRecord) -> io::Result<SnapshotMeta> {
    Ok(SnapshotMeta {
        last_log_id: rec.last_log_id.as_ref().map(log_id_from_record),
        last_membership: stored_membership_from_record(&rec.membership)?,
    })
}

/// Writes a consistent copy of the applied state as of now to `out` in the snapshot file
/// format, calling `covers` with what it covers before its first byte (an online backup sent
/// as it is read, from one RocksDB snapshot, never staged on the data disk).
pub fn stream<W: Write>(
    store: &Store,
    out: W,
    covers: impl FnOnce(&SnapshotMetaRecord, &AppliedStateRecord),
) -> Result<(), StoreError> {
    write_snapshot_with(store, out, covers).map(|_| ())
}

/// Writes a consistent copy of the applied state as of now to `path` (fsynced), returning
/// what it covers. Used in tests.
pub fn write_file(
    store: &Store,
    path: &Path,
) -> Result<(SnapshotMetaRecord, AppliedStateRecord), StoreError> {
    let tmp = path.with_extension(format!("part-{}", uuid::Uuid::new_v4()));
    let out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let (mut meta, applied, out) = write_snapshot(store, out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    meta.file = file_name(path);
    meta.size = std::fs::metadata(path)?.len();
    Ok((meta, applied))
}

/// Writes `store`'s applied state as of now, in the snapshot file format, to `out`.
fn write_snapshot<W: Write>(
    store: &Store,
    out: W,
) -> Result<(SnapshotMetaRecord, AppliedStateRecord, W), StoreError> {
    write_snapshot_with(store, out, |_, _| {})
}

fn write_snapshot_with<W: Write>(
    store: &Store,
    out: W,
    covers: impl FnOnce(&SnapshotMetaRecord, &AppliedStateRecord),
) -> Result<(SnapshotMetaRecord, AppliedStateRecord, W), StoreError> {
    let view = store.db().snapshot();
    let applied = match view
        .get_cf(store.cf(CF_APPLIED), KEY_APPLIED)
        .map_err(io_err)?
    {
        Some(bytes) => store.decode_record(RecordKind::AppliedState, &bytes, "applied state")?,
        None => AppliedStateRecord::default(),
    };
    let meta = meta_of(&applied);
    covers(&meta, &applied);
    let mut w = CrcWriter {
        inner: out,
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    w.write_all(&[FILE_VERSION])?;
    w.frame(&codec::encode(RecordKind::SnapshotMeta, &meta))?;
    for (i, cf) in STATE_MACHINE_CFS.iter().enumerate() {
        let mut it = view.raw_iterator_cf(store.cf(cf));
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let mut frame = Vec::with_capacity(5 + k.len() + v.len());
            frame.push(i as u8);
            frame.extend_from_slice(&(k.len() as u32).to_le_bytes());
            frame.extend_from_slice(k);
            frame.extend_from_slice(v);
            w.frame(&frame)?;
            it.next();
        }
        it.status().map_err(io_err)?;
    }
    w.frame(&[])?;
    let crc = w.crc.clone().finalize();
    let mut out = w.inner;
    out.write_all(&crc.to_le_bytes())?;
    out.flush()?;
    Ok((meta, applied, out))
}

/// What a copy of the state machine at `applied` covers (its file not yet named).
fn meta_of(applied: &AppliedStateRecord) -> SnapshotMetaRecord {
    SnapshotMetaRecord {
        last_log_id: applied.last_applied,
        membership: applied
            .membership
            .clone()
            .unwrap_or(StoredMembershipRecord {
                log_id: None,
                membership: crate::store::records::MembershipRecord {
                    configs: vec![],
                    nodes: vec![],
                },
            }),
        file: String::new(),
        size: 0,
    }
}

/// The prefix of a checkpoint's directory name in `snapshots/`.
const CHECKPOINT_PREFIX: &str = "ckpt-";

/// Takes a checkpoint of the applied state as of now and makes it the current snapshot.
pub fn build(store: &Store) -> Result<Snapshot, StoreError> {
    let dir = store.dir().join("snapshots");
    // Named after what it covers, which is known only once taken: take, then rename.
    let staging = dir.join(format!("staging-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&staging)?;
    rocksdb::checkpoint::Checkpoint::new(store.db())
        .and_then(|c| c.create_checkpoint(staging.join("db")))
        .map_err(|source| StoreError::Rocks {
            path: staging.clone(),
            source,
        })?;
    sync_dir(&staging)?;
    let applied = Store::open_read_only(&staging)?.applied_state()?;
    let mut meta = meta_of(&applied);
    let (term, index) = meta.last_log_id.map_or((0, 0), |l| (l.term, l.index));
    let name = format!("{CHECKPOINT_PREFIX}{term:020}-{index:020}");
    let final_dir = dir.join(&name);
    if final_dir.exists() {
        // The same applied index taken again (a restart, or a reclaim, in between): the same
        // state, but the new checkpoint links the tables as they are now, where the old one
        // may hold tables a reclaim has replaced. The old one goes with `set_current`.
        let old = dir.join(format!("staging-old-{}", uuid::Uuid::new_v4()));
        std::fs::rename(&final_dir, &old)?;
    }
    std::fs::rename(&staging, &final_dir)?;
    sync_dir(&dir)?;
    meta.file = name;
    set_current(store, &meta)?;
    tracing::info!(checkpoint = %meta.file, revision = applied.revision, "snapshot built");
    Ok(Snapshot {
        meta: to_openraft_meta(&meta)?,
        snapshot: snapshot_data(&dir, &meta),
    })
}

/// The data of snapshot `meta`: a checkpoint, or a received file.
fn snapshot_data(dir: &Path, meta: &SnapshotMetaRecord) -> SnapshotFile {
    SnapshotFile {
        path: dir.join(&meta.file),
        checkpoint: meta.file.starts_with(CHECKPOINT_PREFIX),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Records `meta` as the current snapshot and removes older snapshots (files and
/// checkpoints).
fn set_current(store: &Store, meta: &SnapshotMetaRecord) -> Result<(), StoreError> {
    store.put_record_synced(CF_META, KEY_SNAPSHOT, RecordKind::SnapshotMeta, meta)?;
    let dir = store.dir().join("snapshots");
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = ["snap-", "staging-", CHECKPOINT_PREFIX]
            .iter()
            .any(|p| name.starts_with(p));
        if ours && name != meta.file {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
    Ok(())
}

pub fn current_meta(store: &Store) -> Result<Option<SnapshotMetaRecord>, StoreError> {
    store.get_record(
        CF_META,
        KEY_SNAPSHOT,
        RecordKind::SnapshotMeta,
        "current snapshot",
    )
}

pub fn current(store: &Store) -> Result<Option<Snapshot>, StoreError> {
    let Some(meta) = current_meta(store)? else {
        return Ok(None);
    };
    Ok(Some(Snapshot {
        meta: to_openraft_meta(&meta)?,
        snapshot: snapshot_data(&store.dir().join("snapshots"), &meta),
    }))
}

/// The snapshot whose install a crash interrupted, if any.
pub fn installing(store: &Store) -> Result<Option<SnapshotMetaRecord>, StoreError> {
    store.get_record(
        CF_META,
        KEY_INSTALLING,
        RecordKind::SnapshotMeta,
        "snapshot install marker",
    )
}

/// Reads a snapshot file's header and meta record.
fn read_head<R: Read>(path: &Path, r: &mut CrcReader<R>) -> io::Result<SnapshotMetaRecord> {
    let head = r
        .exact(9)
        .map_err(|e| corrupt(path, format!("no header: {e}")))?;
    if &head[..8] != MAGIC {
        return Err(corrupt(path, "not a snapshot file"));
    }
    if head[8] != FILE_VERSION {
        return Err(corrupt(
            path,
            format!("unknown snapshot version {}", head[8]),
        ));
    }
    codec::decode(
        RecordKind::SnapshotMeta,
        &r.frame().map_err(|e| corrupt(path, e))?,
    )
    .map_err(|e| corrupt(path, e))
}

/// Reads a whole snapshot file, checking its structure and checksum, calling `each` per pair.
fn read_file(
    path: &Path,
    mut each: impl FnMut(usize, &[u8], &[u8]) -> io::Result<()>,
) -> io::Result<SnapshotMetaRecord> {
    let mut r = CrcReader::open(path, 1 << 20)?;
    let meta = read_head(path, &mut r)?;
    loop {
        let frame = r
            .frame()
            .map_err(|e| corrupt(path, format!("truncated: {e}")))?;
        if frame.is_empty() {
            break;
        }
        if frame.len() < 5 {
            return Err(corrupt(path, "short frame"));
        }
        let cf = frame[0] as usize;
        if cf >= STATE_MACHINE_CFS.len() {
            return Err(corrupt(path, format!("unknown column family {cf}")));
        }
        let klen = u32::from_le_bytes(frame[1..5].try_into().expect("4 bytes")) as usize;
        if 5 + klen > frame.len() {
            return Err(corrupt(path, "key overruns its frame"));
        }
        each(cf, &frame[5..5 + klen], &frame[5 + klen..])?;
    }
    let computed = r.crc.clone().finalize();
    let mut stored = [0u8; 4];
    r.inner
        .read_exact(&mut stored)
        .map_err(|e| corrupt(path, format!("no checksum: {e}")))?;
    if u32::from_le_bytes(stored) != computed {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest)? != 0 {
        return Err(corrupt(path, "trailing bytes after checksum"));
    }
    Ok(meta)
}

/// Checks a received snapshot file end to end without loading it.
pub fn verify(path: &Path) -> io::Result<SnapshotMetaRecord> {
    read_file(path, |_, _, _| Ok(()))
}

/// Reads only what a snapshot file says it covers, checking nothing past its meta record.
pub(crate) fn read_meta(path: &Path) -> io::Result<SnapshotMetaRecord> {
    let mut r = CrcReader::open(path, 8 << 10)?;
    read_head(path, &mut r)
}

/// Replaces the state machine with a received snapshot. Crash-safe: the install is marked
/// first and redone at the next start if it did not finish.
///
/// The file was verified whole on receipt ([`verify`], before anything is cleared), so only
/// its meta record is read here; the load checks the checksum again as it reads.
pub fn install(store: &Store, meta: &SnapshotMeta, file: SnapshotFile) -> Result<(), StoreError> {
    let rec = mark_installing(store, meta, file)?;
    load_into_state_machine(store, &rec)?;
    set_current(store, &rec)?;
    Ok(())
}

/// Moves a received snapshot file to its place and records, synced, that its install began.
fn mark_installing(
    store: &Store,
    meta: &SnapshotMeta,
    file: SnapshotFile,
) -> Result<SnapshotMetaRecord, StoreError> {
    let mut rec = read_meta(&file.path)?;
    let expected = meta.last_log_id.as_ref().map(log_id_to_record);
    if rec.last_log_id != expected {
        return Err(StoreError::Io(corrupt(
            &file.path,
            format!("covers {:?}, expected {:?}", rec.last_log_id, expected),
        )));
    }
    rec.membership = stored_membership_to_record(&meta.last_membership);
    let final_path = snapshot_path(store, &rec);
    if file.path != final_path {
        std::fs::rename(&file.path, &final_path)?;
        sync_dir(final_path.parent().expect("snapshots dir"))?;
    }
    rec.file = file_name(&final_path);
    rec.size = std::fs::metadata(&final_path)?.len();
    store.put_record_synced(CF_META, KEY_INSTALLING, RecordKind::SnapshotMeta, &rec)?;
    Ok(rec)
}

/// Clears the state machine and loads the snapshot `meta` names, then clears the install mark.
pub fn load_into_state_machine(store: &Store, meta: &SnapshotMetaRecord) -> Result<(), StoreError> {
    let path = store.dir().join("snapshots").join(&meta.file);
    load_file_into_state_machine(store, &path, meta)
}

/// Like [`load_into_state_machine`], from any file (a backup being restored).
///
/// The pairs are written without the write-ahead log (which wrote every byte twice, to the
/// log and again at memtable flush: restoring a 512 MiB file took 3.0-3.5 s with it, 1.3-1.5 s
/// without), so they are durable only once their memtables are flushed to table files. Crash safety rests on the install marker (written
/// synced before this is called, see [`install`]) and on ordering: until the final write
/// below, a crash leaves the marker in place and the next start redoes the whole load from
/// the file, whatever part of the pairs had reached table files. The final write (applied
/// state, marker cleared) goes through the log, synced, and only after a waited flush of
/// every state-machine column family, so it can never be durable while the pairs are not.
pub fn load_file_into_state_machine(
    store: &Store,
    path: &Path,
    meta: &SnapshotMetaRecord,
) -> Result<(), StoreError> {
    let applied = load_pairs(store, path)?;
    flush_state_machine(store)?;
    let applied = AppliedStateRecord {
        last_applied: meta.last_log_id,
        membership: Some(meta.membership.clone()),
        ..applied
    };
    let mut wb = WriteBatch::default();
    wb.put_cf(
        store.cf(CF_APPLIED),
        KEY_APPLIED,
        codec::encode(RecordKind::AppliedState, &applied),
    );
    wb.delete_cf(store.cf(CF_META), KEY_INSTALLING);
    super::time_index::unmark(store, &mut wb);
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    store.db().write_opt(wb, &wo).map_err(io_err)?;
    tracing::info!(file = %meta.file, revision = applied.revision, "snapshot installed");
    Ok(())
}

/// Clears the state machine and writes the file's pairs into it, without the write-ahead
/// log: nothing of this is durable before [`flush_state_machine`]. Returns the file's applied
/// state, which is left out of the load (written last, so a half-loaded state never claims to
/// be applied).
fn load_pairs(store: &Store, path: &Path) -> Result<AppliedStateRecord, StoreError> {
    let db = store.db();
    let mut unlogged = WriteOptions::default();
    unlogged.disable_wal(true);
    let mut wb = WriteBatch::default();
    for cf in STATE_MACHINE_CFS {
        // Stored keys are UTF-8 or big-endian revisions: none starts with 0xFF bytes like these.
        wb.delete_range_cf(store.cf(cf), &[][..], &[0xFFu8; 16][..]);
    }
    db.write_opt(wb, &unlogged).map_err(io_err)?;
    let mut wb = WriteBatch::default();
    let mut applied_bytes: Option<Vec<u8>> = None;
    read_file(path, |cf, k, v| {
        let name = STATE_MACHINE_CFS[cf];
        if name == CF_APPLIED && k == KEY_APPLIED {
            applied_bytes = Some(v.to_vec());
            return Ok(());
        }
        wb.put_cf(store.cf(name), k, v);
        if wb.size_in_bytes() > LOAD_BATCH_BYTES {
            db.write_opt(std::mem::take(&mut wb), &unlogged)
                .map_err(io_err)?;
        }
        Ok(())
    })?;
    db.write_opt(wb, &unlogged).map_err(io_err)?;
    Ok(match applied_bytes {
        Some(b) => codec::decode::<AppliedStateRecord>(RecordKind::AppliedState, &b)
            .map_err(|e| corrupt(path, e))?,
        None => AppliedStateRecord::default(),
    })
}

/// Moves every state-machine column family's memtable into table files, waiting until they
/// are durable.
fn flush_state_machine(store: &Store) -> Result<(), StoreError> {
    let cfs: Vec<_> = STATE_MACHINE_CFS.iter().map(|cf| store.cf(cf)).collect();
    let mut fo = FlushOptions::default();
    fo.set_wait(true);
    store.db().flush_cfs_opt(&cfs, &fo).map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! A snapshot install cut short by a process kill, in a child process (this test binary run
    //! again): RocksDB keeps nothing the load wrote without its log unless it reached table
    //! files, exactly as after a real crash.

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::CF_HISTORY;
    use crate::store::CF_KV;
    use crate::store::StateMachine;
    use crate::store::records::LogIdRecord;
    use crate::store::u64_key;

    /// A file whose frames claim more bytes than it holds is refused by the length check,
    /// before a buffer of that size is made, wherever the claim is: the meta record's frame or
    /// a pair's, up to 4 GiB.
    #[test]
    fn a_frame_claiming_more_than_the_file_holds_is_refused_before_it_is_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let (_, good, _) = source(dir.path());
        let bytes = std::fs::read(&good).unwrap();
        let meta_len = u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize;
        // The meta frame's length, then the first pair's, set to claim 4 GiB - 1.
        for at in [9, 13 + meta_len] {
            let mut damaged = bytes.clone();
            damaged[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            let path = dir.path().join(format!("claims-at-{at}.snap"));
            std::fs::write(&path, &damaged).unwrap();
            let err = verify(&path).unwrap_err().to_string();
            assert!(
                err.contains("4294967295 bytes claimed, only"),
                "at {at}: {err}"
            );
        }
    }

    const CHILD_MODE: &str = "CONCORDANCE_TEST_INSTALL_CRASH";
    const CHILD_DIR: &str = "CONCORDANCE_TEST_INSTALL_DIR";
    /// Pairs of 8 KiB in each of `kv` and `history`: several load batches.
    const PAIRS: u64 = 1500;

    /// A data dir holding a state machine, and a snapshot file of it.
    fn source(dir: &Path) -> (Store, PathBuf, SnapshotMetaRecord) {
        let store = Store::open(&dir.join("source")).unwrap();
        let mut wb = WriteBatch::default();
        for i in 0..PAIRS {
            let value = vec![(i % 251) as u8; 8 << 10];
            wb.put_cf(store.cf(CF_KV), format!("k/{i:05}"), &value);
            wb.put_cf(store.cf(CF_HISTORY), u64_key(i + 1), &value);
        }
        let applied = AppliedStateRecord {
            last_applied: Some(LogIdRecord {
                term: 3,
                leader: 1,
                index: 4000,
            }),
            revision: PAIRS,
            ..AppliedStateRecord::default()
        };
        wb.put_cf(
            store.cf(CF_APPLIED),
            KEY_APPLIED,
            codec::encode(RecordKind::AppliedState, &applied),
        );
        store.db().write(wb).unwrap();
        let path = dir.join("source.snap");
        let (meta, _) = write_file(&store, &path).unwrap();
        (store, path, meta)
    }

    /// Every state-machine pair but the applied state.
    fn pairs(store: &Store) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, cf) in STATE_MACHINE_CFS.iter().enumerate() {
            for kv in store
                .db()
                .iterator_cf(store.cf(cf), rocksdb::IteratorMode::Start)
            {
                let (k, v) = kv.unwrap();
                if !(*cf == CF_APPLIED && &*k == KEY_APPLIED) {
                    out.push((i, k.to_vec(), v.to_vec()));
                }
            }
        }
        out
    }

    /// Installs the snapshot into `dir/target` in a child process killed at `mode`.
    fn install_and_kill(dir: &Path, mode: &str) {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::snapshot::tests::child", "--nocapture"])
            .env(CHILD_MODE, mode)
            .env(CHILD_DIR, dir)
            .status()
            .unwrap();
        assert!(!status.success(), "the child was not killed: {status}");
    }

    /// Runs only in the child: copies the snapshot in as received, installs it up to `mode`,
    /// then the process kills itself.
    #[test]
    fn child() {
        let (Ok(mode), Ok(dir)) = (std::env::var(CHILD_MODE), std::env::var(CHILD_DIR)) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let store = Store::open(&dir.join("target")).unwrap();
        let received = store.dir().join("snapshots").join("incoming.part");
        std::fs::copy(dir.join("source.snap"), &received).unwrap();
        let rec = verify(&received).unwrap();
        let meta = to_openraft_meta(&rec).unwrap();
        let file = SnapshotFile::received(received);
        match mode.as_str() {
            "mid-load" => {
                let rec = mark_installing(&store, &meta, file).unwrap();
                load_pairs(&store, &store.dir().join("snapshots").join(&rec.file)).unwrap();
                // As if RocksDB had flushed one memtable on its own before the crash.
                store
                    .db()
                    .flush_cf(store.cf(CF_KV))
                    .expect("flush of the live keys");
            }
            "installed" => install(&store, &meta, file).unwrap(),
            other => panic!("unknown mode {other}"),
        }
        std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
        unreachable!("still alive after SIGKILL");
    }

    fn assert_complete(target: &Store, source: &Store, meta: &SnapshotMetaRecord) {
        assert!(installing(target).unwrap().is_none(), "install marker left");
        let applied = target.applied_state().unwrap();
        assert_eq!(applied.last_applied, meta.last_log_id);
        assert_eq!(applied.revision, PAIRS);
        assert!(pairs(target) == pairs(source), "loaded pairs differ");
    }

    #[test]
    fn an_install_killed_mid_load_is_redone_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (source, _, meta) = source(dir.path());
        install_and_kill(dir.path(), "mid-load");
        {
            let target = Store::open(&dir.path().join("target")).unwrap();
            assert!(
                installing(&target).unwrap().is_some(),
                "marker written first"
            );
            let loaded = pairs(&target);
            assert!(
                loaded.len() < pairs(&source).len() && !loaded.is_empty(),
                "the kill left a partial load: {} of {} pairs",
                loaded.len(),
                pairs(&source).len()
            );
            assert!(target.applied_state().unwrap().last_applied.is_none());
        }
        let target = Store::open(&dir.path().join("target")).unwrap();
        drop(StateMachine::open(target.clone(), Metrics::new()).unwrap());
        assert_complete(&target, &source, &meta);
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_built_snapshot_is_a_checkpoint_sent_in_the_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, meta) = source(dir.path());
        let snapshots = store.dir().join("snapshots");
        let built = build(&store).unwrap();
        let name = format!("ckpt-{:020}-{:020}", 3, 4000);
        assert_eq!(
            entries(&snapshots),
            std::slice::from_ref(&name),
            "only the checkpoint"
        );
        assert!(built.snapshot.checkpoint);

        // Later writes do not reach it.
        store
            .db()
            .put_cf(store.cf(CF_KV), "k/late", b"late")
            .unwrap();
        let data = current(&store).unwrap().unwrap().snapshot;
        let mut sent = Vec::new();
        data.write_to(&mut sent).unwrap();
        let file = dir.path().join("sent.snap");
        std::fs::write(&file, &sent).unwrap();
        assert_eq!(verify(&file).unwrap().last_log_id, meta.last_log_id);
        let mut read = Vec::new();
        read_file(&file, |cf, k, v| {
            read.push((cf, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        let mut expected = pairs(&store);
        expected.retain(|(_, k, _)| k != b"k/late");
        read.retain(|(cf, k, _)| !(*cf == 4 && k == KEY_APPLIED));
        assert!(read == expected, "the stream holds the checkpoint's pairs");
        let mut resent = Vec::new();
        SnapshotFile::received(file.clone())
            .write_to(&mut resent)
            .unwrap();
        assert!(resent == sent, "a received file is sent on as it is");
        assert_eq!(entries(&snapshots), std::slice::from_ref(&name));

        // A newer snapshot replaces it.
        let applied = AppliedStateRecord {
            last_applied: Some(LogIdRecord {
                term: 3,
                leader: 1,
                index: 5000,
            }),
            revision: PAIRS,
            ..AppliedStateRecord::default()
        };
        store
            .db()
            .put_cf(
                store.cf(CF_APPLIED),
                KEY_APPLIED,
                codec::encode(RecordKind::AppliedState, &applied),
            )
            .unwrap();
        build(&store).unwrap();
        assert_eq!(
            entries(&snapshots),
            [format!("ckpt-{:020}-{:020}", 3, 5000)]
        );
    }

    #[test]
    fn a_finished_install_survives_a_kill_right_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (source, _, meta) = source(dir.path());
        install_and_kill(dir.path(), "installed");
        let target = Store::open(&dir.path().join("target")).unwrap();
        assert_complete(&target, &source, &meta);
    }
}
