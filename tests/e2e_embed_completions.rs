//! End to end through real Envoy: OpenAI clients' `POST /v1/embeddings` onto Gemini
//! (`:batchEmbedContents`), Vertex AI (`:predict`) and Bedrock (Titan InvokeModel, SigV4), and
//! legacy `POST /v1/completions` onto Anthropic, Gemini, Vertex AI and Bedrock, with the
//! official `openai` SDK; what the providers see on the wire; the log events priced; budgets
//! reserved and settled; refusals in OpenAI's shape. docs/COMPATIBILITY.md names these tests.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TITAN: &str = "amazon.titan-embed-text-v2:0";
const COHERE: &str = "cohere.embed-english-v3";

/// Adds the embedding models (`gemini-embedder` on the Gemini API, `vertex-embedder` and
/// `vertex-gemini-embedder` on Vertex AI, `titan-embedder` and `cohere-embedder` on Bedrock) and prices for the
/// chat models the completions go to.
fn with_models(config: String) -> String {
    let models = format!(
        "models:\n  gemini-embedder:\n    targets: [{{ provider: gemini, model: gemini-embedding-001 }}]\n  \
         vertex-embedder:\n    targets: [{{ provider: vertex, model: text-embedding-005 }}]\n  \
         vertex-gemini-embedder:\n    targets: [{{ provider: vertex, model: gemini-embedding-001 }}]\n  \
         titan-embedder:\n    targets: [{{ provider: bedrock, model: \"{TITAN}\" }}]\n  \
         cohere-embedder:\n    targets: [{{ provider: bedrock, model: {COHERE} }}]\n  \
         fo-complete:\n    strategy: priority\n    failover: {{}}\n    targets: [{{ provider: mock, model: mock-error-500 }}, {{ provider: claude, model: claude-upstream-model }}]\n  \
         fo-embed:\n    strategy: priority\n    failover: {{}}\n    targets: [{{ provider: mock, model: mock-error-500 }}, {{ provider: gemini, model: gemini-embedding-001 }}]\n"
    );
    config.replacen("\nmodels:\n", &format!("\n{models}"), 1).replacen(
        "pricing:\n  models:\n",
        &format!(
            "pricing:\n  models:\n    text-embedding-005: {{ input: \"0.025\", output: \"0\" }}\n    \
             \"{TITAN}\": {{ input: \"0.02\", output: \"0\" }}\n    \
             {COHERE}: {{ input: \"0.1\", output: \"0\" }}\n    \
             claude-upstream-model: {{ input: \"3\", output: \"15\" }}\n    \
             gemini-upstream-model: {{ input: \"0.3\", output: \"2.5\" }}\n"
        ),
        1,
    )
}

fn options() -> StackOptions {
    StackOptions {
        vertex: true,
        patch_config: Some(with_models),
        ..StackOptions::default()
    }
}

