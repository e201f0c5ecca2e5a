//! The controller loop: observe a `ConcordanceCluster`, `decide` the next step, report it.
//!
//! This build observes and decides only: it writes the observed summary and the decided next
//! step into the status and performs none of the other steps yet (creating Secrets, Services,
//! pods, membership changes). That keeps it safe to run beside a cluster while the executors
//! are written.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::crd::{ConcordanceCluster, ConcordanceClusterStatus};
use crate::decide::{self, Action, DataState, Observed, ObservedMember, PodPhase, PodState};

/// Label every owned object carries, with the cluster's name.
pub const CLUSTER_LABEL: &str = "concordance.io/cluster";
/// Port of the node's HTTP API, as the pods are started with.
pub const API_PORT: u16 = 4100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("resource has no namespace")]
    NoNamespace,
    #[error("status serialization: {0}")]
    Json(#[from] serde_json::Error),
}

pub struct Context {
    pub client: Client,
}

pub async fn run(client: Client) {
    let clusters: Api<ConcordanceCluster> = Api::all(client.clone());
    Controller::new(clusters, watcher::Config::default())
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(Context { client }))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

fn error_policy(_cluster: Arc<ConcordanceCluster>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(%error, "retrying");
    Requeue::requeue(Duration::from_secs(15))
}

async fn reconcile(cluster: Arc<ConcordanceCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let observed = observe(&cluster, &ns, &ctx.client).await?;
    let action = decide::decide(&observed);
    tracing::info!(cluster = %cluster.name_any(), ?action, "decided");
    let message = match &action {
        Action::Nothing | Action::UpdateStatus => None,
        Action::WaitFor { reason } => Some(reason.clone()),
        other => Some(format!("next step (not executed by this build): {other:?}")),
    };
    let current = cluster.status.clone().unwrap_or_default();
    let summary = decide::summarize(&observed);
    let conditions = decide::conditions(&observed, &action)
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            let status = if ok { "True" } else { "False" }.to_string();
            // Keep the transition time while the status stands, so an unchanged cluster is
            // not rewritten.
            let since = current
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
            Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message,
                last_transition_time: since,
                observed_generation: cluster.metadata.generation,
            }
        })
        .collect();
    let status = ConcordanceClusterStatus {
        conditions,
        observed_generation: summary.observed_generation,
        ready_members: summary.ready_members,
        leader: summary.leader,
        membership_version: summary.membership_version,
        members: summary.members,
        message,
        ..current.clone()
    };
    // Quiet when nothing changed: no write at all.
    if status != current {
        let api: Api<ConcordanceCluster> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({ "status": status });
        api.patch_status(
            &cluster.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(Requeue::requeue(Duration::from_secs(30)))
}

async fn observe(
    cluster: &ConcordanceCluster,
    ns: &str,
    client: &Client,
) -> Result<Observed, Error> {
    let name = cluster.name_any();
    let selector = ListParams::default().labels(&format!("{CLUSTER_LABEL}={name}"));
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&selector)
        .await?;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&selector)
        .await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&selector)
        .await?;
    let services = Api::<Service>::namespaced(client.clone(), ns)
        .list(&selector)
        .await?;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .list(&selector)
        .await?;

    let mut members: Vec<ObservedMember> = Vec::new();
    for pod in &pods.items {
        members.push(ObservedMember {
            name: pod.name_any(),
            pod: Some(pod_state(pod)),
            volume: false,
            data: DataState::Unknown,
        });
    }
    for claim in &claims.items {
        let claim_name = claim.name_any();
        match members.iter_mut().find(|m| m.name == claim_name) {
            Some(m) => m.volume = true,
            None => members.push(ObservedMember {
                name: claim_name,
                pod: None,
                volume: true,
                data: DataState::Unknown,
            }),
        }
    }

    // Unreachable or not yet created: the decision treats it as "no member answered".
    let endpoint = format!("http://{name}.{ns}.svc:{API_PORT}");
    let status = match concordance_client::Client::new(&endpoint) {
        Ok(c) => c.status().await.ok(),
        Err(_) => None,
    };

    Ok(Observed {
        name,
        generation: cluster.metadata.generation,
        spec: cluster.spec.clone(),
        status: cluster.status.clone().unwrap_or_default(),
        // Referenced Secrets are the user's (unlabelled); generated ones carry the label.
        secrets_exist: (cluster.spec.admin_key_secret.is_some()
            && cluster.spec.agent_key_secret.is_some())
            || !secrets.items.is_empty(),
        services_exist: services.items.len() >= 2,
        pdb_exists: !pdbs.items.is_empty(),
        members,
        cluster: status,
    })
}

fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded" | "Failed") => PodPhase::Finished,
        _ => PodPhase::Pending,
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status == "True", c.last_transition_time.clone()));
    let unready_seconds = match &ready {
        Some((false, Some(since))) => {
            let now = k8s_openapi::jiff::Timestamp::now();
            now.duration_since(since.0).as_secs()
        }
        _ => 0,
    };
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    PodState {
        phase,
        ready: ready.is_some_and(|(r, _)| r),
        image,
        unready_seconds,
    }
}
