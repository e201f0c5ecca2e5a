//! The `ConcordanceCluster` custom resource: spec, status and the generated CRD.

// Several `printcolumn(...)` entries repeat `type_ = ...`, which this lint takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
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
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyMembers"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
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
#[serde(rename_all = "camelCase")]
pub struct ConcordanceClusterSpec {
    /// Number of voting members. Odd sizes only: an even size adds no fault tolerance.
    #[x_kube(validation = Rule::new("self in [1, 3, 5, 7]").message("replicas must be 1, 3, 5 or 7"))]
    pub replicas: i32,
    /// Container image of the Concordance node, e.g. `concordance:0.1.0`.
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    /// One PersistentVolumeClaim per member. Cannot be changed after creation.
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: create a new cluster to change the size or class"))]
    pub storage: StorageSpec,
    /// Resources of each member's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Secret holding the admin API key (key `key`); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key_secret: Option<SecretKeyRef>,
    /// Secret holding the agent (data-only) API key (key `key`); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_key_secret: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
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

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume, e.g. `1Gi`.
    pub size: String,
    /// StorageClass of the volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
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
    /// `Available`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub ready_members: i32,
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
    /// Image a restart moves the member to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
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

    const CHECKED_IN: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/concordanceclusters.concordance.io.yaml"
    );

    #[test]
    fn checked_in_crd_is_current() {
        let on_disk = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(),
            "crds/concordanceclusters.concordance.io.yaml is out of date; regenerate it with \
             `cargo run --release -p concordance-operator -- crd > crds/concordanceclusters.concordance.io.yaml`"
        );
    }

    #[test]
    fn operator_chart_carries_the_current_crd() {
        let chart = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/concordance-operator/crds/concordanceclusters.concordance.io.yaml"
        );
        assert!(
            std::fs::read_to_string(chart).unwrap_or_default() == crd_yaml(),
            "charts/concordance-operator/crds/ is out of date; copy crds/concordanceclusters.concordance.io.yaml there"
        );
    }

    #[test]
    fn schema_carries_the_validation_rules() {
        let yaml = crd_yaml();
        assert!(yaml.contains("self in [1, 3, 5, 7]"));
        assert!(yaml.contains("self == oldSelf"));
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
    }
}
