//! End to end through real Envoy to an AWS Bedrock backend (the mock's Converse API, which
//! verifies every request's SigV4 signature with the known test secret): the official `openai`
//! and `anthropic` SDKs (text, streams, tool calls, errors), and what the provider and the
//! clients see on the wire. docs/COMPATIBILITY.md names these tests.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

/// Every request the mock saw went to a Converse path of the encoded model id (or, for the
/// Anthropic SDK's `count_tokens`, its `CountTokens` path), signed.
fn assert_signed_converse_requests(seen: &[Value]) {
    for req in seen {
        let path = req["path"].as_str().unwrap();
        assert!(path.starts_with("/model/"), "{req}");
        assert!(
            path.ends_with("/converse")
                || path.ends_with("/converse-stream")
                || path.ends_with("/count-tokens"),
            "{req}"
        );
        let auth = req["headers"]["authorization"].as_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTOLLGATEMOCK/"),
            "{req}"
        );
        assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{req}");
        assert_eq!(req["headers"]["x-amz-security-token"], AWS_SESSION_TOKEN);
        assert!(req["body"].get("model").is_none(), "{req}");
        assert!(
            !req.to_string().contains(KEY_ALL),
            "client key reached the provider"
        );
    }
}

#[tokio::test]
async fn openai_sdk_against_a_bedrock_backend() {
    let stack = Stack::start(StackOptions::default());
    let seen = stack
        .openai_sdk_chat("bedrock-model", "bedrock-stream-error")
        .await;
    assert_signed_converse_requests(&seen);
    // The model id is one encoded path segment (`:` → `%3A`), for both operations.
    let encoded = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
    assert!(seen.iter().any(|r| r["path"] == encoded));
    assert!(seen
        .iter()
        .any(|r| r["path"] == format!("{encoded}-stream")));
    // Usage reached the metrics.
    let m = stack.metrics().await;
    assert!(
        m.lines().any(|l| l.starts_with("tollgate_tokens_total{")
            && l.contains("provider=\"bedrock\"")
            && l.contains("kind=\"output\"")),
        "{m}"
    );
}

#[tokio::test]
async fn anthropic_sdk_against_a_bedrock_backend() {
    let stack = Stack::start(StackOptions::default());
    let seen = stack
        .anthropic_sdk(
            "bedrock-model",
            "bedrock-rate-limited",
            "bedrock-stream-error",
        )
        .await;
    assert_signed_converse_requests(&seen);
    for req in &seen {
        for h in ["anthropic-version", "anthropic-beta", "x-api-key"] {
            assert!(req["headers"].get(h).is_none(), "{h}: {req}");
        }
    }
}

#[tokio::test]
async fn bedrock_requests_responses_and_errors_on_the_wire() {
    let stack = Stack::start(StackOptions::default());
    let s = &stack;
    s.clear_upstream_requests().await;
    // A translated request: system, inference config, no model in the body.
    let r = s
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "bedrock-model", "max_tokens": 50, "temperature": 0.2,
                "messages": [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi bedrock"}]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], BEDROCK_MODEL_ID);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock reply to: hi bedrock"
    );
    let seen = s.upstream_requests().await;
    let req = seen.last().unwrap();
    assert_eq!(
        req["body"],
        json!({"messages": [{"role": "user", "content": [{"text": "hi bedrock"}]}],
            "system": [{"text": "be brief"}],
            "inferenceConfig": {"maxTokens": 50, "temperature": 0.2}})
    );
    assert_eq!(req["headers"]["content-type"], "application/json");
    // The signed body is the body received: its length and hash match.
    assert_eq!(
        req["headers"]["content-length"]
            .as_str()
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        req["body"].to_string().len(),
    );
    assert!(req["headers"].get("accept-encoding").is_none(), "{req}");

    // A stream reaches the client as SSE, whatever Bedrock's binary framing.
    let resp = s
        .http
        .post(format!("{}/v1/messages", s.base))
        .header("x-api-key", KEY_ALL)
        .header("anthropic-version", "2023-06-01")
        .body(
            json!({"model": "bedrock-model", "max_tokens": 50, "stream": true,
                "messages": [{"role": "user", "content": "stream please"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.contains("\"text\":\" please\""), "{text}");
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    // A provider whose secret is wrong: the mock's signature check refuses it, in each
    // client's dialect.
    let wrong = json!({"model": "bedrock-wrong-secret", "max_tokens": 10,
        "messages": [{"role": "user", "content": "x"}]})
    .to_string();
    let v = s
        .post("/v1/chat/completions", Some(KEY_ALL), wrong.clone())
        .await
        .assert_openai_error(403, None);
    assert_eq!(v["error"]["type"], "InvalidSignatureException");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("signature we calculated does not match"));
    let r = s.post("/v1/messages", Some(KEY_ALL), wrong).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "permission_error");
    // Throttling: 429 with Bedrock's message.
    let v = s
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            r#"{"model":"bedrock-rate-limited","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await
        .assert_openai_error(429, None);
    assert_eq!(v["error"]["type"], "ThrottlingException");
    // Embeddings of a chat model (Bedrock embeds with Titan models only), and images Converse
    // cannot fetch.
    s.post(
        "/v1/embeddings",
        Some(KEY_ALL),
        r#"{"model":"bedrock-model","input":"x"}"#,
    )
    .await
    .assert_openai_error(400, Some("invalid_value"));
    s.post(
        "/v1/chat/completions",
        Some(KEY_ALL),
        json!({"model": "bedrock-model", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]})
        .to_string(),
    )
    .await
    .assert_openai_error(400, None);
}

#[tokio::test]
async fn bedrock_streams_flow_chunk_by_chunk() {
    let stack = Stack::start(StackOptions {
        chunk_delay_ms: 100,
        ..Default::default()
    });
    let prompt = "one two three four five six seven eight";
    // OpenAI client: 11 words + start/stop/metadata events, 100 ms apart.
    let (first, total, text) = stack
        .stream_timed(
            "/v1/chat/completions",
            json!({"model": "bedrock-model", "stream": true,
            "messages": [{"role": "user", "content": prompt}]}),
        )
        .await;
    assert!(total >= std::time::Duration::from_millis(1000), "{total:?}");
    assert!(first < total / 3, "first byte at {first:?} of {total:?}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
