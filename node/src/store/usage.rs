//! How many keys, and how many bytes, the keys under each prefix with a storage quota take,
//! kept up to date by every applied batch so that the leader checks a write against its
//! quotas without a scan.
//!
//! A prefix is counted from the state once, the first time it is asked for (a scan of its
//! keys), then by each batch's changes. The scan and the batches take the same lock, and a
//! batch holds it from reading the values it replaces until its write is committed, so a
//! count is always the state of one applied index. A snapshot installed replaces the state:
//! every count is dropped and taken again when next asked for.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::sync::MutexGuard;

use serde_json::Value;

use super::CF_KV;
use super::Store;
use super::codec::RecordKind;
use super::io_err;
use super::records::KeyRecord;

/// What the keys under one prefix take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub keys: u64,
    /// Their names and their values as JSON.
    pub bytes: u64,
}

/// The bytes a key counts for against a quota: its name and its value as compact JSON, what a
/// client sends and reads back.
pub fn entry_bytes(key: &str, value: &Value) -> u64 {
    struct Count(u64);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a JSON value serializes");
    key.len() as u64 + count.0
}

/// The counts of the prefixes asked for so far.
#[derive(Debug, Default)]
pub struct PrefixUsage {
    counted: Mutex<BTreeMap<String, Usage>>,
}

impl PrefixUsage {
    /// The counts, locked: applying a batch waits while they are held.
    pub fn lock(&self) -> Counted<'_> {
        Counted(self.counted.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The counts, held.
pub struct Counted<'a>(MutexGuard<'a, BTreeMap<String, Usage>>);

/// What one batch changes in the counts, per prefix: keys and bytes added (or removed).
#[derive(Debug, Default)]
pub(super) struct Changes(Vec<(String, i64, i64)>);

impl Counted<'_> {
    /// What the keys under `prefix` take in the applied state; the first time, by a scan.
    pub fn of(&mut self, prefix: &str, store: &Store) -> io::Result<Usage> {
        if let Some(u) = self.0.get(prefix) {
            return Ok(*u);
        }
        let mut usage = Usage::default();
        let stored = store.scan::<KeyRecord>(CF_KV, prefix.as_bytes(), RecordKind::KeyValue, "key");
        for item in stored {
            let (k, rec) = item.map_err(io_err)?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8(k).map_err(|_| io_err("stored key is not UTF-8"))?;
            usage.keys += 1;
            usage.bytes += entry_bytes(&key, &rec.value);
        }
        self.0.insert(prefix.to_string(), usage);
        Ok(usage)
    }

    /// Stops counting the prefixes no quota names any more.
    pub fn keep_only(&mut self, prefixes: &[&str]) {
        self.0.retain(|p, _| prefixes.contains(&p.as_str()));
    }

    /// Drops every count: the state was replaced (a snapshot installed).
    pub(super) fn forget_all(&mut self) {
        self.0.clear();
    }

    /// What a batch that leaves `touched` keys as given changes in the counts, reading the
    /// values they replace from the state before the batch is written.
    pub(super) fn changes(
        &self,
        touched: &HashMap<String, Option<KeyRecord>>,
        store: &Store,
    ) -> io::Result<Changes> {
        let mut changes = Changes::default();
        if self.0.is_empty() {
            return Ok(changes);
        }
        for (key, after) in touched {
            let prefixes: Vec<&String> = self
                .0
                .keys()
                .filter(|p| key.starts_with(p.as_str()))
                .collect();
            if prefixes.is_empty() {
                continue;
            }
            let before = store.key_record(key).map_err(io_err)?;
            let size = |r: &Option<KeyRecord>| r.as_ref().map(|r| entry_bytes(key, &r.value));
            let (was, is) = (size(&before), size(after));
            let keys = i64::from(is.is_some()) - i64::from(was.is_some());
            let bytes = is.unwrap_or(0) as i64 - was.unwrap_or(0) as i64;
            if keys == 0 && bytes == 0 {
                continue;
            }
            for p in prefixes {
                changes.0.push((p.clone(), keys, bytes));
            }
        }
        Ok(changes)
    }

    /// Counts a batch's changes, once it is written.
    pub(super) fn apply(&mut self, changes: Changes) {
        for (prefix, keys, bytes) in changes.0 {
            if let Some(u) = self.0.get_mut(&prefix) {
                u.keys = u.keys.saturating_add_signed(keys);
                u.bytes = u.bytes.saturating_add_signed(bytes);
            }
        }
    }
}
