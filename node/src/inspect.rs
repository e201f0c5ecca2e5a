//! `concordance inspect`: what a data dir holds, without starting a node.

use std::path::Path;

use serde::Serialize;

use crate::store::CF_META;
use crate::store::KEY_PURGED;
use crate::store::KEY_VOTE;
use crate::store::Store;
use crate::store::codec::RecordKind;
use crate::store::records::LogIdRecord;
use crate::store::records::VoteRecord;
use crate::store::snapshot;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub node_id: String,
    pub raft_id: u64,
    pub cluster_uuid: Option<String>,
    pub vote: Option<VoteRecord>,
    pub last_log: Option<LogIdRecord>,
    pub purged: Option<LogIdRecord>,
    pub last_applied: Option<LogIdRecord>,
    pub revision: u64,
    pub snapshot: Option<LogIdRecord>,
    pub members: Vec<String>,
    /// The alarms raised, as `<kind> on <member>: <detail>`.
    pub alarms: Vec<String>,
    /// Bytes the data dir takes on disk, as `--quota-bytes` counts them.
    pub disk_used_bytes: u64,
}

pub fn inspect(dir: &Path) -> Result<Inspection, crate::error::BoxError> {
    let store = Store::open_read_only(dir)?;
    let identity = store
        .identity()?
        .ok_or_else(|| format!("{} has a database but no node identity", dir.display()))?;
    let vote: Option<VoteRecord> = store.get_record(CF_META, KEY_VOTE, RecordKind::Vote, "vote")?;
    let purged: Option<LogIdRecord> =
        store.get_record(CF_META, KEY_PURGED, RecordKind::LogPointer, "purged log id")?;
    let last_log = match store.last_log_entry()? {
        Some(last) => Some(last),
        None => match crate::store::log_file::last_entry_read_only(&store.log_dir())? {
            Some((_, bytes)) => Some(
                crate::store::codec::decode::<crate::store::records::LogEntryRecord>(
                    RecordKind::LogEntry,
                    &bytes,
                )?
                .log_id,
            ),
            None => None,
        },
    }
    .or(purged);
    let applied = store.applied_state()?;
    let members = applied
        .membership
        .as_ref()
        .map(|m| {
            let voters: Vec<u64> = m.membership.configs.iter().flatten().copied().collect();
            m.membership
                .nodes
                .iter()
                .map(|(id, n)| {
                    let role = if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    };
                    format!("{} ({role}, {})", n.name, n.addr)
                })
                .collect()
        })
        .unwrap_or_default();
    let name_of = |id: u64| {
        applied
            .membership
            .as_ref()
            .and_then(|m| m.membership.nodes.iter().find(|(n, _)| *n == id))
            .map_or_else(|| format!("{id:016x}"), |(_, n)| n.name.clone())
    };
    let alarms = applied
        .alarms
        .iter()
        .map(|a| format!("{} on {}: {}", a.kind.as_str(), name_of(a.member), a.detail))
        .collect();
    Ok(Inspection {
        node_id: identity.name,
        raft_id: identity.raft_id,
        cluster_uuid: identity.cluster_uuid,
        vote,
        last_log,
        purged,
        last_applied: applied.last_applied,
        revision: applied.revision,
        snapshot: snapshot::current_meta(&store)?.and_then(|m| m.last_log_id),
        members,
        alarms,
        disk_used_bytes: crate::space::bytes_on_disk(dir),
    })
}

pub fn run(dir: &Path, json: bool) -> Result<(), crate::error::BoxError> {
    let i = inspect(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    let fmt = |l: &Option<LogIdRecord>| {
        l.map_or("none".to_string(), |l| {
            format!("term {} index {}", l.term, l.index)
        })
    };
    println!("node id:       {}", i.node_id);
    println!("raft id:       {:016x}", i.raft_id);
    println!(
        "cluster uuid:  {}",
        i.cluster_uuid
            .as_deref()
            .unwrap_or("none (never joined a cluster)")
    );
    println!("last log:      {}", fmt(&i.last_log));
    println!("last applied:  {}", fmt(&i.last_applied));
    println!("snapshot:      {}", fmt(&i.snapshot));
    println!("revision:      {}", i.revision);
    println!(
        "members:       {}",
        if i.members.is_empty() {
            "none".into()
        } else {
            i.members.join(", ")
        }
    );
    println!(
        "alarms:        {}",
        if i.alarms.is_empty() {
            "none".into()
        } else {
            i.alarms.join("; ")
        }
    );
    println!("disk used:     {} bytes", i.disk_used_bytes);
    Ok(())
}
