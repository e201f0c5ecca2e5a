//! What the clients saw: every operation with its invocation and completion time, and the
//! invariants checked over a whole history (besides linearizability, see `checker`).

use std::collections::BTreeMap;
use std::collections::HashMap;

use crate::checker::Input;
use crate::checker::Operation;
use crate::checker::Output;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The request never reached a node (connection refused): certainly not applied.
    Fail(String),
    /// A timeout or an error after the request was sent: may or may not have been applied.
    Indeterminate(String),
}

/// One operation as a client saw it.
#[derive(Clone, Debug)]
pub struct Record {
    pub op: Operation,
    pub node: String,
    /// A `consistency=serializable` read (checked for what it promises, not linearizability).
    pub serializable: bool,
    pub status: Status,
    /// Writes: the revision of the write. Reads: the store's revision when read.
    pub revision: Option<u64>,
    /// Reads of an existing key: its modify revision.
    pub mod_revision: Option<u64>,
}

impl Record {
    fn is_write(&self) -> bool {
        !matches!(self.op.input, Input::Get)
    }

    /// A write that took a revision of its own (a delete of nothing takes none, nor does a
    /// compare-and-swap whose compare failed).
    fn took_revision(&self) -> bool {
        self.status == Status::Ok
            && match self.op.output {
                Output::Deleted(d) | Output::Swapped(d) => d,
                Output::Ok => true,
                _ => false,
            }
    }
}

/// The writes that were acknowledged with a revision of their own.
pub fn acknowledged_writes(history: &[Record]) -> Vec<&Record> {
    history.iter().filter(|r| r.took_revision()).collect()
}

/// The operations the linearizability checker sees: linearizable reads that answered, and
/// every write that may have been applied (indeterminate ones with no return and no output).
pub fn for_checker(history: &[Record]) -> Vec<Operation> {
    history
        .iter()
        .filter(|r| !r.serializable)
        .filter_map(|r| match (&r.status, r.is_write()) {
            (Status::Ok, _) => Some(r.op.clone()),
            (Status::Indeterminate(_), true) => Some(Operation {
                ret: None,
                output: Output::Unknown,
                ..r.op.clone()
            }),
            _ => None,
        })
        .collect()
}

/// Revisions: every acknowledged write has its own revision; a write that completed before
/// another began has a lower one; a linearizable read answers a revision no lower than any
/// write completed before it began; a read's modify revision is the revision the write of
/// that value was acknowledged with.
pub fn check_revisions(history: &[Record]) -> Result<(), String> {
    let writes: Vec<&Record> = history.iter().filter(|r| r.took_revision()).collect();
    let mut by_rev: HashMap<u64, &Record> = HashMap::new();
    for w in &writes {
        let rev = w
            .revision
            .ok_or_else(|| format!("write without revision: {w:?}"))?;
        if let Some(other) = by_rev.insert(rev, w) {
            return Err(format!(
                "two acknowledged writes share revision {rev}:\n  {other:?}\n  {w:?}"
            ));
        }
    }
    // Sweep in call order, knowing the highest revision among writes already completed.
    let mut done: Vec<(u64, u64)> = writes
        .iter()
        .map(|w| (w.op.ret.unwrap(), w.revision.unwrap()))
        .collect();
    done.sort();
    let mut prefix_max = Vec::with_capacity(done.len());
    let mut m = 0;
    for (_, rev) in &done {
        m = m.max(*rev);
        prefix_max.push(m);
    }
    let max_done_before = |t: u64| -> u64 {
        let n = done.partition_point(|(ret, _)| *ret < t);
        if n == 0 { 0 } else { prefix_max[n - 1] }
    };
    for r in history.iter().filter(|r| r.status == Status::Ok) {
        let before = max_done_before(r.op.call);
        if r.took_revision() {
            let rev = r.revision.unwrap();
            if rev <= before {
                return Err(format!(
                    "write acknowledged with revision {rev}, but a write completed before it \
                     began had revision {before}: {r:?}"
                ));
            }
        } else if !r.serializable
            && matches!(r.op.input, Input::Get)
            && let Some(rev) = r.revision
            && rev < before
        {
            return Err(format!(
                "linearizable read answered revision {rev} after a write of revision {before} \
                 had completed: {r:?}"
            ));
        }
    }
    // A value's modify revision is its write's revision.
    let put_rev: HashMap<(&str, &str), u64> = writes
        .iter()
        .filter_map(|w| match &w.op.input {
            Input::Put(v) | Input::Cas { new: v, .. } => {
                Some(((w.op.key.as_str(), v.as_str()), w.revision.unwrap()))
            }
            _ => None,
        })
        .collect();
    for r in history.iter().filter(|r| r.status == Status::Ok) {
        if let (Output::Read(Some(v)), Some(m)) = (&r.op.output, r.mod_revision)
            && let Some(&w) = put_rev.get(&(r.op.key.as_str(), v.as_str()))
            && w != m
        {
            return Err(format!(
                "read {v:?} with modify revision {m}, but its write was acknowledged with \
                 revision {w}: {r:?}"
            ));
        }
    }
    Ok(())
}

