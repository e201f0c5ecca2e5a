//! Every route the node serves, in one table: the router is built from it and so is the
//! OpenAPI document (`GET /api/v1/openapi.json`, [`super::openapi`]), so neither can list a
//! route the other lacks.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::DefaultBodyLimit;
use axum::routing::MethodRouter;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::routing::put;
use concordance_client as api;
use schemars::Schema;
use schemars::SchemaGenerator;
use serde_json::Value;

use super::cluster;
use super::kv;
use super::lease;
use super::lock;
use super::openapi;
use super::raft_rpc;
use super::route_doc::Access;
use super::route_doc::Body;
use super::route_doc::RouteDoc;
use super::route_doc::SchemaFn;
use super::route_doc::doc;
use super::route_doc::schema;
use super::txn;
use super::watch;
use crate::membership;
use crate::raft::wire::PEER_BODY_BYTES;
use crate::service::SharedNode;

/// Peer messages are our own versioned types, documented in `raft/wire.rs`, not here.
fn peer_message(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "A peer message {protocol, cluster, from, body} (node-to-node; see node/src/raft/wire.rs)"
    })
}

fn any_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object"})
}

fn json<T: schemars::JsonSchema>() -> Body {
    Body::Json(schema::<T>)
}

const WATCH_EVENTS: &[(&str, SchemaFn)] = &[
    ("change", schema::<api::WatchChange>),
    ("progress", schema::<api::WatchProgress>),
    ("error", schema::<api::ErrorBody>),
];

