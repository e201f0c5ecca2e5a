//! The Kubernetes objects a cluster owns, built from its spec. Pure builders: the controller
//! creates them; tests can inspect them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Probe, Secret,
    SecretKeySelector, Service, ServicePort, ServiceSpec as K8sServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{ConcordanceCluster, SecretKeyRef};

/// Label every owned object carries, with the cluster's name.
pub const CLUSTER_LABEL: &str = "concordance.io/cluster";
/// Label of a member's pod and volume, with the member's name.
pub const MEMBER_LABEL: &str = "concordance.io/member";
/// Port of the node's HTTP API (clients and peers).
pub const API_PORT: u16 = 4100;
/// Where the member's volume is mounted.
pub const DATA_DIR: &str = "/data";

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

fn selector(c: &ConcordanceCluster) -> BTreeMap<String, String> {
    BTreeMap::from([(CLUSTER_LABEL.to_string(), c.name_any())])
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

pub fn headless_service_name(c: &ConcordanceCluster) -> String {
    format!("{}-peers", c.name_any())
}

pub fn client_service_name(c: &ConcordanceCluster) -> String {
    c.name_any()
}

pub fn client_port(c: &ConcordanceCluster) -> u16 {
    c.spec
        .service
        .port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(API_PORT)
}

/// The fully qualified address peers reach a member at.
pub fn advertise_address(c: &ConcordanceCluster, member: &str) -> String {
    format!(
        "{member}.{}.{}.svc.cluster.local:{API_PORT}",
        headless_service_name(c),
        c.namespace().unwrap_or_default()
    )
}

/// The generated Secret for a key, when the spec references none.
pub fn generated_secret_name(c: &ConcordanceCluster, which: &str) -> String {
    format!("{}-{which}-key", c.name_any())
}

/// The Secret and key the node reads the admin (`which = "admin"`) or agent key from.
pub fn key_ref(c: &ConcordanceCluster, which: &str) -> SecretKeyRef {
    let given = match which {
        "admin" => &c.spec.admin_key_secret,
        _ => &c.spec.agent_key_secret,
    };
    given.clone().unwrap_or_else(|| SecretKeyRef {
        name: generated_secret_name(c, which),
        key: "key".to_string(),
    })
}

pub fn secret(c: &ConcordanceCluster, which: &str, key: String) -> Secret {
    Secret {
        metadata: meta(c, generated_secret_name(c, which), true),
        string_data: Some(BTreeMap::from([("key".to_string(), key)])),
        type_: Some("Opaque".to_string()),
        ..Default::default()
    }
}

/// Resolves every member, ready or not, so learners and a cluster without quorum still reach
/// each other.
pub fn headless_service(c: &ConcordanceCluster) -> Service {
    Service {
        metadata: meta(c, headless_service_name(c), true),
        spec: Some(K8sServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(c)),
            ports: Some(vec![ServicePort {
                name: Some("api".to_string()),
                port: i32::from(API_PORT),
                target_port: Some(IntOrString::Int(i32::from(API_PORT))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ready members only: clients and joining members go through it.
pub fn client_service(c: &ConcordanceCluster) -> Service {
    let mut metadata = meta(c, client_service_name(c), true);
    let s = &c.spec.service;
    if !s.labels.is_empty() {
        metadata
            .labels
            .get_or_insert_default()
            .extend(s.labels.clone());
    }
    if !s.annotations.is_empty() {
        metadata.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(K8sServiceSpec {
            type_: s.type_.map(|t| format!("{t:?}")),
            selector: Some(selector(c)),
            ports: Some(vec![ServicePort {
                name: Some("api".to_string()),
                port: i32::from(client_port(c)),
                target_port: Some(IntOrString::Int(i32::from(API_PORT))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// At most one member down by voluntary disruption. Unhealthy pods may always be evicted, so
/// an already-broken member never blocks a node drain.
pub fn pdb(c: &ConcordanceCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(c, c.name_any(), true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(c)),
                ..Default::default()
            }),
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

fn key_env(c: &ConcordanceCluster, var: &str, which: &str) -> EnvVar {
    let r = key_ref(c, which);
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

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(API_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The node's arguments: an explicit name and a fully qualified advertise address always.
pub fn node_args(c: &ConcordanceCluster, member: &str, mode: &StartMode) -> Vec<String> {
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
            client_service_name(c),
            c.namespace().unwrap_or_default(),
            client_port(c)
        )),
        StartMode::ForceNewCluster { old_cluster_id } => {
            args.push(format!("--force-new-cluster={old_cluster_id}"))
        }
    }
    args
}

pub fn pod(c: &ConcordanceCluster, member: &str, image: &str, mode: &StartMode) -> Pod {
    let mut metadata = meta(c, member.to_string(), true);
    metadata
        .labels
        .get_or_insert_default()
        .insert(MEMBER_LABEL.to_string(), member.to_string());
    let container = Container {
        name: "concordance".to_string(),
        image: Some(image.to_string()),
        args: Some(node_args(c, member, mode)),
        env: Some(vec![
            key_env(c, "CONCORDANCE_API_KEY", "admin"),
            key_env(c, "CONCORDANCE_AGENT_API_KEY", "agent"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("api".to_string()),
            container_port: i32::from(API_PORT),
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe("/api/v1/ready", 2, 1)),
        liveness_probe: Some(http_probe("/api/v1/health", 10, 6)),
        resources: c.spec.resources.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_string(),
            mount_path: DATA_DIR.to_string(),
            ..Default::default()
        }]),
        // A node that refuses to start (e.g. a join refused because the data dir was lost)
        // leaves `{"code","message"}` at /dev/termination-log: the operator reads its code
        // from the pod status. Other failures fall back to the last log lines, for people.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Default::default()
    };
    Pod {
        metadata,
        spec: Some(PodSpec {
            hostname: Some(member.to_string()),
            subdomain: Some(headless_service_name(c)),
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "data".to_string(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: member.to_string(),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            affinity: c.spec.affinity.clone(),
            tolerations: (!c.spec.tolerations.is_empty()).then(|| c.spec.tolerations.clone()),
            node_selector: (!c.spec.node_selector.is_empty()).then(|| c.spec.node_selector.clone()),
            restart_policy: Some("Always".to_string()),
            termination_grace_period_seconds: Some(30),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The start mode a pod was created with, read back from its arguments.
pub fn start_mode_of(pod: &Pod) -> Option<StartMode> {
    let args = pod.spec.as_ref()?.containers.first()?.args.as_ref()?;
    args.iter().find_map(|a| {
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

    #[test]
    fn pods_get_an_explicit_name_and_a_fully_qualified_address() {
        let p = pod(&cluster(), "demo-1", "concordance:1", &StartMode::Join);
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
                start_mode_of(&pod(&c, "demo-0", "i", &mode)),
                Some(mode.clone())
            );
        }
    }
}
