//! The reconcile decision: pure functions from what the operator observed to what it does
//! next. Keeping them pure lets every rule (and every crash point) be tested as a table
//! (`operator/tests/decide_table.rs`); the controller only carries out what they return.
//!
//! Each pass: [`objects`] says how to keep the cluster's Secrets, Services and disruption
//! budget in their rendered state; [`decide`] picks the one next membership or member step,
//! complete with everything needed to take it; [`record`] says what to write on the resource
//! as its `pendingAction` before a step a crash could leave half done (while one is recorded,
//! `decide` only finishes or rolls it back); [`report`] computes the status.

use std::collections::BTreeMap;

use concordance_client::AlarmKind;
use concordance_client::ClusterStatus;

use crate::crd::{
    ConcordanceClusterSpec, ConcordanceClusterStatus, KeysStatus, MemberRole, MemberStatus,
    PendingAction, PendingKind, TlsStatus,
};
use crate::keys::{self, KeysState, NextKeys};
use crate::resources::{self, KeyKind, StartMode};

/// Applied-index distance within which a follower counts as caught up for a leadership transfer.
const CAUGHT_UP_LAG: u64 = 100;
/// Seconds a member's claim may stay unbound before its pod is created anyway: a pod created
/// before a volume exists for it can sit unschedulable for minutes (the scheduler retries such
/// pods slowly), but a class that binds at first use binds only once a pod uses the claim.
pub const UNBOUND_CLAIM_GRACE_SECONDS: i64 = 15;

/// Why a member whose volume is pinned to drained nodes cannot run.
/// The annotation that pauses one cluster's reconciliation, with the value `"true"`.
pub const PAUSED_ANNOTATION: &str = "concordance.io/paused";

/// Why nothing happens while paused, for the status message and `Progressing`.
const PAUSED: &str = "reconciliation is paused (annotation concordance.io/paused=true): no step \
                      is taken and no object is changed, only the status is kept; a recorded \
                      step stays recorded and goes on once resumed; remove the annotation to resume";

const STRANDED: &str = "its volume can only be used on nodes that are cordoned or gone";

/// Everything the decision looks at, gathered by the controller.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Name of the `ConcordanceCluster`; members are named `<name>-<ordinal>`.
    pub name: String,
    pub generation: Option<i64>,
    pub spec: ConcordanceClusterSpec,
    pub status: ConcordanceClusterStatus,
    /// The cluster's own objects besides members: the Services and the disruption budget
    /// always, a key Secret when the operator generates it (the spec names none).
    pub objects: BTreeMap<Owned, Presence>,
    /// Secrets the spec names which do not exist (or lack the key it names).
    pub missing_secrets: Vec<MissingSecret>,
    /// `allowVolumeExpansion` of the members' StorageClass; `None` when it could not be read.
    pub volume_expansion: Option<bool>,
    /// Every member that has a pod or a volume.
    pub members: Vec<ObservedMember>,
    /// `cluster/status` through the client Service; `None` when no member answered.
    pub cluster: Option<ClusterStatus>,
    /// [`PAUSED_ANNOTATION`] is `"true"`: a person has the cluster in hand.
    pub paused: bool,
    /// TLS as the cluster runs it.
    pub tls: TlsState,
    /// The admin and agent keys, as the members hold them and as the key Secrets give them.
    pub keys: KeysState,
}

/// TLS as the cluster runs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsState {
    /// In effect: see [`tls_in_effect`].
    pub enabled: bool,
    /// The members' certificate, when its Secret exists.
    pub certificate: Option<CertificateState>,
}

/// The members' certificate as its Secret holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct CertificateState {
    /// Seconds until it expires (negative once expired); `None` when the Secret holds no
    /// readable certificate.
    pub expires_in_seconds: Option<i64>,
    /// When it expires (RFC 3339), for the status.
    pub expires: Option<String>,
    /// Issued for the cluster's current CA and names (`resources::issued_for`).
    pub current: bool,
}

/// What tells whether a cluster runs TLS.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsEvidence {
    /// Some pod or volume of the cluster exists.
    pub has_members: bool,
    /// The cluster's own CA Secret exists: it is made, before anything else, only for a
    /// cluster that runs TLS.
    pub ca_exists: bool,
    /// Some member's pod was started with a certificate.
    pub pods_with_tls: bool,
}

/// Whether a cluster runs TLS. Decided when it is created: what it was made with (its CA
/// Secret, its pods' flags) wins over a status that may be read stale; then the status; a
/// cluster with no members yet takes its spec. A cluster with members and none of these was
/// created by an operator without TLS support, and stays in plaintext (turning TLS on in a
/// running cluster takes three rolling restarts the operator does not take yet).
pub fn tls_in_effect(
    spec: &ConcordanceClusterSpec,
    status: &ConcordanceClusterStatus,
    seen: TlsEvidence,
) -> bool {
    if seen.ca_exists || seen.pods_with_tls {
        return true;
    }
    match &status.tls {
        Some(recorded) => recorded.enabled,
        None => !seen.has_members && status.cluster_id.is_none() && spec.tls_wanted(),
    }
}

/// Seconds before its expiry the members' certificate is issued again.
pub const RENEW_BEFORE_SECONDS: i64 = crate::pki::RENEW_BEFORE_DAYS * 86_400;

/// A Secret the spec names that is not there: the members could not start with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSecret {
    pub name: String,
    /// The key the spec names, when the Secret exists without it.
    pub without_key: Option<String>,
    /// The field of the spec that names it (`spec.adminKeySecret`).
    pub field: &'static str,
}

/// An object a cluster owns besides its members' pods and volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owned {
    /// A generated key Secret.
    KeySecret(KeyKind),
    /// The headless Service the members reach each other through.
    PeerService,
    /// The Service clients and joining members use.
    ClientService,
    DisruptionBudget,
    /// The cluster's CA, when it runs TLS.
    CaSecret,
    /// The members' certificate and key, when the cluster runs TLS.
    CertificateSecret,
    /// The CA certificate published for clients, when the cluster runs TLS.
    CaConfigMap,
    /// The keys the members hold, as their key files.
    MemberKeys,
}

