//! A watch stream's bookkeeping, without IO: where it stands in the change log (the next
//! revision it expects), the `seq` of the current server-side watch, fragments held until
//! their revision is complete, the list-then-watch filter, and what to do with an end or a
//! refused create.
//!
//! The invariant the stream keeps: every revision below `next_revision` has been handed to
//! the consumer completely, and none of revision `next_revision` or later has. A resume (a
//! new create at `next_revision`) therefore repeats nothing and skips nothing, whatever the
//! node acknowledged: events below `next_revision` are dropped, and a fragmented revision's
//! events are held until its last fragment so that a resume in the middle of one simply
//! starts it again.

use std::collections::HashMap;
use std::time::Duration;

use concord_wire::watch::{end_code, End, Event, Message};

use crate::client::ClientError;
use crate::error::{ErrorKind, WireError};

/// What one message did to the cursor.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Hand these events over (maybe none: a progress notice, a fragment held back, events
    /// already seen), then acknowledge the message.
    Deliver(Vec<Event>),
    /// A `seq` already handled (a redelivery): acknowledge it again, deliver nothing.
    Repeat,
    /// A message is missing between the last `seq` and this one (NATS dropped it): the
    /// current watch cannot be trusted any more; resume at `next_revision`.
    Gap { expected: u64, got: u64 },
}

#[derive(Debug, Default)]
pub(crate) struct Cursor {
    next_revision: u64,
    /// The last `seq` of the current server-side watch (0 before its first message).
    last_seq: u64,
    /// Events of a fragmented revision, and of any before it in the same messages.
    held: Vec<Event>,
    /// List then watch: each listed key's revision; an event for the key is kept only if it
    /// is newer. Emptied once the stream has passed every listed revision.
    listed: HashMap<String, u64>,
    listed_max: u64,
}

impl Cursor {
    pub(crate) fn new(next_revision: u64) -> Cursor {
        Cursor {
            next_revision,
            ..Cursor::default()
        }
    }

    /// Keeps events only if they are newer than what a list gave for their key.
    pub(crate) fn with_listed(mut self, listed: HashMap<String, u64>) -> Cursor {
        self.listed_max = listed.values().copied().max().unwrap_or(0);
        self.listed = listed;
        self.prune_listed();
        self
    }

    /// The next revision the stream expects: every one below it has been delivered.
    pub(crate) fn next_revision(&self) -> u64 {
        self.next_revision
    }

    /// A new server-side watch starts (at `next_revision`): its `seq` starts again at 1, and
    /// events held from a revision the old one did not finish are dropped (the new one
    /// sends that revision again, whole).
    pub(crate) fn restart(&mut self) {
        self.last_seq = 0;
        self.held.clear();
    }

    /// The first create of a stream without a start revision: the node starts after its
    /// store revision.
    pub(crate) fn start_after(&mut self, store_revision: u64) {
        if self.next_revision == 0 {
            self.next_revision = store_revision.saturating_add(1);
        }
    }

    pub(crate) fn on_message(&mut self, m: Message) -> Step {
        if m.seq <= self.last_seq {
            return Step::Repeat;
        }
        let expected = self.last_seq + 1;
        if m.seq != expected {
            return Step::Gap {
                expected,
                got: m.seq,
            };
        }
        self.last_seq = m.seq;
        for e in m.events {
            if e.revision < self.next_revision || self.listed_covers(&e) {
                continue;
            }
            self.held.push(e);
        }
        if m.fragment {
            return Step::Deliver(Vec::new());
        }
        // Not a fragment: every revision up to `store_revision` is complete.
        let last_held = self.held.last().map_or(0, |e| e.revision);
        let covered = m.store_revision.max(last_held);
        self.next_revision = self.next_revision.max(covered.saturating_add(1));
        self.prune_listed();
        Step::Deliver(std::mem::take(&mut self.held))
    }

    fn listed_covers(&self, e: &Event) -> bool {
        self.listed.get(&e.key).is_some_and(|&r| e.revision <= r)
    }

