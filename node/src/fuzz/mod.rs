//! Fuzz targets for every decoder of bytes read from disk or from the network, run as property
//! tests with the unit tests: stored records (`records`), snapshot and backup files
//! (`snapshot`), Raft log segments (`log_segments`), and peer messages: stream frames, the
//! snapshot upload's header, JSON bodies (`peer`).
//!
//! Each target feeds a decoder arbitrary bytes and mutations of real encodings (made by the
//! encoders the node writes with): bytes flipped, cut, inserted, removed, repeated or spliced
//! in from another encoding, and length fields set to claim up to 4 GiB; optionally with the
//! checksums made right again, so that a mutation gets past them into what they guard. The
//! decoder must answer, a value or an error, without panicking, and hold no more memory at
//! once than a bound linear in its input ([`within`]): a length field is not a reason to
//! allocate. Allocations are counted by this test binary's allocator ([`measure`]).
//!
//! A run makes [`CASES`] cases per target (a few seconds for all of them); `PROPTEST_CASES=N`
//! makes N (docs/reliability.md, "Bad input"). A failing case is shrunk to a small one and its
//! seed saved under `node/proptest-regressions/fuzz/`, and every later run tries the saved
//! seeds first.

mod log_segments;
mod peer;
mod records;
mod snapshot;

use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::alloc::System;
use std::cell::Cell;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestCaseError;
use proptest::test_runner::TestRunner;

/// Cases per target in an ordinary test run.
pub const CASES: u32 = 2048;

/// The configuration of every target: [`CASES`] cases, unless `PROPTEST_CASES` says otherwise
/// (proptest reads that and its other `PROPTEST_*` variables into its default).
pub fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

/// What this thread allocated while measured.
#[derive(Clone, Copy)]
struct Tally {
    armed: bool,
    live: isize,
    peak: isize,
    largest: usize,
}

thread_local! {
    // Const and without a destructor: usable from inside the allocator.
    static TALLY: Cell<Tally> = const {
        Cell::new(Tally { armed: false, live: 0, peak: 0, largest: 0 })
    };
}

/// The system allocator, counting the allocations of a thread being measured. Per thread, so
/// tests running beside each other are not counted in each other's figures.
struct Counting;

#[global_allocator]
static COUNTING: Counting = Counting;

fn note(grown: usize, freed: usize) {
    let _ = TALLY.try_with(|t| {
        let mut s = t.get();
        if s.armed {
            s.live += grown as isize - freed as isize;
            s.peak = s.peak.max(s.live);
            s.largest = s.largest.max(grown);
            t.set(s);
        }
    });
}

// SAFETY: every call goes on to the system allocator unchanged; counting only reads sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), 0);
        // SAFETY: as the caller promised for this call.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), 0);
        // SAFETY: as the caller promised for this call.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, layout.size());
        // SAFETY: as the caller promised for this call.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size, layout.size());
        // SAFETY: as the caller promised for this call.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What a measured call allocated: the most it held at once and its largest single request.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub peak: usize,
    pub largest: usize,
}

/// Runs `f`, counting what this thread allocates meanwhile.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            TALLY.with(|t| {
                t.set(Tally {
                    armed: false,
                    ..t.get()
                })
            });
        }
    }
    TALLY.with(|t| {
        t.set(Tally {
            armed: true,
            live: 0,
            peak: 0,
            largest: 0,
        })
    });
    let disarm = Disarm;
    let out = f();
    let tally = TALLY.with(Cell::get);
    drop(disarm);
    (
        out,
        Usage {
            peak: tally.peak.max(0) as usize,
            largest: tally.largest,
        },
    )
}

/// Bytes a decoder may hold at once per byte of its input. Parsed JSON takes more room than
/// its text (`[0,0,...]` is 2 bytes of text per 32-byte value, and vectors grow by doubling);
/// what this bounds is an allocation sized by what the input claims rather than by what it is.
pub const PER_INPUT_BYTE: usize = 64;
/// Room for a decoder's own small allocations (paths, error messages), whatever its input.
pub const SMALL: usize = 64 << 10;

