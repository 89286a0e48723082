//! Translator tests: golden fixtures per pair (request, response, stream, written from the
//! providers' documented wire formats, under `tests/<pair>/`), stream validators that check
//! what each official SDK relies on, and the split-anywhere property for every stream.
//!
//! `UPDATE_GOLDEN=1 cargo test -p tollgate-extproc translator` rewrites the `*.expected.*`
//! files; review the diff before committing it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{json, Value};
use tollgate_core::config::ApiFamily;
use tollgate_core::Endpoint;

use super::hub::{Effort, Reasoning};
use super::json::RawObject;
use super::*;
use crate::stream::tests::split_at;

mod fidelity;
mod gemini;

const CREATED: u64 = 1_700_000_000;

const OPENAI_TO_ANTHROPIC: Pair = Pair {
    client: ApiFamily::OpenAi,
    upstream: ApiFamily::Anthropic,
};
const ANTHROPIC_TO_OPENAI: Pair = Pair {
    client: ApiFamily::Anthropic,
    upstream: ApiFamily::OpenAi,
};
const ANTHROPIC_TO_ANTHROPIC: Pair = Pair {
    client: ApiFamily::Anthropic,
    upstream: ApiFamily::Anthropic,
};

fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/translator/tests")
        .join(rel)
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Compares `actual` with the golden file (JSON compared as values, streams as text).
fn golden(rel: &str, actual: &[u8]) {
    let path = fixture_path(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let pretty = match serde_json::from_slice::<Value>(actual) {
            Ok(v) if rel.ends_with(".json") => {
                let mut s = serde_json::to_vec_pretty(&v).unwrap();
                s.push(b'\n');
                s
            }
            _ => actual.to_vec(),
        };
        std::fs::write(&path, pretty).unwrap();
        return;
    }
    let want = fixture(rel);
    if rel.ends_with(".json") {
        let want: Value = serde_json::from_slice(&want).unwrap();
        let got: Value = serde_json::from_slice(actual).unwrap();
        assert_eq!(got, want, "{rel} differs:\n{got:#}");
    } else {
        assert_eq!(
            String::from_utf8_lossy(actual),
            String::from_utf8_lossy(&want),
            "{rel} differs"
        );
    }
}

fn request(pair: Pair, rel: &str, upstream_model: &str) -> (Vec<u8>, bool) {
    let body = fixture(rel);
    let obj = RawObject::parse(&body).unwrap();
    let stream = obj.get("stream").is_some_and(|v| v.get() == "true");
    pair.request(&obj, upstream_model, stream, body.len())
        .unwrap()
}

fn translate_stream(
    pair: Pair,
    include_usage: bool,
    chunks: &[&[u8]],
) -> (Vec<u8>, Option<tollgate_core::Usage>) {
    let mut t = pair.stream(include_usage, CREATED);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(t.push(c, i + 1 == chunks.len()));
    }
    (out, t.usage())
}