impl Owned {
    pub fn kind(self) -> &'static str {
        match self {
            Owned::KeySecret(_)
            | Owned::CaSecret
            | Owned::CertificateSecret
            | Owned::MemberKeys => "Secret",
            Owned::PeerService | Owned::ClientService => "Service",
            Owned::DisruptionBudget => "PodDisruptionBudget",
            Owned::CaConfigMap => "ConfigMap",
        }
    }

    pub fn object_name(self, cluster: &str) -> String {
        match self {
            Owned::KeySecret(k) => resources::generated_secret_name(cluster, k),
            Owned::PeerService => resources::headless_service_name(cluster),
            Owned::ClientService => resources::client_service_name(cluster),
            Owned::DisruptionBudget => resources::pdb_name(cluster),
            Owned::CaSecret => resources::ca_secret_name(cluster),
            Owned::CertificateSecret => resources::certificate_secret_name(cluster),
            Owned::CaConfigMap => resources::ca_config_map_name(cluster),
            Owned::MemberKeys => resources::member_keys_secret_name(cluster),
        }
    }
}

/// Whether an owned object exists, and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Missing,
    /// Controlled by this cluster (its owner reference). `applied`: already kept by the
    /// operator's server-side apply (an earlier operator created objects instead).
    Ours {
        applied: bool,
    },
    /// An object of that name that this cluster does not control: never adopted.
    Foreign,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservedMember {
    pub name: String,
    pub pod: Option<PodState>,
    /// The member's PersistentVolumeClaim, when it exists (and is not being deleted).
    pub volume: Option<VolumeState>,
    /// What the member's own node says about its data directory.
    pub data: DataState,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodState {
    pub phase: PodPhase,
    /// The node's `/ready`: a leader is known and this voter is caught up.
    pub ready: bool,
    pub image: String,
    /// The pod's `concordance.io/pod-hash`; `None` on pods of an earlier operator.
    pub pod_hash: Option<String>,
    /// Seconds since the pod was created.
    pub age_seconds: i64,
    /// How long the pod has been unready (0 when ready).
    pub unready_seconds: i64,
    /// Version the node reports, when it answered.
    pub version: Option<String>,
    /// The pod was started in quorum-loss recovery mode (`--force-new-cluster`).
    pub force_new_cluster: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VolumeState {
    /// Bound to a PersistentVolume.
    pub bound: bool,
    /// Seconds since the claim was created.
    pub age_seconds: i64,
    /// The size the claim asks for.
    pub requested: Option<String>,
    /// The size the volume has.
    pub capacity: Option<String>,
    /// Seconds since the claim's file system resize became pending (it is done when the
    /// volume is next mounted), if it is.
    pub resize_pending_seconds: Option<i64>,
    /// The volume can be used only on nodes that are cordoned or gone (a drained node): the
    /// member cannot run until one comes back.
    pub stranded: bool,
}

impl VolumeState {
    /// A bound claim of `size`, long created.
    pub fn bound(size: &str) -> Self {
        VolumeState {
            bound: true,
            age_seconds: 3600,
            requested: Some(size.to_string()),
            capacity: Some(size.to_string()),
            resize_pending_seconds: None,
            stranded: false,
        }
    }
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
    /// Data that differs from the other replicas': the node fenced it (the `corrupt` alarm).
    Fenced,
}

/// The one next step, with everything needed to take it: the controller matches on it and
/// calls the API, deciding nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Recorded; creates the first member's claim (its pod follows, started with
    /// `--bootstrap`).
    Bootstrap {
        name: String,
    },
    /// Write the cluster id the node reports into the status.
    RecordClusterId {
        cluster_id: String,
    },
    /// Create a member's claim.
    CreateVolume {
        name: String,
    },
    /// Create a member's pod (its claim exists).
    CreatePod {
        name: String,
        image: String,
        mode: StartMode,
    },
    /// Delete a member's pod: it is created again as the same member.
    DeletePod {
        name: String,
    },
    /// Recorded; creates the claim of a new member, whose pod then joins as a learner and is
    /// promoted to voter.
    AddMember {
        name: String,
    },
    /// Recorded; the membership change, carrying the version it expects. `stop_first`: delete
    /// the member's pod before (a member that cannot serve loses nothing by stopping, and a
    /// stopped one cannot rejoin under its old name between its removal and its deletion).
    RemoveMember {
        name: String,
        expected_version: u64,
        stop_first: bool,
    },
    /// Only once the member is out of the Raft membership.
    DeletePodAndVolume {
        name: String,
    },
    /// Recorded.
    TransferLeadership {
        from: String,
        to: String,
    },
    /// Recorded; deletes the pod, which is created again from the current spec.
    RestartMember {
        name: String,
        image: String,
        pod_hash: String,
    },
    /// After quorum loss, on request; recorded. Deletes the pods in `delete` (every other
    /// member's, and `name`'s own unless it already runs in recovery mode); `name` then comes
    /// back in the node's recovery mode (a one-member cluster with a new id) and the others
    /// join afresh.
    RecoverFrom {
        name: String,
        delete: Vec<String>,
    },
    /// Ask for a larger volume (the claim's requested size).
    ExpandVolume {
        name: String,
        size: String,
    },
    /// The recorded step is finished or rolled back; the reason goes to the status message.
    /// A finished recovery spends `spec.forceRecoverFrom` (`status.recoveredFrom`).
    ClearPending {
        reason: String,
        recovered_from: Option<String>,
    },
    WaitFor {
        reason: String,
    },
    UpdateStatus,
    Nothing,
}

/// How a step is named and described, in the status, Events, logs and metrics alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionInfo {
    /// Short name: the metric label and the Event action.
    pub name: &'static str,
    /// The Event reason, for the steps that change membership or a member's life.
    pub event: Option<&'static str>,
    pub description: String,
}

