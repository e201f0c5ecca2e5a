//! Gathering what `decide` looks at: the cluster's Kubernetes objects and what its nodes say.
//!
//! Nodes are asked directly at their pod addresses (reachable from inside the cluster and from
//! the host of a test control plane alike), and the cluster view is the leader's: only the
//! leader knows each member's replication lag.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use concordance_client::{ClientBuilder, ClusterStatus, ErrorCode, TerminationMessage};
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::crd::ConcordanceCluster;
use crate::decide::{
    CertificateState, DataState, MissingSecret, Observed, ObservedMember, Owned, PodPhase,
    PodState, Presence, TlsEvidence, TlsState, VolumeState,
};
use crate::error::Error;
use crate::keys::{Acceptance, Held, Key, KeyFile, KeysState, Phase};
use crate::pki;
use crate::placement;
use crate::resources::{
    self, API_PORT, CLUSTER_LABEL, FIELD_MANAGER, KeyKind, POD_HASH_ANNOTATION, StartMode,
};

/// How long a member's node has to answer `cluster/status`.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything observed, plus the raw objects the controller acts on.
pub struct Observation {
    pub observed: Observed,
    pub pods: BTreeMap<String, Pod>,
    /// What each answering node says about itself, by member name.
    pub nodes: BTreeMap<String, ClusterStatus>,
    /// How to reach each member with an address: see [`member_client`].
    pub clients: BTreeMap<String, ClientBuilder>,
    /// The cluster's CA, when it runs TLS and the CA Secret holds one.
    pub ca: Option<pki::Pair>,
}

impl Observation {
    /// A client of the leader, else of any answering node.
    pub fn leader_client(&self) -> Option<ClientBuilder> {
        let leader = self
            .observed
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone());
        leader
            .and_then(|l| self.clients.get(&l))
            .or_else(|| self.nodes.keys().find_map(|m| self.clients.get(m)))
            .cloned()
    }
}

/// A client of one member's node at its pod address (reachable from inside the cluster and
/// from the host of a test control plane alike, where the members' names do not resolve).
/// Over TLS, the member's certificate is checked against the cluster CA for its name. Every
/// failure is returned as it came: no retry, no other member.
fn member_client(
    cluster: &ConcordanceCluster,
    member: &str,
    pod: &Pod,
    ca: Option<&pki::Pair>,
) -> Option<ClientBuilder> {
    let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    Some(match ca {
        None => concordance_client::Client::single_endpoint(format!("http://{ip}:{API_PORT}")),
        Some(ca) => {
            let host = resources::member_host(cluster, member);
            concordance_client::Client::single_endpoint(format!("https://{host}:{API_PORT}"))
                .ca_pem(ca.certificate.as_bytes().to_vec())
                .resolve(host, SocketAddr::new(ip, API_PORT))
        }
    })
}

/// Whether an object of the cluster's naming exists and is this cluster's.
fn presence(cluster_uid: Option<&str>, meta: Option<&ObjectMeta>) -> Presence {
    let Some(meta) = meta else {
        return Presence::Missing;
    };
    let ours = meta
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == cluster_uid);
    if !ours {
        return Presence::Foreign;
    }
    let applied = meta.managed_fields.iter().flatten().any(|f| {
        f.manager.as_deref() == Some(FIELD_MANAGER) && f.operation.as_deref() == Some("Apply")
    });
    Presence::Ours { applied }
}

async fn meta_of<K>(api: &Api<K>, name: &str) -> Result<Option<ObjectMeta>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.map(|o| o.meta().clone()))
}

async fn node_status(client: ClientBuilder) -> Option<ClusterStatus> {
    let client = client.build().ok()?;
    tokio::time::timeout(NODE_STATUS_TIMEOUT, client.status())
        .await
        .ok()?
        .ok()
}

/// A Secret's value under `key`, as text.
fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key)).cloned())
}

/// The key a key Secret holds under `key` (its spaces around trimmed), if any.
fn key_of(s: &Secret, key: &str) -> Option<Key> {
    secret_value(s, key)
        .map(|v| Key(v.trim().to_string()))
        .filter(|k| !k.0.is_empty())
}

