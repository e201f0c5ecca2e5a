//! The controller: observe a `ConcordanceCluster`, keep its owned objects as decided, take the
//! one next step decided (recorded first when a crash could leave it half done), and write the
//! status decided.
//!
//! Nothing here decides: every rule is in [`crate::decide`], every object is built in
//! [`crate::resources`]; this is the applier, a match on what they return.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{ConcordanceCluster, ConcordanceClusterStatus};
use crate::decide::{self, Action, ConditionState, ObjectStep, Owned};
use crate::error::Error;
use crate::keys;
use crate::metrics::Metrics;
use crate::observe::{self, Observation};
use crate::pki;
use crate::resources::{self, CLUSTER_LABEL, KeyKind};

/// Name of the finalizer that keeps a deleted cluster until its volumes are dealt with.
pub const FINALIZER: &str = "concordance.io/cleanup";
/// Field manager of everything the operator writes.
pub const MANAGER: &str = resources::FIELD_MANAGER;
/// Next pass while a step is under way or awaited.
const BUSY_REQUEUE: Duration = Duration::from_secs(2);
/// Next pass of a settled cluster (a change of its pods triggers one sooner).
const IDLE_REQUEUE: Duration = Duration::from_secs(20);
/// Retry after a failed pass.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);

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
    Requeue::requeue(ERROR_REQUEUE)
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
    let type_ = if reason.ends_with("Failed") {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, cluster, type_, reason, action, note).await;
}

async fn publish(
    ctx: &Context,
    cluster: &ConcordanceCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let ev = Event {
        type_,
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
    let o = &obs.observed;

    // The owned objects, kept in their rendered state on every pass.
    let mut ca = obs.ca.clone();
    for step in decide::objects(o) {
        keep_object(cluster, ctx, &step, &mut ca).await?;
    }

    let action = decide::decide(o);
    let info = action.info();
    let mut status = o.status.clone();
    // Recorded before it is taken, so a restarted operator finishes or undoes it.
    if let Some(mut record) = decide::record(o, &action) {
        record.started = Some(now());
        status.pending_action = Some(record);
        write_status(ctx, cluster, &status).await?;
    }
    let written = status.clone();

    if action.is_step() {
        tracing::info!(cluster = %cluster.name_any(), step = %info.description, "taking a step");
        ctx.metrics.step(info.name);
    }
    let taken = match take(cluster, ctx, &obs, &action, &mut status).await {
        Ok(taken) => taken,
        Err(e) => {
            event(
                ctx,
                cluster,
                "StepFailed",
                info.name,
                &format!("{}: {e}", info.description),
            )
            .await;
            return Err(e);
        }
    };
    // A step found already done (a pod being recreated while the old one still stops) is not
    // reported again.
    if taken && let Some(reason) = info.event {
        event(ctx, cluster, reason, info.name, &info.description).await;
    }
    let written = if status != written {
        status.clone()
    } else {
        written
    };

    let report = decide::report(o, &action);
    let s = report.summary;
    status.observed_generation = s.observed_generation;
    status.replicas = s.replicas;
    status.ready_members = s.ready_members;
    status.updated_members = s.updated_members;
    status.selector = s.selector;
    status.pod_hash = s.pod_hash;
    status.leader = s.leader;
    status.membership_version = s.membership_version;
    status.members = s.members;
    status.recovered_from = report.recovered_from;
    status.message = report.message;
    status.tls = Some(report.tls);
    status.keys = report.keys;
    status.conditions = conditions(cluster, report.conditions, &written);
    let out_of_space = |s: &ConcordanceClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "SpaceAvailable")
            .filter(|c| c.status == "False")
            .map(|c| c.message.clone())
    };
    if let (Some(message), None) = (out_of_space(&status), out_of_space(&written)) {
        publish(
            ctx,
            cluster,
            EventType::Warning,
            "NoSpace",
            "Observe",
            &message,
        )
        .await;
    }
    if status != written {
        write_status(ctx, cluster, &status).await?;
    }

    let busy = status.pending_action.is_some()
        || !matches!(action, Action::Nothing | Action::UpdateStatus)
        || decide::keys_rotating(o);
    Ok(Requeue::requeue(if busy {
        BUSY_REQUEUE
    } else {
        IDLE_REQUEUE
    }))
}

