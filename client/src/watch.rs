//! Watches: `GET /watch` (Server-Sent Events) as a `Stream` of changes that survives dropped
//! connections and dead nodes. The stream remembers the last revision it saw (from `change` and
//! `progress` events) and reconnects — to the next endpoint if need be — from the revision
//! after it, so no change is lost or repeated.

use std::pin::Pin;
use std::time::Duration;

use backon::BackoffBuilder;
use eventsource_stream::Eventsource;
use futures::Stream;
use futures::StreamExt;
use reqwest::Method;
use reqwest::StatusCode;

use crate::client::Client;
use crate::client::decode;
use crate::error::Error;
use crate::types::*;

/// What to watch, and from where.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    target: Target,
    /// First revision to deliver; `None`: changes after the current (linearizable) revision.
    pub start_revision: Option<u64>,
    /// How often the server reports progress while nothing matches (1-60 s).
    pub progress: Duration,
}

#[derive(Debug, Clone)]
enum Target {
    Key(String),
    Prefix(String),
}

impl WatchOptions {
    /// One key.
    pub fn key(key: impl Into<String>) -> Self {
        Self::new(Target::Key(key.into()))
    }

    /// Every key starting with `prefix` (`""`: every key).
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self::new(Target::Prefix(prefix.into()))
    }

    fn new(target: Target) -> Self {
        Self {
            target,
            start_revision: None,
            progress: Duration::from_secs(5),
        }
    }

    pub fn from_revision(mut self, revision: u64) -> Self {
        self.start_revision = Some(revision);
        self
    }

    pub fn progress_every(mut self, every: Duration) -> Self {
        self.progress = every;
        self
    }
}

/// Changes in revision order, each revision once. Ends after an error: a [`Error::Compacted`]
/// when the history to resume from is gone, or the last failure once reconnecting gave up
/// (the client's retry policy, counted since the last event).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchChange, Error>> + Send>>;

enum Connection {
    /// Connected; events follow.
    Open(reqwest::Response),
    /// Failed in a way another attempt may not.
    Retry(Error),
    /// Failed for good.
    Fatal(Error),
}

impl Client {
    /// Watches a key or prefix. See [`WatchStream`].
    pub fn watch(&self, opts: WatchOptions) -> WatchStream {
        let client = self.clone();
        Box::pin(async_stream::stream! {
            // Fix the start now, so a reconnect before the first event still misses nothing.
            let mut next = match opts.start_revision {
                Some(r) => r,
                None => {
                    let probe = match &opts.target {
                        Target::Key(k) | Target::Prefix(k) => k.clone(),
                    };
                    match client.list(&probe, None, Some(1), Consistency::Linearizable).await {
                        Ok(page) => page.revision + 1,
                        Err(e) => {
                            yield Err(e);
                            return;
                        }
                    }
                }
            };
            let mut backoff = client.retry.backoff().build();
            // Silence longer than this means a dead connection (progress events and keep-alive
            // comments normally arrive much sooner).
            let idle = (opts.progress * 3).max(Duration::from_secs(20));
            loop {
                let base = client.endpoint();
                let failure = match client.open_watch(&base, &opts, next).await {
                    Connection::Fatal(e) => {
                        yield Err(e);
                        return;
                    }
                    Connection::Retry(e) => e,
                    Connection::Open(resp) => {
                        let mut events = resp.bytes_stream().eventsource();
                        let mut outcome = None;
                        loop {
                            let ev = match tokio::time::timeout(idle, events.next()).await {
                                Err(_) => break,
                                Ok(None) => break,
                                Ok(Some(Err(_))) => break,
                                Ok(Some(Ok(ev))) => ev,
                            };
                            // Any event shows the connection works: a later failure starts
                            // its backoff afresh.
                            backoff = client.retry.backoff().build();
                            match ev.event.as_str() {
                                "change" => match serde_json::from_str::<WatchChange>(&ev.data) {
                                    Ok(change) if change.revision >= next => {
                                        next = change.revision + 1;
                                        yield Ok(change);
                                    }
                                    // Already delivered (cannot happen when resuming by id).
                                    Ok(_) => {}
                                    Err(e) => {
                                        outcome = Some(Error::Unexpected {
                                            status: StatusCode::OK,
                                            body: format!("bad change event ({e}): {}", ev.data),
                                        });
                                        break;
                                    }
                                },
                                "progress" => {
                                    if let Ok(p) = serde_json::from_str::<WatchProgress>(&ev.data) {
                                        next = next.max(p.revision + 1);
                                    }
                                }
                                "error" => {
                                    let err = match serde_json::from_str::<ErrorBody>(&ev.data) {
                                        Ok(body) => api_error(StatusCode::OK, body, None, next),
                                        Err(_) => Error::Unexpected {
                                            status: StatusCode::OK,
                                            body: ev.data.clone(),
                                        },
                                    };
                                    if !err.is_retryable() {
                                        yield Err(err);
                                        return;
                                    }
                                    outcome = Some(err);
                                    break;
                                }
                                _ => {}
                            }
                        }
                        match outcome {
                            Some(e) => e,
                            None => Error::Unexpected {
                                status: StatusCode::OK,
                                body: format!("watch stream from {base} ended"),
                            },
                        }
                    }
                };
                client.rotate_from(&base);
                match backoff.next() {
                    Some(d) => tokio::time::sleep(d).await,
                    None => {
                        yield Err(failure);
                        return;
                    }
                }
            }
        })
    }

    async fn open_watch(&self, base: &str, opts: &WatchOptions, next: u64) -> Connection {
        let (name, value) = match &opts.target {
            Target::Key(k) => ("key", k.as_str()),
            Target::Prefix(p) => ("prefix", p.as_str()),
        };
        let progress_ms = opts.progress.as_millis().to_string();
        let start = next.to_string();
        let sent = self
            .request(base, Method::GET, "watch")
            .query(&[
                (name, value),
                ("startRevision", start.as_str()),
                ("progressMs", progress_ms.as_str()),
            ])
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Connection::Retry(Error::Transport(e)),
        };
        if resp.status().is_success() {
            return Connection::Open(resp);
        }
        let err = match decode::<serde_json::Value>(resp).await {
            Err(Error::Api {
                status,
                body,
                retry_after,
            }) => api_error(status, body, retry_after, next),
            Err(e) => e,
            Ok(v) => Error::Unexpected {
                status: StatusCode::OK,
                body: v.to_string(),
            },
        };
        if err.is_retryable() {
            Connection::Retry(err)
        } else {
            Connection::Fatal(err)
        }
    }
}

/// A `compacted` answer as its typed error; other answers as they are.
fn api_error(
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<std::time::Duration>,
    requested: u64,
) -> Error {
    match (body.error.code, body.error.oldest_revision) {
        (ErrorCode::Compacted, Some(oldest_revision)) => Error::Compacted {
            requested,
            oldest_revision,
        },
        _ => Error::Api {
            status,
            body,
            retry_after,
        },
    }
}
