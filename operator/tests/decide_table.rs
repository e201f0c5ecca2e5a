//! The reconcile decision as a table: observed state -> the one next step, the objects kept,
//! the record written first, and the status conditions.

use std::collections::BTreeMap;

use concordance_client::{ClusterStatus, MemberStatus as RaftMember};
use concordance_operator::crd::{
    ConcordanceClusterSpec, ConcordanceClusterStatus, PendingAction, PendingKind, StorageSpec,
};
use concordance_operator::decide::{
    Action, CertificateState, DataState, MissingSecret, ObjectStep, Observed, ObservedMember,
    Owned, PodPhase, PodState, Presence, RENEW_BEFORE_SECONDS, TlsEvidence, TlsState, VolumeState,
    conditions, decide, min_available, objects, record, report, summarize, tls_in_effect,
};
use concordance_operator::keys::{Acceptance, Held, Key, KeyFile, KeysState, NextKeys, Phase};
use concordance_operator::resources::{KeyKind, StartMode, pod_hash};

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

/// A running, ready member on the starting spec.
fn member(name: &str) -> ObservedMember {
    ObservedMember {
        name: name.to_string(),
        pod: Some(PodState {
            phase: PodPhase::Running,
            ready: true,
            image: OLD.to_string(),
            pod_hash: Some(pod_hash(&spec(3), false)),
            age_seconds: 3600,
            unready_seconds: 0,
            version: Some("0.1.0".to_string()),
            force_new_cluster: false,
        }),
        volume: Some(VolumeState::bound("1Gi")),
        data: DataState::Ours,
    }
}

/// Nothing created yet but the owned objects.
fn empty(replicas: i32) -> Observed {
    Observed {
        name: "c".to_string(),
        generation: Some(1),
        spec: spec(replicas),
        status: ConcordanceClusterStatus::default(),
        objects: BTreeMap::from([
            (
                Owned::KeySecret(KeyKind::Admin),
                Presence::Ours { applied: true },
            ),
            (
                Owned::KeySecret(KeyKind::Agent),
                Presence::Ours { applied: true },
            ),
            (Owned::PeerService, Presence::Ours { applied: true }),
            (Owned::ClientService, Presence::Ours { applied: true }),
            (Owned::DisruptionBudget, Presence::Ours { applied: true }),
        ]),
        missing_secrets: vec![],
        volume_expansion: Some(false),
        members: vec![],
        cluster: None,
        paused: false,
        tls: TlsState::default(),
        keys: KeysState::default(),
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
        fenced: None,
        wall_clock_ms: 0,
        storage: None,
        alarms: Vec::new(),
    });
    o.status.cluster_id = Some(ID.to_string());
    sync(o)
}

/// Record the observed summary, as a previous reconcile would have.
fn sync(mut o: Observed) -> Observed {
    let s = summarize(&o);
    o.status.observed_generation = s.observed_generation;
    o.status.replicas = s.replicas;
    o.status.ready_members = s.ready_members;
    o.status.updated_members = s.updated_members;
    o.status.selector = s.selector;
    o.status.pod_hash = s.pod_hash;
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
            volume: None,
            data: DataState::Unknown,
        });
    }
    o.members.iter_mut().find(|x| x.name == name).unwrap()
}

fn pod<'a>(o: &'a mut Observed, name: &str) -> &'a mut PodState {
    m(o, name).pod.as_mut().unwrap()
}

fn volume<'a>(o: &'a mut Observed, name: &str) -> &'a mut VolumeState {
    m(o, name).volume.as_mut().unwrap()
}

fn unready(o: &mut Observed, name: &str, seconds: i64) {
    let p = pod(o, name);
    p.ready = false;
    p.unready_seconds = seconds;
}

/// The member's pod runs the current spec.
fn on_current_spec(o: &mut Observed, name: &str) {
    let (image, hash) = (o.spec.image.clone(), pod_hash(&o.spec, false));
    let p = pod(o, name);
    p.image = image;
    p.pod_hash = Some(hash);
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
        pod_hash: None,
        started: None,
    });
}

/// Quorum lost: two of three voters down, no leader.
fn two_down(o: &mut Observed) {
    unready(o, "c-1", 1000);
    unready(o, "c-2", 1000);
    raft(o).leader = None;
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
        stop_first: false,
    })
}

/// A removal of a member that cannot serve: its pod is stopped first.
fn remove_stopped(name: &str) -> Expect {
    Is(Action::RemoveMember {
        name: name.to_string(),
        expected_version: VERSION,
        stop_first: true,
    })
}

fn new_spec() -> ConcordanceClusterSpec {
    ConcordanceClusterSpec {
        image: NEW.to_string(),
        ..spec(3)
    }
}

/// A restart onto the new image.
fn restart(name: &str) -> Expect {
    Is(Action::RestartMember {
        name: name.to_string(),
        image: NEW.to_string(),
        pod_hash: pod_hash(&new_spec(), false),
    })
}

fn create_pod(name: &str, image: &str, mode: StartMode) -> Expect {
    Is(Action::CreatePod {
        name: name.to_string(),
        image: image.to_string(),
        mode,
    })
}

