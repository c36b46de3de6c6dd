//! The watch checker on hand-made histories: a clean one holds; a gap, a duplicate, a
//! reordered pair, a phantom event, a lost acknowledged put, a failed put that applied and a
//! watcher that never caught up each fail it.

use serde_json::{json, Value};

use super::check::{accepted, check, first_difference, stream_problems};
use super::{Message, PutOutcome, PutRecord, Stream, StreamEnd, WatchHistory, WatcherLog};

/// The event of the put of `value` into `key` at `rev`.
fn put_event(key: &str, value: &str, rev: u64) -> Value {
    json!({"type": "put", "key": key, "value": value, "revision": rev,
           "create_revision": 3, "version": rev - 2, "lease": 0})
}

fn put(value: &str, key: &str, outcome: PutOutcome, revision: Option<u64>) -> PutRecord {
    PutRecord {
        writer: 0,
        key: key.into(),
        value: value.into(),
        outcome,
        revision,
        invoked: 0,
        completed: 0,
        attempts: None,
    }
}

fn msg(seq: u64, events: Vec<Value>, store_revision: u64) -> Message {
    Message {
        seq,
        events,
        store_revision,
        fragment: false,
    }
}

fn stream(start: u64, messages: Vec<Message>, end: Option<StreamEnd>) -> Stream {
    Stream {
        watch_id: format!("w{start}"),
        node: 1,
        start_revision: start,
        created: 0,
        messages,
        end,
    }
}

fn log(name: &str, streams: Vec<Stream>) -> WatcherLog {
    WatcherLog {
        name: name.into(),
        home: 1,
        start_revision: 3,
        streams,
        ..WatcherLog::default()
    }
}

/// Puts a-0 … a-4 at revisions 3 … 7 (all acknowledged), a truth of one stream with them,
/// and a watcher that saw them over two streams, with a progress notice (the first ended
/// `no_leader` with resume revision 6, its ack of 6 lost; the second resumed there and
/// delivered 6 again, which the watcher drops).
fn clean() -> WatchHistory {
    let events: Vec<Value> = (0..5)
        .map(|i| put_event("watch/0", &format!("a-{i}"), 3 + i))
        .collect();
    let puts = (0..5)
        .map(|i| put(&format!("a-{i}"), "watch/0", PutOutcome::Ok, Some(3 + i)))
        .collect();
    let truth = log(
        "truth",
        vec![stream(
            3,
            vec![msg(1, events.clone(), 7)],
            Some(StreamEnd::Stopped),
        )],
    );
    let end = StreamEnd::End {
        code: "no_leader".into(),
        resume_revision: 6,
        message: "".into(),
    };
    let watcher = log(
        "watcher-n1",
        vec![
            stream(
                3,
                vec![
                    msg(1, events[..2].to_vec(), 4),
                    msg(2, events[2..3].to_vec(), 5),
                    msg(3, vec![], 5),
                    msg(4, events[3..4].to_vec(), 6),
                ],
                Some(end),
            ),
            stream(
                6,
                vec![msg(1, events[3..].to_vec(), 7)],
                Some(StreamEnd::Stopped),
            ),
        ],
    );
    WatchHistory {
        start_revision: 3,
        final_revision: Some(7),
        puts,
        watchers: vec![watcher],
        truth: Some(truth),
    }
}

/// The history with the watcher's events replaced by `events` in one stream.
fn watcher_saw(events: Vec<Value>) -> WatchHistory {
    let mut h = clean();
    h.watchers[0].streams = vec![stream(3, vec![msg(1, events, 7)], None)];
    h
}

fn truth_events(h: &WatchHistory) -> Vec<Value> {
    h.truth.as_ref().unwrap().streams[0].messages[0]
        .events
        .clone()
}

#[test]
fn a_clean_history_holds_and_is_counted() {
    let h = clean();
    let v = check(&h);
    assert!(v.holds(), "{:#?}", v.violations);
    assert_eq!(v.truth_events, 5);
    assert_eq!((v.puts.ok, v.puts.applied), (5, 5));
    let w = &v.watchers[0];
    assert_eq!((w.events, w.received, w.dropped), (5, 6, 1));
    assert_eq!((w.streams, w.resumes, w.progress), (2, 1, 1));
    assert_eq!(w.ends.get("no_leader"), Some(&1));
    assert!(w.matches_truth);
    assert_eq!(v.ends.get("no_leader"), Some(&1));
}

#[test]
fn a_gap_fails() {
    let h = clean();
    let mut events = truth_events(&h);
    events.remove(2);
    let v = check(&watcher_saw(events));
    assert!(!v.holds());
    assert!(
        v.violations.iter().any(|x| x.contains("missed revision 5")),
        "{:?}",
        v.violations
    );
}

#[test]
fn a_gap_across_a_resume_fails() {
    // The node's end says resume at 7 though 6 was never delivered.
    let mut h = clean();
    let s = &mut h.watchers[0].streams;
    s[0].messages.truncate(3);
    s[1].start_revision = 7;
    s[1].messages[0].events.retain(|e| e["revision"] == 7);
    let v = check(&h);
    assert!(!v.holds());
    assert!(!v.watchers[0].matches_truth);
}

#[test]
fn a_duplicate_fails() {
    let h = clean();
    let mut events = truth_events(&h);
    events.insert(3, events[2].clone());
    let v = check(&watcher_saw(events));
    assert!(!v.holds());
    assert!(
        v.violations.iter().any(|x| x.contains("duplicate")),
        "{:?}",
        v.violations
    );
}

