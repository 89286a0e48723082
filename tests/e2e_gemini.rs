//! End to end through real Envoy with Gemini on either side: the official `google-genai` SDK
//! against OpenAI, Anthropic and Gemini backends, the `openai` and `anthropic` SDKs against a
//! Gemini backend, and what providers and clients see on the wire (paths, `x-goog-api-key`,
//! error formats, Envoy's own replies). docs/COMPATIBILITY.md names these tests;
//! `compatibility_matrix` keeps the two in step.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

fn gemini_sdk(stack: &Stack, model: &str, rate_limited: &str, stream_error: &str, thinking: bool) {
    run_sdk(
        "gemini_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_CHAT_MODEL", model),
            ("TOLLGATE_RATE_LIMITED_MODEL", rate_limited),
            ("TOLLGATE_STREAM_ERROR_MODEL", stream_error),
            ("TOLLGATE_THINKING", if thinking { "1" } else { "0" }),
        ],
    );
}

/// The path (without query) of every request the mock got.
fn paths(seen: &[Value]) -> Vec<&str> {
    seen.iter().map(|r| r["path"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn gemini_sdk_against_an_openai_backend() {
    let stack = Stack::start(StackOptions::default());
    gemini_sdk(&stack, "mock-model", "rate-limited", "stream-error", false);
    let seen = stack.posted().await;
    assert!(!seen.is_empty());
    for req in &seen {
        assert_eq!(req["path"], "/v1/chat/completions", "{req}");
        assert!(req["headers"].get("x-goog-api-key").is_none(), "{req}");
        // Gemini's uppercase OpenAPI types arrive as JSON Schema's.
        if let Some(tools) = req["body"]["tools"].as_array() {
            let params = &tools[0]["function"]["parameters"];
            assert_eq!(params["properties"]["city"]["type"], "string", "{req}");
        }
    }
}

#[tokio::test]
async fn gemini_sdk_against_an_anthropic_backend() {
    let stack = Stack::start(StackOptions::default());
    gemini_sdk(
        &stack,
        "claude-model",
        "claude-rate-limited",
        "claude-stream-error",
        false,
    );
    let seen = stack.posted().await;
    assert!(!seen.is_empty());
    for req in &seen {
        assert_eq!(req["path"], "/v1/messages", "{req}");
        assert_eq!(req["headers"]["x-api-key"], ANTHROPIC_SECRET, "{req}");
        assert!(req["headers"].get("anthropic-version").is_some(), "{req}");
    }
}

#[tokio::test]
async fn gemini_sdk_against_a_bedrock_backend() {
    let stack = Stack::start(StackOptions::default());
    gemini_sdk(
        &stack,
        "bedrock-model",
        "bedrock-rate-limited",
        "bedrock-stream-error",
        false,
    );
    let seen = stack.posted().await;
    assert!(!seen.is_empty());
    for req in &seen {
        let path = req["path"].as_str().unwrap();
        assert!(
            path.starts_with("/model/") && path.contains("/converse"),
            "{req}"
        );
        assert!(req["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256"));
    }
}

#[tokio::test]
async fn gemini_sdk_against_a_gemini_backend() {
    let stack = Stack::start(StackOptions::default());
    gemini_sdk(
        &stack,
        "gemini-model",
        "gemini-rate-limited",
        "gemini-stream-error",
        true,
    );
    let seen = stack.posted().await;
    assert!(!seen.is_empty());
    let mut streamed = 0;
    for req in &seen {
        let path = req["path"].as_str().unwrap();
        let model = path
            .strip_prefix("/v1beta/models/")
            .and_then(|p| p.split_once(':'))
            .map(|(m, _)| m)
            .unwrap_or_else(|| panic!("{req}"));
        // The provider's model id, never the public name.
        assert!(
            matches!(
                model,
                "gemini-upstream-model" | "mock-error-429" | "mock-stream-error"
            ),
            "{req}"
        );
        if path.ends_with(":streamGenerateContent") {
            streamed += 1;
            assert_eq!(req["query"], "alt=sse", "{req}");
        }
        assert_eq!(req["headers"]["x-goog-api-key"], GEMINI_SECRET, "{req}");
        assert!(req["headers"].get("authorization").is_none(), "{req}");
        assert!(req["body"].get("model").is_none(), "{req}");
    }
    assert!(streamed >= 3, "{streamed} streamed requests");
}

#[tokio::test]
async fn openai_sdk_against_a_gemini_backend() {
    let stack = Stack::start(StackOptions::default());
    let base = format!("{}/v1", stack.base);
    run_sdk(
        "openai_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_CHAT_MODEL", "gemini-model"),
            ("TOLLGATE_STREAM_ERROR_MODEL", "gemini-stream-error"),
        ],
    );
    let seen = stack.posted().await;
    assert!(!seen.is_empty());
    for p in paths(&seen) {
        assert!(p.starts_with("/v1beta/models/") && p.contains(":"), "{p}");
    }
}

#[tokio::test]
async fn anthropic_sdk_against_a_gemini_backend() {
    let stack = Stack::start(StackOptions::default());
    run_sdk(
        "anthropic_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_CHAT_MODEL", "gemini-model"),
            ("TOLLGATE_RATE_LIMITED_MODEL", "gemini-rate-limited"),
            ("TOLLGATE_STREAM_ERROR_MODEL", "gemini-stream-error"),
        ],
    );
    let seen = stack.posted().await;
    assert!(!seen.is_empty());
    for req in &seen {
        assert!(
            req["path"].as_str().unwrap().starts_with("/v1beta/models/"),
            "{req}"
        );
        assert!(req["headers"].get("anthropic-version").is_none(), "{req}");
        assert!(req["headers"].get("x-api-key").is_none(), "{req}");
    }
}

