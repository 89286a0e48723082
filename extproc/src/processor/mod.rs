//! One processor per ext_proc stream (one HTTP request): the state machine that carries a
//! request from phase to phase, split by concern into the modules below.
//!
//! Phases Envoy sends (see `envoy/`): the request headers (where the caller is admitted, in
//! [`auth`], and `GET /v1/models` and the self-service reads are answered, in [`local`]), the
//! buffered request body (parsed once, judged, reserved and routed, in [`route`], with the
//! provider's credential from [`upstream_auth`]), the response headers and body (translated,
//! judged and measured, in [`response`]), and the end (settled and logged, in [`finish`]).
//! A request ends in one of three states: answered by Tollgate itself (`rejected`, or a local
//! answer), or forwarded to a provider (`forwarded`).

mod auth;
mod cache;
mod cache_responses;
mod cors;
mod count;
mod embeddings;
mod finish;
mod gemini_methods;
mod guard_endpoints;
mod local;
mod media;
mod offload;
mod passthrough;
mod rerank;
mod reserve;
mod respect;
mod response;
mod responses;
mod route;
mod semantic;
mod upstream;
mod upstream_auth;

pub use cache::CACHE_HEADER;
pub use count::TOKEN_COUNT_HEADER;
pub use reserve::BUDGET_WARNING_HEADER;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValueOption, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use tollgate_authz::Gate;
use tollgate_core::budget::{Ledger, Line, Owner, Reservation};
use tollgate_core::config::{Capture as CaptureMode, KeyBundle, ModelAccess, Provider};
use tollgate_core::metadata as md;
use tollgate_core::metrics::Metrics;
use tollgate_core::ratelimit::RateStore;
use tollgate_core::{ApiError, Config, Dialect, Endpoint, Usage};
use tollgate_guardrails::Engine;
use tollgate_logger::LogHandle;

use crate::budget;
use crate::capture::Capture;
use crate::guard::Verdicts;
use crate::stream::Pipeline;
use crate::trace::{Remote, RequestSpan, Tracer};
use crate::translator::Pair;

/// Who is calling: what the key gate established about the request (through ext_authz's
/// metadata, or asked at the request headers in [`auth`]).
#[derive(Debug, Default)]
struct AuthContext {
    key_id: String,
    tenant: String,
    team: String,
    models: Vec<String>,
    path: String,
    method: String,
    request_id: String,
    /// The guardrails policy name (empty: none).
    guardrails: String,
    /// What of the payloads goes into the log event.
    capture: CaptureMode,
    /// The key's token-rate limit per minute.
    tokens_per_minute: Option<u32>,
    /// The tenant's token-rate limit per minute as the key came with it.
    tenant_tokens_per_minute: Option<u32>,
    /// Budgets that came with the key from the control plane (besides the config's).
    budgets: Vec<tollgate_core::budget::Budget>,
}

impl AuthContext {
    fn from_metadata(md_ctx: &Metadata) -> Option<Self> {
        let s = md_ctx.filter_metadata.get(md::NAMESPACE)?;
        let text = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => String::new(),
        };
        let models = match s.fields.get(md::MODELS).and_then(|v| v.kind.as_ref()) {
            Some(Kind::ListValue(l)) => l
                .values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(Kind::StringValue(m)) => Some(m.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let ctx = AuthContext {
            key_id: text(md::KEY_ID),
            tenant: text(md::TENANT),
            team: text(md::TEAM),
            models,
            path: text(md::PATH),
            method: text(md::METHOD),
            request_id: text(md::REQUEST_ID),
            guardrails: text(md::GUARDRAILS),
            capture: CaptureMode::from_label(&text(md::CAPTURE)),
            tokens_per_minute: text(md::TOKENS_PER_MINUTE).parse().ok(),
            tenant_tokens_per_minute: text(md::TENANT_TOKENS_PER_MINUTE).parse().ok(),
            budgets: tollgate_core::budget::budgets_from_json(&text(md::BUDGETS))
                .unwrap_or_default(),
        };
        (!ctx.key_id.is_empty()).then_some(ctx)
    }

    /// The context of a request the gate admitted in ext_proc's own headers phase.
    fn from_bundle(b: &KeyBundle, path: String, method: String, request_id: String) -> Self {
        AuthContext {
            key_id: b.id.clone(),
            tenant: b.tenant.clone().unwrap_or_default(),
            team: b.team.clone().unwrap_or_default(),
            models: match &b.models {
                ModelAccess::All => vec!["*".to_owned()],
                ModelAccess::Only(set) => set.iter().cloned().collect(),
            },
            path,
            method,
            request_id,
            guardrails: b.guardrails.clone().unwrap_or_default(),
            capture: b.capture,
            tokens_per_minute: b.tokens_per_minute,
            tenant_tokens_per_minute: b.tenant_tokens_per_minute,
            budgets: b.extra_budgets.clone(),
        }
    }

    fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }
}