/// The key files the member keys Secret holds, with their phases. A file whose keys do not fit
/// its phase (an edit by hand) counts as in force.
fn held_keys(s: &Secret) -> Option<Held> {
    let annotations = s.annotations();
    let file = |kind: KeyKind, data_key: &str| -> Option<KeyFile> {
        let text = secret_value(s, data_key)?;
        let keys: Vec<Key> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| Key(l.to_string()))
            .collect();
        if keys.is_empty() {
            return None;
        }
        let word = kind.word();
        let phase = annotations
            .get(&format!("{}{word}", resources::KEYS_PHASE_ANNOTATION))
            .and_then(|p| Phase::parse(p))
            .unwrap_or_default();
        let fits = KeyFile::fits(phase) == keys.len();
        let phase = if fits { phase } else { Phase::InForce };
        let retiring_since = annotations
            .get(&format!("{}{word}", resources::KEYS_RETIRING_ANNOTATION))
            .cloned()
            .filter(|_| phase == Phase::Retiring);
        let retiring_seconds = retiring_since
            .as_deref()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(|t| seconds_since(&Time(t)));
        Some(KeyFile {
            keys,
            phase,
            retiring_since,
            retiring_seconds,
        })
    };
    Some(Held {
        admin: file(KeyKind::Admin, resources::ADMIN_KEYS_KEY)?,
        agent: file(KeyKind::Agent, resources::AGENT_KEYS_KEY)?,
    })
}

/// Whether every member (every pod and every volume) accepts `key`: asked with it, a member
/// answers anything but 401. `None` when there is no key to ask about.
async fn accepted_by_all(
    key: Option<&Key>,
    pods: &BTreeMap<String, Pod>,
    claims: &[PersistentVolumeClaim],
    clients: &BTreeMap<String, ClientBuilder>,
) -> Option<Acceptance> {
    let key = key?;
    if let Some(claim) = claims.iter().find(|c| !pods.contains_key(&c.name_any())) {
        return Some(Acceptance::Not(format!("{} has no pod", claim.name_any())));
    }
    for (member, pod) in pods {
        if !resources::has_key_files(pod) {
            return Some(Acceptance::Not(format!(
                "{member} runs without key files, as its pod was made by an earlier operator:                  it takes them when restarted (delete its pod, one member at a time)"
            )));
        }
        let Some(client) = clients.get(member).and_then(|c| {
            c.clone()
                .api_key(key.0.clone())
                .request_timeout(NODE_STATUS_TIMEOUT)
                .build()
                .ok()
        }) else {
            return Some(Acceptance::Not(format!("{member} has no address yet")));
        };
        match client.alarms().await {
            Ok(_) => {}
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 401) => {
                return Some(Acceptance::Not(format!("{member} does not take it yet")));
            }
            Err(e) if e.status().is_some() => {}
            Err(_) => return Some(Acceptance::Not(format!("{member} did not answer"))),
        }
    }
    Some(Acceptance::All)
}

fn seconds_since(t: &Time) -> i64 {
    k8s_openapi::jiff::Timestamp::now()
        .duration_since(t.0)
        .as_secs()
}

