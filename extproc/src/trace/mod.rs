//! OpenTelemetry traces (the `traces` config section): one span per LLM request, with the
//! GenAI semantic conventions (`gen_ai.*`) and Tollgate's own attributes (`tollgate.*`),
//! joined to the trace the client or Envoy started (W3C `traceparent`) and exported over OTLP
//! by a background [`Exporter`].
//!
//! The processor holds an `Option<Tracer>` and, for a sampled request, an
//! `Option<Box<RequestSpan>>`: with traces off, or for a request not sampled, tracing costs a
//! branch on each, and nothing is allocated. A span records no prompt or response text and
//! no credential: model names, token counts, finish reasons, rule ids and Tollgate's ids.
//!
//! Events: `tollgate.attempt` for each provider target tried (one today: Tollgate has no
//! failover yet, so a request makes exactly one attempt), `tollgate.guardrail` for each
//! guardrail verdict (rule, action, side) at the phase that reached it, and
//! `tollgate.first_token` when the first bytes of a stream came back.

mod context;
mod export;
mod sniff;

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tollgate_core::config::{Provider, ProviderKind};
use tollgate_core::metrics::Metrics;
use tollgate_core::{pricing, Endpoint, UsageSource};
use tollgate_proto::otlp::common::{any_value::Value, AnyValue, ArrayValue, KeyValue};
use tollgate_proto::otlp::trace::{span, status, Span, Status};

pub use context::{hex, parse_traceparent, traceparent, Parent, Remote};
pub use export::{Exporter, TraceError};

use crate::guard::Verdicts;
use crate::log::Facts;
use sniff::Sniffer;

/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` of OTLP's `Span.flags`.
const HAS_IS_REMOTE: u32 = 0x100;
/// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`: the parent came from another process.
const IS_REMOTE: u32 = 0x200;
/// The W3C `sampled` trace flag.
const SAMPLED: u32 = 0x01;

/// Which requests are recorded: those of a sampled parent trace, none of an unsampled one,
/// and `ratio` of new traces, decided by the trace id (as OpenTelemetry's
/// `ParentBased(TraceIdRatioBased)`), so every service sampling at a ratio agrees.
#[derive(Debug, Clone, Copy)]
struct Sampler {
    /// New traces whose id's low 64 bits are below this are recorded.
    threshold: u64,
    /// Every new trace is recorded (ratio 1).
    all: bool,
}

impl Sampler {
    fn new(ratio: f64) -> Self {
        Sampler {
            // Saturating: a ratio of 1 is `all`, 0 gives 0.
            threshold: (ratio.clamp(0.0, 1.0) * 18_446_744_073_709_551_616.0) as u64,
            all: ratio >= 1.0,
        }
    }

    fn sampled(&self, parent: Option<&Parent>, trace_id: &[u8; 16]) -> bool {
        match parent {
            Some(p) => p.sampled,
            None => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                self.all || u64::from_be_bytes(low) < self.threshold
            }
        }
    }
}

/// Starts request spans and queues the finished ones for the exporter; cheap to clone (one
/// per ext_proc stream).
#[derive(Clone)]
pub struct Tracer(Arc<Shared>);

struct Shared {
    queue: mpsc::Sender<Span>,
    sampler: Sampler,
    metrics: Metrics,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sampler", &self.0.sampler)
            .finish_non_exhaustive()
    }
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id != [0; N] {
            return id;
        }
    }
}

impl Tracer {
    /// A tracer sampling `sample_ratio` of new traces whose finished spans go to the returned
    /// queue (bounded by `capacity`: a span that does not fit is dropped and counted).
    pub fn channel(
        sample_ratio: f64,
        capacity: usize,
        metrics: Metrics,
    ) -> (Tracer, mpsc::Receiver<Span>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let shared = Shared {
            queue,
            sampler: Sampler::new(sample_ratio),
            metrics,
        };
        (Tracer(Arc::new(shared)), rx)
    }

    /// The span of a request that arrived at `at` in the trace `remote` (`None`: a new trace);
    /// `None` when it is not sampled.
    pub fn start(&self, remote: Option<Remote>, at: SystemTime) -> Option<Box<RequestSpan>> {
        let parent = remote.as_ref().map(|r| r.parent);
        let trace_id = parent
            .as_ref()
            .map_or_else(random_nonzero::<16>, |p| p.trace_id);
        if !self.0.sampler.sampled(parent.as_ref(), &trace_id) {
            return None;
        }
        Some(Box::new(RequestSpan {
            trace_id,
            span_id: random_nonzero::<8>(),
            parent_span_id: parent.map(|p| p.span_id),
            trace_state: remote.and_then(|r| r.state).unwrap_or_default(),
            start: at,
            events: Vec::new(),
            verdicts_seen: 0,
            attempts: 0,
            response: Sniffer::default(),
        }))
    }

    /// Ends `span` with what its request came to and queues it; never waits.
    pub fn end(&self, span: Box<RequestSpan>, end: &SpanEnd<'_>) {
        if self.0.queue.try_send(span.finish(end)).is_err() {
            self.0.metrics.trace_spans("dropped", 1);
        }
    }
}

