//! `POST …/chat/completions`: the OpenAI Chat Completions API, answered with one
//! `chat.completion` object or an SSE stream of `chat.completion.chunk` events. With `tools`
//! in the request and no tool result in the last message, the reply calls the first tool.

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
        user_texts.into_iter().flat_map(str::split_whitespace),
        max_tokens,
    );
    let id = format!("chatcmpl-mock-{}", exchange.number);
    let answering_tool = messages
        .last()
        .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("tool"));
    let tool = request
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .filter(|_| !answering_tool && !exchange.stream_error);
    if let Some(tool) = tool {
        let call = ToolUse::for_tool(tool, exchange.number);
        let usage = Usage::new(prompt_tokens, call.tokens());
        return Ok(tool_call(
            &id,
            exchange,
            &call,
            &usage,
            stream,
            include_usage,
        ));
    }
    let usage = Usage::new(prompt_tokens, reply.tokens());

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
    let content = reply.text();
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

/// A reply that calls `call`'s tool (`finish_reason: tool_calls`), whole or streamed with
/// the id and name in the first tool-call delta and the arguments in two pieces.
fn tool_call(
    id: &str,
    exchange: &Exchange<'_>,
    call: &ToolUse,
    usage: &Usage,
    stream: bool,
    include_usage: bool,
) -> Response {
    let call_id = call.id.replace("toolu_", "call_");
    let arguments = call.input.to_string();
    if !stream {
        return Json(json!({
            "id": id, "object": "chat.completion", "created": exchange.created,
            "model": exchange.model,
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": null, "refusal": null, "annotations": [],
                "tool_calls": [{"id": call_id, "type": "function",
                                "function": {"name": call.name, "arguments": arguments}}],
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
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id,
            "type": "function", "function": {"name": call.name, "arguments": ""}}]}),
        None,
    )];
    for piece in call.argument_pieces() {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        ));
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
    fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: 0,
                audio_tokens: 0,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: 0,
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
