//! The bank checker: pure functions over the history, no IO.
//!
//! 1. **The invariant.** Every read of all accounts returns every account, none negative,
//!    totalling N × the initial balance.
//! 2. **Each transfer applied at most once, each acknowledged one exactly once.** A state a
//!    read returns names the transfer that wrote it (`by`), so the transfers that applied are
//!    known exactly: the acknowledged ones and those of unknown outcome some read saw. (One
//!    that applied is always seen: the next transfer to write the account read it, since its
//!    compare held on that state's revision, or else the final read returns it.) Every
//!    applied transfer has one revision, distinct transfers never share one, and per account
//!    the applied transfers in revision order form a chain from the creation: each one
//!    compared (read) exactly the state its predecessor wrote, and wrote the next balance,
//!    with the key's `version` one higher. Every state any read returned must be a link of
//!    that chain, the final read must return the last link (the final state is the initial
//!    state plus the applied transfers), and each acknowledged transfer must have been seen
//!    on both its accounts (else it is lost). A transfer that answered "compare failed" or
//!    was refused must never be seen. A transfer applied twice would show as two revisions,
//!    a version too many, or a chain that does not close.
//! 3. **Reads are not stale.** Per process, the store revisions its operations returned
//!    never go back; and a read that began after a transfer was acknowledged sees that
//!    transfer's accounts at its revision or later.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{Account, BankEvent, BankFunc, Transfer};
use crate::exactly_once::{ExactlyOnce, Probe};
use crate::history::EventType;

/// At most this many violations are listed (all are counted).
const MAX_LISTED: usize = 50;

/// What the checker needs to know about the setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setup {
    /// The account keys.
    pub accounts: Vec<String>,
    pub initial_balance: i64,
    /// The revision of the transaction that created every account.
    pub created_revision: u64,
}

/// Transfers by outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct TransferCounts {
    /// Acknowledged as applied (`succeeded: true`).
    pub ok: u64,
    /// Answered `succeeded: false`: a compare did not hold, nothing written.
    pub failed_compare: u64,
    /// Refused on every attempt (never applied).
    pub refused: u64,
    /// Of unknown outcome (or never completed).
    pub unknown: u64,
    /// Of those, seen applied by some read.
    pub unknown_applied: u64,
    /// Applied in all: `ok` + `unknown_applied`.
    pub applied: u64,
    /// Acknowledged after an attempt of unknown outcome (a server without request ids
    /// could have applied those twice).
    pub retried_after_unknown: u64,
}

/// Reads of all accounts by outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReadCounts {
    pub ok: u64,
    pub fail: u64,
    pub unknown: u64,
}

/// The bank section of the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BankVerdict {
    pub setup: Setup,
    /// N × the initial balance.
    pub total: i64,
    pub transfers: TransferCounts,
    pub reads: ReadCounts,
    /// The final read's accounts (`None`: there was no final read).
    pub final_accounts: Option<Vec<Account>>,
    /// Every violation found (at most [`MAX_LISTED`] listed).
    pub violation_count: usize,
    pub violations: Vec<String>,
}

impl BankVerdict {
    pub fn holds(&self) -> bool {
        self.violation_count == 0
    }
}

/// What became of one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Applied(u64),
    FailedCompare,
    Refused,
    Unknown,
}

struct Violations(Vec<String>, usize);

impl Violations {
    fn push(&mut self, v: String) {
        self.1 += 1;
        if self.0.len() < MAX_LISTED {
            self.0.push(v);
        }
    }
}

