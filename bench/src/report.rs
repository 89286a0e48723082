//! Aggregation over rounds (medians, paired gateway − baseline deltas, throughput ratios) and
//! the Markdown / JSON report.

use serde::Serialize;

use crate::loadgen::{ClosedLoopResult, OpenLoopResult};
use crate::run::{Plan, RoundResult, Target, TargetRound};
use crate::stats::{median, LatencyStats};

/// The budget stated for the gateway: open loop at this rate…
pub const BUDGET_RATE: f64 = 200.0;
/// …may add at most this much to p50, µs…
pub const BUDGET_ADDED_P50_US: f64 = 400.0;
/// …and at most this much to p99, µs.
pub const BUDGET_ADDED_P99_US: f64 = 1200.0;

/// One target's figures for one phase over all rounds: percentiles are medians over rounds,
/// counts are totals over rounds. µs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    /// Median over rounds of p50.
    pub p50_us: f64,
    /// Median over rounds of p90.
    pub p90_us: f64,
    /// Median over rounds of p99.
    pub p99_us: f64,
    /// Median over rounds of the max.
    pub max_us: f64,
    /// Successful requests, all rounds.
    pub ok: u64,
    /// Failed requests, all rounds.
    pub errors: u64,
    /// Skipped (in-flight cap) requests, all rounds.
    pub skipped: u64,
}

impl Side {
    fn of(stats: &[&LatencyStats]) -> Self {
        let med = |f: fn(&LatencyStats) -> f64| {
            median(&stats.iter().map(|s| f(s)).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        Self {
            p50_us: med(|s| s.p50_us as f64),
            p90_us: med(|s| s.p90_us as f64),
            p99_us: med(|s| s.p99_us as f64),
            max_us: med(|s| s.max_us as f64),
            ok: stats.iter().map(|s| s.ok).sum(),
            errors: stats.iter().map(|s| s.errors.total()).sum(),
            skipped: stats.iter().map(|s| s.skipped).sum(),
        }
    }
}

/// Gateway − baseline, median over rounds of the per-round (paired) difference, µs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Added {
    /// Added p50.
    pub p50_us: f64,
    /// Added p90.
    pub p90_us: f64,
    /// Added p99.
    pub p99_us: f64,
}

impl Added {
    fn of(pairs: &[(&LatencyStats, &LatencyStats)]) -> Self {
        let med = |f: fn(&LatencyStats) -> u64| {
            median(
                &pairs
                    .iter()
                    .map(|(b, g)| f(g) as f64 - f(b) as f64)
                    .collect::<Vec<_>>(),
            )
            .unwrap_or(0.0)
        };
        Self {
            p50_us: med(|s| s.p50_us),
            p90_us: med(|s| s.p90_us),
            p99_us: med(|s| s.p99_us),
        }
    }
}

/// Open loop at one rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenSummary {
    /// req/s.
    pub rate: f64,
    /// Plain Envoy.
    pub baseline: Side,
    /// Envoy + Tollgate.
    pub gateway: Side,
    /// Gateway − baseline.
    pub added: Added,
    /// Worst p99 pacing lag of the generator over all rounds and targets, µs.
    pub pacer_lag_p99_us: u64,
}

/// Closed loop (max throughput).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClosedSummary {
    /// Workers.
    pub connections: usize,
    /// Median over rounds, req/s.
    pub baseline_rps: f64,
    /// Median over rounds, req/s.
    pub gateway_rps: f64,
    /// Median over rounds of gateway_rps / baseline_rps.
    pub ratio: f64,
    /// Plain Envoy latency.
    pub baseline: Side,
    /// Envoy + Tollgate latency.
    pub gateway: Side,
    /// Gateway − baseline.
    pub added: Added,
}

