//! End to end through real Envoy across dialects: the official `anthropic` SDK against
//! OpenAI-family and Anthropic backends, the official `openai` SDK against an Anthropic
//! backend, and what providers and clients see on the wire (paths, credentials, versions,
//! error formats). docs/COMPATIBILITY.md names these tests; `compatibility_matrix` keeps
//! the two in step.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn anthropic_sdk_against_an_openai_backend() {
    let stack = Stack::start(StackOptions::default());
    let seen = stack
        .anthropic_sdk("mock-model", "rate-limited", "stream-error")
        .await;
    // Every request went to the OpenAI mock's chat endpoint.
    for req in &seen {
        assert!(
            req["path"].as_str().unwrap().ends_with("/chat/completions"),
            "{req}"
        );
        assert!(req["headers"].get("anthropic-version").is_none(), "{req}");
    }
}

#[tokio::test]
async fn anthropic_sdk_against_an_anthropic_backend() {
    let stack = Stack::start(StackOptions::default());
    let seen = stack
        .anthropic_sdk("claude-model", "claude-rate-limited", "claude-stream-error")
        .await;
    for req in &seen {
        // The SDK's `count_tokens` is asked of Anthropic's own counting endpoint.
        assert!(
            matches!(
                req["path"].as_str(),
                Some("/v1/messages" | "/v1/messages/count_tokens")
            ),
            "{req}"
        );
        assert_eq!(req["headers"]["x-api-key"], ANTHROPIC_SECRET, "{req}");
    }
}

#[tokio::test]
async fn openai_sdk_against_an_anthropic_backend() {
    let stack = Stack::start(StackOptions::default());
    let seen = stack
        .openai_sdk_chat("claude-model", "claude-stream-error")
        .await;
    for req in &seen {
        assert_eq!(req["path"], "/v1/messages", "{req}");
        // Provider model ids, never the public names.
        let model = req["body"]["model"].as_str().unwrap();
        assert!(
            matches!(model, "claude-upstream-model" | "mock-stream-error"),
            "{req}"
        );
    }
}

