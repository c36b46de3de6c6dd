//! `P.admin.token.{create,revoke,list}`: the replicated token table, administered through
//! the leader with an admin credential. A new token is made on the leader, stored as its
//! SHA-256 through Raft, and shown once in the reply.

use std::time::Duration;

use async_nats::Message;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::api::handler::{confirm_leadership, propose};
use crate::api::route::{self, AttemptError, Delivery, Routed};
use crate::api::{codec, Ctx};
use crate::auth::tokens::{self, Role, TokenRecord};
use crate::auth::Credential;
use crate::command::{Applied, Command};
use crate::error::{bad_request, internal, not_found, WireError};
use crate::limits::excerpt;
use crate::subjects::AdminOp;

/// Longest token name.
const MAX_NAME_CHARS: usize = 128;
/// Longest lifetime `expires_in` may ask for.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    role: Option<String>,
    name: Option<String>,
    /// A duration such as `30d` or `12h`; no expiry when absent.
    expires_in: Option<String>,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// A token's id, or the token itself.
    id: String,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListBody {
    /// Most tokens in this page (default and most: [`MAX_LIST_LIMIT`]).
    limit: Option<usize>,
    /// The last id of the previous page: this page starts after it (ids in byte order).
    after: Option<String>,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

/// Default and largest page of `token.list`; a page is also cut to fit one NATS message.
pub const MAX_LIST_LIMIT: usize = 1000;

/// A token as listed: never the token itself.
#[derive(Debug, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    pub created: String,
    pub expires: Option<String>,
    pub expired: bool,
}

impl TokenInfo {
    fn of(r: &TokenRecord, now_ms: u64) -> TokenInfo {
        TokenInfo {
            id: r.id.clone(),
            name: r.name.clone(),
            role: r.role,
            created: tokens::rfc3339(r.created_ms),
            expires: r.expires_ms.map(tokens::rfc3339),
            expired: r.is_expired(now_ms),
        }
    }
}

#[derive(Serialize)]
struct Created<'a> {
    ok: bool,
    /// Shown once: the cluster keeps only its digest.
    token: &'a str,
    #[serde(flatten)]
    info: TokenInfo,
}

#[derive(Serialize)]
struct Revoked<'a> {
    ok: bool,
    revoked: bool,
    id: &'a str,
}

/// What a token request asks for, decoded and checked before routing.
enum TokenRequest {
    Create {
        role: Role,
        name: Option<String>,
        lifetime: Option<Duration>,
    },
    Revoke {
        id: String,
    },
    List {
        limit: usize,
        after: Option<String>,
    },
}

pub async fn handle_token(ctx: &Ctx, op: AdminOp, msg: &Message) -> Vec<u8> {
    let arrival = Instant::now();
    match handle_inner(ctx, op, msg, arrival).await {
        Ok(b) => b,
        Err(e) => codec::encode_error(&e),
    }
}

async fn handle_inner(
    ctx: &Ctx,
    op: AdminOp,
    msg: &Message,
    arrival: Instant,
) -> Result<Vec<u8>, WireError> {
    let (req, token, timeout_ms) = decode(op, &msg.payload)?;
    let timeout = timeout_ms.map(Duration::from_millis);
    let is_write = !matches!(req, TokenRequest::List { .. });
    let r = Routed::new(ctx, msg, arrival, timeout, is_write);
    let cred = Credential::of(token.as_deref(), msg.headers.as_ref());
    r.to_leader_within_deadline(
        ctx,
        |leader| ctx.cluster.subjects.node_admin(leader, op),
        || serve_on_leader(ctx, &req, cred, &r.delivery),
    )
    .await
}

fn decode(
    op: AdminOp,
    body: &[u8],
) -> Result<(TokenRequest, Option<String>, Option<u64>), WireError> {
    match op {
        AdminOp::TokenCreate => {
            let b: CreateBody = super::decode(body)?;
            let role = match b.role.as_deref() {
                None => Role::Read,
                Some(s) => Role::parse(s).ok_or_else(|| {
                    bad_request(format!(
                        "unknown role '{}' (read, readwrite or admin)",
                        excerpt(s)
                    ))
                })?,
            };
            if let Some(n) = &b.name {
                if n.is_empty()
                    || n.chars().count() > MAX_NAME_CHARS
                    || n.chars().any(char::is_control)
                {
                    return Err(bad_request(format!(
                        "name must be 1 to {MAX_NAME_CHARS} characters without control characters"
                    )));
                }
            }
            let lifetime = match b.expires_in.as_deref() {
                None => None,
                Some(s) => {
                    let d = humantime::parse_duration(s).map_err(|e| {
                        bad_request(format!(
                            "expires_in '{}' is not a duration like 30d or 12h: {}",
                            excerpt(s),
                            excerpt(&e.to_string())
                        ))
                    })?;
                    if d.is_zero() || d > MAX_LIFETIME {
                        return Err(bad_request(
                            "expires_in must be more than 0 and at most 100 years",
                        ));
                    }
                    Some(d)
                }
            };
            Ok((
                TokenRequest::Create {
                    role,
                    name: b.name,
                    lifetime,
                },
                b.token,
                b.timeout_ms,
            ))
        }
        AdminOp::TokenRevoke => {
            let b: RevokeBody = super::decode(body)?;
            Ok((TokenRequest::Revoke { id: b.id }, b.token, b.timeout_ms))
        }
        AdminOp::TokenList => {
            let b: ListBody = super::decode(body)?;
            let limit = b.limit.unwrap_or(MAX_LIST_LIMIT);
            if limit == 0 || limit > MAX_LIST_LIMIT {
                return Err(bad_request(format!(
                    "limit must be between 1 and {MAX_LIST_LIMIT}"
                )));
            }
            Ok((
                TokenRequest::List {
                    limit,
                    after: b.after,
                },
                b.token,
                b.timeout_ms,
            ))
        }
        _ => Err(internal("not a token operation")),
    }
}

