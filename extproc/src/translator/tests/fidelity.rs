//! What real clients trip on, across the provider grid (issue 13): reasoning usage reaching
//! Anthropic clients, several tool calls reaching them as sequential blocks, Gemini's
//! `thoughtSignature` riding through OpenAI and Anthropic clients in the tool-call id, and
//! structurally invalid requests refused in the client's dialect.

use serde_json::{json, Value};
use tollgate_core::config::ApiFamily;

use super::{events, translate_stream, validate_anthropic, validate_openai, CREATED};
use crate::translator::call_id;
use crate::translator::eventstream;
use crate::translator::json::RawObject;
use crate::translator::{Pair, ResponseMeta};

const fn pair(client: ApiFamily, upstream: ApiFamily) -> Pair {
    Pair { client, upstream }
}

const ANTHROPIC_TO_OPENAI: Pair = pair(ApiFamily::Anthropic, ApiFamily::OpenAi);
const ANTHROPIC_TO_ANTHROPIC: Pair = pair(ApiFamily::Anthropic, ApiFamily::Anthropic);
const ANTHROPIC_TO_GEMINI: Pair = pair(ApiFamily::Anthropic, ApiFamily::Gemini);
const ANTHROPIC_TO_BEDROCK: Pair = pair(ApiFamily::Anthropic, ApiFamily::Bedrock);
const OPENAI_TO_GEMINI: Pair = pair(ApiFamily::OpenAi, ApiFamily::Gemini);

fn meta() -> ResponseMeta<'static> {
    ResponseMeta {
        created: CREATED,
        id: "resp-1",
        model: "m",
        error_type: None,
    }
}

fn complete(pair: Pair, body: &Value) -> Value {
    let done = pair.complete_with(200, body.to_string().as_bytes(), &meta());
    serde_json::from_slice(done.body.as_deref().expect("translated")).unwrap()
}

fn stream(pair: Pair, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut t = pair.stream(false, CREATED).with_identity("resp-1", "m");
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(t.push(c, i + 1 == chunks.len()));
    }
    out
}