/// Serializable reads promise a value that was written at some point (by a write invoked
/// before the read answered), and, per client session on one node, never going back: the
/// store revision answered never decreases.
pub fn check_serializable(history: &[Record]) -> Result<usize, String> {
    let mut first_call: HashMap<(&str, &str), u64> = HashMap::new();
    for r in history.iter().filter(|r| r.is_write()) {
        if let Input::Put(v) | Input::Cas { new: v, .. } = &r.op.input {
            first_call.insert((r.op.key.as_str(), v.as_str()), r.op.call);
        }
    }
    let mut session: BTreeMap<(usize, &str), (u64, &Record)> = BTreeMap::new();
    let mut checked = 0;
    let mut reads: Vec<&Record> = history
        .iter()
        .filter(|r| r.serializable && r.status == Status::Ok)
        .collect();
    reads.sort_by_key(|r| r.op.call);
    for r in reads {
        checked += 1;
        if let Output::Read(Some(v)) = &r.op.output {
            match first_call.get(&(r.op.key.as_str(), v.as_str())) {
                Some(&call) if call < r.op.ret.unwrap() => {}
                _ => {
                    return Err(format!(
                        "serializable read returned {v:?}, never written before: {r:?}"
                    ));
                }
            }
        }
        if let Some(rev) = r.revision {
            let k = (r.op.client, r.node.as_str());
            if let Some((prev, prev_r)) = session.get(&k)
                && rev < *prev
            {
                return Err(format!(
                    "serializable reads went back in time on {}: revision {rev} after \
                     {prev}:\n  {prev_r:?}\n  {r:?}",
                    r.node
                ));
            }
            session.insert(k, (rev, r));
        }
    }
    Ok(checked)
}

/// No acknowledged write is lost: the final state of each key (read linearizably after the
/// faults healed, passed as `finals`) is the latest acknowledged write's or a later one's.
pub fn check_no_lost_writes(
    history: &[Record],
    finals: &BTreeMap<String, Option<(String, u64)>>,
) -> Result<usize, String> {
    let mut acked = 0;
    let mut latest: HashMap<&str, &Record> = HashMap::new();
    for w in history.iter().filter(|r| r.took_revision()) {
        acked += 1;
        let e = latest.entry(w.op.key.as_str()).or_insert(w);
        if w.revision > e.revision {
            *e = w;
        }
    }
    for (key, w) in latest {
        let rev = w.revision.unwrap();
        match (finals.get(key), &w.op.input) {
            (Some(Some((_, m))), _) if *m >= rev => {}
            (Some(None), Input::Delete) => {}
            (Some(None), _) => {
                // Absent now: only a delete that took effect after the latest acknowledged
                // write explains it. No acknowledged delete is later (it would be the
                // latest), so an indeterminate one: it may take effect any time after its
                // call, even one called before the put (a forwarded write can arrive late).
                // The linearizability check over the final reads is the precise guard.
                let later_delete = history.iter().any(|d| {
                    d.op.key == key
                        && matches!(d.op.input, Input::Delete)
                        && matches!(d.status, Status::Indeterminate(_))
                });
                if !later_delete {
                    return Err(format!(
                        "acknowledged write lost: key {key:?} is gone, last write was {w:?}"
                    ));
                }
            }
            (got, _) => {
                return Err(format!(
                    "acknowledged write lost: key {key:?} ends as {got:?}, last acknowledged \
                     write was {w:?}"
                ));
            }
        }
    }
    Ok(acked)
}