    fn prune_listed(&mut self) {
        if self.next_revision > self.listed_max {
            self.listed = HashMap::new();
        }
    }
}

/// What a stream does after its watch ended.
#[derive(Debug)]
pub(crate) enum AfterEnd {
    /// Create again at the stream's next revision (on any node, or the pinned one).
    Resume,
    /// The stream is over: yield this error (if any), then nothing.
    Finish(Option<ClientError>),
}

/// The stream's answer to an end message. `compacted` is answered with a resume whose
/// create gets the `compacted` reply with the cluster's compact revision, unless the end
/// names it.
pub(crate) fn after_end(end: &End) -> AfterEnd {
    match end.code.as_str() {
        end_code::CANCELLED => AfterEnd::Finish(None),
        end_code::COMPACTED => match end.compact_revision {
            Some(compact_revision) => {
                AfterEnd::Finish(Some(ClientError::Compacted { compact_revision }))
            }
            None => AfterEnd::Resume,
        },
        end_code::UNAUTHORIZED => AfterEnd::Finish(Some(ClientError::Server(WireError::new(
            ErrorKind::Unauthorized,
            format!("the watch was ended: {}", end.message),
        )))),
        // slow_consumer, no_leader, node_stopping, cluster_not_ready, and any code newer
        // than this client: the change log is still there, so resuming loses nothing.
        _ => AfterEnd::Resume,
    }
}

/// Whether a create that failed with `err` is tried again (after a pause): refusals
/// (`busy`, `cluster_not_ready`: this node cannot serve it now), no node answering (the
/// pinned node is down) and no reply in time. Everything else (`compacted`,
/// `unauthorized`, `bad_request`, ...) is final.
pub(crate) fn create_retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Server(e) => matches!(
            e.code,
            ErrorKind::Busy | ErrorKind::ClusterNotReady | ErrorKind::Timeout
        ),
        ClientError::NoResponders(_) | ClientError::Nats(_) | ClientError::Connect(_) => true,
        _ => false,
    }
}

