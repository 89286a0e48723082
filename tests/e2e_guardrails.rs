//! Guardrails end to end through real Envoy: a key whose tenant has the `e2e` policy (see
//! `tests/common`) gets request text blocked, redacted or flagged before it reaches the
//! provider, and response text redacted in flight or blocked, in the OpenAI and the Anthropic
//! dialect. The mock echoes the prompt, so what it echoes is what the provider saw.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

const CARD: &str = "4111 1111 1111 1111";
const EMAIL: &str = "jane.doe@example.com";
const PHONE: &str = "+44 20 7946 0958";

/// Sends a request in `dialect` ("openai": chat completions on `mock-model`; "anthropic":
/// messages on `claude-model`) with the guarded key.
async fn send(stack: &Stack, dialect: &str, text: &str, stream: bool) -> Reply {
    let (path, body) = match dialect {
        "openai" => (
            "/v1/chat/completions",
            json!({"model": "mock-model", "stream": stream,
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}),
        ),
        _ => (
            "/v1/messages",
            json!({"model": "claude-model", "max_tokens": 64, "stream": stream,
                "system": "be brief",
                "messages": [{"role": "user", "content": text}]}),
        ),
    };
    stack.post(path, Some(KEY_GUARDED), body.to_string()).await
}

/// The assistant text of a response (whole or streamed) in `dialect`, and its error event.
fn reply_text(dialect: &str, r: &Reply, stream: bool) -> (String, Option<Value>) {
    if !stream {
        let v = r.json();
        let text = match dialect {
            "openai" => v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            _ => v["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        return (text, v.get("error").cloned());
    }
    let mut text = String::new();
    let mut error = None;
    for event in r.text.split("\n\n") {
        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        let piece = match dialect {
            "openai" => v["choices"][0]["delta"]["content"].as_str(),
            _ => v["delta"]["text"].as_str(),
        };
        text.push_str(piece.unwrap_or_default());
        if v.get("error").is_some() {
            error = Some(v);
        }
    }
    (text, error)
}

fn assert_blocked(dialect: &str, r: &Reply, rule: &str, secret: &str) {
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(!r.text.contains(secret), "the error must not echo the text");
    let v = r.json();
    match dialect {
        "openai" => {
            assert_eq!(v["error"]["code"], "guardrail_blocked", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        }
        _ => {
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        }
    }
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("`{rule}`")), "{message}");
}

async fn counter(stack: &Stack, rule: &str, action: &str, side: &str) -> u64 {
    let want = format!(
        "tollgate_guardrail_verdicts_total{{rule=\"{rule}\",action=\"{action}\",side=\"{side}\"}} "
    );
    stack
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&want).map(|n| n.trim().parse().unwrap()))
        .unwrap_or(0)
}

fn rid(r: &Reply) -> String {
    r.header("x-tollgate-request-id").unwrap().to_owned()
}

/// The stored log line of each request id, once the logger holds `n` lines.
async fn log_lines(logger: &Logger, n: usize) -> Vec<Value> {
    let start = std::time::Instant::now();
    while logger.lines().len() < n && start.elapsed() < std::time::Duration::from_secs(30) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    logger.lines()
}

