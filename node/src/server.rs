//! Starting and stopping a node: identity, storage, Raft, HTTP, graceful SIGTERM.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use concordance_client::ErrorCode;
use concordance_client::TerminationMessage;
use tokio::net::TcpListener;
use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;
use tokio_util::sync::CancellationToken;

use crate::auth::Keys;
use crate::clock::now_ms;
use crate::config::Config;
use crate::config::ConfigError;
use crate::config::LogFormat;
use crate::config::ServeArgs;
use crate::metrics::Metrics;
use crate::raft::Raft;
use crate::raft::client::PeerContext;
use crate::raft::network::Network;
use crate::service::Node;
use crate::store::LogStore;
use crate::store::StateMachine;
use crate::store::Store;
use crate::store::StoreError;
use crate::store::records::COMMAND_VERSION;
use crate::store::records::IdentityRecord;
use crate::store::records::Member;
use crate::tls::Conn;
use crate::tls::ConnIdentity;
use crate::tls::MovableTcp;
use crate::tls::Tls;

use crate::error::BoxError;

/// The data dir belongs to another node than `--node-id` names.
#[derive(Debug, thiserror::Error)]
#[error(
    "data dir {dir} belongs to node {stored:?}, not {asked:?}: pass --node-id={stored} or use an empty data dir for a new member"
)]
pub struct IdentityMismatch {
    dir: String,
    stored: String,
    asked: String,
}

/// The data dir's cluster has enabled a command set this binary cannot apply (a rollback
/// past it): it would stop at the first such entry, or worse, apply it differently.
#[derive(Debug, thiserror::Error)]
#[error(
    "data dir {dir}: the cluster has enabled command set {enabled}, and this binary applies sets up to {supported}: run a build at least as new as the one that enabled it (a rollback below an enabled set is not supported, see docs/releases.md)"
)]
pub struct CommandSetTooNew {
    dir: String,
    enabled: u32,
    supported: u32,
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, not in files and pod logs.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs a node until it stops. If it refuses to start (or fails), it says why in its
/// termination message too ([`crate::termination`]).
pub fn run(args: ServeArgs) -> Result<(), BoxError> {
    crate::termination::configure(args.termination_log.clone());
    let result = start(args);
    if let Err(e) = &result {
        crate::termination::write(&TerminationMessage {
            code: failure_code(e.as_ref()),
            message: e.to_string(),
        });
    }
    result
}

/// The code of a failure to start: a flag or data dir that does not fit, storage, or else.
fn failure_code(e: &(dyn std::error::Error + 'static)) -> ErrorCode {
    if e.is::<ConfigError>() || e.is::<IdentityMismatch>() {
        ErrorCode::InvalidConfig
    } else if e.is::<CommandSetTooNew>() {
        ErrorCode::CommandSetUnsupported
    } else if e.is::<StoreError>() {
        ErrorCode::StorageError
    } else {
        ErrorCode::Internal
    }
}

fn start(args: ServeArgs) -> Result<(), BoxError> {
    init_logging(args.log_format, &args.log);
    let config = args.validate()?;
    private_data_dir(&config.data_dir)?;
    if let Some(old_cluster) = &config.force_new_cluster {
        crate::offline::force_new_cluster(&config.data_dir, old_cluster, &config.advertise)?;
    }
    // The main thread is the first HTTP loop (see `serve_http`) and also runs the node's
    // background tasks (and Raft, with one loop: see `serve`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(config))
}

/// Makes the data dir (0700) if it is missing; warns when an existing one is open to others:
/// it holds every key and value.
fn private_data_dir(dir: &std::path::Path) -> Result<(), BoxError> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the data dir {}: {e}", dir.display()))?;
        return Ok(());
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            data_dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "the data dir is open to other users: it holds every key and value; chmod 700 it"
        );
    }
    Ok(())
}

/// Loads the identity stored in the data dir, or draws a new one for an empty dir.
fn load_identity(store: &Store, config: &Config) -> Result<IdentityRecord, BoxError> {
    match store.identity()? {
        Some(id) if id.name != config.node_name => Err(IdentityMismatch {
            dir: config.data_dir.display().to_string(),
            stored: id.name,
            asked: config.node_name.clone(),
        }
        .into()),
        Some(id) => Ok(id),
        None => {
            let id = IdentityRecord {
                // Never zero, so a zeroed record can never pass for a real id.
                raft_id: rand::random::<u64>().max(1),
                name: config.node_name.clone(),
                cluster_uuid: None,
                created_at_ms: now_ms(),
            };
            store.save_identity(&id)?;
            tracing::info!(node = %id.name, raft_id = %format!("{:016x}", id.raft_id), "new node identity");
            Ok(id)
        }
    }
}

