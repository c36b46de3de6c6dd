//! The bank workload over the wire: creating the accounts, the client processes' transfers
//! and reads (each a `P.kv.txn`, through [`crate::retry`]), the final read, and the recorder
//! of their [`BankEvent`]s. Records; never judges (that is [`super::check`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::check::Setup;
use super::{account_key, Account, BankEvent, BankFunc, Transfer, INITIAL_BALANCE};
use crate::history::{Attempts, EventType, Func};
use crate::retry::{self, Outcome, RetryPolicy};
use crate::workload::WorkloadConfig;

/// Shared recorder: events in the order they happened.
pub struct BankRecorder {
    start: Instant,
    events: Mutex<Vec<BankEvent>>,
}

impl BankRecorder {
    pub fn new() -> Arc<BankRecorder> {
        Arc::new(BankRecorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        })
    }

    /// Records `e` with the current time; the time is taken under the lock so the
    /// history's order matches its times.
    fn record(&self, mut e: BankEvent) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        e.time = self.start.elapsed().as_nanos() as u64;
        events.push(e);
    }

    /// `at` as a history time (ns since the workload started; 0 if before it).
    pub fn time_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }

    pub fn history(&self) -> Vec<BankEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The account keys for `cfg.keys` accounts (at least 2).
pub fn account_keys(cfg: &WorkloadConfig) -> Vec<String> {
    (0..cfg.keys.max(2)).map(account_key).collect()
}

/// One txn through the retrying client, starting on server `home`: the outcome (the reply
/// when ok) and how the attempts went.
async fn txn(
    conns: &[async_nats::Client],
    home: usize,
    cfg: &WorkloadConfig,
    body: &Value,
    request_id: Option<&str>,
) -> (Outcome, Attempts) {
    let req = retry::Request {
        prefix: &cfg.prefix,
        f: Func::Write,
        key: "",
        value: &Value::Null,
        request_id,
        if_revision: None,
        txn: Some(body),
    };
    retry::perform(conns, home, &cfg.policy, &req).await
}

/// Creates every account with [`INITIAL_BALANCE`], by one txn that writes them only if none
/// exists, and returns the setup the checker needs.
pub async fn create_accounts(cfg: &WorkloadConfig, deadline: Duration) -> Result<Setup, String> {
    let conns = connect(&cfg.urls).await?;
    let keys = account_keys(cfg);
    let body = json!({
        "compare": keys.iter().map(|k| json!({"key": k, "target": "exists", "op": "==", "value": false})).collect::<Vec<_>>(),
        "success": keys.iter().map(|k| json!({"put": {"key": k, "value": {"balance": INITIAL_BALANCE, "by": 0}}})).collect::<Vec<_>>(),
    });
    let id = uuid::Uuid::new_v4().to_string();
    let policy = RetryPolicy {
        retry: true,
        op_deadline: deadline,
        ..cfg.policy
    };
    let cfg = WorkloadConfig {
        policy,
        ..cfg.clone()
    };
    match txn(&conns, 0, &cfg, &body, Some(&id)).await {
        (Outcome::Ok(reply), _) if reply["succeeded"] == true => {
            let created_revision = reply["revision"]
                .as_u64()
                .ok_or_else(|| format!("creating the accounts: no revision in {reply}"))?;
            Ok(Setup {
                accounts: keys,
                initial_balance: INITIAL_BALANCE,
                created_revision,
            })
        }
        (Outcome::Ok(reply), _) => Err(format!(
            "creating the accounts: they exist already ({reply})"
        )),
        (Outcome::Fail, a) if a.unknown == 0 => Err(format!(
            "creating the accounts: the txn was refused ({} attempts; the cluster must serve P.kv.txn, at log format 2)",
            a.sent
        )),
        (other, a) => Err(format!(
            "creating the accounts did not succeed within {deadline:?} ({other:?} after {} attempts)",
            a.sent
        )),
    }
}

/// A txn that gets `keys`, and changes nothing.
fn gets(keys: &[&str]) -> Value {
    json!({"success": keys.iter().map(|k| json!({"get": {"key": k}})).collect::<Vec<_>>()})
}

