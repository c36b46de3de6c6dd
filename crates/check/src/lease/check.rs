//! The lease workload's checker: judges a [`LeaseHistory`] against the two lease guarantees
//! and revoke (the module docs say what each means).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Abandoned, LeaseHistory, Revoke, LATE_SLACK_MS, PREFIX};
use crate::call::Outcome;
use crate::watch::revision_of;

const MS: u64 = 1_000_000;

/// Counts and violations, for the verdict.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LeaseVerdict {
    pub violations: Vec<String>,
    pub violation_count: usize,
    pub kept: KeptSummary,
    pub abandoned: AbandonedSummary,
    pub revokes: RevokeSummary,
    pub change_log_events: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct KeptSummary {
    pub keepalives: usize,
    pub acknowledged: usize,
    pub not_found: usize,
    /// The longest stretch between two acknowledged keepalives' sends.
    pub longest_gap_ms: u64,
    pub alive_at_end: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct AbandonedSummary {
    pub granted: usize,
    pub skipped: u64,
    /// Seen to end; of those, judged late-bounded (no outage in the window).
    pub ended: usize,
    pub judged_late: usize,
    /// Judged while the leader-kill nemesis ran (the etcd #9888 scenario).
    pub judged_under_leader_kill: usize,
    pub excused_by_outage: usize,
    /// From the last acknowledged renewal's send time + ttl to the first `not_found`
    /// received: how late the ends were seen (p50, max).
    pub seen_late_p50_ms: Option<u64>,
    pub seen_late_max_ms: Option<u64>,
    pub bound_ms: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RevokeSummary {
    pub revoked: usize,
    pub keys_deleted: u64,
    pub unknown: usize,
}

impl LeaseVerdict {
    pub fn holds(&self) -> bool {
        self.violation_count == 0
    }
}

/// Whether `[from, to]` (ns) meets any of `windows`.
fn overlaps(windows: &[(u64, u64)], from: u64, to: u64) -> bool {
    windows.iter().any(|&(a, b)| a <= to && from <= b)
}

pub fn check(h: &LeaseHistory) -> LeaseVerdict {
    let mut v = LeaseVerdict::default();
    let mut out = Vec::new();
    check_kept(h, &mut v.kept, &mut out);
    check_abandoned(h, &mut v.abandoned, &mut out);
    check_revokes(h, &mut v.revokes, &mut out);
    if let Some(log) = &h.change_log {
        v.change_log_events = log.len();
        check_change_log(h, log, &mut out);
    }
    v.violation_count = out.len();
    out.truncate(50);
    v.violations = out;
    v
}

fn check_kept(h: &LeaseHistory, s: &mut KeptSummary, out: &mut Vec<String>) {
    let k = &h.kept;
    if k.id == 0 {
        out.push("kept lease: never granted with its key".into());
        return;
    }
    s.keepalives = k.keepalives.len();
    let mut last_ack: Option<u64> = None;
    for ka in &k.keepalives {
        match &ka.outcome {
            Outcome::Ok { .. } => {
                s.acknowledged += 1;
                if let Some(prev) = last_ack {
                    s.longest_gap_ms = s.longest_gap_ms.max((ka.sent - prev.min(ka.sent)) / MS);
                }
                last_ack = Some(ka.sent);
            }
            Outcome::Refused { code, .. } if code == "not_found" => {
                s.not_found += 1;
                out.push(format!(
                    "kept lease {}: keepalive sent at {} ms answered not_found: the lease ended while kept alive",
                    k.id,
                    ka.sent / MS
                ));
            }
            _ => {}
        }
    }
    if s.acknowledged == 0 {
        out.push(format!("kept lease {}: no keepalive acknowledged", k.id));
    }
    match &k.final_get {
        Some(Outcome::Ok { reply }) if reply["id"].as_u64() == Some(k.id) => s.alive_at_end = true,
        other => out.push(format!(
            "kept lease {}: lease.get after the faults answered {other:?}, not the lease",
            k.id
        )),
    }
    match &k.final_key {
        Some(Outcome::Ok { reply }) if reply["lease"].as_u64() == Some(k.id) => {}
        other => out.push(format!(
            "kept lease {}: its key {} after the faults: {other:?}, not attached to it",
            k.id, k.key
        )),
    }
}

/// The late bound of `a` (ns after its base) and the base: the last acknowledged renewal,
/// or a later renewal attempt of unknown outcome.
fn late_bound(h: &LeaseHistory, a: &Abandoned) -> (u64, u64) {
    let bound_ms = a.ttl_ms + 2 * h.election_timeout_max_ms + LATE_SLACK_MS;
    let base = a.renewed_acked.max(a.unknown_renewal.unwrap_or(0));
    (base, base + bound_ms * MS)
}

fn check_abandoned(h: &LeaseHistory, s: &mut AbandonedSummary, out: &mut Vec<String>) {
    s.granted = h.abandoned.len();
    s.skipped = h.abandoned_skipped;
    let mut lateness = Vec::new();
    for a in &h.abandoned {
        let ttl = a.ttl_ms * MS;
        let earliest = a.renewed_sent + ttl;
        let (base, latest) = late_bound(h, a);
        s.bound_ms = (latest - base) / MS;
        if let Some((sent, received)) = a.ended {
            s.ended += 1;
            lateness.push(received.saturating_sub(earliest) / MS);
            if received < earliest {
                out.push(format!(
                    "abandoned lease {}: ended EARLY: not_found received at {} ms, {} ms before its last acknowledged renewal's send ({} ms) + ttl {} ms",
                    a.id, received / MS, (earliest - received) / MS, a.renewed_sent / MS, a.ttl_ms
                ));
            }
            if let Some(Outcome::Ok { reply }) = &a.key_after_end {
                if reply["lease"].as_u64() == Some(a.id) {
                    out.push(format!(
                        "abandoned lease {}: ended (not_found sent at {} ms) but its key {} is still attached to it",
                        a.id, sent / MS, a.key
                    ));
                }
            }
        }
        if overlaps(&h.outages, a.renewed_sent, latest) {
            s.excused_by_outage += 1;
            continue;
        }
        let seen_alive_late = a.last_found_sent.filter(|&t| t > latest);
        if let Some(t) = seen_alive_late {
            out.push(format!(
                "abandoned lease {}: ended LATE: found by a poll sent at {} ms, {} ms past its bound ({} ms = ack {} ms + ttl {} ms + 2 x {} ms + {} ms)",
                a.id, t / MS, (t - latest) / MS, latest / MS, base / MS, a.ttl_ms, h.election_timeout_max_ms, LATE_SLACK_MS
            ));
        } else if a.ended.is_none() {
            out.push(format!(
                "abandoned lease {}: never seen to end (last found by a poll sent at {:?} ms; {} polls unanswered; bound {} ms)",
                a.id, a.last_found_sent.map(|t| t / MS), a.polls_unanswered, latest / MS
            ));
        }
        s.judged_late += 1;
        if overlaps(&h.leader_kill, a.renewed_sent, latest) {
            s.judged_under_leader_kill += 1;
        }
    }
    lateness.sort_unstable();
    s.seen_late_p50_ms = lateness.get(lateness.len() / 2).copied();
    s.seen_late_max_ms = lateness.last().copied();
}

fn check_revokes(h: &LeaseHistory, s: &mut RevokeSummary, out: &mut Vec<String>) {
    for r in &h.revokes {
        match &r.outcome {
            Some(Outcome::Ok { reply }) => {
                s.revoked += 1;
                let count = reply["count"].as_u64().unwrap_or(u64::MAX);
                s.keys_deleted += count.min(1 << 20);
                let (lo, hi) = (
                    r.keys.len() as u64,
                    (r.keys.len() + r.keys_unknown.len()) as u64,
                );
                if count < lo || count > hi {
                    out.push(format!(
                        "revoke of lease {}: count {count}, but {lo} keys were attached ({} more of unknown outcome)",
                        r.id, hi - lo
                    ));
                }
                if reply["revision"].as_u64().is_none() {
                    out.push(format!(
                        "revoke of lease {}: reply without a revision: {reply}",
                        r.id
                    ));
                }
                if !r.present_after.is_empty() {
                    out.push(format!(
                        "revoke of lease {}: keys still present after it was acknowledged: {:?}",
                        r.id, r.present_after
                    ));
                }
            }
            Some(Outcome::Refused { code, .. }) => out.push(format!(
                "revoke of live lease {}: refused with {code}",
                r.id
            )),
            _ => s.unknown += 1,
        }
    }
}

/// The change log: every acknowledged revoke's keys are deleted (`delete` events) at its
/// revision and nothing else happens there; no abandoned key ends otherwise than by
/// `expire`; the kept key never ends.
fn check_change_log(h: &LeaseHistory, log: &[Value], out: &mut Vec<String>) {
    let mut by_revision: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for e in log {
        by_revision.entry(revision_of(e)).or_default().push(e);
    }
    for r in &h.revokes {
        let Some(Outcome::Ok { reply }) = &r.outcome else {
            continue;
        };
        revoke_in_log(r, reply, &by_revision, out);
    }
    let abandoned: BTreeMap<&str, u64> =
        h.abandoned.iter().map(|a| (a.key.as_str(), a.id)).collect();
    for e in log {
        let (key, kind) = (
            e["key"].as_str().unwrap_or(""),
            e["type"].as_str().unwrap_or(""),
        );
        if key == h.kept.key && kind != "put" {
            out.push(format!("kept lease: its key ended in the change log: {e}"));
        }
        if abandoned.contains_key(key) && kind == "delete" {
            out.push(format!("abandoned lease key deleted, not expired: {e}"));
        }
        if !key.starts_with(PREFIX) {
            out.push(format!("change log of {PREFIX}: event of another key: {e}"));
        }
    }
}

fn revoke_in_log(
    r: &Revoke,
    reply: &Value,
    by_revision: &BTreeMap<u64, Vec<&Value>>,
    out: &mut Vec<String>,
) {
    let rev = reply["revision"].as_u64().unwrap_or(0);
    let count = reply["count"].as_u64().unwrap_or(0);
    let at: Vec<&Value> = by_revision.get(&rev).cloned().unwrap_or_default();
    let deleted: Vec<&str> = at
        .iter()
        .filter(|e| e["type"] == "delete")
        .filter_map(|e| e["key"].as_str())
        .collect();
    if deleted.len() as u64 != count || at.len() != deleted.len() {
        out.push(format!(
            "revoke of lease {} at revision {rev} (count {count}): the change log there holds {} events, {} deletes: {at:?}",
            r.id, at.len(), deleted.len()
        ));
    }
    for key in &r.keys {
        if !deleted.contains(&key.as_str()) {
            let elsewhere: Vec<u64> = by_revision
                .iter()
                .filter(|(_, es)| {
                    es.iter()
                        .any(|e| e["key"] == key.as_str() && e["type"] != "put")
                })
                .map(|(rev, _)| *rev)
                .collect();
            out.push(format!(
                "revoke of lease {} at revision {rev}: key {key} not deleted there (its ends in the log: {elsewhere:?})",
                r.id
            ));
        }
    }
}
