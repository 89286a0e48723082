//! Builds the `tollgate.logger.v1.LogEvent` of one request from what its processor saw. Pure:
//! the processor gathers the [`Facts`], this module shapes them, and the event goes to the
//! shipper's bounded queue ([`tollgate_logger::LogHandle::emit`]).

use std::time::{Duration, SystemTime};

use tollgate_core::pricing::{self, Picodollars};
use tollgate_core::{Dialect, Usage, UsageSource};
use tollgate_proto::logger::v1::{self as pb, LogEvent};

use crate::guard::Verdicts;

/// What one request's processor knows when the request ends.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// Tollgate's request id.
    pub request_id: &'a str,
    /// The virtual key's id.
    pub key_id: &'a str,
    /// The key's tenant.
    pub tenant: &'a str,
    /// The key's team.
    pub team: &'a str,
    /// The end user (header or body), empty when the request named none.
    pub end_user: &'a str,
    /// The client's dialect.
    pub dialect: Dialect,
    /// The endpoint label (`chat_completions`, ...), or `unknown`.
    pub endpoint: &'a str,
    /// The public model asked for (empty when the body named none).
    pub requested_model: &'a str,
    /// The provider's name (empty when the request went nowhere).
    pub provider: &'a str,
    /// The provider's model id.
    pub upstream_model: &'a str,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The status the client got.
    pub status: u16,
    /// The client-facing error code or type; empty on success.
    pub error_class: &'a str,
    /// Usage, when known.
    pub usage: Option<Usage>,
    /// When the request reached Tollgate.
    pub started: SystemTime,
    /// When the first response body bytes came back.
    pub first_byte: Option<SystemTime>,
    /// When the response ended.
    pub ended: SystemTime,
    /// Time Tollgate spent in its ext_proc phases.
    pub overhead: Duration,
    /// Time to the provider's response headers.
    pub upstream_latency: Option<Duration>,
    /// The exact cost, when the usage and the upstream model's price are known.
    pub cost: Option<Picodollars>,
    /// Every guardrail verdict, request side first.
    pub guardrails: &'a Verdicts,
    /// The captured payloads, when the key's capture is on.
    pub payload: Option<pb::Payload>,
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `error_class` of a request that reached a provider, by the status the client got.
pub fn upstream_error_class(status: u16) -> &'static str {
    match status {
        200..=299 => "",
        499 => "client_closed_request",
        429 => "upstream_rate_limited",
        400..=498 => "upstream_client_error",
        _ => "upstream_error",
    }
}

/// A text field of an event, bounded: one client-controlled string (a model name in a
/// path, an end user) must never make an event the logger refuses.
fn field(s: &str) -> String {
    tollgate_core::bound::echo(s).into_owned()
}

/// The event for these facts (every text field bounded to
/// [`tollgate_core::bound::MAX_ECHO_BYTES`] with a marker; the captured payload has its own
/// bound, `logging.capture_max_bytes`).
pub fn event(f: &Facts<'_>) -> LogEvent {
    LogEvent {
        request_id: field(f.request_id),
        start_time_unix_nanos: unix_nanos(f.started),
        first_token_time_unix_nanos: f.first_byte.map_or(0, unix_nanos),
        end_time_unix_nanos: unix_nanos(f.ended),
        key_id: field(f.key_id),
        tenant: field(f.tenant),
        team: field(f.team),
        end_user: field(f.end_user),
        client_api: f.dialect.label().to_owned(),
        endpoint: field(f.endpoint),
        requested_model: field(f.requested_model),
        provider: field(f.provider),
        upstream_model: field(f.upstream_model),
        stream: f.stream,
        http_status: u32::from(f.status),
        error_class: field(f.error_class),
        usage: f.usage.map(|u| pb::Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reasoning_tokens: u.reasoning_tokens,
            source: match u.source {
                UsageSource::Provider => pb::UsageSource::Provider,
                UsageSource::Estimated => pb::UsageSource::Estimated,
                UsageSource::Reservation => pb::UsageSource::Reservation,
            }
            .into(),
        }),
        cost_usd: f.cost.map_or(0.0, pricing::to_usd_f64),
        cost_picodollars: f.cost.map_or(0, |c| u64::try_from(c).unwrap_or(u64::MAX)),
        gateway_overhead_ms: ms(f.overhead),
        upstream_latency_ms: f.upstream_latency.map_or(0.0, ms),
        guardrail_verdicts: f.guardrails.to_proto(),
        payload: f.payload.clone(),
        feedback: None,
        attempt_providers: Vec::new(),
        attempt_statuses: Vec::new(),
        answered_attempt: 0,
        attempt_latencies_ms: Vec::new(),
        attempt_errors: Vec::new(),
        media_images: 0,
        media_image_size: String::new(),
        media_image_quality: String::new(),
        media_audio_ms: 0,
        media_characters: 0,
        search_units: 0,
        cache: String::new(),
        cache_source_request_id: String::new(),
        passthrough_path: String::new(),
        cache_similarity: 0.0,
        parent_request_id: String::new(),
    }
}

