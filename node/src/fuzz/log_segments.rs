//! Raft log segments (`store::log_file`): a log of three segments, one of them damaged, read by
//! the read-only view `inspect` takes, then opened as a node opens its log at start (its
//! recovery cuts off a torn write and refuses other damage) and read back whole.

use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;

use proptest::prelude::*;

use super::LengthField;
use super::Seed;
use super::config;
use super::inputs;
use super::measure;
use super::reach;
use super::records;
use super::within;
use crate::store::codec;
use crate::store::codec::RecordKind;
use crate::store::log_file::LogFiles;
use crate::store::log_file::last_entry_read_only;

/// Small segments, so that a few entries fill several.
const SEGMENT: u64 = 4096;
const SEGMENT_HEADER: usize = 16;
const RECORD_HEADER: usize = 16;

/// Where a segment's records' lengths are.
fn length_fields(bytes: &[u8]) -> Vec<LengthField> {
    let mut fields = Vec::new();
    let mut at = SEGMENT_HEADER;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        fields.push(LengthField {
            at,
            big_endian: false,
        });
        at += RECORD_HEADER + u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    }
    fields
}

/// The segments of a log written by the node's own writer: two full (closed) and the one
/// being written, each named as in the log's folder.
fn seeds() -> Arc<Vec<Seed>> {
    static SEEDS: OnceLock<Arc<Vec<Seed>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut log = LogFiles::open_with(dir.path(), None, SEGMENT).expect("log opens");
            let entries = records::entries();
            let mut index = 1;
            while log.segment_count() < 3 {
                let mut entry = entries[index as usize % entries.len()].clone();
                entry.log_id.index = index;
                let payload = codec::encode(RecordKind::LogEntry, &entry);
                log.append(&[(index, payload)]).expect("appended");
                index += 1;
            }
            // Some in the last segment too.
            for _ in 0..3 {
                let mut entry = entries[0].clone();
                entry.log_id.index = index;
                let payload = codec::encode(RecordKind::LogEntry, &entry);
                log.append(&[(index, payload)]).expect("appended");
                index += 1;
            }
            drop(log);
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .expect("log dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let seeds: Vec<Seed> = names
                .into_iter()
                .map(|name| {
                    let bytes = std::fs::read(dir.path().join(&name)).expect("segment read");
                    Seed {
                        lengths: length_fields(&bytes),
                        name,
                        bytes,
                    }
                })
                .collect();
            assert_eq!(seeds.len(), 3, "three segments");
            Arc::new(seeds)
        })
        .clone()
}

/// Every record's checksum computed again, in order, as far as the records are whole. A
/// record's continues from the one before it; the first's from the segment's header.
fn fix_checksums(bytes: &mut [u8]) {
    let Some(header) = bytes.get(..SEGMENT_HEADER) else {
        return;
    };
    let mut chain = crc32fast::hash(header);
    let mut at = SEGMENT_HEADER;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER) {
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let start = at + RECORD_HEADER;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        let mut h = crc32fast::Hasher::new_with_initial(chain);
        h.update(&(len as u32).to_le_bytes());
        h.update(&index.to_le_bytes());
        h.update(payload);
        chain = h.finalize();
        bytes[at + 4..at + 8].copy_from_slice(&chain.to_le_bytes());
        if len == 0 && index == u64::MAX {
            break;
        }
        at = start + len;
    }
}

/// Reads the log in `dir` as `inspect` does, then opens it and reads every entry back; the
/// number of entries open found and read returned, when it opened.
fn read(dir: &Path, purged: Option<u64>) -> Option<(u64, usize)> {
    let _ = last_entry_read_only(dir);
    let log = LogFiles::open_with(dir, purged, SEGMENT).ok()?;
    let held = match (log.first_index(), log.last_index()) {
        (Some(first), Some(last)) => last.wrapping_sub(first).wrapping_add(1),
        _ => 0,
    };
    let read = log.read(0, u64::MAX).map_or(0, |entries| entries.len());
    Some((held, read))
}

/// The target starts from a valid log: it opens whole.
#[test]
fn the_seed_log_opens_whole() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), None);
    let (held, read) = read(dir.path(), None).unwrap();
    assert!(held > 10, "{held} entries");
    assert_eq!(read as u64, held);
}

/// Many damaged logs still open (a torn end cut off, or damage past the last record), and
/// some of those hold fewer entries than the log written.
#[test]
fn inputs_reach_past_the_checks() {
    let written = {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), None);
        read(dir.path(), None).unwrap().0
    };
    let strategy = || inputs(seeds(), Some(fix_checksums));
    let held = |case: &super::Case| {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), Some(case));
        read(dir.path(), None).map(|(held, _)| held)
    };
    let opened = reach(strategy(), 1000, |case| held(case).is_some());
    let shorter = reach(strategy(), 1000, |case| {
        held(case).is_some_and(|h| h < written)
    });
    eprintln!("log segments: of 1000 inputs, {opened} opened, {shorter} of them shorter");
    assert!(
        opened >= 70 && shorter >= 5,
        "{opened} opened, {shorter} shorter"
    );
}

/// Writes the seed log into `dir`, with `case` in place of the segment it came from; the bytes
/// written.
fn write_log(dir: &Path, case: Option<&super::Case>) -> usize {
    let mut written = 0;
    for (i, seed) in seeds().iter().enumerate() {
        let bytes = match case {
            Some(case) if case.seed == i => &case.bytes,
            _ => &seed.bytes,
        };
        std::fs::write(dir.join(&seed.name), bytes).unwrap();
        written += bytes.len();
    }
    written
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn log_segments_open_or_are_refused_cleanly(
        case in inputs(seeds(), Some(fix_checksums)),
        purged in prop_oneof![Just(None), (0u64..64).prop_map(Some), any::<u64>().prop_map(Some)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let input = write_log(dir.path(), Some(&case));
        let (opened, usage) = measure(|| read(dir.path(), purged));
        within(usage, input, 0)?;
        // What the open accepted reads back whole.
        if let Some((held, read)) = opened {
            prop_assert_eq!(read as u64, held, "entries read back of those the log holds");
        }
    }
}