fn sdk(stack: &Stack, envs: &[(&str, &str)]) {
    let base = format!("{}/v1", stack.base);
    let mut all = vec![
        ("TOLLGATE_BASE_URL", base.as_str()),
        ("TOLLGATE_KEY", KEY_ALL),
    ];
    all.extend_from_slice(envs);
    run_sdk("embed_completions_sdk.py", &all);
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

/// The API calls the mock got (Vertex AI's token endpoint left out).
async fn api_calls(stack: &Stack) -> Vec<Value> {
    let mut seen = stack.posted().await;
    seen.retain(|r| !r["path"].as_str().unwrap_or_default().ends_with("/token"));
    seen
}

const VERTEX_BASE: &str =
    "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models";

/// `embeddings.create` with the SDK (base64 by default, float, `dimensions`) onto the Gemini
/// API, Vertex AI (a text model taking several inputs, a Gemini model taking one) and Bedrock
/// Titan (one input, SigV4); each provider got its own request shape.
#[tokio::test]
async fn openai_sdk_embeds_through_gemini_vertex_and_bedrock() {
    let stack = Stack::start(options());
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "gemini-embedder"),
            ("EMBED_INPUTS", "3"),
            ("EMBED_DIMENSIONS", "8"),
            ("EMBED_ASK", "4"),
        ],
    );
    let gemini = at(
        &stack,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents",
    )
    .await;
    // Two lists, one wire check, one dimensions: the refusals reached no provider.
    assert_eq!(gemini.len(), 5, "{gemini:?}");
    assert_eq!(gemini[0]["headers"]["x-goog-api-key"], GEMINI_SECRET);
    assert!(gemini[0]["headers"].get("authorization").is_none());
    let requests = gemini[0]["body"]["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[1],
        json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "jumps over the lazy dog"}]}})
    );
    assert_eq!(gemini[4]["body"]["requests"][0]["outputDimensionality"], 4);
    assert!(gemini[4]["body"]["requests"][0].get("taskType").is_none());

    stack.clear_upstream_requests().await;
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "vertex-embedder"),
            ("EMBED_INPUTS", "3"),
            ("EMBED_DIMENSIONS", "8"),
            ("EMBED_ASK", "4"),
        ],
    );
    let predict = at(&stack, &format!("{VERTEX_BASE}/text-embedding-005:predict")).await;
    assert_eq!(predict.len(), 5, "{predict:?}");
    assert!(predict[0]["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));
    assert_eq!(predict[0]["body"]["instances"].as_array().unwrap().len(), 3);
    assert_eq!(
        predict[4]["body"],
        json!({"instances": [{"content": "The quick brown fox"}], "parameters": {"outputDimensionality": 4}})
    );

    stack.clear_upstream_requests().await;
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "vertex-gemini-embedder"),
            ("EMBED_INPUTS", "1"),
            ("EMBED_DIMENSIONS", "8"),
            ("EMBED_ASK", "4"),
        ],
    );
    assert_eq!(
        at(
            &stack,
            &format!("{VERTEX_BASE}/gemini-embedding-001:predict")
        )
        .await
        .len(),
        5
    );

    stack.clear_upstream_requests().await;
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "titan-embedder"),
            ("EMBED_INPUTS", "1"),
            ("EMBED_DIMENSIONS", "1024"),
            ("EMBED_ASK", "256"),
        ],
    );
    let invoke = at(&stack, "/model/amazon.titan-embed-text-v2%3A0/invoke").await;
    assert_eq!(invoke.len(), 5, "{invoke:?}");
    assert!(invoke[0]["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 "));
    assert_eq!(
        invoke[0]["body"],
        json!({"inputText": "The quick brown fox", "normalize": true})
    );
    assert_eq!(
        invoke[4]["body"],
        json!({"inputText": "The quick brown fox", "dimensions": 256, "normalize": true})
    );

    // Cohere Embed on Bedrock batches (no `dimensions`: one output size).
    stack.clear_upstream_requests().await;
    sdk(
        &stack,
        &[
            ("EMBED_MODEL", "cohere-embedder"),
            ("EMBED_INPUTS", "3"),
            ("EMBED_DIMENSIONS", "1024"),
        ],
    );
    let invoke = at(&stack, &format!("/model/{COHERE}/invoke")).await;
    assert_eq!(invoke.len(), 4, "{invoke:?}");
    assert!(invoke[0]["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 "));
    assert_eq!(
        invoke[0]["body"],
        json!({"texts": ["The quick brown fox", "jumps over the lazy dog", "and runs away"], "input_type": "search_document"})
    );
}

