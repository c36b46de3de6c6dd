//! `concord lock NAME [--ttl 10s] [--wait 30s] -- CMD ARGS…`: takes the lock, runs CMD with
//! the fence in its environment (`CONCORD_LOCK_FENCE`, `CONCORD_LOCK_LEASE`,
//! `CONCORD_LOCK_NAME`) while the lock's lease is kept alive in the background, releases the
//! lock when CMD exits and exits with CMD's status.
//!
//! If the lease is lost while CMD runs (it ended, or no keepalive was acknowledged within
//! its ttl) the lock may belong to someone else: CMD gets SIGTERM, then SIGKILL after
//! `--grace`, and the command exits 1 saying so. SIGINT and SIGTERM sent to `concord` are
//! passed on to CMD, and the lock is released once CMD has exited.
//!
//! Our own messages go to stderr: stdout is CMD's.

use std::process::ExitStatus;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use super::Global;
use concord::client::{Client, ClientError, LockGuard, LockOptions};

/// The exit status when the lock was lost while CMD ran.
pub const EXIT_LOCK_LOST: i32 = 1;

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (no `/`).
    pub name: String,
    /// The ttl of the lock's lease: how long the lock outlives this process if it dies.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// How long to wait for the lock (default: one try; exit 3 when it is held).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// After the lock is lost: how long CMD has between SIGTERM and SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The command to run while holding the lock, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

pub async fn run(client: &Client, global: &Global, args: &LockArgs) -> Result<i32, ClientError> {
    let opts = LockOptions {
        ttl: args.ttl,
        wait: args.wait,
    };
    let guard = client.lock(&args.name, opts).await?;
    if global.json {
        let v = json!({"ok": true, "name": guard.name, "fence": guard.fence, "lease": guard.lease});
        eprintln!("{v}");
    } else {
        eprintln!(
            "lock '{}' acquired: fence {}, lease {}",
            guard.name, guard.fence, guard.lease
        );
    }
    let Some((program, rest)) = args.cmd.split_first() else {
        return Ok(2);
    };
    let child = Command::new(program)
        .args(rest)
        .env("CONCORD_LOCK_FENCE", guard.fence.to_string())
        .env("CONCORD_LOCK_LEASE", guard.lease.to_string())
        .env("CONCORD_LOCK_NAME", &guard.name)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot run {program}: {e}");
            release(guard).await;
            return Ok(127);
        }
    };
    match supervise(&mut child, &guard, args.grace).await {
        Ok(status) => {
            release(guard).await;
            Ok(exit_status(status))
        }
        Err(lost) => {
            eprintln!("error: {lost}");
            Ok(EXIT_LOCK_LOST)
        }
    }
}

/// Waits for CMD, passing SIGINT and SIGTERM on to it. When the lock is lost first: stops
/// CMD and returns what happened.
async fn supervise(
    child: &mut Child,
    guard: &LockGuard,
    grace: Duration,
) -> Result<ExitStatus, String> {
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            return child
                .wait()
                .await
                .map_err(|e| format!("waiting for CMD: {e}"))
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => return status.map_err(|e| format!("waiting for CMD: {e}")),
            _ = int.recv() => send(child, "-INT"),
            _ = term.recv() => send(child, "-TERM"),
            loss = guard.lost() => {
                eprintln!(
                    "lock '{}' (fence {}) lost: {loss}; stopping CMD (SIGTERM, SIGKILL after {} ms)",
                    guard.name, guard.fence, grace.as_millis()
                );
                send(child, "-TERM");
                let status = match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => status.ok(),
                    Err(_) => {
                        let _ = child.start_kill();
                        child.wait().await.ok()
                    }
                };
                let how = status.map_or("?".into(), |s| s.to_string());
                return Err(format!(
                    "lock '{}' was lost while CMD ran ({loss}); CMD was stopped ({how})",
                    guard.name
                ));
            }
        }
    }
}

/// Sends `sig` to CMD (which may have exited already: nothing to do then).
fn send(child: &Child, sig: &str) {
    if let Some(pid) = child.id() {
        if let Err(e) = concord_harness::process::signal(pid, sig) {
            eprintln!("warning: {e}");
        }
    }
}

/// Releases the lock after CMD, saying so when the lock was no longer ours.
async fn release(guard: LockGuard) {
    let name = guard.name.clone();
    match guard.release().await {
        Ok(_) => {}
        Err(e) if e.conflict_reason() == Some("fence") => eprintln!(
            "warning: lock '{name}' was no longer held at release (the holder's fence is now {})",
            e.conflict_fence().unwrap_or(0)
        ),
        Err(e) => eprintln!(
            "warning: releasing lock '{name}' failed ({e}); its lease ends it within its ttl"
        ),
    }
}

/// CMD's exit status as ours: its code, or 128 + the signal that ended it.
fn exit_status(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}
