//! Linearizability checker for a recorded [`History`](crate::history::History) of reads,
//! writes and deletes, in the style of Porcupine: the Wing & Gong / Lowe (WGL) backtracking
//! search with memoization of visited `(linearized set, model state)` pairs.
//!
//! It sits at the end of the fault suite: the workload records events, the nemesis injects
//! faults, and [`check`] decides whether what the clients saw could have come from a single
//! register per key whose operations each took effect atomically at one instant between
//! their invocation and their completion.
//!
//! How the history is read:
//! * An operation is an `invoke` and the next completion of the same process. `fail` means
//!   it certainly did not take effect: it is dropped. `info`, or no completion before the
//!   history ends, means unknown: its return time is +infinity, so it may be linearized
//!   anywhere after its invocation; linearizing it "last", after everything that constrains
//!   it, is how "it never happened" is modelled. Reads with an unknown outcome observed
//!   nothing and constrain nothing, so they are dropped too.
//! * The model is a register per key whose state is absent (`None`, the initial state) or
//!   `Some(value)`: write(v) sets `Some(v)`, delete sets `None`, and a read is legal iff what
//!   it observed equals the state (a `null` observation means absent). A write of JSON
//!   `null` is taken as absence, since no read could tell the two apart.
//! * Keys are independent registers, so the history is partitioned by key and every key is
//!   checked on its own (P-compositionality): many small searches instead of one huge one.
//! * At equal timestamps a call is ordered before a return, i.e. an operation invoked at the
//!   same instant another one completed counts as concurrent with it. That is the permissive
//!   choice: clocks of nanosecond resolution tie rarely, and a tie must not produce a false
//!   violation.
//!
//! Before the search, unknown writes nobody read are dropped and unknown writes somebody read
//! get a return time (`reduce_unknown_writes`). The search (`search`) is WGL with pruning
//! rules specific to this register, which keep it fast at high concurrency, and memoizes
//! compact keys whose size depends on concurrency rather than on the length of the history.
//!
//! The search is bounded by [`Limits`]: a deadline for the whole check and a maximum number
//! of memoized states per key. A key whose search exceeds either gets [`Verdict::Unknown`],
//! which callers must count as a failure, never as a pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::history::{Event, EventType, Func};

/// Bounds of the search.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock budget of the whole [`check`]; keys still unsolved when it runs out are
    /// [`Verdict::Unknown`].
    pub timeout: Duration,
    /// Maximum number of memoized `(linearized set, state)` entries of one key's search,
    /// the memory bound: an entry costs about 150 to 250 bytes (more with hundreds of
    /// operations in flight, or of unknown outcome), so the default allows about 1 GB. The
    /// search memoizes about a million states a second.
    pub max_states: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            max_states: 5_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search ran out of its [`Limits`]: no answer, to be treated as a failure.
    Unknown,
}

impl Verdict {
    /// Severity for the worst-of aggregation: NotLinearizable > Unknown > Linearizable.
    fn severity(&self) -> u8 {
        match self {
            Verdict::Linearizable => 0,
            Verdict::Unknown => 1,
            Verdict::NotLinearizable => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    /// Operations checked for this key (after dropping `fail`s and unknown reads).
    pub ops: usize,
    /// On a violation: the operations involved, for printing: the longest linearizable
    /// prefix found and the operations that could not be placed after it (each shown with
    /// its process, function, value, completion type and invoke/complete times), plus a
    /// human-readable explanation. On [`Verdict::Unknown`]: which limit was exceeded.
    pub explanation: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Worst verdict over the keys: NotLinearizable > Unknown > Linearizable.
    pub verdict: Verdict,
    /// One result per key, sorted by key.
    pub keys: Vec<KeyResult>,
    /// Operations checked over all keys.
    pub ops: usize,
}

/// Checks `history` for linearizability against a per-key register model.
///
/// Returns `Err` when the history is malformed (a completion without an invoke, two invokes
/// of one process without a completion in between, a completion whose `f` or `key` differs
/// from its invoke's, or a completion timed before its invoke).
pub fn check(history: &[Event], limits: &Limits) -> Result<Report, String> {
    let deadline = Instant::now().checked_add(limits.timeout);
    let ops = collect_ops(history)?;

    let mut by_key: BTreeMap<&str, Vec<Op<'_>>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op);
    }

    // Smallest keys first: the deadline is shared, and one pathological key should not
    // leave the easy ones unchecked.
    let mut order: Vec<(&str, Vec<Op<'_>>)> = by_key.into_iter().collect();
    order.sort_by_key(|(key, ops)| (ops.len(), *key));

    let mut keys: Vec<KeyResult> = order
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops, deadline, limits.max_states))
        .collect();
    keys.sort_by(|a, b| a.key.cmp(&b.key));

    let verdict = keys
        .iter()
        .map(|k| k.verdict.clone())
        .max_by_key(Verdict::severity)
        .unwrap_or(Verdict::Linearizable);
    let ops = keys.iter().map(|k| k.ops).sum();
    Ok(Report { verdict, keys, ops })
}

/// How an operation completed, for the explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completion {
    Ok,
    Info,
    /// The history ended before the operation completed.
    Missing,
}

/// One operation of the history as the checker sees it, borrowing from the events.
#[derive(Debug, Clone)]
struct Op<'a> {
    process: u64,
    f: Func,
    key: &'a str,
    /// The value written (writes), the value read (reads), `null` (deletes).
    value: &'a Value,
    call: u64,
    /// Completion time; `None` for an unknown outcome (+infinity).
    ret: Option<u64>,
    completion: Completion,
}

/// Pairs invokes with completions, validating the history, and keeps the operations that
/// can constrain a linearization (in invoke order).
fn collect_ops(history: &[Event]) -> Result<Vec<Op<'_>>, String> {
    // process -> index of its pending invoke.
    let mut pending: HashMap<u64, usize> = HashMap::new();
    // (index of the invoke, operation), sorted by invoke at the end for determinism.
    let mut ops: Vec<(usize, Op<'_>)> = Vec::new();

    for (i, e) in history.iter().enumerate() {
        if e.kind == EventType::Invoke {
            if let Some(&j) = pending.get(&e.process) {
                return Err(format!(
                    "malformed history: event {i} invokes {} {:?} on process {} whose invoke \
                     at event {j} ({} {:?}) has no completion",
                    func_name(e.f),
                    e.key,
                    e.process,
                    func_name(history[j].f),
                    history[j].key,
                ));
            }
            pending.insert(e.process, i);
            continue;
        }
        let Some(j) = pending.remove(&e.process) else {
            return Err(format!(
                "malformed history: event {i} ({:?} {} {:?}) completes an operation of process \
                 {} that has no pending invoke",
                e.kind,
                func_name(e.f),
                e.key,
                e.process,
            ));
        };
        let inv = &history[j];
        if inv.f != e.f || inv.key != e.key {
            return Err(format!(
                "malformed history: event {i} completes {} {:?} but process {}'s invoke at \
                 event {j} was {} {:?}",
                func_name(e.f),
                e.key,
                e.process,
                func_name(inv.f),
                inv.key,
            ));
        }
        if e.time < inv.time {
            return Err(format!(
                "malformed history: event {i} (process {}) completes at {} ns, before its \
                 invoke at event {j} ({} ns)",
                e.process, e.time, inv.time,
            ));
        }
        let completion = match e.kind {
            EventType::Ok => Completion::Ok,
            EventType::Info => Completion::Info,
            // Certainly did not take effect: nothing to linearize.
            EventType::Fail | EventType::Invoke => continue,
        };
        if e.f == Func::Read && completion != Completion::Ok {
            // A read with an unknown outcome observed nothing.
            continue;
        }
        ops.push((
            j,
            Op {
                process: inv.process,
                f: inv.f,
                key: &inv.key,
                // What a read saw is on its completion; what a write wrote is on its invoke.
                value: if inv.f == Func::Read {
                    &e.value
                } else {
                    &inv.value
                },
                call: inv.time,
                ret: (completion == Completion::Ok).then_some(e.time),
                completion,
            },
        ));
    }

    // Invokes never completed: unknown outcome, as if completed with `info`.
    for (_, j) in pending {
        let inv = &history[j];
        if inv.f == Func::Read {
            continue;
        }
        ops.push((
            j,
            Op {
                process: inv.process,
                f: inv.f,
                key: &inv.key,
                value: &inv.value,
                call: inv.time,
                ret: None,
                completion: Completion::Missing,
            },
        ));
    }
    ops.sort_by_key(|(j, _)| *j);
    Ok(ops.into_iter().map(|(_, op)| op).collect())
}

fn func_name(f: Func) -> &'static str {
    match f {
        Func::Read => "read",
        Func::Write => "write",
        Func::Delete => "delete",
    }
}

// ---------------------------------------------------------------------------------------
// Model and value interning
// ---------------------------------------------------------------------------------------

/// Model state id: 0 is "absent", `n > 0` is `Some(value n)` of the key's interner.
type State = u32;
const ABSENT: State = 0;

/// An operation reduced to what the model needs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Write(State),
    Delete,
    Read(State),
}

/// The register's transition: the state after `kind`, or `None` if `kind` is illegal in
/// `state`.
fn step(state: State, kind: Kind) -> Option<State> {
    match kind {
        Kind::Write(v) => Some(v),
        Kind::Delete => Some(ABSENT),
        Kind::Read(seen) => (seen == state).then_some(state),
    }
}

