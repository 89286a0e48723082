//! Per-request metrics derived from each `LogEvent` as `serve` emits it: tokens and cost by
//! tenant, key and public model, time to first token, request duration and error classes
//! (`docs/METRICS.md`). The event is the one place where a request's facts are complete, so
//! these metrics are counted here, once, whether or not the events are shipped anywhere.

use tollgate_core::metrics::{ClassLabel, Metrics, ModelLabels, UsageLabels, UsageTokenLabels};
use tollgate_proto::logger::v1::LogEvent;

/// Picodollars in one US dollar.
const PICODOLLARS_PER_USD: f64 = 1e12;

/// Seconds from `from` to `to` (unix nanoseconds), when both are set and in order.
fn seconds_between(from: i64, to: i64) -> Option<f64> {
    (from > 0 && to >= from).then(|| (to - from) as f64 / 1e9)
}

/// Counts one emitted event into the request-log metrics. Feedback events are not requests.
pub fn observe(metrics: &Metrics, event: &LogEvent) {
    if event.feedback.is_some() {
        return;
    }
    if !event.error_class.is_empty() {
        metrics
            .request_errors
            .get_or_create(&ClassLabel {
                class: event.error_class.clone(),
            })
            .inc();
    }
    if let Some(u) = &event.usage {
        for (kind, n) in tollgate_core::usage::token_kinds(
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        ) {
            if n > 0 {
                metrics
                    .usage_tokens
                    .get_or_create(&UsageTokenLabels {
                        tenant: event.tenant.clone(),
                        key_id: event.key_id.clone(),
                        model: event.requested_model.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
    }
    if event.cost_picodollars > 0 {
        metrics
            .usage_cost
            .get_or_create(&UsageLabels {
                tenant: event.tenant.clone(),
                key_id: event.key_id.clone(),
                model: event.requested_model.clone(),
            })
            .inc_by(event.cost_picodollars as f64 / PICODOLLARS_PER_USD);
    }
    if event.provider.is_empty() {
        return;
    }
    let labels = ModelLabels {
        provider: event.provider.clone(),
        model: event.requested_model.clone(),
    };
    if let Some(s) = seconds_between(event.start_time_unix_nanos, event.end_time_unix_nanos) {
        metrics.request_duration.get_or_create(&labels).observe(s);
    }
    let ok = (200..300).contains(&event.http_status);
    if event.stream && ok {
        if let Some(s) = seconds_between(
            event.start_time_unix_nanos,
            event.first_token_time_unix_nanos,
        ) {
            metrics.first_token.get_or_create(&labels).observe(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::logger::v1::{Feedback, Usage};

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn a_streamed_request_counts_tokens_cost_first_token_and_duration() {
        let m = Metrics::default();
        let start = 1_700_000_000_000_000_000;
        observe(
            &m,
            &LogEvent {
                request_id: "r1".into(),
                key_id: "k1".into(),
                tenant: "acme".into(),
                requested_model: "gpt".into(),
                provider: "openai".into(),
                stream: true,
                http_status: 200,
                start_time_unix_nanos: start,
                first_token_time_unix_nanos: start + 250_000_000,
                end_time_unix_nanos: start + 2_000_000_000,
                usage: Some(Usage {
                    input_tokens: 10,
                    output_tokens: 7,
                    ..Default::default()
                }),
                cost_picodollars: 1_500_000_000_000,
                ..Default::default()
            },
        );
        let t = m.text();
        let usage = "tollgate_usage_tokens_total{tenant=\"acme\",key_id=\"k1\",model=\"gpt\"";
        assert!(
            line(&t, &format!("{usage},kind=\"output\"}} 7")).is_some(),
            "{t}"
        );
        assert!(line(&t, &format!("{usage},kind=\"reasoning\"")).is_none());
        assert!(
            line(
                &t,
                "tollgate_usage_cost_usd_total{tenant=\"acme\",key_id=\"k1\",model=\"gpt\"} 1.5"
            )
            .is_some(),
            "{t}"
        );
        assert!(
            t.contains(
                "tollgate_time_to_first_token_seconds_sum{provider=\"openai\",model=\"gpt\"} 0.25"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "tollgate_request_duration_seconds_sum{provider=\"openai\",model=\"gpt\"} 2.0"
            ),
            "{t}"
        );
        assert!(!t.contains("tollgate_request_errors_total{"), "{t}");
    }

    #[test]
    fn failures_count_their_class_and_feedback_counts_nothing() {
        let m = Metrics::default();
        observe(
            &m,
            &LogEvent {
                request_id: "r2".into(),
                error_class: "invalid_api_key".into(),
                http_status: 401,
                ..Default::default()
            },
        );
        observe(
            &m,
            &LogEvent {
                request_id: "f1".into(),
                error_class: "ignored".into(),
                feedback: Some(Feedback::default()),
                ..Default::default()
            },
        );
        let t = m.text();
        assert!(
            line(
                &t,
                "tollgate_request_errors_total{class=\"invalid_api_key\"} 1"
            )
            .is_some(),
            "{t}"
        );
        assert!(!t.contains("class=\"ignored\""), "{t}");
        assert!(
            !t.contains("tollgate_request_duration_seconds_count{"),
            "{t}"
        );
    }
}
