//! End to end through real Envoy: passthrough routes `/passthrough/{provider}/…` forward any
//! path of a configured provider with the client's key swapped for the provider's credential
//! (static keys, SigV4 for Bedrock), refuse keys without a grant (403) and unknown providers
//! (404), enforce the model allow-list where the model is visible, pass streams through
//! untouched, and log (and price) what the response's usage says.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The grants: tenant `acme` (keys `all`, `limited`) may reach every provider; `limited` has
/// its own grant (Gemini only), which wins; `rate` (tenant `slow`) has none.
const GRANTS: &str = "passthrough:\n  tenants: { acme: ['*'] }\n  keys: { limited: [gemini] }\n";

/// USD per million tokens: input, output, cache read, cache write.
const PRICE: &str = "{ input: \"3\", output: \"15\", cache_read: \"0.3\", cache_write: \"3.75\" }";

/// A price for the Anthropic and Bedrock mocks' models, so usage is costed.
fn priced(yaml: String) -> String {
    let patched = yaml.replacen(
        "pricing:\n  models:\n",
        &format!("pricing:\n  models:\n    claude-upstream-model: {PRICE}\n    \"{BEDROCK_MODEL_ID}\": {PRICE}\n"),
        1,
    );
    assert_ne!(patched, yaml, "the base config's pricing section moved");
    patched
}

fn stack_options() -> StackOptions {
    StackOptions {
        extra_yaml: GRANTS.to_owned(),
        patch_config: Some(priced),
        ..Default::default()
    }
}