/// The accounts and `store_revision` of a reply to [`gets`] of `keys`, or what is wrong.
pub fn parse_gets(keys: &[&str], reply: &Value) -> Result<(Vec<Account>, u64), String> {
    let store_revision = reply["store_revision"]
        .as_u64()
        .ok_or_else(|| format!("no store_revision in {reply}"))?;
    let results = reply["results"]
        .as_array()
        .filter(|r| r.len() == keys.len())
        .ok_or_else(|| format!("not {} results in {reply}", keys.len()))?;
    let accounts = keys
        .iter()
        .zip(results)
        .map(|(key, r)| {
            let g = &r["get"];
            let account = Account {
                key: key.to_string(),
                balance: g["value"]["balance"].as_i64().unwrap_or(i64::MIN),
                by: g["value"]["by"].as_u64().unwrap_or(u64::MAX),
                revision: g["revision"].as_u64().unwrap_or(0),
                version: g["version"].as_u64().unwrap_or(0),
            };
            let well_formed = g["found"] == true
                && account.balance != i64::MIN
                && account.by != u64::MAX
                && account.revision > 0;
            well_formed
                .then_some(account)
                .ok_or_else(|| format!("{key}: {g}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((accounts, store_revision))
}

/// The transfer txn: both compares on revision, both puts.
fn transfer_body(t: &Transfer) -> Value {
    let compare = [&t.from, &t.to]
        .map(|a| json!({"key": a.key, "target": "revision", "op": "==", "value": a.revision}));
    let put = |a: &Account| json!({"put": {"key": a.key, "value": {"balance": t.new_balance(&a.key), "by": t.id}}});
    json!({"compare": compare, "success": [put(&t.from), put(&t.to)], "failure": []})
}

/// xorshift, seeded per process: the workload needs spread, not secrecy.
fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

async fn connect(urls: &[String]) -> Result<Vec<async_nats::Client>, String> {
    let mut conns = Vec::new();
    for url in urls {
        let c = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        conns.push(c);
    }
    Ok(conns)
}

/// Runs the processes until `stop` is set: 40 % reads of all accounts, 60 % transfers.
/// Returns once every process has finished its current operation.
pub async fn run(
    cfg: WorkloadConfig,
    recorder: Arc<BankRecorder>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let conns = Arc::new(connect(&cfg.urls).await?);
    let ids = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for slot in 0..cfg.clients {
        let (cfg, recorder, stop, ids, conns) = (
            cfg.clone(),
            recorder.clone(),
            stop.clone(),
            ids.clone(),
            conns.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut process = slot as u64;
            let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ ((slot as u64 + 1) << 17);
            let keys = account_keys(&cfg);
            while !stop.load(Ordering::Relaxed) {
                let done = if next(&mut rng) % 100 < 40 {
                    read_all(&conns, slot, &cfg, &recorder, process).await
                } else {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    let p = (process, id, next(&mut rng));
                    transfer(&conns, slot, &cfg, &recorder, p, &keys).await
                };
                match done {
                    // An operation of unknown outcome stays open: a new process id.
                    Outcome::Info => process += cfg.clients as u64,
                    Outcome::Fail => tokio::time::sleep(Duration::from_millis(20)).await,
                    Outcome::Ok(_) => {}
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// One read of every account by `process`, recorded. A read has no effect, so an unknown
/// one does not retire its process: it returns `Fail` then.
async fn read_all(
    conns: &[async_nats::Client],
    home: usize,
    cfg: &WorkloadConfig,
    recorder: &BankRecorder,
    process: u64,
) -> Outcome {
    let keys = account_keys(cfg);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    recorder.record(BankEvent::new(
        process,
        EventType::Invoke,
        BankFunc::Read,
        0,
    ));
    let (outcome, attempts) = txn(conns, home, cfg, &gets(&keys), None).await;
    let mut done = BankEvent::new(process, EventType::Info, BankFunc::Read, 0);
    done.attempts = Some(attempts);
    match &outcome {
        Outcome::Ok(reply) => {
            done.kind = EventType::Ok;
            match parse_gets(&keys, reply) {
                Ok((accounts, rev)) => {
                    done.accounts = Some(accounts);
                    done.revision = Some(rev);
                }
                Err(e) => done.malformed = Some(e),
            }
        }
        Outcome::Fail => done.kind = EventType::Fail,
        Outcome::Info => {}
    }
    recorder.record(done);
    match outcome {
        Outcome::Info => Outcome::Fail,
        o => o,
    }
}

/// One transfer `(process, id, roll)` between two accounts of `keys` picked by `roll`: read
/// both (unrecorded if it fails), then the conditional txn, recorded.
async fn transfer(
    conns: &[async_nats::Client],
    home: usize,
    cfg: &WorkloadConfig,
    recorder: &BankRecorder,
    (process, id, roll): (u64, u64, u64),
    keys: &[String],
) -> Outcome {
    let n = keys.len() as u64;
    let a = (roll % n) as usize;
    let b = ((a as u64 + 1 + (roll >> 8) % (n - 1)) % n) as usize;
    let pair = [keys[a].as_str(), keys[b].as_str()];
    let (seen, read_revision) = match txn(conns, home, cfg, &gets(&pair), None).await {
        (Outcome::Ok(reply), _) => match parse_gets(&pair, &reply) {
            Ok((seen, rev)) => (seen, rev),
            // Not recorded: the reads of all accounts catch a store in that state.
            Err(_) => return Outcome::Fail,
        },
        _ => return Outcome::Fail,
    };
    let [x, y] = [seen[0].clone(), seen[1].clone()];
    // Money moves from the richer of the two, at most its balance: none goes negative.
    let (from, to) = if x.balance >= y.balance {
        (x, y)
    } else {
        (y, x)
    };
    if from.balance <= 0 {
        return Outcome::Fail;
    }
    let amount = 1 + (roll >> 16) as i64 % from.balance.min(20);
    let t = Transfer {
        id,
        amount,
        from,
        to,
        read_revision,
    };
    let mut invoke = BankEvent::new(process, EventType::Invoke, BankFunc::Transfer, 0);
    invoke.transfer = Some(t.clone());
    recorder.record(invoke);
    let request_id = uuid::Uuid::new_v4().to_string();
    let (outcome, attempts) = txn(conns, home, cfg, &transfer_body(&t), Some(&request_id)).await;
    let mut done = BankEvent::new(process, EventType::Info, BankFunc::Transfer, 0);
    done.transfer = Some(t);
    done.attempts = Some(attempts);
    match &outcome {
        // Without `succeeded` (an answer the contract does not allow): unknown.
        Outcome::Ok(reply) => {
            if let Some(applied) = reply["succeeded"].as_bool() {
                done.kind = EventType::Ok;
                done.succeeded = Some(applied);
                done.revision = reply["revision"]
                    .as_u64()
                    .or_else(|| reply["store_revision"].as_u64());
            }
        }
        Outcome::Fail => done.kind = EventType::Fail,
        Outcome::Info => {}
    }
    let kind = done.kind;
    recorder.record(done);
    match kind {
        EventType::Info => Outcome::Info,
        _ => outcome,
    }
}

/// After the faults heal: one read of every account, retried until it succeeds (bounded by
/// `deadline`), recorded by fresh processes numbered from `first_process`.
pub async fn final_read(
    cfg: &WorkloadConfig,
    recorder: &BankRecorder,
    first_process: u64,
    deadline: Duration,
) -> Result<Vec<Account>, String> {
    let conns = connect(&cfg.urls).await?;
    let until = Instant::now() + deadline;
    let mut process = first_process;
    while Instant::now() < until {
        if let Outcome::Ok(_) = read_all(&conns, 0, cfg, recorder, process).await {
            let history = recorder.history();
            let last = history
                .iter()
                .rev()
                .find(|e| e.process == process && e.kind == EventType::Ok);
            return match last.and_then(|e| e.accounts.clone()) {
                Some(a) => Ok(a),
                None => Err("the final read's reply was malformed".into()),
            };
        }
        process += 1;
    }
    Err(format!(
        "the final read of the accounts did not succeed within {deadline:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_reply_is_parsed_by_the_txn_contract() {
        let reply = json!({"ok": true, "succeeded": true, "store_revision": 40, "results": [
            {"get": {"found": true, "value": {"balance": 90, "by": 7}, "revision": 33,
                     "create_revision": 2, "version": 5, "lease": 0}},
            {"get": {"found": true, "value": {"balance": 110, "by": 0}, "revision": 2,
                     "create_revision": 2, "version": 1, "lease": 0}}]});
        let (accounts, rev) = parse_gets(&["bank/0", "bank/1"], &reply).unwrap();
        assert_eq!(rev, 40);
        assert_eq!(
            accounts[0],
            Account {
                key: "bank/0".into(),
                balance: 90,
                by: 7,
                revision: 33,
                version: 5
            }
        );
        assert_eq!(accounts[1].by, 0);
        // A missing account, a value of another shape, a result short: each named.
        let missing = json!({"store_revision": 40, "results": [{"get": {"found": false}}]});
        assert!(parse_gets(&["bank/0"], &missing)
            .unwrap_err()
            .contains("bank/0"));
        let odd = json!({"store_revision": 40, "results": [{"get": {"found": true, "value": 3,
                         "revision": 3, "version": 1}}]});
        assert!(parse_gets(&["bank/0"], &odd).is_err());
        assert!(parse_gets(&["bank/0", "bank/1"], &missing).is_err());
        assert!(parse_gets(&["bank/0"], &json!({"results": []})).is_err());
    }

    #[test]
    fn a_transfer_compares_both_revisions_and_puts_both_balances() {
        let account = |key: &str, balance, revision| Account {
            key: key.into(),
            balance,
            by: 0,
            revision,
            version: 1,
        };
        let t = Transfer {
            id: 9,
            amount: 15,
            from: account("bank/1", 100, 4),
            to: account("bank/3", 50, 6),
            read_revision: 8,
        };
        assert_eq!(
            transfer_body(&t),
            json!({
                "compare": [
                    {"key": "bank/1", "target": "revision", "op": "==", "value": 4},
                    {"key": "bank/3", "target": "revision", "op": "==", "value": 6}],
                "success": [
                    {"put": {"key": "bank/1", "value": {"balance": 85, "by": 9}}},
                    {"put": {"key": "bank/3", "value": {"balance": 65, "by": 9}}}],
                "failure": []})
        );
        assert_eq!(
            gets(&["bank/0"]),
            json!({"success": [{"get": {"key": "bank/0"}}]})
        );
    }
}
