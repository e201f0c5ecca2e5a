//! The newest log entries, kept in memory as they were appended.
//!
//! Every entry is read back several times soon after it is written: once per follower to
//! replicate it and once to apply it. Served from here, those reads skip a RocksDB iterator
//! and a JSON decode each. The cache only ever holds a contiguous run of entries exactly as
//! written to the log; a read it cannot answer whole goes to RocksDB.

use std::collections::VecDeque;
use std::ops::Range;

use super::types::Entry;

/// Bounds on what is kept: the newest entries, at most this many and about this many bytes
/// of encoded entries (a few large values would otherwise pin a lot of memory).
pub const MAX_ENTRIES: usize = 4096;
pub const MAX_BYTES: usize = 8 << 20;

#[derive(Default)]
pub struct LogCache {
    /// `entries[i]` is log index `first + i`, with its encoded size.
    entries: VecDeque<(Entry, usize)>,
    first: u64,
    bytes: usize,
}

impl LogCache {
    /// Records entries just written to the log. A run that does not follow the cached one
    /// (after a restart or a truncation the cache did not see) replaces it.
    pub fn appended(&mut self, entry: Entry, encoded_len: usize) {
        let index = entry.log_id.index;
        if self.entries.is_empty() || index != self.first + self.entries.len() as u64 {
            self.entries.clear();
            self.bytes = 0;
            self.first = index;
        }
        self.bytes += encoded_len;
        self.entries.push_back((entry, encoded_len));
        while self.entries.len() > MAX_ENTRIES || (self.bytes > MAX_BYTES && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    /// Entries after `index` were removed from the log (a conflicting tail).
    pub fn truncated_after(&mut self, index: Option<u64>) {
        let keep = match index {
            None => 0,
            Some(i) if i < self.first => 0,
            Some(i) => (i - self.first + 1) as usize,
        };
        while self.entries.len() > keep {
            let (_, len) = self.entries.pop_back().expect("non-empty");
            self.bytes -= len;
        }
    }

    /// Entries up to and including `index` were removed from the log.
    pub fn purged_upto(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            self.pop_front();
        }
    }

    /// The entries `range` (half open), if every one of them is cached.
    pub fn get(&self, range: Range<u64>) -> Option<Vec<Entry>> {
        if range.start >= range.end {
            return Some(Vec::new());
        }
        let end = self.first + self.entries.len() as u64;
        if range.start < self.first || range.end > end {
            return None;
        }
        let from = (range.start - self.first) as usize;
        let to = (range.end - self.first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }

    fn pop_front(&mut self) {
        if let Some((_, len)) = self.entries.pop_front() {
            self.bytes -= len;
            self.first += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::LogIdRecord;
    use crate::store::types::log_id_from_record;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id_from_record(&LogIdRecord {
                term,
                leader: 1,
                index,
            }),
            payload: openraft::EntryPayload::Blank,
        }
    }

    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        v.map(|v| {
            v.iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect()
        })
    }

    fn filled(from: u64, to: u64) -> LogCache {
        let mut c = LogCache::default();
        for i in from..to {
            c.appended(entry(1, i), 10);
        }
        c
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        let c = filled(5, 10);
        assert_eq!(indexes(c.get(6..8)), Some(vec![(1, 6), (1, 7)]));
        assert_eq!(indexes(c.get(5..10)).map(|v| v.len()), Some(5));
        assert_eq!(indexes(c.get(9..9)), Some(vec![]));
        assert!(c.get(4..6).is_none(), "starts before the cache");
        assert!(c.get(8..11).is_none(), "ends after it");
    }

    #[test]
    fn a_gap_replaces_the_cached_run() {
        let mut c = filled(5, 10);
        c.appended(entry(2, 20), 10);
        assert!(c.get(5..6).is_none());
        assert_eq!(indexes(c.get(20..21)), Some(vec![(2, 20)]));
    }

    #[test]
    fn a_truncated_tail_is_replaced_by_the_new_entries() {
        let mut c = filled(5, 10);
        c.truncated_after(Some(6));
        assert!(c.get(7..8).is_none());
        c.appended(entry(3, 7), 10);
        assert_eq!(indexes(c.get(6..8)), Some(vec![(1, 6), (3, 7)]));
        c.truncated_after(Some(2));
        assert!(c.get(5..6).is_none());
        let mut all = filled(5, 10);
        all.truncated_after(None);
        assert!(all.get(5..6).is_none());
    }

    #[test]
    fn purged_entries_are_dropped() {
        let mut c = filled(5, 10);
        c.purged_upto(7);
        assert!(c.get(7..8).is_none());
        assert_eq!(indexes(c.get(8..10)).map(|v| v.len()), Some(2));
        c.purged_upto(100);
        assert!(c.get(9..10).is_none());
        c.appended(entry(1, 101), 10);
        assert_eq!(indexes(c.get(101..102)), Some(vec![(1, 101)]));
    }

    #[test]
    fn keeps_the_newest_within_its_bounds() {
        let c = filled(0, MAX_ENTRIES as u64 + 10);
        assert!(c.get(9..10).is_none());
        assert!(c.get(10..11).is_some());
        let mut big = LogCache::default();
        for i in 0..10 {
            big.appended(entry(1, i), MAX_BYTES / 4);
        }
        assert!(big.get(5..6).is_none());
        assert_eq!(indexes(big.get(6..10)).map(|v| v.len()), Some(4));
        // One entry larger than the bound is still kept (it is the newest).
        big.appended(entry(1, 10), MAX_BYTES * 2);
        assert_eq!(indexes(big.get(10..11)), Some(vec![(1, 10)]));
    }
}
