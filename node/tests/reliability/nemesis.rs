//! The fault schedule: derived from the seed alone, so a failing seed replays the same
//! sequence of faults (which node a fault hits may still depend on who leads at that moment).
//!
//! A fault either takes effect or fails the run: a refused leadership transfer or member
//! removal is asked again until it is accepted (bounded), a transfer must land on the node it
//! named, a fault aimed at the leader waits for one, and a partition without packet filtering
//! (not root) is an error, never a silent skip. A run that did not do its faults proves
//! nothing about them.

use std::time::Duration;
use std::time::Instant;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cluster::Cluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// SIGKILL a member, restart it after the hold.
    Kill,
    KillLeader,
    /// SIGSTOP a member, SIGCONT after the hold.
    Pause,
    PauseLeader,
    /// A random minority cut off from the majority.
    PartitionMinority,
    /// The leader alone on one side.
    IsolateLeader,
    /// Two halves that cannot talk, and one node that talks to both.
    Bridge,
    /// `/cluster/transfer-leader` to a random other voter.
    TransferLeader,
    /// A follower loses its data dir: removed from Raft, and a new member joins in its place.
    ReplaceMember,
    /// Every member SIGKILLed at once (with the unsynced-data shim: a power cut), all
    /// restarted after the hold.
    PowerCut,
    /// A member's wall clock (not its monotonic clock) jumps an hour back or forward for the
    /// hold: the leader's every other time, a follower's otherwise.
    ClockJump,
    /// Every member's wall clock set a few seconds apart (up to ±5 s) for the hold.
    ClockSkew,
    /// 1-20 % of the packets on every link between members dropped for the hold.
    LossyLinks,
}

pub const ALL: [Fault; 13] = [
    Fault::PowerCut,
    Fault::Kill,
    Fault::KillLeader,
    Fault::Pause,
    Fault::PauseLeader,
    Fault::PartitionMinority,
    Fault::IsolateLeader,
    Fault::Bridge,
    Fault::TransferLeader,
    Fault::ReplaceMember,
    Fault::ClockJump,
    Fault::ClockSkew,
    Fault::LossyLinks,
];

#[derive(Clone, Debug)]
pub struct Step {
    pub fault: Fault,
    /// Picks the target among the candidates (members in name order).
    pub pick: u64,
    pub hold: Duration,
    pub quiet: Duration,
}

/// An endless, seed-determined schedule of faults: every kind once in a seed-shuffled
/// order first (so even a short run meets them all), then kinds drawn at random.
pub struct Schedule {
    rng: StdRng,
    first: Vec<Fault>,
}

impl Schedule {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
        let mut first = ALL.to_vec();
        first.shuffle(&mut rng);
        first.reverse();
        Self { rng, first }
    }

    pub fn next_step(&mut self) -> Step {
        let fault = match self.first.pop() {
            Some(f) => f,
            None => ALL[self.rng.random_range(0..ALL.len())],
        };
        Step {
            fault,
            pick: self.rng.random(),
            hold: Duration::from_millis(self.rng.random_range(800..3000)),
            quiet: Duration::from_millis(self.rng.random_range(300..1500)),
        }
    }
}

fn pick<T: Clone>(items: &[T], pick: u64) -> T {
    items[(pick % items.len() as u64) as usize].clone()
}

/// How long a fault aimed at the leader waits for the cluster to have one (after a power cut
/// every node restarts and elects first), and how long a refused transfer or removal is asked
/// again. Both far above the 3 s the cluster promises to elect a leader in.
const SETTLE: Duration = Duration::from_secs(30);

/// Applies one step: the fault, its hold, then every fault healed. Returns what was done, or
/// why the fault did not take effect (the run then fails).
pub async fn apply(cluster: &mut Cluster, step: &Step) -> Result<String, String> {
    let result = apply_fault(cluster, step).await;
    cluster.heal_all();
    tokio::time::sleep(step.quiet).await;
    result
}

