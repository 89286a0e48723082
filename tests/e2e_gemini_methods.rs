//! End to end through real Envoy: Gemini's `:countTokens`, `:embedContent` and
//! `:batchEmbedContents` with the official `google-genai` SDK against Gemini, Vertex AI and
//! OpenAI-family backends (and Anthropic for counts), what the providers see on the wire,
//! spend in the log event, and Gemini-shaped errors for bad input. docs/COMPATIBILITY.md names
//! these tests.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The prompt the SDK script counts.
const PROMPT: &str = "count these six words right here";

/// The mock's count of [`PROMPT`]: one token per word plus its fixed overhead.
const MOCK_COUNT: u64 = 6 + 1000;

/// The mock's vector length without `outputDimensionality` (Gemini and OpenAI mocks alike).
const MOCK_DIMENSIONS: &str = "8";

/// Adds the embedding models: `doc-embedder` (the Gemini API; no `gemini` in the public name:
/// google-genai treats such names, but `gemini-embedding-001`, as multimodal embedding models
/// and sends a list of strings as one content of several parts), `openai-embedding` (an
/// OpenAI model with a list price), `vertex-embedding` (Vertex AI, when the stack has it).
fn with_embedding_models(config: String) -> String {
    let mut models = String::from(
        "models:\n  doc-embedder:\n    targets: [{ provider: gemini, model: gemini-embedding-001 }]\n  openai-embedding:\n    targets: [{ provider: mock, model: text-embedding-3-small }]\n",
    );
    if config.contains("\n  vertex:\n") {
        models.push_str(
            "  vertex-embedding:\n    targets: [{ provider: vertex, model: text-embedding-005 }]\n  vertex-gemini-embedding:\n    targets: [{ provider: vertex, model: gemini-embedding-001 }]\n",
        );
    }
    config.replacen("models:\n", &models, 1).replacen(
        "pricing:\n  models:\n",
        // A test price (Vertex AI bills text-embedding-005 by characters).
        "pricing:\n  models:\n    text-embedding-005: { input: \"0.025\", output: \"0\" }\n",
        1,
    )
}

fn options(vertex: bool) -> StackOptions {
    StackOptions {
        vertex,
        patch_config: Some(with_embedding_models),
        ..StackOptions::default()
    }
}

fn sdk(stack: &Stack, envs: &[(&str, &str)]) {
    let mut all = vec![
        ("TOLLGATE_BASE_URL", stack.base.as_str()),
        ("TOLLGATE_KEY", KEY_ALL),
    ];
    all.extend_from_slice(envs);
    run_sdk("gemini_methods_sdk.py", &all);
}

/// The requests the mock got at `path` (without query).
async fn at(stack: &Stack, path: &str) -> Vec<Value> {
    stack
        .posted()
        .await
        .into_iter()
        .filter(|r| r["path"] == path)
        .collect()
}

/// The API calls the mock got (Vertex AI's token endpoint, which serve polls on its own
/// schedule, left out).
async fn api_calls(stack: &Stack) -> Vec<Value> {
    let mut seen = stack.posted().await;
    seen.retain(|r| !r["path"].as_str().unwrap_or_default().ends_with("/token"));
    seen
}

