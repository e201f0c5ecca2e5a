//! The Raft log's entries in segment files of our own, beside the database.
//!
//! Why not RocksDB: its write-ahead log grows with every append (it preallocates with
//! `FALLOC_FL_KEEP_SIZE`), so each fsync also commits a new file size to ext4's journal, a
//! third sleep per fsync where an overwrite of allocated space takes two (docs/journal/benchmarks.md).
//! A segment here is allocated to its full size when made and then written in place.
//!
//! Format. `<seq>.seg` (seq: 20 decimal digits, only ever growing) is `segment_bytes` long: a
//! 16-byte header (`MAGIC`, then seq as u64 LE), records, then zeros (allocated, unwritten).
//! A record is a 16-byte header, `len: u32, crc: u32, index: u64` (LE), then `len` bytes of
//! payload (one encoded entry). `crc` is a CRC-32 over len, index and payload that continues
//! from the previous record's (the first record's from a seed made of the segment's seq), so
//! a record left behind by a truncation never checks after the records written over it. A
//! record of length 0 at index `u64::MAX` closes a segment; a zero header ends the written
//! part.
//!
//! Recovery (`open`): every segment but the last must end with the closing record; the last
//! may end in a torn write, which is cut off. Damage anywhere else stops the open with an
//! error that names the file and offset: acknowledged entries are never dropped silently.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"CNCDLOG1";
const SEGMENT_HEADER: u64 = 16;
const RECORD_HEADER: u64 = 16;
const CLOSE_INDEX: u64 = u64::MAX;
/// 64 MiB: about 190000 puts of 256-byte values; a snapshot (every 100000 entries by default)
/// lets the older segments go.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// The smallest segment: room for the largest entry a request can make (2 MiB bodies).
pub const MIN_SEGMENT_BYTES: u64 = 8 << 20;

/// The size of a new log's segments on a volume with `free` bytes: [`SEGMENT_BYTES`], or a
/// sixteenth of the volume's free space where that is smaller (a 128 MiB volume gets 8 MiB
/// segments), never under [`MIN_SEGMENT_BYTES`]; whole MiB.
pub fn segment_bytes_for(free: u64) -> u64 {
    (free / 16).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES) >> 20 << 20
}
/// The sector size torn writes are detected at.
const SECTOR: usize = 512;

/// Where one entry's record is.
#[derive(Debug, Clone, Copy)]
struct Position {
    seq: u64,
    offset: u64,
    len: u32,
    /// The record's CRC: the seed of the next record in the same segment.
    crc: u32,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes in use: header and records (the closing one included).
    end: u64,
}

/// The open log: its segments and where each entry is.
pub struct LogFiles {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// The segment written to; `None` until the first append when the last one is closed.
    active: Option<u64>,
    /// The CRC the next record in the active segment continues from.
    chain: u32,
    /// `positions[i]` is entry `first_index + i`.
    positions: VecDeque<Position>,
    first_index: u64,
    /// Entries up to this index were purged (they may still be in a segment's first part).
    purged: Option<u64>,
    next_seq: u64,
}

/// What one segment holds, as read.
struct SegmentScan {
    records: Vec<(u64, Position)>,
    end: u64,
    closed: bool,
    /// A record that did not check: its offset and why.
    bad: Option<(u64, String)>,
    /// One past the last non-zero byte of the file.
    used: u64,
}

fn seed(seq: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(MAGIC);
    h.update(&seq.to_le_bytes());
    h.finalize()
}

