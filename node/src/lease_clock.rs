//! When each lease may end, on this member's monotonic clock (from command set 5).
//!
//! Every replica keeps one: the state machine tells it of grants and ends as it applies them
//! (a grant's time to live starts when this member applies it). Only the leader renews
//! leases: keep-alives reach it (a follower forwards them), it confirms with a quorum that it
//! still leads, and moves the lease's deadline here, with no Raft entry. Only the leader ends
//! them, by an `EndLeases` command once their deadline is past on its clock.
//!
//! A new leader never saw the keep-alives its predecessor answered, so it gives every lease
//! one full time to live from when it began to lead before it may end it. A wall-clock jump
//! changes nothing here: `Instant` does not jump.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// How long a lease chosen for ending waits before the leader proposes its end again, if the
/// first proposal was lost (a leader change, a timeout).
const ENDING_RETRY: Duration = Duration::from_secs(2);

/// One change the state machine applied, for [`LeaseClock::applied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Granted {
        id: u64,
        ttl_ms: u64,
    },
    /// A keep-alive replicated through the log (command sets before 5).
    KeptAlive {
        id: u64,
    },
    Ended {
        id: u64,
    },
}

/// A keep-alive the leader refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRenewed {
    /// No such lease in the applied state.
    Unknown,
    /// Past its deadline: its end is being proposed.
    Ending,
}

#[derive(Debug, Clone, Copy)]
struct Timed {
    ttl: Duration,
    deadline: Instant,
    /// When this leader chose it for ending (its `EndLeases` is on its way).
    ending_since: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<u64, Timed>,
    by_deadline: BTreeSet<(Instant, u64)>,
    /// When this member began to lead, in its current term (`None`: not leading).
    leading_since: Option<(u64, Instant)>,
}

impl Inner {
    fn set_deadline(&mut self, id: u64, deadline: Instant) {
        if let Some(t) = self.leases.get_mut(&id)
            && t.deadline != deadline
        {
            self.by_deadline.remove(&(t.deadline, id));
            t.deadline = deadline;
            self.by_deadline.insert((deadline, id));
        }
    }

    fn insert(&mut self, id: u64, ttl: Duration, now: Instant) {
        self.remove(id);
        let deadline = now + ttl;
        self.leases.insert(
            id,
            Timed {
                ttl,
                deadline,
                ending_since: None,
            },
        );
        self.by_deadline.insert((deadline, id));
    }

    fn remove(&mut self, id: u64) {
        if let Some(t) = self.leases.remove(&id) {
            self.by_deadline.remove(&(t.deadline, id));
        }
    }

    /// The earliest this leader may end a lease: its deadline, and never before one full time
    /// to live since this member began to lead.
    fn effective_deadline(&self, t: &Timed) -> Instant {
        match self.leading_since {
            Some((_, since)) => t.deadline.max(since + t.ttl),
            None => t.deadline,
        }
    }

    /// Whether `t` was chosen for ending by this member in its current leadership.
    fn ending_now(&self, t: &Timed) -> bool {
        matches!((t.ending_since, self.leading_since), (Some(at), Some((_, since))) if at >= since)
    }
}

#[derive(Default)]
pub struct LeaseClock {
    inner: Mutex<Inner>,
}

impl LeaseClock {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything and times `leases` (id, TTL in ms) from `now`: at start and after a
    /// snapshot install, when nothing is known of past keep-alives.
    pub fn reset(&self, leases: impl IntoIterator<Item = (u64, u64)>, now: Instant) {
        let mut inner = self.inner();
        inner.leases.clear();
        inner.by_deadline.clear();
        for (id, ttl_ms) in leases {
            inner.insert(id, Duration::from_millis(ttl_ms), now);
        }
    }