impl Action {
    pub fn info(&self) -> ActionInfo {
        let (name, event, description) = match self {
            Action::Bootstrap { name } => (
                "Bootstrap",
                Some("Bootstrapping"),
                format!("bootstrap the cluster with {name}"),
            ),
            Action::RecordClusterId { cluster_id } => (
                "RecordClusterId",
                Some("ClusterIdRecorded"),
                format!("record cluster id {cluster_id}"),
            ),
            Action::CreateVolume { name } => (
                "CreateVolume",
                Some("MemberVolumeCreated"),
                format!("create the volume of {name}"),
            ),
            Action::CreatePod { name, image, mode } => {
                let how = match mode {
                    StartMode::Bootstrap => "to bootstrap",
                    StartMode::Join => "to join or resume",
                    StartMode::ForceNewCluster { .. } => "in recovery mode",
                };
                (
                    "CreatePod",
                    Some("MemberPodCreated"),
                    format!("create the pod of {name} on {image}, {how}"),
                )
            }
            Action::DeletePod { name } => (
                "DeletePod",
                Some("MemberPodDeleted"),
                format!("delete the pod of {name} to create it again"),
            ),
            Action::AddMember { name } => (
                "AddMember",
                Some("MemberAdding"),
                format!("add member {name}"),
            ),
            Action::RemoveMember {
                name,
                expected_version,
                stop_first,
            } => (
                "RemoveMember",
                Some("MemberRemoved"),
                format!(
                    "remove {name} from the membership (at version {expected_version}){}",
                    if *stop_first {
                        ", its pod stopped first"
                    } else {
                        ""
                    }
                ),
            ),
            Action::DeletePodAndVolume { name } => (
                "DeleteMemberPodAndVolume",
                Some("MemberDeleted"),
                format!("delete the pod and volume of {name}"),
            ),
            Action::TransferLeadership { from, to } => (
                "TransferLeadership",
                Some("LeadershipTransferred"),
                format!("transfer leadership from {from} to {to}"),
            ),
            Action::RestartMember {
                name,
                image,
                pod_hash,
            } => (
                "RestartMember",
                Some("MemberRestarting"),
                format!("restart {name} onto the current spec ({image}, pod hash {pod_hash})"),
            ),
            Action::RecoverFrom { name, delete } => (
                "ForceRecover",
                Some("ForceRecovering"),
                if delete.is_empty() {
                    format!("rebuild the cluster from {name}'s data")
                } else {
                    format!(
                        "rebuild the cluster from {name}'s data (stopping {})",
                        delete.join(", ")
                    )
                },
            ),
            Action::ExpandVolume { name, size } => (
                "ExpandVolume",
                Some("VolumeExpanding"),
                format!("expand the volume of {name} to {size}"),
            ),
            Action::ClearPending { reason, .. } => {
                ("StepDone", Some("StepCompleted"), reason.clone())
            }
            Action::WaitFor { reason } => ("Wait", None, format!("waiting: {reason}")),
            Action::UpdateStatus => ("UpdateStatus", None, "update the status".to_string()),
            Action::Nothing => ("Nothing", None, "nothing to do".to_string()),
        };
        ActionInfo {
            name,
            event,
            description,
        }
    }

    /// Whether the step changes something (the status aside).
    pub fn is_step(&self) -> bool {
        !matches!(
            self,
            Action::Nothing | Action::UpdateStatus | Action::WaitFor { .. }
        )
    }

    /// The record of this step, for steps a crash could leave half done; `None` for
    /// idempotent steps.
    pub fn to_pending(&self, o: &Observed) -> Option<PendingAction> {
        let version = o.cluster.as_ref().and_then(|c| c.membership_version);
        let (kind, member, image, pod_hash) = match self {
            Action::Bootstrap { name } => (PendingKind::Bootstrap, name, None, None),
            Action::AddMember { name } => (PendingKind::AddMember, name, None, None),
            Action::RemoveMember { name, .. } => (PendingKind::RemoveMember, name, None, None),
            Action::TransferLeadership { to, .. } => {
                (PendingKind::TransferLeadership, to, None, None)
            }
            Action::RestartMember {
                name,
                image,
                pod_hash,
            } => (
                PendingKind::RestartMember,
                name,
                Some(image.clone()),
                Some(pod_hash.clone()),
            ),
            Action::RecoverFrom { name, .. } => (PendingKind::Recover, name, None, None),
            _ => return None,
        };
        Some(PendingAction {
            kind,
            member: member.clone(),
            expected_membership_version: version,
            image,
            pod_hash,
            started: None,
        })
    }
}

/// What to write as `status.pendingAction` before taking `next`: a new step's record when
/// none is recorded, or a recovery's, which replaces a step that quorum loss stalled.
pub fn record(o: &Observed, next: &Action) -> Option<PendingAction> {
    let new = next.to_pending(o)?;
    match &o.status.pending_action {
        None => Some(new),
        Some(current)
            if new.kind == PendingKind::Recover && current.kind != PendingKind::Recover =>
        {
            Some(new)
        }
        Some(_) => None,
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
        recovered_from: None,
    }
}

/// How to keep an owned object in its rendered state this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectStep {
    /// Create the generated key Secret, with a new random key.
    CreateKeySecret(KeyKind),
    /// Apply the labels and owner of an existing generated key Secret, never its data.
    KeepKeySecret(KeyKind),
    ApplyPeerService,
    ApplyClientService,
    ApplyDisruptionBudget {
        min_available: i32,
    },
    /// Delete an object the cluster owns and no longer needs (or one of an earlier shape that
    /// applying cannot turn into the current one; it is created again on the next pass).
    Delete(Owned),
    /// Create the cluster's CA Secret, with a new CA.
    CreateCa,
    /// Issue the members' certificate from the CA Secret, into its Secret (created or
    /// replaced): the members read the new files with no restart.
    IssueCertificate {
        why: &'static str,
    },
    /// Publish the CA Secret's certificate in the ConfigMap.
    ApplyCaConfigMap,
    /// Write the member keys Secret: the members read the new key files with no restart.
    WriteMemberKeys(NextKeys),
}

/// The owned objects to apply, create or delete this pass. Objects that exist under another
/// owner are left alone: [`decide`] refuses to go on while there are any.
pub fn objects(o: &Observed) -> Vec<ObjectStep> {
    if o.paused {
        return Vec::new();
    }
    let presence = |owned: Owned| o.objects.get(&owned).copied().unwrap_or(Presence::Missing);
    let mut steps = Vec::new();
    for key in [KeyKind::Admin, KeyKind::Agent] {
        // Only generated Secrets are in `objects`; a Secret the spec names is the user's.
        match o.objects.get(&Owned::KeySecret(key)) {
            Some(Presence::Missing) => steps.push(ObjectStep::CreateKeySecret(key)),
            Some(Presence::Ours { .. }) => steps.push(ObjectStep::KeepKeySecret(key)),
            _ => {}
        }
    }
    for (owned, step) in [
        (Owned::PeerService, ObjectStep::ApplyPeerService),
        (Owned::ClientService, ObjectStep::ApplyClientService),
    ] {
        if presence(owned) != Presence::Foreign {
            steps.push(step);
        }
    }
    match (min_available(o), presence(Owned::DisruptionBudget)) {
        (_, Presence::Foreign) | (None, Presence::Missing) => {}
        // An earlier operator's budget (`maxUnavailable`, which cannot sit beside
        // `minAvailable`): replaced.
        (Some(_), Presence::Ours { applied: false }) | (None, Presence::Ours { .. }) => {
            steps.push(ObjectStep::Delete(Owned::DisruptionBudget))
        }
        (Some(min_available), _) => steps.push(ObjectStep::ApplyDisruptionBudget { min_available }),
    }
    if o.tls.enabled {
        steps.extend(tls_objects(o));
    }
    if presence(Owned::MemberKeys) != Presence::Foreign
        && let Some(next) = keys::decide(&o.keys, o.spec.key_rotation_grace_seconds).next
    {
        steps.push(ObjectStep::WriteMemberKeys(next));
    }
    steps
}

