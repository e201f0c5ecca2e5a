//! Pod volumes as host folders: emptyDir, hostPath, PersistentVolumeClaim (the provisioned
//! folder), secret, configMap, downwardAPI and projected (which carries the service-account
//! token, CA and namespace the API server injects into every pod).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, ObjectFieldSelector, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, ServiceAccount,
};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// Resolves a downward-API field path of `pod`.
pub fn field_ref(
    pod: &Pod,
    sel: &ObjectFieldSelector,
    pod_ip: &str,
    host_ip: &str,
) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = sel.field_path.as_str();
    let from_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(host_ip.to_string()),
        "metadata.labels" => Some(render_map(&meta.labels)),
        "metadata.annotations" => Some(render_map(&meta.annotations)),
        _ => from_map(&meta.labels, "metadata.labels['")
            .or_else(|| from_map(&meta.annotations, "metadata.annotations['")),
    };
    value.ok_or_else(|| anyhow!("unsupported field path {path}"))
}

fn render_map(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// Writes `data` into `dir` as files, honouring `items` (key -> relative path) when given.
fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    optional: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let pairs: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, rel) in pairs {
        let Some(bytes) = data.get(&key) else {
            if optional {
                continue;
            }
            bail!("key {key} not found");
        };
        let path = dir.join(&rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::write(path, bytes)?;
    }
    Ok(())
}

async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.map(|s| {
        let mut out: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            out.insert(k, v.into_bytes());
        }
        out
    }))
}

async fn configmap_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.map(|c| {
        let mut out: BTreeMap<String, Vec<u8>> = c
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, ByteString(v)) in c.binary_data.unwrap_or_default() {
            out.insert(k, v);
        }
        out
    }))
}

pub async fn secret_key(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    Ok(secret_data(client, ns, name)
        .await?
        .and_then(|d| d.get(key).map(|v| String::from_utf8_lossy(v).into_owned())))
}

pub async fn configmap_key(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    Ok(configmap_data(client, ns, name)
        .await?
        .and_then(|d| d.get(key).map(|v| String::from_utf8_lossy(v).into_owned())))
}

pub async fn env_from_secret(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    Ok(secret_data(client, ns, name).await?.map(|d| {
        d.into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }))
}

pub async fn env_from_configmap(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    Ok(configmap_data(client, ns, name).await?.map(|d| {
        d.into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }))
}

/// A bound service-account token for the pod, as the real kubelet requests it.
async fn sa_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    seconds: Option<i64>,
) -> Result<String> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(seconds.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..Default::default()
    };
    let resp: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &req)
        .await
        .context("requesting a service-account token")?;
    Ok(resp.status.map(|s| s.token).unwrap_or_default())
}

/// Prepares every volume of `pod` under `pod_dir/volumes`; returns name -> host folder.
/// Errors (a missing Secret, an unbound claim) are retried by the caller.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    pod_ip: &str,
    host_ip: &str,
) -> Result<HashMap<String, PathBuf>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = HashMap::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(out);
    };
    for vol in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&vol.name);
        let ctx = || format!("volume {}", vol.name);
        if vol.empty_dir.is_some() {
            std::fs::create_dir_all(&dir)?;
            out.insert(vol.name.clone(), dir);
        } else if let Some(hp) = &vol.host_path {
            let path = PathBuf::from(&hp.path);
            if !path.exists() {
                match hp.type_.as_deref() {
                    Some("DirectoryOrCreate") | None | Some("") => std::fs::create_dir_all(&path)?,
                    _ => bail!("hostPath {} does not exist", hp.path),
                }
            }
            out.insert(vol.name.clone(), path);
        } else if let Some(pvc) = &vol.persistent_volume_claim {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let claim = claims.get(&pvc.claim_name).await.with_context(ctx)?;
            let pv_name = claim
                .spec
                .and_then(|s| s.volume_name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| anyhow!("claim {} is not bound yet", pvc.claim_name))?;
            let pvs: Api<PersistentVolume> = Api::all(client.clone());
            let pv = pvs.get(&pv_name).await.with_context(ctx)?;
            let path = pv
                .spec
                .and_then(|s| s.host_path.map(|h| h.path).or(s.local.map(|l| l.path)))
                .ok_or_else(|| anyhow!("volume {pv_name} has no host path"))?;
            std::fs::create_dir_all(&path)?;
            out.insert(vol.name.clone(), PathBuf::from(path));
        } else if let Some(s) = &vol.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            match secret_data(client, &ns, &name).await? {
                Some(data) => write_files(&dir, &data, &s.items, optional).with_context(ctx)?,
                None if optional => std::fs::create_dir_all(&dir)?,
                None => bail!("secret {name} not found"),
            }
            out.insert(vol.name.clone(), dir);
        } else if let Some(c) = &vol.config_map {
            let optional = c.optional.unwrap_or(false);
            match configmap_data(client, &ns, &c.name).await? {
                Some(data) => write_files(&dir, &data, &c.items, optional).with_context(ctx)?,
                None if optional => std::fs::create_dir_all(&dir)?,
                None => bail!("configmap {} not found", c.name),
            }
            out.insert(vol.name.clone(), dir);
        } else if let Some(d) = &vol.downward_api {
            std::fs::create_dir_all(&dir)?;
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    std::fs::write(dir.join(&item.path), field_ref(pod, f, pod_ip, host_ip)?)?;
                }
            }
            out.insert(vol.name.clone(), dir);
        } else if let Some(p) = &vol.projected {
            std::fs::create_dir_all(&dir)?;
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let token =
                        sa_token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                    std::fs::write(dir.join(&t.path), token)?;
                }
                if let Some(c) = &src.config_map {
                    let optional = c.optional.unwrap_or(false);
                    match configmap_data(client, &ns, &c.name).await? {
                        Some(data) => write_files(&dir, &data, &c.items, optional)?,
                        None if optional => {}
                        None => bail!("configmap {} not found", c.name),
                    }
                }
                if let Some(s) = &src.secret {
                    let optional = s.optional.unwrap_or(false);
                    match secret_data(client, &ns, &s.name).await? {
                        Some(data) => write_files(&dir, &data, &s.items, optional)?,
                        None if optional => {}
                        None => bail!("secret {} not found", s.name),
                    }
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            std::fs::write(
                                dir.join(&item.path),
                                field_ref(pod, f, pod_ip, host_ip)?,
                            )?;
                        }
                    }
                }
            }
            out.insert(vol.name.clone(), dir);
        } else {
            bail!("volume {}: unsupported volume type", vol.name);
        }
    }
    Ok(out)
}
