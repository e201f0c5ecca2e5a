//! The `ConcordanceCluster` custom resource: spec, status and the generated CRD.

// Several `printcolumn(...)` entries repeat `type_ = ...`, which this lint takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a Concordance cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "concordance.io",
    version = "v1alpha1",
    kind = "ConcordanceCluster",
    namespaced,
    status = "ConcordanceClusterStatus",
    shortname = "ccl",
    doc = "A Raft-replicated Concordance coordination store run by concordance-operator",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Ready Members",
        type_ = "integer",
        json_path = ".status.readyMembers"
    ),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "has(self.adminKeySecret) == has(oldSelf.adminKeySecret) && (!has(self.adminKeySecret) || self.adminKeySecret == oldSelf.adminKeySecret)"
).message("adminKeySecret cannot change: rotate the key by changing the Secret's content"))]
#[x_kube(validation = Rule::new(
    "has(self.agentKeySecret) == has(oldSelf.agentKeySecret) && (!has(self.agentKeySecret) || self.agentKeySecret == oldSelf.agentKeySecret)"
).message("agentKeySecret cannot change: rotate the key by changing the Secret's content"))]
#[x_kube(validation = Rule::new(
    "has(self.tls) == has(oldSelf.tls) && (!has(self.tls) || self.tls == oldSelf.tls)"
).message("tls cannot change: the operator sets TLS up when it creates a cluster, and does not yet turn it on or off in a running one"))]
#[serde(rename_all = "camelCase")]
pub struct ConcordanceClusterSpec {
    /// Number of voting members. Odd sizes only: an even size adds no fault tolerance. Also
    /// set by `kubectl scale ccl/NAME --replicas=N` (the `/scale` subresource).
    #[x_kube(validation = Rule::new("self in [1, 3, 5, 7]").message("replicas must be 1, 3, 5 or 7"))]
    pub replicas: i32,
    /// Container image of the Concordance node, e.g. `concordance:0.1.0`.
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    /// One PersistentVolumeClaim per member. The size may grow (the claims are expanded where
    /// the StorageClass allows it), never shrink; the class cannot change.
    pub storage: StorageSpec,
    /// Settings of the members' pods: resources, placement, metadata, extra environment.
    /// A change rolls through the members one at a time, the leader last.
    #[serde(default, skip_serializing_if = "PodSettings::is_empty")]
    pub pod: PodSettings,
    /// Node settings (flags of `concordance`). A change rolls through the members.
    #[serde(default, skip_serializing_if = "NodeConfig::is_empty")]
    pub config: NodeConfig,
    /// Deprecated: use `pod.resources` (which wins when both are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secret holding the admin API key (key `key`); generated when absent (`<name>-admin-key`).
    /// The reference cannot change; the key rotates when the Secret's content changes (or a
    /// generated Secret is deleted): the members take the new key beside the old one with no
    /// restart, and the old one is refused `keyRotationGraceSeconds` after every member holds
    /// the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key_secret: Option<SecretKeyRef>,
    /// Secret holding the agent (data-only) API key (key `key`); generated when absent
    /// (`<name>-agent-key`). Rotates as the admin key does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_key_secret: Option<SecretKeyRef>,
    /// How long, once every member holds a rotated admin or agent key, the old one is still
    /// accepted, so that clients can move to the new one.
    #[serde(default = "default_key_rotation_grace_seconds")]
    #[schemars(range(min = 0))]
    pub key_rotation_grace_seconds: i64,
    /// Secret holding a credentials file (YAML or JSON, under key `credentials.yaml` unless
    /// `key` says otherwise): named credentials besides the two keys, each a role, its tokens
    /// and, for an agent, the key prefixes it may read and write. Members read it again when
    /// the Secret changes, so a token rotates by editing the Secret, with no restart. Setting
    /// or changing this reference rolls the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,
    /// TLS between clients and members and mutual TLS between members, on unless
    /// `enabled: false`: the operator makes a CA for the cluster (Secret `<name>-ca`), the
    /// members' certificate from it (Secret `<name>-tls`, renewed before it expires with no
    /// restart), and publishes the CA for clients (ConfigMap `<name>-ca`, key `ca.crt`).
    /// Decided when the cluster is created: it cannot change afterwards, and a cluster
    /// created by an operator without TLS support stays in plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Deprecated: use `pod.affinity` (which wins when both are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Deprecated: use `pod.tolerations` (which wins when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Deprecated: use `pod.nodeSelector` (which wins when not empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The client Service.
    #[serde(default)]
    pub service: ServiceSpec,
    /// How long a voter may stay unready (while quorum holds) before it is replaced by a new member.
    #[serde(default = "default_unready_replacement_seconds")]
    #[schemars(range(min = 30))]
    pub unready_replacement_seconds: i64,
    /// Delete the members' volumes when the cluster is deleted. Off by default: data outlives mistakes.
    #[serde(default)]
    pub delete_volumes_on_cluster_delete: bool,
    /// After quorum loss only: the member whose data rebuilds the cluster (a new cluster id; writes
    /// the other members had and this one lacks are lost). Used once (see `status.recoveredFrom`);
    /// remove it and set it again to recover once more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_recover_from: Option<String>,
}