fn events(sse: &[u8]) -> Vec<(Option<String>, String)> {
    String::from_utf8(sse.to_vec())
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stream validators: what the official SDKs rely on (see FIELD-NOTES)
// ---------------------------------------------------------------------------------------------

/// An Anthropic client stream: every event named; exactly one `message_start`, first; blocks
/// numbered 0, 1, 2… each started before its deltas and stopped once; `message_delta` with
/// usage before the final `message_stop` (or an `error` ending it).
fn validate_anthropic(sse: &[u8]) -> Vec<Value> {
    let evs = events(sse);
    let mut datas = Vec::new();
    let mut open: HashSet<u64> = HashSet::new();
    let mut next = 0u64;
    let mut starts = 0;
    let mut saw_delta = false;
    let mut arguments: HashMap<u64, String> = HashMap::new();
    for (i, (name, data)) in evs.iter().enumerate() {
        let name = name
            .as_deref()
            .unwrap_or_else(|| panic!("event {i} has no event: line"));
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], name, "event {i}");
        match name {
            "message_start" => {
                assert_eq!(i, 0, "message_start must come first");
                starts += 1;
                assert!(v["message"]["usage"]["input_tokens"].is_u64());
            }
            "content_block_start" => {
                let idx = v["index"].as_u64().unwrap();
                assert_eq!(idx, next, "blocks must be numbered in order");
                assert!(
                    open.is_empty(),
                    "block {idx} started before {open:?} stopped: blocks must be sequential"
                );
                next += 1;
                open.insert(idx);
                if v["content_block"]["type"] == "tool_use" {
                    arguments.insert(idx, String::new());
                }
            }
            "content_block_delta" => {
                let idx = v["index"].as_u64().unwrap();
                assert!(
                    open.contains(&idx),
                    "delta for block {idx} outside its block"
                );
                if let Some(a) = v["delta"]["partial_json"].as_str() {
                    arguments
                        .get_mut(&idx)
                        .unwrap_or_else(|| panic!("input_json_delta in non-tool block {idx}"))
                        .push_str(a);
                }
            }
            "content_block_stop" => {
                let idx = v["index"].as_u64().unwrap();
                assert!(
                    open.remove(&idx),
                    "block {idx} stopped twice or never started"
                );
                // The SDK parses a tool block's input when it stops: empty, or one JSON object.
                if let Some(a) = arguments.get(&idx).filter(|a| !a.is_empty()) {
                    let input: Value = serde_json::from_str(a)
                        .unwrap_or_else(|e| panic!("block {idx} arguments {a:?}: {e}"));
                    assert!(input.is_object(), "block {idx} input {input}");
                }
            }
            "message_delta" => {
                assert!(open.is_empty(), "message_delta with open blocks {open:?}");
                assert!(v["usage"]["output_tokens"].is_u64());
                assert!(v["delta"]["stop_reason"].is_string());
                saw_delta = true;
            }
            "message_stop" => {
                assert!(saw_delta, "message_stop before message_delta");
                assert_eq!(i + 1, evs.len(), "message_stop must be last");
            }
            "error" => assert_eq!(i + 1, evs.len(), "error must be last"),
            "ping" => {}
            other => panic!("unknown event {other}"),
        }
        datas.push(v);
    }
    assert_eq!(starts, 1, "exactly one message_start");
    datas
}

/// An OpenAI client stream: `data:` events only; role sent once; each tool call's id and name
/// sent once, in its first delta, tool indices from 0; one finish_reason; the usage chunk last
/// (only when asked for); `[DONE]` at the end (unless an error event ended it).
fn validate_openai(sse: &[u8], include_usage: bool) -> Vec<Value> {
    let evs = events(sse);
    let mut chunks = Vec::new();
    let mut roles = 0;
    let mut finishes = 0;
    let mut ids: HashMap<u64, usize> = HashMap::new();
    let mut names: HashMap<u64, usize> = HashMap::new();
    let mut usage_at = None;
    let (last, body) = evs.split_last().unwrap();
    let errored = last.1.starts_with("{\"error\"");
    if !errored {
        assert_eq!(last.1, "[DONE]");
    }
    let body = if errored { &evs[..] } else { body };
    for (i, (name, data)) in body.iter().enumerate() {
        assert!(name.is_none(), "OpenAI events have no event: line");
        let v: Value = serde_json::from_str(data).unwrap();
        if v.get("error").is_some() {
            assert_eq!(i + 1, body.len(), "error must be last");
            continue;
        }
        assert_eq!(v["object"], "chat.completion.chunk");
        if v.get("usage").is_some_and(Value::is_object) {
            usage_at = Some(i);
            assert_eq!(v["choices"], json!([]));
        }
        for c in v["choices"].as_array().unwrap() {
            let d = &c["delta"];
            roles += usize::from(d.get("role").is_some());
            finishes += usize::from(c["finish_reason"].is_string());
            for t in d["tool_calls"].as_array().into_iter().flatten() {
                let idx = t["index"].as_u64().unwrap();
                assert!(idx <= ids.len() as u64, "tool index {idx} skips one");
                *ids.entry(idx).or_default() += usize::from(t.get("id").is_some());
                *names.entry(idx).or_default() += usize::from(t["function"].get("name").is_some());
            }
        }
        chunks.push(v);
    }
    assert_eq!(roles, 1, "role must be sent once");
    assert!(ids.values().all(|n| *n == 1), "tool ids: {ids:?}");
    assert!(names.values().all(|n| *n == 1), "tool names: {names:?}");
    if !errored {
        assert_eq!(finishes, 1, "one finish_reason");
        match (include_usage, usage_at) {
            (true, Some(i)) => assert_eq!(i + 1, body.len(), "usage chunk must be last"),
            (false, None) => {}
            (want, got) => panic!("include_usage {want} but usage chunk at {got:?}"),
        }
    }
    chunks
}

