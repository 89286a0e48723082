//! HTTP/1.1 keep-alive load generation: open loop at a fixed rate (coordinated-omission
//! correct), closed loop with fixed concurrency, and streaming time-to-first/last-byte.
//!
//! Open loop: request `i` is *scheduled* at `t0 + i/R`. A dedicated pacing thread
//! (`std::thread::sleep`, high-resolution timers, unlike tokio's 1 ms timer wheel) wakes at
//! each scheduled time and spawns the request as its own task, so a slow response never
//! delays the schedule. Latency is measured from the scheduled time to the end of the
//! response body, so any queueing — in the system under test or in this generator — counts
//! against the target rather than silently disappearing. In-flight requests are capped; a
//! request that is due while the cap is reached is not sent and is counted as `skipped`.
//!
//! Every phase is bounded: by its duration, by the per-request timeout, and by a drain
//! deadline after the schedule ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::stats::{duration_us, new_histogram, Failure, LatencyStats, Recorder};

/// Largest body prefix kept from a non-2xx response for diagnosis.
const ERROR_BODY_PREFIX: usize = 200;
/// How long the scheduler waits before the first scheduled send, so setup never counts.
const START_DELAY: Duration = Duration::from_millis(5);
/// Extra time allowed, beyond the request timeout, for in-flight requests to finish.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a transport error in a closed-loop worker, so a dead target is not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// One request to send repeatedly: `POST uri` with fixed headers and body.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestSpec {
    /// A JSON POST to `url` with extra `headers` (name, value).
    pub fn post_json(url: &str, headers: &[(String, String)], body: Bytes) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported, got {url:?}");
        }
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("invalid header name {name:?}"))?;
            // The value may be a secret (Authorization): never echo it in errors.
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("invalid value for header {name}"))?;
            map.insert(name, value);
        }
        Ok(Self {
            uri,
            headers: map,
            body,
        })
    }

    /// The target URL.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    fn build(&self) -> Result<Request<Full<Bytes>>, Failure> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(self.body.clone()))
            .map_err(|e| Failure::Transport(format!("building request: {e}")))?;
        req.headers_mut().extend(self.headers.clone());
        Ok(req)
    }
}

/// What a completed 2xx exchange looked like.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// When the first non-empty body chunk arrived (`None` for an empty body).
    pub first_byte: Option<Instant>,
    /// When the body ended.
    pub end: Instant,
    /// Body bytes received.
    pub body_bytes: u64,
}

/// A keep-alive HTTP/1.1 client with a per-request timeout covering the whole body.
#[derive(Clone)]
pub struct LoadClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl LoadClient {
    /// A client that keeps up to `max_idle` idle connections to each target.
    pub fn new(max_idle: usize, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(max_idle)
            .build(connector);
        Self { client, timeout }
    }

    /// Sends the request and reads the whole body. Non-2xx answers are failures.
    pub async fn exchange(&self, spec: &RequestSpec) -> Result<Exchange, Failure> {
        let req = spec.build()?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| Failure::Transport(error_chain(&e)))?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut first_byte = None;
            let mut body_bytes = 0u64;
            let mut prefix = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failure::Transport(error_chain(&e)))?;
                if let Some(data) = frame.data_ref() {
                    if !data.is_empty() {
                        first_byte.get_or_insert_with(Instant::now);
                        body_bytes += data.len() as u64;
                        if !status.is_success() && prefix.len() < ERROR_BODY_PREFIX {
                            let room = ERROR_BODY_PREFIX - prefix.len();
                            prefix.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                }
            }
            let end = Instant::now();
            if !status.is_success() {
                return Err(Failure::Status {
                    code: status.as_u16(),
                    body_prefix: String::from_utf8_lossy(&prefix).into_owned(),
                });
            }
            Ok(Exchange {
                first_byte,
                end,
                body_bytes,
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }

    /// Sends the request and returns status and body, for sanity checks.
    pub async fn fetch(&self, spec: &RequestSpec) -> Result<(StatusCode, Bytes)> {
        let req = spec.build().map_err(|f| anyhow::anyhow!("{f}"))?;
        let work = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .with_context(|| format!("POST {} timed out", spec.uri))?
            .with_context(|| format!("POST {}", spec.uri))
    }
}

/// `GET url` with a short timeout; used for readiness probes.
pub async fn http_get(url: &str, timeout: Duration) -> Result<(StatusCode, Bytes)> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let work = async {
        let resp = client.get(uri).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("GET {url} timed out"))?
}

