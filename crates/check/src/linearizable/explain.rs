//! The explanation of a violation, for people: after the longest linearizable prefix the
//! search found, the state, the operations that could come next and why each fails, and the
//! reads and unknown outcomes that constrain them. The last stage of a check that failed.

use std::fmt::Write as _;

use super::model::{result_of, step, Interner, Kind, State, ABSENT};
use super::ops::{Completion, Op, Prepared};
use super::search::Bitset;
use crate::history::Func;

/// Prefix operations shown in an explanation (the last ones; the rest are counted).
const SHOWN_PREFIX: usize = 10;

/// What stopped the search after the longest prefix it found, as operation indices.
struct Impasse {
    /// Operations of unknown outcome invoked by then: each could be linearized next.
    pending_unknown: Vec<usize>,
    /// The other operations that could come next.
    candidates: Vec<usize>,
    /// Reads of the current value still to be placed.
    unread: Vec<usize>,
    /// The current value was written once and reads of it remain, so the state must not
    /// change (the search's pruning rule).
    pinned: bool,
}

impl Impasse {
    fn new(p: &Prepared<'_>, prefix: &[usize], state: State) -> Self {
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
            .filter(|k| !matches!(k, Kind::Delete) && result_of(**k) == Some(state))
            .count();
        let unread: Vec<usize> = (0..n)
            .filter(|&i| !done.get(i) && matches!(p.kinds[i], Kind::Read(v) if v == state))
            .collect();
        let pinned = state != ABSENT && writes_of_state == 1 && !unread.is_empty();
        Impasse {
            pending_unknown,
            candidates,
            unread,
            pinned,
        }
    }
}

pub(super) fn explain(
    key: &str,
    (p, unknown_revision): (&Prepared<'_>, &[bool]),
    prefix: &[usize],
    state: State,
    interner: &Interner<'_>,
) -> String {
    let n = p.ops.len();
    let impasse = Impasse::new(p, prefix, state);

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
    for &i in &impasse.candidates {
        let why = why_not_next((p, unknown_revision), &impasse, i, state, interner);
        let _ = writeln!(s, "  {}  -- {why}", describe_op(&p.ops[i]));
    }
    if impasse.pinned {
        let _ = writeln!(
            s,
            "reads of {} still to be placed, while it is the state (it was written only once):",
            interner.describe(state)
        );
        write_ops(&mut s, p, &impasse.unread);
    }
    if !impasse.pending_unknown.is_empty() {
        let _ = writeln!(
            s,
            "unknown-outcome operations invoked by then ({}), each of which may take effect \
             at any point after its invoke, or never:",
            impasse.pending_unknown.len()
        );
        write_ops(&mut s, p, &impasse.pending_unknown);
    }
    let _ = write!(
        s,
        "(times: ns since the workload started; `..?` marks an info or missing completion)"
    );
    s
}

/// The operations that must be linearized (not of unknown outcome) but observe a state no
/// operation of the key produces: a read of a value (with a revision) nobody wrote, a
/// compare-and-swap expecting a revision nobody wrote, a refusal that reports the revision
/// it expected, or one naming an unknown revision where no write's revision is unknown.
pub(super) fn impossible(p: &Prepared<'_>, unknown_revision: &[bool]) -> Vec<usize> {
    let produced: std::collections::HashSet<State> = std::iter::once(ABSENT)
        .chain(p.kinds.iter().filter_map(|k| result_of(*k)))
        .collect();
    let any_unknown = produced
        .iter()
        .any(|&s| unknown_revision.get(s as usize).copied().unwrap_or(false));
    (0..p.ops.len())
        .filter(|&i| !p.lazy[i])
        .filter(|&i| match p.kinds[i] {
            Kind::Read(s) | Kind::Cas { expect: s, .. } => !produced.contains(&s),
            Kind::Refused => !any_unknown,
            _ => false,
        })
        .collect()
}

/// The explanation of a key with operations no order can place (see [`impossible`]).
pub(super) fn explain_impossible(
    key: &str,
    p: &Prepared<'_>,
    never: &[usize],
    interner: &Interner<'_>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "key {key:?}: not linearizable: {} of its {} operations observe a state no operation \
         of the key produces, so no order can place them:",
        never.len(),
        p.ops.len()
    );
    for &i in never.iter().take(SHOWN_PREFIX) {
        let why = match p.kinds[i] {
            Kind::Refused => "a revision no operation is known to have written, and no write \
                              of unknown revision could have been current"
                .to_string(),
            Kind::Read(v) | Kind::Cas { expect: v, .. } => interner.describe(v),
            _ => String::new(),
        };
        let _ = writeln!(s, "  {}  -- observes {why}", describe_op(&p.ops[i]));
    }
    if never.len() > SHOWN_PREFIX {
        let _ = writeln!(s, "  ... and {} more", never.len() - SHOWN_PREFIX);
    }
    let _ = write!(s, "(times: ns since the workload started)");
    s
}

