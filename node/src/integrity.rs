//! Replicas that disagree are caught and fenced, as etcd's corruption checks do.
//!
//! - The check: every `--state-check-interval` the leader proposes a `CheckState` entry.
//!   Each replica, applying it, hashes its state as of that entry (`store::state_hash`); the
//!   leader collects every voter's hash and compares them ([`find_odd`]).
//! - The alarm: a member whose hash differs from a majority's is named in a replicated
//!   `RaiseAlarm` command (the `corrupt` alarm), which stays in the state until the member is
//!   removed from the membership. The leader may name itself.
//! - The fence: a member that sees an alarm on itself stops taking part in elections, hands
//!   its leadership over if it leads, and is not ready; its data routes answer
//!   `member_fenced` (`Node::check_not_fenced`). It keeps receiving the log, so the log stays
//!   whole, but nobody reads its state. The operator replaces it.
//! - At start: once a voter has caught up, it asks the leader for a check at once; a member
//!   found to differ, or already fenced, stops with a clear error (and the termination
//!   message `member_fenced`) instead of serving.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use concordance_client::ErrorCode;
use concordance_client::TerminationMessage;
use openraft::ServerState;

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::raft::wire::StateCheckReply;
use crate::raft::wire::StateHashReply;
use crate::raft::wire::StateHashRequest;
use crate::service::SharedNode;
use crate::store::records::AlarmKind;
use crate::store::records::AlarmRecord;
use crate::store::records::Command;
use crate::store::records::Operation;
use crate::store::records::Response;
use crate::store::state_hash::Computed;

/// The default of `--state-check-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// How long the leader waits for every voter's hash: a replica must apply the entry, then
/// scan its state (a few seconds for millions of keys).
const HASH_WAIT: Duration = Duration::from_secs(30);
const ASK_EVERY: Duration = Duration::from_millis(100);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the fence looks for an alarm on this member.
const FENCE_TICK: Duration = Duration::from_millis(200);
/// A fenced leader's hand-over: per successor tried, and in all.
const HAND_OVER_TRY: Duration = Duration::from_secs(2);
const HAND_OVER_LIMIT: Duration = Duration::from_secs(10);

/// Serializes checks: the periodic one and one asked for by a member that started.
fn gate() -> &'static tokio::sync::Mutex<()> {
    static GATE: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    GATE.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// What the hashes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Every voter that answered holds the same state.
    Agree,
    /// A majority of the voters holds one state; these members hold another.
    Odd(Vec<u64>),
    /// The voters that answered disagree, and no state is held by a majority of the voters:
    /// nobody can tell which is right, so nobody is fenced.
    Undecided,
}

/// Which members differ, given the hash of each voter that answered and the number of voters.
/// A member is odd only when a majority of all voters (not only of those that answered)
/// holds another hash.
pub fn find_odd(voters: usize, hashes: &BTreeMap<u64, String>) -> Finding {
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for hash in hashes.values() {
        *holders.entry(hash).or_default() += 1;
    }
    if holders.len() <= 1 {
        return Finding::Agree;
    }
    match holders.iter().find(|(_, n)| **n > voters / 2) {
        Some((majority, _)) => Finding::Odd(
            hashes
                .iter()
                .filter(|(_, h)| h.as_str() != *majority)
                .map(|(id, _)| *id)
                .collect(),
        ),
        None => Finding::Undecided,
    }
}

/// Starts the periodic check (every `interval`, on the leader; never if `None`), the fence,
/// and the check at start.
pub fn spawn(node: SharedNode, interval: Option<Duration>) {
    if let Some(every) = interval {
        let checker = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if crate::raft::metrics_of(&checker.raft).state != ServerState::Leader {
                    continue;
                }
                if let Err(e) = check(&checker).await {
                    tracing::warn!(error = %e, "state check not done");
                }
            }
        });
    }
    let fence = node.clone();
    tokio::spawn(async move { fence_when_alarmed(fence).await });
    tokio::spawn(async move { check_at_start(node).await });
}

/// This replica's hash at `index`, as the leader asks for it.
pub fn own_hash(node: &SharedNode, index: u64) -> StateHashReply {
    match node.reader.state_hashes().get(index) {
        Some(Computed::Done(hash)) => StateHashReply::Done { hash },
        Some(Computed::Failed(error)) => StateHashReply::Failed { error },
        Some(Computed::Pending) => StateHashReply::Pending,
        None if crate::raft::metrics_of(&node.raft)
            .last_applied
            .is_some_and(|l| l.index >= index) =>
        {
            StateHashReply::Gone
        }
        None => StateHashReply::Pending,
    }
}

