//! `POST …/completions`: the legacy OpenAI Completions API, answered with one
//! `text_completion` object or an SSE stream of `text_completion` chunks. A prompt array gets
//! one choice per prompt, as OpenAI does.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::error::{ErrorBody, ErrorObject, MockError, SERVER_ERROR_MESSAGE};
use crate::params::{self, Request};
use crate::routes::Exchange;
use crate::sse;
use crate::text::{word_count, FinishReason, Reply};

/// Answers one legacy completion request.
pub(crate) fn respond(request: &Request, exchange: &Exchange<'_>) -> Result<Response, MockError> {
    let prompts = prompts(request)?;
    let stream = params::flag(request, "stream")?;
    let include_usage = params::include_usage(request, stream)?;
    let max_tokens =
        params::positive_integer(request, "max_tokens")?.filter(|_| !exchange.stream_error);

    let prompt_tokens = prompts
        .iter()
        .map(|prompt| word_count(prompt))
        .sum::<u64>()
        .max(1);
    let replies: Vec<Reply<'_>> = prompts
        .iter()
        .map(|prompt| Reply::to(prompt.split_whitespace(), max_tokens))
        .collect();
    let completion_tokens = replies.iter().map(Reply::tokens).sum();
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    let id = format!("cmpl-mock-{}", exchange.number);

    if stream {
        let events = stream_events(&id, exchange, &replies, &usage, include_usage);
        return Ok(sse::response(events, exchange.chunk_delay));
    }
    if exchange.stream_error {
        return Err(MockError::GenerationFailed);
    }
    let texts: Vec<String> = replies.iter().map(Reply::text).collect();
    let choices: Vec<CompletionChoice<'_>> = replies
        .iter()
        .zip(&texts)
        .zip(0..)
        .map(|((reply, text), index)| CompletionChoice {
            text,
            index,
            logprobs: None,
            finish_reason: Some(reply.finish_reason),
        })
        .collect();
    Ok(Json(Completion {
        id: &id,
        object: "text_completion",
        created: exchange.created,
        model: exchange.model,
        choices: &choices,
        usage: Some(Some(&usage)),
    })
    .into_response())
}

/// The prompts: a string, an array of strings, an array of token ids or an array of token-id
/// arrays. Token prompts become their ids in decimal, one word per token.
fn prompts(request: &Request) -> Result<Vec<Cow<'_, str>>, MockError> {
    let invalid = || MockError::InvalidParameter {
        param: "prompt",
        message: "Invalid type for 'prompt': expected a string, an array of strings, an array \
                  of tokens or an array of token arrays."
            .to_owned(),
    };
    match request.get("prompt") {
        None | Some(Value::Null) => Err(MockError::MissingParameter("prompt")),
        Some(Value::String(prompt)) => Ok(vec![Cow::Borrowed(prompt.as_str())]),
        Some(Value::Array(items)) if items.is_empty() => Err(invalid()),
        Some(Value::Array(items)) => {
            if let Some(tokens) = tokens_text(items) {
                return Ok(vec![Cow::Owned(tokens)]);
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(prompt) => Some(Cow::Borrowed(prompt.as_str())),
                    Value::Array(tokens) => tokens_text(tokens).map(Cow::Owned),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)
        }
        Some(_) => Err(invalid()),
    }
}

/// Token ids as one space-separated string, or `None` unless every item is a token id.
fn tokens_text(items: &[Value]) -> Option<String> {
    let mut text = String::with_capacity(items.len() * 6);
    for item in items {
        let token = item.as_u64()?;
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&token.to_string());
    }
    Some(text)
}

/// The SSE events of streamed replies (choice after choice), `[DONE]` included.
fn stream_events(
    id: &str,
    exchange: &Exchange<'_>,
    replies: &[Reply<'_>],
    usage: &Usage,
    include_usage: bool,
) -> Vec<Bytes> {
    let usage_placeholder = include_usage.then_some(None);
    let chunk = |index: u32, text: &str, finish_reason: Option<FinishReason>| {
        sse::event(&Completion {
            id,
            object: "text_completion",
            created: exchange.created,
            model: exchange.model,
            choices: &[CompletionChoice {
                text,
                index,
                logprobs: None,
                finish_reason,
            }],
            usage: usage_placeholder,
        })
    };

    let mut events = Vec::new();
    for (reply, index) in replies.iter().zip(0..) {
        if exchange.stream_error {
            events.extend(
                reply
                    .pieces()
                    .take(2)
                    .map(|piece| chunk(index, &piece, None)),
            );
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
        events.extend(reply.pieces().map(|piece| chunk(index, &piece, None)));
        events.push(chunk(index, "", Some(reply.finish_reason)));
    }
    if include_usage {
        events.push(sse::event(&Completion {
            id,
            object: "text_completion",
            created: exchange.created,
            model: exchange.model,
            choices: &[],
            usage: Some(Some(usage)),
        }));
    }
    events.push(Bytes::from_static(sse::DONE));
    events
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// A `text_completion` object: the whole response, or one stream chunk.
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [CompletionChoice<'a>],
    /// The usage on a whole response and on the usage chunk; `null` on other chunks with
    /// include_usage; absent on chunks without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}
