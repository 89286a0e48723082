//! The sidecar side of logging (in `tollgate serve`): a bounded queue of `LogEvent`s that a
//! request never waits on, and one owned background sender that batches them (at
//! `batch_size` events or `max_delay`, whichever comes first), sends each batch to the logger
//! with retries and backoff, spools batches to disk while the logger is unreachable, replays
//! the spool in order once it is back, and is drained on shutdown.
//!
//! Ordering: once anything waits in the spool, new batches go behind it, so the logger
//! receives batches in the order they were made. Counting: `tollgate_log_events_total`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tollgate_core::config::Logging;
use tollgate_core::metrics::Metrics;
use tollgate_proto::logger::v1::log_ingest_client::LogIngestClient;
use tollgate_proto::logger::v1::{IngestAck, LogBatch, LogEvent};

use crate::error::LoggerError;
use crate::spool::Spool;

/// How the sender talks to the logger: the gRPC client in production, a fake in tests.
#[tonic::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends one batch; `Ok` means the logger acknowledged it as durable.
    async fn send(&mut self, batch: LogBatch) -> Result<IngestAck, tonic::Status>;
}

#[tonic::async_trait]
impl Transport for LogIngestClient<tonic::transport::Channel> {
    async fn send(&mut self, batch: LogBatch) -> Result<IngestAck, tonic::Status> {
        self.ingest(batch).await.map(tonic::Response::into_inner)
    }
}

