//! The providers' token-counting APIs, each in its own request and answer shape: Anthropic's
//! `POST …/messages/count_tokens` (`{"input_tokens": n}`), Vertex AI's
//! `…/publishers/anthropic/models/count-tokens:rawPredict` (a Messages body naming `model`,
//! same answer) and `…/publishers/google/models/{m}:countTokens` (`{contents, …}` →
//! `{"totalTokens": n, "totalBillableCharacters": c}`), Gemini's `…/models/{m}:countTokens`
//! (`{contents}` or `{generateContentRequest: {model, contents, …}}` → `{"totalTokens": n}`)
//! and Bedrock's `CountTokens`, `POST …/model/{id}/count-tokens` (SigV4,
//! `{"input": {"converse": {messages, system, toolConfig, additionalModelRequestFields}}}` →
//! `{"inputTokens": n}`, Anthropic models only).
//!
//! The count is the mock's own: one token per whitespace-separated word of every text in the
//! prompt (`text` members, string `content` and `system`), plus [`COUNT_OVERHEAD`], the same
//! in every dialect, and deliberately unlike the gateway's own estimate (bytes / 3 plus
//! per-message overhead), so a test can tell an answer from the provider from an estimate.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::error::MockError;
use crate::{gemini, messages, text};

/// Tokens every count adds (a provider's framing of the prompt).
pub const COUNT_OVERHEAD: u64 = 1000;

/// The mock's count of a prompt in any dialect: the words of every text in `value`, plus
/// [`COUNT_OVERHEAD`].
pub fn prompt_tokens(value: &Value) -> u64 {
    words(value, None) + COUNT_OVERHEAD
}

fn words(value: &Value, key: Option<&str>) -> u64 {
    match value {
        Value::String(s) if matches!(key, Some("text" | "content" | "system")) => {
            text::word_count(s)
        }
        Value::String(_) | Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::Array(items) => items.iter().map(|v| words(v, key)).sum(),
        Value::Object(m) => m.iter().map(|(k, v)| words(v, Some(k))).sum(),
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, MockError> {
    match serde_json::from_slice(body).map_err(|_| MockError::InvalidJson)? {
        Value::Object(m) => Ok(m),
        _ => Err(MockError::BodyNotObject),
    }
}

/// Members a Messages count body may hold (Anthropic refuses others, `max_tokens` included).
const ANTHROPIC_MEMBERS: [&str; 8] = [
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "anthropic_version",
];

/// Anthropic's `…/messages/count_tokens` and Vertex AI's `count-tokens:rawPredict`: the answer,
/// or an error in Anthropic's shape.
pub(crate) fn anthropic(body: &[u8]) -> Response {
    let invalid = |m: &str| messages::error_response(StatusCode::BAD_REQUEST, m);
    let request = match object(body) {
        Ok(r) => r,
        Err(e) => return messages::error_response(e.status(), &e.to_string()),
    };
    if let Some(extra) = request
        .keys()
        .find(|k| !ANTHROPIC_MEMBERS.contains(&k.as_str()))
    {
        return invalid(&format!("{extra}: Extra inputs are not permitted"));
    }
    let named = request.get("model").and_then(Value::as_str);
    if named.is_none_or(str::is_empty) {
        return invalid("model: Field required");
    }
    let Some(Value::Array(msgs)) = request.get("messages") else {
        return invalid("messages: Field required");
    };
    if msgs.is_empty() {
        return invalid("messages: at least one message is required");
    }
    Json(json!({ "input_tokens": prompt_tokens(&Value::Object(request)) })).into_response()
}

/// Gemini's `…/models/{model}:countTokens` (`vertex`: Vertex AI's), or an error in Google's
/// shape.
pub(crate) fn gemini(body: &[u8], model: &str, vertex: bool) -> Response {
    let invalid = |m: &str| gemini::error_response(StatusCode::BAD_REQUEST, m);
    let request = match object(body) {
        Ok(r) => r,
        Err(e) => return gemini::error_response(e.status(), &e.to_string()),
    };
    let counted = match (
        request.get("contents"),
        request.get("generateContentRequest"),
    ) {
        (Some(Value::Array(_)), None) => Value::Object(request.clone()),
        (None, Some(Value::Object(inner))) if !vertex => {
            let named = inner.get("model").and_then(Value::as_str);
            if named != Some(format!("models/{model}").as_str()) {
                return invalid(
                    "generateContentRequest.model must be `models/{model}` of the path",
                );
            }
            if !matches!(inner.get("contents"), Some(Value::Array(_))) {
                return invalid("generateContentRequest.contents is required");
            }
            Value::Object(inner.clone())
        }
        _ => return invalid("Either `contents` or `generateContentRequest` must be set."),
    };
    let tokens = prompt_tokens(&counted);
    if vertex {
        let chars: usize = count_chars(&counted);
        Json(json!({ "totalTokens": tokens, "totalBillableCharacters": chars })).into_response()
    } else {
        Json(json!({ "totalTokens": tokens })).into_response()
    }
}

fn count_chars(value: &Value) -> usize {
    match value {
        Value::String(s) => s.chars().filter(|c| !c.is_whitespace()).count(),
        Value::Array(items) => items.iter().map(count_chars).sum(),
        Value::Object(m) => m.values().map(count_chars).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// Members of Bedrock's `ConverseTokensRequest`.
const CONVERSE_MEMBERS: [&str; 4] = [
    "messages",
    "system",
    "toolConfig",
    "additionalModelRequestFields",
];

/// The model id of a Bedrock `CountTokens` path (`…/model/{id}/count-tokens`), decoded.
pub(crate) fn bedrock_path(path: &str) -> Option<String> {
    let prefix = path.strip_suffix("/count-tokens")?;
    let (_, id) = prefix.rsplit_once("/model/")?;
    (!id.is_empty() && !id.contains('/')).then(|| crate::bedrock::percent_decode(id))
}

/// Bedrock's `CountTokens` (the signature already verified), or a `ValidationException`.
pub(crate) fn bedrock(body: &[u8], model: &str) -> Response {
    let invalid = |m: &str| {
        crate::bedrock::BedrockError::from_mock(&MockError::InvalidParameter {
            param: "input",
            message: m.to_owned(),
        })
        .into_response()
    };
    if !model.starts_with("anthropic.") {
        return invalid("The provided model doesn't support counting tokens.");
    }
    let request = match object(body) {
        Ok(r) => r,
        Err(e) => return crate::bedrock::BedrockError::from_mock(&e).into_response(),
    };
    if request.keys().any(|k| k != "input") {
        return invalid("Only `input` is allowed at the top level.");
    }
    let Some(Value::Object(input)) = request.get("input") else {
        return invalid("`input` is required.");
    };
    let converse = match (input.get("converse"), input.get("invokeModel"), input.len()) {
        (Some(Value::Object(c)), None, 1) => c,
        _ => return invalid("`input` must hold exactly one of `converse` or `invokeModel`."),
    };
    if let Some(extra) = converse
        .keys()
        .find(|k| !CONVERSE_MEMBERS.contains(&k.as_str()))
    {
        return invalid(&format!(
            "`{extra}` is not a member of ConverseTokensRequest."
        ));
    }
    if !matches!(converse.get("messages"), Some(Value::Array(m)) if !m.is_empty()) {
        return invalid("`input.converse.messages` is required.");
    }
    let tokens = prompt_tokens(&Value::Object(converse.clone()));
    Json(json!({ "inputTokens": tokens })).into_response()
}
