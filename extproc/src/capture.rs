//! Payload capture for the log event (`keys[].capture` / `tenants.NAME.capture`): with
//! `metadata`, sizes, content types and message, tool and tool-call counts; with `full`, the
//! request and response bodies as the client sent and got them (streams: the assembled text,
//! reasoning and tool-call arguments included), every JSON string redacted by a fixed PII and
//! secrets policy (emails, phone numbers, payment cards, IBANs, US SSNs, provider keys and
//! tokens), a body holding a private key withheld whole, each body cut at
//! `logging.capture_max_bytes` with a marker. Headers are never captured, so neither the
//! client's key nor the provider's credential can be.
//!
//! Only keys with capture on pay for it: bodies are parsed here a second time, once, at the end
//! of each direction; a stream's text is gathered as it passes, bounded.

use std::sync::LazyLock;

use serde_json::Value;
use tollgate_core::config::Capture as Mode;
use tollgate_guardrails::{Action, Detector, Engine, RuleSpec};
use tollgate_proto::logger::v1 as pb;

/// The fixed redaction policy of captured bodies, compiled once per process.
static REDACTOR: LazyLock<Option<Engine>> = LazyLock::new(|| {
    let redact = |id: &str, detector| RuleSpec {
        id: id.to_owned(),
        detector,
        action: Action::Redact,
    };
    let rules = [
        redact("secret", Detector::Secrets),
        redact("email", Detector::Email),
        redact("credit_card", Detector::CreditCard),
        redact("iban", Detector::Iban),
        redact("us_ssn", Detector::UsSsn),
        redact("phone", Detector::Phone),
        RuleSpec {
            id: PRIVATE_KEY.to_owned(),
            detector: Detector::PrivateKey,
            action: Action::Flag,
        },
    ];
    match Engine::new(&rules) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!(error = %e, "Cannot build the capture redactor: bodies will not be captured");
            None
        }
    }
});

const PRIVATE_KEY: &str = "private_key";

/// What replaces a body that holds a private key.
pub const WITHHELD: &str = "[WITHHELD by Tollgate: the body holds a private key]";

/// Redacts every string inside `value` (object keys stay); whether a private key was seen.
fn redact_value(engine: &Engine, value: &mut Value) -> bool {
    match value {
        Value::String(s) => redact_string(engine, s),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |seen, v| redact_value(engine, v) | seen),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |seen, v| redact_value(engine, v) | seen),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Redacts `s` in place; whether a private key was seen.
fn redact_string(engine: &Engine, s: &mut String) -> bool {
    let outcome = engine.check(s);
    if let Some(text) = outcome.redacted_text {
        *s = text;
    }
    outcome.verdict.flagged.iter().any(|r| r == PRIVATE_KEY)
}

/// `text` cut at `max` bytes (a character boundary) with a marker when it, plus `dropped`
/// bytes already left out, is longer.
pub fn cap(mut text: String, max: usize, dropped: usize) -> String {
    let total = text.len() + dropped;
    if total <= max {
        return text;
    }
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(&format!(
        "…[truncated by Tollgate: kept {cut} of {total} bytes]"
    ));
    text
}

/// A body redacted and capped: JSON has its strings redacted (and stays JSON until the cap),
/// anything else is redacted as text.
pub fn redact_body(body: &[u8], max: usize) -> String {
    let Some(engine) = REDACTOR.as_ref() else {
        return WITHHELD.to_owned();
    };
    let (text, private) = match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            let private = redact_value(engine, &mut v);
            (v.to_string(), private)
        }
        Err(_) => {
            let mut s = String::from_utf8_lossy(body).into_owned();
            let private = redact_string(engine, &mut s);
            (s, private)
        }
    };
    if private {
        return WITHHELD.to_owned();
    }
    cap(text, max, 0)
}

fn len_of(v: Option<&Value>) -> u32 {
    match v {
        Some(Value::Array(a)) => u32::try_from(a.len()).unwrap_or(u32::MAX),
        Some(Value::Null) | None => 0,
        Some(_) => 1,
    }
}

