//! The reconcile decision as a table: observed state -> the one next step.

use concordance_client::{ClusterStatus, MemberStatus as RaftMember};
use concordance_operator::crd::{
    ConcordanceClusterSpec, ConcordanceClusterStatus, PendingAction, PendingKind, StorageSpec,
};
use concordance_operator::decide::{
    Action, DataState, Observed, ObservedMember, PodPhase, PodState, decide, summarize,
};

const OLD: &str = "concordance:1";
const NEW: &str = "concordance:2";
const ID: &str = "0b6c3f4e-2a1d-4c8e-9f00-000000000001";
const VERSION: u64 = 10;

fn n(i: usize) -> String {
    format!("c-{i}")
}

fn spec(replicas: i32) -> ConcordanceClusterSpec {
    serde_json::from_value(serde_json::json!({
        "replicas": replicas, "image": OLD, "storage": {"size": "1Gi"}
    }))
    .unwrap()
}

fn raft_member(name: &str, voter: bool) -> RaftMember {
    RaftMember {
        node_id: name.to_string(),
        address: format!("{name}.c-peers.ns.svc.cluster.local:7000"),
        role: if voter { "voter" } else { "learner" }.to_string(),
        voter,
        lag: Some(0),
        matched_index: Some(100),
    }
}

fn member(name: &str) -> ObservedMember {
    ObservedMember {
        name: name.to_string(),
        pod: Some(PodState {
            phase: PodPhase::Running,
            ready: true,
            image: OLD.to_string(),
            unready_seconds: 0,
            version: Some("0.1.0".to_string()),
            force_new_cluster: false,
        }),
        volume: true,
        data: DataState::Ours,
    }
}

/// Nothing created yet.
fn empty(replicas: i32) -> Observed {
    Observed {
        name: "c".to_string(),
        generation: Some(1),
        spec: spec(replicas),
        status: ConcordanceClusterStatus::default(),
        secrets_exist: true,
        services_exist: true,
        pdb_exists: true,
        members: vec![],
        cluster: None,
    }
}

/// `size` ready voters `c-0..`, `c-0` leading, status up to date, `replicas` wanted.
fn healthy(size: usize, replicas: i32) -> Observed {
    let mut o = empty(replicas);
    o.members = (0..size).map(|i| member(&n(i))).collect();
    o.cluster = Some(ClusterStatus {
        node_id: n(0),
        cluster_id: Some(ID.to_string()),
        role: "leader".to_string(),
        leader: Some(n(0)),
        term: 3,
        last_log_index: Some(100),
        commit_index: Some(100),
        applied_index: Some(100),
        revision: 50,
        membership_version: Some(VERSION),
        members: (0..size).map(|i| raft_member(&n(i), true)).collect(),
        version: "0.1.0".to_string(),
    });
    o.status.cluster_id = Some(ID.to_string());
    sync(o)
}

/// Record the observed summary, as a previous reconcile would have.
fn sync(mut o: Observed) -> Observed {
    let s = summarize(&o);
    o.status.observed_generation = s.observed_generation;
    o.status.ready_members = s.ready_members;
    o.status.leader = s.leader;
    o.status.membership_version = s.membership_version;
    o.status.members = s.members;
    o
}

fn with(mut o: Observed, f: impl FnOnce(&mut Observed)) -> Observed {
    f(&mut o);
    o
}

fn m<'a>(o: &'a mut Observed, name: &str) -> &'a mut ObservedMember {
    if !o.members.iter().any(|x| x.name == name) {
        o.members.push(ObservedMember {
            name: name.to_string(),
            pod: None,
            volume: false,
            data: DataState::Unknown,
        });
    }
    o.members.iter_mut().find(|x| x.name == name).unwrap()
}

fn pod<'a>(o: &'a mut Observed, name: &str) -> &'a mut PodState {
    m(o, name).pod.as_mut().unwrap()
}

fn unready(o: &mut Observed, name: &str, seconds: i64) {
    let p = pod(o, name);
    p.ready = false;
    p.unready_seconds = seconds;
}

fn raft(o: &mut Observed) -> &mut ClusterStatus {
    o.cluster.as_mut().unwrap()
}

