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
//! * With compare-and-swap (writes with `if_revision`, and reads that report revisions), the
//!   state is a value with its revision: a swap expecting revision E applies only in the
//!   state of revision E (0: absent), and one refused with `conflict` is not dropped like
//!   other `fail`s: it observed the key's current revision, which must not be E (`model`).
//! * Keys are independent registers, so the history is partitioned by key and every key is
//!   checked on its own (P-compositionality): many small searches instead of one huge one.
//! * At equal timestamps a call is ordered before a return, i.e. an operation invoked at the
//!   same instant another one completed counts as concurrent with it. That is the permissive
//!   choice: clocks of nanosecond resolution tie rarely, and a tie must not produce a false
//!   violation.
//!
//! Before the search, unknown writes nobody read are dropped and unknown writes somebody read
//! get a return time (`ops::reduce_unknown_writes`). The search (`search::search`) is
//! WGL with pruning rules specific to this register, which keep it fast at high
//! concurrency, and memoizes compact keys whose size depends on concurrency rather than on
//! the length of the history.
//!
//! The search is bounded by [`Limits`]: a deadline for the whole check and a maximum number
//! of memoized states per key. A key whose search exceeds either gets [`Verdict::Unknown`],
//! which callers must count as a failure, never as a pass.
//!
//! The stages, one file each, in the order a check runs them:
//! * this file: the public API ([`check`], [`Limits`], [`Report`]), the split by key and
//!   the worst-of verdict;
//! * `ops`: the events paired into operations (`ops::collect_ops`), and the operations of
//!   unknown outcome reduced before the search (`ops::reduce_unknown_writes`);
//! * `model`: the register (state ids, transitions, compare-and-swap with revisions) and
//!   the interning of JSON values;
//! * `search`: the WGL search over one key, its memoization and its pruning rules;
//! * `helpers`: the operations of unknown outcome, linearized only to explain another;
//! * `explain`: the text of a violation, from the longest linearizable prefix found;
//! * `tests`: hand-made histories, and random ones compared with an exhaustive search.

mod explain;
mod helpers;
mod model;
mod ops;
mod search;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::history::Event;
use explain::{explain, explain_impossible, impossible};
use model::{kinds, Interner};
use ops::{collect_ops, reduce_unknown_writes, Op, Prepared};
use search::{search, SearchResult};

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

/// Checks the operations of one key: their values interned, the unknown outcomes reduced,
/// then the search, and on a violation its explanation.
fn check_key(key: &str, all: &[Op<'_>], deadline: Option<Instant>, max_states: usize) -> KeyResult {
    let mut interner = Interner::new();
    let (all_kinds, unknown_revision) = kinds(all, &mut interner);
    let Prepared {
        ops,
        kinds,
        times,
        lazy,
    } = reduce_unknown_writes(all, &all_kinds);
    let prepared = Prepared {
        ops,
        kinds,
        times,
        lazy,
    };
    // An operation no order can place (it observes a state nothing produces) needs no
    // search, which would only find it after trying every order of what precedes it.
    let never = impossible(&prepared, &unknown_revision);
    if !never.is_empty() {
        return KeyResult {
            key: key.to_string(),
            verdict: Verdict::NotLinearizable,
            ops: all.len(),
            explanation: Some(explain_impossible(key, &prepared, &never, &interner)),
        };
    }
    let Prepared {
        ops,
        kinds,
        times,
        lazy,
    } = prepared;

    let searched = search(
        (&kinds, &unknown_revision),
        &times,
        &lazy,
        deadline,
        max_states,
    );
    let (verdict, explanation) = match searched {
        SearchResult::Linearizable => (Verdict::Linearizable, None),
        SearchResult::Exhausted(why) => (Verdict::Unknown, Some(format!("key {key:?}: {why}"))),
        SearchResult::Violation { prefix, state } => (
            Verdict::NotLinearizable,
            Some(explain(
                key,
                (
                    &Prepared {
                        ops,
                        kinds,
                        times,
                        lazy,
                    },
                    &unknown_revision,
                ),
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