/// Fails the case if a decoder given `input` bytes held more than `fixed` bytes (its buffers of
/// a fixed size, plus [`SMALL`]) and [`PER_INPUT_BYTE`] per input byte at once.
pub fn within(usage: Usage, input: usize, fixed: usize) -> Result<(), TestCaseError> {
    let bound = SMALL + fixed + PER_INPUT_BYTE * input;
    prop_assert!(
        usage.peak <= bound,
        "{} bytes held at once (largest single allocation {}), over the bound of {bound} for \
         {input} input bytes",
        usage.peak,
        usage.largest
    );
    Ok(())
}

/// A 4-byte length field in a seed.
#[derive(Debug, Clone, Copy)]
pub struct LengthField {
    pub at: usize,
    pub big_endian: bool,
}

/// A real encoding to mutate, with where its length fields are.
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
    pub lengths: Vec<LengthField>,
}

/// Makes a target's checksums right again after a mutation.
pub type Fixup = fn(&mut [u8]);

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: Index,
        mask: u8,
    },
    Truncate {
        at: Index,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: Index,
        len: usize,
    },
    /// One of the seed's length fields set to `value`.
    Claim {
        field: Index,
        value: u32,
    },
    /// A range of a seed (this one or another) inserted: a frame or record out of place.
    Splice {
        from: Index,
        start: Index,
        len: usize,
        at: Index,
    },
    /// A range given twice.
    Repeat {
        start: Index,
        len: usize,
    },
}

/// Claims spread evenly over their bit lengths, 1 to 32: small ones that still fit the input
/// as often as 4 GiB ones. Shrinks towards the shortest claim that still fails.
fn claim() -> impl Strategy<Value = u32> {
    (1u32..=32, any::<u32>()).prop_map(|(bits, r)| (r >> (32 - bits)) | (1 << (bits - 1)))
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<Index>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1..64usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
        2 => (any::<Index>(), claim()).prop_map(|(field, value)| Mutation::Claim { field, value }),
        1 => (any::<Index>(), any::<Index>(), 1..256usize, any::<Index>()).prop_map(
            |(from, start, len, at)| Mutation::Splice {
                from,
                start,
                len,
                at
            }
        ),
        1 => (any::<Index>(), 1..256usize).prop_map(|(start, len)| Mutation::Repeat { start, len }),
    ]
}

/// One input: the seed it came from (or that arbitrary bytes stand in for), its bytes, and
/// how it was made (what a failure prints).
#[derive(Clone)]
pub struct Case {
    pub seed: usize,
    pub bytes: Vec<u8>,
    made: Vec<String>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.bytes[..self.bytes.len().min(96)];
        write!(
            f,
            "{} ({} bytes: {}{})",
            self.made.join(", "),
            self.bytes.len(),
            shown.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            if shown.len() < self.bytes.len() {
                "..."
            } else {
                ""
            }
        )
    }
}

