//! OpenAI's Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`).
//!
//! OpenAI and Azure targets get the Responses body itself (the model rewritten, a stored
//! conversation expanded into `input`); every other provider is reached through the chat hub:
//! the request becomes a Chat Completions body ([`request`]) that the gateway's usual steps
//! read (guardrails, estimates, budgets, translation), and the provider's answer comes back
//! as a Responses object or event stream ([`response`]). Served responses are kept in a
//! bounded store ([`store`]) scoped by tenant, for `previous_response_id` and the `GET` and
//! `DELETE` calls.

pub mod request;
pub mod response;
pub mod store;

use serde_json::Value;

use crate::stream::{event_data, event_end};

/// The most bytes a [`Tap`] holds back waiting for the end of one event.
const TAP_MAX_CARRY: usize = 16 * 1024 * 1024;

/// Reads the Responses stream the client gets for its final response object
/// (`response.completed` or `response.incomplete`), to store it and read its usage.
#[derive(Debug, Default)]
pub struct Tap {
    carry: Vec<u8>,
    /// The final response object, once seen.
    pub done: Option<Value>,
    overflowed: bool,
}

impl Tap {
    /// Reads the client's bytes of one chunk.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.done.is_some() || self.overflowed {
            return;
        }
        self.carry.extend_from_slice(bytes);
        let mut pos = 0;
        while let Some(len) = event_end(&self.carry[pos..]) {
            let event = &self.carry[pos..pos + len];
            pos += len;
            if memchr::memmem::find(event, b"response.completed").is_none()
                && memchr::memmem::find(event, b"response.incomplete").is_none()
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
                self.done = v.get("response").cloned();
                break;
            }
        }
        self.carry.drain(..pos);
        if self.carry.len() > TAP_MAX_CARRY {
            tracing::warn!("A Responses stream event exceeded 16 MiB: its response is not stored");
            self.overflowed = true;
            self.carry = Vec::new();
        }
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
            tap.push(&stream[..split]);
            tap.push(&stream[split..]);
            assert_eq!(tap.done.as_ref().unwrap()["usage"]["input_tokens"], 2);
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(scope("acme", "k"), "tenant:acme");
        assert_eq!(scope("", "k"), "key:k");
    }
}
