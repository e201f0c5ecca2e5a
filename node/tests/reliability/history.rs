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
                // Absent now: only a delete after the latest acknowledged put explains it,
                // one that timed out (indeterminate) since no acknowledged one is later.
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

/// Leaders: a node calling itself leader names itself, and a node's term never goes back.
/// openraft's leader id is (term, node id) here (`leader_id_adv`): a voter may grant a vote to
/// a higher node id in the same term, so two nodes may lead one term in turn, each under its
/// own leader id; that is counted, not refused. One leader id per node name is what
/// `check_leaders` can see, and a node names itself only while it leads.
pub fn check_leaders(samples: &[LeaderSample]) -> Result<LeaderStats, String> {
    let mut last_term: HashMap<&str, u64> = HashMap::new();
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