/// Why candidate `i` cannot be linearized next in `state`.
fn why_not_next(
    (p, unknown_revision): (&Prepared<'_>, &[bool]),
    impasse: &Impasse,
    i: usize,
    state: State,
    interner: &Interner<'_>,
) -> String {
    let kind = p.kinds[i];
    let after = |s: State, k: Kind| step(s, k, unknown_revision);
    // A pending unknown operation after which this one would be legal.
    let helper = impasse.pending_unknown.iter().find(|&&u| {
        after(state, kind).is_none()
            && after(state, p.kinds[u]).is_some_and(|mid| after(mid, kind).is_some())
    });
    let changes_state = result_of(kind).is_some() || helper.is_some();
    match (after(state, kind), helper) {
        (_, Some(&u)) if impasse.pinned => format!(
            "would need {} first, replacing {} for good while reads of it remain (below)",
            describe_op(&p.ops[u]),
            interner.describe(state)
        ),
        _ if impasse.pinned && changes_state => format!(
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
        (None, None) => match kind {
            Kind::Read(_) if p.ops[i].completion == Completion::Refused => {
                match (p.ops[i].revision, p.ops[i].if_revision) {
                    (Some(c), Some(e)) if c == e => {
                        "illegal: refused, yet the current revision it reports is the one it \
                         expected"
                            .to_string()
                    }
                    (c, _) => format!(
                        "illegal: refused, naming r{}, but the state is {}",
                        c.unwrap_or(0),
                        interner.describe(state)
                    ),
                }
            }
            Kind::Cas { expect, .. } => format!(
                "illegal: it applied, so the state was {}, but the state is {}",
                interner.describe(expect),
                interner.describe(state)
            ),
            Kind::Refused => format!(
                "illegal: refused, naming a revision no operation is known to have written, \
                 but the state is {}",
                interner.describe(state)
            ),
            Kind::RefusedNot(expect) => format!(
                "illegal: refused, so the state was not {}, but it is",
                interner.describe(expect)
            ),
            _ => format!("illegal: the state is {}", interner.describe(state)),
        },
    }
}

/// One line per operation of `ops`, the first [`SHOWN_PREFIX`] of them, then how many more.
fn write_ops(s: &mut String, p: &Prepared<'_>, ops: &[usize]) {
    for &i in ops.iter().take(SHOWN_PREFIX) {
        let _ = writeln!(s, "  {}", describe_op(&p.ops[i]));
    }
    if ops.len() > SHOWN_PREFIX {
        let _ = writeln!(s, "  ... and {} more", ops.len() - SHOWN_PREFIX);
    }
}

/// `w(1) by p3 ok @100..250`, `r()=null by p1 ok @..`, `d() by p2 info @300..?`, and
/// `w(4) by p5 ok after 3 attempts @400..2600` for a retried operation. With revisions:
/// `r()=1@r7`, `w(2)@r9`, a compare-and-swap `cas(3 if r7)@r12`, and one refused
/// `cas(3 if r7) by p2 conflict(r9) @..`.
fn describe_op(op: &Op<'_>) -> String {
    let at = |r: Option<u64>| r.map_or(String::new(), |r| format!("@r{r}"));
    let what = match (op.f, op.if_revision, op.completion) {
        (Func::Write, Some(e), Completion::Refused) => format!("cas({} if r{e})", op.value),
        (Func::Write, Some(e), _) => format!("cas({} if r{e}){}", op.value, at(op.revision)),
        (Func::Write, None, _) => format!("w({}){}", op.value, at(op.revision)),
        (Func::Delete, ..) => "d()".to_string(),
        (Func::Read, ..) if op.value.is_null() => "r()=null".to_string(),
        (Func::Read, ..) => format!("r()={}{}", op.value, at(op.revision)),
    };
    let refused;
    let how = match op.completion {
        Completion::Ok => "ok",
        Completion::Refused => {
            refused = match op.revision {
                Some(r) => format!("conflict(r{r})"),
                None => "conflict".to_string(),
            };
            &refused
        }
        Completion::Info => "info",
        Completion::Missing => "no completion",
    };
    let ret = op.ret.map_or("?".to_string(), |t| t.to_string());
    let tries = if op.attempts > 1 {
        format!(" after {} attempts", op.attempts)
    } else {
        String::new()
    };
    format!("{what} by p{} {how}{tries} @{}..{ret}", op.process, op.call)
}