/// Asserts a Gemini-format error with this code and status.
fn assert_gemini_error(r: &Reply, code: u16, status: &str) {
    assert_eq!(r.status, code, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["status"], status, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(r.header("x-tollgate-request-id").is_some());
}

/// `count_tokens` with the SDK: Gemini and Vertex AI count themselves (the model rewritten, the
/// provider's credential and path); OpenAI-family and Anthropic models are counted by Tollgate
/// with the rules of Anthropic's `count_tokens` (the same prompt gives the same number).
#[tokio::test]
async fn gemini_sdk_counts_tokens_on_every_backend() {
    let stack = Stack::start(options(true));
    let mock_count = MOCK_COUNT.to_string();
    for model in ["gemini-model", "vertex-gemini"] {
        sdk(
            &stack,
            &[
                ("COUNT_MODEL", model),
                ("EXPECTED_TOKENS", &mock_count),
                ("EXPECTED_SOURCE", "provider"),
            ],
        );
    }
    let gemini = at(&stack, "/v1beta/models/gemini-upstream-model:countTokens").await;
    // One count: the unknown-model checks reach no provider.
    assert_eq!(gemini.len(), 1, "{gemini:?}");
    assert_eq!(gemini[0]["headers"]["x-goog-api-key"], GEMINI_SECRET);
    assert_eq!(gemini[0]["body"]["contents"][0]["parts"][0]["text"], PROMPT);
    let vertex = at(
        &stack,
        "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-vertex-model:countTokens",
    )
    .await;
    assert_eq!(vertex.len(), 1, "{vertex:?}");
    assert!(vertex[0]["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));

    // Tollgate's own count: the Anthropic path's number for the same prompt and model.
    stack.clear_upstream_requests().await;
    let anthropic_count = stack
        .post(
            "/v1/messages/count_tokens",
            Some(KEY_ALL),
            json!({"model": "mock-model", "messages": [{"role": "user", "content": PROMPT}]})
                .to_string(),
        )
        .await;
    assert_eq!(anthropic_count.status, 200, "{}", anthropic_count.text);
    let expected = anthropic_count.json()["input_tokens"].as_u64().unwrap();
    sdk(
        &stack,
        &[
            ("COUNT_MODEL", "mock-model"),
            ("EXPECTED_TOKENS", &expected.to_string()),
            ("EXPECTED_SOURCE", "estimate"),
        ],
    );
    // Anthropic-served: the documented estimate (3 per request, 4 per content, a token per
    // 3 bytes of each text: "user" and the prompt).
    let estimate = 3 + 4 + 4u64.div_ceil(3) + (PROMPT.len() as u64).div_ceil(3);
    sdk(
        &stack,
        &[
            ("COUNT_MODEL", "claude-model"),
            ("EXPECTED_TOKENS", &estimate.to_string()),
            ("EXPECTED_SOURCE", "estimate"),
        ],
    );
    assert!(
        api_calls(&stack).await.is_empty(),
        "an estimated count reached a provider"
    );
}

/// `embed_content` with the SDK (one content, several with a task type and dimensions) onto the
/// Gemini API natively, onto Vertex AI's `:predict` and onto an OpenAI embedding model through
/// translation.
#[tokio::test]
async fn gemini_sdk_embeds_through_gemini_and_openai_backends() {
    let stack = Stack::start(options(true));
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "doc-embedder"),
            ("EMBED_DIMENSIONS", MOCK_DIMENSIONS),
        ],
    );
    let native = at(
        &stack,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
    )
    .await;
    assert_eq!(native.len(), 3, "{native:?}");
    for req in &native {
        assert_eq!(req["headers"]["x-goog-api-key"], GEMINI_SECRET, "{req}");
        for r in req["body"]["requests"].as_array().unwrap() {
            assert_eq!(r["model"], "models/gemini-embedding-001", "{req}");
        }
    }
    assert_eq!(
        native[1]["body"]["requests"][0]["taskType"],
        "RETRIEVAL_DOCUMENT"
    );

    stack.clear_upstream_requests().await;
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "vertex-embedding"),
            ("EMBED_DIMENSIONS", MOCK_DIMENSIONS),
        ],
    );
    let predict = at(
        &stack,
        "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/text-embedding-005:predict",
    )
    .await;
    assert_eq!(predict.len(), 3, "{predict:?}");
    assert!(predict[0]["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));
    assert_eq!(
        predict[0]["body"],
        json!({"instances": [{"content": PROMPT}]})
    );
    assert_eq!(
        predict[1]["body"]["instances"][1],
        json!({"content": "a second, longer text to embed", "task_type": "RETRIEVAL_DOCUMENT"})
    );
    assert_eq!(
        predict[1]["body"]["parameters"],
        json!({"outputDimensionality": 4})
    );

    stack.clear_upstream_requests().await;
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "openai-embedding"),
            ("EMBED_DIMENSIONS", MOCK_DIMENSIONS),
        ],
    );
    let translated = at(&stack, "/v1/embeddings").await;
    assert_eq!(translated.len(), 3, "{translated:?}");
    assert_eq!(
        translated[0]["body"],
        json!({"model": "text-embedding-3-small", "input": [PROMPT], "encoding_format": "float"})
    );
    let several = &translated[1]["body"];
    assert_eq!(several["input"].as_array().unwrap().len(), 3, "{several}");
    assert_eq!(several["dimensions"], 4, "{several}");
    assert!(several.get("taskType").is_none(), "{several}");
    assert!(translated[0]["headers"].get("x-goog-api-key").is_none());
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

