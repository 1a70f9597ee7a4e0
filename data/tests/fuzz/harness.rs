//! The fuzzing harness shared by `data/tests/fuzz_readers.rs` and `model/tests/fuzz_loader.rs`
//! (the model test includes this file with `#[path]`).
//!
//! * **Inputs**: [`Damage`] is a proptest strategy of truncations and mutation lists (bit flips,
//!   byte sets, "interesting" integers written over length fields, insertions of random bytes or of
//!   format tokens, deletions, splices, duplications) applied to a valid fixture by
//!   [`Damage::apply`].
//! * **Properties checked for every case** by [`run_case`]: the reader neither panics (the case runs
//!   under `catch_unwind` in its own thread) nor hangs (no result within [`CASE_TIME_LIMIT`] fails
//!   the case), and its heap stays bounded: a counting global allocator measures the peak heap
//!   growth of the case against a per-reader bound, and refuses any single allocation above
//!   [`SINGLE_ALLOCATION_LIMIT`] (an allocation sized by an unchecked length field aborts the test
//!   binary, or fails cleanly where the code uses `try_reserve`).
//! * **Counts**: cases per reader are `BLIP3_FUZZ_CASES` when set, else the reader's CI default; the
//!   seed is fixed per reader (`BLIP3_FUZZ_SEED` changes it), so CI runs are reproducible. Each
//!   reader prints one summary line (cases, panics, hangs, inputs rejected / accepted, records).
//!
//! Cases of all readers are serialised by one lock so that the heap measurement of a case is not
//! disturbed by another test thread.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Wall-clock limit of one case (one read of one damaged input).
pub const CASE_TIME_LIMIT: Duration = Duration::from_secs(2);

