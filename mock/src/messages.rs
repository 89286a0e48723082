//! `POST …/messages`: the Anthropic Messages API, answered with one `message` object or an SSE
//! stream framed as Anthropic frames it (`event: <type>` + `data: <json>`, a `ping` after the
//! first block starts), with usage on `message_start` and `message_delta`.
//!
//! With `tools` in the request and no `tool_result` in the last turn, the reply is a short text
//! block followed by a `tool_use` block calling the first tool (`stop_reason: tool_use`), its
//! input built from the tool's schema; a forcing `tool_choice` (`tool` names the tool, `any`)
//! gives the `tool_use` block alone, as Anthropic does; otherwise it is the usual echo.
//! With thinking enabled the answer opens with a signed `thinking` block, and thinking sent
//! back is checked as Anthropic checks it ([`crate::thinking`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::error::MockError;
use crate::params::{self, Request};
use crate::routes::Exchange;
use crate::sse;
use crate::text::{word_count, FinishReason, Reply};
use crate::thinking;

/// Answers one Messages request.
pub(crate) fn respond(request: &Request, exchange: &Exchange<'_>) -> Result<Response, MockError> {
    let messages = match request.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(MockError::InvalidParameter {
                param: "messages",
                message: "messages: at least one message is required".to_owned(),
            })
        }
        _ => return Err(MockError::MissingParameter("messages")),
    };
    let max_tokens = params::positive_integer(request, "max_tokens")?
        .ok_or(MockError::MissingParameter("max_tokens"))?;
    let stream = params::flag(request, "stream")?;
    let thinking = thinking::enabled(request);
    thinking::check(messages, thinking)?;

    let system_words: u64 = match request.get("system") {
        Some(Value::String(s)) => word_count(s),
        Some(Value::Array(blocks)) => blocks.iter().flat_map(block_texts).map(word_count).sum(),
        _ => 0,
    };
    let input_tokens = (system_words
        + messages
            .iter()
            .flat_map(message_texts)
            .map(word_count)
            .sum::<u64>())
    .max(1);
    let last = messages.last();
    let answering_tool = last.is_some_and(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
    });
    // `tool_choice` `tool` (that tool) or `any` forces the call, with no text before it.
    let choice = request.get("tool_choice");
    let forced = choice.is_some_and(|c| c["type"] == "tool" || c["type"] == "any");
    let named = choice
        .filter(|c| c["type"] == "tool")
        .and_then(|c| c["name"].as_str());
    let last_user = messages.iter().rev().find(|m| m["role"] == "user");
    let user_texts = last_user.map(message_texts).unwrap_or_default();
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .filter(|_| !answering_tool);
    let calls: Vec<ToolUse> = match (tools, named) {
        (None, _) => Vec::new(),
        (Some(t), Some(n)) => t
            .iter()
            .find(|tool| tool["name"] == n)
            .map(|tool| ToolUse::for_tool(tool, exchange.number))
            .into_iter()
            .collect(),
        (Some(t), None) => ToolUse::for_tools(t, &user_texts.join(" "), exchange.number),
    };
    let reply = Reply::to(
        user_texts.iter().flat_map(|t| t.split_whitespace()),
        (!exchange.stream_error).then_some(max_tokens),
    );
    let id = format!("msg_mock{:08}", exchange.number);
    let call = calls.first();
    let text = match call {
        Some(_) if forced => String::new(),
        Some(c) => format!("Calling {}.", c.name),
        None => reply.text(),
    };
    let thought = thinking.then_some(thinking::THOUGHT);
    let output_tokens = word_count(&text)
        + calls.iter().map(ToolUse::tokens).sum::<u64>()
        + thought.map_or(0, word_count);
    let stop_reason = match (call, reply.finish_reason) {
        (Some(_), _) => "tool_use",
        (None, FinishReason::Length) => "max_tokens",
        (None, FinishReason::Stop) => "end_turn",
    };
    let usage = json!({
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    });

    if stream {
        let pieces: Vec<String> = match call {
            Some(_) if forced => Vec::new(),
            Some(_) => vec![text.clone()],
            None => reply.pieces().collect(),
        };
        let events = stream_events(&StreamPlan {
            id: &id,
            model: exchange.model,
            pieces: &pieces,
            calls: &calls,
            input_tokens,
            output_tokens,
            stop_reason,
            fail: exchange.stream_error,
            thought,
        });
        return Ok(sse_response(events, exchange));
    }
    if exchange.stream_error {
        return Err(MockError::GenerationFailed);
    }
    let mut content = Vec::with_capacity(3);
    if let Some(t) = thought {
        content
            .push(json!({"type": "thinking", "thinking": t, "signature": thinking::signature(t)}));
    }
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for c in &calls {
        content.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input}));
    }
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": exchange.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage,
    }))
    .into_response())
}

/// A tool call the mock makes.
pub(crate) struct ToolUse {
    pub id: String,
    pub name: String,
    pub input: Value,
}