/// On the leader: proposes a `CheckState` entry, collects every voter's hash at it, and
/// raises the `corrupt` alarm on each member found to differ from a majority.
pub async fn check(node: &SharedNode) -> Result<StateCheckReply, NodeError> {
    let _one_at_a_time = gate().lock().await;
    let m = crate::raft::metrics_of(&node.raft);
    if m.state != ServerState::Leader {
        return Err(node.not_leader_error(m.current_leader));
    }
    let membership = m.membership_config.membership().clone();
    let voters: Vec<(u64, String, String)> = membership
        .voter_ids()
        .filter_map(|id| {
            let n = membership.get_node(&id)?;
            Some((id, n.name.clone(), n.addr.clone()))
        })
        .collect();
    let index = match node
        .propose_local(command(Operation::CheckState {}))
        .await?
    {
        Response::Checked { index } => index,
        other => {
            return Err(NodeError::Internal(format!(
                "a state check was answered {other:?}"
            )));
        }
    };
    let deadline = Instant::now() + HASH_WAIT;
    let answers = futures::future::join_all(voters.iter().map(|(id, _, addr)| async move {
        if *id == node.identity.raft_id {
            wait_for_own_hash(node, index, deadline).await
        } else {
            ask_for_hash(node, addr, index, deadline).await
        }
    }))
    .await;
    let mut hashes = BTreeMap::new();
    let mut seen = Vec::new();
    for ((id, name, _), answer) in voters.iter().zip(answers) {
        match answer {
            Ok(hash) => {
                seen.push((name.clone(), hash.clone()));
                hashes.insert(*id, hash);
            }
            Err(why) => seen.push((name.clone(), format!("no hash: {why}"))),
        }
    }
    let finding = find_odd(voters.len(), &hashes);
    let outcome = match &finding {
        Finding::Agree if hashes.len() == voters.len() => "match",
        Finding::Agree => "incomplete",
        Finding::Odd(_) => "mismatch",
        Finding::Undecided => "undecided",
    };
    node.metrics.state_checked(outcome);
    let name_of = |id: u64| {
        voters
            .iter()
            .find(|(v, _, _)| *v == id)
            .map_or_else(|| format!("{id:016x}"), |(_, n, _)| n.clone())
    };
    let mut odd_names = Vec::new();
    match &finding {
        Finding::Agree => tracing::debug!(index, outcome, "state check"),
        Finding::Undecided => tracing::error!(
            index,
            hashes = ?seen,
            "state check: the voters' states differ and no state is held by a majority; nobody is fenced"
        ),
        Finding::Odd(odd) => {
            let majority = hashes
                .iter()
                .find(|(id, _)| !odd.contains(id))
                .map(|(_, h)| h.clone())
                .unwrap_or_default();
            for id in odd {
                let detail = format!(
                    "its state hash at log index {index} was {} where a majority of the voters had {}",
                    short(&hashes[id]),
                    short(&majority)
                );
                tracing::error!(member = %name_of(*id), index, "state check: {detail}; raising the corrupt alarm");
                let alarm = Operation::RaiseAlarm {
                    member: *id,
                    alarm: AlarmKind::Corrupt,
                    detail: detail.clone(),
                };
                node.propose_local(command(alarm)).await?;
                odd_names.push(name_of(*id));
            }
        }
    }
    Ok(StateCheckReply {
        index,
        outcome: outcome.into(),
        odd: odd_names,
        hashes: seen,
    })
}

fn command(op: Operation) -> Command {
    Command {
        op,
        idempotency_key: None,
        proposed_at_ms: now_ms(),
    }
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(16)]
}

async fn wait_for_own_hash(
    node: &SharedNode,
    index: u64,
    deadline: Instant,
) -> Result<String, String> {
    loop {
        match own_hash(node, index) {
            StateHashReply::Done { hash } => {
                tracing::debug!(
                    index,
                    records = hash.records,
                    took_ms = hash.took_ms,
                    "this leader's state hash"
                );
                return Ok(hash.sha256);
            }
            StateHashReply::Failed { error } => return Err(error),
            StateHashReply::Gone => return Err("no longer kept".into()),
            StateHashReply::Pending if Instant::now() >= deadline => {
                return Err(format!("not computed within {HASH_WAIT:?}"));
            }
            StateHashReply::Pending => tokio::time::sleep(ASK_EVERY).await,
        }
    }
}

