//! End to end through real Envoy, with the official SDKs (`tests/sdk/fidelity_sdk.py`): what
//! real clients tripped on across the client × provider grid (issue 13). Anthropic clients see
//! reasoning usage from every backend that reports it and several tool calls as sequential
//! blocks from every provider; Gemini's `thoughtSignature` survives a round trip through
//! OpenAI and Anthropic clients (the mock Gemini refuses a call without the signature it
//! issued, as Gemini 3 does) and never reaches another provider when the client switches
//! models mid-conversation (the mock OpenAI refuses ids over 40 characters, the mock Bedrock
//! over 64); structurally invalid requests get a 400 in the client's dialect on every
//! translated path, and never reach a provider.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

fn fidelity_sdk(stack: &Stack, models: &str, reasoning: &str, gemini: &str, others: &str) {
    run_sdk(
        "fidelity_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_MODELS", models),
            ("TOLLGATE_REASONING_MODELS", reasoning),
            ("TOLLGATE_GEMINI_MODELS", gemini),
            ("TOLLGATE_OTHER_MODELS", others),
        ],
    );
}

/// Every model turn's first call in the Gemini requests: (path, its part).
fn gemini_calls(seen: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for r in seen {
        let path = r["path"].as_str().unwrap_or_default();
        if !path.contains("enerateContent") {
            continue;
        }
        for turn in r["body"]["contents"].as_array().into_iter().flatten() {
            if turn["role"] != "model" {
                continue;
            }
            if let Some(p) = turn["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p.get("functionCall").is_some())
            {
                out.push((path.to_owned(), p.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn anthropic_sdk_gets_sequential_tool_blocks_and_thinking_tokens_from_every_provider() {
    let stack = Stack::start(StackOptions::default());
    fidelity_sdk(
        &stack,
        "mock-model,compat-model,azure-model,claude-model,gemini-model,bedrock-model",
        "mock-model,compat-model,azure-model,gemini-model",
        "",
        "",
    );
    // Each provider kind was asked, and the OpenAI family with a reasoning effort.
    let seen = stack.posted().await;
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    for want in [
        "/v1/chat/completions",
        "/v1/messages",
        "generateContent",
        "/converse",
    ] {
        assert!(paths.iter().any(|p| p.contains(want)), "{want}: {paths:?}");
    }
    assert!(
        seen.iter()
            .any(|r| r["body"]["reasoning_effort"].is_string()),
        "no reasoning_effort upstream"
    );
}

#[tokio::test]
async fn gemini_signatures_round_trip_through_openai_and_anthropic_sdks() {
    let stack = Stack::start(StackOptions::default());
    fidelity_sdk(
        &stack,
        "",
        "",
        "gemini-model",
        "mock-model,compat-model,azure-model,claude-model,bedrock-model",
    );
    let seen = stack.posted().await;
    // Every history sent to Gemini carried a signature on its call (the mock checks it is the
    // one it issued); no other provider saw the encoding.
    let calls = gemini_calls(&seen);
    assert!(calls.len() >= 6, "{calls:?}");
    for (path, part) in &calls {
        assert!(part["thoughtSignature"].is_string(), "{path}: {part}");
    }
    let mut others = 0;
    for r in seen
        .iter()
        .filter(|r| !r["path"].as_str().unwrap().contains("enerateContent"))
    {
        let body = r["body"].to_string();
        assert!(!body.contains("_tgsig"), "{}: {body}", r["path"]);
        others += usize::from(body.contains("tool"));
    }
    assert!(others >= 16, "{others} switched requests");
}

#[tokio::test]
async fn vertex_gemini_and_claude_keep_the_same_fidelity() {
    let stack = Stack::start(StackOptions {
        vertex: true,
        ..StackOptions::default()
    });
    // The background task needs its first token before Vertex models answer.
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
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    fidelity_sdk(
        &stack,
        "vertex-gemini,vertex-claude",
        "vertex-gemini",
        "vertex-gemini",
        "vertex-claude,mock-model",
    );
    let calls = gemini_calls(&stack.posted().await);
    assert!(calls.iter().all(|(_, p)| p["thoughtSignature"].is_string()));
    assert!(calls
        .iter()
        .any(|(path, _)| path.contains("/publishers/google/")));
}

/// On every translated path, a request of the wrong shape gets a 400 in the client's own
/// dialect and is not sent on.
#[tokio::test]
async fn structurally_invalid_requests_get_a_400_in_the_clients_dialect() {
    let stack = Stack::start(StackOptions::default());
    let s = &stack;
    s.clear_upstream_requests().await;
    let openai_bad = [
        json!({"messages": [null]}),
        json!({"messages": []}),
        json!({"messages": [{"role": "wizard", "content": "x"}]}),
        json!({"messages": [{"role": "user", "content": 5}]}),
        json!({"messages": [{"role": "user"}]}),
        json!({"messages": [{"role": "user", "content": "x"}], "tools": "x"}),
        json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
    ];
    for model in ["claude-model", "gemini-model", "bedrock-model"] {
        for bad in &openai_bad {
            let mut body = bad.clone();
            body["model"] = model.into();
            let r = s
                .post("/v1/chat/completions", Some(KEY_ALL), body.to_string())
                .await;
            let v = r.assert_openai_error(400, None);
            assert!(!r.text.contains("Wire"), "{model} {body}: {v}");
        }
    }
    let anthropic_bad = [
        json!({"messages": [null]}),
        json!({"messages": []}),
        json!({"messages": [{"role": "system", "content": "x"}]}),
        json!({"messages": [{"role": "user", "content": 5}]}),
        json!({"messages": [{"role": "user", "content": "x"}], "tools": "x"}),
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}),
    ];
    for model in ["mock-model", "gemini-model", "bedrock-model"] {
        for bad in &anthropic_bad {
            let mut body = bad.clone();
            body["model"] = model.into();
            if body.get("max_tokens").is_none() {
                body["max_tokens"] = 10.into();
            }
            let r = s
                .post("/v1/messages", Some(KEY_ALL), body.to_string())
                .await;
            assert_eq!(r.status, 400, "{model} {body}: {}", r.text);
            let v = r.json();
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        }
    }
    let gemini_bad = [
        json!({"contents": [null]}),
        json!({"contents": []}),
        json!({"contents": [{"role": "wizard", "parts": [{"text": "x"}]}]}),
        json!({"contents": [{"role": "user", "parts": "x"}]}),
        json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "tools": "x"}),
    ];
    for model in ["mock-model", "claude-model", "bedrock-model"] {
        for bad in &gemini_bad {
            let r = Reply::from(
                s.http
                    .post(format!("{}/v1beta/models/{model}:generateContent", s.base))
                    .header("x-goog-api-key", KEY_ALL)
                    .header("content-type", "application/json")
                    .body(bad.to_string())
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 400, "{model} {bad}: {}", r.text);
            let v = r.json();
            assert_eq!(v["error"]["code"], 400, "{v}");
            assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
        }
    }
    let sent = s.posted().await;
    assert!(
        sent.is_empty(),
        "invalid requests reached a provider: {sent:?}"
    );
}
