//! Prometheus metrics: Raft role, term and indexes, leader changes, proposal, apply and log
//! sync latency, HTTP latency by route, storage size.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlarmLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    pub role: Family<RoleLabels, Gauge>,
    pub term: Gauge,
    pub last_log_index: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub revision: Gauge,
    pub leader_changes: Counter,
    pub storage_bytes: Gauge,
    pub proposal_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub apply_batch_entries: Histogram,
    pub log_sync_seconds: Histogram,
    pub log_sync_batch_appends: Histogram,
    pub forwarded_batch_writes: Histogram,
    pub http_seconds: Family<HttpLabels, Histogram>,
    pub open_connections: Gauge,
    pub refused_connections: Family<RefusalLabels, Counter>,
    pub shed_writes: Family<RefusalLabels, Counter>,
    pub watches: Family<CredentialLabels, Gauge>,
    pub answers_swept: Counter,
    pub state_checks: Family<OutcomeLabels, Counter>,
    pub fenced: Gauge,
    pub alarms: Family<AlarmLabels, Gauge>,
    pub disk_used_bytes: Gauge,
    pub disk_free_bytes: Gauge,
    pub disk_quota_bytes: Gauge,
    pub disk_reserve_bytes: Gauge,
    pub tls_certificate_expiry: Gauge,
}

