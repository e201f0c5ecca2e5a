//! Disk space: the quota and the free-space reserve, and the `no_space` alarm they raise.
//!
//! Every member measures, every 250 ms, the bytes its data dir takes on disk (the database,
//! the Raft log's segments, snapshots) and the space left on its volume.
//! Over `--quota-bytes`, or under `--reserve-bytes` free, it asks the leader to raise the
//! replicated `no_space` alarm on itself (command set 6). While any member's alarm is raised,
//! the leader refuses every write that grows the state (puts, transactions that put, lease
//! grants) with `no_space`; reads, deletes, revokes, compaction and membership changes go on,
//! so an admin can make room, then disarm the alarm (`POST /api/v1/cluster/alarms/disarm`),
//! which is refused until the member is clear of its bounds ([`not_clear`]).
//!
//! Replicas hold the same state and fill together: refusing growth before the volume is full
//! keeps every member's Raft running, where an ENOSPC inside an apply would stop it.
//!
//! The Raft log is bounded by bytes as well as by entries: past an eighth of the room the
//! data dir has (its quota, or its volume if smaller), and whenever the member is over its
//! bounds, it takes a snapshot and purges its log up to it. A snapshot also replaces the
//! previous one, so after deletes and a compaction it gives their space back. A snapshot is
//! asked for only when the volume has room for its flush, as a failed snapshot write stops
//! Raft.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use concordance_client::StorageUse;

use crate::service::SharedNode;
use crate::store::records::AlarmKind;
use crate::store::records::Operation;

/// Often enough that a writer at full speed adds only megabytes between two measures.
const MEASURE_EVERY: Duration = Duration::from_millis(250);
/// A snapshot asked for by space pressure is waited for this long at most before another is
/// asked for: one at a time, as each rewrites the state.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// The default quota: as etcd's, the size past which a coordination store is misused.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// The default free-space reserve: room for RocksDB to finish a flush and a compaction, and
/// for the log to open its next segment, after the alarm stops growth.
pub const DEFAULT_RESERVE_BYTES: u64 = 32 << 20;

/// The bounds one member keeps its data dir within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceLimits {
    /// Bytes the data dir may take on disk.
    pub quota_bytes: u64,
    /// Bytes the volume must keep free.
    pub reserve_bytes: u64,
}

/// What a measure found, and why it is over its bounds (if it is).
pub fn over(usage: &StorageUse) -> Option<String> {
    if usage.used_bytes > usage.quota_bytes {
        Some(format!(
            "the data dir takes {} bytes, over its quota of {} (--quota-bytes)",
            usage.used_bytes, usage.quota_bytes
        ))
    } else if usage.free_bytes < usage.reserve_bytes {
        Some(format!(
            "the volume has {} bytes free, under its reserve of {} (--reserve-bytes)",
            usage.free_bytes, usage.reserve_bytes
        ))
    } else {
        None
    }
}

/// Why a member is not yet far enough under its bounds for its alarm to end (`None`: it is):
/// its data dir must be a tenth of its quota under it and its volume half its reserve over
/// it, so that the disarm is not followed at once by the same alarm (a flush, a new log
/// segment).
pub fn not_clear(usage: &StorageUse) -> Option<String> {
    let used_at_most = usage.quota_bytes - usage.quota_bytes / 10;
    let free_at_least = usage.reserve_bytes.saturating_add(usage.reserve_bytes / 2);
    if usage.used_bytes > used_at_most {
        Some(format!(
            "the data dir takes {} bytes, over {used_at_most} (a tenth under --quota-bytes)",
            usage.used_bytes
        ))
    } else if usage.free_bytes < free_at_least {
        Some(format!(
            "the volume has {} bytes free, under {free_at_least} (half over --reserve-bytes)",
            usage.free_bytes
        ))
    } else {
        None
    }
}

/// Measures `dir` against `limits`: what the member reports, and the parts of it the
/// relief of space pressure looks at.
pub fn measure(dir: &Path, limits: SpaceLimits) -> std::io::Result<(StorageUse, DirBytes)> {
    let free_bytes = free_bytes(dir)?;
    let parts = DirBytes::of(dir);
    let usage = StorageUse {
        used_bytes: parts.total,
        free_bytes,
        quota_bytes: limits.quota_bytes,
        reserve_bytes: limits.reserve_bytes,
        over: false,
    };
    let usage = StorageUse {
        over: over(&usage).is_some(),
        ..usage
    };
    Ok((usage, parts))
}

/// What one walk of a data dir found, in bytes on disk (allocated blocks, so the log's
/// preallocated segments count whole and sparse files by what they hold). Files that vanish
/// while it walks (RocksDB compacting) are skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirBytes {
    /// Every file, one linked twice (as a snapshot's checkpoint links the database's tables)
    /// counted once.
    pub total: u64,
    /// The Raft log's segments.
    pub log: u64,
    /// Files under `snapshots/` linked nowhere else: a checkpoint's tables that the database
    /// no longer has, a received snapshot file.
    pub only_in_snapshots: u64,
}