/// Largest single allocation the counting allocator lets through (1 GiB).
pub const SINGLE_ALLOCATION_LIMIT: usize = 1 << 30;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A global allocator that counts live heap bytes and their peak, and refuses allocations above
/// [`SINGLE_ALLOCATION_LIMIT`].
pub struct CountingAlloc;

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` with the caller's layout; the counters only observe.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > SINGLE_ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > SINGLE_ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > SINGLE_ALLOCATION_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Serialises the fuzz tests of one binary (see the module documentation).
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one case read: records that came out good, records reported bad, and whether the input
/// was refused as a whole (a fatal open error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Good records.
    pub good: u64,
    /// Bad records reported (error items, problems, bad-sample counts).
    pub bad: u64,
    /// The reader refused the input at open time.
    pub refused: bool,
}

impl Outcome {
    /// An input refused at open time.
    pub fn refused() -> Self {
        Outcome {
            refused: true,
            ..Outcome::default()
        }
    }

    /// Whether the input was rejected: refused, or at least one bad record.
    pub fn rejected(&self) -> bool {
        self.refused || self.bad > 0
    }
}

/// The heap and time a case used.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Peak heap growth over the case, in bytes.
    pub peak_heap: usize,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// Runs `read` in its own thread: a panic or a run past [`CASE_TIME_LIMIT`] fails the case, and so
/// does a peak heap growth above `max_heap` bytes.
pub fn run_case<T: Send + 'static>(
    max_heap: usize,
    read: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, Usage), TestCaseError> {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("fuzz-case".into())
        .spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(read));
            let _ = tx.send(result);
        })
        .map_err(|e| TestCaseError::fail(format!("cannot spawn the case thread: {e}")))?;
    let result = match rx.recv_timeout(CASE_TIME_LIMIT) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => {
            return Err(TestCaseError::fail(format!(
                "HANG: no result within {CASE_TIME_LIMIT:?}"
            )));
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err(TestCaseError::fail("the case thread died without a result"));
        }
    };
    let _ = handle.join();
    let elapsed = start.elapsed();
    let value = result.map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        TestCaseError::fail(format!("PANIC: {what}"))
    })?;
    let peak_heap = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    if peak_heap > max_heap {
        return Err(TestCaseError::fail(format!(
            "MEMORY: peak heap growth {peak_heap} bytes exceeds the bound of {max_heap}"
        )));
    }
    Ok((value, Usage { peak_heap, elapsed }))
}

/// Cases per reader: `BLIP3_FUZZ_CASES`, else `default`.
pub fn case_count(default: u32) -> u32 {
    match std::env::var("BLIP3_FUZZ_CASES") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("BLIP3_FUZZ_CASES={text:?} is not a number")),
        Err(_) => default,
    }
}

/// A 32-byte seed from the reader's name and `BLIP3_FUZZ_SEED` (default 0).
fn seed(name: &str) -> [u8; 32] {
    let extra: u64 = std::env::var("BLIP3_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut state = 0xcbf2_9ce4_8422_2325_u64 ^ extra;
    for b in name.bytes() {
        state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        // SplitMix64 steps.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// Per-reader totals, printed as one line at the end.
#[derive(Debug, Default)]
pub struct Tally {
    /// Cases run.
    pub cases: u64,
    /// Inputs rejected (refused at open, or at least one bad record reported).
    pub rejected: u64,
    /// Inputs read without any error.
    pub accepted: u64,
    /// Good records over all cases.
    pub good: u64,
    /// Bad records over all cases.
    pub bad: u64,
    /// Largest peak heap growth of a case.
    pub max_heap: usize,
    /// Slowest case.
    pub max_time: Duration,
    /// Reader-specific counters.
    pub notes: Vec<(&'static str, u64)>,
}

impl Tally {
    /// Adds one case.
    pub fn add(&mut self, outcome: Outcome, usage: Usage) {
        self.cases += 1;
        if outcome.rejected() {
            self.rejected += 1;
        } else {
            self.accepted += 1;
        }
        self.good += outcome.good;
        self.bad += outcome.bad;
        self.max_heap = self.max_heap.max(usage.peak_heap);
        self.max_time = self.max_time.max(usage.elapsed);
    }

    /// Adds `n` to a named counter.
    pub fn note(&mut self, name: &'static str, n: u64) {
        match self.notes.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v += n,
            None => self.notes.push((name, n)),
        }
    }
}

/// Runs `cases` cases of `strategy` through `case` with the reader's fixed seed, then prints the
/// summary line. `case` returns what it read and its usage (from [`run_case`]).
pub fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    case: impl Fn(S::Value, &mut Tally) -> Result<(Outcome, Usage), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let _guard = exclusive();
    let cases = case_count(default_cases);
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed(name));
    let mut runner = TestRunner::new_with_rng(config, rng);
    let tally = RefCell::new(Tally::default());
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        let mut notes = Tally::default();
        let (outcome, usage) = case(input, &mut notes)?;
        let mut tally = tally.borrow_mut();
        tally.add(outcome, usage);
        for (k, v) in notes.notes {
            tally.note(k, v);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
    let t = tally.into_inner();
    let notes: String = t.notes.iter().map(|(k, v)| format!(", {k} {v}")).collect();
    println!(
        "fuzz {name}: {} cases, 0 panics, 0 hangs; {} inputs rejected, {} accepted; records {} good, {} bad; max heap {} KiB, slowest case {} ms{notes}; {:.1} s",
        t.cases,
        t.rejected,
        t.accepted,
        t.good,
        t.bad,
        t.max_heap / 1024,
        t.max_time.as_millis(),
        started.elapsed().as_secs_f64(),
    );
}

// ------------------------------------------------------------------------------------------------
// Mutations
// ------------------------------------------------------------------------------------------------

/// Integers written over a fixture (length fields, counts, offsets).
const INTERESTING: [u64; 16] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    100_000_000,
];

/// One edit of a byte string. Positions are [`Index`]es, scaled to the current length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    FlipBit(Index, u8),
    /// Overwrite one byte.
    SetByte(Index, u8),
    /// Overwrite 1, 2, 4 or 8 bytes with an [`INTERESTING`] integer, little or big endian.
    Interesting(Index, u8, usize, bool),
    /// Insert random bytes.
    Insert(Index, Vec<u8>),
    /// Insert a token of the format's dictionary.
    InsertToken(Index, Index),
    /// Delete up to this many bytes.
    Delete(Index, u16),
    /// Copy a chunk of the input over another place (overwrite).
    Splice(Index, Index, u16),
    /// Duplicate a chunk in place.
    Duplicate(Index, u16),
    /// Cut the input here.
    Truncate(Index),
}

/// What is done to a fixture: a clean cut, or a list of mutations.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Keep only a prefix.
    Truncate(Index),
    /// Apply these mutations in order.
    Mutate(Vec<Mutation>),
}

/// Mutations of up to `max` edits; a quarter of the cases are clean truncations.
pub fn damage(max: usize) -> impl Strategy<Value = Damage> {
    let mutation = prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        3 => (any::<Index>(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], 0..INTERESTING.len(), any::<bool>())
            .prop_map(|(i, w, k, be)| Mutation::Interesting(i, w, k, be)),
        2 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        2 => (any::<Index>(), 1u16..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), any::<Index>(), 1u16..256).prop_map(|(d, s, n)| Mutation::Splice(d, s, n)),
        1 => (any::<Index>(), 1u16..128).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ];
    prop_oneof![
        1 => any::<Index>().prop_map(Damage::Truncate),
        3 => prop::collection::vec(mutation, 1..=max).prop_map(Damage::Mutate),
    ]
}

impl Damage {
    /// Applies the damage to `data`; `tokens` is the format's dictionary (may be empty).
    pub fn apply(&self, data: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = data.to_vec();
        match self {
            Damage::Truncate(at) => {
                let cut = at.index(out.len() + 1).min(out.len());
                out.truncate(cut);
            }
            Damage::Mutate(list) => {
                for m in list {
                    apply_one(&mut out, m, tokens);
                }
            }
        }
        out
    }

    /// The cut point of a clean truncation of `len` bytes.
    pub fn cut(&self, len: usize) -> Option<usize> {
        match self {
            Damage::Truncate(at) => Some(at.index(len + 1).min(len)),
            Damage::Mutate(_) => None,
        }
    }
}

fn apply_one(out: &mut Vec<u8>, m: &Mutation, tokens: &[&[u8]]) {
    let len = out.len();
    let insert_at = |i: &Index| i.index(len + 1);
    match m {
        Mutation::Insert(i, bytes) => {
            let at = insert_at(i);
            out.splice(at..at, bytes.iter().copied());
        }
        Mutation::InsertToken(i, t) => {
            if tokens.is_empty() {
                return;
            }
            let at = insert_at(i);
            let token = tokens[t.index(tokens.len())];
            out.splice(at..at, token.iter().copied());
        }
        _ if len == 0 => {}
        Mutation::FlipBit(i, bit) => out[i.index(len)] ^= 1 << (bit % 8),
        Mutation::SetByte(i, v) => out[i.index(len)] = *v,
        Mutation::Interesting(i, width, which, big_endian) => {
            let value = INTERESTING[*which % INTERESTING.len()];
            let width = usize::from(*width).min(8);
            let bytes = if *big_endian {
                value.to_be_bytes()[8 - width..].to_vec()
            } else {
                value.to_le_bytes()[..width].to_vec()
            };
            let at = i.index(len);
            for (k, b) in bytes.into_iter().enumerate() {
                if at + k < len {
                    out[at + k] = b;
                }
            }
        }
        Mutation::Delete(i, n) => {
            let at = i.index(len);
            let end = (at + usize::from(*n)).min(len);
            out.drain(at..end);
        }
        Mutation::Splice(dst, src, n) => {
            let (d, s) = (dst.index(len), src.index(len));
            let n = usize::from(*n).min(len - d).min(len - s);
            let chunk = out[s..s + n].to_vec();
            out[d..d + n].copy_from_slice(&chunk);
        }
        Mutation::Duplicate(i, n) => {
            let at = i.index(len);
            let end = (at + usize::from(*n)).min(len);
            let chunk = out[at..end].to_vec();
            out.splice(end..end, chunk);
        }
        Mutation::Truncate(i) => out.truncate(i.index(len + 1)),
    }
}

/// Tokens worth inserting into JSON (and JSON-lines) inputs.
pub const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\r\n",
    b" ",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"-0.0",
    b"18446744073709551616",
    b"4294967296",
    b"\"\\ud800\"",
    b"\"\\u0000\"",
    b"<image>",
    b"<image>\\n<image>",
    b"\"<image>\"",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\x00",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
    b"\"image\": null,",
    b"\"image\": [\"a.jpg\", \"b.jpg\"],",
    b"\"images\": [null, {}],",
    b"\"conversations\": [],",
    b"{\"from\": \"gpt\", \"value\": \"\"},",
    b"{\"from\": \"human\", \"value\": \"<image>\"},",
    b"\"id\": 1e300,",
    b"\"completions\": {\"response\": [\"a\"], \"annotations\": [null]},",
    b"\"texts\": [null, \"x\"], \"images\": [\"a.jpg\", null],",
    b"\"../../../../etc/passwd\"",
    b"\"/dev/zero\"",
    b"\"http://example.com/x.jpg\"",
];