/// The whole API: each route's document and handler.
pub fn routes() -> Vec<(RouteDoc, MethodRouter<SharedNode>)> {
    use Access::*;
    let peer_limit = || DefaultBodyLimit::max(PEER_BODY_BYTES);
    let read = schema::<kv::ReadParams>;
    vec![
        // Probes and status.
        (
            doc("get", "/api/v1/health", Public, "Liveness: the process and its storage work").json::<api::HealthResponse>(),
            get(cluster::health),
        ),
        (
            doc("get", "/api/v1/ready", Public, "Readiness: 200 once a leader is known, this node is a voter in the committed membership (a joining node: once the change has fully committed), and it is caught up; else 503").json::<api::ReadyResponse>(),
            get(cluster::ready),
        ),
        (
            doc("get", "/api/v1/cluster/status", Public, "This node's view of the cluster: role, leader, term, indexes, members").json::<api::ClusterStatus>(),
            get(cluster::status),
        ),
        (
            doc("get", "/api/v1/cluster/version", Public, "The command sets this binary supports and the cluster has enabled").json::<api::VersionInfo>(),
            get(cluster::version),
        ),
        (
            doc("get", "/api/v1/openapi.json", Public, "This document").answers(Body::Json(any_object)),
            get(openapi_json),
        ),
        // Keys.
        (
            doc("get", "/api/v1/kv", Agent, "List keys under a prefix, in order, with continuation").query(schema::<kv::ListParams>).json::<api::ListResponse>(),
            get(kv::list),
        ),
        (
            doc("get", "/api/v1/kv/{*key}", Agent, "Read a key").query(read).json::<api::GetResponse>(),
            get(kv::get),
        ),
        (
            doc("put", "/api/v1/kv/{*key}", Agent, "Write a key (optionally attached to a lease)").body(json::<api::PutRequest>()).json::<api::PutResponse>().idempotent(),
            put(kv::put),
        ),
        (
            doc("post", "/api/v1/kv/{*key}", Agent, "Write a key (same as PUT)").body(json::<api::PutRequest>()).json::<api::PutResponse>().idempotent(),
            post(kv::put),
        ),
        (
            doc("delete", "/api/v1/kv/{*key}", Agent, "Delete a key").json::<api::DeleteResponse>().idempotent(),
            delete(kv::delete),
        ),
        (
            doc("post", "/api/v1/txn", Agent, "Atomic transaction: compares, then the success or failure operations, at one revision").body(json::<api::TxnRequest>()).json::<api::TxnResponse>().idempotent(),
            post(txn::txn),
        ),
        // Leases.
        (
            doc("post", "/api/v1/lease", Agent, "Grant a lease").body(json::<api::LeaseGrantRequest>()).json::<api::LeaseGrantResponse>().idempotent(),
            post(lease::grant),
        ),
        (
            doc("get", "/api/v1/lease", Agent, "List the leases the caller may see").query(read).json::<api::LeaseListResponse>(),
            get(lease::list),
        ),
        (
            doc("get", "/api/v1/lease/{id}", Agent, "A lease's TTL, time left and keys").query(read).json::<api::LeaseInfo>(),
            get(lease::get),
        ),
        (
            doc("delete", "/api/v1/lease/{id}", Agent, "Revoke a lease, deleting its keys").json::<api::LeaseRevokeResponse>().idempotent(),
            delete(lease::revoke),
        ),
        (
            doc("post", "/api/v1/lease/{id}/keepalive", Agent, "Restart a lease's TTL").json::<api::LeaseKeepAliveResponse>().idempotent(),
            post(lease::keep_alive),
        ),
        // Watches, locks, elections.
        (
            doc("get", "/api/v1/watch", Agent, "Stream changes to a key or prefix as Server-Sent Events (id = revision; resumable with Last-Event-ID)").query(schema::<watch::WatchParams>).answers(Body::EventStream(WATCH_EVENTS)),
            get(watch::watch),
        ),
        (
            doc("post", "/api/v1/lock/acquire", Agent, "Acquire a named lock for a lease (waits in order, or fails at once with wait=false)").body(json::<api::LockRequest>()).json::<api::LockResponse>(),
            post(lock::acquire),
        ),
        (
            doc("post", "/api/v1/lock/release", Agent, "Release a lock (or leave its queue)").body(json::<api::UnlockRequest>()).json::<api::UnlockResponse>(),
            post(lock::release),
        ),
        (
            doc("post", "/api/v1/election/campaign", Agent, "Campaign in a named election; answers once this candidate leads").body(json::<api::CampaignRequest>()).json::<api::CampaignResponse>(),
            post(lock::campaign),
        ),
        (
            doc("get", "/api/v1/election/leader", Agent, "An election's current leader (watch `watchPrefix` to follow changes)").query(schema::<lock::LeaderParams>).json::<api::ElectionLeaderResponse>(),
            get(lock::leader),
        ),
        (
            doc("post", "/api/v1/election/resign", Agent, "Resign (or withdraw a candidacy)").body(json::<api::ResignRequest>()).json::<api::ResignResponse>(),
            post(lock::resign),
        ),
        // Operations.
        (
            doc("get", "/metrics", Admin, "Prometheus metrics").answers(Body::Text("application/openmetrics-text")),
            get(cluster::metrics),
        ),
        (
            doc("get", "/api/v1/metrics", Admin, "Prometheus metrics").answers(Body::Text("application/openmetrics-text")),
            get(cluster::metrics),
        ),
        (
            doc("post", "/api/v1/cluster/snapshot", Admin, "Take a snapshot now (compacts the log)").answers(Body::Json(any_object)),
            post(cluster::snapshot),
        ),
        (
            doc("get", "/api/v1/cluster/backup", Admin, "Download a consistent online backup").answers(Body::Binary),
            get(cluster::backup),
        ),
        (
            doc("get", "/api/v1/cluster/alarms", Admin, "The alarms raised: `corrupt` (a member fenced, its state differs from the cluster's) and `no_space` (writes that grow the state refused)").json::<api::AlarmsResponse>(),
            get(cluster::alarms),
        ),
        (
            doc("post", "/api/v1/cluster/alarms/disarm", Admin, "End `no_space` alarms whose members are clear of their quota and reserve (refused while one is not)").body(json::<api::DisarmRequest>()).json::<api::AlarmsResponse>(),
            post(cluster::disarm),
        ),
        (
            doc("post", "/api/v1/cluster/compact", Admin, "Forget the change history below a revision on every member and give its space back").body(json::<api::CompactRequest>()).json::<api::CompactResponse>(),
            post(cluster::compact),
        ),
        (
            doc("post", "/api/v1/cluster/join", Admin, "Add a node as a learner (what --join calls)").body(json::<membership::JoinRequest>()).json::<membership::MembershipReply>(),
            post(cluster::join),
        ),
        (
            doc("post", "/api/v1/cluster/remove", Admin, "Remove a member").body(json::<membership::RemoveRequest>()).json::<membership::MembershipReply>(),
            post(cluster::remove),
        ),
        (
            doc("post", "/api/v1/cluster/transfer-leader", Admin, "Hand leadership to a voter (default: the most caught up); body optional").body(json::<membership::TransferRequest>()).json::<membership::TransferReply>(),
            post(cluster::transfer_leader),
        ),
        // The peer protocol.
        (
            doc("post", "/api/v1/raft/append", Admin, "Raft append entries").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::append).layer(peer_limit()),
        ),
        (
            doc("get", "/api/v1/raft/stream", Admin, "Upgrade to an append stream (Upgrade: concordance-append/1): length-prefixed append requests and answers in order").answers(Body::Binary).internal(),
            get(raft_rpc::stream),
        ),
        (
            doc("post", "/api/v1/raft/vote", Admin, "Raft vote").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::vote).layer(peer_limit()),
        ),
        (
            doc("post", "/api/v1/raft/pre-vote", Admin, "Raft pre-vote").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::pre_vote).layer(peer_limit()),
        ),
        (
            doc("post", "/api/v1/raft/transfer-leader", Admin, "Raft leadership transfer").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::transfer_leader).layer(peer_limit()),
        ),
        (
            doc("post", "/api/v1/raft/snapshot", Admin, "Install a snapshot: [header length u32 LE][header JSON][snapshot file]").body(Body::Binary).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::snapshot).layer(DefaultBodyLimit::disable()),
        ),
        (
            doc("post", "/api/v1/raft/write", Admin, "A write forwarded by a follower to the leader").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::write).layer(peer_limit()),
        ),
        (
            doc("post", "/api/v1/raft/write-batch", Admin, "Writes forwarded together by a follower to the leader, answered one by one in order").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::write_batch).layer(peer_limit()),
        ),
        (
            doc("get", "/api/v1/raft/forward", Admin, "Upgrade to a forward stream (Upgrade: concordance-forward/1): length-prefixed batches of forwarded writes and their answers in order").answers(Body::Binary).internal(),
            get(raft_rpc::forward_stream),
        ),
        (
            doc("post", "/api/v1/raft/read-index", Admin, "A follower's read-index request").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::read_index).layer(peer_limit()),
        ),
        (
            doc("post", "/api/v1/raft/lease", Admin, "A follower's lease keep-alive or time-left question, for the leader").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::lease).layer(peer_limit()),
        ),
        (
            doc("post", "/api/v1/raft/state-hash", Admin, "This member's state hash at a state check's log index").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::state_hash).layer(peer_limit()),
        ),
        (
            doc("post", "/api/v1/raft/check-state", Admin, "On the leader: check the replicas' state now (a member asks when it starts)").body(Body::Json(peer_message)).answers(Body::Json(any_object)).internal(),
            post(raft_rpc::check_state).layer(peer_limit()),
        ),
    ]
}