/// One sample of a node's `/cluster/status`.
#[derive(Clone, Debug)]
pub struct LeaderSample {
    pub at: u64,
    pub node: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<String>,
}

/// What the leader samples showed: terms seen, and terms in which two nodes led in turn.
#[derive(Debug, Default)]
pub struct LeaderStats {
    pub terms: usize,
    pub terms_with_two_leaders: usize,
}

/// Leaders: a node calling itself leader names itself; a node's term never goes back (its
/// vote is on disk before it acts on it); and a node named leader of term T by another is at
/// term T or later in every sample taken after that one (it was elected in T before the
/// other could name it, and its term never goes back). The sampler asks the nodes one after
/// the other, so a later sample's answer was computed after an earlier one's.
/// openraft's leader id is (term, node id) here (`leader_id_adv`): a voter may grant a vote to
/// a higher node id in the same term, so two nodes may lead one term in turn, each under its
/// own leader id; that is counted, not refused. One leader id per node name is what
/// `check_leaders` can see, and a node names itself only while it leads.
pub fn check_leaders(samples: &[LeaderSample]) -> Result<LeaderStats, String> {
    let mut last_term: HashMap<&str, u64> = HashMap::new();
    // The highest term a node was named leader in, and the sample that named it.
    let mut named: HashMap<&str, (u64, &LeaderSample)> = HashMap::new();
    let mut leaders_of_term: BTreeMap<u64, std::collections::BTreeSet<&str>> = BTreeMap::new();
    let mut sorted: Vec<&LeaderSample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.at);
    for s in &sorted {
        if s.role == "leader" && s.leader.as_deref() != Some(s.node.as_str()) {
            return Err(format!("a leader names another node as leader: {s:?}"));
        }
        if let Some(&t) = last_term.get(s.node.as_str())
            && s.term < t
        {
            return Err(format!("term went back from {t} on {}: {s:?}", s.node));
        }
        if let Some((t, by)) = named.get(s.node.as_str())
            && s.term < *t
        {
            return Err(format!(
                "{} was named leader of term {t}, then answered term {}:\n  {by:?}\n  {s:?}",
                s.node, s.term
            ));
        }
        if let Some(l) = s.leader.as_deref() {
            let e = named.entry(l).or_insert((s.term, s));
            if s.term > e.0 {
                *e = (s.term, s);
            }
        }
        last_term.insert(&s.node, s.term);
        if s.role == "leader" {
            leaders_of_term.entry(s.term).or_default().insert(&s.node);
        }
    }
    Ok(LeaderStats {
        terms: leaders_of_term.len(),
        terms_with_two_leaders: leaders_of_term.values().filter(|l| l.len() > 1).count(),
    })
}