/// The CA first, then the certificate it signs, then the CA's publication. An object that
/// belongs to someone else stops the chain: [`decide`] waits on it.
fn tls_objects(o: &Observed) -> Vec<ObjectStep> {
    let presence = |owned: Owned| o.objects.get(&owned).copied().unwrap_or(Presence::Missing);
    let mut steps = Vec::new();
    match presence(Owned::CaSecret) {
        Presence::Foreign => return steps,
        Presence::Missing => steps.push(ObjectStep::CreateCa),
        Presence::Ours { .. } => {}
    }
    let why = match (presence(Owned::CertificateSecret), &o.tls.certificate) {
        (Presence::Foreign, _) => return steps,
        (Presence::Missing, _) | (_, None) => Some("there is none"),
        (_, Some(c)) if !c.current => Some("it was issued for another CA or other names"),
        (_, Some(c)) => match c.expires_in_seconds {
            None => Some("its Secret holds no readable certificate"),
            Some(left) if left < RENEW_BEFORE_SECONDS => Some("it expires soon"),
            Some(_) => None,
        },
    };
    if let Some(why) = why {
        steps.push(ObjectStep::IssueCertificate { why });
    }
    if presence(Owned::CaConfigMap) != Presence::Foreign {
        steps.push(ObjectStep::ApplyCaConfigMap);
    }
    steps
}

/// The disruption budget's `minAvailable`: one voter less than the membership, and never less
/// than a majority. So a healthy cluster allows exactly one voluntary disruption (a drain, an
/// eviction), and a cluster with a member down (or a membership of two) allows none. `None`
/// for a one-member cluster, which gets no budget: a drain evicts its only member (the cluster
/// is down until the pod runs again), where a budget would block the drain for good.
pub fn min_available(o: &Observed) -> Option<i32> {
    let voters = View::new(o).voters().len();
    if o.spec.replicas <= 1 && voters <= 1 {
        return None;
    }
    let voters = i32::try_from(voters.max(1)).unwrap_or(i32::MAX);
    Some((voters - 1).max(voters / 2 + 1))
}

/// Derived facts shared by the rules.
struct View<'a> {
    o: &'a Observed,
    /// Raft members by name: `true` for voters. From the node when it answers, else the record.
    membership: BTreeMap<String, bool>,
    leader: Option<String>,
    /// What the current spec puts in a pod.
    pod_hash: String,
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
            pod_hash: resources::pod_hash(&o.spec, o.tls.enabled),
        }
    }

    fn member(&self, name: &str) -> Option<&'a ObservedMember> {
        self.o.members.iter().find(|m| m.name == name)
    }

    fn pod(&self, name: &str) -> Option<&'a PodState> {
        self.member(name).and_then(|m| m.pod.as_ref())
    }

    fn volume(&self, name: &str) -> Option<&'a VolumeState> {
        self.member(name).and_then(|m| m.volume.as_ref())
    }

    fn ready(&self, name: &str) -> bool {
        self.pod(name)
            .is_some_and(|p| p.ready && p.phase == PodPhase::Running)
    }

    /// The member's pod runs what the current spec asks for.
    fn up_to_date(&self, name: &str) -> bool {
        self.pod(name).is_some_and(|p| match &p.pod_hash {
            Some(h) => *h == self.pod_hash,
            // A pod of an earlier operator, which stamped no hash: current while it runs the
            // spec's image, so upgrading the operator restarts nothing.
            None => p.image == self.o.spec.image,
        })
    }

    /// The member's volume grew while its pod ran, and the file system grows only when the
    /// volume is mounted again.
    fn resize_waits_for_restart(&self, name: &str) -> bool {
        match (self.pod(name), self.volume(name)) {
            (Some(p), Some(v)) => v
                .resize_pending_seconds
                .is_some_and(|since| p.age_seconds > since),
            _ => false,
        }
    }

    fn needs_restart(&self, name: &str) -> bool {
        self.pod(name).is_some() && (!self.up_to_date(name) || self.resize_waits_for_restart(name))
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

    /// The step that brings a member's pod up: its claim first, then (once the claim is bound,
    /// or after a grace) the pod, on the spec's image.
    fn start(&self, name: &str, mode: StartMode) -> Action {
        match self.volume(name) {
            None => Action::CreateVolume {
                name: name.to_string(),
            },
            Some(v) if !v.bound && v.age_seconds < UNBOUND_CLAIM_GRACE_SECONDS => {
                wait(format!("the volume of {name} to be bound"))
            }
            Some(_) => Action::CreatePod {
                name: name.to_string(),
                image: self.o.spec.image.clone(),
                mode,
            },
        }
    }

    fn remove(&self, name: &str, expected_version: u64) -> Action {
        Action::RemoveMember {
            name: name.to_string(),
            expected_version,
            stop_first: self.pod(name).is_some() && !self.ready(name),
        }
    }

    fn restart(&self, name: &str) -> Action {
        Action::RestartMember {
            name: name.to_string(),
            image: self.o.spec.image.clone(),
            pod_hash: self.pod_hash.clone(),
        }
    }

    /// Objects of the cluster's names that belong to someone else.
    fn foreign_objects(&self) -> Vec<String> {
        self.o
            .objects
            .iter()
            .filter(|(_, p)| **p == Presence::Foreign)
            .map(|(k, _)| format!("{} {}", k.kind(), k.object_name(&self.o.name)))
            .collect()
    }

    fn missing_secrets(&self) -> Vec<String> {
        self.o
            .missing_secrets
            .iter()
            .map(|m| match &m.without_key {
                None => format!("Secret {} ({})", m.name, m.field),
                Some(key) => format!("key {key} of Secret {} ({})", m.name, m.field),
            })
            .collect()
    }
}

