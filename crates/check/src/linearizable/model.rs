//! The model the history is checked against: one register per key, whose state is a small
//! id standing for absence or for one of the key's values (interned, so that states compare
//! and hash as integers). Used by [`super::ops`] to reduce unknown outcomes, by the search
//! for its transitions and by the explanation to print states.
//!
//! With compare-and-swap (a key whose history has writes with `if_revision`, or reads that
//! report revisions), a state is a value *and its revision*: the store's revisions are
//! global and each write takes its own, so the revision a reply reports names the write.
//! A write's state carries the revision of its reply (one of unknown outcome: the revision
//! the reads of its value report, if any read it); a read observes the (value, revision) it
//! returned, so a read that pairs a value with another revision than its write's observes
//! a state no write produced. A compare-and-swap expecting revision E is legal only in the
//! state of revision E (0: absent); one refused with `conflict` reporting the current
//! revision C observes the state of revision C (C = E is a lie: no state allows it), and one
//! whose C no operation is known to have written observes a state of unknown revision (the
//! result of a write of unknown outcome nobody read).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde_json::Value;

use super::ops::{Completion, Op};
use crate::history::Func;

/// Model state id: 0 is "absent", `n > 0` is `Some(value n)` of the key's interner.
pub(super) type State = u32;
pub(super) const ABSENT: State = 0;

/// An operation reduced to what the model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Write(State),
    Delete,
    Read(State),
    /// A compare-and-swap that applied (or may have): legal only in state `expect`, after
    /// which the state is `write`.
    Cas {
        expect: State,
        write: State,
    },
    /// A compare-and-swap refused with a current revision no operation is known to have
    /// written: legal only in a state of unknown revision; changes nothing.
    Refused,
    /// A compare-and-swap refused without a current revision: legal in any state but the
    /// one it expected; changes nothing.
    RefusedNot(State),
}

/// The register's transition: the state after `kind`, or `None` if `kind` is illegal in
/// `state`. `unknown_revision[s]`: state `s` has no known revision (states past its end
/// have one).
pub(super) fn step(state: State, kind: Kind, unknown_revision: &[bool]) -> Option<State> {
    match kind {
        Kind::Write(v) => Some(v),
        Kind::Delete => Some(ABSENT),
        Kind::Read(seen) => (seen == state).then_some(state),
        Kind::Cas { expect, write } => (expect == state).then_some(write),
        Kind::Refused => unknown_revision
            .get(state as usize)
            .copied()
            .unwrap_or(false)
            .then_some(state),
        Kind::RefusedNot(expect) => (expect != state).then_some(state),
    }
}

/// The state an operation leaves behind if it is linearized (reads and refusals leave it
/// unchanged, so this is only meaningful for writes, deletes and compare-and-swaps).
pub(super) fn result_of(kind: Kind) -> Option<State> {
    match kind {
        Kind::Write(v) | Kind::Cas { write: v, .. } => Some(v),
        Kind::Delete => Some(ABSENT),
        Kind::Read(_) | Kind::Refused | Kind::RefusedNot(_) => None,
    }
}

/// The one state an operation requires (a read's observation, a compare-and-swap's
/// expectation): the write that produced it must precede it.
pub(super) fn observed(kind: Kind) -> Option<State> {
    match kind {
        Kind::Read(v) | Kind::Cas { expect: v, .. } => Some(v),
        _ => None,
    }
}

/// Writes and deletes that apply whatever the state (no condition).
pub(super) fn unconditional(kind: Kind) -> bool {
    matches!(kind, Kind::Write(_) | Kind::Delete)
}