/// A lazily connecting client for the logger at `address` (`host:port`): it (re)connects on
/// use, so a logger that restarts is picked up again.
pub fn connect(address: &str) -> Result<LogIngestClient<tonic::transport::Channel>, LoggerError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| LoggerError::Config(format!("logging.address `{address}`: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    Ok(LogIngestClient::new(endpoint.connect_lazy()))
}

/// The sender's settings.
#[derive(Debug, Clone)]
pub struct ShipperOptions {
    /// The most events in one batch.
    pub batch_size: usize,
    /// The longest an event waits for its batch to fill.
    pub max_delay: Duration,
    /// The in-memory queue's capacity.
    pub queue_capacity: usize,
    /// Attempts per batch before it goes to the spool (at least 1).
    pub attempts: u32,
    /// The first pause between attempts, doubled after each failure.
    pub initial_backoff: Duration,
    /// The longest pause between replay attempts while the logger is away.
    pub max_backoff: Duration,
}

impl ShipperOptions {
    /// The options a `logging` config section asks for.
    pub fn from_config(l: &Logging) -> Self {
        Self {
            batch_size: l.batch_size,
            max_delay: l.max_delay,
            queue_capacity: l.queue_capacity,
            attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Where a request hands its event: never blocks, never loses an event silently. Every event
/// is counted into the request-log metrics ([`crate::observe`]) first, shipped or not.
#[derive(Clone)]
pub struct LogHandle {
    /// The queue and spool towards the logger; `None` when logging is off.
    shipping: Option<Shipping>,
    metrics: Metrics,
}

#[derive(Clone)]
struct Shipping {
    tx: mpsc::Sender<LogEvent>,
    spool: Arc<Spool>,
    /// Events that found the queue full, for a log line that does not flood under overload.
    overflows: Arc<AtomicU64>,
}

impl LogHandle {
    /// A handle that only counts events into the metrics (logging off).
    pub fn metrics_only(metrics: Metrics) -> Self {
        Self {
            shipping: None,
            metrics,
        }
    }

    /// Queues one event. When the queue is full (or the sender has stopped), the event is
    /// written to the spool instead, a local fsync rather than a wait on the network; if even
    /// that fails, it is dropped. Each outcome is counted.
    pub fn emit(&self, event: LogEvent) {
        crate::observe::observe(&self.metrics, &event);
        let Some(ship) = &self.shipping else {
            return;
        };
        let event = match ship.tx.try_send(event) {
            Ok(()) => {
                self.metrics.log_events("queued", 1);
                return;
            }
            Err(mpsc::error::TrySendError::Full(e)) => {
                let n = ship.overflows.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        overflows = n,
                        "Log queue full: spooling events to disk (logged at 1, 2, 4, ... overflows)"
                    );
                }
                e
            }
            Err(mpsc::error::TrySendError::Closed(e)) => e,
        };
        let request_id = event.request_id.clone();
        match ship.spool.push(&LogBatch {
            events: vec![event],
        }) {
            Ok(()) => self.metrics.log_events("spooled", 1),
            Err(e) => {
                self.metrics.log_events("dropped", 1);
                tracing::error!(request_id, error = %e, "Dropped a log event: the spool cannot take it");
            }
        }
    }
}

/// The owned background sender and the handle requests use.
pub struct Shipper {
    handle: LogHandle,
    /// The shutdown's deadline, once it has begun.
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

/// [`Shipper::shutdown`]'s bound.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(60);

impl Shipper {
    /// Opens the spool under `config.spool_dir` and starts the sender towards
    /// `config.address`. Spooled batches from an earlier run are replayed first.
    pub async fn start(config: &Logging, metrics: Metrics) -> Result<Shipper, LoggerError> {
        let client = connect(&config.address)?;
        let dir = config.spool_dir.clone();
        let max = config.spool_max_bytes;
        let spool = tokio::task::spawn_blocking(move || Spool::open(&dir, max))
            .await
            .map_err(|e| LoggerError::Task(e.to_string()))??
            .with_gauges(
                metrics.log_spool_batches.clone(),
                metrics.log_spool_bytes.clone(),
            );
        tracing::info!(logger = %config.address, spool = %config.spool_dir.display(), "Shipping log events");
        Ok(Self::start_with(
            client,
            Arc::new(spool),
            ShipperOptions::from_config(config),
            metrics,
        ))
    }

    /// Starts the sender over any transport and spool.
    pub fn start_with(
        transport: impl Transport,
        spool: Arc<Spool>,
        options: ShipperOptions,
        metrics: Metrics,
    ) -> Shipper {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let (stop, stop_rx) = watch::channel(None);
        let sender = Sender {
            deadline: stop_rx.clone(),
            transport,
            spool: Arc::clone(&spool),
            metrics: metrics.clone(),
            backoff: options.initial_backoff,
            next_attempt: Instant::now(),
            options,
        };
        let task = tokio::spawn(sender.run(rx, stop_rx));
        Shipper {
            handle: LogHandle {
                shipping: Some(Shipping {
                    tx,
                    spool,
                    overflows: Arc::default(),
                }),
                metrics,
            },
            stop,
            task,
        }
    }

    /// The handle requests emit events through.
    pub fn handle(&self) -> LogHandle {
        self.handle.clone()
    }

    /// Stops taking events into the queue (later ones go to the spool), sends what is
    /// queued (one attempt per batch; whatever fails is spooled) and waits for the sender.
    pub async fn shutdown(self) {
        self.shutdown_within(SHUTDOWN_BOUND).await;
    }

    /// [`Shipper::shutdown`] within `within`: once a send fails or the bound passes, the
    /// batch being sent and everything still queued go to the spool (a local write), so a
    /// logger that is away or hangs cannot hold the exit. The spool is not replayed now: the
    /// next start does it.
    pub async fn shutdown_within(self, within: Duration) {
        let deadline = Instant::now() + within;
        let _ = self.stop.send(Some(deadline));
        let mut task = self.task;
        // The sender keeps to the deadline itself; spooling gets a moment past it.
        match tokio::time::timeout_at(deadline + Duration::from_secs(2), &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "The log sender failed"),
            Err(_) => {
                task.abort();
                tracing::error!("The log sender did not finish within the flush bound: stopped it");
            }
        }
    }
}

enum Failure {
    /// The logger may take it later.
    Retryable(tonic::Status),
    /// The logger will never take it.
    Rejected(tonic::Status),
}

fn classify(status: tonic::Status) -> Failure {
    match status.code() {
        tonic::Code::InvalidArgument => Failure::Rejected(status),
        _ => Failure::Retryable(status),
    }
}

/// What sending a refused batch in parts came to.
#[derive(Default)]
struct Parts {
    /// Events the logger took.
    sent: u64,
    /// Events it refused on their own.
    refused: Vec<LogEvent>,
    /// Why (the last refusal's message).
    reason: String,
    /// Events not delivered because the logger went away meanwhile.
    rest: Vec<LogEvent>,
}

struct Sender<T> {
    /// The shutdown's deadline, once it has begun: bounds every send.
    deadline: watch::Receiver<Option<Instant>>,
    transport: T,
    spool: Arc<Spool>,
    metrics: Metrics,
    options: ShipperOptions,
    backoff: Duration,
    next_attempt: Instant,
}

impl<T: Transport> Sender<T> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<LogEvent>,
        mut stop: watch::Receiver<Option<Instant>>,
    ) {
        let size = self.options.batch_size.max(1);
        let mut stopping = false;
        while !stopping {
            let mut batch = Vec::with_capacity(size);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                n = rx.recv_many(&mut batch, size) => if n == 0 { break },
                _ = tokio::time::sleep_until(self.next_attempt), if !self.spool.is_empty() => {
                    self.replay().await;
                    continue;
                }
            }
            let deadline = Instant::now() + self.options.max_delay;
            while batch.len() < size {
                let want = size - batch.len();
                tokio::select! {
                    biased;
                    _ = stop.changed() => { stopping = true; break }
                    n = rx.recv_many(&mut batch, want) => if n == 0 { stopping = true; break },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.deliver(batch, false).await;
        }
        // Drain: nothing new enters the queue (emit spools instead); what is in it is sent
        // once or spooled for the next start.
        rx.close();
        loop {
            let mut batch = Vec::with_capacity(size);
            if rx.recv_many(&mut batch, size).await == 0 {
                break;
            }
            self.deliver(batch, true).await;
        }
        let left = self.spool.len();
        if left > 0 {
            tracing::warn!(
                batches = left,
                "Log sender stopped with batches in the spool; the next start replays them"
            );
        }
    }

    /// The shutdown's deadline, once it has begun.
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// Sends one batch, giving up at the shutdown's deadline (even one set while it waits).
    async fn send(&mut self, batch: LogBatch) -> Result<IngestAck, tonic::Status> {
        let mut deadline = self.deadline.clone();
        let send = self.transport.send(batch);
        tokio::pin!(send);
        loop {
            let set = *deadline.borrow_and_update();
            if let Some(d) = set {
                return tokio::time::timeout_at(d, &mut send)
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded(
                            "the shutdown's flush bound passed",
                        ))
                    });
            }
            tokio::select! {
                r = &mut send => return r,
                changed = deadline.changed() => if changed.is_err() { return send.await },
            }
        }
    }

    fn logger_down(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.options.max_backoff);
    }

    fn logger_up(&mut self) {
        self.backoff = self.options.initial_backoff;
        self.next_attempt = Instant::now();
    }

    async fn deliver(&mut self, events: Vec<LogEvent>, last: bool) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let batch = LogBatch { events };
        let stopping = self.deadline();
        let last = last || stopping.is_some();
        let due = Instant::now() >= self.next_attempt;
        if !self.spool.is_empty() && due && stopping.is_none() {
            self.replay().await;
        }
        if !self.spool.is_empty()
            || Instant::now() < self.next_attempt
            || stopping.is_some_and(|d| Instant::now() >= d)
        {
            // Older batches wait, the logger is known to be away, or the shutdown's bound
            // has passed: keep the order, spool it.
            return self.spool_batch(batch, n).await;
        }
        let attempts = if last {
            1
        } else {
            self.options.attempts.max(1)
        };
        let mut pause = self.options.initial_backoff;
        for attempt in 1..=attempts {
            match self.send(batch.clone()).await.map_err(classify) {
                Ok(_) => {
                    self.metrics.log_events("sent", n);
                    self.logger_up();
                    return;
                }
                Err(Failure::Rejected(status)) => {
                    tracing::warn!(events = n, message = status.message(), "The logger refused a log batch: sending it in parts to find the events it refuses");
                    let parts = self.isolate(batch.events).await;
                    let rest = self.settle_parts(parts).await;
                    if !rest.is_empty() {
                        let left = rest.len() as u64;
                        self.logger_down();
                        self.spool_batch(LogBatch { events: rest }, left).await;
                    }
                    return;
                }
                Err(Failure::Retryable(status)) => {
                    tracing::debug!(attempt, code = ?status.code(), message = status.message(), "Log batch not delivered");
                    if attempt < attempts && self.deadline().is_none() {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(self.options.max_backoff);
                    } else {
                        tracing::warn!(code = ?status.code(), message = status.message(), events = n, "Logger unreachable: spooling the batch");
                        break;
                    }
                }
            }
        }
        self.logger_down();
        self.spool_batch(batch, n).await;
    }

    async fn spool_batch(&mut self, batch: LogBatch, n: u64) {
        match self.spool.blocking(move |s| s.push(&batch)).await {
            Ok(()) => self.metrics.log_events("spooled", n),
            Err(e) => {
                self.metrics.log_events("dropped", n);
                tracing::error!(events = n, error = %e, "Dropped a log batch: the spool cannot take it");
            }
        }
    }

    /// Sends the events of a batch the logger refused whole in halves, and halves of those
    /// that are refused again, down to single events: every event the logger takes is
    /// delivered, and only the events it refuses on their own are singled out. One bad event
    /// in a batch of `n` costs about 2·log2(n) sends. Stops at the first failure that is not
    /// a refusal (the logger went away): the events not yet delivered are returned as `rest`.
    async fn isolate(&mut self, events: Vec<LogEvent>) -> Parts {
        let mut parts = Parts::default();
        // Halves still to send, the next one last; the whole batch was already refused.
        let mut todo = vec![events];
        let mut refused_whole = true;
        while let Some(mut part) = todo.pop() {
            if refused_whole && part.len() > 1 {
                let second = part.split_off(part.len() / 2);
                todo.push(second);
                todo.push(part);
                refused_whole = false;
                continue;
            }
            let n = part.len() as u64;
            let batch = LogBatch { events: part };
            match self.transport.send(batch.clone()).await.map_err(classify) {
                Ok(_) => {
                    self.logger_up();
                    parts.sent += n;
                }
                Err(Failure::Rejected(status)) if n == 1 => {
                    parts.refused.extend(batch.events);
                    parts.reason = status.message().to_owned();
                }
                Err(Failure::Rejected(_)) => {
                    todo.push(batch.events);
                    refused_whole = true;
                }
                Err(Failure::Retryable(status)) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "Logger unreachable while sending a refused batch in parts");
                    parts.rest.extend(batch.events);
                    while let Some(p) = todo.pop() {
                        parts.rest.extend(p);
                    }
                    break;
                }
            }
        }
        parts
    }

    /// Counts what [`Sender::isolate`] delivered and keeps the refused events aside (counted
    /// as dropped, each named in the log); returns the events still to deliver.
    async fn settle_parts(&mut self, parts: Parts) -> Vec<LogEvent> {
        if parts.sent > 0 {
            self.metrics.log_events("sent", parts.sent);
        }
        if !parts.refused.is_empty() {
            let n = parts.refused.len() as u64;
            let ids: Vec<String> = parts
                .refused
                .iter()
                .map(|e| tollgate_core::bound::bounded(&e.request_id, 64).into_owned())
                .collect();
            self.reject(
                LogBatch {
                    events: parts.refused,
                },
                n,
                &parts.reason,
                &ids,
            )
            .await;
        }
        parts.rest
    }

    async fn reject(&mut self, batch: LogBatch, n: u64, reason: &str, request_ids: &[String]) {
        self.metrics.log_events("dropped", n);
        match self
            .spool
            .blocking(move |s| s.keep_aside(&batch, ".rejected"))
            .await
        {
            Ok(path) => {
                tracing::error!(events = n, ?request_ids, message = reason, path = %path.display(), "The logger refused log events on their own; kept them aside (the rest of their batch was delivered)")
            }
            Err(e) => {
                tracing::error!(events = n, ?request_ids, message = reason, error = %e, "The logger refused log events on their own")
            }
        }
    }

    /// Sends spooled batches oldest first until the spool is empty or the logger fails.
    async fn replay(&mut self) {
        loop {
            if self.deadline().is_some() {
                // Shutting down: the next start replays the spool.
                return;
            }
            let (seq, batch) = match self.spool.blocking(|s| s.oldest()).await {
                Ok(Some(next)) => next,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read the spool");
                    self.logger_down();
                    return;
                }
            };
            let n = batch.events.len() as u64;
            match self.send(batch).await.map_err(classify) {
                Ok(_) => {
                    self.metrics.log_events("sent", n);
                    self.logger_up();
                    if let Err(e) = self.spool.blocking(move |s| s.remove(seq)).await {
                        tracing::error!(error = %e, "Cannot remove a replayed batch from the spool");
                        self.logger_down();
                        return;
                    }
                    tracing::debug!(events = n, "Replayed a spooled log batch");
                }
                Err(Failure::Rejected(status)) => {
                    tracing::warn!(
                        events = n,
                        message = status.message(),
                        "The logger refused a spooled log batch: sending it in parts"
                    );
                    let Ok(Some((_, batch))) = self
                        .spool
                        .blocking(|s| s.oldest())
                        .await
                        .map(|b| b.filter(|(s, _)| *s == seq))
                    else {
                        self.logger_down();
                        return;
                    };
                    let parts = self.isolate(batch.events).await;
                    let rest = self.settle_parts(parts).await;
                    // What was delivered or kept aside leaves the spool; the rest keeps its
                    // place in the order.
                    let done = if rest.is_empty() {
                        self.spool.blocking(move |s| s.remove(seq)).await
                    } else {
                        self.logger_down();
                        self.spool
                            .blocking(move |s| s.replace(seq, &LogBatch { events: rest }))
                            .await
                    };
                    if let Err(e) = done {
                        tracing::error!(error = %e, "Cannot update the spool after sending a refused batch in parts");
                        self.logger_down();
                        return;
                    }
                    if !self.spool.is_empty() && Instant::now() < self.next_attempt {
                        return;
                    }
                }
                Err(Failure::Retryable(status)) => {
                    tracing::debug!(code = ?status.code(), "Logger still unreachable; replay later");
                    self.logger_down();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
