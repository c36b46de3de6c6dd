//! What a forwarded request carries beyond the client's own message, and what the receiving
//! node checks before serving it: the headers a follower adds (`Concord-Forwarded`,
//! `Concord-Cluster-Id`, `Concord-Term`, `Concord-Nonce`, all covered by the MAC), and, once
//! the MAC verified, the receiver's admission of them (see [`admit`]).
//!
//! Replay: a MAC alone verifies forever, so a captured forwarded put could be re-published
//! later and applied again. The MAC therefore also covers the sender's Raft term and a
//! nonce, and the receiver refuses a request from another term, and a nonce it has already
//! seen in its current term. No clocks are compared: a nonce is the sender's process-random
//! epoch and a sequence number that only grows in that process; the receiver keeps, per
//! sender and epoch, a sliding window of the sequence numbers it saw (as IPsec does), and
//! forgets them all when its term changes. Memory stays bounded over a term of any length.
//!
//! A refusal for term or nonce answers `cluster_not_ready`, signed: the request certainly
//! was not served, so the sender may (and does) retry it with a fresh term and nonce.
//!
//! Never: hold the window lock across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_nats::{HeaderMap, Message};

use super::Ctx;
use crate::error::{cluster_not_ready, unauthorized, WireError};
use crate::signing::{Direction, Rejected};
use crate::subjects::{HEADER_CLUSTER_ID, HEADER_FORWARDED, HEADER_NONCE, HEADER_TERM};

/// Sequence numbers remembered per sender and epoch: a request more than this many behind
/// the newest one seen from its sender is refused (and retried by the sender). Forwards are
/// numbered just before they are published, so only requests racing each other between
/// numbering and publishing arrive out of order, by far fewer than this.
const WINDOW: u64 = 1024;
const WINDOW_WORDS: usize = (WINDOW / 64) as usize;
/// Epochs (sender restarts) remembered per sender in one term. A sender past it is refused
/// until the term changes: forgetting an epoch would let its captured requests replay.
const MAX_EPOCHS_PER_SENDER: usize = 64;
/// Senders remembered in one term (only signed requests get this far: they are nodes).
const MAX_WINDOWS: usize = 4096;

/// This node's side of forwarding: the nonces it sends and those it has received.
pub struct Forwarding {
    /// Random per process: a restarted node never repeats its nonces from before.
    epoch: u64,
    next_seq: AtomicU64,
    // std `Mutex`: held only for a map lookup and a few bit operations.
    seen: Mutex<Seen>,
}

/// Nonces received in `term`, per (sender, epoch).
#[derive(Default)]
struct Seen {
    term: u64,
    windows: HashMap<(u64, u64), Window>,
}

/// The sequence numbers seen from one sender epoch: `top` is the newest, and bit `s % WINDOW`
/// of `bits` says whether `s` was seen, for `s` in `top - WINDOW + 1 ..= top`.
struct Window {
    top: u64,
    bits: [u64; WINDOW_WORDS],
}

impl Window {
    fn starting_at(seq: u64) -> Window {
        let mut w = Window {
            top: seq,
            bits: [0; WINDOW_WORDS],
        };
        w.set(seq);
        w
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (word, bit) = Window::slot(seq);
        self.bits[word] |= bit;
    }

    fn clear(&mut self, seq: u64) {
        let (word, bit) = Window::slot(seq);
        self.bits[word] &= !bit;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, bit) = Window::slot(seq);
        self.bits[word] & bit != 0
    }

    /// Records `seq`; refuses one seen before or too far behind the newest.
    fn accept(&mut self, seq: u64) -> Result<(), &'static str> {
        if seq > self.top {
            // The slots of the sequence numbers now leaving the window are reused: clear them.
            if seq - self.top >= WINDOW {
                self.bits = [0; WINDOW_WORDS];
            } else {
                for s in self.top + 1..=seq {
                    self.clear(s);
                }
            }
            self.top = seq;
            self.set(seq);
            return Ok(());
        }
        if self.top - seq >= WINDOW {
            return Err("its nonce is too old");
        }
        if self.is_set(seq) {
            return Err("its nonce was already used");
        }
        self.set(seq);
        Ok(())
    }
}

impl Default for Forwarding {
    fn default() -> Self {
        Forwarding::new()
    }
}