fn default_unready_replacement_seconds() -> i64 {
    300
}

fn default_key_rotation_grace_seconds() -> i64 {
    300
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)"
).message("storage.storageClassName cannot change: create a new cluster to change the class"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume, e.g. `1Gi`. May grow, never shrink.
    #[x_kube(
        validation = Rule::new("isQuantity(self)").message("storage.size must be a quantity, e.g. 1Gi"),
        validation = Rule::new("!isQuantity(oldSelf) || !isQuantity(self) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage.size may grow, never shrink")
    )]
    #[schemars(length(max = 40))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Settings of the members' pods. Everything here is part of the pod hash: a change rolls
/// through the members one at a time, the leader last.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Labels added to the pods (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Resources of the node's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Replaces the default placement part by part: a `podAntiAffinity` given here replaces
    /// the default (preferably one member per node; `podAntiAffinity: {}` turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Replaces the default spread (members preferably in different zones, where nodes carry
    /// `topology.kubernetes.io/zone`); an empty list turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The pods' service account (the namespace's default when absent). Its token is never
    /// mounted: the node does not use the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra environment variables of the node's container (the keys' variables, which the
    /// operator sets, cannot be overridden; node settings belong in `config`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Replaces the pod security context. The default runs as uid/gid 10001 (the image's
    /// user) with `fsGroup` 10001, non-root, seccomp `RuntimeDefault`: Pod Security
    /// `restricted`. Set it where the platform assigns user ids itself (e.g. OpenShift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

impl PodSettings {
    pub fn is_empty(&self) -> bool {
        self == &PodSettings::default()
    }
}

/// Node settings a user may tune, passed to each member as `concordance` flags. Absent
/// fields keep the node's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// `--log-format`: `text` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// `--log`: the log filter, e.g. `info` or `concordance=debug,openraft=info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub log: Option<String>,
    /// `--snapshot-entries`: take a snapshot (and compact the log) after this many entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_entries: Option<u64>,
    /// `--history-revisions`: revisions of change history kept for watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub history_revisions: Option<u64>,
    /// `--idempotency-retention-secs`: seconds an `Idempotency-Key`'s answer is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub idempotency_retention_seconds: Option<u64>,
    /// `--http-threads`: threads serving HTTP (default: one per CPU core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub http_threads: Option<u16>,
    /// `--audit-log=/dev/stdout` when true: one JSON line per admin call, prefix delete,
    /// revoke and refused request on each member's standard output, while its logs go to
    /// standard error, so a log collector keeps the two streams apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<bool>,
}

