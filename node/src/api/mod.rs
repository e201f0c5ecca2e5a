//! The HTTP API under `/api/v1`: routing, roles per route, and request metrics.

mod body;
mod cluster;
pub mod error;
mod kv;
mod lease;
mod lock;
pub mod openapi;
mod raft_rpc;
pub mod route_doc;
pub mod routes;
mod txn;
pub(crate) mod validate;
mod watch;

use std::time::Instant;

use axum::Router;
use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::middleware;
use axum::middleware::Next;
use axum::response::Response;

pub use self::body::JsonBody;
pub use self::body::MAX_BODY_BYTES;

use concordance_client::ErrorCode;

pub use self::error::ApiError;
use self::route_doc::Access;
use std::sync::Arc;

use crate::audit::AuditLog;
use crate::audit::Note;
use crate::auth::Keys;
use crate::auth::Role;
use crate::metrics::HttpLabels;
use crate::service::SharedNode;
use crate::tls::ConnIdentity;

/// Which certificates the routes ask for (from the TLS flags, `tls.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Certificates {
    /// Peers talk mutual TLS: the Raft routes take a member's certificate, never a key.
    pub peers_only: bool,
    /// The data and admin routes need a client certificate (or a member's) besides a key.
    pub clients_required: bool,
    /// Turning TLS on in a running cluster: on a plaintext connection the Raft routes take
    /// the admin key, as before TLS.
    pub plaintext_peers_by_key: bool,
}

/// Builds the whole router from the route table ([`routes::routes`]). Public routes (probes,
/// status) carry no secret; the Raft routes need a member's certificate or the admin key;
/// every other route requires a key granting its role.
pub fn router(
    node: SharedNode,
    keys: Keys,
    certificates: Certificates,
    audit: Option<AuditLog>,
) -> Router {
    let mut audited = std::collections::HashSet::new();
    let mut public = Router::new();
    let mut data = Router::new();
    let mut admin = Router::new();
    let mut peer = Router::new();
    for (doc, handler) in routes::routes() {
        if is_audited(doc.method, doc.path, doc.access, doc.internal) {
            audited.insert((doc.method.to_ascii_uppercase(), doc.path));
        }
        // Peer routes have their own limits (a snapshot streams unbounded).
        let handler = if doc.internal {
            handler
        } else {
            handler.route_layer(middleware::from_fn(body_within_limit))
        };
        let group = match doc.access {
            _ if doc.internal => &mut peer,
            Access::Public => &mut public,
            Access::Agent => &mut data,
            Access::Admin => &mut admin,
        };
        *group = std::mem::take(group).route(doc.path, handler);
    }
    // Layers run outside in: the key is checked first, then whether this member may serve.
    let mut data = data
        .route_layer(middleware::from_fn_with_state(node.clone(), unless_fenced))
        .route_layer(middleware::from_fn_with_state(
            (keys.clone(), Role::Agent),
            require,
        ));
    let mut admin = admin.route_layer(middleware::from_fn_with_state(
        (keys.clone(), Role::Admin),
        require,
    ));
    if certificates.clients_required {
        data = data.route_layer(middleware::from_fn(require_client_certificate));
        admin = admin.route_layer(middleware::from_fn(require_client_certificate));
    }
    let peer = if certificates.peers_only {
        peer.route_layer(middleware::from_fn_with_state(
            (keys, certificates.plaintext_peers_by_key),
            require_peer_certificate,
        ))
    } else {
        peer.route_layer(middleware::from_fn_with_state((keys, Role::Admin), require))
    };
    let mut all = public
        .merge(data)
        .merge(admin)
        .merge(peer)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    if let Some(log) = audit {
        all = all.layer(middleware::from_fn_with_state(
            (log, Arc::new(audited)),
            record_audited,
        ));
    }
    all.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(node.clone(), observe))
        .with_state(node)
}

/// The routes every call of which is audited: the admin routes but metrics scrapes, and those
/// that end what others may hold (a lease's revoke, a lock's release, a resignation). A
/// transaction is audited when it deletes a prefix; any route when it is refused.
fn is_audited(method: &str, path: &str, access: Access, internal: bool) -> bool {
    match (method, path) {
        (_, "/metrics" | "/api/v1/metrics") => false,
        ("delete", "/api/v1/lease/{id}")
        | ("post", "/api/v1/lock/release" | "/api/v1/election/resign") => true,
        _ => access == Access::Admin && !internal,
    }
}