pub fn member_name(cluster: &str, ordinal: u64) -> String {
    format!("{cluster}-{ordinal}")
}

/// The one next step for the observed state.
pub fn decide(o: &Observed) -> Action {
    if o.paused {
        return wait(PAUSED);
    }
    let v = View::new(o);
    let foreign = v.foreign_objects();
    if !foreign.is_empty() {
        return wait(format!(
            "{} already exist(s) and do(es) not belong to this cluster; it is not adopted: \
             delete or rename it, or give the cluster another name",
            foreign.join(", ")
        ));
    }
    let missing = v.missing_secrets();
    if !missing.is_empty() {
        return wait(format!(
            "{} named by the spec do(es) not exist",
            missing.join(", ")
        ));
    }
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
    // so it needs no quorum. Not where the volume cannot follow it: that member is replaced.
    for name in v.membership.keys() {
        let Some(m) = v.member(name) else { continue };
        if m.volume.as_ref().is_none_or(|vol| vol.stranded)
            || matches!(
                m.data,
                DataState::Empty | DataState::Foreign | DataState::Fenced
            )
        {
            continue;
        }
        match &m.pod {
            None => return v.start(name, StartMode::Join),
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
        if !v.membership.contains_key(&m.name) && (m.pod.is_some() || m.volume.is_some()) {
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
    if let Some(a) = roll(&v) {
        return a;
    }
    if let Some(a) = expansion(&v) {
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
    Action::Bootstrap {
        name: member_name(&v.o.name, 0),
    }
}

/// `spec.forceRecoverFrom` is set and has not been used yet (see `status.recoveredFrom`).
fn recovery_armed(o: &Observed) -> bool {
    o.spec.force_recover_from.is_some() && o.status.recovered_from.is_none()
}

fn recover_from(v: &View, name: &str) -> Action {
    let mut delete: Vec<String> =
        v.o.members
            .iter()
            .filter(|m| m.name != name && m.pod.is_some())
            .map(|m| m.name.clone())
            .collect();
    // Created again in recovery mode on a later pass, once this one is gone.
    if v.pod(name).is_some_and(|p| !p.force_new_cluster) {
        delete.push(name.to_string());
    }
    Action::RecoverFrom {
        name: name.to_string(),
        delete,
    }
}

fn quorum_lost(v: &View) -> Action {
    let voters = v.voters();
    let down: Vec<String> = voters
        .iter()
        .filter(|n| !v.ready(n))
        .map(|n| match v.volume(n) {
            Some(vol) if vol.stranded => {
                format!("{n} ({STRANDED})")
            }
            _ => n.to_string(),
        })
        .collect();
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
            Some(m)
                if m.volume.is_some()
                    && !matches!(m.data, DataState::Foreign | DataState::Fenced) =>
            {
                recover_from(v, from)
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

/// Replace a member whose data is gone or foreign, a voter unready for too long, or a member
/// that cannot run because its volume is pinned to nodes that are cordoned or gone (a drained
/// node: waiting for it could take days), while quorum holds and removing it keeps it.
fn replacement(v: &View) -> Option<Action> {
    let expected_version = v.version()?;
    let voters = v.voters();
    for (name, voter) in &v.membership {
        let m = v.member(name);
        let volume = m.and_then(|m| m.volume.as_ref());
        let unready_for = v
            .pod(name)
            .filter(|p| !p.ready)
            .map_or(0, |p| p.unready_seconds);
        let why = if volume.is_none() {
            "its volume is lost".to_string()
        } else if m.is_some_and(|m| m.data == DataState::Empty) {
            "its data dir is empty".to_string()
        } else if m.is_some_and(|m| m.data == DataState::Foreign) {
            "its data belongs to another cluster".to_string()
        } else if m.is_some_and(|m| m.data == DataState::Fenced) {
            "its state differs from the other replicas' (the corrupt alarm fenced it)".to_string()
        } else if *voter
            && v.pod(name).is_some()
            && unready_for >= v.o.spec.unready_replacement_seconds
        {
            // A learner catching up is unready by design: never a reason to replace it.
            format!("it has been unready for {unready_for} s")
        } else if volume.is_some_and(|vol| vol.stranded) && !v.ready(name) {
            STRANDED.to_string()
        } else {
            continue;
        };
        if *voter {
            if voters.len() == 1 {
                return Some(wait(format!(
                    "{name} is the only voter and {why}; bring its node or data back, or \
                     restore it (spec.forceRecoverFrom needs a member with data)"
                )));
            }
            let ready_after = v.ready_voters() - usize::from(v.ready(name));
            // Ready voters must stay a majority of the `len - 1` voters left.
            if ready_after * 2 < voters.len() {
                return Some(wait(format!(
                    "{name} needs replacing ({why}), but removing it now would lose quorum"
                )));
            }
        }
        return Some(v.remove(name, expected_version));
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
        return Some(v.remove(order[0], expected_version));
    }
    None
}

/// Every change that reaches the pods (image, pod settings, node config, a volume whose file
/// system waits for a remount) rolls through the members the same way: members already down
/// first, then followers, the leader last after handing leadership to a caught-up follower
/// already on the current spec (so it moves once); never a second voter down.
fn roll(v: &View) -> Option<Action> {
    let voters = v.voters();
    let stale: Vec<&str> = voters
        .iter()
        .copied()
        .filter(|n| v.needs_restart(n))
        .collect();
    if stale.is_empty() {
        return None;
    }
    // A member already down costs nothing to restart, so it goes first.
    if let Some(n) = stale.iter().find(|n| !v.ready(n)) {
        return Some(v.restart(n));
    }
    // At most one voting member down at a time.
    if let Some(down) = voters.iter().find(|n| !v.ready(n)) {
        return Some(wait(format!("{down} to be ready before the next restart")));
    }
    let leader = v.leader.as_deref();
    if let Some(n) = stale.iter().find(|n| Some(**n) != leader) {
        return Some(v.restart(n));
    }
    let leader = leader?;
    if voters.len() == 1 {
        return Some(v.restart(leader));
    }
    // Prefer a follower already on the current spec, so leadership moves exactly once.
    let mut candidates: Vec<&str> = voters
        .iter()
        .copied()
        .filter(|n| *n != leader && v.ready(n) && v.lag(n).is_none_or(|l| l <= CAUGHT_UP_LAG))
        .collect();
    candidates.sort_by_key(|n| v.needs_restart(n));
    match candidates.first() {
        Some(to) => Some(Action::TransferLeadership {
            from: leader.to_string(),
            to: to.to_string(),
        }),
        None => Some(wait("a caught-up follower to take over leadership")),
    }
}

/// Members whose claim asks for less than `spec.storage.size`.
fn smaller_volumes<'a>(v: &View<'a>) -> Vec<&'a str> {
    let Some(want) = resources::quantity_value(&v.o.spec.storage.size) else {
        return Vec::new();
    };
    members_with_volume_below(v, want, |vol| vol.requested.as_deref())
}

/// Members whose volume's size, as `size_of` reads it (asked for or had), is below `want`.
fn members_with_volume_below<'a>(
    v: &View<'a>,
    want: f64,
    size_of: impl Fn(&'a VolumeState) -> Option<&'a str>,
) -> Vec<&'a str> {
    v.o.members
        .iter()
        .filter(|m| v.membership.contains_key(&m.name))
        .filter(|m| {
            m.volume
                .as_ref()
                .and_then(&size_of)
                .and_then(resources::quantity_value)
                .is_some_and(|size| size < want)
        })
        .map(|m| m.name.as_str())
        .collect()
}

/// A larger `spec.storage.size` reaches the claims where the StorageClass allows expansion
/// (where it does not, the `StorageResized` condition says so).
fn expansion(v: &View) -> Option<Action> {
    if v.o.volume_expansion != Some(true) {
        return None;
    }
    let name = smaller_volumes(v).first()?.to_string();
    Some(Action::ExpandVolume {
        name,
        size: v.o.spec.storage.size.clone(),
    })
}

fn finish_pending(v: &View, p: &PendingAction) -> Action {
    let name = p.member.as_str();
    let in_raft = v.membership.get(name).copied();
    let pod = v.pod(name);
    let has_volume = v.volume(name).is_some();
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
                return v.start(name, StartMode::Bootstrap);
            }
            wait(format!("{name} to bootstrap and report its cluster id"))
        }
        PendingKind::AddMember => match in_raft {
            // Ready too: a voter promoted moments ago is unready until its next probe, and
            // must not look like a long-unready voter once the step is cleared.
            Some(true) if v.ready(name) => clear(format!("{name} joined as a voter and is ready")),
            Some(true) => wait(format!("voter {name} to be ready")),
            Some(false) => wait(format!("learner {name} to catch up and be promoted")),
            // Without an answer nobody can tell whether the join went through.
            None if v.o.cluster.is_none() => wait(format!(
                "a member to answer cluster/status, to see whether {name} joined"
            )),
            None if v.version() != p.expected_membership_version => {
                // Membership changed under us before this member joined: undo, decide again.
                if pod.is_some() || has_volume {
                    Action::DeletePodAndVolume {
                        name: p.member.clone(),
                    }
                } else {
                    clear(format!(
                        "membership changed before {name} joined; rolled back"
                    ))
                }
            }
            None if pod.is_none() => v.start(name, StartMode::Join),
            // The spec changed before it joined (an image, or the port joins go through):
            // started again from the current spec.
            None if v.needs_restart(name) => Action::DeletePod {
                name: p.member.clone(),
            },
            None => wait(format!("{name} to join")),
        },
        PendingKind::RemoveMember => match in_raft {
            Some(_) if v.version().is_some() && v.version() == p.expected_membership_version => {
                if !v.quorum() {
                    return wait(format!("quorum to remove {name}"));
                }
                v.remove(name, v.version().unwrap_or_default())
            }
            Some(_) if v.o.cluster.is_none() => wait(format!("cluster status to remove {name}")),
            Some(_) => clear(format!(
                "membership changed before {name} was removed; rolled back"
            )),
            None if pod.is_some() || has_volume => Action::DeletePodAndVolume {
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
            // The pod is created from the spec in force: a spec changed again meanwhile (an
            // image reverted) is what the member restarts onto.
            let image = &v.o.spec.image;
            match pod {
                None => v.start(name, StartMode::Join),
                Some(_) if v.needs_restart(name) => {
                    let others_down = v.voters().into_iter().any(|n| n != name && !v.ready(n));
                    if others_down {
                        clear(format!(
                            "another voter is down; restart of {name} rolled back"
                        ))
                    } else {
                        v.restart(name)
                    }
                }
                Some(_) if v.ready(name) => clear(format!(
                    "{name} runs the current spec ({image}) and is ready"
                )),
                Some(_) => wait(format!("{name} to be ready on the current spec ({image})")),
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
                return Action::ClearPending {
                    reason: format!("recovered from {name}"),
                    recovered_from: Some(p.member.clone()),
                };
            }
            // Every other member stopped and this one started in recovery mode; a crash
            // between those steps repeats the (idempotent) recovery step.
            let others_running =
                v.o.members
                    .iter()
                    .any(|m| m.name != name && m.pod.is_some());
            if others_running || pod.is_some_and(|p| !p.force_new_cluster) {
                return recover_from(v, name);
            }
            if pod.is_none() {
                let mode = match &v.o.status.cluster_id {
                    Some(old) => StartMode::ForceNewCluster {
                        old_cluster_id: old.clone(),
                    },
                    None => StartMode::Join,
                };
                return v.start(name, mode);
            }
            wait(format!("{name} to come back as a new one-member cluster"))
        }
    }
}

fn reported_id_matches(v: &View) -> bool {
    let reported = v.o.cluster.as_ref().and_then(|c| c.cluster_id.as_ref());
    reported.is_some() && reported == v.o.status.cluster_id.as_ref()
}

/// The status fields that follow from observation (compared apart from conditions and message
/// so an unchanged cluster writes nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub observed_generation: Option<i64>,
    pub replicas: i32,
    pub ready_members: i32,
    pub updated_members: i32,
    pub selector: Option<String>,
    pub pod_hash: Option<String>,
    pub leader: Option<String>,
    pub membership_version: Option<u64>,
    pub members: Vec<MemberStatus>,
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
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
            up_to_date: v.up_to_date(name),
            image: v.pod(name).map(|p| p.image.clone()),
            version: v.pod(name).and_then(|p| p.version.clone()),
        })
        .collect();
    let voters = v.voters();
    Summary {
        observed_generation: o.generation,
        replicas: count(voters.len()),
        ready_members: count(members.iter().filter(|m| m.ready).count()),
        updated_members: count(voters.iter().filter(|n| v.up_to_date(n)).count()),
        selector: Some(resources::selector(&o.name)),
        pod_hash: Some(v.pod_hash.clone()),
        leader: v.leader.clone(),
        membership_version: v.version(),
        members,
    }
}

