//! What the HTTP API asks of a node: propose commands, make reads linearizable, report
//! status and readiness. Keeps the API layer free of Raft details.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use concordance_client::ClusterStatus;
use concordance_client::Consistency;
use concordance_client::ErrorCode;
use concordance_client::MemberStatus;
use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::async_runtime::Instant as _;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::error::answer;
use crate::metrics::Metrics;
use crate::metrics::RaftGauges;
use crate::raft::LeaderContact;
use crate::raft::QUORUM_TIMEOUT;
use crate::raft::Raft;
use crate::raft::client::PeerContext;
use crate::raft::wire;
use crate::store::Store;
use crate::store::reader::KvReader;
use crate::store::records::AlarmKind;
use crate::store::records::AlarmRecord;
use crate::store::records::Command;
use crate::store::records::IdentityRecord;
use crate::store::records::Operation;
use crate::store::records::Response;

/// A leader that heard from no quorum for this long refuses writes at once.
pub const STALE_QUORUM_ACK: Duration = Duration::from_millis(2500);
/// A voter is "caught up" (ready) when it has applied within this many entries of the commit.
pub const READY_LAG_ENTRIES: u64 = 100;

/// The pause before a leader asks its quorum again to confirm a read index.
const READ_INDEX_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a request that meets no leader (an election, a leader handing over) waits for
/// one: the time the cluster promises to elect a new leader in.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);

/// How often a request waiting for a new leader looks again.
const LEADER_POLL: Duration = Duration::from_millis(10);

/// Why this node did not take a write.
enum Refusal {
    /// Not the leader: openraft proposed nothing. The leader it knows, if any.
    NotLeader(Option<u64>),
    Failed(NodeError),
}

impl From<NodeError> for Refusal {
    fn from(e: NodeError) -> Self {
        Refusal::Failed(e)
    }
}

pub struct Node {
    pub raft: Raft,
    /// The thread Raft runs on; append streams from the leader are served there.
    pub raft_runtime: tokio::runtime::Handle,
    pub reader: KvReader,
    /// Hands each applied batch's changes to every watch (one history read for all).
    pub changes: crate::change_feed::ChangeFeed,
    pub store: Store,
    pub metrics: Metrics,
    pub identity: IdentityRecord,
    /// How this node reaches its peers (and the cluster UUID it stamps on messages).
    pub peers: PeerContext,
    /// Serializes membership changes made through this node.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// The appends and snapshots accepted from a leader since this start.
    pub leader_contact: Arc<LeaderContact>,
    /// Sends this follower's writes to the leader, batched under load.
    pub forwarder: crate::forward::Forwarder,
    /// Set once, since this start, the node has applied everything committed when it reached a
    /// leader. Its applied state is not fsynced, so after a crash it may be behind what it
    /// served before: serializable reads wait for this, so a client never sees a node go back.
    pub caught_up_since_start: std::sync::atomic::AtomicBool,
    /// Cancelled on SIGTERM: requests that could wait for minutes (watch streams, lock and
    /// election waits) end then, so the node can hand over leadership and stop.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Writes taken by this node's Raft and not yet answered, and whether it takes new ones:
    /// a leader handing over refuses new writes (they wait for the next leader) and lets
    /// these finish first, as it could not answer them once another node leads.
    pub proposals: Proposals,
    pub write_limits: WriteLimits,
    pub watches: OpenWatches,
    /// This member's disk space as last measured (see [`crate::space`]).
    pub space: Arc<crate::space::SpaceWatch>,
    /// The storage quotas per key prefix the leader checks writes against.
    pub quotas: Arc<crate::quota::Quotas>,
}

/// Bounds on the writes a node holds, past which new ones are refused as `overloaded` (and
/// nothing is proposed) instead of queueing without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// Writes waiting for Raft on the leader, and writes queued on a follower for the leader.
    pub max_pending: usize,
    /// Entries committed but not yet applied on the leader.
    pub max_apply_backlog: u64,
}

/// Watch streams open on this node, per credential, with the bound each credential is held
/// to, so that one credential's watches cannot take every connection and all the memory
/// their catch-up needs.
pub struct OpenWatches {
    open: std::sync::Mutex<std::collections::HashMap<std::sync::Arc<str>, usize>>,
    max_per_credential: usize,
}

impl OpenWatches {
    pub fn new(max_per_credential: usize) -> Self {
        Self {
            open: Default::default(),
            max_per_credential,
        }
    }
}