fn record_crc(prev: u32, len: u32, index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_record(out: &mut Vec<u8>, prev: u32, index: u64, payload: &[u8]) -> u32 {
    let len = payload.len() as u32;
    let crc = record_crc(prev, len, index, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    crc
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn damaged(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("Raft log file {} is corrupt: {what}", path.display()),
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segments in `dir`, by seq.
fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "seg")
            && let Some(seq) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

fn scan_segment(path: &Path, seq: u64, bytes: &[u8]) -> io::Result<SegmentScan> {
    if bytes.len() < SEGMENT_HEADER as usize
        || &bytes[..8] != MAGIC
        || bytes[8..16] != seq.to_le_bytes()
    {
        return Err(damaged(
            path,
            "its header is not a Concordance log segment's",
        ));
    }
    let used = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |p| p as u64 + 1);
    let mut scan = SegmentScan {
        records: Vec::new(),
        end: SEGMENT_HEADER,
        closed: false,
        bad: None,
        used,
    };
    let mut chain = seed(seq);
    let mut at = SEGMENT_HEADER as usize;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER as usize) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let start = at + RECORD_HEADER as usize;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            scan.bad = Some((
                at as u64,
                format!("a record of {len} bytes runs past the end"),
            ));
            break;
        };
        if record_crc(chain, len, index, payload) != crc {
            scan.bad = Some((at as u64, "a record's checksum does not match".into()));
            break;
        }
        chain = crc;
        at = start + len as usize;
        scan.end = at as u64;
        if len == 0 && index == CLOSE_INDEX {
            scan.closed = true;
            break;
        }
        let pos = Position {
            seq,
            offset: (start - RECORD_HEADER as usize) as u64,
            len,
            crc,
        };
        scan.records.push((index, pos));
    }
    Ok(scan)
}

/// Whether a record that did not check at `offset` is a write cut short: a sector of it is
/// still zeros (never written), or nothing was written after it.
fn is_torn(bytes: &[u8], offset: u64) -> bool {
    let at = offset as usize;
    let len = bytes.get(at..at + 4).map_or(0, |b| {
        u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
    });
    let extent_end = (at + RECORD_HEADER as usize).saturating_add(len);
    if extent_end > bytes.len() {
        // A length past the file's end is damage, not a torn write (a header is written in
        // one sector), unless nothing at all follows the header.
        return bytes[(at + RECORD_HEADER as usize).min(bytes.len())..]
            .iter()
            .all(|b| *b == 0);
    }
    let first_sector = at.div_ceil(SECTOR) * SECTOR;
    let zero_sector = (first_sector..extent_end)
        .step_by(SECTOR)
        .any(|s| s + SECTOR <= extent_end && bytes[s..s + SECTOR].iter().all(|b| *b == 0));
    zero_sector || bytes[extent_end..].iter().all(|b| *b == 0)
}

