//! The operations of unknown outcome as the search uses them: never on their own, only as
//! helpers linearized just before an operation that is illegal without them (a read of
//! their result, a compare-and-swap expecting it, a refusal that observed a state of
//! unknown revision). A helper that is itself a compare-and-swap may need one of its own
//! first, so a helper is a short chain ([`Chain`]). Used by [`super::search`] only.

use std::collections::HashMap;

use super::model::{observed, result_of, step, Kind, State};
use super::search::Linearized;

/// Longest chain of helpers tried before one operation: each link but the first is a
/// compare-and-swap whose expected state the link before it leaves.
const MAX_CHAIN: usize = 3;

/// Helpers linearized, in order, just before one operation: operation indices.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chain {
    ops: [usize; MAX_CHAIN],
    len: usize,
}

impl Chain {
    pub(super) const EMPTY: Chain = Chain {
        ops: [0; MAX_CHAIN],
        len: 0,
    };

    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.ops[..self.len].iter().copied()
    }

    fn contains(&self, op: usize) -> bool {
        self.iter().any(|o| o == op)
    }

    fn then(mut self, op: usize) -> Option<Chain> {
        *self.ops.get_mut(self.len)? = op;
        self.len += 1;
        Some(self)
    }
}

/// The lazy operations, by the state they leave, each list sorted by invoke time; and all
/// of them, sorted likewise.
pub(super) struct Helpers {
    by_result: HashMap<State, Vec<(u64, usize)>>,
    all: Vec<(u64, usize)>,
}

impl Helpers {
    pub(super) fn new(kinds: &[Kind], times: &[(u64, u64)], lazy: &[bool]) -> Self {
        let mut by_result: HashMap<State, Vec<(u64, usize)>> = HashMap::new();
        let mut all = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            if let (true, Some(result)) = (lazy[i], result_of(*kind)) {
                by_result.entry(result).or_default().push((times[i].0, i));
                all.push((times[i].0, i));
            }
        }
        for list in by_result.values_mut() {
            list.sort_unstable();
        }
        all.sort_unstable();
        Helpers { by_result, all }
    }

    /// Lazy operations not yet linearized, invoked by `frontier`, that linearized in order
    /// from `state` make `kind` (illegal in `state`) legal right after them; with the state
    /// after `kind`. Each link is the earliest-invoked that works. For a read or a
    /// compare-and-swap that applied, the last link must leave the one state it observes,
    /// and any such one would do: from now on each stays available forever (infinite
    /// return time) with the same effect, so they are interchangeable. A refusal takes the
    /// `skip`-th chain after which it is legal: they leave different states (of unknown
    /// revision, or any but the one expected), which later operations may tell apart, so
    /// the search tries each in turn.
    pub(super) fn find(
        &self,
        (kind, state): (Kind, State),
        frontier: u64,
        linearized: &Linearized,
        model: (&[Kind], &[bool]),
        skip: usize,
    ) -> Option<(Chain, State)> {
        let found = (frontier, linearized);
        let (chain, before) = self.reach(kind, state, found, model, (Chain::EMPTY, skip))?;
        Some((chain, step(before, kind, model.1)?))
    }

    /// A chain, extending `prefix`, after which `kind` is legal, and the state it leaves;
    /// the first `skip` such chains passed over.
    fn reach(
        &self,
        kind: Kind,
        state: State,
        found: (u64, &Linearized),
        (kinds, unknown_revision): (&[Kind], &[bool]),
        (prefix, skip): (Chain, usize),
    ) -> Option<(Chain, State)> {
        let (frontier, linearized) = found;
        let list = match observed(kind) {
            Some(seen) => self.by_result.get(&seen)?,
            None if matches!(kind, Kind::Refused | Kind::RefusedNot(_)) => &self.all,
            None => return None,
        };
        let legal_after = |s: State| step(s, kind, unknown_revision).is_some();
        list.iter()
            .take_while(|&&(call, _)| call <= frontier)
            .filter(|&&(_, op)| !linearized.get(op) && !prefix.contains(op))
            .filter_map(|&(_, op)| {
                if let Some(mid) = step(state, kinds[op], unknown_revision) {
                    return if legal_after(mid) {
                        prefix.then(op).map(|c| (c, mid))
                    } else {
                        None
                    };
                }
                // A compare-and-swap whose expected state another helper must leave first.
                let Kind::Cas { expect, write } = kinds[op] else {
                    return None;
                };
                if prefix.len + 2 > MAX_CHAIN || !legal_after(write) {
                    return None;
                }
                let model = (kinds, unknown_revision);
                let (before, _) =
                    self.reach(Kind::Read(expect), state, found, model, (prefix, 0))?;
                Some((before.then(op)?, write))
            })
            .nth(skip)
    }
}