/// With more than one HTTP loop, Raft's own tasks (core, replication, log and state machine
/// workers) run on a thread of their own, so a consensus step never waits in the queue
/// behind hundreds of HTTP connections' tasks. A member with one loop (`--http-threads=1`,
/// members sharing cores) keeps Raft on that loop: a thread hand-off per request cost more
/// there than the queue (docs/journal/benchmarks.md).
fn raft_runtime() -> Result<tokio::runtime::Handle, BoxError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(rt.handle().clone()));
            rt.block_on(std::future::pending::<()>());
        })?;
    Ok(rx.recv()??)
}

pub async fn serve(config: Config) -> Result<(), BoxError> {
    let store = Store::open(&config.data_dir)?;
    let mut identity = load_identity(&store, &config)?;
    let metrics = Metrics::new();
    let log_store = LogStore::open(store.clone(), metrics.clone())?;
    let state_machine = StateMachine::open(store.clone(), metrics.clone())?
        .with_history_revisions(config.history_revisions)
        .with_history_bytes(Some(config.history_bytes));
    let reader = state_machine.reader();
    if reader.command_version() > COMMAND_VERSION {
        return Err(CommandSetTooNew {
            dir: config.data_dir.display().to_string(),
            enabled: reader.command_version(),
            supported: COMMAND_VERSION,
        }
        .into());
    }
    let tls = config.tls.clone().map(Tls::load).transpose()?;
    let keys = Keys::with_sources(
        config.api_key.as_deref(),
        config.agent_key.as_deref(),
        crate::auth::KeySources {
            admin_keys_file: config.api_key_file.clone(),
            agent_keys_file: config.agent_key_file.clone(),
            credentials_file: config.credentials_file.clone(),
        },
    )?;
    let peers = PeerContext::new(
        config.api_key.clone(),
        identity.cluster_uuid.clone(),
        identity.raft_id,
        tls.as_ref(),
    );
    keys.update_peer_key(peers.clone());
    let raft_config = Arc::new(crate::raft::config(config.snapshot_entries)?);
    let network = Network { ctx: peers.clone() };
    let raft_id = identity.raft_id;
    // With one HTTP loop Raft runs on it too: then no request, append or answer crosses
    // between threads on its way to Raft (see `raft_runtime` for why it has a thread of its
    // own otherwise).
    let raft_runtime = if config.http_threads == 1 {
        tokio::runtime::Handle::current()
    } else {
        raft_runtime()?
    };
    let raft = raft_runtime
        .spawn(
            async move { Raft::new(raft_id, raft_config, network, log_store, state_machine).await },
        )
        .await??;
    let mut join_target = None;

    if raft.is_initialized().await? {
        if config.bootstrap {
            tracing::info!(
                cluster = identity.cluster_uuid.as_deref().unwrap_or("?"),
                "the data dir already holds a cluster member; resuming it and ignoring --bootstrap"
            );
        }
        // A member removed while it was down rejoins; for a current member this is a no-op.
        join_target = config.join.clone();
    } else if config.bootstrap {
        let uuid = identity
            .cluster_uuid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        identity.cluster_uuid = Some(uuid.clone());
        store.save_identity(&identity)?;
        peers.set_cluster(&uuid);
        let mut members = BTreeMap::new();
        members.insert(
            identity.raft_id,
            Member {
                name: identity.name.clone(),
                addr: config.advertise.clone(),
            },
        );
        raft.initialize(members).await?;
        tracing::info!(cluster = %uuid, "bootstrapped a new one-member cluster");
    } else if config.join.is_some() {
        join_target = config.join.clone();
    } else {
        tracing::warn!(
            "empty data dir and neither --bootstrap nor --join: this node is in no cluster and will not be ready"
        );
    }

    let stopping = tokio_util::sync::CancellationToken::new();
    let node = Arc::new(Node {
        raft: raft.clone(),
        raft_runtime,
        changes: crate::change_feed::ChangeFeed::start(reader.clone(), stopping.clone()),
        reader,
        store: store.clone(),
        metrics: metrics.clone(),
        identity,
        forwarder: crate::forward::Forwarder::start(
            peers.clone(),
            raft.clone(),
            metrics.clone(),
            config.writes.max_pending,
        ),
        peers,
        membership_lock: tokio::sync::Mutex::new(()),
        leader_contact: Default::default(),
        caught_up_since_start: std::sync::atomic::AtomicBool::new(false),
        stopping,
        proposals: crate::service::Proposals::new(config.writes.max_pending),
        write_limits: config.writes,
        watches: crate::service::OpenWatches::new(config.max_watches_per_credential),
        space: Default::default(),
        quotas: keys.quotas(),
    });
    spawn_leader_change_counter(&raft, metrics);
    spawn_stop_on_storage_failure(node.clone());
    crate::space::spawn(node.clone(), config.space, node.space.clone());
    spawn_promoter(node.clone());
    spawn_catch_up(node.clone());
    crate::coordination::spawn(
        node.clone(),
        crate::coordination::Settings {
            idempotency_retention: config.idempotency_retention,
        },
    );
    crate::integrity::spawn(node.clone(), config.state_check_interval);
    if let Some(target) = join_target {
        let joiner = node.clone();
        let advertise = config.advertise.clone();
        tokio::spawn(async move {
            if let Err(refused) = crate::join::join_cluster(&joiner, &target, &advertise).await {
                tracing::error!(code = %refused.code, error = %refused.message, "cannot join the cluster; stopping");
                crate::termination::write(&refused);
                std::process::exit(2);
            }
        });
    }

    raise_open_files_limit(config.connections.total);
    keys.spawn_reload(node.stopping.clone());
    let keys_names = keys.names();
    for (flag, key) in [
        ("--api-key", &config.api_key),
        ("--agent-key", &config.agent_key),
    ] {
        if key
            .as_ref()
            .is_some_and(|k| k.len() < crate::auth::credentials::MIN_TOKEN_BYTES)
        {
            tracing::warn!(
                flag,
                min = crate::auth::credentials::MIN_TOKEN_BYTES,
                "a short key: use at least the minimum length, of random characters"
            );
        }
    }
    let audit = match &config.audit_log {
        None => None,
        Some(path) => Some(
            crate::audit::AuditLog::open(path)
                .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?,
        ),
    };
    let app = crate::api::router(
        node.clone(),
        keys,
        crate::api::Certificates {
            peers_only: tls.as_ref().is_some_and(|t| t.peer_tls()),
            clients_required: tls
                .as_ref()
                .is_some_and(|t| t.client_certificates_required()),
            plaintext_peers_by_key: tls.as_ref().is_some_and(|t| t.settings().accept_plaintext),
        },
        audit,
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(
        node = %node.identity.name,
        listen = %config.listen,
        advertise = %config.advertise,
        data_dir = %config.data_dir.display(),
        auth = if config.api_key.is_some() { "keys" } else { "none (loopback only)" },
        credentials = ?keys_names,
        tls = match &tls {
            None => "off",
            Some(t) if t.settings().accept_plaintext => "TLS and plaintext (turning TLS on)",
            Some(t) if t.peer_tls() => "clients and peers (mutual)",
            Some(_) => "clients and peers (peers by key)",
        },
        "serving"
    );
    match &tls {
        Some(tls) => {
            tracing::info!(
                certificate = %tls.settings().cert.display(),
                valid_until = %crate::tls::format_time(tls.not_after()),
                "serving TLS"
            );
            tls.spawn_reload(node.metrics.clone(), node.stopping.clone());
        }
        None if !config.listen.ip().is_loopback() => tracing::warn!(
            listen = %config.listen,
            "serving plaintext HTTP beyond loopback: keys and values cross the network readable. \
             Serve TLS with --tls-cert and --tls-key, and peers by certificate with --peer-ca (docs/security.md)"
        ),
        None => {}
    }
    let http = Http {
        app,
        admission: crate::connections::Admission::new(config.connections, node.metrics.clone()),
        header_timeout: config.header_timeout,
        stopping: node.stopping.clone(),
        tls,
        handshake_failures: Default::default(),
    };
    spawn_peer_address_refresh(node.clone(), http.admission.clone());
    let leaving = node.clone();
    serve_http(listener, http, config.http_threads, async move {
        hand_over_leadership(&leaving).await
    })
    .await?;

    tracing::info!("stopping: shutting down raft");
    if let Err(e) = tokio::time::timeout(Duration::from_secs(10), raft.shutdown()).await {
        tracing::warn!(error = %e, "raft did not stop in time");
    }
    store.close()?;
    tracing::info!("stopped");
    Ok(())
}

/// How long a stopping leader waits for one voter to take over before trying the next: a
/// transfer to a voter that answers takes one election round.
const HAND_OVER_PER_VOTER: Duration = Duration::from_secs(1);
/// How long a stopping leader tries to hand over in all.
const HAND_OVER_LIMIT: Duration = Duration::from_secs(3);

/// A leader about to stop hands leadership to a caught-up voter first, so clients see one
/// quick leader change instead of an election timeout.
async fn hand_over_leadership(node: &Node) {
    // A stopping node takes no part in elections from now on: one that won after handing
    // over (its successor slow to send the first heartbeats) would leave the others without
    // a leader moments later, when it exits.
    node.raft.runtime_config().elect(false);
    let m = crate::raft::metrics_of(&node.raft);
    if m.state != openraft::ServerState::Leader
        || m.membership_config.membership().voter_ids().count() < 2
    {
        return;
    }
    match node.hand_over(HAND_OVER_PER_VOTER, HAND_OVER_LIMIT).await {
        Ok(r) => tracing::info!(leader = %r.leader, "handed leadership over before stopping"),
        Err(e) => tracing::warn!(error = %e, "could not hand leadership over before stopping"),
    }
}

fn spawn_promoter(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            node.promote_caught_up_learners().await;
        }
    });
}

