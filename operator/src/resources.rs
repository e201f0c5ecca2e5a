//! The Kubernetes objects a cluster owns, built from its spec. Pure builders: the controller
//! applies them; tests can inspect them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, Probe, SeccompProfile, Secret, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec as K8sServiceSpec, TopologySpreadConstraint, Volume,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::{
    ConcordanceCluster, ConcordanceClusterSpec, CredentialsSecretRef, LogFormat, NodeConfig,
    PodSettings, SecretKeyRef,
};

/// Field manager of everything the operator writes (server-side apply).
pub const FIELD_MANAGER: &str = "concordance-operator";
/// Label every owned object carries, with the cluster's name.
pub const CLUSTER_LABEL: &str = "concordance.io/cluster";
/// Label of a member's pod and volume, with the member's name.
pub const MEMBER_LABEL: &str = "concordance.io/member";
/// Annotation of a member's pod: the hash of what the spec put in it ([`pod_hash`]).
pub const POD_HASH_ANNOTATION: &str = "concordance.io/pod-hash";
/// Port of the node's HTTP API (clients and peers).
pub const API_PORT: u16 = 4100;
/// Where the member's volume is mounted.
pub const DATA_DIR: &str = "/data";
/// Where a member reads the credentials file of `spec.credentialsSecret`.
const CREDENTIALS_DIR: &str = "/etc/concordance/credentials";
const CREDENTIALS_FILE: &str = "credentials.yaml";
/// Where a member reads its certificate, key and the cluster CA, when the cluster runs TLS.
const TLS_DIR: &str = "/etc/concordance/tls";
/// Annotation of the members' certificate Secret: what it was issued for ([`issued_for`]).
pub const ISSUED_FOR_ANNOTATION: &str = "concordance.io/issued-for";
/// Keys of the CA Secret and ConfigMap, and of the members' certificate Secret.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
/// User and group the node image runs as; the volume is made writable for this group.
pub const NODE_UID: i64 = 10001;
/// The node's environment variables holding the two keys.
const ADMIN_KEY_ENV: &str = "CONCORDANCE_API_KEY";
const AGENT_KEY_ENV: &str = "CONCORDANCE_AGENT_API_KEY";
/// The node's environment variables naming its key files, which win over the keys (a node
/// built before key files ignores them and takes the keys).
pub const ADMIN_KEY_FILE_ENV: &str = "CONCORDANCE_API_KEY_FILE";
const AGENT_KEY_FILE_ENV: &str = "CONCORDANCE_AGENT_KEY_FILE";
/// Where a member writes its audit log when `spec.config.auditLog` is true: its own stream,
/// beside its logs on standard error.
const AUDIT_LOG: &str = "/dev/stdout";
/// Where a member reads its key files, from the member keys Secret.
const KEYS_DIR: &str = "/etc/concordance/keys";
/// Keys of the member keys Secret: the admin and the agent key files.
pub const ADMIN_KEYS_KEY: &str = "admin";
pub const AGENT_KEYS_KEY: &str = "agent";
/// Annotations of the member keys Secret: each file's rotation phase, and when its old key
/// began retiring.
pub const KEYS_PHASE_ANNOTATION: &str = "concordance.io/keys-phase-";
pub const KEYS_RETIRING_ANNOTATION: &str = "concordance.io/keys-retiring-since-";

/// How a member's node starts on an empty data dir. A data dir that already holds a member
/// resumes it whatever these say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// The first member of a cluster not yet bootstrapped (no cluster id recorded).
    Bootstrap,
    /// Join the cluster through its client Service.
    Join,
    /// Quorum-loss recovery: rebuild a one-member cluster from this data dir if it still
    /// belongs to the given (old) cluster id; a no-op once done, so restarts are safe.
    ForceNewCluster { old_cluster_id: String },
}

/// The two API keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    /// May do everything; peers authenticate with it too.
    Admin,
    /// May use the data API only.
    Agent,
}

impl KeyKind {
    pub fn word(self) -> &'static str {
        match self {
            KeyKind::Admin => "admin",
            KeyKind::Agent => "agent",
        }
    }

    /// The spec field that may name the Secret.
    pub fn spec_field(self) -> &'static str {
        match self {
            KeyKind::Admin => "spec.adminKeySecret",
            KeyKind::Agent => "spec.agentKeySecret",
        }
    }

    pub fn given(self, spec: &ConcordanceClusterSpec) -> Option<&SecretKeyRef> {
        match self {
            KeyKind::Admin => spec.admin_key_secret.as_ref(),
            KeyKind::Agent => spec.agent_key_secret.as_ref(),
        }
    }
}

pub fn owner_ref(c: &ConcordanceCluster) -> OwnerReference {
    c.controller_owner_ref(&())
        .expect("a stored object has a uid")
}

pub fn cluster_labels(c: &ConcordanceCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CLUSTER_LABEL.to_string(), c.name_any()),
        (
            "app.kubernetes.io/name".to_string(),
            "concordance".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "concordance-operator".to_string(),
        ),
    ])
}

fn selector_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(CLUSTER_LABEL.to_string(), cluster.to_string())])
}

/// The members' pods, as a label selector string (`status.selector`, for `/scale`).
pub fn selector(cluster: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster}")
}

