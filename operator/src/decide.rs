//! The reconcile decision: one pure function from what the operator observed to the one next
//! step. Keeping it pure lets every rule (and every crash point) be tested as a table.
//!
//! Steps that change membership or restart a member are recorded on the resource as its
//! `pendingAction` before they are taken ([`Action::to_pending`]); while one is recorded,
//! `decide` only finishes or rolls it back.

use std::collections::BTreeMap;

use concordance_client::ClusterStatus;

use crate::crd::{
    ConcordanceClusterSpec, ConcordanceClusterStatus, MemberRole, MemberStatus, PendingAction,
    PendingKind,
};

/// Applied-index distance within which a follower counts as caught up for a leadership transfer.
const CAUGHT_UP_LAG: u64 = 100;

/// Everything the decision looks at, gathered by the controller.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Name of the `ConcordanceCluster`; members are named `<name>-<ordinal>`.
    pub name: String,
    pub generation: Option<i64>,
    pub spec: ConcordanceClusterSpec,
    pub status: ConcordanceClusterStatus,
    pub secrets_exist: bool,
    pub services_exist: bool,
    pub pdb_exists: bool,
    /// Every member that has a pod or a volume.
    pub members: Vec<ObservedMember>,
    /// `cluster/status` through the client Service; `None` when no member answered.
    pub cluster: Option<ClusterStatus>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservedMember {
    pub name: String,
    pub pod: Option<PodState>,
    /// The member's PersistentVolumeClaim exists.
    pub volume: bool,
    /// What the member's own node says about its data directory.
    pub data: DataState,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodState {
    pub phase: PodPhase,
    /// The node's `/ready`: a leader is known and this voter is caught up.
    pub ready: bool,
    pub image: String,
    /// How long the pod has been unready (0 when ready).
    pub unready_seconds: i64,
    /// Version the node reports, when it answered.
    pub version: Option<String>,
    /// The pod was started in quorum-loss recovery mode (`--force-new-cluster`).
    pub force_new_cluster: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    /// The process ended for good (e.g. evicted): the pod must be recreated.
    Finished,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataState {
    /// The node did not say (not started, or unreachable).
    Unknown,
    /// Data of the recorded cluster.
    Ours,
    /// An empty data directory where a member's data should be.
    Empty,
    /// Data of another cluster id.
    Foreign,
}

/// The one next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    CreateSecrets,
    /// The headless Service (publishing not-ready addresses) and the client Service.
    CreateServices,
    CreatePdb,
    /// Claim and pod of the first member, started to bootstrap a new cluster.
    BootstrapFirstMember {
        name: String,
    },
    /// Write the cluster id the node reports into the status (and clear a pending
    /// bootstrap or recovery in the same write).
    RecordClusterId {
        cluster_id: String,
    },
    /// Claim (if missing) and pod of an existing member, which comes back as itself.
    CreatePod {
        name: String,
    },
    /// Delete a finished pod so that it is created again as the same member.
    DeletePod {
        name: String,
    },
    /// Claim and pod of a new member that joins as a learner and is promoted to voter.
    AddMember {
        name: String,
    },
    RemoveMember {
        name: String,
        expected_version: u64,
    },
    /// Only once the member is out of the Raft membership.
    DeletePodAndVolume {
        name: String,
    },
    TransferLeadership {
        from: String,
        to: String,
    },
    /// Delete the pod; it is created again on the spec's image.
    RestartMemberWithImage {
        name: String,
        image: String,
    },
    /// After quorum loss, on request: stop every other member and restart `name` in the node's
    /// recovery mode (a one-member cluster with a new id); the others then join afresh.
    RecoverFrom {
        name: String,
    },
    /// The recorded step is finished or rolled back; the reason goes to the status message.
    ClearPending {
        reason: String,
    },
    WaitFor {
        reason: String,
    },
    UpdateStatus,
    Nothing,
}

impl Action {
    /// The record to write on the resource before taking this step, for steps a crash could
    /// leave half done. `None` for idempotent steps.
    pub fn to_pending(&self, o: &Observed) -> Option<PendingAction> {
        let version = o.cluster.as_ref().and_then(|c| c.membership_version);
        let (kind, member, image) = match self {
            Action::BootstrapFirstMember { name } => (PendingKind::Bootstrap, name, None),
            Action::AddMember { name } => (PendingKind::AddMember, name, None),
            Action::RemoveMember { name, .. } => (PendingKind::RemoveMember, name, None),
            Action::TransferLeadership { to, .. } => (PendingKind::TransferLeadership, to, None),
            Action::RestartMemberWithImage { name, image } => {
                (PendingKind::RestartMember, name, Some(image.clone()))
            }
            Action::RecoverFrom { name } => (PendingKind::Recover, name, None),
            _ => return None,
        };
        Some(PendingAction {
            kind,
            member: member.clone(),
            expected_membership_version: version,
            image,
            started: None,
        })
    }
}

fn wait(reason: impl Into<String>) -> Action {
    Action::WaitFor {
        reason: reason.into(),
    }
}

fn clear(reason: impl Into<String>) -> Action {
    Action::ClearPending {
        reason: reason.into(),
    }
}

/// Derived facts shared by the rules.
struct View<'a> {
    o: &'a Observed,
    /// Raft members by name: `true` for voters. From the node when it answers, else the record.
    membership: BTreeMap<String, bool>,
    leader: Option<String>,
}

