//! OpenAI's Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`).
//!
//! OpenAI and Azure targets get the Responses body itself (the model rewritten, a stored
//! conversation expanded into `input`); every other provider is reached through the chat hub:
//! the request becomes a Chat Completions body ([`request`]) that the gateway's usual steps
//! read (guardrails, estimates, budgets, translation), and the provider's answer comes back
//! as a Responses object or event stream ([`response`]). Served responses are kept in a
//! bounded store ([`store`]) scoped by tenant, for `previous_response_id` and the `GET` and
//! `DELETE` calls.

pub mod cap;
pub mod request;
pub mod response;
pub mod store;

use serde_json::Value;

use crate::stream::{event_data, event_end};

/// The most bytes a [`Tap`] holds back waiting for the end of one event.
const TAP_MAX_CARRY: usize = 16 * 1024 * 1024;

/// Reads the Responses stream the client gets for its final response object
/// (`response.completed` or `response.incomplete`), to store it and read its usage; with
/// [`Tap::patching`], also writes the client's `previous_response_id` back into the lifecycle
/// events of a provider that was sent the expanded conversation instead.
#[derive(Debug, Default)]
pub struct Tap {
    carry: Vec<u8>,
    /// The final response object, once seen.
    pub done: Option<Value>,
    overflowed: bool,
    /// The `previous_response_id` to write into lifecycle events' `response`.
    previous: Option<String>,
}

/// Whether an event's type is one whose data carries the whole `response`.
fn lifecycle(t: &str) -> bool {
    matches!(
        t,
        "response.created"
            | "response.in_progress"
            | "response.completed"
            | "response.incomplete"
            | "response.failed"
            | "response.queued"
    )
}

impl Tap {
    /// A tap that also writes `previous_response_id` into the lifecycle events.
    pub fn patching(previous: String) -> Self {
        Self {
            previous: Some(previous),
            ..Default::default()
        }
    }

    /// Reads the client's bytes of one chunk; `Some`: the bytes to send instead (a patching
    /// tap holds an incomplete event back until it ends, or until `end`).
    pub fn push(&mut self, bytes: &[u8], end: bool) -> Option<Vec<u8>> {
        let patching = self.previous.is_some();
        if !patching && (self.done.is_some() || self.overflowed) {
            return None;
        }
        self.carry.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(len) = event_end(&self.carry[pos..]) {
            let event = &self.carry[pos..pos + len];
            pos += len;
            let interesting = memchr::memmem::find(event, b"\"response\"").is_some();
            let parsed = if interesting {
                serde_json::from_slice::<Value>(&event_data(event)).ok()
            } else {
                None
            };
            let Some(mut v) = parsed else {
                out.extend_from_slice(event);
                continue;
            };
            let kind = v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut patched = false;
            if let (Some(prev), true) = (&self.previous, lifecycle(&kind)) {
                if let Some(r) = v.get_mut("response").and_then(Value::as_object_mut) {
                    r.insert("previous_response_id".into(), Value::String(prev.clone()));
                    patched = true;
                }
            }
            if matches!(kind.as_str(), "response.completed" | "response.incomplete")
                && self.done.is_none()
            {
                self.done = v.get("response").cloned();
            }
            if patched {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(kind.as_bytes());
                out.extend_from_slice(b"\ndata: ");
                out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                out.extend_from_slice(b"\n\n");
            } else {
                out.extend_from_slice(event);
            }
        }
        self.carry.drain(..pos);
        if !patching {
            // Nothing was changed: the client's bytes go on as they are.
            if end {
                self.carry.clear();
            } else if self.carry.len() > TAP_MAX_CARRY {
                tracing::warn!(
                    "A Responses stream event exceeded 16 MiB: its response is not stored"
                );
                self.overflowed = true;
                self.carry = Vec::new();
            }
            return None;
        }
        if end || self.carry.len() > TAP_MAX_CARRY {
            if !end {
                tracing::warn!(
                    "A Responses stream event exceeded 16 MiB: it went through unpatched"
                );
            }
            out.append(&mut self.carry);
        }
        Some(out)
    }
}

/// The scope a key's stored responses live in: its tenant, or the key itself without one.
pub fn scope(tenant: &str, key_id: &str) -> String {
    if tenant.is_empty() {
        format!("key:{key_id}")
    } else {
        format!("tenant:{tenant}")
    }
}

/// An error body in OpenAI's shape (the Responses API's).
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"error": {
        "message": message, "type": kind, "param": param, "code": code,
    }}))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_finds_the_final_response_across_chunks() {
        let stream = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":2}}}\n\n";
        for split in [1, 10, 60, stream.len() - 1] {
            let mut tap = Tap::default();
            assert!(tap.push(&stream[..split], false).is_none());
            assert!(tap.push(&stream[split..], true).is_none());
            assert_eq!(tap.done.as_ref().unwrap()["usage"]["input_tokens"], 2);
            let mut tap = Tap::patching("resp_prev".into());
            let mut out = tap.push(&stream[..split], false).unwrap();
            out.extend(tap.push(&stream[split..], true).unwrap());
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text.matches("\"previous_response_id\":\"resp_prev\"")
                    .count(),
                2
            );
            assert_eq!(
                tap.done.as_ref().unwrap()["previous_response_id"],
                "resp_prev"
            );
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(scope("acme", "k"), "tenant:acme");
        assert_eq!(scope("", "k"), "key:k");
    }
}
