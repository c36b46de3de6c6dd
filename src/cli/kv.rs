//! `concord put`, `get`, `delete`, `scan` and `incr`: writes carry a `request_id` (the
//! caller's or a new one) that `--json` shows, and `--if-revision` for compare-and-swap (a
//! `conflict` exits with [`super::EXIT_CONFLICT`], as does an `incr` out of its bounds);
//! `get` shows the key's metadata; scan follows pages until the limit or the end of the
//! prefix; `delete --prefix` follows `more` until the prefix is empty.

use clap::Args;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{display_value, emit, exit_code, out, Global};
use concord::client::prefix::{add_call, MAX_PREFIX_CALLS};
use concord::client::{
    Client, ClientError, Fence, Incr, PrefixDeleted, PutOptions, ReadConsistency,
};
use concord::ErrorKind;

/// `--if-revision`, shared by `put` and `delete`.
#[derive(Debug, Args)]
pub struct IfRevisionArg {
    /// Write only if the key's revision is N when the write applies (0: only if the key does
    /// not exist), e.g. the revision `concord get` showed. Otherwise nothing is written and
    /// the command exits 3 (conflict), showing the key's current revision.
    #[arg(long, value_name = "N")]
    pub if_revision: Option<u64>,
}

/// `--ttl` and `--lease` of `put`.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Give the key a lease of its own: it is deleted this long after the put (or its last
    /// `concord touch`), e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "lease")]
    pub ttl: Option<std::time::Duration>,
    /// Attach the key to lease ID (`concord lease grant`): it is deleted when the lease
    /// ends. A put without --lease or --ttl detaches the key from its lease.
    #[arg(long, value_name = "ID")]
    pub lease: Option<u64>,
}

/// `--fence NAME:TOKEN`, shared by the writes.
#[derive(Debug, Args)]
pub struct FenceArg {
    /// Write only if TOKEN is the current fence of lock NAME (e.g. `$CONCORD_LOCK_FENCE`
    /// under `concord lock`); otherwise exit 3, nothing written.
    #[arg(long, value_name = "NAME:TOKEN", value_parser = parse_fence)]
    pub fence: Option<Fence>,
}

/// `NAME:TOKEN` (the name may hold `:`; the token is after the last one).
pub fn parse_fence(s: &str) -> Result<Fence, String> {
    let (name, token) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not NAME:TOKEN"))?;
    let token = token
        .parse::<u64>()
        .map_err(|e| format!("the token of '{s}' is not a number: {e}"))?;
    if name.is_empty() {
        return Err(format!("'{s}' names no lock"));
    }
    Ok(Fence::new(name, token))
}

/// One write of the CLI: the key, its condition and its request id.
pub struct Write<'a> {
    pub key: &'a str,
    pub if_revision: Option<u64>,
    pub id: Uuid,
}

/// `--request-id`, shared by the write commands.
#[derive(Debug, Args)]
pub struct RequestIdArg {
    /// The write's request id, a UUID (default: a new random one; `--json` shows it). The
    /// same command run again with the id it used (e.g. after `timeout`, when the write
    /// may or may not have applied) applies at most once: within the cluster's
    /// `idempotency.window` (default 5 min) a repeat gets the first reply. Give each id to
    /// one command only: the same id with another key or value gets `conflict`.
    #[arg(long, value_name = "UUID")]
    request_id: Option<Uuid>,
}

impl RequestIdArg {
    /// The id to send: the caller's, or a new UUID v4.
    pub fn get(&self) -> Uuid {
        self.request_id.unwrap_or_else(Uuid::new_v4)
    }
}

/// `concord put`: the exit code.
pub async fn put(
    client: &Client,
    global: &Global,
    w: &Write<'_>,
    value: &Value,
    opts: &PutOptions,
) -> i32 {
    match client.put_with_opts_id(w.key, value, opts, w.id).await {
        Ok(r) => {
            let rev = r.revision;
            let mut v = json!({"ok": true, "revision": rev, "request_id": w.id});
            if let Some(l) = r.lease {
                v["lease"] = l.into();
            }
            out(global, v, || match r.lease {
                Some(l) => format!("OK (revision {rev}, lease {l})"),
                None => format!("OK (revision {rev})"),
            })
        }
        Err(e) => report_write(global, &e, w),
    }
}

/// `concord delete`: the exit code.
pub async fn delete(client: &Client, global: &Global, w: &Write<'_>, fence: Option<&Fence>) -> i32 {
    let res = match (w.if_revision, fence) {
        (None, Some(f)) => client.delete_fenced_with_id(w.key, f, w.id).await,
        (Some(_), Some(_)) => Err(ClientError::Server(concord::error::bad_request(
            "--fence with --if-revision is not supported by delete; use a txn",
        ))),
        (Some(n), None) => client.delete_if_with_id(w.key, n, w.id).await,
        (None, None) => client.delete_with_id(w.key, w.id).await,
    };
    match res {
        Ok((deleted, rev)) => out(
            global,
            json!({"ok": true, "deleted": deleted, "revision": rev, "request_id": w.id}),
            || {
                if deleted {
                    format!("deleted (revision {rev})")
                } else {
                    format!("not found, nothing deleted (revision {rev})")
                }
            },
        ),
        Err(e) => report_write(global, &e, w),
    }
}

