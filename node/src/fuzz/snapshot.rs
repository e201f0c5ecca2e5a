//! Snapshot files, and backups (the same format): checked whole as a received snapshot and a
//! backup to restore are (`store::snapshot::verify`), and read up to their meta record as an
//! install reads them (`read_meta`), through the frame reader both share.

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
use crate::store::CF_APPLIED;
use crate::store::CF_HISTORY;
use crate::store::CF_IDEMPOTENCY;
use crate::store::CF_KV;
use crate::store::CF_LEASES;
use crate::store::KEY_APPLIED;
use crate::store::Store;
use crate::store::codec;
use crate::store::codec::RecordKind;
use crate::store::records::EventKind;
use crate::store::records::EventRecord;
use crate::store::records::IdempotencyRecord;
use crate::store::records::LeaseRecord;
use crate::store::records::Response;
use crate::store::snapshot::read_meta;
use crate::store::snapshot::verify;
use crate::store::snapshot::write_file;
use crate::store::types::stored_membership_from_record;
use crate::store::u64_key;

/// The readers' buffers, sized whatever the file: `verify`'s 1 MiB (`read_meta`'s 8 KiB is
/// made after it is freed).
const READER_BUFFER: usize = 1 << 20;

/// Where a snapshot file's length fields are: its frames' lengths (the meta record's, each
/// pair's and the closing empty one's) and each pair's key length.
fn length_fields(bytes: &[u8]) -> Vec<LengthField> {
    let le = |at| LengthField {
        at,
        big_endian: false,
    };
    let mut fields = Vec::new();
    let mut at = 9;
    let mut first = true;
    while at + 4 <= bytes.len() {
        fields.push(le(at));
        let n = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if n == 0 {
            break;
        }
        if !first && n >= 5 {
            fields.push(le(at + 5));
        }
        first = false;
        at += 4 + n;
    }
    fields
}

/// Snapshot files written by the node's own writer: of a state machine holding a record of
/// every kind, and of an empty one.
fn seeds() -> Arc<Vec<Seed>> {
    static SEEDS: OnceLock<Arc<Vec<Seed>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let full = Store::open(&dir.path().join("full")).expect("store opens");
            let put = |cf: &str, key: &[u8], value: Vec<u8>| {
                full.db()
                    .put_cf(full.cf(cf), key, value)
                    .expect("pair written")
            };
            put(
                CF_KV,
                b"a/b",
                codec::encode(RecordKind::KeyValue, &records::key_record()),
            );
            let event = EventRecord {
                revision: 9,
                key: "a/b".into(),
                kind: EventKind::Put,
                kv: Some(records::key_record()),
            };
            put(
                CF_HISTORY,
                &u64_key(9),
                codec::encode(RecordKind::Event, &event),
            );
            let lease = LeaseRecord {
                id: 77,
                ttl_ms: 5000,
                expires_at_ms: 1_700_000_005_000,
                keys: vec!["a/b".into()],
                owner: Some("agent-a17".into()),
            };
            put(
                CF_LEASES,
                &u64_key(77),
                codec::encode(RecordKind::Lease, &lease),
            );
            let answer = IdempotencyRecord {
                response: Response::Swept { removed: 2 },
                applied_at_ms: 1_700_000_000_100,
            };
            put(
                CF_IDEMPOTENCY,
                b"req-1",
                codec::encode(RecordKind::Idempotency, &answer),
            );
            put(
                CF_APPLIED,
                KEY_APPLIED,
                codec::encode(RecordKind::AppliedState, &records::applied_state()),
            );
            let empty = Store::open(&dir.path().join("empty")).expect("store opens");
            let mut seeds = Vec::new();
            for (name, store) in [
                ("of every kind of pair", &full),
                ("of an empty state", &empty),
            ] {
                let path = dir.path().join("seed.snap");
                write_file(store, &path).expect("snapshot written");
                let bytes = std::fs::read(&path).expect("snapshot read");
                seeds.push(Seed {
                    name: format!("snapshot {name}"),
                    lengths: length_fields(&bytes),
                    bytes,
                });
            }
            Arc::new(seeds)
        })
        .clone()
}

/// The meta record's checksum (when its frame is whole) and the file's, computed again over
/// the bytes as they now are; the file's is taken to be its last four bytes.
fn fix_checksums(bytes: &mut [u8]) {
    if bytes.len() >= 13 {
        let n = u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        if n >= 6 && 13 + n <= bytes.len() {
            let crc = crc32fast::hash(&bytes[19..13 + n]);
            bytes[15..19].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if bytes.len() >= 4 {
        let end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Checks the file as a received snapshot (or a backup) is checked, then reads its meta record
/// as an install does, converting what it says as the install would; whether each read it.
fn read(path: &Path) -> (bool, bool) {
    let verified = verify(path)
        .map(|meta| stored_membership_from_record(&meta.membership))
        .is_ok();
    let meta = read_meta(path)
        .map(|meta| stored_membership_from_record(&meta.membership))
        .is_ok();
    (verified, meta)
}

/// The target starts from valid files: each seed is read whole.
#[test]
fn every_seed_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.snap");
    for seed in seeds().iter() {
        std::fs::write(&path, &seed.bytes).unwrap();
        assert_eq!(read(&path), (true, true), "seed {}", seed.name);
    }
}

/// Many inputs get past the file's header and meta record, and some past its checksum.
#[test]
fn inputs_reach_past_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("received.snap");
    let read_as = |case: &super::Case| {
        std::fs::write(&path, &case.bytes).unwrap();
        read(&path)
    };
    let strategy = || inputs(seeds(), Some(fix_checksums));
    let meta = reach(strategy(), 1000, |case| read_as(case).1);
    let verified = reach(strategy(), 1000, |case| read_as(case).0);
    eprintln!("snapshot files: of 1000 inputs, {meta} had a meta record read, {verified} verified");
    assert!(
        meta >= 130 && verified >= 5,
        "{meta} read, {verified} verified"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn snapshot_files_are_read_or_refused_cleanly(case in inputs(seeds(), Some(fix_checksums))) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("received.snap");
        std::fs::write(&path, &case.bytes).unwrap();
        let (_, usage) = measure(|| read(&path));
        within(usage, case.bytes.len(), READER_BUFFER)?;
    }
}