/// A JSON value hashed consistently with its `==` (object keys in sorted order, so the
/// result does not depend on serde_json's map representation).
struct ValueKey<'a>(&'a Value);

impl PartialEq for ValueKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ValueKey<'_> {}

impl Hash for ValueKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_value(self.0, h);
    }
}

fn hash_value<H: Hasher>(v: &Value, h: &mut H) {
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => {
            h.write_u8(1);
            b.hash(h);
        }
        Value::Number(n) => {
            h.write_u8(2);
            // `Number`'s == compares representation (u64, i64 or f64) and value.
            if let Some(u) = n.as_u64() {
                h.write_u8(0);
                h.write_u64(u);
            } else if let Some(i) = n.as_i64() {
                h.write_u8(1);
                h.write_i64(i);
            } else if let Some(f) = n.as_f64() {
                h.write_u8(2);
                // 0.0 == -0.0 but their bits differ.
                h.write_u64(if f == 0.0 { 0 } else { f.to_bits() });
            } else {
                n.to_string().hash(h);
            }
        }
        Value::String(s) => {
            h.write_u8(3);
            s.hash(h);
        }
        Value::Array(a) => {
            h.write_u8(4);
            h.write_usize(a.len());
            for x in a {
                hash_value(x, h);
            }
        }
        Value::Object(m) => {
            h.write_u8(5);
            h.write_usize(m.len());
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, x) in entries {
                k.hash(h);
                hash_value(x, h);
            }
        }
    }
}

/// Maps the values of one key to small state ids, so that the model state is a `u32` and
/// cache entries compare cheaply.
struct Interner<'a> {
    ids: HashMap<ValueKey<'a>, State>,
    values: Vec<&'a Value>,
}

impl<'a> Interner<'a> {
    fn new() -> Self {
        Interner {
            ids: HashMap::new(),
            values: Vec::new(),
        }
    }

    /// `null` is absence (a read of an absent key records `null`).
    fn intern(&mut self, v: &'a Value) -> State {
        if v.is_null() {
            return ABSENT;
        }
        let next = self.values.len() as State + 1;
        let id = *self.ids.entry(ValueKey(v)).or_insert(next);
        if id == next {
            self.values.push(v);
        }
        id
    }