/// A request that went to a provider.
#[derive(Debug)]
struct Forwarded {
    endpoint: Endpoint,
    model: String,
    provider: Arc<Provider>,
    upstream_model: String,
    stream: bool,
    sent_at: Instant,
    upstream_latency: Option<Duration>,
    status: Option<u16>,
    pair: Pair,
    /// A successful stream's pipeline (usage, guardrails, output cap, capture).
    sse: Option<Box<Pipeline>>,
    usage: Option<Usage>,
    /// The policy judging the response text, when a rule applies to it.
    response_guard: Option<Arc<Engine>>,
    /// The id of a response whose provider gives none (Bedrock), else empty.
    response_id: String,
    /// The provider's error type header (Bedrock's `x-amzn-errortype`).
    error_type: Option<String>,
    /// The target's in-flight slot (released when the request's stream ends); its latency
    /// average takes this request's time to first byte.
    slot: Option<tollgate_core::config::InFlight>,
    /// The failover chain the request went down (`None`: one attempt, to `provider`).
    failover: Option<FailoverState>,
}

impl Forwarded {
    /// A request forwarded now to `provider` as `upstream_model`: not streamed, no answer yet,
    /// no in-flight slot, one attempt.
    fn new(
        endpoint: Endpoint,
        model: String,
        provider: Arc<Provider>,
        upstream_model: String,
        pair: Pair,
    ) -> Forwarded {
        Forwarded {
            endpoint,
            model,
            provider,
            upstream_model,
            stream: false,
            sent_at: Instant::now(),
            upstream_latency: None,
            status: None,
            pair,
            sse: None,
            usage: None,
            response_guard: None,
            response_id: String::new(),
            error_type: None,
            slot: None,
            failover: None,
        }
    }
}