/// The error and all its sources, joined with `: `.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn lock(rec: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    // A panicking recorder holder cannot leave the histogram half-updated in a way that
    // matters for a benchmark; keep going with the data.
    rec.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The fixed-rate send schedule of an open-loop phase: a warm-up window whose requests are
/// sent but not recorded, then the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Rate in milli-requests per second, so the arithmetic is exact integers.
    rate_milli: u64,
    warmup: Duration,
    duration: Duration,
}

impl Schedule {
    /// A schedule at `rate` req/s (> 0, at most 1,000,000) for `warmup` + `duration`.
    pub fn new(rate: f64, warmup: Duration, duration: Duration) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
            bail!("rate must be in (0, 1000000] req/s, got {rate}");
        }
        let rate_milli = (rate * 1000.0).round() as u64;
        if rate_milli == 0 {
            bail!("rate {rate} req/s is too low");
        }
        Ok(Self {
            rate_milli,
            warmup,
            duration,
        })
    }

    /// Offset of request `i` from the schedule start: `i / rate`.
    pub fn offset(&self, i: u64) -> Duration {
        let nanos = u128::from(i) * 1_000_000_000_000 / u128::from(self.rate_milli);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Number of requests in warm-up plus measurement: those with offset < warmup + duration.
    pub fn total(&self) -> u64 {
        self.count_before(self.warmup + self.duration)
    }

    /// Whether request `i` falls in the measured window (offset ≥ warmup).
    pub fn is_measured(&self, i: u64) -> bool {
        self.offset(i) >= self.warmup
    }

    /// Number of requests in the measured window.
    pub fn measured(&self) -> u64 {
        self.total() - self.count_before(self.warmup)
    }

    /// Number of `i` with `offset(i) < t`, i.e. `ceil(t · rate)`.
    fn count_before(&self, t: Duration) -> u64 {
        let num = t.as_nanos() * u128::from(self.rate_milli);
        let den = 1_000_000_000_000u128;
        u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
    }
}

/// Settings shared by the phases.
#[derive(Debug, Clone, Copy)]
pub struct PhaseLimits {
    /// Requests not yet finished at once (open loop); due requests beyond it are skipped.
    pub max_in_flight: usize,
}

/// Result of one open-loop phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenLoopResult {
    /// Target rate, req/s.
    pub rate: f64,
    /// Measured window, s.
    pub duration_s: f64,
    /// Requests scheduled in the measured window (= ok + errors + skipped).
    pub scheduled: u64,
    /// Latency from scheduled send time to end of body.
    pub latency: LatencyStats,
    /// How late the pacing thread woke for a scheduled send, p99 µs (generator health).
    pub pacer_lag_p99_us: u64,
    /// How late the pacing thread woke, worst case µs.
    pub pacer_lag_max_us: u64,
}

