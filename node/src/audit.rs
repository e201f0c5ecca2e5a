//! The audit log (`--audit-log FILE`): one JSON line per admin call (membership changes,
//! backups, snapshots, compactions, alarms; not metrics scrapes), prefix delete, lease
//! revoke, lock release, resignation, and refused request (401, 403, 429): when, which
//! credential, the route, the path and the prefixes it touched, and the answer's status.
//! Never a token, nor any header.
//!
//! Requests only queue their line: a thread of its own appends them to the file (created
//! 0600). If it falls [`QUEUE_LINES`] behind (a disk that stalls, a flood of refusals),
//! lines are dropped and the count is logged.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::mpsc::SyncSender;
use std::sync::mpsc::TrySendError;

use serde::Serialize;

/// Lines waiting for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 4096;

/// Where audit lines go.
#[derive(Clone)]
pub struct AuditLog {
    lines: SyncSender<String>,
    dropped: Arc<Mutex<Dropped>>,
}

#[derive(Default)]
struct Dropped {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

/// One audited request.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<'a> {
    /// RFC 3339, UTC, to the millisecond.
    pub time: String,
    /// The credential's name; none when the request carried no valid token.
    pub credential: Option<&'a str>,
    pub method: &'a str,
    /// The route's template (`/api/v1/kv/{*key}`).
    pub route: &'a str,
    /// The request's path and query: the key, the lease, the prefix.
    pub path: &'a str,
    /// The prefixes a transaction deleted.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub prefixes: &'a [String],
    pub status: u16,
}

impl AuditLog {
    /// Opens (creating, 0600) `path` for appending, and starts its writer.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let (lines, queued) = std::sync::mpsc::sync_channel::<String>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                // Ends when every sender is gone (the node stopped).
                while let Ok(line) = queued.recv() {
                    let mut written = writeln!(out, "{line}");
                    while let Ok(more) = queued.try_recv() {
                        written = written.and_then(|()| writeln!(out, "{more}"));
                    }
                    if let Err(e) = written.and_then(|()| out.flush()) {
                        tracing::error!(error = %e, "cannot write the audit log");
                    }
                }
            })?;
        Ok(Self {
            lines,
            dropped: Arc::default(),
        })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let mut d = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
                d.since_logged += 1;
                if d.logged_at.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                    tracing::warn!(
                        dropped = d.since_logged,
                        "the audit log is behind: lines dropped"
                    );
                    d.since_logged = 0;
                    d.logged_at = Some(std::time::Instant::now());
                }
            }
        }
    }
}

/// Now, as the audit log writes it.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// What a request's handlers learn for its audit line: who it is (once authenticated), and
/// the prefixes a transaction deletes (which make it audited).
#[derive(Debug, Clone, Default)]
pub struct Note(Arc<Mutex<Noted>>);

#[derive(Debug, Default)]
pub struct Noted {
    pub caller: Option<Arc<str>>,
    pub prefixes: Vec<String>,
}

impl Note {
    pub fn caller(&self, name: &Arc<str>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).caller = Some(name.clone());
    }

    pub fn prefix_deleted(&self, prefix: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prefixes
            .push(prefix.to_string());
    }

    pub fn take(&self) -> Noted {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_appended_to_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "earlier\n").unwrap();
        let log = AuditLog::open(&path).unwrap();
        let prefixes = vec!["tmp/".to_string()];
        log.record(&Entry {
            time: now(),
            credential: Some("ops"),
            method: "POST",
            route: "/api/v1/txn",
            path: "/api/v1/txn",
            prefixes: &prefixes,
            status: 200,
        });
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 2 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("earlier"), "appended, not truncated");
        let line: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(line["credential"], "ops");
        assert_eq!(line["prefixes"][0], "tmp/");
        assert_eq!(line["status"], 200);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        // Created 0600 only when new: here it existed, so check a new one.
        let fresh = dir.path().join("new.jsonl");
        drop(AuditLog::open(&fresh).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