fn request(pair: Pair, body: &Value) -> Value {
    let raw = body.to_string();
    let obj = RawObject::parse(raw.as_bytes()).unwrap();
    let (out, _) = pair.request(&obj, "m", false, raw.len()).unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn sse(data: &[Value]) -> Vec<u8> {
    data.iter()
        .map(|d| format!("data: {d}\n\n"))
        .collect::<String>()
        .into_bytes()
}

fn openai_chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn message_delta(out: &[u8]) -> Value {
    validate_anthropic(out)
        .into_iter()
        .find(|e| e["type"] == "message_delta")
        .expect("a message_delta")
}

// ---------------------------------------------------------------------------------------------
// 1. Reasoning usage
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_clients_get_thinking_tokens_from_openai_family_reasoning_tokens() {
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40,
        "completion_tokens_details": {"reasoning_tokens": 12}});
    let body = json!({"id": "c", "model": "m", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": usage});
    let msg = complete(ANTHROPIC_TO_OPENAI, &body);
    assert_eq!(msg["usage"]["output_tokens"], 30, "{msg}");
    assert_eq!(
        msg["usage"]["output_tokens_details"]["thinking_tokens"], 12,
        "{msg}"
    );

    let mut chunks = sse(&[
        openai_chunk(json!({"role": "assistant", "content": "hi"}), None),
        openai_chunk(json!({}), Some("stop")),
        json!({"id": "c", "model": "m", "choices": [], "usage": usage}),
    ]);
    chunks.extend_from_slice(b"data: [DONE]\n\n");
    let out = stream(ANTHROPIC_TO_OPENAI, &[chunks]);
    let delta = message_delta(&out);
    assert_eq!(
        delta["usage"]["output_tokens_details"]["thinking_tokens"], 12,
        "{delta}"
    );

    // No reasoning reported: no details invented.
    let mut plain = body.clone();
    plain["usage"] = json!({"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40});
    let msg = complete(ANTHROPIC_TO_OPENAI, &plain);
    assert!(msg["usage"].get("output_tokens_details").is_none(), "{msg}");
}

#[test]
fn anthropic_clients_get_thinking_tokens_from_gemini_thoughts() {
    let usage = json!({"promptTokenCount": 10, "candidatesTokenCount": 5,
        "thoughtsTokenCount": 9, "totalTokenCount": 24});
    let body = json!({"candidates": [{"index": 0, "finishReason": "STOP",
        "content": {"role": "model", "parts": [{"text": "hi"}]}}],
        "usageMetadata": usage, "responseId": "r", "modelVersion": "g"});
    let msg = complete(ANTHROPIC_TO_GEMINI, &body);
    assert_eq!(msg["usage"]["output_tokens"], 14, "{msg}");
    assert_eq!(
        msg["usage"]["output_tokens_details"]["thinking_tokens"], 9,
        "{msg}"
    );

    let out = stream(
        ANTHROPIC_TO_GEMINI,
        &[sse(&[
            json!({"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "h"}]}}],
                "usageMetadata": {"promptTokenCount": 10}, "responseId": "r"}),
            body,
        ])],
    );
    let delta = message_delta(&out);
    assert_eq!(
        delta["usage"]["output_tokens_details"]["thinking_tokens"], 9,
        "{delta}"
    );
    assert_eq!(delta["usage"]["output_tokens"], 14, "{delta}");
}

// ---------------------------------------------------------------------------------------------
// 2. Several tool calls reach Anthropic clients as sequential blocks
// ---------------------------------------------------------------------------------------------

/// The tool_use blocks of a validated Anthropic stream: (index, name, input).
fn streamed_calls(out: &[u8]) -> Vec<(u64, String, Value)> {
    let evs = validate_anthropic(out);
    let mut calls: Vec<(u64, String, String)> = Vec::new();
    for e in &evs {
        if e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use" {
            let name = e["content_block"]["name"].as_str().unwrap().to_owned();
            calls.push((e["index"].as_u64().unwrap(), name, String::new()));
        }
        if let Some(a) = e["delta"]["partial_json"].as_str() {
            let c = calls
                .iter_mut()
                .find(|c| c.0 == e["index"].as_u64().unwrap())
                .unwrap();
            c.2.push_str(a);
        }
    }
    calls
        .into_iter()
        .map(|(i, n, a)| {
            (
                i,
                n,
                if a.is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&a).unwrap()
                },
            )
        })
        .collect()
}

fn assert_three_calls(calls: &[(u64, String, Value)]) {
    let names: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(names, ["weather", "time", "news"], "{calls:?}");
    assert_eq!(calls[0].2, json!({"city": "Paris", "days": 2}));
    assert_eq!(calls[1].2, json!({"zone": "CET"}));
    assert_eq!(calls[2].2, json!({}));
}

