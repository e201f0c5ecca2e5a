//! The Raft type configuration over our records: what the log and the state machine hold, in
//! the Raft library's types, and the conversions between those and the stored records.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::EntryPayload;
use openraft::Membership;
use openraft::StoredMembership;
use openraft::impls::leader_id_adv::LeaderId;

use super::records::Command;
use super::records::LogEntryRecord;
use super::records::LogIdRecord;
use super::records::Member;
use super::records::MembershipRecord;
use super::records::PayloadRecord;
use super::records::Response;
use super::records::StoredMembershipRecord;
use super::records::VoteRecord;

openraft::declare_raft_types!(
    /// Concordance's Raft types: commands and responses are ours, node ids are random u64s,
    /// members carry the user-facing name and the address peers dial.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = Member,
);

pub type LogId = openraft::LogId<LeaderId<u64, u64>>;
pub type Vote = openraft::impls::Vote<LeaderId<u64, u64>>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type MembershipOf = Membership<u64, Member>;
pub type StoredMembershipOf = StoredMembership<LeaderId<u64, u64>, u64, Member>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

pub fn log_id_to_record(id: &LogId) -> LogIdRecord {
    LogIdRecord {
        term: id.leader_id.term,
        leader: id.leader_id.node_id,
        index: id.index,
    }
}

pub fn log_id_from_record(r: &LogIdRecord) -> LogId {
    LogId::new(
        LeaderId {
            term: r.term,
            node_id: r.leader,
        },
        r.index,
    )
}

pub fn vote_to_record(v: &Vote) -> VoteRecord {
    VoteRecord {
        term: v.leader_id.term,
        node: v.leader_id.node_id,
        committed: v.committed,
    }
}

pub fn vote_from_record(r: &VoteRecord) -> Vote {
    if r.committed {
        Vote::new_committed(r.term, r.node)
    } else {
        Vote::new(r.term, r.node)
    }
}

pub fn membership_to_record(m: &MembershipOf) -> MembershipRecord {
    MembershipRecord {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect(),
        nodes: m.nodes().map(|(id, n)| (*id, n.clone())).collect(),
    }
}

pub fn membership_from_record(r: &MembershipRecord) -> std::io::Result<MembershipOf> {
    let configs: Vec<BTreeSet<u64>> = r
        .configs
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, Member> = r.nodes.iter().cloned().collect();
    Membership::new(configs, nodes)
        .map_err(|e| std::io::Error::other(format!("membership record: {e}")))
}

pub fn stored_membership_to_record(m: &StoredMembershipOf) -> StoredMembershipRecord {
    StoredMembershipRecord {
        log_id: m.log_id().as_ref().map(log_id_to_record),
        membership: membership_to_record(m.membership()),
    }
}

pub fn stored_membership_from_record(
    r: &StoredMembershipRecord,
) -> std::io::Result<StoredMembershipOf> {
    Ok(StoredMembership::new(
        r.log_id.as_ref().map(log_id_from_record),
        membership_from_record(&r.membership)?,
    ))
}

pub fn entry_to_record(e: &Entry) -> LogEntryRecord {
    LogEntryRecord {
        log_id: log_id_to_record(&e.log_id),
        payload: match &e.payload {
            EntryPayload::Blank => PayloadRecord::Blank,
            EntryPayload::Normal(c) => PayloadRecord::Command { command: c.clone() },
            EntryPayload::Membership(m) => PayloadRecord::Membership {
                membership: membership_to_record(m),
            },
        },
    }
}

pub fn entry_from_record(r: LogEntryRecord) -> std::io::Result<Entry> {
    Ok(Entry {
        log_id: log_id_from_record(&r.log_id),
        payload: match r.payload {
            PayloadRecord::Blank => EntryPayload::Blank,
            PayloadRecord::Command { command } => EntryPayload::Normal(command),
            PayloadRecord::Membership { membership } => {
                EntryPayload::Membership(membership_from_record(&membership)?)
            }
        },
    })
}