fn label_selector(cluster: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(cluster)),
        ..Default::default()
    }
}

fn meta(c: &ConcordanceCluster, name: String, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: c.namespace(),
        labels: Some(cluster_labels(c)),
        owner_references: owned.then(|| vec![owner_ref(c)]),
        ..Default::default()
    }
}

pub fn headless_service_name(cluster: &str) -> String {
    format!("{cluster}-peers")
}

pub fn client_service_name(cluster: &str) -> String {
    cluster.to_string()
}

pub fn pdb_name(cluster: &str) -> String {
    cluster.to_string()
}

pub fn client_port(spec: &ConcordanceClusterSpec) -> u16 {
    spec.service
        .port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(API_PORT)
}

/// The domain the members' names are under: `<cluster>-peers.<namespace>.svc.cluster.local`.
fn peer_domain(c: &ConcordanceCluster) -> String {
    format!(
        "{}.{}.svc.cluster.local",
        headless_service_name(&c.name_any()),
        c.namespace().unwrap_or_default()
    )
}

/// The fully qualified name peers reach a member by (and its certificate carries).
pub fn member_host(c: &ConcordanceCluster, member: &str) -> String {
    format!("{member}.{}", peer_domain(c))
}

/// The fully qualified address peers reach a member at.
pub fn advertise_address(c: &ConcordanceCluster, member: &str) -> String {
    format!("{}:{API_PORT}", member_host(c, member))
}

pub fn ca_secret_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}

pub fn certificate_secret_name(cluster: &str) -> String {
    format!("{cluster}-tls")
}

pub fn ca_config_map_name(cluster: &str) -> String {
    format!("{cluster}-ca")
}

