//! The evaluation stage's metrics (`tollgate logger` with an `evaluators` section): results by
//! evaluator and outcome, the queue's depth, drops and evaluation latency. Registered with
//! every other metric by [`crate::metrics::Metrics::register`], listed in `docs/METRICS.md`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of `tollgate_evaluations_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvaluationLabels {
    /// The evaluator's name.
    pub evaluator: String,
    /// `passed`, `failed`, `error`, `timeout` or `skipped` (no captured output to judge).
    pub outcome: &'static str,
}

/// The label of `tollgate_evaluation_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvaluatorLabel {
    /// The evaluator's name.
    pub evaluator: String,
}

/// The label of `tollgate_evaluation_drops_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// `queue_full` (an event not evaluated) or `write_failed` (results not stored).
    pub reason: &'static str,
}

fn evaluation_histogram() -> Histogram {
    // 50 µs .. ~110 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

/// The evaluation stage's metrics.
#[derive(Clone, Debug)]
pub struct EvaluationMetrics {
    /// `tollgate_evaluations_total`.
    pub results: Family<EvaluationLabels, Counter>,
    /// `tollgate_evaluation_queue_depth`.
    pub queue_depth: Gauge,
    /// `tollgate_evaluation_drops_total`.
    pub drops: Family<DropLabel, Counter>,
    /// `tollgate_evaluation_duration_seconds`.
    pub duration: Family<EvaluatorLabel, Histogram>,
}

impl Default for EvaluationMetrics {
    fn default() -> Self {
        Self {
            results: Family::default(),
            queue_depth: Gauge::default(),
            drops: Family::default(),
            duration: Family::new_with_constructor(evaluation_histogram),
        }
    }
}

impl EvaluationMetrics {
    /// Registers them under `r` (already prefixed `tollgate`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "evaluations",
            "Evaluation results by evaluator and outcome",
            self.results.clone(),
        );
        r.register(
            "evaluation_queue_depth",
            "Logged events waiting for evaluation",
            self.queue_depth.clone(),
        );
        r.register(
            "evaluation_drops",
            "Events not evaluated or results not stored, by reason",
            self.drops.clone(),
        );
        r.register(
            "evaluation_duration_seconds",
            "Time one evaluator took on one event",
            self.duration.clone(),
        );
    }

    /// Counts `n` drops for `reason`.
    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.drops.get_or_create(&DropLabel { reason }).inc_by(n);
        }
    }
}
