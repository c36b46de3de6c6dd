//! Message signing between nodes (`cluster.secret`): an HMAC-SHA256 in the `Concord-Mac`
//! header of every Raft RPC, every RPC reply and every forwarded client request.
//!
//! A request's MAC covers the subject and the body (for Raft RPCs the body carries the
//! cluster name and id, the sender and the target, and the MAC also covers the reply
//! subject, which is unique per call). A reply's MAC covers the request's MAC and the reply
//! body, so a reply published onto someone else's inbox, or an old reply replayed onto a
//! new call, does not verify. What was dropped is counted in [`Rejections`].
//! Every part is length-prefixed and the two kinds are domain-separated, so no request MAC
//! can be replayed as a reply MAC or the other way round.
//!
//! Node-to-node requests also name the sender's cluster id in `Concord-Cluster-Id`
//! ([`set_cluster_id`], [`check_cluster_id`]); a request for another cluster id is refused
//! and counted with the rest.

use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Header carrying a MAC, as 64 lowercase hex digits.
pub const HEADER_MAC: &str = "Concord-Mac";

/// One MAC: 32 bytes of HMAC-SHA256.
pub type Mac = [u8; 32];

const DOMAIN_REQUEST: &[u8] = b"concord-request-v1";
const DOMAIN_REPLY: &[u8] = b"concord-reply-v1";

/// Signs and verifies with the cluster secret. Cheap to clone.
#[derive(Clone)]
pub struct Signer {
    key: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        // HMAC takes keys of any length; this cannot fail.
        let key = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Signer { key }
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut m = self.key.clone();
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    /// MAC of a request: its subject, the extra fields named by the caller (sender, cluster
    /// id, forwarded headers) and its body.
    pub fn request_mac(&self, subject: &str, extra: &[&[u8]], body: &[u8]) -> Mac {
        let mut parts: Vec<&[u8]> = vec![DOMAIN_REQUEST, subject.as_bytes()];
        parts.extend_from_slice(extra);
        parts.push(body);
        self.mac(&parts).finalize().into_bytes().into()
    }

    /// MAC of a reply to the request whose MAC is `request`.
    pub fn reply_mac(&self, request: &Mac, body: &[u8]) -> Mac {
        self.mac(&[DOMAIN_REPLY, request, body])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a request MAC in constant time; `header` is the hex text as received.
    pub fn verify_request(
        &self,
        subject: &str,
        extra: &[&[u8]],
        body: &[u8],
        header: Option<&str>,
    ) -> Result<Mac, Rejected> {
        let given = parse_hex(header.ok_or(Rejected::Unsigned)?).ok_or(Rejected::Forged)?;
        let mut parts: Vec<&[u8]> = vec![DOMAIN_REQUEST, subject.as_bytes()];
        parts.extend_from_slice(extra);
        parts.push(body);
        self.mac(&parts)
            .verify_slice(&given)
            .map_err(|_| Rejected::Forged)?;
        Ok(given)
    }

    /// Checks a reply MAC in constant time.
    pub fn verify_reply(
        &self,
        request: &Mac,
        body: &[u8],
        header: Option<&str>,
    ) -> Result<(), Rejected> {
        let given = parse_hex(header.ok_or(Rejected::Unsigned)?).ok_or(Rejected::Forged)?;
        self.mac(&[DOMAIN_REPLY, request, body])
            .verify_slice(&given)
            .map_err(|_| Rejected::Forged)
    }
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("unsigned")]
    Unsigned,
    #[error("bad signature")]
    Forged,
    /// Signed with the secret, but for another cluster id.
    #[error("from another cluster")]
    OtherCluster,
    /// Signed, but its nonce was already seen in this term (or is out of the window).
    #[error("replayed")]
    Replayed,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Unsigned => "unsigned",
            Rejected::Forged => "forged",
            Rejected::OtherCluster => "other_cluster",
            Rejected::Replayed => "replayed",
        }
    }
}

/// The `Concord-Mac` header carrying `mac`.
pub fn mac_header(mac: &Mac) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_MAC, to_hex(mac).as_str());
    headers
}

/// The `Concord-Mac` header of a received message, as text.
pub fn header_of(msg: &async_nats::Message) -> Option<&str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(HEADER_MAC))
        .map(|v| v.as_str())
}