/// `concord get`: the value on stdout and its metadata on stderr, so that
/// `$(concord get KEY)` is still the value; `--json` prints the whole reply (for an absent
/// key, the `not_found` error with `store_revision`).
pub async fn get(
    client: &Client,
    global: &Global,
    key: &str,
    consistency: ReadConsistency,
    min_revision: Option<u64>,
) -> Result<i32, ClientError> {
    // Absent: the cluster's `not_found`, with the `store_revision` the read saw.
    let kv = client.get_kv_reply(key, consistency, min_revision).await?;
    let mut reply = serde_json::to_value(&kv).unwrap_or_default();
    reply["ok"] = true.into();
    if !global.json {
        eprintln!("{}", metadata_line(&kv));
    }
    Ok(out(global, reply, || display_value(&kv.value)))
}

/// The metadata of a key, for people.
fn metadata_line(kv: &concord::client::KeyValue) -> String {
    format!(
        "revision {}, created at revision {}, version {}, lease {} (store at revision {})",
        kv.revision, kv.create_revision, kv.version, kv.lease, kv.store_revision
    )
}

/// `concord incr`: prints the new value (`--json`: the reply with the request id).
pub async fn incr(client: &Client, global: &Global, w: &Write<'_>, incr: Incr) -> i32 {
    match client.incr_with_id(w.key, incr, w.id).await {
        Ok(c) => out(
            global,
            json!({"ok": true, "value": c.value, "revision": c.revision, "request_id": w.id}),
            || c.value.to_string(),
        ),
        Err(e) => report_write(global, &e, w),
    }
}

/// `concord delete --prefix P [--all]`: calls again while the cluster says `more`, each call
/// a write of its own (fresh id, its own revision), with progress on stderr between calls.
/// Prints the count (`--json`: the total, and the last call's revision).
pub async fn delete_prefix(client: &Client, global: &Global, prefix: &str, all: bool) -> i32 {
    let mut total = PrefixDeleted {
        count: 0,
        more: true,
        revision: 0,
    };
    let mut calls = 0u32;
    while total.more && calls < MAX_PREFIX_CALLS {
        let id = Uuid::new_v4();
        let call = match client.delete_prefix_with_id(prefix, all, id).await {
            Ok(c) => c,
            Err(e) => {
                if total.count > 0 {
                    eprintln!("{} keys under '{prefix}' were deleted before", total.count);
                }
                let w = Write {
                    key: prefix,
                    if_revision: None,
                    id,
                };
                return report_write(global, &e, &w);
            }
        };
        calls += 1;
        if let Err(e) = add_call(&mut total, call) {
            return super::report(global, &e);
        }
        if total.more {
            eprintln!(
                "deleted {} keys under '{prefix}' so far (revision {}), more remain...",
                total.count, total.revision
            );
        }
    }
    if total.more {
        let e = ClientError::Decode(format!(
            "keys remain under '{prefix}' after {MAX_PREFIX_CALLS} calls ({} deleted)",
            total.count
        ));
        return super::report(global, &e);
    }
    out(
        global,
        json!({"ok": true, "deleted": total.count > 0, "count": total.count,
               "revision": total.revision, "calls": calls}),
        || total.count.to_string(),
    )
}

/// The line a conflict prints, for people: what the condition expected and what the key is.
/// A fence conflict names the lock's current fence.
/// `w.key` names the key, unless the cluster named another (an op of a txn).
pub(crate) fn conflict_line(e: &ClientError, w: &Write<'_>) -> Option<String> {
    if let ClientError::Conflict {
        reason, value, key, ..
    } = e
    {
        let key = key.as_deref().unwrap_or(w.key);
        let value = value.as_deref().map_or("nothing".into(), Value::to_string);
        match reason.as_str() {
            "bound" => {
                return Some(format!(
                    "conflict: key '{key}' is {value}: the result would be out of its bounds \
                     (or of the 64-bit range); nothing written"
                ))
            }
            "not_integer" => {
                return Some(format!(
                    "conflict: key '{key}' holds {value}, not an integer; nothing written"
                ))
            }
            _ => {}
        }
    }
    if let ClientError::Fence { current, .. } = e {
        return Some(format!(
            "conflict: the fence is not the lock holder's (the current fence is {current}, 0 = \
             unheld); nothing written"
        ));
    }
    let current = e.conflict_revision()?;
    let key = w.key;
    Some(match (w.if_revision, current) {
        (_, 0) => format!("conflict: key '{key}' does not exist (revision 0); nothing written"),
        (Some(0), cur) => {
            format!("conflict: key '{key}' already exists (revision {cur}); nothing written")
        }
        (Some(n), cur) => {
            format!("conflict: key '{key}' changed (revision {cur}, expected {n}); nothing written")
        }
        (None, cur) => format!("conflict: key '{key}' changed (revision {cur})"),
    })
}