/// One request's span while the request runs.
#[derive(Debug)]
pub struct RequestSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    trace_state: String,
    start: SystemTime,
    events: Vec<span::Event>,
    /// Verdicts already turned into events.
    verdicts_seen: usize,
    /// Provider targets tried.
    attempts: i64,
    response: Sniffer,
}

/// What a request came to, for its span.
#[derive(Debug)]
pub struct SpanEnd<'a> {
    /// What the request's log event says too.
    pub facts: &'a Facts<'a>,
    /// The endpoint asked for.
    pub endpoint: Option<Endpoint>,
    /// The provider the request went to.
    pub provider: Option<&'a Provider>,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// A text attribute; its value bounded (a client may have named the model or the end user).
fn text(key: &str, value: &str) -> KeyValue {
    kv(
        key,
        Value::StringValue(tollgate_core::bound::echo(value).into_owned()),
    )
}

fn int(key: &str, value: u64) -> KeyValue {
    kv(
        key,
        Value::IntValue(i64::try_from(value).unwrap_or(i64::MAX)),
    )
}

fn event(name: &str, at: SystemTime, attributes: Vec<KeyValue>) -> span::Event {
    span::Event {
        time_unix_nano: unix_nanos(at),
        name: name.to_owned(),
        attributes,
        dropped_attributes_count: 0,
    }
}

/// `gen_ai.operation.name` of an endpoint; `None` for what is no model call.
pub fn operation(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => Some("chat"),
        Endpoint::GenerateContent => Some("generate_content"),
        Endpoint::Completions => Some("text_completion"),
        Endpoint::Embeddings | Endpoint::EmbedContent => Some("embeddings"),
        Endpoint::Media(api) => Some(api.label()),
        Endpoint::Rerank => Some("rerank"),
        // Any call of the provider's own API: not one named operation.
        Endpoint::Passthrough => None,
        Endpoint::Models | Endpoint::Feedback | Endpoint::CountTokens => None,
    }
}

/// `gen_ai.provider.name`: the semantic conventions' well-known value for the provider's kind
/// (for an OpenAI-compatible API, the one its host names), else the provider's config name.
pub fn provider_name(p: &Provider) -> &str {
    match p.kind {
        ProviderKind::Openai => "openai",
        ProviderKind::AzureOpenai => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Vertex => "gcp.vertex_ai",
        ProviderKind::Bedrock => "aws.bedrock",
        ProviderKind::Cohere => "cohere",
        ProviderKind::Jina => "jina",
        ProviderKind::Voyage => "voyage",
        ProviderKind::Tei => "huggingface.tei",
        ProviderKind::OpenaiCompatible => {
            const HOSTS: [(&str, &str); 6] = [
                ("groq.com", "groq"),
                ("mistral.ai", "mistral_ai"),
                ("deepseek.com", "deepseek"),
                ("x.ai", "x_ai"),
                ("perplexity.ai", "perplexity"),
                ("cohere.com", "cohere"),
            ];
            HOSTS
                .iter()
                .find(|(host, _)| {
                    p.host
                        .strip_suffix(host)
                        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
                })
                .map_or(p.name.as_str(), |(_, name)| name)
        }
    }
}

impl RequestSpan {
    /// The trace this span belongs to.
    pub fn trace_id(&self) -> &[u8; 16] {
        &self.trace_id
    }

    /// This span's id.
    pub fn span_id(&self) -> &[u8; 8] {
        &self.span_id
    }

    /// Records an attempt at `upstream_model` of `provider`; returns the `traceparent` the
    /// attempt carries upstream (this span as the provider's parent).
    pub fn attempt(&mut self, provider: &Provider, upstream_model: &str) -> String {
        self.attempts += 1;
        self.events.push(event(
            "tollgate.attempt",
            SystemTime::now(),
            vec![
                kv("tollgate.attempt", Value::IntValue(self.attempts)),
                text("tollgate.provider", &provider.name),
                text("tollgate.upstream_model", upstream_model),
                text("server.address", &provider.host),
            ],
        ));
        traceparent(&self.trace_id, &self.span_id)
    }

    /// Reads a chunk of the provider's (successful) response, raw.
    pub fn response_body(&mut self, chunk: &[u8]) {
        self.response.push(chunk);
    }

    /// Turns the verdicts reached since the last call into events, timed now.
    pub fn verdicts(&mut self, verdicts: &Verdicts) {
        let Some(new) = verdicts.list().get(self.verdicts_seen..) else {
            return;
        };
        if new.is_empty() {
            return;
        }
        let now = SystemTime::now();
        for v in new {
            self.events.push(event(
                "tollgate.guardrail",
                now,
                vec![
                    text("tollgate.guardrail.rule", &v.rule),
                    text("tollgate.guardrail.action", v.action),
                    text("tollgate.guardrail.side", v.side.label()),
                ],
            ));
        }
        self.verdicts_seen += new.len();
    }

