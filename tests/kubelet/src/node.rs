//! One Node: registration, status and lease heartbeats, and the pods bound to it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo, Pod,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::RunArgs;
use crate::pod::PodWorker;
use crate::runtime::Runtime;

/// A fault set from outside through `<state>/kubelet/faults/<node>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeFault {
    None,
    /// The kubelet reports Ready=False (it keeps renewing its lease).
    NotReady,
    /// The kubelet is cut off: no heartbeats, no status, no restarts, no deletions.
    Stopped,
}

pub struct NodeAgent {
    pub name: String,
    pub client: Client,
    pub args: Arc<RunArgs>,
    pub runtime: Arc<Runtime>,
    pub pod_cidr: watch::Sender<Option<String>>,
    pub fault: watch::Sender<NodeFault>,
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl NodeAgent {
    pub fn new(name: String, client: Client, args: Arc<RunArgs>, runtime: Arc<Runtime>) -> Self {
        NodeAgent {
            name,
            client,
            args,
            runtime,
            pod_cidr: watch::channel(None).0,
            fault: watch::channel(NodeFault::None).0,
        }
    }

    pub async fn run(self) -> Result<()> {
        let me = Arc::new(self);
        loop {
            match me.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(node = %me.name, "registering: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tokio::spawn(me.clone().heartbeat());
        me.run_pods().await
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let index = self
            .args
            .nodes
            .iter()
            .position(|n| n == &self.name)
            .unwrap_or(0);
        BTreeMap::from([
            ("kubernetes.io/hostname".into(), self.name.clone()),
            ("kubernetes.io/os".into(), "linux".into()),
            ("kubernetes.io/arch".into(), "amd64".into()),
            // One zone per node, so zone spreading has something to spread over.
            (
                "topology.kubernetes.io/zone".into(),
                format!("zone-{}", index + 1),
            ),
        ])
    }

    async fn register(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        if nodes.get_opt(&self.name).await?.is_none() {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    labels: Some(self.labels()),
                    ..Default::default()
                },
                ..Default::default()
            };
            nodes.create(&PostParams::default(), &node).await?;
            tracing::info!(node = %self.name, "registered");
        }
        self.patch_status(NodeFault::None).await
    }

    fn condition(type_: &str, status: bool, reason: &str, message: &str) -> NodeCondition {
        NodeCondition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now()),
            last_transition_time: Some(now()),
        }
    }

    async fn patch_status(&self, fault: NodeFault) -> Result<()> {
        let ready = fault == NodeFault::None;
        let resources = BTreeMap::from([
            ("cpu".to_string(), Quantity("8".into())),
            ("memory".to_string(), Quantity("16Gi".into())),
            ("pods".to_string(), Quantity("110".into())),
            ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
        ]);
        let nodes: Api<Node> = Api::all(self.client.clone());
        // Keep lastTransitionTime of the Ready condition unless its status changes.
        let mut ready_cond = if ready {
            Self::condition(
                "Ready",
                true,
                "KubeletReady",
                "test kubelet is posting ready status",
            )
        } else {
            Self::condition(
                "Ready",
                false,
                "KubeletNotReady",
                "fault injected: node not ready",
            )
        };
        if let Some(old) = nodes
            .get_opt(&self.name)
            .await?
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
            && old.status == ready_cond.status
        {
            ready_cond.last_transition_time = old.last_transition_time;
        }
        let status = NodeStatus {
            capacity: Some(resources.clone()),
            allocatable: Some(resources),
            conditions: Some(vec![
                Self::condition("MemoryPressure", false, "KubeletHasSufficientMemory", "ok"),
                Self::condition("DiskPressure", false, "KubeletHasNoDiskPressure", "ok"),
                Self::condition("PIDPressure", false, "KubeletHasSufficientPID", "ok"),
                ready_cond,
            ]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: self.args.gateway.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: self.name.clone(),
                },
            ]),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: 10250 }),
            }),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: String::new(),
                container_runtime_version: "process://0.1.0".into(),
                kernel_version: String::new(),
                kube_proxy_version: String::new(),
                kubelet_version: self.args.kubelet_version.clone(),
                machine_id: String::new(),
                operating_system: "linux".into(),
                os_image: "concordance test kubelet".into(),
                system_uuid: String::new(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let patch = serde_json::json!({ "status": status });
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await?;
        Ok(())
    }

    async fn renew_lease(&self) -> Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let spec = LeaseSpec {
            holder_identity: Some(self.name.clone()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        };
        match leases.get_opt(&self.name).await? {
            Some(mut lease) => {
                lease.spec = Some(spec);
                leases
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                leases.create(&PostParams::default(), &lease).await?;
            }
        }
        Ok(())
    }

    fn read_fault(&self) -> NodeFault {
        let path = self.args.kubelet_dir().join("faults").join(&self.name);
        match std::fs::read_to_string(path).unwrap_or_default().trim() {
            "not-ready" => NodeFault::NotReady,
            "stopped" => NodeFault::Stopped,
            _ => NodeFault::None,
        }
    }

    /// Lease every 5s, status every 10s (or at once on a fault change); pod CIDR tracking.
    async fn heartbeat(self: Arc<Self>) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut last_status = tokio::time::Instant::now() - Duration::from_secs(60);
        let mut last_fault = NodeFault::None;
        loop {
            let fault = self.read_fault();
            if fault != last_fault {
                tracing::info!(node = %self.name, "fault: {fault:?}");
                self.fault.send_replace(fault);
            }
            if fault != NodeFault::Stopped {
                if self.pod_cidr.borrow().is_none()
                    && let Ok(Some(cidr)) = nodes
                        .get_opt(&self.name)
                        .await
                        .map(|n| n.and_then(|n| n.spec).and_then(|s| s.pod_cidr))
                {
                    tracing::info!(node = %self.name, "pod CIDR {cidr}");
                    self.pod_cidr.send_replace(Some(cidr));
                }
                if let Err(e) = self.renew_lease().await {
                    tracing::warn!(node = %self.name, "lease: {e:#}");
                }
                if fault != last_fault || last_status.elapsed() >= Duration::from_secs(10) {
                    match self.patch_status(fault).await {
                        Ok(()) => last_status = tokio::time::Instant::now(),
                        Err(e) => tracing::warn!(node = %self.name, "status: {e:#}"),
                    }
                }
            }
            last_fault = fault;
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    }

    /// Watches the pods bound to this node and hands each to its worker.
    async fn run_pods(self: Arc<Self>) -> Result<()> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.name));
        let mut stream = watcher(pods, config).boxed();
        let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
        let mut seen_in_init: Vec<String> = Vec::new();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(node = %self.name, "pod watch: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match event {
                watcher::Event::Init => seen_in_init.clear(),
                watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                    let uid = pod.uid().unwrap_or_default();
                    seen_in_init.push(uid.clone());
                    workers.retain(|_, tx| !tx.is_closed());
                    match workers.get(&uid) {
                        Some(tx) => {
                            tx.send_replace(Some(pod));
                        }
                        None => {
                            let (tx, rx) = watch::channel(Some(pod));
                            tokio::spawn(PodWorker::new(self.clone(), rx).run());
                            workers.insert(uid, tx);
                        }
                    }
                }
                // The sender stays in the map until its worker ends (the receiver closes), so
                // the worker never sees a closed channel while it still stops its processes.
                watcher::Event::Delete(pod) => {
                    if let Some(tx) = workers.get(&pod.uid().unwrap_or_default()) {
                        tx.send_replace(None);
                    }
                }
                watcher::Event::InitDone => {
                    // Pods deleted while the watch was down.
                    for (uid, tx) in &workers {
                        if !seen_in_init.contains(uid) {
                            tx.send_replace(None);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