impl Forwarding {
    pub fn new() -> Forwarding {
        Forwarding {
            epoch: uuid::Uuid::new_v4().as_u64_pair().0,
            next_seq: AtomicU64::new(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// A nonce never sent before by this process.
    fn next_nonce(&self) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{seq}", self.epoch)
    }

    /// Binds a request to `term` and a fresh nonce (`Concord-Term`, `Concord-Nonce`).
    pub fn stamp(&self, headers: &mut HeaderMap, term: u64) {
        headers.insert(HEADER_TERM, term.to_string().as_str());
        headers.insert(HEADER_NONCE, self.next_nonce().as_str());
    }

    /// Records a nonce received in `term`; refuses one seen before in that term.
    fn check(&self, term: u64, sender: u64, epoch: u64, seq: u64) -> Result<(), &'static str> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.term != term {
            // A new term: every request of the old one is refused by its term already.
            seen.term = term;
            seen.windows.clear();
        }
        if let Some(w) = seen.windows.get_mut(&(sender, epoch)) {
            return w.accept(seq);
        }
        let epochs = seen.windows.keys().filter(|(s, _)| *s == sender).count();
        if epochs >= MAX_EPOCHS_PER_SENDER || seen.windows.len() >= MAX_WINDOWS {
            return Err("its sender restarted too often in this term");
        }
        seen.windows
            .insert((sender, epoch), Window::starting_at(seq));
        Ok(())
    }
}

/// The headers of a request this node forwards: the client's (its credential may be
/// there), marked as a node-to-node request of this node (see [`mark`]) in its current term.
/// The inbox signs them (see `route::SIGNED_FORWARD_HEADERS`).
pub fn forward_headers(ctx: &Ctx, client: Option<&HeaderMap>) -> HeaderMap {
    let mut headers = client.cloned().unwrap_or_default();
    let term = ctx.consensus.raft.metrics().borrow().current_term;
    mark(
        &mut headers,
        ctx.cluster.me,
        ctx.consensus.view.cluster_id(),
        Some((&ctx.security.forwarding, term)),
    );
    headers
}

/// Marks a node-to-node request (a forwarded one, or a node's own control request): sent by
/// `me` (`Concord-Forwarded`), for `cluster_id` (sent empty while unknown, so a client's own
/// value cannot stand in for it), and, when `stamp` is given, bound to that term and a fresh
/// nonce.
pub fn mark(
    headers: &mut HeaderMap,
    me: u64,
    cluster_id: Option<uuid::Uuid>,
    stamp: Option<(&Forwarding, u64)>,
) {
    headers.insert(HEADER_FORWARDED, me.to_string().as_str());
    match cluster_id {
        Some(id) => headers.insert(HEADER_CLUSTER_ID, id.to_string().as_str()),
        None => headers.insert(HEADER_CLUSTER_ID, ""),
    }
    if let Some((forwarding, term)) = stamp {
        forwarding.stamp(headers, term);
    }
}

fn header<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().trim())
}

/// On the receiving node, after the MAC of a forwarded request verified: refuses one from
/// another cluster (`unauthorized`), from another term or with a nonce already seen
/// (`cluster_not_ready`: not served, so the sender may retry it). Refusals other than a
/// stale term are counted with the rejected messages.
///
/// Without `cluster.secret` nothing here can be trusted (anyone may write any header), so
/// only a cluster id that is present and different is refused: a misconfiguration, not an
/// attack.
pub fn admit(ctx: &Ctx, msg: &Message, signed: bool) -> Result<(), WireError> {
    let rejected = |why: Rejected| {
        ctx.security
            .rejections
            .record(Direction::Request, why, &msg.subject, msg.reply.as_deref());
    };
    let asks_about_state = is_control_read(ctx, msg);
    if let Some(ours) = ctx.consensus.view.cluster_id() {
        let theirs = header(msg, HEADER_CLUSTER_ID).filter(|t| !t.is_empty());
        let other = match theirs {
            Some(t) => t.parse::<uuid::Uuid>().ok() != Some(ours),
            // A node that does not know its cluster id yet (a new one, before it is
            // added) may still ask who serves here.
            None => signed && !asks_about_state,
        };
        if other {
            // Anyone may write the header when there is no secret: quoted bounded.
            let shown = crate::limits::excerpt(theirs.unwrap_or(""));
            ctx.security
                .rejections
                .record_wrong_cluster(&msg.subject, &shown, &ours);
            return Err(unauthorized(format!(
                "node-to-node request from cluster id '{shown}', this node is in {ours}"
            )));
        }
    }
    // A node's status and members questions change nothing, so a replay gains nothing, and
    // their sender may not share this node's term (a node starting, a node not yet added).
    if !signed || asks_about_state {
        return Ok(());
    }
    let term = ctx.consensus.raft.metrics().borrow().current_term;
    let theirs = header(msg, HEADER_TERM).and_then(|t| t.parse::<u64>().ok());
    if theirs != Some(term) {
        // A term change is routine (an election): not counted.
        return Err(cluster_not_ready(format!(
            "forwarded in term {}, node {} is in term {term}; retry",
            theirs.map_or_else(|| "?".to_string(), |t| t.to_string()),
            ctx.cluster.me
        )));
    }
    let sender = header(msg, HEADER_FORWARDED).and_then(|s| s.parse::<u64>().ok());
    let nonce = header(msg, HEADER_NONCE).and_then(parse_nonce);
    let checked = match (sender, nonce) {
        (Some(sender), Some((epoch, seq))) => {
            ctx.security.forwarding.check(term, sender, epoch, seq)
        }
        _ => Err("it carries no valid sender or nonce"),
    };
    checked.map_err(|why| {
        rejected(Rejected::Replayed);
        cluster_not_ready(format!(
            "forwarded request refused as a possible replay: {why}; retry"
        ))
    })
}