/// What the response of a failover request needs to read the answer of whichever target
/// gave it.
#[derive(Debug)]
struct FailoverState {
    /// The model (its targets are the chain's).
    model: String,
    /// The chain's target indexes, in attempt order.
    chain: Vec<usize>,
    /// Attempts made, as the answering attempt reported (0: no attempt answered).
    attempts: usize,
    /// The target that answered (`None`: none did, e.g. every connection was refused).
    answered: Option<usize>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state of one ext_proc stream.
pub struct Processor {
    config: Arc<Config>,
    metrics: Metrics,
    ctx: Option<AuthContext>,
    forwarded: Option<Forwarded>,
    /// Whether the client sent its own `anthropic-version`.
    client_anthropic_version: bool,
    finished: bool,
    log: Option<LogHandle>,
    started_at: SystemTime,
    first_byte_at: Option<SystemTime>,
    overhead: Duration,
    rejected: Option<Rejected>,
    verdicts: Verdicts,
    /// The request's `content-type`, kept for payload capture.
    request_content_type: String,
    /// Payload capture, when the key's is on (and logging is).
    capture: Option<Capture>,
    /// The key gate asked at the request headers when no ext_authz filter ran (`None`: the
    /// bundle must come from ext_authz's metadata).
    gate: Option<Gate>,
    /// Headers every answer to an admitted request carries (request id, rate limits, feedback
    /// token) when the gate was asked here rather than by ext_authz.
    answer_headers: Vec<HeaderValueOption>,
    /// The spend ledger (`None`: budgets are not enforced by this processor).
    ledger: Option<Arc<dyn Ledger>>,
    /// The end user: from the configured header, else the body.
    end_user: Option<String>,
    /// This request's budget reservation, until it is settled or refunded.
    reservation: Option<Reservation>,
    /// Soft budgets this request went past.
    soft_exceeded: Vec<Line>,
    /// The request's token estimate, once made.
    estimate: Option<budget::Estimate>,
    /// What the request was billed, decided once when it ends (`finish.rs`): the ledger's
    /// settlement, the log event and the span all read this one figure.
    bill: Option<finish::Bill>,
    /// Whether the response reached its end (Envoy's `end_of_stream`), rather than being cut
    /// (client gone, upstream reset or timeout, ext_proc stream reset).
    response_done: bool,
    /// Token-rate state shared with ext_authz (`None`: token limits are not charged).
    limiter: Option<Arc<dyn RateStore>>,
    /// Starts this request's span (`None`: traces are off).
    tracer: Option<Tracer>,
    /// This request's span, when it is sampled.
    span: Option<Box<RequestSpan>>,
    /// The trace context of Envoy's ext_proc call (its gRPC metadata), when Envoy traces.
    envoy_trace: Option<Remote>,
    /// The model of a token count Tollgate estimated itself (logged, like every count).
    estimated_count: Option<String>,
    /// A `POST /v1/responses` request's state (`None` for every other endpoint).
    responses: Option<Box<responses::ResponsesCall>>,
    /// Where Responses API responses are kept.
    response_store: crate::responses::store::Backend,
    /// Set when this stream is the upstream ext_proc of one failover attempt.
    upstream: Option<upstream::Attempt>,
    /// A forwarded Gemini `:countTokens` or `:embedContent` request's state.
    gemini: Option<gemini_methods::GeminiCall>,
    /// An images, audio or moderations request's state (`None` for every other endpoint).
    media: Option<Box<media::MediaCall>>,
    /// A `POST /v1/rerank` request's state (`None` for every other endpoint).
    rerank: Option<Box<rerank::RerankCall>>,
    /// The client's `Cache-Control` directives for the response cache.
    cache_control: crate::cache::Directives,
    /// Where a missed request's answer is stored (`None`: not cached).
    cache_pending: Option<Box<cache::Pending>>,
    /// The cache's answer to this request, when it had one.
    cache_hit: Option<Box<cache::Hit>>,
    /// Envoy's `x-request-id` of the request (the key of its pending failover facts).
    envoy_request_id: Option<String>,
    /// Whether this request's facts wait in [`crate::attempts::pending`] (removed at its end).
    pending_failover: bool,
    /// A `/passthrough/{provider}/…` request's state (`None` for every other request).
    passthrough: Option<Box<passthrough::Call>>,
    /// An OpenAI embeddings request's state for a provider of another dialect (issue 15).
    embeddings: Option<embeddings::EmbedCall>,
}

/// A request Tollgate answered with an error itself.
#[derive(Debug)]
struct Rejected {
    status: u16,
    class: &'static str,
    model: Option<String>,
}

fn header<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a [u8]> {
    headers.as_ref()?.headers.iter().find_map(|h| {
        (h.key == name).then_some(if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            h.raw_value.as_slice()
        })
    })
}

fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

impl Processor {
    /// A processor for one stream, reading one config snapshot throughout.
    pub fn new(config: Arc<Config>, metrics: Metrics) -> Self {
        Self {
            config,
            metrics,
            ctx: None,
            forwarded: None,
            client_anthropic_version: false,
            finished: false,
            log: None,
            started_at: SystemTime::now(),
            first_byte_at: None,
            overhead: Duration::ZERO,
            rejected: None,
            verdicts: Verdicts::default(),
            request_content_type: String::new(),
            capture: None,
            gate: None,
            answer_headers: Vec::new(),
            ledger: None,
            end_user: None,
            reservation: None,
            soft_exceeded: Vec::new(),
            estimate: None,
            bill: None,
            response_done: false,
            limiter: None,
            tracer: None,
            span: None,
            envoy_trace: None,
            estimated_count: None,
            responses: None,
            response_store: Default::default(),
            upstream: None,
            gemini: None,
            media: None,
            rerank: None,
            cache_control: Default::default(),
            cache_pending: None,
            cache_hit: None,
            envoy_request_id: None,
            pending_failover: false,
            passthrough: None,
            embeddings: None,
        }
    }