/// `completions.create`, streaming (with and without `include_usage`) and not, onto
/// Anthropic, Gemini, Vertex AI (Claude and Gemini) and Bedrock: the prompt reached each as one
/// user turn, `max_tokens` as the provider's own limit.
#[tokio::test]
async fn openai_sdk_completes_through_anthropic_gemini_vertex_and_bedrock() {
    let stack = Stack::start(options());
    for model in [
        "claude-model",
        "gemini-model",
        "bedrock-model",
        "vertex-claude",
        "vertex-gemini",
    ] {
        stack.clear_upstream_requests().await;
        sdk(&stack, &[("COMPLETION_MODEL", model)]);
        let calls = api_calls(&stack).await;
        // Non-streamed, streamed with usage, streamed without: the refusals reached no provider.
        assert_eq!(calls.len(), 3, "{model}: {calls:?}");
        let body = &calls[0]["body"];
        let prompt = "Say hello to the Tollgate gateway and tell me what you are";
        match model {
            "claude-model" | "vertex-claude" => {
                assert_eq!(
                    body["messages"],
                    json!([{"role": "user", "content": [{"type": "text", "text": prompt}]}]),
                    "{model}"
                );
                assert_eq!(body["max_tokens"], 64, "{model}");
            }
            "gemini-model" | "vertex-gemini" => {
                assert_eq!(
                    body["contents"],
                    json!([{"role": "user", "parts": [{"text": prompt}]}]),
                    "{model}"
                );
                assert_eq!(body["generationConfig"]["maxOutputTokens"], 64, "{model}");
            }
            _ => {
                assert_eq!(
                    body["messages"],
                    json!([{"role": "user", "content": [{"text": prompt}]}]),
                    "{model}"
                );
                assert_eq!(body["inferenceConfig"]["maxTokens"], 64, "{model}");
                assert!(calls[1]["path"]
                    .as_str()
                    .unwrap()
                    .ends_with("/converse-stream"));
            }
        }
    }
    // OpenAI's own legacy path is unchanged: the body goes as the client sent it.
    stack.clear_upstream_requests().await;
    let r = stack
        .post(
            "/v1/completions",
            Some(KEY_ALL),
            json!({"model": "mock-model", "prompt": ["one", "two"], "echo": false}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 2);
    let seen = at(&stack, "/v1/completions").await;
    assert_eq!(seen[0]["body"]["prompt"], json!(["one", "two"]));
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

/// Embeddings and completions through the hub are priced from the provider's usage where it
/// reports one (Vertex AI's `token_count`, Titan's `inputTextTokenCount`, Anthropic's and
/// Bedrock's usage), from the estimate where it does not (Gemini's batch); the spend is in the
/// log event and settled on the budget (nothing left reserved).
#[tokio::test]
async fn hub_embeddings_and_completions_are_priced_logged_and_settled() {
    let ls = LoggedStack::ndjson_with(StackOptions {
        extra_yaml: "budgets:\n  limits:\n    - { id: all-daily, scope: key, name: all, period: daily, amount_usd: \"10\" }\n".to_owned(),
        ..options()
    });
    let stack = &ls.stack;
    let embed = |model: &str, input: Value| {
        json!({"model": model, "input": input, "encoding_format": "float"}).to_string()
    };
    let mut spent: u64 = 0;

    let r = stack
        .post(
            "/v1/embeddings",
            Some(KEY_ALL),
            embed("titan-embedder", json!("four words right here")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["usage"]["prompt_tokens"], 4, "{v}");
    assert_eq!(v["model"], TITAN);
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["endpoint"], "embeddings", "{l}");
    assert_eq!(l["provider"], "bedrock", "{l}");
    assert_eq!(l["usage_source"], "provider", "{l}");
    assert_eq!(l["input_tokens"], 4, "{l}");
    assert_eq!(l["cost_picodollars"], 4 * 20_000, "{l}");
    spent += 4 * 20_000;

    // Cohere on Bedrock: usage from Bedrock's token count header.
    let r = stack
        .post(
            "/v1/embeddings",
            Some(KEY_ALL),
            embed("cohere-embedder", json!(["one", "two three"])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["usage_source"], "provider", "{l}");
    assert_eq!(l["input_tokens"], 3, "{l}");
    assert_eq!(l["cost_picodollars"], 3 * 100_000, "{l}");
    spent += 3 * 100_000;

    let r = stack
        .post(
            "/v1/embeddings",
            Some(KEY_ALL),
            embed("vertex-embedder", json!(["one", "two three"])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["provider"], "vertex", "{l}");
    assert_eq!(l["usage_source"], "provider", "{l}");
    assert_eq!(l["input_tokens"], 3, "{l}");
    assert_eq!(l["cost_picodollars"], 3 * 25_000, "{l}");
    spent += 3 * 25_000;

    let r = stack
        .post(
            "/v1/embeddings",
            Some(KEY_ALL),
            embed("gemini-embedder", json!(["one", "two three"])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["usage_source"], "estimated", "{l}");
    let input = l["input_tokens"].as_u64().unwrap();
    // 3 per request, a token per 3 bytes of each text.
    assert_eq!(input, 3 + 1 + 3, "{l}");
    assert_eq!(v["usage"]["prompt_tokens"], input, "{v}");
    // gemini-embedding-001: 0.15 USD per million tokens.
    assert_eq!(l["cost_picodollars"], input * 150_000, "{l}");
    spent += input * 150_000;

    let r = stack
        .post(
            "/v1/completions",
            Some(KEY_ALL),
            json!({"model": "claude-model", "prompt": "Say hello", "max_tokens": 20}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "text_completion", "{v}");
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["endpoint"], "completions", "{l}");
    assert_eq!(l["provider"], "claude", "{l}");
    assert_eq!(l["usage_source"], "provider", "{l}");
    let (i, o) = (
        l["input_tokens"].as_u64().unwrap(),
        l["output_tokens"].as_u64().unwrap(),
    );
    assert_eq!(
        (
            v["usage"]["prompt_tokens"].as_u64(),
            v["usage"]["completion_tokens"].as_u64()
        ),
        (Some(i), Some(o))
    );
    assert!(i > 0 && o > 0, "{l}");
    assert_eq!(l["cost_picodollars"], i * 3_000_000 + o * 15_000_000, "{l}");
    spent += i * 3_000_000 + o * 15_000_000;

    // A stream through Bedrock's event stream: its usage read, priced at Claude 3.5 Sonnet's.
    let r = stack
        .post(
            "/v1/completions",
            Some(KEY_ALL),
            json!({"model": "bedrock-model", "prompt": "Say hello", "max_tokens": 20, "stream": true}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("\"object\":\"text_completion\""),
        "{}",
        r.text
    );
    assert!(r.text.trim_end().ends_with("data: [DONE]"), "{}", r.text);
    let l = logged(&ls.logger, r.header("x-tollgate-request-id").unwrap()).await;
    assert_eq!(l["endpoint"], "completions", "{l}");
    assert_eq!(l["stream"], true, "{l}");
    let (i, o) = (
        l["input_tokens"].as_u64().unwrap(),
        l["output_tokens"].as_u64().unwrap(),
    );
    assert!(i > 0 && o > 0, "{l}");
    assert_eq!(l["cost_picodollars"], i * 3_000_000 + o * 15_000_000, "{l}");
    spent += i * 3_000_000 + o * 15_000_000;

    // The budget holds exactly what the log events cost, nothing left reserved.
    let start = Instant::now();
    let mut v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    while v["data"][0]["reserved_usd"] != "0.000000000000"
        && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    }
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
    assert_eq!(v["data"][0]["spent_usd"], format!("0.{spent:012}"), "{v}");
}

/// What the providers cannot serve is refused in OpenAI's shape, naming the member, and
/// reaches no provider; a provider's own error comes back in OpenAI's shape.
#[tokio::test]
async fn refusals_and_provider_errors_come_in_openai_shape() {
    let stack = Stack::start(options());
    let post = |path: &'static str, body: Value| {
        let stack = &stack;
        async move { stack.post(path, Some(KEY_ALL), body.to_string()).await }
    };
    let cases: Vec<(Reply, &str)> = vec![
        // Anthropic (and Vertex AI's Claude) have no embeddings API.
        (
            post(
                "/v1/embeddings",
                json!({"model": "claude-model", "input": "a"}),
            )
            .await,
            "model",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "vertex-claude", "input": "a"}),
            )
            .await,
            "model",
        ),
        // A Bedrock model that is not a Titan embedding model.
        (
            post(
                "/v1/embeddings",
                json!({"model": "bedrock-model", "input": "a"}),
            )
            .await,
            "model",
        ),
        // Token arrays, several inputs to one-input models, too many for Gemini's batch.
        (
            post(
                "/v1/embeddings",
                json!({"model": "gemini-embedder", "input": [[1, 2, 3]]}),
            )
            .await,
            "input",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "gemini-embedder", "input": [1, 2, 3]}),
            )
            .await,
            "input",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "titan-embedder", "input": ["a", "b"]}),
            )
            .await,
            "input",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "vertex-gemini-embedder", "input": ["a", "b"]}),
            )
            .await,
            "input",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "gemini-embedder", "input": vec!["x"; 101]}),
            )
            .await,
            "input",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "gemini-embedder", "input": "a", "encoding_format": "int8"}),
            )
            .await,
            "encoding_format",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "cohere-embedder", "input": "a", "dimensions": 256}),
            )
            .await,
            "dimensions",
        ),
        (
            post(
                "/v1/embeddings",
                json!({"model": "cohere-embedder", "input": vec!["x"; 97]}),
            )
            .await,
            "input",
        ),
        // Legacy completions: members that change the answer, several prompts, token prompts.
        (
            post(
                "/v1/completions",
                json!({"model": "claude-model", "prompt": "a", "echo": true}),
            )
            .await,
            "echo",
        ),
        (
            post(
                "/v1/completions",
                json!({"model": "gemini-model", "prompt": "a", "logprobs": 1}),
            )
            .await,
            "logprobs",
        ),
        (
            post(
                "/v1/completions",
                json!({"model": "bedrock-model", "prompt": "a", "suffix": "z"}),
            )
            .await,
            "suffix",
        ),
        (
            post(
                "/v1/completions",
                json!({"model": "bedrock-model", "prompt": ["a", "b"]}),
            )
            .await,
            "prompt",
        ),
        (
            post(
                "/v1/completions",
                json!({"model": "claude-model", "prompt": [1, 2]}),
            )
            .await,
            "prompt",
        ),
        (
            post("/v1/completions", json!({"model": "claude-model"})).await,
            "prompt",
        ),
    ];
    for (i, (r, param)) in cases.iter().enumerate() {
        let v = r.assert_openai_error(400, None);
        assert_eq!(v["error"]["param"], *param, "case {i}: {v}");
    }
    assert!(
        api_calls(&stack).await.is_empty(),
        "a refused request reached a provider"
    );

    // The provider's own refusal (Titan takes 256, 512 or 1024 dimensions) in OpenAI's shape.
    let r = post(
        "/v1/embeddings",
        json!({"model": "titan-embedder", "input": "a", "dimensions": 100}),
    )
    .await;
    let v = r.assert_openai_error(400, None);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dimensions"),
        "{v}"
    );
    // A 429 of Gemini's for a legacy completion, in OpenAI's shape.
    let r = post(
        "/v1/completions",
        json!({"model": "gemini-rate-limited", "prompt": "a"}),
    )
    .await;
    r.assert_openai_error(429, None);
}

