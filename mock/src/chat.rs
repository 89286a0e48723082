//! `POST …/chat/completions`: the OpenAI Chat Completions API, answered with one
//! `chat.completion` object or an SSE stream of `chat.completion.chunk` events. With `tools`
//! in the request and no tool result in the last message, the reply calls the first tool, or
//! every tool the user's text names when it names several (streamed interleaved by `index`).
//! A judge prompt (a system message starting `You are an evaluator.`, what Tollgate's
//! `llm_judge` evaluators send) gets a parsable verdict instead of an echo.

use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{ErrorBody, ErrorObject, MockError, SERVER_ERROR_MESSAGE};
use crate::messages::ToolUse;
use crate::params::{self, Request};
use crate::routes::Exchange;
use crate::sse;
use crate::text::{word_count, FinishReason, Reply, SYSTEM_FINGERPRINT};

/// Answers one chat completion request.
pub(crate) fn respond(request: &Request, exchange: &Exchange<'_>) -> Result<Response, MockError> {
    let messages = messages(request)?;
    let stream = params::flag(request, "stream")?;
    let include_usage = params::include_usage(request, stream)?;
    // A failing stream always gets its two content chunks, whatever the limit.
    let max_tokens = params::max_tokens(request)?.filter(|_| !exchange.stream_error);

    let prompt_tokens = messages
        .iter()
        .flat_map(message_texts)
        .map(word_count)
        .sum::<u64>()
        .max(1);
    let last_user = messages
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"));
    let user_texts = last_user.map(message_texts).unwrap_or_default();
    let reply = Reply::to(
        user_texts.iter().flat_map(|t| t.split_whitespace()),
        max_tokens,
    );
    let id = format!("chatcmpl-mock-{}", exchange.number);
    let answering_tool = messages
        .last()
        .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("tool"));
    check_tool_call_ids(messages)?;
    let reasoning = reasoning_tokens(request);
    let calls = request
        .get("tools")
        .and_then(Value::as_array)
        .filter(|_| !answering_tool && !exchange.stream_error)
        .map(|tools| ToolUse::for_tools(tools, &user_texts.join(" "), exchange.number))
        .unwrap_or_default();
    if !calls.is_empty() {
        let tokens = calls.iter().map(ToolUse::tokens).sum::<u64>();
        let usage = Usage::new(prompt_tokens, tokens, reasoning);
        return Ok(tool_call(
            &id,
            exchange,
            &calls,
            &usage,
            stream,
            include_usage,
        ));
    }
    let usage = Usage::new(prompt_tokens, reply.tokens(), reasoning);

    if stream {
        let events = stream_events(&id, exchange, &reply, &usage, include_usage);
        if exchange.endless {
            // The role chunk, then the content chunks over and over: no finish, no `[DONE]`.
            let pieces = reply.pieces().count();
            let mut events = events.into_iter();
            let first = events.next().unwrap_or_default();
            let repeated = events.take(pieces).collect();
            return Ok(sse::endless_response(first, repeated, exchange.chunk_delay));
        }
        return Ok(sse::response(events, exchange.chunk_delay));
    }
    if exchange.stream_error {
        return Err(MockError::GenerationFailed);
    }
    let content = judge_verdict(messages).unwrap_or_else(|| reply.text());
    Ok(Json(Completion {
        id: &id,
        object: "chat.completion",
        created: exchange.created,
        model: exchange.model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: &content,
                refusal: None,
                annotations: &[],
            },
            logprobs: None,
            finish_reason: reply.finish_reason,
        }],
        usage: &usage,
        service_tier: "default",
        system_fingerprint: SYSTEM_FINGERPRINT,
    })
    .into_response())
}