impl ToolUse {
    /// A call of `tool` (an Anthropic or OpenAI tool definition) with arguments made from its
    /// schema: `"mock"` (or the property's string `default`) for strings, 1 for numbers, `true`
    /// for booleans.
    pub(crate) fn for_tool(tool: &Value, number: u64) -> Self {
        // OpenAI `function.parameters`, Anthropic `input_schema`, Gemini `parameters` (OpenAPI
        // types, uppercase) or `parametersJsonSchema`.
        let (name, schema) = match tool.get("function") {
            Some(f) => (&f["name"], &f["parameters"]),
            None => (
                &tool["name"],
                ["input_schema", "parametersJsonSchema", "parameters"]
                    .iter()
                    .find_map(|k| tool.get(*k))
                    .unwrap_or(&Value::Null),
            ),
        };
        let mut input = Map::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                let kind = p
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase);
                let v = match kind.as_deref() {
                    Some("integer" | "number") => json!(1),
                    Some("boolean") => json!(true),
                    Some("array") => json!([]),
                    Some("object") => json!({}),
                    // A string property's `default`, when it has one, so tests can choose.
                    _ => match p.get("default") {
                        Some(Value::String(d)) => json!(d),
                        _ => json!("mock"),
                    },
                };
                input.insert(k.clone(), v);
            }
        }
        Self {
            id: format!("toolu_mock{number:08}"),
            name: name.as_str().unwrap_or("tool").to_owned(),
            input: Value::Object(input),
        }
    }

    /// The calls a reply makes: every offered tool the user's text names, when it names two
    /// or more (parallel calls, ids numbered after the first), else the first tool.
    pub(crate) fn for_tools<'t>(
        tools: impl IntoIterator<Item = &'t Value>,
        user_text: &str,
        number: u64,
    ) -> Vec<Self> {
        let all: Vec<Self> = tools
            .into_iter()
            .map(|t| Self::for_tool(t, number))
            .collect();
        let named: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, c)| user_text.contains(c.name.as_str()))
            .map(|(i, _)| i)
            .collect();
        if named.len() < 2 {
            return all.into_iter().take(1).collect();
        }
        all.into_iter()
            .enumerate()
            .filter(|(i, _)| named.contains(i))
            .enumerate()
            .map(|(n, (_, mut c))| {
                if n > 0 {
                    c.id = format!("{}_{n}", c.id);
                }
                c
            })
            .collect()
    }

    /// The arguments as JSON text, in two pieces for streaming.
    pub(crate) fn argument_pieces(&self) -> [String; 2] {
        let text = self.input.to_string();
        let cut = text.len() / 2;
        let cut = (0..=cut)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        [text[..cut].to_owned(), text[cut..].to_owned()]
    }

    /// Output tokens the call counts for.
    pub(crate) fn tokens(&self) -> u64 {
        1 + self.input.as_object().map_or(0, |o| o.len() as u64)
    }
}

struct StreamPlan<'a> {
    id: &'a str,
    model: &'a str,
    pieces: &'a [String],
    calls: &'a [ToolUse],
    input_tokens: u64,
    output_tokens: u64,
    stop_reason: &'a str,
    fail: bool,
    /// The thinking block that opens the answer (thinking enabled).
    thought: Option<&'a str>,
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn stream_events(plan: &StreamPlan<'_>) -> Vec<Bytes> {
    let mut events = vec![event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": plan.id, "type": "message", "role": "assistant", "model": plan.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": plan.input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }}),
    )];
    // Thinking first (index 0), when on; then a forced tool call comes alone.
    let base = usize::from(plan.thought.is_some());
    if let Some(t) = plan.thought {
        events.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ));
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": t}}),
        ));
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "signature_delta", "signature": thinking::signature(t)}}),
        ));
        events.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    let text_block = !plan.pieces.is_empty() || plan.calls.is_empty();
    let first_call_index = base + usize::from(text_block);
    if text_block {
        events.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": base,
                    "content_block": {"type": "text", "text": ""}}),
        ));
    }
    events.push(event("ping", &json!({"type": "ping"})));
    let delta = |piece: &str| {
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": base,
                    "delta": {"type": "text_delta", "text": piece}}),
        )
    };
    if plan.fail {
        events.extend(plan.pieces.iter().take(2).map(|p| delta(p)));
        events.push(event(
            "error",
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        return events;
    }
    events.extend(plan.pieces.iter().map(|p| delta(p)));
    if text_block {
        events.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": base}),
        ));
    }
    for (n, c) in plan.calls.iter().enumerate() {
        let call_index = first_call_index + n;
        events.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": call_index,
                    "content_block": {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}}),
        ));
        for piece in c.argument_pieces() {
            events.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": call_index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": call_index}),
        ));
    }
    events.push(event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": plan.stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": plan.output_tokens}}),
    ));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    events
}

fn sse_response(events: Vec<Bytes>, exchange: &Exchange<'_>) -> Response {
    let mut r = sse::response(events, exchange.chunk_delay);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r
}

/// The texts of a message: its string content, or its text blocks and the texts inside its
/// tool results.
fn message_texts(message: &Value) -> Vec<&str> {
    match message.get("content") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(blocks)) => blocks.iter().flat_map(block_texts).collect(),
        _ => Vec::new(),
    }
}

fn block_texts(block: &Value) -> Vec<&str> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => block
            .get("text")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
        Some("tool_result") => match block.get("content") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(b)) => b.iter().flat_map(block_texts).collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// An error in Anthropic's format: `{"type":"error","error":{"type","message"}}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    };
    let mut r = (
        status,
        Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}
