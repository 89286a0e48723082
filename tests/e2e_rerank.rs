//! End to end through real Envoy: `POST /v1/rerank` (and `/v2/rerank`) in Cohere's shape onto
//! each rerank provider kind — Cohere, Jina, Voyage, text-embeddings-inference, and an
//! `openai_compatible` server (vLLM) — with the official `cohere` SDK and plain HTTP: what each
//! provider sees, ordering, `top_n`, `return_documents`, usage (search units or tokens) and
//! spend in the log event, a budget refusing in Cohere's shape; bad input, the allow-list and
//! endpoint/kind mismatches refused in the client's shape. docs/COMPATIBILITY.md names these
//! tests.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Adds the rerank providers (at the mock, one path segment naming each API), their models
/// and their prices to the e2e config.
fn with_rerank(yaml: String) -> String {
    let start = yaml.find("base_url: \"http://").unwrap() + "base_url: \"http://".len();
    let mock = &yaml[start..start + yaml[start..].find('/').unwrap()];
    let providers = format!(
        r#"
  cohere:
    kind: cohere
    base_url: "http://{mock}/cohere/v2"
    credential: {{ env: E2E_ANTHROPIC_KEY }}
  jina:
    kind: jina
    base_url: "http://{mock}/jina/v1"
    credential: {{ env: E2E_ANTHROPIC_KEY }}
  voyage:
    kind: voyage
    base_url: "http://{mock}/voyage/v1"
    credential: {{ env: E2E_ANTHROPIC_KEY }}
  tei:
    kind: tei
    base_url: "http://{mock}/tei"
models:
  rerank-cohere:
    targets: [{{ provider: cohere, model: rerank-v3.5 }}]
  rerank-jina:
    targets: [{{ provider: jina, model: jina-reranker-v2-base-multilingual }}]
  rerank-voyage:
    targets: [{{ provider: voyage, model: rerank-2 }}]
  rerank-tei:
    targets: [{{ provider: tei, model: bge-reranker-base }}]
  rerank-vllm:
    targets: [{{ provider: compat, model: BAAI/bge-reranker-v2-m3 }}]
  rerank-failing:
    targets: [{{ provider: cohere, model: mock-error-429 }}]
"#
    );
    let prices = r#"pricing:
  models:
    rerank-v3.5: { input: "0", output: "0", search_unit: "0.002" }
    jina-reranker-v2-base-multilingual: { input: "20", output: "0" }
    rerank-2: { input: "50", output: "0" }
    bge-reranker-base: { input: "10", output: "0" }
"#;
    yaml.replacen("\nmodels:\n", &providers, 1)
        .replacen("pricing:\n  models:\n", prices, 1)
}

fn opts(extra_yaml: &str) -> StackOptions {
    StackOptions {
        patch_config: Some(with_rerank),
        extra_yaml: extra_yaml.to_owned(),
        ..Default::default()
    }
}

const QUERY: &str = "what is the capital of france";
const DOCUMENTS: [&str; 4] = [
    "Berlin is the capital of Germany",
    "Paris is the capital of France",
    "Bananas are yellow",
    "The capital of Italy is Rome",
];

fn rerank_body(model: &str, top_n: u64, return_documents: bool) -> String {
    json!({
        "model": model,
        "query": QUERY,
        "documents": DOCUMENTS,
        "top_n": top_n,
        "return_documents": return_documents,
    })
    .to_string()
}

