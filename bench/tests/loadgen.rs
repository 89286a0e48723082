//! The load generator against a tiny in-process HTTP server on 127.0.0.1: counts add up,
//! latency is measured from the scheduled time, the in-flight cap and every failure kind
//! are counted, streaming separates first and last byte. Bounds follow from arithmetic on
//! the server's built-in delays, not from how fast this machine is.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use tokio::sync::Mutex;

use tollgate_bench::loadgen::{
    closed_loop, open_loop, streaming, LoadClient, PhaseLimits, RequestSpec, Schedule,
};

async fn serve() -> String {
    let serial = Arc::new(Mutex::new(()));
    let app = Router::new()
        .route("/ok", post(|| async { "{\"choices\":[]}" }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                "slow"
            }),
        )
        .route(
            "/stall",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "stall"
            }),
        )
        .route(
            "/fail",
            post(|| async { (StatusCode::UNAUTHORIZED, "bad key") }),
        )
        .route(
            "/serial",
            post(move || {
                let serial = serial.clone();
                async move {
                    let _one_at_a_time = serial.lock().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    "done"
                }
            }),
        )
        .route(
            "/stream",
            post(|| async {
                let chunks = futures::stream::unfold(0u32, |i| async move {
                    if i == 5 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(if i == 0 { 10 } else { 20 })).await;
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(format!("data: {i}\n\n"))),
                        i + 1,
                    ))
                });
                Body::from_stream(chunks)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn spec(base: &str, path: &str) -> RequestSpec {
    RequestSpec::post_json(
        &format!("{base}{path}"),
        &[("authorization".into(), "Bearer tg-test".into())],
        Bytes::from_static(b"{\"model\":\"m\"}"),
    )
    .unwrap()
}

fn limits(max_in_flight: usize) -> PhaseLimits {
    PhaseLimits { max_in_flight }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_exactly_the_schedule() {
    let base = serve().await;
    let client = LoadClient::new(64, Duration::from_secs(5));
    let schedule =
        Schedule::new(500.0, Duration::from_millis(200), Duration::from_secs(1)).unwrap();
    let r = open_loop(&client, &spec(&base, "/ok"), schedule, limits(64))
        .await
        .unwrap();
    assert_eq!(r.scheduled, 500);
    assert_eq!(
        r.latency.ok + r.latency.errors.total() + r.latency.skipped,
        500,
        "{r:?}"
    );
    assert_eq!(r.latency.errors.total(), 0, "{r:?}");
    assert!(r.latency.p50_us > 0 && r.latency.p50_us <= r.latency.p99_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_server_time() {
    let base = serve().await;
    let client = LoadClient::new(64, Duration::from_secs(5));
    let schedule = Schedule::new(100.0, Duration::ZERO, Duration::from_millis(500)).unwrap();
    let r = open_loop(&client, &spec(&base, "/slow"), schedule, limits(64))
        .await
        .unwrap();
    assert_eq!(r.latency.ok, 50, "{r:?}");
    assert!(r.latency.p50_us >= 20_000, "{r:?}");
}

/// A server that handles one request at a time (10 ms each, so 100 req/s) offered 200 req/s
/// for 1 s builds a queue: the last requests wait ~0.5 s. A coordinated-omission-correct
/// generator must see that wait, not just the 10 ms service time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_queueing_delay() {
    let base = serve().await;
    let client = LoadClient::new(512, Duration::from_secs(10));
    let schedule = Schedule::new(200.0, Duration::ZERO, Duration::from_secs(1)).unwrap();
    let r = open_loop(&client, &spec(&base, "/serial"), schedule, limits(512))
        .await
        .unwrap();
    assert_eq!(r.latency.ok, 200, "{r:?}");
    assert!(r.latency.max_us >= 400_000, "{r:?}");
    assert!(r.latency.p90_us >= 200_000, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_skips_beyond_the_in_flight_cap() {
    let base = serve().await;
    let client = LoadClient::new(8, Duration::from_secs(5));
    // 100 req/s against 400 ms responses with at most 4 in flight: most are skipped.
    let schedule = Schedule::new(100.0, Duration::ZERO, Duration::from_millis(500)).unwrap();
    let r = open_loop(&client, &spec(&base, "/stall"), schedule, limits(4))
        .await
        .unwrap();
    assert_eq!(r.latency.ok + r.latency.skipped, 50, "{r:?}");
    assert!(r.latency.ok >= 4 && r.latency.ok <= 8, "{r:?}");
    assert!(r.latency.skipped >= 42, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind() {
    let base = serve().await;
    let client = LoadClient::new(16, Duration::from_secs(5));
    let schedule = Schedule::new(100.0, Duration::ZERO, Duration::from_millis(200)).unwrap();
    let r = open_loop(&client, &spec(&base, "/fail"), schedule, limits(16))
        .await
        .unwrap();
    assert_eq!((r.latency.ok, r.latency.errors.status), (0, 20), "{r:?}");
    assert!(r.latency.first_error.as_deref().unwrap().contains("401"));

    let short = LoadClient::new(16, Duration::from_millis(50));
    let r = open_loop(&short, &spec(&base, "/stall"), schedule, limits(16))
        .await
        .unwrap();
    assert_eq!(r.latency.errors.timeout, 20, "{r:?}");

    // Nothing listens on port 1.
    let r = open_loop(
        &client,
        &spec("http://127.0.0.1:1", "/x"),
        schedule,
        limits(16),
    )
    .await
    .unwrap();
    assert_eq!(r.latency.errors.transport, 20, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_measures_throughput() {
    let base = serve().await;
    let client = LoadClient::new(16, Duration::from_secs(5));
    let r = closed_loop(
        &client,
        &spec(&base, "/slow"),
        4,
        Duration::from_millis(100),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    // 4 workers × 20 ms per request → at most ~200 req/s.
    assert!(r.latency.ok > 0 && r.throughput_rps <= 220.0, "{r:?}");
    assert!(r.latency.p50_us >= 20_000, "{r:?}");
    assert_eq!(r.latency.errors.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_separates_first_and_last_byte() {
    let base = serve().await;
    let client = LoadClient::new(4, Duration::from_secs(5));
    let r = streaming(
        &client,
        &spec(&base, "/stream"),
        1,
        5,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(r.samples, 5);
    assert_eq!(r.ttlb.ok, 5, "{r:?}");
    // First chunk after 10 ms, last after 10 + 4 × 20 = 90 ms.
    assert!(r.ttfb.p50_us >= 10_000, "{r:?}");
    assert!(r.ttlb.p50_us >= 90_000, "{r:?}");
    assert!(r.ttfb.max_us < r.ttlb.p50_us, "{r:?}");
    assert!(r.mean_body_bytes > 0.0);
}