/// Tool calls in a complete response, OpenAI or Anthropic.
fn tool_calls(v: &Value) -> u32 {
    let openai: usize = v["choices"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["message"]["tool_calls"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0);
    let anthropic = v["content"].as_array().map_or(0, |bs| {
        bs.iter().filter(|b| b["type"] == "tool_use").count()
    });
    u32::try_from(openai + anthropic).unwrap_or(u32::MAX)
}

/// The text a stream event adds, and whether it starts a tool call. OpenAI chunks: every
/// choice's `delta.content`, reasoning, tool-call arguments, or legacy `text`; Anthropic:
/// `content_block_delta` text, thinking or `partial_json`.
fn stream_pieces(v: &Value, out: &mut Vec<String>) -> u32 {
    let mut calls = 0;
    if let Some(choices) = v["choices"].as_array() {
        for c in choices {
            let d = &c["delta"];
            for key in ["reasoning_content", "reasoning", "content"] {
                if let Some(s) = d[key].as_str() {
                    out.push(s.to_owned());
                }
            }
            if let Some(s) = c["text"].as_str() {
                out.push(s.to_owned());
            }
            for t in d["tool_calls"].as_array().into_iter().flatten() {
                if t["id"].is_string() {
                    calls += 1;
                }
                if let Some(s) = t["function"]["arguments"].as_str() {
                    out.push(s.to_owned());
                }
            }
        }
        return calls;
    }
    match v["type"].as_str() {
        Some("content_block_start") if v["content_block"]["type"] == "tool_use" => 1,
        Some("content_block_delta") => {
            let d = &v["delta"];
            for key in ["text", "thinking", "partial_json"] {
                if let Some(s) = d[key].as_str() {
                    out.push(s.to_owned());
                }
            }
            0
        }
        _ => 0,
    }
}

/// One request's capture.
#[derive(Debug)]
pub struct Capture {
    mode: Mode,
    max: usize,
    payload: pb::Payload,
    /// A stream's text so far (at most `2 * max` bytes, before redaction).
    text: String,
    /// Bytes of stream text left out.
    dropped: usize,
}

impl Capture {
    /// A capture in `mode` keeping at most `max` bytes of each body; `None` when off.
    pub fn new(mode: Mode, max: usize) -> Option<Capture> {
        let label = match mode {
            Mode::Off => return None,
            Mode::Metadata | Mode::Full => mode.label(),
        };
        Some(Capture {
            mode,
            max,
            payload: pb::Payload {
                mode: label.to_owned(),
                ..Default::default()
            },
            text: String::new(),
            dropped: 0,
        })
    }

    /// Records the request body the client sent (after any guardrail redaction).
    pub fn request(&mut self, content_type: &str, body: &[u8]) {
        let p = &mut self.payload;
        p.request_bytes = body.len() as u64;
        p.request_content_type = content_type.to_owned();
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            p.message_count =
                len_of(v.get("messages")) + len_of(v.get("prompt")) + len_of(v.get("input"));
            p.tool_count = len_of(v.get("tools"));
        }
        if self.mode == Mode::Full {
            p.request_body = redact_body(body, self.max);
        }
    }

    /// Records the response's content type.
    pub fn response_headers(&mut self, content_type: &str) {
        self.payload.response_content_type = content_type.to_owned();
    }

    /// Records a complete (buffered) response body as the client gets it.
    pub fn response_body(&mut self, body: &[u8]) {
        self.payload.response_bytes += body.len() as u64;
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            self.payload.tool_call_count += tool_calls(&v);
        }
        if self.mode == Mode::Full {
            self.payload.response_body = redact_body(body, self.max);
        }
    }

    /// Counts bytes of a stream as the client gets them.
    pub fn response_bytes(&mut self, n: usize) {
        self.payload.response_bytes += n as u64;
    }

    /// Records one event of a stream as the client gets it (its data, parsed).
    pub fn response_event(&mut self, v: &Value) {
        let mut pieces = Vec::new();
        self.payload.tool_call_count += stream_pieces(v, &mut pieces);
        if self.mode != Mode::Full {
            return;
        }
        let room = 2 * self.max;
        for piece in pieces {
            if self.dropped > 0 || self.text.len() + piece.len() > room {
                let mut cut = room.saturating_sub(self.text.len()).min(piece.len());
                while !piece.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.text.push_str(&piece[..cut]);
                self.dropped += piece.len() - cut;
            } else {
                self.text.push_str(&piece);
            }
        }
    }

    /// The payload for the log event.
    pub fn finish(mut self) -> pb::Payload {
        if self.mode == Mode::Full && (!self.text.is_empty() || self.dropped > 0) {
            let Some(engine) = REDACTOR.as_ref() else {
                self.payload.response_body = WITHHELD.to_owned();
                return self.payload;
            };
            let mut text = std::mem::take(&mut self.text);
            let mut dropped = self.dropped;
            if dropped > 0 {
                // A match cut by the bound could no longer be recognised: drop the tail
                // where one could start.
                let mut keep = text.len().saturating_sub(engine.max_hold());
                while !text.is_char_boundary(keep) {
                    keep -= 1;
                }
                dropped += text.len() - keep;
                text.truncate(keep);
            }
            self.payload.response_body = if redact_string(engine, &mut text) {
                WITHHELD.to_owned()
            } else {
                cap(text, self.max, dropped)
            };
        }
        self.payload
    }
}

#[cfg(test)]
mod tests;
