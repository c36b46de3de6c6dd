//! The exactly-once check of a unique-value workload: no write applied more than once.
//!
//! Every put, and every delete that deleted something, takes exactly one store revision
//! (DESIGN.md), and nothing else in the suite's cluster takes any but the nemesis's probe
//! writes after each heal, which it counts ([`Probe`]s' `outside_writes`). The suite reads the
//! revision with a put of its own before the workload starts and another after it stopped;
//! the revisions in between must be accounted for by the history's writes: a put that was
//! acknowledged or may have applied (`ok` or `info`) accounts for at most one, a delete
//! likewise if it may have deleted (`deleted: true`, or an attempt of unknown outcome
//! before the acknowledged one, which may have deleted). A write applied twice takes a
//! revision nobody accounts for, so `double_applies_bound` > 0 proves a double apply (it
//! is a lower bound on their number: a write that applied once while counted as possibly
//! applied hides one). And acknowledged writes carry distinct revisions, inside the window.
//! Pure functions over the history and the two probes: no IO.

use std::collections::HashMap;

use serde::Serialize;

use crate::history::{Event, EventType, Func};

/// A revision probe: the probe put's revision, and how many of its attempts had an unknown
/// outcome (each may have applied and taken a revision of its own, even a later one); on the
/// later probe, also the writes outside the history since the first that may have applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub revision: u64,
    pub unknown_attempts: u32,
    pub outside_writes: u64,
}

/// The verdict's exactly-once section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExactlyOnce {
    pub revision_before: u64,
    pub revision_after: u64,
    /// Revisions taken between the probes (the later probe's own excluded).
    pub revisions_taken: u64,
    /// Writes that may each have taken one: puts `ok` or `info`, deletes that deleted or may
    /// have, the probes' unknown attempts, and the writes outside the history.
    pub writes_accounted: u64,
    /// Of those, writes outside the history (the nemesis's probes after each heal).
    pub outside_writes: u64,
    /// Revisions no write accounts for: writes applied more than once, at least. Must be 0.
    pub double_applies_bound: u64,
    /// Writes retried after an attempt of unknown outcome and then acknowledged: those a
    /// server without request ids could apply twice.
    pub retried_after_unknown: u64,
    /// Acknowledged writes sharing a revision, or acknowledged outside the window.
    pub revision_problems: Vec<String>,
}

impl ExactlyOnce {
    pub fn holds(&self) -> bool {
        self.double_applies_bound == 0 && self.revision_problems.is_empty()
    }
}

/// Checks `history` (writes on keys other than the probes') against the probes taken
/// before and after it.
pub fn check(history: &[Event], before: Probe, after: Probe) -> ExactlyOnce {
    let mut pending: HashMap<u64, &Event> = HashMap::new();
    let outside = before.outside_writes + after.outside_writes;
    let mut accounted =
        u64::from(before.unknown_attempts) + u64::from(after.unknown_attempts) + outside;
    let mut retried = 0;
    // revision -> the acknowledged write that reported it.
    let mut acked: HashMap<u64, &Event> = HashMap::new();
    let mut problems = Vec::new();
    for e in history.iter().filter(|e| e.f != Func::Read) {
        if e.kind == EventType::Invoke {
            pending.insert(e.process, e);
            continue;
        }
        pending.remove(&e.process);
        let a = e.attempts.clone().unwrap_or_default();
        let may_have_applied = match (e.kind, e.f) {
            (EventType::Fail, _) => false,
            // An acknowledged delete of an absent key took no revision, unless an earlier
            // attempt of unknown outcome deleted it.
            (EventType::Ok, Func::Delete) => a.deleted != Some(false) || a.unknown > 0,
            _ => true,
        };
        accounted += u64::from(may_have_applied);
        if e.kind != EventType::Ok {
            continue;
        }
        retried += u64::from(a.unknown > 0);
        let Some(rev) = a.revision.filter(|_| a.deleted != Some(false)) else {
            continue;
        };
        if rev <= before.revision || rev >= after.revision {
            problems.push(format!(
                "{} of {:?} by p{} acknowledged at revision {rev}, outside the run's ({}, {})",
                what(e),
                e.key,
                e.process,
                before.revision,
                after.revision
            ));
        }
        if let Some(other) = acked.insert(rev, e) {
            problems.push(format!(
                "revision {rev} acknowledged twice: {} of {:?} by p{} and {} of {:?} by p{}",
                what(other),
                other.key,
                other.process,
                what(e),
                e.key,
                e.process
            ));
        }
    }
    // Invokes never completed may have applied.
    accounted += pending.len() as u64;
    let taken = after.revision.saturating_sub(before.revision + 1);
    ExactlyOnce {
        revision_before: before.revision,
        revision_after: after.revision,
        revisions_taken: taken,
        writes_accounted: accounted,
        outside_writes: outside,
        double_applies_bound: taken.saturating_sub(accounted),
        retried_after_unknown: retried,
        revision_problems: problems,
    }
}

