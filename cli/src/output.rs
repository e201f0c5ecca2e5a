//! Printing answers: readable lines and tables, or one JSON document per answer (`-o json`).

use std::process::ExitCode;

use concordance_client::*;
use serde::Serialize;
use serde_json::Value;
use serde_json::json;

use crate::Failure;
use crate::args::Output;

pub struct Printer {
    json: bool,
}

/// A value as a person reads it: strings bare, anything else as compact JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

impl Printer {
    pub fn new(output: Output) -> Self {
        Self {
            json: output == Output::Json,
        }
    }

    /// In JSON mode prints `v` and returns true; the caller prints text otherwise.
    fn json<T: Serialize>(&self, v: &T) -> bool {
        if self.json {
            println!("{}", serde_json::to_string(v).expect("answers serialize"));
        }
        self.json
    }

    pub fn failure(&self, f: &Failure, code: u8) -> ExitCode {
        let (code_name, message, status) = match f {
            Failure::Client(e) => match e {
                Error::Api { status, body, .. } => (
                    body.error.code.to_string(),
                    body.error.message.clone(),
                    Some(status.as_u16()),
                ),
                Error::Compacted { .. } => {
                    (ErrorCode::Compacted.to_string(), e.to_string(), Some(410))
                }
                Error::Transport(t) => (
                    "unreachable".into(),
                    format!("no endpoint answered: {t}"),
                    None,
                ),
                other => (
                    "error".into(),
                    other.to_string(),
                    other.status().map(|s| s.as_u16()),
                ),
            },
            Failure::Local { code, message } => (
                code.map_or("error", |c| c.as_str()).to_string(),
                message.clone(),
                None,
            ),
        };
        if self.json {
            let mut body = json!({"error": {"code": code_name, "message": message}});
            if let Some(s) = status {
                body["error"]["status"] = json!(s);
            }
            if let Failure::Client(Error::Compacted {
                oldest_revision, ..
            }) = f
            {
                body["error"]["oldestRevision"] = json!(oldest_revision);
            }
            eprintln!("{body}");
        } else {
            match status {
                Some(s) => eprintln!("error: {code_name} (HTTP {s}): {message}"),
                None => eprintln!("error: {code_name}: {message}"),
            }
        }
        ExitCode::from(code)
    }

    pub fn put(&self, key: &str, r: &PutResponse) {
        if !self.json(r) {
            println!("OK {key} revision {}", r.revision);
        }
    }

    pub fn get(&self, r: &GetResponse) {
        if !self.json(r) {
            println!("{}", show(&r.kv.value));
        }
    }

    pub fn list(&self, kvs: &[KeyValue], revision: Option<u64>, keys_only: bool) {
        if self.json {
            self.json(&json!({"kvs": kvs, "revision": revision}));
            return;
        }
        if keys_only {
            for kv in kvs {
                println!("{}", kv.key);
            }
            return;
        }
        let rows: Vec<Vec<String>> = kvs
            .iter()
            .map(|kv| {
                vec![
                    kv.key.clone(),
                    kv.mod_revision.to_string(),
                    kv.version.to_string(),
                    opt(kv.lease),
                    show(&kv.value),
                ]
            })
            .collect();
        table(&["KEY", "MOD_REV", "VERSION", "LEASE", "VALUE"], &rows);
    }

    pub fn deleted(&self, deleted: u64, revision: u64) {
        if !self.json(&json!({"deleted": deleted, "revision": revision})) {
            println!("deleted {deleted} revision {revision}");
        }
    }

    pub fn txn(&self, r: &TxnResponse) {
        if self.json(r) {
            return;
        }
        println!(
            "{} revision {}",
            if r.succeeded { "SUCCEEDED" } else { "FAILED" },
            r.revision
        );
        for res in &r.results {
            match res {
                TxnOpResult::Put { revision, .. } => println!("put revision {revision}"),
                TxnOpResult::Get { key, kv: Some(kv) } => {
                    println!("get {key} = {}", show(&kv.value))
                }
                TxnOpResult::Get { key, kv: None } => println!("get {key} (missing)"),
                TxnOpResult::Delete { deleted, .. } => println!("delete deleted {deleted}"),
                TxnOpResult::DeletePrefix { deleted } => {
                    println!("delete-prefix deleted {deleted}")
                }
            }
        }
    }

    pub fn change(&self, c: &WatchChange) {
        if self.json(c) {
            return;
        }
        for e in &c.events {
            match (&e.kind, &e.kv) {
                (EventType::Put, Some(kv)) => {
                    println!("{} PUT {} {}", c.revision, e.key, show(&kv.value))
                }
                (EventType::Put, None) => println!("{} PUT {}", c.revision, e.key),
                (EventType::Delete, _) => println!("{} DELETE {}", c.revision, e.key),
            }
        }
    }

