//! The evaluation stage of the logger (docs/EVALUATORS.md): events are offered to it only
//! after the sink said they are durable, through a bounded queue that never makes the ingest
//! path wait (a full queue drops the event from evaluation, counted). Workers run every
//! evaluator that samples an event, each under its timeout, at most `concurrency` events at
//! once; results are batched (`batch_size` or `max_delay`, whichever first) into the sink's
//! evaluations store (NDJSON `evaluations/`, ClickHouse `<table>_evaluations`). A failed or
//! timed-out evaluator is recorded with its `error`; a batch the sink refuses is retried, then
//! counted dropped.

pub mod checks;
pub mod text;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tollgate_core::config::evaluators::{Check, Evaluator, Evaluators};
use tollgate_core::env::EnvSource;
use tollgate_core::evaluation_metrics::{EvaluationLabels, EvaluationMetrics, EvaluatorLabel};
use tollgate_proto::logger::v1::LogEvent;

use crate::error::LoggerError;
use crate::record::EvaluationRecord;
use crate::sink::Sink;

/// Capture's redaction markers that name PII (`[REDACTED:<id>]`).
pub const PII_MARKERS: [&str; 5] = ["email", "phone", "credit_card", "iban", "us_ssn"];
/// Capture's redaction marker that names a secret.
pub const SECRET_MARKERS: [&str; 1] = ["secret"];

/// Tries of one results batch before it is counted dropped.
const WRITE_TRIES: u32 = 3;

/// The evaluators with their judges' keys read: what `tollgate logger --config` starts the
/// stage with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The validated section.
    pub evaluators: Evaluators,
    /// The judges' keys by evaluator name.
    judge_keys: HashMap<String, tollgate_core::config::Secret>,
}

impl Setup {
    /// Reads every judge's key from `env` (or its file); a missing one is an error naming the
    /// evaluator.
    pub fn new(evaluators: Evaluators, env: &dyn EnvSource) -> Result<Setup, LoggerError> {
        let mut judge_keys = HashMap::new();
        for (i, ev) in evaluators.list.iter().enumerate() {
            if let Check::LlmJudge(j) = &ev.check {
                let key = j.key.read(env).map_err(|why| {
                    LoggerError::Config(format!("evaluators.list[{i}].params.key: {why}"))
                })?;
                judge_keys.insert(ev.name.clone(), key);
            }
        }
        Ok(Setup {
            evaluators,
            judge_keys,
        })
    }
}