fn recorded_summary(s: &ConcordanceClusterStatus) -> Summary {
    Summary {
        observed_generation: s.observed_generation,
        replicas: s.replicas,
        ready_members: s.ready_members,
        updated_members: s.updated_members,
        selector: s.selector.clone(),
        pod_hash: s.pod_hash.clone(),
        leader: s.leader.clone(),
        membership_version: s.membership_version,
        members: s.members.clone(),
    }
}

/// One standard condition, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionState {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn condition(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> ConditionState {
    ConditionState {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

/// `Ready` (the cluster is whole: every member the spec asks for is a ready voter on the
/// current spec, quorum holds, nothing under way), `Available` (quorum holds: writes are
/// accepted), `Progressing` (a step is under way or awaited), `Degraded` (fewer ready voters
/// than asked for, or no quorum), `StorageResized` (every volume has the spec's size) and
/// `SpaceAvailable` (no member's `no_space` alarm is raised).
pub fn conditions(o: &Observed, next: &Action) -> Vec<ConditionState> {
    let v = View::new(o);
    let voters = v.voters();
    let ready = v.ready_voters();
    let want = usize::try_from(o.spec.replicas).unwrap_or(0);
    let quorum = v.quorum();
    let voters_ready = format!("{ready} of {} voters ready", voters.len());
    let available = if quorum {
        condition("Available", true, "QuorumHolds", voters_ready.clone())
    } else {
        condition("Available", false, "NoQuorum", voters_ready.clone())
    };
    let busy = !o.paused
        && (o.status.pending_action.is_some()
            || !matches!(next, Action::Nothing | Action::UpdateStatus));
    let progressing = if o.paused {
        condition("Progressing", false, "Paused", PAUSED)
    } else if busy {
        condition("Progressing", true, "StepUnderWay", next.info().description)
    } else {
        condition("Progressing", false, "Settled", "")
    };
    let degraded = if !quorum || ready < want {
        condition(
            "Degraded",
            true,
            "MembersNotReady",
            format!("{ready} ready voters, {want} wanted"),
        )
    } else {
        condition("Degraded", false, "AllReady", "")
    };
    vec![
        ready_condition(&v, next, busy),
        available,
        progressing,
        degraded,
        storage_condition(&v),
        space_condition(o),
        tls_condition(o),
        keys_condition(o),
    ]
}

/// `KeysInForce`: whether the members hold the keys the key Secrets give, and where a
/// rotation is when they do not.
fn keys_condition(o: &Observed) -> ConditionState {
    let decided = keys::decide(&o.keys, o.spec.key_rotation_grace_seconds);
    let Some(held) = &o.keys.held else {
        return if decided.unusable {
            condition(
                "KeysInForce",
                false,
                "KeyNotUsable",
                decided.waiting.join("; "),
            )
        } else {
            condition(
                "KeysInForce",
                false,
                "KeysFromSecrets",
                "the members take their keys from the key Secrets until the member keys Secret \
                 is made",
            )
        };
    };
    let rotating = held.admin.phase != keys::Phase::InForce
        || held.agent.phase != keys::Phase::InForce
        || decided.next.is_some();
    if decided.unusable {
        condition(
            "KeysInForce",
            false,
            "KeyNotUsable",
            decided.waiting.join("; "),
        )
    } else if rotating {
        let mut what = decided.waiting.clone();
        if let Some(next) = &decided.next {
            what.insert(0, next.why.clone());
        }
        condition("KeysInForce", false, "Rotating", what.join("; "))
    } else {
        condition(
            "KeysInForce",
            true,
            "InForce",
            format!(
                "every member holds the admin and agent keys of the key Secrets (Secret {})",
                resources::member_keys_secret_name(&o.name)
            ),
        )
    }
}

/// `status.keys`: each key file's phase.
pub fn keys_status(o: &Observed) -> Option<KeysStatus> {
    o.keys.held.as_ref().map(|h| KeysStatus {
        admin: h.admin.phase.name().to_string(),
        agent: h.agent.phase.name().to_string(),
    })
}

/// A key rotation is under way: the cluster is looked at again soon.
pub fn keys_rotating(o: &Observed) -> bool {
    o.keys.held.as_ref().is_some_and(|h| {
        h.admin.phase != keys::Phase::InForce || h.agent.phase != keys::Phase::InForce
    }) || keys::decide(&o.keys, o.spec.key_rotation_grace_seconds)
        .next
        .is_some()
}

/// `TLS`: whether the members serve TLS, and why not when the spec asks for it.
fn tls_condition(o: &Observed) -> ConditionState {
    let name = &o.name;
    match (o.tls.enabled, o.spec.tls_wanted()) {
        (true, _) => condition(
            "TLS",
            true,
            "Enabled",
            format!(
                "members serve TLS only and know each other by certificate; clients trust the \
                 CA in ConfigMap {}",
                resources::ca_config_map_name(name)
            ),
        ),
        (false, false) => condition("TLS", false, "Disabled", "spec.tls.enabled is false"),
        (false, true) => condition(
            "TLS",
            false,
            "CreatedWithoutTLS",
            "the cluster was created by an operator without TLS support and stays in plaintext; \
             the operator does not turn TLS on in a running cluster yet (docs/security.md has \
             the steps for members run by hand)",
        ),
    }
}

/// `status.tls`.
fn tls_status(o: &Observed) -> TlsStatus {
    TlsStatus {
        enabled: o.tls.enabled,
        ca_config_map: o
            .tls
            .enabled
            .then(|| resources::ca_config_map_name(&o.name)),
        certificate_expires: o.tls.certificate.as_ref().and_then(|c| c.expires.clone()),
    }
}

/// `SpaceAvailable`: false while a member's `no_space` alarm is raised (the node refuses
/// writes that grow the state until it is disarmed).
fn space_condition(o: &Observed) -> ConditionState {
    let alarms: Vec<String> = o
        .cluster
        .iter()
        .flat_map(|c| &c.alarms)
        .filter(|a| a.kind == AlarmKind::NoSpace)
        .map(|a| format!("{}: {}", a.member, a.detail))
        .collect();
    if alarms.is_empty() {
        return condition("SpaceAvailable", true, "WithinQuota", "");
    }
    condition(
        "SpaceAvailable",
        false,
        "NoSpaceAlarm",
        format!(
            "writes that grow the state are refused (no_space alarm on {}); grow \
             spec.storage.size (or delete keys and POST /api/v1/cluster/compact), then \
             POST /api/v1/cluster/alarms/disarm",
            alarms.join("; ")
        ),
    )
}

/// `Ready` with the first of what is missing as its reason, and all of it in its message.
fn ready_condition(v: &View, next: &Action, busy: bool) -> ConditionState {
    let o = v.o;
    let voters = v.voters();
    let want = usize::try_from(o.spec.replicas).unwrap_or(0);
    let mut missing: Vec<(&'static str, String)> = Vec::new();
    let foreign = v.foreign_objects();
    if !foreign.is_empty() {
        missing.push((
            "ObjectConflict",
            format!("{} belong(s) to someone else", foreign.join(", ")),
        ));
    }
    let secrets = v.missing_secrets();
    if !secrets.is_empty() {
        missing.push(("SecretMissing", format!("{} missing", secrets.join(", "))));
    }
    if o.status.cluster_id.is_none() {
        let why = match next {
            Action::WaitFor { reason } => format!("the cluster is not bootstrapped: {reason}"),
            _ => "the cluster is being bootstrapped".to_string(),
        };
        missing.push(("Bootstrapping", why));
    } else if !v.quorum() {
        missing.push(("NoQuorum", "quorum is lost".into()));
    }
    let learners: Vec<&str> = v
        .membership
        .iter()
        .filter(|(_, voter)| !**voter)
        .map(|(n, _)| n.as_str())
        .collect();
    if voters.len() != want || !learners.is_empty() {
        let mut m = format!("{} of {want} voters", voters.len());
        if !learners.is_empty() {
            m.push_str(&format!(" (learner {} catching up)", learners.join(", ")));
        }
        missing.push(("Scaling", m));
    }
    let down: Vec<&str> = voters.iter().copied().filter(|n| !v.ready(n)).collect();
    if !down.is_empty() {
        missing.push(("MembersNotReady", format!("not ready: {}", down.join(", "))));
    }
    let stale: Vec<&str> = voters
        .iter()
        .copied()
        .filter(|n| v.needs_restart(n))
        .collect();
    if !stale.is_empty() {
        missing.push((
            "RollingOut",
            format!("not on the current spec: {}", stale.join(", ")),
        ));
    }
    if busy && missing.is_empty() {
        missing.push(("StepUnderWay", next.info().description));
    }
    match missing.first() {
        None => condition(
            "Ready",
            true,
            "AllMembersReady",
            format!(
                "{} of {want} voters ready on the current spec",
                voters.len()
            ),
        ),
        Some((reason, _)) => condition(
            "Ready",
            false,
            reason,
            missing
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

fn storage_condition(v: &View) -> ConditionState {
    let size = &v.o.spec.storage.size;
    let smaller = smaller_volumes(v);
    if !smaller.is_empty() {
        let names = smaller.join(", ");
        return match v.o.volume_expansion {
            Some(true) => condition(
                "StorageResized",
                false,
                "Expanding",
                format!("expanding the volumes of {names} to {size}"),
            ),
            Some(false) => condition(
                "StorageResized",
                false,
                "ExpansionNotAllowed",
                format!(
                    "the StorageClass does not allow volume expansion (allowVolumeExpansion); \
                     the volumes of {names} keep their size, smaller than {size}"
                ),
            ),
            None => condition(
                "StorageResized",
                false,
                "StorageClassUnknown",
                format!(
                    "the volumes of {names} are smaller than {size}, and the StorageClass \
                     could not be read to expand them"
                ),
            ),
        };
    }
    let Some(want) = resources::quantity_value(size) else {
        return condition("StorageResized", true, "AsSpecified", "");
    };
    let growing = members_with_volume_below(v, want, |vol| vol.capacity.as_deref());
    if !growing.is_empty() {
        return condition(
            "StorageResized",
            false,
            "Expanding",
            format!(
                "the volumes of {} are being expanded to {size}",
                growing.join(", ")
            ),
        );
    }
    let remount: Vec<&str> = v
        .voters()
        .into_iter()
        .filter(|n| v.resize_waits_for_restart(n))
        .collect();
    if !remount.is_empty() {
        return condition(
            "StorageResized",
            false,
            "FileSystemResizePending",
            format!(
                "the file systems of {} grow when their members restart",
                remount.join(", ")
            ),
        );
    }
    condition(
        "StorageResized",
        true,
        "AsSpecified",
        format!("every volume has {size}"),
    )
}

/// The status a pass writes, before timestamps: the observed summary, what the operator is
/// doing or waiting for, and the conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub summary: Summary,
    /// `status.recoveredFrom`: set by a finished recovery, cleared once `spec.forceRecoverFrom`
    /// is removed (so setting it again applies again).
    pub recovered_from: Option<String>,
    pub message: Option<String>,
    pub conditions: Vec<ConditionState>,
    pub tls: TlsStatus,
    pub keys: Option<KeysStatus>,
}

pub fn report(o: &Observed, next: &Action) -> Report {
    let recovered_from = match next {
        Action::ClearPending {
            recovered_from: Some(from),
            ..
        } => Some(from.clone()),
        _ if o.spec.force_recover_from.is_none() => None,
        _ => o.status.recovered_from.clone(),
    };
    let message = match next {
        Action::Nothing | Action::UpdateStatus => None,
        Action::WaitFor { .. } | Action::ClearPending { .. } => Some(next.info().description),
        other => Some(format!("step: {}", other.info().description)),
    };
    Report {
        summary: summarize(o),
        recovered_from,
        message,
        conditions: conditions(o, next),
        tls: tls_status(o),
        keys: keys_status(o),
    }
}
