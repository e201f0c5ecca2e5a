//! The operator's own Prometheus metrics and its `/metrics`, `/healthz` and `/readyz` endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    /// Steps taken, by kind.
    pub steps: Family<StepLabels, Counter>,
    /// 1 while this replica holds the leader lease and runs the controller.
    pub leader: Gauge,
    ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("concordance_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Counter::default();
        let steps = Family::<StepLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried",
            reconcile_errors.clone(),
        );
        registry.register("steps", "Steps taken, by kind", steps.clone());
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Arc::new(Metrics {
            registry,
            reconciles,
            reconcile_errors,
            steps,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    /// Counts a step by its name ([`crate::decide::ActionInfo::name`], as in its Events).
    pub fn step(&self, name: &str) {
        self.steps
            .get_or_create(&StepLabels {
                step: name.to_string(),
            })
            .inc();
    }

    /// Ready once connected to the API server (a standby replica is ready too: it is healthy,
    /// only waiting for the lease).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

/// Serves the endpoints until the process ends.
pub async fn serve(addr: std::net::SocketAddr, m: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(m);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