    fn describe(&self, state: State) -> String {
        match state
            .checked_sub(1)
            .and_then(|i| self.values.get(i as usize))
        {
            Some(v) => format!("Some({v})"),
            None => "None".to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The WGL search
// ---------------------------------------------------------------------------------------

/// Fixed-size bitset of linearized operations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    fn clear(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// The set of linearized operations, indexed by rank: the operations that must be
/// linearized (`known`) are ranked by invoke time, the lazy ones (see [`search`]) apart.
///
/// Memoizing the whole set as a bitset would cost one bit per operation of the key in every
/// cache entry (kilobytes for a long history, times millions of entries). But every known
/// operation invoked before `first_zero`, the earliest-invoked one not yet linearized, is
/// linearized, and every linearized one after it was invoked before that one returned. So
/// `first_zero` plus the words from it to the highest set bit describe the set in a few
/// words, whose length is bounded by concurrency, not by history length.
struct Linearized {
    /// Rank of each operation within its class.
    rank: Vec<usize>,
    lazy: Vec<bool>,
    known: Bitset,
    /// The lazy operations linearized (as helpers).
    helpers: Bitset,
    /// Smallest rank not in `known` (the number of known operations if all are).
    first_zero: usize,
    /// `known.0[hi_word..]` are all zero.
    hi_word: usize,
}

impl Linearized {
    fn new(times: &[(u64, u64)], lazy: &[bool]) -> Self {
        let mut known: Vec<usize> = (0..times.len()).filter(|&i| !lazy[i]).collect();
        known.sort_by_key(|&i| (times[i].0, i));
        let mut rank = vec![0; times.len()];
        for (r, &i) in known.iter().enumerate() {
            rank[i] = r;
        }
        let mut lazy_count = 0;
        for i in (0..times.len()).filter(|&i| lazy[i]) {
            rank[i] = lazy_count;
            lazy_count += 1;
        }
        Linearized {
            rank,
            lazy: lazy.to_vec(),
            known: Bitset::new(known.len()),
            helpers: Bitset::new(lazy_count),
            first_zero: 0,
            hi_word: 0,
        }
    }

    fn get(&self, op: usize) -> bool {
        if self.lazy[op] {
            self.helpers.get(self.rank[op])
        } else {
            self.known.get(self.rank[op])
        }
    }

    fn set(&mut self, op: usize) {
        let r = self.rank[op];
        if self.lazy[op] {
            self.helpers.set(r);
            return;
        }
        self.known.set(r);
        self.hi_word = self.hi_word.max(r / 64 + 1);
        if r == self.first_zero {
            let mut w = r / 64;
            while self.known.0.get(w) == Some(&u64::MAX) {
                w += 1;
            }
            // Bits past the last operation stay zero, so this stops at the end at the latest.
            self.first_zero = w * 64
                + self
                    .known
                    .0
                    .get(w)
                    .map_or(0, |x| x.trailing_ones() as usize);
        }
    }

    fn clear(&mut self, op: usize) {
        let r = self.rank[op];
        if self.lazy[op] {
            self.helpers.clear(r);
            return;
        }
        self.known.clear(r);
        self.first_zero = self.first_zero.min(r);
        while self.hi_word > 0 && self.known.0.get(self.hi_word - 1) == Some(&0) {
            self.hi_word -= 1;
        }
    }

    /// Writes the memoization key of the known operations and `state` into `out`:
    /// `[state, first_zero, known words from first_zero's to hi_word..]`. The helpers used
    /// are compared separately (see [`Cache`]).
    fn key(&self, state: State, out: &mut Vec<u64>) {
        out.clear();
        out.push(u64::from(state));
        out.push(self.first_zero as u64);
        if let Some(window) = self.known.0.get(self.first_zero / 64..self.hi_word) {
            out.extend_from_slice(window);
        }
    }
}

/// FxHash-style word hasher: the keys are a few words, SipHash would dominate the search.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

/// Words of a [`Linearized::helpers`] bitset.
type HelperSet = Box<[u64]>;

/// Memoized search nodes: for each key of the known operations linearized and the state
/// (see [`Linearized::key`]), the sets of helpers used on the way there.
///
/// A node is pruned if a node with the same key and a subset of its helpers was reached
/// before: helpers are never required, and the unused ones stay available, so whatever
/// could be completed from the larger set could be from the smaller one. That earlier node
/// failed, since every step linearizes a known operation, so it cannot be an ancestor of
/// the new one, and reaching a success ends the search. Without this, each count of
/// helpers used on the way to the same point would be a distinct node.
#[derive(Default)]
struct Cache {
    nodes: HashMap<Box<[u64]>, Vec<HelperSet>, BuildHasherDefault<WordHasher>>,
    /// Helper sets stored over all keys: the memory measure.
    len: usize,
}

impl Cache {
    /// Records the node and returns true if it is new and not dominated.
    fn visit(&mut self, key: &[u64], helpers: &[u64]) -> bool {
        let subset = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(x, y)| x & !y == 0);
        match self.nodes.get_mut(key) {
            None => {
                self.nodes.insert(key.into(), vec![helpers.into()]);
                self.len += 1;
                true
            }
            Some(seen) => {
                if seen.iter().any(|s| subset(s, helpers)) {
                    return false;
                }
                // Keep an antichain: the new set dominates its supersets.
                let before = seen.len();
                seen.retain(|s| !subset(helpers, s));
                seen.push(helpers.into());
                self.len = self.len + seen.len() - before;
                true
            }
        }
    }
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// The doubly-linked list of call and return entries sorted by time, with a sentinel at
/// index 0, of the operations that must be linearized (not the lazy ones, see [`search`]). Lifting an operation unlinks its call and return entries; unlifting relinks
/// them in place (their own `prev`/`next` are left untouched while unlinked, which is what
/// makes the O(1) relink correct under LIFO backtracking).
struct Entries {
    /// Operation of each entry (unused for the sentinel).
    op: Vec<usize>,
    /// For a call entry, the index of its return entry; `NIL` for return entries.
    ret_of: Vec<usize>,
    /// Time of each entry.
    time: Vec<u64>,
    prev: Vec<usize>,
    next: Vec<usize>,
}

impl Entries {
    fn new(ops: &[(u64, u64)], lazy: &[bool]) -> Self {
        // (time, 0 = call / 1 = return, op): calls before returns at equal times.
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, &(call, ret)) in ops.iter().enumerate() {
            if !lazy[i] {
                order.push((call, 0, i));
                order.push((ret, 1, i));
            }
        }
        order.sort_unstable();

        let n = order.len() + 1;
        let mut e = Entries {
            op: vec![0; n],
            ret_of: vec![NIL; n],
            time: vec![0; n],
            prev: vec![NIL; n],
            next: vec![NIL; n],
        };
        let mut call_entry = vec![NIL; ops.len()];
        for (pos, &(time, is_ret, op)) in order.iter().enumerate() {
            let idx = pos + 1;
            e.op[idx] = op;
            e.time[idx] = time;
            e.prev[idx] = idx - 1;
            e.next[idx - 1] = idx;
            if is_ret == 0 {
                call_entry[op] = idx;
            } else if let Some(&c) = call_entry.get(op) {
                // A call sorts before its return (call <= ret, and calls first on ties),
                // so `c` is set here.
                if c != NIL {
                    e.ret_of[c] = idx;
                }
            }
        }
        e
    }

    fn is_call(&self, idx: usize) -> bool {
        self.ret_of[idx] != NIL
    }

    /// The first return entry, `NIL` if none.
    fn first_return(&self) -> usize {
        let mut e = self.next[HEAD];
        while e != NIL && self.is_call(e) {
            e = self.next[e];
        }
        e
    }

    /// Time of the first return entry: operations invoked up to then (calls first on ties)
    /// may be linearized now. +infinity when there is none.
    fn frontier(&self) -> u64 {
        match self.first_return() {
            NIL => u64::MAX,
            e => self.time[e],
        }
    }

    fn unlink(&mut self, idx: usize) {
        let (p, n) = (self.prev[idx], self.next[idx]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, idx: usize) {
        let (p, n) = (self.prev[idx], self.next[idx]);
        self.next[p] = idx;
        if n != NIL {
            self.prev[n] = idx;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret_of[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.ret_of[call]);
        self.relink(call);
    }
}

enum SearchResult {
    Linearizable,
    /// No linearization exists; the longest linearizable prefix found (operation indices in
    /// linearization order) and the state after it.
    Violation {
        prefix: Vec<usize>,
        state: State,
    },
    /// A limit was hit; the reason.
    Exhausted(String),
}

/// One choice of the search: a linearized operation (its call entry), the unknown-outcome
/// write or delete linearized just before it to explain what it read (if any, an operation
/// index), and the state before both.
#[derive(Debug, Clone, Copy)]
struct Frame {
    entry: usize,
    helper: Option<usize>,
    /// Start of this frame's blind writes in the absorbed stack (see [`blind_writes`]).
    absorbed_from: usize,
    state: State,
    /// The node's only move (a legal read): backtracking past it fails the node.
    forced: bool,
}

/// The lazy operations, by the state they leave, each list sorted by invoke time.
struct Helpers(HashMap<State, Vec<(u64, usize)>>);

impl Helpers {
    fn new(kinds: &[Kind], times: &[(u64, u64)], lazy: &[bool]) -> Self {
        let mut by_result: HashMap<State, Vec<(u64, usize)>> = HashMap::new();
        for (i, kind) in kinds.iter().enumerate() {
            if let (true, Some(result)) = (lazy[i], result_of(*kind)) {
                by_result.entry(result).or_default().push((times[i].0, i));
            }
        }
        for list in by_result.values_mut() {
            list.sort_unstable();
        }
        Helpers(by_result)
    }

    /// The earliest-invoked lazy operation not yet linearized that leaves `seen` and was
    /// invoked by `frontier`. Any such one would do: from now on each stays available
    /// forever (infinite return time) with the same effect, so they are interchangeable.
    fn find(&self, seen: State, frontier: u64, linearized: &Linearized) -> Option<usize> {
        self.0
            .get(&seen)?
            .iter()
            .take_while(|&&(call, _)| call <= frontier)
            .find(|&&(_, op)| !linearized.get(op))
            .map(|&(_, op)| op)
    }
}

/// The state an operation leaves behind if it is linearized (reads leave it unchanged, so
/// this is only meaningful for writes and deletes).
fn result_of(kind: Kind) -> Option<State> {
    match kind {
        Kind::Write(v) => Some(v),
        Kind::Delete => Some(ABSENT),
        Kind::Read(_) => None,
    }
}

/// WGL with memoization over one key (the shape of Porcupine's `checkSingle`): repeatedly
/// take the first call entry whose operation is legal in the current state and whose
/// `(linearized ∪ {op}, new state)` was not seen before, lift it out of the list and push it;
/// on reaching a return entry (an operation that must have been linearized by then but was
/// not), pop the last choice and try the next entry after it.
///
/// On top of that, moves that cannot be needed are pruned; each rule keeps some valid
/// linearization reachable whenever one exists (the argument is where the rule is applied):
/// * a candidate read that is legal now is the node's only move;
/// * a value written only once cannot come back, so while reads of the current value
///   remain, the state must not change;
/// * writes nobody read are linearized invisibly along with other writes ([`blind_writes`]);
/// * operations of unknown outcome are only tried to explain a read (below), and a node
///   reached again with more of them used is dominated ([`Cache`]).
///
/// Plain WGL times out (30 s, millions of states) on keys with about 20 operations in flight;
/// with these rules such histories are decided in milliseconds, violations included.
///
/// Operations of unknown outcome (`lazy`) are not tried on their own: linearized anywhere
/// but immediately before a read that observes their result, they are overwritten or
/// redundant, and a linearization stays valid with them moved to the very end ("never
/// happened", allowed by their infinite return time). So one is only linearized together
/// with a read that is illegal without it, and the search succeeds once every other
/// operation is linearized. Trying them eagerly, as plain WGL does, makes every subset of
/// the pending ones a distinct cache state, which explodes on violations. They are kept
/// out of the entry list (which they would lengthen forever with their calls) in
/// [`Helpers`], and one is eligible when invoked by the time of the first return entry,
/// exactly when its call entry would have been a candidate.
fn search(
    kinds: &[Kind],
    times: &[(u64, u64)],
    lazy: &[bool],
    deadline: Option<Instant>,
    max_states: usize,
) -> SearchResult {
    let n = kinds.len();
    let mut entries = Entries::new(times, lazy);
    let helpers = Helpers::new(kinds, times, lazy);
    let blind = blind_writes(kinds, lazy);
    // Per state id: how many writes produce it, and how many reads of it are not linearized.
    let states = kinds
        .iter()
        .map(|k| match *k {
            Kind::Write(v) | Kind::Read(v) => v as usize + 1,
            Kind::Delete => 1,
        })
        .max()
        .unwrap_or(1);
    let mut writes_of = vec![0usize; states];
    let mut unread = vec![0usize; states];
    for k in kinds {
        match *k {
            Kind::Write(v) => writes_of[v as usize] += 1,
            Kind::Read(v) => unread[v as usize] += 1,
            Kind::Delete => {}
        }
    }

    let mut state: State = ABSENT;
    let mut bits = Linearized::new(times, lazy);
    let mut cache = Cache::default();
    let mut key: Vec<u64> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // Call entries of the blind writes absorbed by the frames, in push order.
    let mut absorbed: Vec<usize> = Vec::new();
    let mut remaining = lazy.iter().filter(|&&l| !l).count();

    // Longest prefix, maintained incrementally: `low_water` is the shortest the stack has
    // been since `best` was last updated, so the first `low_water` frames of `best` still
    // equal the stack's bottom and only the part above needs copying. `best_ops` holds the
    // operations of the frames in linearization order, `best_ends[i]` the end of frame i's.
    let mut best_ops: Vec<usize> = Vec::new();
    let mut best_ends: Vec<usize> = Vec::new();
    let mut best_state = ABSENT;
    let mut low_water = 0usize;

    let mut steps: u64 = 0;
    // `entry` is the scan position in the current node; `at_node_start` says the node was
    // just entered and its legal reads have not been looked at yet.
    let mut entry = entries.next[HEAD];
    let mut at_node_start = true;
    while remaining > 0 {
        steps += 1;
        if steps.is_multiple_of(1024) {
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return SearchResult::Exhausted(format!(
                        "time budget exhausted after {} memoized states (depth {} of {n})",
                        cache.len,
                        best_ops.len()
                    ));
                }
            }
        }

        // The move to try: (call entry, helper, new state, forced).
        let mut next_move: Option<(usize, Option<usize>, State, bool)> = None;
        if at_node_start {
            at_node_start = false;
            // A candidate read that is legal now can be linearized first without loss: in
            // any valid continuation, moving it to the front leaves every other operation's
            // state unchanged (reads change nothing) and breaks no real-time order (whatever
            // returned before it was invoked is already linearized, or it would not be a
            // candidate). So it is the node's only move, and if it fails the node fails.
            let mut e = entries.next[HEAD];
            while e != NIL && entries.is_call(e) {
                if let Kind::Read(seen) = kinds[entries.op[e]] {
                    if seen == state {
                        next_move = Some((e, None, state, true));
                        break;
                    }
                }
                e = entries.next[e];
            }
            // A value written once cannot come back: while reads of it remain, the state
            // must not change, so a legal read is the only possible move. None was found:
            // the node fails.
            let s = state as usize;
            if next_move.is_none() && state != ABSENT && writes_of[s] == 1 && unread[s] > 0 {
                entry = NIL;
            }
        }
        // Every call's return entry follows it, so a scan that starts at the head and only
        // advances past call entries meets a return entry before NIL; NIL is handled as a
        // return anyway rather than trusted.
        if next_move.is_none() && entry != NIL && entries.is_call(entry) {
            let op = entries.op[entry];
            next_move = match (step(state, kinds[op]), kinds[op]) {
                // A blind write is absorbed by the other writes' moves (see `blind_writes`)
                // and only a move of its own once it is due.
                (Some(_), _) if blind[op] && entries.first_return() != entries.ret_of[entry] => {
                    None
                }
                (Some(s), _) => Some((entry, None, s, false)),
                (None, Kind::Read(seen)) => helpers
                    .find(seen, entries.frontier(), &bits)
                    .map(|h| (entry, Some(h), seen, false)),
                (None, _) => None,
            };
            if next_move.is_none() {
                entry = entries.next[entry];
                continue;
            }
        }

        if let Some((call, helper, new_state, forced)) = next_move {
            let op = entries.op[call];
            bits.set(op);
            if let Some(h) = helper {
                bits.set(h);
            }
            let absorbed_from = absorbed.len();
            // Writes, deletes and helpers (writes or deletes themselves) absorb.
            if helper.is_some() || matches!(kinds[op], Kind::Write(_) | Kind::Delete) {
                let mut e = entries.next[HEAD];
                while e != NIL && entries.is_call(e) {
                    let other = entries.op[e];
                    if e != call && blind[other] {
                        absorbed.push(e);
                        bits.set(other);
                    }
                    e = entries.next[e];
                }
            }
            bits.key(new_state, &mut key);
            if cache.visit(&key, &bits.helpers.0) {
                if cache.len > max_states {
                    return SearchResult::Exhausted(format!(
                        "state budget exhausted: more than {max_states} memoized states \
                         (depth {} of {n})",
                        best_ops.len()
                    ));
                }
                stack.push(Frame {
                    entry: call,
                    helper,
                    absorbed_from,
                    state,
                    forced,
                });
                state = new_state;
                if let Kind::Read(v) = kinds[op] {
                    unread[v as usize] -= 1;
                }
                remaining -= 1 + (absorbed.len() - absorbed_from);
                entries.lift(call);
                for &e in &absorbed[absorbed_from..] {
                    entries.lift(e);
                }
                if stack.len() > best_ends.len() {
                    best_ends.truncate(low_water);
                    best_ops.truncate(best_ends.last().copied().unwrap_or(0));
                    for (i, f) in stack.iter().enumerate().skip(low_water) {
                        let absorbed_to =
                            stack.get(i + 1).map_or(absorbed.len(), |g| g.absorbed_from);
                        best_ops.extend(
                            absorbed[f.absorbed_from..absorbed_to]
                                .iter()
                                .map(|&e| entries.op[e]),
                        );
                        best_ops.extend(f.helper);
                        best_ops.push(entries.op[f.entry]);
                        best_ends.push(best_ops.len());
                    }
                    best_state = state;
                    low_water = stack.len();
                }
                entry = entries.next[HEAD];
                at_node_start = true;
                continue;
            }
            bits.clear(op);
            if let Some(h) = helper {
                bits.clear(h);
            }
            for &e in &absorbed[absorbed_from..] {
                bits.clear(entries.op[e]);
            }
            absorbed.truncate(absorbed_from);
            // A forced move that leads to a known failure fails its node (NIL: backtrack).
            entry = if forced { NIL } else { entries.next[call] };
            continue;
        }

        // A return entry: its operation had to be linearized by now. Backtrack.
        let Some(frame) = stack.pop() else {
            return SearchResult::Violation {
                prefix: best_ops,
                state: best_state,
            };
        };
        low_water = low_water.min(stack.len());
        state = frame.state;
        remaining += 1 + (absorbed.len() - frame.absorbed_from);
        if let Some(h) = frame.helper {
            bits.clear(h);
        }
        // Relink in the reverse order of the lifts.
        while absorbed.len() > frame.absorbed_from {
            if let Some(e) = absorbed.pop() {
                bits.clear(entries.op[e]);
                entries.unlift(e);
            }
        }
        let op = entries.op[frame.entry];
        if let Kind::Read(v) = kinds[op] {
            unread[v as usize] += 1;
        }
        bits.clear(op);
        entries.unlift(frame.entry);
        // After a forced move the node has no alternative: fail it too.
        entry = if frame.forced {
            NIL
        } else {
            entries.next[frame.entry]
        };
    }
    SearchResult::Linearizable
}

/// Writes that must be linearized (not lazy) and whose value no read observed.
///
/// Such a write W is immediately followed by a write or delete in any linearization (a read
/// right after it would observe its value), or is last. So:
/// * whenever a write or delete X is linearized (including a helper, see [`Helpers`]),
///   every blind write that is a candidate can be linearized just before it, invisibly: that only discharges their obligation to be
///   linearized before returning, and removing them from any continuation of the node
///   without them leaves a valid continuation of the node with them. Doing so is never
///   worse, so it is done instead of branching on them.
/// * otherwise W needs a move of its own only when its return entry is the first one: if
///   the write or delete following it were a candidate already, absorbing covers it, and
///   if not, nothing but W can come first.
fn blind_writes(kinds: &[Kind], lazy: &[bool]) -> Vec<bool> {
    let observed: HashSet<State> = kinds
        .iter()
        .filter_map(|k| match k {
            Kind::Read(v) => Some(*v),
            _ => None,
        })
        .collect();
    kinds
        .iter()
        .zip(lazy)
        .map(|(k, &l)| matches!(k, Kind::Write(v) if !l && !observed.contains(v)))
        .collect()
}

fn check_key(key: &str, all: &[Op<'_>], deadline: Option<Instant>, max_states: usize) -> KeyResult {
    let mut interner = Interner::new();
    let all_kinds: Vec<Kind> = all
        .iter()
        .map(|op| match op.f {
            Func::Write => Kind::Write(interner.intern(op.value)),
            Func::Delete => Kind::Delete,
            Func::Read => Kind::Read(interner.intern(op.value)),
        })
        .collect();
    let Prepared {
        ops,
        kinds,
        times,
        lazy,
    } = reduce_unknown_writes(all, &all_kinds);

    let (verdict, explanation) = match search(&kinds, &times, &lazy, deadline, max_states) {
        SearchResult::Linearizable => (Verdict::Linearizable, None),
        SearchResult::Exhausted(why) => (Verdict::Unknown, Some(format!("key {key:?}: {why}"))),
        SearchResult::Violation { prefix, state } => (
            Verdict::NotLinearizable,
            Some(explain(
                key,
                &Prepared {
                    ops,
                    kinds,
                    times,
                    lazy,
                },
                &prefix,
                state,
                &interner,
            )),
        ),
    };
    KeyResult {
        key: key.to_string(),
        verdict,
        ops: all.len(),
        explanation,
    }
}

/// Operations of unknown outcome are what makes the search expensive: with a return time of
/// +infinity each stays a candidate at every later point, so every subset of them may be
/// tried. Two sound reductions remove most of them before the search:
///
/// * An unknown write whose value no read observed is dropped. In any linearization that
///   contains it, the operations up to the next write or delete cannot be reads (they would
///   observe its value), so removing it leaves every other operation legal; conversely a
///   linearization without it stays one with it placed last. Its presence changes nothing.
/// * An unknown write whose value was observed, and written by no other write, must precede
///   every read of that value, so it took effect before the earliest such read returned:
///   that becomes its return time. (Not when that read returned before the write was even
///   invoked: the return would precede the call; the search then finds the violation.)
///
/// The remaining unknown operations are searched lazily (see [`search`]).
fn reduce_unknown_writes<'a>(ops: &[Op<'a>], kinds: &[Kind]) -> Prepared<'a> {
    let mut writes_of: HashMap<State, usize> = HashMap::new();
    let mut first_read_ret: HashMap<State, u64> = HashMap::new();
    for (op, kind) in ops.iter().zip(kinds) {
        match (*kind, op.ret) {
            (Kind::Write(v), _) => *writes_of.entry(v).or_default() += 1,
            (Kind::Read(v), Some(ret)) => {
                let r = first_read_ret.entry(v).or_insert(ret);
                *r = (*r).min(ret);
            }
            _ => {}
        }
    }