pub async fn observe(cluster: &ConcordanceCluster, client: &Client) -> Result<Observation, Error> {
    let ns = cluster.namespace().ok_or(Error::NoNamespace)?;
    let name = cluster.name_any();
    let uid = cluster.uid();
    let selector = ListParams::default().labels(&format!("{CLUSTER_LABEL}={name}"));
    let pod_list = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&selector)
        .await?;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .list(&selector)
        .await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns);

    let mut objects = BTreeMap::new();
    let mut missing_secrets = Vec::new();
    // Each key Secret, read once: whether it exists (and is ours, when generated), and the
    // key it holds, which the members' key files follow.
    let mut given_keys = BTreeMap::new();
    for key in [KeyKind::Admin, KeyKind::Agent] {
        let r = resources::key_ref(&name, &cluster.spec, key);
        let secret = secrets.get_opt(&r.name).await?;
        match key.given(&cluster.spec) {
            Some(given) if secret.is_none() => missing_secrets.push(MissingSecret {
                name: given.name.clone(),
                without_key: None,
                field: key.spec_field(),
            }),
            Some(_) => {}
            None => {
                let meta = secret.as_ref().map(|s| &s.metadata);
                objects.insert(Owned::KeySecret(key), presence(uid.as_deref(), meta));
            }
        }
        given_keys.insert(key, secret.as_ref().and_then(|s| key_of(s, &r.key)));
    }
    if let Some(given) = &cluster.spec.credentials_secret {
        let found = secrets.get_opt(&given.name).await?;
        match found {
            Some(s) if secret_value(&s, &given.key).is_some() => {}
            found => missing_secrets.push(MissingSecret {
                name: given.name.clone(),
                without_key: found.is_some().then(|| given.key.clone()),
                field: "spec.credentialsSecret",
            }),
        }
    }
    for owned in [Owned::PeerService, Owned::ClientService] {
        let meta = meta_of(&services, &owned.object_name(&name)).await?;
        objects.insert(owned, presence(uid.as_deref(), meta.as_ref()));
    }
    let owned = Owned::DisruptionBudget;
    let meta = meta_of(&pdbs, &owned.object_name(&name)).await?;
    objects.insert(owned, presence(uid.as_deref(), meta.as_ref()));

    let status = cluster.status.clone().unwrap_or_default();
    let ca_secret = secrets.get_opt(&Owned::CaSecret.object_name(&name)).await?;
    let ca_presence = presence(uid.as_deref(), ca_secret.as_ref().map(|s| &s.metadata));
    let seen = TlsEvidence {
        has_members: !pod_list.items.is_empty() || !claims.items.is_empty(),
        ca_exists: matches!(ca_presence, Presence::Ours { .. }),
        pods_with_tls: pod_list.items.iter().any(resources::started_with_tls),
    };
    let mut tls = TlsState {
        enabled: crate::decide::tls_in_effect(&cluster.spec, &status, seen),
        certificate: None,
    };
    let mut ca = None;
    if tls.enabled {
        objects.insert(Owned::CaSecret, ca_presence);
        if ca_presence != Presence::Foreign {
            ca = ca_secret.as_ref().and_then(ca_pair);
        }
        let certificate = secrets
            .get_opt(&Owned::CertificateSecret.object_name(&name))
            .await?;
        objects.insert(
            Owned::CertificateSecret,
            presence(uid.as_deref(), certificate.as_ref().map(|s| &s.metadata)),
        );
        let names = resources::certificate_names(cluster);
        tls.certificate = certificate
            .as_ref()
            .map(|s| certificate_state(s, ca.as_ref().map(|ca| ca.certificate.as_str()), &names));
        let maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let meta = meta_of(&maps, &Owned::CaConfigMap.object_name(&name)).await?;
        objects.insert(Owned::CaConfigMap, presence(uid.as_deref(), meta.as_ref()));
    }

    // Pods being deleted are gone as far as decisions go; their replacement waits for the
    // name to be free (creating it fails with a conflict until then).
    let terminating: Vec<String> = pod_list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .map(|p| p.name_any())
        .collect();
    let pods: BTreeMap<String, Pod> = pod_list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect();

    // A cluster running TLS is not asked before its CA exists (it has no pods then).
    let clients: BTreeMap<String, ClientBuilder> = if tls.enabled && ca.is_none() {
        BTreeMap::new()
    } else {
        pods.iter()
            .filter_map(|(member, p)| {
                Some((
                    member.clone(),
                    member_client(cluster, member, p, ca.as_ref())?,
                ))
            })
            .collect()
    };
    let asks = clients.iter().map(|(member, client)| {
        let (member, client) = (member.clone(), client.clone());
        async move { (member, node_status(client).await) }
    });
    let nodes: BTreeMap<String, ClusterStatus> = futures::future::join_all(asks)
        .await
        .into_iter()
        .filter_map(|(m, s)| s.map(|s| (m, s)))
        .collect();

    let member_keys = secrets
        .get_opt(&Owned::MemberKeys.object_name(&name))
        .await?;
    objects.insert(
        Owned::MemberKeys,
        presence(uid.as_deref(), member_keys.as_ref().map(|s| &s.metadata)),
    );
    let mut keys = KeysState {
        held: member_keys.as_ref().and_then(held_keys),
        given_admin: given_keys.remove(&KeyKind::Admin).flatten(),
        given_agent: given_keys.remove(&KeyKind::Agent).flatten(),
        admin_accepted: None,
        agent_accepted: None,
    };
    if let Some(held) = keys.held.clone() {
        let (admin, agent) = futures::join!(
            accepted_by_all(held.admin.awaited(), &pods, &claims.items, &clients),
            accepted_by_all(held.agent.awaited(), &pods, &claims.items, &clients),
        );
        (keys.admin_accepted, keys.agent_accepted) = (admin, agent);
    }

    let recorded = cluster.status.as_ref().and_then(|s| s.cluster_id.clone());
    // Pods being deleted likewise keep their names taken.
    let mut members: Vec<ObservedMember> = terminating
        .into_iter()
        .map(|name| ObservedMember {
            name,
            pod: None,
            volume: None,
            data: DataState::Unknown,
        })
        .collect();
    for (member, pod) in &pods {
        members.retain(|m| &m.name != member);
        members.push(ObservedMember {
            name: member.clone(),
            pod: Some(pod_state(pod, nodes.get(member))),
            volume: None,
            data: data_state(pod, nodes.get(member), recorded.as_deref()),
        });
    }
    let mut placement = Placement::new(client);
    for claim in &claims.items {
        let claim_name = claim.name_any();
        if claim.metadata.deletion_timestamp.is_some() {
            // Gone for decisions, but its name stays taken until it is: a new member never
            // reuses a name whose volume still exists.
            if !members.iter().any(|m| m.name == claim_name) {
                members.push(ObservedMember {
                    name: claim_name,
                    pod: None,
                    volume: None,
                    data: DataState::Unknown,
                });
            }
            continue;
        }
        // Where a volume may be used matters only for a member that is not serving.
        let serving = members
            .iter()
            .find(|m| m.name == claim_name)
            .and_then(|m| m.pod.as_ref())
            .is_some_and(|p| p.ready);
        let stranded = !serving && placement.stranded(claim).await;
        let volume = Some(volume_state(claim, stranded));
        match members.iter_mut().find(|m| m.name == claim_name) {
            Some(m) => m.volume = volume,
            None => members.push(ObservedMember {
                name: claim_name,
                pod: None,
                volume,
                data: DataState::Unknown,
            }),
        }
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));

    let class = cluster.spec.storage.storage_class_name.clone().or_else(|| {
        claims
            .items
            .iter()
            .find_map(|c| c.spec.as_ref()?.storage_class_name.clone())
    });
    let volume_expansion = match class {
        Some(class) => expandable(client, &class).await,
        None => None,
    };

    let cluster_view = leader_view(&nodes);
    Ok(Observation {
        observed: Observed {
            keys,
            name,
            generation: cluster.metadata.generation,
            spec: cluster.spec.clone(),
            status,
            objects,
            missing_secrets,
            volume_expansion,
            members,
            cluster: cluster_view,
            paused: cluster
                .annotations()
                .get(crate::decide::PAUSED_ANNOTATION)
                .is_some_and(|v| v == "true"),
            tls,
        },
        pods,
        nodes,
        clients,
        ca,
    })
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The CA certificate and key of the CA Secret, when it holds both.
fn ca_pair(secret: &Secret) -> Option<pki::Pair> {
    Some(pki::Pair {
        certificate: secret_text(secret, resources::CA_CERT_KEY)?,
        key: secret_text(secret, resources::CA_KEY_KEY)?,
    })
}