    /// The finished span.
    fn finish(mut self, end: &SpanEnd<'_>) -> Span {
        let f = end.facts;
        self.verdicts(f.guardrails);
        let op = end.endpoint.and_then(operation);
        let mut a = Vec::with_capacity(32);
        if let Some(op) = op {
            a.push(text("gen_ai.operation.name", op));
        }
        if let Some(p) = end.provider {
            let name = provider_name(p);
            a.push(text("gen_ai.provider.name", name));
            // Its name before semantic conventions 1.37, still what many backends read.
            a.push(text("gen_ai.system", name));
            a.push(text("server.address", &p.host));
            a.push(int("server.port", u64::from(p.port)));
        }
        if !f.requested_model.is_empty() {
            a.push(text("gen_ai.request.model", f.requested_model));
        }
        let answered = (200..300).contains(&f.status) && !f.upstream_model.is_empty();
        let sniffed = std::mem::take(&mut self.response);
        if let Some(m) = sniffed
            .model
            .or_else(|| answered.then(|| f.upstream_model.to_owned()))
        {
            a.push(kv("gen_ai.response.model", Value::StringValue(m)));
        }
        if let Some(id) = sniffed.id {
            a.push(kv("gen_ai.response.id", Value::StringValue(id)));
        }
        if !sniffed.finish_reasons.is_empty() {
            let values = sniffed
                .finish_reasons
                .into_iter()
                .map(|r| AnyValue {
                    value: Some(Value::StringValue(r)),
                })
                .collect();
            a.push(kv(
                "gen_ai.response.finish_reasons",
                Value::ArrayValue(ArrayValue { values }),
            ));
        }
        if let Some(u) = f.usage {
            a.push(int("gen_ai.usage.input_tokens", u.input_tokens));
            a.push(int("gen_ai.usage.output_tokens", u.output_tokens));
            for (key, n) in [
                ("gen_ai.usage.cache_read.input_tokens", u.cache_read_tokens),
                (
                    "gen_ai.usage.cache_creation.input_tokens",
                    u.cache_write_tokens,
                ),
                ("tollgate.usage.reasoning_tokens", u.reasoning_tokens),
            ] {
                if n > 0 {
                    a.push(int(key, n));
                }
            }
            match u.source {
                UsageSource::Provider => {}
                UsageSource::Estimated => a.push(text("tollgate.usage.source", "estimated")),
                UsageSource::Reservation => a.push(text("tollgate.usage.source", "reservation")),
            }
        }
        if f.status != 0 {
            a.push(int("http.response.status_code", u64::from(f.status)));
        }
        if !f.error_class.is_empty() {
            a.push(text("error.type", f.error_class));
        }
        for (key, value) in [
            ("tollgate.request_id", f.request_id),
            ("tollgate.key_id", f.key_id),
            ("tollgate.tenant", f.tenant),
            ("tollgate.team", f.team),
            ("tollgate.provider", f.provider),
            ("tollgate.upstream_model", f.upstream_model),
            ("tollgate.endpoint", f.endpoint),
            ("tollgate.client_api", f.dialect.label()),
        ] {
            if !value.is_empty() {
                a.push(text(key, value));
            }
        }
        a.push(kv("tollgate.stream", Value::BoolValue(f.stream)));
        if let Some(c) = f.cost {
            a.push(kv(
                "tollgate.cost_usd",
                Value::DoubleValue(pricing::to_usd_f64(c)),
            ));
        }
        a.push(kv(
            "tollgate.overhead_ms",
            Value::DoubleValue(f.overhead.as_secs_f64() * 1000.0),
        ));
        if let (true, Some(first)) = (f.stream, f.first_byte) {
            let ttft = first.duration_since(f.started).unwrap_or_default();
            self.events.push(event(
                "tollgate.first_token",
                first,
                vec![kv(
                    "tollgate.time_to_first_token_ms",
                    Value::DoubleValue(ttft.as_secs_f64() * 1000.0),
                )],
            ));
        }
        self.events.sort_by_key(|e| e.time_unix_nano);
        let name = match (op, f.requested_model) {
            (Some(op), "") => op.to_owned(),
            (Some(op), model) => format!("{op} {}", tollgate_core::bound::echo(model)),
            (None, _) => format!("tollgate {}", f.endpoint),
        };
        let status = if f.error_class.is_empty() {
            Status::default()
        } else {
            Status {
                message: f.error_class.to_owned(),
                code: status::StatusCode::Error.into(),
            }
        };
        let remote = if self.parent_span_id.is_some() {
            IS_REMOTE
        } else {
            0
        };
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: self.trace_state,
            parent_span_id: self.parent_span_id.map_or_else(Vec::new, |p| p.to_vec()),
            flags: SAMPLED | HAS_IS_REMOTE | remote,
            name,
            kind: span::SpanKind::Client.into(),
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(f.ended),
            attributes: a,
            dropped_attributes_count: 0,
            events: self.events,
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: Some(status),
        }
    }
}

#[cfg(test)]
mod tests;