fn assert_gemini_error(r: &Reply, status: u16, rpc: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], status, "{v}");
    assert_eq!(v["error"]["status"], rpc, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

/// Tollgate's own errors, providers' errors and Envoy's local replies all reach Gemini clients
/// in Google's format, with the status Google would use.
#[tokio::test]
async fn errors_reach_gemini_clients_in_gemini_format() {
    let stack = Stack::start(StackOptions {
        max_body: 4096,
        ..StackOptions::default()
    });
    let s = &stack;
    let post = |path: &str, key: Option<&'static str>, body: String| {
        let mut req = s
            .http
            .post(format!("{}{path}", s.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("x-goog-api-key", k);
        }
        async move { Reply::from(req.send().await.unwrap()).await }
    };
    let hi = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string();
    let path = |model: &str| format!("/v1beta/models/{model}:generateContent");
    // ext_authz: no key, a wrong key.
    assert_gemini_error(
        &post(&path("gemini-model"), None, hi.clone()).await,
        401,
        "UNAUTHENTICATED",
    );
    assert_gemini_error(
        &post(&path("gemini-model"), Some("tg-nope"), hi.clone()).await,
        401,
        "UNAUTHENTICATED",
    );
    // ext_proc: unknown model, a model the key may not use, bad JSON, unknown method.
    assert_gemini_error(
        &post(&path("nope"), Some(KEY_ALL), hi.clone()).await,
        404,
        "NOT_FOUND",
    );
    assert_gemini_error(
        &post(&path("gemini-model"), Some(KEY_LIMITED), hi.clone()).await,
        403,
        "PERMISSION_DENIED",
    );
    assert_gemini_error(
        &post(&path("gemini-model"), Some(KEY_ALL), "{nope".into()).await,
        400,
        "INVALID_ARGUMENT",
    );
    assert_gemini_error(
        &post(
            // A method Tollgate does not route (`:countTokens` is routed now).
            "/v1beta/models/gemini-model:generateAnswer",
            Some(KEY_ALL),
            hi.clone(),
        )
        .await,
        404,
        "NOT_FOUND",
    );
    // Something only Gemini can express, towards an OpenAI provider.
    let search = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"googleSearch": {}}]});
    assert_gemini_error(
        &post(&path("mock-model"), Some(KEY_ALL), search.to_string()).await,
        400,
        "INVALID_ARGUMENT",
    );
    // Providers' errors: Gemini's own, and OpenAI's and Anthropic's translated.
    for model in ["gemini-rate-limited", "rate-limited", "claude-rate-limited"] {
        assert_gemini_error(
            &post(&path(model), Some(KEY_ALL), hi.clone()).await,
            429,
            "RESOURCE_EXHAUSTED",
        );
    }
    let r = post(&path("html-error"), Some(KEY_ALL), hi.clone()).await;
    assert_gemini_error(&r, 502, "INTERNAL");
    // Envoy's own replies: the body limit (before ext_proc), a provider that is down.
    let big = json!({"contents": [{"role": "user", "parts": [{"text": "x".repeat(8000)}]}]});
    assert_gemini_error(
        &post(&path("gemini-model"), Some(KEY_ALL), big.to_string()).await,
        413,
        "INVALID_ARGUMENT",
    );
    let r = post(&path("dead-model"), Some(KEY_ALL), hi.clone()).await;
    assert_gemini_error(&r, 503, "UNAVAILABLE");
    // Every reply carries the request id.
    assert_eq!(r.header("x-tollgate-request-id").map(str::len), Some(32));

    // The other dialects' clients get a Gemini provider's errors in their own format.
    let r = s
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "gemini-rate-limited", "messages": [{"role": "user", "content": "x"}]})
                .to_string(),
        )
        .await;
    r.assert_openai_error(429, None);
}

