//! Consensus: Raft's settings and handle, what a follower knows of its leader, and the network
//! that carries Raft's messages between nodes (streams, wire types).

pub mod client;
pub mod network;
pub mod stream;
pub mod upgrade;
pub mod wire;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::SnapshotPolicy;

use crate::clock::monotonic_ms;
use crate::store::types::TypeConfig;

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;

// A follower calls an election after hearing no leader for the leader lease (openraft uses
// the maximum election timeout) plus its random election timeout: 500 + 250..500 ms here, so
// a killed leader is replaced in under a second while seven heartbeats may go missing first.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 250;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 500;

/// How long a write or a linearizable read waits for a quorum before failing.
pub const QUORUM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Raft's settings: timings above, a snapshot every `snapshot_entries` applied entries.
pub fn config(snapshot_entries: u64) -> Result<openraft::Config, openraft::ConfigError> {
    let c = openraft::Config {
        cluster_name: "concordance".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election: it cannot know what was committed
        // (the committed index and the state machine are not fsynced), and restoring its old
        // leadership let it answer linearizable reads from a stale state after a restart.
        enable_leader_restore: Some(false),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_entries),
        max_in_snapshot_log_to_keep: snapshot_entries.min(1000),
        ..Default::default()
    };
    c.validate()
}

/// A follower's record of the appends and snapshots it accepted from a leader since this
/// start, for its readiness.
#[derive(Debug, Default)]
pub struct LeaderContact {
    /// [`monotonic_ms`] of the last one.
    last_ms: AtomicU64,
    /// Set once an accepted append showed this node holding every entry the leader had
    /// committed: until then its membership may be a stale one from before it was removed (a
    /// leader's first probe after a re-join carries no entries).
    log_confirmed: AtomicBool,
}

impl LeaderContact {
    /// Called when a leader's append or snapshot was accepted; `holds_commit` when it left
    /// this node's log holding every entry the leader had committed.
    pub fn record(&self, holds_commit: bool) {
        if holds_commit {
            self.log_confirmed.store(true, Ordering::Relaxed);
        }
        self.last_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long since the last append or snapshot accepted (`None`: none since this start).
    pub fn since_last(&self) -> Option<std::time::Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            last => Some(std::time::Duration::from_millis(
                monotonic_ms().saturating_sub(last),
            )),
        }
    }

    pub fn log_confirmed(&self) -> bool {
        self.log_confirmed.load(Ordering::Relaxed)
    }
}

/// The node's current Raft metrics (a copy).
pub fn metrics_of(raft: &Raft) -> openraft::RaftMetrics<TypeConfig> {
    use openraft::async_runtime::watch::WatchReceiver;
    raft.metrics().borrow_watched().clone()
}
