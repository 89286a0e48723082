//! End to end through real Envoy, at the edges of the API surface: `POST
//! /v1/messages/count_tokens` answered by each provider's own counting API (estimated, and
//! marked so, only where none exists), Gemini clients' `?key=` query key (accepted, then gone
//! before anything else sees it), and the `x-ratelimit-*` headers of a 429 from every kind of
//! per-minute limit. Run in both auth shapes (`TOLLGATE_E2E_AUTH=ext_authz` too).

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The count the mock's counting APIs give the prompt of [`count_body`]: one token per word
/// of its texts (3 of the system prompt, 6 of the message) plus the mock's overhead of 1000,
/// a number Tollgate's own estimate never gives for it.
const MOCK_COUNT: u64 = 1009;

fn count_body(model: &str) -> String {
    json!({
        "model": model,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "count these six words right here"}],
    })
    .to_string()
}

/// The mock's records of requests whose path ends with `suffix`.
async fn seen(stack: &Stack, suffix: &str) -> Vec<Value> {
    stack
        .posted()
        .await
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap().ends_with(suffix))
        .collect()
}

async fn wait_lines(logger: &Logger, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let lines = logger.lines();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} of {n} events logged: {lines:?}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every provider that can count answers the count itself, through its own API and request
/// shape; the answer is Anthropic's `{"input_tokens": n}` marked `provider`. Providers without
/// a counting API get Tollgate's estimate, marked `estimate`, and see nothing. A count
/// reserves no budget (a key whose budget cannot take one Messages request still counts) and
/// is logged with no tokens and no cost.
#[tokio::test]
async fn count_tokens_asks_the_providers_counting_api_and_marks_estimates() {
    let data = tempfile::tempdir().unwrap();
    let logger = Logger::start(ANY_PORT, &data.path().join("data"), data.path());
    let stack = Stack::start(StackOptions {
        vertex: true,
        logger: Some(logger.addr.clone()),
        // Priced, and a budget far below one reservation of a Messages request.
        extra_yaml: "budgets:\n  limits:\n    - { id: tiny, scope: tenant, name: acme, period: monthly, amount_usd: \"0.0000001\" }\n".to_owned(),
        patch_config: Some(|y| {
            y.replacen(
                "pricing:\n  models:\n",
                "pricing:\n  models:\n    claude-upstream-model: { input: \"3\", output: \"15\" }\n",
                1,
            )
        }),
        ..Default::default()
    });
    // The budget refuses a real request: a count that reserved would be refused too.
    let refused = stack
        .post(
            "/v1/messages",
            Some(KEY_ALL),
            json!({"model": "claude-model", "max_tokens": 100,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .await;
    assert_eq!(refused.status, 429, "{}", refused.text);

    // (public model, the path its provider's counting API has on the mock)
    let counted = [
        ("claude-model", "/v1/messages/count_tokens"),
        (
            "vertex-claude",
            "/v1/projects/tollgate-test/locations/us-central1/publishers/anthropic/models/count-tokens:rawPredict",
        ),
        (
            "vertex-gemini",
            "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-vertex-model:countTokens",
        ),
        ("gemini-model", "/v1beta/models/gemini-upstream-model:countTokens"),
        ("bedrock-model", "/count-tokens"),
    ];
    for (model, path) in counted {
        let r = stack
            .post(
                "/v1/messages/count_tokens",
                Some(KEY_ALL),
                count_body(model),
            )
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert_eq!(r.json(), json!({"input_tokens": MOCK_COUNT}), "{model}");
        assert_eq!(
            r.header("x-tollgate-token-count"),
            Some("provider"),
            "{model}"
        );
        assert!(r.header("x-tollgate-request-id").is_some(), "{model}");
        let calls = seen(&stack, path).await;
        assert_eq!(calls.len(), 1, "{model}: {calls:?}");
    }
    // Each in its provider's own shape and credential.
    let anthropic = &seen(&stack, "/v1/messages/count_tokens").await[0];
    assert_eq!(anthropic["headers"]["x-api-key"], ANTHROPIC_SECRET);
    assert_eq!(anthropic["body"]["model"], "claude-upstream-model");
    assert!(anthropic["headers"]["anthropic-version"].is_string());
    assert!(
        anthropic["headers"].get("authorization").is_none(),
        "{anthropic}"
    );
    let vertex_claude = &seen(&stack, "count-tokens:rawPredict").await[0];
    assert_eq!(vertex_claude["body"]["model"], "claude-vertex-model");
    assert!(vertex_claude["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer ya29.mock-"));
    let vertex_gemini = &seen(&stack, "gemini-vertex-model:countTokens").await[0];
    assert!(
        vertex_gemini["body"]["contents"].is_array(),
        "{vertex_gemini}"
    );
    let gemini = &seen(&stack, "gemini-upstream-model:countTokens").await[0];
    assert_eq!(gemini["headers"]["x-goog-api-key"], GEMINI_SECRET);
    assert_eq!(
        gemini["body"]["generateContentRequest"]["model"],
        "models/gemini-upstream-model"
    );
    let bedrock = &seen(&stack, "/count-tokens").await[0];
    assert!(
        bedrock["path"]
            .as_str()
            .unwrap()
            .starts_with("/model/anthropic.claude-3-5-sonnet"),
        "{bedrock}"
    );
    assert!(bedrock["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256"));
    assert!(
        bedrock["body"]["input"]["converse"]["messages"].is_array(),
        "{bedrock}"
    );
    assert!(
        bedrock["body"]["input"]["converse"]["system"].is_array(),
        "{bedrock}"
    );

    // No counting API: an OpenAI-family model, a Bedrock model CountTokens refuses.
    let before = stack.posted().await.len();
    for model in ["mock-model", "bedrock-rate-limited"] {
        let r = stack
            .post(
                "/v1/messages/count_tokens",
                Some(KEY_ALL),
                count_body(model),
            )
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert_eq!(
            r.header("x-tollgate-token-count"),
            Some("estimate"),
            "{model}"
        );
        let n = r.json()["input_tokens"].as_u64().unwrap();
        assert!(n > 0 && n != MOCK_COUNT, "{model}: {n}");
    }
    assert_eq!(
        stack.posted().await.len(),
        before,
        "an estimate went upstream"
    );

    // The provider's refusal reaches the client in Anthropic's format: Anthropic's own
    // (a member its count endpoint does not take), and Bedrock's (a bad signature).
    let r = stack
        .post(
            "/v1/messages/count_tokens",
            Some(KEY_ALL),
            json!({"model": "claude-model", "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["type"], "error", "{}", r.text);
    assert_eq!(
        r.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        r.text
    );
    assert_eq!(r.header("x-tollgate-token-count"), None);
    let r = stack
        .post(
            "/v1/messages/count_tokens",
            Some(KEY_ALL),
            count_body("bedrock-wrong-secret"),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["type"], "error", "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "permission_error", "{}", r.text);

    // The official SDK's `messages.count_tokens` gets the provider's number.
    run_sdk(
        "count_tokens_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", stack.base.as_str()),
            ("TOLLGATE_KEY", KEY_ALL),
            ("COUNT_MODEL", "claude-model"),
            ("EXPECTED_TOKENS", &MOCK_COUNT.to_string()),
        ],
    );

    // Logged (the refused Messages request, 5 + 2 counts, 2 refused counts, the SDK's),
    // without tokens or cost.
    let lines = wait_lines(&logger, 11).await;
    let counts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["endpoint"] == "count_tokens")
        .collect();
    assert_eq!(counts.len(), 10, "{lines:?}");
    let forwarded = counts.iter().filter(|l| l["provider"] == "claude").count();
    assert_eq!(forwarded, 3, "{counts:?}");
    for l in &counts {
        assert_eq!(l["input_tokens"], 0, "{l}");
        assert_eq!(l["output_tokens"], 0, "{l}");
        assert_eq!(l["cost_picodollars"], 0, "{l}");
    }
    // And nothing was charged: the budget still refuses exactly as before, no spend.
    let usage = stack.get("/v1/usage", Some(KEY_ALL)).await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    for row in usage.json()["data"].as_array().unwrap() {
        let spent = row["spent_usd"].as_str().unwrap();
        assert!(
            spent.trim_start_matches(['0', '.']).is_empty(),
            "{}",
            usage.text
        );
    }
}

/// Gemini clients may send the key as `?key=…` (Google's REST examples do): accepted like
/// `x-goog-api-key`, removed before the request goes on (the provider, `serve`'s log and the
/// log events never see it), and a wrong one gets Gemini's error.
#[tokio::test]
async fn gemini_clients_may_send_the_key_in_the_query_string() {
    let data = tempfile::tempdir().unwrap();
    let logger = Logger::start(ANY_PORT, &data.path().join("data"), data.path());
    let stack = Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        ..Default::default()
    });
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]});
    let post = |path: String| {
        let http = stack.http.clone();
        let url = format!("{}{path}", stack.base);
        let body = body.to_string();
        async move {
            Reply::from(
                http.post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let r = post(format!(
        "/v1beta/models/gemini-model:generateContent?key={KEY_ALL}"
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json()["candidates"].is_array(), "{}", r.text);
    // Other query members stay; the stream is Gemini's SSE.
    let r = post(format!(
        "/v1beta/models/gemini-model:streamGenerateContent?alt=sse&key={KEY_ALL}"
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("data: {"), "{}", r.text);
    // Against an OpenAI-family backend too (translated), and the model list.
    let r = post(format!(
        "/v1beta/models/mock-model:generateContent?key={KEY_ALL}&foo=bar"
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let models = stack
        .http
        .get(format!("{}/v1beta/models?key={KEY_ALL}", stack.base))
        .send()
        .await
        .unwrap();
    let models = Reply::from(models).await;
    assert_eq!(models.status, 200, "{}", models.text);
    assert!(models.json()["models"].is_array(), "{}", models.text);

    // A wrong key in the query: Gemini's 401, and nothing upstream.
    let before = stack.posted().await.len();
    let r = post("/v1beta/models/gemini-model:generateContent?key=tg-not-a-key".to_owned()).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], 401, "{v}");
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED", "{v}");
    assert!(!r.text.contains("tg-not-a-key"), "{}", r.text);
    assert_eq!(stack.posted().await.len(), before);

    // The key went nowhere past the gate.
    let upstream = serde_json::to_string(&stack.upstream_requests().await).unwrap();
    assert!(
        !upstream.contains(KEY_ALL),
        "the provider saw the key: {upstream}"
    );
    let lines = wait_lines(&logger, 4).await;
    let events = serde_json::to_string(&lines).unwrap();
    assert!(
        !events.contains(KEY_ALL),
        "a log event holds the key: {events}"
    );
    assert!(!events.contains("tg-not-a-key"), "{events}");
    for p in &stack.procs {
        let log = p.log();
        assert!(!log.contains(KEY_ALL), "{}'s log holds the key", p.name);
        assert!(
            !log.contains("tg-not-a-key"),
            "{}'s log holds the key",
            p.name
        );
    }
}

/// A 429 from a per-minute limit carries the `x-ratelimit-*` headers every other response of
/// a limited key carries, `x-ratelimit-reset-*` included: request limits of a key and of a
/// tenant, token limits of a key and of a tenant, and the other kind's headers alongside
/// when the key has both.
#[tokio::test]
async fn rate_limit_refusals_carry_the_reset_headers_of_every_limit_kind() {
    const KEY_TOKENS: &str = "tg-e2e-edges-key-tokens";
    const KEY_TENANT_TOKENS: &str = "tg-e2e-edges-tenant-tokens";
    const KEY_BOTH: &str = "tg-e2e-edges-both";
    let stack = Stack::start(StackOptions {
        extra_yaml:
            "tenants:\n  acme: { requests_per_minute: 1 }\n  tt: { tokens_per_minute: 5 }\n"
                .to_owned(),
        patch_config: Some(|y| {
            let keys = format!(
                "keys:\n  - {{ id: key-tokens, hash: \"{}\", models: [\"*\"], tokens_per_minute: 5, requests_per_minute: 100 }}\n  - {{ id: tenant-tokens, hash: \"{}\", tenant: tt, models: [\"*\"] }}\n  - {{ id: both, hash: \"{}\", models: [\"*\"], requests_per_minute: 1, tokens_per_minute: 1000 }}\n",
                hash(KEY_TOKENS),
                hash(KEY_TENANT_TOKENS),
                hash(KEY_BOTH)
            );
            y.replacen("keys:\n", &keys, 1)
        }),
        ..Default::default()
    });
    let chat = json!({"model": "mock-model", "messages": [{"role": "user", "content": "one two three four five"}]}).to_string();
    let send = |key: &'static str| stack.post("/v1/chat/completions", Some(key), chat.clone());
    // Admitted until the limit is used up; the refusal's headers.
    let refused = |key: &'static str, admitted: usize| {
        let send = &send;
        async move {
            for _ in 0..admitted {
                let r = send(key).await;
                assert_eq!(r.status, 200, "{key}: {}", r.text);
                // Tokens are charged when the request ends.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let r = send(key).await;
            r.assert_openai_error(429, Some("rate_limit_exceeded"));
            assert!(r.header("retry-after").is_some(), "{key}");
            r
        }
    };
    let reset = |r: &Reply, unit: &str| {
        let v = r
            .header(&format!("x-ratelimit-reset-{unit}"))
            .unwrap_or_else(|| panic!("no x-ratelimit-reset-{unit}: {:?}", r.headers));
        assert!(v.ends_with('s'), "{v}");
        assert_eq!(
            r.header(&format!("x-ratelimit-remaining-{unit}")),
            Some("0"),
            "{:?}",
            r.headers
        );
    };

    // The key's request limit (2 a minute).
    let r = refused(KEY_RATE, 2).await;
    reset(&r, "requests");
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    // The tenant's request limit (acme: 1 a minute, `all` is acme's).
    let r = refused(KEY_ALL, 1).await;
    reset(&r, "requests");
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("1"));
    // The key's token limit (5 a minute, one request uses more): the request headers too.
    let r = refused(KEY_TOKENS, 1).await;
    reset(&r, "tokens");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("5"));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("100"));
    assert!(r.header("x-ratelimit-reset-requests").is_some());
    // The tenant's token limit.
    let r = refused(KEY_TENANT_TOKENS, 1).await;
    reset(&r, "tokens");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("5"));
    // A request-limit refusal of a key with a token limit too: the token headers alongside.
    let r = refused(KEY_BOTH, 1).await;
    reset(&r, "requests");
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("1000"));
    assert!(r.header("x-ratelimit-remaining-tokens").is_some());
    assert!(r.header("x-ratelimit-reset-tokens").is_some());
}