/// The operations of one key as model operations, their states interned in `interner`,
/// and per state whether its revision is unknown (see the module's text).
pub(super) fn kinds<'a>(ops: &[Op<'a>], interner: &mut Interner<'a>) -> (Vec<Kind>, Vec<bool>) {
    let revisions = ops
        .iter()
        .any(|op| op.if_revision.is_some() || (op.f == Func::Read && op.revision.is_some()));
    if !revisions {
        let kinds = ops
            .iter()
            .map(|op| match op.f {
                Func::Write => Kind::Write(interner.intern(op.value, None)),
                Func::Delete => Kind::Delete,
                Func::Read => Kind::Read(interner.intern(op.value, None)),
            })
            .collect();
        return (kinds, Vec::new());
    }
    // The revision reads report for each value: a write's own when its reply has none.
    let mut read_revision: HashMap<ValueKey<'a>, u64> = HashMap::new();
    for op in ops.iter().filter(|op| op.f == Func::Read) {
        if let Some(r) = op.revision {
            read_revision.entry(ValueKey(op.value)).or_insert(r);
        }
    }
    // Writes first, so that a revision names the state of the write that reported it.
    let mut written: Vec<Option<State>> = vec![None; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        if op.f == Func::Write && op.completion != Completion::Refused {
            let r = op
                .revision
                .or_else(|| read_revision.get(&ValueKey(op.value)).copied());
            written[i] = Some(interner.intern(op.value, r));
        }
    }
    // Then reads, so that every revision reported is known before the conditions are read.
    for op in ops.iter().filter(|op| op.f == Func::Read) {
        interner.intern(op.value, op.revision);
    }
    let kinds = ops
        .iter()
        .zip(&written)
        .map(|(op, w)| match (op.f, *w, op.if_revision) {
            (Func::Delete, ..) => Kind::Delete,
            (Func::Read, ..) => Kind::Read(interner.intern(op.value, op.revision)),
            (Func::Write, Some(write), None) => Kind::Write(write),
            (Func::Write, Some(write), Some(e)) => Kind::Cas {
                expect: interner.of_revision(e),
                write,
            },
            // Refused: the condition did not hold; what it says about the state.
            (Func::Write, None, e) => match (op.revision, e) {
                (Some(c), Some(e)) if c == e => Kind::Read(interner.phantom(format!(
                    "revision {c}, which a conflict said the key did not have"
                ))),
                (Some(c), _) => match interner.known_revision(c) {
                    Some(s) => Kind::Read(s),
                    None => Kind::Refused,
                },
                // No current revision in the reply: only "not E" is known.
                (None, Some(e)) => Kind::RefusedNot(interner.of_revision(e)),
                // A refusal without a condition is recorded by no workload: it says nothing.
                (None, None) => Kind::RefusedNot(interner.phantom("no condition".into())),
            },
        })
        .collect();
    (kinds, interner.unknown_revisions())
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

/// What a state id stands for (besides [`ABSENT`]).
enum Named<'a> {
    /// A value, with its revision when the key's history reports revisions.
    Value(&'a Value, Option<u64>),
    /// A state no write produces (an observation that names no write), described.
    Phantom(String),
}

/// Maps the values (with revisions) of one key to small state ids, so that the model state
/// is a `u32` and cache entries compare cheaply.
pub(super) struct Interner<'a> {
    ids: HashMap<(ValueKey<'a>, Option<u64>), State>,
    /// The state of each revision interned (the first to claim it).
    by_revision: HashMap<u64, State>,
    states: Vec<Named<'a>>,
}

impl<'a> Interner<'a> {
    pub(super) fn new() -> Self {
        Interner {
            ids: HashMap::new(),
            by_revision: HashMap::new(),
            states: Vec::new(),
        }
    }

    /// `null` is absence (a read of an absent key records `null`), whatever its revision.
    pub(super) fn intern(&mut self, v: &'a Value, revision: Option<u64>) -> State {
        if v.is_null() {
            return ABSENT;
        }
        let next = self.states.len() as State + 1;
        let id = *self.ids.entry((ValueKey(v), revision)).or_insert(next);
        if id == next {
            self.states.push(Named::Value(v, revision));
            if let Some(r) = revision {
                self.by_revision.entry(r).or_insert(id);
            }
        }
        id
    }

    /// A new state no write produces, described by `label`.
    pub(super) fn phantom(&mut self, label: String) -> State {
        self.states.push(Named::Phantom(label));
        self.states.len() as State
    }

    /// The state of `revision` (0: absent), if an operation reported it.
    pub(super) fn known_revision(&self, revision: u64) -> Option<State> {
        match revision {
            0 => Some(ABSENT),
            r => self.by_revision.get(&r).copied(),
        }
    }

    /// The state of `revision`, or a phantom if no operation reported it.
    pub(super) fn of_revision(&mut self, revision: u64) -> State {
        match self.known_revision(revision) {
            Some(s) => s,
            None => self.phantom(format!(
                "revision {revision}, which no operation is known to have written"
            )),
        }
    }

    /// Per state id, whether it is a value whose revision is unknown.
    fn unknown_revisions(&self) -> Vec<bool> {
        std::iter::once(false)
            .chain(
                self.states
                    .iter()
                    .map(|n| matches!(n, Named::Value(_, None))),
            )
            .collect()
    }

    pub(super) fn describe(&self, state: State) -> String {
        match state
            .checked_sub(1)
            .and_then(|i| self.states.get(i as usize))
        {
            Some(Named::Value(v, None)) => format!("Some({v})"),
            Some(Named::Value(v, Some(r))) => format!("Some({v})@r{r}"),
            Some(Named::Phantom(label)) => format!("[{label}]"),
            None => "None".to_string(),
        }
    }
}
