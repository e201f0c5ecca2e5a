//! Command line and environment: every flag also reads an environment variable.

use std::net::SocketAddr;
use std::net::ToSocketAddrs;
use std::path::PathBuf;

use clap::Args;
use clap::Parser;
use clap::Subcommand;

#[derive(Debug, Parser)]
#[command(
    name = "concordance",
    version,
    about = "A Raft-replicated coordination store: keys with revisions, leases, locks, watches.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Print a data dir's identity, cluster UUID and last log entry, without starting it.
    Inspect {
        #[arg(long, env = "CONCORDANCE_DATA_DIR")]
        data_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// After losing quorum: turn a stopped node's data dir into a one-member cluster with a new
    /// cluster UUID, keeping everything it applied, and say which writes may be lost.
    Recover {
        #[arg(long, env = "CONCORDANCE_DATA_DIR")]
        data_dir: PathBuf,
        /// Address peers will use to reach it (default: its address in the old membership).
        #[arg(long, env = "CONCORDANCE_ADVERTISE")]
        advertise: Option<String>,
    },
    /// Create a new data dir from a backup (from GET /api/v1/cluster/backup), as a one-member
    /// cluster with a new cluster UUID.
    Restore {
        /// The backup file.
        #[arg(long)]
        backup: PathBuf,
        /// An empty (or absent) data dir to create.
        #[arg(long, env = "CONCORDANCE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, env = "CONCORDANCE_NODE_ID")]
        node_id: String,
        /// Address peers will use to reach it.
        #[arg(long, env = "CONCORDANCE_ADVERTISE")]
        advertise: String,
    },
    /// Make a CA and the node and client certificates it signs (for --tls-cert, --peer-ca,
    /// and clients' --ca-file), for people without a PKI of their own.
    #[command(subcommand)]
    Certs(crate::certs::CertsCommand),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// This node's name in the cluster (default: the host name).
    #[arg(long, env = "CONCORDANCE_NODE_ID")]
    pub node_id: Option<String>,
    /// Address to serve HTTP (clients and peers) on.
    #[arg(long, env = "CONCORDANCE_LISTEN", default_value = "127.0.0.1:4100")]
    pub listen: String,
    /// Address peers use to reach this node (default: the listen address, or
    /// `<hostname>:<port>` when listening on all interfaces).
    #[arg(long, env = "CONCORDANCE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where this node keeps its data (default: a per-node folder under the user's data dir).
    #[arg(long, env = "CONCORDANCE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// On an empty data dir, start a new one-member cluster.
    #[arg(long, env = "CONCORDANCE_BOOTSTRAP", conflicts_with = "join")]
    pub bootstrap: bool,
    /// On an empty data dir, ask this member (`host:port`) to add this node to its cluster.
    #[arg(long, env = "CONCORDANCE_JOIN", value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// Quorum-loss recovery at start: if this data dir still belongs to cluster CLUSTER_ID,
    /// first rebuild it as a one-member cluster with a new id (as `concordance recover` does).
    /// Once done it does nothing, so restarting with the same flag is safe.
    #[arg(long, env = "CONCORDANCE_FORCE_NEW_CLUSTER", value_name = "CLUSTER_ID", conflicts_with_all = ["bootstrap", "join"])]
    pub force_new_cluster: Option<String>,
    /// Admin key: may do everything.
    #[arg(long, env = "CONCORDANCE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Agent key: may use the data API only.
    #[arg(long, env = "CONCORDANCE_AGENT_API_KEY", hide_env_values = true)]
    pub agent_key: Option<String>,
    /// Admin keys from a file, one per line: every one is accepted, and the first is the one
    /// this node calls its peers with. Read again when it changes, so the admin key rotates
    /// with no restart. Wins over --api-key (which a build before key files takes instead).
    #[arg(long, env = "CONCORDANCE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Agent keys from a file, one per line, read again when it changes. Wins over
    /// --agent-key.
    #[arg(long, env = "CONCORDANCE_AGENT_KEY_FILE", value_name = "FILE")]
    pub agent_key_file: Option<PathBuf>,
    /// Named credentials besides the two keys (YAML or JSON): each a role, its tokens (several
    /// while one rotates), and for an agent the key prefixes it may read and write. Read again
    /// when it changes; a change that is not valid is logged and not taken. Needs --api-key.
    #[arg(long, env = "CONCORDANCE_CREDENTIALS_FILE", value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Append one JSON line per admin call, prefix delete, revoke, release and refused request
    /// to this file (created 0600): when, which credential, what, and the answer's status.
    #[arg(long, env = "CONCORDANCE_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Serve a non-loopback address without keys. Anyone who can reach the port can do anything.
    #[arg(long, env = "CONCORDANCE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Serve TLS only, with this certificate (PEM: the node's first, then any intermediates).
    /// Read again when it changes: new connections get the new one, with no restart.
    #[arg(
        long,
        env = "CONCORDANCE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM). Read again when it changes.
    #[arg(
        long,
        env = "CONCORDANCE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Clients must send a certificate signed by one of these CAs (PEM) to use the data and
    /// admin routes, besides their key. Probes and status stay open to any TLS client.
    #[arg(
        long,
        env = "CONCORDANCE_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Mutual TLS between members: a member is known by a certificate signed by one of these
    /// CAs (PEM; during a CA rotation, the old and the new one), and the Raft routes accept
    /// nothing else (not the admin key). This node dials its peers with --tls-cert.
    #[arg(
        long,
        env = "CONCORDANCE_PEER_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub peer_ca: Option<PathBuf>,
    /// The names a member's certificate may carry, comma-separated: DNS names, IP addresses,
    /// or `*.<domain>` for one label under a domain (default: any certificate of --peer-ca).
    #[arg(
        long,
        env = "CONCORDANCE_PEER_NAMES",
        value_delimiter = ',',
        value_name = "NAMES",
        requires = "peer_ca"
    )]
    pub peer_names: Vec<String>,
    /// While turning TLS on in a running cluster: serve plaintext beside TLS on the same
    /// port (a connection's first byte tells them apart), and on plaintext let the Raft
    /// routes take the admin key as before. Drop it once every member and client uses TLS.
    #[arg(long, env = "CONCORDANCE_ACCEPT_PLAINTEXT", requires = "tls_cert")]
    pub accept_plaintext: bool,
    /// While turning TLS on in a running cluster: dial peers in plaintext (with the admin
    /// key), for members not yet serving TLS. Drop it once every member has --tls-cert.
    #[arg(
        long,
        env = "CONCORDANCE_DIAL_PEERS_PLAINTEXT",
        requires = "accept_plaintext"
    )]
    pub dial_peers_plaintext: bool,
    /// Log format: `text` or `json`.
    #[arg(long, env = "CONCORDANCE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `concordance=debug,openraft=info`.
    #[arg(long, env = "CONCORDANCE_LOG", default_value = "info,openraft=warn")]
    pub log: String,
    /// Take a snapshot (and compact the log) after this many entries.
    #[arg(long, env = "CONCORDANCE_SNAPSHOT_ENTRIES", default_value_t = 100_000)]
    pub snapshot_entries: u64,
    /// Revisions of change history kept for watches; an older start revision is `compacted`.
    #[arg(long, env = "CONCORDANCE_HISTORY_REVISIONS", default_value_t = crate::store::state_machine::HISTORY_RETAINED_REVISIONS, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_revisions: u64,
    /// Bytes of change history kept for watches at most (the oldest goes first; an older
    /// start revision is `compacted`), besides --history-revisions. Default: a quarter of
    /// --quota-bytes. A number of bytes, or with KiB, MiB or GiB.
    #[arg(long, env = "CONCORDANCE_HISTORY_BYTES", value_parser = parse_bytes)]
    pub history_bytes: Option<u64>,
    /// Seconds an `Idempotency-Key`'s answer is kept (a retry after that applies again).
    #[arg(long, env = "CONCORDANCE_IDEMPOTENCY_RETENTION_SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_retention_secs: u64,
    /// Threads serving HTTP; each accepts and serves its own connections (default: one per CPU core).
    /// With one, Raft runs on it too: best for members that share cores (docs/journal/benchmarks.md).
    #[arg(long, env = "CONCORDANCE_HTTP_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub http_threads: Option<u16>,
    /// Seconds a connection has to send a whole request head, counted from when it opened or
    /// answered its previous request: the header-read and the idle timeout in one. A silent or
    /// slow client is disconnected; an answer being streamed (a watch) is not.
    #[arg(long, env = "CONCORDANCE_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// HTTP connections open at once, from everyone (each takes a file descriptor).
    #[arg(long, env = "CONCORDANCE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(2..))]
    pub max_connections: u32,
    /// HTTP connections open at once from one client address (the cluster's members excepted).
    #[arg(long, env = "CONCORDANCE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: u32,
    /// Of --max-connections, how many only the cluster's members may take, so that clients
    /// holding every other connection cannot cut the peers off.
    #[arg(
        long,
        env = "CONCORDANCE_PEER_CONNECTION_RESERVE",
        default_value_t = 64
    )]
    pub peer_connection_reserve: u32,
    /// Writes a member holds at once: on the leader, writes waiting for Raft; on a follower,
    /// writes queued for the leader. More are answered 503 `overloaded` with `Retry-After`,
    /// and nothing is proposed.
    #[arg(long, env = "CONCORDANCE_MAX_PENDING_WRITES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_writes: u32,
    /// Entries the leader may have committed but not applied; past it, new writes are
    /// answered 503 `overloaded` with `Retry-After` until it catches up.
    #[arg(long, env = "CONCORDANCE_MAX_APPLY_BACKLOG", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_apply_backlog: u64,
    /// Watch streams one credential may hold open on a member at once; more are answered
    /// 429 `too_many_watches`.
    #[arg(long, env = "CONCORDANCE_MAX_WATCHES_PER_CREDENTIAL", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watches_per_credential: u32,
    /// Seconds between the leader's checks that every voter's state is the same (each hashes
    /// its keys, leases and idempotency answers at one log index); a member that differs is
    /// fenced. 0: no periodic check (a member still asks for one when it starts).
    #[arg(long, env = "CONCORDANCE_STATE_CHECK_INTERVAL_SECS", default_value_t = crate::integrity::DEFAULT_INTERVAL.as_secs())]
    pub state_check_interval_secs: u64,
    /// Bytes the data dir may take on disk (database, Raft log, snapshots); past it the
    /// member raises the `no_space` alarm and the cluster refuses writes that grow the state.
    /// A number of bytes, or with KiB, MiB or GiB.
    #[arg(long, env = "CONCORDANCE_QUOTA_BYTES", default_value = "2GiB", value_parser = parse_bytes)]
    pub quota_bytes: u64,
    /// Bytes the data dir's volume must keep free; under it the member raises the `no_space`
    /// alarm, as over its quota. A number of bytes, or with KiB, MiB or GiB.
    #[arg(long, env = "CONCORDANCE_RESERVE_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    pub reserve_bytes: u64,
    /// Where to leave `{"code","message"}` when the node refuses to start or stops with an
    /// error (default: /dev/termination-log, written only where it exists, as in a container).
    #[arg(long, env = "CONCORDANCE_TERMINATION_LOG", value_name = "PATH")]
    pub termination_log: Option<PathBuf>,
}

