//! The watch checker: pure functions over a [`WatchHistory`], no IO.
//!
//! 1. **Each stream keeps the contract.** Per watch (one `watch_id`): `seq` 1, 2, 3, …;
//!    no event below the stream's start revision; revisions never go back; an event after a
//!    complete message is newer than that message's `store_revision`, and no event is
//!    newer than its own message's; every event is well formed (`type`, `key`, `revision`).
//!    The drop rule of a resuming watcher would hide a duplicate inside one stream, so this
//!    is checked on what was received, before it.
//! 2. **What the watcher kept** ([`accepted`]): its streams in order, events below the next
//!    revision it expects dropped, the events of a revision left incomplete when a stream
//!    ended dropped too (the resume delivers that revision again). It must equal the
//!    truth's, event for event, up to the revision both fully saw, and reach the run's final
//!    revision: a gap, a duplicate, a reordered pair, a changed or a phantom event all show
//!    as a difference.
//! 3. **The truth against the writes.** Every acknowledged put appears in the truth at its
//!    acknowledged revision, with its key and value; every put event is of a put that was
//!    attempted, and not of one that failed for certain; no value appears twice (a put
//!    applied twice), no (revision, key) twice, revisions never go back; the workload never
//!    deletes, so no delete or expire event appears; the truth reaches the final revision.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::{revision_of, PutOutcome, PutRecord, StreamEnd, WatchHistory, WatcherLog};
use crate::exactly_once::{ExactlyOnce, Probe};

/// At most this many violations are listed (all are counted).
const MAX_LISTED: usize = 50;

/// Puts by outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PutCounts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Of the unknown ones, those the truth shows applied.
    pub unknown_applied: u64,
    /// Applied in all, by the truth.
    pub applied: u64,
    /// Acknowledged after an attempt of unknown outcome.
    pub retried_after_unknown: u64,
}

/// One watcher's counts.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct WatcherSummary {
    pub name: String,
    pub home: u64,
    /// Events kept (after the drop rule), received, and dropped.
    pub events: u64,
    pub received: u64,
    pub dropped: u64,
    /// Messages with events, and progress notices.
    pub messages: u64,
    pub progress: u64,
    pub streams: u64,
    /// Streams after the first.
    pub resumes: u64,
    /// How its streams ended, by code (`silence`, `seq_gap`, `malformed` for the watcher's
    /// own reasons; a stream stopped at the end of the run is not counted).
    pub ends: BTreeMap<String, u64>,
    /// Creates refused, by code.
    pub refused: BTreeMap<String, u64>,
    /// The last revision it fully saw.
    pub fully_seen: u64,
    /// Its events equal the truth's up to that revision.
    pub matches_truth: bool,
}

/// The watch section of the verdict.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct WatchVerdict {
    pub start_revision: u64,
    pub final_revision: Option<u64>,
    /// Events of the truth, and the revision it fully saw.
    pub truth_events: u64,
    pub truth_revision: u64,
    pub puts: PutCounts,
    pub watchers: Vec<WatcherSummary>,
    /// Over every watcher: events kept, resumes, ends by code.
    pub events: u64,
    pub resumes: u64,
    pub ends: BTreeMap<String, u64>,
    pub violations: Vec<String>,
    pub violation_count: u64,
}

impl WatchVerdict {
    pub fn holds(&self) -> bool {
        self.violation_count == 0
    }

    fn violation(&mut self, v: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_LISTED {
            self.violations.push(v);
        }
    }
}

/// What a watcher kept of what it received.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Accepted {
    pub events: Vec<Value>,
    pub received: u64,
    pub dropped: u64,
    /// The last revision fully seen (the start revision - 1 before any).
    pub fully_seen: u64,
}

/// Applies the watcher's drop rule to its streams: events below the next expected revision
/// dropped; a complete message (not a fragment) moves the next expected revision past its
/// `store_revision`; the events of a revision a stream left incomplete are not kept.
pub fn accepted(log: &WatcherLog) -> Accepted {
    let mut a = Accepted {
        fully_seen: log.start_revision.saturating_sub(1),
        ..Accepted::default()
    };
    for stream in &log.streams {
        let mut pending = Vec::new();
        for m in &stream.messages {
            for e in &m.events {
                a.received += 1;
                if revision_of(e) > a.fully_seen {
                    pending.push(e.clone());
                } else {
                    a.dropped += 1;
                }
            }
            if !m.fragment {
                a.events.append(&mut pending);
                a.fully_seen = a.fully_seen.max(m.store_revision);
            }
        }
        a.dropped += pending.len() as u64;
    }
    a
}

