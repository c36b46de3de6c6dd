//! A watch request (`P.watch.create`, `P.node.<id>.watch.create`), decoded and checked:
//! every field of DESIGN.md "Watch", refused with `bad_request` naming the problem.

use serde::Deserialize;

use crate::api::validate;
use crate::error::{bad_request, WireError};
use crate::limits::excerpt;
use crate::store::history::{ChangeEvent, EventKind, KeyFilter};

/// Default and largest `window`.
pub const DEFAULT_WINDOW: usize = 64;
pub const MAX_WINDOW: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    key: Option<String>,
    prefix: Option<String>,
    start_revision: Option<u64>,
    prev_value: Option<bool>,
    types: Option<Vec<String>>,
    keys_only: Option<bool>,
    deliver: Option<String>,
    window: Option<usize>,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

/// What a watch delivers, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub filter: KeyFilter,
    /// The first revision to deliver; 0: the node's next revision.
    pub start: u64,
    pub prev_value: bool,
    /// Which event types, by [`type_index`].
    pub types: [bool; 3],
    pub keys_only: bool,
    pub deliver: String,
    pub window: usize,
    pub token: Option<String>,
}

fn type_index(kind: EventKind) -> usize {
    match kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
        EventKind::Expire => 2,
    }
}

impl Spec {
    pub fn matches(&self, e: &ChangeEvent) -> bool {
        self.types[type_index(e.kind)] && self.filter.matches(&e.key)
    }

    /// Whether an event needs the key's previous value looked up.
    pub fn wants_prev(&self) -> bool {
        self.prev_value && !self.keys_only
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    watch_id: String,
    token: Option<String>,
    timeout_ms: Option<u64>,
}

/// A cancel request: the watch id and the credential.
pub fn decode_cancel(payload: &[u8]) -> Result<(String, Option<String>), WireError> {
    let b: CancelBody = crate::api::admin::decode(payload)?;
    let _ = b.timeout_ms;
    Ok((b.watch_id, b.token))
}

/// Decodes and checks a create request; `prefix` is the cluster's subject prefix, which a
/// `deliver` subject may not start with.
pub fn decode_create(payload: &[u8], prefix: &str) -> Result<Spec, WireError> {
    let b: CreateBody = crate::api::admin::decode(payload)?;
    let _ = b.timeout_ms;
    let filter = match (b.key, b.prefix) {
        (Some(k), None) => {
            validate::key(&k)?;
            KeyFilter::Key(k)
        }
        (None, Some(p)) => {
            validate::prefix(&p)?;
            KeyFilter::Prefix(p)
        }
        _ => return Err(bad_request(
            "a watch names exactly one of `key` and `prefix` (\"prefix\": \"\" watches everything)",
        )),
    };
    let deliver = b
        .deliver
        .ok_or_else(|| bad_request("`deliver` is required: the subject the events go to"))?;
    check_deliver(&deliver, prefix)?;
    let window = b.window.unwrap_or(DEFAULT_WINDOW);
    if window == 0 || window > MAX_WINDOW {
        return Err(bad_request(format!(
            "window must be between 1 and {MAX_WINDOW}"
        )));
    }
    Ok(Spec {
        filter,
        start: b.start_revision.unwrap_or(0),
        prev_value: b.prev_value.unwrap_or(false),
        types: types(b.types)?,
        keys_only: b.keys_only.unwrap_or(false),
        deliver,
        window,
        token: b.token,
    })
}

fn types(names: Option<Vec<String>>) -> Result<[bool; 3], WireError> {
    let Some(names) = names else {
        return Ok([true; 3]);
    };
    if names.is_empty() {
        return Err(bad_request(
            "types is empty: name at least one of put, delete, expire (or leave it out for all)",
        ));
    }
    let mut out = [false; 3];
    for n in &names {
        let kind = EventKind::parse(n).ok_or_else(|| {
            bad_request(format!(
                "unknown event type '{}' (put, delete or expire)",
                excerpt(n)
            ))
        })?;
        out[type_index(kind)] = true;
    }
    Ok(out)
}

/// A plain NATS subject outside the cluster's own and the system's: no wildcard, no empty
/// token, no white space; not `P.…` and not `$…`.
fn check_deliver(deliver: &str, prefix: &str) -> Result<(), WireError> {
    let plain = !deliver.is_empty()
        && deliver.len() <= 1024
        && !deliver.chars().any(|c| c.is_whitespace() || c.is_control())
        && deliver
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">");
    if !plain {
        return Err(bad_request(format!(
            "deliver '{}' is not a plain NATS subject (dot-separated tokens, no wildcards or spaces)",
            excerpt(deliver)
        )));
    }
    let ours = deliver == prefix || deliver.starts_with(&format!("{prefix}."));
    if ours || deliver.starts_with('$') {
        return Err(bad_request(format!(
            "deliver '{}' may not start with '{prefix}.' or '$': pick a subject of your own, e.g. an _INBOX subject",
            excerpt(deliver)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: &str) -> Result<Spec, WireError> {
        decode_create(body.as_bytes(), "concord")
    }

    #[test]
    fn a_request_takes_every_field() {
        let s = create(
            r#"{"prefix":"cfg/","start_revision":7,"prev_value":true,"types":["put"],
                "keys_only":true,"deliver":"_INBOX.abc","window":8,"token":"t","timeout_ms":9}"#,
        )
        .unwrap();
        assert_eq!(s.filter, KeyFilter::Prefix("cfg/".into()));
        assert_eq!(
            (s.start, s.prev_value, s.keys_only, s.window),
            (7, true, true, 8)
        );
        assert_eq!(s.types, [true, false, false]);
        let s = create(r#"{"key":"a","deliver":"my.events"}"#).unwrap();
        assert_eq!(s.filter, KeyFilter::Key("a".into()));
        assert_eq!((s.start, s.window, s.types), (0, DEFAULT_WINDOW, [true; 3]));
        assert!(create(r#"{"prefix":"","deliver":"x"}"#).is_ok());
    }

    #[test]
    fn bad_requests_name_their_problem() {
        for (body, says) in [
            (r#"{"deliver":"x"}"#, "exactly one"),
            (r#"{"key":"a","prefix":"b","deliver":"x"}"#, "exactly one"),
            (r#"{"key":"a"}"#, "deliver"),
            (r#"{"key":"a","deliver":"concord.x"}"#, "may not start"),
            (r#"{"key":"a","deliver":"$JS.x"}"#, "may not start"),
            (r#"{"key":"a","deliver":"a.*"}"#, "plain"),
            (r#"{"key":"a","deliver":"a..b"}"#, "plain"),
            (r#"{"key":"a","deliver":"a b"}"#, "plain"),
            (r#"{"key":"a","deliver":"x","window":0}"#, "window"),
            (r#"{"key":"a","deliver":"x","window":1025}"#, "window"),
            (r#"{"key":"a","deliver":"x","types":[]}"#, "types"),
            (
                r#"{"key":"a","deliver":"x","types":["set"]}"#,
                "unknown event type",
            ),
            (r#"{"key":"a","deliver":"x","colour":1}"#, "colour"),
            (r#"[1]"#, "object"),
        ] {
            let e = create(body).expect_err(body);
            assert_eq!(e.code, crate::error::ErrorKind::BadRequest, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
        assert_eq!(
            create(r#"{"key":"","deliver":"x"}"#).unwrap_err().code,
            crate::error::ErrorKind::InvalidKey
        );
    }
}
