//! The stored form of one event: one flat JSON object per line (NDJSON), field names matching
//! the proto, `usage_source` spelled out. Flat so a warehouse table maps onto it one to one:
//! the ClickHouse sink inserts the same struct, field order = column order of its table.

use serde::{Deserialize, Serialize};
use tollgate_proto::logger::v1::{LogEvent, UsageSource};

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct Record {
    /// Tollgate's request id.
    pub request_id: String,
    /// When the request reached Tollgate, unix nanoseconds.
    pub start_time_unix_nanos: i64,
    /// When the first response bytes came back, unix nanoseconds (0: none).
    pub first_token_time_unix_nanos: i64,
    /// When the response ended, unix nanoseconds.
    pub end_time_unix_nanos: i64,
    /// The virtual key's id.
    pub key_id: String,
    /// Tenant.
    pub tenant: String,
    /// Team.
    pub team: String,
    /// End user.
    pub end_user: String,
    /// The client's API dialect.
    pub client_api: String,
    /// The endpoint.
    pub endpoint: String,
    /// The public model asked for.
    pub requested_model: String,
    /// The provider.
    pub provider: String,
    /// The provider's model id.
    pub upstream_model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// HTTP status the client got.
    pub http_status: u32,
    /// Error code or type, empty on success.
    pub error_class: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from a cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to a cache.
    pub cache_write_tokens: u64,
    /// Generated tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// `provider`, `estimated`, `reservation` (the budget reservation was charged: the
    /// provider's usage never came), or `none` when no usage is known.
    pub usage_source: String,
    /// Cost in US dollars (`cost_picodollars` as a float).
    pub cost_usd: f64,
    /// Exact cost in picodollars (10⁻¹² USD): sum this for spend.
    pub cost_picodollars: u64,
    /// Time Tollgate spent on the request, ms.
    pub gateway_overhead_ms: f64,
    /// Time to the provider's response headers, ms.
    pub upstream_latency_ms: f64,
    /// Guardrail verdicts, each `side:action:rule` (e.g. `request:redact:email`).
    #[serde(default)]
    pub guardrail_verdicts: Vec<String>,
    /// Payload capture: `off`, `metadata` or `full`.
    #[serde(default = "off")]
    pub payload_mode: String,
    /// Request body size, bytes (capture on).
    #[serde(default)]
    pub request_bytes: u64,
    /// Request `content-type` (capture on).
    #[serde(default)]
    pub request_content_type: String,
    /// Messages in the request (capture on).
    #[serde(default)]
    pub message_count: u32,
    /// Tools offered (capture on).
    #[serde(default)]
    pub tool_count: u32,
    /// Response body size, bytes (capture on).
    #[serde(default)]
    pub response_bytes: u64,
    /// Response `content-type` (capture on).
    #[serde(default)]
    pub response_content_type: String,
    /// Tool calls in the response (capture on).
    #[serde(default)]
    pub tool_call_count: u32,
    /// The redacted, capped request body (`full`).
    #[serde(default)]
    pub request_body: String,
    /// The redacted, capped response body or stream text (`full`).
    #[serde(default)]
    pub response_body: String,
    /// A failover request's attempts: the provider of each, in order (migration 5).
    #[serde(default)]
    pub attempt_providers: Vec<String>,
    /// Each attempt's HTTP status (0: no response headers, or not seen by the replica).
    #[serde(default)]
    pub attempt_statuses: Vec<u32>,
    /// Which attempt answered (1 for the first; 0 without failover or when none did).
    #[serde(default)]
    pub answered_attempt: u32,
    /// Each attempt's latency in milliseconds, parallel to `attempt_statuses` (migration 5).
    #[serde(default)]
    pub attempt_latencies_ms: Vec<u32>,
    /// Why each attempt ended without response headers (`timeout`, `reset`, `not_seen`;
    /// empty when headers came), parallel to `attempt_statuses` (migration 5).
    #[serde(default)]
    pub attempt_errors: Vec<String>,
    /// Images an images request returned (migration 7).
    #[serde(default)]
    pub media_images: u32,
    /// The images' requested size (empty: the provider's default; migration 7).
    #[serde(default)]
    pub media_image_size: String,
    /// The images' requested quality (empty: the provider's default; migration 7).
    #[serde(default)]
    pub media_image_quality: String,
    /// Milliseconds of input audio a transcription or translation was billed for (migration 7).
    #[serde(default)]
    pub media_audio_ms: u64,
    /// Characters of a speech request's input (migration 7).
    #[serde(default)]
    pub media_characters: u64,
    /// Search units of a rerank request; 0 for other endpoints (migration 8).
    #[serde(default)]
    pub search_units: u64,
    /// The response cache that answered (`exact`; empty: a provider did) (migration 6).
    #[serde(default)]
    pub cache: String,
    /// For a cache hit: the request id whose answer was served (migration 6).
    #[serde(default)]
    pub cache_source_request_id: String,
    /// A passthrough request's upstream path, without its query (migration 10; empty for
    /// other endpoints).
    #[serde(default)]
    pub passthrough_path: String,
    /// A semantic cache hit's cosine similarity; 0 otherwise (migration 11).
    #[serde(default)]
    pub cache_similarity: f32,
    /// The semantic cache's embedding call: the request it embedded the prompt of; empty
    /// otherwise (migration 11).
    #[serde(default)]
    pub parent_request_id: String,
}

