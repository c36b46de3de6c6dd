//! Tokens: how they are made, what the cluster keeps of them (a SHA-256 digest and public
//! metadata, never the token), and the in-memory table every request is checked against.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// get and scan, status and members.
    Read,
    /// Also put and delete.
    Readwrite,
    /// Everything, including token and membership operations.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Readwrite => "readwrite",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Read, Role::Readwrite, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SHA-256 of a token: the only form in which the cluster stores it.
pub type TokenDigest = [u8; 32];

/// The public metadata of a token, replicated through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public handle for `list` and `revoke`: the first 8 bytes of the digest, in hex.
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    /// Milliseconds since the Unix epoch, set by the leader that created it.
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
}

impl TokenRecord {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

/// Prefix of generated tokens, so secret scanners and people can recognise them.
pub const TOKEN_PREFIX: &str = "cnc_";
/// Random bytes in a token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// A new token from the OS CSPRNG: `cnc_` and 43 URL-safe base64 characters.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut buf = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut buf)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
    ))
}

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

pub fn id_of(digest: &TokenDigest) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn same_digest(a: &TokenDigest, b: &TokenDigest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// RFC 3339 (UTC, seconds) for replies and listings.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The applied token table of one node, kept in step with apply and snapshot install.
#[derive(Default)]
pub struct TokenTable {
    by_digest: RwLock<HashMap<TokenDigest, TokenRecord>>,
}

impl TokenTable {
    /// Runs `f` on the record of `d` under the read lock: no copy on the request path.
    pub fn with<R>(&self, d: &TokenDigest, f: impl FnOnce(Option<&TokenRecord>) -> R) -> R {
        f(self.read().get(d))
    }

    pub fn contains(&self, d: &TokenDigest) -> bool {
        self.read().contains_key(d)
    }

    /// The digest of the token with this public id.
    pub fn find_id(&self, id: &str) -> Option<TokenDigest> {
        self.read()
            .iter()
            .find(|(_, r)| r.id == id)
            .map(|(d, _)| *d)
    }

    /// Every record, oldest first.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self.read().values().cloned().collect();
        v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        v
    }

    /// Up to `limit` records with an id after `after`, in id order: a page of `token.list`.
    /// Ids order the pages, so a token created or revoked between two pages moves no other
    /// token from one page to another.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Vec<TokenRecord> {
        let t = self.read();
        let mut v: Vec<&TokenRecord> = t
            .values()
            .filter(|r| after.is_none_or(|a| r.id.as_str() > a))
            .collect();
        v.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        v.into_iter().take(limit).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies changes made durable by the state machine, in order.
    pub fn apply(&self, changes: impl IntoIterator<Item = (TokenDigest, Option<TokenRecord>)>) {
        let mut t = self.by_digest.write().unwrap_or_else(|e| e.into_inner());
        for (d, rec) in changes {
            match rec {
                Some(r) => t.insert(d, r),
                None => t.remove(&d),
            };
        }
    }

    /// Replaces the whole table (start-up, snapshot install).
    pub fn replace(&self, all: HashMap<TokenDigest, TokenRecord>) {
        *self.by_digest.write().unwrap_or_else(|e| e.into_inner()) = all;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TokenDigest, TokenRecord>> {
        self.by_digest.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_random_and_url_safe() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert!(a[TOKEN_PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(id_of(&digest(&a)).len(), 16);
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Readwrite && Role::Readwrite > Role::Read);
        assert_eq!(Role::parse("readwrite"), Some(Role::Readwrite));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn table_applies_in_order() {
        let t = TokenTable::default();
        let d = digest("x");
        let rec = TokenRecord {
            id: id_of(&d),
            name: None,
            role: Role::Read,
            created_ms: 1,
            expires_ms: Some(10),
        };
        t.apply([(d, Some(rec.clone())), (d, None), (d, Some(rec.clone()))]);
        assert_eq!(t.with(&d, |r| r.cloned()), Some(rec.clone()));
        assert_eq!(t.find_id(&rec.id), Some(d));
        assert!(rec.is_expired(10) && !rec.is_expired(9));
        assert!(same_digest(&d, &digest("x")) && !same_digest(&d, &digest("y")));
    }
}