fn what(e: &Event) -> String {
    match e.f {
        Func::Delete => "delete".into(),
        _ => format!("put of {}", e.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Attempts;
    use serde_json::{json, Value};

    /// A history builder: writes as (process, f, outcome, attempts).
    struct H(Vec<Event>, u64);

    impl H {
        fn new() -> H {
            H(Vec::new(), 0)
        }

        fn op(&mut self, p: u64, f: Func, kind: EventType, a: Attempts) -> &mut H {
            let value = if f == Func::Write {
                json!(self.1)
            } else {
                Value::Null
            };
            for (kind, attempts) in [(EventType::Invoke, None), (kind, Some(a))] {
                self.1 += 1;
                self.0.push(Event {
                    process: p,
                    kind,
                    f,
                    key: "k0".into(),
                    value: value.clone(),
                    time: self.1,
                    attempts,
                    if_revision: None,
                });
            }
            self
        }
    }

    fn acked(revision: u64, unknown: u32) -> Attempts {
        Attempts {
            sent: unknown + 1,
            unknown,
            revision: Some(revision),
            ..Attempts::default()
        }
    }

    fn probe(revision: u64) -> Probe {
        Probe {
            revision,
            unknown_attempts: 0,
            outside_writes: 0,
        }
    }

    #[test]
    fn every_revision_accounted_for_holds() {
        let mut h = H::new();
        h.op(1, Func::Write, EventType::Ok, acked(11, 0))
            .op(2, Func::Write, EventType::Ok, acked(12, 1))
            .op(1, Func::Write, EventType::Fail, Attempts::default())
            .op(3, Func::Write, EventType::Info, Attempts::default())
            .op(
                2,
                Func::Delete,
                EventType::Ok,
                Attempts {
                    deleted: Some(true),
                    ..acked(14, 0)
                },
            );
        // 11, 12, the info put at 13, the delete at 14; the later probe at 15.
        let v = check(&h.0, probe(10), probe(15));
        assert_eq!((v.revisions_taken, v.writes_accounted), (4, 4));
        assert_eq!(v.double_applies_bound, 0);
        assert_eq!(v.retried_after_unknown, 1);
        assert!(v.holds(), "{v:?}");
    }

    #[test]
    fn a_put_applied_twice_is_caught() {
        // The retried put applied on its timed-out attempt (12) and again (13): one revision
        // more than the history's writes.
        let mut h = H::new();
        h.op(1, Func::Write, EventType::Ok, acked(11, 0)).op(
            2,
            Func::Write,
            EventType::Ok,
            acked(13, 1),
        );
        let v = check(&h.0, probe(10), probe(14));
        assert_eq!(v.double_applies_bound, 1);
        assert!(!v.holds());
        // Had the probe after the run itself had an unknown attempt, that would account
        // for the revision: the check stays sound rather than sharp.
        let after = Probe {
            unknown_attempts: 1,
            ..probe(14)
        };
        assert!(check(&h.0, probe(10), after).holds());
        // So would a write outside the history (a nemesis's probe).
        let after = Probe {
            outside_writes: 1,
            ..probe(14)
        };
        let v = check(&h.0, probe(10), after);
        assert_eq!((v.outside_writes, v.double_applies_bound), (1, 0));
    }

    #[test]
    fn deletes_count_only_when_they_may_have_deleted() {
        let absent = |unknown| Attempts {
            deleted: Some(false),
            ..acked(11, unknown)
        };
        let mut h = H::new();
        h.op(1, Func::Write, EventType::Ok, acked(11, 0)).op(
            2,
            Func::Delete,
            EventType::Ok,
            absent(0),
        );
        assert_eq!(check(&h.0, probe(10), probe(12)).writes_accounted, 1);
        // An absent key after a timed-out attempt: that attempt may have deleted it.
        let mut h = H::new();
        h.op(1, Func::Write, EventType::Ok, acked(11, 0)).op(
            2,
            Func::Delete,
            EventType::Ok,
            absent(1),
        );
        let v = check(&h.0, probe(10), probe(13));
        assert_eq!((v.writes_accounted, v.double_applies_bound), (2, 0));
        // Its reply's revision (the store's) is not an acknowledged write's.
        assert!(v.revision_problems.is_empty(), "{v:?}");
        // Without that, a revision taken by nobody's delete is a double apply.
        let mut h = H::new();
        h.op(1, Func::Write, EventType::Ok, acked(11, 0)).op(
            2,
            Func::Delete,
            EventType::Ok,
            absent(0),
        );
        assert_eq!(check(&h.0, probe(10), probe(13)).double_applies_bound, 1);
    }

    #[test]
    fn shared_or_out_of_window_revisions_are_named() {
        let mut h = H::new();
        h.op(1, Func::Write, EventType::Ok, acked(11, 0))
            .op(2, Func::Write, EventType::Ok, acked(11, 0))
            .op(3, Func::Write, EventType::Ok, acked(20, 0));
        let v = check(&h.0, probe(10), probe(14));
        assert_eq!(v.revision_problems.len(), 2, "{v:?}");
        assert!(v.revision_problems[0].contains("acknowledged twice"));
        assert!(v.revision_problems[1].contains("outside"));
        assert!(!v.holds());
    }

    #[test]
    fn an_uncompleted_write_may_have_applied() {
        let mut h = H::new();
        h.op(1, Func::Write, EventType::Ok, acked(11, 0));
        h.0.push(Event {
            process: 2,
            kind: EventType::Invoke,
            f: Func::Write,
            key: "k0".into(),
            value: json!(99),
            time: 100,
            attempts: None,
            if_revision: None,
        });
        let v = check(&h.0, probe(10), probe(13));
        assert_eq!((v.writes_accounted, v.double_applies_bound), (2, 0));
    }
}