/// How long a watch may stay silent before the stream takes it for dead (a killed node
/// sends no end): 3 progress intervals, at least 300 ms.
pub(crate) fn silence_limit(progress_ms: u64) -> Duration {
    Duration::from_millis(progress_ms.saturating_mul(3).max(300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_wire::watch::EventType;
    use serde_json::json;

    fn put(key: &str, revision: u64) -> Event {
        Event {
            kind: EventType::Put,
            key: key.into(),
            value: Some(json!(revision)),
            revision,
            create_revision: revision,
            version: 1,
            lease: 0,
            prev_value: None,
        }
    }

    fn msg(seq: u64, events: Vec<Event>, store_revision: u64, fragment: bool) -> Message {
        Message {
            watch_id: "w".into(),
            seq,
            events,
            store_revision,
            fragment,
        }
    }

    fn revisions(step: Step) -> Vec<u64> {
        match step {
            Step::Deliver(events) => events.iter().map(|e| e.revision).collect(),
            other => panic!("not a delivery: {other:?}"),
        }
    }

    #[test]
    fn messages_advance_the_next_revision_and_progress_notices_too() {
        let mut c = Cursor::new(5);
        assert_eq!(
            revisions(c.on_message(msg(1, vec![put("a", 5)], 5, false))),
            [5]
        );
        assert_eq!(c.next_revision(), 6);
        // A progress notice: no events, every revision up to 9 seen.
        assert!(revisions(c.on_message(msg(2, vec![], 9, false))).is_empty());
        assert_eq!(c.next_revision(), 10);
        assert_eq!(c.on_message(msg(2, vec![], 9, false)), Step::Repeat);
        assert_eq!(
            c.on_message(msg(4, vec![put("a", 12)], 12, false)),
            Step::Gap {
                expected: 3,
                got: 4
            }
        );
        // A gap changes nothing: the resume starts at 10.
        assert_eq!(c.next_revision(), 10);
    }

    #[test]
    fn a_resumed_watch_repeats_nothing_already_delivered() {
        let mut c = Cursor::new(1);
        revisions(c.on_message(msg(1, vec![put("a", 1), put("b", 2)], 2, false)));
        // The node acknowledged less than was seen (the ack was lost) and the new watch
        // starts at 2: revision 2 is dropped, 3 kept.
        c.restart();
        let step = c.on_message(msg(1, vec![put("b", 2), put("c", 3)], 3, false));
        assert_eq!(revisions(step), [3]);
        assert_eq!(c.next_revision(), 4);
    }

    #[test]
    fn fragments_are_held_until_their_revision_is_complete() {
        let mut c = Cursor::new(1);
        let first = c.on_message(msg(1, vec![put("a", 1), put("b", 2)], 1, true));
        assert!(revisions(first).is_empty());
        assert_eq!(c.next_revision(), 1);
        // The watch dies mid-revision: what was held is dropped, and the new watch sends
        // revision 1 and 2 again, whole.
        c.restart();
        revisions(c.on_message(msg(1, vec![put("a", 1)], 1, false)));
        revisions(c.on_message(msg(2, vec![put("b", 2)], 2, true)));
        let done = c.on_message(msg(3, vec![put("c", 2)], 2, false));
        assert_eq!(revisions(done), [2, 2]);
        assert_eq!(c.next_revision(), 3);
    }

    #[test]
    fn list_then_watch_drops_events_the_list_already_gave() {
        let listed = HashMap::from([("a".to_string(), 7), ("b".to_string(), 4)]);
        let mut c = Cursor::new(5).with_listed(listed);
        let step = c.on_message(msg(
            1,
            vec![put("a", 6), put("b", 6), put("a", 8)],
            8,
            false,
        ));
        // a@6 is older than the listed a@7; b@6 is newer than the listed b@4.
        let kept: Vec<(String, u64)> = match step {
            Step::Deliver(e) => e.into_iter().map(|e| (e.key, e.revision)).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(kept, [("b".into(), 6), ("a".into(), 8)]);
        assert!(c.listed.is_empty(), "past every listed revision");
    }

    #[test]
    fn only_compacted_cancelled_and_unauthorized_end_a_stream() {
        let end = |code: &str, compact_revision| End {
            code: code.into(),
            message: "m".into(),
            resume_revision: 3,
            compact_revision,
        };
        for code in [
            "slow_consumer",
            "no_leader",
            "node_stopping",
            "cluster_not_ready",
            "a_newer_code",
        ] {
            assert!(
                matches!(after_end(&end(code, None)), AfterEnd::Resume),
                "{code}"
            );
        }
        assert!(matches!(
            after_end(&end("cancelled", None)),
            AfterEnd::Finish(None)
        ));
        assert!(matches!(
            after_end(&end("compacted", Some(9))),
            AfterEnd::Finish(Some(ClientError::Compacted {
                compact_revision: 9
            }))
        ));
        // Without the compact revision, a create asks for it.
        assert!(matches!(
            after_end(&end("compacted", None)),
            AfterEnd::Resume
        ));
        assert!(matches!(
            after_end(&end("unauthorized", None)),
            AfterEnd::Finish(Some(e)) if e.code() == ErrorKind::Unauthorized
        ));
    }

    #[test]
    fn refusals_and_silence_are_retried_other_create_errors_are_final() {
        let server = |k| ClientError::Server(WireError::new(k, "m"));
        assert!(create_retryable(&server(ErrorKind::Busy)));
        assert!(create_retryable(&server(ErrorKind::ClusterNotReady)));
        assert!(create_retryable(&ClientError::NoResponders("x".into())));
        assert!(!create_retryable(&server(ErrorKind::BadRequest)));
        assert!(!create_retryable(&server(ErrorKind::Unauthorized)));
        assert!(!create_retryable(&ClientError::Compacted {
            compact_revision: 4
        }));
        assert_eq!(silence_limit(1000), Duration::from_secs(3));
        assert_eq!(silence_limit(0), Duration::from_millis(300));
    }
}