/// Checks `history` (the final read included, if any) against `setup`; `finals` is the
/// final read's accounts.
pub fn check(setup: &Setup, history: &[BankEvent], finals: Option<&[Account]>) -> BankVerdict {
    let mut v = Violations(Vec::new(), 0);
    let total = setup.initial_balance * setup.accounts.len() as i64;
    let (transfers, fates) = fates(history, &mut v);
    let reads = check_reads(setup, total, history, &mut v);
    check_monotonic(history, &mut v);
    let observed = observations(history, finals);
    let applied = applied_revisions(&transfers, &fates, &observed, setup, &mut v);
    let states = chains(setup, &transfers, &applied, &mut v);
    check_observations(setup, &observed, &states, &mut v);
    check_not_stale(history, &transfers, &fates, &mut v);
    if let Some(finals) = finals {
        check_finals(
            setup, finals, &transfers, &fates, &states, &observed, &mut v,
        );
    }
    let mut counts = TransferCounts::default();
    for (id, fate) in &fates {
        match fate {
            Fate::Applied(_) => counts.ok += 1,
            Fate::FailedCompare => counts.failed_compare += 1,
            Fate::Refused => counts.refused += 1,
            Fate::Unknown => {
                counts.unknown += 1;
                counts.unknown_applied += u64::from(applied.contains_key(id));
            }
        }
    }
    counts.applied = applied.len() as u64;
    counts.retried_after_unknown = history
        .iter()
        .filter(|e| e.f == BankFunc::Transfer && e.kind == EventType::Ok)
        .filter(|e| e.attempts.as_ref().is_some_and(|a| a.unknown > 0))
        .count() as u64;
    BankVerdict {
        setup: setup.clone(),
        total,
        transfers: counts,
        reads,
        final_accounts: finals.map(<[Account]>::to_vec),
        violation_count: v.1,
        violations: v.0,
    }
}

/// Every transfer invoked (by id) and its fate.
fn fates<'a>(
    history: &'a [BankEvent],
    v: &mut Violations,
) -> (HashMap<u64, &'a Transfer>, BTreeMap<u64, Fate>) {
    let mut transfers = HashMap::new();
    let mut fates = BTreeMap::new();
    for e in history.iter().filter(|e| e.f == BankFunc::Transfer) {
        let Some(t) = &e.transfer else {
            v.push(format!(
                "a transfer event of p{} names no transfer",
                e.process
            ));
            continue;
        };
        let fate = match (e.kind, e.succeeded, e.revision) {
            (EventType::Invoke, ..) => {
                if transfers.insert(t.id, t).is_some() {
                    v.push(format!("transfer {} invoked twice", t.id));
                }
                Fate::Unknown
            }
            (EventType::Ok, Some(true), Some(r)) => Fate::Applied(r),
            (EventType::Ok, Some(false), _) => Fate::FailedCompare,
            (EventType::Fail, ..) => Fate::Refused,
            (EventType::Info, ..) => Fate::Unknown,
            (EventType::Ok, ..) => {
                v.push(format!(
                    "transfer {} acknowledged without succeeded and revision",
                    t.id
                ));
                Fate::Unknown
            }
        };
        fates.insert(t.id, fate);
    }
    (transfers, fates)
}

/// The invariant on every read, and its counts.
fn check_reads(setup: &Setup, total: i64, history: &[BankEvent], v: &mut Violations) -> ReadCounts {
    let mut c = ReadCounts::default();
    for e in history.iter().filter(|e| e.f == BankFunc::Read) {
        match e.kind {
            EventType::Invoke => continue,
            EventType::Fail => c.fail += 1,
            EventType::Info => c.unknown += 1,
            EventType::Ok => c.ok += 1,
        }
        if e.kind != EventType::Ok {
            continue;
        }
        if let Some(m) = &e.malformed {
            v.push(format!("read by p{} @{}: {m}", e.process, ms(e.time)));
            continue;
        }
        let accounts = e.accounts.as_deref().unwrap_or_default();
        let keys: Vec<&str> = accounts.iter().map(|a| a.key.as_str()).collect();
        let sum: i64 = accounts.iter().map(|a| a.balance).sum();
        let negative = accounts.iter().any(|a| a.balance < 0);
        if keys
            != setup
                .accounts
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
            || sum != total
            || negative
        {
            v.push(format!(
                "read by p{} @{} at store revision {:?}: total {sum}, not {total}: {}",
                e.process,
                ms(e.time),
                e.revision,
                describe(accounts)
            ));
        }
        for a in accounts {
            if e.revision.is_some_and(|r| a.revision > r) {
                v.push(format!(
                    "read by p{} @{}: {} at revision {}, above the read's store revision {:?}",
                    e.process,
                    ms(e.time),
                    a.key,
                    a.revision,
                    e.revision
                ));
            }
        }
    }
    c
}