/// Conditions with their transition times: kept while a condition's status stands, so an
/// unchanged cluster is not rewritten.
fn conditions(
    cluster: &ConcordanceCluster,
    states: Vec<ConditionState>,
    current: &ConcordanceClusterStatus,
) -> Vec<Condition> {
    states
        .into_iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" }.to_string();
            let since = current
                .conditions
                .iter()
                .find(|old| old.type_ == c.type_ && old.status == status)
                .map(|old| old.last_transition_time.clone())
                .unwrap_or_else(now);
            Condition {
                type_: c.type_.to_string(),
                status,
                reason: c.reason.to_string(),
                message: c.message,
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

/// Keeps one owned object as [`decide::objects`] says. `ca`: the cluster's CA as observed, or
/// as created by an earlier step of this pass.
async fn keep_object(
    cluster: &ConcordanceCluster,
    ctx: &Context,
    step: &ObjectStep,
    ca: &mut Option<pki::Pair>,
) -> Result<(), Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let no_ca = || {
        Error::Certificate(format!(
            "Secret {} holds no CA",
            resources::ca_secret_name(&name)
        ))
    };
    match step {
        ObjectStep::CreateKeySecret(key) => {
            create(&secrets, &resources::secret(cluster, *key, random_key())).await?;
        }
        ObjectStep::KeepKeySecret(key) => {
            apply_object(&secrets, &resources::secret_metadata(cluster, *key)).await?;
        }
        ObjectStep::ApplyPeerService => {
            apply_object(&services, &resources::headless_service(cluster)).await?;
        }
        ObjectStep::ApplyClientService => {
            apply_object(&services, &resources::client_service(cluster)).await?;
        }
        ObjectStep::ApplyDisruptionBudget { min_available } => {
            apply_object(&pdbs, &resources::pdb(cluster, *min_available)).await?;
        }
        ObjectStep::CreateCa => {
            let made = pki::new_ca(&name, &ns)?;
            if create(&secrets, &resources::ca_secret(cluster, &made)).await? {
                tracing::info!(cluster = %name, "created the cluster's CA");
                *ca = Some(made);
            }
        }
        ObjectStep::IssueCertificate { why } => {
            let ca = ca.as_ref().ok_or_else(no_ca)?;
            let names = resources::certificate_names(cluster);
            let issued = pki::issue(ca, &name, &names)?;
            let issued_for = resources::issued_for(&ca.certificate, &names);
            let secret =
                resources::certificate_secret(cluster, &issued, &ca.certificate, issued_for);
            apply_object(&secrets, &secret).await?;
            tracing::info!(cluster = %name, why, "issued the members' certificate");
            event(
                ctx,
                cluster,
                "CertificateIssued",
                "IssueCertificate",
                &format!(
                    "the members' certificate was issued ({why}), valid {} days; the members \
                     read it with no restart",
                    pki::CERTIFICATE_DAYS
                ),
            )
            .await;
        }
        ObjectStep::ApplyCaConfigMap => {
            let ca = ca.as_ref().ok_or_else(no_ca)?;
            apply_object(&maps, &resources::ca_config_map(cluster, &ca.certificate)).await?;
        }
        ObjectStep::WriteMemberKeys(next) => {
            apply_object(&secrets, &member_keys_secret(cluster, next)).await?;
            tracing::info!(cluster = %name, why = %next.why, "wrote the members' keys");
            event(ctx, cluster, "KeysChanged", "WriteMemberKeys", &next.why).await;
        }
        ObjectStep::Delete(owned) => {
            let object = owned.object_name(&name);
            match owned {
                Owned::KeySecret(_)
                | Owned::CaSecret
                | Owned::CertificateSecret
                | Owned::MemberKeys => delete(&secrets, &object).await?,
                Owned::PeerService | Owned::ClientService => delete(&services, &object).await?,
                Owned::DisruptionBudget => delete(&pdbs, &object).await?,
                Owned::CaConfigMap => delete(&maps, &object).await?,
            };
            tracing::info!(cluster = %name, kind = owned.kind(), %object, "deleted");
        }
    }
    Ok(())
}

/// Takes one step, exactly as decided; `Ok(false)` when it was already done. Every step is
/// idempotent or guarded by the recorded pending action.
async fn take(
    cluster: &ConcordanceCluster,
    ctx: &Context,
    obs: &Observation,
    action: &Action,
    status: &mut ConcordanceClusterStatus,
) -> Result<bool, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    match action {
        Action::Nothing | Action::UpdateStatus | Action::WaitFor { .. } => Ok(false),
        Action::Bootstrap { name } | Action::AddMember { name } | Action::CreateVolume { name } => {
            create(&claims, &resources::claim(cluster, name)).await
        }
        Action::RecordClusterId { cluster_id } => {
            status.cluster_id = Some(cluster_id.clone());
            write_status(ctx, cluster, status).await?;
            Ok(true)
        }
        Action::CreatePod { name, image, mode } => {
            let tls = obs.observed.tls.enabled;
            // Key files once their Secret exists (it is made before the first member).
            let key_files = obs.observed.keys.held.is_some();
            let pod = resources::pod(cluster, name, image, mode, tls, key_files);
            create(&pods, &pod).await
        }
        Action::DeletePod { name } | Action::RestartMember { name, .. } => {
            delete(&pods, name).await
        }
        Action::RemoveMember {
            name,
            expected_version,
            stop_first,
        } => {
            if *stop_first {
                delete(&pods, name).await?;
            }
            let node = admin_client(cluster, obs)?;
            let _: serde_json::Value = node
                .call(
                    reqwest::Method::POST,
                    "cluster/remove",
                    Some(&json!({"nodeId": name, "expectedVersion": expected_version})),
                )
                .await?;
            Ok(true)
        }
        Action::DeletePodAndVolume { name } => {
            let pod = delete(&pods, name).await?;
            let claim = delete(&claims, name).await?;
            Ok(pod || claim)
        }
        Action::TransferLeadership { to, .. } => {
            let node = admin_client(cluster, obs)?;
            let _: serde_json::Value = node
                .call(
                    reqwest::Method::POST,
                    "cluster/transfer-leader",
                    Some(&json!({"nodeId": to})),
                )
                .await?;
            Ok(true)
        }
        Action::RecoverFrom { delete: stop, .. } => {
            for name in stop {
                delete(&pods, name).await?;
            }
            Ok(true)
        }
        Action::ExpandVolume { name, size } => {
            claims
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(resources::claim_size_patch(size)),
                )
                .await?;
            Ok(true)
        }
        Action::ClearPending { recovered_from, .. } => {
            status.pending_action = None;
            if recovered_from.is_some() {
                status.recovered_from = recovered_from.clone();
            }
            write_status(ctx, cluster, status).await?;
            Ok(true)
        }
    }
}