/// A size: a number of bytes, or with a `KiB`, `MiB` or `GiB` suffix.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use bytes, KiB, MiB or GiB"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a size in bytes (e.g. 2GiB, 64MiB, 1048576)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A validated configuration: what the node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub listen: SocketAddr,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    pub join: Option<String>,
    pub force_new_cluster: Option<String>,
    /// The admin key: the flag's, or the first of the admin key file at start.
    pub api_key: Option<String>,
    pub agent_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub agent_key_file: Option<PathBuf>,
    pub credentials_file: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub snapshot_entries: u64,
    pub history_revisions: u64,
    pub history_bytes: u64,
    pub idempotency_retention: std::time::Duration,
    pub http_threads: usize,
    pub header_timeout: std::time::Duration,
    pub connections: crate::connections::Limits,
    pub writes: crate::service::WriteLimits,
    pub max_watches_per_credential: usize,
    /// `None`: no periodic state check.
    pub state_check_interval: Option<std::time::Duration>,
    pub space: crate::space::SpaceLimits,
    /// `None`: plaintext HTTP.
    pub tls: Option<crate::tls::Settings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{flag} is empty; set {env} (or pass {flag}=<key>)")]
    EmptyKey {
        flag: &'static str,
        env: &'static str,
    },
    #[error(
        "--agent-key needs --api-key too: without an admin key nobody could manage the cluster"
    )]
    AgentKeyWithoutAdmin,
    #[error(
        "--credentials-file needs --api-key too: members reach each other with the admin key \
         (until peer TLS), and it stays the cluster's own credential"
    )]
    CredentialsWithoutAdmin,
    #[error("{0}")]
    KeyFile(String),
    #[error(
        "refusing to serve {0} without keys: anyone who can reach it could read and change everything. \
         Set CONCORDANCE_API_KEY (and CONCORDANCE_AGENT_API_KEY), listen on 127.0.0.1, \
         or pass --insecure-no-auth"
    )]
    OpenWithoutKeys(SocketAddr),
    #[error("--listen {0:?} is not an address: {1}")]
    BadListen(String, String),
    #[error("--node-id {0:?} is not a valid name: use 1-63 letters, digits, '.', '-' or '_'")]
    BadName(String),
    #[error("--join {0:?} is not host:port")]
    BadJoin(String),
    #[error("cannot determine a default for {0}; pass it explicitly")]
    NoDefault(&'static str),
    #[error("--snapshot-entries must be at least 1")]
    BadSnapshotEntries,
    #[error(
        "--peer-connection-reserve ({reserve}) must be below --max-connections ({total}): clients would get no connection at all"
    )]
    ReserveTooLarge { reserve: u32, total: u32 },
    #[error("--peer-names: {0}")]
    BadPeerName(String),
}

pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn key(
    value: Option<String>,
    flag: &'static str,
    env: &'static str,
) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.is_empty() => Err(ConfigError::EmptyKey { flag, env }),
        Some(v) => Ok(Some(v)),
        // clap treats an empty variable as unset; an empty variable is still a mistake.
        None if std::env::var_os(env).is_some_and(|v| v.is_empty()) => {
            Err(ConfigError::EmptyKey { flag, env })
        }
        None => Ok(None),
    }
}

fn hostname() -> Option<String> {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
}

impl ServeArgs {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let first_of = |file: &Option<PathBuf>| -> Result<Option<String>, ConfigError> {
            let Some(path) = file else { return Ok(None) };
            let keys = crate::auth::key_files::read(path)
                .map_err(|e| ConfigError::KeyFile(e.to_string()))?;
            Ok(keys.into_iter().next())
        };
        // A key file wins over the key: an operator gives both, so that a build before key
        // files still finds its key.
        let api_key = match first_of(&self.api_key_file)? {
            Some(first) => Some(first),
            None => key(self.api_key, "--api-key", "CONCORDANCE_API_KEY")?,
        };
        let agent_key = match first_of(&self.agent_key_file)? {
            Some(first) => Some(first),
            None => key(self.agent_key, "--agent-key", "CONCORDANCE_AGENT_API_KEY")?,
        };
        if agent_key.is_some() && api_key.is_none() {
            return Err(ConfigError::AgentKeyWithoutAdmin);
        }
        if self.credentials_file.is_some() && api_key.is_none() {
            return Err(ConfigError::CredentialsWithoutAdmin);
        }
        let listen = self
            .listen
            .to_socket_addrs()
            .map_err(|e| ConfigError::BadListen(self.listen.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| {
                ConfigError::BadListen(self.listen.clone(), "resolves to nothing".into())
            })?;
        if api_key.is_none() && !listen.ip().is_loopback() && !self.insecure_no_auth {
            return Err(ConfigError::OpenWithoutKeys(listen));
        }
        let node_name = match self.node_id {
            Some(n) => n,
            None => hostname()
                .map(|h| h.split('.').next().unwrap_or(&h).to_string())
                .ok_or(ConfigError::NoDefault("--node-id"))?,
        };
        if !valid_name(&node_name) {
            return Err(ConfigError::BadName(node_name));
        }
        let advertise = match self.advertise {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                format!(
                    "{}:{}",
                    hostname().ok_or(ConfigError::NoDefault("--advertise"))?,
                    listen.port()
                )
            }
            None => listen.to_string(),
        };
        if let Some(j) = &self.join
            && (j.is_empty() || !j.contains(':'))
        {
            return Err(ConfigError::BadJoin(j.clone()));
        }
        let data_dir = match self.data_dir {
            Some(d) => d,
            None => dirs::data_dir()
                .ok_or(ConfigError::NoDefault("--data-dir"))?
                .join("concordance")
                .join(&node_name),
        };
        if self.snapshot_entries == 0 {
            return Err(ConfigError::BadSnapshotEntries);
        }
        if self.peer_connection_reserve >= self.max_connections {
            return Err(ConfigError::ReserveTooLarge {
                reserve: self.peer_connection_reserve,
                total: self.max_connections,
            });
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::Settings {
                cert,
                key,
                client_ca: self.tls_client_ca,
                peer_ca: self.peer_ca,
                peer_names: self
                    .peer_names
                    .iter()
                    .filter(|n| !n.trim().is_empty())
                    .map(|n| crate::tls::NamePattern::parse(n))
                    .collect::<Result<_, _>>()
                    .map_err(ConfigError::BadPeerName)?,
                advertise_host: host_of(&advertise).to_string(),
                accept_plaintext: self.accept_plaintext,
                dial_peers_plaintext: self.dial_peers_plaintext,
            }),
            // clap requires both or neither.
            _ => None,
        };
        Ok(Config {
            node_name,
            listen,
            advertise,
            data_dir,
            bootstrap: self.bootstrap,
            join: self.join,
            force_new_cluster: self.force_new_cluster,
            api_key,
            agent_key,
            api_key_file: self.api_key_file,
            agent_key_file: self.agent_key_file,
            credentials_file: self.credentials_file,
            audit_log: self.audit_log,
            snapshot_entries: self.snapshot_entries,
            history_revisions: self.history_revisions,
            history_bytes: self.history_bytes.unwrap_or(self.quota_bytes / 4),
            idempotency_retention: std::time::Duration::from_secs(self.idempotency_retention_secs),
            http_threads: match self.http_threads {
                Some(n) => usize::from(n),
                None => std::thread::available_parallelism().map_or(1, usize::from),
            },
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            connections: crate::connections::Limits {
                total: self.max_connections as usize,
                per_address: self.max_connections_per_address as usize,
                peer_reserve: self.peer_connection_reserve as usize,
            },
            writes: crate::service::WriteLimits {
                max_pending: self.max_pending_writes as usize,
                max_apply_backlog: self.max_apply_backlog,
            },
            max_watches_per_credential: self.max_watches_per_credential as usize,
            state_check_interval: (self.state_check_interval_secs > 0)
                .then(|| std::time::Duration::from_secs(self.state_check_interval_secs)),
            space: crate::space::SpaceLimits {
                quota_bytes: self.quota_bytes,
                reserve_bytes: self.reserve_bytes,
            },
            tls,
        })
    }
}

