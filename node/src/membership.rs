//! Membership changes on the leader: join (as learner), automatic promotion to voter,
//! remove, leadership transfer. Each change can name the membership version it expects,
//! so two actors (an operator and a person) cannot race; a change that would leave the
//! remaining voters without a reachable majority is refused.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use concordance_client::ErrorCode;
use openraft::ChangeMembers;
use openraft::Precondition;
use openraft::ServerState;
use openraft::async_runtime::Instant as _;
use openraft::errors::ClientWriteError;

use crate::error::NodeError;
use crate::service::Node;
use crate::store::records::Member;
use crate::store::types::TypeConfig;

/// A learner within this many entries of the leader's log is promoted to voter.
pub const PROMOTE_LAG_ENTRIES: u64 = 100;
/// A voter that acknowledged a heartbeat this recently counts as reachable.
pub const REACHABLE_WITHIN: Duration = Duration::from_secs(3);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a change waits for an earlier one still committing (a few heartbeat rounds).
const PENDING_CHANGE_WITHIN: Duration = Duration::from_secs(3);

fn no_other_voter() -> NodeError {
    NodeError::Rejected(
        ErrorCode::NoOtherVoter,
        "there is no other voter to lead".into(),
    )
}

// The request and reply bodies are the API types shared with clients.
pub use concordance_client::types::JoinRequest;
pub use concordance_client::types::MembershipReply;
pub use concordance_client::types::RemoveRequest;
pub use concordance_client::types::TransferReply;
pub use concordance_client::types::TransferRequest;

impl Node {
    /// The precondition for "membership is still at `expected`", or a 409 if it moved.
    fn expect_version(
        &self,
        expected: Option<u64>,
    ) -> Result<Vec<Precondition<TypeConfig>>, NodeError> {
        let Some(expected) = expected else {
            return Ok(vec![]);
        };
        let m = crate::raft::metrics_of(&self.raft)
            .membership_config
            .clone();
        let current = *m.log_id();
        if current.map(|l| l.index) != Some(expected) {
            return Err(NodeError::Rejected(
                ErrorCode::MembershipChanged,
                format!(
                    "membership is at version {}, not the expected {expected}; read cluster/status and decide again",
                    current.map_or("none".into(), |l| l.index.to_string())
                ),
            ));
        }
        Ok(vec![Precondition::LastMembershipLogId {
            last_membership_log_id: current,
        }])
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, Member>,
        retain: bool,
        pre: Vec<Precondition<TypeConfig>>,
    ) -> Result<(), NodeError> {
        // A change still committing (the second step of an earlier one, or one a new leader
        // inherited and commits with its first entry) makes openraft refuse another; it
        // finishes within a few heartbeats, so wait for it instead of failing the request.
        // Still pending after that, openraft's refusal says why.
        let _ = self
            .raft
            .wait(Some(PENDING_CHANGE_WITHIN))
            .metrics(
                |m| m.membership_config == m.committed_membership_config,
                "the pending membership change to commit",
            )
            .await;
        let r = tokio::time::timeout(
            CHANGE_TIMEOUT,
            self.raft.change_membership_if(change, retain, pre),
        )
        .await;
        match r {
            Err(_) => Err(NodeError::NoQuorum(
                "the membership change did not commit in time: no quorum".into(),
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if let Some(f) = e.forward_to_leader() {
                    return Err(self.not_leader_error(f.leader_id));
                }
                // The expected membership moved between our check and the change.
                let code = match e.api_error() {
                    Some(ClientWriteError::PreconditionFailed(_)) => ErrorCode::MembershipChanged,
                    _ => ErrorCode::MembershipError,
                };
                Err(NodeError::Rejected(code, e.to_string()))
            }
        }
    }

    fn reply(&self, message: String) -> MembershipReply {
        MembershipReply {
            cluster_id: self.peers.cluster(),
            membership_version: crate::raft::metrics_of(&self.raft)
                .membership_config
                .log_id()
                .map(|l| l.index),
            message,
        }
    }

    /// Adds a node as a learner; the promoter makes it a voter once it has caught up.
    pub async fn join(&self, req: JoinRequest) -> Result<MembershipReply, NodeError> {
        if !crate::config::valid_name(&req.node_id) {
            return Err(NodeError::Rejected(
                ErrorCode::InvalidNodeId,
                format!("{:?} is not a valid node name", req.node_id),
            ));
        }
        if let Some(theirs) = &req.cluster_id
            && *theirs != self.peers.cluster()
        {
            return Err(NodeError::Rejected(
                ErrorCode::ClusterMismatch,
                format!(
                    "{}'s data belongs to cluster {theirs}, this is cluster {}; give it an empty data dir",
                    req.node_id,
                    self.peers.cluster()
                ),
            ));
        }
        let _guard = self.membership_lock.lock().await;
        let m = crate::raft::metrics_of(&self.raft)
            .membership_config
            .clone();
        let membership = m.membership();
        if let Some(existing) = membership.get_node(&req.raft_id)
            && existing.name == req.node_id
        {
            return Ok(self.reply(format!("{} is already a member", req.node_id)));
        }
        if let Some((id, _)) = membership
            .nodes()
            .find(|(id, n)| n.name == req.node_id && **id != req.raft_id)
        {
            return Err(NodeError::Rejected(
                ErrorCode::NameInUse,
                format!(
                    "the name {} is still bound to another member (raft id {id:016x}); remove it first with cluster/remove",
                    req.node_id
                ),
            ));
        }
        // A member that cannot apply the enabled command set would stop at its first entry.
        let enabled = self.reader.command_version();
        if let Some(theirs) = crate::features::member_version(&self.peers, &req.address).await
            && theirs < enabled
        {
            return Err(NodeError::Rejected(
                ErrorCode::CommandSetUnsupported,
                format!(
                    "{}'s binary applies command sets up to {theirs}, and the cluster has enabled {enabled}: run a build at least as new as the cluster's",
                    req.node_id
                ),
            ));
        }
        let pre = self.expect_version(req.expected_version)?;
        let member = Member {
            name: req.node_id.clone(),
            addr: req.address.clone(),
        };
        self.change(
            ChangeMembers::AddNodes(BTreeMap::from([(req.raft_id, member)])),
            true,
            pre,
        )
        .await?;
        tracing::info!(node = %req.node_id, address = %req.address, "added a learner");
        Ok(self.reply(format!(
            "{} joined as a learner; it becomes a voter once caught up",
            req.node_id
        )))
    }

    fn id_of(&self, name: &str) -> Result<u64, NodeError> {
        let m = crate::raft::metrics_of(&self.raft)
            .membership_config
            .clone();
        m.membership()
            .nodes()
            .find(|(_, n)| n.name == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                NodeError::Rejected(
                    ErrorCode::MemberNotFound,
                    format!("no member is named {name:?}"),
                )
            })
    }