/// `status` and `members`, to a node or to the cluster: the questions a node asks other
/// nodes (startup prefix check, ping, removal watch) and the members query a follower
/// relays to the leader.
fn is_control_read(ctx: &Ctx, msg: &Message) -> bool {
    use crate::subjects::{Addressed, AdminOp};
    match ctx.cluster.subjects.classify(&msg.subject) {
        Some(Addressed::Admin(op)) => {
            matches!(AdminOp::parse(op), Some(AdminOp::Status | AdminOp::Members))
        }
        _ => false,
    }
}

/// `<16 hex digits>-<decimal>`.
fn parse_nonce(s: &str) -> Option<(u64, u64)> {
    let (epoch, seq) = s.split_once('-')?;
    if epoch.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(epoch, 16).ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #20 item 8: each nonce is accepted once per term, late ones within the window
    /// are accepted once, ones past the window are refused, and a new term forgets all.
    #[test]
    fn nonce_window_accepts_each_once_per_term() {
        let f = Forwarding::new();
        assert_eq!(f.check(3, 1, 7, 10), Ok(()));
        assert!(f.check(3, 1, 7, 10).is_err(), "seen");
        assert_eq!(f.check(3, 1, 7, 12), Ok(()));
        assert_eq!(f.check(3, 1, 7, 11), Ok(()), "late but in the window");
        assert!(f.check(3, 1, 7, 11).is_err());
        assert_eq!(f.check(3, 2, 7, 10), Ok(()), "another sender");
        assert_eq!(f.check(3, 1, 8, 10), Ok(()), "another epoch");
        assert_eq!(f.check(3, 1, 7, 12 + WINDOW), Ok(()));
        assert!(f.check(3, 1, 7, 12).is_err(), "past the window");
        assert_eq!(f.check(3, 1, 7, 13), Ok(()), "the oldest in the window");
        assert_eq!(f.check(3, 1, 7, 10 + WINDOW), Ok(()), "10's slot, reused");
        assert!(f.check(3, 1, 7, 10 + WINDOW).is_err(), "seen");
        assert!(f.check(3, 1, 7, 12 + WINDOW).is_err(), "seen");
        // Advancing by less than the window clears only the slots it passes.
        assert_eq!(f.check(3, 1, 7, 13 + WINDOW), Ok(()));
        assert!(f.check(3, 1, 7, 13).is_err(), "now past the window");
        assert!(f.check(3, 1, 7, 10 + WINDOW).is_err(), "still seen");
        assert_eq!(f.check(4, 1, 7, 10), Ok(()), "a new term forgets");
        for epoch in 100..100 + MAX_EPOCHS_PER_SENDER as u64 - 1 {
            assert_eq!(f.check(4, 1, epoch, 1), Ok(()));
        }
        assert!(f.check(4, 1, 999, 1).is_err(), "too many epochs");
        assert_eq!(f.check(4, 2, 999, 1), Ok(()), "other senders unaffected");
    }

    #[test]
    fn nonces_parse_and_never_repeat() {
        let f = Forwarding::new();
        let (a, b) = (f.next_nonce(), f.next_nonce());
        assert_ne!(a, b);
        let (ea, sa) = parse_nonce(&a).expect("parses");
        let (eb, sb) = parse_nonce(&b).expect("parses");
        assert_eq!(ea, eb);
        assert!(sb > sa);
        assert_eq!(parse_nonce("12-3"), None);
        assert_eq!(parse_nonce("zzzzzzzzzzzzzzzz-3"), None);
        assert_eq!(parse_nonce("0000000000000001-x"), None);
    }
}