/// Runs an open-loop phase: `schedule` against `spec`, at most `limits.max_in_flight` at once.
pub async fn open_loop(
    client: &LoadClient,
    spec: &RequestSpec,
    schedule: Schedule,
    limits: PhaseLimits,
) -> Result<OpenLoopResult> {
    let cap = limits.max_in_flight.max(1);
    let cap_u32 = u32::try_from(cap).context("max in-flight too large")?;
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let semaphore = Arc::new(Semaphore::new(cap));
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Handle::current();

    // Tell the pacer to stop if this future is dropped (e.g. Ctrl-C).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    let pacer = {
        let recorder = recorder.clone();
        let semaphore = semaphore.clone();
        let client = client.clone();
        let spec = Arc::new(spec.clone());
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut lag = new_histogram();
            let t0 = Instant::now() + START_DELAY;
            for i in 0..schedule.total() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let at = t0 + schedule.offset(i);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let measured = schedule.is_measured(i);
                if measured {
                    lag.saturating_record(duration_us(
                        Instant::now().saturating_duration_since(at),
                    ));
                }
                let Ok(permit) = semaphore.clone().try_acquire_owned() else {
                    if measured {
                        lock(&recorder).record_skipped();
                    }
                    continue;
                };
                let recorder = recorder.clone();
                let client = client.clone();
                let spec = spec.clone();
                runtime.spawn(async move {
                    let result = client.exchange(&spec).await;
                    if measured {
                        let mut rec = lock(&recorder);
                        match result {
                            Ok(ex) => rec.record_ok(ex.end.saturating_duration_since(at)),
                            Err(f) => rec.record_failure(&f),
                        }
                    }
                    drop(permit);
                });
            }
            lag
        })
    };
    let lag = pacer.await.context("pacing thread failed")?;

    // Drain: every request has its own timeout, so all permits come back in bounded time.
    let drain = client.timeout + DRAIN_GRACE;
    if tokio::time::timeout(drain, semaphore.acquire_many(cap_u32))
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = cap - semaphore.available_permits(),
            "Requests still in flight after the drain deadline; reporting without them"
        );
    }
    let latency = lock(&recorder).stats();
    Ok(OpenLoopResult {
        rate: schedule.rate_milli as f64 / 1000.0,
        duration_s: schedule.duration.as_secs_f64(),
        scheduled: schedule.measured(),
        latency,
        pacer_lag_p99_us: if lag.is_empty() {
            0
        } else {
            lag.value_at_quantile(0.99)
        },
        pacer_lag_max_us: if lag.is_empty() { 0 } else { lag.max() },
    })
}

/// Result of one closed-loop phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedLoopResult {
    /// Concurrent workers (each one request at a time on a keep-alive connection).
    pub connections: usize,
    /// Measured window, s.
    pub duration_s: f64,
    /// Successful requests started in the measured window per second.
    pub throughput_rps: f64,
    /// Latency from send to end of body.
    pub latency: LatencyStats,
}

