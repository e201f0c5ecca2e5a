//! `GET /api/v1/watch`: changes to a key or under a prefix as Server-Sent Events, in revision
//! order, none skipped or repeated.
//!
//! Each SSE message carries one revision: `id: <revision>`, `event: change`, `data:` a
//! [`WatchChange`] with every matching change at that revision. While nothing matches, an
//! `event: progress` (same `id` rule) says how far the stream has looked, so a client that
//! reconnects with `Last-Event-ID` (or `startRevision` = id + 1) resumes exactly after what it
//! saw, on any node. A node streams what it has applied, so a watch keeps working whoever
//! leads. A start revision older than the kept history answers `410 compacted` with the
//! oldest revision still available; a stream that falls that far behind ends with an
//! `event: error` carrying the same error.
//!
//! New changes come from the member's [`ChangeFeed`](crate::change_feed::ChangeFeed) (one
//! history read per applied batch for all watches); a watch reads the history itself only to
//! catch up (a start in the past, or batches it missed while its client read slowly).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Sse;
use axum::response::sse::Event;
use axum::response::sse::KeepAlive;
use concordance_client::ErrorBody;
use concordance_client::ErrorCode;
use concordance_client::WatchChange;
use concordance_client::WatchProgress;
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::ApiError;
use super::body::QueryParams;
use super::validate;
use crate::auth::Caller;
use crate::change_feed::FeedBatch;
use crate::service::SharedNode;
use crate::service::WatchPermit;

/// Revisions and stored bytes read from history per step (whole revisions, at least one), to
/// bound the memory of a watcher far behind: the next step is read once the stream has taken
/// what the last one queued.
const STEP_REVISIONS: usize = 1000;
const STEP_BYTES: usize = 4 << 20;
const DEFAULT_PROGRESS_MS: u64 = 5_000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchParams {
    /// Watch this one key.
    pub key: Option<String>,
    /// Watch every key starting with this (may be empty: every key). Exactly one of `key`
    /// and `prefix`.
    pub prefix: Option<String>,
    /// First revision to stream (default: the next change). A `Last-Event-ID` header wins
    /// over it: the stream resumes at that id + 1.
    pub start_revision: Option<u64>,
    /// Interval of `progress` events while nothing matches, in ms (1000-60000, default 5000).
    pub progress_ms: Option<u64>,
}

fn compacted(start: u64, oldest: u64) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::Compacted,
        format!(
            "revision {start} has been compacted; the oldest revision available is {oldest}: \
             read the current state and watch from its revision + 1"
        ),
    );
    e.detail.oldest_revision = Some(oldest);
    e
}

fn bad_revision(why: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRevision, why)
}

enum Filter {
    Key(String),
    Prefix(String),
}

impl Filter {
    fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

struct Watch {
    node: SharedNode,
    /// Counts this stream among its credential's open watches until it ends.
    _permit: WatchPermit,
    feed: broadcast::Receiver<Arc<FeedBatch>>,
    filter: Filter,
    /// The next revision to look at.
    next: u64,
    progress: Duration,
    /// When the last event was queued: a progress event follows `progress` after it.
    quiet_since: tokio::time::Instant,
    queue: VecDeque<Event>,
    done: bool,
}

fn error_event(e: ApiError) -> Event {
    Event::default()
        .event("error")
        .json_data(ErrorBody { error: e.detail })
        .unwrap_or_default()
}

impl Watch {
    /// Reads the history from `next` up to what the feed has sent (this stream started before it
    /// or missed its batches), queueing one event per matching revision, until something is
    /// queued.
    fn catch_up(&mut self) {
        let upto = self.node.changes.sent();
        while self.next <= upto && self.queue.is_empty() {
            let changes = match self
                .node
                .history(self.next, upto, STEP_REVISIONS, STEP_BYTES)
            {
                Ok(c) => c,
                Err(e) => return self.fail(e.into()),
            };
            // Checked after reading: compaction deletes from the front, so if `next` is still
            // at or above the oldest revision, nothing it read was missing.
            let oldest = self.node.reader.oldest_revision();
            if self.next < oldest {
                return self.fail(compacted(self.next, oldest));
            }
            let whole = changes.last().map(|c| c.revision);
            self.push_matching(changes.into_iter().map(|c| (c.revision, c.event)));
            // A short read covered everything up to `upto`; a full one stops at its last
            // revision (whose events were read whole: the bounds stop between revisions).
            self.next = match whole {
                Some(last) if last < upto => last + 1,
                _ => upto + 1,
            };
        }
    }