/// Each invariant check, shown to fail on a history built to break it (as `checker`'s own
/// tests do for linearizability), and to pass on the same history unbroken.
#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, input: Input, output: Output, call: u64, ret: u64, rev: u64) -> Record {
        Record {
            op: Operation {
                key: key.into(),
                client: 0,
                input,
                output,
                call,
                ret: Some(ret),
            },
            node: "n1".into(),
            serializable: false,
            status: Status::Ok,
            revision: Some(rev),
            mod_revision: None,
        }
    }
    fn put(key: &str, v: &str, call: u64, ret: u64, rev: u64) -> Record {
        rec(key, Input::Put(v.into()), Output::Ok, call, ret, rev)
    }
    /// A read of `v` (modify revision `m`) answering store revision `rev`.
    fn read(key: &str, v: Option<&str>, m: Option<u64>, call: u64, ret: u64, rev: u64) -> Record {
        Record {
            mod_revision: m,
            ..rec(
                key,
                Input::Get,
                Output::Read(v.map(String::from)),
                call,
                ret,
                rev,
            )
        }
    }
    fn serializable(r: Record, client: usize, node: &str) -> Record {
        let mut r = r;
        r.serializable = true;
        r.op.client = client;
        r.node = node.into();
        r
    }
    fn finals(kvs: &[(&str, Option<(&str, u64)>)]) -> BTreeMap<String, Option<(String, u64)>> {
        kvs.iter()
            .map(|(k, v)| (k.to_string(), v.map(|(v, m)| (v.to_string(), m))))
            .collect()
    }

    fn good() -> Vec<Record> {
        vec![
            put("a", "1", 0, 10, 1),
            put("b", "2", 20, 30, 2),
            read("a", Some("1"), Some(1), 40, 50, 2),
            put("a", "3", 60, 70, 3),
        ]
    }

    #[test]
    fn revisions_pass_on_a_good_history() {
        check_revisions(&good()).unwrap();
    }

    #[test]
    fn two_writes_with_one_revision_fail() {
        let mut h = good();
        h[1].revision = Some(1);
        let e = check_revisions(&h).unwrap_err();
        assert!(e.contains("share revision 1"), "{e}");
    }

    #[test]
    fn a_later_write_with_a_lower_revision_fails() {
        // "b" began after "a" completed, yet got a lower revision.
        let h = vec![put("a", "1", 0, 10, 5), put("b", "2", 20, 30, 4)];
        let e = check_revisions(&h).unwrap_err();
        assert!(e.contains("a write completed before it began"), "{e}");
    }

    #[test]
    fn a_linearizable_read_behind_a_completed_write_fails() {
        let mut h = good();
        h[2].revision = Some(1); // write 2 completed at 30, the read began at 40
        let e = check_revisions(&h).unwrap_err();
        assert!(e.contains("linearizable read answered revision 1"), "{e}");
        // The same answer from a serializable read promises less: allowed here.
        h[2].serializable = true;
        check_revisions(&h).unwrap();
    }

    #[test]
    fn a_read_whose_modify_revision_is_not_its_writes_fails() {
        let mut h = good();
        h[2].mod_revision = Some(2);
        let e = check_revisions(&h).unwrap_err();
        assert!(e.contains("modify revision 2"), "{e}");
    }

    #[test]
    fn serializable_reads_pass_on_a_good_history() {
        let mut h = good();
        h.push(serializable(
            read("a", Some("1"), Some(1), 45, 55, 2),
            1,
            "n2",
        ));
        h.push(serializable(
            read("a", Some("3"), Some(3), 80, 90, 3),
            1,
            "n2",
        ));
        // Another node may be behind: sessions are per client and node.
        h.push(serializable(
            read("a", Some("1"), Some(1), 95, 99, 2),
            1,
            "n3",
        ));
        assert_eq!(check_serializable(&h).unwrap(), 3);
    }

    #[test]
    fn a_serializable_read_of_a_value_never_written_fails() {
        let mut h = good();
        h.push(serializable(
            read("a", Some("zz"), Some(1), 45, 55, 2),
            1,
            "n2",
        ));
        let e = check_serializable(&h).unwrap_err();
        assert!(e.contains("never written"), "{e}");
    }

    #[test]
    fn a_serializable_read_of_a_write_sent_after_it_answered_fails() {
        let mut h = good();
        // "3" was sent at 60; this read answered at 55.
        h.push(serializable(
            read("a", Some("3"), Some(3), 45, 55, 3),
            1,
            "n2",
        ));
        let e = check_serializable(&h).unwrap_err();
        assert!(e.contains("never written before"), "{e}");
    }

    #[test]
    fn serializable_reads_going_back_on_one_node_fail() {
        let mut h = good();
        h.push(serializable(
            read("a", Some("3"), Some(3), 80, 90, 3),
            1,
            "n2",
        ));
        h.push(serializable(
            read("a", Some("1"), Some(1), 95, 99, 2),
            1,
            "n2",
        ));
        let e = check_serializable(&h).unwrap_err();
        assert!(e.contains("went back in time on n2"), "{e}");
    }

    #[test]
    fn no_lost_writes_passes_when_each_key_holds_its_latest_write() {
        let h = good();
        let n = check_no_lost_writes(&h, &finals(&[("a", Some(("3", 3))), ("b", Some(("2", 2)))]))
            .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn a_key_holding_an_older_write_fails() {
        let h = good();
        let e = check_no_lost_writes(&h, &finals(&[("a", Some(("1", 1))), ("b", Some(("2", 2)))]))
            .unwrap_err();
        assert!(e.contains("acknowledged write lost: key \"a\""), "{e}");
    }

    #[test]
    fn a_key_gone_without_a_delete_fails_and_an_indeterminate_delete_excuses_it() {
        let mut h = good();
        let f = finals(&[("a", None), ("b", Some(("2", 2)))]);
        let e = check_no_lost_writes(&h, &f).unwrap_err();
        assert!(e.contains("is gone"), "{e}");
        let mut d = rec("a", Input::Delete, Output::Unknown, 80, 0, 0);
        d.status = Status::Indeterminate("timeout".into());
        d.op.ret = None;
        d.revision = None;
        h.push(d);
        check_no_lost_writes(&h, &f).unwrap();
    }

    #[test]
    fn a_key_deleted_last_may_be_absent() {
        let mut h = good();
        h.push(rec("a", Input::Delete, Output::Deleted(true), 80, 90, 4));
        check_no_lost_writes(&h, &finals(&[("a", None), ("b", Some(("2", 2)))])).unwrap();
    }

    fn sample(at: u64, node: &str, role: &str, term: u64, leader: Option<&str>) -> LeaderSample {
        LeaderSample {
            at,
            node: node.into(),
            role: role.into(),
            term,
            leader: leader.map(String::from),
        }
    }

    fn good_samples() -> Vec<LeaderSample> {
        vec![
            sample(1, "n1", "leader", 1, Some("n1")),
            sample(2, "n2", "follower", 1, Some("n1")),
            sample(3, "n2", "candidate", 2, None),
            sample(4, "n2", "leader", 2, Some("n2")),
            sample(5, "n1", "follower", 2, Some("n2")),
            // leader_id_adv: n3 leads term 2 after n2.
            sample(6, "n3", "leader", 2, Some("n3")),
        ]
    }

    #[test]
    fn leaders_pass_on_good_samples() {
        let s = check_leaders(&good_samples()).unwrap();
        assert_eq!((s.terms, s.terms_with_two_leaders), (2, 1));
    }

    #[test]
    fn a_leader_naming_another_fails() {
        let mut h = good_samples();
        h[3].leader = Some("n1".into());
        let e = check_leaders(&h).unwrap_err();
        assert!(e.contains("a leader names another node"), "{e}");
    }

    #[test]
    fn a_term_going_back_fails() {
        let mut h = good_samples();
        h.push(sample(7, "n2", "follower", 1, Some("n1")));
        let e = check_leaders(&h).unwrap_err();
        assert!(e.contains("term went back from 2 on n2"), "{e}");
    }

    #[test]
    fn a_named_leader_behind_the_term_it_was_named_in_fails() {
        // n1 names n3 leader of term 2; n3, asked after, is still at term 1.
        let h = vec![
            sample(1, "n1", "follower", 2, Some("n3")),
            sample(2, "n3", "follower", 1, None),
        ];
        let e = check_leaders(&h).unwrap_err();
        assert!(e.contains("n3 was named leader of term 2"), "{e}");
        // Asked before it was named, it may well have been behind.
        let h = vec![
            sample(1, "n3", "follower", 1, None),
            sample(2, "n1", "follower", 2, Some("n3")),
        ];
        check_leaders(&h).unwrap();
    }
}