    let mut out = Prepared {
        ops: Vec::new(),
        kinds: Vec::new(),
        times: Vec::new(),
        lazy: Vec::new(),
    };
    for (op, kind) in ops.iter().zip(kinds) {
        let mut ret = op.ret.unwrap_or(u64::MAX);
        if let (Kind::Write(v), None) = (*kind, op.ret) {
            // A write of `null` is a delete for the model: reads of absence may observe it.
            if v != ABSENT {
                match first_read_ret.get(&v) {
                    None => continue,
                    Some(&r) if r >= op.call && writes_of.get(&v) == Some(&1) => ret = r,
                    Some(_) => {}
                }
            }
        }
        out.ops.push(op.clone());
        out.kinds.push(*kind);
        out.times.push((op.call, ret));
        out.lazy.push(ret == u64::MAX && op.ret.is_none());
    }
    out
}

/// The operations of one key as searched, in parallel vectors indexed by operation.
struct Prepared<'a> {
    ops: Vec<Op<'a>>,
    kinds: Vec<Kind>,
    /// `(call, return)`; the return is `u64::MAX` (+infinity) for unknown outcomes.
    times: Vec<(u64, u64)>,
    /// Unknown outcome, searched lazily.
    lazy: Vec<bool>,
}

/// Prefix operations shown in an explanation (the last ones; the rest are counted).
const SHOWN_PREFIX: usize = 10;

