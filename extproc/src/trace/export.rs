//! The OTLP exporter: one owned background task that takes finished spans from the tracer's
//! bounded queue, batches them (at `batch_size` spans or `max_delay`, whichever comes first)
//! and exports each batch to the collector, over gRPC (`TraceService/Export`) or HTTP
//! (`POST` of the protobuf `ExportTraceServiceRequest`), each export bounded by `timeout`.
//!
//! Spans are telemetry, not records: a batch the collector refuses or does not answer in time
//! is dropped, not retried or spooled; every span is counted once in
//! `tollgate_trace_spans_total` (`exported`, `dropped`, `failed`). On shutdown the queue is
//! drained and exported before the task ends.

use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tollgate_core::config::{TraceProtocol, Traces};
use tollgate_core::metrics::Metrics;
use tollgate_proto::otlp::collector::trace_service_client::TraceServiceClient;
use tollgate_proto::otlp::collector::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tollgate_proto::otlp::common::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
use tollgate_proto::otlp::resource::Resource;
use tollgate_proto::otlp::trace::{ResourceSpans, ScopeSpans, Span};

use super::Tracer;

/// Why the exporter cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The collector's address is no usable endpoint.
    #[error("traces.otlp_endpoint `{endpoint}`: {reason}")]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where batches go.
enum Sink {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Sink {
    fn new(config: &Traces) -> Result<Sink, TraceError> {
        let bad = |reason: String| TraceError::Endpoint {
            endpoint: config.endpoint.clone(),
            reason,
        };
        match config.protocol {
            TraceProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| bad(e.to_string()))?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout)
                    .tcp_nodelay(true);
                // Connects on first use and reconnects after a failure: a collector that
                // starts late or restarts is picked up.
                Ok(Sink::Grpc(TraceServiceClient::new(endpoint.connect_lazy())))
            }
            TraceProtocol::Http => {
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Sink::Http {
                    client,
                    url: config.endpoint.clone(),
                })
            }
        }
    }

    /// Exports one request; `Ok` with the number of spans the collector rejected.
    async fn export(
        &mut self,
        request: ExportTraceServiceRequest,
        timeout: Duration,
    ) -> Result<i64, String> {
        let answer = match self {
            Sink::Grpc(client) => {
                let call = client.export(request);
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(r)) => r.into_inner(),
                    Ok(Err(status)) => {
                        return Err(format!("{:?}: {}", status.code(), status.message()))
                    }
                    Err(_) => return Err("no answer in time".to_owned()),
                }
            }
            Sink::Http { client, url } => {
                let sent = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = sent.status();
                let body = sent.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("HTTP {status}"));
                }
                // An empty or unreadable success body: everything was accepted.
                ExportTraceServiceResponse::decode(body).unwrap_or_default()
            }
        };
        Ok(answer.partial_success.map_or(0, |p| p.rejected_spans))
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.to_owned())),
        }),
    }
}

/// What every batch says about where its spans come from.
struct Envelope {
    resource: Resource,
    scope: InstrumentationScope,
}

impl Envelope {
    fn new(service_name: &str) -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Envelope {
            resource: Resource {
                attributes: vec![
                    text("service.name", service_name),
                    text("service.version", version),
                ],
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: "tollgate".to_owned(),
                version: version.to_owned(),
                ..Default::default()
            },
        }
    }

    fn wrap(&self, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

/// The background task's state.
struct Worker {
    sink: Sink,
    envelope: Envelope,
    metrics: Metrics,
    timeout: Duration,
    /// Whether the last export failed (to log a failing collector once, not per batch).
    failing: bool,
}

impl Worker {
    async fn export(&mut self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if n == 0 {
            return;
        }
        match self
            .sink
            .export(self.envelope.wrap(spans), self.timeout)
            .await
        {
            Ok(rejected) => {
                let rejected = u64::try_from(rejected).unwrap_or(0).min(n);
                self.metrics.trace_spans("exported", n - rejected);
                self.metrics.trace_spans("failed", rejected);
                if rejected > 0 {
                    tracing::warn!(rejected, "The OTLP collector rejected spans");
                }
                if self.failing {
                    tracing::info!("The OTLP collector accepts spans again");
                }
                self.failing = false;
            }
            Err(error) => {
                self.metrics.trace_spans("failed", n);
                if self.failing {
                    tracing::debug!(spans = n, error, "Span export failed");
                } else {
                    tracing::warn!(spans = n, error, "Span export failed: the OTLP collector is unreachable or refused the batch (spans are dropped until it answers)");
                }
                self.failing = true;
            }
        }
    }

    /// Batches and exports until `stop` fires (or every tracer is gone), then drains the queue.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Span>,
        mut stop: oneshot::Receiver<()>,
        batch_size: usize,
        max_delay: Duration,
    ) {
        let mut batch = Vec::with_capacity(batch_size);
        let mut deadline: Option<Instant> = None;
        loop {
            let room = batch_size - batch.len();
            tokio::select! {
                _ = &mut stop => break,
                n = rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        break;
                    }
                    deadline.get_or_insert_with(|| Instant::now() + max_delay);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            }
            if batch.len() >= batch_size || deadline.is_some_and(|d| Instant::now() >= d) {
                self.export(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(batch_size),
                ))
                .await;
                deadline = None;
            }
        }
        // Shutting down: no more spans are taken; what is queued goes out, batch by batch.
        rx.close();
        loop {
            let room = batch_size - batch.len();
            if rx.recv_many(&mut batch, room).await == 0 && batch.is_empty() {
                return;
            }
            self.export(std::mem::replace(
                &mut batch,
                Vec::with_capacity(batch_size),
            ))
            .await;
        }
    }
}

/// The owned exporter task and the tracer requests use.
pub struct Exporter {
    tracer: Tracer,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// The longest a shutdown waits for the last exports.
    flush_limit: Duration,
}

impl Exporter {
    /// Starts exporting to the collector `config` names (connecting lazily: a collector that
    /// is not up yet is no reason not to start).
    pub fn start(config: &Traces, metrics: Metrics) -> Result<Exporter, TraceError> {
        let sink = Sink::new(config)?;
        let (tracer, rx) =
            Tracer::channel(config.sample_ratio, config.queue_capacity, metrics.clone());
        let (stop, stopped) = oneshot::channel();
        let worker = Worker {
            sink,
            envelope: Envelope::new(&config.service_name),
            metrics,
            timeout: config.timeout,
            failing: false,
        };
        let task = tokio::spawn(worker.run(rx, stopped, config.batch_size, config.max_delay));
        tracing::info!(endpoint = %config.endpoint, protocol = ?config.protocol, sample_ratio = config.sample_ratio, "Exporting request spans over OTLP");
        Ok(Exporter {
            tracer,
            stop,
            task,
            flush_limit: config.timeout + Duration::from_secs(1),
        })
    }

    /// The handle that starts and ends request spans.
    pub fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    /// Exports what is queued and stops; call once every request has ended. Waits at most
    /// the export timeout and a second.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(self.flush_limit, &mut task).await {
            Ok(Ok(())) => tracing::debug!("Span exporter stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "Span exporter task failed"),
            Err(_) => {
                task.abort();
                tracing::warn!("Span exporter did not finish its last exports in time");
            }
        }
    }
}
