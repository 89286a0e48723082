//! `POST …/models/{model}:generateContent` and `:streamGenerateContent`: the Google Gemini API,
//! answered with one `GenerateContentResponse`, or with chunks of it: SSE (`data: <json>`
//! events separated by `\r\n\r\n`, no end marker) with `?alt=sse`, a JSON array without. Every
//! chunk carries `usageMetadata`, the last one the complete counts and `finishReason`. Errors
//! come as `{"error":{"code","message","status"}}`, in a stream as such a chunk.
//!
//! With `tools[].functionDeclarations` in the request and no `functionResponse` in the last
//! turn, the reply is a short text and a `functionCall` of the first declaration (Gemini's
//! `finishReason` stays `STOP`), its arguments made from the schema. With
//! `thinkingConfig.includeThoughts`, the reply starts with a thought and the first text of a
//! reply without calls carries a `thoughtSignature`. As Gemini 3, the first call of a reply is
//! always signed (a signature naming the call, so the mock can tell its own), and a request
//! whose history has a model turn whose first call lacks the signature issued for it (or
//! Google's documented `skip_thought_signature_validator`) is refused with 400. A user text
//! naming two or more of the declared functions gets a call of each (parallel calls).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::error::MockError;
use crate::messages::ToolUse;
use crate::params::Request;
use crate::routes::Exchange;
use crate::sse;
use crate::text::{word_count, FinishReason, Reply};

/// The signature the mock signs its first text with, when thinking.
pub(crate) const SIGNATURE: &str = "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ==";

/// What Google documents for history a Gemini model did not write: the check is skipped.
const FOREIGN_CALL_SIGNATURE: &str = "skip_thought_signature_validator";

/// The signature of the first call of a turn (`number`: the exchange), as Gemini 3 signs
/// every function call: base64 of `mock-sig:{name}:{number}:` and filler, so it has `+`, `/`
/// and padding like real ones.
fn call_signature(name: &str, number: u64) -> String {
    use base64::Engine as _;
    let raw = format!("mock-sig:{name}:{number}:\u{fb}\u{ff}\u{fe}?>");
    base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
}

/// Whether `signature` is one the mock issued for a call of `name`. Google's JSON parser takes
/// bytes in either base64 alphabet, padded or not (`google-genai` sends them back URL-safe).
fn issued_for(signature: &str, name: &str) -> bool {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let unpadded = signature.trim_end_matches('=');
    STANDARD
        .decode(signature)
        .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|s| s.starts_with(&format!("mock-sig:{name}:")))
}

/// The model and streaming flag of a Gemini path (`…/models/{model}:generateContent` or
/// `:streamGenerateContent`).
pub(crate) fn call(path: &str) -> Option<(&str, bool)> {
    let (prefix, last) = path.rsplit_once('/')?;
    if !prefix.ends_with("/models") {
        return None;
    }
    let (model, method) = last.split_once(':')?;
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    (!model.is_empty()).then_some((model, stream))
}

/// Gemini's (Google RPC) `status` for an HTTP status.
fn rpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// The wait a 429 asks for, as Google writes a protobuf `Duration` in JSON (decimal seconds).
pub(crate) const RETRY_DELAY: &str = "1.5s";

fn error_value(status: StatusCode, message: &str) -> Value {
    if status == StatusCode::TOO_MANY_REQUESTS {
        // As the Gemini API answers a quota 429: no `Retry-After` header; the wait is in the
        // body's details, as `google.rpc.RetryInfo`, beside the `QuotaFailure`.
        return json!({"error": {
            "code": 429,
            "message": format!("{message}\nPlease retry in {RETRY_DELAY}."),
            "status": rpc_status(status),
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": "mock-error-429"},
                    "quotaValue": "1"
                }]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": RETRY_DELAY}
            ]
        }});
    }
    json!({"error": {"code": status.as_u16(), "message": message, "status": rpc_status(status)}})
}

/// An error in Gemini's format.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(error_value(status, message))).into_response()
}

fn invalid(message: &str) -> MockError {
    MockError::InvalidParameter {
        param: "contents",
        message: message.to_owned(),
    }
}

/// The texts of a list of parts (function responses count by their JSON).
fn part_texts(parts: &Value) -> Vec<String> {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| match (p.get("text"), p.get("functionResponse")) {
            (Some(Value::String(t)), _) => Some(t.clone()),
            (_, Some(r)) => Some(r["response"].to_string()),
            _ => None,
        })
        .collect()
}