/// Runs a closed-loop phase: `connections` workers send back to back for `warmup` (not
/// recorded) and then `duration`.
pub async fn closed_loop(
    client: &LoadClient,
    spec: &RequestSpec,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<ClosedLoopResult> {
    let connections = connections.max(1);
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let recorder = recorder.clone();
        let client = client.clone();
        let spec = spec.clone();
        workers.spawn(async move {
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let result = client.exchange(&spec).await;
                let failed_transport = matches!(result, Err(Failure::Transport(_)));
                if start >= measure_from {
                    let mut rec = lock(&recorder);
                    match result {
                        Ok(ex) => rec.record_ok(ex.end.saturating_duration_since(start)),
                        Err(f) => rec.record_failure(&f),
                    }
                }
                if failed_transport {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("closed-loop worker failed")?;
    }
    let latency = lock(&recorder).stats();
    let secs = duration.as_secs_f64();
    Ok(ClosedLoopResult {
        connections,
        duration_s: secs,
        throughput_rps: if secs > 0.0 {
            latency.ok as f64 / secs
        } else {
            0.0
        },
        latency,
    })
}

/// Result of one streaming phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamResult {
    /// Samples attempted (not counting warm-up samples).
    pub samples: u64,
    /// Time from send to the first non-empty body chunk.
    pub ttfb: LatencyStats,
    /// Time from send to the end of the body.
    pub ttlb: LatencyStats,
    /// Mean body size of successful samples, bytes.
    pub mean_body_bytes: f64,
}

/// Sends `samples` streaming requests one after the other (after `warmup_samples` that are not
/// recorded), stopping early once `max_duration` has passed.
pub async fn streaming(
    client: &LoadClient,
    spec: &RequestSpec,
    warmup_samples: u64,
    samples: u64,
    max_duration: Duration,
) -> Result<StreamResult> {
    let deadline = Instant::now() + max_duration;
    let mut ttfb = Recorder::new();
    let mut ttlb = Recorder::new();
    let mut attempted = 0u64;
    let mut total_bytes = 0u64;
    for i in 0..warmup_samples + samples {
        if Instant::now() >= deadline {
            tracing::warn!(
                done = attempted,
                wanted = samples,
                "Streaming phase hit its time limit"
            );
            break;
        }
        let start = Instant::now();
        let result = client.exchange(spec).await;
        if i < warmup_samples {
            continue;
        }
        attempted += 1;
        match result {
            Ok(Exchange {
                first_byte: Some(first),
                end,
                body_bytes,
            }) => {
                ttfb.record_ok(first.saturating_duration_since(start));
                ttlb.record_ok(end.saturating_duration_since(start));
                total_bytes += body_bytes;
            }
            Ok(Exchange {
                first_byte: None, ..
            }) => {
                ttfb.record_failure(&Failure::EmptyBody);
                ttlb.record_failure(&Failure::EmptyBody);
            }
            Err(f) => {
                ttfb.record_failure(&f);
                ttlb.record_failure(&f);
            }
        }
    }
    let ok = ttlb.ok();
    Ok(StreamResult {
        samples: attempted,
        ttfb: ttfb.stats(),
        ttlb: ttlb.stats(),
        mean_body_bytes: if ok > 0 {
            total_bytes as f64 / ok as f64
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn schedule_offsets_are_exact() {
        let s = Schedule::new(1000.0, secs(1.0), secs(10.0)).unwrap();
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(1500), Duration::from_millis(1500));
        let s = Schedule::new(3.0, Duration::ZERO, secs(1.0)).unwrap();
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(3), Duration::from_secs(1));
    }

    #[test]
    fn schedule_counts_warmup_and_measured_windows() {
        let s = Schedule::new(200.0, secs(1.0), secs(10.0)).unwrap();
        assert_eq!(s.total(), 2200);
        assert_eq!(s.measured(), 2000);
        assert!(!s.is_measured(199));
        assert!(s.is_measured(200));
        assert!(s.is_measured(2199));
        let measured = (0..s.total()).filter(|&i| s.is_measured(i)).count() as u64;
        assert_eq!(measured, s.measured());
    }

    #[test]
    fn schedule_counts_with_fractional_rates_and_windows() {
        // 2.5 req/s for 1 s: offsets 0, 0.4, 0.8 → 3 requests.
        let s = Schedule::new(2.5, Duration::ZERO, secs(1.0)).unwrap();
        assert_eq!(s.total(), 3);
        // 1000 req/s, 0.5 s warm-up + 2 s: 2500 total, 2000 measured.
        let s = Schedule::new(1000.0, secs(0.5), secs(2.0)).unwrap();
        assert_eq!((s.total(), s.measured()), (2500, 2000));
        for i in [0, 499, 500, 2499] {
            assert_eq!(s.is_measured(i), i >= 500, "i={i}");
        }
    }

    #[test]
    fn schedule_rejects_bad_rates() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6, 1e-6] {
            assert!(
                Schedule::new(bad, Duration::ZERO, secs(1.0)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_spec_validates_and_hides_secret_values() {
        assert!(RequestSpec::post_json("https://x/", &[], Bytes::new()).is_err());
        assert!(RequestSpec::post_json("not a url", &[], Bytes::new()).is_err());
        let err = RequestSpec::post_json(
            "http://127.0.0.1:1/",
            &[("authorization".into(), "Bearer tg-secret\n".into())],
            Bytes::new(),
        )
        .unwrap_err();
        assert!(!format!("{err:#}").contains("tg-secret"));
        let ok = RequestSpec::post_json(
            "http://127.0.0.1:1/v1/chat/completions",
            &[("authorization".into(), "Bearer k".into())],
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        let req = ok.build().unwrap();
        assert_eq!(req.headers()["content-type"], "application/json");
        assert_eq!(req.headers()["authorization"], "Bearer k");
    }
}