/// Catches up once after start, so that serializable reads are served even if no leader is
/// reachable later (a minority partition stays readable).
fn spawn_catch_up(node: Arc<Node>) {
    tokio::spawn(async move {
        while node.catch_up_since_start().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// File descriptors beyond the connections: RocksDB's files, the Raft log, peer streams.
const FILES_BESIDES_CONNECTIONS: u64 = 1024;

/// Raises the open-files limit to its hard limit, as Go programs do at start (a VM's default
/// soft limit, 1024, is far below the connections a node takes), and says so when even that is
/// too low for `max_connections`: accepting then fails before the limits of
/// [`crate::connections`] are reached, peers' reserve included.
fn raise_open_files_limit(max_connections: usize) {
    let needed = max_connections as u64 + FILES_BESIDES_CONNECTIONS;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            open_files_limit = limit,
            max_connections,
            "the open-files limit is below what --max-connections needs; raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn) or lower --max-connections"
        ),
        Ok(limit) => tracing::debug!(open_files_limit = limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
}

/// What every HTTP loop serves, and how.
#[derive(Clone)]
struct Http {
    app: axum::Router,
    admission: Arc<crate::connections::Admission>,
    /// hyper's header-read timeout: from a connection's start, or the end of its previous
    /// answer, to a whole request head.
    header_timeout: Duration,
    stopping: CancellationToken,
    /// `None`: plaintext.
    tls: Option<Arc<Tls>>,
    handshake_failures: Arc<std::sync::Mutex<HandshakeLog>>,
}

/// Serves HTTP on `threads` loops until SIGTERM, then lets every loop finish its requests.
///
/// Each loop is a single-threaded runtime accepting from the same listening socket; a
/// connection stays on the loop that accepted it. With tokio's work-stealing pool instead,
/// every wake-up of one worker (a request, a Raft reply) also woke a sibling to look for work
/// to steal: about ten extra thread wake-ups per write across a 3-member cluster, which cost
/// CPU on every member and latency at low concurrency (docs/journal/benchmarks.md).
///
/// On SIGTERM `before_stopping` runs while requests are still served (a leader's hand-over
/// needs its peers' votes to reach it), then `stopping` is cancelled: long waits end (see
/// `Node::stopping`) and the rest get [`DRAIN`] to finish before their connections are closed.
async fn serve_http(
    listener: TcpListener,
    http: Http,
    threads: usize,
    before_stopping: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    // Installed before the first request is served: until then SIGTERM would still kill
    // the process outright.
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let listener = listener.into_std()?;
    let mut others = Vec::new();
    for n in 1..threads {
        let listener = listener.try_clone()?;
        let http = http.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name(format!("http-{n}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
                    .and_then(|rt| {
                        rt.block_on(serve_loop(listener, http))
                            .map_err(|e| e.to_string())
                    });
                let _ = done_tx.send(served);
            })?;
        others.push(done_rx);
    }
    let signalled = http.stopping.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("interrupt received"),
        }
        before_stopping.await;
        signalled.cancel();
    });
    serve_loop(listener, http).await?;
    for done in others {
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("an HTTP thread failed: {e}").into()),
            Err(_) => return Err("an HTTP thread stopped unexpectedly".into()),
        }
    }
    Ok(())
}