/// The verdict of a judge prompt: `{"score": 4, ...}` when the system message asks for 1 to 5,
/// `{"score": 0.75, ...}` otherwise; `None` for any other request.
fn judge_verdict(messages: &[Value]) -> Option<String> {
    let system = messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("system"))?
        .get("content")?
        .as_str()?;
    if !system.starts_with("You are an evaluator.") {
        return None;
    }
    let score = if system.contains("from 1 to 5") {
        "4"
    } else {
        "0.75"
    };
    Some(format!(r#"{{"score": {score}, "reason": "mock judge"}}"#))
}

fn messages(request: &Request) -> Result<&Vec<Value>, MockError> {
    match request.get("messages") {
        None | Some(Value::Null) => Err(MockError::MissingParameter("messages")),
        Some(Value::Array(messages)) if messages.is_empty() => Err(MockError::InvalidParameter {
            param: "messages",
            message: "[] is too short - 'messages'".to_owned(),
        }),
        Some(Value::Array(messages)) => Ok(messages),
        Some(_) => Err(MockError::InvalidParameter {
            param: "messages",
            message: "Invalid type for 'messages': expected an array of objects.".to_owned(),
        }),
    }
}

/// Reasoning tokens the reply reports: 3 when the request sets a `reasoning_effort` other than
/// `none`, as reasoning models count them in `completion_tokens_details`.
fn reasoning_tokens(request: &Request) -> u64 {
    match request.get("reasoning_effort").and_then(Value::as_str) {
        None | Some("none") => 0,
        Some(_) => 3,
    }
}

/// OpenAI refuses tool-call ids longer than 40 characters, in the calls and in the results.
fn check_tool_call_ids(messages: &[Value]) -> Result<(), MockError> {
    for (i, m) in messages.iter().enumerate() {
        let ids = m["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| &c["id"])
            .chain(std::iter::once(&m["tool_call_id"]));
        for id in ids.filter_map(Value::as_str) {
            if id.len() > 40 {
                return Err(MockError::InvalidParameter {
                    param: "messages",
                    message: format!(
                        "Invalid 'messages[{i}]' tool call id: string too long. Expected a string with maximum length 40, but got a string with length {} instead.",
                        id.len()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A reply that calls `calls`' tools (`finish_reason: tool_calls`), whole or streamed with
/// each call's id and name in its first tool-call delta and its arguments in two pieces;
/// several calls are all announced first, then their argument pieces interleave by `index`,
/// as OpenAI streams parallel calls.
fn tool_call(
    id: &str,
    exchange: &Exchange<'_>,
    calls: &[ToolUse],
    usage: &Usage,
    stream: bool,
    include_usage: bool,
) -> Response {
    let call_id = |call: &ToolUse| call.id.replace("toolu_", "call_");
    if !stream {
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|call| {
                json!({"id": call_id(call), "type": "function",
                    "function": {"name": call.name, "arguments": call.input.to_string()}})
            })
            .collect();
        return Json(json!({
            "id": id, "object": "chat.completion", "created": exchange.created,
            "model": exchange.model,
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": null, "refusal": null, "annotations": [],
                "tool_calls": tool_calls,
            }, "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": usage, "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": exchange.created,
            "model": exchange.model, "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        sse::event(&c)
    };
    let mut events = Vec::with_capacity(3 * calls.len() + 3);
    for (n, call) in calls.iter().enumerate() {
        let mut delta = json!({"tool_calls": [{"index": n, "id": call_id(call),
            "type": "function", "function": {"name": call.name, "arguments": ""}}]});
        if n == 0 {
            delta["role"] = "assistant".into();
            delta["content"] = Value::Null;
        }
        events.push(chunk(delta, None));
    }
    let pieces: Vec<[String; 2]> = calls.iter().map(ToolUse::argument_pieces).collect();
    for half in 0..2 {
        for (n, p) in pieces.iter().enumerate() {
            events.push(chunk(
                json!({"tool_calls": [{"index": n, "function": {"arguments": p[half]}}]}),
                None,
            ));
        }
    }
    events.push(chunk(json!({}), Some("tool_calls")));
    if include_usage {
        events.push(sse::event(&json!({
            "id": id, "object": "chat.completion.chunk", "created": exchange.created,
            "model": exchange.model, "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [], "usage": usage,
        })));
    }
    events.push(Bytes::from_static(sse::DONE));
    sse::response(events, exchange.chunk_delay)
}

/// The texts of a message's content: the string, or the `text` of each `{"type":"text"}` part.
fn message_texts(message: &Value) -> Vec<&str> {
    match message.get("content") {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => Vec::new(),
    }
}

/// The SSE events of a streamed reply, `[DONE]` included.
fn stream_events(
    id: &str,
    exchange: &Exchange<'_>,
    reply: &Reply<'_>,
    usage: &Usage,
    include_usage: bool,
) -> Vec<Bytes> {
    // With include_usage every chunk carries `"usage": null` until the usage chunk.
    let usage_placeholder = include_usage.then_some(None);
    let chunk = |delta: Delta<'_>, finish_reason: Option<FinishReason>| {
        sse::event(&Chunk {
            id,
            object: "chat.completion.chunk",
            created: exchange.created,
            model: exchange.model,
            service_tier: "default",
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: &[ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: usage_placeholder,
        })
    };

    let mut events = Vec::with_capacity(reply.words.len() + 4);
    events.push(chunk(
        Delta {
            role: Some("assistant"),
            content: Some(""),
        },
        None,
    ));
    let content_chunk = |piece: &str| {
        chunk(
            Delta {
                role: None,
                content: Some(piece),
            },
            None,
        )
    };
    if exchange.stream_error {
        events.extend(reply.pieces().take(2).map(|piece| content_chunk(&piece)));
        events.push(sse::event(&ErrorBody {
            error: ErrorObject {
                message: SERVER_ERROR_MESSAGE,
                kind: "server_error",
                param: None,
                code: None,
            },
        }));
        return events;
    }
    events.extend(reply.pieces().map(|piece| content_chunk(&piece)));
    events.push(chunk(
        Delta {
            role: None,
            content: None,
        },
        Some(reply.finish_reason),
    ));
    if include_usage {
        events.push(sse::event(&Chunk {
            id,
            object: "chat.completion.chunk",
            created: exchange.created,
            model: exchange.model,
            service_tier: "default",
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: &[],
            usage: Some(Some(usage)),
        }));
    }
    events.push(Bytes::from_static(sse::DONE));
    events
}

/// Chat usage, with the detail objects OpenAI always sends.
#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

impl Usage {
    /// `reasoning_tokens` are counted into the completion tokens, as OpenAI counts them.
    fn new(prompt_tokens: u64, completion_tokens: u64, reasoning_tokens: u64) -> Self {
        let completion_tokens = completion_tokens + reasoning_tokens;
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: 0,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct PromptTokensDetails {
    cached_tokens: u64,
    audio_tokens: u64,
}

#[derive(Debug, Serialize)]
struct CompletionTokensDetails {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

/// A `chat.completion` object.
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: &'a Usage,
    service_tier: &'static str,
    system_fingerprint: &'static str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: FinishReason,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'a str>,
    annotations: &'static [()],
}

/// A `chat.completion.chunk` object.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    service_tier: &'static str,
    system_fingerprint: &'static str,
    choices: &'a [ChunkChoice<'a>],
    /// Absent without include_usage; `null` on content chunks and the usage on the last
    /// chunk with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}