fn off() -> String {
    "off".to_owned()
}

impl From<&LogEvent> for Record {
    fn from(e: &LogEvent) -> Self {
        let u = e.usage.unwrap_or_default();
        let p = e.payload.as_ref();
        let usage_source = match (e.usage.is_some(), u.source()) {
            (false, _) | (true, UsageSource::Unspecified) => "none",
            (true, UsageSource::Provider) => "provider",
            (true, UsageSource::Estimated) => "estimated",
            (true, UsageSource::Reservation) => "reservation",
        };
        Record {
            request_id: e.request_id.clone(),
            start_time_unix_nanos: e.start_time_unix_nanos,
            first_token_time_unix_nanos: e.first_token_time_unix_nanos,
            end_time_unix_nanos: e.end_time_unix_nanos,
            key_id: e.key_id.clone(),
            tenant: e.tenant.clone(),
            team: e.team.clone(),
            end_user: e.end_user.clone(),
            client_api: e.client_api.clone(),
            endpoint: e.endpoint.clone(),
            requested_model: e.requested_model.clone(),
            provider: e.provider.clone(),
            upstream_model: e.upstream_model.clone(),
            stream: e.stream,
            http_status: e.http_status,
            error_class: e.error_class.clone(),
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reasoning_tokens: u.reasoning_tokens,
            usage_source: usage_source.to_owned(),
            cost_usd: e.cost_usd,
            cost_picodollars: e.cost_picodollars,
            gateway_overhead_ms: e.gateway_overhead_ms,
            upstream_latency_ms: e.upstream_latency_ms,
            guardrail_verdicts: e
                .guardrail_verdicts
                .iter()
                .map(|v| format!("{}:{}:{}", v.side, v.action, v.rule))
                .collect(),
            payload_mode: p.map_or_else(off, |p| p.mode.clone()),
            request_bytes: p.map_or(0, |p| p.request_bytes),
            request_content_type: p
                .map(|p| p.request_content_type.clone())
                .unwrap_or_default(),
            message_count: p.map_or(0, |p| p.message_count),
            tool_count: p.map_or(0, |p| p.tool_count),
            response_bytes: p.map_or(0, |p| p.response_bytes),
            response_content_type: p
                .map(|p| p.response_content_type.clone())
                .unwrap_or_default(),
            tool_call_count: p.map_or(0, |p| p.tool_call_count),
            request_body: p.map(|p| p.request_body.clone()).unwrap_or_default(),
            response_body: p.map(|p| p.response_body.clone()).unwrap_or_default(),
            attempt_providers: e.attempt_providers.clone(),
            attempt_statuses: e.attempt_statuses.clone(),
            answered_attempt: e.answered_attempt,
            attempt_latencies_ms: e.attempt_latencies_ms.clone(),
            attempt_errors: e.attempt_errors.clone(),
            media_images: e.media_images,
            media_image_size: e.media_image_size.clone(),
            media_image_quality: e.media_image_quality.clone(),
            media_audio_ms: e.media_audio_ms,
            media_characters: e.media_characters,
            search_units: e.search_units,
            cache: e.cache.clone(),
            cache_source_request_id: e.cache_source_request_id.clone(),
            passthrough_path: e.passthrough_path.clone(),
            cache_similarity: e.cache_similarity,
            parent_request_id: e.parent_request_id.clone(),
        }
    }
}