/// How long requests still running at SIGTERM get to finish. Well inside the 30 s a
/// Kubernetes pod gets, leaving time to hand over leadership and close the store.
const DRAIN: Duration = Duration::from_secs(10);

/// One HTTP loop: accepts what [`crate::connections`] admits and serves it over HTTP/1.1
/// (nothing of ours speaks HTTP/2, and HTTP/1 alone has no protocol sniffing during which a
/// silent connection would escape the header timeout) until `stopping`; then drains for at
/// most [`DRAIN`].
async fn serve_loop(listener: std::net::TcpListener, http: Http) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(http.header_timeout)
        // A client may close its sending side once its request is sent (`nc`, some health
        // checkers): that end of input is not the client going away, and it still gets the
        // answer (without this, hyper dropped it when the end came first).
        .half_close(true);
    // Each connection's task holds a receiver: the channel closes when the last one ends.
    let (all_closed_tx, all_closed_rx) = tokio::sync::watch::channel(());
    let mut refusals_logged = RefusalLog::default();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = http.stopping.cancelled() => break,
        };
        let permit = match http.admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                refusals_logged.note(peer.ip(), refusal);
                continue; // dropping `tcp` closes it
            }
        };
        let http = http.clone();
        let builder = builder.clone();
        let open = all_closed_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let Some((conn, identity)) = secure(&http, tcp, peer).await else {
                return;
            };
            let connection = builder
                .serve_connection(
                    hyper_util::rt::TokioIo::new(conn),
                    WithIdentity {
                        app: hyper_util::service::TowerToHyperService::new(http.app.clone()),
                        identity,
                    },
                )
                .with_upgrades();
            let stopping = http.stopping;
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(all_closed_rx);
    tokio::select! {
        _ = all_closed_tx.closed() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!(drain_secs = DRAIN.as_secs(), "requests still running after the drain time: closing their connections");
        }
    }
    Ok(())
}