fn mutate(seeds: &[Seed], pick: Index, mutations: &[Mutation], fixup: Option<Fixup>) -> Case {
    let seed_index = pick.index(seeds.len());
    let seed = &seeds[seed_index];
    let mut bytes = seed.bytes.clone();
    let mut made = vec![format!("seed {}", seed.name)];
    // Length fields first, where the seed has them: a later insertion or removal moves them.
    for m in mutations {
        if let Mutation::Claim { field, value } = m
            && !seed.lengths.is_empty()
        {
            let f = seed.lengths[field.index(seed.lengths.len())];
            let v = if f.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            };
            bytes[f.at..f.at + 4].copy_from_slice(&v);
            made.push(format!("length at byte {} set to {value}", f.at));
        }
    }
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Claim { .. } => {}
            Mutation::Flip { at, mask } if len > 0 => {
                let at = at.index(len);
                bytes[at] ^= mask;
                made.push(format!("byte {at} xor {mask:#04x}"));
            }
            Mutation::Truncate { at } if len > 0 => {
                let at = at.index(len);
                bytes.truncate(at);
                made.push(format!("cut at {at}"));
            }
            Mutation::Insert { at, bytes: new } => {
                let at = at.index(len + 1);
                bytes.splice(at..at, new.iter().copied());
                made.push(format!("{} bytes inserted at {at}", new.len()));
            }
            Mutation::Remove { at, len: n } if len > 0 => {
                let at = at.index(len);
                let end = (at + n).min(len);
                bytes.drain(at..end);
                made.push(format!("bytes {at}..{end} removed"));
            }
            Mutation::Splice {
                from,
                start,
                len: n,
                at,
            } => {
                let other = &seeds[from.index(seeds.len())];
                if other.bytes.is_empty() {
                    continue;
                }
                let start = start.index(other.bytes.len());
                let end = (start + n).min(other.bytes.len());
                let at = at.index(len + 1);
                bytes.splice(at..at, other.bytes[start..end].iter().copied());
                made.push(format!(
                    "bytes {start}..{end} of seed {} inserted at {at}",
                    other.name
                ));
            }
            Mutation::Repeat { start, len: n } if len > 0 => {
                let start = start.index(len);
                let end = (start + n).min(len);
                let copy = bytes[start..end].to_vec();
                bytes.splice(end..end, copy);
                made.push(format!("bytes {start}..{end} repeated"));
            }
            _ => {}
        }
    }
    if let Some(fixup) = fixup {
        fixup(&mut bytes);
        made.push("checksums made right".into());
    }
    Case {
        seed: seed_index,
        bytes,
        made,
    }
}

/// Inputs for a target: mostly mutations of `seeds` (one to four each, checksums then made
/// right by `fixup` in half of them), some arbitrary bytes.
pub fn inputs(seeds: Arc<Vec<Seed>>, fixup: Option<Fixup>) -> impl Strategy<Value = Case> {
    assert!(!seeds.is_empty(), "a target needs a seed");
    let count = seeds.len();
    let arbitrary = (any::<Index>(), vec(any::<u8>(), 0..512)).prop_map(move |(pick, bytes)| {
        let seed = pick.index(count);
        Case {
            seed,
            made: vec![format!("arbitrary bytes (in place of seed {seed})")],
            bytes,
        }
    });
    let mutated = (any::<Index>(), vec(mutation(), 1..5), any::<bool>()).prop_map(
        move |(pick, mutations, fix)| mutate(&seeds, pick, &mutations, fixup.filter(|_| fix)),
    );
    prop_oneof![1 => arbitrary, 4 => mutated]
}

/// How many of `n` inputs drawn from `strategy` `reached` holds for: how many get past a
/// decoder's first checks to what they guard. Drawn from a fixed seed, so the figure is the
/// same every run.
pub fn reach<S: Strategy>(strategy: S, n: usize, reached: impl Fn(&S::Value) -> bool) -> usize {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .filter(|_| reached(&strategy.new_tree(&mut runner).expect("an input").current()))
        .count()
}

mod tests {
    use super::*;

    /// The counting the targets rely on: an allocation made inside is seen, one made by
    /// another thread meanwhile is not.
    #[test]
    fn measure_counts_this_threads_allocations_only() {
        let (kept, usage) = measure(|| {
            let other = std::thread::spawn(|| vec![1u8; 8 << 20]);
            let v = vec![1u8; 1 << 20];
            drop(other.join().unwrap());
            v
        });
        assert_eq!(kept.len(), 1 << 20);
        assert!(usage.largest >= 1 << 20, "{usage:?}");
        assert!(usage.largest < 8 << 20, "{usage:?}");
    }
}