/// The members' certificate: when it expires, and whether it was issued for this CA (`ca`,
/// `None` when the CA Secret is missing or unreadable) and these names.
fn certificate_state(secret: &Secret, ca: Option<&str>, names: &[String]) -> CertificateState {
    let expires_at =
        secret_text(secret, resources::TLS_CERT_KEY).and_then(|pem| pki::expiry(pem.as_bytes()));
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let issued_for = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(resources::ISSUED_FOR_ANNOTATION));
    CertificateState {
        expires_in_seconds: expires_at.map(|at| at - now),
        expires: expires_at
            .and_then(|at| k8s_openapi::jiff::Timestamp::from_second(at).ok())
            .map(|t| t.to_string()),
        current: ca.is_some_and(|ca| issued_for == Some(&resources::issued_for(ca, names))),
    }
}

/// `allowVolumeExpansion` of a StorageClass; `None` when it cannot be read.
async fn expandable(client: &Client, class: &str) -> Option<bool> {
    match Api::<StorageClass>::all(client.clone())
        .get_opt(class)
        .await
    {
        Ok(Some(c)) => Some(c.allow_volume_expansion.unwrap_or(false)),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(%class, error = %e, "cannot read the StorageClass");
            None
        }
    }
}

/// Reads volumes and nodes (cluster-wide objects) only when a member is not running, and the
/// nodes once per pass.
struct Placement<'a> {
    client: &'a Client,
    nodes: Option<Vec<Node>>,
}

impl<'a> Placement<'a> {
    fn new(client: &'a Client) -> Self {
        Placement {
            client,
            nodes: None,
        }
    }

