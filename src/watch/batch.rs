//! Cutting a watch's events into messages: whole revisions per message while they fit in
//! [`MESSAGE_BUDGET`], a revision larger than that in fragments, at most as many messages
//! as the window has room for. Pure: the stream task reads the events and sends what this
//! gives.

use fjall::Slice;

use super::message;
use super::request::Spec;
use crate::store::history::ChangeEvent;

/// Bytes of events per message (a NATS message is 1 MiB by default).
pub const MESSAGE_BUDGET: usize = 256 * 1024;

/// One message to send: its events (joined by commas), how many, the revision it covers
/// through, and whether its revision goes on in the next message.
#[derive(Debug, Default, PartialEq)]
pub struct Out {
    pub events: Vec<u8>,
    pub count: usize,
    pub store_revision: u64,
    pub fragment: bool,
}

impl Out {
    fn push(&mut self, event: &[u8]) {
        if self.count > 0 {
            self.events.push(b',');
        }
        self.events.extend_from_slice(event);
        self.count += 1;
    }
}

pub struct Built {
    pub messages: Vec<Out>,
    /// The first revision not covered by them.
    pub next: u64,
}

/// Messages for `events` (in revision order; those before `next` are skipped), which cover
/// every revision through `last`. `room` messages at most, unless `must_send` (nothing in
/// flight: a revision larger than the window still goes, whole). `prev` looks up the
/// previous version of an event's key.
pub fn build<'a>(
    events: impl Iterator<Item = &'a ChangeEvent>,
    (next, last): (u64, u64),
    spec: &Spec,
    room: usize,
    must_send: bool,
    prev: &mut dyn FnMut(&ChangeEvent) -> Option<Slice>,
) -> Built {
    let mut messages: Vec<Out> = Vec::new();
    let mut cur = Out::default();
    let mut covered = next.saturating_sub(1);
    let mut events = events.filter(|e| e.revision >= next).peekable();
    let mut stopped = false;
    while let Some(first) = events.peek() {
        let revision = first.revision;
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        while let Some(e) = events.next_if(|e| e.revision == revision) {
            if spec.matches(e) {
                let p = match spec.wants_prev() && e.prev_revision > 0 {
                    true => e.prev_inline.clone().or_else(|| prev(e)),
                    false => None,
                };
                let mut out = Vec::new();
                message::event(&mut out, e, spec, p.as_ref());
                encoded.push(out);
            }
        }
        if encoded.is_empty() {
            covered = revision;
            continue;
        }
        let bytes: usize = encoded.iter().map(|e| e.len() + 1).sum();
        let fits = cur.events.len() + bytes <= MESSAGE_BUDGET;
        if cur.count > 0 && !fits {
            cur.store_revision = covered;
            messages.push(std::mem::take(&mut cur));
        }
        let pieces = fragments(&encoded);
        // A revision that fits joins (or starts) the current message; one that does not
        // takes a message per fragment.
        let needed = messages.len() + pieces.len();
        let nothing_yet = messages.is_empty() && cur.count == 0;
        if needed > room && !(must_send && nothing_yet) {
            stopped = true;
            break;
        }
        if pieces.len() == 1 {
            for e in &encoded {
                cur.push(e);
            }
        } else {
            for (i, piece) in pieces.iter().enumerate() {
                let mut out = Out::default();
                for e in &encoded[piece.clone()] {
                    out.push(e);
                }
                out.store_revision = revision;
                out.fragment = i + 1 < pieces.len();
                messages.push(out);
            }
        }
        covered = revision;
    }
    if !stopped {
        covered = covered.max(last);
    }
    if cur.count > 0 {
        cur.store_revision = covered;
        messages.push(cur);
    }
    Built {
        messages,
        next: covered + 1,
    }
}

/// `encoded` cut into runs of at most [`MESSAGE_BUDGET`] bytes (one run when it fits).
fn fragments(encoded: &[Vec<u8>]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in encoded.iter().enumerate() {
        if i > start && bytes + e.len() + 1 > MESSAGE_BUDGET {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += e.len() + 1;
    }
    out.push(start..encoded.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::history::{EventKind, KeyFilter};
    use crate::store::keys::{encode_record, KeyMeta};

    fn spec(prefix: &str) -> Spec {
        Spec {
            filter: KeyFilter::Prefix(prefix.into()),
            start: 0,
            prev_value: false,
            types: [true; 3],
            keys_only: false,
            deliver: "x".into(),
            window: 8,
            token: None,
        }
    }

    fn put(revision: u64, key: &str, bytes: usize) -> ChangeEvent {
        ChangeEvent {
            kind: EventKind::Put,
            revision,
            key: key.into(),
            record: Slice::from(encode_record(
                &KeyMeta::plain(revision),
                format!("\"{}\"", "v".repeat(bytes)).as_bytes(),
            )),
            prev_revision: 0,
            prev_inline: None,
            prev_large: None,
            stamp: 0,
        }
    }

    fn run(events: &[ChangeEvent], next: u64, last: u64, spec: &Spec, room: usize) -> Built {
        build(events.iter(), (next, last), spec, room, false, &mut |_| {
            None
        })
    }

    #[test]
    fn whole_revisions_go_together_and_unmatched_ones_are_covered() {
        let events = [
            put(3, "a/1", 1),
            put(4, "b/1", 1),
            put(5, "a/2", 1),
            put(5, "a/3", 1),
        ];
        let b = run(&events, 3, 9, &spec("a/"), 8);
        assert_eq!(b.messages.len(), 1);
        assert_eq!(b.messages[0].count, 3);
        assert_eq!(
            b.messages[0].store_revision, 9,
            "covers through the last revision"
        );
        assert_eq!(b.next, 10);
        let b = run(&events, 4, 9, &spec("a/"), 8);
        assert_eq!(
            b.messages[0].count, 2,
            "revisions before `next` are skipped"
        );
        let b = run(&events, 3, 9, &spec("c/"), 8);
        assert!(b.messages.is_empty());
        assert_eq!(b.next, 10, "nothing matched, everything covered");
    }

    #[test]
    fn large_revisions_are_fragmented_and_the_window_bounds_messages() {
        let big = MESSAGE_BUDGET / 3;
        let mut events = vec![put(2, "a/0", big), put(2, "a/1", big)];
        events.extend((0..5).map(|i| put(3, &format!("a/x{i}"), big)));
        events.push(put(4, "a/z", 1));
        let b = run(&events, 2, 4, &spec("a/"), 8);
        let shape: Vec<(usize, u64, bool)> = b
            .messages
            .iter()
            .map(|m| (m.count, m.store_revision, m.fragment))
            .collect();
        assert_eq!(
            shape,
            vec![
                (2, 2, false),
                (2, 3, true),
                (2, 3, true),
                (1, 3, false),
                (1, 4, false)
            ]
        );
        assert!(b.messages.iter().all(|m| m.events.len() <= MESSAGE_BUDGET));
        // Room for two: revision 3's fragments must wait whole.
        let b = run(&events, 2, 4, &spec("a/"), 2);
        assert_eq!(b.messages.len(), 1);
        assert_eq!(b.next, 3);
        // Nothing in flight: a revision larger than the window still goes.
        let b = build(events.iter(), (3, 4), &spec("a/"), 1, true, &mut |_| None);
        assert_eq!(b.messages.len(), 3);
        assert_eq!(b.next, 4);
    }
}