impl NodeConfig {
    pub fn is_empty(&self) -> bool {
        self == &NodeConfig::default()
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of a Secret in the cluster's namespace.
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

/// A Secret holding a credentials file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of a Secret in the cluster's namespace.
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_credentials_key")]
    pub key: String,
}

/// TLS settings of a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Members serve TLS only and know each other by certificate.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

impl ConcordanceClusterSpec {
    /// TLS as the spec asks for it: on unless turned off.
    pub fn tls_wanted(&self) -> bool {
        self.tls.as_ref().is_none_or(|t| t.enabled)
    }
}

fn default_credentials_key() -> String {
    "credentials.yaml".to_string()
}

fn default_secret_key() -> String {
    "key".to_string()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Type of the client Service.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Port of the client Service (the node's HTTP port when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// Observed state, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcordanceClusterStatus {
    /// `Ready` (every member the spec asks for is a ready voter on the current spec, nothing
    /// under way: wait on this before changing the cluster again), `Available` (quorum holds:
    /// writes are accepted), `Progressing`, `Degraded` and `StorageResized`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Voters in the Raft membership (the `/scale` subresource's current count).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_members: i32,
    /// Voters whose pod runs the current spec (`podHash`).
    #[serde(default)]
    pub updated_members: i32,
    /// Label selector of the members' pods (for the `/scale` subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Hash of what the current spec puts in a member's pod; a member whose pod carries
    /// another (`concordance.io/pod-hash`) is restarted onto it, one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The cluster UUID, recorded once bootstrapped. Never bootstrapped again while set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Log index of the Raft membership in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The step being taken, recorded before it is taken so a restarted operator finishes or
    /// undoes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_action: Option<PendingAction>,
    /// The member a `spec.forceRecoverFrom` recovery rebuilt the cluster from, once it
    /// finished. The field is then spent: a later loss of quorum only waits, until the field is
    /// removed from the spec (which clears this) and set again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// TLS as the cluster runs it, fixed when it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    /// The admin and agent keys as the members hold them (Secret `<name>-member-keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeysStatus>,
}

/// Where each key's rotation is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeysStatus {
    /// `InForce` (one key), `Adding` (the new key beside the old, until every member holds
    /// it), `Switching` (admin only: members move to calling each other with the new key),
    /// `Retiring` (the old key still accepted for `keyRotationGraceSeconds`), `Dropping`
    /// (until every member has read its file without the old key).
    pub admin: String,
    pub agent: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The members serve TLS only and know each other by certificate.
    pub enabled: bool,
    /// The ConfigMap holding the CA certificate clients trust (key `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map: Option<String>,
    /// When the members' current certificate expires (RFC 3339). It is renewed well before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Raft node id, also the pod and volume name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub role: MemberRole,
    pub ready: bool,
    /// The member's pod runs the current spec (its pod hash is `status.podHash`).
    #[serde(default)]
    pub up_to_date: bool,
    /// Image the member's pod runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Version the node reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MemberRole {
    Voter,
    Learner,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingAction {
    pub kind: PendingKind,
    /// The member the step acts on.
    pub member: String,
    /// Membership version the step expects; a membership change carries it, so a change made
    /// meanwhile by someone else makes the step fail instead of racing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_membership_version: Option<u64>,
    /// Image a restart moves the member to (for people reading the status; the pod is
    /// created from the spec in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pod hash a restart moves the member to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PendingKind {
    Bootstrap,
    AddMember,
    RemoveMember,
    TransferLeadership,
    RestartMember,
    Recover,
}

/// The CRD as YAML, as `concordance-operator crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&ConcordanceCluster::crd()).expect("a CRD always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Read at compile time: a test binary built in another checkout of the same target dir
    // still compares this checkout's files, and a change to them rebuilds it.
    const CHECKED_IN: &str = include_str!("../../crds/concordanceclusters.concordance.io.yaml");
    const IN_CHART: &str = include_str!(
        "../../charts/concordance-operator/crds/concordanceclusters.concordance.io.yaml"
    );

    #[test]
    fn checked_in_crd_is_current() {
        assert!(
            CHECKED_IN == crd_yaml(),
            "crds/concordanceclusters.concordance.io.yaml is out of date; regenerate it with \
             `cargo run --release -p concordance-operator -- crd > crds/concordanceclusters.concordance.io.yaml`"
        );
    }

    #[test]
    fn operator_chart_carries_the_current_crd() {
        assert!(
            IN_CHART == crd_yaml(),
            "charts/concordance-operator/crds/ is out of date; copy crds/concordanceclusters.concordance.io.yaml there"
        );
    }

    #[test]
    fn schema_carries_the_validation_rules() {
        let yaml = crd_yaml();
        assert!(yaml.contains("self in [1, 3, 5, 7]"));
        assert!(yaml.contains("quantity(self).compareTo(quantity(oldSelf)) >= 0"));
        assert!(yaml.contains("self.storageClassName == oldSelf.storageClassName"));
        assert!(yaml.contains("self.adminKeySecret == oldSelf.adminKeySecret"));
        assert!(yaml.contains("self.tls == oldSelf.tls"));
        assert!(yaml.contains("scope: Namespaced"));
    }

    #[test]
    fn defaults_apply_to_a_minimal_spec() {
        let spec: ConcordanceClusterSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3, "image": "concordance:1", "storage": {"size": "1Gi"}
        }))
        .unwrap();
        assert_eq!(spec.unready_replacement_seconds, 300);
        assert!(!spec.delete_volumes_on_cluster_delete);
        assert_eq!(spec.force_recover_from, None);
        assert!(spec.pod.is_empty() && spec.config.is_empty());
    }

    #[test]
    fn the_scale_subresource_reads_spec_and_status_replicas() {
        let crd = ConcordanceCluster::crd();
        let scale = crd.spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref())
            .expect("a scale subresource");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
    }
}