fn explain(
    key: &str,
    p: &Prepared<'_>,
    prefix: &[usize],
    state: State,
    interner: &Interner<'_>,
) -> String {
    let n = p.ops.len();
    let mut done = Bitset::new(n);
    for &i in prefix {
        done.set(i);
    }
    // The operations that could come next after the prefix: those invoked no later than the
    // earliest return among the rest (the same rule as the entry order: call first on ties).
    let min_ret = (0..n)
        .filter(|&i| !done.get(i) && !p.lazy[i])
        .map(|i| p.times[i].1)
        .min()
        .unwrap_or(u64::MAX);
    let (pending_unknown, candidates): (Vec<usize>, Vec<usize>) = (0..n)
        .filter(|&i| !done.get(i) && p.times[i].0 <= min_ret)
        .partition(|&i| p.lazy[i]);
    // Reads of the current value still to be placed, when that value was written once and
    // so cannot come back after the state changes (the search's pruning rule).
    let writes_of_state = p
        .kinds
        .iter()
        .filter(|k| matches!(k, Kind::Write(v) if *v == state))
        .count();
    let unread: Vec<usize> = (0..n)
        .filter(|&i| !done.get(i) && matches!(p.kinds[i], Kind::Read(v) if v == state))
        .collect();
    let pinned = state != ABSENT && writes_of_state == 1 && !unread.is_empty();

    let mut s = String::new();
    let _ = writeln!(
        s,
        "key {key:?}: not linearizable: no order of its {n} operations is consistent with \
         real time and a register."
    );
    let _ = writeln!(
        s,
        "after linearizing the longest prefix found ({} of {n} operations{}), the state is {}:",
        prefix.len(),
        if prefix.len() > SHOWN_PREFIX {
            format!(", last {SHOWN_PREFIX} shown")
        } else {
            String::new()
        },
        interner.describe(state)
    );
    if prefix.is_empty() {
        let _ = writeln!(s, "  (nothing)");
    }
    for &i in &prefix[prefix.len().saturating_sub(SHOWN_PREFIX)..] {
        let _ = writeln!(s, "  {}", describe_op(&p.ops[i]));
    }
    let _ = writeln!(s, "no operation among these can be linearized next:");
    for &i in &candidates {
        let kind = p.kinds[i];
        let helper = pending_unknown
            .iter()
            .find(|&&u| matches!(kind, Kind::Read(seen) if result_of(p.kinds[u]) == Some(seen)));
        let changes_state = matches!(kind, Kind::Write(_) | Kind::Delete) || helper.is_some();
        let why = match (step(state, kind), helper) {
            (_, Some(&u)) if pinned => format!(
                "would need {} first, replacing {} for good while reads of it remain (below)",
                describe_op(&p.ops[u]),
                interner.describe(state)
            ),
            _ if pinned && changes_state => format!(
                "would replace {} for good while reads of it remain (below)",
                interner.describe(state)
            ),
            (Some(_), _) => "legal, but every continuation after it fails".to_string(),
            (None, Some(&u)) => format!(
                "illegal in state {}; legal right after {}, but every continuation after \
                 that fails",
                interner.describe(state),
                describe_op(&p.ops[u])
            ),
            (None, None) => format!("illegal: the state is {}", interner.describe(state)),
        };
        let _ = writeln!(s, "  {}  -- {why}", describe_op(&p.ops[i]));
    }
    if pinned {
        let _ = writeln!(
            s,
            "reads of {} still to be placed, while it is the state (it was written only once):",
            interner.describe(state)
        );
        for &i in unread.iter().take(SHOWN_PREFIX) {
            let _ = writeln!(s, "  {}", describe_op(&p.ops[i]));
        }
        if unread.len() > SHOWN_PREFIX {
            let _ = writeln!(s, "  ... and {} more", unread.len() - SHOWN_PREFIX);
        }
    }
    if !pending_unknown.is_empty() {
        let _ = writeln!(
            s,
            "unknown-outcome operations invoked by then ({}), each of which may take effect \
             at any point after its invoke, or never:",
            pending_unknown.len()
        );
        for &i in pending_unknown.iter().take(SHOWN_PREFIX) {
            let _ = writeln!(s, "  {}", describe_op(&p.ops[i]));
        }
        if pending_unknown.len() > SHOWN_PREFIX {
            let _ = writeln!(s, "  ... and {} more", pending_unknown.len() - SHOWN_PREFIX);
        }
    }
    let _ = write!(
        s,
        "(times: ns since the workload started; `..?` marks an info or missing completion)"
    );
    s
}

