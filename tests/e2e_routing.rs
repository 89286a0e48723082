//! End to end through real Envoy: routing strategies per model over several providers on the
//! same mock (`fast`, `other`, and `slow`, whose every answer the mock delays through a
//! provider header): priority, round robin, least latency, least cost, the per-target
//! `max_requests_in_flight` spilling over (and a 503 when every target is full), and the
//! `x-tollgate-provider` header on complete and streamed responses, and a provider's 429 with
//! `Retry-After` taking its target out of rotation that long.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Three more providers on the mock and one model per strategy.
fn routing_models(yaml: String) -> String {
    let mock = yaml
        .split("base_url: \"http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .to_owned();
    let yaml = yaml.replacen(
        "\nmodels:\n",
        &format!(
            r#"
  fast:
    kind: openai
    base_url: "http://{mock}/v1"
  other:
    kind: openai
    base_url: "http://{mock}/v1"
  slow:
    kind: openai
    base_url: "http://{mock}/v1"
    headers: {{ x-mock-latency-ms: "300" }}
models:
  by-priority:
    strategy: priority
    targets: [{{ provider: other, model: mock-model }}, {{ provider: fast, model: mock-model }}]
  by-turn:
    strategy: round_robin
    targets: [{{ provider: fast, model: mock-model }}, {{ provider: other, model: mock-model }}]
  by-latency:
    strategy: least_latency
    targets: [{{ provider: slow, model: mock-model }}, {{ provider: fast, model: mock-model }}]
  by-cost:
    strategy: least_cost
    targets: [{{ provider: fast, model: dear-model }}, {{ provider: other, model: cheap-model }}]
  spill:
    strategy: priority
    targets:
      - {{ provider: slow, model: mock-model, max_requests_in_flight: 1 }}
      - {{ provider: fast, model: mock-model }}
  single-slot:
    targets: [{{ provider: slow, model: mock-model, max_requests_in_flight: 1 }}]
  cooling:
    strategy: priority
    targets: [{{ provider: other, model: mock-error-429 }}, {{ provider: fast, model: mock-model }}]
"#
        ),
        1,
    );
    let patched = yaml.replacen(
        "pricing:\n  models:\n",
        "pricing:\n  models:\n    dear-model: { input: \"10\", output: \"10\" }\n    cheap-model: { input: \"1\", output: \"1\" }\n",
        1,
    );
    assert_ne!(patched, yaml, "the base config's pricing section moved");
    patched
}

fn stack() -> Stack {
    Stack::start(StackOptions {
        patch_config: Some(routing_models),
        ..Default::default()
    })
}

async fn chat(stack: &Stack, model: &str) -> Reply {
    stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": model, "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .await
}

/// The provider that answered a successful request.
fn provider(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.text);
    r.header("x-tollgate-provider")
        .unwrap_or_else(|| panic!("no x-tollgate-provider: {:?}", r.headers))
        .to_owned()
}

