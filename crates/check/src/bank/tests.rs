//! The bank checker on hand-made histories: a clean one passes, and each kind of violation
//! (a read whose total is off, a transfer applied twice, one applied though it answered that
//! its compare failed, a lost acknowledged transfer, a stale or non-monotonic read) is named.

use super::check::{check, exactly_once, Setup};
use super::{Account, BankEvent, BankFunc, Transfer};
use crate::exactly_once::Probe;
use crate::history::{Attempts, EventType};

const R0: u64 = 10;

fn setup() -> Setup {
    Setup {
        accounts: vec!["bank/0".into(), "bank/1".into(), "bank/2".into()],
        initial_balance: 100,
        created_revision: R0,
    }
}

fn acct(i: usize, balance: i64, by: u64, revision: u64, version: u64) -> Account {
    Account {
        key: format!("bank/{i}"),
        balance,
        by,
        revision,
        version,
    }
}

fn fresh(i: usize) -> Account {
    acct(i, 100, 0, R0, 1)
}

/// A history builder with a clock.
struct H(Vec<BankEvent>, u64);

impl H {
    fn new() -> H {
        H(Vec::new(), 0)
    }

    fn push(&mut self, mut e: BankEvent) -> &mut H {
        self.1 += 1_000_000;
        e.time = self.1;
        self.0.push(e);
        self
    }

    fn transfer_invoke(&mut self, p: u64, t: &Transfer) -> &mut H {
        let mut e = BankEvent::new(p, EventType::Invoke, BankFunc::Transfer, 0);
        e.transfer = Some(t.clone());
        self.push(e)
    }

    /// `applied`: `Some(true)` at `revision`, `Some(false)` a failed compare, `None` unknown.
    fn transfer_done(
        &mut self,
        p: u64,
        t: &Transfer,
        applied: Option<bool>,
        revision: u64,
    ) -> &mut H {
        let kind = if applied.is_some() {
            EventType::Ok
        } else {
            EventType::Info
        };
        let mut e = BankEvent::new(p, kind, BankFunc::Transfer, 0);
        e.transfer = Some(t.clone());
        e.succeeded = applied;
        e.revision = applied.map(|_| revision);
        e.attempts = Some(Attempts {
            sent: 1,
            ..Attempts::default()
        });
        self.push(e)
    }

    fn read(&mut self, p: u64, accounts: Vec<Account>, store_revision: u64) -> &mut H {
        self.push(BankEvent::new(p, EventType::Invoke, BankFunc::Read, 0));
        let mut e = BankEvent::new(p, EventType::Ok, BankFunc::Read, 0);
        e.accounts = Some(accounts);
        e.revision = Some(store_revision);
        self.push(e)
    }
}

fn transfer(id: u64, amount: i64, from: Account, to: Account, read_revision: u64) -> Transfer {
    Transfer {
        id,
        amount,
        from,
        to,
        read_revision,
    }
}

/// Transfer 1 (10 from 0 to 1) applied at 11; transfer 2 (5 from 1 to 2, read after 1)
/// applied at 12; transfer 3 read the old state of 0 and failed its compare.
fn clean() -> (H, Transfer, Transfer, Transfer) {
    let t1 = transfer(1, 10, fresh(0), fresh(1), R0);
    let t2 = transfer(2, 5, acct(1, 110, 1, 11, 2), fresh(2), 11);
    let t3 = transfer(3, 7, fresh(0), fresh(2), R0);
    let mut h = H::new();
    h.transfer_invoke(0, &t1)
        .transfer_invoke(2, &t3)
        .transfer_done(0, &t1, Some(true), 11)
        .transfer_done(2, &t3, Some(false), 11)
        .transfer_invoke(1, &t2)
        .transfer_done(1, &t2, Some(true), 12)
        .read(
            0,
            vec![
                acct(0, 90, 1, 11, 2),
                acct(1, 105, 2, 12, 3),
                acct(2, 105, 2, 12, 2),
            ],
            12,
        );
    (h, t1, t2, t3)
}

fn final_state() -> Vec<Account> {
    vec![
        acct(0, 90, 1, 11, 2),
        acct(1, 105, 2, 12, 3),
        acct(2, 105, 2, 12, 2),
    ]
}

#[test]
fn a_clean_history_holds() {
    let (h, ..) = clean();
    let v = check(&setup(), &h.0, Some(&final_state()));
    assert!(v.holds(), "{:#?}", v.violations);
    assert_eq!(
        (
            v.transfers.ok,
            v.transfers.failed_compare,
            v.transfers.applied
        ),
        (2, 1, 2)
    );
    assert_eq!(v.reads.ok, 1);
    assert_eq!(v.total, 300);
}

#[test]
fn a_read_whose_total_is_off_fails() {
    let (mut h, ..) = clean();
    h.read(
        3,
        vec![
            acct(0, 90, 1, 11, 2),
            acct(1, 110, 1, 11, 2),
            acct(2, 105, 2, 12, 2),
        ],
        12,
    );
    let v = check(&setup(), &h.0, Some(&final_state()));
    assert!(!v.holds());
    assert!(
        v.violations
            .iter()
            .any(|m| m.contains("total 305, not 300")),
        "{:#?}",
        v.violations
    );
}

#[test]
fn a_transfer_applied_twice_fails() {
    // Transfer 1 retried after a timeout and applied again at 13 (a server that forgot its
    // id and a compare that let it through): its write is seen at two revisions.
    let (mut h, ..) = clean();
    h.read(
        3,
        vec![
            acct(0, 90, 1, 13, 3),
            acct(1, 105, 2, 12, 3),
            acct(2, 105, 2, 12, 2),
        ],
        13,
    );
    let v = check(&setup(), &h.0, None);
    assert!(!v.holds());
    assert!(
        v.violations.iter().any(|m| m.contains("applied twice")),
        "{:#?}",
        v.violations
    );
}