/// Answers one `generateContent` request; `sse`: the client asked for `alt=sse`.
pub(crate) fn respond(
    request: &Request,
    exchange: &Exchange<'_>,
    stream: bool,
    sse: bool,
) -> Result<Response, MockError> {
    let contents = match request.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => {
            return Err(invalid(
                "* GenerateContentRequest.contents: contents is not specified",
            ))
        }
    };
    let config = request.get("generationConfig").cloned().unwrap_or_default();
    let max_tokens = config["maxOutputTokens"].as_u64();
    // Google's proto-JSON parser takes snake_case too (`google-genai` 3.x sends it here).
    let thinking = ["includeThoughts", "include_thoughts"]
        .iter()
        .any(|k| config["thinkingConfig"][*k] == true);
    // As Gemini 3: the first call of every model turn must carry the signature issued with
    // it (or the documented bypass for calls another model made).
    for (i, turn) in contents
        .iter()
        .enumerate()
        .filter(|(_, c)| c["role"] == "model")
    {
        let first_call = turn["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p.get("functionCall").is_some());
        let Some(call) = first_call else { continue };
        let name = call["functionCall"]["name"].as_str().unwrap_or_default();
        match call.get("thoughtSignature").and_then(Value::as_str) {
            Some(s) if s == FOREIGN_CALL_SIGNATURE || issued_for(s, name) => {}
            Some(_) => {
                return Err(invalid(&format!(
                    "Corrupted thought signature in the functionCall part of contents[{i}]."
                )))
            }
            None => {
                return Err(invalid(&format!(
                "Function call `{name}` in the {i}. content block is missing a thought_signature."
            )))
            }
        }
    }
    let system_words: u64 = part_texts(
        &request
            .get("systemInstruction")
            .cloned()
            .unwrap_or_default()["parts"],
    )
    .iter()
    .map(|t| word_count(t))
    .sum();
    let input_tokens = (system_words
        + contents
            .iter()
            .flat_map(|c| part_texts(&c["parts"]))
            .map(|t| word_count(&t))
            .sum::<u64>())
    .max(1);
    let answering = contents.last().is_some_and(|c| {
        c["parts"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()))
    });
    let last_user = contents.iter().rev().find(|c| c["role"] != "model");
    let user_texts = last_user
        .map(|c| part_texts(&c["parts"]))
        .unwrap_or_default();
    let declarations: Vec<&Value> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t["functionDeclarations"].as_array())
        .flatten()
        .filter(|_| !answering)
        .collect();
    let calls = ToolUse::for_tools(declarations, &user_texts.join(" "), exchange.number);
    let reply = Reply::to(
        user_texts.iter().flat_map(|t| t.split_whitespace()),
        (!exchange.stream_error).then_some(max_tokens).flatten(),
    );
    let call = calls.first();
    let pieces: Vec<String> = match call {
        Some(c) => vec![format!("Calling {}.", c.name)],
        None => reply.pieces().collect(),
    };
    let thought_tokens = if thinking { 2 } else { 0 };
    let output_tokens = pieces.iter().map(|p| word_count(p)).sum::<u64>()
        + calls.iter().map(ToolUse::tokens).sum::<u64>();
    let finish = match (call, reply.finish_reason) {
        (None, FinishReason::Length) => "MAX_TOKENS",
        _ => "STOP",
    };
    let usage = json!({
        "promptTokenCount": input_tokens,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": input_tokens + output_tokens + thought_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input_tokens}],
    });
    let mut usage_done = usage.clone();
    if thinking {
        usage_done["thoughtsTokenCount"] = thought_tokens.into();
    }
    let chunk = |parts: Vec<Value>, finish: Option<&str>, usage: &Value| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = f.into();
        }
        json!({"candidates": [candidate], "usageMetadata": usage,
            "modelVersion": exchange.model, "responseId": format!("mock-resp-{}", exchange.number)})
    };
    let mut thought = thinking.then(|| json!({"text": "Mock thoughts.", "thought": true}));
    // Only the first call of the turn is signed, as Gemini signs parallel calls.
    let call_parts: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let mut p = json!({"functionCall": {"name": c.name, "args": c.input}});
            if n == 0 {
                p["thoughtSignature"] = call_signature(&c.name, exchange.number).into();
            }
            p
        })
        .collect();
    // Without a call, the first text carries the signature.
    let text_part = |piece: &str, first: bool| {
        let mut p = json!({"text": piece});
        if thinking && first && call.is_none() {
            p["thoughtSignature"] = SIGNATURE.into();
        }
        p
    };

    if !stream {
        if exchange.stream_error {
            return Err(MockError::GenerationFailed);
        }
        let mut parts: Vec<Value> = thought.into_iter().collect();
        parts.push(text_part(&pieces.concat(), true));
        parts.extend(call_parts);
        return Ok(Json(chunk(parts, Some(finish), &usage_done)).into_response());
    }
    let partial = json!({"promptTokenCount": input_tokens, "totalTokenCount": input_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input_tokens}]});
    let mut chunks: Vec<Value> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut parts: Vec<Value> = thought.take().into_iter().collect();
        parts.push(text_part(piece, i == 0));
        if exchange.stream_error && i == 2 {
            break;
        }
        chunks.push(chunk(parts, None, &partial));
    }
    let mut end = if exchange.stream_error {
        error_value(
            StatusCode::SERVICE_UNAVAILABLE,
            "The model is overloaded. Please try again later.",
        )
    } else {
        chunk(call_parts, Some(finish), &usage_done)
    };
    if !sse {
        chunks.push(end);
        let body = format!(
            "[{}]",
            chunks
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(",\r\n")
        );
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let mut events: Vec<Bytes> = chunks.iter().map(event).collect();
    events.push(event(&std::mem::take(&mut end)));
    let mut r = sse::response(events, exchange.chunk_delay);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    Ok(r)
}

/// One `data: <json>\r\n\r\n` event, framed as Gemini frames it.
fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\r\n\r\n"))
}