/// Every route's document, in table order.
pub fn docs() -> Vec<RouteDoc> {
    routes().into_iter().map(|(doc, _)| doc).collect()
}

/// `GET /api/v1/openapi.json`: the document of this table.
async fn openapi_json() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(|| openapi::document(&docs())).clone())
}

#[cfg(test)]
mod tests {
    use concordance_client::ErrorCode;

    use super::*;
    use crate::api::openapi::document;
    use crate::api::openapi::openapi_path;

    const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

    #[test]
    fn the_checked_in_openapi_document_is_current() {
        let now = serde_json::to_string_pretty(&document(&docs())).unwrap() + "\n";
        if std::env::var_os("CONCORDANCE_UPDATE_OPENAPI").is_some() {
            std::fs::write(CHECKED_IN, &now).unwrap();
        }
        let stored = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
        assert!(
            stored == now,
            "docs/openapi.json is stale: run CONCORDANCE_UPDATE_OPENAPI=1 cargo test --release -p concordance --lib openapi"
        );
    }

    #[test]
    fn every_route_is_documented_once_and_every_documented_route_is_routed() {
        let doc = document(&docs());
        let routes = routes();
        let mut from_table: Vec<(String, String)> = routes
            .iter()
            .map(|(r, _)| (openapi_path(r.path), r.method.to_string()))
            .collect();
        from_table.sort();
        let before = from_table.len();
        from_table.dedup();
        assert_eq!(before, from_table.len(), "a method and path listed twice");
        let mut from_doc: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(|m| (p.clone(), m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        from_doc.sort();
        assert_eq!(from_table, from_doc);
        // Every $ref resolves.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref {name}"
            );
        }
    }

    /// Every code the node answers with, as the document lists it.
    fn documented_codes(doc: &Value) -> Vec<String> {
        let schema = &doc["components"]["schemas"]["ErrorCode"];
        let mut codes: Vec<String> = schema["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| {
                let one = v["const"].as_str().map(|s| vec![s.to_string()]);
                let many = v["enum"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                });
                one.or(many).unwrap_or_default()
            })
            .chain(
                schema["enum"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(String::from)),
            )
            .collect();
        codes.sort();
        codes
    }

    #[test]
    fn the_document_lists_every_error_code_and_no_other() {
        let doc = document(&docs());
        let mut known: Vec<String> = ErrorCode::ALL.iter().map(|c| c.to_string()).collect();
        known.sort();
        assert_eq!(documented_codes(&doc), known);
        let checked_in: Value =
            serde_json::from_str(&std::fs::read_to_string(CHECKED_IN).unwrap()).unwrap();
        assert_eq!(documented_codes(&checked_in), known);
    }
}
