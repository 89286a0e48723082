//! End to end for issue 5 ("every request recorded, nothing lost"): requests through real
//! Envoy and a real `tollgate serve`, shipped to a real `tollgate logger` with the NDJSON sink,
//! which is killed with SIGKILL mid-run and restarted. Exactly one line per request, with the
//! usage the client saw, and no duplicates.

// Test helpers outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CHAT_BODY: &str = r#"{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}"#;

/// What a client saw of one request: its id, status and token counts.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: u64,
    input: u64,
    output: u64,
    stream: bool,
}

fn usage_of_stream(text: &str) -> Value {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| d.contains("\"usage\":{"))
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .next_back()
        .unwrap_or_else(|| panic!("no usage chunk in {text}"))["usage"]
        .clone()
}

/// Sends request `i` (every third one streams) and returns its request id and what was seen.
async fn send(stack: &Stack, i: usize) -> (String, Seen) {
    let stream = i.is_multiple_of(3);
    let words = "word ".repeat(1 + i % 7);
    let mut body = json!({"model": "mock-model",
        "messages": [{"role": "user", "content": format!("request {i}: {words}")}]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let usage = if stream {
        usage_of_stream(&r.text)
    } else {
        r.json()["usage"].clone()
    };
    let seen = Seen {
        status: 200,
        input: usage["prompt_tokens"].as_u64().unwrap(),
        output: usage["completion_tokens"].as_u64().unwrap(),
        stream,
    };
    assert!(seen.input > 0 && seen.output > 0, "{usage}");
    (id, seen)
}

/// Waits until the logger holds `n` lines, then a little longer to catch any extra one.
async fn settle(logger: &Logger, n: usize) -> Vec<Value> {
    let start = Instant::now();
    while logger.lines().len() < n && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    logger.lines()
}

fn counter(metrics: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "tollgate_log_events_total{{outcome=\"{outcome}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_logged_exactly_once_even_across_a_logger_kill_9() {
    let logger_dir = tempfile::tempdir().unwrap();
    let mut logger = Logger::start(ANY_PORT, &logger_dir.path().join("data"), logger_dir.path());
    let stack = Arc::new(Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        ..Default::default()
    }));
    let mut expected: HashMap<String, Seen> = HashMap::new();

    // 1. The logger is up: every request becomes one line.
    for i in 0..12 {
        let (id, seen) = send(&stack, i).await;
        expected.insert(id, seen);
    }
    // A request Tollgate refuses itself is recorded too.
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            r#"{"model":"no-such-model","messages":[]}"#,
        )
        .await;
    assert_eq!(r.status, 404);
    let refused = r.header("x-tollgate-request-id").unwrap().to_owned();
    // So is one ext_authz refuses (it never reaches ext_proc).
    let r = stack
        .post("/v1/chat/completions", Some(KEY_EXPIRED), CHAT_BODY)
        .await;
    assert_eq!(r.status, 401);
    let denied = r.header("x-tollgate-request-id").unwrap().to_owned();
    let lines = settle(&logger, 14).await;
    assert_eq!(lines.len(), 14, "{lines:#?}");

    // 2. kill -9 the logger in the middle of a burst; requests keep succeeding meanwhile.
    let burst = {
        let stack = Arc::clone(&stack);
        tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 100..130 {
                out.push(send(&stack, i).await);
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    logger.kill9();
    let during = burst.await.unwrap();
    assert_eq!(during.len(), 30);
    expected.extend(during);
    // More requests while it is down: they can only be spooled.
    for i in 200..210 {
        let (id, seen) = send(&stack, i).await;
        expected.insert(id, seen);
    }
    let start = Instant::now();
    let mut m = stack.metrics().await;
    while counter(&m, "spooled") < 10 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = stack.metrics().await;
    }
    assert!(counter(&m, "spooled") >= 10, "nothing spooled:\n{m}");

    // 3. Restart it on the same data directory: the spool drains, nothing twice.
    logger.restart(1);
    for i in 300..305 {
        let (id, seen) = send(&stack, i).await;
        expected.insert(id, seen);
    }
    let total = expected.len() + 2;
    assert_eq!(total, 59);
    let lines = settle(&logger, total).await;
    let mut by_id: HashMap<String, Value> = HashMap::new();
    for l in &lines {
        let id = l["request_id"].as_str().unwrap().to_owned();
        assert!(
            by_id.insert(id.clone(), l.clone()).is_none(),
            "duplicate line for {id}"
        );
    }
    assert_eq!(lines.len(), total, "expected exactly {total} lines");

    for (id, seen) in &expected {
        let l = by_id
            .get(id)
            .unwrap_or_else(|| panic!("request {id} was never logged"));
        assert_eq!(l["http_status"], seen.status, "{l}");
        assert_eq!(l["input_tokens"], seen.input, "{l}");
        assert_eq!(l["output_tokens"], seen.output, "{l}");
        assert_eq!(l["stream"], seen.stream, "{l}");
        assert_eq!(l["usage_source"], "provider", "{l}");
        // Exact cost at the configured price: 1.5 and 2 USD per million tokens.
        assert_eq!(
            l["cost_picodollars"],
            seen.input * 1_500_000 + seen.output * 2_000_000,
            "{l}"
        );
        assert_eq!(
            (&l["key_id"], &l["tenant"], &l["team"]),
            (&json!("all"), &json!("acme"), &json!("ml")),
            "{l}"
        );
        assert_eq!(
            (&l["client_api"], &l["endpoint"], &l["requested_model"]),
            (
                &json!("openai"),
                &json!("chat_completions"),
                &json!("mock-model")
            ),
            "{l}"
        );
        assert_eq!(
            (&l["provider"], &l["upstream_model"]),
            (&json!("mock"), &json!("mock-model"))
        );
        let (start, first, end) = (
            l["start_time_unix_nanos"].as_i64().unwrap(),
            l["first_token_time_unix_nanos"].as_i64().unwrap(),
            l["end_time_unix_nanos"].as_i64().unwrap(),
        );
        assert!(start > 0 && start <= first && first <= end, "{l}");
        assert!(l["upstream_latency_ms"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["gateway_overhead_ms"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(l["error_class"], "", "{l}");
    }
    let r = &by_id[&refused];
    assert_eq!(
        (
            &r["http_status"],
            &r["error_class"],
            &r["requested_model"],
            &r["provider"]
        ),
        (
            &json!(404),
            &json!("model_not_found"),
            &json!("no-such-model"),
            &json!("")
        ),
        "{r}"
    );

    let d = &by_id[&denied];
    assert_eq!(
        (
            &d["http_status"],
            &d["error_class"],
            &d["key_id"],
            &d["endpoint"]
        ),
        (
            &json!(401),
            &json!("expired_api_key"),
            &json!("expired"),
            &json!("chat_completions")
        ),
        "{d}"
    );

    let m = stack.metrics().await;
    assert_eq!(counter(&m, "dropped"), 0, "{m}");
    assert_eq!(counter(&m, "queued"), total as u64, "{m}");
    assert!(counter(&m, "sent") >= total as u64, "{m}");
    // The spool is empty again.
    let spool = stack.dir.path().join("spool");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the spool: {left:?}");
}

#[test]
fn the_logger_command_refuses_bad_settings_with_a_clear_message() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(TOLLGATE)
            .arg("logger")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--listen", "127.0.0.1:0"]);
    assert!(err.contains("--data-dir"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let err = run(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--max-event-bytes",
        "1",
    ]);
    assert!(err.contains("--max-event-bytes must be between"), "{err}");
    let err = run(&[
        "--listen",
        "127.0.0.1:0",
        "--sink",
        "clickhouse",
        "--clickhouse-table",
        "drop table x",
    ]);
    assert!(
        err.contains("--clickhouse-table `drop table x` may use only"),
        "{err}"
    );
}
