//! Linearizability checker for per-key registers (put, get, delete, compare-and-swap).
//!
//! The search is Wing & Gong's, with Lowe's memoization, in the shape Porcupine uses: the
//! history becomes a list of call and return events in time order; the search walks it,
//! tentatively linearizing any operation whose call it meets (if the sequential model accepts
//! the operation's output from the current state), and backtracks when it meets the return of
//! an operation it has not linearized yet. A (set of linearized operations, model state) pair
//! already explored is never explored again.
//!
//! Keys are independent registers, so a history is linearizable iff each key's sub-history is
//! (Herlihy & Wing's locality, "P-compositionality" in Porcupine): [`check_history`] splits by
//! key and checks each part alone, which keeps the search small.
//!
//! Indeterminate operations (timeouts, errors after which a write may or may not have been
//! applied) get a return at the end of time and no expected output: the search may linearize
//! them anywhere after their call, which includes "after everything" (never observed), so both
//! outcomes are allowed. Reads that failed are left out: they have no effect.

use std::collections::BTreeMap;
use std::collections::HashSet;

/// The value of a register: `None` while the key does not exist.
pub type Value = Option<String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Put(String),
    Get,
    Delete,
    /// Set to `new` if the register holds `expect` (`None`: the key must not exist).
    Cas {
        expect: Value,
        new: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A write that was acknowledged (puts answer nothing else the model checks).
    Ok,
    /// A read's answer.
    Read(Value),
    /// A delete's answer: whether a key was there to delete.
    Deleted(bool),
    /// A compare-and-swap's answer: whether the compare held.
    Swapped(bool),
    /// No answer (timeout or error on a write): may or may not have taken effect.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub key: String,
    pub client: usize,
    pub input: Input,
    pub output: Output,
    /// Invocation, in nanoseconds since the history began.
    pub call: u64,
    /// Completion; `None` for an indeterminate operation.
    pub ret: Option<u64>,
}

/// The sequential specification of one register: the next state, or `None` when `output`
/// cannot be the answer from `state`.
pub fn step(state: &Value, input: &Input, output: &Output) -> Option<Value> {
    match input {
        Input::Put(v) => matches!(output, Output::Ok | Output::Unknown).then(|| Some(v.clone())),
        Input::Get => match output {
            Output::Read(seen) if seen == state => Some(state.clone()),
            Output::Unknown => Some(state.clone()),
            _ => None,
        },
        Input::Delete => match output {
            Output::Deleted(d) if *d == state.is_some() => Some(None),
            Output::Ok | Output::Unknown => Some(None),
            _ => None,
        },
        Input::Cas { expect, new } => {
            let holds = expect == state;
            let next = if holds {
                Some(new.clone())
            } else {
                state.clone()
            };
            match output {
                Output::Swapped(s) if *s == holds => Some(next),
                Output::Unknown => Some(next),
                _ => None,
            }
        }
    }
}

#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    /// No order explains the key's history; `longest` is the longest prefix the search could
    /// linearize (operation indices into the key's history, in linearization order).
    Violation {
        key: String,
        ops: Vec<Operation>,
        longest: Vec<usize>,
    },
    /// The search hit its step budget without an answer.
    GaveUp {
        key: String,
        ops: usize,
    },
}

/// The value unobserved puts are renamed to: no read tells them apart.
const UNSEEN: &str = "\u{0}unseen";

/// Shrinks the search without changing its answer:
/// - an indeterminate put whose value nobody ever read, when no delete or compare-and-swap
///   with a known answer could have been influenced by it, changes nothing anyone observed:
///   linearizing it last is always possible, so it is dropped;
/// - puts of values nobody read all write the same (unobservable) value, [`UNSEEN`], so
///   states that differ only by such a value merge.
fn prune(ops: Vec<Operation>) -> Vec<Operation> {
    let observed: HashSet<String> = ops
        .iter()
        .filter_map(|o| match (&o.input, &o.output) {
            (Input::Get, Output::Read(Some(v))) => Some(v.clone()),
            (
                Input::Cas {
                    expect: Some(v), ..
                },
                _,
            ) => Some(v.clone()),
            _ => None,
        })
        .collect();
    let keep: Vec<bool> = ops
        .iter()
        .map(|o| {
            let Input::Put(v) = &o.input else { return true };
            if o.ret.is_some() || observed.contains(v) {
                return true;
            }
            ops.iter().any(|other| {
                matches!(other.input, Input::Delete | Input::Cas { .. })
                    && other.output != Output::Unknown
                    && other.ret.is_none_or(|r| r > o.call)
            })
        })
        .collect();
    ops.into_iter()
        .zip(keep)
        .filter_map(|(mut o, k)| {
            match &mut o.input {
                Input::Put(v) | Input::Cas { new: v, .. } if !observed.contains(v.as_str()) => {
                    *v = UNSEEN.into();
                }
                _ => {}
            }
            k.then_some(o)
        })
        .collect()
}

