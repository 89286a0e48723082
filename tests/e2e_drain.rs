//! Graceful drain of `tollgate serve` through real Envoy (issue 17): SIGTERM in the middle of a
//! slow stream. `/readyz` turns 503 and `tollgate_draining` 1 at once, new requests are still
//! served during the pre-drain wait and refused after it, the stream in flight reaches the
//! client whole, its log event reaches the logger, and serve exits 0. A stream that never ends
//! is cut at the drain timeout, and serve exits then.

// Test helpers outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Chunks of a streamed response, with when each arrived.
type Chunks = Vec<(Instant, String)>;

/// Sends a streaming chat request with the all-models key and these mock headers; returns
/// the response's request id and a task reading the body chunk by chunk (its error, if the
/// body broke off).
async fn stream(
    stack: &Stack,
    prompt: &str,
    mock_headers: &[(&str, &str)],
) -> (String, JoinHandle<(Chunks, Option<String>)>) {
    let mut req = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_ALL)
        .body(
            json!({"model": "mock-model", "stream": true,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": prompt}]})
            .to_string(),
        );
    for (k, v) in mock_headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-tollgate-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let reader = tokio::spawn(async move {
        let mut chunks = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    chunks.push((Instant::now(), String::from_utf8_lossy(&c).into_owned()))
                }
                Ok(None) => return (chunks, None),
                Err(e) => return (chunks, Some(e.to_string())),
            }
        }
    });
    (id, reader)
}

/// The text of every content delta of an OpenAI stream.
fn content(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Status of GET `url`, 0 when it cannot connect.
async fn status(http: &reqwest::Client, url: &str) -> u16 {
    http.get(url)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Waits until `serve` (the stack's second process) exits; its status and when.
async fn serve_exit(stack: &mut Stack, limit: Duration) -> (std::process::ExitStatus, Instant) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = stack.procs[1].exit_status() {
            return (status, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "serve did not exit within {limit:?}:\n{}",
        stack.serve_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_finishes_through_a_drain_and_its_log_event_is_written() {
    let mut logged = LoggedStack::ndjson_with(StackOptions {
        extra_yaml: "shutdown:\n  pre_drain_wait_ms: 1000\n  drain_timeout_ms: 20000\n".into(),
        ..Default::default()
    });
    let stack = &mut logged.stack;
    let words: Vec<String> = (1..=30).map(|i| format!("word{i}")).collect();
    let prompt = words.join(" ");
    // The whole reply, asked for without a stream.
    let whole = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "mock-model", "messages": [{"role": "user", "content": &prompt}]})
                .to_string(),
        )
        .await;
    assert_eq!(whole.status, 200, "{}", whole.text);
    let expected = whole.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    // About 19 chunks 200 ms apart: the stream lasts well over the 1 s pre-drain wait.
    let (id, reader) = stream(stack, &prompt, &[("x-mock-chunk-delay-ms", "200")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = format!("{}/readyz", stack.admin);
    assert_eq!(status(&stack.http, &ready).await, 200);
    let signalled = Instant::now();
    stack.procs[1].signal("TERM");

    // At once: not ready, draining, gRPC health NOT_SERVING is set with it.
    let mut readyz_503 = false;
    while signalled.elapsed() < Duration::from_millis(500) {
        if status(&stack.http, &ready).await == 503 {
            readyz_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        readyz_503,
        "/readyz did not turn 503:\n{}",
        stack.serve_log()
    );
    let m = stack.metrics().await;
    assert!(m.lines().any(|l| l == "tollgate_draining 1"), "{m}");
    // During the pre-drain wait, new requests are still served.
    let during = stack
        .post("/v1/chat/completions", Some(KEY_ALL), whole_body(&prompt))
        .await;
    assert_eq!(during.status, 200, "{}", during.text);
    assert!(signalled.elapsed() < Duration::from_millis(1000));

    // After it, no new gRPC stream is accepted: Envoy cannot reach ext_authz (503).
    tokio::time::sleep_until((signalled + Duration::from_millis(1300)).into()).await;
    let after = stack
        .post("/v1/chat/completions", Some(KEY_ALL), whole_body(&prompt))
        .await;
    assert_eq!(after.status, 503, "{}", after.text);

    // The stream in flight reaches the client whole.
    let (chunks, error) = reader.await.unwrap();
    assert_eq!(error, None);
    let body: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(content(&body), expected);
    let last = chunks.last().unwrap().0 - signalled;
    assert!(
        last > Duration::from_millis(1500) && chunks.len() > 15,
        "the stream should have gone on through the drain: {} chunks, the last {last:?} after SIGTERM",
        chunks.len()
    );

    let (exit, _) = serve_exit(stack, Duration::from_secs(20)).await;
    assert!(
        exit.success(),
        "serve exited with {exit}:\n{}",
        stack.serve_log()
    );
    let log = stack.serve_log();
    assert!(log.contains("Every gRPC stream has ended"), "{log}");

    // Its log event was flushed to the logger before serve exited.
    let lines = logged.logger.lines();
    let event = lines
        .iter()
        .find(|l| l["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no log event for {id} in {lines:?}"));
    assert_eq!(event["http_status"], 200, "{event}");
    assert_eq!(event["stream"], true, "{event}");
    assert!(event["output_tokens"].as_u64().unwrap() > 10, "{event}");
}

fn whole_body(prompt: &str) -> String {
    json!({"model": "mock-model", "messages": [{"role": "user", "content": prompt}]}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_bounds_a_stream_that_never_ends() {
    let mut stack = Stack::start(StackOptions {
        extra_yaml: "shutdown:\n  pre_drain_wait_ms: 200\n  drain_timeout_ms: 1500\n".into(),
        ..Default::default()
    });
    let (_, reader) = stream(
        &stack,
        "never ending story",
        &[
            ("x-mock-endless-stream", "1"),
            ("x-mock-chunk-delay-ms", "50"),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    // Ctrl-C drains the same way.
    stack.procs[1].signal("INT");

    let (exit, exited) = serve_exit(&mut stack, Duration::from_secs(10)).await;
    let took = exited - signalled;
    assert!(
        exit.success(),
        "serve exited with {exit}:\n{}",
        stack.serve_log()
    );
    // It waited for the stream (pre-drain wait + drain timeout), then cut it: no longer.
    assert!(
        took >= Duration::from_millis(1700) && took < Duration::from_millis(1700 + 3000),
        "serve exited {took:?} after SIGTERM:\n{}",
        stack.serve_log()
    );
    assert!(
        stack.serve_log().contains("Drain timeout passed"),
        "{}",
        stack.serve_log()
    );

    // The client's stream flowed through the drain, then broke off without finishing.
    let (chunks, _) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the client's stream did not end after serve exited")
        .unwrap();
    assert!(
        chunks
            .iter()
            .any(|(at, _)| *at > signalled + Duration::from_millis(1000)),
        "no chunk arrived during the drain: {chunks:?}"
    );
    let body: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert!(!body.contains("[DONE]"), "{body}");
}
