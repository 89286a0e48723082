//! Webhook guardrails end to end through real Envoy: a tiny webhook server in the test answers
//! allow, block (with a rule name), flag, or too slowly, and one key points at a port where
//! nothing listens. Blocks become errors in the client's dialect naming the rule, flags and
//! unanswered fail-open calls are recorded, fail-closed ones refuse with 503; the response side
//! judges complete (not streamed) answers. The mock echoes the prompt.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::Json;
use common::*;
use serde_json::{json, Value};

/// Every call the webhook received.
type Calls = Arc<Mutex<Vec<Value>>>;

/// Starts the webhook on a free port: its base URL and the calls it sees.
async fn webhook() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let seen = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/decide",
        post(move |Json(call): Json<Value>| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(call.clone());
                let text = call["text"].as_str().unwrap_or_default().to_owned();
                let side = call["side"].as_str().unwrap_or_default();
                if text.contains("please wait") {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let answer = if text.contains("please block") {
                    json!({"action": "block", "rule": "toxic"})
                } else if text.contains("please flag") {
                    json!({"action": "flag", "rule": "pii"})
                } else if side == "response" && text.contains("echo-block") {
                    json!({"action": "block", "rule": "leak"})
                } else if text.contains("garbage") {
                    json!({"verdict": "maybe"})
                } else {
                    json!({"action": "allow"})
                };
                Json(answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, calls)
}

fn chat(text: &str, stream: bool) -> String {
    json!({"model": "mock-model", "stream": stream,
        "messages": [{"role": "user", "content": text}]})
    .to_string()
}

fn verdicts(metrics: &str, rule: &str, action: &str, side: &str) -> u64 {
    let prefix = format!(
        "tollgate_guardrail_verdicts_total{{rule=\"{rule}\",action=\"{action}\",side=\"{side}\"}}"
    );
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_verdicts_allow_block_flag_and_fail_open_or_closed_through_envoy() {
    let (base, calls) = webhook().await;
    let stack = Stack::start(StackOptions {
        webhook: Some(base),
        ..Default::default()
    });
    let post = |key: &'static str, body: String| {
        let stack = &stack;
        async move { stack.post("/v1/chat/completions", Some(key), body).await }
    };

    // Allowed: both sides were asked, with the documented contract.
    let r = post(KEY_HOOK_CLOSED, chat("hello there", false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rid = r.header("x-tollgate-request-id").unwrap().to_owned();
    {
        let seen = calls.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:#?}");
        assert_eq!(
            seen[0],
            json!({"rule": "mod", "side": "request", "text": "hello there", "request_id": rid,
                "key_id": "hook-closed", "tenant": "", "model": "mock-model",
                "endpoint": "chat_completions"})
        );
        assert_eq!(seen[1]["side"], "response");
        assert_eq!(seen[1]["text"], "Mock reply to: hello there");
    }

    // Blocked on the request side, naming the rule; the provider never sees it.
    stack.clear_upstream_requests().await;
    let r = post(KEY_HOOK_CLOSED, chat("please block this", false)).await;
    let v = r.assert_openai_error(400, Some("guardrail_blocked"));
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`mod:toxic`") && message.contains("request"),
        "{v}"
    );
    assert!(!message.contains("please block"), "{v}");
    assert!(stack.posted().await.is_empty());
    // The same in Anthropic's dialect.
    let r = stack
        .post(
            "/v1/messages",
            Some(KEY_HOOK_CLOSED),
            json!({"model": "claude-model", "max_tokens": 16,
                "messages": [{"role": "user", "content": "please block this"}]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (&v["type"], &v["error"]["type"]),
        (&json!("error"), &json!("invalid_request_error"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("mod:toxic"));

    // Flagged: through, and recorded.
    let r = post(KEY_HOOK_CLOSED, chat("please flag me", false)).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Blocked on the response side (a complete answer)...
    let r = post(KEY_HOOK_CLOSED, chat("echo-block now", false)).await;
    let v = r.assert_openai_error(400, Some("guardrail_blocked"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("response was blocked by the guardrail rule `mod:leak`"),
        "{v}"
    );
    // ...but a stream is not judged by webhooks on its way back.
    let r = post(KEY_HOOK_CLOSED, chat("echo-block now", true)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("echo-block"), "{}", r.text);

    // Too slow: fail closed refuses with 503, fail open lets it through.
    let started = std::time::Instant::now();
    let r = post(KEY_HOOK_CLOSED, chat("please wait", false)).await;
    let v = r.assert_openai_error(503, Some("guardrail_unavailable"));
    assert!(v["error"]["message"].as_str().unwrap().contains("`mod`"));
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the timeout did not apply"
    );
    let r = post(KEY_HOOK_OPEN, chat("please wait", false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // An answer outside the contract is an unanswered call too.
    let r = post(KEY_HOOK_CLOSED, chat("garbage in", false)).await;
    r.assert_openai_error(503, Some("guardrail_unavailable"));
    // Down: nothing listens.
    let r = post(KEY_HOOK_DOWN, chat("hello", false)).await;
    r.assert_openai_error(503, Some("guardrail_unavailable"));

    let m = stack.metrics().await;
    for (rule, action, side) in [
        ("mod:toxic", "block", "request"),
        ("mod:pii", "flag", "request"),
        ("mod:leak", "block", "response"),
        ("mod:unavailable", "block", "request"),
        ("mod:unavailable", "flag", "request"),
    ] {
        assert!(
            verdicts(&m, rule, action, side) >= 1,
            "no {rule} {action} {side} verdict:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_verdicts_reach_the_log_event() {
    let (base, _calls) = webhook().await;
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::start(ANY_PORT, &dir.path().join("data"), dir.path());
    let stack = Stack::start(StackOptions {
        webhook: Some(base),
        logger: Some(logger.addr.clone()),
        ..Default::default()
    });
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_HOOK_CLOSED),
            chat("please block", false),
        )
        .await;
    assert_eq!(r.status, 400);
    let blocked = r.header("x-tollgate-request-id").unwrap().to_owned();
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_HOOK_OPEN),
            chat("please wait", false),
        )
        .await;
    assert_eq!(r.status, 200);
    let passed = r.header("x-tollgate-request-id").unwrap().to_owned();
    let start = std::time::Instant::now();
    while logger.lines().len() < 2 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = logger.lines();
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == json!(id))
            .unwrap_or_else(|| panic!("{id} not logged: {lines:#?}"))
            .clone()
    };
    let b = line(&blocked);
    assert_eq!(
        b["guardrail_verdicts"],
        json!(["request:block:mod:toxic"]),
        "{b}"
    );
    assert_eq!(b["error_class"], "guardrail_blocked", "{b}");
    let p = line(&passed);
    // The mock echoes the prompt, so the answer is slow to judge too.
    assert_eq!(
        p["guardrail_verdicts"],
        json!([
            "request:flag:mod:unavailable",
            "response:flag:mod:unavailable"
        ]),
        "{p}"
    );
}

/// Gemini-format requests and responses are judged by webhooks too (they once were not: the
/// webhook's text walker did not read `contents[].parts`), whatever the provider behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_judge_gemini_requests_and_responses() {
    let (base, calls) = webhook().await;
    let stack = Stack::start(StackOptions {
        webhook: Some(base),
        ..Default::default()
    });
    let gemini =
        |text: &str| json!({"contents": [{"role": "user", "parts": [{"text": text}]}]}).to_string();
    // A Gemini backend and an OpenAI one, behind a Gemini client.
    for model in ["gemini-model", "mock-model"] {
        let path = format!("/v1beta/models/{model}:generateContent");
        calls.lock().unwrap().clear();
        let r = stack
            .post(&path, Some(KEY_HOOK_CLOSED), gemini("hello gemini"))
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        {
            let seen = calls.lock().unwrap();
            assert_eq!(seen.len(), 2, "{model}: {seen:#?}");
            assert_eq!(seen[0]["side"], "request", "{model}");
            assert_eq!(seen[0]["text"], "hello gemini", "{model}");
            assert_eq!(seen[0]["endpoint"], "generate_content", "{model}");
            assert_eq!(seen[1]["side"], "response", "{model}");
            assert!(
                seen[1]["text"].as_str().unwrap().contains("hello gemini"),
                "{model}: {seen:#?}"
            );
        }
        stack.clear_upstream_requests().await;
        let r = stack
            .post(&path, Some(KEY_HOOK_CLOSED), gemini("please block this"))
            .await;
        assert_eq!(r.status, 400, "{model}: {}", r.text);
        let v = r.json();
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{model}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mod:toxic"),
            "{model}: {v}"
        );
        assert!(
            stack.posted().await.is_empty(),
            "{model}: reached the provider"
        );
        let r = stack
            .post(&path, Some(KEY_HOOK_CLOSED), gemini("echo-block now"))
            .await;
        assert_eq!(r.status, 400, "{model}: {}", r.text);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`mod:leak`"),
            "{model}: {}",
            r.text
        );
    }
}
