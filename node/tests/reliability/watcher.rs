//! A watcher that follows every change under the workload's prefix from revision 1, across
//! node failures: when its stream breaks or stalls it resumes on another node with
//! `Last-Event-ID`, the id of the last message it saw. What it saw is checked afterwards:
//! every revision exactly once, in order, each matching the write acknowledged with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concordance_client::EventType;
use concordance_client::WatchChange;
use futures::StreamExt;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::checker::Input;
use crate::checker::Output;
use crate::history::Record;
use crate::history::Status;
use crate::workload::Endpoints;

/// A change as the watcher saw it: (key, value after it; `None` for a delete).
pub type Seen = (String, Option<String>);

#[derive(Default, Debug)]
pub struct WatchLog {
    /// Every change message in the order received, by revision.
    pub changes: Vec<(u64, Vec<Seen>)>,
    /// How many times the stream was resumed on another (or the same) node.
    pub resumes: usize,
}

/// Watches `prefix` until `stop` is set and the watcher has seen `until` (set by the caller
/// once the final revision is known; 0 until then).
pub async fn watch(
    seed: u64,
    prefix: &str,
    endpoints: Endpoints,
    stop: Arc<AtomicBool>,
    until: Arc<AtomicU64>,
) -> WatchLog {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x3a7c4);
    let mut log = WatchLog::default();
    // The id of the last message (change or progress) seen: where to resume.
    let mut last_id: u64 = 0;
    loop {
        let target = until.load(Ordering::SeqCst);
        if stop.load(Ordering::SeqCst) && target > 0 && last_id >= target {
            return log;
        }
        let port = {
            let eps = endpoints.read().unwrap();
            eps[rng.random_range(0..eps.len())].1
        };
        let mut url =
            format!("http://127.0.0.1:{port}/api/v1/watch?prefix={prefix}&progressMs=1000");
        let mut rb = http.get(&url);
        if last_id == 0 {
            url.push_str("&startRevision=1");
            rb = http.get(&url);
        } else {
            rb = rb.header("last-event-id", last_id.to_string());
            log.resumes += 1;
        }
        let resp = match tokio::time::timeout(Duration::from_secs(3), rb.send()).await {
            Ok(Ok(r)) if r.status().is_success() => r,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        loop {
            if stop.load(Ordering::SeqCst) {
                let target = until.load(Ordering::SeqCst);
                if target > 0 && last_id >= target {
                    return log;
                }
            }
            // Progress arrives every second: silence for 3 s means a paused or cut-off node.
            let chunk = match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
                Ok(Some(Ok(c))) => c,
                _ => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let msg: String = buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
                for line in msg.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<u64>().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                match event.as_str() {
                    "change" => {
                        let c: WatchChange = serde_json::from_str(&data)
                            .unwrap_or_else(|e| panic!("bad change message {data:?}: {e}"));
                        let seen = c
                            .events
                            .iter()
                            .map(|e| {
                                let v = match e.kind {
                                    EventType::Put => {
                                        e.kv.as_ref()
                                            .and_then(|kv| kv.value.as_str().map(String::from))
                                    }
                                    EventType::Delete => None,
                                };
                                (e.key.clone(), v)
                            })
                            .collect();
                        log.changes.push((c.revision, seen));
                        last_id = c.revision;
                    }
                    "progress" => {
                        if let Some(i) = id {
                            last_id = last_id.max(i);
                        }
                    }
                    "error" => break,
                    _ => {}
                }
            }
        }
    }
}

/// Gap-free and faithful: the watcher saw revisions 1..=`final_revision` each exactly once, in
/// order, and each acknowledged write's revision shows that write.
/// Revisions written outside the watched prefix (the full-disk fault's filler): the watch
/// does not see them. `unknown` counts the filler's writes whose outcome is unknown, each
/// perhaps one more such revision.
#[derive(Debug, Default)]
pub struct Outside {
    pub revisions: std::collections::BTreeSet<u64>,
    pub unknown: usize,
}