/// Every header value the mock saw, for "never reached the provider" checks.
fn all_header_values(seen: &[Value]) -> String {
    seen.iter()
        .map(|r| r["headers"].to_string() + &r["query"].to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many request bodies reached Tollgate's ext_proc so far.
async fn body_messages(stack: &Stack) -> u64 {
    stack
        .metrics()
        .await
        .lines()
        .find(|l| l.starts_with("tollgate_phase_duration_seconds_count{phase=\"request_body\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn last_to<'a>(seen: &'a [Value], suffix: &str) -> &'a Value {
    seen.iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no request to …{suffix} in {seen:?}"))
}

/// The passthrough events the logger stored, once `n` are there.
async fn passthrough_events(logger: &Logger, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events: Vec<Value> = logger
            .lines()
            .into_iter()
            .filter(|e| e["endpoint"] == "passthrough")
            .collect();
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn openai_paths_tollgate_has_no_endpoint_for_go_through_with_the_key_swapped() {
    let stack = Stack::start(stack_options());
    // `GET /files` (relative to the base URL) and `/openai/v1/files` (the SDK's own prefix)
    // reach the same upstream path.
    for path in [
        "/passthrough/compat/files?limit=2",
        "/passthrough/compat/openai/v1/files?limit=2",
    ] {
        stack.clear_upstream_requests().await;
        let r = stack.get(path, Some(KEY_ALL)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.json()["object"], "list");
        assert_eq!(r.header("x-tollgate-provider"), Some("compat"));
        let seen = stack.upstream_requests().await;
        let req = last_to(&seen, "/files");
        assert_eq!(req["method"], "GET");
        assert_eq!(req["path"], "/openai/v1/files");
        assert_eq!(req["query"], "limit=2");
        assert_eq!(
            req["headers"]["authorization"],
            format!("Bearer {COMPAT_SECRET}")
        );
        // The provider's own extra headers go along.
        assert_eq!(req["headers"]["x-provider-team"], "e2e");
        assert!(
            !all_header_values(&seen).contains(KEY_ALL),
            "client key upstream: {seen:?}"
        );
    }

    // A JSON body goes on as it came (whitespace and member order included).
    stack.clear_upstream_requests().await;
    let body = "{ \"input_file_id\":\"file-abc\",  \"endpoint\": \"/v1/chat/completions\", \"completion_window\":\"24h\" }";
    let r = stack
        .http
        .post(format!("{}/passthrough/compat/batches", stack.base))
        .bearer_auth(KEY_ALL)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let r = Reply::from(r).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["input_file_id"], "file-abc");
    // A JSON body is read (for its model), once.
    assert!(body_messages(&stack).await >= 1);
    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, "/batches");
    assert_eq!(req["body"], serde_json::from_str::<Value>(body).unwrap());
    assert_eq!(req["headers"]["content-length"], body.len().to_string());
    assert!(!all_header_values(&seen).contains(KEY_ALL));

    // A multipart upload (not JSON: it never visits Tollgate) arrives byte for byte.
    stack.clear_upstream_requests().await;
    let bodies_before = body_messages(&stack).await;
    let upload = "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{\"custom_id\":\"1\"}\n\r\n--XyZ--\r\n";
    let r = stack
        .http
        .post(format!("{}/passthrough/compat/files", stack.base))
        .bearer_auth(KEY_ALL)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(upload)
        .send()
        .await
        .unwrap();
    let r = Reply::from(r).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["bytes"], upload.len());
    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, "/files");
    assert_eq!(req["body"], upload);
    assert_eq!(
        body_messages(&stack).await,
        bodies_before,
        "the upload's body was sent to Tollgate"
    );
    assert_eq!(
        req["headers"]["authorization"],
        format!("Bearer {COMPAT_SECRET}")
    );
    assert!(!all_header_values(&seen).contains(KEY_ALL));

    // A key without a grant: 403; a provider that is not configured: 404; both in OpenAI's
    // error shape, and neither reaches a provider.
    stack.clear_upstream_requests().await;
    let r = stack.get("/passthrough/compat/files", Some(KEY_RATE)).await;
    r.assert_openai_error(403, Some("passthrough_not_allowed"));
    let r = stack.get("/passthrough/nope/files", Some(KEY_ALL)).await;
    r.assert_openai_error(404, Some("provider_not_found"));
    // The key's own grant (Gemini only) wins over its tenant's.
    let r = stack
        .get("/passthrough/compat/files", Some(KEY_LIMITED))
        .await;
    r.assert_openai_error(403, Some("passthrough_not_allowed"));
    // No key at all: refused by the gate as everywhere.
    let r = stack.get("/passthrough/compat/files", None).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(stack.upstream_requests().await.is_empty());
    assert!(!stack.serve_log().contains(COMPAT_SECRET));
}

#[tokio::test]
async fn anthropic_stream_passes_through_untouched_with_usage_logged_and_priced() {
    let logged = LoggedStack::ndjson_with(stack_options());
    let stack = &logged.stack;
    let body = json!({"model": "claude-upstream-model", "max_tokens": 30, "stream": true,
        "messages": [{"role": "user", "content": "hello there"}]})
    .to_string();
    let resp = stack
        .http
        .post(format!(
            "{}/passthrough/claude/messages?beta=true",
            stack.base
        ))
        .header("x-api-key", KEY_ALL)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: message_start"), "{text}");
    assert!(text.contains("event: message_stop"), "{text}");

    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, "/messages");
    assert_eq!(req["path"], "/v1/messages");
    assert_eq!(req["query"], "beta=true");
    assert_eq!(req["headers"]["x-api-key"], ANTHROPIC_SECRET);
    assert_eq!(req["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(req["body"], serde_json::from_str::<Value>(&body).unwrap());
    assert!(!all_header_values(&seen).contains(KEY_ALL));

    let events = passthrough_events(&logged.logger, 1).await;
    let e = events
        .last()
        .unwrap_or_else(|| panic!("no passthrough event"));
    assert_eq!(e["provider"], "claude");
    assert_eq!(e["passthrough_path"], "/v1/messages");
    assert_eq!(e["requested_model"], "claude-upstream-model");
    assert_eq!(e["http_status"], 200);
    assert_eq!(e["stream"], true);
    assert!(e["input_tokens"].as_u64().unwrap() > 0, "{e}");
    assert!(e["output_tokens"].as_u64().unwrap() > 0, "{e}");
    assert!(e["cost_picodollars"].as_u64().unwrap() > 0, "{e}");
    // The provider's credential appears in no log.
    let lines = serde_json::to_string(&logged.logger.lines()).unwrap();
    assert!(!lines.contains(ANTHROPIC_SECRET) && !lines.contains(KEY_ALL));
    assert!(!stack.serve_log().contains(ANTHROPIC_SECRET));
}

#[tokio::test]
async fn gemini_model_in_the_path_is_held_to_the_allow_list() {
    let stack = Stack::start(stack_options());
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string();
    // The key in Google's `?key=` goes no further than the gate.
    let r = stack
        .http
        .post(format!(
            "{}/passthrough/gemini/models/gemini-upstream-model:generateContent?key={KEY_ALL}",
            stack.base
        ))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let r = Reply::from(r).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json()["candidates"].is_array(), "{}", r.text);
    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, ":generateContent");
    assert_eq!(
        req["path"],
        "/v1beta/models/gemini-upstream-model:generateContent"
    );
    assert_eq!(req["headers"]["x-goog-api-key"], GEMINI_SECRET);
    assert!(!all_header_values(&seen).contains(KEY_ALL), "{seen:?}");

    // `limited` may use Gemini through passthrough, but not this model.
    stack.clear_upstream_requests().await;
    let r = stack
        .post(
            "/passthrough/gemini/models/gemini-upstream-model:generateContent",
            Some(KEY_LIMITED),
            body,
        )
        .await;
    r.assert_openai_error(403, Some("model_not_allowed"));
    assert!(stack.upstream_requests().await.is_empty());
}