/// The connection as served: plaintext, or TLS once its handshake is done (within the header
/// timeout) with what its certificate proved. `None` when the handshake failed.
async fn secure(
    http: &Http,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<(Conn, ConnIdentity)> {
    let Some(tls) = &http.tls else {
        return Some((Conn::Plain(tcp), ConnIdentity::default()));
    };
    let started = tokio::time::Instant::now();
    if tls.settings().accept_plaintext {
        // A TLS connection opens with a handshake record (content type 22); an HTTP request
        // with a method's first letter.
        let mut first = [0u8; 1];
        match tokio::time::timeout(http.header_timeout, tcp.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] != TLS_HANDSHAKE_RECORD => {
                return Some((Conn::Plain(tcp), ConnIdentity::default()));
            }
            Ok(Ok(1)) => {}
            _ => return None,
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
    let handshake = tokio::time::timeout_at(
        started + http.header_timeout,
        acceptor.accept(MovableTcp::new(tcp)),
    );
    match handshake.await {
        Ok(Ok(stream)) => {
            let identity = tls.identify(stream.get_ref().1.peer_certificates());
            Some((Conn::Tls(Box::new(stream)), identity))
        }
        Ok(Err(e)) => {
            http.handshake_failures
                .lock()
                .expect("not poisoned")
                .note(peer, &e);
            None
        }
        Err(_) => None,
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serves a connection's requests, each carrying what the connection proved.
#[derive(Clone)]
struct WithIdentity {
    app: hyper_util::service::TowerToHyperService<axum::Router>,
    identity: ConnIdentity,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithIdentity {
    type Response =
        <hyper_util::service::TowerToHyperService<axum::Router> as hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
        >>::Response;
    type Error =
        <hyper_util::service::TowerToHyperService<axum::Router> as hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
        >>::Error;
    type Future =
        <hyper_util::service::TowerToHyperService<axum::Router> as hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
        >>::Future;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.identity.clone());
        self.app.call(request)
    }
}

/// A failed accept: a connection that went away before it was taken is nothing; anything else
/// (out of file descriptors) is logged and the loop waits a moment instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Logs refused connections at most once per [`REFUSAL_LOG_EVERY`] per loop (a flood would
/// flood the log too); the metric counts every one.
#[derive(Default)]
struct RefusalLog {
    last: Option<std::time::Instant>,
    since: u64,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    /// Counts one refusal; when a line is due, how many it reports (this one included).
    fn due(&mut self) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < REFUSAL_LOG_EVERY) {
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.since))
    }

    fn note(&mut self, address: std::net::IpAddr, refusal: crate::connections::Refusal) {
        if let Some(refused) = self.due() {
            tracing::warn!(
                %address,
                reason = refusal.as_str(),
                refused,
                "refusing connections: at the connection limit (--max-connections, --max-connections-per-address)"
            );
        }
    }
}

