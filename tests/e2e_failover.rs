//! End to end through real Envoy: per-attempt failover inside Envoy's retries. A model's
//! chain crosses dialects (OpenAI → Anthropic → Gemini → Bedrock on the mock, each made to
//! fail by its magic model id), a refused connection and a slow first byte move on to the next
//! target, the answer is read (and named) as the target that gave it, complete and streamed,
//! a stream that has started is never retried, and a model without failover is unchanged.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Failover models over the base config's providers (all on the mock, `down` refusing).
fn failover_models(yaml: String) -> String {
    let bedrock = yaml
        .split("bedrock-model:\n    targets: [{ provider: bedrock, model: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let mock = yaml
        .split("base_url: \"http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .to_owned();
    let patched = yaml.replacen(
        "\nmodels:\n",
        &format!(
            r#"
  slow:
    kind: openai
    base_url: "http://{mock}/v1"
    headers: {{ x-mock-latency-ms: "1500" }}
models:
  fo-dialects:
    strategy: priority
    failover: {{ max_attempts: 4 }}
    targets:
      - {{ provider: mock, model: mock-error-500 }}
      - {{ provider: claude, model: mock-error-503 }}
      - {{ provider: gemini, model: mock-error-500 }}
      - {{ provider: bedrock, model: "{bedrock}" }}
  fo-to-openai:
    strategy: priority
    failover: {{}}
    targets:
      - {{ provider: gemini, model: mock-error-503 }}
      - {{ provider: claude, model: mock-error-500 }}
      - {{ provider: mock, model: mock-model }}
  fo-refused:
    strategy: priority
    failover: {{}}
    targets: [{{ provider: down, model: whatever }}, {{ provider: claude, model: claude-upstream-model }}]
  fo-slow:
    strategy: priority
    failover: {{ per_try_timeout_ms: 300 }}
    targets: [{{ provider: slow, model: mock-model }}, {{ provider: gemini, model: gemini-upstream-model }}]
  fo-stream-error:
    strategy: priority
    failover: {{}}
    targets: [{{ provider: mock, model: mock-stream-error }}, {{ provider: claude, model: claude-upstream-model }}]
  fo-two-attempts:
    strategy: priority
    failover: {{ max_attempts: 2 }}
    targets:
      - {{ provider: mock, model: mock-error-500 }}
      - {{ provider: claude, model: mock-error-503 }}
      - {{ provider: gemini, model: gemini-upstream-model }}
  fo-off:
    strategy: priority
    failover: off
    targets: [{{ provider: mock, model: mock-error-500 }}, {{ provider: claude, model: claude-upstream-model }}]
  fo-eject:
    strategy: priority
    failover: {{}}
    ejection: {{ consecutive_failures: 2, base_ms: 60000 }}
    targets: [{{ provider: mock, model: mock-error-500 }}, {{ provider: claude, model: claude-upstream-model }}]
  fo-deadline:
    strategy: priority
    failover: {{ timeout_ms: 800 }}
    targets: [{{ provider: slow, model: mock-model }}, {{ provider: slow, model: mock-model-b }}]
  fo-budget:
    strategy: priority
    failover: {{}}
    targets: [{{ provider: mock, model: mock-error-500 }}, {{ provider: claude, model: claude-upstream-model }}]
  fo-one-try:
    strategy: priority
    failover: {{ on: ["5xx"] }}
    targets: [{{ provider: mock, model: mock-error-429 }}, {{ provider: claude, model: claude-upstream-model }}]
"#
        ),
        1,
    );
    assert_ne!(patched, yaml);
    patched
}

fn options() -> StackOptions {
    StackOptions {
        patch_config: Some(failover_models),
        ..Default::default()
    }
}

async fn chat(stack: &Stack, model: &str, stream: bool) -> Reply {
    let resp = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_ALL)
        .header("content-type", "application/json")
        .body(
            json!({"model": model, "max_tokens": 20, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    Reply::from(resp).await
}

/// The paths the mock received since `since` requests, in order.
async fn paths_since(stack: &Stack, since: usize) -> Vec<String> {
    stack
        .upstream_requests()
        .await
        .iter()
        .skip(since)
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_request_fails_over_across_dialects_complete_and_streamed() {
    let logged = LoggedStack::ndjson_with(options());
    let (stack, logger) = (&logged.stack, &logged.logger);

    // Complete: OpenAI 500 → Anthropic 503 → Gemini 500 → Bedrock answers, in OpenAI's shape.
    let before = stack.upstream_requests().await.len();
    let r = chat(stack, "fo-dialects", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("x-tollgate-provider"),
        Some("bedrock"),
        "{:?}",
        r.headers
    );
    assert!(r.header("x-tollgate-answer").is_none(), "{:?}", r.headers);
    let body = r.json();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{body}"
    );
    let paths = paths_since(stack, before).await;
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert_eq!(paths[0], "/v1/chat/completions", "{paths:?}");
    assert_eq!(paths[1], "/v1/messages", "{paths:?}");
    assert!(paths[2].contains(":generateContent"), "{paths:?}");
    assert!(paths[3].contains("/converse"), "{paths:?}");
    // Each attempt carried its own target's model id and credential, and nothing internal.
    let reqs = stack.upstream_requests().await;
    let attempts: Vec<&serde_json::Value> = reqs.iter().skip(before).collect();
    assert_eq!(
        attempts[0]["body"]["model"], "mock-error-500",
        "{}",
        attempts[0]
    );
    assert_eq!(
        attempts[1]["body"]["model"], "mock-error-503",
        "{}",
        attempts[1]
    );
    // Envoy shares the request headers between attempts: the Gemini attempt carries no
    // Anthropic credential, the Bedrock one neither nor Gemini's, and the last one nothing
    // internal.
    let headers = |i: usize| attempts[i]["headers"].to_string().to_lowercase();
    assert!(headers(1).contains("\"x-api-key\""), "{}", headers(1));
    assert!(headers(2).contains("\"x-goog-api-key\""), "{}", headers(2));
    assert!(!headers(2).contains("\"x-api-key\""), "{}", headers(2));
    assert!(!headers(3).contains("\"x-api-key\""), "{}", headers(3));
    assert!(!headers(3).contains("\"x-goog-api-key\""), "{}", headers(3));
    assert!(headers(3).contains("\"authorization\""), "{}", headers(3));
    assert!(!headers(3).contains("x-tollgate-chain"), "{}", headers(3));

    // The log event names the target that answered.
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let event = wait_event(logger, &id).await;
    assert_eq!(event["provider"], "bedrock", "{event}");
    assert_eq!(event["http_status"], 200, "{event}");
    assert_eq!(
        event["attempt_providers"],
        json!(["mock", "claude", "gemini", "bedrock"]),
        "{event}"
    );
    // Every attempt's own status and latency, as its upstream ext_proc stream saw it.
    assert_eq!(
        event["attempt_statuses"],
        json!([500, 503, 500, 200]),
        "{event}"
    );
    assert_latencies(&event, 4);
    assert_eq!(event["attempt_errors"], json!(["", "", "", ""]), "{event}");
    assert_eq!(event["answered_attempt"], 4, "{event}");
    // Priced as the answering target (Bedrock's model), the failed attempts cost nothing.
    assert_eq!(event["upstream_model"], bedrock_model(), "{event}");
    assert!(event["cost_picodollars"].as_u64().unwrap() > 0, "{event}");

    // Streamed: the same chain, Bedrock's event stream comes back as OpenAI SSE.
    let r = chat(stack, "fo-dialects", true).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("bedrock"));
    assert!(r.text.contains("data: [DONE]"), "{}", r.text);
    assert!(r.text.contains("\"chat.completion.chunk\""), "{}", r.text);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let event = wait_event(logger, &id).await;
    assert_eq!(
        event["attempt_statuses"],
        json!([500, 503, 500, 200]),
        "{event}"
    );
    assert_latencies(&event, 4);

    let scrape = stack.metrics().await;
    for (from, to) in [
        ("mock", "claude"),
        ("claude", "gemini"),
        ("gemini", "bedrock"),
    ] {
        let line = format!(
            "tollgate_failovers_total{{model=\"fo-dialects\",from=\"{from}\",to=\"{to}\"}} 2"
        );
        assert!(scrape.contains(&line), "{line} not in\n{scrape}");
    }
}

/// The event's `attempt_latencies_ms`: `n` of them, none 0 (each attempt was seen).
fn assert_latencies(event: &serde_json::Value, n: usize) -> Vec<u64> {
    let latencies: Vec<u64> = event["attempt_latencies_ms"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempt_latencies_ms in {event}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(latencies.len(), n, "{event}");
    assert!(latencies.iter().all(|l| *l > 0), "{event}");
    latencies
}

fn bedrock_model() -> &'static str {
    BEDROCK_MODEL_ID
}

async fn wait_event(logger: &Logger, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(e) = logger.lines().into_iter().find(|l| l["request_id"] == id) {
            return e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no log event for {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refused_connections_and_slow_first_bytes_move_on() {
    let logged = LoggedStack::ndjson_with(options());
    let (stack, logger) = (&logged.stack, &logged.logger);
    // A refused connection (the `down` provider's closed port): Anthropic answers.
    let r = chat(stack, "fo-refused", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("claude"));
    assert_eq!(r.json()["object"], "chat.completion", "{}", r.text);
    // The refused attempt got no response headers: status 0. Envoy never ran the upstream
    // filter chain for it (no connection); the second attempt's stream finds no outcome of
    // the first and records it as ended without an answer (a reset), timed from the
    // request's ext_proc.
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let event = wait_event(logger, &id).await;
    assert_eq!(
        event["attempt_providers"],
        json!(["down", "claude"]),
        "{event}"
    );
    assert_eq!(event["attempt_statuses"], json!([0, 200]), "{event}");
    assert_latencies(&event, 2);
    assert_eq!(event["attempt_errors"], json!(["reset", ""]), "{event}");

    // A first byte slower than the per-try timeout (300 ms of the mock's 1500): Gemini.
    let started = Instant::now();
    let r = chat(stack, "fo-slow", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("gemini"));
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "waited for the slow target: {:?}",
        started.elapsed()
    );
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let event = wait_event(logger, &id).await;
    // The timed-out attempt ended without response headers: status 0, after about the
    // 300 ms (Envoy's per-try timer starts a little before Tollgate sees the attempt's body).
    assert_eq!(event["attempt_statuses"], json!([0, 200]), "{event}");
    let latencies = assert_latencies(&event, 2);
    assert!((250..1000).contains(&latencies[0]), "{event}");
    assert_eq!(event["attempt_errors"], json!(["timeout", ""]), "{event}");
}

#[tokio::test]
async fn a_started_stream_is_not_retried_and_failover_off_is_unchanged() {
    let stack = Stack::start(options());
    // The first target's stream breaks after its first events: no failover, the client gets
    // OpenAI's in-stream error as without failover.
    let before = stack.upstream_requests().await.len();
    let r = chat(&stack, "fo-stream-error", true).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("mock"));
    assert!(r.text.contains("\"error\""), "{}", r.text);
    assert_eq!(paths_since(&stack, before).await.len(), 1);

    // `failover: off`: the first target's 500 reaches the client, one upstream request.
    let before = stack.upstream_requests().await.len();
    let r = chat(&stack, "fo-off", false).await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("mock"));
    assert_eq!(paths_since(&stack, before).await.len(), 1);

    // `max_attempts: 2`: the second target's 503 (Anthropic's) reaches the client in
    // OpenAI's shape, though a third target would have answered.
    let before = stack.upstream_requests().await.len();
    let r = chat(&stack, "fo-two-attempts", false).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("claude"));
    assert!(r.json()["error"]["message"].is_string(), "{}", r.text);
    assert_eq!(paths_since(&stack, before).await.len(), 2);

    // `on: [5xx]`: a 429 is not a reason to move on.
    let r = chat(&stack, "fo-one-try", false).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("mock"));
}

#[tokio::test]
async fn the_official_sdks_get_their_own_dialect_from_any_target() {
    let stack = Stack::start(options());
    for (model, answering) in [("fo-dialects", "bedrock"), ("fo-to-openai", "mock")] {
        run_sdk(
            "failover_sdk.py",
            &[
                ("TOLLGATE_BASE_URL", &stack.base),
                ("TOLLGATE_KEY", KEY_ALL),
                ("TOLLGATE_CHAIN_MODEL", model),
                ("TOLLGATE_ANSWERING", answering),
            ],
        );
    }
}

#[tokio::test]
async fn failed_attempts_eject_their_target_and_the_deadline_cuts_a_slow_chain() {
    let stack = Stack::start(options());
    // Two requests whose first attempt fails (OpenAI 500) and whose second answers: the
    // failed attempts, not the answers the client got, eject the first target
    // (`consecutive_failures: 2`), so the next request starts at the second.
    for _ in 0..2 {
        let before = stack.upstream_requests().await.len();
        let r = chat(&stack, "fo-eject", false).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-tollgate-provider"), Some("claude"));
        let paths = paths_since(&stack, before).await;
        assert_eq!(paths, ["/v1/chat/completions", "/v1/messages"], "{paths:?}");
    }
    let before = stack.upstream_requests().await.len();
    let r = chat(&stack, "fo-eject", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("claude"));
    let paths = paths_since(&stack, before).await;
    assert_eq!(
        paths,
        ["/v1/messages"],
        "the ejected target was tried: {paths:?}"
    );
    let scrape = stack.metrics().await;
    assert!(
        scrape.contains("tollgate_target_ejections_total{provider=\"mock\"} 1"),
        "{scrape}"
    );

    // `timeout_ms: 800` over a chain of two targets that take 1.5 s to answer: the client
    // gets the deadline's 504 in its own dialect after about 800 ms, not after 3 s.
    let started = Instant::now();
    let r = chat(&stack, "fo-deadline", false).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(
        (Duration::from_millis(750)..Duration::from_millis(1450)).contains(&took),
        "{took:?}"
    );
    let body = r.json();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
}

/// The failover models, with a price for the Anthropic mock's model.
fn priced_failover_models(yaml: String) -> String {
    let line = "    mock-error-500: { input: \"1.5\", output: \"2\" }\n";
    assert!(yaml.contains(line));
    failover_models(yaml.replacen(
        line,
        &format!("{line}    claude-upstream-model: {{ input: \"3\", output: \"15\" }}\n"),
        1,
    ))
}

/// Picodollars as the budget endpoint writes USD.
fn usd(picodollars: u64) -> String {
    format!(
        "{}.{:012}",
        picodollars / 1_000_000_000_000,
        picodollars % 1_000_000_000_000
    )
}

#[tokio::test]
async fn a_budget_is_charged_the_answering_attempt_only() {
    let logged = LoggedStack::ndjson_with(StackOptions {
        patch_config: Some(priced_failover_models),
        extra_yaml: "budgets:\n  limits:\n    - { id: all-monthly, scope: key, name: all, period: monthly, amount_usd: \"100\" }\n".to_owned(),
        ..Default::default()
    });
    let (stack, logger) = (&logged.stack, &logged.logger);
    // OpenAI's 500 (a priced model), then Anthropic answers.
    let r = chat(stack, "fo-budget", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-provider"), Some("claude"));
    let event = wait_event(logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(event["attempt_statuses"], json!([500, 200]), "{event}");
    assert_eq!(event["upstream_model"], "claude-upstream-model", "{event}");
    let failover_cost = event["cost_picodollars"].as_u64().unwrap();
    // The same request straight to Anthropic costs exactly as much: the failed attempt
    // added nothing.
    let r = chat(stack, "claude-model", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let event = wait_event(logger, r.header("x-tollgate-request-id").unwrap()).await;
    let direct_cost = event["cost_picodollars"].as_u64().unwrap();
    assert!(direct_cost > 0, "{event}");
    assert_eq!(failover_cost, direct_cost);
    // The ledger holds the two answers' prices, nothing reserved.
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(
        v["data"][0]["spent_usd"],
        usd(failover_cost + direct_cost).as_str(),
        "{v}"
    );
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
}