#[test]
fn interleaved_openai_tool_calls_reach_anthropic_clients_one_block_after_another() {
    let call = |i: usize, id: &str, name: &str| {
        json!({"tool_calls": [{"index": i, "id": id, "type": "function",
            "function": {"name": name, "arguments": ""}}]})
    };
    let args =
        |i: usize, a: &str| json!({"tool_calls": [{"index": i, "function": {"arguments": a}}]});
    let mut data = vec![
        openai_chunk(json!({"role": "assistant", "content": "Checking."}), None),
        openai_chunk(call(0, "a", "weather"), None),
        openai_chunk(call(1, "b", "time"), None),
        openai_chunk(args(0, "{\"city\":"), None),
        openai_chunk(args(1, "{\"zone\""), None),
        openai_chunk(call(2, "c", "news"), None),
        openai_chunk(args(0, "\"Paris\","), None),
        // Two fragments in one chunk.
        openai_chunk(
            json!({"tool_calls": [{"index": 1, "function": {"arguments": ":\"CET\"}"}},
                {"index": 0, "function": {"arguments": "\"days\":2}"}}]}),
            None,
        ),
        openai_chunk(json!({}), Some("tool_calls")),
    ];
    data.push(json!({"id": "c", "model": "m", "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}));
    let mut body = sse(&data);
    body.extend_from_slice(b"data: [DONE]\n\n");
    let out = stream(ANTHROPIC_TO_OPENAI, &[body.clone()]);
    let calls = streamed_calls(&out);
    assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_three_calls(&calls);
    // Split anywhere, the same events.
    for at in [1, 17, body.len() / 2, body.len() - 3] {
        let (a, b) = body.split_at(at);
        assert_eq!(stream(ANTHROPIC_TO_OPENAI, &[a.to_vec(), b.to_vec()]), out);
    }
    // And through the pipeline the processor builds (`translate_stream`), unchanged.
    let (again, usage) = translate_stream(ANTHROPIC_TO_OPENAI, false, &[&body]);
    assert_eq!(streamed_calls(&again), calls);
    assert_eq!(usage.map(|u| u.output_tokens), Some(4));
}

#[test]
fn several_gemini_calls_reach_anthropic_clients_one_block_after_another() {
    let call = |name: &str, args: Value| json!({"functionCall": {"name": name, "args": args}});
    let chunk = |parts: Value, finish: Option<&str>| {
        let mut c = json!({"index": 0, "content": {"role": "model", "parts": parts}});
        if let Some(f) = finish {
            c["finishReason"] = f.into();
        }
        json!({"candidates": [c], "responseId": "r", "modelVersion": "g",
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}})
    };
    let body = sse(&[
        chunk(json!([{"text": "Checking."}]), None),
        chunk(
            json!([
                call("weather", json!({"city": "Paris", "days": 2})),
                call("time", json!({"zone": "CET"}))
            ]),
            None,
        ),
        chunk(json!([call("news", json!({}))]), Some("STOP")),
    ]);
    let out = stream(ANTHROPIC_TO_GEMINI, &[body]);
    assert_three_calls(&streamed_calls(&out));
    assert_eq!(message_delta(&out)["delta"]["stop_reason"], "tool_use");
}

#[test]
fn several_bedrock_calls_reach_anthropic_clients_one_block_after_another() {
    let mut body = Vec::new();
    let mut ev =
        |kind: &str, v: Value| body.extend(eventstream::event(kind, v.to_string().as_bytes()));
    ev("messageStart", json!({"role": "assistant"}));
    ev(
        "contentBlockDelta",
        json!({"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
    );
    ev("contentBlockStop", json!({"contentBlockIndex": 0}));
    for (i, (id, name, pieces)) in [
        ("t1", "weather", vec!["{\"city\":\"Paris\",", "\"days\":2}"]),
        ("t2", "time", vec!["{\"zone\":\"CET\"}"]),
        ("t3", "news", vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let index = i + 1;
        ev(
            "contentBlockStart",
            json!({"contentBlockIndex": index,
            "start": {"toolUse": {"toolUseId": id, "name": name}}}),
        );
        for p in pieces {
            ev(
                "contentBlockDelta",
                json!({"contentBlockIndex": index,
                "delta": {"toolUse": {"input": p}}}),
            );
        }
        ev("contentBlockStop", json!({"contentBlockIndex": index}));
    }
    ev("messageStop", json!({"stopReason": "tool_use"}));
    ev(
        "metadata",
        json!({"usage": {"inputTokens": 3, "outputTokens": 4}}),
    );
    let out = stream(ANTHROPIC_TO_BEDROCK, &[body]);
    let calls = streamed_calls(&out);
    let names: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(names, ["weather", "time", "news"]);
    assert_eq!(calls[0].2, json!({"city": "Paris", "days": 2}));
}

#[test]
fn several_anthropic_calls_pass_through_to_anthropic_clients_as_sent() {
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut body = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "m",
        "type": "message", "role": "assistant", "model": "c", "content": [],
        "usage": {"input_tokens": 3, "output_tokens": 1}}}),
    );
    for (i, (name, args)) in [
        ("weather", "{\"city\":\"Paris\",\"days\":2}"),
        ("time", "{\"zone\":\"CET\"}"),
        ("news", ""),
    ]
    .into_iter()
    .enumerate()
    {
        body += &ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": i,
            "content_block": {"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": {}}}),
        );
        if !args.is_empty() {
            body += &ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i,
                "delta": {"type": "input_json_delta", "partial_json": args}}),
            );
        }
        body += &ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        );
    }
    body += &ev(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
    );
    body += &ev("message_stop", json!({"type": "message_stop"}));
    let out = stream(ANTHROPIC_TO_ANTHROPIC, &[body.into_bytes()]);
    let calls = streamed_calls(&out);
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[1].2, json!({"zone": "CET"}));
    assert_eq!(calls[2].2, json!({}));
}

