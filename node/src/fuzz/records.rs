//! Stored records: the envelope of every value the node reads back from its database
//! (`store::codec`), decoded as each kind of record and then converted as the node converts it.

use std::sync::Arc;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::json;

use super::Seed;
use super::config;
use super::inputs;
use super::measure;
use super::reach;
use super::within;
use crate::store::codec;
use crate::store::codec::RecordKind;
use crate::store::records::*;
use crate::store::types::entry_from_record;
use crate::store::types::stored_membership_from_record;
use crate::store::types::vote_from_record;

pub(super) fn log_id(index: u64) -> LogIdRecord {
    LogIdRecord {
        term: 3,
        leader: 1,
        index,
    }
}

/// A three-member membership, as a log entry or a snapshot carries it.
pub(super) fn membership() -> StoredMembershipRecord {
    StoredMembershipRecord {
        log_id: Some(log_id(2)),
        membership: MembershipRecord {
            configs: vec![vec![1, 2, 3]],
            nodes: (1..=3)
                .map(|id| {
                    (
                        id,
                        Member {
                            name: format!("n{id}"),
                            addr: format!("127.0.0.1:{}", 7000 + id),
                        },
                    )
                })
                .collect(),
        },
    }
}

pub(super) fn key_record() -> KeyRecord {
    KeyRecord {
        value: json!({"owner": "a", "n": [1, 2.5, null, true], "s": "\u{e9}\"\\"}),
        create_revision: 4,
        mod_revision: 9,
        version: 3,
        lease: Some(77),
        value_omitted: false,
    }
}

pub(super) fn command(op: Operation) -> Command {
    Command {
        op,
        idempotency_key: Some("req-1".into()),
        proposed_at_ms: 1_700_000_000_000,
    }
}

/// Log entries of every payload, commands of several operations among them.
pub(super) fn entries() -> Vec<LogEntryRecord> {
    let put = Operation::Put {
        key: "a/b".into(),
        value: json!([1, "x"]),
        lease: Some(5),
    };
    let txn = Operation::Txn {
        compare: vec![CompareRecord {
            key: "a".into(),
            target: CompareTargetRecord::ModRevision,
            op: CompareOpRecord::Less,
            value: json!(4),
        }],
        success: vec![
            TxnOpRecord::Put {
                key: "a".into(),
                value: json!("v"),
                lease: None,
            },
            TxnOpRecord::DeletePrefix {
                prefix: "p/".into(),
            },
        ],
        failure: vec![TxnOpRecord::Get { key: "a".into() }],
    };
    let payloads = [
        PayloadRecord::Blank,
        PayloadRecord::Command {
            command: command(put),
        },
        PayloadRecord::Command {
            command: command(txn),
        },
        PayloadRecord::Command {
            command: command(Operation::ExpireLeases { ids: vec![1, 2] }),
        },
        PayloadRecord::Command {
            command: command(Operation::EndLeases { ids: vec![3] }),
        },
        PayloadRecord::Command {
            command: command(Operation::CheckState {}),
        },
        PayloadRecord::Command {
            command: command(Operation::RaiseAlarm {
                member: 7,
                alarm: AlarmKind::Corrupt,
                detail: "its state hash differed".into(),
            }),
        },
        PayloadRecord::Command {
            command: command(Operation::RaiseAlarm {
                member: 7,
                alarm: AlarmKind::NoSpace,
                detail: "over its quota".into(),
            }),
        },
        PayloadRecord::Command {
            command: command(Operation::DisarmAlarm {
                member: 7,
                alarm: AlarmKind::NoSpace,
            }),
        },
        PayloadRecord::Command {
            command: command(Operation::CompactHistory { revision: 12 }),
        },
        PayloadRecord::Membership {
            membership: membership().membership,
        },
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| LogEntryRecord {
            log_id: log_id(10 + i as u64),
            payload,
        })
        .collect()
}

pub(super) fn applied_state() -> AppliedStateRecord {
    AppliedStateRecord {
        last_applied: Some(log_id(14)),
        membership: Some(membership()),
        revision: 9,
        compacted_revision: 2,
        command_version: Some(4),
        alarms: vec![AlarmRecord {
            member: 7,
            kind: AlarmKind::Corrupt,
            detail: "its state hash differed".into(),
        }],
    }
}

