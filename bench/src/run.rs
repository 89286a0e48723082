//! The run plan: warm up both targets, then repeated rounds of open-loop, closed-loop and
//! streaming phases, baseline and gateway interleaved (ABBA order) so machine noise hits both.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::loadgen::{
    closed_loop, open_loop, streaming, ClosedLoopResult, LoadClient, OpenLoopResult, PhaseLimits,
    RequestSpec, Schedule, StreamResult,
};
use crate::stack::Stack;

/// Streaming requests sent before each streaming phase and not recorded.
const STREAM_WARMUP_SAMPLES: u64 = 3;
/// Upper bound on one streaming phase.
const STREAM_MAX: Duration = Duration::from_secs(60);
/// Workers of the initial warm-up.
const WARMUP_CONNECTIONS: usize = 8;

/// Which Envoy a phase measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Plain Envoy, no filters.
    Baseline,
    /// Envoy + ext_authz + ext_proc (Tollgate).
    Gateway,
}

impl Target {
    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            Target::Baseline => "envoy (baseline)",
            Target::Gateway => "envoy + tollgate",
        }
    }

    /// Order of the targets in round `round` (0-based): B,G then G,B, alternating, so that
    /// a slow drift of the machine does not always favour the same target.
    pub fn order(round: usize) -> [Target; 2] {
        if round.is_multiple_of(2) {
            [Target::Baseline, Target::Gateway]
        } else {
            [Target::Gateway, Target::Baseline]
        }
    }
}

/// What to measure, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Rounds; figures are medians over them.
    pub rounds: usize,
    /// Open-loop rates, req/s.
    pub rates: Vec<f64>,
    /// Measured window of each open-loop phase, s.
    pub duration_secs: f64,
    /// Warm-up before each phase (sent, not recorded), s; also the initial warm-up.
    pub warmup_secs: f64,
    /// Closed-loop workers.
    pub closed_connections: usize,
    /// Measured window of each closed-loop phase, s.
    pub closed_duration_secs: f64,
    /// Streaming samples per phase.
    pub stream_samples: u64,
    /// In-flight cap of the open loop.
    pub max_in_flight: usize,
    /// Per-request timeout, ms.
    pub request_timeout_ms: u64,
}

/// Everything measured against one target in one round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetRound {
    /// One entry per rate, in plan order.
    pub open_loop: Vec<OpenLoopResult>,
    /// Max throughput.
    pub closed_loop: ClosedLoopResult,
    /// Streaming TTFB / TTLB.
    pub streaming: StreamResult,
}

/// One round: both targets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundResult {
    /// 1-based round number.
    pub round: usize,
    /// Which target went first in each phase.
    pub order: [Target; 2],
    /// Plain Envoy.
    pub baseline: TargetRound,
    /// Envoy + Tollgate.
    pub gateway: TargetRound,
}

#[derive(Default)]
struct Partial {
    open_loop: Vec<OpenLoopResult>,
    closed_loop: Option<ClosedLoopResult>,
    streaming: Option<StreamResult>,
}

impl Partial {
    fn finish(self, target: Target) -> Result<TargetRound> {
        Ok(TargetRound {
            open_loop: self.open_loop,
            closed_loop: self
                .closed_loop
                .with_context(|| format!("{target:?}: closed loop missing"))?,
            streaming: self
                .streaming
                .with_context(|| format!("{target:?}: streaming missing"))?,
        })
    }
}

/// The request specs and client of one target.
struct Driver {
    client: LoadClient,
    plain: RequestSpec,
    stream: RequestSpec,
}

/// Runs the plan against a started stack.
pub async fn run_plan(stack: &mut Stack, plan: &Plan) -> Result<Vec<RoundResult>> {
    let timeout = Duration::from_millis(plan.request_timeout_ms);
    let idle = plan.max_in_flight.max(plan.closed_connections);
    let driver = |url: &str| -> Result<Driver> {
        Ok(Driver {
            client: LoadClient::new(idle, timeout),
            plain: stack.request(url, false)?,
            stream: stack.request(url, true)?,
        })
    };
    let baseline = driver(&stack.endpoints.baseline_url.clone())?;
    let gateway = driver(&stack.endpoints.gateway_url.clone())?;
    let pick = |t: Target| match t {
        Target::Baseline => &baseline,
        Target::Gateway => &gateway,
    };
    let warmup = Duration::from_secs_f64(plan.warmup_secs);
    let duration = Duration::from_secs_f64(plan.duration_secs);
    let closed = Duration::from_secs_f64(plan.closed_duration_secs);
    let limits = PhaseLimits {
        max_in_flight: plan.max_in_flight,
    };

    for t in Target::order(0) {
        tracing::info!(target = t.label(), "Warming up");
        let d = pick(t);
        closed_loop(
            &d.client,
            &d.plain,
            WARMUP_CONNECTIONS,
            Duration::ZERO,
            warmup.max(Duration::from_secs(1)),
        )
        .await?;
        streaming(&d.client, &d.stream, 0, 5, STREAM_MAX).await?;
    }
    stack.check_alive()?;

    let mut rounds = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        let order = Target::order(round);
        let mut parts = [Partial::default(), Partial::default()];
        let idx = |t: Target| match t {
            Target::Baseline => 0,
            Target::Gateway => 1,
        };
        for &rate in &plan.rates {
            for t in order {
                let d = pick(t);
                let schedule = Schedule::new(rate, warmup, duration)?;
                let r = open_loop(&d.client, &d.plain, schedule, limits).await?;
                tracing::info!(
                    round = round + 1,
                    target = t.label(),
                    rate,
                    p50_us = r.latency.p50_us,
                    p99_us = r.latency.p99_us,
                    ok = r.latency.ok,
                    errors = r.latency.errors.total(),
                    skipped = r.latency.skipped,
                    "Open loop done"
                );
                parts[idx(t)].open_loop.push(r);
                stack.check_alive()?;
            }
        }
        for t in order {
            let d = pick(t);
            let r =
                closed_loop(&d.client, &d.plain, plan.closed_connections, warmup, closed).await?;
            tracing::info!(
                round = round + 1,
                target = t.label(),
                rps = r.throughput_rps.round(),
                p50_us = r.latency.p50_us,
                p99_us = r.latency.p99_us,
                errors = r.latency.errors.total(),
                "Closed loop done"
            );
            parts[idx(t)].closed_loop = Some(r);
            stack.check_alive()?;
        }
        for t in order {
            let d = pick(t);
            let r = streaming(
                &d.client,
                &d.stream,
                STREAM_WARMUP_SAMPLES,
                plan.stream_samples,
                STREAM_MAX,
            )
            .await?;
            tracing::info!(
                round = round + 1,
                target = t.label(),
                ttfb_p50_us = r.ttfb.p50_us,
                ttlb_p50_us = r.ttlb.p50_us,
                errors = r.ttlb.errors.total(),
                "Streaming done"
            );
            parts[idx(t)].streaming = Some(r);
            stack.check_alive()?;
        }
        let [b, g] = parts;
        rounds.push(RoundResult {
            round: round + 1,
            order,
            baseline: b.finish(Target::Baseline)?,
            gateway: g.finish(Target::Gateway)?,
        });
    }
    Ok(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_alternates() {
        assert_eq!(Target::order(0), [Target::Baseline, Target::Gateway]);
        assert_eq!(Target::order(1), [Target::Gateway, Target::Baseline]);
        assert_eq!(Target::order(2), Target::order(0));
    }
}
