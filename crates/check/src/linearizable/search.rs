//! The search over one key's operations (Wing & Gong / Lowe, in the shape of Porcupine's
//! `checkSingle`): the sets of linearized operations and their compact memoization keys, the
//! cache of visited nodes, the list of call and return entries, and [`search`] itself with
//! the pruning rules specific to the register. Runs after [`super::ops`] prepared the
//! operations; a violation it finds goes to [`super::explain`](mod@super::explain).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::helpers::{Chain, Helpers};
use super::model::{observed, step, unconditional, Kind, State, ABSENT};

/// Fixed-size bitset of linearized operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bitset(Vec<u64>);

impl Bitset {
    pub(super) fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)])
    }

    pub(super) fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    fn clear(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    pub(super) fn get(&self, i: usize) -> bool {
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
pub(super) struct Linearized {
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

    pub(super) fn get(&self, op: usize) -> bool {
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
/// index 0, of the operations that must be linearized (not the lazy ones, see [`search`]).
/// Lifting an operation unlinks its call and return entries; unlifting relinks them in
/// place (their own `prev`/`next` are left untouched while unlinked, which is what makes
/// the O(1) relink correct under LIFO backtracking).
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

pub(super) enum SearchResult {
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
/// operations linearized just before it to explain what it observed (if any), and the
/// state before them all.
#[derive(Debug, Clone, Copy)]
struct Frame {
    entry: usize,
    helper: Chain,
    /// Start of this frame's blind writes in the absorbed stack (see [`blind_writes`]).
    absorbed_from: usize,
    state: State,
    /// The node's only move (a legal read): backtracking past it fails the node.
    forced: bool,
    /// Which of the move's alternatives this is, and whether to try the next one when it
    /// fails (see [`alternatives`]).
    alt: usize,
    more: bool,
}

/// Whether a move of `kind` with helpers `chain` has alternatives to try when it fails:
/// a refusal's helpers leave different states, which later operations may tell apart; and
/// a compare-and-swap legal as it is may also be tried after helpers that leave its
/// expected state again, absorbing the blind writes that are candidates (`blind_pending`):
/// W (blind), an unknown delete, a swap expecting absence, is an order no other move
/// reaches (the delete is a helper only, and W may not wait until after the swap).
fn alternatives(kind: Kind, chain: &Chain, alt: usize, blind_pending: bool) -> bool {
    let helped = chain.iter().next().is_some();
    match kind {
        Kind::Refused | Kind::RefusedNot(_) => helped,
        Kind::Cas { .. } => alt == 0 && !helped && blind_pending,
        _ => false,
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
pub(super) fn search(
    (kinds, unknown_revision): (&[Kind], &[bool]),
    times: &[(u64, u64)],
    lazy: &[bool],
    deadline: Option<Instant>,
    max_states: usize,
) -> SearchResult {
    let n = kinds.len();
    let mut entries = Entries::new(times, lazy);
    let helpers = Helpers::new(kinds, times, lazy);
    let blind = blind_writes(kinds, lazy, unknown_revision);
    // Per state id: how many writes produce it, and how many reads of it are not linearized.
    let states = kinds
        .iter()
        .map(|k| match *k {
            Kind::Write(v) | Kind::Read(v) | Kind::RefusedNot(v) => v as usize + 1,
            Kind::Cas { expect, write } => expect.max(write) as usize + 1,
            Kind::Delete | Kind::Refused => 1,
        })
        .max()
        .unwrap_or(1);
    let mut writes_of = vec![0usize; states];
    let mut unread = vec![0usize; states];
    for k in kinds {
        match *k {
            Kind::Write(v) | Kind::Cas { write: v, .. } => writes_of[v as usize] += 1,
            Kind::Read(v) => unread[v as usize] += 1,
            Kind::Delete | Kind::Refused | Kind::RefusedNot(_) => {}
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
    // `entry` is the scan position in the current node, `alt` the helper chain to try for
    // it; `at_node_start` says the node was just entered and its legal reads have not been
    // looked at yet.
    let mut entry = entries.next[HEAD];
    let mut alt = 0;
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

        // The move to try: (call entry, helpers, new state, forced).
        let mut next_move: Option<(usize, Chain, State, bool, usize)> = None;
        if at_node_start {
            at_node_start = false;
            // A candidate read (or refused compare-and-swap) that is legal now can be
            // linearized first without loss: in any valid continuation, moving it to the
            // front leaves every other operation's state unchanged (it changes nothing) and
            // breaks no real-time order (whatever returned before it was invoked is already
            // linearized, or it would not be a candidate). So it is the node's only move, and
            // if it fails the node fails.
            let mut e = entries.next[HEAD];
            while e != NIL && entries.is_call(e) {
                let kind = kinds[entries.op[e]];
                let keeps = matches!(kind, Kind::Read(_) | Kind::Refused | Kind::RefusedNot(_));
                if keeps && step(state, kind, unknown_revision).is_some() {
                    next_move = Some((e, Chain::EMPTY, state, true, 0));
                    break;
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
            next_move = match step(state, kinds[op], unknown_revision) {
                // A blind write is absorbed by the other writes' moves (see `blind_writes`)
                // and only a move of its own once it is due.
                Some(_) if blind[op] && entries.first_return() != entries.ret_of[entry] => None,
                Some(s) if alt == 0 => Some((entry, Chain::EMPTY, s, false, 0)),
                // A swap legal as it is, tried again after helpers (see `alternatives`).
                Some(_) => helpers
                    .find(
                        (kinds[op], state),
                        entries.frontier(),
                        &bits,
                        (kinds, unknown_revision),
                        alt - 1,
                    )
                    .map(|(h, s)| (entry, h, s, false, alt)),
                None => helpers
                    .find(
                        (kinds[op], state),
                        entries.frontier(),
                        &bits,
                        (kinds, unknown_revision),
                        alt,
                    )
                    .map(|(h, s)| (entry, h, s, false, alt)),
            };
            if next_move.is_none() {
                entry = entries.next[entry];
                alt = 0;
                continue;
            }
        }

        if let Some((call, helper, new_state, forced, alt_now)) = next_move {
            let op = entries.op[call];
            let pending =
                matches!(kinds[op], Kind::Cas { .. }) && blind_candidate(&entries, &blind);
            let more = alternatives(kinds[op], &helper, alt_now, pending);
            bits.set(op);
            for h in helper.iter() {
                bits.set(h);
            }
            let absorbed_from = absorbed.len();
            // Unconditional writes and deletes absorb, as helpers or on their own; a
            // compare-and-swap does not (a write just before it would change what it needs).
            if unconditional(helper.iter().next().map_or(kinds[op], |h| kinds[h])) {
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
                    alt: alt_now,
                    more,
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
                        best_ops.extend(f.helper.iter());
                        best_ops.push(entries.op[f.entry]);
                        best_ends.push(best_ops.len());
                    }
                    best_state = state;
                    low_water = stack.len();
                }
                entry = entries.next[HEAD];
                alt = 0;
                at_node_start = true;
                continue;
            }
            bits.clear(op);
            for h in helper.iter() {
                bits.clear(h);
            }
            for &e in &absorbed[absorbed_from..] {
                bits.clear(entries.op[e]);
            }
            absorbed.truncate(absorbed_from);
            // A forced move that leads to a known failure fails its node (NIL: backtrack).
            (entry, alt) = if forced {
                (NIL, 0)
            } else if more {
                (call, alt_now + 1)
            } else {
                (entries.next[call], 0)
            };
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
        for h in frame.helper.iter() {
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
        (entry, alt) = if frame.forced {
            (NIL, 0)
        } else if frame.more {
            (frame.entry, frame.alt + 1)
        } else {
            (entries.next[frame.entry], 0)
        };
    }
    SearchResult::Linearizable
}

/// Whether a blind write is among the candidates (call entries before the first return).
fn blind_candidate(entries: &Entries, blind: &[bool]) -> bool {
    let mut e = entries.next[HEAD];
    while e != NIL && entries.is_call(e) {
        if blind[entries.op[e]] {
            return true;
        }
        e = entries.next[e];
    }
    false
}

/// Writes that must be linearized (not lazy) and whose value no read observed: no read
/// returned it, no compare-and-swap expected it, and its revision is known (a refusal that
/// names no known revision may have observed it). None when a refusal without a current
/// revision (`Kind::RefusedNot`) may observe any state.
///
/// Such a write W is immediately followed by a write or delete in any linearization (a read
/// right after it would observe its value), or is last. So:
/// * whenever a write or delete X is linearized (including a helper, see [`Helpers`]),
///   every blind write that is a candidate can be linearized just before it, invisibly:
///   that only discharges their obligation to be linearized before returning, and removing
///   them from any continuation of the node without them leaves a valid continuation of
///   the node with them. Doing so is never worse, so it is done instead of branching on
///   them.
/// * otherwise W needs a move of its own only when its return entry is the first one: if
///   the write or delete following it were a candidate already, absorbing covers it, and
///   if not, nothing but W can come first.
/// * a compare-and-swap cannot follow W (it would observe W's state), so only unconditional
///   writes and deletes absorb.
fn blind_writes(kinds: &[Kind], lazy: &[bool], unknown_revision: &[bool]) -> Vec<bool> {
    if kinds.iter().any(|k| matches!(k, Kind::RefusedNot(_))) {
        return vec![false; kinds.len()];
    }
    let seen: HashSet<State> = kinds.iter().filter_map(|k| observed(*k)).collect();
    let unknown = |v: &State| unknown_revision.get(*v as usize).copied().unwrap_or(false);
    kinds
        .iter()
        .zip(lazy)
        .map(|(k, &l)| matches!(k, Kind::Write(v) if !l && !seen.contains(v) && !unknown(v)))
        .collect()
}
