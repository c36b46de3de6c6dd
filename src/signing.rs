//! Message signing between nodes (`cluster.secret`): an HMAC-SHA256 in the `Concord-Mac`
//! header of every Raft RPC, every RPC reply and every forwarded client request.
//!
//! A request's MAC covers the subject and the body (for Raft RPCs the body carries the
//! cluster name and id, the sender and the target). A reply's MAC covers the request's MAC
//! and the reply body, so a reply published onto someone else's inbox does not verify.
//! Every part is length-prefixed and the two kinds are domain-separated, so no request MAC
//! can be replayed as a reply MAC or the other way round.

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
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Unsigned => "unsigned",
            Rejected::Forged => "forged",
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
}
