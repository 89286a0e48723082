//! The response cache for OpenAI's Responses API (`POST /v1/responses`): the key over the
//! request with its conversation resolved (a `previous_response_id` expanded into the stored
//! items it names), and a cached `response` object read back into the hub's answer, so that a
//! hit is written anew with its own request's envelope (a fresh `resp_…` id and item ids,
//! `created_at`, the request's echoed members) whole or as a Responses event stream.

use serde_json::{Map, Value};
use sha2::Digest;
use tollgate_core::usage::UsageSource;

use super::{framed, hash_value, hasher, Key, IGNORED_MEMBERS};
use crate::responses::response::usage_from_value;
use crate::stream::{event_data, event_end};
use crate::translator::hub::{ChatResponse, Part, StopReason, ToolCall};

/// The endpoint label Responses requests are keyed under (never shared with chat).
pub const ENDPOINT: &str = "responses";

/// Responses members left out of the key besides [`IGNORED_MEMBERS`]: the conversation is
/// keyed resolved (`previous_response_id` and `input` become `conversation`), and
/// `safety_identifier` is `user` under another name.
const RESPONSES_IGNORED: &[&str] = &["previous_response_id", "input", "safety_identifier"];

/// The key of a Responses request: `body` (the client's request object) without the members
/// that do not change the answer, and `conversation`, the whole conversation the model is
/// asked to continue (stored history, then this request's input).
pub fn key(
    scope: &str,
    policy: &str,
    model: &str,
    body: &Map<String, Value>,
    conversation: &[Value],
) -> Key {
    let mut h = hasher(scope, policy, ENDPOINT, model);
    let mut members: Vec<(&str, &Value)> = body
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .filter(|(k, _)| !IGNORED_MEMBERS.contains(k) && !RESPONSES_IGNORED.contains(k))
        .collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    // Framed as `hash_value` frames an object, the conversation as a member of its own name
    // (no client member is called that: it starts with a NUL).
    h.update([b'{']);
    h.update(((members.len() + 1) as u64).to_le_bytes());
    framed(&mut h, b'k', b"\0conversation");
    h.update([b'[']);
    h.update((conversation.len() as u64).to_le_bytes());
    for item in conversation {
        hash_value(&mut h, item);
    }
    h.update([b']']);
    for (k, v) in members {
        framed(&mut h, b'k', k.as_bytes());
        hash_value(&mut h, v);
    }
    h.update([b'}']);
    h.finalize().into()
}

/// A `response` object read back into the hub's answer: `None` when it holds anything the
/// hub cannot carry (an item of a built-in tool such as `web_search_call`, a refusal), so
/// that such answers are never cached.
pub fn decode(body: &[u8]) -> Option<ChatResponse> {
    let v: Value = serde_json::from_slice(body).ok()?;
    decode_value(&v)
}

fn decode_value(v: &Value) -> Option<ChatResponse> {
    let o = v.as_object()?;
    let mut content = Vec::new();
    let mut calls = false;
    for item in o.get("output")?.as_array()? {
        match item.get("type").and_then(Value::as_str)? {
            "message" => {
                let mut text = String::new();
                for part in item.get("content")?.as_array()? {
                    match part.get("type").and_then(Value::as_str)? {
                        "output_text" => text.push_str(part.get("text")?.as_str()?),
                        _ => return None,
                    }
                }
                content.push(Part::Text(text));
            }
            "function_call" => {
                calls = true;
                content.push(Part::ToolCall(ToolCall {
                    id: item.get("call_id")?.as_str()?.to_owned(),
                    name: item.get("name")?.as_str()?.to_owned(),
                    arguments: item.get("arguments")?.as_str()?.to_owned(),
                }));
            }
            "reasoning" => {
                let text = item
                    .get("summary")
                    .and_then(Value::as_array)
                    .map(|parts| {
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join("\n\n")
                    })
                    .unwrap_or_default();
                let signature = item
                    .get("encrypted_content")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                // A provider's thinking written by Tollgate (`rs_tg_…`) without its signature
                // (the client did not ask `include: reasoning.encrypted_content`) could not be
                // carried back to that provider from a hit: such an answer is not cached.
                let hub_written = item.get("id").and_then(Value::as_str).is_some_and(|id| {
                    id.starts_with(crate::responses::request::HUB_REASONING_PREFIX)
                });
                if hub_written && signature.is_none() {
                    return None;
                }
                content.push(Part::Thinking { text, signature });
            }
            _ => return None,
        }
    }
    let status = o.get("status").and_then(Value::as_str)?;
    let reason = o
        .get("incomplete_details")
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str);
    let stop_reason = match (status, reason) {
        ("completed", _) if calls => Some(StopReason::ToolUse),
        ("completed", _) => Some(StopReason::EndTurn),
        ("incomplete", Some("max_output_tokens")) => Some(StopReason::MaxTokens),
        _ => None,
    };
    let mut usage = o
        .get("usage")
        .and_then(usage_from_value)
        .unwrap_or_default();
    usage.source = UsageSource::Provider;
    Some(ChatResponse {
        id: o
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        model: o
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        content,
        stop_reason,
        stop_sequence: None,
        usage,
    })
}