#[test]
fn several_calls_in_complete_responses_reach_anthropic_clients_in_order() {
    let openai = json!({"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\",\"days\":2}"}},
            {"id": "b", "type": "function", "function": {"name": "time", "arguments": "{\"zone\":\"CET\"}"}},
            {"id": "c", "type": "function", "function": {"name": "news", "arguments": ""}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
    let gemini = json!({"responseId": "r", "modelVersion": "g", "candidates": [{"index": 0,
        "finishReason": "STOP", "content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris", "days": 2}}},
            {"functionCall": {"name": "time", "args": {"zone": "CET"}}},
            {"functionCall": {"name": "news"}}]}}]});
    let bedrock = json!({"stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 2},
        "output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "a", "name": "weather", "input": {"city": "Paris", "days": 2}}},
            {"toolUse": {"toolUseId": "b", "name": "time", "input": {"zone": "CET"}}},
            {"toolUse": {"toolUseId": "c", "name": "news", "input": {}}}]}}});
    for (pair, body) in [
        (ANTHROPIC_TO_OPENAI, openai),
        (ANTHROPIC_TO_GEMINI, gemini),
        (ANTHROPIC_TO_BEDROCK, bedrock),
    ] {
        let msg = complete(pair, &body);
        let calls: Vec<(String, Value)> = msg["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| (b["name"].as_str().unwrap().to_owned(), b["input"].clone()))
            .collect();
        assert_eq!(
            calls,
            [
                ("weather".to_owned(), json!({"city": "Paris", "days": 2})),
                ("time".to_owned(), json!({"zone": "CET"})),
                ("news".to_owned(), json!({})),
            ],
            "{pair:?}: {msg}"
        );
        assert_eq!(msg["stop_reason"], "tool_use", "{pair:?}: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Gemini's thoughtSignature through OpenAI and Anthropic clients
// ---------------------------------------------------------------------------------------------

const SIG: &str = "c2lnbmF0dXJlL29mK3RoZS9maXJzdCtjYWxs";

fn gemini_calls() -> Value {
    json!({"responseId": "r7", "modelVersion": "g", "candidates": [{"index": 0,
        "finishReason": "STOP", "content": {"role": "model", "parts": [
            {"text": "thinking it over", "thought": true},
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
            {"functionCall": {"name": "time", "args": {"zone": "CET"}}}]}}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}})
}

fn id_safe(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The model turn of a Gemini request: its parts.
fn model_parts(body: &Value) -> &Vec<Value> {
    body["contents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "model")
        .unwrap()["parts"]
        .as_array()
        .unwrap()
}

fn assert_signature_restored(body: &Value) {
    let parts = model_parts(body);
    let calls: Vec<&Value> = parts
        .iter()
        .filter(|p| p.get("functionCall").is_some())
        .collect();
    assert_eq!(calls.len(), 2, "{body}");
    assert_eq!(calls[0]["thoughtSignature"], SIG, "{body}");
    assert!(calls[1].get("thoughtSignature").is_none(), "{body}");
    assert!(!body.to_string().contains("_tgsig"), "{body}");
    let results: Vec<&str> = body["contents"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["parts"].as_array().unwrap())
        .filter_map(|p| p["functionResponse"]["name"].as_str())
        .collect();
    assert_eq!(results, ["weather", "time"], "{body}");
}

/// The other providers get ids without the signature, still paired call ↔ result.
fn assert_plain_everywhere_else(client: ApiFamily, next: &Value) {
    for upstream in [ApiFamily::OpenAi, ApiFamily::Anthropic, ApiFamily::Bedrock] {
        let p = pair(client, upstream);
        if !p.translates() {
            // Same dialect: the byte-preserving path rewrites only the ids.
            let raw = next.to_string();
            let obj = RawObject::parse(raw.as_bytes()).unwrap();
            let fixed = call_id::strip_raw_messages(&obj).unwrap();
            assert!(
                !fixed.contains("_tgsig") && !fixed.contains("c2ln"),
                "{fixed}"
            );
            continue;
        }
        let body = request(p, next).to_string();
        assert!(!body.contains("_tgsig"), "{upstream:?}: {body}");
        assert!(!body.contains("c2lnbmF0"), "{upstream:?}: {body}");
        assert!(body.contains("\"call_r7_0\""), "{upstream:?}: {body}");
        assert!(body.contains("\"call_r7_1\""), "{upstream:?}: {body}");
    }
}

#[test]
fn openai_clients_carry_gemini_signatures_in_tool_call_ids() {
    let resp = complete(OPENAI_TO_GEMINI, &gemini_calls());
    let calls = resp["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .clone();
    let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id_safe(id)), "{ids:?}");
    assert_eq!(call_id::split(ids[0]), ("call_r7_0", Some(SIG.to_owned())));
    assert_eq!(ids[1], "call_r7_1");
    // What the openai SDK sends back: the assistant message, then one tool message per call.
    let next = json!({"model": "g", "messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": ids[0], "content": "sunny"},
        {"role": "tool", "tool_call_id": ids[1], "content": "noon"},
    ]});
    assert_signature_restored(&request(OPENAI_TO_GEMINI, &next));
    assert_plain_everywhere_else(ApiFamily::OpenAi, &next);

    // Streamed: the id the SDK accumulates carries the signature too.
    let out = stream(OPENAI_TO_GEMINI, &[sse(&[gemini_calls()])]);
    let chunks = validate_openai(&out, false);
    let streamed: Vec<&str> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(streamed, ids);
}

#[test]
fn anthropic_clients_carry_gemini_signatures_in_tool_use_ids() {
    let msg = complete(ANTHROPIC_TO_GEMINI, &gemini_calls());
    let content = msg["content"].as_array().unwrap().clone();
    let calls: Vec<&Value> = content.iter().filter(|b| b["type"] == "tool_use").collect();
    let ids: Vec<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id_safe(id)), "{ids:?}");
    assert_eq!(call_id::split(ids[0]).1.as_deref(), Some(SIG));
    // No Gemini signature in a thinking block, where Anthropic would choke on it.
    assert!(
        !msg.to_string()
            .contains(&format!("\"signature\":\"{SIG}\"")),
        "{msg}"
    );
    let results = json!([
        {"type": "tool_result", "tool_use_id": ids[0], "content": "sunny"},
        {"type": "tool_result", "tool_use_id": ids[1], "content": "noon"},
    ]);
    // Echoed whole, or with the thinking blocks dropped (as many agent loops do).
    let tools_only: Vec<&Value> = content.iter().filter(|b| b["type"] == "tool_use").collect();
    for echoed in [json!(content), json!(tools_only)] {
        let next = json!({"model": "g", "max_tokens": 100, "messages": [
            {"role": "user", "content": "weather and time?"},
            {"role": "assistant", "content": echoed},
            {"role": "user", "content": results},
        ]});
        assert_signature_restored(&request(ANTHROPIC_TO_GEMINI, &next));
        assert_plain_everywhere_else(ApiFamily::Anthropic, &next);
    }

    // Streamed.
    let out = stream(ANTHROPIC_TO_GEMINI, &[sse(&[gemini_calls()])]);
    let evs = validate_anthropic(&out);
    let streamed: Vec<&str> = evs
        .iter()
        .filter_map(|e| e["content_block"]["id"].as_str())
        .collect();
    assert_eq!(streamed, ids);
}

