//! The exact response cache end to end through real Envoy: a hit and a miss in each client
//! dialect (OpenAI chat, Anthropic messages, Gemini generateContent), the provider called once
//! for two equal requests (the mock's request log), streams replayed from the cached answer
//! and read by the official SDKs, tenants never sharing answers, `Cache-Control: no-store` and
//! `no-cache`, TTL expiry, and a hit's accounting (no budget spend, `cache` and the source
//! request id in its log event).

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// A key of another tenant, added to the base config.
const KEY_OTHER: &str = "tg-e2e-cache-other-tenant";

fn add_other_tenant(config: String) -> String {
    config.replacen(
        "keys:\n",
        &format!(
            "keys:\n  - {{ id: other, hash: \"{}\", tenant: other, models: [\"*\"] }}\n",
            hash(KEY_OTHER)
        ),
        1,
    )
}

/// The cache policies: `compat-model` lives one second, the chat models of each dialect
/// five minutes.
const CACHE_YAML: &str = "cache:\n  policies:\n    - { name: short, models: [compat-model], ttl_secs: 1 }\n    - { name: chat, models: [mock-model, claude-model, gemini-model] }\n";

fn options(extra: &str) -> StackOptions {
    StackOptions {
        extra_yaml: format!("{CACHE_YAML}{extra}"),
        patch_config: Some(add_other_tenant),
        ..Default::default()
    }
}

