//! Bedrock pairs: golden fixtures (OpenAI and Anthropic clients → Bedrock Converse), streams
//! written in Bedrock's documented events (`tests/<pair>/stream.jsonl`, one event a line,
//! framed here in the AWS event-stream binary format with real CRCs), errors and corruption.
//! The split-anywhere property covers these streams with every other pair's.

use serde_json::{json, Value};
use tollgate_core::config::ApiFamily;
use tollgate_core::Endpoint;

use super::{events, fixture, golden, request, validate_anthropic, validate_openai, CREATED};
use crate::translator::eventstream;
use crate::translator::json::RawObject;
use crate::translator::{Pair, ResponseMeta};

pub(super) const OPENAI_TO_BEDROCK: Pair = Pair {
    client: ApiFamily::OpenAi,
    upstream: ApiFamily::Bedrock,
};
pub(super) const ANTHROPIC_TO_BEDROCK: Pair = Pair {
    client: ApiFamily::Anthropic,
    upstream: ApiFamily::Bedrock,
};

/// A `stream.jsonl` fixture in the event-stream framing.
pub(super) fn framed(rel: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(rel)).unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let payload = v["payload"].to_string();
        out.extend(match (v["event"].as_str(), v["exception"].as_str()) {
            (Some(e), _) => eventstream::event(e, payload.as_bytes()),
            (None, Some(x)) => eventstream::exception(x, payload.as_bytes()),
            _ => panic!("{rel}: a line needs `event` or `exception`"),
        });
    }
    out
}

fn meta(error_type: Option<&str>) -> ResponseMeta<'_> {
    ResponseMeta {
        created: CREATED,
        id: "resp-1",
        model: "anthropic.claude-3-5-sonnet-20240620-v1:0",
        error_type,
    }
}

/// Translates a Bedrock stream, named like the processor names it.
fn bedrock_stream(
    pair: Pair,
    include_usage: bool,
    chunks: &[&[u8]],
) -> (Vec<u8>, Option<tollgate_core::Usage>) {
    let mut t = pair
        .stream(include_usage, CREATED)
        .with_identity("resp-1", "anthropic.claude-3-5-sonnet-20240620-v1:0");
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(t.push(c, i + 1 == chunks.len()));
    }
    (out, t.usage())
}

// ---------------------------------------------------------------------------------------------
// OpenAI client → Bedrock
// ---------------------------------------------------------------------------------------------