/// Verifies the MAC of a request another node sent: over its subject, its reply subject
/// (unique per call, which ties the reply signed later to this one call), the values of
/// `signed_headers` in order (empty when absent), and its body. A rejection is counted in
/// `rejections`. Returns the MAC to bind the reply to.
///
/// Both inbound paths use it: Raft RPCs (`raft::service`, no signed headers) and forwarded
/// client requests (`api::route`, the forwarding headers).
pub fn verify_received(
    signer: &Signer,
    rejections: &Rejections,
    msg: &async_nats::Message,
    signed_headers: &[&str],
) -> Result<Mac, Rejected> {
    let headers = msg.headers.as_ref();
    let mut extra: Vec<&[u8]> = Vec::with_capacity(1 + signed_headers.len());
    extra.push(msg.reply.as_deref().unwrap_or_default().as_bytes());
    extra.extend(signed_headers.iter().map(|name| {
        headers
            .and_then(|h| h.get(*name))
            .map(|v| v.as_str().as_bytes())
            .unwrap_or(b"")
    }));
    signer
        .verify_request(&msg.subject, &extra, &msg.payload, header_of(msg))
        .inspect_err(|why| {
            rejections.record(Direction::Request, *why, &msg.subject, msg.reply.as_deref());
        })
}

/// Which way a dropped message was travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// An RPC arriving at this node.
    Request,
    /// A reply arriving on this node's RPC inbox.
    Reply,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Reply => "reply",
        }
    }
}

/// Node-to-node messages this node dropped because they were unsigned or forged. One per
/// node, shared by the outbound and inbound RPC paths and read by `admin.status`.
#[derive(Debug, Default)]
pub struct Rejections {
    unsigned_requests: AtomicU64,
    forged_requests: AtomicU64,
    unsigned_replies: AtomicU64,
    forged_replies: AtomicU64,
    other_cluster: AtomicU64,
    replayed: AtomicU64,
}

/// A copy of the [`Rejections`] counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RejectionCounts {
    pub unsigned_requests: u64,
    pub forged_requests: u64,
    pub unsigned_replies: u64,
    pub forged_replies: u64,
    /// Signed requests refused for naming another cluster id.
    pub other_cluster: u64,
    /// Signed forwarded requests refused as replays (nonce seen or out of the window).
    pub replayed: u64,
}

impl RejectionCounts {
    pub fn unsigned(&self) -> u64 {
        self.unsigned_requests + self.unsigned_replies
    }

    pub fn forged(&self) -> u64 {
        self.forged_requests + self.forged_replies
    }

    pub fn total(&self) -> u64 {
        self.unsigned() + self.forged() + self.other_cluster + self.replayed
    }
}

impl Rejections {
    /// Counts one dropped message and logs it: the first of each kind at `warn` (so a
    /// misconfigured peer shows up in the log once), later ones at `debug` (so a flood of
    /// forgeries cannot flood the log). `subject` is where it arrived, `reply` the reply
    /// subject it named (which identifies the sending connection's inbox).
    pub fn record(&self, direction: Direction, why: Rejected, subject: &str, reply: Option<&str>) {
        let counter = match (direction, why) {
            (Direction::Request, Rejected::Unsigned) => &self.unsigned_requests,
            (Direction::Request, Rejected::Forged) => &self.forged_requests,
            (Direction::Reply, Rejected::Unsigned) => &self.unsigned_replies,
            (Direction::Reply, Rejected::Forged) => &self.forged_replies,
            (_, Rejected::OtherCluster) => &self.other_cluster,
            (_, Rejected::Replayed) => &self.replayed,
        };
        let first = counter.fetch_add(1, Ordering::Relaxed) == 0;
        metrics::counter!(
            crate::observe::metrics::RAFT_RPC_REJECTED,
            "reason" => why.as_str(),
            "direction" => direction.as_str()
        )
        .increment(1);
        let reply = reply.unwrap_or("-");
        if first {
            tracing::warn!(
                direction = direction.as_str(),
                reason = why.as_str(),
                subject,
                reply,
                "dropped a raft rpc {} that is {}: is cluster.secret the same on every node? \
                 (further ones are logged at debug and counted in admin status)",
                direction.as_str(),
                why.as_str()
            );
        } else {
            tracing::debug!(
                direction = direction.as_str(),
                reason = why.as_str(),
                subject,
                reply,
                "dropped a raft rpc"
            );
        }
    }

    pub fn counts(&self) -> RejectionCounts {
        RejectionCounts {
            unsigned_requests: self.unsigned_requests.load(Ordering::Relaxed),
            forged_requests: self.forged_requests.load(Ordering::Relaxed),
            unsigned_replies: self.unsigned_replies.load(Ordering::Relaxed),
            forged_replies: self.forged_replies.load(Ordering::Relaxed),
            other_cluster: self.other_cluster.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
        }
    }

