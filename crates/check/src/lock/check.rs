//! The lock workload's checker: judges a [`LockHistory`] (the module docs say what).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{fence_of, LockHistory};
use crate::call::Outcome;
use crate::watch::revision_of;

const MS: u64 = 1_000_000;

#[derive(Debug, Default, Clone, Serialize)]
pub struct LockVerdict {
    pub violations: Vec<String>,
    pub violation_count: usize,
    pub acquires: AcquireCounts,
    pub writes: WriteCounts,
    /// Fences granted (distinct) and holds that lost their lease.
    pub holders: usize,
    pub leases_lost: u64,
    pub change_log_events: usize,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct AcquireCounts {
    pub granted: u64,
    pub lock_wait: u64,
    /// Granted after more than one attempt (a retry with the same request id).
    pub retried_granted: u64,
    /// Attempts answered `timeout` (each retried with the same request id).
    pub timeout_replies: u64,
    /// Ended unknown while every node was down (not judged), or never taken (refused
    /// with `cluster_not_ready`/`busy` throughout).
    pub unknown_in_outage: u64,
    pub not_taken: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct WriteCounts {
    pub ok: u64,
    pub refused_fence: u64,
    pub unknown: u64,
    pub stale: u64,
    pub stale_refused: u64,
}

impl LockVerdict {
    pub fn holds(&self) -> bool {
        self.violation_count == 0
    }
}

pub fn check(h: &LockHistory) -> LockVerdict {
    let mut v = LockVerdict {
        leases_lost: h.leases_lost,
        ..LockVerdict::default()
    };
    let mut out = Vec::new();
    check_acquires(h, &mut v, &mut out);
    check_writes(h, &mut v.writes, &mut out);
    if let Some(log) = &h.change_log {
        v.change_log_events = log.len();
        check_log(h, log, &mut out);
    }
    v.violation_count = out.len();
    out.truncate(50);
    v.violations = out;
    v
}

fn fence_in(reply: &Value) -> Option<u64> {
    reply["fence"].as_u64()
}

fn check_acquires(h: &LockHistory, v: &mut LockVerdict, out: &mut Vec<String>) {
    let c = &mut v.acquires;
    let mut grants: Vec<(u64, u64, u64)> = Vec::new();
    for a in &h.acquires {
        c.timeout_replies += a.tries.codes.iter().filter(|c| *c == "timeout").count() as u64;
        let fences: Vec<u64> = a.tries.oks.iter().filter_map(fence_in).collect();
        if fences.windows(2).any(|w| w[0] != w[1]) {
            out.push(format!(
                "acquire {} (client {}): retries with one request id were granted different fences {fences:?}",
                a.request_id, a.client
            ));
        }
        match &a.outcome {
            Outcome::Ok { reply } => {
                c.granted += 1;
                c.retried_granted += u64::from(a.tries.sent > 1);
                match fence_in(reply) {
                    Some(f) => grants.push((a.invoked, a.completed, f)),
                    None => out.push(format!("acquire {}: a grant without a fence: {reply}", a.request_id)),
                }
            }
            Outcome::Refused { code, reason, .. }
                if code == "conflict" && reason.as_deref() == Some("lock_wait") =>
            {
                c.lock_wait += 1
            }
            Outcome::Refused { code, reason, .. } => out.push(format!(
                "acquire {} (client {}) with wait_ms: refused with {code} ({reason:?}), not the grant or lock_wait",
                a.request_id, a.client
            )),
            Outcome::NotTaken { .. } => c.not_taken += 1,
            Outcome::Unknown { last } => {
                let outage = h.outages.iter().any(|&(f, t)| f <= a.completed && a.invoked <= t);
                if outage {
                    c.unknown_in_outage += 1;
                } else {
                    out.push(format!(
                        "acquire {} (client {}) from {} ms to {} ms: UNKNOWN outcome (last attempt: {last}; attempts {:?}) while a quorum was up",
                        a.request_id, a.client, a.invoked / MS, a.completed / MS, a.tries.codes
                    ));
                }
            }
        }
    }
    grant_order(&mut grants, out);
    let mut distinct: Vec<u64> = grants.iter().map(|g| g.2).collect();
    distinct.sort_unstable();
    distinct.dedup();
    v.holders = distinct.len();
}

/// A grant acknowledged before another acquire was invoked holds a lower fence (a later
/// claim is created later, and fences are creation revisions).
fn grant_order(grants: &mut [(u64, u64, u64)], out: &mut Vec<String>) {
    grants.sort_by_key(|g| g.1);
    let mut by_invoke: Vec<&(u64, u64, u64)> = grants.iter().collect();
    by_invoke.sort_by_key(|g| g.0);
    let (mut i, mut max_before) = (0, None::<u64>);
    for g in by_invoke {
        while i < grants.len() && grants[i].1 < g.0 {
            max_before = max_before.max(Some(grants[i].2));
            i += 1;
        }
        if let Some(m) = max_before.filter(|&m| m >= g.2) {
            out.push(format!(
                "acquire invoked at {} ms granted fence {}, not above fence {m} granted before it was asked for",
                g.0 / MS,
                g.2
            ));
        }
    }
}

fn check_writes(h: &LockHistory, c: &mut WriteCounts, out: &mut Vec<String>) {
    let mut acked: Vec<(u64, u64, &str)> = Vec::new();
    for w in &h.writes {
        let refused_fence = matches!(&w.outcome, Outcome::Refused { code, reason, .. }
            if code == "conflict" && reason.as_deref() == Some("fence"));
        match &w.outcome {
            Outcome::Ok { reply } => {
                c.ok += 1;
                match reply["revision"].as_u64() {
                    Some(rev) => acked.push((rev, w.fence, &w.value)),
                    None => out.push(format!(
                        "write {}: acknowledged without a revision",
                        w.value
                    )),
                }
            }
            Outcome::Unknown { .. } => c.unknown += 1,
            _ if refused_fence => c.refused_fence += 1,
            _ => {}
        }
        if w.stale {
            c.stale += 1;
            c.stale_refused += u64::from(refused_fence);
            if !refused_fence && w.lease_seen_ended && !matches!(w.outcome, Outcome::Unknown { .. })
            {
                out.push(format!(
                    "STALE write {} (fence {}, its lease seen ended) at {} ms: {:?}, not conflict (fence)",
                    w.value, w.fence, w.invoked / MS, w.outcome
                ));
            }
        }
    }
    acked.sort_unstable();
    for pair in acked.windows(2) {
        let ((r1, f1, v1), (r2, f2, v2)) = (pair[0], pair[1]);
        if f2 < f1 {
            out.push(format!(
                "INTERLEAVED: acknowledged {v2} (fence {f2}) at revision {r2} after {v1} (fence {f1}) at revision {r1}"
            ));
        }
    }
    for (rev, fence, v) in &acked {
        if rev <= fence {
            out.push(format!(
                "write {v} at revision {rev}, not above its fence {fence}"
            ));
        }
    }
}

/// The change log of the guarded key: fences never go down, each write lands above its
/// fence, every acknowledged write is there at its revision, and no stale write is.
fn check_log(h: &LockHistory, log: &[Value], out: &mut Vec<String>) {
    let mut last: Option<(u64, u64, String)> = None;
    let mut at: BTreeMap<u64, String> = BTreeMap::new();
    for e in log.iter().filter(|e| e["type"] == "put") {
        let rev = revision_of(e);
        let value = e["value"].as_str().unwrap_or_default().to_string();
        at.insert(rev, value.clone());
        let Some(fence) = fence_of(&value) else {
            out.push(format!("change log: a value no client wrote: {e}"));
            continue;
        };
        if rev <= fence {
            out.push(format!(
                "change log: {value} at revision {rev}, not above its fence"
            ));
        }
        if let Some((r0, f0, v0)) = &last {
            if fence < *f0 {
                out.push(format!(
                    "INTERLEAVED in the change log: {value} (fence {fence}) at revision {rev} after {v0} (fence {f0}) at revision {r0}"
                ));
            }
        }
        last = Some((rev, fence, value));
    }
    for w in &h.writes {
        if let Outcome::Ok { reply } = &w.outcome {
            let rev = reply["revision"].as_u64().unwrap_or(0);
            if at.get(&rev) != Some(&w.value) {
                out.push(format!(
                    "acknowledged write {} at revision {rev} is not in the change log there ({:?})",
                    w.value,
                    at.get(&rev)
                ));
            }
        }
        if w.stale && at.values().any(|v| *v == w.value) {
            out.push(format!(
                "STALE write {} (fence {}) applied: it is in the change log",
                w.value, w.fence
            ));
        }
    }
}