#[tokio::test]
async fn bedrock_is_signed_over_the_forwarded_body() {
    let stack = Stack::start(stack_options());
    let model = BEDROCK_MODEL_ID.replace(':', "%3A");
    let body = json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"maxTokens": 20}})
    .to_string();
    let r = stack
        .post(
            &format!("/passthrough/bedrock/model/{model}/converse"),
            Some(KEY_ALL),
            body.clone(),
        )
        .await;
    // The mock answers 403 to a request whose signature it cannot verify.
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json()["usage"]["inputTokens"].is_u64(), "{}", r.text);
    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, "/converse");
    assert!(req["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential="));
    assert_eq!(req["body"], serde_json::from_str::<Value>(&body).unwrap());
    assert!(!all_header_values(&seen).contains(KEY_ALL));

    // The key in the model allow-list is the provider's model id, or a configured model that
    // maps to it on this provider.
    let r = stack
        .post(
            "/passthrough/bedrock/model/some-other-model/converse",
            Some(KEY_LIMITED),
            body,
        )
        .await;
    r.assert_openai_error(403, Some("passthrough_not_allowed"));
}

#[tokio::test]
async fn cache_control_reaches_anthropic_unchanged_and_bedrock_as_cache_points_priced() {
    let logged = LoggedStack::ndjson_with(stack_options());
    let stack = &logged.stack;
    let request = |model: &str| {
        json!({"model": model, "max_tokens": 30,
            "system": [{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {}},
                       "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Big document.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                {"type": "text", "text": "Question?"}]}]})
    };
    let send = |body: Value| async move {
        let r = stack
            .http
            .post(format!("{}/v1/messages", stack.base))
            .header("x-api-key", KEY_ALL)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        Reply::from(r).await
    };

    // To Anthropic: every `cache_control` as the client wrote it.
    let sent = request("claude-model");
    let r = send(sent.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = stack.upstream_requests().await;
    let got = &last_to(&seen, "/messages")["body"];
    for member in ["system", "tools", "messages"] {
        assert_eq!(got[member], sent[member], "{member}");
    }

    // To Bedrock: a `cachePoint` block after each marked block.
    let r = send(request("bedrock-model")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = stack.upstream_requests().await;
    let got = &last_to(&seen, "/converse")["body"];
    let point = json!({"cachePoint": {"type": "default"}});
    assert_eq!(got["system"], json!([{"text": "Long rules."}, point]));
    assert_eq!(
        got["messages"][0]["content"],
        json!([{"text": "Big document."}, point, {"text": "Question?"}])
    );
    assert_eq!(got["toolConfig"]["tools"][1], point);
    // The cache tokens come back in Anthropic's usage...
    let usage = &r.json()["usage"];
    assert_eq!(usage["cache_read_input_tokens"], 1000, "{usage}");
    assert_eq!(usage["cache_creation_input_tokens"], 300, "{usage}");

    // ... and are logged and priced at the cache prices.
    let deadline = Instant::now() + Duration::from_secs(15);
    let event = loop {
        let found = logged
            .logger
            .lines()
            .into_iter()
            .find(|e| e["provider"] == "bedrock" && e["endpoint"] == "messages");
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no Bedrock event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let n = |k: &str| event[k].as_u64().unwrap();
    assert_eq!(n("cache_read_tokens"), 1000, "{event}");
    assert_eq!(n("cache_write_tokens"), 300, "{event}");
    let uncached = n("input_tokens") - 1300;
    // Picodollars per token: USD per million × 10^6.
    let expected =
        uncached * 3_000_000 + 1000 * 300_000 + 300 * 3_750_000 + n("output_tokens") * 15_000_000;
    assert_eq!(n("cost_picodollars"), expected, "{event}");
}

/// Vertex AI through passthrough: the client's key never reaches Google; the request carries
/// an OAuth access token Tollgate got for its service account from the token endpoint (the
/// mock's, which verifies the signed assertion; its publisher routes accept only tokens it
/// issued, `ya29.mock-N`), and the usage of the answer (Gemini's `usageMetadata`, Claude's
/// `usage` through `rawPredict`) is read on the side into the log event.
#[tokio::test]
async fn vertex_passthrough_swaps_the_key_for_the_service_accounts_oauth_token() {
    let ls = LoggedStack::ndjson_with(StackOptions {
        vertex: true,
        ..stack_options()
    });
    let stack = &ls.stack;
    let path = "/passthrough/vertex/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-vertex-model:generateContent";
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello vertex"}]}]});
    let r = stack.post(path, Some(KEY_ALL), body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json()["candidates"][0]["content"]["parts"][0]["text"].is_string(),
        "{}",
        r.text
    );
    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, ":generateContent");
    assert_eq!(
        req["path"],
        "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-vertex-model:generateContent"
    );
    let auth = req["headers"]["authorization"].as_str().unwrap();
    assert!(auth.starts_with("Bearer ya29.mock-"), "{req}");
    assert!(
        !all_header_values(&seen).contains(KEY_ALL),
        "client key upstream: {seen:?}"
    );
    // Claude on Vertex (`rawPredict`, Anthropic's body with Vertex's `anthropic_version`):
    // the same token, Anthropic's usage read on the side.
    let claude = "/passthrough/vertex/projects/tollgate-test/locations/us-central1/publishers/anthropic/models/claude-vertex-model:rawPredict";
    let body = json!({"anthropic_version": "vertex-2023-10-16", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello claude on vertex"}]});
    let r = stack.post(claude, Some(KEY_ALL), body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["type"], "message", "{}", r.text);
    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, ":rawPredict");
    let auth = req["headers"]["authorization"].as_str().unwrap();
    assert!(auth.starts_with("Bearer ya29.mock-"), "{req}");
    assert!(
        !all_header_values(&seen).contains(KEY_ALL),
        "client key upstream: {seen:?}"
    );
    let events = passthrough_events(&ls.logger, 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!(e["http_status"], 200, "{e}");
        assert_eq!(e["provider"], "vertex", "{e}");
        assert!(e["input_tokens"].as_u64().unwrap() > 0, "{e}");
        assert!(e["output_tokens"].as_u64().unwrap() > 0, "{e}");
        assert!(!e.to_string().contains(KEY_ALL), "{e}");
    }
}

/// Azure OpenAI through passthrough: the deployment path and `api-version` go as the client
/// wrote them, the client's key is replaced by Azure's `api-key` header, and the usage of the
/// answer is read into the log event.
#[tokio::test]
async fn azure_passthrough_sends_the_api_key_header_on_the_deployment_path() {
    let ls = LoggedStack::ndjson_with(stack_options());
    let stack = &ls.stack;
    let path = "/passthrough/azure/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21";
    let body = json!({"messages": [{"role": "user", "content": "hello azure"}]});
    let r = stack.post(path, Some(KEY_ALL), body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["object"], "chat.completion", "{}", r.text);
    let seen = stack.upstream_requests().await;
    let req = last_to(&seen, "/chat/completions");
    assert_eq!(
        req["path"],
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(req["query"], "api-version=2024-10-21");
    assert_eq!(req["headers"]["api-key"], AZURE_SECRET, "{req}");
    assert!(req["headers"].get("authorization").is_none(), "{req}");
    assert!(
        !all_header_values(&seen).contains(KEY_ALL),
        "client key upstream: {seen:?}"
    );
    let events = passthrough_events(&ls.logger, 1).await;
    let e = &events[0];
    assert_eq!(e["http_status"], 200, "{e}");
    assert_eq!(e["provider"], "azure", "{e}");
    assert!(e["input_tokens"].as_u64().unwrap() > 0, "{e}");
    assert!(e["output_tokens"].as_u64().unwrap() > 0, "{e}");
}
