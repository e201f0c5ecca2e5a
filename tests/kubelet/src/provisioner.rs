//! Provisions a PersistentVolume (a host folder) for each claim of our storage classes and
//! deletes released ones whose reclaim policy is Delete. kube-controller-manager's
//! PersistentVolume controller does the binding.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::RunArgs;

const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

pub async fn run(client: Client, args: Arc<RunArgs>) -> Result<()> {
    tokio::spawn(reclaim(client.clone(), args.clone()));
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let mut stream = watcher(claims, watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let claim = match event {
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("claim watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = provision(&client, &args, &claim).await {
            tracing::warn!(claim = %claim.name_any(), "provisioning: {e:#}");
        }
    }
    Ok(())
}

async fn provision(client: &Client, args: &RunArgs, claim: &PersistentVolumeClaim) -> Result<()> {
    let Some(spec) = &claim.spec else {
        return Ok(());
    };
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        || claim.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    let Some(class_name) = &spec.storage_class_name else {
        return Ok(());
    };
    let classes: Api<StorageClass> = Api::all(client.clone());
    let Some(class) = classes.get_opt(class_name).await? else {
        return Ok(());
    };
    if class.provisioner != args.provisioner_name {
        return Ok(());
    }
    let uid = claim.uid().unwrap_or_default();
    let name = format!("pvc-{uid}");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    if pvs.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let path = args.kubelet_dir().join("volumes").join(&name);
    std::fs::create_dir_all(&path)?;
    let capacity = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .map(|q| BTreeMap::from([("storage".to_string(), q)]));
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                args.provisioner_name.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity,
            access_modes: spec.access_modes.clone(),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: Some(class_name.clone()),
            volume_mode: spec.volume_mode.clone(),
            host_path: Some(HostPathVolumeSource {
                path: path.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            // Pre-bound: the PersistentVolume controller completes the binding.
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.namespace(),
                name: Some(claim.name_any()),
                uid: Some(uid),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    pvs.create(&PostParams::default(), &pv).await?;
    tracing::info!(claim = %claim.name_any(), "provisioned {name} at {}", path.display());
    Ok(())
}

/// Deletes released volumes (their claim is gone) provisioned by us, folder included.
async fn reclaim(client: Client, args: Arc<RunArgs>) {
    let pvs: Api<PersistentVolume> = Api::all(client);
    let mut stream = watcher(pvs.clone(), watcher::Config::default()).boxed();
    while let Some(event) = stream.next().await {
        let pv = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("volume watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let ours = pv.annotations().get(PROVISIONED_BY) == Some(&args.provisioner_name);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let delete = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            == Some("Delete");
        if !(ours && released && delete) {
            continue;
        }
        let name = pv.name_any();
        let path = args.kubelet_dir().join("volumes").join(&name);
        let _ = std::fs::remove_dir_all(&path);
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!("deleted released volume {name}"),
            Err(e) => tracing::warn!("deleting volume {name}: {e}"),
        }
    }
}
