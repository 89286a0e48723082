//! `POST …/responses`: OpenAI's Responses API, answered with one `response` object or an SSE
//! stream of Responses events (`event:` lines, `sequence_number` on each, `response.completed`
//! with usage last), written here independently of the gateway's encoder. Function tools are
//! called when the input's last item is not a `function_call_output`; a `reasoning.effort`
//! adds a reasoning item whose `encrypted_content` must come back unchanged (anything else in
//! a reasoning item's `encrypted_content` is refused, as OpenAI refuses content it cannot
//! decrypt). `previous_response_id` is refused: the gateway keeps conversations itself.

use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use crate::error::{MockError, SERVER_ERROR_MESSAGE};
use crate::messages::ToolUse;
use crate::params::{self, Request};
use crate::routes::Exchange;
use crate::sse;
use crate::text::{word_count, FinishReason, Reply};

/// The prefix of the encrypted reasoning the mock issues.
const ENCRYPTED_PREFIX: &str = "gAAAA-mock-";

/// The texts of an input item's content (a string, or `input_text`/`output_text` parts).
fn item_texts(item: &Value) -> Vec<&str> {
    match item.get("content") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => match item.get("output") {
            Some(Value::String(t)) => vec![t.as_str()],
            _ => Vec::new(),
        },
    }
}

fn invalid(param: &'static str, message: impl Into<String>) -> MockError {
    MockError::InvalidParameter {
        param,
        message: message.into(),
    }
}

