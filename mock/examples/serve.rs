//! Runs the mock OpenAI provider stand-alone until Ctrl-C or SIGTERM:
//! `cargo run -p tollgate-mock --example serve -- --listen 127.0.0.1:8090
//! [--latency-ms N] [--chunk-delay-ms N] [--api-key KEY]`.

use std::time::Duration;

use tollgate_mock::{serve, MockConfig};

const USAGE: &str =
    "usage: serve --listen ADDR [--latency-ms N] [--chunk-delay-ms N] [--api-key KEY]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = None;
    let mut config = MockConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--latency-ms" => config.latency = Duration::from_millis(value.parse()?),
            "--chunk-delay-ms" => config.chunk_delay = Duration::from_millis(value.parse()?),
            "--api-key" => config.api_key = Some(value),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}").into()),
        }
    }
    let listen = listen.ok_or(USAGE)?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!(
        "Mock OpenAI provider listening on http://{}",
        listener.local_addr()?
    );
    serve(listener, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