/// The event recording one piece of feedback: `id` is the feedback's own id (the request id
/// of the `POST /v1/feedback` that gave it), `claims` the verified token naming the rated
/// request, `at` when it was given.
pub fn feedback_event(
    id: &str,
    claims: &tollgate_core::feedback::Claims,
    feedback: pb::Feedback,
    at: SystemTime,
) -> LogEvent {
    let at = unix_nanos(at);
    LogEvent {
        request_id: id.to_owned(),
        start_time_unix_nanos: at,
        end_time_unix_nanos: at,
        key_id: claims.key_id.clone(),
        tenant: claims.tenant.clone(),
        endpoint: tollgate_core::Endpoint::Feedback.label().to_owned(),
        http_status: 200,
        feedback: Some(feedback),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_carries_every_fact_in_its_proto_units() {
        let mut verdicts = Verdicts::default();
        verdicts.add(
            tollgate_core::config::Side::Response,
            &tollgate_guardrails::Verdict {
                blocked_by: Some("card".into()),
                redacted: vec!["email".into()],
                flagged: vec![],
            },
            &tollgate_core::metrics::Metrics::default(),
        );
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let facts = Facts {
            request_id: "rid",
            key_id: "k",
            tenant: "acme",
            team: "ml",
            end_user: "alice",
            dialect: Dialect::OpenAi,
            endpoint: "chat_completions",
            requested_model: "gpt",
            provider: "openai",
            upstream_model: "gpt-4o",
            stream: true,
            status: 200,
            error_class: "",
            usage: Some(Usage {
                input_tokens: 10,
                output_tokens: 20,
                cache_read_tokens: 3,
                cache_write_tokens: 4,
                reasoning_tokens: 5,
                source: UsageSource::Estimated,
            }),
            started: t0,
            first_byte: Some(t0 + Duration::from_millis(30)),
            ended: t0 + Duration::from_millis(90),
            overhead: Duration::from_micros(1500),
            upstream_latency: Some(Duration::from_millis(25)),
            cost: Some(4_125_000_000),
            guardrails: &verdicts,
            payload: None,
        };
        let e = event(&facts);
        assert_eq!(
            e.guardrail_verdicts,
            [
                pb::GuardrailVerdict {
                    rule: "card".into(),
                    action: "block".into(),
                    side: "response".into(),
                },
                pb::GuardrailVerdict {
                    rule: "email".into(),
                    action: "redact".into(),
                    side: "response".into(),
                }
            ]
        );
        assert_eq!(e.start_time_unix_nanos, 1_700_000_000_000_000_000);
        assert_eq!(e.first_token_time_unix_nanos, 1_700_000_000_030_000_000);
        assert_eq!(e.end_time_unix_nanos, 1_700_000_000_090_000_000);
        assert_eq!((e.gateway_overhead_ms, e.upstream_latency_ms), (1.5, 25.0));
        assert_eq!(
            (e.key_id.as_str(), e.tenant.as_str(), e.team.as_str()),
            ("k", "acme", "ml")
        );
        assert_eq!(e.client_api, "openai");
        assert_eq!(e.end_user, "alice");
        assert_eq!(e.upstream_model, "gpt-4o");
        let u = e.usage.unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.reasoning_tokens
            ),
            (10, 20, 3, 4, 5)
        );
        assert_eq!(u.source(), pb::UsageSource::Estimated);
        assert_eq!((e.cost_picodollars, e.cost_usd), (4_125_000_000, 0.004125));
        // No first byte, no upstream: zeros, not garbage.
        let e = event(&Facts {
            first_byte: None,
            upstream_latency: None,
            cost: None,
            guardrails: &Verdicts::default(),
            usage: None,
            ..facts
        });
        assert_eq!(
            (e.first_token_time_unix_nanos, e.upstream_latency_ms),
            (0, 0.0)
        );
        assert!(e.usage.is_none());
    }

    #[test]
    fn client_controlled_text_is_bounded_in_the_event() {
        let huge = "m".repeat(1 << 20);
        let verdicts = Verdicts::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let e = event(&Facts {
            request_id: "rid",
            key_id: "k",
            tenant: "",
            team: "",
            end_user: &huge,
            dialect: Dialect::Gemini,
            endpoint: "generate_content",
            requested_model: &huge,
            provider: "",
            upstream_model: "",
            stream: false,
            status: 404,
            error_class: "model_not_found",
            usage: None,
            started: t0,
            first_byte: None,
            ended: t0,
            overhead: Duration::ZERO,
            upstream_latency: None,
            cost: None,
            guardrails: &verdicts,
            payload: None,
        });
        use prost::Message as _;
        assert!(e.encoded_len() < 1024, "{}", e.encoded_len());
        assert!(e.requested_model.ends_with("…[+1048320 bytes]"));
        assert!(e.end_user.starts_with("mmm"));
        assert_eq!(e.request_id, "rid");
    }

    #[test]
    fn upstream_statuses_map_to_error_classes() {
        let classes: Vec<&str> = [200, 204, 400, 429, 499, 500, 503]
            .into_iter()
            .map(upstream_error_class)
            .collect();
        assert_eq!(
            classes,
            [
                "",
                "",
                "upstream_client_error",
                "upstream_rate_limited",
                "client_closed_request",
                "upstream_error",
                "upstream_error"
            ]
        );
    }
}