/// Per process, the store revisions of its operations, in order, never go back: a
/// transfer's read, a transfer's reply, a read's reply.
fn check_monotonic(history: &[BankEvent], v: &mut Violations) {
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    for e in history {
        let seen = match (e.kind, &e.transfer) {
            (EventType::Invoke, Some(t)) => Some(t.read_revision),
            (EventType::Ok, _) => e.revision,
            _ => None,
        };
        let Some(rev) = seen else { continue };
        if let Some(&(prev, at)) = last.get(&e.process) {
            if rev < prev {
                v.push(format!(
                    "p{} saw store revision {rev} @{} after {prev} @{}: not monotonic",
                    e.process,
                    ms(e.time),
                    ms(at)
                ));
            }
        }
        last.insert(
            e.process,
            (rev.max(last.get(&e.process).map_or(0, |l| l.0)), e.time),
        );
    }
}

/// Every account state some operation saw, with who saw it.
fn observations<'a>(
    history: &'a [BankEvent],
    finals: Option<&'a [Account]>,
) -> Vec<(&'a Account, String)> {
    let mut out = Vec::new();
    for e in history {
        match (e.kind, e.f) {
            (EventType::Invoke, BankFunc::Transfer) => {
                if let Some(t) = &e.transfer {
                    let who = format!("transfer {}'s read (p{} @{})", t.id, e.process, ms(e.time));
                    out.push((&t.from, who.clone()));
                    out.push((&t.to, who));
                }
            }
            (EventType::Ok, BankFunc::Read) => {
                for a in e.accounts.iter().flatten() {
                    out.push((a, format!("read by p{} @{}", e.process, ms(e.time))));
                }
            }
            _ => {}
        }
    }
    for a in finals.into_iter().flatten() {
        out.push((a, "the final read".to_string()));
    }
    out
}

/// The transfers that applied and their revisions: the acknowledged ones and those of
/// unknown outcome some operation saw. Names a transfer seen although it answered that it
/// did not apply, one seen at two revisions, and two sharing a revision.
fn applied_revisions(
    transfers: &HashMap<u64, &Transfer>,
    fates: &BTreeMap<u64, Fate>,
    observed: &[(&Account, String)],
    setup: &Setup,
    v: &mut Violations,
) -> BTreeMap<u64, u64> {
    let mut applied: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, fate) in fates {
        if let Fate::Applied(r) = fate {
            applied.insert(*id, *r);
        }
    }
    for (a, who) in observed.iter().filter(|(a, _)| a.by != 0) {
        let Some(t) = transfers.get(&a.by) else {
            v.push(format!(
                "{who} saw {} written by transfer {}, which nobody invoked",
                a.key, a.by
            ));
            continue;
        };
        if t.seen(&a.key).is_none() {
            v.push(format!(
                "{who} saw {} written by transfer {}, which moves money between {} and {}",
                a.key, t.id, t.from.key, t.to.key
            ));
            continue;
        }
        match fates.get(&t.id) {
            Some(Fate::FailedCompare) | Some(Fate::Refused) => {
                v.push(format!("{who} saw {} written by transfer {} at revision {}, which answered that it did not apply ({:?})", a.key, t.id, a.revision, fates[&t.id]));
                continue;
            }
            _ => {}
        }
        match applied.get(&t.id) {
            Some(&r) if r != a.revision => v.push(format!(
                "transfer {} applied at revision {r}, yet {who} saw its write of {} at revision {}: applied twice",
                t.id, a.key, a.revision
            )),
            Some(_) => {}
            None => {
                applied.insert(t.id, a.revision);
            }
        }
    }
    let mut by_revision: HashMap<u64, u64> = HashMap::new();
    for (&id, &r) in &applied {
        if r <= setup.created_revision {
            v.push(format!(
                "transfer {id} applied at revision {r}, not after the accounts' creation at {}",
                setup.created_revision
            ));
        }
        if let Some(other) = by_revision.insert(r, id) {
            v.push(format!(
                "transfers {other} and {id} both applied at revision {r}"
            ));
        }
    }
    applied
}