fn seeds() -> Arc<Vec<Seed>> {
    static SEEDS: OnceLock<Arc<Vec<Seed>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let mut seeds = Vec::new();
            let mut add = |name: &str, bytes: Vec<u8>| {
                seeds.push(Seed {
                    name: name.into(),
                    bytes,
                    lengths: Vec::new(),
                })
            };
            let identity = IdentityRecord {
                raft_id: 0x1234_5678_9abc,
                name: "n1".into(),
                cluster_uuid: Some("6f1c2e0a-0000-4000-8000-000000000001".into()),
                created_at_ms: 1_700_000_000_000,
            };
            add("identity", codec::encode(RecordKind::Identity, &identity));
            let vote = VoteRecord {
                term: 3,
                node: 1,
                committed: true,
            };
            add("vote", codec::encode(RecordKind::Vote, &vote));
            for (i, entry) in entries().iter().enumerate() {
                add(
                    &format!("log entry {i}"),
                    codec::encode(RecordKind::LogEntry, entry),
                );
            }
            add(
                "log pointer",
                codec::encode(RecordKind::LogPointer, &log_id(14)),
            );
            add(
                "applied state",
                codec::encode(RecordKind::AppliedState, &applied_state()),
            );
            add("key", codec::encode(RecordKind::KeyValue, &key_record()));
            let event = EventRecord {
                revision: 9,
                key: "a/b".into(),
                kind: EventKind::Put,
                kv: Some(key_record()),
            };
            add("event", codec::encode(RecordKind::Event, &event));
            let lease = LeaseRecord {
                id: 77,
                ttl_ms: 5000,
                expires_at_ms: 1_700_000_005_000,
                keys: vec!["a/b".into(), "c".into()],
                owner: Some("agent-a17".into()),
            };
            add("lease", codec::encode(RecordKind::Lease, &lease));
            let answer = IdempotencyRecord {
                response: Response::Txn {
                    succeeded: true,
                    revision: 9,
                    results: vec![TxnOpResultRecord::Get {
                        key: "a".into(),
                        kv: Some(key_record()),
                    }],
                },
                applied_at_ms: 1_700_000_000_100,
            };
            add(
                "idempotency answer",
                codec::encode(RecordKind::Idempotency, &answer),
            );
            let meta = SnapshotMetaRecord {
                last_log_id: Some(log_id(14)),
                membership: membership(),
                file: "snap-1.snap".into(),
                size: 4096,
            };
            add(
                "snapshot meta",
                codec::encode(RecordKind::SnapshotMeta, &meta),
            );
            Arc::new(seeds)
        })
        .clone()
}

/// The envelope's checksum computed again over the body as it now is.
fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() >= 6 {
        let crc = crc32fast::hash(&bytes[6..]);
        bytes[2..6].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Decodes `bytes` as every kind of record and converts what decodes as the node would; how
/// many kinds it decoded as.
fn decode_all(bytes: &[u8]) -> usize {
    fn ok<T>(r: Result<T, codec::DecodeError>) -> Option<T> {
        r.ok()
    }
    let mut decoded = 0;
    decoded += ok(codec::decode::<IdentityRecord>(RecordKind::Identity, bytes)).is_some() as usize;
    if let Some(v) = ok(codec::decode::<VoteRecord>(RecordKind::Vote, bytes)) {
        let _ = vote_from_record(&v);
        decoded += 1;
    }
    if let Some(e) = ok(codec::decode::<LogEntryRecord>(RecordKind::LogEntry, bytes)) {
        let _ = entry_from_record(e);
        decoded += 1;
    }
    decoded += ok(codec::decode::<LogIdRecord>(RecordKind::LogPointer, bytes)).is_some() as usize;
    if let Some(a) = ok(codec::decode::<AppliedStateRecord>(
        RecordKind::AppliedState,
        bytes,
    )) {
        if let Some(m) = &a.membership {
            let _ = stored_membership_from_record(m);
        }
        decoded += 1;
    }
    decoded += ok(codec::decode::<KeyRecord>(RecordKind::KeyValue, bytes)).is_some() as usize;
    decoded += ok(codec::decode::<EventRecord>(RecordKind::Event, bytes)).is_some() as usize;
    decoded += ok(codec::decode::<LeaseRecord>(RecordKind::Lease, bytes)).is_some() as usize;
    decoded += ok(codec::decode::<IdempotencyRecord>(
        RecordKind::Idempotency,
        bytes,
    ))
    .is_some() as usize;
    if let Some(m) = ok(codec::decode::<SnapshotMetaRecord>(
        RecordKind::SnapshotMeta,
        bytes,
    )) {
        let _ = stored_membership_from_record(&m.membership);
        decoded += 1;
    }
    decoded
}

/// The target starts from valid records: each seed decodes, as its own kind only.
#[test]
fn every_seed_decodes_as_its_kind() {
    for seed in seeds().iter() {
        assert_eq!(decode_all(&seed.bytes), 1, "seed {}", seed.name);
    }
}

/// Most inputs get past the envelope's checks (version, kind, checksum) to the JSON decoder,
/// and some of those still decode.
#[test]
fn inputs_reach_the_json_decoder() {
    let past_envelope = |b: &[u8]| {
        b.len() >= 6
            && b[0] == codec::FORMAT_VERSION
            && b[2..6] == crc32fast::hash(&b[6..]).to_le_bytes()
    };
    let strategy = || inputs(seeds(), Some(fix_checksum));
    let reached = reach(strategy(), 1000, |case| past_envelope(&case.bytes));
    let decoded = reach(strategy(), 1000, |case| decode_all(&case.bytes) > 0);
    eprintln!("records: of 1000 inputs, {reached} reached the JSON decoder, {decoded} decoded");
    assert!(
        reached >= 200 && decoded >= 30,
        "{reached} reached, {decoded} decoded"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stored_records_decode_or_fail_cleanly(case in inputs(seeds(), Some(fix_checksum))) {
        let (_, usage) = measure(|| decode_all(&case.bytes));
        within(usage, case.bytes.len(), 0)?;
    }
}
