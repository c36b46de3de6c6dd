//! Who may do what. With `auth.enabled`, every request names a token (the `token` field or
//! `Authorization: Bearer`); the node checks it against the applied token table or the
//! bootstrap admin credential and the role the operation needs. Where the check runs is the
//! handler's business: writes and linearizable reads on the leader, stale reads locally.

pub mod tokens;

use async_nats::HeaderMap;

use crate::error::{unauthorized, WireError};
pub use tokens::{Role, TokenDigest, TokenRecord, TokenTable};

/// Longest credential accepted; anything longer is malformed, not looked up.
const MAX_TOKEN_CHARS: usize = 512;

pub struct Authorizer {
    enabled: bool,
    /// Digest of `auth.admin_token`, if configured.
    admin: Option<TokenDigest>,
}

/// The credential a request presented, as found in its body or headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    Token(&'a str),
    /// An `Authorization` header that is not `Bearer <token>`.
    BadHeader,
}

impl<'a> Credential<'a> {
    /// The body's `token` field wins over the header.
    pub fn of(body_token: Option<&'a str>, headers: Option<&'a HeaderMap>) -> Credential<'a> {
        if let Some(t) = body_token {
            return Credential::Token(t);
        }
        let Some(h) = headers.and_then(|h| h.get("Authorization")) else {
            return Credential::None;
        };
        let v = h.as_str().trim();
        match v.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => {
                Credential::Token(t.trim())
            }
            _ => Credential::BadHeader,
        }
    }
}

impl Authorizer {
    pub fn new(enabled: bool, admin_token: Option<&str>) -> Authorizer {
        Authorizer {
            enabled,
            admin: admin_token.map(tokens::digest),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The id of the token a request presented, when auth is on: request ids are kept per
    /// token, so two clients can never answer for each other's ids.
    pub fn token_id(&self, cred: Credential<'_>) -> Option<String> {
        match cred {
            Credential::Token(t) if self.enabled => Some(tokens::id_of(&tokens::digest(t))),
            _ => None,
        }
    }

    /// Allows the request if auth is off, or if its credential holds at least `needed`.
    pub fn check(
        &self,
        table: &TokenTable,
        cred: Credential<'_>,
        needed: Role,
    ) -> Result<(), WireError> {
        if !self.enabled {
            return Ok(());
        }
        let token = match cred {
            Credential::None => return Err(unauthorized(
                "a token is required: pass the `token` field or `Authorization: Bearer <token>`",
            )),
            Credential::BadHeader => {
                return Err(unauthorized(
                    "malformed Authorization header: expected `Bearer <token>`",
                ))
            }
            Credential::Token(t) => t,
        };
        if token.is_empty()
            || token.chars().count() > MAX_TOKEN_CHARS
            || token.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(unauthorized("malformed token"));
        }
        let d = tokens::digest(token);
        if self.admin.is_some_and(|a| tokens::same_digest(&a, &d)) {
            return Ok(());
        }
        table.with(&d, |rec| {
            let Some(rec) = rec else {
                return Err(unauthorized("unknown or revoked token"));
            };
            if rec.is_expired(tokens::now_ms()) {
                return Err(unauthorized(format!("token {} has expired", rec.id)));
            }
            if rec.role < needed {
                return Err(unauthorized(format!(
                    "token {} has role {}; this operation needs {needed}",
                    rec.id, rec.role
                )));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn table_with(role: Role, expires_ms: Option<u64>) -> (TokenTable, String) {
        let token = tokens::generate().unwrap();
        let d = tokens::digest(&token);
        let t = TokenTable::default();
        t.apply([(
            d,
            Some(TokenRecord {
                id: tokens::id_of(&d),
                name: None,
                role,
                created_ms: 0,
                expires_ms,
            }),
        )]);
        (t, token)
    }

    #[test]
    fn off_allows_everything() {
        let a = Authorizer::new(false, None);
        let t = TokenTable::default();
        assert!(a.check(&t, Credential::None, Role::Admin).is_ok());
        assert!(a.check(&t, Credential::BadHeader, Role::Admin).is_ok());
    }

    #[test]
    fn roles_expiry_and_admin() {
        let a = Authorizer::new(true, Some("bootstrap-admin-credential"));
        let (t, tok) = table_with(Role::Readwrite, None);
        assert!(a.check(&t, Credential::Token(&tok), Role::Read).is_ok());
        assert!(a
            .check(&t, Credential::Token(&tok), Role::Readwrite)
            .is_ok());
        let e = a
            .check(&t, Credential::Token(&tok), Role::Admin)
            .unwrap_err();
        assert_eq!(e.code, ErrorKind::Unauthorized);
        assert!(e.message.contains("needs admin"), "{}", e.message);
        assert!(a
            .check(
                &t,
                Credential::Token("bootstrap-admin-credential"),
                Role::Admin
            )
            .is_ok());
        for bad in [
            Credential::None,
            Credential::BadHeader,
            Credential::Token(""),
            Credential::Token("has space"),
            Credential::Token("cnc_unknown"),
        ] {
            assert!(a.check(&t, bad, Role::Read).is_err(), "{bad:?}");
        }
        let (t, tok) = table_with(Role::Admin, Some(1));
        let e = a
            .check(&t, Credential::Token(&tok), Role::Read)
            .unwrap_err();
        assert!(e.message.contains("expired"), "{}", e.message);
    }

    #[test]
    fn credential_from_body_or_header() {
        let mut h = HeaderMap::new();
        h.insert("Authorization", "Bearer abc");
        assert_eq!(Credential::of(None, Some(&h)), Credential::Token("abc"));
        assert_eq!(Credential::of(Some("x"), Some(&h)), Credential::Token("x"));
        let mut h = HeaderMap::new();
        h.insert("Authorization", "Basic abc");
        assert_eq!(Credential::of(None, Some(&h)), Credential::BadHeader);
        assert_eq!(Credential::of(None, None), Credential::None);
    }
}