/// The pod of a member that comes back as itself.
fn resume(name: &str) -> Expect {
    create_pod(name, OLD, StartMode::Join)
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

/// A change of pod settings (resources) on a healthy cluster.
fn resized(size: usize) -> Observed {
    with(healthy(size, size as i32), |o| {
        o.spec.pod.resources = Some(
            serde_json::from_value(serde_json::json!({
                "requests": {"cpu": "500m", "memory": "1Gi"}
            }))
            .unwrap(),
        )
    })
}

fn restart_onto(o: &Observed, name: &str) -> Expect {
    Is(Action::RestartMember {
        name: name.to_string(),
        image: o.spec.image.clone(),
        pod_hash: pod_hash(&o.spec, false),
    })
}

fn cases() -> Vec<(&'static str, Observed, Expect)> {
    vec![
        // Groundwork and bootstrap.
        (
            "fresh cluster: bootstrap the first member",
            empty(3),
            Is(Action::Bootstrap { name: n(0) }),
        ),
        (
            "fresh cluster, objects not created yet: bootstrap (they are applied first)",
            with(empty(3), |o| {
                for p in o.objects.values_mut() {
                    *p = Presence::Missing;
                }
            }),
            Is(Action::Bootstrap { name: n(0) }),
        ),
        (
            "R15: a Service of the cluster's name that it does not own is refused, not adopted",
            with(empty(3), |o| {
                o.objects.insert(Owned::PeerService, Presence::Foreign);
            }),
            Wait("Service c-peers already exist(s) and do(es) not belong to this cluster"),
        ),
        (
            "R15: a foreign object stops a running cluster's steps too",
            with(healthy(3, 5), |o| {
                o.objects.insert(Owned::DisruptionBudget, Presence::Foreign);
            }),
            Wait("PodDisruptionBudget c already exist(s)"),
        ),
        (
            "a key Secret the spec names does not exist: wait and say which",
            with(empty(3), |o| {
                o.spec.admin_key_secret =
                    Some(serde_json::from_value(serde_json::json!({"name": "mine"})).unwrap());
                o.objects.remove(&Owned::KeySecret(KeyKind::Admin));
                o.missing_secrets = vec![MissingSecret {
                    name: "mine".into(),
                    without_key: None,
                    field: "spec.adminKeySecret",
                }];
            }),
            Wait("Secret mine (spec.adminKeySecret) named by the spec do(es) not exist"),
        ),
        (
            "the credentials Secret lacks the key the spec names: wait and say which",
            with(healthy(3, 3), |o| {
                o.spec.credentials_secret = Some(
                    serde_json::from_value(serde_json::json!({"name": "creds", "key": "file"}))
                        .unwrap(),
                );
                o.missing_secrets = vec![MissingSecret {
                    name: "creds".into(),
                    without_key: Some("file".into()),
                    field: "spec.credentialsSecret",
                }];
            }),
            Wait(
                "key file of Secret creds (spec.credentialsSecret) named by the spec do(es) not exist",
            ),
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
            with(empty(3), |o| {
                m(o, "c-0").volume = Some(VolumeState::bound("1Gi"))
            }),
            Wait("refusing to bootstrap"),
        ),
        (
            "first member loses its volume after bootstrap: replaced, never bootstrapped again",
            with(healthy(3, 3), |o| {
                m(o, "c-0").volume = None;
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
            resume("c-1"),
        ),
        (
            "paused: a lost pod is not brought back",
            with(healthy(3, 3), |o| {
                o.paused = true;
                m(o, "c-1").pod = None;
            }),
            Wait("paused"),
        ),
        (
            "paused: a recorded restart is neither finished nor rolled back",
            with(upgrading(3), |o| {
                o.paused = true;
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
            }),
            Wait("a recorded step stays recorded"),
        ),
        (
            "pod finished: recreated as the same member",
            with(healthy(3, 3), |o| pod(o, "c-1").phase = PodPhase::Finished),
            Is(Action::DeletePod { name: n(1) }),
        ),
        (
            "volume lost: removed from Raft first, its pod stopped before",
            with(healthy(3, 3), |o| {
                m(o, "c-1").volume = None;
                unready(o, "c-1", 5);
            }),
            remove_stopped("c-1"),
        ),
        (
            "foreign data: replaced",
            with(healthy(3, 3), |o| {
                m(o, "c-2").data = DataState::Foreign;
                unready(o, "c-2", 5);
            }),
            remove_stopped("c-2"),
        ),
        (
            "fenced by the corrupt alarm: replaced",
            with(healthy(3, 3), |o| {
                m(o, "c-2").data = DataState::Fenced;
                unready(o, "c-2", 5);
            }),
            remove_stopped("c-2"),
        ),
        (
            "empty data: replaced",
            with(healthy(3, 3), |o| {
                m(o, "c-2").data = DataState::Empty;
                unready(o, "c-2", 5);
            }),
            remove_stopped("c-2"),
        ),
        (
            "voter unready past the limit while quorum holds: replaced",
            with(healthy(3, 3), |o| unready(o, "c-2", 300)),
            remove_stopped("c-2"),
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
                two_down(o);
            }),
            Wait("quorum lost: 1 of 3 voters ready (down: c-1, c-2)"),
        ),
        (
            "quorum lost and a volume lost: no removal",
            with(healthy(3, 3), |o| {
                m(o, "c-1").volume = None;
                two_down(o);
            }),
            Wait("quorum lost"),
        ),
        (
            "quorum lost, recovery asked for: rebuild from that member",
            with(healthy(3, 3), |o| {
                two_down(o);
                o.spec.force_recover_from = Some(n(0));
            }),
            Is(Action::RecoverFrom {
                name: n(0),
                delete: vec![n(1), n(2), n(0)],
            }),
        ),
        (
            "quorum lost again after a recovery the spec still asks for: it is not repeated",
            with(healthy(3, 3), |o| {
                two_down(o);
                o.spec.force_recover_from = Some(n(0));
                o.status.recovered_from = Some(n(0));
            }),
            Wait("already used"),
        ),
        (
            "a removal stalled by quorum loss waits for quorum",
            with(healthy(3, 3), |o| {
                two_down(o);
                pending(o, PendingKind::RemoveMember, "c-1", None);
            }),
            Wait("quorum to remove c-1"),
        ),
        (
            "a removal stalled by quorum loss gives way to an asked-for recovery",
            with(healthy(3, 3), |o| {
                two_down(o);
                pending(o, PendingKind::RemoveMember, "c-1", None);
                o.spec.force_recover_from = Some(n(0));
            }),
            Is(Action::RecoverFrom {
                name: n(0),
                delete: vec![n(1), n(2), n(0)],
            }),
        ),
        (
            "an upgrade step stalled by quorum loss gives way to an asked-for recovery",
            with(healthy(3, 3), |o| {
                two_down(o);
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                o.spec.force_recover_from = Some(n(0));
            }),
            Is(Action::RecoverFrom {
                name: n(0),
                delete: vec![n(1), n(2), n(0)],
            }),
        ),
        (
            "recovery from a member without data is refused",
            with(healthy(3, 3), |o| {
                two_down(o);
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
            resume("c-0"),
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
            remove_stopped("c-1"),
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
                on_current_spec(o, "c-1");
                unready(o, "c-1", 5);
            }),
            Wait("c-1 to be ready"),
        ),
        (
            "image change: the leader last, after handing leadership to an upgraded follower",
            with(upgrading(3), |o| {
                on_current_spec(o, "c-1");
                on_current_spec(o, "c-2");
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
                for i in 0..3 {
                    on_current_spec(o, &n(i));
                }
            })),
            Is(Action::Nothing),
        ),
        // Crash at each point of a recorded bootstrap.
        (
            "bootstrap recorded, crash before the claim",
            with(empty(3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None)
            }),
            Is(Action::CreateVolume { name: n(0) }),
        ),
        (
            "bootstrap recorded, claim not bound yet: wait for it",
            with(empty(3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None);
                m(o, "c-0").volume = Some(VolumeState {
                    bound: false,
                    age_seconds: 2,
                    ..VolumeState::bound("1Gi")
                });
            }),
            Wait("the volume of c-0 to be bound"),
        ),
        (
            "bootstrap recorded, claim bound: the pod starts a new cluster",
            with(empty(3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None);
                m(o, "c-0").volume = Some(VolumeState::bound("1Gi"));
            }),
            create_pod("c-0", OLD, StartMode::Bootstrap),
        ),
        (
            "a claim still unbound after the grace gets its pod (a class that binds at first use)",
            with(empty(3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None);
                m(o, "c-0").volume = Some(VolumeState {
                    bound: false,
                    age_seconds: 20,
                    ..VolumeState::bound("1Gi")
                });
            }),
            create_pod("c-0", OLD, StartMode::Bootstrap),
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
            "add recorded, crash before the claim",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None)
            }),
            Is(Action::CreateVolume { name: n(1) }),
        ),
        (
            "add recorded, claim made, crash before the pod",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                m(o, "c-1").volume = Some(VolumeState::bound("1Gi"));
            }),
            create_pod("c-1", OLD, StartMode::Join),
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
                    volume: None,
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
            create_pod("c-1", NEW, StartMode::Join),
        ),
        (
            "restart: new pod not ready yet",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                on_current_spec(o, "c-1");
                unready(o, "c-1", 5);
            }),
            Wait("c-1 to be ready"),
        ),
        (
            "restart: ready on the new image, crash before clearing the step",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                on_current_spec(o, "c-1");
            }),
            Clear("c-1 runs the current spec (concordance:2) and is ready"),
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
            create_pod(
                "c-0",
                OLD,
                StartMode::ForceNewCluster {
                    old_cluster_id: ID.to_string(),
                },
            ),
        ),
        (
            "recovery recorded, crash before the other members were stopped",
            with(healthy(3, 3), |o| {
                pending(o, PendingKind::Recover, "c-0", None);
                o.cluster = None;
            }),
            Is(Action::RecoverFrom {
                name: n(0),
                delete: vec![n(1), n(2), n(0)],
            }),
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
            Is(Action::RecoverFrom {
                name: n(0),
                delete: vec![n(0)],
            }),
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
        // Every spec change that reaches the pods rolls like an image change.
        (
            "pod settings changed: a follower first",
            resized(3),
            restart_onto(&resized(3), "c-1"),
        ),
        (
            "pod settings changed: never a second voter down",
            with(resized(3), |o| {
                on_current_spec(o, "c-1");
                unready(o, "c-1", 5);
            }),
            Wait("c-1 to be ready before the next restart"),
        ),
        (
            "pod settings changed: the leader last, leadership to a follower on the new spec",
            with(resized(3), |o| {
                on_current_spec(o, "c-1");
                on_current_spec(o, "c-2");
            }),
            Is(Action::TransferLeadership {
                from: n(0),
                to: n(1),
            }),
        ),
        (
            "pod settings changed: the former leader, now a follower, restarts",
            with(resized(3), |o| {
                on_current_spec(o, "c-1");
                on_current_spec(o, "c-2");
                raft(o).leader = Some(n(1));
            }),
            restart_onto(&resized(3), "c-0"),
        ),
        (
            "node config changed: rolled too",
            with(healthy(3, 3), |o| {
                o.spec.config.snapshot_entries = Some(5000)
            }),
            restart_onto(
                &with(healthy(3, 3), |o| {
                    o.spec.config.snapshot_entries = Some(5000)
                }),
                "c-1",
            ),
        ),
        (
            "R9: the client Service's port changed: pods restart onto the new join address",
            with(healthy(3, 3), |o| o.spec.service.port = Some(8080)),
            restart_onto(
                &with(healthy(3, 3), |o| o.spec.service.port = Some(8080)),
                "c-1",
            ),
        ),
        (
            "replicas, storage size and replacement delay do not restart anyone",
            sync(with(healthy(3, 3), |o| {
                o.spec.unready_replacement_seconds = 60;
                o.spec.delete_volumes_on_cluster_delete = true;
            })),
            Is(Action::Nothing),
        ),
        (
            "pods of an earlier operator (no hash) on the spec's image are current",
            sync(with(healthy(3, 3), |o| {
                for x in &mut o.members {
                    x.pod.as_mut().unwrap().pod_hash = None;
                }
            })),
            Is(Action::Nothing),
        ),
        (
            "pods of an earlier operator on another image are rolled",
            with(upgrading(3), |o| {
                for x in &mut o.members {
                    x.pod.as_mut().unwrap().pod_hash = None;
                }
            }),
            restart("c-1"),
        ),
        (
            "add: the spec changed before the member joined: its pod starts again from it",
            with(upgrading(1), |o| {
                o.spec.replicas = 3;
                pending(o, PendingKind::AddMember, "c-1", None);
                o.members.push(member("c-1"));
            }),
            Is(Action::DeletePod { name: n(1) }),
        ),
        (
            "R3: add: pod up, no member answered: wait, never a rollback",
            with(healthy(1, 3), |o| {
                pending(o, PendingKind::AddMember, "c-1", None);
                o.members.push(member("c-1"));
                o.cluster = None;
            }),
            Wait("to see whether c-1 joined"),
        ),
        (
            "R4: restart recorded, image reverted meanwhile: the member goes back to the spec",
            with(healthy(3, 3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                pod(o, "c-1").image = NEW.to_string();
                pod(o, "c-1").pod_hash = Some(pod_hash(&new_spec(), false));
                unready(o, "c-1", 30);
            }),
            Is(Action::RestartMember {
                name: n(1),
                image: OLD.to_string(),
                pod_hash: pod_hash(&spec(3), false),
            }),
        ),
        // Drains: a member whose volume cannot follow it.
        (
            "volume pinned to a cordoned node, pod unschedulable: replaced at once",
            with(healthy(3, 3), |o| {
                pod(o, "c-1").phase = PodPhase::Pending;
                unready(o, "c-1", 5);
                volume(o, "c-1").stranded = true;
            }),
            remove_stopped("c-1"),
        ),
        (
            "volume pinned to a cordoned node, pod evicted: replaced, no pod created for it",
            with(healthy(3, 3), |o| {
                m(o, "c-1").pod = None;
                volume(o, "c-1").stranded = true;
            }),
            remove("c-1"),
        ),
        (
            "volume pinned to a cordoned node while the member still runs: nothing",
            sync(with(healthy(3, 3), |o| volume(o, "c-1").stranded = true)),
            Is(Action::Nothing),
        ),
        (
            "volume pinned to a cordoned node while another voter is down: nothing removed",
            with(healthy(3, 3), |o| {
                m(o, "c-1").pod = None;
                volume(o, "c-1").stranded = true;
                unready(o, "c-2", 5);
            }),
            Wait(
                "quorum lost: 1 of 3 voters ready (down: c-1 (its volume can only be used on nodes that are cordoned or gone), c-2)",
            ),
        ),
        (
            "a one-member cluster whose volume is pinned to a cordoned node waits for it",
            with(healthy(1, 1), |o| {
                m(o, "c-0").pod = None;
                volume(o, "c-0").stranded = true;
            }),
            Wait("down: c-0 (its volume can only be used on nodes that are cordoned or gone)"),
        ),
        // Volume expansion.
        (
            "storage grown, the class allows expansion: the claims grow one at a time",
            with(healthy(3, 3), |o| {
                o.spec.storage.size = "2Gi".to_string();
                o.volume_expansion = Some(true);
                volume(o, "c-0").requested = Some("2048Mi".to_string());
            }),
            Is(Action::ExpandVolume {
                name: n(1),
                size: "2Gi".to_string(),
            }),
        ),
        (
            "storage grown, the class does not allow it: nothing (the condition says so)",
            sync(with(healthy(3, 3), |o| {
                o.spec.storage.size = "2Gi".to_string()
            })),
            Is(Action::Nothing),
        ),
        (
            "a file system resize waits for a remount: the member restarts like in a roll",
            with(healthy(3, 3), |o| {
                volume(o, "c-2").resize_pending_seconds = Some(60);
            }),
            restart_onto(&healthy(3, 3), "c-2"),
        ),
        (
            "a member restarted after its resize became pending is not restarted again",
            sync(with(healthy(3, 3), |o| {
                volume(o, "c-2").resize_pending_seconds = Some(60);
                pod(o, "c-2").age_seconds = 30;
            })),
            Is(Action::Nothing),
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
            (Clear(text), Action::ClearPending { reason, .. }) => reason.contains(text),
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
fn status_reports_each_member_version_image_and_spec() {
    let o = with(healthy(3, 3), |o| {
        pod(o, "c-2").version = Some("0.2.0".to_string());
        pod(o, "c-2").image = NEW.to_string();
        pod(o, "c-2").pod_hash = Some(pod_hash(&new_spec(), false));
    });
    let s = summarize(&o);
    let c2 = s.members.iter().find(|m| m.name == "c-2").unwrap();
    assert_eq!(c2.version.as_deref(), Some("0.2.0"));
    assert_eq!(c2.image.as_deref(), Some(NEW));
    assert!(!c2.up_to_date, "c-2 runs another spec than the current one");
    assert!(
        s.members
            .iter()
            .filter(|m| m.name != "c-2")
            .all(|m| m.up_to_date)
    );
    assert_eq!(s.ready_members, 3);
    assert_eq!(s.replicas, 3);
    assert_eq!(s.updated_members, 2);
    assert_eq!(s.selector.as_deref(), Some("concordance.io/cluster=c"));
    assert_eq!(s.pod_hash, Some(pod_hash(&o.spec, false)));
    assert_eq!(s.leader.as_deref(), Some("c-0"));
}

#[test]
fn membership_steps_are_recorded_before_they_are_taken() {
    let o = healthy(5, 3);
    let step = decide(&o);
    let r = record(&o, &step).expect("a removal is recorded first");
    assert_eq!(r.kind, PendingKind::RemoveMember);
    assert_eq!(r.member, "c-4");
    assert_eq!(r.expected_membership_version, Some(VERSION));
    assert_eq!(record(&o, &Action::UpdateStatus), None);

    // A restart records where it goes.
    let o = upgrading(3);
    let r = record(&o, &decide(&o)).unwrap();
    assert_eq!(r.kind, PendingKind::RestartMember);
    assert_eq!(r.image.as_deref(), Some(NEW));
    assert_eq!(r.pod_hash, Some(pod_hash(&new_spec(), false)));

    // A step re-issued while recorded does not rewrite the record.
    let o = with(healthy(5, 3), |o| {
        pending(o, PendingKind::RemoveMember, "c-4", None)
    });
    assert!(matches!(decide(&o), Action::RemoveMember { .. }));
    assert_eq!(record(&o, &decide(&o)), None);
}

#[test]
fn a_recovery_replaces_a_step_that_quorum_loss_stalled() {
    let o = with(healthy(3, 3), |o| {
        two_down(o);
        pending(o, PendingKind::RemoveMember, "c-1", None);
        o.spec.force_recover_from = Some(n(0));
    });
    let step = decide(&o);
    let r = record(&o, &step).expect("the recovery takes the record over");
    assert_eq!((r.kind, r.member.as_str()), (PendingKind::Recover, "c-0"));
    // Once recorded, the recovery is not recorded again.
    let o = with(o, |o| pending(o, PendingKind::Recover, "c-0", None));
    assert_eq!(record(&o, &decide(&o)), None);
}

#[test]
fn a_finished_recovery_spends_the_field_and_removing_it_rearms() {
    let o = with(healthy(1, 3), |o| {
        pending(o, PendingKind::Recover, "c-0", None);
        o.spec.force_recover_from = Some(n(0));
    });
    let step = decide(&o);
    assert!(matches!(&step, Action::ClearPending { recovered_from: Some(f), .. } if f == "c-0"));
    assert_eq!(report(&o, &step).recovered_from.as_deref(), Some("c-0"));
    let o = with(healthy(3, 3), |o| o.status.recovered_from = Some(n(0)));
    assert_eq!(report(&o, &decide(&o)).recovered_from, None);
}

#[test]
fn spec_storage_is_required() {
    let spec: Result<ConcordanceClusterSpec, _> =
        serde_json::from_value(serde_json::json!({"replicas": 3, "image": OLD}));
    assert!(spec.is_err());
    let spec: ConcordanceClusterSpec = serde_json::from_value(
        serde_json::json!({"replicas": 3, "image": OLD, "storage": {"size": "1Gi"}}),
    )
    .unwrap();
    assert_eq!(
        spec.storage,
        StorageSpec {
            size: "1Gi".to_string(),
            storage_class_name: None,
        }
    );
}

fn condition_of(o: &Observed, type_: &str) -> (bool, &'static str, String) {
    let c = conditions(o, &decide(o))
        .into_iter()
        .find(|c| c.type_ == type_)
        .unwrap();
    (c.status, c.reason, c.message)
}

#[test]
fn a_paused_cluster_changes_no_object_records_nothing_and_says_so() {
    let o = with(upgrading(3), |o| {
        o.paused = true;
        o.objects.insert(Owned::ClientService, Presence::Missing);
    });
    assert_eq!(objects(&o), Vec::new(), "objects kept while paused");
    let next = decide(&o);
    assert!(record(&o, &next).is_none(), "a step recorded while paused");
    let (status, reason, message) = condition_of(&o, "Progressing");
    assert!(!status && reason == "Paused", "{reason}: {message}");
    assert!(
        message.contains("remove the annotation to resume"),
        "{message}"
    );
    let message = report(&o, &next).message.unwrap_or_default();
    assert!(message.contains("paused"), "{message}");
    // Resumed: the missing Service is created and the recorded restart goes on.
    let resumed = with(o, |o| o.paused = false);
    assert!(
        !objects(&resumed).is_empty(),
        "the missing Service not kept"
    );
    assert!(
        !matches!(decide(&resumed), Action::WaitFor { .. }),
        "{:?}",
        decide(&resumed)
    );
}

#[test]
fn conditions_follow_quorum_and_readiness() {
    let status = |o: &Observed| -> Vec<(&'static str, bool)> {
        conditions(o, &decide(o))
            .iter()
            .map(|c| (c.type_, c.status))
            .collect()
    };
    assert_eq!(
        status(&healthy(3, 3)),
        [
            ("Ready", true),
            ("Available", true),
            ("Progressing", false),
            ("Degraded", false),
            ("StorageResized", true),
            ("SpaceAvailable", true),
            ("TLS", false),
            ("KeysInForce", false)
        ]
    );
    assert_eq!(
        status(&healthy(1, 3)),
        [
            ("Ready", false),
            ("Available", true),
            ("Progressing", true),
            ("Degraded", true),
            ("StorageResized", true),
            ("SpaceAvailable", true),
            ("TLS", false),
            ("KeysInForce", false)
        ]
    );
    let lost = with(healthy(3, 3), two_down);
    assert_eq!(
        status(&lost),
        [
            ("Ready", false),
            ("Available", false),
            ("Progressing", true),
            ("Degraded", true),
            ("StorageResized", true),
            ("SpaceAvailable", true),
            ("TLS", false),
            ("KeysInForce", false)
        ]
    );
}

#[test]
fn a_no_space_alarm_makes_space_unavailable_with_the_way_out() {
    assert_eq!(
        condition_of(&healthy(3, 3), "SpaceAvailable").1,
        "WithinQuota"
    );
    let mut full = healthy(3, 3);
    full.cluster.as_mut().unwrap().alarms = vec![concordance_client::Alarm {
        member: n(1),
        kind: concordance_client::AlarmKind::NoSpace,
        detail: "the volume has 1 bytes free".to_string(),
    }];
    let (ok, reason, message) = condition_of(&full, "SpaceAvailable");
    assert!(!ok);
    assert_eq!(reason, "NoSpaceAlarm");
    assert!(
        message.contains(&n(1)) && message.contains("spec.storage.size"),
        "{message}"
    );
    // A corrupt alarm is another condition's business.
    full.cluster.as_mut().unwrap().alarms[0].kind = concordance_client::AlarmKind::Corrupt;
    assert!(condition_of(&full, "SpaceAvailable").0);
}

/// `Ready`: every member the spec asks for is a ready voter on the current spec, nothing
/// under way; when False, the reason is what is missing first, the message all of it.
#[test]
fn ready_means_the_cluster_is_whole() {
    let cases: Vec<(&str, Observed, Option<&str>, &str)> = vec![
        (
            "bootstrap in progress",
            with(empty(3), |o| {
                pending(o, PendingKind::Bootstrap, "c-0", None)
            }),
            Some("Bootstrapping"),
            "being bootstrapped",
        ),
        (
            "bootstrapped, members still being added",
            healthy(1, 3),
            Some("Scaling"),
            "1 of 3 voters",
        ),
        (
            "a learner catching up",
            with(healthy(3, 3), |o| {
                set_members(o, &[("c-0", true), ("c-1", true), ("c-2", false)], VERSION)
            }),
            Some("Scaling"),
            "learner c-2 catching up",
        ),
        (
            "one member down",
            with(healthy(3, 3), |o| unready(o, "c-2", 30)),
            Some("MembersNotReady"),
            "not ready: c-2",
        ),
        (
            "rollout in progress",
            with(upgrading(3), |o| on_current_spec(o, "c-1")),
            Some("RollingOut"),
            "not on the current spec: c-0, c-2",
        ),
        (
            "rollout: a member restarting is both down and not yet on the spec",
            with(upgrading(3), |o| {
                pending(o, PendingKind::RestartMember, "c-1", Some(NEW));
                m(o, "c-1").pod = None;
            }),
            Some("MembersNotReady"),
            "not ready: c-1; not on the current spec: c-0, c-2",
        ),
        (
            "scale in progress",
            healthy(3, 5),
            Some("Scaling"),
            "3 of 5 voters",
        ),
        (
            "scale down in progress",
            healthy(5, 3),
            Some("Scaling"),
            "5 of 3 voters",
        ),
        (
            "every member fine, a step still recorded",
            with(healthy(3, 3), |o| {
                pending(o, PendingKind::TransferLeadership, "c-0", None)
            }),
            Some("StepUnderWay"),
            "leadership moved to c-0",
        ),
        (
            "quorum lost",
            with(healthy(3, 3), two_down),
            Some("NoQuorum"),
            "quorum is lost",
        ),
        (
            "an object of the cluster's name belongs to someone else",
            with(healthy(3, 3), |o| {
                o.objects.insert(Owned::ClientService, Presence::Foreign);
            }),
            Some("ObjectConflict"),
            "Service c belong(s) to someone else",
        ),
        (
            "all settled",
            healthy(3, 3),
            None,
            "3 of 3 voters ready on the current spec",
        ),
        (
            "all settled, status behind",
            with(healthy(3, 3), |o| o.status.ready_members = 1),
            None,
            "3 of 3 voters ready",
        ),
        (
            "a volume the class cannot expand does not make the cluster less whole",
            sync(with(healthy(3, 3), |o| {
                o.spec.storage.size = "2Gi".to_string()
            })),
            None,
            "3 of 3 voters ready",
        ),
    ];
    let mut failures = Vec::new();
    for (name, o, reason, message) in &cases {
        let (ready, got_reason, got_message) = condition_of(o, "Ready");
        let ok = match reason {
            None => ready && got_reason == "AllMembersReady",
            Some(r) => !ready && got_reason == *r,
        } && got_message.contains(message);
        if !ok {
            failures.push(format!(
                "{name}: expected {reason:?} with {message:?}, got ready={ready} \
                 {got_reason} {got_message:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue 39: once `Ready` is True, `readyMembers` is `spec.replicas` and every member runs the
/// spec's image: checked over every observed state of the decision table.
#[test]
fn ready_implies_every_wanted_member_ready_on_the_spec_image() {
    let mut checked = 0;
    for (name, o, _) in cases() {
        let (ready, _, _) = condition_of(&o, "Ready");
        if !ready {
            continue;
        }
        checked += 1;
        let s = summarize(&o);
        assert_eq!(s.ready_members, o.spec.replicas, "{name}");
        assert!(
            s.members
                .iter()
                .all(|m| m.image.as_deref() == Some(o.spec.image.as_str()) && m.up_to_date),
            "{name}"
        );
    }
    assert!(checked >= 5, "only {checked} Ready cases");
}

#[test]
fn the_disruption_budget_allows_one_voter_down_and_none_more() {
    // minAvailable = voters - 1 (never below a majority): the disruption controller allows
    // `ready pods - minAvailable` evictions, so 1 on a healthy cluster, 0 with one down.
    for (voters, replicas, want) in [
        (3, 3, Some(2)),
        (5, 5, Some(4)),
        (7, 7, Some(6)),
        // Transient memberships: two voters need both; one voter being grown blocks.
        (2, 3, Some(2)),
        (1, 3, Some(1)),
        (4, 3, Some(3)),
        // A one-member cluster: no budget (documented), so a drain is never blocked.
        (1, 1, None),
    ] {
        assert_eq!(
            min_available(&healthy(voters, replicas)),
            want,
            "{voters} voters, {replicas} wanted"
        );
    }
    // Before bootstrap there is no membership yet.
    assert_eq!(min_available(&empty(3)), Some(1));
}

#[test]
fn owned_objects_are_kept_as_rendered_every_pass() {
    use ObjectStep::*;
    let everything = vec![
        KeepKeySecret(KeyKind::Admin),
        KeepKeySecret(KeyKind::Agent),
        ApplyPeerService,
        ApplyClientService,
        ApplyDisruptionBudget { min_available: 2 },
    ];
    assert_eq!(objects(&healthy(3, 3)), everything, "applied on every pass");

    let fresh = with(empty(3), |o| {
        for p in o.objects.values_mut() {
            *p = Presence::Missing;
        }
    });
    assert_eq!(
        objects(&fresh),
        vec![
            CreateKeySecret(KeyKind::Admin),
            CreateKeySecret(KeyKind::Agent),
            ApplyPeerService,
            ApplyClientService,
            ApplyDisruptionBudget { min_available: 1 },
        ],
        "generated keys are created once; their data is never applied again"
    );

    let foreign = with(healthy(3, 3), |o| {
        o.objects.insert(Owned::ClientService, Presence::Foreign);
        o.objects
            .insert(Owned::KeySecret(KeyKind::Agent), Presence::Foreign);
    });
    assert_eq!(
        objects(&foreign),
        vec![
            KeepKeySecret(KeyKind::Admin),
            ApplyPeerService,
            ApplyDisruptionBudget { min_available: 2 },
        ],
        "R15: objects of another owner are never touched"
    );

    let given = with(healthy(3, 3), |o| {
        o.spec.agent_key_secret =
            Some(serde_json::from_value(serde_json::json!({"name": "mine"})).unwrap());
        o.objects.remove(&Owned::KeySecret(KeyKind::Agent));
    });
    assert!(!objects(&given).contains(&KeepKeySecret(KeyKind::Agent)));

    let earlier_operator = with(healthy(3, 3), |o| {
        o.objects
            .insert(Owned::DisruptionBudget, Presence::Ours { applied: false });
    });
    assert!(
        objects(&earlier_operator).contains(&Delete(Owned::DisruptionBudget)),
        "an earlier operator's budget (maxUnavailable) is replaced"
    );

    let single = healthy(1, 1);
    assert!(
        objects(&single).contains(&Delete(Owned::DisruptionBudget)),
        "a one-member cluster needs no budget"
    );
    let single_fresh = with(empty(1), |o| {
        o.objects.insert(Owned::DisruptionBudget, Presence::Missing);
    });
    assert!(
        !objects(&single_fresh)
            .iter()
            .any(|s| matches!(s, ApplyDisruptionBudget { .. } | Delete(_)))
    );
}

#[test]
fn storage_condition_says_whether_volumes_have_the_spec_size() {
    let grown = with(healthy(3, 3), |o| o.spec.storage.size = "2Gi".to_string());
    let (ok, reason, message) = condition_of(&grown, "StorageResized");
    assert!(!ok);
    assert_eq!(reason, "ExpansionNotAllowed");
    assert!(message.contains("c-0, c-1, c-2"), "{message}");
    let expandable = with(grown.clone(), |o| o.volume_expansion = Some(true));
    assert_eq!(condition_of(&expandable, "StorageResized").1, "Expanding");
    // Claims patched, volumes not grown yet.
    let asked = with(expandable, |o| {
        for i in 0..3 {
            volume(o, &n(i)).requested = Some("2Gi".to_string());
        }
    });
    assert_eq!(decide(&asked), Action::Nothing);
    let (ok, reason, message) = condition_of(&asked, "StorageResized");
    assert!(!ok && reason == "Expanding" && message.contains("being expanded"));
    let done = with(asked, |o| {
        for i in 0..3 {
            volume(o, &n(i)).capacity = Some("2Gi".to_string());
        }
    });
    assert_eq!(condition_of(&done, "StorageResized").1, "AsSpecified");
}

#[test]
fn every_step_has_one_name_and_description() {
    let steps = [
        Action::Bootstrap { name: n(0) },
        Action::CreatePod {
            name: n(1),
            image: OLD.into(),
            mode: StartMode::Join,
        },
        Action::RemoveMember {
            name: n(1),
            expected_version: 3,
            stop_first: true,
        },
        Action::RestartMember {
            name: n(1),
            image: NEW.into(),
            pod_hash: "abc".into(),
        },
        Action::RecoverFrom {
            name: n(0),
            delete: vec![n(1)],
        },
        Action::ExpandVolume {
            name: n(0),
            size: "2Gi".into(),
        },
    ];
    let names: std::collections::BTreeSet<_> = steps.iter().map(|a| a.info().name).collect();
    assert_eq!(names.len(), steps.len());
    for a in &steps {
        let info = a.info();
        assert!(info.event.is_some(), "{a:?} is reported as an Event");
        assert!(a.is_step());
    }
    assert!(
        steps[2]
            .info()
            .description
            .contains("remove c-1 from the membership (at version 3), its pod stopped first")
    );
    assert_eq!(Action::Nothing.info().event, None);
    assert!(!Action::UpdateStatus.is_step());
}

/// A cluster running TLS whose CA, certificate (`days_left`, issued for the current CA and
/// names) and ConfigMap exist.
fn tls_cluster(days_left: i64) -> Observed {
    with(healthy(3, 3), |o| {
        o.tls = TlsState {
            enabled: true,
            certificate: Some(CertificateState {
                expires_in_seconds: Some(days_left * 86_400),
                expires: Some("2027-03-01T00:00:00Z".to_string()),
                current: true,
            }),
        };
        for owned in [
            Owned::CaSecret,
            Owned::CertificateSecret,
            Owned::CaConfigMap,
        ] {
            o.objects.insert(owned, Presence::Ours { applied: true });
        }
    })
}

fn tls_steps(o: &Observed) -> Vec<ObjectStep> {
    objects(o)
        .into_iter()
        .filter(|s| {
            matches!(
                s,
                ObjectStep::CreateCa
                    | ObjectStep::IssueCertificate { .. }
                    | ObjectStep::ApplyCaConfigMap
            )
        })
        .collect()
}

#[test]
fn tls_is_decided_when_the_cluster_is_created_and_kept() {
    let wanted = spec(3);
    let off: ConcordanceClusterSpec = serde_json::from_value(serde_json::json!({
        "replicas": 3, "image": OLD, "storage": {"size": "1Gi"}, "tls": {"enabled": false}
    }))
    .unwrap();
    let fresh = ConcordanceClusterStatus::default();
    let recorded = |enabled| ConcordanceClusterStatus {
        tls: Some(concordance_operator::crd::TlsStatus {
            enabled,
            ..Default::default()
        }),
        ..Default::default()
    };
    let earlier_operator = ConcordanceClusterStatus {
        cluster_id: Some(ID.to_string()),
        ..Default::default()
    };
    let seen = |has_members, ca_exists, pods_with_tls| TlsEvidence {
        has_members,
        ca_exists,
        pods_with_tls,
    };
    let nothing = seen(false, false, false);
    let members = seen(true, false, false);
    // (spec, status, what exists, runs TLS, why)
    let table = [
        (
            &wanted,
            &fresh,
            nothing,
            true,
            "a new cluster runs TLS by default",
        ),
        (&off, &fresh, nothing, false, "unless its spec turns it off"),
        (&off, &fresh, members, false, "and then keeps it off"),
        (
            &wanted,
            &recorded(true),
            members,
            true,
            "as recorded, once it has members",
        ),
        (
            &wanted,
            &recorded(false),
            members,
            false,
            "a plaintext cluster stays so",
        ),
        (
            &wanted,
            &fresh,
            members,
            false,
            "members and no record: made by an earlier operator",
        ),
        (
            &wanted,
            &earlier_operator,
            nothing,
            false,
            "bootstrapped by an earlier operator",
        ),
        // R2: a status read from a stale cache has no record yet, but the cluster's own
        // objects say what it was made with.
        (
            &wanted,
            &fresh,
            seen(true, true, false),
            true,
            "its CA exists",
        ),
        (
            &wanted,
            &fresh,
            seen(true, false, true),
            true,
            "a pod runs with a certificate",
        ),
        (
            &off,
            &recorded(false),
            seen(true, true, true),
            true,
            "what it runs wins",
        ),
    ];
    for (spec, status, seen, runs, why) in table {
        assert_eq!(tls_in_effect(spec, status, seen), runs, "{why}");
    }
}

#[test]
fn tls_objects_ca_first_then_the_certificate_renewed_before_it_expires() {
    use ObjectStep::*;
    let settled = tls_cluster(80);
    assert_eq!(
        tls_steps(&settled),
        vec![ApplyCaConfigMap],
        "only the CA's publication is kept"
    );

    let created = with(settled.clone(), |o| {
        for owned in [
            Owned::CaSecret,
            Owned::CertificateSecret,
            Owned::CaConfigMap,
        ] {
            o.objects.insert(owned, Presence::Missing);
        }
        o.tls.certificate = None;
    });
    assert_eq!(
        tls_steps(&created),
        vec![
            CreateCa,
            IssueCertificate {
                why: "there is none"
            },
            ApplyCaConfigMap
        ],
        "the CA first, then the certificate it signs, then its publication"
    );

    let margin = RENEW_BEFORE_SECONDS / 86_400;
    assert_eq!(tls_steps(&tls_cluster(margin + 1)), vec![ApplyCaConfigMap]);
    assert_eq!(
        tls_steps(&tls_cluster(margin - 1)),
        vec![
            IssueCertificate {
                why: "it expires soon"
            },
            ApplyCaConfigMap
        ]
    );
    assert_eq!(
        tls_steps(&tls_cluster(-1)),
        vec![
            IssueCertificate {
                why: "it expires soon"
            },
            ApplyCaConfigMap
        ],
        "an expired one too"
    );
    let other_ca = with(settled.clone(), |o| {
        o.tls.certificate.as_mut().unwrap().current = false;
    });
    assert_eq!(
        tls_steps(&other_ca),
        vec![
            IssueCertificate {
                why: "it was issued for another CA or other names"
            },
            ApplyCaConfigMap
        ]
    );
    let unreadable = with(settled.clone(), |o| {
        o.tls.certificate.as_mut().unwrap().expires_in_seconds = None;
    });
    assert_eq!(
        tls_steps(&unreadable),
        vec![
            IssueCertificate {
                why: "its Secret holds no readable certificate"
            },
            ApplyCaConfigMap
        ]
    );

    // Someone else's CA Secret: never written over, nothing signed with it, and no step taken.
    let foreign = with(settled.clone(), |o| {
        o.objects.insert(Owned::CaSecret, Presence::Foreign);
        o.tls.certificate.as_mut().unwrap().current = false;
    });
    assert_eq!(tls_steps(&foreign), vec![]);
    assert!(
        matches!(decide(&foreign), Action::WaitFor { reason } if reason.contains("Secret c-ca"))
    );

    let plaintext = with(settled, |o| o.tls.enabled = false);
    assert_eq!(
        tls_steps(&plaintext),
        vec![],
        "no TLS objects for a plaintext cluster"
    );
}

#[test]
fn tls_changes_what_the_members_run_and_is_reported() {
    // The same spec with TLS is another pod: members of a plaintext hash are not up to date.
    let o = tls_cluster(80);
    assert_ne!(summarize(&o).pod_hash, Some(pod_hash(&o.spec, false)));
    assert_eq!(summarize(&o).pod_hash, Some(pod_hash(&o.spec, true)));

    let (on, reason, message) = condition_of(&o, "TLS");
    assert!(
        on && reason == "Enabled" && message.contains("ConfigMap c-ca"),
        "{message}"
    );
    let r = report(&o, &decide(&o));
    assert!(r.tls.enabled);
    assert_eq!(r.tls.ca_config_map.as_deref(), Some("c-ca"));
    assert_eq!(
        r.tls.certificate_expires.as_deref(),
        Some("2027-03-01T00:00:00Z")
    );

    let earlier = healthy(3, 3);
    let (on, reason, message) = condition_of(&earlier, "TLS");
    assert!(!on && reason == "CreatedWithoutTLS", "{message}");
    assert!(!report(&earlier, &decide(&earlier)).tls.enabled);
    let off = with(healthy(3, 3), |o| {
        o.spec.tls = Some(serde_json::from_value(serde_json::json!({"enabled": false})).unwrap());
    });
    assert_eq!(condition_of(&off, "TLS").1, "Disabled");
}

fn key(name: &str) -> Key {
    Key(format!("{name}-key-0123456789abcdef"))
}

fn file(keys: &[&str], phase: Phase, retiring_seconds: Option<i64>) -> KeyFile {
    KeyFile {
        keys: keys.iter().map(|k| key(k)).collect(),
        phase,
        retiring_since: retiring_seconds.map(|_| "2026-12-07T00:00:00Z".to_string()),
        retiring_seconds,
    }
}

fn keyed(admin: KeyFile, agent: KeyFile, given: (&str, &str)) -> Observed {
    let mut o = healthy(3, 3);
    o.keys = KeysState {
        held: Some(Held { admin, agent }),
        given_admin: Some(key(given.0)),
        given_agent: Some(key(given.1)),
        admin_accepted: None,
        agent_accepted: None,
    };
    o.objects
        .insert(Owned::MemberKeys, Presence::Ours { applied: true });
    o
}

fn keys_step(o: &Observed) -> Option<NextKeys> {
    objects(o).into_iter().find_map(|s| match s {
        ObjectStep::WriteMemberKeys(next) => Some(next),
        _ => None,
    })
}

fn keys_condition(o: &Observed) -> (bool, &'static str, String) {
    condition_of(o, "KeysInForce")
}

/// A key rotation, phase by phase: each waits until every member accepts the key it added
/// (or the grace has passed), and says what it waits for; the admin key alone goes through
/// `Switching`, with a marker key, so that members call each other with the new key before
/// the old one is refused; a last marker tells when no member takes the old key.
#[test]
fn keys_rotate_phase_by_phase_waiting_for_every_member_and_the_grace() {
    let in_force = |k: &str| file(&[k], Phase::InForce, None);
    // Held as given: nothing to do.
    let o = keyed(in_force("a1"), in_force("g1"), ("a1", "g1"));
    assert_eq!(keys_step(&o), None);
    let (ok, reason, _) = keys_condition(&o);
    assert!(ok, "{reason}");
    assert_eq!(reason, "InForce");

    // A new admin key: added beside the old, the old one first (members still call with it).
    let o = keyed(in_force("a1"), in_force("g1"), ("a2", "g1"));
    let next = keys_step(&o).expect("a step");
    assert_eq!(next.admin, file(&["a1", "a2"], Phase::Adding, None));
    assert_eq!(next.agent, in_force("g1"));
    assert!(!next.admin_marker);
    assert!(
        next.why.contains("a new admin key was given"),
        "{}",
        next.why
    );

    // Adding: waits while a member does not take it, saying which.
    let mut o = keyed(
        file(&["a1", "a2"], Phase::Adding, None),
        in_force("g1"),
        ("a2", "g1"),
    );
    o.keys.admin_accepted = Some(Acceptance::Not("c-2 does not take it yet".into()));
    assert_eq!(keys_step(&o), None);
    let (ok, reason, message) = keys_condition(&o);
    assert!(!ok);
    assert_eq!(reason, "Rotating");
    assert!(message.contains("c-2 does not take it yet"), "{message}");
    // Every member takes it: the new key first, the old, and a marker to know when every
    // member has read that file.
    o.keys.admin_accepted = Some(Acceptance::All);
    let next = keys_step(&o).expect("a step");
    assert_eq!(next.admin, file(&["a2", "a1"], Phase::Switching, None));
    assert!(next.admin_marker);

    // Switching: every member holds the marker: the old key is retired after the grace.
    let mut o = keyed(
        file(&["a2", "a1", "marker"], Phase::Switching, None),
        in_force("g1"),
        ("a2", "g1"),
    );
    o.keys.admin_accepted = Some(Acceptance::Not("c-0 did not answer".into()));
    assert_eq!(keys_step(&o), None);
    o.keys.admin_accepted = Some(Acceptance::All);
    let next = keys_step(&o).expect("a step");
    assert_eq!(next.admin, file(&["a2", "a1"], Phase::Retiring, None));
    assert!(!next.admin_marker);

    // Retiring: the old key stays for keyRotationGraceSeconds (300 by default), then goes.
    let o = keyed(
        file(&["a2", "a1"], Phase::Retiring, Some(120)),
        in_force("g1"),
        ("a2", "g1"),
    );
    assert_eq!(keys_step(&o), None);
    let (_, reason, message) = keys_condition(&o);
    assert_eq!(reason, "Rotating");
    assert!(message.contains("still accepted for 180 s"), "{message}");
    let o = keyed(
        file(&["a2", "a1"], Phase::Retiring, Some(300)),
        in_force("g1"),
        ("a2", "g1"),
    );
    let next = keys_step(&o).expect("a step");
    assert_eq!(next.admin, file(&["a2"], Phase::Dropping, None));
    assert!(next.admin_marker && !next.agent_marker);
    // Dropping: in force once every member has read the file without the old key.
    let mut o = keyed(
        file(&["a2", "marker"], Phase::Dropping, None),
        in_force("g1"),
        ("a2", "g1"),
    );
    o.keys.admin_accepted = Some(Acceptance::Not("c-1 does not take it yet".into()));
    assert_eq!(keys_step(&o), None);
    let (_, reason, message) = keys_condition(&o);
    assert_eq!(reason, "Rotating");
    assert!(message.contains("being dropped"), "{message}");
    o.keys.admin_accepted = Some(Acceptance::All);
    assert_eq!(keys_step(&o).expect("a step").admin, in_force("a2"));

    // The agent key needs no Switching: no member calls another with it.
    let mut o = keyed(
        in_force("a1"),
        file(&["g1", "g2"], Phase::Adding, None),
        ("a1", "g2"),
    );
    o.keys.agent_accepted = Some(Acceptance::All);
    let next = keys_step(&o).expect("a step");
    assert_eq!(next.agent, file(&["g2", "g1"], Phase::Retiring, None));
    assert_eq!(next.admin, in_force("a1"));

    // A key changed again mid-rotation waits for the rotation under way to end.
    let mut o = keyed(
        file(&["a1", "a2"], Phase::Adding, None),
        in_force("g1"),
        ("a3", "g1"),
    );
    o.keys.admin_accepted = Some(Acceptance::All);
    assert_eq!(
        keys_step(&o).expect("a step").admin,
        file(&["a2", "a1"], Phase::Switching, None)
    );
    let o = keyed(in_force("a2"), in_force("g1"), ("a3", "g1"));
    assert_eq!(
        keys_step(&o).expect("a step").admin,
        file(&["a2", "a3"], Phase::Adding, None)
    );

    // A key members would not take (too short) is not used, and the condition says why.
    let mut o = keyed(in_force("a1"), in_force("g1"), ("a1", "g1"));
    o.keys.given_admin = Some(Key("short".into()));
    assert_eq!(keys_step(&o), None);
    let (ok, reason, message) = keys_condition(&o);
    assert!(!ok);
    assert_eq!(reason, "KeyNotUsable");
    assert!(message.contains("at least 16 characters"), "{message}");
    assert!(!message.contains("short"), "no key in a message: {message}");
}

/// The member keys Secret is made from the key Secrets once both are readable and usable,
/// before the first member; one that belongs to someone else is never written.
#[test]
fn the_member_keys_secret_is_made_from_the_key_secrets_and_never_over_a_foreign_one() {
    let mut o = empty(3);
    o.keys.given_admin = Some(key("a1"));
    assert_eq!(keys_step(&o), None, "the agent key is not known yet");
    o.keys.given_agent = Some(key("g1"));
    let next = keys_step(&o).expect("a step");
    assert_eq!(next.admin, file(&["a1"], Phase::InForce, None));
    assert_eq!(next.agent, file(&["g1"], Phase::InForce, None));
    o.objects.insert(Owned::MemberKeys, Presence::Foreign);
    assert_eq!(keys_step(&o), None);
    // Keys never show in a step's Debug (steps are logged).
    let shown = format!("{next:?}");
    assert!(!shown.contains("a1-key"), "{shown}");
}
