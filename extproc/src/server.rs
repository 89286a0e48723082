//! The ext_proc gRPC server (`envoy.service.ext_proc.v3.ExternalProcessor`): owns the
//! bidirectional stream loop and hands each message to the stream's [`Processor`].

use std::pin::Pin;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::Stream;
use std::sync::Arc;

use tollgate_authz::Gate;
use tollgate_core::budget::Ledger;
use tollgate_core::metrics::Metrics;
use tollgate_core::ratelimit::RateStore;
use tollgate_core::SharedConfig;
use tollgate_logger::LogHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::processor::Processor;
use crate::trace::{Remote, Tracer};

/// The ext_proc gRPC service.
pub struct ExtProcService {
    config: SharedConfig,
    metrics: Metrics,
    log: Option<LogHandle>,
    ledger: Option<Arc<dyn Ledger>>,
    limiter: Option<Arc<dyn RateStore>>,
    gate: Option<Gate>,
    tracer: Option<Tracer>,
    response_store: crate::responses::store::Backend,
}

impl ExtProcService {
    /// A service reading the live config (each stream keeps the snapshot it started with).
    pub fn new(config: SharedConfig, metrics: Metrics) -> Self {
        Self {
            config,
            metrics,
            log: None,
            ledger: None,
            limiter: None,
            gate: None,
            tracer: None,
            response_store: Default::default(),
        }
    }

    /// Keeps Responses API responses in `store` (this process's memory by default).
    pub fn with_response_store(mut self, store: crate::responses::store::Backend) -> Self {
        self.response_store = store;
        self
    }

    /// Records a span of each sampled request with `tracer` (traces are off with `None`).
    pub fn with_tracer(mut self, tracer: Option<Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Resolves keys with `gate` at the request headers of requests no ext_authz filter
    /// admitted (the bootstrap's `envoy.auth: ext_proc`), one exchange per request fewer.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Charges each request's tokens to the token-rate limits in `limiter` (ext_authz checks
    /// them).
    pub fn with_limiter(mut self, limiter: Arc<dyn RateStore>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Enforces budgets on `ledger` (shared with ext_authz's precheck).
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Emits one `LogEvent` per request to `log` (logging is off with `None`).
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.log = log;
        self
    }
}

/// The largest ext_proc message accepted or sent: above any body Envoy's buffer limit lets through.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Whether a receive error is just Envoy closing the stream.
fn is_stream_end(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Cancelled | tonic::Code::Unavailable
    ) || status.message().contains("reset")
        || status.message().contains("broken pipe")
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        // When Envoy traces, its ext_proc call carries its own span's context.
        let envoy_trace = self.tracer.as_ref().and_then(|_| {
            let m = request.metadata();
            Remote::read(
                m.get("traceparent").map(|v| v.as_bytes()),
                m.get("tracestate").map(|v| v.as_bytes()),
            )
        });
        let inbound = request.into_inner();
        let processor = Processor::new(self.config.load_full(), self.metrics.clone())
            .with_log(self.log.clone())
            .with_ledger(self.ledger.clone())
            .with_limiter(self.limiter.clone())
            .with_gate(self.gate.clone())
            .with_tracer(self.tracer.clone(), envoy_trace)
            .with_response_store(self.response_store.clone());
        let stream = futures::stream::unfold(
            (inbound, processor),
            |(mut inbound, mut processor)| async move {
                loop {
                    match inbound.message().await {
                        Ok(Some(msg)) => {
                            if let Some(resp) = processor.handle(msg).await {
                                return Some((Ok(resp), (inbound, processor)));
                            }
                        }
                        Ok(None) => return None,
                        Err(status) if is_stream_end(&status) => {
                            // Envoy often ends a finished stream with a reset: not an error.
                            tracing::debug!(code = ?status.code(), "ext_proc stream closed by Envoy");
                            return None;
                        }
                        Err(status) => {
                            // Say so, rather than end cleanly: a clean end lets Envoy carry on
                            // without us, while an error makes it fail closed.
                            tracing::warn!(code = ?status.code(), message = status.message(), "ext_proc stream failed");
                            processor.abandon();
                            return Some((Err(status), (inbound, processor)));
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
