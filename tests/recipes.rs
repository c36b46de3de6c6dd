//! The recipes of docs/recipes.md run against a real cluster (real `nats-server`, three real
//! `concord serve` processes): each example in `examples/` is run as its own process, with
//! the cluster's NATS URL as its argument and its subject prefix in the environment, and
//! must exit 0 and print what it claims. The examples check their own claims and exit
//! non-zero when one did not hold; this test also checks their output.
//!
//! The example binaries are found next to this test's executable, in
//! `target/<profile>/examples/`: `cargo build --examples` puts them there (scripts/test.sh
//! runs it before the suite; a plain `cargo test` builds them too).

mod common;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, ensure, Context, Result};
use common::{Cluster, ClusterOptions};

/// Each example and lines its output must hold.
const RECIPES: [(&str, &[&str]); 10] = [
    (
        "optimistic_update",
        &["visits = 40, version 41", "no update lost"],
    ),
    ("unique_create", &["already taken", "exactly one primary"]),
    (
        "quota_counter",
        &[
            "5 allowed",
            "3 refused",
            "released one unit: 4 in use",
            "the quota held",
        ],
    ),
    (
        "config_switch",
        &[
            "switch to green: succeeded = true",
            "succeeded = false, version is already 2",
            "green everywhere",
        ],
    ),
    (
        "config_reload",
        &[
            "loaded 3 settings",
            "log_level = debug, timeout_ms added, legacy_mode removed",
            "the service's configuration equals the store's",
        ],
    ),
    (
        "feature_flags",
        &[
            "new_checkout on, beta_search off (removed)",
            "every instance saw the same flips in the same order",
        ],
    ),
    (
        "service_discovery",
        &[
            "1 instance(s) at start",
            "api-1 deregistered by revoking its lease",
            "api-2 expired after its keepalives stopped",
            "live instances: 10.0.0.3:8080",
            "the view follows every registration, deregistration and expiry",
        ],
    ),
    (
        "sessions",
        &[
            "sessions live past 3 ttls while kept alive",
            "logout: 2 keys deleted at revision",
            "expired session: its keys are gone",
        ],
    ),
    (
        "leader_election",
        &[
            "the observer sees 2 claims: a holds, b waits",
            "the observer sees the hand-off: 1 claim left",
            "a's write with the old fence was refused",
            "one leader at a time, fences increasing",
        ],
    ),
    (
        "rate_limit",
        &[
            "5 allowed, 3 refused in the window",
            "the window ended: the counter is gone",
            "a new window: request 1 of 5",
        ],
    ),
];

/// `target/<profile>/examples/<name>`, from this test's own path
/// (`target/<profile>/deps/recipes-<hash>`).
fn example_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("this test's path")?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        bin.is_file(),
        "{} is not built: run `cargo build --examples` first (scripts/test.sh does)",
        bin.display()
    );
    Ok(bin)
}

/// Runs one example against the cluster, off the async runtime.
async fn run_example(cluster: &Cluster, name: &str) -> Result<(Option<i32>, String, String)> {
    let mut cmd = Command::new(example_binary(name)?);
    cmd.arg(cluster.nats_url());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONCORD_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CONCORD_NATS__SUBJECT_PREFIX", cluster.prefix());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running example {name}"))?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Proves every recipe example runs on a 3-node cluster: exit status 0 and the lines that
/// show what it claims (no lost update, one creator, the quota held, one switch at one
/// revision, a reloaded configuration, flags and a service view that follow the store, with
/// registrations that end with their lease; sessions that live while kept alive and end
/// with their lease; one leader at a time with growing fences; a fixed-window rate limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipe_example_runs_and_holds() -> Result<()> {
    let cluster = Cluster::start_format_2(3, ClusterOptions::default()).await?;
    let r = recipes_body(&cluster).await;
    cluster.fail_on_err(r)
}

async fn recipes_body(cluster: &Cluster) -> Result<()> {
    for (name, lines) in RECIPES {
        let (code, stdout, stderr) = run_example(cluster, name).await?;
        // What each recipe showed, for the test log.
        println!("--- example {name}:\n{stdout}");
        ensure!(
            code == Some(0),
            "example {name} exited {code:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        for line in lines {
            ensure!(
                stdout.contains(line),
                "example {name} did not print {line:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
    }
    Ok(())
}