fn chat(model: &str, text: &str) -> String {
    json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

async fn post_with(
    stack: &Stack,
    path: &str,
    key: &str,
    body: String,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = stack
        .http
        .post(format!("{}{path}", stack.base))
        .header("content-type", "application/json")
        .bearer_auth(key)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::from(req.send().await.unwrap()).await
}

/// Sends `body` twice; returns both replies and how many requests reached the provider.
async fn twice(stack: &Stack, path: &str, key: &str, body: String) -> (Reply, Reply, usize) {
    stack.clear_upstream_requests().await;
    let a = post_with(stack, path, key, body.clone(), &[]).await;
    let b = post_with(stack, path, key, body, &[]).await;
    (a, b, stack.posted().await.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn equal_requests_reach_the_provider_once_in_every_dialect() {
    let stack = Stack::start(options(""));
    // OpenAI chat; member order and ignored members (`user`) do not change the key.
    stack.clear_upstream_requests().await;
    let a = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "mock-model", "max_tokens": 20, "user": "u1",
                "messages": [{"role": "user", "content": "hello cache"}]})
            .to_string(),
        )
        .await;
    let b = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"messages": [{"content": "hello cache", "role": "user"}], "user": "u2",
                "max_tokens": 20, "model": "mock-model"})
            .to_string(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(
        stack.posted().await.len(),
        1,
        "the second request reached the provider"
    );
    assert_eq!(a.header("x-tollgate-cache"), None);
    assert_eq!(b.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(a.json()["choices"], b.json()["choices"]);
    assert_ne!(
        a.header("x-tollgate-request-id"),
        b.header("x-tollgate-request-id")
    );
    // A different question misses.
    let c = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            chat("mock-model", "another question"),
        )
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.header("x-tollgate-cache"), None);
    assert_eq!(stack.posted().await.len(), 2);

    // Anthropic messages.
    let (a, b, calls) = twice(
        &stack,
        "/v1/messages",
        KEY_ALL,
        chat("claude-model", "hello anthropic cache"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(calls, 1);
    assert_eq!(b.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(b.json()["type"], "message");
    assert_eq!(a.json()["content"], b.json()["content"]);

    // Gemini generateContent.
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello gemini cache"}]}]})
        .to_string();
    let (a, b, calls) = twice(
        &stack,
        "/v1beta/models/gemini-model:generateContent",
        KEY_ALL,
        body,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(calls, 1);
    assert_eq!(b.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(
        a.json()["candidates"][0]["content"],
        b.json()["candidates"][0]["content"]
    );

    // A model no policy names is never cached.
    let (_, b, calls) = twice(
        &stack,
        "/v1/chat/completions",
        KEY_ALL,
        chat("azure-model", "not cached"),
    )
    .await;
    assert_eq!(calls, 2);
    assert_eq!(b.header("x-tollgate-cache"), None);

    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(
            r#"tollgate_cache_lookups_total{model="mock-model",tenant="acme",result="hit"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_cache_bytes "), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_is_stored_and_replayed_as_a_well_formed_stream() {
    let stack = Stack::start(options(""));
    stack.clear_upstream_requests().await;
    let body = json!({"model": "mock-model", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream me"}]});
    let (_, _, first) = stack
        .stream_timed("/v1/chat/completions", body.clone())
        .await;
    let (_, _, second) = stack.stream_timed("/v1/chat/completions", body).await;
    assert_eq!(
        stack.posted().await.len(),
        1,
        "the replayed stream reached the provider"
    );
    let text = |s: &str| -> String {
        s.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    assert!(!text(&first).is_empty());
    assert_eq!(text(&first), text(&second));
    assert!(second.trim_end().ends_with("data: [DONE]"), "{second}");
    assert!(
        second.contains("\"completion_tokens\""),
        "no usage chunk: {second}"
    );
    // A stream answered from a complete answer stored by a request that did not stream.
    stack.clear_upstream_requests().await;
    let plain = chat("mock-model", "stored whole, replayed streamed");
    let a = stack
        .post("/v1/chat/completions", Some(KEY_ALL), plain)
        .await;
    assert_eq!(a.status, 200);
    let (_, _, replayed) = stack
        .stream_timed(
            "/v1/chat/completions",
            json!({"model": "mock-model", "max_tokens": 20, "stream": true,
                "messages": [{"role": "user", "content": "stored whole, replayed streamed"}]}),
        )
        .await;
    assert_eq!(stack.posted().await.len(), 1);
    assert_eq!(
        text(&replayed),
        a.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_sdks_read_replayed_streams() {
    let stack = Stack::start(options(""));
    stack.clear_upstream_requests().await;
    run_sdk(
        "cache_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_OPENAI_MODEL", "mock-model"),
            ("TOLLGATE_ANTHROPIC_MODEL", "claude-model"),
            ("TOLLGATE_GEMINI_MODEL", "gemini-model"),
        ],
    );
    // Each SDK's second stream was replayed: one provider call per dialect.
    assert_eq!(stack.posted().await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_never_share_answers() {
    let stack = Stack::start(options(""));
    stack.clear_upstream_requests().await;
    let body = chat("mock-model", "tenant question");
    let a = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body.clone())
        .await;
    let b = stack
        .post("/v1/chat/completions", Some(KEY_OTHER), body.clone())
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.header("x-tollgate-cache"), None);
    assert_eq!(stack.posted().await.len(), 2);
    // Each tenant hits its own entry; another key of the same tenant shares it.
    let c = stack
        .post("/v1/chat/completions", Some(KEY_LIMITED), body)
        .await;
    assert_eq!(c.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(stack.posted().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_control_and_ttl_are_honoured() {
    let stack = Stack::start(options(""));
    stack.clear_upstream_requests().await;
    let path = "/v1/chat/completions";
    // `no-store`: neither looked up nor stored.
    let body = chat("mock-model", "no store please");
    let r = post_with(
        &stack,
        path,
        KEY_ALL,
        body.clone(),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post_with(&stack, path, KEY_ALL, body.clone(), &[]).await;
    assert_eq!(
        r.header("x-tollgate-cache"),
        None,
        "no-store stored the answer"
    );
    assert_eq!(stack.posted().await.len(), 2);
    // Now it is stored: `no-cache` skips the lookup (the provider answers) and stores anew.
    let r = post_with(
        &stack,
        path,
        KEY_ALL,
        body.clone(),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(r.header("x-tollgate-cache"), None);
    assert_eq!(stack.posted().await.len(), 3);
    let r = post_with(&stack, path, KEY_ALL, body, &[]).await;
    assert_eq!(r.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(stack.posted().await.len(), 3);

    // TTL: `compat-model` keeps answers one second.
    stack.clear_upstream_requests().await;
    let body = chat("compat-model", "short lived");
    let (_, b, calls) = twice(&stack, path, KEY_ALL, body.clone()).await;
    assert_eq!(b.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(calls, 1);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = post_with(&stack, path, KEY_ALL, body, &[]).await;
    assert_eq!(
        r.header("x-tollgate-cache"),
        None,
        "an expired answer was served"
    );
    assert_eq!(stack.posted().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hit_costs_nothing_and_its_log_event_names_the_source() {
    let logged = LoggedStack::ndjson_with(options(
        "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"10\" }\n",
    ));
    let stack = &logged.stack;
    let body = chat("mock-model", "what does a hit cost");
    let a = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body.clone())
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let spent = |v: Value| v["data"][0]["spent_usd"].as_str().unwrap().to_owned();
    // The settlement is applied as the request ends; wait for it.
    let mut before = spent(stack.get("/v1/budget", Some(KEY_ALL)).await.json());
    for _ in 0..50 {
        if before != "0.000000000000" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        before = spent(stack.get("/v1/budget", Some(KEY_ALL)).await.json());
    }
    assert_ne!(before, "0.000000000000");
    let b = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body)
        .await;
    assert_eq!(b.header("x-tollgate-cache"), Some("exact"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let after = spent(stack.get("/v1/budget", Some(KEY_ALL)).await.json());
    assert_eq!(before, after, "a hit was charged to the budget");

    let source = a.header("x-tollgate-request-id").unwrap().to_owned();
    let hit_id = b.header("x-tollgate-request-id").unwrap().to_owned();
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = logged.logger.lines();
        if lines.iter().any(|l| l["request_id"] == hit_id.as_str()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let hit = lines
        .iter()
        .find(|l| l["request_id"] == hit_id.as_str())
        .unwrap_or_else(|| panic!("no event for the hit: {lines:?}"));
    assert_eq!(hit["cache"], "exact");
    assert_eq!(hit["cache_source_request_id"], source.as_str());
    assert_eq!(hit["http_status"], 200);
    assert_eq!(hit["cost_picodollars"], 0);
    assert!(hit["output_tokens"].as_u64().unwrap() > 0, "{hit}");
    let miss = lines
        .iter()
        .find(|l| l["request_id"] == source.as_str())
        .unwrap();
    assert_eq!(miss["cache"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_requests_are_cached_and_read_by_the_official_sdk() {
    let stack = Stack::start(options(""));
    stack.clear_upstream_requests().await;
    // `mock-model` is served natively (an OpenAI target gets the Responses body), and
    // `claude-model` through the hub.
    run_sdk(
        "cache_responses_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_MODELS", "mock-model,claude-model"),
        ],
    );
    // Per model the provider answered three times: the first whole answer, the first
    // continuation and the first stream; every repeat (a continuation too) was a hit.
    let posted = stack.posted().await;
    assert_eq!(posted.len(), 6, "{posted:#?}");
    assert!(posted.iter().any(|r| r["path"] == "/v1/responses"));
    assert!(posted.iter().any(|r| r["path"] == "/v1/messages"));
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_cache_lookups_total{model=\"claude-model\",tenant=\"acme\",result=\"hit\"} 4"
        ),
        "{metrics}"
    );
}