/// One open watch, counted until it is dropped (the stream ended or the client went away).
pub struct WatchPermit {
    node: SharedNode,
    credential: std::sync::Arc<str>,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.node.watches.open.lock().expect("not poisoned");
        let n = open.entry(self.credential.clone()).or_default();
        *n = n.saturating_sub(1);
        self.node.metrics.set_watches(&self.credential, *n);
    }
}

/// Counts a new watch of `credential` in, or refuses it at the bound.
pub fn open_watch(
    node: &SharedNode,
    credential: std::sync::Arc<str>,
) -> Result<WatchPermit, NodeError> {
    let mut open = node.watches.open.lock().expect("not poisoned");
    let n = open.entry(credential.clone()).or_default();
    if *n >= node.watches.max_per_credential {
        return Err(NodeError::Rejected(
            ErrorCode::TooManyWatches,
            format!(
                "the {credential} credential has {n} watch streams open on this member, its \
                 bound (--max-watches-per-credential): close one first",
            ),
        ));
    }
    *n += 1;
    node.metrics.set_watches(&credential, *n);
    Ok(WatchPermit {
        node: node.clone(),
        credential,
    })
}

pub struct Proposals {
    in_flight: std::sync::atomic::AtomicUsize,
    refused: std::sync::atomic::AtomicBool,
    /// While refused: the voter leadership is moving to, named to the refused.
    successor: std::sync::atomic::AtomicU64,
    max_in_flight: usize,
}

/// Why a proposal was not taken.
enum NotTaken {
    /// Leadership is moving to this voter.
    HandingOver(u64),
    /// This many proposals are already in flight.
    Full(usize),
}

impl Proposals {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: Default::default(),
            refused: Default::default(),
            successor: Default::default(),
            max_in_flight,
        }
    }

    /// Counts a proposal in, or refuses it: naming the voter about to lead, or as one too many.
    fn enter(&self) -> Result<ProposalGuard<'_>, NotTaken> {
        // Counted before the check, and `refuse` sets before it counts (both SeqCst): a
        // proposal either sees the refusal or is seen by `drained`.
        let before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = ProposalGuard(&self.in_flight);
        if self.refused.load(Ordering::SeqCst) {
            return Err(NotTaken::HandingOver(self.successor.load(Ordering::SeqCst)));
        }
        if before >= self.max_in_flight {
            return Err(NotTaken::Full(before));
        }
        Ok(guard)
    }

    /// Refuses new proposals while leadership moves to `successor`; `None` takes them again.
    pub fn refuse(&self, successor: Option<u64>) {
        if let Some(id) = successor {
            self.successor.store(id, Ordering::SeqCst);
        }
        self.refused.store(successor.is_some(), Ordering::SeqCst);
    }

    /// Waits until no proposal is in flight, at most `limit`.
    pub async fn drained(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
        true
    }
}

struct ProposalGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for ProposalGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub type SharedNode = Arc<Node>;

/// A copy of Raft's metrics, as the checks before a proposal or a read read them.
type RaftMetrics = openraft::RaftMetrics<crate::store::types::TypeConfig>;

pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Node {
    /// The name of member `id`. This node's own name is known even while it is out of the
    /// latest membership: a leader that is removing itself still leads until the change
    /// commits, and must still name itself leader.
    pub(crate) fn member_name(&self, id: u64) -> Option<String> {
        if id == self.identity.raft_id {
            return Some(self.identity.name.clone());
        }
        let m = crate::raft::metrics_of(&self.raft)
            .membership_config
            .clone();
        m.membership().get_node(&id).map(|n| n.name.clone())
    }

    pub(crate) fn not_leader_error(&self, leader: Option<u64>) -> NodeError {
        let metrics = crate::raft::metrics_of(&self.raft);
        let node =
            leader.and_then(|l| metrics.membership_config.membership().get_node(&l).cloned());
        match node {
            Some(n) => NodeError::NotLeader {
                name: n.name,
                address: n.addr,
            },
            None => NodeError::NoQuorum(
                "no leader is known: the cluster has no quorum right now".into(),
            ),
        }
    }

    /// The leader's address, if a leader other than this node is known.
    fn leader_addr(&self) -> Option<(u64, String)> {
        let m = crate::raft::metrics_of(&self.raft);
        let leader = m.current_leader.filter(|l| *l != m.id)?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node.addr))
    }

    /// Fails fast when this leader has not heard from a quorum lately (it is partitioned).
    fn check_leader_quorum(&self, m: &RaftMetrics) -> Result<(), NodeError> {
        if m.state != ServerState::Leader {
            return Ok(());
        }
        // None: elected moments ago (by a quorum's votes), no heartbeat round answered yet.
        let stale = m
            .last_quorum_acked
            .as_ref()
            .is_some_and(|t| (*t).into_inner().elapsed() > STALE_QUORUM_ACK);
        let alone = m.membership_config.membership().voter_ids().count() == 1;
        if stale && !alone {
            return Err(NodeError::NoQuorum(
                "this leader has not heard from a quorum lately: writes cannot commit".into(),
            ));
        }
        Ok(())
    }

    /// Refuses a write while the leader has more committed entries left to apply than its
    /// bound: proposing more would only lengthen the wait of every write behind them.
    fn check_apply_backlog(&self, m: &RaftMetrics) -> Result<(), NodeError> {
        #[allow(deprecated)]
        let committed = m.committed.map_or(0, |c| c.index);
        let applied = m.last_applied.map_or(0, |a| a.index);
        let backlog = committed.saturating_sub(applied);
        if backlog > self.write_limits.max_apply_backlog {
            self.metrics.write_shed("apply_backlog");
            return Err(NodeError::Overloaded(format!(
                "the leader has {backlog} committed entries left to apply, over its bound \
                 (--max-apply-backlog {}); nothing was proposed: retry after Retry-After",
                self.write_limits.max_apply_backlog
            )));
        }
        Ok(())
    }

    /// Proposes one command through Raft and waits for its applied answer. A follower
    /// forwards it to the leader.
    pub async fn propose(
        &self,
        op: Operation,
        idempotency_key: Option<String>,
    ) -> Result<Response, NodeError> {
        let cmd = Command {
            op,
            idempotency_key,
            proposed_at_ms: now_ms(),
        };
        // A follower forwards to the leader it knows; the leader, or a node that knows no
        // leader, proposes here. A refusal as not the leader (between leaders, or a leader
        // that just handed over) proposed nothing, so the write waits for the next leader.
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let refused = match self.leader_addr() {
                Some((leader, addr)) => match self.forwarder.write(leader, addr, cmd.clone()).await
                {
                    Err(e) if e.is_not_leader() => e,
                    answered => return answered,
                },
                None => match self.propose_here(cmd.clone()).await {
                    Err(r @ Refusal::NotLeader(_)) => self.refusal_error(r),
                    Err(Refusal::Failed(e)) => return Err(e),
                    Ok(r) => return Ok(r),
                },
            };
            if !self.await_leader(deadline).await {
                return Err(refused);
            }
        }
    }

    fn refusal_error(&self, refusal: Refusal) -> NodeError {
        match refusal {
            Refusal::NotLeader(leader) => self.not_leader_error(leader),
            Refusal::Failed(e) => e,
        }
    }

    /// After a refusal as not the leader: pauses, then waits until a leader is known, at
    /// most until `deadline`. The pause keeps a leader that refuses while it hands over, or
    /// one elected a moment ago and not ready yet, from being asked in a tight loop.
    async fn await_leader(&self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(LEADER_POLL.min(left)).await;
        let left = deadline.saturating_duration_since(Instant::now());
        !left.is_zero()
            && self
                .raft
                .wait(Some(left))
                .metrics(|m| m.current_leader.is_some(), "a leader")
                .await
                .is_ok()
    }

    /// The leader's side of a follower's batch: proposes the writes together, so Raft appends
    /// and replicates them as one, and answers each in order.
    pub async fn propose_forwarded(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<Response, NodeError>> {
        futures::future::join_all(commands.into_iter().map(|c| self.propose_local(c))).await
    }

    /// Proposes on this node only (the leader's side of a forwarded write). Refused with no
    /// leader known (elected a moment ago, not ready yet), it asks again itself: the follower
    /// would only hear `no_quorum`.
    pub async fn propose_local(&self, cmd: Command) -> Result<Response, NodeError> {
        self.asking_again_while_leaderless(|| self.propose_here(cmd.clone()))
            .await
    }

    /// Runs `attempt` until it is not refused with no leader known, within [`LEADER_WAIT`].
    async fn asking_again_while_leaderless<T, F, Fut>(&self, mut attempt: F) -> Result<T, NodeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Refusal>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            match attempt().await {
                Err(Refusal::NotLeader(None)) if self.await_leader(deadline).await => {}
                answered => return answered.map_err(|r| self.refusal_error(r)),
            }
        }
    }

    async fn propose_here(&self, mut cmd: Command) -> Result<Response, Refusal> {
        let _counted = self
            .proposals
            .enter()
            .map_err(|not_taken| match not_taken {
                NotTaken::HandingOver(successor) => Refusal::NotLeader(Some(successor)),
                NotTaken::Full(pending) => {
                    self.metrics.write_shed("pending_writes");
                    Refusal::Failed(NodeError::Overloaded(format!(
                        "writes waiting for Raft on the leader: {pending}, at its bound \
                     (--max-pending-writes); nothing was proposed: retry after Retry-After"
                    )))
                }
            })?;
        // A fenced leader answers from a state that differs from the cluster's: the write
        // waits for the leader it is handing over to.
        if self.fenced().is_some() {
            return Err(Refusal::NotLeader(None));
        }
        // One copy of Raft's metrics for both checks: this is every write's path.
        let m = crate::raft::metrics_of(&self.raft);
        self.check_leader_quorum(&m)?;
        self.check_apply_backlog(&m)?;
        if cmd.op.grows_state() {
            // A retry of a write already applied is answered from the idempotency table by
            // the apply, changing nothing: refusing it would tell the client it was not
            // applied. (Looked up only when refusing, off every write's path.)
            let refused = self
                .check_space()
                .and_then(|()| self.quotas.check(&cmd.op, &self.reader))
                .err()
                .filter(|_| {
                    !cmd.idempotency_key
                        .as_deref()
                        .is_some_and(|k| self.reader.answered(k))
                });
            if let Some(e) = refused {
                return Err(Refusal::Failed(e));
            }
            self.space
                .proposed(crate::store::codec::json_bytes(&cmd.op));
        }
        // Lease deadlines and idempotency ages are measured on the leader's clock only.
        cmd.proposed_at_ms = now_ms();
        let needed = cmd.op.command_version();
        if needed > self.reader.command_version() {
            crate::features::enable(&self.raft, &self.reader, &self.peers, needed).await?;
        }
        let started = Instant::now();
        let result = tokio::time::timeout(QUORUM_TIMEOUT, self.raft.client_write(cmd)).await;
        self.metrics.observe_proposal(started.elapsed());
        match result {
            Err(_) => Err(Refusal::Failed(NodeError::NoQuorum(format!(
                "the write was not committed within {QUORUM_TIMEOUT:?}: no quorum; it may still apply later"
            )))),
            Ok(Ok(resp)) => answer(resp.data).map_err(Refusal::Failed),
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(f) => Err(Refusal::NotLeader(f.leader_id)),
                None => Err(Refusal::Failed(NodeError::Rejected(
                    ErrorCode::RaftError,
                    e.to_string(),
                ))),
            },
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index a read must see.
    /// Refused with no leader known, it asks again, as `propose_local` does.
    pub async fn read_index_local(&self) -> Result<u64, NodeError> {
        self.asking_again_while_leaderless(|| self.read_index_here())
            .await
    }

    async fn read_index_here(&self) -> Result<u64, Refusal> {
        let deadline = Instant::now() + QUORUM_TIMEOUT;
        loop {
            self.check_leader_quorum(&crate::raft::metrics_of(&self.raft))?;
            let left = deadline.saturating_duration_since(Instant::now());
            let r =
                tokio::time::timeout(left, self.raft.get_read_linearizer(ReadPolicy::ReadIndex))
                    .await;
            let e = match r {
                Err(_) => {
                    return Err(Refusal::Failed(NodeError::NoQuorum(
                        "could not confirm leadership with a quorum".into(),
                    )));
                }
                Ok(Ok(lin)) => return Ok(lin.read_log_id().index()),
                Ok(Err(e)) => e,
            };
            if let Some(f) = e.forward_to_leader() {
                return Err(Refusal::NotLeader(f.leader_id));
            }
            // One round of heartbeats fell short (a member slow to answer, or a connection
            // reset): ask again while this leader still hears from a quorum. A leader cut off
            // from the quorum stops at `check_leader_quorum` or the deadline.
            let one_round_short = matches!(
                e.api_error(),
                Some(openraft::errors::LinearizableReadError::QuorumNotEnough(_))
            );
            if !one_round_short || Instant::now() + READ_INDEX_RETRY_PAUSE >= deadline {
                return Err(Refusal::Failed(NodeError::NoQuorum(e.to_string())));
            }
            tokio::time::sleep(READ_INDEX_RETRY_PAUSE).await;
        }
    }

    /// Returns once the local state machine reflects every write acknowledged before the call
    /// (for linearizable reads: read index from the leader, then wait for local apply), or, for
    /// serializable reads, at once when this node has caught up with a leader since it started.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), NodeError> {
        if consistency == Consistency::Linearizable {
            return self.linearize().await;
        }
        if self.caught_up_since_start.load(Ordering::Acquire) {
            return Ok(());
        }
        self.catch_up_since_start()
            .await
            .map_err(|e| NodeError::NotCaughtUp(Box::new(e)))
    }

    /// Waits until this node has applied everything committed, then lets serializable reads be
    /// served from its state for as long as it runs.
    pub async fn catch_up_since_start(&self) -> Result<(), NodeError> {
        self.linearize().await?;
        self.caught_up_since_start.store(true, Ordering::Release);
        Ok(())
    }

    /// A lease question answered by the leader: here if this node leads, else forwarded to
    /// it (as writes are; between leaders it waits for the next one).
    pub async fn ask_leader_about_leases(
        &self,
        request: wire::LeaseRequest,
    ) -> Result<wire::LeaseReply, NodeError> {
        self.on_the_leader(
            || self.answer_about_leases_here(&request),
            "raft/lease",
            &request,
            |reply: wire::LeaseReply| reply,
        )
        .await
    }

    /// Runs `here` if this node leads, else sends `body` to the leader's peer route `path`
    /// (its answer made one of ours by `from_leader`); between leaders (refused as not the
    /// leader, here or there) it waits for the next one, at most [`LEADER_WAIT`].
    async fn on_the_leader<T, B, R, Here, HereFut>(
        &self,
        here: Here,
        path: &str,
        body: &B,
        from_leader: impl Fn(R) -> T,
    ) -> Result<T, NodeError>
    where
        B: serde::Serialize + Clone,
        R: serde::de::DeserializeOwned,
        Here: Fn() -> HereFut,
        HereFut: std::future::Future<Output = Result<T, Refusal>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let refused = match here().await {
                Ok(answer) => return Ok(answer),
                Err(Refusal::Failed(e)) => return Err(e),
                Err(r @ Refusal::NotLeader(_)) => match self.leader_addr() {
                    None => self.refusal_error(r),
                    Some((leader, addr)) => {
                        let msg = self.peers.envelope(body.clone());
                        let reply: Result<R, NodeError> = crate::forward::to_leader(
                            &self.peers,
                            &self.raft,
                            leader,
                            &addr,
                            path,
                            &msg,
                        )
                        .await;
                        match reply {
                            Ok(reply) => return Ok(from_leader(reply)),
                            Err(e) if e.is_not_leader() => e,
                            Err(e) => return Err(e),
                        }
                    }
                },
            };
            if !self.await_leader(deadline).await {
                return Err(refused);
            }
        }
    }

    /// The leader's side of [`Node::ask_leader_about_leases`] for a follower. Refused with no
    /// leader known, it asks again, as `propose_local` does.
    pub async fn answer_about_leases_local(
        &self,
        request: wire::LeaseRequest,
    ) -> Result<wire::LeaseReply, NodeError> {
        self.asking_again_while_leaderless(|| self.answer_about_leases_here(&request))
            .await
    }

    /// Confirms with a quorum that this node leads and has applied every acknowledged write,
    /// then answers from its lease clock. A keep-alive counts from before the confirmation: a
    /// leader elected since then began to lead later, and gives the lease a full TTL from then.
    async fn answer_about_leases_here(
        &self,
        request: &wire::LeaseRequest,
    ) -> Result<wire::LeaseReply, Refusal> {
        let asked = Instant::now();
        let index = self.lease_read_index_here().await?;
        self.await_applied(index, "lease request")
            .await
            .map_err(Refusal::Failed)?;
        let clock = self.reader.lease_clock();
        Ok(match request {
            wire::LeaseRequest::KeepAlive { id } => match clock.renew(*id, asked) {
                Ok(ttl_ms) => wire::LeaseReply::KeptAlive { ttl_ms },
                Err(_) => return Err(Refusal::Failed(crate::data::lease_not_found(*id))),
            },
            wire::LeaseRequest::TimeLeft { ids } => {
                let now = Instant::now();
                wire::LeaseReply::TimeLeft {
                    remaining_ms: ids
                        .iter()
                        .map(|id| clock.time_left(*id, now).map(|d| d.as_millis() as u64))
                        .collect(),
                }
            }
        })
    }

    /// Like [`Node::read_index_here`], but confirmed by the leader's lease when it is fresh
    /// (openraft's `LeaseRead`: no round of heartbeats; followers vote for no one else within
    /// it), else by a round. For lease requests, which are many and need only the leader to
    /// still lead when they arrive.
    async fn lease_read_index_here(&self) -> Result<u64, Refusal> {
        self.check_leader_quorum(&crate::raft::metrics_of(&self.raft))?;
        match self.raft.get_read_linearizer(ReadPolicy::LeaseRead).await {
            Ok(lin) => Ok(lin.read_log_id().index()),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(Refusal::NotLeader(f.leader_id)),
                None => self.read_index_here().await,
            },
        }
    }

    /// Read index from the leader (asked by a follower), then a wait for the local apply.
    async fn linearize(&self) -> Result<(), NodeError> {
        // As for writes: between leaders, the read waits for the next one.
        let index = self
            .on_the_leader(
                || self.read_index_here(),
                "raft/read-index",
                &(),
                |reply: wire::ReadIndexReply| reply.read_log_id.index,
            )
            .await?;
        self.await_applied(index, "linearizable read").await
    }

    /// Waits until this replica has applied `index` (a read index), at most
    /// [`QUORUM_TIMEOUT`].
    async fn await_applied(&self, index: u64, what: &str) -> Result<(), NodeError> {
        self.raft
            .wait(Some(QUORUM_TIMEOUT))
            .applied_index_at_least(Some(index), what)
            .await
            .map_err(|e| {
                NodeError::NoQuorum(format!("this replica did not catch up in time: {e}"))
            })?;
        Ok(())
    }

    /// Sends an admin request (membership change) to the leader, as this node.
    pub async fn forward_to_leader<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        not_leader: NodeError,
    ) -> Result<T, NodeError> {
        let Some((_, addr)) = self.leader_addr() else {
            return Err(not_leader);
        };
        self.peers
            .post(&addr, path, body, Duration::from_secs(40))
            .await
            .map_err(crate::forward::peer_failure)
    }

    pub fn status(&self) -> ClusterStatus {
        let m = crate::raft::metrics_of(&self.raft);
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|l| l.map_or(0, |l| l.index));
                MemberStatus {
                    node_id: node.name.clone(),
                    address: node.addr.clone(),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                    voter: voters.contains(id),
                    lag: matched.map(|mi| last.saturating_sub(mi)),
                    matched_index: matched,
                }
            })
            .collect();
        #[allow(deprecated)]
        let commit = m.committed.map(|c| c.index);
        ClusterStatus {
            node_id: self.identity.name.clone(),
            cluster_id: Some(self.peers.cluster()).filter(|c| !c.is_empty()),
            role: role_name(m.state).into(),
            leader: m.current_leader.and_then(|l| self.member_name(l)),
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index: commit,
            applied_index: m.last_applied.map(|l| l.index),
            revision: self.reader.revision(),
            membership_version: m.membership_config.log_id().map(|l| l.index),
            members,
            version: env!("CARGO_PKG_VERSION").into(),
            fenced: self.fenced().map(|a| a.detail),
            wall_clock_ms: now_ms(),
            storage: self.space.latest(),
            alarms: self.alarms(),
        }
    }

    /// The cluster's alarms as this member has applied them, members by name.
    pub fn alarms(&self) -> Vec<concordance_client::Alarm> {
        self.reader
            .alarms()
            .into_iter()
            .map(|a| concordance_client::Alarm {
                member: self
                    .member_name(a.member)
                    .unwrap_or_else(|| format!("{:016x}", a.member)),
                kind: a.kind.to_client(),
                detail: a.detail,
            })
            .collect()
    }

    /// Refuses a write that grows the state while a member's `no_space` alarm is raised.
    fn check_space(&self) -> Result<(), NodeError> {
        // The leader's own measure counts at once, before its alarm is raised and applied.
        let own = self.space.short().map(|detail| AlarmRecord {
            member: self.identity.raft_id,
            kind: AlarmKind::NoSpace,
            detail,
        });
        let raised = self.reader.alarms_of(AlarmKind::NoSpace).into_iter().next();
        let Some(alarm) = raised.or(own) else {
            return Ok(());
        };
        let member = self
            .member_name(alarm.member)
            .unwrap_or_else(|| format!("{:016x}", alarm.member));
        Err(NodeError::Rejected(
            ErrorCode::NoSpace,
            format!(
                "the no_space alarm is raised on member {member} ({}): writes that grow the \
                 state are refused; reads, deletes and revokes work. Make room (delete keys, \
                 POST /api/v1/cluster/compact, or a bigger volume), then disarm it \
                 (POST /api/v1/cluster/alarms/disarm)",
                alarm.detail
            ),
        ))
    }

    /// Ends `no_space` alarms (of `member`, or every member's) once their members are back
    /// clear of their bounds; refused for any that is not, or that cannot be asked.
    pub async fn disarm(
        &self,
        req: concordance_client::DisarmRequest,
    ) -> Result<concordance_client::AlarmsResponse, NodeError> {
        let kind = match req.kind {
            concordance_client::AlarmKind::NoSpace => AlarmKind::NoSpace,
            concordance_client::AlarmKind::Corrupt => AlarmKind::Corrupt,
            concordance_client::AlarmKind::Unknown => {
                return Err(NodeError::Rejected(
                    ErrorCode::InvalidBody,
                    "no such alarm kind: `no_space` is disarmed".into(),
                ));
            }
        };
        if kind.fences() {
            return Err(NodeError::Rejected(
                ErrorCode::AlarmStillRaised,
                format!(
                    "the {} alarm is not disarmed: its member's state differs from the \
                     cluster's; replace the member (remove it, add one with an empty data dir)",
                    kind.as_str()
                ),
            ));
        }
        let membership = crate::raft::metrics_of(&self.raft)
            .membership_config
            .clone();
        if let Some(name) = &req.member
            && !membership
                .membership()
                .nodes()
                .any(|(_, n)| &n.name == name)
        {
            return Err(NodeError::Rejected(
                ErrorCode::MemberNotFound,
                format!("no member is called {name}"),
            ));
        }
        for alarm in self.reader.alarms_of(kind) {
            let node = membership.membership().get_node(&alarm.member).cloned();
            let name = node.as_ref().map(|n| n.name.clone());
            if req.member.is_some() && name != req.member {
                continue;
            }
            let name = name.unwrap_or_else(|| format!("{:016x}", alarm.member));
            let usage = if alarm.member == self.identity.raft_id {
                self.space.latest()
            } else {
                match &node {
                    Some(n) => self.peer_status(&n.addr).await?.storage,
                    None => None,
                }
            };
            let Some(usage) = usage else {
                return Err(NodeError::Rejected(
                    ErrorCode::AlarmStillRaised,
                    format!("member {name} has not reported its disk space yet: try again"),
                ));
            };
            if let Some(reason) = crate::space::not_clear(&usage) {
                return Err(NodeError::Rejected(
                    ErrorCode::AlarmStillRaised,
                    format!("member {name} is still short of space: {reason}; make room first"),
                ));
            }
            self.propose(
                Operation::DisarmAlarm {
                    member: alarm.member,
                    alarm: kind,
                },
                None,
            )
            .await?;
            tracing::info!(member = %name, alarm = kind.as_str(), "alarm disarmed");
        }
        Ok(concordance_client::AlarmsResponse {
            alarms: self.alarms(),
        })
    }

    /// A member's own status, asked over the peer connection.
    async fn peer_status(&self, addr: &str) -> Result<ClusterStatus, NodeError> {
        self.peers
            .get(addr, "cluster/status", Duration::from_secs(5))
            .await
            .map_err(|e| {
                NodeError::Rejected(
                    ErrorCode::AlarmStillRaised,
                    format!("cannot ask member at {addr} for its disk space ({e}): try again"),
                )
            })
    }

    /// Forgets the change history below `revision` (default: the current one) on every member.
    pub async fn compact(
        &self,
        req: concordance_client::CompactRequest,
    ) -> Result<concordance_client::CompactResponse, NodeError> {
        let current = self.reader.revision();
        let revision = req.revision.unwrap_or(current);
        if revision > current {
            return Err(NodeError::Rejected(
                ErrorCode::InvalidRevision,
                format!("revision {revision} is past the current revision {current}"),
            ));
        }
        self.propose(Operation::CompactHistory { revision }, None)
            .await?;
        tracing::info!(revision, "history compacted on request");
        Ok(concordance_client::CompactResponse {
            compacted_revision: revision,
        })
    }

    /// The alarm fencing this member, if one was raised: its state differs from the
    /// cluster's, so it is not ready and serves nothing (see [`crate::integrity`]).
    pub fn fenced(&self) -> Option<AlarmRecord> {
        self.reader.fence_on(self.identity.raft_id)
    }

    /// Refuses what a fenced member must not serve.
    pub fn check_not_fenced(&self) -> Result<(), NodeError> {
        match self.fenced() {
            None => Ok(()),
            Some(alarm) => Err(NodeError::Rejected(
                ErrorCode::MemberFenced,
                format!(
                    "this member is fenced by the {} alarm and serves nothing until it is replaced: {}",
                    alarm.kind.as_str(),
                    alarm.detail
                ),
            )),
        }
    }

    /// `Ok` when a leader is known and this node is a voter that has caught up.
    pub fn ready(&self) -> Result<(), String> {
        if let Err(e) = self.check_not_fenced() {
            return Err(e.message());
        }
        let m = crate::raft::metrics_of(&self.raft);
        if let Err(e) = &m.running_state {
            return Err(format!("raft has stopped: {e}"));
        }
        let Some(leader) = m.current_leader else {
            return Err("no leader is known".into());
        };
        if !votes_in_every_config(m.committed_membership_config.membership(), m.id) {
            return Err("this node is not a voter (yet)".into());
        }
        // A leader or follower cut off from the others (or removed while it was down and
        // remembering an old membership) is not ready, whatever its stored state says.
        if leader == m.id {
            let alone = m.membership_config.membership().voter_ids().count() == 1;
            let fresh = m
                .last_quorum_acked
                .as_ref()
                .is_some_and(|t| (*t).into_inner().elapsed() < STALE_QUORUM_ACK);
            if !alone && !fresh {
                return Err("this leader has not heard from a quorum lately".into());
            }
        } else {
            if !self.leader_contact.log_confirmed() {
                return Err("waiting for the leader's log up to its commit index".into());
            }
            match self.leader_contact.since_last() {
                None => return Err("no message from the leader since this start".into()),
                Some(since) if since > STALE_QUORUM_ACK => {
                    return Err(format!(
                        "no message from the leader for {} ms",
                        since.as_millis()
                    ));
                }
                Some(_) => {}
            }
        }
        #[allow(deprecated)]
        let commit = m.committed.map_or(0, |c| c.index);
        let applied = m.last_applied.map_or(0, |l| l.index);
        if commit.saturating_sub(applied) > READY_LAG_ENTRIES {
            return Err(format!("catching up: applied {applied} of {commit}"));
        }
        Ok(())
    }

    pub fn render_metrics(&self) -> String {
        self.metrics.set_fenced(self.fenced().is_some());
        let m = crate::raft::metrics_of(&self.raft);
        #[allow(deprecated)]
        let commit = m.committed.map_or(0, |c| c.index);
        self.metrics.render(RaftGauges {
            role: role_name(m.state),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index: commit,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            revision: self.reader.revision(),
            storage_bytes: self.store.size_bytes(),
            alarms: AlarmKind::ALL
                .into_iter()
                .map(|kind| (kind.as_str(), self.reader.alarms_of(kind).len() as u64))
                .collect(),
            space: self.space.latest(),
        })
    }
}