async fn serve_on_leader(
    ctx: &Ctx,
    req: &TokenRequest,
    cred: Credential<'_>,
    delivery: &Delivery,
) -> Result<Vec<u8>, AttemptError> {
    route::authorize_on_leader(ctx, cred, Role::Admin).await?;
    match req {
        TokenRequest::Create {
            role,
            name,
            lifetime,
        } => create(ctx, *role, name.clone(), *lifetime, delivery).await,
        TokenRequest::Revoke { id } => revoke(ctx, id, delivery).await,
        TokenRequest::List { limit, after } => {
            confirm_leadership(ctx).await?;
            let now = tokens::now_ms();
            // One more than the page, so the page encoder sees whether more remain.
            let page = ctx
                .consensus
                .view
                .tokens()
                .page(after.as_deref(), limit.saturating_add(1));
            let room = ctx
                .limits
                .max_payload
                .saturating_sub(codec::REPLY_HEADER_ROOM);
            let items = page.iter().map(|r| Ok(TokenInfo::of(r, now)));
            let (body, _) = codec::encode_page("tokens", items, *limit, false, room)?;
            Ok(body)
        }
    }
}

async fn create(
    ctx: &Ctx,
    role: Role,
    name: Option<String>,
    lifetime: Option<Duration>,
    delivery: &Delivery,
) -> Result<Vec<u8>, AttemptError> {
    let token = tokens::generate()
        .map_err(|e| internal(format!("the OS random number generator failed: {e}")))?;
    let digest = tokens::digest(&token);
    let now = tokens::now_ms();
    let record = TokenRecord {
        id: tokens::id_of(&digest),
        name,
        role,
        created_ms: now,
        expires_ms: lifetime.map(|d| now.saturating_add(d.as_millis() as u64)),
    };
    let info = TokenInfo::of(&record, now);
    match propose(ctx, Command::TokenCreate { digest, record }, delivery).await? {
        Applied::Token { changed: true } => {
            tracing::info!(id = %info.id, role = %info.role, "token created");
            Ok(codec::encode_ok(&Created {
                ok: true,
                token: &token,
                info,
            }))
        }
        Applied::Token { changed: false } => Err(AttemptError::Fail(internal(
            "token id clash; create it again",
        ))),
        other => Err(AttemptError::Fail(internal(format!(
            "unexpected outcome {other:?}"
        )))),
    }
}

async fn revoke(ctx: &Ctx, id: &str, delivery: &Delivery) -> Result<Vec<u8>, AttemptError> {
    let table = ctx.consensus.view.tokens();
    let found = table.find_id(id).or_else(|| {
        let d = tokens::digest(id);
        table.contains(&d).then_some(d)
    });
    let Some(digest) = found else {
        // Echo an id, never something that might be a token.
        let shown = if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            format!("'{id}'")
        } else {
            "the given value".to_string()
        };
        return Err(AttemptError::Fail(not_found(format!(
            "no token has the id {shown} (nor is it a live token)"
        ))));
    };
    let public_id = tokens::id_of(&digest);
    match propose(ctx, Command::TokenRevoke { digest }, delivery).await? {
        Applied::Token { changed } => {
            tracing::info!(id = %public_id, "token revoked");
            Ok(codec::encode_ok(&Revoked {
                ok: true,
                revoked: changed,
                id: &public_id,
            }))
        }
        other => Err(AttemptError::Fail(internal(format!(
            "unexpected outcome {other:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The widest `token.create` reply still publishes without a size check: a write whose
    /// reply could not be sent would leave its client not knowing it happened.
    #[test]
    fn the_largest_create_reply_is_small() {
        let record = TokenRecord {
            id: "f".repeat(16),
            // The widest name: the most characters, each the widest in UTF-8.
            name: Some("\u{10FFFF}".repeat(MAX_NAME_CHARS)),
            role: Role::Readwrite,
            // 2100, and the longest lifetime after it: RFC 3339 times have a fixed width.
            created_ms: 4_102_444_800_000,
            expires_ms: Some(4_102_444_800_000 + MAX_LIFETIME.as_millis() as u64),
        };
        let token = format!("{}{}", tokens::TOKEN_PREFIX, "A".repeat(43));
        let body = codec::encode_ok(&Created {
            ok: true,
            token: &token,
            info: TokenInfo::of(&record, 0),
        });
        assert!(
            body.len() < crate::api::server::SMALL_REPLY_BYTES,
            "{}",
            body.len()
        );
    }
}
