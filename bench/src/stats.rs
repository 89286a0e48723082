//! Latency recording (HdrHistogram in microseconds), error counting and the
//! small statistics the report needs (medians over rounds).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track: 60 s, in µs. Larger values saturate.
const MAX_TRACKABLE_US: u64 = 60_000_000;
/// Significant decimal digits kept by the histograms.
const SIGFIG: u8 = 3;
/// Longest error message kept as the example error of a phase.
const MAX_ERROR_LEN: usize = 300;

/// Why one request did not count as a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The response arrived but its status was not 2xx; the body prefix helps diagnosis.
    Status { code: u16, body_prefix: String },
    /// Connect, write, read or protocol error.
    Transport(String),
    /// No complete response within the per-request timeout.
    Timeout,
    /// A 2xx streaming response whose body carried no data.
    EmptyBody,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { code, body_prefix } => write!(f, "HTTP {code}: {body_prefix}"),
            Failure::Transport(msg) => write!(f, "transport error: {msg}"),
            Failure::Timeout => write!(f, "timed out"),
            Failure::EmptyBody => write!(f, "2xx response with an empty body"),
        }
    }
}

/// Failures of one phase, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Non-2xx responses.
    pub status: u64,
    /// Transport errors.
    pub transport: u64,
    /// Per-request timeouts.
    pub timeout: u64,
    /// 2xx responses without body data (streaming only).
    pub empty_body: u64,
}

impl ErrorCounts {
    /// All failures together.
    pub fn total(&self) -> u64 {
        self.status + self.transport + self.timeout + self.empty_body
    }

    fn count(&mut self, failure: &Failure) {
        match failure {
            Failure::Status { .. } => self.status += 1,
            Failure::Transport(_) => self.transport += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::EmptyBody => self.empty_body += 1,
        }
    }
}

/// Collects the latencies of successful requests and counts the failures of one phase.
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    errors: ErrorCounts,
    skipped: u64,
    first_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            hist: new_histogram(),
            errors: ErrorCounts::default(),
            skipped: 0,
            first_error: None,
        }
    }

    /// Records the latency of one successful request.
    pub fn record_ok(&mut self, latency: Duration) {
        self.hist.saturating_record(duration_us(latency));
    }

    /// Counts one failed request; the first failure's message is kept as an example.
    pub fn record_failure(&mut self, failure: &Failure) {
        self.errors.count(failure);
        if self.first_error.is_none() {
            self.first_error = Some(truncate(&failure.to_string(), MAX_ERROR_LEN));
        }
    }

    /// Counts one request that was due but not sent because the in-flight cap was reached.
    pub fn record_skipped(&mut self) {
        self.skipped += 1;
    }

    /// Number of successful requests recorded.
    pub fn ok(&self) -> u64 {
        self.hist.len()
    }

    /// Percentiles and counters of what was recorded.
    pub fn stats(&self) -> LatencyStats {
        LatencyStats::from_histogram(
            &self.hist,
            self.errors,
            self.skipped,
            self.first_error.clone(),
        )
    }
}

/// Summary of one latency distribution plus the phase's counters. Latencies in µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Successful requests (those in the histogram).
    pub ok: u64,
    /// Failed requests, by kind.
    pub errors: ErrorCounts,
    /// Requests due but not sent because the in-flight cap was reached (open loop only).
    pub skipped: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Largest latency, µs.
    pub max_us: u64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// The first failure's message, if any failed.
    pub first_error: Option<String>,
}

impl LatencyStats {
    fn from_histogram(
        hist: &Histogram<u64>,
        errors: ErrorCounts,
        skipped: u64,
        first_error: Option<String>,
    ) -> Self {
        let empty = hist.is_empty();
        let q = |quantile: f64| {
            if empty {
                0
            } else {
                hist.value_at_quantile(quantile)
            }
        };
        Self {
            ok: hist.len(),
            errors,
            skipped,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            max_us: if empty { 0 } else { hist.max() },
            mean_us: if empty { 0.0 } else { hist.mean() },
            first_error,
        }
    }
}

/// A histogram for latencies in µs, 1 µs … 60 s, 3 significant digits.
#[allow(
    clippy::expect_used,
    reason = "constant bounds that hdrhistogram documents as valid: low >= 1, high >= 2 * low, sigfig <= 5"
)]
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKABLE_US, SIGFIG)
        .expect("valid constant histogram bounds")
}

/// A duration in whole microseconds, at least 1 (the histogram's lowest value).
pub fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Median of the values; the mean of the two middle values for an even count. `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn recorder_percentiles_and_counts() {
        let mut r = Recorder::new();
        for ms in 1..=100u64 {
            r.record_ok(Duration::from_millis(ms));
        }
        r.record_failure(&Failure::Timeout);
        r.record_failure(&Failure::Status {
            code: 401,
            body_prefix: "no".into(),
        });
        r.record_skipped();
        let s = r.stats();
        assert_eq!(s.ok, 100);
        assert_eq!(s.errors.total(), 2);
        assert_eq!(s.errors.timeout, 1);
        assert_eq!(s.errors.status, 1);
        assert_eq!(s.skipped, 1);
        // 3 significant digits: within 0.1 %.
        assert!((49_950..=50_050).contains(&s.p50_us), "{}", s.p50_us);
        assert!((98_900..=99_100).contains(&s.p99_us), "{}", s.p99_us);
        assert!((99_900..=100_100).contains(&s.max_us), "{}", s.max_us);
        assert_eq!(s.first_error.as_deref(), Some("timed out"));
    }

    #[test]
    fn empty_recorder_reports_zeroes() {
        let s = Recorder::new().stats();
        assert_eq!((s.ok, s.p50_us, s.p99_us, s.max_us), (0, 0, 0, 0));
    }

    #[test]
    fn huge_latency_saturates_instead_of_failing() {
        let mut r = Recorder::new();
        r.record_ok(Duration::from_secs(3600));
        assert_eq!(r.ok(), 1);
        assert!(r.stats().max_us >= MAX_TRACKABLE_US / 2);
    }

    #[test]
    fn duration_us_is_at_least_one() {
        assert_eq!(duration_us(Duration::ZERO), 1);
        assert_eq!(duration_us(Duration::from_micros(1500)), 1500);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
