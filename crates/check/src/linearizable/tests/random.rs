//! Random histories: simulated linearizable registers (with a stale read injected, the
//! verdict must flip), and small random histories whose verdict must agree with an
//! exhaustive search over orders. Two ignored tests run longer: a differential fuzz and a
//! throughput measurement.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::history::to_lines;

/// xorshift64*: a small deterministic generator for the simulations.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A history produced by a real linearizable register: every operation takes effect at
/// a random instant within its interval. Some writes and deletes end `info` (applied or
/// not, and the process is retired: `unknown_pct` percent of them) or `fail` (2 %, not
/// applied); 2 % of reads end `info`.
fn simulate(
    seed: u64,
    n_ops: usize,
    procs: u64,
    keys: u64,
    unknown_pct: u64,
    delete_tenths: u64,
) -> Vec<Event> {
    struct Planned {
        process: u64,
        f: Func,
        key: String,
        value: Value,
        invoke: u64,
        complete: u64,
        effect: u64,
        outcome: Option<EventType>,
        applied: bool,
    }
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut clock = vec![0u64; procs as usize];
    let mut ids: Vec<u64> = (0..procs).collect();
    let mut next_id = procs;
    let mut plan = Vec::with_capacity(n_ops);
    for i in 0..n_ops {
        let slot = rng.below(procs) as usize;
        let invoke = clock[slot] + 1 + rng.below(50);
        let dur = rng.below(200);
        let complete = invoke + dur;
        let effect = invoke + rng.below(dur + 1);
        clock[slot] = complete;
        let key = format!("k{}", rng.below(keys));
        // Half reads; `delete_tenths` tenths deletes, the rest writes.
        let (f, value) = match rng.below(10) {
            0..=4 => (Func::Read, Value::Null),
            d if d >= 10 - delete_tenths => (Func::Delete, Value::Null),
            _ => (Func::Write, json!(i)),
        };
        let roll = rng.below(100);
        let (outcome, applied) = if f == Func::Read {
            if roll < 2 {
                (Some(EventType::Info), false)
            } else {
                (Some(EventType::Ok), true)
            }
        } else if roll < unknown_pct {
            // Unknown outcome, either `info` or no completion; applied or not.
            let kind = (!roll.is_multiple_of(3)).then_some(EventType::Info);
            (kind, rng.below(2) == 0)
        } else if roll < unknown_pct + 2 {
            (Some(EventType::Fail), false)
        } else {
            (Some(EventType::Ok), true)
        };
        let process = ids[slot];
        if outcome != Some(EventType::Ok) && outcome != Some(EventType::Fail) {
            // Unknown outcome: the process is retired, a fresh one takes the slot.
            ids[slot] = next_id;
            next_id += 1;
        }
        plan.push(Planned {
            process,
            f,
            key,
            value,
            invoke,
            complete,
            effect,
            outcome,
            applied,
        });
    }

    // Apply in effect order to one register per key; reads learn what they saw.
    let mut order: Vec<usize> = (0..plan.len()).filter(|&i| plan[i].applied).collect();
    order.sort_by_key(|&i| (plan[i].effect, i));
    let mut reg: HashMap<String, Value> = HashMap::new();
    for i in order {
        let p = &mut plan[i];
        match p.f {
            Func::Write => {
                reg.insert(p.key.clone(), p.value.clone());
            }
            Func::Delete => {
                reg.remove(&p.key);
            }
            Func::Read => p.value = reg.get(&p.key).cloned().unwrap_or(Value::Null),
        }
    }

    // Each process's events are pushed in its own order and its times never decrease, so
    // a stable sort by time keeps every invoke before its completion (even when both
    // share a timestamp).
    let mut events: Vec<Event> = Vec::new();
    for p in &plan {
        let input = if p.f == Func::Read {
            Value::Null
        } else {
            p.value.clone()
        };
        let inv = ev(p.process, EventType::Invoke, p.f, &p.key, input, p.invoke);
        events.push(inv);
        if let Some(kind) = p.outcome {
            let c = ev(p.process, kind, p.f, &p.key, p.value.clone(), p.complete);
            events.push(c);
        }
    }
    events.sort_by_key(|e| e.time);
    events
}

