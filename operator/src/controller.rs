//! The controller: observe a `ConcordanceCluster`, `decide` the one next step, record it when a
//! crash could leave it half done, take it, and report the outcome in the status.
//!
//! Everything here is thin: the rules are in [`crate::decide`], the objects in
//! [`crate::resources`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{ConcordanceCluster, ConcordanceClusterStatus, PendingKind};
use crate::decide::{self, Action};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::observe::{self, Observation};
use crate::resources::{self, CLUSTER_LABEL, StartMode};

/// Name of the finalizer that keeps a deleted cluster until its volumes are dealt with.
pub const FINALIZER: &str = "concordance.io/cleanup";
/// Field manager of everything the operator writes.
pub const MANAGER: &str = "concordance-operator";

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
        }
    }
}

/// Runs the controller until the process ends; `namespace` limits it to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (clusters, pods) = match &namespace {
        Some(ns) => (
            Api::<ConcordanceCluster>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let owned = watcher::Config::default().labels(CLUSTER_LABEL);
    Controller::new(clusters, watcher::Config::default())
        .owns(pods, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile failed"),
            }
        })
        .await;
}

fn error_policy(cluster: Arc<ConcordanceCluster>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(cluster = %cluster.name_any(), %error, "reconcile failed; retrying");
    Requeue::requeue(Duration::from_secs(5))
}