#[test]
fn calls_gemini_never_made_reach_it_with_the_documented_bypass() {
    let next = json!({"model": "g", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
    ]});
    let body = request(OPENAI_TO_GEMINI, &next);
    let call = model_parts(&body)
        .iter()
        .find(|p| p.get("functionCall").is_some())
        .unwrap();
    assert_eq!(
        call["thoughtSignature"],
        call_id::FOREIGN_CALL_SIGNATURE,
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Structurally invalid requests, refused in the client's dialect
// ---------------------------------------------------------------------------------------------

fn refused(pair: Pair, body: &str) -> tollgate_core::ApiError {
    let obj = RawObject::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
    match pair.request(&obj, "m", false, body.len()) {
        Ok((out, _)) => panic!(
            "{pair:?} sent on {body}\nas {}",
            String::from_utf8_lossy(&out)
        ),
        Err(e) => e.api_error(),
    }
}

#[test]
fn structurally_invalid_requests_are_refused_in_every_client_dialect() {
    let openai = [
        r#"{"model":"m","messages":[null]}"#,
        r#"{"model":"m","messages":[]}"#,
        r#"{"model":"m","messages":"hi"}"#,
        r#"{"model":"m","messages":{"role":"user"}}"#,
        r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":5,"content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[null]}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
        r#"{"model":"m","messages":[{"role":"user"}]}"#,
        r#"{"model":"m","messages":[{"role":"assistant","tool_calls":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":"x"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[null]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":5}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":5}"#,
    ];
    let anthropic = [
        r#"{"model":"m","max_tokens":9,"messages":[null]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[]}"#,
        r#"{"model":"m","max_tokens":9,"messages":"hi"}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"system","content":"x"}]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user"}]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":5}]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[null]}]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"x"}],"tools":"x"}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"x"}],"tools":[{"description":"no name"}]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"x"}],"system":5}"#,
        r#"{"model":"m","max_tokens":"9","messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"}"#,
    ];
    let gemini = [
        r#"{"contents":[null]}"#,
        r#"{"contents":[]}"#,
        r#"{"contents":"hi"}"#,
        r#"{"contents":[{"role":"wizard","parts":[{"text":"x"}]}]}"#,
        r#"{"contents":[{"role":"user","parts":"x"}]}"#,
        r#"{"contents":[{"role":"user","parts":[null]}]}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":5}]}]}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}],"tools":"x"}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}],"generationConfig":5}"#,
        r#"{"contents":[{"role":"user","parts":[{"text":"x"}]}],"systemInstruction":"x"}"#,
    ];
    let grid: [(ApiFamily, &[&str]); 3] = [
        (ApiFamily::OpenAi, &openai),
        (ApiFamily::Anthropic, &anthropic),
        (ApiFamily::Gemini, &gemini),
    ];
    for (client, bodies) in grid {
        for upstream in [
            ApiFamily::OpenAi,
            ApiFamily::Anthropic,
            ApiFamily::Gemini,
            ApiFamily::Bedrock,
        ] {
            let p = pair(client, upstream);
            if !p.translates() {
                continue;
            }
            for body in bodies {
                let e = refused(p, body);
                assert_eq!(e.class().status, 400, "{p:?} {body}: {e:?}");
                let text =
                    String::from_utf8(e.body(crate::translator::dialect_of(client))).unwrap();
                // Internals stay out of the message: no Rust type names.
                assert!(!text.contains("Wire"), "{p:?} {body}: {text}");
            }
        }
    }
    let _ = events;
}
