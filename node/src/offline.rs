//! Offline tools on a stopped node's data dir: `recover` (quorum loss) and `restore` (from a
//! backup). Both leave a one-member cluster with a new cluster UUID, so the old cluster's
//! members can never mistake it for themselves; other nodes then join it with empty data dirs.

use std::path::Path;

use rocksdb::WriteBatch;
use rocksdb::WriteOptions;

use openraft::RaftLogReader;
use openraft::storage::RaftStateMachine;

use crate::clock::now_ms;
use crate::config::valid_name;
use crate::metrics::Metrics;
use crate::store::CF_APPLIED;
use crate::store::CF_LOG;
use crate::store::CF_META;
use crate::store::KEY_APPLIED;
use crate::store::KEY_COMMITTED;
use crate::store::KEY_PURGED;
use crate::store::KEY_VOTE;
use crate::store::LogStore;
use crate::store::StateMachine;
use crate::store::Store;
use crate::store::codec;
use crate::store::codec::RecordKind;
use crate::store::io_err;
use crate::store::records::IdentityRecord;
use crate::store::records::Member;
use crate::store::records::MembershipRecord;
use crate::store::records::StoredMembershipRecord;
use crate::store::records::VoteRecord;
use crate::store::snapshot;
use crate::store::u64_key;

use crate::error::BoxError;

/// Rewrites the applied state so that `identity` is the only voter, snapshots it, clears the
/// log and vote, and stamps a new cluster UUID. Returns the new UUID.
fn make_single_member(
    store: &Store,
    identity: &mut IdentityRecord,
    addr: &str,
) -> Result<String, BoxError> {
    let mut applied = store.applied_state()?;
    applied.membership = Some(StoredMembershipRecord {
        log_id: applied.last_applied,
        membership: MembershipRecord {
            configs: vec![vec![identity.raft_id]],
            nodes: vec![(
                identity.raft_id,
                Member {
                    name: identity.name.clone(),
                    addr: addr.to_string(),
                },
            )],
        },
    });
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    store
        .db()
        .put_cf_opt(
            store.cf(CF_APPLIED),
            KEY_APPLIED,
            codec::encode(RecordKind::AppliedState, &applied),
            &wo,
        )
        .map_err(io_err)?;
    snapshot::build(store)?;

    let mut wb = WriteBatch::default();
    wb.delete_range_cf(store.cf(CF_LOG), u64_key(0), u64_key(u64::MAX));
    wb.delete_cf(store.cf(CF_META), KEY_COMMITTED);
    match applied.last_applied {
        Some(last) => {
            wb.put_cf(
                store.cf(CF_META),
                KEY_PURGED,
                codec::encode(RecordKind::LogPointer, &last),
            );
            // Terms only grow: the next election must be above every entry kept.
            let vote = VoteRecord {
                term: last.term,
                node: identity.raft_id,
                committed: false,
            };
            wb.put_cf(
                store.cf(CF_META),
                KEY_VOTE,
                codec::encode(RecordKind::Vote, &vote),
            );
        }
        None => {
            wb.delete_cf(store.cf(CF_META), KEY_PURGED);
            wb.delete_cf(store.cf(CF_META), KEY_VOTE);
        }
    }
    store.db().write_opt(wb, &wo).map_err(io_err)?;
    // Every entry was applied above and the purged pointer now covers them.
    crate::store::log_file::remove_all(&store.log_dir())?;
    let uuid = uuid::Uuid::new_v4().to_string();
    identity.cluster_uuid = Some(uuid.clone());
    store.save_identity(identity)?;
    Ok(uuid)
}

/// `--force-new-cluster=<old id>`: `recover` at start, once. A data dir that no longer belongs
/// to the old cluster (already recovered) is left as it is.
pub fn force_new_cluster(dir: &Path, old_cluster: &str, advertise: &str) -> Result<(), BoxError> {
    if !dir.join("db").exists() {
        return Err(format!(
            "--force-new-cluster: {} holds no data to rebuild a cluster from",
            dir.display()
        )
        .into());
    }
    let current = {
        let store = Store::open(dir)?;
        store.identity()?.and_then(|i| i.cluster_uuid)
    };
    if current.as_deref() != Some(old_cluster) {
        tracing::warn!(
            "--force-new-cluster: this data dir belongs to cluster {}, not {old_cluster}; \
             already recovered, starting as it is",
            current.as_deref().unwrap_or("(none)")
        );
        return Ok(());
    }
    recover(dir, Some(advertise))
}