pub fn check_watch(
    log: &WatchLog,
    history: &[Record],
    final_revision: u64,
    outside: &Outside,
) -> Result<(), String> {
    let revs: Vec<u64> = log.changes.iter().map(|(r, _)| *r).collect();
    for w in revs.windows(2) {
        if w[1] <= w[0] {
            return Err(format!(
                "watch went from revision {} to {}: repeated or out of order",
                w[0], w[1]
            ));
        }
    }
    let expected: Vec<u64> = (1..=final_revision)
        .filter(|r| !outside.revisions.contains(r))
        .collect();
    let missing: Vec<u64> = expected
        .iter()
        .filter(|r| revs.binary_search(r).is_err())
        .copied()
        .collect();
    let beyond = revs.last().is_some_and(|last| *last > final_revision);
    if missing.len() > outside.unknown || beyond {
        return Err(format!(
            "watch is not gap-free: saw {} revisions of 1..={final_revision} ({} written \
             outside its prefix, {} more perhaps); first missing {:?}",
            revs.len(),
            outside.revisions.len(),
            outside.unknown,
            &missing[..missing.len().min(10)]
        ));
    }
    let by_rev: BTreeMap<u64, &Vec<Seen>> = log.changes.iter().map(|(r, s)| (*r, s)).collect();
    for r in history.iter().filter(|r| r.status == Status::Ok) {
        let Some(rev) = r.revision else { continue };
        let expect: Seen = match (&r.op.input, &r.op.output) {
            (Input::Put(v), Output::Ok) => (r.op.key.clone(), Some(v.clone())),
            (Input::Cas { new, .. }, Output::Swapped(true)) => {
                (r.op.key.clone(), Some(new.clone()))
            }
            (Input::Delete, Output::Deleted(true)) => (r.op.key.clone(), None),
            _ => continue,
        };
        match by_rev.get(&rev) {
            Some(seen) if seen.len() == 1 && seen[0] == expect => {}
            other => {
                return Err(format!(
                    "revision {rev}: the watch saw {other:?}, the write acknowledged with it was {expect:?}"
                ));
            }
        }
    }
    Ok(())
}

/// `check_watch` shown to fail on watch logs built to break it, and to pass unbroken.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Operation;

    fn put(key: &str, v: &str, rev: u64) -> Record {
        Record {
            op: Operation {
                key: key.into(),
                client: 0,
                input: Input::Put(v.into()),
                output: Output::Ok,
                call: rev * 10,
                ret: Some(rev * 10 + 5),
            },
            node: "n1".into(),
            serializable: false,
            status: Status::Ok,
            revision: Some(rev),
            mod_revision: None,
        }
    }
    fn change(rev: u64, key: &str, v: Option<&str>) -> (u64, Vec<Seen>) {
        (rev, vec![(key.into(), v.map(String::from))])
    }
    fn history() -> Vec<Record> {
        vec![put("a", "1", 1), put("b", "2", 2), put("a", "3", 3)]
    }
    fn log(changes: Vec<(u64, Vec<Seen>)>) -> WatchLog {
        WatchLog {
            changes,
            resumes: 0,
        }
    }
    fn good() -> Vec<(u64, Vec<Seen>)> {
        vec![
            change(1, "a", Some("1")),
            change(2, "b", Some("2")),
            change(3, "a", Some("3")),
        ]
    }

    #[test]
    fn a_complete_faithful_watch_passes() {
        check_watch(&log(good()), &history(), 3, &Outside::default()).unwrap();
    }

    #[test]
    fn a_gap_fails() {
        let mut c = good();
        c.remove(1);
        let e = check_watch(&log(c), &history(), 3, &Outside::default()).unwrap_err();
        assert!(e.contains("not gap-free") && e.contains("[2]"), "{e}");
    }

    #[test]
    fn only_gaps_written_outside_the_prefix_pass() {
        let mut c = good();
        c.remove(1);
        let at_2 = Outside {
            revisions: [2].into(),
            unknown: 0,
        };
        check_watch(&log(c.clone()), &history_without_b(), 3, &at_2).unwrap();
        let perhaps_one = Outside {
            revisions: Default::default(),
            unknown: 1,
        };
        check_watch(&log(c.clone()), &history_without_b(), 3, &perhaps_one).unwrap();
        c.remove(0);
        let e = check_watch(&log(c), &history_without_b(), 3, &perhaps_one).unwrap_err();
        assert!(e.contains("not gap-free") && e.contains("[1, 2]"), "{e}");
    }

    fn history_without_b() -> Vec<Record> {
        history().into_iter().filter(|r| r.op.key != "b").collect()
    }

    #[test]
    fn a_watch_that_stops_short_of_the_final_revision_fails() {
        let e = check_watch(&log(good()), &history(), 4, &Outside::default()).unwrap_err();
        assert!(e.contains("not gap-free"), "{e}");
    }

    #[test]
    fn a_repeated_or_reordered_revision_fails() {
        let mut c = good();
        c.insert(2, change(2, "b", Some("2")));
        let e = check_watch(&log(c), &history(), 3, &Outside::default()).unwrap_err();
        assert!(e.contains("repeated or out of order"), "{e}");
        let mut c = good();
        c.swap(1, 2);
        let e = check_watch(&log(c), &history(), 3, &Outside::default()).unwrap_err();
        assert!(e.contains("repeated or out of order"), "{e}");
    }

    #[test]
    fn a_change_that_is_not_the_write_acknowledged_at_its_revision_fails() {
        let mut c = good();
        c[2] = change(3, "a", Some("1"));
        let e = check_watch(&log(c), &history(), 3, &Outside::default()).unwrap_err();
        assert!(e.contains("revision 3: the watch saw"), "{e}");
        let mut c = good();
        c[1] = change(2, "b", None);
        let e = check_watch(&log(c), &history(), 3, &Outside::default()).unwrap_err();
        assert!(e.contains("revision 2: the watch saw"), "{e}");
    }
}