/// Allocates a new segment's full size (falling back to writing zeros where the file system
/// cannot allocate) and writes its header.
fn create_segment(dir: &Path, seq: u64, segment_bytes: u64) -> io::Result<File> {
    let tmp = dir.join(format!("{seq:020}.tmp"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    allocate(&file, segment_bytes)?;
    let mut header = Vec::with_capacity(SEGMENT_HEADER as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&seq.to_le_bytes());
    file.write_all_at(&header, 0)?;
    file.sync_all()?;
    drop(file);
    let path = segment_path(dir, seq);
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    // Opened again by its final name, which is what tools that look at open files see.
    OpenOptions::new().read(true).write(true).open(&path)
}

fn allocate(file: &File, bytes: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor of ours; mode 0 allocates and extends the size.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    write_zeros(file, 0, bytes)
}

fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// The last entry's index and payload, read without changing anything (for `inspect`, safe
/// beside a running node: a record being written is read as the end).
pub fn last_entry_read_only(dir: &Path) -> io::Result<Option<(u64, Vec<u8>)>> {
    if !dir.exists() {
        return Ok(None);
    }
    for (seq, path) in list_segments(dir)?.into_iter().rev() {
        let bytes = std::fs::read(&path)?;
        let scan = scan_segment(&path, seq, &bytes)?;
        if let Some((index, pos)) = scan.records.last() {
            let start = (pos.offset + RECORD_HEADER) as usize;
            return Ok(Some((
                *index,
                bytes[start..start + pos.len as usize].to_vec(),
            )));
        }
    }
    Ok(None)
}

/// Removes every segment (the log's entries were all applied and are purged).
pub fn remove_all(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        for (_, path) in list_segments(dir)? {
            std::fs::remove_file(path)?;
        }
        sync_dir(dir)?;
    }
    Ok(())
}

impl LogFiles {
    /// Opens (creating if needed) the log in `dir`; `purged` is the last purged index.
    /// Segments keep the size the log's first one was given ([`segment_bytes_for`]).
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let existing = match list_segments(dir)?.last() {
            Some((_, path)) => Some(std::fs::metadata(path)?.len()),
            None => None,
        };
        let segment_bytes = match existing.filter(|&len| len >= MIN_SEGMENT_BYTES) {
            Some(len) => len,
            None => {
                let bytes = segment_bytes_for(crate::space::free_bytes(dir)?);
                if bytes < SEGMENT_BYTES {
                    tracing::info!(
                        segment_bytes = bytes,
                        "a small volume: the Raft log's segments are made smaller to fit it"
                    );
                }
                bytes
            }
        };
        Self::open_with(dir, purged, segment_bytes)
    }

    pub fn open_with(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // A segment still being made when the process stopped.
        for e in std::fs::read_dir(dir)? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        let mut log = LogFiles {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            active: None,
            chain: 0,
            positions: VecDeque::new(),
            first_index: 0,
            purged,
            next_seq: 1,
        };
        let listed = list_segments(dir)?;
        let count = listed.len();
        for (i, (seq, path)) in listed.into_iter().enumerate() {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let bytes = std::fs::read(&path)?;
            let scan = scan_segment(&path, seq, &bytes)?;
            let last = i + 1 == count;
            if !last && !scan.closed {
                let why = scan.bad.map_or(
                    "it ends without its closing record".to_string(),
                    |(at, why)| format!("at offset {at}, {why}"),
                );
                return Err(damaged(&path, format!("{why}, and later segments follow")));
            }
            if let Some((at, why)) = &scan.bad
                && !is_torn(&bytes, *at)
            {
                return Err(damaged(&path, format!("at offset {at}, {why}")));
            }
            for (index, pos) in scan.records {
                log.push_recovered(&path, index, pos)?;
            }
            if last && !scan.closed {
                if scan.used > scan.end {
                    // A torn write, or records a truncation left: zeros, so that what is
                    // written next is not followed by them.
                    write_zeros(&file, scan.end, scan.used)?;
                    file.sync_data()?;
                }
                log.active = Some(seq);
                log.chain = log
                    .positions
                    .back()
                    .filter(|p| p.seq == seq)
                    .map_or(seed(seq), |p| p.crc);
            }
            log.segments.insert(
                seq,
                Segment {
                    file: Arc::new(file),
                    end: scan.end,
                },
            );
            log.next_seq = seq + 1;
        }
        if let Some(p) = purged {
            log.drop_purged(p);
        }
        Ok(log)
    }

    /// Whether entry `index` may follow entry `last` other than at `last + 1`: only across a
    /// purge past the log's end (a snapshot installed beyond it), to the entry after the purge.
    fn may_jump(&self, last: u64, index: u64) -> bool {
        let purged = self.purged.unwrap_or(0);
        index > last && last <= purged && index <= purged + 1
    }

    fn push_recovered(&mut self, path: &Path, index: u64, pos: Position) -> io::Result<()> {
        if let Some(last) = self.last_index()
            && index != last + 1
        {
            if !self.may_jump(last, index) {
                let purged = self.purged.unwrap_or(0);
                return Err(damaged(
                    path,
                    format!("entry {index} follows entry {last} (purged up to {purged})"),
                ));
            }
            self.positions.clear();
        }
        if self.positions.is_empty() {
            self.first_index = index;
        }
        self.positions.push_back(pos);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn first_index(&self) -> Option<u64> {
        (!self.positions.is_empty()).then_some(self.first_index)
    }

    pub fn last_index(&self) -> Option<u64> {
        (!self.positions.is_empty()).then(|| self.first_index + self.positions.len() as u64 - 1)
    }

    /// Writes entries (index, payload) after the last; returns the file to sync for them.
    /// Nothing to sync (`None`) when `entries` is empty.
    pub fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> io::Result<Option<Arc<File>>> {
        if entries.is_empty() {
            return Ok(None);
        }
        let mut buf = Vec::new();
        let mut buf_positions = Vec::new();
        for (index, payload) in entries {
            if let Some(last) = self.last_index_with(&buf_positions)
                && *index != last + 1
            {
                if !self.may_jump(last, *index) {
                    return Err(io::Error::other(format!(
                        "Raft log: entry {index} appended after entry {last}"
                    )));
                }
                self.flush_buffer(&mut buf, &mut buf_positions)?;
                self.positions.clear();
            }
            let record = RECORD_HEADER + payload.len() as u64;
            if SEGMENT_HEADER + record + RECORD_HEADER > self.segment_bytes {
                return Err(io::Error::other(format!(
                    "Raft log: entry {index} of {} bytes does not fit a segment",
                    payload.len()
                )));
            }
            let fits = self.active.is_some_and(|seq| {
                self.segments[&seq].end + buf.len() as u64 + record + RECORD_HEADER
                    <= self.segment_bytes
            });
            if !fits {
                self.flush_buffer(&mut buf, &mut buf_positions)?;
                self.roll_over()?;
            }
            let seq = self.active.expect("a segment is active");
            let offset = self.segments[&seq].end + buf.len() as u64;
            self.chain = encode_record(&mut buf, self.chain, *index, payload);
            buf_positions.push((
                *index,
                Position {
                    seq,
                    offset,
                    len: payload.len() as u32,
                    crc: self.chain,
                },
            ));
        }
        self.flush_buffer(&mut buf, &mut buf_positions)?;
        Ok(Some(self.active_file()))
    }

    fn last_index_with(&self, pending: &[(u64, Position)]) -> Option<u64> {
        pending.last().map(|(i, _)| *i).or(self.last_index())
    }

    fn active_file(&self) -> Arc<File> {
        let seq = self.active.expect("a segment is active");
        self.segments[&seq].file.clone()
    }

    fn flush_buffer(
        &mut self,
        buf: &mut Vec<u8>,
        pending: &mut Vec<(u64, Position)>,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let seq = self.active.expect("a segment is active");
        let seg = self.segments.get_mut(&seq).expect("active segment");
        seg.file.write_all_at(buf, seg.end)?;
        seg.end += buf.len() as u64;
        buf.clear();
        for (index, pos) in pending.drain(..) {
            if self.positions.is_empty() {
                self.first_index = index;
            }
            self.positions.push_back(pos);
        }
        Ok(())
    }

    /// Closes the active segment (synced: its entries need no later sync) and starts a new one.
    fn roll_over(&mut self) -> io::Result<()> {
        if let Some(seq) = self.active {
            let seg = self.segments.get_mut(&seq).expect("active segment");
            let mut close = Vec::with_capacity(RECORD_HEADER as usize);
            encode_record(&mut close, self.chain, CLOSE_INDEX, &[]);
            seg.file.write_all_at(&close, seg.end)?;
            seg.end += close.len() as u64;
            seg.file.sync_data()?;
        }
        let seq = self.next_seq;
        let file = create_segment(&self.dir, seq, self.segment_bytes)?;
        self.segments.insert(
            seq,
            Segment {
                file: Arc::new(file),
                end: SEGMENT_HEADER,
            },
        );
        self.next_seq = seq + 1;
        self.active = Some(seq);
        self.chain = seed(seq);
        Ok(())
    }

    /// Reads the entries in `start..end` that the log holds, in order.
    pub fn read(&self, start: u64, end: u64) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let Some(last) = self.last_index() else {
            return Ok(Vec::new());
        };
        let from = start.max(self.first_index);
        let to = end.min(last + 1);
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        for index in from..to {
            let pos = self.positions[(index - self.first_index) as usize];
            let seg = &self.segments[&pos.seq];
            let mut record = vec![0u8; (RECORD_HEADER + pos.len as u64) as usize];
            seg.file.read_exact_at(&mut record, pos.offset)?;
            let stored_index = u64::from_le_bytes(record[8..16].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
            if stored_index != index || crc != pos.crc {
                return Err(damaged(
                    &segment_path(&self.dir, pos.seq),
                    format!(
                        "entry {index} at offset {} reads back as entry {stored_index}",
                        pos.offset
                    ),
                ));
            }
            record.drain(..RECORD_HEADER as usize);
            out.push((index, record));
        }
        Ok(out)
    }

    /// Removes the entries from `index` on, durably.
    pub fn truncate_from(&mut self, index: u64) -> io::Result<()> {
        let Some(last) = self.last_index() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        let keep = index.saturating_sub(self.first_index) as usize;
        let pos = self.positions[keep];
        // Later segments first: should the process stop in between, the log is a longer
        // prefix of the old one, which is as valid (every entry past `index` is one the
        // leader is replacing).
        let later: Vec<u64> = self
            .segments
            .range(pos.seq + 1..)
            .map(|(s, _)| *s)
            .collect();
        for seq in &later {
            self.segments.remove(seq);
            std::fs::remove_file(segment_path(&self.dir, *seq))?;
        }
        if !later.is_empty() {
            sync_dir(&self.dir)?;
        }
        let seg = self
            .segments
            .get_mut(&pos.seq)
            .expect("segment of a position");
        write_zeros(&seg.file, pos.offset, seg.end)?;
        seg.file.sync_data()?;
        seg.end = pos.offset;
        self.positions.truncate(keep);
        self.active = Some(pos.seq);
        self.chain = self
            .positions
            .back()
            .filter(|p| p.seq == pos.seq)
            .map_or(seed(pos.seq), |p| p.crc);
        Ok(())
    }

    /// Forgets the entries up to `index` and deletes the segments that hold only such
    /// entries. The caller has made the state they led to durable first.
    pub fn purge_upto(&mut self, index: u64) -> io::Result<()> {
        self.purged = Some(self.purged.map_or(index, |p| p.max(index)));
        self.drop_purged(index);
        let keep_from = self
            .positions
            .front()
            .map(|p| p.seq)
            .or(self.active)
            .unwrap_or(u64::MAX);
        let old: Vec<u64> = self.segments.range(..keep_from).map(|(s, _)| *s).collect();
        for seq in old {
            self.segments.remove(&seq);
            std::fs::remove_file(segment_path(&self.dir, seq))?;
        }
        Ok(())
    }

    fn drop_purged(&mut self, index: u64) {
        while !self.positions.is_empty() && self.first_index <= index {
            self.positions.pop_front();
            self.first_index += 1;
        }
    }

    /// Segment files on disk (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: u64 = 4096;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i} {}", "x".repeat((i % 7) as usize * 30)).into_bytes()
    }

    fn append_range(log: &mut LogFiles, from: u64, to: u64) {
        let entries: Vec<_> = (from..to).map(|i| (i, payload(i))).collect();
        log.append(&entries).unwrap().unwrap().sync_data().unwrap();
    }

    fn all(log: &LogFiles) -> Vec<(u64, Vec<u8>)> {
        log.read(0, u64::MAX).unwrap()
    }

    fn open_error(dir: &Path, segment_bytes: u64) -> String {
        match LogFiles::open_with(dir, None, segment_bytes) {
            Ok(_) => panic!("a damaged log opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn segments_are_sized_to_the_volume() {
        assert_eq!(segment_bytes_for(100 << 30), SEGMENT_BYTES);
        assert_eq!(segment_bytes_for(1 << 30), SEGMENT_BYTES);
        assert_eq!(segment_bytes_for(512 << 20), 32 << 20);
        assert_eq!(segment_bytes_for(128 << 20), MIN_SEGMENT_BYTES);
        assert_eq!(segment_bytes_for(10 << 20), MIN_SEGMENT_BYTES);
        assert_eq!(segment_bytes_for((300 << 20) + 12345), 18 << 20);
    }

    #[test]
    fn a_reopened_log_keeps_its_segment_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, MIN_SEGMENT_BYTES + (1 << 20)).unwrap();
        append_range(&mut log, 0, 10);
        drop(log);
        let log = LogFiles::open(dir.path(), None).unwrap();
        assert_eq!(log.segment_bytes, MIN_SEGMENT_BYTES + (1 << 20));
        assert_eq!(all(&log).len(), 10);
    }

    #[test]
    fn entries_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        append_range(&mut log, 0, 100);
        assert!(log.segment_count() >= 3, "small segments roll over");
        let before = all(&log);
        drop(log);
        let log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        assert_eq!(all(&log), before);
        assert_eq!(log.first_index(), Some(0));
        assert_eq!(log.last_index(), Some(99));
        assert_eq!(
            log.read(10, 12).unwrap(),
            vec![(10, payload(10)), (11, payload(11))]
        );
    }

    #[test]
    fn truncation_is_durable_and_later_appends_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        append_range(&mut log, 0, 60);
        log.truncate_from(20).unwrap();
        drop(log);
        let mut log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        assert_eq!(log.last_index(), Some(19));
        // New entries with other payloads over the old ones' place.
        let replacement: Vec<_> = (20..25).map(|i| (i, b"new".to_vec())).collect();
        log.append(&replacement)
            .unwrap()
            .unwrap()
            .sync_data()
            .unwrap();
        drop(log);
        let log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        let read = all(&log);
        assert_eq!(read.len(), 25);
        assert_eq!(read[24], (24, b"new".to_vec()));
        assert_eq!(read[19], (19, payload(19)));
    }

    #[test]
    fn purge_deletes_whole_segments_and_reopen_skips_purged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        append_range(&mut log, 0, 100);
        let before = log.segment_count();
        log.purge_upto(70).unwrap();
        assert!(log.segment_count() < before);
        assert_eq!(log.first_index(), Some(71));
        drop(log);
        let log = LogFiles::open_with(dir.path(), Some(70), SMALL).unwrap();
        assert_eq!(log.first_index(), Some(71));
        assert_eq!(log.read(0, 72).unwrap(), vec![(71, payload(71))]);
    }

    #[test]
    fn a_purge_past_the_end_lets_the_log_jump() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        append_range(&mut log, 0, 10);
        log.purge_upto(50).unwrap();
        assert_eq!(log.last_index(), None);
        append_range(&mut log, 51, 53);
        assert!(log.append(&[(60, b"gap".to_vec())]).is_err());
        drop(log);
        let log = LogFiles::open_with(dir.path(), Some(50), SMALL).unwrap();
        assert_eq!(log.first_index(), Some(51));
        assert_eq!(log.last_index(), Some(52));
    }

    #[test]
    fn a_torn_last_write_is_cut_off_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, 1 << 20).unwrap();
        append_range(&mut log, 0, 10);
        let seg = log.segments.values().next().unwrap();
        let end = seg.end;
        // A record cut short: a header and part of its payload, the rest never written.
        let mut rec = Vec::new();
        encode_record(&mut rec, log.chain, 10, &[7u8; 2000]);
        seg.file.write_all_at(&rec[..900], end).unwrap();
        drop(log);
        let mut log = LogFiles::open_with(dir.path(), None, 1 << 20).unwrap();
        assert_eq!(log.last_index(), Some(9));
        append_range(&mut log, 10, 12);
        drop(log);
        let log = LogFiles::open_with(dir.path(), None, 1 << 20).unwrap();
        assert_eq!(log.last_index(), Some(11));
        assert_eq!(all(&log)[11], (11, payload(11)));
    }

    #[test]
    fn damage_before_the_end_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, 1 << 20).unwrap();
        append_range(&mut log, 0, 10);
        let path = segment_path(dir.path(), 1);
        drop(log);
        // Flip a byte in the third record's payload: entries after it were acknowledged.
        let mut bytes = std::fs::read(&path).unwrap();
        let scan = scan_segment(&path, 1, &bytes).unwrap();
        let third = scan.records[2].1;
        bytes[(third.offset + RECORD_HEADER + 2) as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = open_error(dir.path(), 1 << 20);
        assert!(err.contains("corrupt"), "{err}");
    }

    #[test]
    fn a_damaged_middle_segment_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        append_range(&mut log, 0, 100);
        drop(log);
        let path = segment_path(dir.path(), 2);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SEGMENT_HEADER as usize + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = open_error(dir.path(), SMALL);
        assert!(err.contains("later segments follow"), "{err}");
    }

    #[test]
    fn read_only_view_sees_the_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        assert!(last_entry_read_only(dir.path()).unwrap().is_none());
        let mut log = LogFiles::open_with(dir.path(), None, SMALL).unwrap();
        append_range(&mut log, 0, 30);
        assert_eq!(
            last_entry_read_only(dir.path()).unwrap(),
            Some((29, payload(29)))
        );
        remove_all(dir.path()).unwrap();
        assert!(last_entry_read_only(dir.path()).unwrap().is_none());
    }
}