// ---------------------------------------------------------------------------------------------
// OpenAI client → Anthropic provider
// ---------------------------------------------------------------------------------------------

#[test]
fn openai_to_anthropic_request() {
    let (body, include_usage) = request(
        OPENAI_TO_ANTHROPIC,
        "openai_to_anthropic/request.json",
        "claude-sonnet-4-5",
    );
    assert!(include_usage);
    golden("openai_to_anthropic/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    // The two tool results (two OpenAI messages) and the next user text form one user turn.
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    assert_eq!(v["messages"][2]["content"][1]["type"], "tool_result");
    assert_eq!(
        v["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
}

#[test]
fn openai_to_anthropic_request_defaults_max_tokens() {
    let body = br#"{"model":"c","messages":[{"role":"user","content":"hi"}]}"#;
    let obj = RawObject::parse(body).unwrap();
    let (out, _) = OPENAI_TO_ANTHROPIC
        .request(&obj, "claude-x", false, 0)
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["max_tokens"], codec::anthropic::DEFAULT_MAX_TOKENS);
    assert_eq!(v["model"], "claude-x");
    assert!(v.get("stream").is_none());
}

/// The provider body for `body` sent through `pair` to `model`.
fn translated(pair: Pair, body: &str, model: &str) -> Value {
    let obj = RawObject::parse(body.as_bytes()).unwrap();
    let (out, _) = pair.request(&obj, model, false, 0).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget_that_fits_under_max_tokens() {
    let ask = |extra: &str| {
        translated(
            OPENAI_TO_ANTHROPIC,
            &format!(r#"{{"model":"c","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#),
            "claude-x",
        )
    };
    // No client limit: the budget from the table, the default answer room above it.
    let v = ask(r#","reasoning_effort":"medium""#);
    assert_eq!(
        v["thinking"],
        json!({"type": "enabled", "budget_tokens": 8192})
    );
    assert_eq!(v["max_tokens"], 8192 + codec::anthropic::DEFAULT_MAX_TOKENS);
    // A client limit stays, and the budget shrinks below it.
    let v = ask(r#","reasoning_effort":"high","max_completion_tokens":5000"#);
    assert_eq!(
        v["thinking"],
        json!({"type": "enabled", "budget_tokens": 4999})
    );
    assert_eq!(v["max_tokens"], 5000);
    // Too small a limit for the minimum budget: no thinking rather than a provider 400.
    let v = ask(r#","reasoning_effort":"low","max_tokens":800"#);
    assert!(v.get("thinking").is_none(), "{v}");
    assert_eq!(v["max_tokens"], 800);
    // `none` turns it off explicitly; no effort leaves the provider's default.
    assert_eq!(
        ask(r#","reasoning_effort":"none""#)["thinking"],
        json!({"type": "disabled"})
    );
    assert!(ask("").get("thinking").is_none());
    let obj = RawObject::parse(
        br#"{"model":"c","reasoning_effort":"extreme","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .unwrap();
    let err = OPENAI_TO_ANTHROPIC
        .request(&obj, "claude-x", false, 0)
        .unwrap_err();
    assert!(err.to_string().contains("reasoning_effort"), "{err}");
}

#[test]
fn json_mode_reaches_anthropic_as_a_forced_tool_and_returns_as_text() {
    let v = translated(
        OPENAI_TO_ANTHROPIC,
        r#"{"model":"c","reasoning_effort":"low","response_format":{"type":"json_schema","json_schema":{"name":"city","schema":{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}}},"messages":[{"role":"user","content":"hi"}]}"#,
        "claude-x",
    );
    let tool = json_tool::JSON_TOOL;
    assert_eq!(v["tools"][0]["name"], tool, "{v}");
    assert_eq!(v["tools"][0]["input_schema"]["required"], json!(["name"]));
    assert_eq!(v["tool_choice"], json!({"type": "tool", "name": tool}));
    // Forced tool use and extended thinking exclude each other at Anthropic.
    assert!(v.get("thinking").is_none(), "{v}");

    let reply = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": tool, "input": {"name": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5}});
    let done = OPENAI_TO_ANTHROPIC.complete(200, reply.to_string().as_bytes(), CREATED);
    let out: Value = serde_json::from_slice(done.body.as_deref().unwrap()).unwrap();
    let choice = &out["choices"][0];
    assert_eq!(choice["finish_reason"], "stop", "{out}");
    assert!(choice["message"].get("tool_calls").is_none(), "{out}");
    let text: Value = serde_json::from_str(choice["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(text, json!({"name": "Paris"}));

    // Streamed: the tool's argument deltas arrive as content deltas.
    let stream = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":[],\"stop_reason\":null,\"usage\":{{\"input_tokens\":10,\"output_tokens\":1}}}}}}\n\n\
         event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"{tool}\",\"input\":{{}}}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{{\\\"name\\\": \"}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}}\"}}}}\n\n\
         event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"tool_use\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":5}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    );
    let (sse, _) = translate_stream(OPENAI_TO_ANTHROPIC, false, &[stream.as_bytes()]);
    let chunks = validate_openai(&sse, false);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, r#"{"name": "Paris"}"#);
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
}

#[test]
fn a_thinking_budget_becomes_a_reasoning_effort() {
    let ask = |thinking: &str| {
        translated(
            ANTHROPIC_TO_OPENAI,
            &format!(
                r#"{{"model":"o","max_tokens":30000,"thinking":{thinking},"messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
            "o4-mini",
        )
    };
    assert_eq!(
        ask(r#"{"type":"enabled","budget_tokens":1024}"#)["reasoning_effort"],
        "low"
    );
    assert_eq!(
        ask(r#"{"type":"enabled","budget_tokens":10000}"#)["reasoning_effort"],
        "medium"
    );
    assert_eq!(
        ask(r#"{"type":"enabled","budget_tokens":20000}"#)["reasoning_effort"],
        "high"
    );
    assert!(ask(r#"{"type":"disabled"}"#)
        .get("reasoning_effort")
        .is_none());
    // Round trip: an effort survives OpenAI → hub → Anthropic → hub → OpenAI.
    for effort in [Effort::Low, Effort::Medium, Effort::High] {
        let budget = Reasoning::Effort(effort).budget_tokens().unwrap();
        assert_eq!(Reasoning::Budget(budget).effort(), Some(effort));
    }
}

#[test]
fn openai_to_anthropic_response() {
    let body = fixture("openai_to_anthropic/response.json");
    let done = OPENAI_TO_ANTHROPIC.complete(200, &body, CREATED);
    golden(
        "openai_to_anthropic/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let u = done.usage.unwrap();
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens
        ),
        (582, 91, 100, 10)
    );
}

#[test]
fn openai_to_anthropic_stream() {
    let input = fixture("openai_to_anthropic/stream.sse");
    let (out, usage) = translate_stream(OPENAI_TO_ANTHROPIC, true, &[&input]);
    golden("openai_to_anthropic/stream.expected.sse", &out);
    let chunks = validate_openai(&out, true);
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], 536);
    assert_eq!(last["usage"]["completion_tokens"], 89);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
    let u = usage.unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (536, 89));
    // Without include_usage: no usage chunk, same content.
    let (out, _) = translate_stream(OPENAI_TO_ANTHROPIC, false, &[&input]);
    validate_openai(&out, false);
}

#[test]
fn openai_to_anthropic_errors() {
    let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let done = OPENAI_TO_ANTHROPIC.complete(529, body, CREATED);
    let v: Value = serde_json::from_slice(&done.body.unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": null}})
    );
    // Not an Anthropic error at all: Tollgate's own upstream error, in OpenAI format.
    let done = OPENAI_TO_ANTHROPIC.complete(502, b"<html>bad</html>", CREATED);
    let v: Value = serde_json::from_slice(&done.body.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "upstream_error");
    // Mid-stream.
    let sse = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let (out, _) = translate_stream(OPENAI_TO_ANTHROPIC, false, &[sse.as_bytes()]);
    let evs = events(&out);
    assert_eq!(
        evs.last().unwrap().1,
        r#"{"error":{"code":null,"message":"Overloaded","param":null,"type":"overloaded_error"}}"#
    );
    assert!(!String::from_utf8(out.clone()).unwrap().contains("[DONE]"));
    validate_openai(&out, false);
}

#[test]
fn requests_the_provider_cannot_express_are_refused() {
    let obj_body = br#"{"model":"c","n":2,"messages":[{"role":"user","content":"hi"}]}"#;
    let obj = RawObject::parse(obj_body).unwrap();
    let e = OPENAI_TO_ANTHROPIC
        .request(&obj, "x", false, 0)
        .unwrap_err();
    assert_eq!(e.api_error().status(), 400);
    let obj_body = br#"{"model":"c","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#;
    let obj = RawObject::parse(obj_body).unwrap();
    assert!(OPENAI_TO_ANTHROPIC.request(&obj, "x", false, 0).is_err());
    for body in [
        &br#"{"model":"c","logprobs":true,"messages":[{"role":"user","content":"x"}]}"#[..],
        // JSON mode is emulated with a tool, which cannot sit beside the client's own tools.
        br#"{"model":"c","response_format":{"type":"json_object"},"tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"x"}]}"#,
    ] {
        let obj = RawObject::parse(body).unwrap();
        let e = OPENAI_TO_ANTHROPIC
            .request(&obj, "x", false, 0)
            .unwrap_err();
        assert_eq!(e.api_error().status(), 400);
    }
    let ok = br#"{"model":"c","response_format":{"type":"text"},"logprobs":false,"messages":[{"role":"user","content":"x"}]}"#;
    assert!(OPENAI_TO_ANTHROPIC
        .request(&RawObject::parse(ok).unwrap(), "x", false, 0)
        .is_ok());
    let obj_body = br#"{"model":"c","messages":"nope"}"#;
    let obj = RawObject::parse(obj_body).unwrap();
    let e = OPENAI_TO_ANTHROPIC
        .request(&obj, "x", false, 0)
        .unwrap_err();
    let v: Value =
        serde_json::from_slice(&e.api_error().body(tollgate_core::Dialect::OpenAi)).unwrap();
    assert_eq!(v["error"]["param"], "messages");
    assert!(Pair::route(Endpoint::Embeddings, ApiFamily::Anthropic).is_err());
    assert_eq!(
        Pair::route(Endpoint::ChatCompletions, ApiFamily::Anthropic).unwrap(),
        (OPENAI_TO_ANTHROPIC, Endpoint::Messages)
    );
    assert_eq!(
        Pair::route(Endpoint::Messages, ApiFamily::OpenAi).unwrap(),
        (ANTHROPIC_TO_OPENAI, Endpoint::ChatCompletions)
    );
}

// ---------------------------------------------------------------------------------------------
// Anthropic client → OpenAI provider
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_to_openai_request() {
    let (body, _) = request(
        ANTHROPIC_TO_OPENAI,
        "anthropic_to_openai/request.json",
        "gpt-4o",
    );
    golden("anthropic_to_openai/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["stream_options"], json!({"include_usage": true}));
    assert_eq!(v["tool_choice"], "required");
    assert_eq!(v["parallel_tool_calls"], false);
}

#[test]
fn anthropic_to_openai_response() {
    let body = fixture("anthropic_to_openai/response.json");
    let done = ANTHROPIC_TO_OPENAI.complete(200, &body, CREATED);
    golden(
        "anthropic_to_openai/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let u = done.usage.unwrap();
    assert_eq!((u.input_tokens, u.cache_read_tokens), (1117, 1024));
}

#[test]
fn anthropic_to_openai_stream() {
    let input = fixture("anthropic_to_openai/stream.sse");
    let (out, usage) = translate_stream(ANTHROPIC_TO_OPENAI, false, &[&input]);
    golden("anthropic_to_openai/stream.expected.sse", &out);
    let evs = validate_anthropic(&out);
    let delta = &evs[evs.len() - 2];
    assert_eq!(delta["usage"]["input_tokens"], 64);
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 16);
    assert_eq!(delta["usage"]["output_tokens"], 30);
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(usage.unwrap().input_tokens, 80);
}

#[test]
fn anthropic_to_openai_errors() {
    let body = br#"{"error":{"message":"Rate limit reached","type":"rate_limit_exceeded","param":null,"code":"rate_limit_exceeded"}}"#;
    let v: Value =
        serde_json::from_slice(&ANTHROPIC_TO_OPENAI.complete(429, body, 0).body.unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    let v: Value =
        serde_json::from_slice(&ANTHROPIC_TO_OPENAI.complete(503, b"no", 0).body.unwrap()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    let sse = concat!(
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n",
        "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n",
    );
    let (out, _) = translate_stream(ANTHROPIC_TO_OPENAI, false, &[sse.as_bytes()]);
    let evs = validate_anthropic(&out);
    let last = evs.last().unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
}

#[test]
fn a_stream_cut_after_its_finish_still_ends_the_message() {
    // No `[DONE]`: the message still ends for an Anthropic client.
    let sse = concat!(
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}",
    );
    let (out, _) = translate_stream(ANTHROPIC_TO_OPENAI, false, &[sse.as_bytes()]);
    let evs = validate_anthropic(&out);
    assert_eq!(evs[evs.len() - 2]["delta"]["stop_reason"], "max_tokens");
    assert_eq!(evs.last().unwrap()["type"], "message_stop");
}

// ---------------------------------------------------------------------------------------------
// Anthropic client → Anthropic provider
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_passthrough_rewrites_only_the_model_and_reads_usage() {
    let body = fixture("anthropic_to_openai/request.json");
    let obj = RawObject::parse(&body).unwrap();
    let (out, _) = ANTHROPIC_TO_ANTHROPIC
        .request(&obj, "claude-opus", true, body.len())
        .unwrap();
    let mut want: Value = serde_json::from_slice(&body).unwrap();
    want["model"] = "claude-opus".into();
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), want);

    let input = fixture("openai_to_anthropic/stream.sse");
    let (out, usage) = translate_stream(ANTHROPIC_TO_ANTHROPIC, false, &[&input]);
    assert_eq!(out, input);
    assert_eq!(usage.unwrap().output_tokens, 89);
    let resp = fixture("openai_to_anthropic/response.json");
    let done = ANTHROPIC_TO_ANTHROPIC.complete(200, &resp, 0);
    assert_eq!(done.body, None);
    assert_eq!(done.usage.unwrap().input_tokens, 582);
    let err = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    assert_eq!(ANTHROPIC_TO_ANTHROPIC.complete(429, err, 0).body, None);
    let v: Value = serde_json::from_slice(
        &ANTHROPIC_TO_ANTHROPIC
            .complete(502, b"<html>", 0)
            .body
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["error"]["type"], "api_error");
}

// ---------------------------------------------------------------------------------------------
// Split anywhere: the client stream never depends on where the upstream cut its bytes
// ---------------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn every_pair_translates_the_same_wherever_the_upstream_splits(
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
        include_usage in any::<bool>(),
    ) {
        for (pair, rel) in [
            (OPENAI_TO_ANTHROPIC, "openai_to_anthropic/stream.sse"),
            (ANTHROPIC_TO_OPENAI, "anthropic_to_openai/stream.sse"),
            (ANTHROPIC_TO_ANTHROPIC, "openai_to_anthropic/stream.sse"),
            // Bedrock: the AWS event-stream binary framing, split anywhere (inside a prelude,
            // a header, a CRC, a UTF-8 character).
            (bedrock::OPENAI_TO_BEDROCK, "openai_to_bedrock/stream.jsonl"),
            (bedrock::ANTHROPIC_TO_BEDROCK, "anthropic_to_bedrock/stream.jsonl"),
        ] {
            let input = if rel.ends_with(".jsonl") { bedrock::framed(rel) } else { fixture(rel) };
            let (whole, whole_usage) = translate_stream(pair, include_usage, &[&input]);
            let (split, split_usage) = translate_stream(pair, include_usage, &split_at(&input, &cuts));
            prop_assert_eq!(&whole, &split, "{}", rel);
            prop_assert_eq!(whole_usage, split_usage);
        }
    }

    #[test]
    fn cuts_inside_multibyte_characters_are_harmless(offset in 0usize..4) {
        // Cut every chunk one to four bytes into each "🌍" (4 bytes in UTF-8).
        let input = fixture("anthropic_to_openai/stream.sse");
        let globe = "🌍".as_bytes();
        let cuts: Vec<usize> = input
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == globe)
            .map(|(i, _)| i + offset)
            .collect();
        prop_assert!(!cuts.is_empty());
        let (whole, _) = translate_stream(ANTHROPIC_TO_OPENAI, false, &[&input]);
        let (split, _) = translate_stream(ANTHROPIC_TO_OPENAI, false, &split_at(&input, &cuts));
        prop_assert_eq!(whole, split);
    }
}

#[test]
fn openai_reasoning_streams_become_thinking_blocks_before_the_text() {
    // DeepSeek-style `reasoning_content` deltas, then content.
    let sse = concat!(
        "data: {\"id\":\"c\",\"model\":\"r1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"Think\"}}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"r1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"ing…\"}}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"r1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Answer\"}}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"r1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"r1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9,\"completion_tokens_details\":{\"reasoning_tokens\":6}}}\n\n",
        "data: [DONE]\n\n",
    );
    let (out, usage) = translate_stream(ANTHROPIC_TO_OPENAI, false, &[sse.as_bytes()]);
    let evs = validate_anthropic(&out);
    let starts: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .map(|e| &e["content_block"]["type"])
        .collect();
    assert_eq!(starts, [&json!("thinking"), &json!("text")]);
    let thinking: String = evs
        .iter()
        .filter(|e| e["index"] == 0 && e["delta"]["type"] == "thinking_delta")
        .map(|e| e["delta"]["thinking"].as_str().unwrap())
        .collect();
    assert_eq!(thinking, "Thinking…");
    assert_eq!(evs[evs.len() - 2]["delta"]["stop_reason"], "end_turn");
    assert_eq!(usage.unwrap().reasoning_tokens, 6);
}

// ---------------------------------------------------------------------------------------------
// Codec round trips: a hub request written in a dialect and read back is the same request
// (up to what the dialect merges), so a translation loses nothing either codec can express.
// ---------------------------------------------------------------------------------------------

pub(super) mod round_trip {
    use super::*;
    use crate::translator::codec::{anthropic, openai as openai_codec};
    use crate::translator::hub::{
        ChatRequest, Image, Message, Part, Role, Tool, ToolCall, ToolResult,
    };

    fn word() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9éü🌍 ]{1,12}".prop_filter("non-blank", |s| !s.trim().is_empty())
    }

    fn args() -> impl Strategy<Value = String> {
        proptest::collection::btree_map("[a-z]{1,6}", 0i64..100, 0..3)
            .prop_map(|m| serde_json::to_string(&m).unwrap())
    }

    fn image() -> impl Strategy<Value = Image> {
        prop_oneof![
            "[a-z]{1,8}".prop_map(|p| Image::Url(format!("https://x.test/{p}.png"))),
            "[A-Za-z0-9+/]{4,16}".prop_map(|d| Image::Base64 {
                media_type: "image/png".into(),
                data: d
            }),
        ]
    }

    /// A turn of one of the shapes both dialects can carry.
    fn message() -> impl Strategy<Value = Message> {
        let user = (word(), proptest::option::of(image())).prop_map(|(t, img)| {
            let mut content = vec![Part::Text(t)];
            content.extend(img.map(Part::Image));
            Message {
                role: Role::User,
                content,
            }
        });
        let assistant = (
            proptest::option::of(word()),
            proptest::collection::vec(("[a-z]{3,8}", "[a-z_]{1,10}", args()), 0..3),
        )
            .prop_filter("not empty", |(t, calls)| t.is_some() || !calls.is_empty())
            .prop_map(|(t, calls)| {
                let mut content: Vec<Part> = t.into_iter().map(Part::Text).collect();
                content.extend(calls.into_iter().map(|(id, name, arguments)| {
                    Part::ToolCall(ToolCall {
                        id: format!("call_{id}"),
                        name,
                        arguments,
                    })
                }));
                Message {
                    role: Role::Assistant,
                    content,
                }
            });
        let results =
            proptest::collection::vec(("[a-z]{3,8}", word()), 1..3).prop_map(|rs| Message {
                role: Role::User,
                content: rs
                    .into_iter()
                    .map(|(id, text)| {
                        Part::ToolResult(ToolResult {
                            call_id: format!("call_{id}"),
                            content: vec![Part::Text(text)],
                            is_error: false,
                        })
                    })
                    .collect(),
            });
        prop_oneof![user, assistant, results]
    }

    pub(super) fn request() -> impl Strategy<Value = ChatRequest> {
        (
            proptest::collection::vec(word(), 0..3),
            proptest::collection::vec(message(), 1..6),
            proptest::collection::vec(("[a-z_]{1,10}", proptest::option::of(word())), 0..3),
            1u64..10_000,
            proptest::option::of(prop_oneof![Just(0.0), Just(0.5), Just(1.0)]),
            proptest::collection::vec(word(), 0..3),
            proptest::option::of("[a-z0-9-]{1,10}"),
        )
            .prop_map(|(system, messages, tools, max, temperature, stop, user)| ChatRequest {
                model: "m".into(),
                system,
                messages,
                tools: tools
                    .into_iter()
                    .map(|(name, description)| Tool {
                        name,
                        description,
                        parameters: json!({"type": "object", "properties": {"q": {"type": "string"}}}),
                    })
                    .collect(),
                max_tokens: Some(max),
                temperature,
                stop,
                user,
                ..Default::default()
            })
    }

    /// Consecutive turns of one role as one turn: both dialects may split or merge them.
    pub(super) fn merged(mut r: ChatRequest) -> ChatRequest {
        let mut out: Vec<Message> = Vec::new();
        for m in r.messages {
            match out.last_mut() {
                Some(last) if last.role == m.role => last.content.extend(m.content),
                _ => out.push(m),
            }
        }
        r.messages = out;
        r
    }

    proptest! {
        #[test]
        fn openai_codec_round_trips(req in request()) {
            let body = openai_codec::request_to_wire(&req);
            let obj = RawObject::parse(&body).unwrap();
            let back = openai_codec::request_from_wire(&obj, "m", false).unwrap();
            prop_assert_eq!(merged(back), merged(req));
        }

        #[test]
        fn anthropic_codec_round_trips(req in request()) {
            let body = anthropic::request_to_wire(&req);
            let obj = RawObject::parse(&body).unwrap();
            let back = anthropic::request_from_wire(&obj, "m", false).unwrap();
            prop_assert_eq!(back, merged(req));
        }
    }
}

#[test]
fn anthropic_clients_get_dense_block_indices_whatever_the_hub_says() {
    use crate::translator::hub::{BlockKind, Delta, StreamEvent};
    let mut enc = codec::anthropic::StreamEncoder::default();
    let mut out = Vec::new();
    for e in [
        StreamEvent::Start {
            id: "m".into(),
            model: "x".into(),
            usage: Default::default(),
        },
        StreamEvent::BlockStart {
            index: 3,
            block: BlockKind::Text,
        },
        StreamEvent::Delta {
            index: 3,
            delta: Delta::Text("a".into()),
        },
        StreamEvent::BlockStart {
            index: 3,
            block: BlockKind::Text,
        },
        StreamEvent::BlockStop { index: 3 },
        StreamEvent::Delta {
            index: 3,
            delta: Delta::Text("late".into()),
        },
        StreamEvent::BlockStart {
            index: 7,
            block: BlockKind::ToolCall {
                id: "t".into(),
                name: "f".into(),
            },
        },
        StreamEvent::Delta {
            index: 7,
            delta: Delta::ToolArguments("{}".into()),
        },
        StreamEvent::Finish {
            stop_reason: None,
            stop_sequence: None,
            usage: None,
        },
        StreamEvent::Stop,
    ] {
        enc.encode(e, &mut out);
    }
    let mut bytes = Vec::new();
    for f in &out {
        f.write(&mut bytes);
    }
    let evs = validate_anthropic(&bytes);
    let indices: Vec<u64> = evs.iter().filter_map(|e| e["index"].as_u64()).collect();
    assert_eq!(indices, [0, 0, 0, 1, 1, 1]);
}

#[test]
fn interleaved_parallel_tool_calls_lose_no_arguments() {
    let chunk = |delta: &str| {
        format!("data: {{\"id\":\"c\",\"model\":\"g\",\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}\n\n")
    };
    let sse = [
        chunk(r#"{"role":"assistant","tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{\"x\":"}}]}"#),
        chunk(r#"{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"g","arguments":"{\"y\":"}}]}"#),
        chunk(r#"{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}"#),
        chunk(r#"{"tool_calls":[{"index":1,"function":{"arguments":"2}"}}]}"#),
        "data: {\"id\":\"c\",\"model\":\"g\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (out, _) = translate_stream(ANTHROPIC_TO_OPENAI, false, &[sse.as_bytes()]);
    let evs = validate_anthropic(&out);
    let args = |i: u64| -> String {
        evs.iter()
            .filter(|e| e["index"] == i && e["delta"]["type"] == "input_json_delta")
            .map(|e| e["delta"]["partial_json"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        (args(0), args(1)),
        (r#"{"x":1}"#.to_owned(), r#"{"y":2}"#.to_owned())
    );
}

mod bedrock;

#[test]
fn vertex_claude_bodies_keep_cache_control() {
    let body = serde_json::json!({"model": "claude", "max_tokens": 5,
        "system": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}}]}]});
    let out = crate::translator::codec::anthropic::for_vertex(body.to_string().as_bytes());
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["system"], body["system"]);
    assert_eq!(v["messages"], body["messages"]);
    assert!(v.get("model").is_none());
}