    /// The claim's volume can only be used on nodes that are cordoned or gone.
    /// Unknown (not bound, or not readable) counts as not stranded: nothing is replaced on a
    /// guess.
    async fn stranded(&mut self, claim: &PersistentVolumeClaim) -> bool {
        let Some(volume_name) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
            return false;
        };
        let volume = match Api::<PersistentVolume>::all(self.client.clone())
            .get_opt(&volume_name)
            .await
        {
            Ok(Some(v)) => v,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(volume = %volume_name, error = %e, "cannot read the volume");
                return false;
            }
        };
        let pinned = volume
            .spec
            .as_ref()
            .and_then(|s| s.node_affinity.as_ref())
            .is_some();
        if !pinned {
            return false;
        }
        if self.nodes.is_none() {
            match Api::<Node>::all(self.client.clone())
                .list(&ListParams::default())
                .await
            {
                Ok(list) => self.nodes = Some(list.items),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the nodes");
                    return false;
                }
            }
        }
        placement::stranded(&volume, self.nodes.as_deref().unwrap_or_default())
    }
}

fn volume_state(claim: &PersistentVolumeClaim, stranded: bool) -> VolumeState {
    let status = claim.status.as_ref();
    let resize_pending = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "FileSystemResizePending" && c.status == "True")
        })
        .map(|c| c.last_transition_time.as_ref().map_or(0, seconds_since));
    VolumeState {
        bound: status.and_then(|s| s.phase.as_deref()) == Some("Bound"),
        age_seconds: claim
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, seconds_since),
        requested: claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone()),
        capacity: status
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone()),
        resize_pending_seconds: resize_pending,
        stranded,
    }
}

/// The leader's own status when it answered; else the most recent view any node has (highest
/// term, then membership), which still tells the membership when quorum is lost.
fn leader_view(nodes: &BTreeMap<String, ClusterStatus>) -> Option<ClusterStatus> {
    let leaders = nodes.values().filter(|s| s.role == "leader");
    if let Some(l) = leaders.max_by_key(|s| s.term) {
        return Some(l.clone());
    }
    nodes
        .values()
        .filter(|s| s.membership_version.is_some())
        .max_by_key(|s| (s.term, s.membership_version))
        .cloned()
}

fn data_state(pod: &Pod, node: Option<&ClusterStatus>, recorded: Option<&str>) -> DataState {
    if let Some(s) = node {
        return match (&s.cluster_id, recorded) {
            (Some(theirs), Some(ours)) if theirs != ours => DataState::Foreign,
            _ if s.fenced.is_some() => DataState::Fenced,
            // A node that belongs to no membership holds no member's data.
            _ if s.membership_version.is_none() || s.members.is_empty() => DataState::Empty,
            _ => DataState::Ours,
        };
    }
    // A node that stopped because its join was refused says why in its termination message.
    let refusal = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.message.as_deref())
        .and_then(|m| serde_json::from_str::<TerminationMessage>(m).ok());
    match refusal.map(|r| r.code) {
        // Its name is still a member's, with another identity: its data dir was lost.
        Some(ErrorCode::NameInUse) => DataState::Empty,
        Some(ErrorCode::ClusterMismatch) => DataState::Foreign,
        // It stopped at start: its state differs from the other replicas'.
        Some(ErrorCode::MemberFenced) => DataState::Fenced,
        _ => DataState::Unknown,
    }
}

fn pod_state(pod: &Pod, node: Option<&ClusterStatus>) -> PodState {
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
    let age_seconds = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, seconds_since);
    let unready_seconds = match &ready {
        Some((false, Some(since))) => seconds_since(since),
        Some((true, _)) => 0,
        // Never ready yet: count from the pod's creation.
        _ => age_seconds,
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
        pod_hash: pod.annotations().get(POD_HASH_ANNOTATION).cloned(),
        age_seconds,
        unready_seconds,
        version: node.map(|s| s.version.clone()),
        force_new_cluster: matches!(
            resources::start_mode_of(pod),
            Some(StartMode::ForceNewCluster { .. })
        ),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    use super::*;

    fn stopped_with(message: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    last_state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 2,
                            message: Some(message.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_refused_join_is_read_from_the_termination_message_code() {
        let message = |code: ErrorCode| {
            serde_json::to_string(&TerminationMessage {
                code,
                message: "the leader said no".into(),
            })
            .unwrap()
        };
        let cases = [
            (message(ErrorCode::NameInUse), DataState::Empty),
            (message(ErrorCode::ClusterMismatch), DataState::Foreign),
            (message(ErrorCode::MemberFenced), DataState::Fenced),
            (message(ErrorCode::Unauthorized), DataState::Unknown),
            // Log text is for people: a code in it decides nothing.
            (
                "ERROR cannot join: name_in_use".to_string(),
                DataState::Unknown,
            ),
            (String::new(), DataState::Unknown),
        ];
        for (text, expected) in cases {
            assert_eq!(
                data_state(&stopped_with(&text), None, Some("c1")),
                expected,
                "{text}"
            );
        }
    }
}