/// Like `super::report`, with the write's id, after `timeout` how to retry it safely, and
/// after a revision conflict the key's current revision.
pub(crate) fn report_write(global: &Global, e: &ClientError, w: &Write<'_>) -> i32 {
    let code = e.code();
    let message = e.message();
    let id = w.id;
    if global.json {
        let v = json!({"ok": false, "error": e.to_json(), "request_id": id});
        emit(&v.to_string());
    }
    match conflict_line(e, w) {
        Some(line) => eprintln!("{line}"),
        None => eprintln!("error: {code}: {message}"),
    }
    if code == ErrorKind::Timeout {
        eprintln!(
            "the write may or may not have applied; to retry it safely, run the same command \
             with --request-id {id}"
        );
    }
    exit_code(e)
}

pub async fn scan(
    client: &Client,
    global: &Global,
    prefix: String,
    limit: Option<usize>,
    after: Option<String>,
) -> Result<i32, ClientError> {
    let mut items = Vec::new();
    let mut after = after;
    loop {
        let want = limit.map(|l| l.saturating_sub(items.len()).min(1000));
        let page = client
            .scan(
                &prefix,
                want,
                after.as_deref(),
                ReadConsistency::Linearizable,
            )
            .await?;
        after = page.items.last().map(|i| i.key.clone());
        items.extend(page.items);
        let full = limit.is_some_and(|l| items.len() >= l);
        if !page.more || full || after.is_none() {
            let more = page.more;
            let json_items: Vec<Value> = items
                .iter()
                .map(|i| {
                    json!({"key": i.key, "value": i.value, "revision": i.revision,
                        "create_revision": i.create_revision, "version": i.version,
                        "lease": i.lease})
                })
                .collect();
            return Ok(out(
                global,
                json!({"ok": true, "items": json_items, "more": more && full}),
                || {
                    items
                        .iter()
                        .map(|i| format!("{}\t{}", i.key, display_value(&i.value)))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(revision: Option<u64>) -> ClientError {
        ClientError::Conflict {
            reason: "revision".into(),
            revision,
            value: None,
            key: None,
            message: "m".into(),
        }
    }

    #[test]
    fn a_revision_conflict_names_the_key_and_its_current_revision() {
        let w = |if_revision| Write {
            key: "k",
            if_revision,
            id: Uuid::nil(),
        };
        let line = |e: &ClientError, n| conflict_line(e, &w(n)).unwrap_or_default();
        assert_eq!(
            line(&conflict(Some(9)), Some(4)),
            "conflict: key 'k' changed (revision 9, expected 4); nothing written"
        );
        assert_eq!(
            line(&conflict(Some(9)), Some(0)),
            "conflict: key 'k' already exists (revision 9); nothing written"
        );
        assert!(line(&conflict(None), Some(4)).contains("does not exist (revision 0)"));
        let reused = ClientError::Conflict {
            reason: "request_id".into(),
            revision: None,
            value: None,
            key: None,
            message: "m".into(),
        };
        assert_eq!(conflict_line(&reused, &w(Some(1))), None);
        assert_eq!(exit_code(&conflict(Some(1))), super::super::EXIT_CONFLICT);
        assert_eq!(exit_code(&reused), super::super::EXIT_CONFLICT);
        let bound = ClientError::Conflict {
            reason: "bound".into(),
            revision: Some(4),
            value: Some(Box::new(json!(10))),
            key: None,
            message: "m".into(),
        };
        let l = conflict_line(&bound, &w(None)).unwrap_or_default();
        assert!(
            l.starts_with("conflict: key 'k' is 10: ") && l.contains("bounds"),
            "{l}"
        );
        let text = ClientError::Conflict {
            reason: "not_integer".into(),
            revision: Some(4),
            value: Some(Box::new(json!("ten"))),
            key: Some("n".into()),
            message: "m".into(),
        };
        assert_eq!(
            conflict_line(&text, &w(None)).as_deref(),
            Some("conflict: key 'n' holds \"ten\", not an integer; nothing written")
        );
        assert_eq!(exit_code(&bound), super::super::EXIT_CONFLICT);
        let busy = ClientError::Server(concord::WireError::new(ErrorKind::Busy, "m"));
        assert_eq!(exit_code(&busy), 1);
    }
}