/// The host of `host:port` (`[v6]:port` too).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["concordance"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .expect("clap parses")
            .serve
            .validate()
    }

    #[test]
    fn a_key_file_gives_the_admin_key_its_first_line_and_wins_over_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-keys");
        std::fs::write(
            &file,
            "# keys\nfirst-admin-key-0123456789\nsecond-admin-key-0123456789\n",
        )
        .unwrap();
        let flag = format!("--api-key-file={}", file.display());
        let c = parse(&[&flag]).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("first-admin-key-0123456789"));
        assert_eq!(c.api_key_file.as_deref(), Some(file.as_path()));
        let both = parse(&[&flag, "--api-key=another-admin-key-0123456789"]).unwrap();
        assert_eq!(
            both.api_key.as_deref(),
            Some("first-admin-key-0123456789"),
            "the file wins over the key"
        );
        std::fs::write(&file, "short\n").unwrap();
        let e = parse(&[&flag]).unwrap_err().to_string();
        assert!(e.contains("at least 16") && e.contains("admin-keys"), "{e}");
        let missing = format!("--api-key-file={}", dir.path().join("none").display());
        let e = parse(&[&missing]).unwrap_err().to_string();
        assert!(e.contains("cannot read the key file"), "{e}");
    }

    #[test]
    fn sizes_read_with_or_without_a_unit() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        for bad in ["", "MiB", "2GB", "-1", "99999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        let c = parse(&["--quota-bytes", "100MiB", "--reserve-bytes", "1MiB"]).unwrap();
        assert_eq!(c.space.quota_bytes, 100 << 20);
        assert_eq!(c.space.reserve_bytes, 1 << 20);
    }

    #[test]
    fn both_flag_spellings_work() {
        let c = parse(&[
            "--node-id=a",
            "--listen",
            "127.0.0.1:5000",
            "--data-dir=/tmp/x",
        ])
        .unwrap();
        assert_eq!(c.node_name, "a");
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.advertise, "127.0.0.1:5000");
    }

    #[test]
    fn empty_key_names_the_variable() {
        let err = parse(&["--node-id=a", "--api-key="])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONCORDANCE_API_KEY"), "{err}");
        let err = parse(&["--node-id=a", "--api-key=k", "--agent-key="])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONCORDANCE_AGENT_API_KEY"), "{err}");
    }

    #[test]
    fn open_address_without_keys_is_refused_unless_insecure() {
        let err = parse(&["--node-id=a", "--listen=0.0.0.0:4100"]).unwrap_err();
        assert!(matches!(err, ConfigError::OpenWithoutKeys(_)));
        assert!(parse(&["--node-id=a", "--listen=0.0.0.0:4100", "--insecure-no-auth"]).is_ok());
        let c = parse(&["--node-id=a", "--listen=0.0.0.0:4100", "--api-key=k"]).unwrap();
        assert!(c.advertise.ends_with(":4100") && !c.advertise.starts_with("0.0.0.0"));
    }

    #[test]
    fn tls_flags_come_in_pairs_and_peer_names_are_checked() {
        let clap_refuses = |args: &[&str]| {
            let mut all = vec!["concordance"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).is_err()
        };
        assert!(
            clap_refuses(&["--tls-cert=c.pem"]),
            "a certificate without its key"
        );
        assert!(
            clap_refuses(&["--peer-ca=ca.pem"]),
            "a peer CA without a certificate"
        );
        assert!(clap_refuses(&[
            "--tls-cert=c",
            "--tls-key=k",
            "--peer-names=a.test"
        ]));
        let c = parse(&[
            "--node-id=a",
            "--advertise=node-a.peers.test:4100",
            "--tls-cert=c",
            "--tls-key=k",
            "--peer-ca=ca",
            "--peer-names=*.peers.test,10.0.0.1",
        ])
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.advertise_host, "node-a.peers.test");
        assert_eq!(tls.peer_names.len(), 2);
        let err = parse(&[
            "--node-id=a",
            "--tls-cert=c",
            "--tls-key=k",
            "--peer-ca=ca",
            "--peer-names=*.*.test",
        ])
        .unwrap_err();
        assert!(err.to_string().starts_with("--peer-names:"), "{err}");
        assert!(parse(&["--node-id=a"]).unwrap().tls.is_none());
        assert_eq!(host_of("[::1]:4100"), "::1");
    }

    #[test]
    fn bad_names_and_joins_are_refused() {
        assert!(matches!(
            parse(&["--node-id=a b"]),
            Err(ConfigError::BadName(_))
        ));
        assert!(matches!(
            parse(&["--node-id=a", "--join=nohost"]),
            Err(ConfigError::BadJoin(_))
        ));
        assert!(Cli::try_parse_from(["concordance", "--bootstrap", "--join=a:1"]).is_err());
    }

    #[test]
    fn connection_limits_have_defaults_and_a_reserve_must_leave_room_for_clients() {
        let c = parse(&["--node-id=a"]).unwrap();
        assert_eq!(c.header_timeout, std::time::Duration::from_secs(10));
        assert_eq!(
            c.connections,
            crate::connections::Limits {
                total: 4096,
                per_address: 1024,
                peer_reserve: 64
            }
        );
        let err = parse(&[
            "--node-id=a",
            "--max-connections=10",
            "--peer-connection-reserve=10",
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::ReserveTooLarge { .. }), "{err}");
        assert!(Cli::try_parse_from(["concordance", "--header-timeout-secs=0"]).is_err());
    }
}