/// `w(1) by p3 ok @100..250`, `r()=null by p1 ok @..`, `d() by p2 info @300..?`.
fn describe_op(op: &Op<'_>) -> String {
    let what = match op.f {
        Func::Write => format!("w({})", op.value),
        Func::Delete => "d()".to_string(),
        Func::Read => format!("r()={}", op.value),
    };
    let how = match op.completion {
        Completion::Ok => "ok",
        Completion::Info => "info",
        Completion::Missing => "no completion",
    };
    let ret = op.ret.map_or("?".to_string(), |t| t.to_string());
    format!("{what} by p{} {how} @{}..{ret}", op.process, op.call)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::to_lines;
    use serde_json::json;

    /// History builder: each helper appends an invoke and (maybe) its completion.
    #[derive(Default)]
    struct B(Vec<Event>);

    fn ev(process: u64, kind: EventType, f: Func, key: &str, value: Value, time: u64) -> Event {
        Event {
            process,
            kind,
            f,
            key: key.to_string(),
            value,
            time,
        }
    }

    fn opt(v: Option<i64>) -> Value {
        v.map_or(Value::Null, |v| json!(v))
    }

    impl B {
        fn op(
            &mut self,
            p: u64,
            f: Func,
            key: &str,
            input: Value,
            done: Option<(EventType, Value, u64)>,
            t0: u64,
        ) -> &mut Self {
            self.0.push(ev(p, EventType::Invoke, f, key, input, t0));
            if let Some((kind, v, t1)) = done {
                self.0.push(ev(p, kind, f, key, v, t1));
            }
            self
        }
        fn w(&mut self, p: u64, key: &str, v: i64, t0: u64, t1: u64) -> &mut Self {
            let done = Some((EventType::Ok, json!(v), t1));
            self.op(p, Func::Write, key, json!(v), done, t0)
        }
        /// A write with an `info` completion at `t1`, or none at all.
        fn w_info(&mut self, p: u64, key: &str, v: i64, t0: u64, t1: Option<u64>) -> &mut Self {
            let done = t1.map(|t1| (EventType::Info, json!(v), t1));
            self.op(p, Func::Write, key, json!(v), done, t0)
        }
        fn w_fail(&mut self, p: u64, key: &str, v: i64, t0: u64, t1: u64) -> &mut Self {
            let done = Some((EventType::Fail, json!(v), t1));
            self.op(p, Func::Write, key, json!(v), done, t0)
        }
        fn r(&mut self, p: u64, key: &str, seen: Option<i64>, t0: u64, t1: u64) -> &mut Self {
            let done = Some((EventType::Ok, opt(seen), t1));
            self.op(p, Func::Read, key, Value::Null, done, t0)
        }
        fn d(&mut self, p: u64, key: &str, t0: u64, t1: u64) -> &mut Self {
            let done = Some((EventType::Ok, Value::Null, t1));
            self.op(p, Func::Delete, key, Value::Null, done, t0)
        }
        fn check(&self) -> Report {
            match check(&self.0, &Limits::default()) {
                Ok(r) => r,
                Err(e) => panic!("unexpected malformed history: {e}"),
            }
        }
        fn verdict(&self) -> Verdict {
            self.check().verdict
        }
    }

    fn explanation(r: &Report) -> String {
        r.keys
            .iter()
            .filter_map(|k| k.explanation.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn sequential_write_then_read() {
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10).r(1, "k", Some(1), 20, 30);
        let r = b.check();
        assert_eq!(r.verdict, Verdict::Linearizable);
        assert_eq!(r.ops, 2);
        assert!(r.keys[0].explanation.is_none());
    }

    #[test]
    fn stale_read_is_a_violation() {
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .w(0, "k", 2, 20, 30)
            .r(1, "k", Some(1), 40, 50);
        let r = b.check();
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        let text = explanation(&r);
        assert!(text.contains("r()=1 by p1 ok @40..50"), "{text}");
        assert!(text.contains("w(2) by p0 ok @20..30"), "{text}");
    }

    #[test]
    fn lost_write_is_a_violation() {
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10).r(1, "k", None, 20, 30);
        let r = b.check();
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        assert!(explanation(&r).contains("r()=null"), "{}", explanation(&r));
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10).r(1, "k", Some(7), 5, 30);
        assert_eq!(b.verdict(), Verdict::NotLinearizable);
        let mut b = B::default();
        b.r(1, "k", Some(7), 5, 30);
        assert_eq!(b.verdict(), Verdict::NotLinearizable);
    }

    #[test]
    fn concurrent_writes() {
        // w(1) and w(2) overlap; sequential reads see 2 then 1: impossible.
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .w(1, "k", 2, 1, 11)
            .r(2, "k", Some(2), 20, 30)
            .r(2, "k", Some(1), 40, 50);
        assert_eq!(b.verdict(), Verdict::NotLinearizable);

        // Reads see 1 then 1: w(2) went first.
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .w(1, "k", 2, 1, 11)
            .r(2, "k", Some(1), 20, 30)
            .r(2, "k", Some(1), 40, 50);
        assert_eq!(b.verdict(), Verdict::Linearizable);

        // A read overlapping both writes sees 1, a later read sees 2: w(1), r, w(2).
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .w(1, "k", 2, 1, 11)
            .r(2, "k", Some(1), 2, 9)
            .r(2, "k", Some(2), 20, 30);
        assert_eq!(b.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn info_write_may_take_effect_later() {
        // Invoked at 10, never completed, read at 20..30 sees it.
        let mut b = B::default();
        b.w_info(0, "k", 1, 10, None).r(1, "k", Some(1), 20, 30);
        assert_eq!(b.verdict(), Verdict::Linearizable);
        // Same with an explicit `info` completion before the read.
        let mut b = B::default();
        b.w_info(0, "k", 1, 10, Some(15)).r(1, "k", Some(1), 20, 30);
        assert_eq!(b.verdict(), Verdict::Linearizable);
        // Read before the write was even invoked.
        let mut b = B::default();
        b.r(1, "k", Some(1), 0, 5).w_info(0, "k", 1, 10, Some(15));
        let r = b.check();
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        assert!(explanation(&r).contains("r()=1 by p1 ok @0..5"));
    }

    #[test]
    fn info_write_never_observed() {
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .w_info(1, "k", 2, 20, Some(30))
            .r(2, "k", Some(1), 40, 50)
            .r(2, "k", Some(1), 60, 70);
        assert_eq!(b.verdict(), Verdict::Linearizable);
        // ... but once observed it cannot be undone.
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .w_info(1, "k", 2, 20, None)
            .r(2, "k", Some(2), 40, 50)
            .r(2, "k", Some(1), 60, 70);
        assert_eq!(b.verdict(), Verdict::NotLinearizable);
    }

    #[test]
    fn delete() {
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .d(0, "k", 20, 30)
            .r(1, "k", None, 40, 50);
        assert_eq!(b.verdict(), Verdict::Linearizable);
        b.r(1, "k", Some(1), 60, 70);
        let r = b.check();
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        assert!(
            explanation(&r).contains("d() by p0 ok @20..30"),
            "{}",
            explanation(&r)
        );
    }

    #[test]
    fn failed_write_did_not_happen() {
        let mut b = B::default();
        b.w_fail(0, "k", 1, 0, 10).r(1, "k", None, 20, 30);
        assert_eq!(b.verdict(), Verdict::Linearizable);
        let mut b = B::default();
        b.w_fail(0, "k", 1, 0, 10).r(1, "k", Some(1), 20, 30);
        let r = b.check();
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        assert_eq!(r.ops, 1, "the failed write is dropped");
    }

    #[test]
    fn unknown_reads_are_dropped() {
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10);
        // An info read claiming an impossible value constrains nothing, nor does a read
        // without completion.
        b.op(
            1,
            Func::Read,
            "k",
            Value::Null,
            Some((EventType::Info, json!(9), 30)),
            20,
        );
        b.op(2, Func::Read, "k", Value::Null, None, 40);
        let r = b.check();
        assert_eq!(r.verdict, Verdict::Linearizable);
        assert_eq!(r.ops, 1);
    }

    #[test]
    fn blind_write_just_before_an_unknown_delete() {
        // Valid order: w(1) r=1 r=1 w(5) d r=null r=null r=null. Nobody reads 5, and the
        // only delete is of unknown outcome, so w(5) must go right before that delete,
        // which itself only goes right before a read of absence.
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .r(1, "k", Some(1), 20, 30)
            .r(2, "k", Some(1), 40, 60)
            .w(3, "k", 5, 40, 100)
            .op(4, Func::Delete, "k", Value::Null, None, 40)
            .r(5, "k", None, 50, 200)
            .r(6, "k", None, 45, 70)
            .r(7, "k", None, 120, 200);
        assert_eq!(
            b.verdict(),
            Verdict::Linearizable,
            "{}",
            explanation(&b.check())
        );
    }

    #[test]
    fn independent_keys() {
        let mut b = B::default();
        b.w(0, "good", 1, 0, 10)
            .r(1, "good", Some(1), 20, 30)
            .w(2, "bad", 1, 0, 10)
            .r(3, "bad", Some(2), 20, 30);
        let r = b.check();
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        assert_eq!(r.ops, 4);
        let keys: Vec<(&str, Verdict)> = r
            .keys
            .iter()
            .map(|k| (k.key.as_str(), k.verdict.clone()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("bad", Verdict::NotLinearizable),
                ("good", Verdict::Linearizable)
            ]
        );
        assert!(r.keys[0]
            .explanation
            .as_deref()
            .is_some_and(|e| e.contains("\"bad\"")));
    }

    #[test]
    fn calls_before_returns_on_equal_times() {
        // The read is invoked at the very instant the write completes: concurrent, so it may
        // see the old value.
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10)
            .w(0, "k", 2, 20, 30)
            .r(1, "k", Some(1), 30, 40);
        assert_eq!(b.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn json_values_compare_structurally() {
        let mut b = B::default();
        b.op(
            0,
            Func::Write,
            "k",
            json!({"a": 1, "b": [1, "x"]}),
            Some((EventType::Ok, Value::Null, 10)),
            0,
        );
        b.op(
            1,
            Func::Read,
            "k",
            Value::Null,
            Some((EventType::Ok, json!({"b": [1, "x"], "a": 1}), 30)),
            20,
        );
        assert_eq!(b.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn malformed_histories_are_errors() {
        let l = Limits::default();
        // Completion without invoke.
        let h = vec![ev(0, EventType::Ok, Func::Write, "k", json!(1), 5)];
        assert!(check(&h, &l).is_err_and(|e| e.contains("no pending invoke")));
        // Two invokes without a completion in between.
        let h = vec![
            ev(0, EventType::Invoke, Func::Write, "k", json!(1), 0),
            ev(0, EventType::Invoke, Func::Write, "k", json!(2), 1),
        ];
        assert!(check(&h, &l).is_err_and(|e| e.contains("has no completion")));
        // Completion of another function.
        let h = vec![
            ev(0, EventType::Invoke, Func::Write, "k", json!(1), 0),
            ev(0, EventType::Ok, Func::Read, "k", json!(1), 1),
        ];
        assert!(check(&h, &l).is_err());
        // Completion of another key.
        let h = vec![
            ev(0, EventType::Invoke, Func::Write, "k", json!(1), 0),
            ev(0, EventType::Ok, Func::Write, "j", json!(1), 1),
        ];
        assert!(check(&h, &l).is_err());
        // Completion before its invoke.
        let h = vec![
            ev(0, EventType::Invoke, Func::Write, "k", json!(1), 10),
            ev(0, EventType::Ok, Func::Write, "k", json!(1), 5),
        ];
        assert!(check(&h, &l).is_err());
        // Empty history is fine.
        let r = check(&[], &l).expect("empty history is well-formed");
        assert_eq!(r.verdict, Verdict::Linearizable);
        assert!(r.keys.is_empty());
    }

    /// `n` writes of 0..n all concurrent (invoked at 0..n, completed `ok` at 5000, or of
    /// unknown outcome), then sequential reads seeing 0, 1, 0 while they are all pending:
    /// impossible, since 0 is written once. With `ok` writes, long reads concurrent with
    /// everything observe each other value, so that no write is blind (see `blind_writes`).
    fn concurrent_writes_then_reads_0_1_0(b: &mut B, key: &str, n: i64, unknown: bool) {
        for v in 0..n {
            let p = 10_000 + v as u64;
            if unknown {
                b.w_info(p, key, v, v as u64, None);
            } else {
                b.w(p, key, v, v as u64, 5000);
            }
            if v >= 2 && !unknown {
                b.r(20_000 + v as u64, key, Some(v), 0, 6000);
            }
        }
        b.r(1, key, Some(0), 1000, 1010)
            .r(1, key, Some(1), 1020, 1030)
            .r(1, key, Some(0), 1040, 1050);
    }

    #[test]
    fn search_budget_gives_unknown() {
        // With the 200 writes `ok`, plain WGL has to try subsets of them between the reads:
        // exponential.
        let mut b = B::default();
        concurrent_writes_then_reads_0_1_0(&mut b, "k", 200, false);
        let limits = Limits {
            timeout: Duration::from_secs(30),
            max_states: 1000,
        };
        let start = Instant::now();
        let r = check(&b.0, &limits).expect("well-formed");
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(
            explanation(&r).contains("state budget"),
            "{}",
            explanation(&r)
        );

        // The same with a time budget only.
        let limits = Limits {
            timeout: Duration::from_millis(200),
            max_states: usize::MAX,
        };
        let start = Instant::now();
        let r = check(&b.0, &limits).expect("well-formed");
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(
            explanation(&r).contains("time budget"),
            "{}",
            explanation(&r)
        );
    }

    #[test]
    fn unknown_writes_and_deletes_do_not_explode() {
        let limits = Limits {
            timeout: Duration::from_secs(30),
            max_states: 1000,
        };
        // The same 200 writes with unknown outcomes: the unobserved ones are dropped and the
        // observed ones bounded by their first read, so the violation is found at once.
        let mut b = B::default();
        concurrent_writes_then_reads_0_1_0(&mut b, "k", 200, true);
        let r = check(&b.0, &limits).expect("well-formed");
        assert_eq!(r.verdict, Verdict::NotLinearizable, "{}", explanation(&r));

        // 200 deletes of unknown outcome after w(1), then reads of 1, 1, absent, absent and
        // finally 1, which needs a second write of 1. Plain WGL would try every subset of
        // the deletes at every point; here they are only tried right before a read of
        // absence.
        let mut b = B::default();
        b.w(0, "k", 1, 0, 10);
        for p in 0..200 {
            b.op(10 + p, Func::Delete, "k", Value::Null, None, 20 + p);
        }
        b.r(1, "k", Some(1), 1000, 1010)
            .r(1, "k", Some(1), 1020, 1030)
            .r(1, "k", None, 1040, 1050)
            .r(2, "k", None, 1045, 1055);
        let r = check(&b.0, &limits).expect("well-formed");
        assert_eq!(r.verdict, Verdict::Linearizable, "{}", explanation(&r));
        b.r(1, "k", Some(1), 1060, 1070);
        let r = check(&b.0, &limits).expect("well-formed");
        assert_eq!(r.verdict, Verdict::NotLinearizable, "{}", explanation(&r));
        let text = explanation(&r);
        assert!(text.contains("r()=1 by p1 ok @1060..1070"), "{text}");
        assert!(text.contains("... and 190 more"), "{text}");
    }

    #[test]
    fn verdict_aggregation_prefers_violation_over_unknown() {
        let mut b = B::default();
        concurrent_writes_then_reads_0_1_0(&mut b, "slow", 100, false);
        b.w(2000, "bad", 1, 0, 10).r(2000, "bad", None, 20, 30);
        let limits = Limits {
            timeout: Duration::from_secs(30),
            max_states: 500,
        };
        let r = check(&b.0, &limits).expect("well-formed");
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        assert_eq!(r.keys[0].verdict, Verdict::NotLinearizable);
        assert_eq!(r.keys[1].verdict, Verdict::Unknown);
    }

    /// xorshift64*: a small deterministic generator for the simulations.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A history produced by a real linearizable register: every operation takes effect at
    /// a random instant within its interval. Some writes and deletes end `info` (applied or
    /// not, and the process is retired: `unknown_pct` percent of them) or `fail` (2 %, not
    /// applied); 2 % of reads end `info`.
    fn simulate(
        seed: u64,
        n_ops: usize,
        procs: u64,
        keys: u64,
        unknown_pct: u64,
        delete_tenths: u64,
    ) -> Vec<Event> {
        struct Planned {
            process: u64,
            f: Func,
            key: String,
            value: Value,
            invoke: u64,
            complete: u64,
            effect: u64,
            outcome: Option<EventType>,
            applied: bool,
        }
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut clock = vec![0u64; procs as usize];
        let mut ids: Vec<u64> = (0..procs).collect();
        let mut next_id = procs;
        let mut plan = Vec::with_capacity(n_ops);
        for i in 0..n_ops {
            let slot = rng.below(procs) as usize;
            let invoke = clock[slot] + 1 + rng.below(50);
            let dur = rng.below(200);
            let complete = invoke + dur;
            let effect = invoke + rng.below(dur + 1);
            clock[slot] = complete;
            let key = format!("k{}", rng.below(keys));
            // Half reads; `delete_tenths` tenths deletes, the rest writes.
            let (f, value) = match rng.below(10) {
                0..=4 => (Func::Read, Value::Null),
                d if d >= 10 - delete_tenths => (Func::Delete, Value::Null),
                _ => (Func::Write, json!(i)),
            };
            let roll = rng.below(100);
            let (outcome, applied) = if f == Func::Read {
                if roll < 2 {
                    (Some(EventType::Info), false)
                } else {
                    (Some(EventType::Ok), true)
                }
            } else if roll < unknown_pct {
                // Unknown outcome, either `info` or no completion; applied or not.
                let kind = (!roll.is_multiple_of(3)).then_some(EventType::Info);
                (kind, rng.below(2) == 0)
            } else if roll < unknown_pct + 2 {
                (Some(EventType::Fail), false)
            } else {
                (Some(EventType::Ok), true)
            };
            let process = ids[slot];
            if outcome != Some(EventType::Ok) && outcome != Some(EventType::Fail) {
                // Unknown outcome: the process is retired, a fresh one takes the slot.
                ids[slot] = next_id;
                next_id += 1;
            }
            plan.push(Planned {
                process,
                f,
                key,
                value,
                invoke,
                complete,
                effect,
                outcome,
                applied,
            });
        }

        // Apply in effect order to one register per key; reads learn what they saw.
        let mut order: Vec<usize> = (0..plan.len()).filter(|&i| plan[i].applied).collect();
        order.sort_by_key(|&i| (plan[i].effect, i));
        let mut reg: HashMap<String, Value> = HashMap::new();
        for i in order {
            let p = &mut plan[i];
            match p.f {
                Func::Write => {
                    reg.insert(p.key.clone(), p.value.clone());
                }
                Func::Delete => {
                    reg.remove(&p.key);
                }
                Func::Read => p.value = reg.get(&p.key).cloned().unwrap_or(Value::Null),
            }
        }

        // Each process's events are pushed in its own order and its times never decrease, so
        // a stable sort by time keeps every invoke before its completion (even when both
        // share a timestamp).
        let mut events: Vec<Event> = Vec::new();
        for p in &plan {
            let input = if p.f == Func::Read {
                Value::Null
            } else {
                p.value.clone()
            };
            let inv = ev(p.process, EventType::Invoke, p.f, &p.key, input, p.invoke);
            events.push(inv);
            if let Some(kind) = p.outcome {
                let c = ev(p.process, kind, p.f, &p.key, p.value.clone(), p.complete);
                events.push(c);
            }
        }
        events.sort_by_key(|e| e.time);
        events
    }

    #[test]
    fn simulated_linearizable_register() {
        let h = simulate(7, 2000, 8, 5, 3, 1);
        let start = Instant::now();
        let r = check(&h, &Limits::default()).expect("well-formed");
        let took = start.elapsed();
        assert_eq!(r.verdict, Verdict::Linearizable, "{}", explanation(&r));
        assert_eq!(r.keys.len(), 5);
        assert!(r.ops > 1800, "{}", r.ops);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn simulated_register_with_high_concurrency() {
        // About 20 operations in flight per key, 1000 per key, 30 % deletes, 5 % unknown.
        let h = simulate(5, 5000, 350, 5, 5, 3);
        let concurrency = mean_concurrency(&h);
        assert!(concurrency > 15.0, "{concurrency}");
        let start = Instant::now();
        let r = check(&h, &Limits::default()).expect("well-formed");
        let took = start.elapsed();
        assert_eq!(r.verdict, Verdict::Linearizable, "{}", explanation(&r));
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn simulated_register_with_a_corrupted_read() {
        // Make one read see a value no write ever wrote: always a violation.
        let mut h = simulate(11, 1000, 8, 3, 3, 1);
        let i = h
            .iter()
            .position(|e| e.f == Func::Read && e.kind == EventType::Ok)
            .expect("the simulation has reads");
        h[i].value = json!("never written");
        let r = check(&h, &Limits::default()).expect("well-formed");
        assert_eq!(r.verdict, Verdict::NotLinearizable);
        assert!(
            explanation(&r).contains("r()=\"never written\""),
            "{}",
            explanation(&r)
        );
    }

    /// Makes the read nearest the middle of `h` that saw a value see instead the first value
    /// written to its key, long overwritten: a stale read.
    fn inject_stale_read(h: &mut [Event]) {
        let mid = h.len() / 2;
        let i = (mid..h.len())
            .find(|&i| h[i].f == Func::Read && h[i].kind == EventType::Ok && !h[i].value.is_null())
            .expect("the simulation has reads");
        let first = h
            .iter()
            .find(|e| e.f == Func::Write && e.kind == EventType::Ok && e.key == h[i].key)
            .map(|e| e.value.clone())
            .expect("the key was written");
        h[i].value = first;
    }

    /// Reference decision by exhaustive search over orders (small histories only), sharing
    /// nothing with the checker but the pairing of events: the register is an
    /// `Option<Value>`, unknown operations may be left out, no pruning.
    fn brute_force(ops: &[Op<'_>]) -> bool {
        /// Depth-first over every legal next operation; `failed` remembers (placed set,
        /// state) pairs already known to lead nowhere, which only saves time.
        fn go<'v>(
            ops: &[Op<'v>],
            placed: u64,
            state: Option<&'v Value>,
            failed: &mut HashSet<(u64, Option<String>)>,
        ) -> bool {
            let unplaced = |i: usize| placed & (1 << i) == 0;
            if (0..ops.len()).all(|i| !unplaced(i) || ops[i].ret.is_none()) {
                return true;
            }
            let memo = (placed, state.map(|v| v.to_string()));
            if failed.contains(&memo) {
                return false;
            }
            for i in (0..ops.len()).filter(|&i| unplaced(i)) {
                // Every completed operation that returned before `i` was invoked must
                // already be placed (a tie counts as concurrent).
                let blocked = (0..ops.len())
                    .any(|j| j != i && unplaced(j) && ops[j].ret.is_some_and(|r| r < ops[i].call));
                if blocked {
                    continue;
                }
                let next = match ops[i].f {
                    Func::Write => Some((!ops[i].value.is_null()).then_some(ops[i].value)),
                    Func::Delete => Some(None),
                    Func::Read => {
                        let seen = (!ops[i].value.is_null()).then_some(ops[i].value);
                        (seen == state).then_some(state)
                    }
                };
                if let Some(next) = next {
                    if go(ops, placed | (1 << i), next, failed) {
                        return true;
                    }
                }
            }
            failed.insert(memo);
            false
        }
        assert!(ops.len() <= 64, "brute force is for small histories");
        go(ops, 0, None, &mut HashSet::new())
    }

    /// How [`small_random_history`] draws its operations.
    struct Mix {
        /// Percentages of reads and deletes; the rest are writes.
        reads: u64,
        deletes: u64,
        /// Writes draw values from 1..=values, or `null` with `null_writes` percent.
        values: u64,
        null_writes: u64,
        /// Percentages of `info` or missing completions and of `fail`s.
        unknown: u64,
        fails: u64,
        /// Processes go on after an `info` (allowed by the model: the operation may still
        /// take effect at any later time), instead of being retired.
        go_on_after_info: bool,
        /// Reads see what a register whose operations take effect at random instants in
        /// their intervals holds, and then one read in two histories is corrupted; instead
        /// of random values. Such histories sit near the boundary, where a wrong pruning
        /// rule shows.
        simulated: bool,
        /// Up to `1 + size` processes of up to `size` operations each.
        size: u64,
    }

    /// A small random single-key history with ties, duplicate values and every kind of
    /// completion, for comparison with [`brute_force`].
    fn small_random_history(rng: &mut Rng, mix: &Mix) -> Vec<Event> {
        struct Planned {
            process: u64,
            f: Func,
            value: Value,
            call: u64,
            ret: u64,
            kind: Option<EventType>,
        }
        let pct = |rng: &mut Rng, p: u64| rng.below(100) < p;
        let mut plan = Vec::new();
        let procs = 2 + rng.below(mix.size);
        for process in 0..procs {
            let mut t = rng.below(4);
            let n = 1 + rng.below(mix.size);
            for k in 0..n {
                let roll = rng.below(100);
                let f = if roll < mix.reads {
                    Func::Read
                } else if roll < mix.reads + mix.deletes {
                    Func::Delete
                } else {
                    Func::Write
                };
                let value = match f {
                    Func::Write if !pct(rng, mix.null_writes) => json!(1 + rng.below(mix.values)),
                    _ => Value::Null,
                };
                let call = t;
                let ret = call + rng.below(6);
                let kind = if pct(rng, mix.unknown) {
                    // No completion only as the process's last operation.
                    if k + 1 == n && rng.below(3) == 0 {
                        None
                    } else {
                        Some(EventType::Info)
                    }
                } else if pct(rng, mix.fails) {
                    Some(EventType::Fail)
                } else {
                    Some(EventType::Ok)
                };
                plan.push(Planned {
                    process,
                    f,
                    value,
                    call,
                    ret,
                    kind,
                });
                if kind.is_none() || (kind == Some(EventType::Info) && !mix.go_on_after_info) {
                    break;
                }
                t = ret + rng.below(3);
            }
        }

        if mix.simulated {
            let mut effects: Vec<(u64, u64, usize)> = Vec::new();
            for (i, p) in plan.iter().enumerate() {
                let applied = match p.kind {
                    Some(EventType::Ok) => true,
                    Some(EventType::Fail) => false,
                    _ => p.f != Func::Read && rng.below(2) == 0,
                };
                if applied {
                    // Effects on a finer grid than the times, so that ties are broken.
                    let at = p.call * 10 + rng.below((p.ret - p.call) * 10 + 1);
                    effects.push((at, rng.next(), i));
                }
            }
            effects.sort_unstable();
            let mut register = Value::Null;
            for (_, _, i) in effects {
                match plan[i].f {
                    Func::Write => register = plan[i].value.clone(),
                    Func::Delete => register = Value::Null,
                    Func::Read => plan[i].value = register.clone(),
                }
            }
            let reads: Vec<usize> = (0..plan.len())
                .filter(|&i| plan[i].f == Func::Read && plan[i].kind == Some(EventType::Ok))
                .collect();
            if !reads.is_empty() && rng.below(2) == 0 {
                let i = reads[rng.below(reads.len() as u64) as usize];
                plan[i].value = match rng.below(mix.values + 1) {
                    0 => Value::Null,
                    v => json!(v),
                };
            }
        } else {
            for p in plan.iter_mut().filter(|p| p.f == Func::Read) {
                p.value = match rng.below(mix.values + 1) {
                    0 => Value::Null,
                    v => json!(v),
                };
            }
        }

        let mut events = Vec::new();
        for p in &plan {
            let input = if p.f == Func::Read {
                Value::Null
            } else {
                p.value.clone()
            };
            events.push(ev(p.process, EventType::Invoke, p.f, "k", input, p.call));
            if let Some(kind) = p.kind {
                events.push(ev(p.process, kind, p.f, "k", p.value.clone(), p.ret));
            }
        }
        events
    }

    const PLAIN: Mix = Mix {
        reads: 40,
        deletes: 10,
        values: 3,
        null_writes: 0,
        unknown: 15,
        fails: 10,
        go_on_after_info: false,
        simulated: false,
        size: 4,
    };

    const UNKNOWN_HEAVY: Mix = Mix {
        reads: 40,
        deletes: 30,
        values: 3,
        null_writes: 20,
        unknown: 35,
        fails: 10,
        go_on_after_info: true,
        simulated: false,
        size: 4,
    };

    /// Many distinct values, so that many writes are blind; unknown deletes as helpers.
    const NEAR_VALID: Mix = Mix {
        reads: 45,
        deletes: 20,
        values: 9,
        null_writes: 5,
        unknown: 30,
        fails: 5,
        go_on_after_info: true,
        simulated: true,
        size: 4,
    };

    fn agree_with_brute_force(seed: u64, rounds: usize, mix: &Mix) {
        let mut rng = Rng(seed);
        let (mut yes, mut no) = (0, 0);
        for round in 0..rounds {
            let h = small_random_history(&mut rng, mix);
            let ops = collect_ops(&h).expect("well-formed");
            let want = brute_force(&ops);
            let r = check(&h, &Limits::default()).expect("well-formed");
            let got = match r.verdict {
                Verdict::Linearizable => true,
                Verdict::NotLinearizable => false,
                Verdict::Unknown => panic!("round {round}: unknown"),
            };
            assert_eq!(
                got,
                want,
                "seed {seed:#x} round {round}: checker says {:?}\n{}\n{}",
                r.verdict,
                to_lines(&h),
                explanation(&r)
            );
            if want {
                yes += 1;
            } else {
                no += 1;
            }
        }
        // Both outcomes must be well represented for the comparison to mean something.
        let min = rounds / 5;
        assert!(yes > min && no > min, "{yes} linearizable, {no} not");
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        agree_with_brute_force(0x1234_5678_9abc_def1, 3000, &PLAIN);
    }

    #[test]
    fn agrees_with_brute_force_with_many_unknown_outcomes() {
        agree_with_brute_force(0x0fed_cba9_8765_4321, 3000, &UNKNOWN_HEAVY);
    }

    #[test]
    fn agrees_with_brute_force_near_valid_histories() {
        agree_with_brute_force(0x5eed_5eed_5eed_5eed, 3000, &NEAR_VALID);
    }

    /// Longer differential run: `LIN_FUZZ_ROUNDS=1000000 cargo test --release --lib
    /// check::linearizable::tests::fuzz -- --ignored`.
    #[test]
    #[ignore]
    fn fuzz_against_brute_force() {
        let rounds = std::env::var("LIN_FUZZ_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(200_000);
        let bigger = Mix {
            size: 6,
            ..NEAR_VALID
        };
        for (i, mix) in [PLAIN, UNKNOWN_HEAVY, NEAR_VALID, bigger]
            .iter()
            .enumerate()
        {
            agree_with_brute_force(0xf00d + i as u64, rounds, mix);
        }
    }

    /// Throughput check: `cargo test --release --lib check::linearizable::tests::perf --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn perf_large_history() {
        // (processes, keys, % unknown writes and deletes, tenths of deletes)
        let configs = [
            (8, 10, 3, 1),
            (32, 30, 3, 1),
            (16, 10, 10, 1),
            (100, 20, 3, 1),
            (260, 20, 3, 1),
            (400, 20, 3, 1),
            (700, 20, 3, 1),
            (400, 20, 10, 1),
            (400, 10, 3, 1),
            (400, 20, 3, 3),
            (400, 20, 10, 3),
            (700, 20, 5, 3),
            (8, 1, 3, 1),
            (16, 1, 3, 1),
        ];
        for (procs, keys, unknown_pct, deletes) in configs {
            for stale in [false, true] {
                let mut h = simulate(3, 20_000, procs, keys, unknown_pct, deletes);
                if stale {
                    inject_stale_read(&mut h);
                }
                let start = Instant::now();
                let r = check(&h, &Limits::default()).expect("well-formed");
                println!(
                    "{} ops, {keys} keys, {procs} processes (mean concurrency per key {:.1}), \
                     {unknown_pct}% unknown, {deletes}0% deletes, stale read injected: {stale}: \
                     {:?} in {:?}",
                    r.ops,
                    mean_concurrency(&h),
                    r.verdict,
                    start.elapsed()
                );
                let want = if stale {
                    Verdict::NotLinearizable
                } else {
                    Verdict::Linearizable
                };
                assert_eq!(r.verdict, want, "{}", explanation(&r));
            }
        }
    }

    /// Mean number of operations in flight on a key while it has any activity: the sum of
    /// the completed operations' durations over the key's active span, averaged over keys.
    fn mean_concurrency(h: &[Event]) -> f64 {
        let ops = collect_ops(h).expect("well-formed");
        let mut per_key: HashMap<&str, (u64, u64, u64)> = HashMap::new();
        for op in &ops {
            if let Some(ret) = op.ret {
                let e = per_key.entry(op.key).or_insert((0, u64::MAX, 0));
                e.0 += ret - op.call;
                e.1 = e.1.min(op.call);
                e.2 = e.2.max(ret);
            }
        }
        let sum: f64 = per_key
            .values()
            .map(|&(busy, lo, hi)| busy as f64 / (hi - lo).max(1) as f64)
            .sum();
        sum / per_key.len().max(1) as f64
    }
}
