//! Respecting the provider: a target's response outcome feeds its consecutive-failure count
//! (an ejection when it reaches the policy's threshold), and a provider's "wait" — the
//! `Retry-After` header of a 429, or Gemini's `google.rpc.RetryInfo` in the 429's body —
//! takes the target out of rotation that long. Both only touch the target's shared
//! [`TargetStats`](tollgate_core::config::TargetStats); `crate::cooldown` shares what they
//! set with other replicas in the background.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_core::config::TargetStats;
use tollgate_core::metrics::{Metrics, ProviderLabel};

use super::Forwarded;

/// The longest wait a provider may ask for (`Retry-After`, `RetryInfo`): a provider asking
/// for more is tried again after this.
pub(super) const MAX_PROVIDER_WAIT: Duration = Duration::from_secs(600);

/// `t` as Unix milliseconds.
pub(super) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a response counts as a failure of its target: no response from the provider at
/// all (Envoy's own reply: refused connection, timeout, reset), a 5xx or a 429. Other 4xx are
/// the request's fault, not the target's.
pub(super) fn target_failed(from_upstream: bool, status: u16) -> bool {
    !from_upstream || status >= 500 || status == 429
}

/// Which target an outcome is about, for the metrics and the log.
#[derive(Debug, Clone, Copy)]
pub(super) struct TargetRef<'a> {
    /// The target's live state.
    pub stats: &'a TargetStats,
    /// The provider's name (the metrics' `provider` label).
    pub provider: &'a str,
    /// The public model.
    pub model: &'a str,
    /// The provider's model id.
    pub upstream_model: &'a str,
}

impl<'a> TargetRef<'a> {
    /// The target of a forwarded request (`None` without an in-flight slot: nothing routed).
    pub(super) fn of(fwd: &'a Forwarded) -> Option<Self> {
        Some(TargetRef {
            stats: fwd.slot.as_ref()?.stats(),
            provider: &fwd.provider.name,
            model: &fwd.model,
            upstream_model: &fwd.upstream_model,
        })
    }
}

/// Notes the outcome of a response (or, per attempt, of one attempt) on its target: see
/// [`TargetStats::note_outcome`]. An ejection is counted and logged.
pub(super) fn note_target_outcome(metrics: &Metrics, target: TargetRef<'_>, failed: bool) {
    let stats = target.stats;
    if stats.note_outcome(!failed, unix_millis(SystemTime::now())) {
        metrics
            .target_ejections
            .get_or_create(&ProviderLabel {
                provider: target.provider.to_owned(),
            })
            .inc();
        tracing::warn!(
            model = %target.model,
            provider = %target.provider,
            upstream_model = %target.upstream_model,
            consecutive_failures = stats.ejection().consecutive_failures,
            until_ms = stats.cool_until_ms(),
            "Target ejected after consecutive failures"
        );
    }
}

/// Takes a target out of rotation for `wait` (at most [`MAX_PROVIDER_WAIT`]), as its
/// provider asked; counted in `tollgate_target_cooldowns_total`.
pub(super) fn cool_target(metrics: &Metrics, target: TargetRef<'_>, wait: Duration) {
    let wait = wait.min(MAX_PROVIDER_WAIT);
    target
        .stats
        .cool_down_until(unix_millis(SystemTime::now() + wait));
    metrics
        .target_cooldowns
        .get_or_create(&ProviderLabel {
            provider: target.provider.to_owned(),
        })
        .inc();
    tracing::info!(
        model = %target.model,
        provider = %target.provider,
        upstream_model = %target.upstream_model,
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "Target cooling down as its provider asked"
    );
}

/// The wait a Google error body asks for: `error.details[]`'s `google.rpc.RetryInfo`
/// `retryDelay`, a protobuf duration in JSON (`"17s"`, `"1.5s"`, `"45.837906927s"`), capped
/// at [`MAX_PROVIDER_WAIT`]. The body may be the error object or (Vertex's non-SSE streams) an
/// array holding it. `None` when the body carries none (checked without parsing first).
pub(super) fn retry_info(body: &[u8]) -> Option<Duration> {
    memchr::memmem::find(body, b"google.rpc.RetryInfo")?;
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = match &doc {
        serde_json::Value::Array(items) => items.first()?.get("error")?,
        other => other.get("error")?,
    };
    error
        .get("details")?
        .as_array()?
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|t| t.ends_with("/google.rpc.RetryInfo"))
        })
        .find_map(|d| proto_duration(d.get("retryDelay")?))
}

/// A protobuf `Duration` in its JSON form (`"1.5s"`), or as `{"seconds", "nanos"}`.
fn proto_duration(v: &serde_json::Value) -> Option<Duration> {
    let secs = match v {
        serde_json::Value::String(s) => s.trim().strip_suffix('s')?.parse::<f64>().ok()?,
        serde_json::Value::Object(o) => {
            let number = |k: &str| match o.get(k) {
                None => Some(0.0),
                Some(serde_json::Value::String(s)) => s.parse::<f64>().ok(),
                Some(n) => n.as_f64(),
            };
            number("seconds")? + number("nanos")? / 1e9
        }
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_PROVIDER_WAIT.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_reads_google_durations_and_caps_them() {
        let body = |delay: &str| {
            format!(
                r#"{{"error":{{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
                {{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]}},
                {{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":{delay}}}]}}}}"#
            )
        };
        assert_eq!(
            retry_info(body("\"17s\"").as_bytes()),
            Some(Duration::from_secs(17))
        );
        assert_eq!(
            retry_info(body("\"1.5s\"").as_bytes()),
            Some(Duration::from_millis(1500))
        );
        let precise = retry_info(body("\"45.837906927s\"").as_bytes()).unwrap();
        assert_eq!(precise.as_millis(), 45_837);
        assert_eq!(
            retry_info(body(r#"{"seconds":"2","nanos":500000000}"#).as_bytes()),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            retry_info(body("\"86400s\"").as_bytes()),
            Some(MAX_PROVIDER_WAIT)
        );
        for bad in ["\"0s\"", "\"-3s\"", "\"soon\"", "\"12\"", "7"] {
            assert_eq!(retry_info(body(bad).as_bytes()), None, "{bad}");
        }
        // Vertex's array-wrapped error.
        let wrapped = format!("[{}]", body("\"3s\""));
        assert_eq!(retry_info(wrapped.as_bytes()), Some(Duration::from_secs(3)));
        // No RetryInfo, or not JSON.
        assert_eq!(
            retry_info(br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#),
            None
        );
        assert_eq!(retry_info(b"google.rpc.RetryInfo but not JSON"), None);
    }

    #[test]
    fn failures_are_5xx_429_and_no_response() {
        assert!(!target_failed(true, 200));
        assert!(!target_failed(true, 400));
        assert!(!target_failed(true, 404));
        assert!(target_failed(true, 429));
        assert!(target_failed(true, 500));
        assert!(target_failed(true, 503));
        assert!(target_failed(false, 503));
        assert!(target_failed(false, 200));
    }
}