fn set_members(o: &mut Observed, members: &[(&str, bool)], version: u64) {
    let c = raft(o);
    c.members = members.iter().map(|(n, v)| raft_member(n, *v)).collect();
    c.membership_version = Some(version);
}

fn pending(o: &mut Observed, kind: PendingKind, member: &str, image: Option<&str>) {
    o.status.pending_action = Some(PendingAction {
        kind,
        member: member.to_string(),
        expected_membership_version: Some(VERSION),
        image: image.map(str::to_string),
        started: None,
    });
}

enum Expect {
    Is(Action),
    /// A `WaitFor` whose reason contains the text.
    Wait(&'static str),
    /// A `ClearPending` whose reason contains the text.
    Clear(&'static str),
}
use Expect::{Clear, Is, Wait};

fn remove(name: &str) -> Expect {
    Is(Action::RemoveMember {
        name: name.to_string(),
        expected_version: VERSION,
    })
}

fn restart(name: &str) -> Expect {
    Is(Action::RestartMemberWithImage {
        name: name.to_string(),
        image: NEW.to_string(),
    })
}

fn create_pod(name: &str) -> Expect {
    Is(Action::CreatePod {
        name: name.to_string(),
    })
}

fn delete_all(name: &str) -> Expect {
    Is(Action::DeletePodAndVolume {
        name: name.to_string(),
    })
}

fn upgrading(size: usize) -> Observed {
    with(healthy(size, size as i32), |o| {
        o.spec.image = NEW.to_string()
    })
}

fn cases() -> Vec<(&'static str, Observed, Expect)> {
    vec![
        // Groundwork and bootstrap.
        (
            "secrets first",
            with(empty(3), |o| o.secrets_exist = false),
            Is(Action::CreateSecrets),
        ),
        (
            "then services",
            with(empty(3), |o| o.services_exist = false),
            Is(Action::CreateServices),
        ),
        (
            "then the disruption budget",
            with(empty(3), |o| o.pdb_exists = false),
            Is(Action::CreatePdb),
        ),
        (
            "fresh cluster: bootstrap the first member",
            empty(3),
            Is(Action::BootstrapFirstMember { name: n(0) }),
        ),
        (
            "node reports an id that is not recorded: record it",
            with(healthy(1, 3), |o| o.status.cluster_id = None),
            Is(Action::RecordClusterId {
                cluster_id: ID.to_string(),
            }),
        ),
        (
            "volumes but no recorded id: never bootstrap over them",
            with(empty(3), |o| m(o, "c-0").volume = true),
            Wait("refusing to bootstrap"),
        ),
        (
            "first member loses its volume after bootstrap: replaced, never bootstrapped again",
            with(healthy(3, 3), |o| {
                m(o, "c-0").volume = false;
                m(o, "c-0").pod = None;
                raft(o).leader = Some(n(1));
            }),
            remove("c-0"),
        ),
        (
            "a one-member cluster that lost its only volume waits for a person",
            with(healthy(1, 1), |o| m(o, "c-0").data = DataState::Empty),
            Wait("only voter"),
        ),
        // Growing one member at a time.
        (
            "one of three: add the next member",
            healthy(1, 3),
            Is(Action::AddMember { name: n(1) }),
        ),
        (
            "a learner catching up: wait before the next",
            with(healthy(2, 3), |o| {
                set_members(o, &[("c-0", true), ("c-1", false)], VERSION);
                unready(o, "c-1", 20);
            }),
            Wait("learner c-1"),
        ),
        (
            "a learner unready for long is catching up, not replaced",
            with(healthy(2, 3), |o| {
                set_members(o, &[("c-0", true), ("c-1", false)], VERSION);
                unready(o, "c-1", 10_000);
            }),
            Wait("learner c-1"),
        ),
        (
            "a voter not ready yet: wait before adding",
            with(healthy(3, 5), |o| unready(o, "c-2", 5)),
            Wait("c-2 to be ready"),
        ),
        // Steady state.
        (
            "healthy and recorded: nothing to write",
            healthy(3, 3),
            Is(Action::Nothing),
        ),
        (
            "healthy, status behind: update it",
            with(healthy(3, 3), |o| o.status.ready_members = 1),
            Is(Action::UpdateStatus),
        ),
        (
            "briefly unready voter: nothing but the status",
            sync(with(healthy(3, 3), |o| unready(o, "c-2", 30))),
            Is(Action::Nothing),
        ),
        // Replacement.
        (
            "pod lost, volume intact: the same member comes back",
            with(healthy(3, 3), |o| m(o, "c-1").pod = None),
            create_pod("c-1"),
        ),
        (
            "pod finished: recreated as the same member",
            with(healthy(3, 3), |o| pod(o, "c-1").phase = PodPhase::Finished),
            Is(Action::DeletePod { name: n(1) }),
        ),
        (
            "volume lost: removed from Raft first",
            with(healthy(3, 3), |o| {
                m(o, "c-1").volume = false;
                unready(o, "c-1", 5);
            }),
            remove("c-1"),
        ),
        (
            "foreign data: replaced",
            with(healthy(3, 3), |o| {
                m(o, "c-2").data = DataState::Foreign;
                unready(o, "c-2", 5);
            }),
            remove("c-2"),
        ),
        (
            "empty data: replaced",
            with(healthy(3, 3), |o| {
                m(o, "c-2").data = DataState::Empty;
                unready(o, "c-2", 5);
            }),
            remove("c-2"),
        ),
        (
            "voter unready past the limit while quorum holds: replaced",
            with(healthy(3, 3), |o| unready(o, "c-2", 300)),
            remove("c-2"),
        ),
        (
            "replacing a ready member with bad data would lose quorum: wait",
            with(healthy(3, 3), |o| {
                m(o, "c-1").data = DataState::Foreign;
                unready(o, "c-2", 5);
            }),
            Wait("would lose quorum"),
        ),
        (
            "removed member: its pod and volume go next",
            with(healthy(3, 3), |o| {
                set_members(o, &[("c-0", true), ("c-2", true)], VERSION)
            }),
            delete_all("c-1"),
        ),
        (
            "replacement joins under a fresh name",
            with(healthy(3, 3), |o| {
                set_members(o, &[("c-0", true), ("c-2", true)], VERSION);
                o.members.retain(|x| x.name != "c-1");
            }),
            Is(Action::AddMember { name: n(3) }),
        ),
        // Quorum loss.
        (
            "two of three voters down: wait and say why",
            with(healthy(3, 3), |o| {
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
            }),
            Wait("quorum lost: 1 of 3 voters ready (down: c-1, c-2)"),
        ),
        (
            "quorum lost and a volume lost: no removal",
            with(healthy(3, 3), |o| {
                m(o, "c-1").volume = false;
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
            }),
            Wait("quorum lost"),
        ),
        (
            "quorum lost, recovery asked for: rebuild from that member",
            with(healthy(3, 3), |o| {
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
                o.spec.force_recover_from = Some(n(0));
            }),
            Is(Action::RecoverFrom { name: n(0) }),
        ),
        (
            "quorum lost again after a recovery the spec still asks for: it is not repeated",
            with(healthy(3, 3), |o| {
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
                o.spec.force_recover_from = Some(n(0));
                o.status.recovered_from = Some(n(0));
            }),
            Wait("already used"),
        ),
        (
            "a removal stalled by quorum loss waits for quorum",
            with(healthy(3, 3), |o| {
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
                pending(o, PendingKind::RemoveMember, "c-1", None);
            }),
            Wait("quorum to remove c-1"),
        ),
        (
            "a removal stalled by quorum loss gives way to an asked-for recovery",
            with(healthy(3, 3), |o| {
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
                pending(o, PendingKind::RemoveMember, "c-1", None);
                o.spec.force_recover_from = Some(n(0));
            }),
            Is(Action::RecoverFrom { name: n(0) }),
        ),
        (
            "an upgrade step stalled by quorum loss gives way to an asked-for recovery",
            with(healthy(3, 3), |o| {
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                o.spec.force_recover_from = Some(n(0));
            }),
            Is(Action::RecoverFrom { name: n(0) }),
        ),
        (
            "recovery from a member without data is refused",
            with(healthy(3, 3), |o| {
                unready(o, "c-1", 1000);
                unready(o, "c-2", 1000);
                raft(o).leader = None;
                o.spec.force_recover_from = Some(n(9));
            }),
            Wait("no volume"),
        ),
        (
            "every pod gone, volumes kept: pods come back as the same members",
            with(healthy(3, 3), |o| {
                o.cluster = None;
                for x in &mut o.members {
                    x.pod = None;
                }
            }),
            create_pod("c-0"),
        ),
        (
            "pods up but no member answers: wait and say so",
            with(healthy(3, 3), |o| o.cluster = None),
            Wait("no member answers cluster/status"),
        ),
        // Scaling down: Raft first, the leader last.
        (
            "five to three: the newest follower first",
            healthy(5, 3),
            remove("c-4"),
        ),
        (
            "scaling down takes an unready member first",
            with(healthy(5, 3), |o| unready(o, "c-1", 5)),
            remove("c-1"),
        ),
        (
            "scaling down leaves the leader last",
            with(healthy(5, 3), |o| raft(o).leader = Some(n(4))),
            remove("c-3"),
        ),
        // Rolling upgrade.
        (
            "image change: a follower first",
            upgrading(3),
            restart("c-1"),
        ),
        (
            "image change: an unready member first",
            with(upgrading(3), |o| unready(o, "c-2", 5)),
            restart("c-2"),
        ),
        (
            "image change: never a second voter down",
            with(upgrading(3), |o| {
                pod(o, "c-1").image = NEW.to_string();
                unready(o, "c-1", 5);
            }),
            Wait("c-1 to be ready"),
        ),
        (
            "image change: the leader last, after handing leadership to an upgraded follower",
            with(upgrading(3), |o| {
                pod(o, "c-1").image = NEW.to_string();
                pod(o, "c-2").image = NEW.to_string();
                raft(o).members[1].lag = Some(5_000);
            }),
            Is(Action::TransferLeadership {
                from: n(0),
                to: n(2),
            }),
        ),
        (
            "image change on a single member: restart in place",
            upgrading(1),
            restart("c-0"),
        ),
        (
            "upgrade finished: nothing",
            sync(with(upgrading(3), |o| {
                for x in &mut o.members {
                    x.pod.as_mut().unwrap().image = NEW.to_string();
                }
            })),
            Is(Action::Nothing),
        ),
        // Crash at each point of a recorded bootstrap.
        (
            "bootstrap recorded, crash before the pod",
            with(empty(3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None)
            }),
            create_pod("c-0"),
        ),
        (
            "bootstrap recorded, pod up, no id yet",
            with(empty(3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None);
                o.members.push(member("c-0"));
            }),
            Wait("c-0 to bootstrap"),
        ),
        (
            "bootstrap done, crash before recording the id",
            with(healthy(1, 3), |o| {
                o.status.cluster_id = None;
                pending(o, PendingKind::Bootstrap, "c-0", None);
            }),
            Is(Action::RecordClusterId {
                cluster_id: ID.to_string(),
            }),
        ),
        (
            "id recorded, crash before clearing the step",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None)
            }),
            Clear("bootstrapped"),
        ),
        // Crash at each point of adding a member.
        (
            "add recorded, crash before the pod",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None)
            }),
            create_pod("c-1"),
        ),
        (
            "add: pod up, not joined yet",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                o.members.push(member("c-1"));
            }),
            Wait("c-1 to join"),
        ),
        (
            "add: joined as a learner",
            with(healthy(2, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                set_members(o, &[("c-0", true), ("c-1", false)], VERSION + 1);
            }),
            Wait("learner c-1"),
        ),
        (
            "add: promoted, crash before clearing the step",
            with(healthy(2, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                raft(o).membership_version = Some(VERSION + 2);
            }),
            Clear("c-1 joined as a voter and is ready"),
        ),
        (
            "add: promoted, not ready yet (never replaced as a long-unready voter)",
            with(healthy(2, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                raft(o).membership_version = Some(VERSION + 2);
                unready(o, "c-1", 10_000);
            }),
            Wait("voter c-1 to be ready"),
        ),
        (
            "a name whose objects are still being deleted is never reused",
            with(healthy(2, 3), |o| {
                o.members.push(ObservedMember {
                    name: n(2),
                    pod: None,
                    volume: false,
                    data: DataState::Unknown,
                });
            }),
            Is(Action::AddMember { name: n(3) }),
        ),
        (
            "add: membership changed by someone else before the join: undo",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                o.members.push(member("c-1"));
                raft(o).membership_version = Some(VERSION + 1);
            }),
            delete_all("c-1"),
        ),
        (
            "add: membership changed, nothing created: dropped",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                raft(o).membership_version = Some(VERSION + 1);
            }),
            Clear("rolled back"),
        ),
        // Crash at each point of removing a member.
        (
            "remove recorded, crash before the call: call again with the same version",
            with(healthy(5, 3), |o| {
                pending(o, PendingKind::RemoveMember, "c-4", None)
            }),
            remove("c-4"),
        ),
        (
            "removed from Raft, crash before deleting the pod",
            with(healthy(5, 3), |o| {
                pending(o, PendingKind::RemoveMember, "c-4", None);
                set_members(
                    o,
                    &[("c-0", true), ("c-1", true), ("c-2", true), ("c-3", true)],
                    VERSION + 1,
                );
            }),
            delete_all("c-4"),
        ),
        (
            "removed and deleted, crash before clearing the step",
            with(healthy(4, 3), |o| {
                pending(o, PendingKind::RemoveMember, "c-4", None);
                raft(o).membership_version = Some(VERSION + 1);
            }),
            Clear("c-4 removed"),
        ),
        (
            "remove: membership changed by someone else first: rolled back",
            with(healthy(5, 3), |o| {
                pending(o, PendingKind::RemoveMember, "c-4", None);
                raft(o).membership_version = Some(VERSION + 1);
            }),
            Clear("rolled back"),
        ),
        // Crash at each point of a leadership transfer.
        (
            "transfer recorded, crash before the call: decided again",
            with(upgrading(3), |o| {
                pending(o, PendingKind::TransferLeadership, "c-1", None)
            }),
            Clear("deciding again"),
        ),
        (
            "transfer done, crash before clearing the step",
            with(upgrading(3), |o| {
                pending(o, PendingKind::TransferLeadership, "c-1", None);
                raft(o).leader = Some(n(1));
            }),
            Clear("leadership moved to c-1"),
        ),
        (
            "transfer under way: no leader yet",
            with(upgrading(3), |o| {
                pending(o, PendingKind::TransferLeadership, "c-1", None);
                raft(o).leader = None;
            }),
            Wait("a leader"),
        ),
        // Crash at each point of a restart onto a new image.
        (
            "restart recorded, crash before deleting the pod",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW))
            }),
            restart("c-1"),
        ),
        (
            "restart: pod deleted, crash before it is created again",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                m(o, "c-1").pod = None;
            }),
            create_pod("c-1"),
        ),
        (
            "restart: new pod not ready yet",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                pod(o, "c-1").image = NEW.to_string();
                unready(o, "c-1", 5);
            }),
            Wait("c-1 to be ready"),
        ),
        (
            "restart: ready on the new image, crash before clearing the step",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                pod(o, "c-1").image = NEW.to_string();
            }),
            Clear("c-1 runs concordance:2"),
        ),
        (
            "restart recorded, another voter went down meanwhile: rolled back",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                unready(o, "c-2", 5);
            }),
            Clear("rolled back"),
        ),
        // Crash at each point of a recovery.
        (
            "recovery recorded, others stopped, crash before the pod",
            with(healthy(3, 3), |o| {
                pending(o, PendingKind::Recover, "c-0", None);
                o.cluster = None;
                for x in &mut o.members {
                    x.pod = None;
                }
            }),
            create_pod("c-0"),
        ),
        (
            "recovery recorded, crash before the other members were stopped",
            with(healthy(3, 3), |o| {
                pending(o, PendingKind::Recover, "c-0", None);
                o.cluster = None;
            }),
            Is(Action::RecoverFrom { name: n(0) }),
        ),
        (
            "recovery recorded, others stopped, its own pod not yet in recovery mode",
            with(healthy(3, 3), |o| {
                pending(o, PendingKind::Recover, "c-0", None);
                o.cluster = None;
                for x in &mut o.members {
                    if x.name != "c-0" {
                        x.pod = None;
                    }
                }
            }),
            Is(Action::RecoverFrom { name: n(0) }),
        ),
        (
            "recovery pod running in recovery mode, no leader yet",
            with(healthy(3, 3), |o| {
                pending(o, PendingKind::Recover, "c-0", None);
                o.cluster = None;
                for x in &mut o.members {
                    if x.name != "c-0" {
                        x.pod = None;
                    }
                }
                pod(o, "c-0").force_new_cluster = true;
            }),
            Wait("new one-member cluster"),
        ),
        (
            "recovered under a new id, crash before recording it",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::Recover, "c-0", None);
                raft(o).cluster_id = Some("new-id".to_string());
            }),
            Is(Action::RecordClusterId {
                cluster_id: "new-id".to_string(),
            }),
        ),
        (
            "recovery recorded and running, crash before clearing the step",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::Recover, "c-0", None)
            }),
            Clear("recovered from c-0"),
        ),
    ]
}

