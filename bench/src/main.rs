//! `tollgate-bench` binary: parses the command line and runs it on a runtime sized for the
//! load generator; everything else lives in the library.

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use tollgate_bench::cli::{run, Cli};

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads())
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}
