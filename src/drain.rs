//! Graceful drain of `tollgate serve` on SIGTERM or Ctrl-C (the config's `shutdown` section,
//! read when the signal arrives):
//!
//! 1. [`begin`]: `/readyz` answers 503, `tollgate_draining` goes to 1 and gRPC health to
//!    NOT_SERVING, while every request goes on being served for `shutdown.pre_drain_wait_ms`,
//!    so that load balancers and Envoy's health checks take the replica out of rotation before
//!    anything is refused;
//! 2. [`streams`]: the gRPC listener closes (no new connection) and open HTTP/2 connections
//!    get a GOAWAY (no new stream on them); the streams in flight, LLM streams included, get
//!    `shutdown.drain_timeout_ms` to finish, and are cut when it passes;
//! 3. [`flush`]: then, in parallel and within `shutdown.flush_timeout_ms`, `serve` applies the
//!    budget settlements (what Redis does not take by then goes to the pending directory, for
//!    the next start), sends the log queue to the logger (what cannot go is spooled for the
//!    next start) and exports the spans; then it stops the admin endpoint and exits 0. So
//!    `serve` exits within pre-drain wait + drain timeout (only while streams are open) +
//!    flush timeout of the signal, whatever Redis and the logger do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_authz::AuthzService;
use tollgate_core::budget::Ledger;
use tollgate_core::config::Shutdown;
use tollgate_core::metrics::Metrics;
use tollgate_extproc::trace::Exporter;
use tollgate_extproc::ExtProcService;
use tollgate_logger::Shipper;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// What the gRPC server task returns.
pub type GrpcTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Step 1: marks the replica as draining, then keeps serving for the pre-drain wait.
pub async fn begin(
    settings: Shutdown,
    ready: &AtomicBool,
    metrics: &Metrics,
    health: &HealthReporter,
) {
    ready.store(false, Ordering::Release);
    metrics.draining.set(1);
    health
        .set_not_serving::<AuthorizationServer<AuthzService>>()
        .await;
    health
        .set_not_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    tracing::info!(
        pre_drain_wait_ms = settings.pre_drain_wait.as_millis(),
        drain_timeout_ms = settings.drain_timeout.as_millis(),
        "Shutdown signal: not ready any more; serving on until the pre-drain wait is over"
    );
    tokio::time::sleep(settings.pre_drain_wait).await;
}

/// Step 2: tells the gRPC server to stop accepting (through `stop`) and waits for the streams
/// in flight, at most `settings.drain_timeout`. Past it, the server task is dropped and the
/// streams still open end with the process.
pub async fn streams(
    settings: Shutdown,
    stop: &watch::Sender<bool>,
    mut grpc: GrpcTask,
) -> anyhow::Result<()> {
    let started = Instant::now();
    tracing::info!("Draining: no new gRPC streams; waiting for the streams in flight");
    let _ = stop.send(true);
    match tokio::time::timeout(settings.drain_timeout, &mut grpc).await {
        Ok(joined) => {
            tracing::info!(
                took_ms = started.elapsed().as_millis(),
                "Every gRPC stream has ended"
            );
            joined
                .map_err(|e| anyhow::anyhow!("gRPC server task failed: {e}"))?
                .map_err(|e| anyhow::anyhow!("gRPC server failed: {e}"))
        }
        Err(_) => {
            grpc.abort();
            tracing::warn!(
                drain_timeout_ms = settings.drain_timeout.as_millis(),
                "Drain timeout passed with gRPC streams still open: they are cut"
            );
            Ok(())
        }
    }
}

/// Step 3: applies the last budget settlements, sends the log queue and exports the spans,
/// all at once, each bounded by `settings.flush_timeout` (spans by `traces.timeout_ms`, at
/// most the same): what cannot go by then is written to disk for the next start.
pub async fn flush(
    settings: Shutdown,
    ledger: &dyn Ledger,
    shipper: Option<Shipper>,
    exporter: Option<Exporter>,
) {
    let started = Instant::now();
    let bound = settings.flush_timeout;
    let settlements = async {
        if let Err(e) = ledger.flush_within(bound).await {
            tracing::error!(error = %e, "Could not apply every budget settlement");
        }
    };
    let events = async {
        if let Some(shipper) = shipper {
            // Every event is queued (a cut stream's may come later: it goes to the spool).
            shipper.shutdown_within(bound).await;
        }
    };
    let spans = async {
        if let Some(exporter) = exporter {
            // Bounded by `traces.timeout_ms`; no longer than the flush either.
            if tokio::time::timeout(bound, exporter.shutdown())
                .await
                .is_err()
            {
                tracing::warn!("Span export did not finish within the flush timeout");
            }
        }
    };
    tokio::join!(settlements, events, spans);
    tracing::info!(
        took_ms = started.elapsed().as_millis(),
        flush_timeout_ms = bound.as_millis(),
        "Flushed budget settlements and log events"
    );
}