    pub fn status(&self, s: &ClusterStatus) {
        if self.json(s) {
            return;
        }
        println!("node:        {} ({})", s.node_id, s.role);
        println!("leader:      {}", opt(s.leader.as_ref()));
        println!("cluster:     {}", opt(s.cluster_id.as_ref()));
        println!("term:        {}", s.term);
        println!("revision:    {}", s.revision);
        println!(
            "log:         last {} committed {} applied {}",
            opt(s.last_log_index),
            opt(s.commit_index),
            opt(s.applied_index)
        );
        println!("membership:  version {}", opt(s.membership_version));
        println!("version:     {}", s.version);
        println!();
        self.member_table(s);
    }

    fn member_table(&self, s: &ClusterStatus) {
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| {
                let leads = s.leader.as_deref() == Some(m.node_id.as_str());
                vec![
                    m.node_id.clone(),
                    m.address.clone(),
                    if leads {
                        format!("{} (leader)", m.role)
                    } else {
                        m.role.clone()
                    },
                    opt(m.lag),
                ]
            })
            .collect();
        table(&["NODE", "ADDRESS", "ROLE", "LAG"], &rows);
    }

    pub fn members(&self, s: &ClusterStatus) {
        if !self.json(&json!({"members": s.members, "leader": s.leader, "membershipVersion": s.membership_version}))
        {
            self.member_table(s);
        }
    }

    pub fn membership(&self, r: &membership::MembershipReply) {
        if !self.json(r) {
            println!(
                "{} (membership version {})",
                r.message,
                opt(r.membership_version)
            );
        }
    }

    pub fn transfer(&self, r: &membership::TransferReply) {
        if !self.json(r) {
            println!("leader is now {} (term {})", r.leader, r.term);
        }
    }

    pub fn version(&self, v: &VersionInfo) {
        let client = env!("CARGO_PKG_VERSION");
        if !self.json(&json!({"client": client, "node": v})) {
            println!("concordancectl {client}");
            println!("node {}: concordance {}", v.node_id, v.version);
            println!(
                "commands: node supports {}, cluster enabled {}",
                v.command_version, v.cluster_command_version
            );
        }
    }

    pub fn lease_granted(&self, r: &LeaseGrantResponse) {
        if !self.json(r) {
            println!("lease {} granted, ttl {} ms", r.id, r.ttl_ms);
        }
    }

    pub fn lease_kept(&self, r: &LeaseKeepAliveResponse) {
        if !self.json(r) {
            println!("lease {} kept alive, ttl {} ms", r.id, r.ttl_ms);
        }
    }

    pub fn lease_revoked(&self, r: &LeaseRevokeResponse) {
        if !self.json(r) {
            println!(
                "lease {} revoked, {} keys deleted, revision {}",
                r.id, r.deleted, r.revision
            );
        }
    }

    pub fn leases(&self, r: &LeaseListResponse) {
        if self.json(r) {
            return;
        }
        let rows: Vec<Vec<String>> = r
            .leases
            .iter()
            .map(|l| {
                vec![
                    l.id.to_string(),
                    l.ttl_ms.to_string(),
                    l.remaining_ms.to_string(),
                    l.keys.len().to_string(),
                ]
            })
            .collect();
        table(&["ID", "TTL_MS", "REMAINING_MS", "KEYS"], &rows);
    }

    pub fn lease(&self, l: &LeaseInfo) {
        if self.json(l) {
            return;
        }
        println!(
            "lease {}: ttl {} ms, {} ms left",
            l.id, l.ttl_ms, l.remaining_ms
        );
        for k in &l.keys {
            println!("  {k}");
        }
    }

    pub fn locked(&self, r: &LockResponse) {
        if !self.json(r) {
            println!(
                "locked {} (fencing token {}, lease {})",
                r.name, r.fencing_token, r.lease
            );
        }
    }

    pub fn unlocked(&self, name: &str) {
        if !self.json {
            println!("released {name}");
        }
    }

    pub fn leading(&self, r: &CampaignResponse) {
        if !self.json(r) {
            println!(
                "leading {} (revision {}, lease {})",
                r.name, r.leader.revision, r.leader.lease
            );
        }
    }

    pub fn election_leader(&self, r: &ElectionLeaderResponse) {
        if self.json(r) {
            return;
        }
        match &r.leader {
            Some(l) => println!(
                "{}: {} (revision {}, lease {})",
                r.name,
                show(&l.value),
                l.revision,
                l.lease
            ),
            None => println!("{}: no leader", r.name),
        }
    }

    pub fn resigned(&self, r: &ResignResponse) {
        if !self.json(r) {
            println!(
                "{} (revision {})",
                if r.resigned {
                    "resigned"
                } else {
                    "was not a candidate"
                },
                r.revision
            );
        }
    }
}
