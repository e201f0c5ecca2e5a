//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;

#[derive(Debug, Parser)]
#[command(
    name = "concordancectl",
    version,
    about = "Command-line client of a Concordance cluster",
    after_help = "Values are JSON when they parse as JSON (42, true, {\"a\":1}, \"quoted\"), \
                  else plain strings; `-` reads the value from stdin."
)]
pub struct Cli {
    /// Cluster endpoints (`host:port` or URLs), comma-separated. The client follows the leader
    /// and moves on from endpoints that fail.
    #[arg(
        long,
        global = true,
        env = "CONCORDANCE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:4100"
    )]
    pub endpoints: Vec<String>,
    /// API key (admin or agent). Never printed.
    #[arg(
        long,
        global = true,
        env = "CONCORDANCE_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// The cluster's CA certificate (PEM): speak TLS and trust only nodes it signed.
    #[arg(long, global = true, env = "CONCORDANCE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for nodes that ask for one (--tls-client-ca).
    #[arg(
        long,
        global = true,
        env = "CONCORDANCE_CERT_FILE",
        value_name = "FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(
        long,
        global = true,
        env = "CONCORDANCE_KEY_FILE",
        value_name = "FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// Output: readable text, or JSON for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Bound on each request attempt, e.g. `10s`.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// How long to keep retrying a call that failed in a way another attempt may fix (no
    /// endpoint answered, no quorum, a leader change); `0s` disables retries.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    pub retry_for: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sets a key.
    Put {
        key: String,
        /// JSON, a plain string, or `-` for stdin.
        value: String,
        /// Attach the key to this lease (it goes when the lease ends).
        #[arg(long)]
        lease: Option<u64>,
        /// Take the value as a string even if it parses as JSON.
        #[arg(long)]
        string: bool,
    },
    /// Reads a key (exit 1 with `key_not_found` if it does not exist).
    Get {
        key: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Lists keys under a prefix.
    #[command(visible_alias = "ls")]
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys (default: all, fetched page by page).
        #[arg(long)]
        limit: Option<usize>,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Deletes a key, or every key under a prefix.
    #[command(visible_alias = "delete")]
    Del {
        key: String,
        /// Delete every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// Runs an atomic transaction from a JSON file (`-`: stdin) and/or flags.
    Txn(TxnArgs),
    /// Leases: grant, keep alive, revoke, inspect.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Takes a lock; runs COMMAND while holding it, or holds it until Ctrl-C. The fencing
    /// token is printed, and given to COMMAND as CONCORDANCE_FENCING_TOKEN.
    Lock {
        name: String,
        /// The lease's time to live (kept alive while held).
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        ttl: Duration,
        /// How long to wait for the lock.
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        /// Fail at once (`lock_held`) if someone holds it.
        #[arg(long)]
        no_wait: bool,
        /// The command to run under the lock (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Leader elections on leases.
    #[command(subcommand)]
    Election(ElectionCommand),
    /// Streams changes to a key or a prefix.
    Watch {
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (default: changes from now on).
        #[arg(long)]
        from_revision: Option<u64>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<usize>,
    },
    /// The cluster's status as an endpoint sees it.
    Status,
    /// Membership (admin key).
    #[command(subcommand)]
    Member(MemberCommand),
    /// This tool's, the node's and the cluster's versions.
    Version,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Serve from the endpoint's replica as it is (may be stale, works without quorum).
    #[arg(long)]
    pub serializable: bool,
}

#[derive(Debug, Args)]
pub struct TxnArgs {
    /// A transaction as JSON (`{"compare": [...], "success": [...], "failure": [...]}`);
    /// `-` reads stdin. Flags add to it.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// Condition: KEY exists.
    #[arg(long, value_name = "KEY")]
    pub if_exists: Vec<String>,
    /// Condition: KEY does not exist.
    #[arg(long, value_name = "KEY")]
    pub if_missing: Vec<String>,
    /// Condition: KEY's value equals VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    pub if_value: Vec<String>,
    /// Condition: KEY was last changed at REVISION.
    #[arg(long, value_name = "KEY=REVISION")]
    pub if_mod_revision: Vec<String>,
    /// On success: set KEY.
    #[arg(long, value_name = "KEY=VALUE")]
    pub put: Vec<String>,
    /// On success: read KEY.
    #[arg(long, value_name = "KEY")]
    pub get: Vec<String>,
    /// On success: delete KEY.
    #[arg(long, value_name = "KEY")]
    pub delete: Vec<String>,
    /// On failure: set KEY.
    #[arg(long, value_name = "KEY=VALUE")]
    pub else_put: Vec<String>,
    /// On failure: read KEY.
    #[arg(long, value_name = "KEY")]
    pub else_get: Vec<String>,
    /// On failure: delete KEY.
    #[arg(long, value_name = "KEY")]
    pub else_delete: Vec<String>,
    /// Exit 1 when the conditions did not hold.
    #[arg(long)]
    pub require_success: bool,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// A new lease with this time to live (e.g. `30s`, `5m`).
    Grant {
        #[arg(value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Restarts a lease's TTL once, or every third of it with `--follow` until Ctrl-C.
    #[command(visible_alias = "keep-alive")]
    Keepalive {
        id: u64,
        #[arg(long)]
        follow: bool,
    },
    /// Ends a lease now, deleting its keys.
    Revoke { id: u64 },
    /// Every lease.
    List,
    /// One lease and its keys.
    Get { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum ElectionCommand {
    /// Campaigns with VALUE; once leading, holds leadership until Ctrl-C, then resigns.
    Campaign {
        name: String,
        value: String,
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        ttl: Duration,
        /// How long to wait to lead.
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Prints the leader, then each change of leader (until Ctrl-C, or `--once`).
    Observe {
        name: String,
        #[arg(long)]
        once: bool,
    },
    /// Gives up leadership (or a place in the queue) held by LEASE.
    Resign { name: String, lease: u64 },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Members, roles and lag.
    List,
    /// Adds a node (normally nodes join by themselves with `concordance --join`).
    #[command(visible_alias = "join")]
    Add {
        node_id: String,
        /// Its `host:port`.
        address: String,
        /// Its Raft id (`concordance inspect` prints it, in hex).
        #[arg(long, value_parser = parse_raft_id)]
        raft_id: u64,
        /// Refuse if the membership changed since this version (see `status`).
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Removes a node.
    Remove {
        node_id: String,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Hands leadership to a voter (default: the most caught-up one that is answering).
    TransferLeader {
        #[arg(long)]
        to: Option<String>,
    },
}

/// `250ms`, `10s`, `5m`, `2h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 10s, 5m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(d)
}

/// Decimal, `0x`-prefixed hex, or 16 hex digits as `concordance inspect` prints.
pub fn parse_raft_id(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a Raft id");
    if let Some(hex) = s.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).map_err(|_| bad());
    }
    if s.len() == 16 {
        return u64::from_str_radix(s, 16).map_err(|_| bad());
    }
    s.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn raft_ids() {
        assert_eq!(parse_raft_id("17"), Ok(17));
        assert_eq!(parse_raft_id("0x11"), Ok(17));
        assert_eq!(parse_raft_id("0000000000000011"), Ok(17));
    }

    #[test]
    fn arguments_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