/// A translated Gemini stream reaches an OpenAI client as the provider sends it, not at its end.
#[tokio::test]
async fn gemini_streams_flow_chunk_by_chunk() {
    let stack = Stack::start(StackOptions {
        chunk_delay_ms: 150,
        ..StackOptions::default()
    });
    let (first, total, body) = stack
        .stream_timed(
            "/v1/chat/completions",
            json!({"model": "gemini-model", "stream": true,
                "messages": [{"role": "user", "content": "one two three four"}]}),
        )
        .await;
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(
        total.saturating_sub(first).as_millis() >= 600,
        "first byte {first:?}, total {total:?}: the stream was buffered"
    );
    // And a Gemini client of an OpenAI provider, with the key in x-goog-api-key.
    let (first, total, text) = stack
        .send_timed(
            stack
                .http
                .post(format!(
                    "{}/v1beta/models/mock-model:streamGenerateContent?alt=sse",
                    stack.base
                ))
                .header("x-goog-api-key", KEY_ALL)
                .body(
                    json!({"contents": [{"role": "user", "parts": [{"text": "one two three four"}]}]})
                        .to_string(),
                ),
        )
        .await;
    assert!(
        total.saturating_sub(first).as_millis() >= 600,
        "first byte {first:?}, total {total:?}: the stream was buffered"
    );
    let last: Value = serde_json::from_str(
        text.trim_end()
            .rsplit("\n\n")
            .next()
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{text}");
    assert!(last["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > 0);
}

// ---------------------------------------------------------------------------------------------
// Vertex AI
// ---------------------------------------------------------------------------------------------

/// Polls until the background task got a token: the first request may come before it.
async fn wait_for_token(stack: &Stack) {
    for _ in 0..100 {
        let r = stack
            .post(
                "/v1/chat/completions",
                Some(KEY_ALL),
                json!({"model": "vertex-gemini", "messages": [{"role": "user", "content": "ping"}]})
                    .to_string(),
            )
            .await;
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 503, "{}", r.text);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no access token after 10 s:\n{}", stack.serve_log());
}

/// The service account's assertion was exchanged at the mock's token endpoint (which checks
/// its RS256 signature), and every Vertex request carried the token it issued.
fn assert_vertex_requests(seen: &[Value], publisher: &str) {
    let tokens: Vec<&Value> = seen.iter().filter(|r| r["path"] == "/token").collect();
    assert!(!tokens.is_empty(), "no token exchange: {seen:?}");
    let form = tokens[0]["body"].as_str().unwrap_or_default();
    assert!(
        form.starts_with(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=ey"
        ),
        "{form}"
    );
    let prefix =
        format!("/v1/projects/tollgate-test/locations/us-central1/publishers/{publisher}/models/");
    let calls: Vec<&Value> = seen
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .collect();
    assert!(calls.len() > 3, "{seen:?}");
    for r in calls {
        let auth = r["headers"]["authorization"].as_str().unwrap_or_default();
        assert!(auth.starts_with("Bearer ya29.mock-"), "{r}");
        assert!(r["headers"].get("x-goog-api-key").is_none(), "{r}");
    }
}

#[tokio::test]
async fn gemini_sdk_against_vertex_ai_gemini() {
    let stack = Stack::start(StackOptions {
        vertex: true,
        ..StackOptions::default()
    });
    wait_for_token(&stack).await;
    gemini_sdk(
        &stack,
        "vertex-gemini",
        "vertex-rate-limited",
        "vertex-stream-error",
        true,
    );
    assert_vertex_requests(&stack.upstream_requests().await, "google");
    // A service account the token endpoint does not trust never gets a token: its model
    // answers 503 in the client's format, and the gateway keeps retrying in the background.
    let r = stack
        .http
        .post(format!(
            "{}/v1beta/models/vertex-untrusted:generateContent",
            stack.base
        ))
        .header("x-goog-api-key", KEY_ALL)
        .body(json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string())
        .send()
        .await
        .unwrap();
    let r = Reply::from(r).await;
    assert_gemini_error(&r, 503, "UNAVAILABLE");
    assert!(stack.serve_log().contains("Could not get an access token"));
}

#[tokio::test]
async fn anthropic_and_openai_sdks_against_vertex_ai_claude() {
    let stack = Stack::start(StackOptions {
        vertex: true,
        ..StackOptions::default()
    });
    wait_for_token(&stack).await;
    run_sdk(
        "anthropic_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_CHAT_MODEL", "vertex-claude"),
            ("TOLLGATE_RATE_LIMITED_MODEL", "vertex-claude-rate-limited"),
            ("TOLLGATE_STREAM_ERROR_MODEL", "vertex-claude-stream-error"),
        ],
    );
    // The OpenAI SDK reaches Claude on Vertex too (translated, JSON mode through the tool).
    stack
        .openai_sdk_chat("vertex-claude", "vertex-claude-stream-error")
        .await;
    let seen = stack.upstream_requests().await;
    assert_vertex_requests(&seen, "anthropic");
    let mut streamed = 0;
    for r in seen.iter().filter(|r| {
        r["path"].as_str().is_some_and(|p| {
            // The SDK's `count_tokens` goes to Vertex's count endpoint, whose body names the
            // model (tests/e2e_edges.rs).
            p.contains("/publishers/anthropic/") && !p.ends_with("/count-tokens:rawPredict")
        })
    }) {
        // The mock refuses anything else; checked here too for the reader.
        assert!(r["body"].get("model").is_none(), "{r}");
        assert_eq!(r["body"]["anthropic_version"], "vertex-2023-10-16", "{r}");
        streamed += usize::from(r["path"].as_str().unwrap().ends_with(":streamRawPredict"));
    }
    assert!(streamed >= 2, "{streamed} streamed requests");
}
