//! Failover timing as a client sees it: for each fault, the longest stretch without a
//! successful write around it and the longest one client waited for one write (over all its
//! attempts, when it retries), read from the recorded history, and per nemesis the median and
//! the worst over the faults that hit the leader. Pure functions over the history and the
//! fault records: no IO, no clock.

use serde::Serialize;

use crate::history::{Event, EventType, Func};
use crate::nemesis::{Fault, FaultRecord};

/// Failover figures of one nemesis, over the faults that hit the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapSummary {
    pub fault: Fault,
    /// Faults of this kind that hit the leader.
    pub leader_faults: usize,
    /// Of those, how many have a write gap (an acknowledged write before and after).
    pub measured: usize,
    pub write_gap_p50_ms: Option<u64>,
    pub write_gap_max_ms: Option<u64>,
    /// The longest wait of one client for one write, median and worst over the faults.
    pub write_wait_p50_ms: Option<u64>,
    pub write_wait_max_ms: Option<u64>,
    /// Faults where another node reported itself leader while the fault was held.
    pub new_leader_seen: usize,
    pub new_leader_p50_ms: Option<u64>,
    pub new_leader_max_ms: Option<u64>,
}

/// Acknowledgement times (ns since the workload started) of writes and deletes, sorted.
pub fn write_acks(history: &[Event]) -> Vec<u64> {
    let mut acks: Vec<u64> = history
        .iter()
        .filter(|e| e.kind == EventType::Ok && e.f != Func::Read)
        .map(|e| e.time)
        .collect();
    acks.sort_unstable();
    acks
}

/// The longest stretch without an acknowledgement around a fault, in ms: the largest distance
/// between consecutive acknowledgements from the last one at or before `from_ns` (the fault)
/// to the first one at or after `to_ns` (when writes were served again). The largest, not
/// the one straddling the fault: acknowledgements already in flight can still arrive in the
/// first milliseconds after it. `None` when there is none on one side.
pub fn gap_around(acks: &[u64], from_ns: u64, to_ns: u64) -> Option<u64> {
    let first = acks.partition_point(|&t| t <= from_ns).checked_sub(1)?;
    let last = acks.partition_point(|&t| t < to_ns.max(from_ns));
    if last >= acks.len() {
        return None;
    }
    acks[first..=last]
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .max()
}

/// `(invoke, completion)` times of the writes and deletes that were acknowledged or given up
/// with an unknown outcome (a refused one did not wait for the cluster), sorted by invoke.
pub fn write_waits(history: &[Event]) -> Vec<(u64, u64)> {
    let mut invoked: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut waits = Vec::new();
    for e in history.iter().filter(|e| e.f != Func::Read) {
        match e.kind {
            EventType::Invoke => {
                invoked.insert(e.process, e.time);
            }
            EventType::Ok | EventType::Info => {
                if let Some(t) = invoked.remove(&e.process) {
                    waits.push((t, e.time));
                }
            }
            EventType::Fail => {
                invoked.remove(&e.process);
            }
        }
    }
    waits.sort_unstable();
    waits
}

/// The longest wait in ms among the writes in flight at some point from `from_ns` to
/// `to_ns` (invoked by `to_ns`, completed at or after `from_ns`); `None` if there were none.
pub fn wait_around(waits: &[(u64, u64)], from_ns: u64, to_ns: u64) -> Option<u64> {
    let invoked_by = waits.partition_point(|&(call, _)| call <= to_ns.max(from_ns));
    waits[..invoked_by]
        .iter()
        .filter(|&&(_, done)| done >= from_ns)
        .map(|&(call, done)| (done - call) / 1_000_000)
        .max()
}

/// The median (the lower one of an even count) and the maximum.
fn p50_max(mut v: Vec<u64>) -> (Option<u64>, Option<u64>) {
    v.sort_unstable();
    let p50 = v.get(v.len().saturating_sub(1) / 2).copied();
    (p50, v.last().copied())
}

/// One summary per nemesis that appears in `faults`, in order of first appearance.
pub fn summarize(faults: &[FaultRecord]) -> Vec<GapSummary> {
    let mut kinds: Vec<Fault> = Vec::new();
    for f in faults {
        if !kinds.contains(&f.fault) {
            kinds.push(f.fault);
        }
    }
    kinds
        .into_iter()
        .map(|kind| {
            let hits: Vec<&FaultRecord> = faults
                .iter()
                .filter(|f| f.fault == kind && f.was_leader)
                .collect();
            let gaps: Vec<u64> = hits.iter().filter_map(|f| f.write_gap_ms).collect();
            let waits: Vec<u64> = hits.iter().filter_map(|f| f.write_wait_ms).collect();
            let leaders: Vec<u64> = hits.iter().filter_map(|f| f.new_leader_ms).collect();
            let (measured, seen) = (gaps.len(), leaders.len());
            let (write_gap_p50_ms, write_gap_max_ms) = p50_max(gaps);
            let (write_wait_p50_ms, write_wait_max_ms) = p50_max(waits);
            let (new_leader_p50_ms, new_leader_max_ms) = p50_max(leaders);
            GapSummary {
                fault: kind,
                leader_faults: hits.len(),
                measured,
                write_gap_p50_ms,
                write_gap_max_ms,
                write_wait_p50_ms,
                write_wait_max_ms,
                new_leader_seen: seen,
                new_leader_p50_ms,
                new_leader_max_ms,
            }
        })
        .collect()
}