async fn guardrails_in(dialect: &str) {
    let logger_dir = tempfile::tempdir().unwrap();
    let logger = Logger::start(ANY_PORT, &logger_dir.path().join("data"), logger_dir.path());
    let stack = Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        ..Default::default()
    });
    let mut expect: Vec<(String, Vec<&str>, &str)> = Vec::new();

    // Block: refused in the client's dialect, naming the rule; nothing reaches the provider.
    stack.clear_upstream_requests().await;
    let r = send(&stack, dialect, &format!("my card is {CARD} thanks"), false).await;
    assert_blocked(dialect, &r, "no-cards", CARD);
    expect.push((rid(&r), vec!["request:block:no-cards"], "guardrail_blocked"));
    assert!(
        stack.posted().await.is_empty(),
        "a blocked request went upstream"
    );
    assert_eq!(counter(&stack, "no-cards", "block", "request").await, 1);

    // Redact: the provider sees the redacted text (the mock parsed the body, so its length
    // was right), and echoes it.
    stack.clear_upstream_requests().await;
    let r = send(&stack, dialect, &format!("write to {EMAIL} today"), false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = stack.posted().await;
    assert_eq!(seen.len(), 1);
    let upstream = seen[0]["body"].to_string();
    assert!(!upstream.contains(EMAIL), "{upstream}");
    assert!(upstream.contains("[REDACTED:email]"), "{upstream}");
    let (text, _) = reply_text(dialect, &r, false);
    assert!(
        text.contains("[REDACTED:email]") && !text.contains(EMAIL),
        "{text}"
    );
    assert_eq!(counter(&stack, "email", "redact", "request").await, 1);
    expect.push((rid(&r), vec!["request:redact:email"], ""));

    // Flag: passes unchanged, counted.
    stack.clear_upstream_requests().await;
    let r = send(&stack, dialect, "status of Project X please", false).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(stack.posted().await[0]["body"]
        .to_string()
        .contains("status of Project X please"));
    assert_eq!(counter(&stack, "watch", "flag", "request").await, 1);
    expect.push((rid(&r), vec!["request:flag:watch"], ""));

    // Response, streamed: the mock sends the phone number one word per chunk; the client never
    // sees it, and the stream is well formed to its end.
    let prompt = format!("call me at {PHONE} tomorrow");
    let r = send(&stack, dialect, &prompt, true).await;
    assert_eq!(r.status, 200, "{}", r.text);
    expect.push((rid(&r), vec!["response:redact:reply-phone"], ""));
    let (text, error) = reply_text(dialect, &r, true);
    assert!(error.is_none(), "{}", r.text);
    assert!(!r.text.contains("7946"), "{}", r.text);
    assert_eq!(
        text,
        "Mock reply to: call me at [REDACTED:reply-phone] tomorrow"
    );
    match dialect {
        "openai" => assert!(r.text.trim_end().ends_with("data: [DONE]"), "{}", r.text),
        _ => assert!(r.text.contains("event: message_stop"), "{}", r.text),
    }
    // The key without a policy gets the same reply unredacted.
    let plain = match dialect {
        "openai" => json!({"model": "mock-model", "stream": true,
            "messages": [{"role": "user", "content": prompt}]}),
        _ => json!({"model": "claude-model", "max_tokens": 64, "stream": true,
            "messages": [{"role": "user", "content": prompt}]}),
    };
    let path = if dialect == "openai" {
        "/v1/chat/completions"
    } else {
        "/v1/messages"
    };
    let r = stack.post(path, Some(KEY_ALL), plain.to_string()).await;
    assert!(reply_text(dialect, &r, true).0.contains(PHONE));

    // Response, complete: redacted too.
    let r = send(&stack, dialect, &prompt, false).await;
    let (text, _) = reply_text(dialect, &r, false);
    assert_eq!(
        text,
        "Mock reply to: call me at [REDACTED:reply-phone] tomorrow"
    );
    assert_eq!(
        counter(&stack, "reply-phone", "redact", "response").await,
        2
    );

    // Response, streamed, blocked: the stream ends with an error event in the client's dialect.
    let r = send(&stack, dialect, "say TOPSECRET-4242 now", true).await;
    assert_eq!(r.status, 200);
    let (text, error) = reply_text(dialect, &r, true);
    assert!(!r.text.contains("TOPSECRET-4242"), "{}", r.text);
    assert!(!text.contains("TOPSECRET"));
    let error = error.unwrap_or_else(|| panic!("no error event: {}", r.text));
    assert!(error.to_string().contains("`reply-secret`"), "{error}");
    expect.push((
        rid(&r),
        vec!["response:block:reply-secret"],
        "guardrail_blocked",
    ));

    // Response, complete, blocked: an error instead of the answer.
    let r = send(&stack, dialect, "say TOPSECRET-4242 now", false).await;
    assert_blocked(dialect, &r, "reply-secret", "TOPSECRET-4242");
    expect.push((
        rid(&r),
        vec!["response:block:reply-secret"],
        "guardrail_blocked",
    ));

    // Every verdict is in the request's log event, and no matched text is anywhere in the log.
    let lines = log_lines(&logger, 8).await;
    for (id, verdicts, class) in expect {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no log line for {id}: {lines:?}"));
        assert_eq!(line["guardrail_verdicts"], json!(verdicts), "{line}");
        assert_eq!(line["error_class"], class, "{line}");
    }
    let all = serde_json::to_string(&lines).unwrap();
    for secret in [CARD, EMAIL, PHONE, "TOPSECRET-4242"] {
        assert!(!all.contains(secret));
        assert!(!stack.serve_log().contains(secret), "serve logged {secret}");
    }
}

#[tokio::test]
async fn guardrails_openai_dialect() {
    guardrails_in("openai").await;
}

#[tokio::test]
async fn guardrails_anthropic_dialect() {
    guardrails_in("anthropic").await;
}

#[tokio::test]
async fn guardrails_as_the_official_sdks_see_them() {
    let stack = Stack::start(StackOptions::default());
    run_sdk(
        "guardrails_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &stack.base),
            ("TOLLGATE_KEY", KEY_GUARDED),
            ("TOLLGATE_OPENAI_MODEL", "mock-model"),
            ("TOLLGATE_ANTHROPIC_MODEL", "claude-model"),
        ],
    );
}

