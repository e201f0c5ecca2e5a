//! Where a volume can be used: a PersistentVolume's node affinity read against the nodes, to
//! tell a member whose volume is pinned to nodes that are cordoned (drained) or gone: waiting
//! for them could take days, so such a member is replaced at once. A node that is only not
//! ready (a kubelet cut off, a reboot) is waited for like any unready member
//! (`spec.unreadyReplacementSeconds`). Local volumes (local PVs, LVM, local-path) are pinned to
//! one node; network volumes carry no node affinity or a zone's, and follow their pod.

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, PersistentVolume};

/// A node that is not cordoned (`kubectl cordon`, `kubectl drain`, a node being retired).
pub fn usable(node: &Node) -> bool {
    !node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The volume's node affinity allows no node that is there and not cordoned: its member cannot
/// run until one comes back. A volume without node affinity is never stranded.
pub fn stranded(volume: &PersistentVolume, nodes: &[Node]) -> bool {
    let Some(required) = volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return false;
    };
    !nodes.iter().any(|n| usable(n) && selects(required, n))
}

/// The node selector (its terms ORed, each term's requirements ANDed) selects the node.
pub fn selects(selector: &NodeSelector, node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    let name = node.metadata.name.as_deref();
    selector.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.iter().flatten().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).map(String::as_str);
            requirement_holds(r, value)
        });
        let fields = term.match_fields.iter().flatten().all(|r| {
            let value = (r.key == "metadata.name").then_some(name).flatten();
            requirement_holds(r, value)
        });
        // An empty term selects nothing.
        let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty)
            && term.match_fields.as_ref().is_none_or(Vec::is_empty);
        !empty && expressions && fields
    })
}

fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSelectorTerm, NodeSpec, NodeStatus, PersistentVolumeSpec,
        VolumeNodeAffinity,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, zone: &str, ready: bool, cordoned: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_string(), name.to_string()),
                    ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(cordoned),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pinned(key: &str, operator: &str, values: &[&str]) -> PersistentVolume {
        PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: key.into(),
                                operator: operator.into(),
                                values: Some(values.iter().map(|v| v.to_string()).collect()),
                            }]),
                            match_fields: None,
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_volume_pinned_to_a_cordoned_or_deleted_node_is_stranded() {
        let local = pinned("kubernetes.io/hostname", "In", &["node-1"]);
        let healthy = [
            node("node-1", "a", true, false),
            node("node-2", "b", true, false),
        ];
        assert!(!stranded(&local, &healthy));
        let drained = [
            node("node-1", "a", true, true),
            node("node-2", "b", true, false),
        ];
        assert!(stranded(&local, &drained));
        // A node that is only not ready is waited for (the unready-member rule).
        let dead = [
            node("node-1", "a", false, false),
            node("node-2", "b", true, false),
        ];
        assert!(!stranded(&local, &dead));
        let gone = [node("node-2", "b", true, false)];
        assert!(stranded(&local, &gone));
    }

    #[test]
    fn a_zonal_volume_follows_its_pod_within_the_zone() {
        let zonal = pinned("topology.kubernetes.io/zone", "In", &["a"]);
        let one_cordoned = [
            node("node-1", "a", true, true),
            node("node-3", "a", true, false),
        ];
        assert!(!stranded(&zonal, &one_cordoned));
        let network = PersistentVolume::default();
        assert!(!stranded(&network, &[]));
    }

    #[test]
    fn requirement_operators() {
        let n = node("node-1", "a", true, false);
        let holds = |op: &str, key: &str, values: &[&str]| {
            let pv = pinned(key, op, values);
            selects(
                pv.spec
                    .unwrap()
                    .node_affinity
                    .unwrap()
                    .required
                    .as_ref()
                    .unwrap(),
                &n,
            )
        };
        assert!(holds("NotIn", "topology.kubernetes.io/zone", &["b"]));
        assert!(!holds("NotIn", "topology.kubernetes.io/zone", &["a"]));
        assert!(holds("Exists", "kubernetes.io/hostname", &[]));
        assert!(holds("DoesNotExist", "disk", &[]));
        assert!(!holds("Gt", "kubernetes.io/hostname", &["1"]));
    }
}