/// Embeddings are priced (OpenAI's `usage.prompt_tokens`; the estimate for Gemini, whose
/// answer carries no usage) and their spend is in the log event; a count is logged and free.
#[tokio::test]
async fn embeddings_are_priced_in_the_log_event_and_counts_are_free() {
    let ls = LoggedStack::ndjson_with(options(true));
    let stack = &ls.stack;
    let one = json!({"content": {"parts": [{"text": "hello there general kenobi"}]}}).to_string();
    let batch = |model: &str| {
        json!({"requests": [
            {"model": format!("models/{model}"), "content": {"parts": [{"text": "one"}]}},
            {"model": format!("models/{model}"), "content": {"parts": [{"text": "two three"}]}},
        ]})
        .to_string()
    };

    let r = stack
        .post(
            "/v1beta/models/openai-embedding:embedContent",
            Some(KEY_ALL),
            one.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["embedding"]["values"].as_array().unwrap().len(), 8);
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["endpoint"], "embed_content", "{l}");
    assert_eq!(l["provider"], "mock", "{l}");
    assert_eq!(l["upstream_model"], "text-embedding-3-small", "{l}");
    assert_eq!(l["usage_source"], "provider", "{l}");
    let input = l["input_tokens"].as_u64().unwrap();
    assert!(input > 0, "{l}");
    // text-embedding-3-small: 0.02 USD per million tokens.
    assert_eq!(l["cost_picodollars"], input * 20_000, "{l}");

    let r = stack
        .post(
            "/v1/models/doc-embedder:batchEmbedContents",
            Some(KEY_ALL),
            batch("doc-embedder"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["embeddings"].as_array().unwrap().len(), 2);
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["endpoint"], "embed_content", "{l}");
    assert_eq!(l["usage_source"], "estimated", "{l}");
    let input = l["input_tokens"].as_u64().unwrap();
    // 3 per request, a token per 3 bytes of each text.
    assert_eq!(input, 3 + 1 + 3, "{l}");
    // gemini-embedding-001: 0.15 USD per million tokens.
    assert_eq!(l["cost_picodollars"], input * 150_000, "{l}");

    let r = stack
        .post(
            "/v1beta/models/vertex-embedding:batchEmbedContents",
            Some(KEY_ALL),
            batch("vertex-embedding"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["embeddings"].as_array().unwrap().len(), 2);
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["provider"], "vertex", "{l}");
    // Vertex AI's `statistics.token_count` (the mock's: a word each).
    assert_eq!(l["usage_source"], "provider", "{l}");
    assert_eq!(l["input_tokens"], 3, "{l}");
    assert_eq!(l["cost_picodollars"], 3 * 25_000, "{l}");

    let r = stack
        .post(
            "/v1beta/models/gemini-model:countTokens",
            Some(KEY_ALL),
            json!({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"totalTokens": MOCK_COUNT}));
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["endpoint"], "count_tokens", "{l}");
    assert_eq!(l["provider"], "gemini", "{l}");
    assert!(
        l["cost_picodollars"].as_u64().unwrap_or(0) == 0,
        "a count was charged: {l}"
    );
}

