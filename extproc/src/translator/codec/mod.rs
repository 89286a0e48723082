//! Codecs between one dialect's wire format and the [`hub`](super::hub): requests, complete
//! responses, errors, and stream decoders/encoders that work one SSE event at a time.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;
pub mod openai;

use serde::de::DeserializeOwned;

use super::error::{invalid, TranslateError};
use super::hub::{ChatRequest, Message, Part, Role, Tool};
use super::json::RawObject;

/// A request's `messages` in the dialect's wire type `M`, and the hub request to fill.
pub(crate) fn start_request<M: DeserializeOwned>(
    obj: &RawObject<'_>,
    model: &str,
    stream: bool,
) -> Result<(Vec<M>, ChatRequest), TranslateError> {
    let wire: Vec<M> =
        member(obj, "messages")?.ok_or_else(|| invalid("messages", "it is required"))?;
    if wire.is_empty() {
        return Err(invalid("messages", "at least one message is required"));
    }
    let req = ChatRequest {
        model: model.to_owned(),
        stream,
        ..Default::default()
    };
    Ok((wire, req))
}

/// A top-level member deserialized from its raw slice (`None` when absent or `null`).
pub(crate) fn member<T: DeserializeOwned>(
    obj: &RawObject<'_>,
    key: &'static str,
) -> Result<Option<T>, TranslateError> {
    match obj.get(key) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| invalid(key, describe(&e))),
    }
}

/// A serde error as the client may read it: what was wrong, without our Rust type names
/// (`expected struct WireMessage`) or positions inside the member (not the body).
pub(crate) fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(head, _)| head);
    let mut out: Vec<&str> = Vec::new();
    for word in text.split(' ') {
        let ident = word.trim_end_matches([',', '.', ';']);
        if ident.starts_with("Wire") {
            while matches!(
                out.last(),
                Some(&("struct" | "enum" | "tagged" | "internally" | "untagged"))
            ) {
                out.pop();
            }
            out.push("the documented shape");
            continue;
        }
        out.push(word);
    }
    out.join(" ")
}

/// Serializes a JSON value we built ourselves (cannot fail for `serde_json::Value`).
pub(crate) fn to_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A tool definition as both APIs spell it: `name`, optional `description`, and the JSON
/// Schema under `schema_key` (`parameters` for OpenAI, `input_schema` for Anthropic).
pub(crate) fn tool_object(
    t: &Tool,
    schema_key: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let mut v = serde_json::Map::new();
    v.insert("name".into(), t.name.clone().into());
    if let Some(d) = &t.description {
        v.insert("description".into(), d.clone().into());
    }
    v.insert(schema_key.into(), t.parameters.clone());
    v
}

/// The sampling members both APIs share, with the stop sequences under `stop_key` (`stop` for
/// OpenAI, `stop_sequences` for Anthropic).
pub(crate) fn insert_sampling(
    body: &mut serde_json::Map<String, serde_json::Value>,
    req: &ChatRequest,
    stop_key: &str,
) {
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(t) = req.top_p {
        body.insert("top_p".into(), t.into());
    }
    if !req.stop.is_empty() {
        body.insert(stop_key.into(), req.stop.clone().into());
    }
}

/// The conversation as `{"role","content":[blocks]}` turns, each part written by `block`
/// (`None`: left out): consecutive turns of one role merged (OpenAI sends one message per tool
/// result), turns left without blocks dropped.
pub(crate) fn merged_turns(
    messages: &[Message],
    mut block: impl FnMut(&Part) -> Result<Option<serde_json::Value>, TranslateError>,
) -> Result<Vec<serde_json::Value>, TranslateError> {
    let mut turns: Vec<(Role, Vec<serde_json::Value>)> = Vec::with_capacity(messages.len());
    for m in messages {
        let mut blocks = Vec::with_capacity(m.content.len());
        for p in &m.content {
            blocks.extend(block(p)?);
        }
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((role, existing)) if *role == m.role => existing.extend(blocks),
            _ => turns.push((m.role, blocks)),
        }
    }
    Ok(turns
        .into_iter()
        .map(|(role, content)| {
            let role = match role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            serde_json::json!({"role": role, "content": content})
        })
        .collect())
}
