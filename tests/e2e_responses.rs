//! End to end through real Envoy: OpenAI's Responses API (`POST /v1/responses`, `GET` and
//! `DELETE /v1/responses/{id}`) with the official `openai` SDK onto OpenAI (native), Azure
//! (native), an OpenAI-compatible chat provider, Anthropic, Gemini and Bedrock (through the
//! hub); what the providers see; the store's tenant isolation; refusals in OpenAI's shape;
//! usage and spend in the log event. docs/COMPATIBILITY.md names these tests.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Runs `tests/sdk/responses_sdk.py` with `model` (and its stream-error model).
fn sdk(stack: &Stack, model: &str, stream_error: &str, reasoning: bool) {
    let base = format!("{}/v1", stack.base);
    run_sdk(
        "responses_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_MODEL", model),
            ("TOLLGATE_STREAM_ERROR_MODEL", stream_error),
            ("TOLLGATE_REASONING", if reasoning { "1" } else { "0" }),
        ],
    );
}

#[tokio::test]
async fn openai_sdk_responses_onto_openai_natively() {
    let stack = Stack::start(StackOptions::default());
    sdk(&stack, "mock-model", "stream-error", true);
    let seen = stack.posted().await;
    assert!(!seen.is_empty());
    for req in &seen {
        // The Responses API itself, with the provider's model and never a stored id (the
        // gateway sends the whole conversation).
        assert_eq!(req["path"], "/v1/responses", "{req}");
        assert!(req["body"].get("previous_response_id").is_none(), "{req}");
    }
    // The encrypted reasoning the mock issued went back unchanged (the mock refuses others).
    assert!(seen.iter().any(|r| {
        r["body"]["input"].as_array().is_some_and(|items| {
            items.iter().any(|i| {
                i["type"] == "reasoning"
                    && i["encrypted_content"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("gAAAA-mock-"))
            })
        })
    }));
}

#[tokio::test]
async fn openai_sdk_responses_onto_azure_natively() {
    let stack = Stack::start(StackOptions::default());
    sdk(&stack, "azure-model", "", false);
    for req in &stack.posted().await {
        assert_eq!(req["path"], "/openai/v1/responses", "{req}");
        assert_eq!(req["body"]["model"], "my-deployment", "{req}");
        assert!(req["headers"].get("api-key").is_some(), "{req}");
    }
}

#[tokio::test]
async fn openai_sdk_responses_onto_an_openai_compatible_chat_provider() {
    let stack = Stack::start(StackOptions::default());
    sdk(&stack, "compat-model", "", false);
    for req in &stack.posted().await {
        assert_eq!(req["path"], "/openai/v1/chat/completions", "{req}");
        assert_eq!(req["body"]["model"], "upstream-compat-model", "{req}");
    }
}

#[tokio::test]
async fn openai_sdk_responses_onto_anthropic() {
    let stack = Stack::start(StackOptions::default());
    sdk(&stack, "claude-model", "claude-stream-error", false);
    let seen = stack.posted().await;
    for req in &seen {
        assert_eq!(req["path"], "/v1/messages", "{req}");
        let model = req["body"]["model"].as_str().unwrap();
        assert!(
            matches!(model, "claude-upstream-model" | "mock-stream-error"),
            "{req}"
        );
    }
    // The tool loop's result reached Anthropic as a tool_result answering the call.
    assert!(seen
        .iter()
        .any(|r| r["body"].to_string().contains("tool_result")));
}

#[tokio::test]
async fn openai_sdk_responses_onto_gemini() {
    let stack = Stack::start(StackOptions::default());
    sdk(&stack, "gemini-model", "gemini-stream-error", false);
    let seen = stack.posted().await;
    for req in &seen {
        let path = req["path"].as_str().unwrap();
        assert!(
            path.contains("gemini-upstream-model") || path.contains("mock-stream-error"),
            "{req}"
        );
    }
    assert!(seen
        .iter()
        .any(|r| r["body"].to_string().contains("functionResponse")));
}

