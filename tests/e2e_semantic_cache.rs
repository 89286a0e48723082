//! The semantic response cache end to end through real Envoy: the prompt embedded by a
//! configured embedding model (the mock's deterministic bag-of-words model `mock-embed-bow`,
//! called by Tollgate itself), a reworded question answered from the cache above the
//! threshold and by the provider below it, in the OpenAI chat and Anthropic messages
//! dialects, a streamed hit read by the official SDKs, tenants never sharing an index, the
//! embedding call logged, priced and charged, a hanging embedding provider a miss within the
//! bound, and a hit the requester's response guardrails block not served.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A key of another tenant.
const KEY_OTHER: &str = "tg-e2e-semantic-other-tenant";
/// A key of tenant `acme` whose response guardrails block any answer naming France.
const KEY_STRICT: &str = "tg-e2e-semantic-strict";
/// A key of tenant `acme` whose policy `later` blocks nothing until a reload makes it block
/// answers naming Spain.
const KEY_LATER: &str = "tg-e2e-semantic-later";
/// The rule of policy `later` before the reload.
const LATER_RULE: &str = "(?i)nothing-matches-this";

fn patch(config: String) -> String {
    // The mock's address, from the `mock` provider's base URL.
    let mock_url = config
        .split("  mock:\n    kind: openai\n    base_url: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    config
        .replacen(
            "keys:\n",
            &format!(
                "keys:\n  - {{ id: other, hash: \"{}\", tenant: other, models: [\"*\"] }}\n  - {{ id: strict, hash: \"{}\", tenant: acme, models: [\"*\"], guardrails: strict }}\n  - {{ id: later, hash: \"{}\", tenant: acme, models: [\"*\"], guardrails: later }}\n",
                hash(KEY_OTHER),
                hash(KEY_STRICT),
                hash(KEY_LATER)
            ),
            1,
        )
        .replacen(
            "  policies:\n",
            &format!("  policies:\n    strict:\n      rules:\n        - {{ id: no-france, detector: {{ regex: \"(?i)france\" }}, action: block, side: response }}\n    later:\n      rules:\n        - {{ id: no-spain, detector: {{ regex: \"{LATER_RULE}\" }}, action: block, side: response }}\n"),
            1,
        )
        .replacen(
            "providers:\n",
            &format!("providers:\n  slow-embedder:\n    kind: openai\n    base_url: \"{mock_url}\"\n    headers: {{ x-mock-latency-ms: \"3000\" }}\n"),
            1,
        )
        .replacen(
            "models:\n",
            "models:\n  bow-embed:\n    targets: [{ provider: mock, model: mock-embed-bow }]\n  slow-embed:\n    targets: [{ provider: slow-embedder, model: mock-embed-bow }]\n",
            1,
        )
        .replacen(
            "pricing:\n  models:\n",
            "pricing:\n  models:\n    mock-embed-bow: { input: \"1000\", output: \"0\" }\n",
            1,
        )
}

/// `mock-model` and `claude-model`: semantic only; `compat-model`: exact and semantic, its
/// embedding provider hanging past the 300 ms bound; `azure-model`: exact only.
const CACHE_YAML: &str = "cache:\n  policies:\n    - { name: sem, models: [mock-model, claude-model], exact: false, semantic: { model: bow-embed, threshold: 0.8 } }\n    - { name: slow, models: [compat-model], semantic: { model: slow-embed, threshold: 0.8, timeout_ms: 300 } }\n    - { name: exact-only, models: [azure-model] }\n";

fn options(extra: &str) -> StackOptions {
    StackOptions {
        extra_yaml: format!("{CACHE_YAML}{extra}"),
        patch_config: Some(patch),
        ..Default::default()
    }
}

fn start(extra: &str) -> Stack {
    Stack::start(options(extra))
}

fn chat(model: &str, text: &str) -> String {
    json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

/// Chat and messages calls the provider got (embedding calls left out).
async fn generations(stack: &Stack) -> usize {
    stack
        .posted()
        .await
        .iter()
        .filter(|r| !r["path"].as_str().unwrap_or("").ends_with("/embeddings"))
        .count()
}

async fn embeddings(stack: &Stack) -> usize {
    stack
        .posted()
        .await
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").ends_with("/embeddings"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reworded_questions_hit_above_the_threshold_and_miss_below_it() {
    let stack = start("");
    stack.clear_upstream_requests().await;
    let path = "/v1/chat/completions";
    let a = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "What is the capital of France?"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-tollgate-cache"), None);
    let b = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "what's the capital of france"),
        )
        .await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.header("x-tollgate-cache"), Some("semantic"), "{}", b.text);
    assert_eq!(a.json()["choices"], b.json()["choices"]);
    assert_eq!(
        generations(&stack).await,
        1,
        "the reworded question reached the provider"
    );
    assert_eq!(embeddings(&stack).await, 2, "each lookup embeds once");
    // The embedding call went to the provider with its model id and credential path.
    let e = stack
        .posted()
        .await
        .into_iter()
        .find(|r| r["path"] == "/v1/embeddings")
        .unwrap();
    assert_eq!(e["body"]["model"], "mock-embed-bow", "{e}");
    // An unrelated question scores below the threshold: the provider answers.
    let c = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "How do I bake sourdough bread at home?"),
        )
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.header("x-tollgate-cache"), None);
    assert_eq!(generations(&stack).await, 2);
    // Other parameters (here `max_tokens`) never share an answer.
    let d = stack
        .post(
            path,
            Some(KEY_ALL),
            json!({"model": "mock-model", "max_tokens": 19, "messages": [{"role": "user", "content": "what is the capital of france"}]}).to_string(),
        )
        .await;
    assert_eq!(d.header("x-tollgate-cache"), None);
    assert_eq!(generations(&stack).await, 3);
    // `exact: false`: the very same question again is served by meaning (score 1), not exactly.
    let e = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "What is the capital of France?"),
        )
        .await;
    assert_eq!(e.header("x-tollgate-cache"), Some("semantic"));

    // Anthropic messages.
    stack.clear_upstream_requests().await;
    let a = stack
        .post(
            "/v1/messages",
            Some(KEY_ALL),
            chat("claude-model", "Tell me the tallest mountain on Earth"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let b = stack
        .post(
            "/v1/messages",
            Some(KEY_ALL),
            chat(
                "claude-model",
                "tell me the tallest mountain on earth please",
            ),
        )
        .await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.header("x-tollgate-cache"), Some("semantic"), "{}", b.text);
    assert_eq!(b.json()["type"], "message");
    assert_eq!(a.json()["content"], b.json()["content"]);
    let c = stack
        .post(
            "/v1/messages",
            Some(KEY_ALL),
            chat("claude-model", "Recommend a good science fiction novel"),
        )
        .await;
    assert_eq!(c.header("x-tollgate-cache"), None);
    assert_eq!(generations(&stack).await, 2);

    let metrics = stack.metrics().await;
    for (model, result) in [
        ("mock-model", "semantic_hit\"} 2"),
        ("mock-model", "semantic_miss\"} 3"),
        ("claude-model", "semantic_hit\"} 1"),
    ] {
        let line = format!(
            "tollgate_cache_lookups_total{{model=\"{model}\",tenant=\"acme\",result=\"{result}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_sdks_read_a_semantic_hit_streamed() {
    let stack = start("");
    stack.clear_upstream_requests().await;
    run_sdk(
        "semantic_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_OPENAI_MODEL", "mock-model"),
            ("TOLLGATE_ANTHROPIC_MODEL", "claude-model"),
        ],
    );
    assert_eq!(
        generations(&stack).await,
        2,
        "a streamed hit reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_never_share_an_index() {
    let stack = start("");
    stack.clear_upstream_requests().await;
    let path = "/v1/chat/completions";
    let a = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "Where is the Eiffel tower located?"),
        )
        .await;
    assert_eq!(a.status, 200);
    let b = stack
        .post(
            path,
            Some(KEY_OTHER),
            chat("mock-model", "where is the eiffel tower located"),
        )
        .await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(
        b.header("x-tollgate-cache"),
        None,
        "another tenant's answer was served"
    );
    assert_eq!(generations(&stack).await, 2);
    // Another key of the first tenant shares its index.
    let c = stack
        .post(
            path,
            Some(KEY_LIMITED),
            chat("mock-model", "where is the eiffel tower located"),
        )
        .await;
    assert_eq!(c.header("x-tollgate-cache"), Some("semantic"));
    assert_eq!(generations(&stack).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_embedding_provider_is_a_miss_within_the_bound() {
    let stack = start("");
    stack.clear_upstream_requests().await;
    let started = Instant::now();
    let a = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            chat("compat-model", "Is the embedding provider slow today?"),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-tollgate-cache"), None);
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?}: the embedding call was not bounded"
    );
    // The exact side of the same policy still serves the same question.
    let b = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            chat("compat-model", "Is the embedding provider slow today?"),
        )
        .await;
    assert_eq!(b.header("x-tollgate-cache"), Some("exact"));
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(
            r#"tollgate_cache_lookups_total{model="compat-model",tenant="acme",result="embed_error"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hit_the_requesters_response_guardrails_block_is_not_served() {
    let stack = start("");
    stack.clear_upstream_requests().await;
    let path = "/v1/chat/completions";
    let a = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "Name the largest city of France"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    // Same tenant, a stricter policy: the cached answer names France, so it is not served;
    // the provider answers (and that answer is blocked in its turn).
    let b = stack
        .post(
            path,
            Some(KEY_STRICT),
            chat("mock-model", "name the largest city of france"),
        )
        .await;
    assert_eq!(b.header("x-tollgate-cache"), None, "{}", b.text);
    assert_eq!(generations(&stack).await, 2, "the blocked hit was served");
    assert_ne!(b.status, 200, "{}", b.text);
    // The first key still gets its hit.
    let c = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "name the largest city of france"),
        )
        .await;
    assert_eq!(c.header("x-tollgate-cache"), Some("semantic"));
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(
            r#"tollgate_cache_lookups_total{model="mock-model",tenant="acme",result="guardrail_refused"} 1"#
        ),
        "{metrics}"
    );
}