    /// Voters that acknowledged the leader recently (the leader itself included).
    fn reachable_voters(&self) -> BTreeSet<u64> {
        let m = crate::raft::metrics_of(&self.raft);
        let mut out = BTreeSet::new();
        if let Some(hb) = &m.heartbeat {
            for (id, at) in hb {
                if at
                    .as_ref()
                    .is_some_and(|t| (*t).into_inner().elapsed() < REACHABLE_WITHIN)
                {
                    out.insert(*id);
                }
            }
        }
        out.insert(m.id);
        out
    }

    pub async fn remove(&self, req: RemoveRequest) -> Result<MembershipReply, NodeError> {
        let _guard = self.membership_lock.lock().await;
        let id = self.id_of(&req.node_id)?;
        let m = crate::raft::metrics_of(&self.raft);
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let pre = self.expect_version(req.expected_version)?;
        if voters.contains(&id) {
            let remaining: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            if remaining.is_empty() {
                return Err(NodeError::Rejected(
                    ErrorCode::LastVoter,
                    "cannot remove the last voter".into(),
                ));
            }
            // A leader elected moments ago has not heard every voter yet: give it a few
            // heartbeat rounds before calling a voter unreachable.
            let deadline = std::time::Instant::now() + REACHABLE_WITHIN;
            let mut up = remaining.intersection(&self.reachable_voters()).count();
            while up * 2 <= remaining.len() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                up = remaining.intersection(&self.reachable_voters()).count();
            }
            if up * 2 <= remaining.len() {
                return Err(NodeError::Rejected(
                    ErrorCode::WouldLoseQuorum,
                    format!(
                        "removing {} would leave {} voters of which only {up} are reachable: no quorum",
                        req.node_id,
                        remaining.len()
                    ),
                ));
            }
            self.change(
                ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                false,
                pre,
            )
            .await?;
        } else {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false, pre)
                .await?;
        }
        tracing::info!(node = %req.node_id, "removed a member");
        Ok(self.reply(format!("{} was removed", req.node_id)))
    }

    /// The other voters, best successor first: those that answered within the last election
    /// timeout before the rest (one that just stopped still looks caught up but would never take
    /// over), then the most caught up.
    pub fn successors(&self) -> Vec<u64> {
        let m = crate::raft::metrics_of(&self.raft);
        let replicated = m.replication.clone().unwrap_or_default();
        let heard = m.heartbeat.clone().unwrap_or_default();
        let answering = |v: &u64| {
            heard.get(v).cloned().flatten().is_some_and(|t| {
                t.into_inner().elapsed()
                    < Duration::from_millis(crate::raft::ELECTION_TIMEOUT_MIN_MS)
            })
        };
        let matched = |v: &u64| replicated.get(v).cloned().flatten().map_or(0, |l| l.index);
        let mut voters: Vec<u64> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != m.id)
            .collect();
        voters.sort_by_key(|v| std::cmp::Reverse((answering(v), matched(v))));
        voters
    }

    /// Hands leadership to `target` (default: the most caught-up other voter that is answering)
    /// and waits until it leads.
    pub async fn transfer_leader(
        &self,
        req: TransferRequest,
        timeout: Duration,
    ) -> Result<TransferReply, NodeError> {
        let m = crate::raft::metrics_of(&self.raft);
        if m.state != ServerState::Leader {
            return Err(self.not_leader_error(m.current_leader));
        }
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let target = match &req.node_id {
            Some(name) => {
                let id = self.id_of(name)?;
                if !voters.contains(&id) {
                    return Err(NodeError::Rejected(
                        ErrorCode::NotAVoter,
                        format!("{name} is not a voter"),
                    ));
                }
                id
            }
            None => *self.successors().first().ok_or_else(no_other_voter)?,
        };
        if target != m.id {
            let moved = self.move_leadership(target, timeout).await;
            self.proposals.refuse(None);
            moved?;
        }
        let m = crate::raft::metrics_of(&self.raft);
        Ok(TransferReply {
            leader: self.member_name(target).unwrap_or_default(),
            term: m.current_term,
        })
    }

    /// Moves leadership to `target`, refusing new writes from now on (they wait for the next
    /// leader; the caller takes them again): writes already proposed finish first, as this
    /// node could not answer them once another node leads.
    async fn move_leadership(&self, target: u64, timeout: Duration) -> Result<(), NodeError> {
        let started = std::time::Instant::now();
        self.proposals.refuse(Some(target));
        if !self.proposals.drained(timeout).await {
            tracing::warn!("writes still waiting for a quorum: moving leadership without them");
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(NodeError::internal)?;
        self.raft
            .wait(Some(timeout.saturating_sub(started.elapsed())))
            .metrics(|x| x.current_leader == Some(target), "leadership transfer")
            .await
            .map_err(|e| {
                NodeError::Rejected(
                    ErrorCode::TransferTimeout,
                    format!("the new leader did not take over: {e}"),
                )
            })?;
        Ok(())
    }

    /// Before this leader stops: hands leadership to the best successor that takes it, moving
    /// on to the next when one does not take over within `per_try`, all within `limit`.
    /// New writes wait for the next leader meanwhile; those already proposed finish first.
    pub async fn hand_over(
        &self,
        per_try: Duration,
        limit: Duration,
    ) -> Result<TransferReply, NodeError> {
        let handed = self.hand_over_to_successors(per_try, limit).await;
        self.proposals.refuse(None);
        handed
    }

    async fn hand_over_to_successors(
        &self,
        per_try: Duration,
        limit: Duration,
    ) -> Result<TransferReply, NodeError> {
        let deadline = std::time::Instant::now() + limit;
        let mut failed = no_other_voter();
        for id in self.successors() {
            let m = crate::raft::metrics_of(&self.raft);
            if let Some(leader) = m.current_leader.filter(|l| *l != m.id) {
                // An earlier try took over after its wait ended.
                return Ok(TransferReply {
                    leader: self.member_name(leader).unwrap_or_default(),
                    term: m.current_term,
                });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.move_leadership(id, per_try.min(left)).await {
                Ok(()) => {
                    return Ok(TransferReply {
                        leader: self.member_name(id).unwrap_or_default(),
                        term: crate::raft::metrics_of(&self.raft).current_term,
                    });
                }
                Err(e) => failed = e,
            }
        }
        Err(failed)
    }

    /// On the leader: promote caught-up learners to voters, one change at a time.
    pub async fn promote_caught_up_learners(&self) {
        let m = crate::raft::metrics_of(&self.raft);
        if m.state != ServerState::Leader || m.membership_config != m.committed_membership_config {
            return;
        }
        let last = m.last_log_index.unwrap_or(0);
        let repl = m.replication.clone().unwrap_or_default();
        let learners: Vec<u64> = m.membership_config.membership().learner_ids().collect();
        for id in learners {
            let matched = repl.get(&id).cloned().flatten().map_or(0, |l| l.index);
            if matched + PROMOTE_LAG_ENTRIES < last {
                continue;
            }
            let _guard = self.membership_lock.lock().await;
            let name = self.member_name(id).unwrap_or_default();
            match self
                .change(
                    ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                    true,
                    vec![],
                )
                .await
            {
                Ok(()) => tracing::info!(node = %name, "promoted a caught-up learner to voter"),
                Err(e) => tracing::warn!(node = %name, error = %e, "could not promote learner"),
            }
            return;
        }
    }
}