/// The names the members' one certificate carries: every member under the peer domain, the
/// client Service by each name a pod may use for it, and the loopback address.
pub fn certificate_names(c: &ConcordanceCluster) -> Vec<String> {
    let service = client_service_name(&c.name_any());
    let ns = c.namespace().unwrap_or_default();
    vec![
        format!("*.{}", peer_domain(c)),
        service.clone(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.cluster.local"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ]
}

/// What a members' certificate was issued for: this CA and these names. A certificate
/// issued for anything else (the CA was replaced, an upgrade added a name) is issued again.
pub fn issued_for(ca_certificate: &str, names: &[String]) -> String {
    let mut digest = Sha256::new();
    digest.update(ca_certificate.trim().as_bytes());
    for name in names {
        digest.update(b"\n");
        digest.update(name.as_bytes());
    }
    digest.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn string_data(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The cluster's CA, created once.
pub fn ca_secret(c: &ConcordanceCluster, ca: &crate::pki::Pair) -> Secret {
    Secret {
        metadata: meta(c, ca_secret_name(&c.name_any()), true),
        type_: Some("Opaque".to_string()),
        string_data: Some(string_data(&[
            (CA_CERT_KEY, &ca.certificate),
            (CA_KEY_KEY, &ca.key),
        ])),
        ..Default::default()
    }
}

/// The members' certificate, its key and the CA they trust for peers.
pub fn certificate_secret(
    c: &ConcordanceCluster,
    member: &crate::pki::Pair,
    ca_certificate: &str,
    issued_for: String,
) -> Secret {
    let mut metadata = meta(c, certificate_secret_name(&c.name_any()), true);
    metadata.annotations = Some(BTreeMap::from([(
        ISSUED_FOR_ANNOTATION.to_string(),
        issued_for,
    )]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".to_string()),
        string_data: Some(string_data(&[
            (TLS_CERT_KEY, &member.certificate),
            (TLS_KEY_KEY, &member.key),
            (CA_CERT_KEY, ca_certificate),
        ])),
        ..Default::default()
    }
}

/// The CA certificate, published for the cluster's clients.
pub fn ca_config_map(c: &ConcordanceCluster, ca_certificate: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(c, ca_config_map_name(&c.name_any()), true),
        data: Some(string_data(&[(CA_CERT_KEY, ca_certificate)])),
        ..Default::default()
    }
}

/// The generated Secret for a key, when the spec references none.
pub fn generated_secret_name(cluster: &str, key: KeyKind) -> String {
    format!("{cluster}-{}-key", key.word())
}

/// The Secret and key the node reads a key from.
pub fn key_ref(cluster: &str, spec: &ConcordanceClusterSpec, key: KeyKind) -> SecretKeyRef {
    key.given(spec).cloned().unwrap_or_else(|| SecretKeyRef {
        name: generated_secret_name(cluster, key),
        key: "key".to_string(),
    })
}

/// The operator's Secret of the keys the members hold (their key files).
pub fn member_keys_secret_name(cluster: &str) -> String {
    format!("{cluster}-member-keys")
}

/// The member keys Secret with these files (`keys`: the admin and agent files' text) and
/// annotations.
pub fn member_keys_secret(
    c: &ConcordanceCluster,
    admin: String,
    agent: String,
    annotations: BTreeMap<String, String>,
) -> Secret {
    let mut metadata = meta(c, member_keys_secret_name(&c.name_any()), true);
    metadata.annotations = Some(annotations);
    Secret {
        metadata,
        type_: Some("Opaque".to_string()),
        string_data: Some(BTreeMap::from([
            (ADMIN_KEYS_KEY.to_string(), admin),
            (AGENT_KEYS_KEY.to_string(), agent),
        ])),
        ..Default::default()
    }
}

/// Whether a pod's node was given key files (a pod of an earlier operator was not).
pub fn has_key_files(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| env.iter().any(|e| e.name == ADMIN_KEY_FILE_ENV))
}

/// A new generated key Secret.
pub fn secret(c: &ConcordanceCluster, key: KeyKind, value: String) -> Secret {
    Secret {
        string_data: Some(BTreeMap::from([("key".to_string(), value)])),
        ..secret_metadata(c, key)
    }
}

/// What the operator keeps of a generated key Secret on every pass: its labels and owner.
/// Never its data: the key was created once, and server-side apply only touches the fields
/// it is given.
pub fn secret_metadata(c: &ConcordanceCluster, key: KeyKind) -> Secret {
    Secret {
        metadata: meta(c, generated_secret_name(&c.name_any(), key), true),
        type_: Some("Opaque".to_string()),
        ..Default::default()
    }
}

fn api_port(port: u16) -> ServicePort {
    ServicePort {
        name: Some("api".to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(API_PORT))),
        ..Default::default()
    }
}

/// Resolves every member, ready or not, so learners and a cluster without quorum still reach
/// each other.
pub fn headless_service(c: &ConcordanceCluster) -> Service {
    let name = c.name_any();
    Service {
        metadata: meta(c, headless_service_name(&name), true),
        spec: Some(K8sServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![api_port(API_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ready members only: clients and joining members go through it.
pub fn client_service(c: &ConcordanceCluster) -> Service {
    let name = c.name_any();
    let mut metadata = meta(c, client_service_name(&name), true);
    let s = &c.spec.service;
    let mut labels = s.labels.clone();
    labels.extend(cluster_labels(c));
    metadata.labels = Some(labels);
    if !s.annotations.is_empty() {
        metadata.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(K8sServiceSpec {
            type_: Some(format!(
                "{:?}",
                s.type_.unwrap_or(crate::crd::ServiceType::ClusterIP)
            )),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![api_port(client_port(&c.spec))]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// At least `min_available` members ready: [`crate::decide::min_available`] keeps it at one
/// voter less than the membership, so a healthy cluster allows one voluntary disruption and a
/// cluster with a member down allows none. An integer `minAvailable` needs no `/scale` from
/// the pods' owner (a percentage or `maxUnavailable` would). Unhealthy pods may always be
/// evicted, so an already-broken member never blocks a node drain.
pub fn pdb(c: &ConcordanceCluster, min_available: i32) -> PodDisruptionBudget {
    let name = c.name_any();
    PodDisruptionBudget {
        metadata: meta(c, pdb_name(&name), true),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min_available)),
            selector: Some(label_selector(&name)),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A member's volume. Not owned by the cluster: volumes outlive a deleted cluster unless its
/// spec asks otherwise (the finalizer deletes them then).
pub fn claim(c: &ConcordanceCluster, member: &str) -> PersistentVolumeClaim {
    let mut metadata = meta(c, member.to_string(), false);
    metadata
        .labels
        .get_or_insert_default()
        .insert(MEMBER_LABEL.to_string(), member.to_string());
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: c.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(c.spec.storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The merge patch that asks for a larger volume.
pub fn claim_size_patch(size: &str) -> serde_json::Value {
    serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}})
}

fn key_env(cluster: &str, spec: &ConcordanceClusterSpec, var: &str, key: KeyKind) -> EnvVar {
    let r = key_ref(cluster, spec, key);
    EnvVar {
        name: var.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name,
                key: r.key,
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A probe of a node route; over TLS when the node serves only TLS (the kubelet does not
/// check the certificate).
fn http_probe(path: &str, period: i32, failures: i32, tls: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(API_PORT)),
            scheme: tls.then(|| "HTTPS".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The node flags `spec.config` sets.
pub fn config_args(config: &NodeConfig) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(f) = config.log_format {
        let f = match f {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        args.push(format!("--log-format={f}"));
    }
    if let Some(l) = &config.log {
        args.push(format!("--log={l}"));
    }
    if let Some(n) = config.snapshot_entries {
        args.push(format!("--snapshot-entries={n}"));
    }
    if let Some(n) = config.history_revisions {
        args.push(format!("--history-revisions={n}"));
    }
    if let Some(n) = config.idempotency_retention_seconds {
        args.push(format!("--idempotency-retention-secs={n}"));
    }
    if let Some(n) = config.http_threads {
        args.push(format!("--http-threads={n}"));
    }
    if config.audit_log == Some(true) {
        args.push(format!("--audit-log={AUDIT_LOG}"));
    }
    args
}

/// The node's arguments: an explicit name and a fully qualified advertise address always.
pub fn node_args(c: &ConcordanceCluster, member: &str, mode: &StartMode, tls: bool) -> Vec<String> {
    let mut args = vec![
        format!("--node-id={member}"),
        format!("--listen=0.0.0.0:{API_PORT}"),
        format!("--advertise={}", advertise_address(c, member)),
        format!("--data-dir={DATA_DIR}"),
    ];
    match mode {
        StartMode::Bootstrap => args.push("--bootstrap".to_string()),
        StartMode::Join => args.push(format!(
            "--join={}.{}.svc.cluster.local:{}",
            client_service_name(&c.name_any()),
            c.namespace().unwrap_or_default(),
            client_port(&c.spec)
        )),
        StartMode::ForceNewCluster { old_cluster_id } => {
            args.push(format!("--force-new-cluster={old_cluster_id}"))
        }
    }
    if c.spec.credentials_secret.is_some() {
        args.push(format!(
            "--credentials-file={CREDENTIALS_DIR}/{CREDENTIALS_FILE}"
        ));
    }
    if tls {
        // Peers are known by the cluster CA's certificate for a member name, never by a key.
        args.extend([
            format!("--tls-cert={TLS_DIR}/{TLS_CERT_KEY}"),
            format!("--tls-key={TLS_DIR}/{TLS_KEY_KEY}"),
            format!("--peer-ca={TLS_DIR}/{CA_CERT_KEY}"),
            format!("--peer-names=*.{}", peer_domain(c)),
        ]);
    }
    args.extend(config_args(&c.spec.config));
    args
}

/// What the spec puts in a member's pod: everything the pod is rendered from except the
/// member's name and start mode (the start mode only matters on an empty data dir). An
/// operator upgrade that renders pods differently does not change it, so upgrading the
/// operator never restarts members.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodInputs<'a> {
    image: &'a str,
    pod: &'a PodSettings,
    config: &'a NodeConfig,
    resources: &'a Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    affinity: &'a Option<Affinity>,
    tolerations: &'a Vec<k8s_openapi::api::core::v1::Toleration>,
    node_selector: &'a BTreeMap<String, String>,
    admin_key_secret: &'a Option<SecretKeyRef>,
    agent_key_secret: &'a Option<SecretKeyRef>,
    /// The reference only: the Secret's content reaches the members with no restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials_secret: &'a Option<CredentialsSecretRef>,
    /// The port new members join through.
    join_port: u16,
    /// Only when on, so that clusters without TLS keep their hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls: bool,
}

/// The hash stamped on each member's pod (`concordance.io/pod-hash`). A member whose pod
/// carries another one is restarted onto the current spec, one member at a time. `tls`: the
/// cluster runs TLS (fixed when it was created, see `status.tls`).
pub fn pod_hash(spec: &ConcordanceClusterSpec, tls: bool) -> String {
    let inputs = PodInputs {
        image: &spec.image,
        pod: &spec.pod,
        config: &spec.config,
        resources: &spec.resources,
        affinity: &spec.affinity,
        tolerations: &spec.tolerations,
        node_selector: &spec.node_selector,
        admin_key_secret: &spec.admin_key_secret,
        agent_key_secret: &spec.agent_key_secret,
        credentials_secret: &spec.credentials_secret,
        join_port: client_port(spec),
        tls,
    };
    let bytes = serde_json::to_vec(&inputs).expect("the spec serializes");
    let digest = Sha256::digest(&bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Pod Security `restricted`: non-root as the image's user, `fsGroup` so that the volume is
/// writable for it (a fresh CSI volume's root belongs to root), seccomp `RuntimeDefault`.
pub fn default_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NODE_UID),
        run_as_group: Some(NODE_UID),
        fs_group: Some(NODE_UID),
        // Walks the volume only when its root is not already the group's.
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        // The node writes only to its data dir.
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

/// The user's affinity, with the default spread of members over nodes (preferably one per
/// node) unless the user gave a pod anti-affinity of their own.
fn affinity(cluster: &str, given: Option<&Affinity>) -> Affinity {
    let mut a = given.cloned().unwrap_or_default();
    if a.pod_anti_affinity.is_none() {
        a.pod_anti_affinity = Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(label_selector(cluster)),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        });
    }
    a
}

/// The user's spread constraints, else members spread over zones where nodes carry a zone
/// label (a preference: nodes without one still take members).
fn spread(
    cluster: &str,
    given: Option<&Vec<TopologySpreadConstraint>>,
) -> Option<Vec<TopologySpreadConstraint>> {
    let list = match given {
        Some(list) => list.clone(),
        None => vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".to_string(),
            when_unsatisfiable: "ScheduleAnyway".to_string(),
            label_selector: Some(label_selector(cluster)),
            ..Default::default()
        }],
    };
    (!list.is_empty()).then_some(list)
}

/// The member's volume, the credentials Secret when the spec names one, and the certificate
/// Secret when the cluster runs TLS.
fn volumes(c: &ConcordanceCluster, member: &str, tls: bool, key_files: bool) -> Vec<Volume> {
    let spec = &c.spec;
    let mut volumes = vec![Volume {
        name: "data".to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: member.to_string(),
            read_only: None,
        }),
        ..Default::default()
    }];
    if let Some(credentials) = &spec.credentials_secret {
        volumes.push(Volume {
            name: "credentials".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(credentials.name.clone()),
                items: Some(vec![KeyToPath {
                    key: credentials.key.clone(),
                    path: CREDENTIALS_FILE.to_string(),
                    mode: None,
                }]),
                // Readable by the pod's group (fsGroup) only: the file holds tokens.
                default_mode: Some(0o440),
                optional: Some(false),
            }),
            ..Default::default()
        });
    }
    if key_files {
        volumes.push(private_secret_volume(
            "keys",
            member_keys_secret_name(&c.name_any()),
        ));
    }
    if tls {
        volumes.push(private_secret_volume(
            "tls",
            certificate_secret_name(&c.name_any()),
        ));
    }
    volumes
}

/// A Secret whose every key is a file readable by the pod's group only (the files hold keys).
fn private_secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn volume_mounts(spec: &ConcordanceClusterSpec, tls: bool, key_files: bool) -> Vec<VolumeMount> {
    let mut mounts = vec![VolumeMount {
        name: "data".to_string(),
        mount_path: DATA_DIR.to_string(),
        ..Default::default()
    }];
    // Directory mounts, not subPaths: the kubelet swaps a Secret's files in place when it
    // changes (tokens, keys, a renewed certificate), and the node reads them again.
    let read_only = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    if spec.credentials_secret.is_some() {
        mounts.push(read_only("credentials", CREDENTIALS_DIR));
    }
    if key_files {
        mounts.push(read_only("keys", KEYS_DIR));
    }
    if tls {
        mounts.push(read_only("tls", TLS_DIR));
    }
    mounts
}

/// A member's pod. `tls`: the cluster runs TLS (`status.tls`). `key_files`: the member keys
/// Secret exists, and the node takes its keys from it (they rotate with no restart).
pub fn pod(
    c: &ConcordanceCluster,
    member: &str,
    image: &str,
    mode: &StartMode,
    tls: bool,
    key_files: bool,
) -> Pod {
    let name = c.name_any();
    let spec = &c.spec;
    let settings = &spec.pod;
    let mut metadata = meta(c, member.to_string(), true);
    let mut labels = settings.labels.clone();
    labels.extend(cluster_labels(c));
    labels.insert(MEMBER_LABEL.to_string(), member.to_string());
    metadata.labels = Some(labels);
    let mut annotations = settings.annotations.clone();
    let hash_spec = ConcordanceClusterSpec {
        image: image.to_string(),
        ..spec.clone()
    };
    annotations.insert(POD_HASH_ANNOTATION.to_string(), pod_hash(&hash_spec, tls));
    metadata.annotations = Some(annotations);

    let mut env = vec![
        key_env(&name, spec, ADMIN_KEY_ENV, KeyKind::Admin),
        key_env(&name, spec, AGENT_KEY_ENV, KeyKind::Agent),
    ];
    if key_files {
        for (var, file) in [
            (ADMIN_KEY_FILE_ENV, ADMIN_KEYS_KEY),
            (AGENT_KEY_FILE_ENV, AGENT_KEYS_KEY),
        ] {
            env.push(EnvVar {
                name: var.to_string(),
                value: Some(format!("{KEYS_DIR}/{file}")),
                ..Default::default()
            });
        }
    }
    let ours = [
        ADMIN_KEY_ENV,
        AGENT_KEY_ENV,
        ADMIN_KEY_FILE_ENV,
        AGENT_KEY_FILE_ENV,
    ];
    env.extend(
        settings
            .env
            .iter()
            .filter(|e| !ours.contains(&e.name.as_str()))
            .cloned(),
    );
    let container = Container {
        name: "concordance".to_string(),
        image: Some(image.to_string()),
        args: Some(node_args(c, member, mode, tls)),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("api".to_string()),
            container_port: i32::from(API_PORT),
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/api/v1/ready", 2, 1, tls)),
        liveness_probe: Some(http_probe("/api/v1/health", 10, 6, tls)),
        resources: settings
            .resources
            .clone()
            .or_else(|| spec.resources.clone()),
        volume_mounts: Some(volume_mounts(spec, tls, key_files)),
        security_context: Some(container_security_context()),
        // A node that refuses to start (e.g. a join refused because the data dir was lost)
        // leaves `{"code","message"}` at /dev/termination-log: the operator reads its code
        // from the pod status. Other failures fall back to the last log lines, for people.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    let tolerations = if settings.tolerations.is_empty() {
        &spec.tolerations
    } else {
        &settings.tolerations
    };
    let node_selector = if settings.node_selector.is_empty() {
        &spec.node_selector
    } else {
        &settings.node_selector
    };
    Pod {
        metadata,
        spec: Some(PodSpec {
            hostname: Some(member.to_string()),
            subdomain: Some(headless_service_name(&name)),
            containers: vec![container],
            volumes: Some(volumes(c, member, tls, key_files)),
            affinity: Some(affinity(
                &name,
                settings.affinity.as_ref().or(spec.affinity.as_ref()),
            )),
            topology_spread_constraints: spread(
                &name,
                settings.topology_spread_constraints.as_ref(),
            ),
            tolerations: (!tolerations.is_empty()).then(|| tolerations.clone()),
            node_selector: (!node_selector.is_empty()).then(|| node_selector.clone()),
            priority_class_name: settings.priority_class_name.clone(),
            image_pull_secrets: (!settings.image_pull_secrets.is_empty())
                .then(|| settings.image_pull_secrets.clone()),
            service_account_name: settings.service_account_name.clone(),
            automount_service_account_token: Some(false),
            security_context: Some(
                settings
                    .security_context
                    .clone()
                    .unwrap_or_else(default_pod_security_context),
            ),
            restart_policy: Some("Always".to_string()),
            termination_grace_period_seconds: Some(30),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The node's arguments in a member's pod.
fn node_args_of(pod: &Pod) -> Option<&Vec<String>> {
    pod.spec.as_ref()?.containers.first()?.args.as_ref()
}

/// Whether a pod's node was started with a certificate (`--tls-cert`), read back from its
/// arguments.
pub fn started_with_tls(pod: &Pod) -> bool {
    node_args_of(pod).is_some_and(|args| args.iter().any(|a| a.starts_with("--tls-cert")))
}

/// The start mode a pod was created with, read back from its arguments.
pub fn start_mode_of(pod: &Pod) -> Option<StartMode> {
    node_args_of(pod)?.iter().find_map(|a| {
        if a == "--bootstrap" {
            Some(StartMode::Bootstrap)
        } else if a.starts_with("--join") {
            Some(StartMode::Join)
        } else {
            a.strip_prefix("--force-new-cluster=")
                .map(|id| StartMode::ForceNewCluster {
                    old_cluster_id: id.to_string(),
                })
        }
    })
}

/// The value of a Kubernetes quantity (`1Gi`, `500M`, `1.5Gi`, `1e9`, `100m`), to compare
/// sizes written differently; `None` when it is not a quantity.
pub fn quantity_value(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let binary = |power: i32| 1024f64.powi(power);
    let multiplier = match suffix {
        "" => 1.0,
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s => {
            let exponent: i32 = s.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(exponent)
        }
    };
    Some(n * multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ConcordanceCluster {
        let mut c = ConcordanceCluster::new(
            "demo",
            serde_json::from_value(serde_json::json!({
                "replicas": 3, "image": "concordance:1", "storage": {"size": "1Gi"}
            }))
            .unwrap(),
        );
        c.metadata.namespace = Some("ns".into());
        c.metadata.uid = Some("u".into());
        c
    }

    fn pod_spec(c: &ConcordanceCluster) -> PodSpec {
        pod(c, "demo-1", &c.spec.image, &StartMode::Join, false, false)
            .spec
            .unwrap()
    }

    #[test]
    fn key_files_are_mounted_from_the_member_keys_secret_beside_the_keys_and_keep_the_hash() {
        let c = cluster();
        let p = pod(&c, "demo-1", "concordance:1", &StartMode::Join, false, true);
        assert!(has_key_files(&p));
        let spec = p.spec.clone().unwrap();
        let keys = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "keys")
            .unwrap();
        let secret = keys.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("demo-member-keys"));
        assert_eq!(secret.default_mode, Some(0o440));
        let container = &spec.containers[0];
        let mount = container.volume_mounts.as_ref().unwrap();
        assert!(
            mount
                .iter()
                .any(|m| m.name == "keys" && m.mount_path == "/etc/concordance/keys")
        );
        let env = container.env.as_ref().unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            value("CONCORDANCE_API_KEY_FILE").as_deref(),
            Some("/etc/concordance/keys/admin")
        );
        assert_eq!(
            value("CONCORDANCE_AGENT_KEY_FILE").as_deref(),
            Some("/etc/concordance/keys/agent")
        );
        // The keys stay too, for a node built before key files.
        assert!(env.iter().any(|e| e.name == "CONCORDANCE_API_KEY"));
        let without = pod(
            &c,
            "demo-1",
            "concordance:1",
            &StartMode::Join,
            false,
            false,
        );
        assert!(!has_key_files(&without));
        assert_eq!(
            p.annotations().get(POD_HASH_ANNOTATION),
            without.annotations().get(POD_HASH_ANNOTATION),
            "an operator that renders key files restarts no member"
        );
    }

    #[test]
    fn pods_get_an_explicit_name_and_a_fully_qualified_address() {
        let p = pod(
            &cluster(),
            "demo-1",
            "concordance:1",
            &StartMode::Join,
            false,
            false,
        );
        let args = p.spec.unwrap().containers[0].args.clone().unwrap();
        assert!(args.contains(&"--node-id=demo-1".to_string()));
        assert!(args.contains(&"--advertise=demo-1.demo-peers.ns.svc.cluster.local:4100".into()));
        assert!(args.contains(&"--join=demo.ns.svc.cluster.local:4100".into()));
        assert!(!args.contains(&"--bootstrap".into()));
    }

    #[test]
    fn start_mode_reads_back() {
        let c = cluster();
        for mode in [
            StartMode::Bootstrap,
            StartMode::Join,
            StartMode::ForceNewCluster {
                old_cluster_id: "x".into(),
            },
        ] {
            assert_eq!(
                start_mode_of(&pod(&c, "demo-0", "i", &mode, false, false)),
                Some(mode.clone())
            );
        }
    }

    /// R12: the image runs as uid 10001 and a fresh volume's root belongs to root, so the
    /// pod needs `fsGroup`; and a namespace enforcing Pod Security `restricted` admits it.
    #[test]
    fn pods_meet_pod_security_restricted_with_an_fs_group() {
        let spec = pod_spec(&cluster());
        let pod_sc = spec.security_context.unwrap();
        assert_eq!(pod_sc.fs_group, Some(NODE_UID));
        assert_eq!(pod_sc.run_as_user, Some(NODE_UID));
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(
            pod_sc.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
        assert_eq!(pod_sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(spec.automount_service_account_token, Some(false));
        // Restricted allows only these volume types; the node needs no writable /tmp.
        for v in spec.volumes.unwrap() {
            assert!(v.persistent_volume_claim.is_some() || v.empty_dir.is_some());
        }
    }

    #[test]
    fn pods_spread_over_nodes_and_zones_unless_told_otherwise() {
        let spec = pod_spec(&cluster());
        let anti = spec.affinity.unwrap().pod_anti_affinity.unwrap();
        let term = &anti
            .preferred_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(
            term.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        let zones = spec.topology_spread_constraints.unwrap();
        assert_eq!(zones[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(zones[0].when_unsatisfiable, "ScheduleAnyway");

        let mut c = cluster();
        c.spec.pod.topology_spread_constraints = Some(vec![]);
        c.spec.pod.affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity::default()),
            ..Default::default()
        });
        let spec = pod_spec(&c);
        assert_eq!(spec.topology_spread_constraints, None);
        assert_eq!(
            spec.affinity.unwrap().pod_anti_affinity,
            Some(PodAntiAffinity::default())
        );
    }

    #[test]
    fn pod_settings_and_config_reach_the_pod() {
        let mut c = cluster();
        c.spec = serde_json::from_value(serde_json::json!({
            "replicas": 3, "image": "concordance:1", "storage": {"size": "1Gi"},
            "pod": {
                "labels": {"team": "a", "concordance.io/cluster": "other"},
                "annotations": {"note": "x"},
                "resources": {"requests": {"cpu": "100m"}},
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "priorityClassName": "high",
                "imagePullSecrets": [{"name": "pull"}],
                "serviceAccountName": "sa",
                "env": [{"name": "TZ", "value": "UTC"}, {"name": "CONCORDANCE_API_KEY", "value": "leak"}]
            },
            "config": {"logFormat": "json", "snapshotEntries": 5000, "httpThreads": 1, "auditLog": true}
        }))
        .unwrap();
        let p = pod(
            &c,
            "demo-1",
            "concordance:1",
            &StartMode::Join,
            false,
            false,
        );
        let labels = p.metadata.labels.unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[CLUSTER_LABEL], "demo", "the operator's labels win");
        assert_eq!(p.metadata.annotations.unwrap()["note"], "x");
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "pull");
        assert_eq!(spec.service_account_name.as_deref(), Some("sa"));
        let container = &spec.containers[0];
        assert!(container.resources.is_some());
        let env = container.env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "TZ"));
        let key_vars: Vec<_> = env.iter().filter(|e| e.name == ADMIN_KEY_ENV).collect();
        assert_eq!(key_vars.len(), 1, "the key's variable cannot be overridden");
        assert!(key_vars[0].value.is_none());
        let args = container.args.clone().unwrap();
        for a in [
            "--log-format=json",
            "--snapshot-entries=5000",
            "--http-threads=1",
            "--audit-log=/dev/stdout",
        ] {
            assert!(args.contains(&a.to_string()), "{a} in {args:?}");
        }
    }

    #[test]
    fn the_pod_hash_follows_what_reaches_the_pod_and_nothing_else() {
        let c = cluster();
        let base = pod_hash(&c.spec, false);
        let changed = |f: &dyn Fn(&mut ConcordanceClusterSpec)| {
            let mut s = c.spec.clone();
            f(&mut s);
            pod_hash(&s, false)
        };
        assert_eq!(base, pod_hash(&c.spec.clone(), false), "stable");
        assert_ne!(base, changed(&|s| s.image = "concordance:2".into()));
        assert_ne!(
            base,
            changed(&|s| {
                s.pod.annotations.insert("a".into(), "b".into());
            })
        );
        assert_ne!(base, changed(&|s| s.config.snapshot_entries = Some(10)));
        assert_ne!(base, changed(&|s| s.service.port = Some(8080)));
        assert_eq!(base, changed(&|s| s.replicas = 5));
        assert_eq!(base, changed(&|s| s.storage.size = "2Gi".into()));
        assert_eq!(base, changed(&|s| s.unready_replacement_seconds = 60));
        // The pod carries the hash of its own image.
        let p = pod(
            &c,
            "demo-0",
            "concordance:1",
            &StartMode::Bootstrap,
            false,
            false,
        );
        assert_eq!(p.metadata.annotations.unwrap()[POD_HASH_ANNOTATION], base);
    }

    #[test]
    fn a_credentials_secret_is_mounted_as_a_directory_and_named_to_the_node() {
        let mut c = cluster();
        let without = pod_spec(&c);
        assert_eq!(without.volumes.as_ref().unwrap().len(), 1);
        let base = pod_hash(&c.spec, false);
        c.spec.credentials_secret =
            Some(serde_json::from_value(serde_json::json!({"name": "demo-credentials"})).unwrap());
        assert_ne!(
            base,
            pod_hash(&c.spec, false),
            "naming it rolls the members"
        );
        let spec = pod_spec(&c);
        let secret = spec.volumes.unwrap()[1].secret.clone().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("demo-credentials"));
        let item = &secret.items.unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("credentials.yaml", CREDENTIALS_FILE)
        );
        assert_eq!(secret.default_mode, Some(0o440));
        let container = &spec.containers[0];
        let mount = &container.volume_mounts.as_ref().unwrap()[1];
        assert_eq!(mount.mount_path, CREDENTIALS_DIR);
        assert!(
            mount.sub_path.is_none(),
            "a subPath would never see the Secret change"
        );
        assert!(container.args.as_ref().unwrap().contains(
            &"--credentials-file=/etc/concordance/credentials/credentials.yaml".to_string()
        ));
    }

    #[test]
    fn a_tls_cluster_mounts_its_certificate_names_it_to_the_node_and_probes_over_https() {
        let c = cluster();
        assert_ne!(
            pod_hash(&c.spec, true),
            pod_hash(&c.spec, false),
            "TLS reaches the pod"
        );
        let p = pod(&c, "demo-1", "concordance:1", &StartMode::Join, true, false);
        assert_eq!(
            p.metadata.annotations.unwrap()[POD_HASH_ANNOTATION],
            pod_hash(&c.spec, true)
        );
        let spec = p.spec.unwrap();
        let secret = spec.volumes.unwrap()[1].secret.clone().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("demo-tls"));
        assert_eq!(secret.default_mode, Some(0o440));
        let container = &spec.containers[0];
        let mount = &container.volume_mounts.as_ref().unwrap()[1];
        assert_eq!(mount.mount_path, TLS_DIR);
        assert!(
            mount.sub_path.is_none(),
            "a renewed certificate must reach the node"
        );
        let args = container.args.clone().unwrap();
        for a in [
            "--tls-cert=/etc/concordance/tls/tls.crt",
            "--tls-key=/etc/concordance/tls/tls.key",
            "--peer-ca=/etc/concordance/tls/ca.crt",
            "--peer-names=*.demo-peers.ns.svc.cluster.local",
        ] {
            assert!(args.contains(&a.to_string()), "{a} in {args:?}");
        }
        for probe in [&container.readiness_probe, &container.liveness_probe] {
            let get = probe.clone().unwrap().http_get.unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
        // The certificate covers every member's advertised host and the client Service.
        let names = certificate_names(&c);
        assert_eq!(names[0], "*.demo-peers.ns.svc.cluster.local");
        assert!(names.contains(&"demo.ns.svc.cluster.local".to_string()));
        let advertised = advertise_address(&c, "demo-1");
        let domain = names[0].strip_prefix("*.").unwrap();
        assert_eq!(advertised, format!("demo-1.{domain}:4100"));
        // Issued for a CA and names: either changing issues it again.
        let a = issued_for("CA one", &names);
        assert_eq!(a, issued_for("CA one\n", &names));
        assert_ne!(a, issued_for("CA two", &names));
        assert_ne!(a, issued_for("CA one", &names[1..]));
    }

    #[test]
    fn the_disruption_budget_is_an_integer_min_available() {
        let p = pdb(&cluster(), 2).spec.unwrap();
        assert_eq!(p.min_available, Some(IntOrString::Int(2)));
        assert_eq!(p.max_unavailable, None);
        assert_eq!(
            p.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
    }

    #[test]
    fn generated_secrets_keep_their_data_out_of_the_applied_object() {
        let s = secret_metadata(&cluster(), KeyKind::Admin);
        assert_eq!(s.metadata.name.as_deref(), Some("demo-admin-key"));
        assert!(s.data.is_none() && s.string_data.is_none());
        let s = serde_json::to_value(&s).unwrap();
        assert!(s.get("data").is_none() && s.get("stringData").is_none());
    }

    #[test]
    fn client_service_follows_the_spec() {
        let mut c = cluster();
        c.spec.service.port = Some(8080);
        c.spec.service.type_ = Some(crate::crd::ServiceType::NodePort);
        let s = client_service(&c).spec.unwrap();
        assert_eq!(s.ports.unwrap()[0].port, 8080);
        assert_eq!(s.type_.as_deref(), Some("NodePort"));
        let args = node_args(&c, "demo-3", &StartMode::Join, false);
        assert!(args.contains(&"--join=demo.ns.svc.cluster.local:8080".to_string()));
    }

    #[test]
    fn quantities_compare_across_spellings() {
        assert_eq!(quantity_value("1Gi"), Some(1073741824.0));
        assert_eq!(quantity_value("1024Mi"), quantity_value("1Gi"));
        assert_eq!(quantity_value("1G"), Some(1e9));
        assert_eq!(quantity_value("1e9"), Some(1e9));
        assert_eq!(quantity_value("1.5Gi"), Some(1.5 * 1073741824.0));
        assert_eq!(quantity_value("100m"), Some(0.1));
        assert_eq!(quantity_value("500"), Some(500.0));
        assert_eq!(quantity_value("big"), None);
        assert_eq!(quantity_value("1Gb"), None);
    }
}