#[test]
fn simulated_linearizable_register() {
    let h = simulate(7, 2000, 8, 5, 3, 1);
    let start = Instant::now();
    let r = check(&h, &Limits::default()).expect("well-formed");
    let took = start.elapsed();
    assert_eq!(r.verdict, Verdict::Linearizable, "{}", explanation(&r));
    assert_eq!(r.keys.len(), 5);
    assert!(r.ops > 1800, "{}", r.ops);
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn simulated_register_with_high_concurrency() {
    // About 20 operations in flight per key, 1000 per key, 30 % deletes, 5 % unknown.
    let h = simulate(5, 5000, 350, 5, 5, 3);
    let concurrency = mean_concurrency(&h);
    assert!(concurrency > 15.0, "{concurrency}");
    let start = Instant::now();
    let r = check(&h, &Limits::default()).expect("well-formed");
    let took = start.elapsed();
    assert_eq!(r.verdict, Verdict::Linearizable, "{}", explanation(&r));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn simulated_register_with_a_corrupted_read() {
    // Make one read see a value no write ever wrote: always a violation.
    let mut h = simulate(11, 1000, 8, 3, 3, 1);
    let i = h
        .iter()
        .position(|e| e.f == Func::Read && e.kind == EventType::Ok)
        .expect("the simulation has reads");
    h[i].value = json!("never written");
    let r = check(&h, &Limits::default()).expect("well-formed");
    assert_eq!(r.verdict, Verdict::NotLinearizable);
    assert!(
        explanation(&r).contains("r()=\"never written\""),
        "{}",
        explanation(&r)
    );
}

/// Makes the read nearest the middle of `h` that saw a value see instead the first value
/// written to its key, long overwritten: a stale read.
fn inject_stale_read(h: &mut [Event]) {
    let mid = h.len() / 2;
    let i = (mid..h.len())
        .find(|&i| h[i].f == Func::Read && h[i].kind == EventType::Ok && !h[i].value.is_null())
        .expect("the simulation has reads");
    let first = h
        .iter()
        .find(|e| e.f == Func::Write && e.kind == EventType::Ok && e.key == h[i].key)
        .map(|e| e.value.clone())
        .expect("the key was written");
    h[i].value = first;
}

/// Reference decision by exhaustive search over orders (small histories only), sharing
/// nothing with the checker but the pairing of events: the register is an
/// `Option<Value>`, unknown operations may be left out, no pruning.
fn brute_force(ops: &[Op<'_>]) -> bool {
    /// Depth-first over every legal next operation; `failed` remembers (placed set,
    /// state) pairs already known to lead nowhere, which only saves time.
    fn go<'v>(
        ops: &[Op<'v>],
        placed: u64,
        state: Option<&'v Value>,
        failed: &mut HashSet<(u64, Option<String>)>,
    ) -> bool {
        let unplaced = |i: usize| placed & (1 << i) == 0;
        if (0..ops.len()).all(|i| !unplaced(i) || ops[i].ret.is_none()) {
            return true;
        }
        let memo = (placed, state.map(|v| v.to_string()));
        if failed.contains(&memo) {
            return false;
        }
        for i in (0..ops.len()).filter(|&i| unplaced(i)) {
            // Every completed operation that returned before `i` was invoked must
            // already be placed (a tie counts as concurrent).
            let blocked = (0..ops.len())
                .any(|j| j != i && unplaced(j) && ops[j].ret.is_some_and(|r| r < ops[i].call));
            if blocked {
                continue;
            }
            let next = match ops[i].f {
                Func::Write => Some((!ops[i].value.is_null()).then_some(ops[i].value)),
                Func::Delete => Some(None),
                Func::Read => {
                    let seen = (!ops[i].value.is_null()).then_some(ops[i].value);
                    (seen == state).then_some(state)
                }
            };
            if let Some(next) = next {
                if go(ops, placed | (1 << i), next, failed) {
                    return true;
                }
            }
        }
        failed.insert(memo);
        false
    }
    assert!(ops.len() <= 64, "brute force is for small histories");
    go(ops, 0, None, &mut HashSet::new())
}

/// How [`small_random_history`] draws its operations.
struct Mix {
    /// Percentages of reads and deletes; the rest are writes.
    reads: u64,
    deletes: u64,
    /// Writes draw values from 1..=values, or `null` with `null_writes` percent.
    values: u64,
    null_writes: u64,
    /// Percentages of `info` or missing completions and of `fail`s.
    unknown: u64,
    fails: u64,
    /// Processes go on after an `info` (allowed by the model: the operation may still
    /// take effect at any later time), instead of being retired.
    go_on_after_info: bool,
    /// Reads see what a register whose operations take effect at random instants in
    /// their intervals holds, and then one read in two histories is corrupted; instead
    /// of random values. Such histories sit near the boundary, where a wrong pruning
    /// rule shows.
    simulated: bool,
    /// Up to `1 + size` processes of up to `size` operations each.
    size: u64,
}

/// A small random single-key history with ties, duplicate values and every kind of
/// completion, for comparison with [`brute_force`].
fn small_random_history(rng: &mut Rng, mix: &Mix) -> Vec<Event> {
    struct Planned {
        process: u64,
        f: Func,
        value: Value,
        call: u64,
        ret: u64,
        kind: Option<EventType>,
    }
    let pct = |rng: &mut Rng, p: u64| rng.below(100) < p;
    let mut plan = Vec::new();
    let procs = 2 + rng.below(mix.size);
    for process in 0..procs {
        let mut t = rng.below(4);
        let n = 1 + rng.below(mix.size);
        for k in 0..n {
            let roll = rng.below(100);
            let f = if roll < mix.reads {
                Func::Read
            } else if roll < mix.reads + mix.deletes {
                Func::Delete
            } else {
                Func::Write
            };
            let value = match f {
                Func::Write if !pct(rng, mix.null_writes) => json!(1 + rng.below(mix.values)),
                _ => Value::Null,
            };
            let call = t;
            let ret = call + rng.below(6);
            let kind = if pct(rng, mix.unknown) {
                // No completion only as the process's last operation.
                if k + 1 == n && rng.below(3) == 0 {
                    None
                } else {
                    Some(EventType::Info)
                }
            } else if pct(rng, mix.fails) {
                Some(EventType::Fail)
            } else {
                Some(EventType::Ok)
            };
            plan.push(Planned {
                process,
                f,
                value,
                call,
                ret,
                kind,
            });
            if kind.is_none() || (kind == Some(EventType::Info) && !mix.go_on_after_info) {
                break;
            }
            t = ret + rng.below(3);
        }
    }

    if mix.simulated {
        let mut effects: Vec<(u64, u64, usize)> = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            let applied = match p.kind {
                Some(EventType::Ok) => true,
                Some(EventType::Fail) => false,
                _ => p.f != Func::Read && rng.below(2) == 0,
            };
            if applied {
                // Effects on a finer grid than the times, so that ties are broken.
                let at = p.call * 10 + rng.below((p.ret - p.call) * 10 + 1);
                effects.push((at, rng.next(), i));
            }
        }
        effects.sort_unstable();
        let mut register = Value::Null;
        for (_, _, i) in effects {
            match plan[i].f {
                Func::Write => register = plan[i].value.clone(),
                Func::Delete => register = Value::Null,
                Func::Read => plan[i].value = register.clone(),
            }
        }
        let reads: Vec<usize> = (0..plan.len())
            .filter(|&i| plan[i].f == Func::Read && plan[i].kind == Some(EventType::Ok))
            .collect();
        if !reads.is_empty() && rng.below(2) == 0 {
            let i = reads[rng.below(reads.len() as u64) as usize];
            plan[i].value = match rng.below(mix.values + 1) {
                0 => Value::Null,
                v => json!(v),
            };
        }
    } else {
        for p in plan.iter_mut().filter(|p| p.f == Func::Read) {
            p.value = match rng.below(mix.values + 1) {
                0 => Value::Null,
                v => json!(v),
            };
        }
    }

    let mut events = Vec::new();
    for p in &plan {
        let input = if p.f == Func::Read {
            Value::Null
        } else {
            p.value.clone()
        };
        events.push(ev(p.process, EventType::Invoke, p.f, "k", input, p.call));
        if let Some(kind) = p.kind {
            events.push(ev(p.process, kind, p.f, "k", p.value.clone(), p.ret));
        }
    }
    events
}

const PLAIN: Mix = Mix {
    reads: 40,
    deletes: 10,
    values: 3,
    null_writes: 0,
    unknown: 15,
    fails: 10,
    go_on_after_info: false,
    simulated: false,
    size: 4,
};

const UNKNOWN_HEAVY: Mix = Mix {
    reads: 40,
    deletes: 30,
    values: 3,
    null_writes: 20,
    unknown: 35,
    fails: 10,
    go_on_after_info: true,
    simulated: false,
    size: 4,
};

/// Many distinct values, so that many writes are blind; unknown deletes as helpers.
const NEAR_VALID: Mix = Mix {
    reads: 45,
    deletes: 20,
    values: 9,
    null_writes: 5,
    unknown: 30,
    fails: 5,
    go_on_after_info: true,
    simulated: true,
    size: 4,
};

fn agree_with_brute_force(seed: u64, rounds: usize, mix: &Mix) {
    let mut rng = Rng(seed);
    let (mut yes, mut no) = (0, 0);
    for round in 0..rounds {
        let h = small_random_history(&mut rng, mix);
        let ops = collect_ops(&h).expect("well-formed");
        let want = brute_force(&ops);
        let r = check(&h, &Limits::default()).expect("well-formed");
        let got = match r.verdict {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable => false,
            Verdict::Unknown => panic!("round {round}: unknown"),
        };
        assert_eq!(
            got,
            want,
            "seed {seed:#x} round {round}: checker says {:?}\n{}\n{}",
            r.verdict,
            to_lines(&h),
            explanation(&r)
        );
        if want {
            yes += 1;
        } else {
            no += 1;
        }
    }
    // Both outcomes must be well represented for the comparison to mean something.
    let min = rounds / 5;
    assert!(yes > min && no > min, "{yes} linearizable, {no} not");
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    agree_with_brute_force(0x1234_5678_9abc_def1, 3000, &PLAIN);
}

#[test]
fn agrees_with_brute_force_with_many_unknown_outcomes() {
    agree_with_brute_force(0x0fed_cba9_8765_4321, 3000, &UNKNOWN_HEAVY);
}

#[test]
fn agrees_with_brute_force_near_valid_histories() {
    agree_with_brute_force(0x5eed_5eed_5eed_5eed, 3000, &NEAR_VALID);
}

/// Longer differential run: `LIN_FUZZ_ROUNDS=1000000 cargo test --release -p concord-check
/// --lib linearizable::tests::random::fuzz -- --ignored`.
#[test]
#[ignore]
fn fuzz_against_brute_force() {
    let rounds = std::env::var("LIN_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200_000);
    let bigger = Mix {
        size: 6,
        ..NEAR_VALID
    };
    for (i, mix) in [PLAIN, UNKNOWN_HEAVY, NEAR_VALID, bigger]
        .iter()
        .enumerate()
    {
        agree_with_brute_force(0xf00d + i as u64, rounds, mix);
    }
}

/// Throughput check: `cargo test --release -p concord-check --lib
/// linearizable::tests::random::perf -- --ignored --nocapture`.
#[test]
#[ignore]
fn perf_large_history() {
    // (processes, keys, % unknown writes and deletes, tenths of deletes)
    let configs = [
        (8, 10, 3, 1),
        (32, 30, 3, 1),
        (16, 10, 10, 1),
        (100, 20, 3, 1),
        (260, 20, 3, 1),
        (400, 20, 3, 1),
        (700, 20, 3, 1),
        (400, 20, 10, 1),
        (400, 10, 3, 1),
        (400, 20, 3, 3),
        (400, 20, 10, 3),
        (700, 20, 5, 3),
        (8, 1, 3, 1),
        (16, 1, 3, 1),
    ];
    for (procs, keys, unknown_pct, deletes) in configs {
        for stale in [false, true] {
            let mut h = simulate(3, 20_000, procs, keys, unknown_pct, deletes);
            if stale {
                inject_stale_read(&mut h);
            }
            let start = Instant::now();
            let r = check(&h, &Limits::default()).expect("well-formed");
            println!(
                "{} ops, {keys} keys, {procs} processes (mean concurrency per key {:.1}), \
                 {unknown_pct}% unknown, {deletes}0% deletes, stale read injected: {stale}: \
                 {:?} in {:?}",
                r.ops,
                mean_concurrency(&h),
                r.verdict,
                start.elapsed()
            );
            let want = if stale {
                Verdict::NotLinearizable
            } else {
                Verdict::Linearizable
            };
            assert_eq!(r.verdict, want, "{}", explanation(&r));
        }
    }
}

/// Mean number of operations in flight on a key while it has any activity: the sum of
/// the completed operations' durations over the key's active span, averaged over keys.
fn mean_concurrency(h: &[Event]) -> f64 {
    let ops = collect_ops(h).expect("well-formed");
    let mut per_key: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    for op in &ops {
        if let Some(ret) = op.ret {
            let e = per_key.entry(op.key).or_insert((0, u64::MAX, 0));
            e.0 += ret - op.call;
            e.1 = e.1.min(op.call);
            e.2 = e.2.max(ret);
        }
    }
    let sum: f64 = per_key
        .values()
        .map(|&(busy, lo, hi)| busy as f64 / (hi - lo).max(1) as f64)
        .sum();
    sum / per_key.len().max(1) as f64
}