#[tokio::test]
async fn a_reload_that_drops_a_keys_policy_is_refused_and_the_key_stays_guarded() {
    let stack = Stack::start(StackOptions::default());
    let original = std::fs::read_to_string(&stack.config_path).unwrap();
    // The `e2e` policy renamed away: the tenant mapping (and so the guarded key) would name a
    // policy that no longer exists.
    let dropped = original.replace("    e2e:\n      rules:", "    other:\n      rules:");
    assert_ne!(dropped, original);
    std::fs::write(&stack.config_path, dropped).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stack.serve_log().contains("Rejected new config") {
        assert!(
            std::time::Instant::now() < deadline,
            "no rejection logged:\n{}",
            stack.serve_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = stack.serve_log();
    assert!(
        log.contains("guardrails.tenants.guarded")
            && log.contains("unknown guardrails policy `e2e`"),
        "{log}"
    );
    // Still guarded by the policy in force: the card is refused, nothing reaches the provider.
    let r = send(&stack, "openai", &format!("my card is {CARD}"), false).await;
    let v = r.assert_openai_error(400, Some("guardrail_blocked"));
    assert!(v["error"]["message"].as_str().unwrap().contains("no-cards"));
    assert!(stack.posted().await.is_empty());
}

/// A tool whose `to` argument the mock fills with `value` (the property's default).
fn tool(dialect: &str, value: &str) -> Value {
    let schema =
        json!({"type": "object", "properties": {"to": {"type": "string", "default": value}}});
    match dialect {
        "openai" => json!({"type": "function", "function": {"name": "send", "parameters": schema}}),
        _ => json!({"name": "send", "input_schema": schema}),
    }
}

/// The tool-call arguments the client got (OpenAI `arguments` or Anthropic `input`, whole or
/// streamed), parsed: they must be valid JSON.
fn tool_arguments(dialect: &str, r: &Reply, stream: bool) -> Value {
    if !stream {
        let v = r.json();
        return match dialect {
            "openai" => serde_json::from_str(
                v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap(),
            _ => v["content"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["type"] == "tool_use")
                .unwrap()["input"]
                .clone(),
        };
    }
    let mut text = String::new();
    for data in r.text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(a) = v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        {
            text.push_str(a);
        }
        if let Some(p) = v["delta"]["partial_json"].as_str() {
            text.push_str(p);
        }
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("arguments not JSON ({e}): {text}"))
}

#[tokio::test]
async fn tool_call_arguments_are_judged_both_ways_and_stay_valid_json() {
    let stack = Stack::start(StackOptions::default());
    // Request side, OpenAI: an assistant tool call in the history carries an email: redacted
    // inside the arguments, which the provider still gets as valid JSON.
    let body = json!({"model": "mock-model", "messages": [
        {"role": "user", "content": "send it"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "send", "arguments": json!({"to": EMAIL}).to_string()}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sent"}]});
    let r = stack
        .post("/v1/chat/completions", Some(KEY_GUARDED), body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let posted = stack.posted().await;
    let sent = &posted.last().unwrap()["body"];
    let args = sent["messages"][1]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap_or_else(|| panic!("{sent}"));
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"to": "[REDACTED:email]"})
    );
    // Request side, Anthropic: a card in a tool_use input of the history is blocked.
    let body = json!({"model": "claude-model", "max_tokens": 32, "messages": [
        {"role": "user", "content": "pay"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "pay", "input": {"card": CARD}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]});
    let r = stack
        .post("/v1/messages", Some(KEY_GUARDED), body.to_string())
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("no-cards"), "{}", r.text);

    // Response side: the model's tool call carries a phone number (the `reply-phone` rule
    // redacts it), whole and streamed, in both dialects.
    for (dialect, stream) in [
        ("openai", false),
        ("anthropic", false),
        ("anthropic", true),
        ("openai", true),
    ] {
        let (path, body) = match dialect {
            "openai" => (
                "/v1/chat/completions",
                json!({"model": "mock-model", "stream": stream, "tools": [tool(dialect, PHONE)],
                    "messages": [{"role": "user", "content": "call them"}]}),
            ),
            _ => (
                "/v1/messages",
                json!({"model": "claude-model", "max_tokens": 32, "stream": stream,
                    "tools": [tool(dialect, PHONE)],
                    "messages": [{"role": "user", "content": "call them"}]}),
            ),
        };
        let r = stack.post(path, Some(KEY_GUARDED), body.to_string()).await;
        assert_eq!(r.status, 200, "{dialect} {stream}: {}", r.text);
        assert!(!r.text.contains(PHONE), "{dialect} {stream}: {}", r.text);
        assert_eq!(
            tool_arguments(dialect, &r, stream),
            json!({"to": "[REDACTED:reply-phone]"}),
            "{dialect} {stream}"
        );
    }
}