/// Indeterminate operations that are interchangeable: same input, no output, no return.
/// Among several, linearizing the one called first is never worse (it is available whenever
/// a later-called one is), so the search only ever tries the earliest not yet linearized:
/// this turns 2^k subsets of k such operations into k+1 counts.
fn interchangeable_class(o: &Operation) -> Option<usize> {
    if o.ret.is_some() || o.output != Output::Unknown {
        return None;
    }
    match &o.input {
        Input::Put(v) if v == UNSEEN => Some(0),
        Input::Delete => Some(1),
        _ => None,
    }
}

/// Checks one key's operations.
pub fn check_key(key: &str, ops: Vec<Operation>, budget: u64) -> Verdict {
    let ops = prune(ops);
    let n = ops.len();
    // Events: (time, is_return, op). Calls sort before returns at the same instant, so
    // operations that touch in time count as concurrent (the permissive reading).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, false, i));
        events.push((o.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    // A doubly linked list over the events, with a head sentinel at index 0.
    let len = events.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    const END: usize = usize::MAX;
    next[len - 1] = END;
    let mut call_at = vec![0usize; n];
    let mut ret_at = vec![0usize; n];
    for (pos, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            ret_at[op] = pos + 1;
        } else {
            call_at[op] = pos + 1;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, q) = (prev[e], next[e]);
        next[p] = q;
        if q != END {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, q) = (prev[e], next[e]);
        next[p] = e;
        if q != END {
            prev[q] = e;
        }
    };

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut state: Value = None;
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut longest: Vec<usize> = Vec::new();
    let class: Vec<Option<usize>> = ops.iter().map(interchangeable_class).collect();
    // Classes passed over since the scan last started from the head: their later members
    // must not be tried before the earlier one.
    let mut passed = [false; 2];
    let mut cur = next[0];
    let mut steps = 0u64;
    while next[0] != END {
        steps += 1;
        if steps > budget {
            return Verdict::GaveUp {
                key: key.into(),
                ops: n,
            };
        }
        if cur == END {
            // Only calls remain ahead but none fits: backtrack.
            let Some((op, s)) = stack.pop() else { break };
            state = s;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_at[op]);
            relink(&mut next, &mut prev, call_at[op]);
            passed = [false; 2];
            mark_passed(&mut passed, &class, &events, &next, op, call_at[op]);
            cur = next[call_at[op]];
            continue;
        }
        let (_, is_ret, op) = events[cur - 1];
        if !is_ret {
            let o = &ops[op];
            if let Some(c) = class[op] {
                if passed[c] {
                    cur = next[cur];
                    continue;
                }
                passed[c] = true;
            }
            if let Some(new_state) = step(&state, &o.input, &o.output) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if seen.insert((lin.clone(), new_state.clone())) {
                    stack.push((op, std::mem::replace(&mut state, new_state)));
                    linearized = lin;
                    unlink(&mut next, &mut prev, call_at[op]);
                    unlink(&mut next, &mut prev, ret_at[op]);
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|(o, _)| *o).collect();
                    }
                    passed = [false; 2];
                    cur = next[0];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            // The return of an operation not yet linearized: this branch is dead.
            let Some((op, s)) = stack.pop() else {
                return Verdict::Violation {
                    key: key.into(),
                    ops,
                    longest,
                };
            };
            state = s;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_at[op]);
            relink(&mut next, &mut prev, call_at[op]);
            passed = [false; 2];
            mark_passed(&mut passed, &class, &events, &next, op, call_at[op]);
            cur = next[call_at[op]];
        }
    }
    if next[0] == END {
        Verdict::Linearizable
    } else {
        Verdict::Violation {
            key: key.into(),
            ops,
            longest,
        }
    }
}

/// After backtracking from `op`, the scan resumes just past it: every class met between the
/// head and that point (including `op`'s own) counts as passed over.
fn mark_passed(
    passed: &mut [bool; 2],
    class: &[Option<usize>],
    events: &[(u64, bool, usize)],
    next: &[usize],
    op: usize,
    op_call: usize,
) {
    let mut e = next[0];
    while e != usize::MAX {
        let (_, is_ret, o) = events[e - 1];
        if !is_ret && let Some(c) = class[o] {
            passed[c] = true;
        }
        if e == op_call {
            break;
        }
        e = next[e];
    }
    if let Some(c) = class[op] {
        passed[c] = true;
    }
}