/// The summaries as report lines.
pub fn report_lines(summaries: &[GapSummary]) -> Vec<String> {
    let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    summaries
        .iter()
        .map(|s| {
            format!(
                "{:?} on the leader x{}: write gap p50 {} max {} ({} measured); longest wait for one write p50 {} max {}; new leader p50 {} max {} ({} seen)",
                s.fault,
                s.leader_faults,
                ms(s.write_gap_p50_ms),
                ms(s.write_gap_max_ms),
                s.measured,
                ms(s.write_wait_p50_ms),
                ms(s.write_wait_max_ms),
                ms(s.new_leader_p50_ms),
                ms(s.new_leader_max_ms),
                s.new_leader_seen
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ack(f: Func, kind: EventType, time_ms: u64) -> Event {
        Event {
            process: 1,
            kind,
            f,
            key: "k".into(),
            value: Value::Null,
            time: time_ms * 1_000_000,
            attempts: None,
            if_revision: None,
        }
    }

    fn record(
        fault: Fault,
        was_leader: bool,
        gap: Option<u64>,
        leader: Option<u64>,
    ) -> FaultRecord {
        FaultRecord {
            fault,
            node: Some(1),
            was_leader,
            at_ms: 0,
            held_ms: 0,
            recovery_ms: Some(1),
            new_leader_ms: leader,
            write_gap_ms: gap,
            write_wait_ms: gap.map(|g| g / 2),
            probe_writes: 3,
            injected: None,
            writable: None,
        }
    }

    #[test]
    fn the_gap_spans_the_fault_and_ignores_reads_and_failures() {
        let h = vec![
            ack(Func::Write, EventType::Ok, 100),
            ack(Func::Delete, EventType::Ok, 200),
            ack(Func::Read, EventType::Ok, 900),
            ack(Func::Write, EventType::Fail, 1000),
            ack(Func::Write, EventType::Info, 1100),
            ack(Func::Write, EventType::Ok, 1500),
        ];
        const MS: u64 = 1_000_000;
        let acks = write_acks(&h);
        assert_eq!(gap_around(&acks, 300 * MS, 1000 * MS), Some(1300));
        // An acknowledgement exactly at the fault counts as before it.
        assert_eq!(gap_around(&acks, 200 * MS, 1000 * MS), Some(1300));
        assert_eq!(gap_around(&acks, 50 * MS, 1000 * MS), None);
        assert_eq!(gap_around(&acks, 1600 * MS, 1700 * MS), None);
        // Late acknowledgements just after the fault do not hide the gap that follows.
        let late = write_acks(&[
            ack(Func::Write, EventType::Ok, 100),
            ack(Func::Write, EventType::Ok, 301),
            ack(Func::Write, EventType::Ok, 302),
            ack(Func::Write, EventType::Ok, 2302),
            ack(Func::Write, EventType::Ok, 2310),
            ack(Func::Write, EventType::Ok, 9000),
        ]);
        assert_eq!(gap_around(&late, 300 * MS, 2305 * MS), Some(2000));
    }

    #[test]
    fn the_wait_is_the_longest_write_in_flight_during_the_fault() {
        const MS: u64 = 1_000_000;
        let op = |p: u64, f: Func, kind: EventType, t: u64| Event {
            process: p,
            ..ack(f, kind, t)
        };
        let h = vec![
            // Acknowledged before the fault at 1000: not in flight during it.
            op(1, Func::Write, EventType::Invoke, 0),
            op(1, Func::Write, EventType::Ok, 900),
            // In flight across the fault, acknowledged after 2100 ms of retries.
            op(2, Func::Write, EventType::Invoke, 950),
            op(2, Func::Write, EventType::Ok, 3050),
            // A read waits longer, but only writes count.
            op(3, Func::Read, EventType::Invoke, 950),
            op(3, Func::Read, EventType::Ok, 5000),
            // Refused: it did not wait for the cluster.
            op(4, Func::Delete, EventType::Invoke, 1000),
            op(4, Func::Delete, EventType::Fail, 4500),
            // Given up with an unknown outcome: it waited its whole deadline.
            op(5, Func::Delete, EventType::Invoke, 1500),
            op(5, Func::Delete, EventType::Info, 3900),
            // Invoked after writes were served again.
            op(6, Func::Write, EventType::Invoke, 2500),
            op(6, Func::Write, EventType::Ok, 9000),
        ];
        let waits = write_waits(&h);
        assert_eq!(waits.len(), 4);
        assert_eq!(wait_around(&waits, 1000 * MS, 2000 * MS), Some(2400));
        assert_eq!(wait_around(&waits, 3000 * MS, 3100 * MS), Some(6500));
        assert_eq!(wait_around(&waits, 9500 * MS, 9600 * MS), None);
    }

    #[test]
    fn summaries_cover_only_leader_faults() {
        let faults = vec![
            record(Fault::Kill, true, Some(300), Some(200)),
            record(Fault::Kill, false, Some(9000), None),
            record(Fault::Kill, true, Some(100), Some(50)),
            record(Fault::Kill, true, Some(200), None),
            record(Fault::Pause, true, None, None),
        ];
        let s = summarize(&faults);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].fault, Fault::Kill);
        assert_eq!((s[0].leader_faults, s[0].measured), (3, 3));
        assert_eq!(
            (s[0].write_gap_p50_ms, s[0].write_gap_max_ms),
            (Some(200), Some(300))
        );
        assert_eq!(
            (s[0].write_wait_p50_ms, s[0].write_wait_max_ms),
            (Some(100), Some(150))
        );
        assert_eq!(s[0].new_leader_seen, 2);
        assert_eq!(
            (s[0].new_leader_p50_ms, s[0].new_leader_max_ms),
            (Some(50), Some(200))
        );
        assert_eq!((s[1].measured, s[1].write_gap_max_ms), (0, None));
    }
}