/// The text of a `text_completion` body or stream (`data:` chunks).
fn completion_text(r: &Reply, stream: bool) -> String {
    if !stream {
        return r.json()["choices"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    r.text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .map(|v| {
            assert_eq!(v["object"], "text_completion", "{v}");
            v["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// A key's response guardrails judge legacy completions through the hub, streamed and not:
/// the phone number the provider wrote never reaches the client; the key without a policy gets
/// it as written.
#[tokio::test]
async fn response_guardrails_judge_hub_completions() {
    let stack = Stack::start(options());
    let phone = "+44 20 7946 0958";
    let prompt = format!("call me at {phone} tomorrow");
    for model in ["claude-model", "gemini-model", "bedrock-model"] {
        for stream in [false, true] {
            let body =
                json!({"model": model, "prompt": prompt, "max_tokens": 64, "stream": stream})
                    .to_string();
            let r = stack
                .post("/v1/completions", Some(KEY_GUARDED), body.clone())
                .await;
            assert_eq!(r.status, 200, "{model}: {}", r.text);
            assert!(!r.text.contains("7946"), "{model}: {}", r.text);
            assert_eq!(
                completion_text(&r, stream),
                "Mock reply to: call me at [REDACTED:reply-phone] tomorrow",
                "{model} stream {stream}"
            );
            let r = stack.post("/v1/completions", Some(KEY_ALL), body).await;
            assert!(
                completion_text(&r, stream).contains(phone),
                "{model}: {}",
                r.text
            );
        }
    }
}

/// A failover chain from an OpenAI target that fails (500) to a target of another dialect:
/// the later attempt is translated for its target, and the answer read as that target's
/// (a text completion, streamed and not; OpenAI's embeddings list from Gemini's batch).
#[tokio::test]
async fn failover_from_openai_to_a_hub_target_translates_the_later_attempt() {
    let stack = Stack::start(options());
    for stream in [false, true] {
        let r = stack
            .post(
                "/v1/completions",
                Some(KEY_ALL),
                json!({"model": "fo-complete", "prompt": "Say hello", "max_tokens": 20, "stream": stream})
                    .to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "stream {stream}: {}", r.text);
        assert_eq!(
            r.header("x-tollgate-provider"),
            Some("claude"),
            "{:?}",
            r.headers
        );
        assert_eq!(completion_text(&r, stream), "Mock reply to: Say hello");
        if !stream {
            assert_eq!(r.json()["object"], "text_completion");
        }
    }
    let claude = at(&stack, "/v1/messages").await;
    assert_eq!(claude.len(), 2, "{claude:?}");
    assert_eq!(
        claude[0]["body"]["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}])
    );

    for format in ["float", "base64"] {
        let r = stack
            .post(
                "/v1/embeddings",
                Some(KEY_ALL),
                json!({"model": "fo-embed", "input": ["a", "b"], "encoding_format": format})
                    .to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{format}: {}", r.text);
        assert_eq!(r.header("x-tollgate-provider"), Some("gemini"));
        let v = r.json();
        assert_eq!(v["object"], "list", "{v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
        match format {
            "float" => assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 8),
            _ => assert!(v["data"][1]["embedding"].is_string(), "{v}"),
        }
    }
    assert_eq!(
        at(
            &stack,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        )
        .await
        .len(),
        2
    );
}

/// A legacy completion stream through the hub cut at `budgets.max_output_tokens_per_request`
/// ends with a `text_completion` chunk (`finish_reason: "length"`), the usage chunk asked for
/// and `[DONE]`: the official SDK reads it to the end.
#[tokio::test]
async fn a_hub_completion_stream_cut_at_its_output_cap_ends_as_a_text_completion() {
    let stack = Stack::start(StackOptions {
        extra_yaml: "budgets:\n  max_output_tokens_per_request: 3\n".to_owned(),
        ..options()
    });
    let body = json!({"model": "claude-model", "prompt": "one two three four five six seven eight",
        "max_tokens": 64, "stream": true, "stream_options": {"include_usage": true}});
    let r = stack
        .post("/v1/completions", Some(KEY_ALL), body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.trim_end().ends_with("data: [DONE]"), "{}", r.text);
    let chunks: Vec<Value> = r
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "text_completion", "{c}");
    }
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1, "{}", r.text);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "length");
    assert_eq!(finish[0]["choices"][0]["text"], "");
    assert!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64() <= Some(3));
    let text = completion_text(&r, true);
    assert!(text.len() < "Mock reply to: one two three four five six seven eight".len());
}
