//! A damaged data dir (bytes flipped in RocksDB's table files or write-ahead log or in the
//! Raft log's segments, files truncated) is detected: the node refuses to start, naming the
//! problem. Should a node start on one anyway, it must answer an error for what it cannot
//! read, never a wrong value or "not found" for a written key.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use concordance_client::Consistency;
use serde_json::json;

use crate::common::NodeProc;

pub const KEYS: usize = 300;

pub fn value_of(i: usize) -> serde_json::Value {
    json!({ "key": i, "pad": "x".repeat(64) })
}

/// Files in `dir` whose names end in `ext`, largest first.
pub fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    v.sort();
    v.reverse();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Every file under `dir` with its bytes, to show a damage changed something.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

pub fn flip(file: &Path, at_fraction: f64) {
    let mut b = std::fs::read(file).unwrap();
    let at = ((b.len() as f64) * at_fraction) as usize;
    for i in at..(at + 8).min(b.len()) {
        b[i] ^= 0x5a;
    }
    std::fs::write(file, b).unwrap();
}

/// Where the logical records of a RocksDB write-ahead log start: the offset of the first
/// payload byte of each record's first fragment and the fragment's length. The format: 32 KiB
/// blocks of fragments, each a header (checksum u32, length u16, type u8; the recyclable types
/// add a u32 log number) and its payload; a block's tail shorter than a header is padding.
pub fn wal_records(file: &Path) -> Vec<(usize, usize)> {
    const BLOCK: usize = 32 * 1024;
    let b = std::fs::read(file).unwrap();
    let mut records = Vec::new();
    let mut at = 0;
    while at + 7 <= b.len() {
        let left_in_block = BLOCK - at % BLOCK;
        if left_in_block < 7 {
            at += left_in_block;
            continue;
        }
        let len = u16::from_le_bytes([b[at + 4], b[at + 5]]) as usize;
        let kind = b[at + 6];
        let header = match kind {
            1..=4 => 7,
            5..=8 => 11,
            _ => break, // zeros past the last record, or a type this parser does not know
        };
        if len == 0 && kind == 0 {
            break;
        }
        // FULL and FIRST fragments start a logical record (plain and recyclable types).
        if matches!(kind, 1 | 2 | 5 | 6) {
            records.push((at + header, len));
        }
        at += header + len;
    }
    records
}

/// Flips bytes in the middle of the second-to-last record of a write-ahead log: damage
/// RocksDB must refuse. The last record is left whole, since a damaged last record reads as
/// a write cut short by a crash, which is tolerated (and at a fixed fraction of the file the
/// flip lands in the last record whenever that record is large).
pub fn flip_wal_before_last_record(file: &Path) {
    let records = wal_records(file);
    assert!(
        records.len() >= 2,
        "{} holds {} record(s); two are needed",
        file.display(),
        records.len()
    );
    println!("write-ahead log: {} records", records.len());
    let (start, len) = records[records.len() - 2];
    let mut b = std::fs::read(file).unwrap();
    let at = start + len / 2;
    for x in &mut b[at..(at + 8).min(start + len)] {
        *x ^= 0x5a;
    }
    std::fs::write(file, b).unwrap();
}

/// Flips bytes at `at_fraction` of the written part of a file that ends in zeros (a Raft log
/// segment is allocated whole and written from its start).
pub fn flip_written(file: &Path, at_fraction: f64) {
    let mut b = std::fs::read(file).unwrap();
    let used = b.iter().rposition(|x| *x != 0).unwrap() + 1;
    let at = ((used as f64) * at_fraction) as usize;
    for x in &mut b[at..(at + 8).min(used)] {
        *x ^= 0x5a;
    }
    std::fs::write(file, b).unwrap();
}

pub fn truncate(file: &Path, to_fraction: f64) {
    let len = std::fs::metadata(file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len((len as f64 * to_fraction) as u64).unwrap();
}

/// A single node holding `KEYS` keys, stopped cleanly; with `flushed`, everything is moved
/// from the write-ahead log into table files first.
pub async fn prepared_node(dir: &Path, flushed: bool) -> NodeProc {
    let mut node = NodeProc::start("n1", dir, &["--bootstrap"]);
    node.wait_ready().await;
    let c = node.client();
    for i in 0..KEYS {
        c.put(&format!("c/{i:04}"), &value_of(i)).await.unwrap();
    }
    if flushed {
        node.stop();
        let store = concordance::store::Store::open(&node.data_dir).unwrap();
        for cf in [concordance::store::CF_KV, concordance::store::CF_LOG] {
            store.db().flush_cf(store.cf(cf)).unwrap();
        }
        store.db().flush().unwrap();
        drop(store);
        assert!(
            !files_with(&node.data_dir.join("db"), ".sst").is_empty(),
            "no table files after a flush"
        );
    } else {
        node.kill();
    }
    node
}

/// What a damaged node did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It refused to start, naming the damage.
    Refused,
    /// It started; every key answered its own value or an error (how many errors).
    ServedOrErrored { errors: usize },
}

/// Starts the damaged node and checks it either refuses with a clear message or never
/// answers a wrong value.
pub async fn start_damaged(node: &mut NodeProc) -> Outcome {
    node.restart();
    let c = node.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = node.exited() {
            assert!(!status.success(), "a damaged node exited 0");
            let log = node.log_text().to_lowercase();
            assert!(
                [
                    "corrupt",
                    "checksum",
                    "size mismatch",
                    "truncat",
                    "missing",
                    "no such file"
                ]
                .iter()
                .any(|w| log.contains(w)),
                "the refusal does not name the damage:\n{log}"
            );
            return Outcome::Refused;
        }
        if let Ok(h) = c.health().await
            && h.status == "ok"
            && c.ready().await.is_ok_and(|r| r.ready)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "damaged node neither refused nor served:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut errors = 0;
    for i in 0..KEYS {
        let key = format!("c/{i:04}");
        for consistency in [Consistency::Serializable, Consistency::Linearizable] {
            match c.get_with(&key, consistency).await {
                Ok(Some(r)) => assert_eq!(r.kv.value, value_of(i), "{key}: wrong value served"),
                Ok(None) => panic!("{key} was written and is now reported missing"),
                Err(e) => {
                    assert!(
                        e.code() == Some("storage_error") || e.code() == Some("no_quorum"),
                        "{key}: unexpected error {e}"
                    );
                    errors += 1;
                }
            }
        }
    }
    Outcome::ServedOrErrored { errors }
}