#[test]
fn decision_table() {
    let mut failures = Vec::new();
    let cases = cases();
    for (name, observed, expected) in &cases {
        let got = decide(observed);
        let ok = match (expected, &got) {
            (Is(a), b) => a == b,
            (Wait(text), Action::WaitFor { reason }) => reason.contains(text),
            (Clear(text), Action::ClearPending { reason }) => reason.contains(text),
            _ => false,
        };
        if !ok {
            let want = match expected {
                Is(a) => format!("{a:?}"),
                Wait(t) => format!("WaitFor containing {t:?}"),
                Clear(t) => format!("ClearPending containing {t:?}"),
            };
            failures.push(format!("{name}:\n  expected {want}\n  got      {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn status_reports_each_member_version_and_image() {
    let o = with(healthy(3, 3), |o| {
        pod(o, "c-2").version = Some("0.2.0".to_string());
        pod(o, "c-2").image = NEW.to_string();
    });
    let s = summarize(&o);
    let c2 = s.members.iter().find(|m| m.name == "c-2").unwrap();
    assert_eq!(c2.version.as_deref(), Some("0.2.0"));
    assert_eq!(c2.image.as_deref(), Some(NEW));
    assert_eq!(s.ready_members, 3);
    assert_eq!(s.leader.as_deref(), Some("c-0"));
}

#[test]
fn membership_steps_are_recorded_before_they_are_taken() {
    let o = healthy(5, 3);
    let step = decide(&o);
    let record = step.to_pending(&o).expect("a removal is recorded first");
    assert_eq!(record.kind, PendingKind::RemoveMember);
    assert_eq!(record.member, "c-4");
    assert_eq!(record.expected_membership_version, Some(VERSION));
    assert_eq!(Action::UpdateStatus.to_pending(&o), None);
}

#[test]
fn spec_storage_is_required() {
    let spec: Result<ConcordanceClusterSpec, _> =
        serde_json::from_value(serde_json::json!({"replicas": 3, "image": OLD}));
    assert!(spec.is_err());
    let _ = StorageSpec {
        size: "1Gi".to_string(),
        storage_class_name: None,
    };
}

#[test]
fn conditions_follow_quorum_and_readiness() {
    use concordance_operator::decide::conditions;
    let status = |o: &Observed| -> Vec<(&'static str, bool)> {
        conditions(o, &decide(o))
            .iter()
            .map(|(t, s, _, _)| (*t, *s))
            .collect()
    };
    assert_eq!(
        status(&healthy(3, 3)),
        [
            ("Available", true),
            ("Progressing", false),
            ("Degraded", false)
        ]
    );
    assert_eq!(
        status(&healthy(1, 3)),
        [
            ("Available", true),
            ("Progressing", true),
            ("Degraded", true)
        ]
    );
    let lost = with(healthy(3, 3), |o| {
        unready(o, "c-1", 1000);
        unready(o, "c-2", 1000);
        raft(o).leader = None;
    });
    assert_eq!(
        status(&lost),
        [
            ("Available", false),
            ("Progressing", true),
            ("Degraded", true)
        ]
    );
}