/// Bad input gets Gemini's error shape and status, and reaches no provider.
#[tokio::test]
async fn bad_gemini_method_input_gets_gemini_errors() {
    let stack = Stack::start(options(true));
    let post = |path: &'static str, key: &'static str, body: Value| {
        let stack = &stack;
        async move { stack.post(path, Some(key), body.to_string()).await }
    };
    let text = json!({"content": {"parts": [{"text": "hi"}]}});
    let cases: Vec<(Reply, u16, &str)> = vec![
        // No contents.
        (post("/v1beta/models/gemini-model:countTokens", KEY_ALL, json!({})).await, 400, "INVALID_ARGUMENT"),
        (post("/v1beta/models/mock-model:countTokens", KEY_ALL, json!({"contents": "x"})).await, 400, "INVALID_ARGUMENT"),
        (post("/v1beta/models/doc-embedder:embedContent", KEY_ALL, json!({"taskType": "X"})).await, 400, "INVALID_ARGUMENT"),
        (post("/v1beta/models/doc-embedder:batchEmbedContents", KEY_ALL, json!({"requests": []})).await, 400, "INVALID_ARGUMENT"),
        // A batch request naming another model.
        (
            post(
                "/v1beta/models/doc-embedder:batchEmbedContents",
                KEY_ALL,
                json!({"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]}),
            )
            .await,
            400,
            "INVALID_ARGUMENT",
        ),
        // A non-text part.
        (
            post(
                "/v1beta/models/openai-embedding:embedContent",
                KEY_ALL,
                json!({"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}}),
            )
            .await,
            400,
            "INVALID_ARGUMENT",
        ),
        // Not JSON.
        (stack.post("/v1beta/models/doc-embedder:embedContent", Some(KEY_ALL), "{".to_owned()).await, 400, "INVALID_ARGUMENT"),
        // Unknown model; a model the key may not use.
        (post("/v1beta/models/nope:countTokens", KEY_ALL, json!({"contents": []})).await, 404, "NOT_FOUND"),
        (post("/v1beta/models/nope:embedContent", KEY_ALL, text.clone()).await, 404, "NOT_FOUND"),
        (post("/v1beta/models/doc-embedder:embedContent", KEY_LIMITED, text.clone()).await, 403, "PERMISSION_DENIED"),
        // A method Gemini does not have.
        (post("/v1beta/models/doc-embedder:embedEverything", KEY_ALL, text.clone()).await, 404, "NOT_FOUND"),
        // Models whose provider has no Gemini-style embeddings.
        (post("/v1beta/models/claude-model:embedContent", KEY_ALL, text.clone()).await, 400, "INVALID_ARGUMENT"),
        (post("/v1beta/models/vertex-claude:embedContent", KEY_ALL, text.clone()).await, 400, "INVALID_ARGUMENT"),
        // Vertex AI's Gemini embedding models embed one text per `:predict` call.
        (
            post(
                "/v1beta/models/vertex-gemini-embedding:batchEmbedContents",
                KEY_ALL,
                json!({"requests": [
                    {"model": "models/vertex-gemini-embedding", "content": {"parts": [{"text": "a"}]}},
                    {"model": "models/vertex-gemini-embedding", "content": {"parts": [{"text": "b"}]}},
                ]}),
            )
            .await,
            400,
            "INVALID_ARGUMENT",
        ),
    ];
    for (i, (r, code, status)) in cases.iter().enumerate() {
        eprintln!("case {i}");
        assert_gemini_error(r, *code, status);
    }
    assert!(
        api_calls(&stack).await.is_empty(),
        "bad input reached a provider"
    );

    // A GET of a method path.
    let r = stack
        .get("/v1beta/models/doc-embedder:embedContent", Some(KEY_ALL))
        .await;
    assert_gemini_error(&r, 404, "NOT_FOUND");

    // The provider's own refusal: Gemini's passes through, OpenAI's becomes Gemini-shaped.
    let r = post(
        "/v1beta/models/doc-embedder:embedContent",
        KEY_ALL,
        json!({"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 5000}),
    )
    .await;
    assert_gemini_error(&r, 400, "INVALID_ARGUMENT");
    let r = post(
        "/v1beta/models/openai-embedding:embedContent",
        KEY_ALL,
        json!({"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 9000}),
    )
    .await;
    assert_gemini_error(&r, 400, "INVALID_ARGUMENT");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dimensions"),
        "{}",
        r.text
    );
}

/// Embeddings are budgeted: a request whose estimate does not fit the tenant's budget is
/// refused with Gemini's 429 before it reaches a provider; counting, which costs nothing, still
/// answers.
#[tokio::test]
async fn embeddings_are_budgeted_and_counts_are_not() {
    let stack = Stack::start(StackOptions {
        extra_yaml: "budgets:\n  limits:\n    - { id: tiny, scope: tenant, name: acme, period: total, amount_usd: \"0.0000001\" }\n".to_owned(),
        ..options(false)
    });
    let long = "a few words to embed ".repeat(20);
    let r = stack
        .post(
            "/v1beta/models/openai-embedding:embedContent",
            Some(KEY_ALL),
            json!({"content": {"parts": [{"text": long}]}}).to_string(),
        )
        .await;
    assert_gemini_error(&r, 429, "RESOURCE_EXHAUSTED");
    let r = stack
        .post(
            "/v1beta/models/gemini-model:countTokens",
            Some(KEY_ALL),
            json!({"contents": [{"parts": [{"text": long}]}]}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let calls = api_calls(&stack).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0]["path"].as_str().unwrap().ends_with(":countTokens"));
}

/// The key's guardrails judge the texts to embed: a blocked one never reaches the provider, a
/// redacted one reaches it redacted (natively to Gemini and translated to OpenAI alike).
#[tokio::test]
async fn guardrails_judge_the_texts_to_embed() {
    let stack = Stack::start(options(false));
    let r = stack
        .post(
            "/v1beta/models/doc-embedder:embedContent",
            Some(KEY_GUARDED),
            json!({"content": {"parts": [{"text": "card 4111 1111 1111 1111"}]}}).to_string(),
        )
        .await;
    assert_gemini_error(&r, 400, "INVALID_ARGUMENT");
    assert!(api_calls(&stack).await.is_empty());
    for model in ["doc-embedder", "openai-embedding"] {
        let r = stack
            .post(
                &format!("/v1beta/models/{model}:batchEmbedContents"),
                Some(KEY_GUARDED),
                json!({"requests": [
                    {"model": format!("models/{model}"), "content": {"parts": [{"text": "plain"}]}},
                    {"model": format!("models/{model}"), "content": {"parts": [{"text": "mail jane@example.com"}]}},
                ]})
                .to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert_eq!(r.json()["embeddings"].as_array().unwrap().len(), 2);
    }
    let upstream = api_calls(&stack).await;
    assert_eq!(upstream.len(), 2, "{upstream:?}");
    for req in &upstream {
        let body = req["body"].to_string();
        assert!(
            body.contains("[REDACTED:email]") && !body.contains("jane@"),
            "{body}"
        );
        assert!(body.contains("plain"), "{body}");
    }
}
