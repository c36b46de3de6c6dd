//! The bank workload (`--workload bank`): money moved between a few accounts by
//! transactions, and a checker that the total never changes and no transfer applies twice.
//!
//! N accounts (keys `bank/0` … `bank/<N-1>`) are created once, by one transaction, each
//! holding [`INITIAL_BALANCE`]. An account's value is `{"balance": B, "by": T}`: its balance
//! and the transfer `T` that wrote it last (0 = the creation), so that every state a read
//! returns names the transfer that produced it. Client processes then:
//!
//! - **transfer**: read the two accounts with one txn of gets, then send one txn that
//!   compares both accounts' `revision` with what was read and, if both hold, puts the two
//!   new balances (an amount of at most the source's balance, so no balance goes negative).
//!   A failed compare (`succeeded: false`) is a clean no-op. Every transfer carries a
//!   `request_id` and is retried with it through `timeout`, `busy` and `cluster_not_ready`
//!   within its deadline ([`crate::retry`]).
//! - **read**: one txn of gets of every account: one linearizable point of the store, whose
//!   reply's `store_revision` says where the store stood.
//!
//! [`client`] performs and records them ([`BankEvent`]s, one invoke and one completion per
//! logical operation, as the register workload does); [`check`] judges the history. Nothing
//! here links the node library.

pub mod check;
pub mod client;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::history::{Attempts, Event, EventType, Func};

/// Every account's balance at creation.
pub const INITIAL_BALANCE: i64 = 100;

/// The key of account `i`.
pub fn account_key(i: usize) -> String {
    format!("bank/{i}")
}

/// One account as a read returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub key: String,
    pub balance: i64,
    /// The transfer that wrote this state (0: the creation).
    pub by: u64,
    /// The key's revision: the store revision of the write that produced this state.
    pub revision: u64,
    /// Writes of the key since its creation, the creation's included.
    pub version: u64,
}

/// A transfer as its client invoked it: `amount` from one account to another, as its own
/// read saw the two (the revisions its compares expect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Unique per run, written into both accounts' values (`by`); never 0.
    pub id: u64,
    pub amount: i64,
    /// The source (debited) and destination accounts, as the transfer's read returned them.
    pub from: Account,
    pub to: Account,
    /// The `store_revision` of that read.
    pub read_revision: u64,
}

impl Transfer {
    /// What the transfer writes into `key` if it applies.
    pub fn new_balance(&self, key: &str) -> Option<i64> {
        if key == self.from.key {
            Some(self.from.balance - self.amount)
        } else if key == self.to.key {
            Some(self.to.balance + self.amount)
        } else {
            None
        }
    }

    /// The state of `key` the transfer read (and compares against).
    pub fn seen(&self, key: &str) -> Option<&Account> {
        [&self.from, &self.to].into_iter().find(|a| a.key == key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BankFunc {
    /// One txn of gets of every account.
    Read,
    Transfer,
}

/// One history event of the bank workload, a JSON line of `history.jsonl`.
///
/// A transfer's invoke and completion both carry `transfer`; its `ok` says whether it
/// applied (`succeeded`) and the reply's `revision` (the transfer's own when it applied, the
/// `store_revision` when its compare failed). A read's `ok` carries `accounts` and the
/// reply's `store_revision` as `revision`, or `malformed` when the reply did not hold every
/// account in the expected shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankEvent {
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: BankFunc,
    /// Nanoseconds since the workload started.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<Account>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub malformed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Attempts>,
}

impl BankEvent {
    /// An event with only its process, type, function and time set.
    pub fn new(process: u64, kind: EventType, f: BankFunc, time: u64) -> BankEvent {
        BankEvent {
            process,
            kind,
            f,
            time,
            transfer: None,
            accounts: None,
            succeeded: None,
            revision: None,
            malformed: None,
            attempts: None,
        }
    }
}

/// The history as the register workload's events (transfers as writes of key `bank`, reads
/// as reads), for what reads only times and outcomes: the failover gaps and the counts.
pub fn as_register_events(history: &[BankEvent]) -> Vec<Event> {
    history
        .iter()
        .map(|e| Event {
            process: e.process,
            kind: e.kind,
            f: match e.f {
                BankFunc::Read => Func::Read,
                BankFunc::Transfer => Func::Write,
            },
            key: "bank".into(),
            value: serde_json::Value::Null,
            time: e.time,
            attempts: e.attempts.clone(),
            if_revision: None,
        })
        .collect()
}

pub fn to_lines(history: &[BankEvent]) -> String {
    let mut out = String::new();
    for e in history {
        out.push_str(&serde_json::to_string(e).unwrap_or_default());
        out.push('\n');
    }
    out
}

pub fn parse(text: &str) -> Result<Vec<BankEvent>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}