async fn ask_for_hash(
    node: &SharedNode,
    addr: &str,
    index: u64,
    deadline: Instant,
) -> Result<String, String> {
    let msg = node.peers.envelope(StateHashRequest { index });
    loop {
        let answer = node
            .peers
            .post::<_, StateHashReply>(addr, "raft/state-hash", &msg, ASK_TIMEOUT)
            .await;
        let last = match answer {
            Ok(StateHashReply::Done { hash }) => return Ok(hash.sha256),
            Ok(StateHashReply::Failed { error }) => return Err(error),
            Ok(StateHashReply::Gone) => return Err("no longer kept".into()),
            Ok(StateHashReply::Pending) => "not computed yet".to_string(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("none within {HASH_WAIT:?}: {last}"));
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

/// Fences this member once an alarm names it: no elections, leadership handed over, not
/// ready, no data served (the last two read the alarm where they are decided).
async fn fence_when_alarmed(node: SharedNode) {
    let mut fenced = false;
    let mut tick = tokio::time::interval(FENCE_TICK);
    loop {
        tick.tick().await;
        let Some(alarm) = node.fenced() else { continue };
        if !fenced {
            fenced = true;
            tracing::error!(
                alarm = alarm.kind.as_str(),
                detail = %alarm.detail,
                "this member is fenced: it serves nothing and takes no part in elections; replace it (remove it from the cluster and add a member with an empty data dir)"
            );
            node.raft.runtime_config().elect(false);
        }
        if crate::raft::metrics_of(&node.raft).state == ServerState::Leader
            && let Err(e) = node.hand_over(HAND_OVER_TRY, HAND_OVER_LIMIT).await
        {
            tracing::warn!(error = %e, "a fenced leader could not hand over yet");
        }
    }
}

/// Once this voter has caught up after starting, has the leader check the replicas at once;
/// stops the process if this member is found to differ or was fenced already.
async fn check_at_start(node: SharedNode) {
    while !node.caught_up_since_start.load(Ordering::Acquire) {
        tokio::time::sleep(FENCE_TICK).await;
    }
    if let Some(alarm) = node.fenced() {
        stop_fenced(&alarm);
    }
    let needed = (Operation::CheckState {}).command_version();
    if node.reader.command_version() < needed {
        return; // a member of the cluster cannot hash its state yet
    }
    let m = crate::raft::metrics_of(&node.raft);
    if !m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == m.id)
    {
        return; // a learner: it got its state from the leader, and is not compared
    }
    let mut delay = Duration::from_millis(500);
    for _ in 0..6 {
        let asked = match leader_address(&node) {
            None => Err("no leader is known".to_string()),
            Some(None) => check(&node).await.map_err(|e| e.to_string()),
            Some(Some(addr)) => node
                .peers
                .post::<_, StateCheckReply>(
                    &addr,
                    "raft/check-state",
                    &node.peers.envelope(()),
                    HASH_WAIT + ASK_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string()),
        };
        match asked {
            Ok(reply) => {
                tracing::info!(index = reply.index, outcome = %reply.outcome, "state check at start");
                if reply.odd.contains(&node.identity.name) {
                    // The alarm committed before the leader answered; this member applies it
                    // shortly.
                    let until = Instant::now() + HASH_WAIT;
                    while Instant::now() < until {
                        if let Some(alarm) = node.fenced() {
                            stop_fenced(&alarm);
                        }
                        tokio::time::sleep(FENCE_TICK).await;
                    }
                }
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "state check at start not done yet; asking again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::warn!("state check at start not done: the periodic check will compare this member");
}

/// The leader's address: `Some(None)` if this node leads, `None` if no leader is known.
fn leader_address(node: &SharedNode) -> Option<Option<String>> {
    let m = crate::raft::metrics_of(&node.raft);
    let leader = m.current_leader?;
    if leader == m.id {
        return Some(None);
    }
    let addr = m
        .membership_config
        .membership()
        .get_node(&leader)?
        .addr
        .clone();
    Some(Some(addr))
}

fn stop_fenced(alarm: &AlarmRecord) -> ! {
    let message = format!(
        "this member is fenced by the {} alarm: {}. Its data must not be served: replace it (remove it from the cluster, then add a member with an empty data dir)",
        alarm.kind.as_str(),
        alarm.detail
    );
    tracing::error!("{message}; stopping");
    crate::termination::write(&TerminationMessage {
        code: ErrorCode::MemberFenced,
        message,
    });
    std::process::exit(3);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each voter that answered, with its hash.
    type Answered<'a> = &'a [(u64, &'a str)];

    fn hashes(of: Answered) -> BTreeMap<u64, String> {
        of.iter().map(|(id, h)| (*id, h.to_string())).collect()
    }

    #[test]
    fn the_member_outside_the_majority_is_odd_and_nobody_is_without_one() {
        // (voters, hashes of those that answered, finding)
        let table: &[(usize, Answered, Finding)] = &[
            (3, &[(1, "a"), (2, "a"), (3, "a")], Finding::Agree),
            (3, &[(1, "a"), (2, "a")], Finding::Agree),
            (3, &[(1, "a")], Finding::Agree),
            (3, &[(1, "a"), (2, "a"), (3, "b")], Finding::Odd(vec![3])),
            // The leader (1) may be the odd one.
            (3, &[(1, "b"), (2, "a"), (3, "a")], Finding::Odd(vec![1])),
            // Two of three answered and differ: no majority of the three holds either.
            (3, &[(1, "a"), (2, "b")], Finding::Undecided),
            (3, &[(1, "a"), (2, "b"), (3, "c")], Finding::Undecided),
            (
                5,
                &[(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "c")],
                Finding::Odd(vec![4, 5]),
            ),
            (5, &[(1, "a"), (2, "a"), (4, "b")], Finding::Undecided),
            (2, &[(1, "a"), (2, "b")], Finding::Undecided),
        ];
        for (voters, answered, expected) in table {
            assert_eq!(
                find_odd(*voters, &hashes(answered)),
                *expected,
                "{voters} voters, {answered:?}"
            );
        }
    }
}