impl DirBytes {
    pub fn of(dir: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let log_dir = dir.join(crate::store::LOG_DIR);
        let snapshots = dir.join("snapshots");
        let mut linked = std::collections::HashSet::new();
        let mut bytes = DirBytes::default();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    pending.push(entry.path());
                    continue;
                }
                let size = meta.blocks() * 512;
                if meta.nlink() < 2 || linked.insert((meta.dev(), meta.ino())) {
                    bytes.total += size;
                }
                if d.starts_with(&log_dir) {
                    bytes.log += size;
                } else if d.starts_with(&snapshots) && meta.nlink() == 1 {
                    bytes.only_in_snapshots += size;
                }
            }
        }
        bytes
    }
}

/// The bytes the files under `dir` take on disk ([`DirBytes::total`]).
pub fn bytes_on_disk(dir: &Path) -> u64 {
    DirBytes::of(dir).total
}

/// The bytes an unprivileged process may still write on the volume holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct of the size statvfs writes.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// What one byte of a command costs on disk until it is compacted: the Raft log's copy, the
/// write-ahead log's copies of the key and of its history event, and their tables.
const WRITE_AMPLIFICATION: u64 = 5;

/// The latest measure of this member's space, shared with status and metrics, and the bytes
/// of growing commands this member proposed since (as leader).
#[derive(Debug, Default)]
pub struct SpaceWatch {
    latest: std::sync::RwLock<Option<StorageUse>>,
    proposed_since: std::sync::atomic::AtomicU64,
    /// Why a write was refused for the writes in flight, since the last measure: the alarm
    /// is raised for it too.
    shortfall: std::sync::Mutex<Option<String>>,
}

impl SpaceWatch {
    pub fn latest(&self) -> Option<StorageUse> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, usage: StorageUse) {
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(usage);
        self.proposed_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a growing command of `bytes` proposed now.
    pub fn proposed(&self, bytes: u64) {
        self.proposed_since
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why this member is out of space, counting what was proposed since the last measure
    /// (a writer at full speed can fill a volume's reserve between two measures).
    pub fn short(&self) -> Option<String> {
        let usage = self.latest()?;
        if let Some(reason) = over(&usage) {
            return Some(reason);
        }
        let coming = self
            .proposed_since
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_mul(WRITE_AMPLIFICATION);
        let expected = StorageUse {
            used_bytes: usage.used_bytes.saturating_add(coming),
            free_bytes: usage.free_bytes.saturating_sub(coming),
            ..usage
        };
        let reason =
            over(&expected).map(|reason| format!("{reason}, counting the writes in flight"));
        if let Some(r) = &reason {
            *self.shortfall.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
        }
        reason
    }

    fn take_shortfall(&self) -> Option<String> {
        self.shortfall
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Measures this member's space every second, and asks for the `no_space` alarm on it when
/// it is over its bounds and the alarm is not raised yet.
pub fn spawn(node: SharedNode, limits: SpaceLimits, watch: Arc<SpaceWatch>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MEASURE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked: Option<SnapshotAsked> = None;
        loop {
            tick.tick().await;
            let dir = node.store.dir().to_path_buf();
            let (usage, parts) =
                match tokio::task::spawn_blocking(move || measure(&dir, limits)).await {
                    Ok(Ok(measured)) => measured,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot measure the data dir's volume");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "measuring the data dir's space failed");
                        continue;
                    }
                };
            watch.set(usage.clone());
            relieve(&node, &usage, &parts, &mut asked).await;
            let shortfall = watch.take_shortfall();
            let Some(reason) = over(&usage).or(shortfall) else {
                continue;
            };
            let me = node.identity.raft_id;
            if node
                .reader
                .alarms_of(AlarmKind::NoSpace)
                .iter()
                .any(|a| a.member == me)
            {
                continue;
            }
            tracing::warn!(%reason, "out of space: raising the no_space alarm, writes that grow the state will be refused");
            let raise = Operation::RaiseAlarm {
                member: me,
                alarm: AlarmKind::NoSpace,
                detail: reason,
            };
            if let Err(e) = node.propose(raise, None).await {
                tracing::warn!(error = %e, "cannot raise the no_space alarm yet; trying again");
            }
        }
    });
}

/// The bytes the Raft log may take before the member snapshots and purges it.
pub fn log_budget(usage: &StorageUse) -> u64 {
    let room = usage
        .quota_bytes
        .min(usage.used_bytes.saturating_add(usage.free_bytes));
    room / 8
}

/// A snapshot asked for by [`relieve`]: when, and the last snapshot's index then.
struct SnapshotAsked {
    at: std::time::Instant,
    after: u64,
}