/// Answers one Responses request.
pub(crate) fn respond(request: &Request, exchange: &Exchange<'_>) -> Result<Response, MockError> {
    let stream = params::flag(request, "stream")?;
    if request
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(invalid(
            "previous_response_id",
            "The mock keeps no responses: previous_response_id is not accepted.",
        ));
    }
    let items: Vec<Value> = match request.get("input") {
        Some(Value::String(t)) => vec![json!({"role": "user", "content": t})],
        Some(Value::Array(a)) => a.clone(),
        _ => return Err(MockError::MissingParameter("input")),
    };
    for item in &items {
        if item.get("type").and_then(Value::as_str) == Some("reasoning") {
            let enc = item.get("encrypted_content").and_then(Value::as_str);
            if enc.is_some_and(|e| !e.starts_with(ENCRYPTED_PREFIX)) {
                return Err(invalid(
                    "input",
                    "The encrypted content of a reasoning item could not be verified.",
                ));
            }
        }
    }
    let max_tokens = match request.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| invalid("max_output_tokens", "must be an integer"))?,
        ),
    }
    .filter(|_| !exchange.stream_error);
    let mut prompt_tokens = items
        .iter()
        .flat_map(item_texts)
        .map(word_count)
        .sum::<u64>();
    if let Some(i) = request.get("instructions").and_then(Value::as_str) {
        prompt_tokens += word_count(i);
    }
    let prompt_tokens = prompt_tokens.max(1);
    let last_user = items
        .iter()
        .rev()
        .find(|i| i.get("role").and_then(Value::as_str) == Some("user"));
    let user_texts = last_user.map(item_texts).unwrap_or_default();
    let answering_tool = items
        .last()
        .is_some_and(|i| i.get("type").and_then(Value::as_str) == Some("function_call_output"));
    let calls = request
        .get("tools")
        .and_then(Value::as_array)
        .filter(|_| !answering_tool && !exchange.stream_error)
        .map(|tools| ToolUse::for_tools(tools, &user_texts.join(" "), exchange.number))
        .unwrap_or_default();
    let reasoning = request
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str)
        .is_some_and(|e| e != "none");
    let reply = Reply::to(
        user_texts.iter().flat_map(|t| t.split_whitespace()),
        max_tokens,
    );
    let id = format!("resp_mock{:08}", exchange.number);
    let mut output = Vec::new();
    let reasoning_tokens = if reasoning { 3 } else { 0 };
    if reasoning {
        output.push(
            json!({"type": "reasoning", "id": format!("rs_mock{:08}", exchange.number),
            "summary": [], "encrypted_content": format!("{ENCRYPTED_PREFIX}{}", exchange.number)}),
        );
    }
    let mut output_tokens = reasoning_tokens;
    if calls.is_empty() {
        output_tokens += reply.tokens();
        output.push(json!({"type": "message", "id": format!("msg_mock{:08}", exchange.number),
            "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": reply.text(), "annotations": [], "logprobs": []}]}));
    } else {
        for (n, c) in calls.iter().enumerate() {
            output_tokens += c.tokens();
            output.push(
                json!({"type": "function_call", "id": format!("fc_mock{:08}_{n}", exchange.number),
                "call_id": c.id.replace("toolu_", "call_"), "name": c.name,
                "arguments": c.input.to_string(), "status": "completed"}),
            );
        }
    }
    let incomplete = calls.is_empty() && reply.finish_reason == FinishReason::Length;
    let usage = json!({
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt_tokens + output_tokens,
    });
    let object = |status: &str, output: Vec<Value>, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": exchange.created, "status": status,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": request.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": exchange.model, "output": output, "parallel_tool_calls": true,
            "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
            "store": request.get("store").cloned().unwrap_or(Value::Bool(true)),
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": request.get("tools").cloned().unwrap_or(json!([])), "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "user": null,
            "metadata": request.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })
    };
    let status = if incomplete {
        "incomplete"
    } else {
        "completed"
    };
    if !stream {
        if exchange.stream_error {
            return Err(MockError::GenerationFailed);
        }
        return Ok(Json(object(status, output, usage)).into_response());
    }
    let mut events = Events::default();
    let started = object("in_progress", Vec::new(), Value::Null);
    events.push("response.created", json!({"response": started}));
    events.push("response.in_progress", json!({"response": started}));
    for (oi, item) in output.iter().enumerate() {
        let item_id = item["id"].clone();
        match item["type"].as_str() {
            Some("message") => {
                let mut added = item.clone();
                added["status"] = "in_progress".into();
                added["content"] = json!([]);
                events.push(
                    "response.output_item.added",
                    json!({"output_index": oi, "item": added}),
                );
                events.push("response.content_part.added", json!({"item_id": item_id, "output_index": oi,
                    "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
                let pieces: Vec<String> = reply.pieces().collect();
                let count = if exchange.stream_error {
                    2
                } else {
                    pieces.len()
                };
                for p in pieces.iter().take(count) {
                    events.push(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": oi,
                        "content_index": 0, "delta": p, "logprobs": []}),
                    );
                }
                if exchange.stream_error {
                    events.push("error", json!({"code": "server_error", "message": SERVER_ERROR_MESSAGE, "param": null}));
                    return Ok(sse::response(events.0, exchange.chunk_delay));
                }
                let text = reply.text();
                events.push(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": oi,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                events.push("response.content_part.done", json!({"item_id": item_id, "output_index": oi,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
            }
            Some("function_call") => {
                let mut added = item.clone();
                added["status"] = "in_progress".into();
                added["arguments"] = "".into();
                events.push(
                    "response.output_item.added",
                    json!({"output_index": oi, "item": added}),
                );
                let args = item["arguments"].as_str().unwrap_or_default();
                let mid = args.len() / 2;
                let mid = (mid..=args.len())
                    .find(|i| args.is_char_boundary(*i))
                    .unwrap_or(args.len());
                for piece in [&args[..mid], &args[mid..]] {
                    events.push(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id,
                        "output_index": oi, "delta": piece}),
                    );
                }
                events.push(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id,
                    "output_index": oi, "name": item["name"], "arguments": args}),
                );
            }
            _ => {
                events.push(
                    "response.output_item.added",
                    json!({"output_index": oi, "item": item}),
                );
            }
        }
        events.push(
            "response.output_item.done",
            json!({"output_index": oi, "item": item}),
        );
    }
    let last = if incomplete {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push(
        last,
        json!({"response": object(status, output.clone(), usage)}),
    );
    Ok(sse::response(events.0, exchange.chunk_delay))
}

/// Responses SSE events, numbered as they are added.
#[derive(Default)]
struct Events(Vec<Bytes>);

impl Events {
    fn push(&mut self, name: &str, mut data: Value) {
        data["type"] = name.into();
        data["sequence_number"] = (self.0.len() as u64).into();
        let mut buf = BytesMut::with_capacity(256);
        buf.put_slice(b"event: ");
        buf.put_slice(name.as_bytes());
        buf.put_slice(b"\ndata: ");
        buf.put_slice(data.to_string().as_bytes());
        buf.put_slice(b"\n\n");
        self.0.push(buf.freeze());
    }
}
