//! The HTTP API under `/api/v1`: routing, roles per route, and request metrics.

mod body;
mod cluster;
mod error;
mod kv;
mod lease;
mod lock;
mod peer;
mod txn;
mod watch;

use std::time::Instant;

use axum::Router;
use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::middleware;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;

pub use self::body::JsonBody;
pub use self::body::MAX_BODY_BYTES;

/// Largest peer message accepted (Raft append batches).
pub const PEER_BODY_BYTES: usize = 512 << 20;
pub use self::error::ApiError;
use crate::auth;
use crate::auth::Keys;
use crate::auth::Role;
use crate::metrics::HttpLabels;
use crate::service::SharedNode;

/// Builds the whole router. Public routes (probes, status) carry no secret; every other
/// route requires a key granting its role.
pub fn router(node: SharedNode, keys: Keys) -> Router {
    let public = Router::new()
        .route("/api/v1/health", get(cluster::health))
        .route("/api/v1/ready", get(cluster::ready))
        .route("/api/v1/cluster/status", get(cluster::status))
        .route("/api/v1/cluster/version", get(cluster::version));

    let data = Router::new()
        .route("/api/v1/kv", get(kv::list))
        .route(
            "/api/v1/kv/{*key}",
            get(kv::get).put(kv::put).post(kv::put).delete(kv::delete),
        )
        .route("/api/v1/txn", post(txn::txn))
        .route("/api/v1/lease", get(lease::list).post(lease::grant))
        .route("/api/v1/lease/{id}", get(lease::get).delete(lease::revoke))
        .route("/api/v1/lease/{id}/keepalive", post(lease::keep_alive))
        .route("/api/v1/watch", get(watch::watch))
        .route("/api/v1/lock/acquire", post(lock::acquire))
        .route("/api/v1/lock/release", post(lock::release))
        .route("/api/v1/election/campaign", post(lock::campaign))
        .route("/api/v1/election/leader", get(lock::leader))
        .route("/api/v1/election/resign", post(lock::resign))
        .route_layer(middleware::from_fn_with_state(
            (keys.clone(), Role::Agent),
            auth::require,
        ));

    // Peers' messages may carry many entries of up to a value's size each.
    let peer_limit = axum::extract::DefaultBodyLimit::max(PEER_BODY_BYTES);
    let admin = Router::new()
        .route("/metrics", get(cluster::metrics))
        .route("/api/v1/metrics", get(cluster::metrics))
        .route("/api/v1/cluster/snapshot", post(cluster::snapshot))
        .route("/api/v1/cluster/backup", get(cluster::backup))
        .route("/api/v1/cluster/join", post(cluster::join))
        .route("/api/v1/cluster/remove", post(cluster::remove))
        .route(
            "/api/v1/cluster/transfer-leader",
            post(cluster::transfer_leader),
        )
        .route("/api/v1/raft/append", post(peer::append).layer(peer_limit))
        .route("/api/v1/raft/vote", post(peer::vote).layer(peer_limit))
        .route(
            "/api/v1/raft/pre-vote",
            post(peer::pre_vote).layer(peer_limit),
        )
        .route(
            "/api/v1/raft/transfer-leader",
            post(peer::transfer_leader).layer(peer_limit),
        )
        .route(
            "/api/v1/raft/snapshot",
            post(peer::snapshot).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/v1/raft/write", post(peer::write).layer(peer_limit))
        .route(
            "/api/v1/raft/read-index",
            post(peer::read_index).layer(peer_limit),
        )
        .route_layer(middleware::from_fn_with_state(
            (keys, Role::Admin),
            auth::require,
        ));

    public
        .merge(data)
        .merge(admin)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(node.clone(), observe))
        .with_state(node)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

/// Records each request's latency by route template (never by raw path: keys are data).
async fn observe(State(node): State<SharedNode>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    node.metrics.observe_http(
        HttpLabels {
            method,
            route,
            status: resp.status().as_u16(),
        },
        started.elapsed(),
    );
    resp
}