impl<'a> View<'a> {
    fn new(o: &'a Observed) -> Self {
        let membership = match &o.cluster {
            Some(c) => c
                .members
                .iter()
                .map(|m| (m.node_id.clone(), m.voter))
                .collect(),
            None => o
                .status
                .members
                .iter()
                .map(|m| (m.name.clone(), m.role == MemberRole::Voter))
                .collect(),
        };
        let leader = o.cluster.as_ref().and_then(|c| c.leader.clone());
        View {
            o,
            membership,
            leader,
        }
    }

    fn member(&self, name: &str) -> Option<&'a ObservedMember> {
        self.o.members.iter().find(|m| m.name == name)
    }

    fn pod(&self, name: &str) -> Option<&'a PodState> {
        self.member(name).and_then(|m| m.pod.as_ref())
    }

    fn ready(&self, name: &str) -> bool {
        self.pod(name)
            .is_some_and(|p| p.ready && p.phase == PodPhase::Running)
    }

    fn voters(&self) -> Vec<&str> {
        self.membership
            .iter()
            .filter(|(_, voter)| **voter)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    fn ready_voters(&self) -> usize {
        self.voters().into_iter().filter(|v| self.ready(v)).count()
    }

    fn quorum(&self) -> bool {
        let voters = self.voters().len();
        self.leader.is_some() && voters > 0 && self.ready_voters() * 2 > voters
    }

    fn version(&self) -> Option<u64> {
        self.o.cluster.as_ref().and_then(|c| c.membership_version)
    }

    fn lag(&self, name: &str) -> Option<u64> {
        let c = self.o.cluster.as_ref()?;
        c.members.iter().find(|m| m.node_id == name)?.lag
    }

    fn ordinal(&self, name: &str) -> Option<u64> {
        name.strip_prefix(&self.o.name)?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// A fresh name: replaced members are never reused, so a stale pod or volume can never be
    /// mistaken for the new member.
    fn next_member_name(&self) -> String {
        let used = self
            .membership
            .keys()
            .map(String::as_str)
            .chain(self.o.members.iter().map(|m| m.name.as_str()))
            .chain(self.o.status.members.iter().map(|m| m.name.as_str()))
            .filter_map(|n| self.ordinal(n))
            .max();
        member_name(&self.o.name, used.map_or(0, |n| n + 1))
    }
}

pub fn member_name(cluster: &str, ordinal: u64) -> String {
    format!("{cluster}-{ordinal}")
}

/// The one next step for the observed state.
pub fn decide(o: &Observed) -> Action {
    if !o.secrets_exist {
        return Action::CreateSecrets;
    }
    if !o.services_exist {
        return Action::CreateServices;
    }
    if !o.pdb_exists {
        return Action::CreatePdb;
    }
    let v = View::new(o);
    if let Some(p) = &o.status.pending_action {
        // A step that needs quorum stalls once quorum is gone; an armed forceRecoverFrom
        // takes over, since the recovery replaces every other member anyway.
        if recovery_armed(o)
            && o.status.cluster_id.is_some()
            && !matches!(p.kind, PendingKind::Recover | PendingKind::Bootstrap)
            && !v.quorum()
        {
            return quorum_lost(&v);
        }
        return finish_pending(&v, p);
    }
    let Some(cluster_id) = &o.status.cluster_id else {
        return before_bootstrap(&v);
    };
    if let Some(reported) = o.cluster.as_ref().and_then(|c| c.cluster_id.as_ref())
        && reported != cluster_id
    {
        return wait(format!(
            "the client Service reaches cluster {reported}, not the recorded {cluster_id}; \
             nothing is changed until this is resolved by hand"
        ));
    }

    // A lost pod with an intact volume comes back as the same member: never data-losing,
    // so it needs no quorum.
    for name in v.membership.keys() {
        let Some(m) = v.member(name) else { continue };
        if !m.volume || matches!(m.data, DataState::Empty | DataState::Foreign) {
            continue;
        }
        match &m.pod {
            None => return Action::CreatePod { name: name.clone() },
            Some(p) if p.phase == PodPhase::Finished => {
                return Action::DeletePod { name: name.clone() };
            }
            Some(_) => {}
        }
    }

    if !v.quorum() {
        return quorum_lost(&v);
    }

    if let Some(a) = replacement(&v) {
        return a;
    }

    // Pods and volumes of members no longer in Raft (removed, or a join that never happened).
    for m in &o.members {
        if !v.membership.contains_key(&m.name) && (m.pod.is_some() || m.volume) {
            return Action::DeletePodAndVolume {
                name: m.name.clone(),
            };
        }
    }

    if let Some((learner, _)) = v.membership.iter().find(|(_, voter)| !**voter) {
        return wait(format!("learner {learner} is catching up"));
    }

    if let Some(a) = scale(&v) {
        return a;
    }
    if let Some(a) = upgrade(&v) {
        return a;
    }
    if summarize(o) != recorded_summary(&o.status) {
        return Action::UpdateStatus;
    }
    Action::Nothing
}

fn before_bootstrap(v: &View) -> Action {
    if let Some(id) = v.o.cluster.as_ref().and_then(|c| c.cluster_id.clone()) {
        return Action::RecordClusterId { cluster_id: id };
    }
    if let Some(m) = v.o.members.first() {
        // Pods or volumes without a recorded cluster: the record may have been lost (e.g. the
        // resource was recreated). Starting a bootstrap here could create a second, empty
        // cluster beside real data, so a person decides.
        return wait(format!(
            "member {} has a pod or volume but no cluster id is recorded; refusing to \
             bootstrap over existing data",
            m.name
        ));
    }
    Action::BootstrapFirstMember {
        name: member_name(&v.o.name, 0),
    }
}

/// `spec.forceRecoverFrom` is set and has not been used yet (see `status.recoveredFrom`).
fn recovery_armed(o: &Observed) -> bool {
    o.spec.force_recover_from.is_some() && o.status.recovered_from.is_none()
}

fn quorum_lost(v: &View) -> Action {
    let voters = v.voters();
    let down: Vec<&str> = voters.iter().copied().filter(|n| !v.ready(n)).collect();
    let lost = format!(
        "quorum lost: {} of {} voters ready (down: {})",
        v.ready_voters(),
        voters.len(),
        down.join(", ")
    );
    if let Some(from) = &v.o.spec.force_recover_from {
        if let Some(done) = &v.o.status.recovered_from {
            return wait(format!(
                "{lost}; spec.forceRecoverFrom was already used (the cluster was rebuilt from \
                 {done}) and is not applied again: remove it, then set it again to rebuild once \
                 more"
            ));
        }
        return match v.member(from) {
            Some(m) if m.volume && m.data != DataState::Foreign => {
                Action::RecoverFrom { name: from.clone() }
            }
            _ => wait(format!(
                "forceRecoverFrom names {from}, which has no volume with this cluster's data"
            )),
        };
    }
    let seen = if v.o.cluster.is_none() {
        "no member answers cluster/status; "
    } else {
        ""
    };
    wait(format!(
        "{seen}{lost}; writes are refused and nothing is changed automatically. Members that \
         come back restore quorum; to rebuild from the most up-to-date surviving member instead \
         (writes only the others had are lost), set spec.forceRecoverFrom to its name"
    ))
}

/// Replace a member whose data is gone or foreign, or a voter unready for too long, while
/// quorum holds and removing it keeps it.
fn replacement(v: &View) -> Option<Action> {
    let expected_version = v.version()?;
    let voters = v.voters();
    for (name, voter) in &v.membership {
        let m = v.member(name);
        let lost_volume = m.is_none_or(|m| !m.volume);
        let bad_data = m.is_some_and(|m| matches!(m.data, DataState::Empty | DataState::Foreign));
        // A learner catching up is unready by design: never a reason to replace it.
        let long_unready = *voter
            && v.pod(name).is_some_and(|p| {
                !p.ready && p.unready_seconds >= v.o.spec.unready_replacement_seconds
            });
        if !(lost_volume || bad_data || long_unready) {
            continue;
        }
        if *voter {
            if voters.len() == 1 {
                return Some(wait(format!(
                    "{name} is the only voter and lost its data; set spec.forceRecoverFrom or \
                     restore it"
                )));
            }
            let ready_after = v.ready_voters() - usize::from(v.ready(name));
            // Ready voters must stay a majority of the `len - 1` voters left.
            if ready_after * 2 < voters.len() {
                return Some(wait(format!(
                    "{name} needs replacing, but removing it now would lose quorum"
                )));
            }
        }
        return Some(Action::RemoveMember {
            name: name.clone(),
            expected_version,
        });
    }
    None
}

fn scale(v: &View) -> Option<Action> {
    let voters = v.voters();
    let want = usize::try_from(v.o.spec.replicas).unwrap_or(0);
    if voters.len() < want {
        if let Some(down) = voters.iter().find(|n| !v.ready(n)) {
            return Some(wait(format!("{down} to be ready before adding a member")));
        }
        return Some(Action::AddMember {
            name: v.next_member_name(),
        });
    }
    if voters.len() > want {
        let expected_version = v.version()?;
        // Unready members first, then followers (newest first), the leader last.
        let mut order: Vec<&str> = voters.clone();
        order.sort_by_key(|n| {
            (
                v.ready(n),
                v.leader.as_deref() == Some(*n),
                std::cmp::Reverse(v.ordinal(n)),
            )
        });
        return Some(Action::RemoveMember {
            name: order[0].to_string(),
            expected_version,
        });
    }
    None
}

fn upgrade(v: &View) -> Option<Action> {
    let image = &v.o.spec.image;
    let voters = v.voters();
    let stale: Vec<&str> = voters
        .iter()
        .copied()
        .filter(|n| v.pod(n).is_some_and(|p| &p.image != image))
        .collect();
    if stale.is_empty() {
        return None;
    }
    let restart = |n: &str| Action::RestartMemberWithImage {
        name: n.to_string(),
        image: image.clone(),
    };
    // A member already down costs nothing to restart, so it goes first.
    if let Some(n) = stale.iter().find(|n| !v.ready(n)) {
        return Some(restart(n));
    }
    // At most one voting member down at a time.
    if let Some(down) = voters.iter().find(|n| !v.ready(n)) {
        return Some(wait(format!(
            "{down} to be ready before the next upgrade step"
        )));
    }
    let leader = v.leader.as_deref();
    if let Some(n) = stale.iter().find(|n| Some(**n) != leader) {
        return Some(restart(n));
    }
    let leader = leader?;
    if voters.len() == 1 {
        return Some(restart(leader));
    }
    // Prefer a follower already on the new image, so leadership moves exactly once.
    let mut candidates: Vec<&str> = voters
        .iter()
        .copied()
        .filter(|n| *n != leader && v.ready(n) && v.lag(n).is_none_or(|l| l <= CAUGHT_UP_LAG))
        .collect();
    candidates.sort_by_key(|n| v.pod(n).is_none_or(|p| &p.image != image));
    match candidates.first() {
        Some(to) => Some(Action::TransferLeadership {
            from: leader.to_string(),
            to: to.to_string(),
        }),
        None => Some(wait("a caught-up follower to take over leadership")),
    }
}

fn finish_pending(v: &View, p: &PendingAction) -> Action {
    let name = p.member.as_str();
    let in_raft = v.membership.get(name).copied();
    let pod = v.pod(name);
    let volume = v.member(name).is_some_and(|m| m.volume);
    let reported_id = v.o.cluster.as_ref().and_then(|c| c.cluster_id.clone());
    match p.kind {
        PendingKind::Bootstrap => {
            if v.o.status.cluster_id.is_some() {
                return clear("bootstrapped; cluster id recorded");
            }
            if let Some(id) = reported_id {
                return Action::RecordClusterId { cluster_id: id };
            }
            if pod.is_none() {
                return Action::CreatePod {
                    name: p.member.clone(),
                };
            }
            wait(format!("{name} to bootstrap and report its cluster id"))
        }
        PendingKind::AddMember => match in_raft {
            // Ready too: a voter promoted moments ago is unready until its next probe, and
            // must not look like a long-unready voter once the step is cleared.
            Some(true) if v.ready(name) => clear(format!("{name} joined as a voter and is ready")),
            Some(true) => wait(format!("voter {name} to be ready")),
            Some(false) => wait(format!("learner {name} to catch up and be promoted")),
            None if v.version() != p.expected_membership_version => {
                // Membership changed under us before this member joined: undo, decide again.
                if pod.is_some() || volume {
                    Action::DeletePodAndVolume {
                        name: p.member.clone(),
                    }
                } else {
                    clear(format!(
                        "membership changed before {name} joined; rolled back"
                    ))
                }
            }
            None if pod.is_none() => Action::CreatePod {
                name: p.member.clone(),
            },
            None => wait(format!("{name} to join")),
        },
        PendingKind::RemoveMember => match in_raft {
            Some(_) if v.version().is_some() && v.version() == p.expected_membership_version => {
                if !v.quorum() {
                    return wait(format!("quorum to remove {name}"));
                }
                Action::RemoveMember {
                    name: p.member.clone(),
                    expected_version: v.version().unwrap_or_default(),
                }
            }
            Some(_) if v.o.cluster.is_none() => wait(format!("cluster status to remove {name}")),
            Some(_) => clear(format!(
                "membership changed before {name} was removed; rolled back"
            )),
            None if pod.is_some() || volume => Action::DeletePodAndVolume {
                name: p.member.clone(),
            },
            None => clear(format!("{name} removed")),
        },
        PendingKind::TransferLeadership => match v.leader.as_deref() {
            Some(l) if l == name => clear(format!("leadership moved to {name}")),
            // Nothing to undo: the next decision transfers again if still needed.
            Some(l) => clear(format!("leader is {l}, not {name}; deciding again")),
            None => wait("a leader to be elected"),
        },
        PendingKind::RestartMember => {
            let image = p.image.as_deref().unwrap_or(&v.o.spec.image);
            match pod {
                None => Action::CreatePod {
                    name: p.member.clone(),
                },
                Some(pod) if pod.image != image => {
                    let others_down = v.voters().into_iter().any(|n| n != name && !v.ready(n));
                    if others_down {
                        clear(format!(
                            "another voter is down; restart of {name} rolled back"
                        ))
                    } else {
                        Action::RestartMemberWithImage {
                            name: p.member.clone(),
                            image: image.to_string(),
                        }
                    }
                }
                Some(_) if v.ready(name) => clear(format!("{name} runs {image} and is ready")),
                Some(_) => wait(format!("{name} to be ready on {image}")),
            }
        }
        PendingKind::Recover => {
            if let Some(id) = reported_id
                && v.o.status.cluster_id.as_ref() != Some(&id)
                && v.leader.is_some()
            {
                return Action::RecordClusterId { cluster_id: id };
            }
            if v.o.status.cluster_id.is_some() && reported_id_matches(v) && v.leader.is_some() {
                return clear(format!("recovered from {name}"));
            }
            // Every other member stopped and this one started in recovery mode; a crash
            // between those steps repeats the (idempotent) recovery step.
            let others_running =
                v.o.members
                    .iter()
                    .any(|m| m.name != name && m.pod.is_some());
            if others_running || pod.is_some_and(|p| !p.force_new_cluster) {
                return Action::RecoverFrom {
                    name: p.member.clone(),
                };
            }
            if pod.is_none() {
                return Action::CreatePod {
                    name: p.member.clone(),
                };
            }
            wait(format!("{name} to come back as a new one-member cluster"))
        }
    }
}

fn reported_id_matches(v: &View) -> bool {
    let reported = v.o.cluster.as_ref().and_then(|c| c.cluster_id.as_ref());
    reported.is_some() && reported == v.o.status.cluster_id.as_ref()
}

/// The status fields that follow from observation (conditions and message are the
/// controller's; compared apart so an unchanged cluster writes nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub observed_generation: Option<i64>,
    pub ready_members: i32,
    pub leader: Option<String>,
    pub membership_version: Option<u64>,
    pub members: Vec<MemberStatus>,
}