#[tokio::test]
async fn openai_sdk_responses_onto_bedrock() {
    let stack = Stack::start(StackOptions::default());
    sdk(&stack, "bedrock-model", "bedrock-stream-error", false);
    let seen = stack.posted().await;
    for req in &seen {
        let path = req["path"].as_str().unwrap();
        assert!(path.contains("/converse"), "{req}");
    }
    assert!(seen
        .iter()
        .any(|r| r["body"].to_string().contains("toolResult")));
}

#[tokio::test]
async fn openai_sdk_responses_onto_vertex_ai_gemini_and_claude() {
    let stack = Stack::start(StackOptions {
        vertex: true,
        ..Default::default()
    });
    sdk(&stack, "vertex-gemini", "vertex-stream-error", false);
    sdk(&stack, "vertex-claude", "vertex-claude-stream-error", false);
    let seen = stack.posted().await;
    let paths: Vec<&str> = seen.iter().filter_map(|r| r["path"].as_str()).collect();
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/publishers/google/models/gemini-vertex-model:")),
        "{paths:?}"
    );
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/publishers/anthropic/models/claude-vertex-model:")),
        "{paths:?}"
    );
}

#[tokio::test]
async fn stored_responses_are_scoped_by_tenant() {
    let stack = Stack::start(StackOptions::default());
    let r = stack
        .post(
            "/v1/responses",
            Some(KEY_ALL),
            json!({"model": "claude-model", "input": "hello there"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let get = |key: &'static str| {
        let url = format!("{}/v1/responses/{id}", stack.base);
        let http = stack.http.clone();
        async move {
            let resp = http.get(url).bearer_auth(key).send().await.unwrap();
            Reply::from(resp).await
        }
    };
    // Another key of the same tenant reads it; a key of another tenant does not see it.
    assert_eq!(get(KEY_LIMITED).await.status, 200);
    let other = get(KEY_GUARDED).await;
    other.assert_openai_error(404, None);
    // Nor can it continue it, or delete it.
    let cont = stack
        .post(
            "/v1/responses",
            Some(KEY_GUARDED),
            json!({"model": "claude-model", "input": "more", "previous_response_id": id})
                .to_string(),
        )
        .await;
    let e = cont.assert_openai_error(400, None);
    assert_eq!(e["error"]["param"], "previous_response_id", "{e}");
    let del = stack
        .http
        .delete(format!("{}/v1/responses/{id}", stack.base))
        .bearer_auth(KEY_GUARDED)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);
    assert_eq!(get(KEY_ALL).await.status, 200);
    // `store: false` is not kept.
    let r = stack
        .post(
            "/v1/responses",
            Some(KEY_ALL),
            json!({"model": "mock-model", "input": "hi", "store": false}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/responses/{id}", stack.base);
    let resp = stack
        .http
        .get(url)
        .bearer_auth(KEY_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn storing_off_refuses_continuations_and_reads() {
    let stack = Stack::start(StackOptions {
        extra_yaml: "responses:\n  store: false\n".to_owned(),
        ..Default::default()
    });
    let r = stack
        .post(
            "/v1/responses",
            Some(KEY_ALL),
            json!({"model": "mock-model", "input": "hi"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let cont = stack
        .post(
            "/v1/responses",
            Some(KEY_ALL),
            json!({"model": "mock-model", "input": "more", "previous_response_id": id}).to_string(),
        )
        .await;
    let e = cont.assert_openai_error(400, None);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("responses.store"),
        "{e}"
    );
    let url = format!("{}/v1/responses/{id}", stack.base);
    let resp = stack
        .http
        .get(url)
        .bearer_auth(KEY_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn bad_responses_input_is_a_400_in_openais_shape() {
    let stack = Stack::start(StackOptions::default());
    for (body, param) in [
        (json!({"input": "hi"}), "model"),
        (
            json!({"model": "claude-model", "input": [{"type": "computer_call_output", "call_id": "x"}]}),
            "input",
        ),
        (
            json!({"model": "mock-model", "input": [{"role": "robot", "content": "x"}]}),
            "input",
        ),
        (json!({"model": "mock-model"}), "input"),
        (
            json!({"model": "claude-model", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools",
        ),
    ] {
        let r = stack
            .post("/v1/responses", Some(KEY_ALL), body.to_string())
            .await;
        let e = r.assert_openai_error(400, None);
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
    }
    // Nothing reached a provider.
    assert!(stack.posted().await.is_empty());
}

/// The log event of `request_id`, waiting for it to arrive.
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

#[tokio::test]
async fn responses_usage_and_spend_reach_the_log_event() {
    let ls = LoggedStack::ndjson();
    let stack = &ls.stack;
    for (model, stream) in [
        ("mock-model", false),
        ("mock-model", true),
        ("claude-model", false),
        ("claude-model", true),
    ] {
        let body = json!({"model": model, "input": "count these five words", "stream": stream});
        let resp = stack
            .http
            .post(format!("{}/v1/responses", stack.base))
            .bearer_auth(KEY_ALL)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let r = Reply::from(resp).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let usage = if stream {
            let done = r
                .text
                .split("\n\n")
                .find(|e| e.contains("event: response.completed"))
                .unwrap_or_else(|| panic!("no response.completed: {}", r.text));
            let data = done.split_once("data: ").unwrap().1;
            serde_json::from_str::<Value>(data).unwrap()["response"]["usage"].clone()
        } else {
            r.json()["usage"].clone()
        };
        let id = r.header("x-tollgate-request-id").unwrap().to_owned();
        let l = logged(&ls.logger, &id).await;
        assert_eq!(l["endpoint"], "responses", "{l}");
        assert_eq!(l["requested_model"], model, "{l}");
        assert_eq!(l["stream"], stream, "{l}");
        assert_eq!(l["usage_source"], "provider", "{l}");
        assert_eq!(
            l["input_tokens"], usage["input_tokens"],
            "{model} {stream}: {l}"
        );
        assert_eq!(
            l["output_tokens"], usage["output_tokens"],
            "{model} {stream}: {l}"
        );
        let input = usage["input_tokens"].as_u64().unwrap();
        let output = usage["output_tokens"].as_u64().unwrap();
        assert!(input > 0 && output > 0, "{usage}");
        if model == "mock-model" {
            // 1.5 and 2 USD per million tokens.
            assert_eq!(
                l["cost_picodollars"],
                input * 1_500_000 + output * 2_000_000,
                "{l}"
            );
        }
    }
}

/// A real `redis-server` listening on a Unix socket only, data in a temporary directory,
/// killed on drop.
struct Redis {
    url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

fn start_redis() -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let mut proc = Proc::spawn(
        "redis",
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path()),
        dir.path(),
    );
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(proc.alive(), "redis-server exited:\n{}", proc.log());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "redis-server did not listen:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis {
        url: format!("redis+unix://{}?db=0", socket.display()),
        _proc: proc,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_share_stored_responses() {
    let redis = start_redis();
    let yaml = format!(
        "budgets:\n  redis: {{ url: \"{}\", timeout_ms: 1000 }}\nresponses:\n  backend: redis\n",
        redis.url
    );
    let opts = || StackOptions {
        extra_yaml: yaml.clone(),
        ..Default::default()
    };
    let (a, b) = (Stack::start(opts()), Stack::start(opts()));
    let r = a
        .post(
            "/v1/responses",
            Some(KEY_ALL),
            json!({"model": "claude-model", "input": "remember the word tangerine"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // The other replica reads it, and continues it with the stored conversation.
    let got = b.get(&format!("/v1/responses/{id}"), Some(KEY_ALL)).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["id"], id.as_str());
    let cont = b
        .post(
            "/v1/responses",
            Some(KEY_ALL),
            json!({"model": "claude-model", "input": "which word?", "previous_response_id": id})
                .to_string(),
        )
        .await;
    assert_eq!(cont.status, 200, "{}", cont.text);
    let sent = b.posted().await;
    assert!(sent
        .iter()
        .any(|r| r["body"].to_string().contains("tangerine")));
    // Another tenant sees nothing there either; a delete on one replica is seen by the other.
    assert_eq!(
        b.get(&format!("/v1/responses/{id}"), Some(KEY_GUARDED))
            .await
            .status,
        404
    );
    let del = a
        .http
        .delete(format!("{}/v1/responses/{id}", a.base))
        .bearer_auth(KEY_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(
        b.get(&format!("/v1/responses/{id}"), Some(KEY_ALL))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn guardrails_judge_responses_requests_and_answers() {
    let stack = Stack::start(StackOptions::default());
    let post = |body: Value| stack.post("/v1/responses", Some(KEY_GUARDED), body.to_string());
    // A request rule blocks, in OpenAI's shape, before any provider is asked.
    let r = post(json!({"model": "mock-model", "input": "my card is 4111 1111 1111 1111"})).await;
    r.assert_openai_error(400, Some("guardrail_blocked"));
    assert!(stack.posted().await.is_empty());
    // A redaction reaches the provider redacted (multi-turn input items too).
    let r = post(json!({"model": "claude-model", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "write to bob@example.com"}]}]}))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = stack.posted().await;
    assert!(
        !sent[0]["body"].to_string().contains("bob@example.com"),
        "{}",
        sent[0]
    );
    stack.clear_upstream_requests().await;
    // A response rule: the (echoing) mock's answer is blocked, whole or streamed. With a
    // response rule, an OpenAI target is asked through Chat Completions, judged there.
    let r = post(json!({"model": "mock-model", "input": "repeat TOPSECRET-1234"})).await;
    r.assert_openai_error(400, Some("guardrail_blocked"));
    let sent = stack.posted().await;
    assert_eq!(sent[0]["path"], "/v1/chat/completions", "{}", sent[0]);
    let r =
        post(json!({"model": "claude-model", "input": "repeat TOPSECRET-1234", "stream": true}))
            .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("event: error"), "{}", r.text);
    assert!(r.text.contains("guardrail_blocked"), "{}", r.text);
    assert!(!r.text.contains("response.completed"), "{}", r.text);
    assert!(!r.text.contains("TOPSECRET-1234"), "{}", r.text);
}

#[tokio::test]
async fn budgets_reserve_settle_and_refuse_responses_as_chat() {
    // Room for a few requests: each reserves its prompt plus 4096 output tokens.
    let stack = Stack::start(StackOptions {
        extra_yaml: "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.03\" }\n".to_owned(),
        ..Default::default()
    });
    let r = stack
        .post(
            "/v1/responses",
            Some(KEY_ALL),
            json!({"model": "mock-model", "input": "five words of prompt here"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let usage = r.json()["usage"].clone();
    // A budgeted request without its own limit goes to the provider with the reserved one.
    let sent = stack.posted().await;
    assert_eq!(sent[0]["path"], "/v1/responses");
    assert_eq!(sent[0]["body"]["max_output_tokens"], 4096, "{}", sent[0]);
    // Settled at the real usage (1.5 and 2 USD per million tokens), nothing left reserved.
    let cost = usage["input_tokens"].as_u64().unwrap() * 1_500_000
        + usage["output_tokens"].as_u64().unwrap() * 2_000_000;
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(
        v["data"][0]["spent_usd"],
        format!("0.{cost:012}").as_str(),
        "{v}"
    );
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
    // A request whose reservation does not fit is refused in OpenAI's shape (429).
    let big = json!({"model": "mock-model", "input": "x", "max_output_tokens": 100_000});
    let r = stack
        .post("/v1/responses", Some(KEY_ALL), big.to_string())
        .await;
    r.assert_openai_error(429, Some("budget_exceeded"));
}

/// Runs `tests/sdk/responses_thinking_sdk.py`'s `plan` with `model`.
fn thinking_sdk(stack: &Stack, model: &str, plan: &str) {
    let base = format!("{}/v1", stack.base);
    run_sdk(
        "responses_thinking_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_MODEL", model),
            ("TOLLGATE_PLAN", plan),
        ],
    );
}

#[tokio::test]
async fn a_thinking_tool_loop_reaches_anthropic_with_its_signed_thinking() {
    let stack = Stack::start(StackOptions::default());
    thinking_sdk(&stack, "claude-model", "thinking");
    let seen = stack.posted().await;
    // `reasoning.effort: low` became a thinking budget; every answer to a tool call reached
    // the mock with the assistant turn opened by the thinking block it signed (the mock
    // refuses a tool loop without it, or with a signature it did not issue).
    assert!(seen
        .iter()
        .all(|r| r["body"]["thinking"]["budget_tokens"] == 2048));
    let replayed: Vec<&Value> = seen
        .iter()
        .filter(|r| {
            r["body"]["messages"].as_array().is_some_and(|m| {
                m.iter().any(|m| {
                    m["role"] == "assistant"
                        && m["content"][0]["type"] == "thinking"
                        && m["content"][0]["signature"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("EqMockSig"))
                        && m["content"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|b| b["type"] == "tool_use")
                })
            })
        })
        .collect();
    // Create: 3 of 4 requests carry earlier thinking, stream the same, continuation 1.
    assert!(replayed.len() >= 7, "{} of {}", replayed.len(), seen.len());
}

#[tokio::test]
async fn a_thinking_tool_loop_reaches_bedrock_claude_with_its_signed_reasoning() {
    let stack = Stack::start(StackOptions::default());
    thinking_sdk(&stack, "bedrock-model", "thinking");
    let seen = stack.posted().await;
    assert!(seen.iter().all(|r| {
        r["body"]["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 2048
    }));
    // Converse's `reasoningContent` with the signature, before the toolUse of its turn.
    let replayed = seen
        .iter()
        .filter(|r| {
            r["body"]["messages"].as_array().is_some_and(|m| {
                m.iter().any(|m| {
                    m["role"] == "assistant"
                        && m["content"][0]["reasoningContent"]["reasoningText"]["signature"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("EqMockSig"))
                        && m["content"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|b| b.get("toolUse").is_some())
                })
            })
        })
        .count();
    assert!(replayed >= 7, "{replayed} of {}", seen.len());
}

#[tokio::test]
async fn the_output_cap_ends_responses_streams_with_response_incomplete() {
    let stack = Stack::start(StackOptions {
        extra_yaml: "budgets:\n  max_output_tokens_per_request: 5\n".to_owned(),
        ..Default::default()
    });
    // Through the hub (Anthropic) and natively (OpenAI's Responses API).
    thinking_sdk(&stack, "claude-model", "cap");
    thinking_sdk(&stack, "mock-model", "cap");
}

#[tokio::test]
async fn responses_agent_loops_run_twice_through_every_hub_backend() {
    let stack = Stack::start(StackOptions::default());
    for model in ["claude-model", "gemini-model", "bedrock-model"] {
        thinking_sdk(&stack, model, "loop");
    }
    let seen = stack.posted().await;
    // Each backend got the second round trip's tool result after the whole first one.
    for marker in ["tool_result", "functionResponse", "toolResult"] {
        let results = seen
            .iter()
            .map(|r| r["body"].to_string().matches(marker).count())
            .max()
            .unwrap_or(0);
        assert!(results >= 2, "{marker}: {results}");
    }
}