#[tokio::test]
async fn providers_get_anthropic_credentials_versions_and_bodies() {
    let stack = Stack::start(StackOptions::default());
    let s = &stack;
    s.clear_upstream_requests().await;
    let messages = json!({"model": "claude-model", "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi claude"}]});
    // Anthropic client → Anthropic: passes through, the client's anthropic-version with it.
    let r = s
        .http
        .post(format!("{}/v1/messages", s.base))
        .header("x-api-key", KEY_ALL)
        .header("anthropic-version", "2099-01-01")
        .header("accept-encoding", "gzip, br")
        .header("content-type", "application/json")
        .body(messages.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-tollgate-request-id").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    // OpenAI client → Anthropic: translated, the default version, a max_tokens.
    let r = s
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "claude-model", "messages": [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi from openai"}]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["object"], "chat.completion");
    // Anthropic client → OpenAI: no Anthropic headers upstream.
    let r = s
        .http
        .post(format!("{}/v1/messages", s.base))
        .header("x-api-key", KEY_ALL)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "some-beta")
        .header("accept-encoding", "gzip")
        .body(
            json!({"model": "mock-model", "max_tokens": 50, "system": "be brief",
            "messages": [{"role": "user", "content": "hi openai"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let seen = s.upstream_requests().await;
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let passthrough = &seen[0];
    assert_eq!(passthrough["path"], "/v1/messages");
    assert_eq!(passthrough["headers"]["x-api-key"], ANTHROPIC_SECRET);
    assert_eq!(passthrough["headers"]["anthropic-version"], "2099-01-01");
    let mut want = messages.clone();
    want["model"] = "claude-upstream-model".into();
    assert_eq!(passthrough["body"], want);
    let translated = &seen[1];
    assert_eq!(translated["path"], "/v1/messages");
    assert_eq!(translated["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(translated["body"]["max_tokens"], 4096);
    assert_eq!(translated["body"]["system"], "be brief");
    assert!(translated["headers"].get("authorization").is_none());
    let to_openai = &seen[2];
    assert_eq!(to_openai["path"], "/v1/chat/completions");
    assert_eq!(
        to_openai["body"]["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(to_openai["body"]["max_completion_tokens"], 50);
    for h in ["anthropic-version", "anthropic-beta", "x-api-key"] {
        assert!(to_openai["headers"].get(h).is_none(), "{h}: {to_openai}");
    }
    for req in &seen {
        assert!(
            !req.to_string().contains(KEY_ALL),
            "client key reached the provider"
        );
        // Responses must come back readable (usage, translation): no compression upstream.
        assert!(req["headers"].get("accept-encoding").is_none(), "{req}");
        assert_eq!(
            req["headers"]["content-length"]
                .as_str()
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            req["body"].to_string().len(),
            "{req}"
        );
    }
    // Usage of translated and passed-through Anthropic exchanges is counted.
    let m = s.metrics().await;
    assert!(
        m.lines().any(|l| l.starts_with("tollgate_tokens_total{")
            && l.contains("provider=\"claude\"")
            && l.contains("kind=\"input\"")),
        "{m}"
    );
}

/// Asserts an Anthropic-format error with this status and type, and a request id.
/// `POST /v1/messages/count_tokens` for backends without a counting API (OpenAI family) is
/// estimated by Tollgate and marked so; errors in Anthropic's format; neither reaches a
/// provider (models whose provider counts: `tests/e2e_edges.rs`).
#[tokio::test]
async fn count_tokens_is_answered_by_tollgate_in_anthropic_format() {
    let stack = Stack::start(StackOptions::default());
    let count = |model: &str, text: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string()
    };
    for model in ["mock-model", "compat-model"] {
        let short = stack
            .post(
                "/v1/messages/count_tokens",
                Some(KEY_ALL),
                count(model, "hello"),
            )
            .await;
        assert_eq!(short.status, 200, "{}", short.text);
        assert_eq!(short.header("x-tollgate-token-count"), Some("estimate"));
        let long = stack
            .post(
                "/v1/messages/count_tokens",
                Some(KEY_ALL),
                count(model, &"hello world ".repeat(50)),
            )
            .await;
        let (s, l) = (
            short.json()["input_tokens"].as_u64().unwrap(),
            long.json()["input_tokens"].as_u64().unwrap(),
        );
        assert!(s > 0 && l > s, "{model}: {s} then {l}");
    }
    assert_anthropic_error(
        &stack
            .post(
                "/v1/messages/count_tokens",
                Some(KEY_ALL),
                count("nope", "x"),
            )
            .await,
        404,
        "not_found_error",
    );
    assert_anthropic_error(
        &stack
            .post(
                "/v1/messages/count_tokens",
                Some(KEY_LIMITED),
                count("claude-model", "x"),
            )
            .await,
        403,
        "permission_error",
    );
    assert_anthropic_error(
        &stack
            .post(
                "/v1/messages/count_tokens",
                Some(KEY_ALL),
                r#"{"messages":[]}"#,
            )
            .await,
        400,
        "invalid_request_error",
    );
    assert!(
        stack.posted().await.is_empty(),
        "count_tokens went upstream"
    );
}

/// With Tollgate itself down, ext_authz fails before ext_proc can translate anything: Envoy's
/// own 503 must still reach each client in its own format.
#[tokio::test]
async fn envoy_answers_in_each_clients_format_when_tollgate_is_down() {
    let mut stack = Stack::start(StackOptions::default());
    stack
        .procs
        .iter_mut()
        .find(|p| p.name == "serve")
        .expect("serve runs")
        .kill9();
    // No request id here: Tollgate, which mints it, is the part that is down.
    let anthropic = json!({"model": "claude-model", "max_tokens": 10,
        "messages": [{"role": "user", "content": "x"}]});
    let r = stack
        .post("/v1/messages", Some(KEY_ALL), anthropic.to_string())
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["type"], "error", "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "api_error", "{}", r.text);
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            r#"{"model":"mock-model","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(
        r.json()["error"]["code"],
        "upstream_unavailable",
        "{}",
        r.text
    );
}

fn assert_anthropic_error(r: &Reply, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(r.header("x-tollgate-request-id").map(str::len), Some(32));
}

#[tokio::test]
async fn errors_reach_anthropic_clients_in_anthropic_format() {
    let stack = Stack::start(StackOptions::default());
    let s = &stack;
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]})
            .to_string()
    };
    assert_anthropic_error(
        &s.post("/v1/messages", None, body("claude-model")).await,
        401,
        "authentication_error",
    );
    assert_anthropic_error(
        &s.post("/v1/messages", Some("tg-wrong"), body("claude-model"))
            .await,
        401,
        "authentication_error",
    );
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_ALL), "{oops").await,
        400,
        "invalid_request_error",
    );
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_ALL), body("nope")).await,
        404,
        "not_found_error",
    );
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_LIMITED), body("claude-model"))
            .await,
        403,
        "permission_error",
    );
    // A request the OpenAI backend cannot take: refused before it leaves, in Anthropic format.
    let bad = json!({"model": "mock-model", "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]});
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_ALL), bad.to_string()).await,
        400,
        "invalid_request_error",
    );
    // An Anthropic server tool (web search) the OpenAI backend cannot run.
    let server_tool = json!({"model": "mock-model", "max_tokens": 10,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "messages": [{"role": "user", "content": "x"}]});
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_ALL), server_tool.to_string())
            .await,
        400,
        "invalid_request_error",
    );
    let big = json!({"model": "claude-model", "max_tokens": 10, "pad": "x".repeat(70 * 1024),
        "messages": [{"role": "user", "content": "x"}]});
    let r = s.post("/v1/messages", Some(KEY_ALL), big.to_string()).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "request_too_large", "{}", r.text);
    // Upstream errors: OpenAI-format bodies translated, others replaced, Envoy's own too.
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_ALL), body("rate-limited"))
            .await,
        429,
        "rate_limit_error",
    );
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_ALL), body("html-error"))
            .await,
        502,
        "api_error",
    );
    assert_anthropic_error(
        &s.post("/v1/messages", Some(KEY_ALL), body("dead-model"))
            .await,
        503,
        "overloaded_error",
    );
    // Anthropic backend errors reach OpenAI clients in OpenAI format.
    let r = s
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            r#"{"model":"claude-rate-limited","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    let v = r.assert_openai_error(429, None);
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Endpoints Anthropic has no counterpart of.
    s.post(
        "/v1/embeddings",
        Some(KEY_ALL),
        r#"{"model":"claude-model","input":"x"}"#,
    )
    .await
    .assert_openai_error(400, Some("invalid_value"));
}

#[tokio::test]
async fn translated_streams_flow_chunk_by_chunk() {
    let stack = Stack::start(StackOptions {
        chunk_delay_ms: 100,
        ..Default::default()
    });
    let prompt = "one two three four five six seven eight";
    // Anthropic client, OpenAI backend: 14 chunks 100 ms apart.
    let (first, total, text) = stack
        .stream_timed(
            "/v1/messages",
            json!({"model": "mock-model", "max_tokens": 100, "stream": true,
            "messages": [{"role": "user", "content": prompt}]}),
        )
        .await;
    assert!(total >= std::time::Duration::from_millis(1000), "{total:?}");
    assert!(first < total / 3, "first byte at {first:?} of {total:?}");
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    // OpenAI client, Anthropic backend.
    let (first, total, text) = stack
        .stream_timed(
            "/v1/chat/completions",
            json!({"model": "claude-model", "stream": true,
            "messages": [{"role": "user", "content": prompt}]}),
        )
        .await;
    assert!(total >= std::time::Duration::from_millis(1000), "{total:?}");
    assert!(first < total / 3, "first byte at {first:?} of {total:?}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