pub fn summarize(o: &Observed) -> Summary {
    let v = View::new(o);
    let members: Vec<MemberStatus> = v
        .membership
        .iter()
        .map(|(name, voter)| MemberStatus {
            name: name.clone(),
            pod: v.pod(name).map(|_| name.clone()),
            role: if *voter {
                MemberRole::Voter
            } else {
                MemberRole::Learner
            },
            ready: v.ready(name),
            image: v.pod(name).map(|p| p.image.clone()),
            version: v.pod(name).and_then(|p| p.version.clone()),
        })
        .collect();
    Summary {
        observed_generation: o.generation,
        ready_members: i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(0),
        leader: v.leader.clone(),
        membership_version: v.version(),
        members,
    }
}

fn recorded_summary(s: &ConcordanceClusterStatus) -> Summary {
    Summary {
        observed_generation: s.observed_generation,
        ready_members: s.ready_members,
        leader: s.leader.clone(),
        membership_version: s.membership_version,
        members: s.members.clone(),
    }
}

/// One standard condition, before timestamps: `(type, status, reason, message)`.
pub type ConditionState = (&'static str, bool, &'static str, String);

/// `Available` (quorum holds: writes are accepted), `Progressing` (a step is under way or
/// decided) and `Degraded` (fewer ready voters than asked for, or no quorum).
pub fn conditions(o: &Observed, next: &Action) -> [ConditionState; 3] {
    let v = View::new(o);
    let voters = v.voters().len();
    let ready = v.ready_voters();
    let want = usize::try_from(o.spec.replicas).unwrap_or(0);
    let quorum = v.quorum();
    let available = if quorum {
        (
            "Available",
            true,
            "QuorumHolds",
            format!("{ready} of {voters} voters ready"),
        )
    } else {
        (
            "Available",
            false,
            "NoQuorum",
            format!("{ready} of {voters} voters ready"),
        )
    };
    let busy = o.status.pending_action.is_some()
        || !matches!(next, Action::Nothing | Action::UpdateStatus);
    let progressing = if busy {
        ("Progressing", true, "StepUnderWay", format!("{next:?}"))
    } else {
        ("Progressing", false, "Settled", String::new())
    };
    let degraded = if !quorum || ready < want {
        (
            "Degraded",
            true,
            "MembersNotReady",
            format!("{ready} ready voters, {want} wanted"),
        )
    } else {
        ("Degraded", false, "AllReady", String::new())
    };
    [available, progressing, degraded]
}