/// Streaming time to first / last byte.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamSummary {
    /// Plain Envoy TTFB.
    pub baseline_ttfb: Side,
    /// Envoy + Tollgate TTFB.
    pub gateway_ttfb: Side,
    /// Gateway − baseline TTFB.
    pub added_ttfb: Added,
    /// Plain Envoy TTLB.
    pub baseline_ttlb: Side,
    /// Envoy + Tollgate TTLB.
    pub gateway_ttlb: Side,
    /// Gateway − baseline TTLB.
    pub added_ttlb: Added,
}

/// The latency budget, checked informationally.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetCheck {
    /// Rate the budget applies to.
    pub rate: f64,
    /// Measured added p50, µs.
    pub added_p50_us: f64,
    /// Allowed added p50, µs.
    pub limit_p50_us: f64,
    /// Measured added p99, µs.
    pub added_p99_us: f64,
    /// Allowed added p99, µs.
    pub limit_p99_us: f64,
    /// Both within budget and no gateway errors at that rate.
    pub met: bool,
}

/// Everything the Markdown shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// One per rate.
    pub open_loop: Vec<OpenSummary>,
    /// Max throughput.
    pub closed_loop: Option<ClosedSummary>,
    /// Streaming.
    pub streaming: Option<StreamSummary>,
    /// `None` when the budget rate was not measured.
    pub budget: Option<BudgetCheck>,
}

/// Aggregates the rounds.
pub fn summarize(rounds: &[RoundResult]) -> Summary {
    let b: Vec<&TargetRound> = rounds.iter().map(|r| &r.baseline).collect();
    let g: Vec<&TargetRound> = rounds.iter().map(|r| &r.gateway).collect();

    let rates: Vec<f64> = b
        .first()
        .map(|t| t.open_loop.iter().map(|o| o.rate).collect())
        .unwrap_or_default();
    let open_loop = rates
        .iter()
        .enumerate()
        .map(|(i, &rate)| {
            let pick = |v: &[&TargetRound]| -> Vec<OpenLoopResult> {
                v.iter()
                    .filter_map(|t| t.open_loop.get(i).cloned())
                    .collect()
            };
            let (bo, go) = (pick(&b), pick(&g));
            let lat = |v: &[OpenLoopResult]| -> Vec<LatencyStats> {
                v.iter().map(|o| o.latency.clone()).collect()
            };
            let (bl, gl) = (lat(&bo), lat(&go));
            OpenSummary {
                rate,
                baseline: Side::of(&bl.iter().collect::<Vec<_>>()),
                gateway: Side::of(&gl.iter().collect::<Vec<_>>()),
                added: Added::of(&bl.iter().zip(gl.iter()).collect::<Vec<_>>()),
                pacer_lag_p99_us: bo
                    .iter()
                    .chain(go.iter())
                    .map(|o| o.pacer_lag_p99_us)
                    .max()
                    .unwrap_or(0),
            }
        })
        .collect::<Vec<_>>();

    let closed_loop = (!rounds.is_empty()).then(|| {
        let bc: Vec<&ClosedLoopResult> = b.iter().map(|t| &t.closed_loop).collect();
        let gc: Vec<&ClosedLoopResult> = g.iter().map(|t| &t.closed_loop).collect();
        let rps = |v: &[&ClosedLoopResult]| {
            median(&v.iter().map(|c| c.throughput_rps).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        let ratios: Vec<f64> = bc
            .iter()
            .zip(gc.iter())
            .filter(|(x, _)| x.throughput_rps > 0.0)
            .map(|(x, y)| y.throughput_rps / x.throughput_rps)
            .collect();
        ClosedSummary {
            connections: bc.first().map(|c| c.connections).unwrap_or(0),
            baseline_rps: rps(&bc),
            gateway_rps: rps(&gc),
            ratio: median(&ratios).unwrap_or(0.0),
            baseline: Side::of(&bc.iter().map(|c| &c.latency).collect::<Vec<_>>()),
            gateway: Side::of(&gc.iter().map(|c| &c.latency).collect::<Vec<_>>()),
            added: Added::of(
                &bc.iter()
                    .map(|c| &c.latency)
                    .zip(gc.iter().map(|c| &c.latency))
                    .collect::<Vec<_>>(),
            ),
        }
    });

    let streaming = (!rounds.is_empty()).then(|| {
        let bf: Vec<&LatencyStats> = b.iter().map(|t| &t.streaming.ttfb).collect();
        let gf: Vec<&LatencyStats> = g.iter().map(|t| &t.streaming.ttfb).collect();
        let bl: Vec<&LatencyStats> = b.iter().map(|t| &t.streaming.ttlb).collect();
        let gl: Vec<&LatencyStats> = g.iter().map(|t| &t.streaming.ttlb).collect();
        let pairs = |x: &[&'_ LatencyStats], y: &[&'_ LatencyStats]| {
            Added::of(&x.iter().copied().zip(y.iter().copied()).collect::<Vec<_>>())
        };
        StreamSummary {
            baseline_ttfb: Side::of(&bf),
            gateway_ttfb: Side::of(&gf),
            added_ttfb: pairs(&bf, &gf),
            baseline_ttlb: Side::of(&bl),
            gateway_ttlb: Side::of(&gl),
            added_ttlb: pairs(&bl, &gl),
        }
    });

    let budget = open_loop
        .iter()
        .find(|o| (o.rate - BUDGET_RATE).abs() < 1e-9)
        .map(|o| BudgetCheck {
            rate: o.rate,
            added_p50_us: o.added.p50_us,
            limit_p50_us: BUDGET_ADDED_P50_US,
            added_p99_us: o.added.p99_us,
            limit_p99_us: BUDGET_ADDED_P99_US,
            met: o.added.p50_us <= BUDGET_ADDED_P50_US
                && o.added.p99_us <= BUDGET_ADDED_P99_US
                && o.gateway.errors == 0
                && o.gateway.ok > 0,
        });

    Summary {
        open_loop,
        closed_loop,
        streaming,
        budget,
    }
}

/// Context printed above the tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    /// The command that reproduces this run.
    pub command: String,
    /// `envoy --version`, if it answered.
    pub envoy_version: String,
    /// `tollgate --version`, if it answered.
    pub tollgate_version: String,
    /// CPUs visible to the harness.
    pub cpus: usize,
    /// How Envoy reached the gateway's gRPC services.
    pub grpc_transport: String,
    /// Mock flags used.
    pub mock_flags: String,
    /// Wall time of the whole run, s.
    pub wall_secs: f64,
}

/// The JSON report: inputs, raw per-round numbers and the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Context.
    pub meta: Meta,
    /// What was run.
    pub plan: Plan,
    /// Raw numbers, one entry per round.
    pub rounds: Vec<RoundResult>,
    /// Medians and deltas.
    pub summary: Summary,
}