/// The running stage.
pub struct Stage {
    queue: mpsc::Sender<LogEvent>,
    evaluators: Vec<Arc<Evaluator>>,
    metrics: EvaluationMetrics,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Stage {
    /// Starts the workers and the writer; results go to `sink`.
    pub fn start(setup: Setup, sink: Arc<dyn Sink>, metrics: EvaluationMetrics) -> Arc<Stage> {
        let Setup {
            evaluators,
            judge_keys,
        } = setup;
        let (queue, rx) = mpsc::channel(evaluators.queue_capacity);
        let (results_tx, results_rx) = mpsc::channel(evaluators.batch_size.saturating_mul(4));
        let (stop, stop_rx) = watch::channel(false);
        let calls = Arc::new(checks::Calls {
            http: checks::client(),
            judge_keys,
        });
        let list = evaluators.list.clone();
        let dispatch = tokio::spawn(dispatch(
            rx,
            list.clone(),
            evaluators.concurrency,
            calls,
            results_tx,
            metrics.clone(),
            stop_rx,
        ));
        let write = tokio::spawn(write(
            results_rx,
            sink,
            evaluators.batch_size,
            evaluators.max_delay,
            metrics.clone(),
        ));
        tracing::info!(
            evaluators = list.len(),
            queue_capacity = evaluators.queue_capacity,
            concurrency = evaluators.concurrency,
            "Evaluation stage started"
        );
        Arc::new(Stage {
            queue,
            evaluators: list,
            metrics,
            stop,
            tasks: Mutex::new(vec![dispatch, write]),
        })
    }

    /// Whether any evaluator samples `e` (requests only: never feedback, never the judge's own
    /// requests). Cheap: the ingest path calls it to pick what to copy.
    pub fn wants(&self, e: &LogEvent) -> bool {
        if e.feedback.is_some() || e.end_user == checks::JUDGE_END_USER {
            return false;
        }
        self.evaluators.iter().any(|ev| {
            ev.sample.selects(
                &ev.name,
                &e.request_id,
                &e.key_id,
                &e.tenant,
                &e.requested_model,
            )
        })
    }

    /// Queues durable events for evaluation without waiting: those that find the queue full
    /// are counted in `tollgate_evaluation_drops_total{reason="queue_full"}`.
    pub fn offer(&self, events: Vec<LogEvent>) {
        let mut dropped = 0;
        for e in events {
            if self.queue.try_send(e).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(
                events = dropped,
                "Evaluation queue full: events not evaluated"
            );
            self.metrics.dropped("queue_full", dropped);
        }
        self.metrics.queue_depth.set(self.depth() as i64);
    }

    /// Events waiting.
    pub fn depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Stops taking events, evaluates what is queued (within `grace`), writes the last results.
    pub async fn close(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        let all = futures_join(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                waiting = self.depth(),
                "Evaluation stage stopped before every queued event was evaluated"
            );
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Takes events off the queue and evaluates up to `concurrency` at once.
async fn dispatch(
    mut rx: mpsc::Receiver<LogEvent>,
    evaluators: Vec<Arc<Evaluator>>,
    concurrency: usize,
    calls: Arc<checks::Calls>,
    results: mpsc::Sender<EvaluationRecord>,
    metrics: EvaluationMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut running = tokio::task::JoinSet::new();
    let mut stopping = false;
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = stop.changed(), if !stopping => {
                // No new events: finish what is queued.
                stopping = true;
                rx.close();
                continue;
            }
        };
        let Some(event) = event else { break };
        metrics.queue_depth.set(rx.len() as i64);
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let (evaluators, calls, results, metrics) = (
            evaluators.clone(),
            Arc::clone(&calls),
            results.clone(),
            metrics.clone(),
        );
        running.spawn(async move {
            evaluate(&event, &evaluators, &calls, &results, &metrics).await;
            drop(permit);
        });
        // Reap finished evaluations so the set stays small.
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    metrics.queue_depth.set(0);
}

/// Runs every evaluator that samples `e`, concurrently, and sends their results.
async fn evaluate(
    e: &LogEvent,
    evaluators: &[Arc<Evaluator>],
    calls: &checks::Calls,
    results: &mpsc::Sender<EvaluationRecord>,
    metrics: &EvaluationMetrics,
) {
    let chosen = evaluators.iter().filter(|ev| {
        ev.sample.selects(
            &ev.name,
            &e.request_id,
            &e.key_id,
            &e.tenant,
            &e.requested_model,
        )
    });
    let runs = chosen.map(|ev| async move {
        let started = Instant::now();
        let run = match tokio::time::timeout(ev.timeout, checks::run(ev, e, calls)).await {
            Ok(r) => r,
            Err(_) => checks::Run::Failed(format!("timeout after {} ms", ev.timeout.as_millis())),
        };
        (ev, run, started.elapsed())
    });
    for (ev, run, took) in futures::future::join_all(runs).await {
        metrics
            .duration
            .get_or_create(&EvaluatorLabel {
                evaluator: ev.name.clone(),
            })
            .observe(took.as_secs_f64());
        let (score, passed, label, reason, error, outcome) = match run {
            checks::Run::Skipped => {
                count(metrics, ev, "skipped");
                continue;
            }
            checks::Run::Scored(s) => {
                let passed = s.score >= ev.threshold;
                let outcome = if passed { "passed" } else { "failed" };
                (s.score, passed, s.label, s.reason, String::new(), outcome)
            }
            checks::Run::Failed(why) => {
                let outcome = if why.starts_with("timeout") {
                    "timeout"
                } else {
                    "error"
                };
                (0.0, false, String::new(), String::new(), why, outcome)
            }
        };
        count(metrics, ev, outcome);
        let record = EvaluationRecord {
            request_id: e.request_id.clone(),
            evaluator: ev.name.clone(),
            kind: ev.kind.name().to_owned(),
            score,
            passed,
            label,
            reason,
            error,
            latency_ms: took.as_secs_f64() * 1e3,
            time_unix_nanos: now_nanos(),
            request_time_unix_nanos: e.start_time_unix_nanos,
            key_id: e.key_id.clone(),
            tenant: e.tenant.clone(),
            model: e.requested_model.clone(),
        };
        if results.send(record).await.is_err() {
            metrics.dropped("write_failed", 1);
        }
    }
}

fn count(metrics: &EvaluationMetrics, ev: &Evaluator, outcome: &'static str) {
    metrics
        .results
        .get_or_create(&EvaluationLabels {
            evaluator: ev.name.clone(),
            outcome,
        })
        .inc();
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Writes results in batches of at most `batch_size`, each at most `max_delay` after its first
/// result came; ends when every sender is gone and the last batch is written.
async fn write(
    mut rx: mpsc::Receiver<EvaluationRecord>,
    sink: Arc<dyn Sink>,
    batch_size: usize,
    max_delay: Duration,
    metrics: EvaluationMetrics,
) {
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + max_delay;
        while batch.len() < batch_size {
            let room = batch_size - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        flush(&sink, &mut batch, &metrics).await;
    }
}

async fn flush(
    sink: &Arc<dyn Sink>,
    batch: &mut Vec<EvaluationRecord>,
    metrics: &EvaluationMetrics,
) {
    let n = batch.len();
    let mut pause = Duration::from_millis(200);
    for attempt in 1..=WRITE_TRIES {
        match sink.write_evaluations(batch.clone()).await {
            Ok(written) => {
                tracing::debug!(results = n, written, "Stored evaluation results");
                batch.clear();
                return;
            }
            Err(e) if attempt < WRITE_TRIES => {
                tracing::warn!(results = n, attempt, error = %e, "Could not store evaluation results; retrying");
                tokio::time::sleep(pause).await;
                pause *= 4;
            }
            Err(e) => {
                tracing::error!(results = n, error = %e, "Dropping evaluation results the sink refused");
            }
        }
    }
    metrics.dropped("write_failed", n as u64);
    batch.clear();
}

#[cfg(test)]
mod tests;
