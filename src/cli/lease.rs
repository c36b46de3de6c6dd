//! `concord lease grant|keepalive|revoke|get|list` and `concord touch`: one request each,
//! except `lease keepalive ID`, which keeps the lease alive (the client's background loop,
//! a renewal every ttl/3) and prints each renewal until Ctrl-C or the loss of the lease.
//! `lease grant` prints the id alone on stdout, so that `ID=$(concord lease grant --ttl 30s)`
//! works; `--json` prints the replies.

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::{emit, out, Global};
use concord::client::{Client, ClientError, LeaseInfo};

/// The exit status after Ctrl-C (128 + SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

#[derive(Debug, Subcommand)]
pub enum LeaseCmd {
    /// Grant a lease and print its id. Keys attached to it (`put --lease ID`) are deleted
    /// when it ends: revoked, or expired --ttl after its last keepalive.
    Grant {
        /// How long the lease lives without a keepalive, e.g. 30s, 2m.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The id to give it (default: the cluster picks one); a taken id exits 3.
        #[arg(long, value_name = "N")]
        id: Option<u64>,
    },
    /// Keep lease ID alive, printing each renewal, until Ctrl-C (exit 130) or until the
    /// lease is lost (exit 1: it ended, or no renewal was acknowledged within its ttl).
    Keepalive {
        id: u64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// End lease ID now: every key attached to it is deleted at one revision.
    Revoke { id: u64 },
    /// Show lease ID: its ttl and the time it has left (and its keys with --keys).
    Get {
        id: u64,
        #[arg(long)]
        keys: bool,
    },
    /// List every lease: id, ttl and time left.
    List,
}

pub async fn run(client: &Client, global: &Global, cmd: LeaseCmd) -> Result<i32, ClientError> {
    match cmd {
        LeaseCmd::Grant { ttl, id } => {
            let g = client.lease_grant(ttl, id).await?;
            if !global.json {
                eprintln!("lease {} granted, ttl {} ms", g.id, g.ttl_ms);
            }
            Ok(out(
                global,
                json!({"ok": true, "id": g.id, "ttl_ms": g.ttl_ms}),
                || g.id.to_string(),
            ))
        }
        LeaseCmd::Keepalive { id, once: true } => {
            let k = client.lease_keepalive(id).await?;
            Ok(out(
                global,
                json!({"ok": true, "id": k.id, "ttl_ms": k.ttl_ms}),
                || format!("lease {} renewed, ttl {} ms", k.id, k.ttl_ms),
            ))
        }
        LeaseCmd::Keepalive { id, once: false } => keepalive(client, global, id).await,
        LeaseCmd::Revoke { id } => {
            let r = client.lease_revoke(id).await?;
            Ok(out(
                global,
                json!({"ok": true, "revision": r.revision, "count": r.count}),
                || {
                    format!(
                        "lease {id} revoked: {} key(s) deleted (revision {})",
                        r.count, r.revision
                    )
                },
            ))
        }
        LeaseCmd::Get { id, keys } => {
            let l = client.lease_get(id, keys).await?;
            Ok(out(global, info_json(&l), || info_text(&l)))
        }
        LeaseCmd::List => {
            let all = client.lease_list().await?;
            let items: Vec<_> = all.iter().map(info_json).collect();
            Ok(out(global, json!({"ok": true, "leases": items}), || {
                all.iter()
                    .map(|l| format!("{}\tttl {} ms\t{} ms left", l.id, l.ttl_ms, l.remaining_ms))
                    .collect::<Vec<_>>()
                    .join("\n")
            }))
        }
    }
}

fn info_json(l: &LeaseInfo) -> serde_json::Value {
    let mut v = json!({"ok": true, "id": l.id, "ttl_ms": l.ttl_ms, "remaining_ms": l.remaining_ms});
    if let Some(keys) = &l.keys {
        v["keys"] = json!(keys);
    }
    v
}

fn info_text(l: &LeaseInfo) -> String {
    let mut s = format!(
        "lease {}: ttl {} ms, {} ms left",
        l.id, l.ttl_ms, l.remaining_ms
    );
    for k in l.keys.iter().flatten() {
        s.push('\n');
        s.push_str(k);
    }
    s
}

/// `lease keepalive ID`: the client's keepalive loop, one line per renewal.
async fn keepalive(client: &Client, global: &Global, id: u64) -> Result<i32, ClientError> {
    let lease = client.keep_lease(id).await?;
    let mut state = lease.watch();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let s = state.borrow_and_update().clone();
        if let Some(loss) = &s.loss {
            let e = ClientError::Server(concord::WireError::new(
                concord::ErrorKind::NotFound,
                format!("lease {id} lost ({}): {}", loss.reason, loss.message),
            ));
            return Ok(super::report(global, &e));
        }
        if global.json {
            emit(
                &json!({"ok": true, "id": id, "ttl_ms": s.ttl_ms, "renewals": s.renewals})
                    .to_string(),
            );
        } else {
            emit(&format!(
                "lease {id} renewed (#{}), ttl {} ms",
                s.renewals, s.ttl_ms
            ));
        }
        tokio::select! {
            _ = &mut stop => return Ok(EXIT_INTERRUPTED),
            changed = state.changed() => if changed.is_err() { return Ok(1) },
        }
    }
}

/// `concord touch KEY [--ttl D]`.
pub async fn touch(
    client: &Client,
    global: &Global,
    key: &str,
    ttl: Option<Duration>,
) -> Result<i32, ClientError> {
    let t = client.touch(key, ttl).await?;
    Ok(out(
        global,
        json!({"ok": true, "key": t.key, "lease": t.lease, "ttl_ms": t.ttl_ms}),
        || {
            format!(
                "key '{key}': lease {} renewed, ttl {} ms",
                t.lease, t.ttl_ms
            )
        },
    ))
}