#[test]
fn a_duplicate_inside_one_stream_fails_though_the_drop_rule_hides_it() {
    let h = clean();
    let events = truth_events(&h);
    let mut h = watcher_saw(events[..3].to_vec());
    let w = &mut h.watchers[0].streams[0];
    w.messages[0].store_revision = 5;
    w.messages.push(msg(2, vec![events[2].clone()], 5));
    w.messages.push(msg(3, events[3..].to_vec(), 7));
    let problems = stream_problems(&h.watchers[0]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(check(&h)
        .violations
        .iter()
        .any(|x| x.contains("after revision 5")));
}

#[test]
fn a_reordered_pair_fails() {
    let h = clean();
    let mut events = truth_events(&h);
    events.swap(1, 2);
    let v = check(&watcher_saw(events));
    assert!(!v.holds());
    assert!(!v.watchers[0].matches_truth);
    assert!(
        v.violations.iter().any(|x| x.contains("event 1")),
        "{:?}",
        v.violations
    );
}

#[test]
fn a_phantom_event_fails_in_a_watcher_and_in_the_truth() {
    let h = clean();
    let mut events = truth_events(&h);
    events[4] = put_event("watch/0", "nobody-0", 7);
    let v = check(&watcher_saw(events.clone()));
    assert!(
        v.violations.iter().any(|x| x.contains("different event")),
        "{:?}",
        v.violations
    );
    // The same phantom in the truth (and the watcher agreeing with it).
    let mut h = watcher_saw(events.clone());
    h.truth.as_mut().unwrap().streams[0].messages[0].events = events;
    let v = check(&h);
    assert!(
        v.violations.iter().any(|x| x.contains("phantom")),
        "{:?}",
        v.violations
    );
    // The acknowledged put a-4 is then lost too.
    assert!(
        v.violations.iter().any(|x| x.contains("lost")),
        "{:?}",
        v.violations
    );
}

#[test]
fn a_lost_acknowledged_put_fails() {
    let mut h = clean();
    h.puts.push(put("a-9", "watch/1", PutOutcome::Ok, Some(6)));
    let v = check(&h);
    assert!(!v.holds());
    assert!(
        v.violations.iter().any(|x| x.contains("\"a-9\"")),
        "{:?}",
        v.violations
    );
    // At another revision than acknowledged, also.
    let mut h = clean();
    h.puts[1].revision = Some(9);
    assert!(check(&h)
        .violations
        .iter()
        .any(|x| x.contains("at revision 4")));
}

#[test]
fn a_failed_put_that_applied_fails_and_an_unknown_one_may() {
    let mut h = clean();
    h.puts[2].outcome = PutOutcome::Unknown;
    h.puts[2].revision = None;
    let v = check(&h);
    assert!(v.holds(), "{:?}", v.violations);
    assert_eq!((v.puts.unknown, v.puts.unknown_applied), (1, 1));
    h.puts[2].outcome = PutOutcome::Failed;
    assert!(check(&h)
        .violations
        .iter()
        .any(|x| x.contains("failed for certain")));
}

#[test]
fn a_put_applied_twice_and_a_delete_nobody_made_fail() {
    let mut h = clean();
    let t = &mut h.truth.as_mut().unwrap().streams[0].messages[0];
    t.events.push(put_event("watch/0", "a-4", 8));
    t.events
        .push(json!({"type": "delete", "key": "watch/0", "revision": 9,
                     "create_revision": 0, "version": 0, "lease": 0}));
    t.store_revision = 9;
    h.final_revision = Some(9);
    let v = check(&h);
    assert!(
        v.violations.iter().any(|x| x.contains("applied twice")),
        "{:?}",
        v.violations
    );
    assert!(
        v.violations.iter().any(|x| x.contains("nobody made")),
        "{:?}",
        v.violations
    );
}

#[test]
fn a_watcher_or_truth_that_never_reaches_the_final_revision_fails() {
    let mut h = clean();
    h.watchers[0].streams.truncate(1);
    let v = check(&h);
    assert!(
        v.watchers[0].matches_truth,
        "a prefix of the truth is not wrong"
    );
    assert!(v
        .violations
        .iter()
        .any(|x| x.contains("fully saw revision 6 only")));
    let mut h = clean();
    h.final_revision = Some(8);
    assert!(check(&h)
        .violations
        .iter()
        .any(|x| x.contains("truth reached")));
    let mut h = clean();
    h.truth = None;
    assert!(!check(&h).holds());
}

#[test]
fn an_incomplete_fragmented_revision_is_delivered_again_on_resume() {
    // Revision 7 holds two events; the first stream ends after the first fragment.
    let e7a = put_event("watch/0", "a-4", 7);
    let e7b = put_event("watch/1", "b-0", 7);
    let mut first = msg(1, vec![e7a.clone()], 7);
    first.fragment = true;
    let w = log(
        "w",
        vec![
            stream(7, vec![first], Some(StreamEnd::Silence)),
            stream(7, vec![msg(1, vec![e7a.clone(), e7b.clone()], 7)], None),
        ],
    );
    let a = accepted(&WatcherLog {
        start_revision: 7,
        ..w
    });
    assert_eq!(a.events, vec![e7a, e7b]);
    assert_eq!((a.received, a.dropped, a.fully_seen), (3, 1, 7));
}

#[test]
fn differences_are_named() {
    let t: Vec<Value> = (3..6)
        .map(|r| put_event("k", &format!("v{r}"), r))
        .collect();
    assert_eq!(first_difference(&t, &t, 9), None);
    assert!(first_difference(&t, &t[..2], 9).unwrap().contains("missed"));
    assert_eq!(first_difference(&t, &t[..2], 4), None);
    let mut more = t.clone();
    more.push(put_event("k", "v6", 5));
    assert!(first_difference(&t, &more, 9)
        .unwrap()
        .contains("more than the truth"));
}