/// Applies every entry of the log beyond the applied state; returns how many. The survivor's
/// whole log becomes the new cluster's history (as etcd's force-new-cluster commits its whole
/// log): an entry this node holds but had not applied may be a write the old cluster
/// acknowledged, since the applied state is not fsynced and a node learns of a commit after
/// the leader. One never committed was never acknowledged either, so keeping it is allowed.
fn apply_whole_log(store: &Store) -> Result<u64, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut sm = StateMachine::open(store.clone(), Metrics::new())?;
        let mut log = LogStore::open(store.clone(), Metrics::new())?;
        let (applied, _) = sm.applied_state().await?;
        let mut next = applied.map_or(0, |l| l.index + 1);
        let mut n = 0;
        // A bounded run at a time: the log may hold many large entries.
        loop {
            let entries = log.try_get_log_entries(next..next + 1000).await?;
            let Some(first) = entries.first() else { break };
            if first.log_id.index != next {
                return Err(format!(
                    "the log jumps to index {} where the state machine needs {next}; the data dir is damaged",
                    first.log_id.index
                )
                .into());
            }
            next += entries.len() as u64;
            n += entries.len() as u64;
            let items = entries.into_iter().map(|e| Ok((e, None)));
            sm.apply(futures::stream::iter(items)).await?;
        }
        Ok::<u64, BoxError>(n)
    })
}

/// `concordance recover`: rebuild a one-member cluster from a surviving data dir.
pub fn recover(dir: &Path, advertise: Option<&str>) -> Result<(), BoxError> {
    let store = Store::open(dir).map_err(|e| {
        format!("{e}\n(is the node still running? stop it first: recover works on a stopped node's data dir)")
    })?;
    let mut identity = store
        .identity()?
        .ok_or_else(|| format!("{} holds no node identity", dir.display()))?;
    let before = store.applied_state()?.last_applied.map_or(0, |l| l.index);
    // The log first: the applied state may lag it by more than the membership (it is not
    // synced by itself), and the membership this node last knew is the log's.
    let caught_up = apply_whole_log(&store)?;
    let applied = store.applied_state()?;
    let old_addr = applied.membership.as_ref().and_then(|m| {
        m.membership
            .nodes
            .iter()
            .find(|(id, _)| *id == identity.raft_id)
            .map(|(_, n)| n.addr.clone())
    });
    let addr = advertise
        .map(str::to_string)
        .or(old_addr)
        .ok_or("this node is not in its last known membership; pass --advertise=<host:port>")?;
    let applied_index = applied.last_applied.map_or(0, |l| l.index);
    let old_cluster = identity.cluster_uuid.clone().unwrap_or_default();
    let uuid = make_single_member(&store, &mut identity, &addr)?;
    println!(
        "recovered {} as the only member of a new cluster {uuid}",
        identity.name
    );
    println!(
        "  kept: every write in this node's log, up to log index {applied_index} (revision {})",
        applied.revision
    );
    if caught_up > 0 {
        println!(
            "  entries {}..={applied_index} were in the log but not yet applied: applied now \
             (writes the old cluster acknowledged, or ones it never finished)",
            before + 1
        );
    }
    println!(
        "  also lost: any write the old cluster ({old_cluster}) committed on other members but never replicated here"
    );
    println!(
        "start it with its usual flags, then join new members with empty data dirs (--join={addr})"
    );
    Ok(())
}

/// `concordance restore`: a new data dir holding a backup, as a one-member cluster.
pub fn restore(backup: &Path, dir: &Path, name: &str, advertise: &str) -> Result<(), BoxError> {
    if !valid_name(name) {
        return Err(format!("--node-id {name:?} is not a valid name").into());
    }
    if dir.join("db").exists() {
        return Err(format!(
            "{} already holds data; restore needs an empty data dir",
            dir.display()
        )
        .into());
    }
    let meta = snapshot::verify(backup).map_err(|e| format!("backup {}: {e}", backup.display()))?;
    let store = Store::open(dir)?;
    let mut identity = IdentityRecord {
        raft_id: rand::random::<u64>().max(1),
        name: name.to_string(),
        cluster_uuid: None,
        created_at_ms: now_ms(),
    };
    store.save_identity(&identity)?;
    snapshot::load_file_into_state_machine(&store, backup, &meta)?;
    let uuid = make_single_member(&store, &mut identity, advertise)?;
    let applied = store.applied_state()?;
    println!(
        "restored {} (revision {}) into {} as node {name} of a new cluster {uuid}",
        backup.display(),
        applied.revision,
        dir.display()
    );
    Ok(())
}