/// TLS handshakes that failed: each reason (an expired certificate, one from another CA, a
/// client speaking plaintext) logged at most once per [`REFUSAL_LOG_EVERY`], with how many
/// failed for it since; a flood of one kind does not hide another.
#[derive(Default)]
struct HandshakeLog {
    reasons: std::collections::HashMap<String, RefusalLog>,
}

/// Reasons remembered at most; past it the memory starts over (a scan of odd handshakes).
const HANDSHAKE_REASONS_KEPT: usize = 64;

impl HandshakeLog {
    fn note(&mut self, address: std::net::SocketAddr, error: &std::io::Error) {
        let reason = error.to_string();
        if self.reasons.len() >= HANDSHAKE_REASONS_KEPT && !self.reasons.contains_key(&reason) {
            self.reasons.clear();
        }
        if let Some(refused) = self.reasons.entry(reason).or_default().due() {
            tracing::warn!(%address, error = %error, refused, "TLS handshake refused");
        }
    }
}

/// Keeps the connection limits' list of peer addresses current with the membership.
fn spawn_peer_address_refresh(node: Arc<Node>, admission: Arc<crate::connections::Admission>) {
    tokio::spawn(async move {
        loop {
            let members: Vec<String> = crate::raft::metrics_of(&node.raft)
                .membership_config
                .membership()
                .nodes()
                .map(|(_, member)| member.addr.clone())
                .collect();
            admission.set_peers(crate::connections::resolve(members).await);
            tokio::select! {
                _ = tokio::time::sleep(crate::connections::PEER_REFRESH) => {}
                _ = node.stopping.cancelled() => return,
            }
        }
    });
}

/// Fail-stop: once Raft has stopped on an error (a write or fsync of the log or the state
/// machine failed, the disk full or failing), the process exits, so that its supervisor
/// restarts it and it recovers from what it made durable. Staying up would leave a member
/// that answers 503 to everything and that liveness probes take for alive. A write whose
/// storage failed was never acknowledged: the answer waits for the durable write.
fn spawn_stop_on_storage_failure(node: crate::service::SharedNode) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let error = match crate::raft::metrics_of(&node.raft).running_state {
                Err(openraft::error::Fatal::Stopped) => return,
                Err(e) => e.to_string(),
                Ok(()) => continue,
            };
            let message = format!(
                "raft stopped on a storage error, so this member stops too and recovers what it \
                 made durable when restarted (free space or replace the disk first): {error}"
            );
            tracing::error!(error = %error, "raft stopped on a storage error; exiting");
            crate::termination::write(&TerminationMessage {
                code: ErrorCode::StorageError,
                message,
            });
            std::process::exit(4);
        }
    });
}

fn spawn_leader_change_counter(raft: &Raft, metrics: Metrics) {
    use openraft::async_runtime::watch::WatchReceiver;
    // The server metrics change only with the vote, role, leader or membership; the full
    // metrics change with every write, and watching those woke this task once per entry.
    let mut rx = raft.server_metrics();
    tokio::spawn(async move {
        let mut leader = rx.borrow_watched().current_leader;
        while rx.changed().await.is_ok() {
            let now = rx.borrow_watched().current_leader;
            if now != leader && now.is_some() {
                metrics.leader_changed();
            }
            leader = now;
        }
    });
}