/// Milliseconds with precision that suits the magnitude (input in µs).
pub fn fmt_ms(us: f64) -> String {
    let ms = us / 1000.0;
    let a = ms.abs();
    if a < 10.0 {
        format!("{ms:.3}")
    } else if a < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// A signed millisecond delta (input in µs), e.g. `+0.125`.
pub fn fmt_delta_ms(us: f64) -> String {
    let s = fmt_ms(us);
    if us >= 0.0 {
        format!("+{s}")
    } else {
        s
    }
}

fn fmt_rate(rate: f64) -> String {
    if rate.fract() == 0.0 {
        format!("{rate:.0}")
    } else {
        format!("{rate}")
    }
}

fn side_row(out: &mut String, first: &str, label: &str, s: &Side) {
    out.push_str(&format!(
        "| {first} | {label} | {} | {} | {} | {} | {} | {} | {} |\n",
        fmt_ms(s.p50_us),
        fmt_ms(s.p90_us),
        fmt_ms(s.p99_us),
        fmt_ms(s.max_us),
        s.ok,
        s.errors,
        s.skipped
    ));
}

fn added_row(out: &mut String, first: &str, a: &Added) {
    out.push_str(&format!(
        "| {first} | **added (gateway − baseline)** | **{}** | {} | **{}** | | | | |\n",
        fmt_delta_ms(a.p50_us),
        fmt_delta_ms(a.p90_us),
        fmt_delta_ms(a.p99_us)
    ));
}

/// The Markdown report.
pub fn render_markdown(meta: &Meta, plan: &Plan, s: &Summary) -> String {
    let mut o = String::new();
    let rounds = plan.rounds;
    o.push_str("## Tollgate load benchmark: plain Envoy vs Envoy + Tollgate\n\n");
    o.push_str(&format!(
        "Same mock upstream, both Envoys `--concurrency 1`, HTTP/1.1 keep-alive client on 127.0.0.1. \
         {rounds} round(s), baseline and gateway interleaved (order alternates per round). \
         Latencies in **ms**; figures are **medians over rounds**; *added* rows are the median of the \
         per-round paired differences (so they need not equal the difference of the rows above); \
         ok / errors / skipped are totals over rounds.\n\n"
    ));
    o.push_str(&format!(
        "- machine: {} CPU(s); gRPC to tollgate over {}; mock flags: `{}`; wall time {:.0} s\n- envoy: `{}`\n- tollgate: `{}`\n\n",
        meta.cpus, meta.grpc_transport, meta.mock_flags, meta.wall_secs, meta.envoy_version, meta.tollgate_version
    ));

    o.push_str(&format!(
        "### Open loop (latency from *scheduled* send to end of body; {} s per rate after {} s warm-up)\n\n",
        plan.duration_secs, plan.warmup_secs
    ));
    o.push_str("| rate (req/s) | target | p50 | p90 | p99 | max | ok | errors | skipped |\n");
    o.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for ol in &s.open_loop {
        let r = fmt_rate(ol.rate);
        side_row(&mut o, &r, Target::Baseline.label(), &ol.baseline);
        side_row(&mut o, &r, Target::Gateway.label(), &ol.gateway);
        added_row(&mut o, &r, &ol.added);
    }
    if let Some(worst) = s.open_loop.iter().map(|o| o.pacer_lag_p99_us).max() {
        o.push_str(&format!(
            "\nGenerator pacing lag p99 (worst phase): {} ms{}\n",
            fmt_ms(worst as f64),
            if worst > 1000 {
                " — the load generator itself fell behind; treat open-loop figures with care"
            } else {
                ""
            }
        ));
    }

    if let Some(c) = &s.closed_loop {
        o.push_str(&format!(
            "\n### Closed loop (max throughput: {} connections × {} s)\n\n",
            c.connections, plan.closed_duration_secs
        ));
        o.push_str("| target | req/s | p50 | p99 | errors |\n|---|---:|---:|---:|---:|\n");
        o.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} |\n",
            Target::Baseline.label(),
            c.baseline_rps,
            fmt_ms(c.baseline.p50_us),
            fmt_ms(c.baseline.p99_us),
            c.baseline.errors
        ));
        o.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} |\n",
            Target::Gateway.label(),
            c.gateway_rps,
            fmt_ms(c.gateway.p50_us),
            fmt_ms(c.gateway.p99_us),
            c.gateway.errors
        ));
        o.push_str(&format!(
            "| **gateway / baseline** | **{:.2}×** | {} | {} | |\n",
            c.ratio,
            fmt_delta_ms(c.added.p50_us),
            fmt_delta_ms(c.added.p99_us)
        ));
    }

    if let Some(st) = &s.streaming {
        o.push_str(&format!(
            "\n### Streaming (`\"stream\": true`, {} sequential samples per round)\n\n",
            plan.stream_samples
        ));
        o.push_str("| target | TTFB p50 | TTFB p99 | TTLB p50 | TTLB p99 | ok | errors |\n");
        o.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (label, f, l) in [
            (
                Target::Baseline.label(),
                &st.baseline_ttfb,
                &st.baseline_ttlb,
            ),
            (Target::Gateway.label(), &st.gateway_ttfb, &st.gateway_ttlb),
        ] {
            o.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {} | {} |\n",
                fmt_ms(f.p50_us),
                fmt_ms(f.p99_us),
                fmt_ms(l.p50_us),
                fmt_ms(l.p99_us),
                l.ok,
                l.errors
            ));
        }
        o.push_str(&format!(
            "| **added (gateway − baseline)** | **{}** | {} | **{}** | {} | | |\n",
            fmt_delta_ms(st.added_ttfb.p50_us),
            fmt_delta_ms(st.added_ttfb.p99_us),
            fmt_delta_ms(st.added_ttlb.p50_us),
            fmt_delta_ms(st.added_ttlb.p99_us)
        ));
    }

    o.push_str("\n### Budget (informational)\n\n");
    match &s.budget {
        Some(b) => o.push_str(&format!(
            "At {} req/s: added p50 {} ms (budget ≤ {} ms), added p99 {} ms (budget ≤ {} ms), gateway errors {} → **{}**\n",
            fmt_rate(b.rate),
            fmt_delta_ms(b.added_p50_us),
            fmt_ms(b.limit_p50_us),
            fmt_delta_ms(b.added_p99_us),
            fmt_ms(b.limit_p99_us),
            s.open_loop.iter().find(|x| x.rate == b.rate).map(|x| x.gateway.errors).unwrap_or(0),
            if b.met { "MET" } else { "NOT MET" }
        )),
        None => o.push_str(&format!(
            "Not evaluated: the budget applies at {} req/s, which this run did not measure.\n",
            fmt_rate(BUDGET_RATE)
        )),
    }
    let errs: u64 = s
        .open_loop
        .iter()
        .map(|x| x.baseline.errors + x.gateway.errors)
        .chain(
            s.closed_loop
                .iter()
                .map(|c| c.baseline.errors + c.gateway.errors),
        )
        .chain(
            s.streaming
                .iter()
                .map(|st| st.baseline_ttlb.errors + st.gateway_ttlb.errors),
        )
        .sum();
    if errs > 0 {
        o.push_str(&format!(
            "\n**Warning:** {errs} request(s) failed; see `first_error` in the JSON report. \
             Latency figures only include successful requests.\n"
        ));
    }
    o.push_str(&format!("\nReproduce:\n\n```sh\n{}\n```\n", meta.command));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::StreamResult;
    use crate::stats::ErrorCounts;

    fn lat(p50: u64, p99: u64) -> LatencyStats {
        LatencyStats {
            ok: 100,
            errors: ErrorCounts::default(),
            skipped: 0,
            p50_us: p50,
            p90_us: (p50 + p99) / 2,
            p99_us: p99,
            max_us: p99 * 2,
            mean_us: p50 as f64,
            first_error: None,
        }
    }

    fn target(p50: u64, p99: u64, rps: f64) -> TargetRound {
        TargetRound {
            open_loop: vec![
                OpenLoopResult {
                    rate: 200.0,
                    duration_s: 10.0,
                    scheduled: 100,
                    latency: lat(p50, p99),
                    pacer_lag_p99_us: 60,
                    pacer_lag_max_us: 200,
                },
                OpenLoopResult {
                    rate: 1000.0,
                    duration_s: 10.0,
                    scheduled: 100,
                    latency: lat(p50 * 2, p99 * 2),
                    pacer_lag_p99_us: 80,
                    pacer_lag_max_us: 300,
                },
            ],
            closed_loop: ClosedLoopResult {
                connections: 32,
                duration_s: 10.0,
                throughput_rps: rps,
                latency: lat(p50 * 10, p99 * 10),
            },
            streaming: StreamResult {
                samples: 100,
                ttfb: lat(p50, p99),
                ttlb: lat(p50 * 20, p99 * 20),
                mean_body_bytes: 900.0,
            },
        }
    }

    fn round(n: usize, b: TargetRound, g: TargetRound) -> RoundResult {
        RoundResult {
            round: n,
            order: Target::order(n - 1),
            baseline: b,
            gateway: g,
        }
    }

    fn plan() -> Plan {
        Plan {
            rounds: 3,
            rates: vec![200.0, 1000.0],
            duration_secs: 10.0,
            warmup_secs: 1.0,
            closed_connections: 32,
            closed_duration_secs: 10.0,
            stream_samples: 200,
            max_in_flight: 512,
            request_timeout_ms: 5000,
        }
    }

    #[test]
    fn summary_takes_medians_and_paired_deltas() {
        let rounds = vec![
            round(1, target(300, 900, 10_000.0), target(500, 1500, 5_000.0)),
            round(2, target(400, 1000, 12_000.0), target(700, 2000, 7_200.0)),
            round(3, target(350, 5000, 11_000.0), target(600, 5600, 5_500.0)),
        ];
        let s = summarize(&rounds);
        let o = &s.open_loop[0];
        assert_eq!(o.rate, 200.0);
        assert_eq!(o.baseline.p50_us, 350.0);
        assert_eq!(o.gateway.p50_us, 600.0);
        // Paired differences: 200, 300, 250 → 250; p99: 600, 1000, 600 → 600.
        assert_eq!(o.added.p50_us, 250.0);
        assert_eq!(o.added.p99_us, 600.0);
        assert_eq!(o.baseline.ok, 300);
        assert_eq!(o.pacer_lag_p99_us, 60);
        assert_eq!(s.open_loop[1].rate, 1000.0);
        let c = s.closed_loop.unwrap();
        assert_eq!(c.baseline_rps, 11_000.0);
        assert_eq!(c.gateway_rps, 5_500.0);
        // Ratios 0.5, 0.6, 0.5 → 0.5.
        assert_eq!(c.ratio, 0.5);
        let b = s.budget.unwrap();
        assert!(b.met, "{b:?}");
        assert_eq!(b.added_p50_us, 250.0);
    }

    #[test]
    fn budget_fails_on_excess_or_errors() {
        let rounds = vec![round(1, target(300, 900, 1.0), target(800, 1000, 1.0))];
        assert!(!summarize(&rounds).budget.unwrap().met);
        let mut g = target(310, 900, 1.0);
        g.open_loop[0].latency.errors.status = 3;
        let rounds = vec![round(1, target(300, 900, 1.0), g)];
        assert!(!summarize(&rounds).budget.unwrap().met);
    }

    #[test]
    fn no_rounds_no_panic() {
        let s = summarize(&[]);
        assert!(s.open_loop.is_empty() && s.closed_loop.is_none() && s.budget.is_none());
    }

    #[test]
    fn ms_formatting() {
        assert_eq!(fmt_ms(412.0), "0.412");
        assert_eq!(fmt_ms(12_345.0), "12.35");
        assert_eq!(fmt_ms(123_456.0), "123.5");
        assert_eq!(fmt_delta_ms(250.0), "+0.250");
        assert_eq!(fmt_delta_ms(-50.0), "-0.050");
        assert_eq!(fmt_delta_ms(0.0), "+0.000");
    }

    #[test]
    fn markdown_has_every_section() {
        let rounds = vec![round(
            1,
            target(300, 900, 10_000.0),
            target(500, 1500, 5_000.0),
        )];
        let s = summarize(&rounds);
        let meta = Meta {
            command: "tollgate-bench --rounds 1".into(),
            envoy_version: "1.40.0".into(),
            tollgate_version: "0.1.0".into(),
            cpus: 2,
            grpc_transport: "tcp".into(),
            mock_flags: "--chunk-delay-ms 1".into(),
            wall_secs: 12.0,
        };
        let md = render_markdown(&meta, &plan(), &s);
        for needle in [
            "### Open loop",
            "| 200 | envoy (baseline) | 0.300 |",
            "| 200 | **added (gateway − baseline)** | **+0.200** |",
            "| 1000 | envoy + tollgate | 1.000 |",
            "**0.50×**",
            "### Streaming",
            "→ **MET**",
            "tollgate-bench --rounds 1",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        assert!(!md.contains("Warning"));
    }
}