/// Contract violations inside each of `log`'s streams (point 1 of the module docs).
pub fn stream_problems(log: &WatcherLog) -> Vec<String> {
    let mut out = Vec::new();
    for s in &log.streams {
        let at = |what: String| format!("{} watch {} on n{}: {what}", log.name, s.watch_id, s.node);
        // The revision every event must exceed: the last complete message's.
        let mut covered = s.start_revision.saturating_sub(1);
        let mut last_event = 0;
        for (i, m) in s.messages.iter().enumerate() {
            if m.seq != i as u64 + 1 {
                out.push(at(format!("message {} has seq {}", i + 1, m.seq)));
            }
            for e in &m.events {
                let rev = revision_of(e);
                if !well_formed(e) {
                    out.push(at(format!("seq {}: malformed event {e}", m.seq)));
                } else if rev <= covered || rev < last_event {
                    out.push(at(format!(
                        "seq {}: event at revision {rev} after revision {} was delivered: {e}",
                        m.seq,
                        covered.max(last_event)
                    )));
                } else if rev > m.store_revision {
                    out.push(at(format!(
                        "seq {}: event at revision {rev} in a message of store_revision {}",
                        m.seq, m.store_revision
                    )));
                }
                last_event = last_event.max(rev);
            }
            if !m.fragment {
                if m.store_revision < covered {
                    out.push(at(format!(
                        "seq {}: store_revision {} went back from {covered}",
                        m.seq, m.store_revision
                    )));
                }
                covered = covered.max(m.store_revision);
            }
        }
    }
    out
}

fn well_formed(e: &Value) -> bool {
    let kind = e["type"].as_str();
    revision_of(e) > 0
        && e["key"].is_string()
        && match kind {
            Some("put") => e.get("value").is_some(),
            Some("delete") | Some("expire") => true,
            _ => false,
        }
}

/// The first difference between `truth` and `seen` over revisions up to `upto`, named.
pub fn first_difference(truth: &[Value], seen: &[Value], upto: u64) -> Option<String> {
    let truth: Vec<&Value> = truth.iter().filter(|e| revision_of(e) <= upto).collect();
    let seen: Vec<&Value> = seen.iter().filter(|e| revision_of(e) <= upto).collect();
    for (i, (t, s)) in truth.iter().zip(&seen).enumerate() {
        if t == s {
            continue;
        }
        let (rt, rs) = (revision_of(t), revision_of(s));
        let what = if rs > rt {
            format!("missed revision {rt} (a gap): got {rs} instead")
        } else if seen[..i].iter().any(|p| p == s) {
            format!("revision {rs} again (a duplicate) where revision {rt} was due")
        } else if rs < rt {
            format!("revision {rs} where {rt} was due (out of order, or not in the change log)")
        } else {
            "a different event at that revision".to_string()
        };
        return Some(format!("event {i}: {what}: truth {t}, watcher {s}"));
    }
    match truth.len().cmp(&seen.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(format!(
            "ends after {} events, the truth has {} up to revision {upto}: missed {}",
            seen.len(),
            truth.len(),
            truth[seen.len()]
        )),
        std::cmp::Ordering::Less => Some(format!(
            "{} events more than the truth up to revision {upto}: first {}",
            seen.len() - truth.len(),
            seen[truth.len()]
        )),
    }
}

/// Judges `h` (see the module docs).
pub fn check(h: &WatchHistory) -> WatchVerdict {
    let mut v = WatchVerdict {
        start_revision: h.start_revision,
        final_revision: h.final_revision,
        ..WatchVerdict::default()
    };
    let Some(final_revision) = h.final_revision else {
        v.violation("no final scan: the run's final revision is unknown".into());
        return v;
    };
    let Some(truth_log) = &h.truth else {
        v.violation("no truth: no node served a fresh watch from the start revision".into());
        return v;
    };
    for p in stream_problems(truth_log) {
        v.violation(format!("truth: {p}"));
    }
    let truth = accepted(truth_log);
    v.truth_events = truth.events.len() as u64;
    v.truth_revision = truth.fully_seen;
    if truth.fully_seen < final_revision {
        v.violation(format!(
            "the truth reached revision {} only, not the final revision {final_revision}",
            truth.fully_seen
        ));
    }
    check_truth(h, &truth.events, &mut v);
    for log in &h.watchers {
        let s = summarize(log, &truth, final_revision, &mut v);
        v.events += s.events;
        v.resumes += s.resumes;
        for (code, n) in &s.ends {
            *v.ends.entry(code.clone()).or_default() += n;
        }
        v.watchers.push(s);
    }
    v
}