/// One state of an account: the transfer that wrote it (0: the creation), its balance,
/// revision and version.
type State = (u64, i64, u64, u64);

/// Every state of every account by (key, writer), and each account's last state.
struct Chains {
    states: HashMap<(String, u64), State>,
    last: HashMap<String, State>,
}

/// Per account, the chain of applied transfers in revision order from the creation: each
/// must have read exactly the state its predecessor wrote.
fn chains(
    setup: &Setup,
    transfers: &HashMap<u64, &Transfer>,
    applied: &BTreeMap<u64, u64>,
    v: &mut Violations,
) -> Chains {
    let mut states = HashMap::new();
    let mut last = HashMap::new();
    for key in &setup.accounts {
        let mut on_key: Vec<(u64, &Transfer)> = applied
            .iter()
            .filter_map(|(id, &r)| transfers.get(id).map(|t| (r, *t)))
            .filter(|(_, t)| t.seen(key).is_some())
            .collect();
        on_key.sort_by_key(|&(r, _)| r);
        let mut state: State = (0, setup.initial_balance, setup.created_revision, 1);
        states.insert((key.clone(), 0), state);
        for (r, t) in on_key {
            let (by, balance, revision, version) = state;
            let Some(seen) = t.seen(key) else { continue };
            if (seen.by, seen.balance, seen.revision) != (by, balance, revision) {
                v.push(format!(
                    "transfer {} applied at revision {r} though its compare on {key} expected revision {} (balance {}, by {}), and {key} was at revision {revision} (balance {balance}, by {by})",
                    t.id, seen.revision, seen.balance, seen.by
                ));
            }
            let new_balance = t.new_balance(key).unwrap_or(balance);
            state = (t.id, new_balance, r, version + 1);
            states.insert((key.clone(), t.id), state);
        }
        last.insert(key.clone(), state);
    }
    Chains { states, last }
}

/// Every state an operation saw is a link of its account's chain, exactly.
fn check_observations(
    setup: &Setup,
    observed: &[(&Account, String)],
    chains: &Chains,
    v: &mut Violations,
) {
    for (a, who) in observed {
        if !setup.accounts.contains(&a.key) {
            v.push(format!("{who} saw {}, which is not an account", a.key));
            continue;
        }
        let Some(&(by, balance, revision, version)) = chains.states.get(&(a.key.clone(), a.by))
        else {
            // Already named by applied_revisions.
            continue;
        };
        if (a.balance, a.revision, a.version) != (balance, revision, version) {
            v.push(format!(
                "{who} saw {} as balance {} revision {} version {} (by {}); the applied transfers give balance {balance} revision {revision} version {version} (by {by})",
                a.key, a.balance, a.revision, a.version, a.by
            ));
        }
    }
}