/// How many of `n` sequential requests to `model` each provider answered.
async fn distribution(stack: &Stack, model: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(provider(&chat(stack, model).await)).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn strategies_pick_their_targets_and_name_them() {
    let stack = stack();

    // The default (weighted, one target) names its provider too.
    assert_eq!(provider(&chat(&stack, "mock-model").await), "mock");

    // Priority: always the first available.
    let seen = distribution(&stack, "by-priority", 6).await;
    assert_eq!(seen, BTreeMap::from([("other".to_owned(), 6)]));

    // Round robin: alternates.
    let mut turns = Vec::new();
    for _ in 0..6 {
        turns.push(provider(&chat(&stack, "by-turn").await));
    }
    for pair in turns.chunks(2) {
        let mut pair = pair.to_vec();
        pair.sort();
        assert_eq!(pair, ["fast", "other"], "{turns:?}");
    }

    // Least cost: the cheaper target's model, every time.
    let seen = distribution(&stack, "by-cost", 5).await;
    assert_eq!(seen, BTreeMap::from([("other".to_owned(), 5)]));
    let asked: Vec<String> = stack
        .upstream_requests()
        .await
        .iter()
        .filter_map(|r| r["body"]["model"].as_str().map(str::to_owned))
        .filter(|m| m.ends_with("-model") && m != "mock-model")
        .collect();
    assert!(
        !asked.is_empty() && asked.iter().all(|m| m == "cheap-model"),
        "{asked:?}"
    );

    // Least latency: each target measured once, then the fast one takes (nearly) all.
    let seen = distribution(&stack, "by-latency", 40).await;
    let fast = seen.get("fast").copied().unwrap_or(0);
    let slow = seen.get("slow").copied().unwrap_or(0);
    assert!(slow >= 1, "the slow target was never measured: {seen:?}");
    assert!(
        fast >= 32,
        "traffic did not move to the fast target: {seen:?}"
    );
}

#[tokio::test]
async fn streamed_responses_and_log_events_name_the_provider() {
    let logged = LoggedStack::ndjson_with(StackOptions {
        patch_config: Some(routing_models),
        ..Default::default()
    });
    let (stack, logger) = (&logged.stack, &logged.logger);
    let resp = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_ALL)
        .header("content-type", "application/json")
        .body(
            json!({"model": "by-priority", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let r = Reply::from(resp).await;
    assert_eq!(provider(&r), "other");
    assert!(r.text.contains("data: [DONE]"), "{}", r.text);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let start = Instant::now();
    let event = loop {
        if let Some(e) = logger.lines().into_iter().find(|l| l["request_id"] == id) {
            break e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no log event for {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["provider"], "other", "{event}");
    assert_eq!(event["upstream_model"], "mock-model", "{event}");
}

#[tokio::test]
async fn a_full_target_spills_over_and_all_full_is_a_503() {
    let stack = stack();
    // Three at once: the slow first target holds one (300 ms), the others spill to `fast`.
    let (a, b, c) = tokio::join!(
        chat(&stack, "spill"),
        chat(&stack, "spill"),
        chat(&stack, "spill")
    );
    let mut names = vec![provider(&a), provider(&b), provider(&c)];
    names.sort();
    assert_eq!(names, ["fast", "fast", "slow"]);
    // Its slot is free again (released when the response ends): the first target serves.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(provider(&chat(&stack, "spill").await), "slow");

    // One target, one slot: the others get a 503 in their own dialect.
    let (a, b, c) = tokio::join!(
        chat(&stack, "single-slot"),
        chat(&stack, "single-slot"),
        chat(&stack, "single-slot")
    );
    let mut ok = 0;
    for r in [&a, &b, &c] {
        if r.status == 200 {
            ok += 1;
        } else {
            r.assert_openai_error(503, Some("targets_busy"));
        }
    }
    assert_eq!(ok, 1, "{} / {} / {}", a.text, b.text, c.text);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let anthropic = stack
        .http
        .post(format!("{}/v1/messages", stack.base))
        .header("x-api-key", KEY_ALL)
        .header("content-type", "application/json");
    let body = json!({"model": "single-slot", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let (a, b) = tokio::join!(
        anthropic.try_clone().unwrap().body(body.clone()).send(),
        anthropic.body(body).send()
    );
    let (a, b) = (Reply::from(a.unwrap()).await, Reply::from(b.unwrap()).await);
    let busy = if a.status == 503 { &a } else { &b };
    assert_eq!(busy.status, 503, "{} / {}", a.text, b.text);
    assert_eq!(
        busy.json()["error"]["type"],
        "overloaded_error",
        "{}",
        busy.text
    );
}

#[tokio::test]
async fn a_429_with_retry_after_takes_the_target_out_of_rotation_that_long() {
    let stack = stack();
    // The first target answers 429 with `Retry-After: 1` (the mock's): the client sees it.
    let first = chat(&stack, "cooling").await;
    assert_eq!(first.status, 429, "{}", first.text);
    // For that second the next target in the chain serves instead.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(600) {
        assert_eq!(provider(&chat(&stack, "cooling").await), "fast");
        served += 1;
    }
    assert!(served > 0);
    // Then the first target is back in rotation (and refuses again).
    tokio::time::sleep(Duration::from_millis(1_100).saturating_sub(started.elapsed())).await;
    let again = chat(&stack, "cooling").await;
    assert_eq!(again.status, 429, "{}", again.text);
    assert_eq!(again.header("x-tollgate-provider"), Some("other"));
    let scrape = stack.metrics().await;
    assert!(
        scrape.contains("tollgate_target_cooldowns_total{provider=\"other\"} 2"),
        "{scrape}"
    );
}
