//! A hash of the replicated state at one log index, which every replica computes when it
//! applies the leader's `CheckState` entry, so replicas that disagree are caught
//! (`crate::integrity` compares them).
//!
//! What is hashed: the revision, then every key, lease and idempotency answer as stored (key
//! and record bytes, in key order). Every replica that applied the same log writes the same
//! bytes: records carry no local time or place, and the time indexes and the history, which
//! are local or compacted by each replica, are left out.
//!
//! The hash is taken from a RocksDB snapshot opened right after the batch ending at the entry
//! is written and before the next is, on a thread of its own: the apply waits only for the
//! snapshot to open, not for the scan.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;

use super::CF_APPLIED;
use super::CF_IDEMPOTENCY;
use super::CF_KV;
use super::CF_LEASES;
use super::KEY_APPLIED;
use super::Store;
use super::StoreError;
use super::codec::RecordKind;
use super::io_err;
use super::records::AppliedStateRecord;

/// The column families hashed, in this order.
const HASHED: [&str; 3] = [CF_KV, CF_LEASES, CF_IDEMPOTENCY];

/// How many hashes a replica keeps: the leader asks for one soon after the entry commits.
const KEPT: usize = 16;

/// One replica's state at one log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateHash {
    /// The log index of the `CheckState` entry.
    pub index: u64,
    /// The revision as of that entry.
    pub revision: u64,
    /// SHA-256 of the state, in hex.
    pub sha256: String,
    /// Records hashed (keys, leases and idempotency answers).
    pub records: u64,
    /// How long the scan took, in milliseconds.
    pub took_ms: u64,
}

/// A hash as it stands: still being computed, done, or failed (storage unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed {
    Pending,
    Done(StateHash),
    Failed(String),
}

/// The hashes this replica computed lately, newest last. Shared by the state machine, which
/// adds them, and the API, which answers the leader's questions.
#[derive(Clone, Default)]
pub struct StateHashes {
    recent: Arc<Mutex<VecDeque<(u64, Computed)>>>,
}

impl StateHashes {
    fn set(&self, index: u64, computed: Computed) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.iter_mut().find(|(i, _)| *i == index) {
            Some((_, c)) => *c = computed,
            None => {
                recent.push_back((index, computed));
                if recent.len() > KEPT {
                    recent.pop_front();
                }
            }
        }
    }

    /// The hash at `index`: `None` if this replica has not applied that entry (yet), or
    /// applied it so long ago it no longer keeps the hash.
    pub fn get(&self, index: u64) -> Option<Computed> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| c.clone())
    }

    /// Hashes `store`'s state as it is now, which is its state as of log index `index`: opens
    /// a snapshot on a thread of its own, returns once it is open, and scans on that thread.
    pub(super) fn hash_now(&self, store: &Store, index: u64) {
        self.set(index, Computed::Pending);
        let (opened_tx, opened_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let store = store.clone();
        let hashes = self.clone();
        let spawned = std::thread::Builder::new()
            .name("state-hash".into())
            .spawn(move || {
                let view = store.db().snapshot();
                let _ = opened_tx.send(());
                let computed = match hash_view(&store, &view, index) {
                    Ok(h) => {
                        tracing::debug!(
                            index,
                            records = h.records,
                            took_ms = h.took_ms,
                            "state hashed"
                        );
                        Computed::Done(h)
                    }
                    Err(e) => {
                        tracing::error!(index, error = %e, "cannot hash the state");
                        Computed::Failed(e.to_string())
                    }
                };
                hashes.set(index, computed);
            });
        match spawned {
            Ok(_) => {
                let _ = opened_rx.recv();
            }
            Err(e) => self.set(
                index,
                Computed::Failed(format!("cannot start a thread: {e}")),
            ),
        }
    }
}

/// The hash of the state `view` sees, which must be as of log index `index`.
fn hash_view(
    store: &Store,
    view: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    index: u64,
) -> Result<StateHash, StoreError> {
    let applied: AppliedStateRecord = match view
        .get_cf(store.cf(CF_APPLIED), KEY_APPLIED)
        .map_err(io_err)?
    {
        Some(bytes) => store.decode_record(RecordKind::AppliedState, &bytes, "applied state")?,
        None => AppliedStateRecord::default(),
    };
    let at = applied.last_applied.as_ref().map_or(0, |l| l.index);
    if at != index {
        return Err(StoreError::Io(io_err(format!(
            "the state to hash is at log index {at}, not {index}"
        ))));
    }
    let started = std::time::Instant::now();
    let mut sha = Sha256::new();
    sha.update(applied.revision.to_be_bytes());
    let mut records = 0u64;
    for cf in HASHED {
        sha.update((cf.len() as u32).to_be_bytes());
        sha.update(cf.as_bytes());
        let mut it = view.raw_iterator_cf(store.cf(cf));
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            sha.update((k.len() as u32).to_be_bytes());
            sha.update(k);
            sha.update((v.len() as u32).to_be_bytes());
            sha.update(v);
            records += 1;
            it.next();
        }
        it.status().map_err(io_err)?;
    }
    Ok(StateHash {
        index,
        revision: applied.revision,
        sha256: hex(&sha.finalize()),
        records,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