/// The final `response` object of a Responses event stream the client got (its
/// `response.completed` or `response.incomplete` event), when the hub can carry it and it
/// stopped normally.
pub fn final_of_stream(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut buf = bytes;
    let mut last = None;
    while let Some(len) = event_end(buf) {
        let event = &buf[..len];
        buf = &buf[len..];
        if memchr::memmem::find(event, b"\"response.completed\"").is_none()
            && memchr::memmem::find(event, b"\"response.incomplete\"").is_none()
        {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&event_data(event)) else {
            continue;
        };
        if matches!(
            v.get("type").and_then(Value::as_str),
            Some("response.completed" | "response.incomplete")
        ) {
            last = v.get("response").cloned();
        }
    }
    let response = last?;
    decode_value(&response).filter(super::replay::normal_stop)?;
    serde_json::to_vec(&response).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_key_is_over_the_resolved_conversation() {
        let conv = vec![json!({"role": "user", "content": "hi"})];
        let a = key(
            "t:a",
            "",
            "m",
            &body(json!({"model": "m", "input": "hi", "store": true, "user": "u"})),
            &conv,
        );
        // Another way of saying the same conversation (a previous response expanded).
        let b = key(
            "t:a",
            "",
            "m",
            &body(json!({"model": "m", "previous_response_id": "resp_1", "stream": true})),
            &conv,
        );
        assert_eq!(a, b);
        let longer = [
            conv.clone(),
            vec![json!({"role": "user", "content": "more"})],
        ]
        .concat();
        let c = key("t:a", "", "m", &body(json!({"model": "m"})), &longer);
        assert_ne!(a, c);
        let d = key(
            "t:a",
            "",
            "m",
            &body(json!({"model": "m", "temperature": 0})),
            &conv,
        );
        assert_ne!(a, d);
        assert_ne!(a, key("t:b", "", "m", &body(json!({"model": "m"})), &conv));
    }

    #[test]
    fn a_response_object_reads_back_into_the_hub() {
        let r = json!({"id": "resp_1", "object": "response", "status": "completed", "model": "m",
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
                {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                 "content": [{"type": "output_text", "text": "hello", "annotations": []}]},
                {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{}"}],
            "usage": {"input_tokens": 3, "output_tokens": 5}});
        let hub = decode(r.to_string().as_bytes()).unwrap();
        assert_eq!(hub.content.len(), 3);
        assert_eq!(hub.stop_reason, Some(StopReason::ToolUse));
        assert_eq!((hub.usage.input_tokens, hub.usage.output_tokens), (3, 5));
        // A built-in tool's item cannot be replayed: not cached.
        let web =
            json!({"status": "completed", "output": [{"type": "web_search_call", "id": "ws"}]});
        assert!(decode(web.to_string().as_bytes()).is_none());
        // Tollgate-written thinking without its signature could not go back to its provider:
        // not cached; with it, cached.
        let unsigned = json!({"status": "completed", "output": [
            {"type": "reasoning", "id": "rs_tg_1", "summary": [{"type": "summary_text", "text": "t"}]}]});
        assert!(decode(unsigned.to_string().as_bytes()).is_none());
        let signed = json!({"status": "completed", "output": [
            {"type": "reasoning", "id": "rs_tg_1", "encrypted_content": "sig", "summary": []}]});
        assert!(decode(signed.to_string().as_bytes()).is_some());
        // An incomplete answer for another reason than the token limit has no normal stop.
        let filtered = json!({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}, "output": []});
        assert_eq!(
            decode(filtered.to_string().as_bytes()).unwrap().stop_reason,
            None
        );
    }

    #[test]
    fn the_final_response_of_a_stream() {
        let done = json!({"type": "response.completed", "sequence_number": 3, "response": {
            "id": "resp_1", "status": "completed", "output": [
                {"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]}});
        let stream = format!(
            "event: response.created\ndata: {}\n\nevent: response.completed\ndata: {}\n\n",
            json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}),
            done
        );
        let got: Value =
            serde_json::from_slice(&final_of_stream(stream.as_bytes()).unwrap()).unwrap();
        assert_eq!(got["id"], "resp_1");
        assert!(final_of_stream(b"event: response.created\ndata: {}\n\n").is_none());
    }
}
