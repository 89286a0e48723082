//! The logger service (`tollgate.logger.v1.LogIngest`, gRPC) and its sinks, plus the sidecar
//! side that ships events to it.
//!
//! - Server side ([`run`], [`serve`], and their `_reporting` forms that say when they serve):
//!   [`service`] validates each [`LogBatch`] and hands it to a [`sink::Sink`]; the batch is
//!   acknowledged only once the sink says it is durable. The default sink is
//!   [`ndjson::NdjsonSink`]: rotating NDJSON files, fsynced before the ack, idempotent on `request_id` across restarts; [`clickhouse::ClickHouseSink`] writes a
//!   ClickHouse table, idempotent on `request_id` too.
//! - Evaluation ([`evaluate`]): with an `evaluators` section (`tollgate logger --config`),
//!   the sampled events of each durable batch are offered to a bounded queue (never waited
//!   on) and scored; results go to the sink's evaluations store, read back by [`evals`]
//!   (`tollgate evals`).
//! - Sidecar side ([`shipper`]): `tollgate serve` pushes one event per request into a bounded
//!   queue; a background sender batches, retries, spools to disk ([`spool`]) while the logger
//!   is unreachable, and replays the spool in order; [`observe`] counts each event into the
//!   request-log metrics as it is emitted.
//!
//! [`LogBatch`]: tollgate_proto::logger::v1::LogBatch

pub mod clickhouse;
pub mod config;
pub mod durable;
pub mod error;
pub mod evals;
pub mod evaluate;
pub mod ndjson;
pub mod observe;
pub mod record;
pub mod service;
pub mod shipper;
pub mod sink;
pub mod spool;
pub mod spooled;
pub mod usage;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tollgate_proto::logger::v1::log_ingest_server::LogIngestServer;

pub use config::LoggerConfig;
pub use error::LoggerError;
pub use shipper::{LogHandle, Shipper};

/// Binds `config.listen` and runs the logger until `shutdown` resolves.
pub async fn run(
    config: LoggerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoggerError> {
    run_reporting(config, oneshot::channel().0, shutdown).await
}

/// [`run`], sending the address it bound (port 0 in `config.listen` becomes the port the
/// system picked) on `ready` once the sink is open and batches are served.
pub async fn run_reporting(
    config: LoggerConfig,
    ready: oneshot::Sender<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoggerError> {
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| LoggerError::Listen {
            addr: config.listen,
            source,
        })?;
    serve_reporting(listener, config, ready, shutdown).await
}

/// Runs the logger on a bound listener until `shutdown` resolves: opens the configured sink
/// (NDJSON files or ClickHouse), serves `LogIngest` and gRPC health, then lets in-flight batches finish
/// and closes the sink (a final fsync).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: LoggerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoggerError> {
    serve_reporting(listener, config, oneshot::channel().0, shutdown).await
}

/// [`serve`], sending the listener's address on `ready` once the sink is open.
pub async fn serve_reporting(
    listener: tokio::net::TcpListener,
    config: LoggerConfig,
    ready: oneshot::Sender<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoggerError> {
    config.validate()?;
    let sink: Arc<dyn sink::Sink> = match &config.sink {
        config::SinkConfig::Ndjson {
            data_dir,
            max_file_bytes,
        } => {
            let (dir, max) = (data_dir.clone(), *max_file_bytes);
            let sink = tokio::task::spawn_blocking(move || ndjson::NdjsonSink::open(&dir, max))
                .await
                .map_err(|e| LoggerError::Task(e.to_string()))??;
            Arc::new(sink)
        }
        config::SinkConfig::ClickHouse(c) => Arc::new(clickhouse::ClickHouseSink::open(c).await?),
    };
    let sink: Arc<dyn sink::Sink> = match &config.spool_dir {
        Some(dir) => {
            let (dir, max) = (dir.clone(), config.spool_max_bytes);
            let spool = tokio::task::spawn_blocking(move || spool::Spool::open(&dir, max))
                .await
                .map_err(|e| LoggerError::Task(e.to_string()))??;
            Arc::new(spooled::SpooledSink::new(
                sink,
                Arc::new(spool),
                std::time::Duration::from_secs(1),
            ))
        }
        None => sink,
    };
    let local = listener
        .local_addr()
        .map_err(|source| LoggerError::Listen {
            addr: config.listen,
            source,
        })?;
    let stage = config.evaluators.clone().map(|setup| {
        evaluate::Stage::start(setup, Arc::clone(&sink), config.evaluation_metrics.clone())
    });
    let mut service = service::IngestService::new(Arc::clone(&sink), config.limits());
    if let Some(stage) = &stage {
        service = service.with_stage(Arc::clone(stage));
    }
    let ingest = LogIngestServer::new(service).max_decoding_message_size(config.max_batch_bytes());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<LogIngestServer<service::IngestService>>()
        .await;
    tracing::info!(listen = %local, sink = ?config.sink, "Tollgate logger listening");
    // Nobody listening for the address is fine: a logger without `--ready-file`.
    let _ = ready.send(local);
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(ingest)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    if let Some(stage) = &stage {
        tracing::info!("Tollgate logger stopping: finishing queued evaluations");
        stage.close(std::time::Duration::from_secs(10)).await;
    }
    tracing::info!("Tollgate logger stopping: closing the sink");
    let closed = sink.close().await;
    served.map_err(LoggerError::Transport)?;
    closed
}

/// Serves the evaluation stage's metrics as `GET /metrics` (OpenMetrics text) on `listener`
/// until `shutdown` resolves (`tollgate logger --metrics-listen`).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: tollgate_core::evaluation_metrics::EvaluationMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), LoggerError> {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(registry.sub_registry_with_prefix("tollgate"));
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = Arc::clone(&registry);
            async move {
                let mut text = String::new();
                // Writing into a String cannot fail.
                let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| LoggerError::Task(format!("metrics server: {e}")))
}