/// Picodollars of a `spent_usd` figure (`"0.000000123456"`).
fn pico(usd: &str) -> i128 {
    let (whole, frac) = usd.split_once('.').unwrap();
    whole.parse::<i128>().unwrap() * 1_000_000_000_000
        + format!("{frac:0<12}")[..12].parse::<i128>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedding_call_is_logged_priced_and_charged() {
    let logged = LoggedStack::ndjson_with(options(
        "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"10\" }\n",
    ));
    let stack = &logged.stack;
    let path = "/v1/chat/completions";
    let spent = || async {
        let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
        pico(v["data"][0]["spent_usd"].as_str().unwrap())
    };
    let a = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "What does a semantic hit cost?"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let mut before = spent().await;
    for _ in 0..50 {
        if before != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        before = spent().await;
    }
    let b = stack
        .post(
            path,
            Some(KEY_ALL),
            chat("mock-model", "what does a semantic hit cost"),
        )
        .await;
    assert_eq!(b.header("x-tollgate-cache"), Some("semantic"), "{}", b.text);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = spent().await;

    let source = a.header("x-tollgate-request-id").unwrap().to_owned();
    let hit_id = b.header("x-tollgate-request-id").unwrap().to_owned();
    let embed_id = format!("{hit_id}-embed");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = logged.logger.lines();
        if lines.iter().any(|l| l["request_id"] == hit_id.as_str())
            && lines.iter().any(|l| l["request_id"] == embed_id.as_str())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let find = |id: &str| -> Value {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no event {id}: {lines:?}"))
            .clone()
    };
    let hit = find(&hit_id);
    assert_eq!(hit["cache"], "semantic");
    assert_eq!(hit["cache_source_request_id"], source.as_str());
    assert_eq!(hit["cost_picodollars"], 0);
    let score = hit["cache_similarity"].as_f64().unwrap();
    assert!((0.8..=1.0).contains(&score), "{hit}");
    let embed = find(&embed_id);
    assert_eq!(embed["endpoint"], "embeddings");
    assert_eq!(embed["parent_request_id"], hit_id.as_str());
    assert_eq!(embed["key_id"], "all");
    assert_eq!(embed["tenant"], "acme");
    assert_eq!(embed["requested_model"], "bow-embed", "{embed}");
    // "what does a semantic hit cost": 6 words at $1000 per million tokens.
    assert_eq!(embed["input_tokens"], 6, "{embed}");
    let cost = embed["cost_picodollars"].as_i64().unwrap();
    assert_eq!(cost, 6_000_000_000, "{embed}");
    // The hit is free; its embedding call is charged to the requester's budget lines.
    assert_eq!(after - before, i128::from(cost));
    // The miss's own embedding call is logged too, pointing at the miss.
    let miss_embed = find(&format!("{source}-embed"));
    assert_eq!(miss_embed["parent_request_id"], source.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_hit_is_rechecked_under_the_policy_in_force() {
    let stack = start("");
    stack.clear_upstream_requests().await;
    let path = "/v1/chat/completions";
    let body = chat("azure-model", "Tell me about Spain");
    let a = stack.post(path, Some(KEY_LATER), body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let b = stack.post(path, Some(KEY_LATER), body.clone()).await;
    assert_eq!(b.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(generations(&stack).await, 1);
    // The key's policy now blocks answers naming Spain: the stored answer is not served.
    let original = std::fs::read_to_string(&stack.config_path).unwrap();
    let stricter = original.replace(LATER_RULE, "(?i)spain");
    assert_ne!(stricter, original);
    std::fs::write(&stack.config_path, stricter).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = stack.post(path, Some(KEY_LATER), body.clone()).await;
        if r.header("x-tollgate-cache").is_none() {
            assert_ne!(r.status, 200, "{}", r.text);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            stack.serve_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        generations(&stack).await,
        2,
        "the refused hit did not go to the provider"
    );
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(
            r#"tollgate_cache_lookups_total{model="azure-model",tenant="acme",result="guardrail_refused"} 1"#
        ),
        "{metrics}"
    );
}