/// Under space pressure (the log past its budget, or the member over its bounds), or once a
/// reclaim finished: purges the log up to the last snapshot, or, if the log holds entries
/// past it, takes a snapshot (one at a time) when the volume has room for it.
async fn relieve(
    node: &SharedNode,
    usage: &StorageUse,
    parts: &DirBytes,
    asked: &mut Option<SnapshotAsked>,
) {
    let log_bytes = parts.log;
    let reclaimed = node.store.reclaimed();
    // Tables only the snapshot still holds (compaction replaced them in the database): a
    // new snapshot, even at the same index, gives them back.
    let pinned = parts.only_in_snapshots;
    let budget = log_budget(usage);
    if log_bytes <= budget && !usage.over && !reclaimed && pinned <= budget {
        return;
    }
    let m = crate::raft::metrics_of(&node.raft);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let snapshot = m.snapshot.map_or(0, |l| l.index);
    let purged = m.purged.map_or(0, |l| l.index);
    if snapshot > purged
        && let Err(e) = node.raft.trigger().purge_log(snapshot).await
    {
        tracing::warn!(error = %e, "cannot purge the Raft log");
    }
    let building = asked
        .as_ref()
        .is_some_and(|a| a.after == snapshot && a.at.elapsed() < SNAPSHOT_WAIT);
    // A snapshot is a checkpoint: the memtables flushed to tables, then every table linked,
    // not copied. It needs room for the flush; replacing the last one then frees the tables
    // only it still held (those compaction replaced since), which is how a member short of
    // space gets it back.
    let flush_bytes = node.store.memtable_bytes().saturating_add(1 << 20);
    // Not while a reclaim rewrites the tables: the snapshot would keep the old ones. Once it
    // is done, even at the same index: the new checkpoint lets the old tables go.
    if (applied > snapshot || reclaimed || pinned > budget)
        && !building
        && !node.store.reclaiming()
        && usage.free_bytes > flush_bytes
    {
        *asked = Some(SnapshotAsked {
            at: std::time::Instant::now(),
            after: snapshot,
        });
        node.store.snapshot_taken_after_reclaim();
        tracing::info!(
            log_bytes,
            "short of space: taking a snapshot to purge the Raft log up to it"
        );
        if let Err(e) = node.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "cannot take a snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(used: u64, free: u64) -> StorageUse {
        StorageUse {
            used_bytes: used,
            free_bytes: free,
            quota_bytes: 100,
            reserve_bytes: 10,
            over: false,
        }
    }

    #[test]
    fn over_names_the_bound_crossed() {
        let cases = [
            (50, 50, None),
            (100, 10, None),
            (101, 50, Some("quota")),
            (50, 9, Some("reserve")),
            (101, 9, Some("quota")),
        ];
        for (used, free, want) in cases {
            let got = over(&usage(used, free));
            match want {
                None => assert_eq!(got, None, "used {used} free {free}"),
                Some(word) => assert!(
                    got.as_deref().is_some_and(|r| r.contains(word)),
                    "used {used} free {free}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn a_disarm_waits_for_a_margin_under_the_bounds() {
        assert!(not_clear(&usage(90, 15)).is_none());
        assert!(not_clear(&usage(91, 15)).unwrap().contains("quota"));
        assert!(not_clear(&usage(50, 14)).unwrap().contains("reserve"));
        // Under the bounds, yet not clear of them.
        assert!(over(&usage(95, 12)).is_none() && not_clear(&usage(95, 12)).is_some());
    }

    #[test]
    fn a_file_linked_twice_counts_once_and_only_the_snapshots_copies_count_as_theirs() {
        let dir = std::env::temp_dir().join(format!("space-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("snapshots/ckpt")).unwrap();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("db/table"), vec![7u8; 1 << 20]).unwrap();
        std::fs::write(dir.join("log/1.seg"), vec![7u8; 2 << 20]).unwrap();
        let once = DirBytes::of(&dir);
        std::fs::hard_link(dir.join("db/table"), dir.join("snapshots/ckpt/table")).unwrap();
        let linked = DirBytes::of(&dir);
        assert_eq!(linked.total, once.total);
        assert_eq!(linked.only_in_snapshots, 0, "the database still has it");
        assert!(linked.log >= 2 << 20 && linked.log < once.total);
        std::fs::remove_file(dir.join("db/table")).unwrap();
        let pinned = DirBytes::of(&dir);
        assert!(pinned.only_in_snapshots >= 1 << 20, "{pinned:?}");
        assert_eq!(pinned.total, once.total);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_data_dir_is_measured_by_its_allocated_blocks() {
        let dir = std::env::temp_dir().join(format!("space-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let before = bytes_on_disk(&dir);
        std::fs::write(dir.join("sub/a"), vec![7u8; 1 << 20]).unwrap();
        // A sparse file takes only what it holds.
        let sparse = std::fs::File::create(dir.join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        let after = bytes_on_disk(&dir);
        assert!(
            after - before >= 1 << 20 && after - before < 2 << 20,
            "{before} -> {after}"
        );
        assert!(free_bytes(&dir).unwrap() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
