//! Time indexes of the idempotency answers (by the time each was given) and of the leases (by
//! deadline), so the idempotency sweep and lease expiry read only what is due, in bounded
//! batches, instead of decoding whole tables (millions of rows with a day's retention) on the
//! Raft thread or every 200 ms.
//!
//! Derived data: kept in the `meta` column family under `index/` keys (never in snapshots),
//! written in the same atomic batch as the records they index, and rebuilt from the tables when
//! they may not match them: after a snapshot install, and at open when the last batch applied
//! was not written by a binary that keeps them. `meta` is read only by point keys, so a binary
//! from before the indexes ignores them: rolling back and forward again is safe, the indexes are
//! rebuilt (a new column family would make older binaries refuse to open the database).

use rocksdb::WriteBatch;

use super::CF_IDEMPOTENCY;
use super::CF_LEASES;
use super::CF_META;
use super::Store;
use super::StoreError;
use super::codec::RecordKind;
use super::records::IdempotencyRecord;
use super::records::LeaseRecord;
use super::u64_from_key;
use super::u64_key;

const IDEMPOTENCY: &[u8] = b"index/idempotency/";
const LEASE_DEADLINES: &[u8] = b"index/lease-deadline/";
/// The last applied log index whose batch kept the indexes (big-endian u64).
const KEY_INDEXED_THROUGH: &[u8] = b"index/applied";
/// Index entries written per batch while rebuilding.
const REBUILD_BATCH: usize = 50_000;

fn entry(prefix: &[u8], at_ms: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8 + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(&u64_key(at_ms));
    k.extend_from_slice(rest);
    k
}

/// The first key after every key starting with `prefix`.
fn end_of(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

/// The index key of an idempotency answer given at `at_ms`.
pub fn idempotency_entry(at_ms: u64, key: &[u8]) -> Vec<u8> {
    entry(IDEMPOTENCY, at_ms, key)
}

/// The index key of a lease whose deadline is `at_ms`.
pub fn lease_entry(at_ms: u64, id: u64) -> Vec<u8> {
    entry(LEASE_DEADLINES, at_ms, &u64_key(id))
}

/// Index entries with a time strictly before `before_ms`, oldest first, at most `limit`, from
/// `floor` (an index key no live entry is below) or the start: each as (time, the rest of
/// the key).
fn due(
    store: &Store,
    prefix: &[u8],
    floor: Option<&[u8]>,
    before_ms: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut it = store.db().raw_iterator_cf(store.cf(CF_META));
    it.seek(floor.filter(|f| *f > prefix).unwrap_or(prefix));
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(k) = it.key()
    {
        let Some(rest) = k.strip_prefix(prefix) else {
            break;
        };
        let Some(at_ms) = u64_from_key(rest) else {
            break;
        };
        if at_ms >= before_ms {
            break;
        }
        out.push((at_ms, rest[8..].to_vec()));
        it.next();
    }
    it.status().map_err(|e| store.rocks_err(e))?;
    Ok(out)
}

/// Idempotency keys answered before `before_ms`, oldest first, at most `limit`, each with the
/// time of its answer. `floor`: an index key below which no entry is live (what sweeps forgot).
/// Seeking from it, not from the start, skips the tombstones of forgotten entries that RocksDB
/// has not compacted away yet: millions after a large sweep, which made each later sweep's
/// seek cross them all (sweeps of 1,000 answers took up to 800 ms; range tombstones instead
/// were no better).
pub fn idempotency_before(
    store: &Store,
    floor: Option<&[u8]>,
    before_ms: u64,
    limit: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    due(store, IDEMPOTENCY, floor, before_ms, limit)
}

/// The ids of the leases whose deadline is at or before `now_ms`, earliest first, at most
/// `limit`.
pub fn leases_due(store: &Store, now_ms: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
    Ok(due(
        store,
        LEASE_DEADLINES,
        None,
        now_ms.saturating_add(1),
        limit,
    )?
    .into_iter()
    .filter_map(|(_, rest)| u64_from_key(&rest))
    .collect())
}

/// Records in `wb` that the indexes are current through log index `applied_index`.
pub fn mark_indexed(store: &Store, wb: &mut WriteBatch, applied_index: u64) {
    wb.put_cf(
        store.cf(CF_META),
        KEY_INDEXED_THROUGH,
        u64_key(applied_index),
    );
}

/// Records in `wb` that the indexes no longer match the tables (a load replaced them), so
/// they are rebuilt before use.
pub fn unmark(store: &Store, wb: &mut WriteBatch) {
    wb.delete_cf(store.cf(CF_META), KEY_INDEXED_THROUGH);
}

/// Whether the indexes were kept by the batch that applied `applied_index` (`None`: nothing
/// applied yet, so the tables and the indexes are empty alike).
pub fn current(store: &Store, applied_index: Option<u64>) -> Result<bool, StoreError> {
    let Some(applied_index) = applied_index else {
        return Ok(true);
    };
    let marked = store
        .db()
        .get_cf(store.cf(CF_META), KEY_INDEXED_THROUGH)
        .map_err(|e| store.rocks_err(e))?;
    Ok(marked.as_deref().and_then(u64_from_key) == Some(applied_index))
}

/// Rebuilds both indexes from the tables and marks them current through `applied_index`.
/// Crash-safe: the mark is removed first and written last.
pub fn rebuild(store: &Store, applied_index: Option<u64>) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let db = store.db();
    let meta = store.cf(CF_META);
    let mut wb = WriteBatch::default();
    wb.delete_cf(meta, KEY_INDEXED_THROUGH);
    wb.delete_range_cf(meta, IDEMPOTENCY, &end_of(IDEMPOTENCY)[..]);
    wb.delete_range_cf(meta, LEASE_DEADLINES, &end_of(LEASE_DEADLINES)[..]);
    db.write(std::mem::take(&mut wb))
        .map_err(|e| store.rocks_err(e))?;
    let mut answers = 0u64;
    for item in store.scan::<IdempotencyRecord>(
        CF_IDEMPOTENCY,
        &[],
        RecordKind::Idempotency,
        "idempotency record",
    ) {
        let (key, rec) = item?;
        wb.put_cf(meta, idempotency_entry(rec.applied_at_ms, &key), []);
        answers += 1;
        if wb.len() >= REBUILD_BATCH {
            db.write(std::mem::take(&mut wb))
                .map_err(|e| store.rocks_err(e))?;
        }
    }
    let mut leases = 0u64;
    for item in store.scan::<LeaseRecord>(CF_LEASES, &[], RecordKind::Lease, "lease") {
        let (_, rec) = item?;
        wb.put_cf(meta, lease_entry(rec.expires_at_ms, rec.id), []);
        leases += 1;
        if wb.len() >= REBUILD_BATCH {
            db.write(std::mem::take(&mut wb))
                .map_err(|e| store.rocks_err(e))?;
        }
    }
    if let Some(index) = applied_index {
        mark_indexed(store, &mut wb, index);
    }
    db.write(wb).map_err(|e| store.rocks_err(e))?;
    tracing::info!(
        answers,
        leases,
        took_ms = started.elapsed().as_millis() as u64,
        "time indexes rebuilt"
    );
    Ok(())
}