/// Whether `id` is a voter in every configuration of `membership`, the committed one (see
/// `Node::ready`). A joining node holds the change that makes it a voter before that change
/// commits, and while the change is half done (openraft's joint membership) an election still
/// needs a majority of the old voters, which do not include it: whoever waits for it to be
/// ready before stopping or cutting off another member (a replacement, an upgrade) must wait
/// for the change to complete, or the rest could be left unable to elect a leader.
fn votes_in_every_config(membership: &crate::store::types::MembershipOf, id: u64) -> bool {
    membership
        .get_joint_config()
        .iter()
        .all(|voters| voters.contains(&id))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::votes_in_every_config;
    use crate::store::types::MembershipOf;

    fn membership(configs: &[&[u64]], learners: &[u64]) -> MembershipOf {
        let configs = configs
            .iter()
            .map(|c| c.iter().copied().collect::<BTreeSet<_>>())
            .collect();
        MembershipOf::new_with_defaults(configs, learners.iter().copied())
    }

    #[test]
    fn only_a_voter_of_every_configuration_in_force_counts_as_one() {
        let cases: &[(&str, MembershipOf, u64, bool)] = &[
            ("voter, settled", membership(&[&[1, 2, 3]], &[]), 3, true),
            ("learner", membership(&[&[1, 2]], &[3]), 3, false),
            ("not a member", membership(&[&[1, 2]], &[]), 3, false),
            // Joining: voter in the new half only; the old voters must still elect.
            (
                "joining, change half done",
                membership(&[&[1, 2], &[1, 2, 3]], &[]),
                3,
                false,
            ),
            (
                "staying, change half done",
                membership(&[&[1, 2], &[1, 2, 3]], &[]),
                1,
                true,
            ),
            (
                "leaving, change half done",
                membership(&[&[1, 2, 3], &[1, 2]], &[]),
                3,
                false,
            ),
        ];
        for (what, m, id, expected) in cases {
            assert_eq!(votes_in_every_config(m, *id), *expected, "{what}");
        }
    }
}
