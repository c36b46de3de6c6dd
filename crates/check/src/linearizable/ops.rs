//! From the recorded events to the operations the search works on: invokes paired with their
//! completions (the history validated on the way), then, per key, the operations of unknown
//! outcome reduced and the rest laid out as parallel vectors ([`Prepared`]). First stage of
//! [`check`](super::check), after the workload and before the search.

use std::collections::HashMap;

use serde_json::Value;

use super::model::{observed, result_of, Kind, State, ABSENT};
use crate::history::{Event, EventType, Func};

/// How an operation completed, for the explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Completion {
    Ok,
    /// A compare-and-swap refused with `conflict`: it wrote nothing, and what it says about
    /// the key's revision is checked.
    Refused,
    Info,
    /// The history ended before the operation completed.
    Missing,
}

/// One operation of the history as the checker sees it, borrowing from the events.
#[derive(Debug, Clone)]
pub(super) struct Op<'a> {
    pub(super) process: u64,
    pub(super) f: Func,
    pub(super) key: &'a str,
    /// The value written (writes), the value read (reads), `null` (deletes).
    pub(super) value: &'a Value,
    /// A write's condition (compare-and-swap): the revision expected, 0 = absent.
    pub(super) if_revision: Option<u64>,
    /// The revision the reply reported: a write's, a read's, or a refusal's current one.
    pub(super) revision: Option<u64>,
    pub(super) call: u64,
    /// Completion time; `None` for an unknown outcome (+infinity).
    pub(super) ret: Option<u64>,
    pub(super) completion: Completion,
    /// Requests the client sent for it (retries of one operation are one operation, its
    /// window spanning them all); 1 when the history does not say.
    pub(super) attempts: u32,
}

/// Pairs invokes with completions, validating the history, and keeps the operations that
/// can constrain a linearization (in invoke order).
pub(super) fn collect_ops(history: &[Event]) -> Result<Vec<Op<'_>>, String> {
    // process -> index of its pending invoke.
    let mut pending: HashMap<u64, usize> = HashMap::new();
    // (index of the invoke, operation), sorted by invoke at the end for determinism.
    let mut ops: Vec<(usize, Op<'_>)> = Vec::new();

    for (i, e) in history.iter().enumerate() {
        if e.kind == EventType::Invoke {
            if let Some(&j) = pending.get(&e.process) {
                return Err(double_invoke(history, i, j));
            }
            pending.insert(e.process, i);
            continue;
        }
        let j = invoke_of(history, i, pending.remove(&e.process))?;
        if let Some(op) = completed_op(&history[j], e) {
            ops.push((j, op));
        }
    }

    // Invokes never completed: unknown outcome, as if completed with `info`.
    for (_, j) in pending {
        if let Some(op) = uncompleted_op(&history[j]) {
            ops.push((j, op));
        }
    }
    ops.sort_by_key(|(j, _)| *j);
    Ok(ops.into_iter().map(|(_, op)| op).collect())
}

/// The error for event `i`, an invoke of a process whose invoke at event `j` is pending.
fn double_invoke(history: &[Event], i: usize, j: usize) -> String {
    let e = &history[i];
    format!(
        "malformed history: event {i} invokes {} {:?} on process {} whose invoke \
         at event {j} ({} {:?}) has no completion",
        func_name(e.f),
        e.key,
        e.process,
        func_name(history[j].f),
        history[j].key,
    )
}