    /// What the state machine just applied, at `now`.
    pub fn applied(&self, changes: &[LeaseChange], now: Instant) {
        if changes.is_empty() {
            return;
        }
        let mut inner = self.inner();
        for change in changes {
            match *change {
                LeaseChange::Granted { id, ttl_ms } => {
                    inner.insert(id, Duration::from_millis(ttl_ms), now)
                }
                LeaseChange::KeptAlive { id } => {
                    if let Some(t) = inner.leases.get(&id).copied() {
                        inner.set_deadline(id, t.deadline.max(now + t.ttl));
                    }
                }
                LeaseChange::Ended { id } => inner.remove(id),
            }
        }
    }

    /// This member leads in `term` (it noticed at `now`); a new term starts a new leadership.
    /// When this leadership began.
    pub fn leading(&self, term: u64, now: Instant) -> Instant {
        let mut inner = self.inner();
        match inner.leading_since {
            Some((t, since)) if t == term => since,
            _ => {
                inner.leading_since = Some((term, now));
                now
            }
        }
    }

    pub fn not_leading(&self) {
        self.inner().leading_since = None;
    }

    /// The leader's keep-alive: the lease lives at least `ttl` from `from` (taken before the
    /// leader confirmed it still leads). Its TTL in ms.
    pub fn renew(&self, id: u64, from: Instant) -> Result<u64, NotRenewed> {
        let mut inner = self.inner();
        let Some(t) = inner.leases.get(&id).copied() else {
            return Err(NotRenewed::Unknown);
        };
        if inner.ending_now(&t) {
            return Err(NotRenewed::Ending);
        }
        inner.set_deadline(id, t.deadline.max(from + t.ttl));
        Ok(t.ttl.as_millis() as u64)
    }

    /// How long lease `id` has left as this member sees it: on the leader, until it may end
    /// it; `None` if it does not know the lease.
    pub fn time_left(&self, id: u64, now: Instant) -> Option<Duration> {
        let inner = self.inner();
        let t = inner.leases.get(&id)?;
        if inner.ending_now(t) {
            return Some(Duration::ZERO);
        }
        Some(inner.effective_deadline(t).saturating_duration_since(now))
    }

    /// On the leader: up to `limit` leases past their deadline at `now`, marked as ending
    /// (keep-alives are refused from here on). A lease already marked is chosen again once
    /// [`ENDING_RETRY`] has passed, in case its end was lost. Looks only at the leases due.
    pub fn due(&self, now: Instant, limit: usize) -> Vec<u64> {
        let mut inner = self.inner();
        let Some((_, since)) = inner.leading_since else {
            return Vec::new();
        };
        let mut chosen = Vec::new();
        let mut postponed = Vec::new();
        let candidates: Vec<(Instant, u64)> = inner
            .by_deadline
            .range(..=(now, u64::MAX))
            .take(limit.saturating_mul(2))
            .copied()
            .collect();
        for (_, id) in candidates {
            let t = inner.leases[&id];
            let effective = inner.effective_deadline(&t);
            if effective > now {
                // Within the new leader's grace: move it to where it may end.
                postponed.push((id, effective));
                continue;
            }
            if t.ending_since
                .is_some_and(|at| at >= since && now < at + ENDING_RETRY)
            {
                continue;
            }
            if let Some(t) = inner.leases.get_mut(&id) {
                t.ending_since = Some(now);
            }
            chosen.push(id);
            if chosen.len() == limit {
                break;
            }
        }
        for (id, deadline) in postponed {
            inner.set_deadline(id, deadline);
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// `clock` applies a grant of lease `id` at `at`.
    fn grant(clock: &LeaseClock, id: u64, ttl_ms: u64, at: Instant) {
        clock.applied(&[LeaseChange::Granted { id, ttl_ms }], at);
    }

    #[test]
    fn a_lease_is_due_once_its_ttl_has_passed_since_its_grant() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        clock.leading(1, t0);
        grant(&clock, 7, 10_000, t0);
        // The leader began to lead at t0: its grace ends with the lease's own TTL.
        assert!(clock.due(t0 + 9 * S, 10).is_empty());
        assert_eq!(clock.due(t0 + 10 * S, 10), vec![7]);
        // Chosen: keep-alives are refused, and it is not chosen again at once.
        assert_eq!(clock.renew(7, t0 + 10 * S), Err(NotRenewed::Ending));
        assert!(clock.due(t0 + 11 * S, 10).is_empty());
        // Its end was lost: chosen again after the retry pause.
        assert_eq!(clock.due(t0 + 10 * S + ENDING_RETRY, 10), vec![7]);
        clock.applied(&[LeaseChange::Ended { id: 7 }], t0 + 13 * S);
        assert_eq!(clock.renew(7, t0 + 13 * S), Err(NotRenewed::Unknown));
        assert!(clock.due(t0 + 100 * S, 10).is_empty());
    }

    #[test]
    fn a_keep_alive_restarts_the_ttl_from_when_it_was_asked() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        clock.leading(1, t0);
        grant(&clock, 1, 10_000, t0);
        assert_eq!(clock.renew(1, t0 + 8 * S), Ok(10_000));
        assert!(clock.due(t0 + 17 * S, 10).is_empty());
        assert_eq!(clock.time_left(1, t0 + 17 * S), Some(S));
        assert_eq!(clock.due(t0 + 18 * S, 10), vec![1]);
        // A keep-alive never shortens: an older one changes nothing.
        let clock = LeaseClock::default();
        clock.leading(1, t0);
        grant(&clock, 1, 10_000, t0);
        clock.renew(1, t0 + 5 * S).unwrap();
        clock.renew(1, t0 + 2 * S).unwrap();
        assert_eq!(clock.time_left(1, t0), Some(15 * S));
    }