async fn apply_fault(cluster: &mut Cluster, step: &Step) -> Result<String, String> {
    let names = cluster.names();
    let target = pick(&names, step.pick);
    let mut shuffled = names.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(step.pick));
    let needs_filter = matches!(
        step.fault,
        Fault::PartitionMinority | Fault::IsolateLeader | Fault::Bridge | Fault::LossyLinks
    );
    if needs_filter && !cluster.can_partition() {
        return Err(format!(
            "{:?} needs packet filtering, which needs root",
            step.fault
        ));
    }
    let needs_leader = matches!(
        step.fault,
        Fault::KillLeader
            | Fault::PauseLeader
            | Fault::IsolateLeader
            | Fault::TransferLeader
            | Fault::ReplaceMember
            | Fault::ClockJump
    );
    let leader = if needs_leader {
        cluster
            .wait_leader(SETTLE)
            .await
            .ok_or_else(|| format!("{:?}: no leader within {SETTLE:?}", step.fault))?
    } else {
        String::new()
    };
    let what = match step.fault {
        Fault::Kill | Fault::KillLeader => {
            let t = if step.fault == Fault::KillLeader {
                leader
            } else {
                target
            };
            cluster.kill(&t);
            tokio::time::sleep(step.hold).await;
            cluster.restart(&t);
            format!("SIGKILL {t}, restart after {:?}", step.hold)
        }
        Fault::Pause | Fault::PauseLeader => {
            let t = if step.fault == Fault::PauseLeader {
                leader
            } else {
                target
            };
            cluster.pause(&t);
            tokio::time::sleep(step.hold).await;
            cluster.resume(&t);
            format!("SIGSTOP {t} for {:?}", step.hold)
        }
        Fault::PartitionMinority => {
            let minority = shuffled[..(names.len() - 1) / 2].to_vec();
            let majority = shuffled[(names.len() - 1) / 2..].to_vec();
            cluster.partition(&[minority.clone(), majority.clone()]);
            tokio::time::sleep(step.hold).await;
            format!("partition {minority:?} | {majority:?} for {:?}", step.hold)
        }
        Fault::IsolateLeader => {
            let l = leader;
            let rest: Vec<String> = names.iter().filter(|n| **n != l).cloned().collect();
            cluster.partition(&[vec![l.clone()], rest]);
            tokio::time::sleep(step.hold).await;
            format!("isolate leader {l} for {:?}", step.hold)
        }
        Fault::Bridge => {
            let bridge = shuffled[0].clone();
            let rest = &shuffled[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            let links: Vec<(String, String)> = a
                .iter()
                .flat_map(|x| b.iter().map(move |y| (x.clone(), y.clone())))
                .collect();
            cluster.cut_links(&links);
            tokio::time::sleep(step.hold).await;
            format!(
                "bridge {bridge} between {a:?} and {b:?} for {:?}",
                step.hold
            )
        }
        Fault::PowerCut => {
            for n in &names {
                cluster.kill(n);
            }
            tokio::time::sleep(step.hold).await;
            for n in &names {
                cluster.restart(n);
            }
            format!(
                "power cut: every node SIGKILLed, restarted after {:?}",
                step.hold
            )
        }
        Fault::ClockJump => {
            let t = if step.pick.is_multiple_of(2) {
                leader
            } else {
                let followers: Vec<String> =
                    names.iter().filter(|n| **n != leader).cloned().collect();
                pick(&followers, step.pick / 2)
            };
            let offset: i64 = if step.pick % 4 < 2 { -3600 } else { 3600 };
            cluster.set_clock(&t, offset);
            cluster.wait_clock(&t, offset).await?;
            tokio::time::sleep(step.hold).await;
            format!("{t}'s wall clock {offset:+} s for {:?}", step.hold)
        }
        Fault::ClockSkew => {
            let mut rng = StdRng::seed_from_u64(step.pick);
            let live = cluster.live();
            let offsets: Vec<(String, i64)> = live
                .iter()
                .map(|n| (n.clone(), rng.random_range(-5..=5)))
                .collect();
            for (n, offset) in &offsets {
                cluster.set_clock(n, *offset);
            }
            for (n, offset) in &offsets {
                cluster.wait_clock(n, *offset).await?;
            }
            tokio::time::sleep(step.hold).await;
            format!("wall clocks skewed {offsets:?} for {:?}", step.hold)
        }
        Fault::LossyLinks => {
            let percent = 1 + (step.pick % 20) as u32;
            cluster.lossy_links(percent);
            tokio::time::sleep(step.hold).await;
            format!(
                "{percent} % of packets lost on every link for {:?}",
                step.hold
            )
        }
        Fault::TransferLeader => {
            let others: Vec<String> = names.iter().filter(|n| **n != leader).cloned().collect();
            let to = pick(&others, step.pick);
            let asked = until_accepted(&format!("transfer leadership to {to}"), || {
                cluster.transfer_leader(&to)
            })
            .await?;
            // Landed where asked: the target itself reports leading.
            cluster.wait_leads(&to, SETTLE).await?;
            format!("transfer leadership {leader} -> {to} (asked {asked} time(s))")
        }
        Fault::ReplaceMember => {
            let followers: Vec<String> = names.iter().filter(|n| **n != leader).cloned().collect();
            let t = pick(&followers, step.pick);
            let asked =
                until_accepted(&format!("remove {t}"), || cluster.remove_member(&t)).await?;
            cluster.forget_member(&t);
            let new = cluster.add_member().await;
            format!(
                "{t} lost its data dir: removed (asked {asked} time(s)), {new} joined in its place"
            )
        }
    };
    Ok(what)
}

/// Asks until accepted (a leader may be settling after the previous fault), for at most
/// [`SETTLE`]; returns how many times it asked.
async fn until_accepted<F, Fut>(what: &str, mut ask: F) -> Result<usize, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + SETTLE;
    let mut asked = 0;
    loop {
        asked += 1;
        match ask().await {
            Ok(()) => return Ok(asked),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "{what}: refused {asked} times in {SETTLE:?}, last: {e}"
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
