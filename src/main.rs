//! `concord`: parse the command line, set up logging, dispatch.

// The client's error carries the wire error whole (code, message and the state a refusal
// names), as the library's does.
#![allow(clippy::result_large_err)]

mod cli;

use clap::Parser;
use cli::{Cli, Cmd};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    // Dependencies log their internals at info; a node's own story is enough by default.
    let default_level = if matches!(cli.command, Cmd::Serve(_)) {
        "info,openraft=warn,fjall=warn,lsm_tree=warn,async_nats=warn"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        let res = match cli.command {
            Cmd::Serve(ref args) => cli::serve::run(&cli.global, args).await,
            Cmd::Check(ref args) => cli::check::run(&cli.global, args).await,
            Cmd::Restore(ref args) => cli::backup::restore(&cli.global, args).await,
            cmd => cli::run_client(&cli.global, cmd).await,
        };
        match res {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}