/// One watcher's counts, and its violations into `v`.
fn summarize(
    log: &WatcherLog,
    truth: &Accepted,
    final_revision: u64,
    v: &mut WatchVerdict,
) -> WatcherSummary {
    for p in stream_problems(log) {
        v.violation(p);
    }
    let a = accepted(log);
    let upto = a.fully_seen.min(truth.fully_seen);
    let difference = first_difference(&truth.events, &a.events, upto);
    if let Some(d) = &difference {
        v.violation(format!("{}: {d}", log.name));
    }
    if a.fully_seen < final_revision {
        v.violation(format!(
            "{} fully saw revision {} only, not the final revision {final_revision}",
            log.name, a.fully_seen
        ));
    }
    let mut ends = BTreeMap::new();
    for s in &log.streams {
        let code = match &s.end {
            Some(StreamEnd::End { code, .. }) => code.clone(),
            Some(StreamEnd::Silence) => "silence".into(),
            Some(StreamEnd::SeqGap { .. }) => "seq_gap".into(),
            Some(StreamEnd::Malformed { .. }) => "malformed".into(),
            Some(StreamEnd::Stopped) | None => continue,
        };
        *ends.entry(code).or_default() += 1;
    }
    let all = || log.streams.iter().flat_map(|s| &s.messages);
    WatcherSummary {
        name: log.name.clone(),
        home: log.home,
        events: a.events.len() as u64,
        received: a.received,
        dropped: a.dropped,
        messages: all().filter(|m| !m.events.is_empty()).count() as u64,
        progress: all().filter(|m| m.events.is_empty()).count() as u64,
        streams: log.streams.len() as u64,
        resumes: log.streams.len().saturating_sub(1) as u64,
        ends,
        refused: log.refused.clone(),
        fully_seen: a.fully_seen,
        matches_truth: difference.is_none(),
    }
}

/// Point 3 of the module docs, and the put counts.
fn check_truth(h: &WatchHistory, truth: &[Value], v: &mut WatchVerdict) {
    let by_value: HashMap<&str, &PutRecord> =
        h.puts.iter().map(|p| (p.value.as_str(), p)).collect();
    // value -> the revision the truth shows it at.
    let mut applied: HashMap<&str, u64> = HashMap::new();
    let mut seen: HashSet<(u64, &str)> = HashSet::new();
    let mut last = 0;
    for e in truth {
        let (rev, key) = (revision_of(e), e["key"].as_str().unwrap_or(""));
        if rev < last {
            v.violation(format!("truth: revision {rev} after {last}: {e}"));
        }
        last = last.max(rev);
        if !seen.insert((rev, key)) {
            v.violation(format!("truth: revision {rev} of {key:?} twice: {e}"));
        }
        if e["type"] != "put" {
            v.violation(format!("truth: a {} nobody made: {e}", e["type"]));
            continue;
        }
        let Some(value) = e["value"].as_str() else {
            v.violation(format!("truth: a put of a value no writer writes: {e}"));
            continue;
        };
        let Some(put) = by_value.get(value) else {
            v.violation(format!("truth: a phantom put (never attempted): {e}"));
            continue;
        };
        if put.key != key {
            v.violation(format!(
                "truth: {value:?} at {key:?}, but it was put into {:?}: {e}",
                put.key
            ));
        }
        if put.outcome == PutOutcome::Failed {
            v.violation(format!("truth: a put that failed for certain applied: {e}"));
        }
        if let Some(first) = applied.insert(value, rev) {
            v.violation(format!(
                "truth: {value:?} applied twice, at revisions {first} and {rev}"
            ));
        }
    }
    for p in &h.puts {
        let at = applied.get(p.value.as_str()).copied();
        match p.outcome {
            PutOutcome::Ok => {
                v.puts.ok += 1;
                let retried = p.attempts.as_ref().is_some_and(|a| a.unknown > 0);
                v.puts.retried_after_unknown += u64::from(retried);
                if at.is_none() || at != p.revision {
                    v.violation(format!(
                        "acknowledged put of {:?} into {:?} at revision {:?}: {}",
                        p.value,
                        p.key,
                        p.revision,
                        at.map_or("not in the change log (lost)".to_string(), |r| format!(
                            "the change log has it at revision {r}"
                        ))
                    ));
                }
            }
            PutOutcome::Failed => v.puts.failed += 1,
            PutOutcome::Unknown => {
                v.puts.unknown += 1;
                v.puts.unknown_applied += u64::from(at.is_some());
            }
        }
    }
    v.puts.applied = applied.len() as u64;
}

/// The exactly-once section: the revisions taken between the probes against the puts the
/// truth shows applied, those of unknown outcome it does not show (an attempt still queued
/// at a node may apply after the truth's end), the probes' own unknown attempts and the
/// nemesis's probe writes.
pub fn exactly_once(verdict: &WatchVerdict, before: Probe, after: Probe) -> ExactlyOnce {
    let p = &verdict.puts;
    let outside = before.outside_writes + after.outside_writes;
    let accounted = p.applied
        + (p.unknown - p.unknown_applied)
        + u64::from(before.unknown_attempts)
        + u64::from(after.unknown_attempts)
        + outside;
    let taken = after.revision.saturating_sub(before.revision + 1);
    ExactlyOnce {
        revision_before: before.revision,
        revision_after: after.revision,
        revisions_taken: taken,
        writes_accounted: accounted,
        outside_writes: outside,
        double_applies_bound: taken.saturating_sub(accounted),
        retried_after_unknown: p.retried_after_unknown,
        revision_problems: Vec::new(),
    }
}