type Audited = std::collections::HashSet<(String, &'static str)>;

/// Middleware of `--audit-log`: handlers note who called and what a transaction deleted;
/// the line is written once the answer is known.
async fn record_audited(
    State((log, audited)): State<(AuditLog, Arc<Audited>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let note = Note::default();
    req.extensions_mut().insert(note.clone());
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let noted = note.take();
    let refused = matches!(status, 401 | 403 | 429);
    let by_route = route
        .as_deref()
        .is_some_and(|r| audited.iter().any(|(m, p)| *m == method && *p == r));
    if refused || by_route || !noted.prefixes.is_empty() {
        log.record(&crate::audit::Entry {
            time: crate::audit::now(),
            credential: noted.caller.as_deref(),
            method: &method,
            route: route.as_deref().unwrap_or("unmatched"),
            path: &path,
            prefixes: &noted.prefixes,
            status,
        });
    }
    resp
}

/// Middleware of the Raft routes under mutual TLS: the connection must have shown a member's
/// certificate (`--peer-ca`, `--peer-names`); a key, even the admin key, is not enough. Only
/// while TLS is being turned on (`--accept-plaintext`) does a plaintext connection get them
/// with the admin key.
async fn require_peer_certificate(
    State((keys, plaintext_by_key)): State<(Keys, bool)>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let identity = req.extensions().get::<ConnIdentity>();
    if identity.is_some_and(|i| i.peer.is_some()) {
        return Ok(next.run(req).await);
    }
    if plaintext_by_key && identity.is_none_or(|i| !i.tls) {
        return require(State((keys, Role::Admin)), req, next).await;
    }
    let why = identity
        .and_then(|i| i.not_a_peer.as_deref())
        .unwrap_or("it sent no certificate");
    Err(ApiError::new(
        ErrorCode::Unauthorized,
        format!("the Raft routes take a member's certificate (from --peer-ca), not keys; {why}"),
    ))
}

/// Middleware of the data and admin routes with `--tls-client-ca`: the connection must have
/// shown a client's (or a member's) certificate.
async fn require_client_certificate(req: Request, next: Next) -> Result<Response, ApiError> {
    let shown = req
        .extensions()
        .get::<ConnIdentity>()
        .is_some_and(|i| i.client.is_some() || i.peer.is_some());
    if !shown {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this node takes clients with a certificate from its client CA (--tls-client-ca), besides a key; this connection sent none",
        ));
    }
    Ok(next.run(req).await)
}

/// Middleware of the client API: the body is read, up to the limit, before the handler runs,
/// so one over the limit is refused (413 `body_too_large`) on every route, those that do not
/// read their body (a DELETE) too. Otherwise such a handler would act and answer while the
/// client was still sending, and the reset that follows could lose the answer of a write that
/// was applied.
async fn body_within_limit(req: Request, next: Next) -> Result<Response, ApiError> {
    use axum::extract::FromRequest;
    let (parts, body) = req.into_parts();
    let bytes = axum::body::Bytes::from_request(Request::from_parts(parts.clone(), body), &())
        .await
        .map_err(|e| {
            ApiError::with_status(
                e.status(),
                ErrorCode::BodyTooLarge,
                format!("request body is over the {MAX_BODY_BYTES}-byte limit or unreadable: {e}"),
            )
        })?;
    Ok(next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await)
}

/// Middleware: the request must carry a key granting at least `required`.
async fn require(
    State((keys, required)): State<(Keys, Role)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let caller = keys
        .authenticate(header)
        .map_err(|e| ApiError::new(ErrorCode::Unauthorized, e.to_string()))?;
    if let Some(audit) = req.extensions().get::<crate::audit::Note>() {
        audit.caller(&caller.name);
    }
    caller.admit()?;
    if caller.role < required {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this needs an {} credential; the {} credential (an {}) may not do it",
                required.name(),
                caller.name,
                caller.role.name()
            ),
        ));
    }
    // Handlers check each key and sub-operation against the caller's rules.
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Middleware: a fenced member (its state differs from the cluster's) serves no data.
async fn unless_fenced(
    State(node): State<SharedNode>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    node.check_not_fenced()?;
    Ok(next.run(req).await)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

/// A known path with a method it does not serve: the API's error body, not an empty 405.
async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not served on {}", req.method(), req.uri().path()),
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