/// Splits `ops` by key and checks each key; the first failing key is returned.
pub fn check_history(ops: &[Operation], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for o in ops {
        by_key.entry(&o.key).or_default().push(o.clone());
    }
    for (key, ops) in by_key {
        match check_key(key, ops, budget) {
            Verdict::Linearizable => {}
            other => return other,
        }
    }
    Verdict::Linearizable
}

/// A readable account of a violation, for a failing test's message.
pub fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Linearizable => "linearizable".into(),
        Verdict::GaveUp { key, ops } => {
            format!("checker gave up on key {key:?} ({ops} operations): search budget exhausted")
        }
        Verdict::Violation { key, ops, longest } => {
            let mut s = format!(
                "not linearizable: key {key:?}, {} operations; longest linearizable prefix:\n",
                ops.len()
            );
            for &i in longest {
                s.push_str(&format!("  {:?}\n", ops[i]));
            }
            s.push_str("all operations by call time:\n");
            let mut sorted: Vec<&Operation> = ops.iter().collect();
            sorted.sort_by_key(|o| o.call);
            for o in sorted {
                s.push_str(&format!("  {o:?}\n"));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = 1_000_000;

    fn op(client: usize, input: Input, output: Output, call: u64, ret: Option<u64>) -> Operation {
        Operation {
            key: "k".into(),
            client,
            input,
            output,
            call,
            ret,
        }
    }
    fn put(v: &str) -> Input {
        Input::Put(v.into())
    }
    fn read(v: Option<&str>) -> Output {
        Output::Read(v.map(String::from))
    }
    fn ok(ops: Vec<Operation>) -> bool {
        matches!(check_key("k", ops, BUDGET), Verdict::Linearizable)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert!(ok(vec![
            op(0, Input::Get, read(None), 0, Some(1)),
            op(0, put("a"), Output::Ok, 2, Some(3)),
            op(1, Input::Get, read(Some("a")), 4, Some(5)),
            op(1, Input::Delete, Output::Deleted(true), 6, Some(7)),
            op(0, Input::Get, read(None), 8, Some(9)),
        ]));
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        assert!(!ok(vec![
            op(0, put("a"), Output::Ok, 0, Some(1)),
            op(0, put("b"), Output::Ok, 2, Some(3)),
            op(1, Input::Get, read(Some("a")), 4, Some(5)),
        ]));
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        // The read overlaps the put of "b": either answer is fine.
        for seen in ["a", "b"] {
            assert!(ok(vec![
                op(0, put("a"), Output::Ok, 0, Some(1)),
                op(0, put("b"), Output::Ok, 2, Some(10)),
                op(1, Input::Get, read(Some(seen)), 3, Some(5)),
            ]));
        }
    }

    #[test]
    fn reads_that_go_back_in_time_are_a_violation() {
        // Both reads overlap the write, but once one read saw "b" a later read cannot see "a".
        assert!(!ok(vec![
            op(0, put("a"), Output::Ok, 0, Some(1)),
            op(0, put("b"), Output::Ok, 2, Some(20)),
            op(1, Input::Get, read(Some("b")), 3, Some(5)),
            op(2, Input::Get, read(Some("a")), 6, Some(8)),
        ]));
    }

    #[test]
    fn lost_acknowledged_write_is_a_violation() {
        assert!(!ok(vec![
            op(0, put("a"), Output::Ok, 0, Some(1)),
            op(1, Input::Get, read(None), 2, Some(3)),
        ]));
    }

    #[test]
    fn indeterminate_write_may_take_effect_late_or_never() {
        // A timed-out put of "x" is seen long after the client gave up: allowed.
        assert!(ok(vec![
            op(0, put("x"), Output::Unknown, 0, None),
            op(1, Input::Get, read(None), 5, Some(6)),
            op(1, Input::Get, read(Some("x")), 100, Some(101)),
        ]));
        // ...or never.
        assert!(ok(vec![
            op(0, put("x"), Output::Unknown, 0, None),
            op(1, Input::Get, read(None), 100, Some(101)),
        ]));
        // But not before it was invoked.
        assert!(!ok(vec![
            op(1, Input::Get, read(Some("x")), 0, Some(1)),
            op(0, put("x"), Output::Unknown, 5, None),
        ]));
        // Nor seen, then unseen, then seen again without another write.
        assert!(!ok(vec![
            op(0, put("x"), Output::Unknown, 0, None),
            op(1, Input::Get, read(Some("x")), 5, Some(6)),
            op(1, Input::Get, read(None), 7, Some(8)),
            op(1, Input::Get, read(Some("x")), 9, Some(10)),
        ]));
    }

    #[test]
    fn delete_answers_are_checked() {
        assert!(!ok(vec![
            op(0, put("a"), Output::Ok, 0, Some(1)),
            op(1, Input::Delete, Output::Deleted(false), 2, Some(3)),
        ]));
        assert!(ok(vec![
            op(0, put("a"), Output::Ok, 0, Some(1)),
            op(1, Input::Delete, Output::Deleted(true), 2, Some(3)),
            op(1, Input::Delete, Output::Deleted(false), 4, Some(5)),
        ]));
    }

    #[test]
    fn compare_and_swap_is_checked() {
        let cas = |e: Option<&str>, n: &str| Input::Cas {
            expect: e.map(String::from),
            new: n.into(),
        };
        // Two clients race to create the key; exactly one may win.
        assert!(ok(vec![
            op(0, cas(None, "a"), Output::Swapped(true), 0, Some(10)),
            op(1, cas(None, "b"), Output::Swapped(false), 1, Some(9)),
            op(2, Input::Get, read(Some("a")), 11, Some(12)),
        ]));
        assert!(!ok(vec![
            op(0, cas(None, "a"), Output::Swapped(true), 0, Some(10)),
            op(1, cas(None, "b"), Output::Swapped(true), 1, Some(9)),
        ]));
        // A failed compare changes nothing.
        assert!(!ok(vec![
            op(0, put("a"), Output::Ok, 0, Some(1)),
            op(1, cas(Some("z"), "b"), Output::Swapped(false), 2, Some(3)),
            op(2, Input::Get, read(Some("b")), 4, Some(5)),
        ]));
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut ops = vec![
            op(0, put("a"), Output::Ok, 0, Some(1)),
            op(1, Input::Get, read(Some("a")), 2, Some(3)),
        ];
        let mut other = op(2, put("q"), Output::Ok, 0, Some(1));
        other.key = "j".into();
        ops.push(other);
        let mut bad = op(3, Input::Get, read(None), 5, Some(6));
        bad.key = "j".into();
        ops.push(bad);
        match check_history(&ops, BUDGET) {
            Verdict::Violation { key, .. } => assert_eq!(key, "j"),
            v => panic!("expected a violation on j, got {v:?}"),
        }
    }

    #[test]
    fn many_concurrent_clients_stay_tractable() {
        // 8 clients x 60 rounds of overlapping puts and reads that saw the latest round's
        // value: linearizable, and the memoized search must finish well within budget.
        let mut ops = Vec::new();
        for round in 0..60u64 {
            let t = round * 100;
            for c in 0..4 {
                ops.push(op(
                    c,
                    put(&format!("{round}-{c}")),
                    Output::Ok,
                    t,
                    Some(t + 50),
                ));
            }
            for c in 4..8 {
                ops.push(op(
                    c,
                    Input::Get,
                    read(Some(&format!("{round}-3"))),
                    t + 60,
                    Some(t + 70),
                ));
            }
        }
        // Ops with a definite put of round-3 last: make that order forced by timing.
        for o in ops.iter_mut() {
            if let Input::Put(v) = &o.input
                && v.ends_with("-3")
            {
                o.call += 40;
                o.ret = Some(o.call + 5);
            }
        }
        assert!(ok(ops));
    }

    #[test]
    fn many_indeterminate_writes_stay_tractable_and_exact() {
        // 40 timed-out puts nobody read and 40 timed-out deletes, between acknowledged
        // writes, reads and deletes whose answers depend on whether some took effect.
        let mut ops = Vec::new();
        for i in 0..40u64 {
            let t = i * 100;
            ops.push(op(0, put(&format!("lost-{i}")), Output::Unknown, t, None));
            ops.push(op(1, Input::Delete, Output::Unknown, t + 1, None));
            ops.push(op(
                2,
                put(&format!("v{i}")),
                Output::Ok,
                t + 10,
                Some(t + 20),
            ));
            ops.push(op(
                3,
                Input::Get,
                read(Some(&format!("v{i}"))),
                t + 30,
                Some(t + 40),
            ));
            // Either an indeterminate delete or put landed in between, or neither.
            ops.push(op(
                3,
                Input::Delete,
                Output::Deleted(i % 2 == 0),
                t + 50,
                Some(t + 60),
            ));
        }
        assert!(ok(ops.clone()));
        // A read of a value no one wrote is still caught.
        ops.push(op(4, Input::Get, read(Some("never")), 5000, Some(5001)));
        assert!(!ok(ops));
    }
}