    /// Queues one event per revision of the changes `filter` matches, in order.
    fn push_matching(
        &mut self,
        changes: impl Iterator<Item = (u64, concordance_client::WatchEvent)>,
    ) {
        let mut current: Option<WatchChange> = None;
        for (revision, event) in changes {
            if !self.filter.matches(&event.key) {
                continue;
            }
            if current.as_ref().is_some_and(|w| w.revision != revision) {
                self.push_change(current.take().expect("checked"));
            }
            current
                .get_or_insert_with(|| WatchChange {
                    revision,
                    events: Vec::new(),
                })
                .events
                .push(event);
        }
        if let Some(c) = current {
            self.push_change(c);
        }
    }

    /// Takes a batch from the feed if it continues this stream (one that starts past `next`
    /// is left: this stream missed what lies between, and [`Watch::catch_up`] reads it).
    fn take(&mut self, batch: &FeedBatch) {
        if batch.to < self.next || batch.from > self.next {
            return;
        }
        let next = self.next;
        let matching: Vec<_> = batch
            .events
            .iter()
            .filter(|e| e.revision >= next && self.filter.matches(&e.key))
            .map(|e| (e.revision, crate::data::change(e.clone()).event))
            .collect();
        self.push_matching(matching.into_iter());
        self.next = batch.to + 1;
    }

    /// Takes the batches the feed holds for this stream until something is queued.
    fn take_from_feed(&mut self) {
        while self.queue.is_empty() && !self.done {
            match self.feed.try_recv() {
                Ok(batch) => self.take(&batch),
                // Missed some (this stream was slow): `catch_up` reads them.
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(broadcast::error::TryRecvError::Empty) => return,
                Err(broadcast::error::TryRecvError::Closed) => self.done = true,
            }
        }
    }

    fn push_change(&mut self, c: WatchChange) {
        self.quiet_since = tokio::time::Instant::now();
        let ev = Event::default()
            .id(c.revision.to_string())
            .event("change")
            .json_data(&c)
            .unwrap_or_default();
        self.queue.push_back(ev);
    }

    fn push_progress(&mut self) {
        let revision = self.next - 1;
        self.quiet_since = tokio::time::Instant::now();
        self.queue.push_back(
            Event::default()
                .id(revision.to_string())
                .event("progress")
                .json_data(WatchProgress { revision })
                .unwrap_or_default(),
        );
    }

    fn fail(&mut self, e: ApiError) {
        self.queue.push_back(error_event(e));
        self.done = true;
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            if self.done {
                return None;
            }
            self.take_from_feed();
            if self.queue.is_empty() && !self.done {
                self.catch_up();
            }
            if !self.queue.is_empty() || self.done {
                continue;
            }
            tokio::select! {
                r = self.feed.recv() => match r {
                    Ok(batch) => self.take(&batch),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => self.done = true,
                },
                _ = tokio::time::sleep_until(self.quiet_since + self.progress) => {
                    self.push_progress();
                }
                // The node is stopping: the stream ends, and the client resumes on another
                // member with `Last-Event-ID`.
                _ = self.node.stopping.cancelled() => self.done = true,
            }
        }
    }
}

pub async fn watch(
    State(node): State<SharedNode>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<WatchParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = match (params.key, params.prefix) {
        (Some(k), None) => {
            validate::key(&k)?;
            caller.may_read(&k)?;
            Filter::Key(k)
        }
        (None, Some(p)) => {
            validate::prefix(&p)?;
            caller.may_read_prefix(&p)?;
            Filter::Prefix(p)
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                "give exactly one of `key` and `prefix`",
            ));
        }
    };
    let progress = Duration::from_millis(params.progress_ms.unwrap_or(DEFAULT_PROGRESS_MS));
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&progress) {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "progressMs must be 1000-60000",
        ));
    }
    let last_event = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| bad_revision("Last-Event-ID must be a revision (an integer)"))?,
        ),
    };
    // Subscribed before reading the revision, so no change between the two is missed.
    let feed = node.changes.subscribe();
    let start = match (last_event, params.start_revision) {
        (Some(id), _) => id
            .checked_add(1)
            .ok_or_else(|| bad_revision("Last-Event-ID is out of range"))?,
        (None, Some(0)) => return Err(bad_revision("startRevision must be at least 1")),
        (None, Some(r)) => r,
        (None, None) => node.reader.revision() + 1,
    };
    let oldest = node.reader.oldest_revision();
    if start < oldest {
        return Err(compacted(start, oldest));
    }
    let permit = crate::service::open_watch(&node, caller.name.clone())?;
    let watch = Watch {
        _permit: permit,
        node,
        feed,
        filter,
        next: start,
        progress,
        quiet_since: tokio::time::Instant::now(),
        queue: VecDeque::new(),
        done: false,
    };
    let stream = futures::stream::unfold(watch, |mut w| async move {
        let ev = w.next_event().await?;
        Some((Ok(ev), w))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