#[test]
fn a_transfer_seen_though_it_answered_failed_compare_fails() {
    // Transfer 3 answered succeeded=false, yet a read sees its write.
    let (mut h, ..) = clean();
    h.read(
        3,
        vec![
            acct(0, 83, 3, 13, 3),
            acct(1, 105, 2, 12, 3),
            acct(2, 112, 3, 13, 3),
        ],
        13,
    );
    let v = check(&setup(), &h.0, None);
    assert!(!v.holds());
    assert!(
        v.violations.iter().any(|m| m.contains("did not apply")),
        "{:#?}",
        v.violations
    );
}

#[test]
fn an_unknown_transfer_applies_at_most_once_and_only_if_seen() {
    // Transfer 4 of unknown outcome: seen by the final read, it applied; the chain and the
    // final state must include it.
    let (mut h, ..) = clean();
    let t4 = transfer(4, 20, acct(0, 90, 1, 11, 2), acct(2, 105, 2, 12, 2), 12);
    h.transfer_invoke(4, &t4).transfer_done(4, &t4, None, 0);
    let finals = vec![
        acct(0, 70, 4, 14, 3),
        acct(1, 105, 2, 12, 3),
        acct(2, 125, 4, 14, 3),
    ];
    h.read(9, finals.clone(), 14);
    let v = check(&setup(), &h.0, Some(&finals));
    assert!(v.holds(), "{:#?}", v.violations);
    assert_eq!(
        (
            v.transfers.unknown,
            v.transfers.unknown_applied,
            v.transfers.applied
        ),
        (1, 1, 3)
    );
    // Unseen, it did not apply: the final state without it holds too.
    let (mut h, ..) = clean();
    h.transfer_invoke(4, &t4).transfer_done(4, &t4, None, 0);
    let v = check(&setup(), &h.0, Some(&final_state()));
    assert!(v.holds(), "{:#?}", v.violations);
    assert_eq!((v.transfers.unknown_applied, v.transfers.applied), (0, 2));
    // A final state with its balances but a version too many: applied twice.
    let mut twice = finals.clone();
    twice[0].version = 4;
    let (mut h, ..) = clean();
    h.transfer_invoke(4, &t4).transfer_done(4, &t4, None, 0);
    let v = check(&setup(), &h.0, Some(&twice));
    assert!(!v.holds());
}

#[test]
fn an_acknowledged_transfer_never_seen_is_lost() {
    let (h, ..) = clean();
    // The final state as if transfer 2 never happened.
    let finals = vec![acct(0, 90, 1, 11, 2), acct(1, 110, 1, 11, 2), fresh(2)];
    let v = check(&setup(), &h.0[..6], Some(&finals));
    assert!(!v.holds());
    assert!(
        v.violations.iter().any(|m| m.contains("lost")),
        "{:#?}",
        v.violations
    );
    assert!(
        v.violations
            .iter()
            .any(|m| m.contains("the final read has bank/1")),
        "{:#?}",
        v.violations
    );
}

#[test]
fn two_transfers_from_one_state_fail() {
    // Transfer 3 read the creation state of bank/0 like transfer 1 and also claims to have
    // applied: both compares on bank/0 cannot have held.
    let t1 = transfer(1, 10, fresh(0), fresh(1), R0);
    let t3 = transfer(3, 7, fresh(0), fresh(2), R0);
    let mut h = H::new();
    h.transfer_invoke(0, &t1)
        .transfer_invoke(2, &t3)
        .transfer_done(0, &t1, Some(true), 11)
        .transfer_done(2, &t3, Some(true), 12);
    let v = check(&setup(), &h.0, None);
    assert!(!v.holds());
    assert!(
        v.violations.iter().any(|m| m.contains("compare on bank/0")),
        "{:#?}",
        v.violations
    );
}

#[test]
fn stale_and_non_monotonic_reads_fail() {
    let (mut h, ..) = clean();
    // Began after transfer 2 was acknowledged, yet sees bank/2 before it.
    h.read(
        5,
        vec![acct(0, 90, 1, 11, 2), acct(1, 110, 1, 11, 2), fresh(2)],
        11,
    );
    let v = check(&setup(), &h.0, None);
    assert!(
        v.violations.iter().any(|m| m.contains("stale read")),
        "{:#?}",
        v.violations
    );
    // p0 read at store revision 12, then at 11.
    let (mut h, ..) = clean();
    h.read(
        0,
        vec![acct(0, 90, 1, 11, 2), acct(1, 110, 1, 11, 2), fresh(2)],
        11,
    );
    let v = check(&setup(), &h.0, None);
    assert!(
        v.violations.iter().any(|m| m.contains("not monotonic")),
        "{:#?}",
        v.violations
    );
}

#[test]
fn revisions_are_accounted_for() {
    let (h, ..) = clean();
    let v = check(&setup(), &h.0, Some(&final_state()));
    let probe = |revision| Probe {
        revision,
        unknown_attempts: 0,
        outside_writes: 0,
    };
    // Two transfers applied between the probes at 10 and 13: 11 and 12.
    assert!(exactly_once(&v, probe(10), probe(13)).holds());
    // One revision more than anything accounts for.
    let e = exactly_once(&v, probe(10), probe(14));
    assert_eq!(e.double_applies_bound, 1);
    assert!(!e.holds());
}

#[test]
fn the_history_round_trips_as_json_lines() {
    let (h, ..) = clean();
    let text = super::to_lines(&h.0);
    assert_eq!(super::parse(&text).unwrap(), h.0);
}