/// The index of the invoke that event `i`, a completion, completes (`pending`, the one its
/// process had pending), or why the pair is malformed.
fn invoke_of(history: &[Event], i: usize, pending: Option<usize>) -> Result<usize, String> {
    let e = &history[i];
    let Some(j) = pending else {
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
    Ok(j)
}

/// The operation of invoke `inv` completed by `e`, or `None` if it cannot constrain a
/// linearization.
fn completed_op<'a>(inv: &'a Event, e: &'a Event) -> Option<Op<'a>> {
    let conflict = e.attempts.as_ref().is_some_and(|a| a.conflict);
    let completion = match e.kind {
        EventType::Ok => Completion::Ok,
        EventType::Info => Completion::Info,
        // A compare-and-swap refused: nothing written, but it observed the key's revision.
        EventType::Fail if conflict && inv.if_revision.is_some() && inv.f == Func::Write => {
            Completion::Refused
        }
        // Certainly did not take effect: nothing to linearize.
        EventType::Fail | EventType::Invoke => return None,
    };
    if e.f == Func::Read && completion != Completion::Ok {
        // A read with an unknown outcome observed nothing.
        return None;
    }
    Some(Op {
        process: inv.process,
        f: inv.f,
        key: &inv.key,
        // What a read saw is on its completion; what a write wrote is on its invoke.
        value: if inv.f == Func::Read {
            &e.value
        } else {
            &inv.value
        },
        if_revision: inv.if_revision,
        revision: e.attempts.as_ref().and_then(|a| a.revision),
        call: inv.time,
        ret: (completion != Completion::Info).then_some(e.time),
        completion,
        attempts: e.attempts.as_ref().map_or(1, |a| a.sent.max(1)),
    })
}

/// The operation of invoke `inv`, never completed: unknown outcome. `None` for a read,
/// which observed nothing.
fn uncompleted_op(inv: &Event) -> Option<Op<'_>> {
    if inv.f == Func::Read {
        return None;
    }
    Some(Op {
        process: inv.process,
        f: inv.f,
        key: &inv.key,
        value: &inv.value,
        if_revision: inv.if_revision,
        revision: None,
        call: inv.time,
        ret: None,
        completion: Completion::Missing,
        attempts: 1,
    })
}

fn func_name(f: Func) -> &'static str {
    match f {
        Func::Read => "read",
        Func::Write => "write",
        Func::Delete => "delete",
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
/// With compare-and-swap, a condition observes a state as a read does: a compare-and-swap
/// that applied observed the state it expected. But a refusal that names no known state
/// (`Kind::Refused`, `Kind::RefusedNot`) may have observed an unknown write nobody read:
/// then none is dropped.
///
/// The remaining unknown operations are searched lazily (see
/// [`search`](super::search::search)).
pub(super) fn reduce_unknown_writes<'a>(ops: &[Op<'a>], kinds: &[Kind]) -> Prepared<'a> {
    let mut writes_of: HashMap<State, usize> = HashMap::new();
    let mut first_read_ret: HashMap<State, u64> = HashMap::new();
    for (op, kind) in ops.iter().zip(kinds) {
        if let Some(v) = result_of(*kind).filter(|_| !matches!(kind, Kind::Delete)) {
            *writes_of.entry(v).or_default() += 1;
        }
        if let (Some(v), Some(ret)) = (observed(*kind), op.ret) {
            let r = first_read_ret.entry(v).or_insert(ret);
            *r = (*r).min(ret);
        }
    }
    let keep_unobserved = kinds
        .iter()
        .any(|k| matches!(k, Kind::Refused | Kind::RefusedNot(_)));

    let mut out = Prepared {
        ops: Vec::new(),
        kinds: Vec::new(),
        times: Vec::new(),
        lazy: Vec::new(),
    };
    for (op, kind) in ops.iter().zip(kinds) {
        let mut ret = op.ret.unwrap_or(u64::MAX);
        let written = result_of(*kind).filter(|_| !matches!(kind, Kind::Delete));
        if let (Some(v), None) = (written, op.ret) {
            // A write of `null` is a delete for the model: reads of absence may observe it.
            if v != ABSENT {
                match first_read_ret.get(&v) {
                    None if keep_unobserved => {}
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
pub(super) struct Prepared<'a> {
    pub(super) ops: Vec<Op<'a>>,
    pub(super) kinds: Vec<Kind>,
    /// `(call, return)`; the return is `u64::MAX` (+infinity) for unknown outcomes.
    pub(super) times: Vec<(u64, u64)>,
    /// Unknown outcome, searched lazily.
    pub(super) lazy: Vec<bool>,
}