fn latency() -> Histogram {
    // 50 µs .. ~ 26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// A snapshot of Raft state, pushed into the gauges before each scrape.
pub struct RaftGauges {
    pub role: &'static str,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub storage_bytes: u64,
    /// Alarms raised in the cluster, by kind (every kind, 0 included).
    pub alarms: Vec<(&'static str, u64)>,
    /// This member's disk space, once measured.
    pub space: Option<concordance_client::StorageUse>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("concordance");
        let inner = Inner {
            role: Family::default(),
            term: Gauge::default(),
            last_log_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            revision: Gauge::default(),
            leader_changes: Counter::default(),
            storage_bytes: Gauge::default(),
            proposal_seconds: latency(),
            apply_seconds: latency(),
            apply_batch_entries: sizes(),
            log_sync_seconds: latency(),
            log_sync_batch_appends: sizes(),
            forwarded_batch_writes: sizes(),
            http_seconds: Family::new_with_constructor(latency),
            open_connections: Gauge::default(),
            refused_connections: Family::default(),
            shed_writes: Family::default(),
            watches: Family::default(),
            answers_swept: Counter::default(),
            state_checks: Family::default(),
            fenced: Gauge::default(),
            alarms: Family::default(),
            disk_used_bytes: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            disk_quota_bytes: Gauge::default(),
            disk_reserve_bytes: Gauge::default(),
            tls_certificate_expiry: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "raft_role",
            "1 for this node's current Raft role",
            inner.role.clone(),
        );
        r.register("raft_term", "Current Raft term", inner.term.clone());
        r.register(
            "raft_last_log_index",
            "Index of the last log entry",
            inner.last_log_index.clone(),
        );
        r.register(
            "raft_commit_index",
            "Index of the last committed entry",
            inner.commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Index of the last applied entry",
            inner.applied_index.clone(),
        );
        r.register(
            "revision",
            "Cluster-wide revision of the last applied change",
            inner.revision.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Leader changes seen by this node",
            inner.leader_changes.clone(),
        );
        r.register(
            "storage_size_bytes",
            "Bytes of live data on disk and in memtables",
            inner.storage_bytes.clone(),
        );
        r.register(
            "proposal_duration_seconds",
            "Time from proposing a write to its applied answer",
            inner.proposal_seconds.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Time to apply one batch of entries",
            inner.apply_seconds.clone(),
        );
        r.register(
            "apply_batch_entries",
            "Entries per applied batch",
            inner.apply_batch_entries.clone(),
        );
        r.register(
            "log_sync_duration_seconds",
            "Time of one fsync of the Raft log",
            inner.log_sync_seconds.clone(),
        );
        r.register(
            "log_sync_batch_appends",
            "Appends acknowledged by one log fsync",
            inner.log_sync_batch_appends.clone(),
        );
        r.register(
            "forwarded_batch_writes",
            "Writes this follower forwarded to the leader in one batch",
            inner.forwarded_batch_writes.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            inner.http_seconds.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections open (upgraded peer streams excluded)",
            inner.open_connections.clone(),
        );
        r.register(
            "http_connections_refused",
            "Connections closed on accept: the node (full) or the client address (address_full) was at its limit",
            inner.refused_connections.clone(),
        );
        r.register(
            "writes_shed",
            "Writes refused as overloaded before anything was proposed: too many waiting on the leader (pending_writes), an apply backlog (apply_backlog), a full forward queue (forward_queue)",
            inner.shed_writes.clone(),
        );
        r.register(
            "watches",
            "Watch streams open on this member, by credential",
            inner.watches.clone(),
        );
        r.register(
            "idempotency_answers_swept",
            "Idempotency answers forgotten past their retention by sweeps this member proposed as leader",
            inner.answers_swept.clone(),
        );
        r.register(
            "state_checks",
            "State checks this member ran as leader, by outcome: match, mismatch (a member fenced), undecided (no hash held by a majority), incomplete (a voter did not answer)",
            inner.state_checks.clone(),
        );
        r.register(
            "fenced",
            "1 while this member is fenced by an alarm: its state differs from the cluster's, it is not ready and serves nothing",
            inner.fenced.clone(),
        );
        r.register(
            "alarms",
            "Alarms raised in the cluster, by kind: corrupt (a member fenced) and no_space (writes that grow the state refused until disarmed)",
            inner.alarms.clone(),
        );
        r.register(
            "disk_used_bytes",
            "Bytes this member's data dir takes on disk (database, Raft log, snapshots), as --quota-bytes counts them",
            inner.disk_used_bytes.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Bytes free on the volume of this member's data dir",
            inner.disk_free_bytes.clone(),
        );
        r.register(
            "disk_quota_bytes",
            "--quota-bytes: past it this member raises the no_space alarm",
            inner.disk_quota_bytes.clone(),
        );
        r.register(
            "disk_reserve_bytes",
            "--reserve-bytes: with less free on the volume this member raises the no_space alarm",
            inner.disk_reserve_bytes.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate this member serves (--tls-cert, as last reloaded) expires, in seconds since the epoch; 0 without TLS",
            inner.tls_certificate_expiry.clone(),
        );
        Self {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    pub fn observe_proposal(&self, d: Duration) {
        self.inner.proposal_seconds.observe(d.as_secs_f64());
    }

    pub fn observe_apply(&self, d: Duration, entries: usize) {
        self.inner.apply_seconds.observe(d.as_secs_f64());
        self.inner.apply_batch_entries.observe(entries as f64);
    }

    pub fn observe_log_sync(&self, d: Duration, appends: usize) {
        self.inner.log_sync_seconds.observe(d.as_secs_f64());
        self.inner.log_sync_batch_appends.observe(appends as f64);
    }

    pub fn observe_forwarded_batch(&self, writes: usize) {
        self.inner.forwarded_batch_writes.observe(writes as f64);
    }

    pub fn observe_http(&self, labels: HttpLabels, d: Duration) {
        self.inner
            .http_seconds
            .get_or_create(&labels)
            .observe(d.as_secs_f64());
    }

    pub fn set_open_connections(&self, open: usize) {
        self.inner
            .open_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    pub fn connection_refused(&self, reason: &str) {
        self.inner
            .refused_connections
            .get_or_create(&RefusalLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn write_shed(&self, reason: &str) {
        self.inner
            .shed_writes
            .get_or_create(&RefusalLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn set_watches(&self, credential: &str, open: usize) {
        self.inner
            .watches
            .get_or_create(&CredentialLabels {
                credential: credential.into(),
            })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    pub fn answers_swept(&self, n: u64) {
        self.inner.answers_swept.inc_by(n);
    }

    pub fn state_checked(&self, outcome: &str) {
        self.inner
            .state_checks
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn set_fenced(&self, fenced: bool) {
        self.inner.fenced.set(i64::from(fenced));
    }

    /// The served certificate's expiry (seconds since the epoch).
    pub fn set_tls_certificate_expiry(&self, not_after: i64) {
        self.inner.tls_certificate_expiry.set(not_after);
    }

    pub fn leader_changed(&self) {
        self.inner.leader_changes.inc();
    }

    /// Prometheus text exposition, with the Raft gauges set from `g` first.
    pub fn render(&self, g: RaftGauges) -> String {
        let i = &self.inner;
        for role in ["leader", "follower", "candidate", "learner", "shutdown"] {
            i.role
                .get_or_create(&RoleLabels { role: role.into() })
                .set(i64::from(role == g.role));
        }
        let set = |gauge: &Gauge, v: u64| gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        set(&i.term, g.term);
        set(&i.last_log_index, g.last_log_index);
        set(&i.commit_index, g.commit_index);
        set(&i.applied_index, g.applied_index);
        set(&i.revision, g.revision);
        set(&i.storage_bytes, g.storage_bytes);
        for (kind, count) in &g.alarms {
            set(
                &i.alarms.get_or_create(&AlarmLabels {
                    kind: (*kind).into(),
                }),
                *count,
            );
        }
        if let Some(space) = &g.space {
            set(&i.disk_used_bytes, space.used_bytes);
            set(&i.disk_free_bytes, space.free_bytes);
            set(&i.disk_quota_bytes, space.quota_bytes);
            set(&i.disk_reserve_bytes, space.reserve_bytes);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &i.registry)
            .expect("writing to a String");
        out
    }
}