    #[test]
    fn a_new_leader_gives_every_lease_one_full_ttl() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        // Granted long ago as a follower saw it; never renewed here.
        grant(&clock, 1, 10_000, t0);
        grant(&clock, 2, 1_000, t0);
        // Not leading: nothing is ever due.
        assert!(clock.due(t0 + 60 * S, 10).is_empty());
        clock.leading(5, t0 + 60 * S);
        assert_eq!(clock.due(t0 + 61 * S, 10), vec![2]);
        clock.applied(&[LeaseChange::Ended { id: 2 }], t0 + 61 * S);
        assert!(clock.due(t0 + 69 * S, 10).is_empty());
        assert_eq!(clock.due(t0 + 70 * S, 10), vec![1]);
        // The same term noticed again is the same leadership; a new term starts a new grace,
        // and the marks of the old one no longer refuse keep-alives.
        clock.leading(5, t0 + 75 * S);
        assert_eq!(clock.renew(1, t0 + 75 * S), Err(NotRenewed::Ending));
        clock.not_leading();
        clock.leading(6, t0 + 80 * S);
        assert_eq!(clock.renew(1, t0 + 80 * S), Ok(10_000));
        assert!(clock.due(t0 + 89 * S, 10).is_empty());
        assert_eq!(clock.due(t0 + 90 * S, 10), vec![1]);
    }

    #[test]
    fn due_returns_at_most_the_limit_earliest_first() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        clock.leading(1, t0);
        let grants: Vec<LeaseChange> = (1..=50)
            .map(|id| LeaseChange::Granted { id, ttl_ms: 1_000 })
            .collect();
        clock.applied(&grants, t0);
        grant(&clock, 99, 500, t0);
        let first = clock.due(t0 + 2 * S, 10);
        assert_eq!(first.len(), 10);
        assert_eq!(first[0], 99, "the earliest deadline first");
        let second = clock.due(t0 + 2 * S, 100);
        assert_eq!(second.len(), 41, "the rest, not those already chosen");
    }

    #[test]
    fn replicated_keep_alives_and_a_reset_time_leases_from_the_applying_member() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        grant(&clock, 1, 10_000, t0);
        clock.applied(&[LeaseChange::KeptAlive { id: 1 }], t0 + 5 * S);
        assert_eq!(clock.time_left(1, t0 + 5 * S), Some(10 * S));
        clock.reset([(2, 3_000)], t0 + 6 * S);
        assert_eq!(clock.time_left(1, t0 + 6 * S), None);
        assert_eq!(clock.time_left(2, t0 + 6 * S), Some(3 * S));
    }
}
