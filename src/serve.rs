//! `tollgate serve`: ext_authz and ext_proc on one gRPC server (TCP or Unix socket), gRPC
//! health, ADS for Envoy's provider clusters when `xds.enabled` (`xds/`), and the admin HTTP
//! endpoint (`/metrics`, `/healthz`, `/readyz`, `/startupz`), with
//! the config file hot-reloaded: a bad new file keeps the old config in force and says why.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tollgate_authz::AuthzService;
use tollgate_core::budget::{self, Ledger, MemoryLedger, RedisLedger};
use tollgate_core::config::{GrpcAddr, RestoreSource};
use tollgate_core::env::ProcessEnv;
use tollgate_core::metrics::{Metrics, ResultLabel};
use tollgate_core::ratelimit::{RateLimiter, RateStore, RedisRates};
use tollgate_core::{Config, SharedConfig};
use tollgate_extproc::trace::Exporter;
use tollgate_extproc::ExtProcService;
use tollgate_logger::{LogHandle, Shipper};

use crate::budget_metrics::ObservedLedger;

/// Loads a config file, turning every validation error into one readable message.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path, &ProcessEnv).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!("invalid config {}:\n{}", path.display(), lines.join("\n"))
    })
}

#[derive(Clone)]
struct Admin {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    budgets: Arc<ObservedLedger>,
}

/// The longest a scrape waits for the ledger's balances (budget gauges).
const BUDGET_REFRESH_TIMEOUT: Duration = Duration::from_secs(1);

async fn metrics_endpoint(State(a): State<Admin>) -> impl IntoResponse {
    let _ = tokio::time::timeout(BUDGET_REFRESH_TIMEOUT, a.budgets.refresh()).await;
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &a.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        ),
    }
}

async fn readyz(State(a): State<Admin>) -> StatusCode {
    if a.ready.load(Ordering::Acquire) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Re-reads the config file when it changes; keeps the old config when the new one is bad.
async fn watch_config(
    path: PathBuf,
    shared: SharedConfig,
    metrics: Metrics,
    xds: Option<crate::xds::Xds>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = modified(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = modified(&path);
        if now == last {
            continue;
        }
        last = now;
        let p = path.clone();
        // A config whose targets need another tokenizer loads it before it serves.
        let loaded = move || {
            load_config(&p).inspect(|c| {
                tollgate_extproc::budget::warm_tokenizers(
                    &tollgate_extproc::budget::tokenizers_needed(c),
                );
            })
        };
        match tokio::task::spawn_blocking(loaded).await {
            Ok(Ok(mut config)) => {
                config.adopt_tokens(&shared.load());
                config.adopt_routing_state(&shared.load());
                shared.store(Arc::new(config));
                if let Some(xds) = &xds {
                    xds.publish(&shared.load());
                }
                metrics
                    .reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                tracing::info!(path = %path.display(), "Reloaded config");
            }
            Ok(Err(e)) => {
                metrics
                    .reloads
                    .get_or_create(&ResultLabel { result: "rejected" })
                    .inc();
                tracing::error!(error = %e, "Rejected new config; the previous one stays in force");
            }
            Err(e) => tracing::error!(error = %e, "Config reload task failed"),
        }
    }
}

/// Where, under `logging.spool_dir`, settlements Redis did not take wait for the next start
/// when `budgets.redis.pending_dir` is not set.
const PENDING_UNDER_SPOOL: &str = "ledger";

/// The longest the spend restore from ClickHouse may take at start-up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds the spend the logger stored in the current periods to `ledger`. Read once at
/// start-up; a read error stops the start (budgets would otherwise start from zero).
async fn restore_spend(ledger: &dyn Ledger, source: RestoreSource) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let (lines, requests, from) = match source {
        RestoreSource::Ndjson(dir) => {
            if !dir.exists() {
                tracing::warn!(dir = %dir.display(), "No logger data to restore spend from yet (budgets.restore.ndjson_dir)");
                return Ok(());
            }
            let shown = dir.display().to_string();
            let records = tokio::task::spawn_blocking(move || {
                tollgate_logger::ndjson::read_records_live(&dir)
            })
            .await
            .context("spend restore task failed")?
            .with_context(|| {
                format!("cannot restore spend from {shown} (budgets.restore.ndjson_dir)")
            })?;
            let lines = budget::restored_lines(
                records.iter().map(|r| budget::Spend {
                    request_id: &r.request_id,
                    start_unix_nanos: r.start_time_unix_nanos,
                    owner: owner(&r.key_id, &r.team, &r.tenant, &r.end_user),
                    cost: u128::from(r.cost_picodollars),
                }),
                now,
            );
            (lines, records.len(), shown)
        }
        RestoreSource::ClickHouse(ch) => {
            let shown = format!("{} {}.{}", ch.url, ch.database, ch.table);
            let config = tollgate_logger::clickhouse::ClickHouseConfig {
                url: ch.url,
                database: ch.database,
                table: ch.table,
                user: ch.user,
                password: ch.password,
            };
            let starts = budget::restored_period_starts(now);
            let sums = tokio::time::timeout(
                RESTORE_TIMEOUT,
                tollgate_logger::usage::spend_since(&config, &starts),
            )
            .await
            .unwrap_or_else(|_| {
                Err(tollgate_logger::LoggerError::ClickHouse(format!(
                    "no answer within {} s",
                    RESTORE_TIMEOUT.as_secs()
                )))
            })
            .map_err(|e| {
                tracing::error!(clickhouse = %shown, error = %e, "Cannot restore spend from ClickHouse (budgets.restore.clickhouse); not starting");
                e
            })
            .with_context(|| {
                format!("cannot restore spend from ClickHouse at {shown} (budgets.restore.clickhouse)")
            })?;
            // One summed row per owner and span stands for its requests: the sums are already
            // deduplicated on request_id, so each gets an id of its own.
            let ids: Vec<String> = (0..sums.len()).map(|i| i.to_string()).collect();
            let lines = budget::restored_lines(
                sums.iter().zip(&ids).map(|(r, id)| budget::Spend {
                    request_id: id,
                    start_unix_nanos: r.since,
                    owner: owner(&r.key_id, &r.team, &r.tenant, &r.end_user),
                    cost: u128::try_from(r.cost_picodollars).unwrap_or(0),
                }),
                now,
            );
            (lines, sums.len(), shown)
        }
    };
    for (line, spent) in &lines {
        ledger
            .add_spent(std::slice::from_ref(line), *spent)
            .await
            .context("cannot restore spend into the ledger")?;
    }
    tracing::info!(from = %from, rows = requests, lines = lines.len(), "Restored spend of the current periods");
    Ok(())
}