    /// Counts one node-to-node request refused because it names another cluster id, and
    /// logs it: the first loudly (at `error`, naming both ids: two clusters share a subject
    /// prefix, or a node's data dir belongs to another cluster), later ones at `debug`.
    pub fn record_wrong_cluster(&self, subject: &str, theirs: &str, ours: &uuid::Uuid) {
        let first = self.other_cluster.fetch_add(1, Ordering::Relaxed) == 0;
        metrics::counter!(
            crate::observe::metrics::RAFT_RPC_REJECTED,
            "reason" => Rejected::OtherCluster.as_str(),
            "direction" => Direction::Request.as_str()
        )
        .increment(1);
        if first {
            tracing::error!(
                subject,
                their_cluster_id = theirs,
                our_cluster_id = %ours,
                "refused a node-to-node request for cluster id {theirs}: this node is in cluster id {ours}. \
                 Two clusters share this subject prefix, or a node holds another cluster's data \
                 (further ones are logged at debug and counted in admin status)"
            );
        } else {
            tracing::debug!(
                subject,
                their_cluster_id = theirs,
                "refused a request for another cluster id"
            );
        }
    }
}

pub fn to_hex(mac: &Mac) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in mac {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

fn parse_hex(s: &str) -> Option<Mac> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply_round_trip() {
        let s = Signer::new(b"0123456789abcdef-secret");
        let mac = s.request_mac("p.raft.c.2.append", &[b"1"], b"body");
        let hex = to_hex(&mac);
        assert_eq!(
            s.verify_request("p.raft.c.2.append", &[b"1"], b"body", Some(&hex)),
            Ok(mac)
        );
        let reply = s.reply_mac(&mac, b"ok");
        assert_eq!(s.verify_reply(&mac, b"ok", Some(&to_hex(&reply))), Ok(()));
    }

    #[test]
    fn any_change_is_rejected() {
        let s = Signer::new(b"0123456789abcdef-secret");
        let mac = to_hex(&s.request_mac("a.b", &[b"1"], b"body"));
        let v = |subj: &str, extra: &[u8], body: &[u8], h: Option<&str>| {
            s.verify_request(subj, &[extra], body, h)
        };
        assert_eq!(v("a.c", b"1", b"body", Some(&mac)), Err(Rejected::Forged));
        assert_eq!(v("a.b", b"2", b"body", Some(&mac)), Err(Rejected::Forged));
        assert_eq!(v("a.b", b"1", b"bodY", Some(&mac)), Err(Rejected::Forged));
        assert_eq!(v("a.b", b"1", b"body", None), Err(Rejected::Unsigned));
        assert_eq!(v("a.b", b"1", b"body", Some("zz")), Err(Rejected::Forged));
        let other = Signer::new(b"another-secret-of-16+");
        let theirs = to_hex(&other.request_mac("a.b", &[b"1"], b"body"));
        assert_eq!(
            v("a.b", b"1", b"body", Some(&theirs)),
            Err(Rejected::Forged)
        );
        // A request MAC is not a valid reply MAC, and a reply binds to its request.
        let req = s.request_mac("a.b", &[b"1"], b"body");
        let forged = to_hex(&s.request_mac("a.b", &[], b"ok"));
        assert_eq!(
            s.verify_reply(&req, b"ok", Some(&forged)),
            Err(Rejected::Forged)
        );
        let other_req = s.request_mac("a.b", &[b"2"], b"body");
        let reply = to_hex(&s.reply_mac(&other_req, b"ok"));
        assert_eq!(
            s.verify_reply(&req, b"ok", Some(&reply)),
            Err(Rejected::Forged)
        );
    }

    #[test]
    fn rejections_count_by_kind() {
        let r = Rejections::default();
        r.record(
            Direction::Request,
            Rejected::Unsigned,
            "p.raft.c.2.append",
            None,
        );
        r.record(
            Direction::Request,
            Rejected::Forged,
            "p.raft.c.2.append",
            Some("_INBOX.x.1"),
        );
        r.record(
            Direction::Request,
            Rejected::Forged,
            "p.raft.c.2.vote",
            None,
        );
        r.record(Direction::Reply, Rejected::Forged, "_INBOX.x.7", None);
        let c = r.counts();
        assert_eq!(
            c,
            RejectionCounts {
                unsigned_requests: 1,
                forged_requests: 2,
                unsigned_replies: 0,
                forged_replies: 1,
                other_cluster: 0,
                replayed: 0,
            }
        );
        assert_eq!((c.unsigned(), c.forged(), c.total()), (1, 3, 4));
    }

    #[test]
    fn mac_header_round_trips() {
        let s = Signer::new(b"0123456789abcdef-secret");
        let mac = s.request_mac("a.b", &[], b"x");
        let msg = async_nats::Message {
            subject: "a.b".into(),
            reply: None,
            payload: bytes::Bytes::from_static(b"x"),
            headers: Some(mac_header(&mac)),
            status: None,
            description: None,
            length: 0,
        };
        assert_eq!(s.verify_request("a.b", &[], b"x", header_of(&msg)), Ok(mac));
    }
}