async fn reconcile(cluster: Arc<ConcordanceCluster>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    ctx.metrics.reconciles.inc();
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ConcordanceCluster> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, cluster, |event| async {
        match event {
            Finalizer::Apply(c) => apply(&c, &ctx).await,
            Finalizer::Cleanup(c) => cleanup(&c, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// On deletion: owned objects go with the cluster (owner references); volumes only when the
/// spec says so.
async fn cleanup(cluster: &ConcordanceCluster, ctx: &Context) -> Result<Requeue, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    if cluster.spec.delete_volumes_on_cluster_delete {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let selector =
            ListParams::default().labels(&format!("{CLUSTER_LABEL}={}", cluster.name_any()));
        claims
            .delete_collection(&DeleteParams::default(), &selector)
            .await?;
        event(
            ctx,
            cluster,
            "VolumesDeleted",
            "Cleanup",
            "volumes deleted with the cluster",
        )
        .await;
    } else {
        event(
            ctx,
            cluster,
            "VolumesKept",
            "Cleanup",
            "the members' volumes are kept (spec.deleteVolumesOnClusterDelete is false)",
        )
        .await;
    }
    Ok(Requeue::await_change())
}

async fn event(
    ctx: &Context,
    cluster: &ConcordanceCluster,
    reason: &str,
    action: &str,
    note: &str,
) {
    let ev = Event {
        type_: if reason.starts_with("Waiting") || reason.ends_with("Failed") {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

async fn apply(cluster: &ConcordanceCluster, ctx: &Context) -> Result<Requeue, Error> {
    let obs = observe::observe(cluster, &ctx.client).await?;
    let action = decide::decide(&obs.observed);
    let mut status = obs.observed.status.clone();
    let written = status.clone();

    // Record the step before taking it. A recovery replaces a step that quorum loss stalled.
    let replaces_pending = matches!(action, Action::RecoverFrom { .. })
        && status
            .pending_action
            .as_ref()
            .is_some_and(|p| p.kind != PendingKind::Recover);
    if (status.pending_action.is_none() || replaces_pending)
        && let Some(mut p) = action.to_pending(&obs.observed)
    {
        p.started = Some(now());
        status.pending_action = Some(p);
        write_status(ctx, cluster, &status).await?;
    }
    let written = if status != written {
        status.clone()
    } else {
        written
    };

    if !matches!(
        action,
        Action::Nothing | Action::UpdateStatus | Action::WaitFor { .. }
    ) {
        tracing::info!(cluster = %cluster.name_any(), ?action, "taking a step");
        ctx.metrics.action(&action);
    }
    let outcome = take(cluster, ctx, &obs, &action, &mut status).await;
    if let Err(e) = &outcome {
        event(
            ctx,
            cluster,
            "StepFailed",
            action_name(&action),
            &format!("{action:?}: {e}"),
        )
        .await;
    }
    outcome?;

    // Report: observed summary, conditions, and what the operator is doing or waiting for.
    let summary = decide::summarize(&obs.observed);
    status.observed_generation = summary.observed_generation;
    status.ready_members = summary.ready_members;
    status.leader = summary.leader;
    status.membership_version = summary.membership_version;
    status.members = summary.members;
    if cluster.spec.force_recover_from.is_none() {
        // Removed from the spec: the next time it is set, it applies again.
        status.recovered_from = None;
    }
    status.message = match &action {
        Action::Nothing | Action::UpdateStatus => None,
        Action::WaitFor { reason } => Some(format!("waiting: {reason}")),
        Action::ClearPending { reason } => Some(reason.clone()),
        other => Some(format!("step: {}", describe(other))),
    };
    status.conditions = conditions(cluster, &obs, &action, &written);
    if status != written {
        write_status(ctx, cluster, &status).await?;
    }

    let busy = status.pending_action.is_some()
        || !matches!(action, Action::Nothing | Action::UpdateStatus);
    Ok(Requeue::requeue(if busy {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(20)
    }))
}

fn conditions(
    cluster: &ConcordanceCluster,
    obs: &Observation,
    action: &Action,
    current: &ConcordanceClusterStatus,
) -> Vec<Condition> {
    decide::conditions(&obs.observed, action)
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
                .unwrap_or_else(now);
            Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message,
                last_transition_time: since,
                observed_generation: cluster.metadata.generation,
            }
        })
        .collect()
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The whole status, server-side applied: fields left out are removed.
async fn write_status(
    ctx: &Context,
    cluster: &ConcordanceCluster,
    status: &ConcordanceClusterStatus,
) -> Result<(), Error> {
    let api: Api<ConcordanceCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": "concordance.io/v1alpha1",
        "kind": "ConcordanceCluster",
        "status": status,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::CreateSecrets => "CreateSecrets",
        Action::CreateServices => "CreateServices",
        Action::CreatePdb => "CreatePodDisruptionBudget",
        Action::BootstrapFirstMember { .. } => "Bootstrap",
        Action::RecordClusterId { .. } => "RecordClusterId",
        Action::CreatePod { .. } => "CreatePod",
        Action::DeletePod { .. } => "DeletePod",
        Action::AddMember { .. } => "AddMember",
        Action::RemoveMember { .. } => "RemoveMember",
        Action::DeletePodAndVolume { .. } => "DeleteMemberPodAndVolume",
        Action::TransferLeadership { .. } => "TransferLeadership",
        Action::RestartMemberWithImage { .. } => "RestartMember",
        Action::RecoverFrom { .. } => "ForceRecover",
        Action::ClearPending { .. } => "StepDone",
        Action::WaitFor { .. } => "Wait",
        Action::UpdateStatus => "UpdateStatus",
        Action::Nothing => "Nothing",
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::BootstrapFirstMember { name } => format!("bootstrap the cluster with {name}"),
        Action::RecordClusterId { cluster_id } => format!("record cluster id {cluster_id}"),
        Action::CreatePod { name } => format!("create the pod of {name}"),
        Action::DeletePod { name } => format!("delete the finished pod of {name}"),
        Action::AddMember { name } => format!("add member {name}"),
        Action::RemoveMember {
            name,
            expected_version,
        } => format!("remove {name} from the membership (at version {expected_version})"),
        Action::DeletePodAndVolume { name } => format!("delete the pod and volume of {name}"),
        Action::TransferLeadership { from, to } => {
            format!("transfer leadership from {from} to {to}")
        }
        Action::RestartMemberWithImage { name, image } => format!("restart {name} on {image}"),
        Action::RecoverFrom { name } => format!("rebuild the cluster from {name}'s data"),
        other => action_name(other).to_string(),
    }
}

/// Events for the steps that change membership or a member's life.
fn event_for(a: &Action) -> Option<(&'static str, String)> {
    let reason = match a {
        Action::BootstrapFirstMember { .. } => "Bootstrapping",
        Action::RecordClusterId { .. } => "ClusterIdRecorded",
        Action::CreatePod { .. } => "MemberPodCreated",
        Action::DeletePod { .. } => "MemberPodDeleted",
        Action::AddMember { .. } => "MemberAdding",
        Action::RemoveMember { .. } => "MemberRemoved",
        Action::DeletePodAndVolume { .. } => "MemberDeleted",
        Action::TransferLeadership { .. } => "LeadershipTransferred",
        Action::RestartMemberWithImage { .. } => "MemberRestarting",
        Action::RecoverFrom { .. } => "ForceRecovering",
        Action::ClearPending { .. } => "StepCompleted",
        _ => return None,
    };
    let note = match a {
        Action::ClearPending { reason } => reason.clone(),
        other => describe(other),
    };
    Some((reason, note))
}

/// Takes one step. Every step is idempotent or guarded by the recorded pending action.
async fn take(
    cluster: &ConcordanceCluster,
    ctx: &Context,
    obs: &Observation,
    action: &Action,
    status: &mut ConcordanceClusterStatus,
) -> Result<(), Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    match action {
        Action::Nothing | Action::UpdateStatus | Action::WaitFor { .. } => return Ok(()),
        Action::CreateSecrets => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            for (which, given) in [
                ("admin", &cluster.spec.admin_key_secret),
                ("agent", &cluster.spec.agent_key_secret),
            ] {
                if given.is_some() {
                    continue;
                }
                let s = resources::secret(cluster, which, random_key());
                create(&secrets, &s).await?;
            }
        }
        Action::CreateServices => {
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            create(&services, &resources::headless_service(cluster)).await?;
            create(&services, &resources::client_service(cluster)).await?;
        }
        Action::CreatePdb => {
            let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
            create(&pdbs, &resources::pdb(cluster)).await?;
        }
        Action::BootstrapFirstMember { name } => {
            create_member(
                cluster,
                &pods,
                &claims,
                name,
                &cluster.spec.image,
                StartMode::Bootstrap,
            )
            .await?;
        }
        Action::RecordClusterId { cluster_id } => {
            status.cluster_id = Some(cluster_id.clone());
            if status
                .pending_action
                .as_ref()
                .is_some_and(|p| matches!(p.kind, PendingKind::Bootstrap | PendingKind::Recover))
            {
                clear_pending_step(status);
            }
            write_status(ctx, cluster, status).await?;
        }
        Action::CreatePod { name } => {
            let pending = status.pending_action.as_ref().filter(|p| &p.member == name);
            // Only a bootstrap recorded for this very member, before any cluster id is
            // recorded, starts a new cluster; every other pod joins.
            let mode = match (pending.map(|p| p.kind), &status.cluster_id) {
                (Some(PendingKind::Bootstrap), None) => StartMode::Bootstrap,
                (Some(PendingKind::Recover), Some(old)) => StartMode::ForceNewCluster {
                    old_cluster_id: old.clone(),
                },
                _ => StartMode::Join,
            };
            let image = pending
                .and_then(|p| p.image.clone())
                .unwrap_or_else(|| cluster.spec.image.clone());
            create_member(cluster, &pods, &claims, name, &image, mode).await?;
        }
        Action::DeletePod { name } | Action::RestartMemberWithImage { name, .. } => {
            delete(&pods, name).await?;
        }
        Action::AddMember { name } => {
            create_member(
                cluster,
                &pods,
                &claims,
                name,
                &cluster.spec.image,
                StartMode::Join,
            )
            .await?;
        }
        Action::RemoveMember {
            name,
            expected_version,
        } => {
            // A member that cannot serve loses nothing by stopping first, and a stopped one
            // cannot rejoin under its old name between its removal and its deletion.
            let serving = obs
                .observed
                .members
                .iter()
                .find(|m| &m.name == name)
                .and_then(|m| m.pod.as_ref())
                .is_some_and(|p| p.ready);
            if !serving && obs.pods.contains_key(name) {
                delete(&pods, name).await?;
            }
            let node = admin_client(cluster, ctx, obs).await?;
            let _: serde_json::Value = node
                .call(
                    reqwest::Method::POST,
                    "cluster/remove",
                    Some(&json!({"nodeId": name, "expectedVersion": expected_version})),
                )
                .await?;
        }
        Action::DeletePodAndVolume { name } => {
            delete(&pods, name).await?;
            delete(&claims, name).await?;
        }
        Action::TransferLeadership { to, .. } => {
            let node = admin_client(cluster, ctx, obs).await?;
            let _: serde_json::Value = node
                .call(
                    reqwest::Method::POST,
                    "cluster/transfer-leader",
                    Some(&json!({"nodeId": to})),
                )
                .await?;
        }
        Action::RecoverFrom { name } => {
            for other in obs.pods.keys().filter(|p| *p != name) {
                delete(&pods, other).await?;
            }
            let recovering =
                obs.observed.members.iter().any(|m| {
                    &m.name == name && m.pod.as_ref().is_some_and(|p| p.force_new_cluster)
                });
            if obs.pods.contains_key(name) && !recovering {
                // Created again in recovery mode on the next pass, once this one is gone.
                delete(&pods, name).await?;
            }
        }
        Action::ClearPending { .. } => {
            clear_pending_step(status);
            write_status(ctx, cluster, status).await?;
        }
    }
    if let Some((reason, note)) = event_for(action) {
        event(ctx, cluster, reason, action_name(action), &note).await;
    }
    Ok(())
}

/// Drops the finished step; a finished recovery spends `spec.forceRecoverFrom`.
fn clear_pending_step(status: &mut ConcordanceClusterStatus) {
    if let Some(p) = status.pending_action.take()
        && p.kind == PendingKind::Recover
    {
        status.recovered_from = Some(p.member);
    }
}

async fn create_member(
    cluster: &ConcordanceCluster,
    pods: &Api<Pod>,
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
    image: &str,
    mode: StartMode,
) -> Result<(), Error> {
    // The pod follows once its claim is bound: a pod created before a volume exists for it
    // can sit unschedulable for minutes (the scheduler retries such pods slowly). A claim that
    // stays unbound (a class that binds at first use) gets its pod after a short grace.
    let Some(claim) = claims.get_opt(name).await? else {
        create(claims, &resources::claim(cluster, name)).await?;
        return Ok(());
    };
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let age = claim.metadata.creation_timestamp.as_ref().map_or(0, |t| {
        k8s_openapi::jiff::Timestamp::now()
            .duration_since(t.0)
            .as_secs()
    });
    if !bound && age < 15 {
        return Ok(());
    }
    create(pods, &resources::pod(cluster, name, image, &mode)).await
}

/// Creates the object unless it exists (a retried step finds it there).
async fn create<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the object unless it is already gone.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A client of the leader (or any answering member) with the admin key.
async fn admin_client(
    cluster: &ConcordanceCluster,
    ctx: &Context,
    obs: &Observation,
) -> Result<concordance_client::Client, Error> {
    let endpoint = obs
        .leader_endpoint()
        .ok_or(Error::NoEndpoint("change the membership"))?;
    let r = resources::key_ref(cluster, "admin");
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let secret = secrets.get(&r.name).await?;
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .ok_or_else(|| Error::MissingKey(r.name.clone(), r.key.clone()))?;
    Ok(concordance_client::Client::new(&endpoint)?.with_key(key))
}

/// 32 random bytes, hex: a generated API key.
fn random_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