/// A stored request's owner.
fn owner<'a>(key: &'a str, team: &'a str, tenant: &'a str, end_user: &'a str) -> budget::Owner<'a> {
    budget::Owner {
        key,
        team: Some(team),
        tenant: Some(tenant),
        end_user: Some(end_user),
    }
}

/// The addresses `serve` listens on: a port 0 in `listen` becomes the port the system picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The gRPC services (ext_authz, ext_proc, health).
    pub grpc: GrpcAddr,
    /// The admin HTTP endpoint.
    pub admin: SocketAddr,
}

impl Bound {
    /// The ready-file form: `{"grpc": "127.0.0.1:4000" | "unix:/path", "admin": "127.0.0.1:4001"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "grpc": self.grpc.to_string(),
            "admin": self.admin.to_string(),
        })
    }
}

/// Runs the services for `config_path` until `shutdown` resolves.
pub async fn serve(
    config_path: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_reporting(config_path, oneshot::channel().0, shutdown).await
}

/// [`serve`], sending the addresses it bound on `ready_tx` once it is ready (when `/readyz`
/// turns 200).
pub async fn serve_reporting(
    config_path: &Path,
    ready_tx: oneshot::Sender<Bound>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let path = config_path.to_owned();
    let config = tokio::task::spawn_blocking(move || load_config(&path))
        .await
        .context("config loading task failed")??;
    // The tokenizers the config's targets count with (tens of MB each; none without
    // OpenAI-family targets) load while the listeners start; readiness waits for them.
    let tokenizers = tokio::task::spawn_blocking({
        let needed = tollgate_extproc::budget::tokenizers_needed(&config);
        move || tollgate_extproc::budget::warm_tokenizers(&needed)
    });
    crate::netcheck::run(&config).await?;
    let listen = config.listen.clone();
    let logging = config.logging.clone();
    let traces = config.traces.clone();
    let shared: SharedConfig = Arc::new(ArcSwap::from_pointee(config));
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    // The ADS server for Envoy's provider clusters. Read once: `xds.enabled` takes effect on
    // restart; the clusters themselves follow every reload.
    let xds = shared
        .load()
        .xds
        .enabled
        .then(|| crate::xds::Xds::new(&shared.load(), metrics.clone()));
    // One ledger for ext_authz's precheck and ext_proc's reservations; it outlives reloads.
    // Read once: a change to `budgets.redis` takes effect on restart.
    let redis = shared.load().budgets.redis.clone();
    // Rate-limit state (ext_authz checks, ext_proc charges tokens) lives beside the ledger:
    // in memory for one replica, in the same Redis for many. Both outlive reloads.
    // Stored Responses API responses: in this replica's memory, or in the ledger's Redis when
    // `responses.backend: redis` (read once too).
    let mut response_store = tollgate_extproc::responses::store::Backend::Memory;
    let (ledger, limiter): (Arc<dyn Ledger>, Arc<dyn RateStore>) = match redis {
        Some(r) => {
            // Settlements Redis does not take wait here for the next start.
            let pending = r.pending_dir.clone().or_else(|| {
                logging
                    .as_ref()
                    .map(|l| l.spool_dir.join(PENDING_UNDER_SPOOL))
            });
            let ledger =
                RedisLedger::connect_with(r.url.expose(), &r.key_prefix, r.timeout, pending)
                    .await
                    .context("cannot reach the Redis ledger (budgets.redis)")?;
            // An earlier run's settlements that Redis did not take (it was away when that run
            // stopped): applied before serving, so their reservations are not held any more.
            match ledger.apply_pending().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    settlements = n,
                    "Applied the budget settlements an earlier run left pending"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "Cannot apply every pending budget settlement; the rest waits for the next start (their reservations stay held meanwhile)")
                }
            }
            let rates = RedisRates::new(ledger.connection(), &r.key_prefix, r.timeout);
            if shared.load().responses.backend == tollgate_core::config::ResponsesBackend::Redis {
                response_store = tollgate_extproc::responses::store::Backend::Redis(
                    tollgate_extproc::responses::store::RedisStore::new(
                        ledger.connection(),
                        &r.key_prefix,
                        r.timeout,
                    ),
                );
            }
            // The response cache in the same Redis when `cache.backend: redis` (read once).
            if shared
                .load()
                .cache
                .as_ref()
                .is_some_and(|c| c.backend == tollgate_core::config::CacheBackend::Redis)
            {
                tollgate_extproc::cache::Store::install(tollgate_extproc::cache::Store::redis(
                    ledger.connection(),
                    &r.key_prefix,
                    r.timeout,
                    metrics.clone(),
                ));
            }
            (Arc::new(ledger), Arc::new(rates))
        }
        None => (Arc::new(MemoryLedger::new()), Arc::new(RateLimiter::new())),
    };
    if let Some(source) = shared.load().budgets.restore.clone() {
        restore_spend(ledger.as_ref(), source).await?;
    }
    // The budget gauges follow the lines requests reserve on.
    let budgets = Arc::new(ObservedLedger::new(ledger, metrics.clone()));
    let ledger: Arc<dyn Ledger> = Arc::clone(&budgets) as Arc<dyn Ledger>;
    // Read once: a change to `logging` takes effect on restart.
    let shipper = match &logging {
        Some(l) => Some(
            Shipper::start(l, metrics.clone())
                .await
                .context("cannot start log shipping (logging)")?,
        ),
        None => None,
    };
    // Every request's log event feeds the request-log metrics, shipped or not.
    let log = shipper
        .as_ref()
        .map_or_else(|| LogHandle::metrics_only(metrics.clone()), Shipper::handle);
    // Read once too: a change to `traces` takes effect on restart.
    let exporter = match &traces {
        Some(t) => {
            Some(Exporter::start(t, metrics.clone()).context("cannot start span export (traces)")?)
        }
        None => None,
    };

    let admin_listener = tokio::net::TcpListener::bind(listen.admin)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (listen.admin): is the port busy?",
                listen.admin
            )
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .context("cannot read the admin listener's address (listen.admin)")?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let admin = axum::Router::new()
        .route("/metrics", get(metrics_endpoint))
        .route("/healthz", get(|| async { "ok" }))
        .route("/startupz", get(readyz))
        .route("/readyz", get(readyz))
        .with_state(Admin {
            registry: Arc::new(registry),
            ready: Arc::clone(&ready),
            budgets,
        });
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(admin_listener, admin)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.changed().await;
            })
            .await
    });
    // Vertex AI access tokens, fetched and refreshed in the background.
    let token_task = tokio::spawn(tollgate_extproc::google::keep_tokens_fresh(
        Arc::clone(&shared),
        stop_rx.clone(),
    ));
    // AWS chain credentials and GCE metadata tokens, fetched and refreshed in the background.
    let credentials_task = tokio::spawn(tollgate_extproc::aws::keep_credentials_fresh(
        Arc::clone(&shared),
        metrics.clone(),
        stop_rx.clone(),
    ));
    // Targets out of rotation: counted for the gauge, and shared between replicas through
    // the ledger's Redis when there is one (read once, like `budgets.redis`).
    let cooldown_task = tokio::spawn(tollgate_extproc::cooldown::run(
        Arc::clone(&shared),
        metrics.clone(),
        shared
            .load()
            .budgets
            .redis
            .as_ref()
            .map(|r| tollgate_extproc::cooldown::Sharing {
                url: r.url.expose().to_owned(),
                prefix: r.key_prefix.clone(),
            }),
        stop_rx.clone(),
    ));
    let reload_task = tokio::spawn(watch_config(
        config_path.to_owned(),
        Arc::clone(&shared),
        metrics.clone(),
        xds.clone(),
        stop_rx.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AuthorizationServer<AuthzService>>()
        .await;
    health
        .set_serving::<ExternalProcessorServer<ExtProcService>>()
        .await;
    // One key gate, asked by ext_authz or, with no ext_authz filter in front, by ext_proc at
    // the request headers: same rate state, same ledger, same refusal log.
    // Keys the file does not list, resolved through the control plane; its change feed runs
    // until the stop signal. Read once: `control_plane` takes effect on restart (its secrets
    // follow reloads).
    let control_plane = match shared.load().control_plane.clone() {
        Some(settings) => {
            if settings.previous_secret.is_some() {
                tracing::warn!("control_plane.previous_secret_env is set: bundles signed with the previous secret are still accepted; remove it once every control plane signs with the current one");
            }
            let url = settings.url.clone();
            let client = tollgate_authz::control_plane::ControlPlaneClient::new(
                settings,
                Arc::clone(&shared),
                metrics.clone(),
            )
            .context("cannot start the control-plane client (control_plane)")?;
            tracing::info!(url = %url, "Resolving keys the config does not list through the control plane");
            Some(client)
        }
        None => None,
    };
    let feed_task = control_plane
        .clone()
        .map(|c| tokio::spawn(c.run_feed(stop_rx.clone())));
    let authz = AuthzService::new(Arc::clone(&shared), metrics.clone())
        .with_control_plane(control_plane)
        .with_log(Some(log.clone()))
        .with_ledger(Arc::clone(&ledger))
        .with_limiter(Arc::clone(&limiter));
    let gate = authz.gate().clone();
    // JWT client keys: JWKS URLs fetched once before ready, then kept fresh in the background.
    gate.jwt().prime(&shared.load()).await;
    let jwks_task =
        tokio::spawn(Arc::clone(gate.jwt()).keep_fresh(Arc::clone(&shared), stop_rx.clone()));
    // The gRPC server stops on its own signal: the admin endpoint serves on through the drain.
    // ADS streams never end by themselves, so the same signal ends them.
    let (grpc_stop_tx, mut grpc_stop) = watch::channel(false);
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AuthorizationServer::new(authz))
        .add_service(
            ExternalProcessorServer::new(
                ExtProcService::new(Arc::clone(&shared), metrics.clone())
                    .with_log(Some(log.clone()))
                    .with_ledger(Arc::clone(&ledger))
                    .with_limiter(Arc::clone(&limiter))
                    .with_gate(gate)
                    .with_tracer(exporter.as_ref().map(Exporter::tracer))
                    .with_response_store(response_store.clone()),
            )
            .max_decoding_message_size(tollgate_extproc::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(tollgate_extproc::server::MAX_MESSAGE_BYTES),
        )
        .add_optional_service(xds.as_ref().map(|x| x.service(grpc_stop.clone())));

    let grpc_shutdown = async move {
        let _ = grpc_stop.changed().await;
    };
    let (grpc, grpc_addr) = match &listen.grpc {
        GrpcAddr::Tcp(addr) => {
            let incoming = tonic::transport::server::TcpIncoming::bind(*addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (listen.grpc): {e}"))?
                .with_nodelay(Some(true));
            let bound = incoming
                .local_addr()
                .context("cannot read the gRPC listener's address (listen.grpc)")?;
            (
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, grpc_shutdown)),
                GrpcAddr::Tcp(bound),
            )
        }
        GrpcAddr::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("cannot listen on {} (listen.grpc)", path.display()))?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            (
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, grpc_shutdown)),
                listen.grpc.clone(),
            )
        }
    };
    tokenizers.await.context("cannot load the tokenizers")?;
    ready.store(true, Ordering::Release);
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "Tollgate serving");
    // Nobody listening for the addresses is fine: `serve` without `--ready-file`.
    let _ = ready_tx.send(Bound {
        grpc: grpc_addr,
        admin: admin_addr,
    });

    shutdown.await;
    let settings = shared.load().shutdown;
    crate::drain::begin(settings, &ready, &metrics, &health).await;
    let grpc_result = crate::drain::streams(settings, &grpc_stop_tx, grpc).await;
    // Every stream has ended (or was cut at the drain timeout), so every settlement and log
    // event is handed over: flush them, in parallel, within `shutdown.flush_timeout_ms`.
    crate::drain::flush(settings, ledger.as_ref(), shipper, exporter).await;
    tracing::info!("Drained: stopping");
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    let _ = reload_task.await;
    let _ = jwks_task.await;
    let _ = token_task.await;
    let _ = credentials_task.await;
    let _ = cooldown_task.await;
    if let Some(feed) = feed_task {
        let _ = feed.await;
    }
    if let GrpcAddr::Unix(path) = &listen.grpc {
        let _ = std::fs::remove_file(path);
    }
    grpc_result
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
