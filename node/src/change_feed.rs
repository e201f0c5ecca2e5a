//! One reader of the change history for every watch on a member: after each applied batch it
//! reads the new changes once and hands them to every watch, which keeps those it matches.
//!
//! Before it, each watch read the history itself on every applied revision, so idle watches
//! made every write dearer: with 2,000 open on the leader, its CPU per write went from 0.09 to
//! 3.4 ms and write p99 from 8 to 107 ms. A watch that starts in the past, or misses batches
//! (its client reads slowly and the feed's buffer moves on), reads the history itself until it
//! reaches what the feed has sent, in bounded steps, then takes from the feed again.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::reader::KvReader;
use crate::store::records::EventRecord;

/// Batches the feed keeps for watches that have not taken them yet; one that falls further
/// behind reads the history instead. With [`STEP_BYTES`], at most about 128 MiB.
const CAPACITY: usize = 128;
/// Revisions and stored bytes per batch (whole revisions, at least one).
const STEP_REVISIONS: usize = 1000;
const STEP_BYTES: usize = 1 << 20;

/// The changes of revisions `from..=to`, in revision order (a revision without changes has
/// none: a command that changed nothing takes no revision, so normally every one has some).
#[derive(Debug)]
pub struct FeedBatch {
    pub from: u64,
    pub to: u64,
    pub events: Vec<EventRecord>,
}

#[derive(Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<Arc<FeedBatch>>,
    /// The last revision handed out (sent after its batch).
    sent: Arc<AtomicU64>,
}

impl ChangeFeed {
    /// Starts feeding what `reader` applies from now on, until `stopping`.
    pub fn start(reader: KvReader, stopping: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        let mut applied = reader.subscribe();
        let start = *applied.borrow_and_update();
        let feed = ChangeFeed {
            tx,
            sent: Arc::new(AtomicU64::new(start)),
        };
        let out = feed.clone();
        tokio::spawn(async move {
            let mut next = start + 1;
            loop {
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    _ = stopping.cancelled() => return,
                }
                let upto = *applied.borrow_and_update();
                while next <= upto {
                    next = out.send_from(&reader, next, upto).await;
                }
            }
        });
        feed
    }

    /// Reads and sends one batch from `next` (at most up to `upto`); the next revision to read.
    async fn send_from(&self, reader: &KvReader, next: u64, upto: u64) -> u64 {
        let r = reader.clone();
        let read =
            tokio::task::spawn_blocking(move || r.history(next, upto, STEP_REVISIONS, STEP_BYTES))
                .await;
        let events = match read {
            Ok(Ok(events)) => events,
            failed => {
                // Watches expecting these revisions read the history themselves and report
                // what is wrong with it.
                tracing::error!(
                    ?failed,
                    next,
                    upto,
                    "the change feed cannot read the history"
                );
                self.sent.store(upto, Ordering::Release);
                return upto + 1;
            }
        };
        let oldest = reader.oldest_revision();
        if next < oldest {
            // Compacted under the read: go on from what is kept; watches that wanted the rest
            // find the gap, read the history and report the compaction.
            self.sent.fetch_max(oldest - 1, Ordering::AcqRel);
            return oldest;
        }
        let to = match events.last() {
            Some(last) if last.revision < upto => last.revision,
            _ => upto,
        };
        // No receivers is not an error: no watch is open.
        let _ = self.tx.send(Arc::new(FeedBatch {
            from: next,
            to,
            events,
        }));
        self.sent.store(to, Ordering::Release);
        to + 1
    }

    /// Batches sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedBatch>> {
        self.tx.subscribe()
    }

    /// The last revision handed out: a watch behind it that missed the batch reads the
    /// history up to it.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }
}