async fn logged(logger: &Logger, request_id: &str) -> Value {
    let start = Instant::now();
    loop {
        if let Some(l) = logger
            .lines()
            .into_iter()
            .find(|l| l["request_id"] == request_id)
        {
            return l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{request_id} was never logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What each model's provider saw, what the client got back, and what the log event says.
#[tokio::test]
async fn rerank_reaches_each_provider_kind_in_its_own_api_and_logs_usage_and_spend() {
    let ls = LoggedStack::ndjson_with(opts(""));
    let stack = &ls.stack;
    // (model, upstream path, field the provider gets top_n in, documents field, model sent)
    let cases = [
        (
            "rerank-cohere",
            "/cohere/v2/rerank",
            "top_n",
            "documents",
            Some("rerank-v3.5"),
        ),
        (
            "rerank-jina",
            "/jina/v1/rerank",
            "top_n",
            "documents",
            Some("jina-reranker-v2-base-multilingual"),
        ),
        (
            "rerank-voyage",
            "/voyage/v1/rerank",
            "top_k",
            "documents",
            Some("rerank-2"),
        ),
        ("rerank-tei", "/tei/rerank", "", "texts", None),
        (
            "rerank-vllm",
            "/openai/v1/rerank",
            "top_n",
            "documents",
            Some("BAAI/bge-reranker-v2-m3"),
        ),
    ];
    for (model, path, top_field, docs_field, upstream_model) in cases {
        stack.clear_upstream_requests().await;
        let r = stack
            .post("/v1/rerank", Some(KEY_ALL), rerank_body(model, 2, true))
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        let v = r.json();
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "{model}: top_n: {v}");
        assert_eq!(results[0]["index"], 1, "{model}: Paris first: {v}");
        assert_eq!(results[0]["document"]["text"], DOCUMENTS[1], "{model}: {v}");
        assert!(
            results[0]["relevance_score"].as_f64() >= results[1]["relevance_score"].as_f64(),
            "{model}: {v}"
        );
        assert!(v["id"].as_str().is_some_and(|i| !i.is_empty()), "{v}");
        assert_eq!(
            v["meta"]["api_version"]["version"], "1",
            "{model}: /v1/rerank: {v}"
        );
        // The provider saw its own API.
        let seen = stack.posted().await;
        assert_eq!(seen.len(), 1, "{model}: {seen:?}");
        let up = &seen[0];
        assert_eq!(up["path"], path, "{model}: {up}");
        assert_eq!(
            up["body"][docs_field].as_array().unwrap().len(),
            4,
            "{model}: {up}"
        );
        assert_eq!(up["body"][docs_field][1], DOCUMENTS[1], "{model}: {up}");
        assert_eq!(up["body"]["query"], QUERY, "{model}: {up}");
        match upstream_model {
            Some(m) => assert_eq!(up["body"]["model"], m, "{model}: {up}"),
            None => assert!(up["body"].get("model").is_none(), "{model}: {up}"),
        }
        if !top_field.is_empty() {
            assert_eq!(up["body"][top_field], 2, "{model}: {up}");
        }
        // Providers never send the documents back: Tollgate adds the client's own.
        if model != "rerank-cohere" {
            let flag = if model == "rerank-tei" {
                "return_text"
            } else {
                "return_documents"
            };
            assert_eq!(up["body"][flag], false, "{model}: {up}");
        }
        if model != "rerank-tei" {
            let auth = up["headers"]["authorization"].as_str().unwrap_or_default();
            let expected = if model == "rerank-vllm" {
                COMPAT_SECRET
            } else {
                ANTHROPIC_SECRET
            };
            assert_eq!(auth, format!("Bearer {expected}"), "{model}: {up}");
        }
        // The log event: endpoint, usage in each API's unit, spend at the model's price.
        let id = r.header("x-tollgate-request-id").unwrap().to_owned();
        let l = logged(&ls.logger, &id).await;
        assert_eq!(l["endpoint"], "rerank", "{l}");
        assert_eq!(l["requested_model"], model, "{l}");
        assert_eq!(l["http_status"], 200, "{l}");
        assert_eq!(l["search_units"], 1, "{model}: {l}");
        let input = l["input_tokens"].as_u64().unwrap();
        assert!(input > 0, "{model}: {l}");
        match model {
            "rerank-cohere" => {
                assert_eq!(v["meta"]["billed_units"]["search_units"], 1, "{v}");
                // One search unit at 0.002 USD.
                assert_eq!(l["cost_picodollars"], 2_000_000_000u64, "{l}");
            }
            "rerank-jina" | "rerank-voyage" | "rerank-vllm" => {
                // The mock's count: the query's words once per document, plus the documents'.
                let words = |t: &str| t.split_whitespace().count() as u64;
                let expected: u64 = DOCUMENTS.iter().map(|d| words(QUERY) + words(d)).sum();
                assert_eq!(input, expected, "{model}: {l}");
                assert_eq!(v["meta"]["billed_units"]["input_tokens"], input, "{v}");
                assert_eq!(l["usage_source"], "provider", "{l}");
                let per_token = match model {
                    "rerank-jina" => 20_000_000u64,
                    "rerank-voyage" => 50_000_000,
                    _ => 0,
                };
                if per_token > 0 {
                    assert_eq!(l["cost_picodollars"], input * per_token, "{model}: {l}");
                }
            }
            _ => {
                // TEI reports no usage: estimated (one token per 3 bytes).
                assert_eq!(l["usage_source"], "estimated", "{l}");
                assert_eq!(l["cost_picodollars"], input * 10_000_000, "{l}");
            }
        }
    }
}

#[tokio::test]
async fn cohere_sdk_reranks_through_every_provider_kind() {
    let stack = Stack::start(opts(""));
    for (model, billed) in [
        ("rerank-cohere", "search_units"),
        ("rerank-jina", "input_tokens"),
        ("rerank-voyage", "input_tokens"),
        ("rerank-vllm", "input_tokens"),
    ] {
        run_sdk(
            "rerank_sdk.py",
            &[
                ("TOLLGATE_BASE_URL", &stack.base),
                ("TOLLGATE_KEY", KEY_ALL),
                ("RERANK_MODEL", model),
                ("BILLED", billed),
            ],
        );
    }
}

#[tokio::test]
async fn rerank_refusals_come_in_cohere_shape() {
    let stack = Stack::start(opts(""));
    let message = |r: &Reply| -> String {
        let v = r.json();
        assert!(v.get("error").is_none(), "not Cohere's shape: {v}");
        v["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_owned()
    };
    for (path, body, status, needle) in [
        (
            "/v1/rerank",
            json!({"model": "rerank-cohere", "documents": ["a"]}),
            400,
            "query",
        ),
        (
            "/v2/rerank",
            json!({"model": "rerank-cohere", "query": "q", "documents": []}),
            400,
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"]}),
            400,
            "model",
        ),
        (
            "/v1/rerank",
            json!({"model": "rerank-cohere", "query": "q", "documents": ["a"], "top_n": -1}),
            400,
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"model": "nope", "query": "q", "documents": ["a"]}),
            404,
            "nope",
        ),
        // A chat-only provider kind serves no rerank.
        (
            "/v1/rerank",
            json!({"model": "mock-model", "query": "q", "documents": ["a"]}),
            400,
            "does not serve rerank",
        ),
        // The provider's own error keeps its status, in Cohere's shape.
        (
            "/v1/rerank",
            json!({"model": "rerank-failing", "query": "q", "documents": ["a"]}),
            429,
            "mock error 429",
        ),
    ] {
        let r = stack.post(path, Some(KEY_ALL), body.to_string()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        let m = message(&r);
        assert!(m.contains(needle), "{body}: {m}");
        assert!(r.header("x-tollgate-request-id").is_some());
    }
    let r = stack.post("/v1/rerank", Some(KEY_ALL), "{not json").await;
    assert_eq!(r.status, 400, "{}", r.text);
    message(&r);
    // The allow-list: this key may use mock-model and mock-embedding only.
    let r = stack
        .post(
            "/v1/rerank",
            Some(KEY_LIMITED),
            rerank_body("rerank-cohere", 1, false),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(message(&r).contains("rerank-cohere"));
    // No key: refused by the key gate in Cohere's shape too.
    let r = stack
        .post("/v1/rerank", None, rerank_body("rerank-cohere", 1, false))
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    message(&r);
    // A rerank-only provider serves no chat: refused in the chat client's shape.
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "rerank-cohere", "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("only POST /v1/rerank")));
    // Nothing reached a provider but the failing model's one call.
    let seen = stack.posted().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test]
async fn a_budget_holds_rerank_spend_and_refuses_in_cohere_shape() {
    // Room for one search unit at 0.002 USD, not two.
    let stack = Stack::start(opts(
        "budgets:\n  limits:\n    - { id: all-daily, scope: key, name: all, period: daily, amount_usd: \"0.003\" }\n",
    ));
    let r = stack
        .post(
            "/v2/rerank",
            Some(KEY_ALL),
            rerank_body("rerank-cohere", 1, false),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["meta"]["api_version"]["version"], "2");
    let r = stack
        .post(
            "/v2/rerank",
            Some(KEY_ALL),
            rerank_body("rerank-cohere", 1, false),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.json()["message"].as_str().is_some(), "{}", r.text);
}

/// The rerank config plus a Cohere provider on its v1 API (a base URL ending in `/v1`).
fn with_cohere_v1(yaml: String) -> String {
    let yaml = with_rerank(yaml);
    let start = yaml.find("base_url: \"http://").unwrap() + "base_url: \"http://".len();
    let mock = yaml[start..start + yaml[start..].find('/').unwrap()].to_owned();
    yaml.replacen(
        "\nmodels:\n",
        &format!(
            "\n  cohere-v1:\n    kind: cohere\n    base_url: \"http://{mock}/cohere/v1\"\n    credential: {{ env: E2E_ANTHROPIC_KEY }}\nmodels:\n  rerank-cohere-v1:\n    targets: [{{ provider: cohere-v1, model: rerank-english-v3.0 }}]\n"
        ),
        1,
    )
}

/// Cohere's version-specific knobs on the wire: `max_chunks_per_doc` to Cohere v1,
/// `max_tokens_per_doc` and `priority` to Cohere v2, none of them to other providers.
#[tokio::test]
async fn cohere_knobs_reach_the_cohere_version_that_knows_them() {
    let stack = Stack::start(StackOptions {
        patch_config: Some(with_cohere_v1),
        ..Default::default()
    });
    for model in [
        "rerank-cohere",
        "rerank-cohere-v1",
        "rerank-jina",
        "rerank-voyage",
    ] {
        let body = json!({
            "model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": 2,
            "max_chunks_per_doc": 4, "max_tokens_per_doc": 256, "priority": 5,
        });
        let r = stack
            .post("/v1/rerank", Some(KEY_ALL), body.to_string())
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert_eq!(r.json()["results"][0]["index"], 1, "{model}: {}", r.text);
    }
    let seen = stack.posted().await;
    let at = |path: &str| -> Value {
        seen.iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("nothing posted to {path}: {seen:?}"))["body"]
            .clone()
    };
    let v2 = at("/cohere/v2/rerank");
    assert_eq!(
        (&v2["max_tokens_per_doc"], &v2["priority"]),
        (&json!(256), &json!(5)),
        "{v2}"
    );
    assert!(v2.get("max_chunks_per_doc").is_none(), "{v2}");
    let v1 = at("/cohere/v1/rerank");
    assert_eq!(v1["max_chunks_per_doc"], 4, "{v1}");
    assert_eq!(v1["model"], "rerank-english-v3.0", "{v1}");
    assert!(
        v1.get("max_tokens_per_doc").is_none() && v1.get("priority").is_none(),
        "{v1}"
    );
    for path in ["/jina/v1/rerank", "/voyage/v1/rerank"] {
        let b = at(path);
        for k in ["max_tokens_per_doc", "max_chunks_per_doc", "priority"] {
            assert!(b.get(k).is_none(), "{path}: {b}");
        }
    }
}