    /// Records a span of the request with `tracer` when it is sampled (`None`: traces off).
    /// Its parent: `envoy`, the context of Envoy's ext_proc call when Envoy traces, else the
    /// request's own `traceparent`.
    pub fn with_tracer(mut self, tracer: Option<Tracer>, envoy: Option<Remote>) -> Self {
        self.tracer = tracer;
        self.envoy_trace = envoy;
        self
    }

    /// Charges the request's tokens to the token-rate limits kept in `limiter`.
    pub fn with_limiter(mut self, limiter: Option<Arc<dyn RateStore>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Enforces budgets on `ledger` (shared by every stream of the process).
    pub fn with_ledger(mut self, ledger: Option<Arc<dyn Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Asks `gate` at the request headers of a request that ext_authz did not admit.
    pub fn with_gate(mut self, gate: Option<Gate>) -> Self {
        self.gate = gate;
        self
    }

    /// Emits this request's `LogEvent` to `log` when it ends (logging is off with `None`).
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.log = log;
        self
    }

    /// Handles one message; `None` when Envoy expects no answer (observability mode).
    pub async fn handle(&mut self, msg: ProcessingRequest) -> Option<ProcessingResponse> {
        if self.ctx.is_none() {
            self.ctx = msg
                .metadata_context
                .as_ref()
                .and_then(AuthContext::from_metadata);
        }
        let started = Instant::now();
        if let Some(response) = self.upstream_phase(&msg).await {
            self.metrics.observe_phase("upstream", started);
            return (!msg.observability_mode).then_some(response);
        }
        let (phase, response) = match msg.request {
            Some(Request::RequestHeaders(h)) => {
                self.envoy_request_id = header(&h.headers, "x-request-id")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned);
                ("request_headers", self.on_request_headers(&h).await)
            }
            Some(Request::RequestBody(b)) => ("request_body", self.on_request_body(b).await),
            Some(Request::ResponseHeaders(h)) => ("response_headers", self.on_response_headers(&h)),
            Some(Request::ResponseBody(b)) => ("response_body", self.on_response_body(b).await),
            Some(Request::RequestTrailers(_)) => (
                "request_trailers",
                ProcessingResponse {
                    response: Some(
                        envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::RequestTrailers(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                },
            ),
            Some(Request::ResponseTrailers(_)) => (
                "response_trailers",
                ProcessingResponse {
                    response: Some(
                        envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::ResponseTrailers(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                },
            ),
            None => ("unknown", ProcessingResponse::default()),
        };
        self.metrics.observe_phase(phase, started);
        if let Some(span) = &mut self.span {
            span.verdicts(&self.verdicts);
        }
        self.overhead += started.elapsed();
        tracing::trace!(phase, "Processed ext_proc message");
        (!msg.observability_mode).then_some(response)
    }

    fn dialect(&self) -> Dialect {
        let path = self.ctx.as_ref().map_or("", |c| c.path.as_str());
        match Dialect::from_path(path) {
            // `/v1/feedback` serves both APIs: Anthropic's SDK always sends its version header.
            Dialect::OpenAi
                if self.client_anthropic_version
                    && Endpoint::from_request("POST", strip_query(path))
                        == Some(Endpoint::Feedback) =>
            {
                Dialect::Anthropic
            }
            d => d,
        }
    }

    fn endpoint(&self, method: &str, path: &str) -> Result<Endpoint, ApiError> {
        let path = strip_query(path);
        Endpoint::from_request(method, path).ok_or_else(|| ApiError::UnknownEndpoint {
            method: method.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Marks the stream failed: after an error response Envoy sends nothing more on it.
    pub fn abandon(&mut self) {
        self.finish();
    }
}

/// The owner of a request, for its budgets.
fn owner<'a>(ctx: &'a AuthContext, end_user: Option<&'a str>) -> Owner<'a> {
    Owner {
        key: &ctx.key_id,
        team: Some(ctx.team.as_str()),
        tenant: Some(ctx.tenant.as_str()),
        end_user,
    }
}

#[cfg(test)]
mod tests;

impl Drop for Processor {
    fn drop(&mut self) {
        // A stream that ends before the response did (client gone, upstream reset) still counts.
        self.finish();
        self.end_attempt();
    }
}