#[test]
fn openai_to_bedrock_request() {
    let (body, include_usage) = request(
        OPENAI_TO_BEDROCK,
        "openai_to_bedrock/request.json",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
    );
    assert!(include_usage);
    golden("openai_to_bedrock/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    // No model in the body (it is in the path); the two tool results and the next user text
    // form one user turn.
    assert!(v.get("model").is_none());
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["messages"][2]["content"][1]["toolResult"]["toolUseId"],
        "call_2"
    );
    assert_eq!(
        v["messages"][0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );
    assert_eq!(
        v["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "get_weather"}})
    );
    assert_eq!(
        v["inferenceConfig"],
        json!({"maxTokens": 512, "temperature": 0.3, "topP": 0.9, "stopSequences": ["END"]})
    );
}

#[test]
fn openai_to_bedrock_response() {
    let body = fixture("openai_to_bedrock/response.json");
    let done = OPENAI_TO_BEDROCK.complete_with(200, &body, &meta(None));
    golden(
        "openai_to_bedrock/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let u = done.usage.unwrap();
    // Bedrock's inputTokens leaves the cached tokens out; the hub counts them in.
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens
        ),
        (582, 91, 100, 10)
    );
    let v: Value = serde_json::from_slice(done.body.as_deref().unwrap()).unwrap();
    assert_eq!(v["id"], "resp-1");
    assert_eq!(v["model"], "anthropic.claude-3-5-sonnet-20240620-v1:0");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn openai_to_bedrock_stream() {
    let input = framed("openai_to_bedrock/stream.jsonl");
    let (out, usage) = bedrock_stream(OPENAI_TO_BEDROCK, true, &[&input]);
    golden("openai_to_bedrock/stream.expected.sse", &out);
    let chunks = validate_openai(&out, true);
    // Two tool calls, numbered 0 and 1 in the order they start, whatever Bedrock's indices.
    let calls: Vec<(u64, String)> = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| {
            c["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|t| Some((t["index"].as_u64()?, t["id"].as_str()?.to_owned())))
        .collect();
    assert_eq!(
        calls,
        [(0, "tooluse_A".to_owned()), (1, "tooluse_B".to_owned())]
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], 536);
    assert_eq!(last["usage"]["completion_tokens"], 64);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
    assert_eq!(last["id"], "resp-1");
    let u = usage.unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (536, 64));
    let (out, _) = bedrock_stream(OPENAI_TO_BEDROCK, false, &[&input]);
    validate_openai(&out, false);
}

// ---------------------------------------------------------------------------------------------
// Anthropic client → Bedrock
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_to_bedrock_request() {
    let (body, _) = request(
        ANTHROPIC_TO_BEDROCK,
        "anthropic_to_bedrock/request.json",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
    );
    golden("anthropic_to_bedrock/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let assistant = &v["messages"][1]["content"];
    assert_eq!(
        assistant[0],
        json!({"reasoningContent": {"reasoningText": {"text": "Need the tool.", "signature": "c2lnbmF0dXJl"}}})
    );
    assert_eq!(
        assistant[1],
        json!({"reasoningContent": {"redactedContent": "ZW5jcnlwdGVk"}})
    );
    assert_eq!(
        v["messages"][2]["content"][0]["toolResult"]["status"],
        "error"
    );
    assert_eq!(v["toolConfig"]["toolChoice"], json!({"any": {}}));
    // The system block's `cache_control` becomes a cache point after it.
    assert_eq!(
        v["system"],
        json!([{"text": "You are a weather bot."}, {"cachePoint": {"type": "default"}}])
    );
    assert_eq!(
        v["additionalModelRequestFields"],
        json!({"thinking": {"type": "enabled", "budget_tokens": 2000}, "top_k": 40})
    );
}

#[test]
fn anthropic_cache_control_becomes_converse_cache_points() {
    let body = json!({
        "model": "claude", "max_tokens": 50,
        "system": [
            {"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Today's note."}
        ],
        "tools": [
            {"name": "a", "input_schema": {"type": "object"}},
            {"name": "b", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Big document.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Question?"}
            ]},
            {"role": "assistant", "content": "Answer."},
            {"role": "user", "content": "Plain follow-up."}
        ]
    })
    .to_string();
    let obj = RawObject::parse(body.as_bytes()).unwrap();
    let (out, _) = ANTHROPIC_TO_BEDROCK
        .request(
            &obj,
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            false,
            body.len(),
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let point = json!({"cachePoint": {"type": "default"}});
    assert_eq!(
        v["system"],
        json!([{"text": "Long rules."}, point, {"text": "Today's note."}])
    );
    assert_eq!(
        v["messages"][0]["content"],
        json!([{"text": "Big document."}, point, {"text": "Question?"}])
    );
    assert_eq!(
        v["messages"][2]["content"],
        json!([{"text": "Plain follow-up."}])
    );
    let tools = v["toolConfig"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 3);
    assert_eq!(tools[0]["toolSpec"]["name"], "a");
    assert_eq!(tools[1]["toolSpec"]["name"], "b");
    assert_eq!(tools[2], point);
    // Without breakpoints nothing is added.
    let plain = json!({"model": "claude", "max_tokens": 5, "system": "s",
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let obj = RawObject::parse(plain.as_bytes()).unwrap();
    let (out, _) = ANTHROPIC_TO_BEDROCK
        .request(
            &obj,
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            false,
            plain.len(),
        )
        .unwrap();
    assert!(!String::from_utf8(out).unwrap().contains("cachePoint"));
}

#[test]
fn anthropic_to_bedrock_response() {
    let body = fixture("anthropic_to_bedrock/response.json");
    let done = ANTHROPIC_TO_BEDROCK.complete_with(200, &body, &meta(None));
    golden(
        "anthropic_to_bedrock/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let v: Value = serde_json::from_slice(done.body.as_deref().unwrap()).unwrap();
    assert_eq!(v["stop_reason"], "stop_sequence");
    assert_eq!(v["stop_sequence"], "\n\nHuman:");
    assert_eq!(done.usage.unwrap().input_tokens, 35);
}

#[test]
fn anthropic_to_bedrock_stream() {
    let input = framed("anthropic_to_bedrock/stream.jsonl");
    let (out, usage) = bedrock_stream(ANTHROPIC_TO_BEDROCK, false, &[&input]);
    golden("anthropic_to_bedrock/stream.expected.sse", &out);
    let evs = validate_anthropic(&out);
    let starts: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .map(|e| &e["content_block"]["type"])
        .collect();
    assert_eq!(starts, [&json!("thinking"), &json!("text")]);
    assert!(evs
        .iter()
        .any(|e| e["delta"] == json!({"type": "signature_delta", "signature": "EqQBCgIYAhIM"})));
    let delta = &evs[evs.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["input_tokens"], 35);
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 100);
    assert_eq!(delta["usage"]["output_tokens"], 20);
    assert_eq!(evs[0]["message"]["id"], "resp-1");
    assert_eq!(usage.unwrap().input_tokens, 135);
}

// ---------------------------------------------------------------------------------------------
// What Bedrock cannot take, errors, corruption
// ---------------------------------------------------------------------------------------------

#[test]
fn bedrock_requests_refuse_what_converse_cannot_carry() {
    let url_image = br#"{"model":"b","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x.test/a.png"}}]}]}"#;
    let e = OPENAI_TO_BEDROCK
        .request(&RawObject::parse(url_image).unwrap(), "m", false, 0)
        .unwrap_err();
    assert_eq!(e.api_error().status(), 400);
    // `tool_choice: none` without tool blocks in the conversation: no tools at all.
    let none = br#"{"model":"b","tool_choice":"none","messages":[{"role":"user","content":"hi"}],
        "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#;
    let (body, _) = OPENAI_TO_BEDROCK
        .request(&RawObject::parse(none).unwrap(), "m", false, 0)
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v.get("toolConfig").is_none(), "{v}");
    assert!(v.get("inferenceConfig").is_none(), "{v}");
    // Embeddings go to InvokeModel, legacy completions to Converse (issue 15).
    for e in [Endpoint::Embeddings, Endpoint::Completions] {
        assert!(Pair::route(e, ApiFamily::Bedrock).is_ok());
    }
    assert_eq!(
        Pair::route(Endpoint::Messages, ApiFamily::Bedrock)
            .unwrap()
            .0,
        ANTHROPIC_TO_BEDROCK
    );
}

#[test]
fn bedrock_errors_reach_clients_in_their_dialect() {
    let body = br#"{"message":"Too many requests, please wait before trying again."}"#;
    let header = Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/");
    let done = OPENAI_TO_BEDROCK.complete_with(429, body, &meta(header));
    let v: Value = serde_json::from_slice(&done.body.unwrap()).unwrap();
    assert_eq!(
        v["error"],
        json!({"message": "Too many requests, please wait before trying again.",
            "type": "ThrottlingException", "param": null, "code": null})
    );
    let done = ANTHROPIC_TO_BEDROCK.complete_with(429, body, &meta(header));
    let v: Value = serde_json::from_slice(&done.body.unwrap()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Not a Bedrock error body: Tollgate's own upstream error.
    let done = ANTHROPIC_TO_BEDROCK.complete_with(502, b"<html>", &meta(None));
    let v: Value = serde_json::from_slice(&done.body.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    // A mid-stream exception ends the client's stream with its error event.
    let mut s = eventstream::event("messageStart", br#"{"role":"assistant"}"#);
    s.extend(eventstream::event(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
    ));
    s.extend(eventstream::exception(
        "modelStreamErrorException",
        br#"{"message":"The model failed.","originalStatusCode":500}"#,
    ));
    let (out, _) = bedrock_stream(OPENAI_TO_BEDROCK, false, &[&s]);
    validate_openai(&out, false);
    let last = events(&out).pop().unwrap().1;
    let v: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["error"]["message"], "The model failed.");
    assert_eq!(v["error"]["type"], "modelStreamErrorException");
    let (out, _) = bedrock_stream(ANTHROPIC_TO_BEDROCK, false, &[&s]);
    let evs = validate_anthropic(&out);
    assert_eq!(evs.last().unwrap()["type"], "error");
    assert_eq!(evs.last().unwrap()["error"]["type"], "api_error");
}

#[test]
fn a_corrupt_event_stream_ends_cleanly_with_an_error() {
    let input = framed("openai_to_bedrock/stream.jsonl");
    // Flip one payload byte of the third message: its CRC no longer matches.
    let first = u32::from_be_bytes(input[..4].try_into().unwrap()) as usize;
    let second = u32::from_be_bytes(input[first..first + 4].try_into().unwrap()) as usize;
    let at = first + second + 40;
    let mut bad = input.clone();
    bad[at] ^= 0x20;
    for (pair, anthropic) in [(OPENAI_TO_BEDROCK, false), (ANTHROPIC_TO_BEDROCK, true)] {
        let (out, _) = bedrock_stream(pair, false, &[&bad[..at], &bad[at..]]);
        let text = String::from_utf8(out.clone()).unwrap();
        // What came before the corrupt message reached the client, then one error event.
        assert!(text.contains("Let me "), "{text}");
        assert!(!text.contains("check"), "{text}");
        if anthropic {
            let evs = validate_anthropic(&out);
            assert_eq!(evs.last().unwrap()["error"]["type"], "api_error");
        } else {
            validate_openai(&out, false);
            assert!(
                text.ends_with("\"type\":\"upstream_error\"}}\n\n"),
                "{text}"
            );
        }
    }
    // A stream cut inside a message is an error too, not a silent end.
    let (out, _) = bedrock_stream(OPENAI_TO_BEDROCK, false, &[&input[..input.len() - 3]]);
    assert!(String::from_utf8(out).unwrap().contains("{\"error\""));
}

// ---------------------------------------------------------------------------------------------
// Round trip: a hub request written as Converse and read back is the same request (up to the
// turns Converse merges and the `user` it has no field for).
// ---------------------------------------------------------------------------------------------

mod round_trip {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::super::round_trip::{merged, request};
    use crate::translator::codec::bedrock;
    use crate::translator::hub::{
        ChatRequest, Image, Message, Part, Role, Tool, ToolCall, ToolResult,
    };

    fn text(v: &Value) -> String {
        v.as_str().unwrap().to_owned()
    }

    /// A Converse content block read back into a hub part.
    fn part(b: &Value) -> Part {
        if let Some(t) = b.get("text") {
            return Part::Text(text(t));
        }
        if let Some(i) = b.get("image") {
            return Part::Image(Image::Base64 {
                media_type: format!("image/{}", text(&i["format"])),
                data: text(&i["source"]["bytes"]),
            });
        }
        if let Some(u) = b.get("toolUse") {
            return Part::ToolCall(ToolCall {
                id: text(&u["toolUseId"]),
                name: text(&u["name"]),
                arguments: u["input"].to_string(),
            });
        }
        let r = &b["toolResult"];
        Part::ToolResult(ToolResult {
            call_id: text(&r["toolUseId"]),
            content: r["content"].as_array().unwrap().iter().map(part).collect(),
            is_error: r["status"] == "error",
        })
    }

    /// A `converse` body read back into the hub.
    fn read_back(body: &[u8]) -> ChatRequest {
        let v: Value = serde_json::from_slice(body).unwrap();
        let inference = &v["inferenceConfig"];
        ChatRequest {
            model: "m".into(),
            system: v["system"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| text(&s["text"]))
                .collect(),
            messages: v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message {
                    role: if m["role"] == "user" {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    content: m["content"].as_array().unwrap().iter().map(part).collect(),
                })
                .collect(),
            tools: v["toolConfig"]["tools"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| Tool {
                    name: text(&t["toolSpec"]["name"]),
                    description: t["toolSpec"].get("description").map(text),
                    parameters: t["toolSpec"]["inputSchema"]["json"].clone(),
                })
                .collect(),
            max_tokens: inference["maxTokens"].as_u64(),
            temperature: inference["temperature"].as_f64(),
            stop: inference["stopSequences"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect(),
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn bedrock_codec_round_trips(mut req in request()) {
            // Converse takes inline image bytes only.
            for p in req.messages.iter_mut().flat_map(|m| m.content.iter_mut()) {
                if let Part::Image(i @ Image::Url(_)) = p {
                    *i = Image::Base64 { media_type: "image/webp".into(), data: "UklGRg==".into() };
                }
            }
            let body = bedrock::request_to_wire(&req).unwrap();
            let mut want = merged(req);
            want.user = None;
            prop_assert_eq!(read_back(&body), want);
        }
    }
}