/// One stored piece of feedback (an event whose `feedback` is set): NDJSON lines under
/// `feedback/`, rows of the ClickHouse table `<table>_feedback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct FeedbackRecord {
    /// The feedback's own id (the request id of the `POST /v1/feedback` that gave it).
    pub feedback_id: String,
    /// The request the feedback is about.
    pub request_id: String,
    /// When it was given, unix nanoseconds.
    pub time_unix_nanos: i64,
    /// The key that made the rated request (and gave the feedback).
    pub key_id: String,
    /// That key's tenant.
    pub tenant: String,
    /// The score, when one was given.
    pub score: Option<f64>,
    /// The label, empty when none.
    pub label: String,
    /// The comment, empty when none.
    pub comment: String,
}

impl FeedbackRecord {
    /// The stored form of `e`, when it is feedback.
    pub fn from_event(e: &LogEvent) -> Option<FeedbackRecord> {
        let f = e.feedback.as_ref()?;
        Some(FeedbackRecord {
            feedback_id: e.request_id.clone(),
            request_id: f.request_id.clone(),
            time_unix_nanos: e.start_time_unix_nanos,
            key_id: e.key_id.clone(),
            tenant: e.tenant.clone(),
            score: f.score,
            label: f.label.clone(),
            comment: f.comment.clone(),
        })
    }
}

/// Just the idempotency key of a stored line (what a restart reads back).
#[derive(Debug, Deserialize)]
pub struct RecordId {
    /// Tollgate's request id.
    pub request_id: String,
}

/// Just the idempotency key of a stored feedback line.
#[derive(Debug, Deserialize)]
pub struct FeedbackId {
    /// The feedback's own id.
    pub feedback_id: String,
}

/// One evaluation result (docs/EVALUATORS.md): NDJSON lines under `evaluations/`, rows of the
/// ClickHouse table `<table>_evaluations`. Idempotent on (`request_id`, `evaluator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct EvaluationRecord {
    /// The request evaluated.
    pub request_id: String,
    /// The evaluator's name.
    pub evaluator: String,
    /// The evaluator's kind (`json_valid`, `llm_judge`, ...).
    pub kind: String,
    /// The score, 0 to 1 (0 when `error` is set).
    pub score: f64,
    /// Whether the score reached the evaluator's threshold (false when `error` is set).
    pub passed: bool,
    /// A short label (`refusal`, `invalid_arguments`, a webhook's own), empty when none.
    pub label: String,
    /// Why, in a sentence; empty when there is nothing to say.
    pub reason: String,
    /// Why the evaluator could not score (`timeout`, an HTTP error, ...); empty on success.
    pub error: String,
    /// How long the evaluation took, ms.
    pub latency_ms: f64,
    /// When the evaluation ended, unix nanoseconds.
    pub time_unix_nanos: i64,
    /// When the request reached Tollgate, unix nanoseconds (days are counted by this).
    pub request_time_unix_nanos: i64,
    /// The request's key id.
    pub key_id: String,
    /// The request's tenant.
    pub tenant: String,
    /// The public model the request asked for.
    pub model: String,
}

impl EvaluationRecord {
    /// The idempotency key: request id and evaluator.
    pub fn id(&self) -> String {
        format!("{}/{}", self.request_id, self.evaluator)
    }
}

/// Just the idempotency key of a stored evaluation line.
#[derive(Debug, Deserialize)]
pub struct EvaluationId {
    /// The request.
    pub request_id: String,
    /// The evaluator.
    pub evaluator: String,
}
