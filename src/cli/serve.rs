//! `concord serve`: load the layered config, lock the data dir, run one node until a signal.

use std::path::PathBuf;

use clap::Args;

use super::{emit, flags, load_config, Global};
use concord::config;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This node's id [env: CONCORD_NODE__ID].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,
    /// Data directory [env: CONCORD_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cluster name [env: CONCORD_CLUSTER__NAME].
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Initial voters, e.g. 1,2,3 [env: CONCORD_CLUSTER__INITIAL_MEMBERS].
    #[arg(long, value_name = "IDS")]
    pub initial_members: Option<String>,
    /// Print the effective configuration, each setting with where it came from (default,
    /// config file, env variable or flag), secrets masked, and exit; `--json` for JSON.
    #[arg(long)]
    pub check_config: bool,
}

/// `concord serve`.
pub async fn run(global: &Global, args: &ServeArgs) -> anyhow::Result<i32> {
    if args.check_config {
        let (_, warnings, settings) =
            config::load_with_sources(global.config.as_deref(), &flags(global, Some(args)))?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        if global.json {
            emit(&serde_json::to_string_pretty(&config::settings_json(
                &settings,
            ))?);
        } else {
            emit(&config::settings_text(&settings));
        }
        return Ok(0);
    }
    let (config, warnings) = load_config(global, Some(args))?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // Before NATS and the store: a second node on the same directory stops at once.
    let _lock = concord::lock::DataDirLock::acquire(&config.data_dir)?;
    concord::node::run(config, shutdown_signal()).await?;
    Ok(0)
}

/// Resolves on the first SIGTERM or Ctrl-C. From then on a second one ends the process at
/// once (exit 130) instead of waiting for the graceful shutdown.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        // Acknowledged writes are already fsynced: this is no worse than a crash.
        eprintln!("second signal during shutdown: exiting now");
        std::process::exit(130);
    });
}