/// Creates the object; `Ok(false)` when it exists (a retried step finds it there).
async fn create<K>(api: &Api<K>, obj: &K) -> Result<bool, Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Server-side applies the object as rendered: created when missing, and the fields the
/// operator set before but no longer sets are removed.
async fn apply_object<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        &obj.meta().name.clone().unwrap_or_default(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Deletes the object; `Ok(false)` when it is already gone.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A client of the leader (or any answering member) with the admin key.
fn admin_client(
    cluster: &ConcordanceCluster,
    obs: &Observation,
) -> Result<concordance_client::Client, Error> {
    let node = obs
        .leader_client()
        .ok_or(Error::NoEndpoint("change the membership"))?;
    // The key every member accepts: the first of the members' admin key file (the one they
    // call each other with), else the key Secret's.
    let key = obs.observed.keys.admin_key().ok_or_else(|| {
        let r = resources::key_ref(&cluster.name_any(), &cluster.spec, KeyKind::Admin);
        Error::MissingKey(r.name, r.key)
    })?;
    Ok(node.api_key(key.0.clone()).build()?)
}

/// The member keys Secret as a step writes it: one key per line, and each file's phase (and
/// when its old key began retiring) in annotations. A new marker key is made here.
fn member_keys_secret(cluster: &ConcordanceCluster, next: &keys::NextKeys) -> Secret {
    let mut annotations = std::collections::BTreeMap::new();
    let mut text = |kind: KeyKind, file: &keys::KeyFile, marker: bool| {
        let word = kind.word();
        annotations.insert(
            format!("{}{word}", resources::KEYS_PHASE_ANNOTATION),
            file.phase.name().to_string(),
        );
        if file.phase == keys::Phase::Retiring {
            let since = file
                .retiring_since
                .clone()
                .unwrap_or_else(|| now().0.to_string());
            annotations.insert(
                format!("{}{word}", resources::KEYS_RETIRING_ANNOTATION),
                since,
            );
        }
        let mut lines: Vec<String> = file.keys.iter().map(|k| k.0.clone()).collect();
        if marker {
            lines.push(random_key());
        }
        lines.join("\n") + "\n"
    };
    let admin = text(KeyKind::Admin, &next.admin, next.admin_marker);
    let agent = text(KeyKind::Agent, &next.agent, next.agent_marker);
    resources::member_keys_secret(cluster, admin, agent, annotations)
}

/// 32 random bytes, hex: a generated API key.
fn random_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