/// A read that began after a transfer was acknowledged sees its accounts at its revision or
/// later.
fn check_not_stale(
    history: &[BankEvent],
    transfers: &HashMap<u64, &Transfer>,
    fates: &BTreeMap<u64, Fate>,
    v: &mut Violations,
) {
    // Per account: (acknowledged at, revision, transfer), sorted by time.
    let mut acks: HashMap<&str, Vec<(u64, u64, u64)>> = HashMap::new();
    for e in history
        .iter()
        .filter(|e| e.f == BankFunc::Transfer && e.kind == EventType::Ok)
    {
        let Some(t) = e.transfer.as_ref() else {
            continue;
        };
        if let (Some(Fate::Applied(r)), Some(t)) = (fates.get(&t.id), transfers.get(&t.id)) {
            for key in [&t.from.key, &t.to.key] {
                acks.entry(key).or_default().push((e.time, *r, t.id));
            }
        }
    }
    for list in acks.values_mut() {
        list.sort_unstable();
        // Each entry carries the highest revision acknowledged up to it.
        let mut best = (0, 0);
        for entry in list.iter_mut() {
            best = best.max((entry.1, entry.2));
            (entry.1, entry.2) = best;
        }
    }
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    for e in history.iter().filter(|e| e.f == BankFunc::Read) {
        if e.kind == EventType::Invoke {
            invoked.insert(e.process, e.time);
            continue;
        }
        let Some(start) = invoked.remove(&e.process) else {
            continue;
        };
        for a in e.accounts.iter().flatten() {
            let Some(list) = acks.get(a.key.as_str()) else {
                continue;
            };
            let n = list.partition_point(|&(t, ..)| t < start);
            if let Some(&(at, r, id)) = n.checked_sub(1).map(|i| &list[i]) {
                if a.revision < r {
                    v.push(format!(
                        "read by p{} @{} saw {} at revision {}, though transfer {id} wrote it at revision {r} and was acknowledged @{}, before the read began: a stale read",
                        e.process, ms(start), a.key, a.revision, ms(at)
                    ));
                }
            }
        }
    }
}

/// The final read returns each account's last state, and every acknowledged transfer was
/// seen on both its accounts (by the next transfer's read or the final read).
fn check_finals(
    setup: &Setup,
    finals: &[Account],
    transfers: &HashMap<u64, &Transfer>,
    fates: &BTreeMap<u64, Fate>,
    chains: &Chains,
    observed: &[(&Account, String)],
    v: &mut Violations,
) {
    for key in &setup.accounts {
        let Some(&(by, balance, revision, _)) = chains.last.get(key) else {
            continue;
        };
        match finals.iter().find(|a| &a.key == key) {
            Some(a) if (a.by, a.balance, a.revision) == (by, balance, revision) => {}
            Some(a) => v.push(format!(
                "the final read has {key} at balance {} by transfer {} (revision {}); the initial state plus the applied transfers gives balance {balance} by transfer {by} (revision {revision})",
                a.balance, a.by, a.revision
            )),
            None => v.push(format!("the final read has no {key}")),
        }
    }
    let seen: std::collections::HashSet<(&str, u64)> = observed
        .iter()
        .map(|(a, _)| (a.key.as_str(), a.by))
        .collect();
    for (id, fate) in fates {
        let (Fate::Applied(r), Some(t)) = (fate, transfers.get(id)) else {
            continue;
        };
        for key in [&t.from.key, &t.to.key] {
            if !seen.contains(&(key.as_str(), *id)) {
                v.push(format!(
                    "transfer {id}, acknowledged at revision {r}, was never seen on {key}: no later transfer read it and the final read does not return it (lost)"
                ));
            }
        }
    }
}

/// The bank's exactly-once section: the revisions taken between the probes against the
/// transfers that applied (each takes exactly one; reads and failed compares take none),
/// plus those that may have applied unseen (a transfer of unknown outcome whose abandoned
/// attempt applied after the final read), the probes' unknown attempts and the writes
/// outside the history.
pub fn exactly_once(verdict: &BankVerdict, before: Probe, after: Probe) -> ExactlyOnce {
    let t = &verdict.transfers;
    let outside = before.outside_writes + after.outside_writes;
    let unseen_unknown = t.unknown - t.unknown_applied;
    let accounted = t.applied
        + unseen_unknown
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
        retried_after_unknown: t.retried_after_unknown,
        revision_problems: Vec::new(),
    }
}

fn ms(ns: u64) -> String {
    format!("{}ms", ns / 1_000_000)
}

fn describe(accounts: &[Account]) -> String {
    accounts
        .iter()
        .map(|a| format!("{}={}", a.key, a.balance))
        .collect::<Vec<_>>()
        .join(" ")
}
