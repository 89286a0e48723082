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

/// A piece of a tool call a stream event carries, in the client's dialect.
#[derive(Debug, PartialEq)]
enum CallPiece {
    /// A call starts (or its name arrives): the call's key within the stream, its name.
    Start(u64, String),
    /// Argument text of the call with this key.
    Arguments(u64, String),
    /// A whole call in one event (Gemini's `functionCall`): its name and arguments.
    Whole(String, String),
}

/// Keys of an OpenAI chat stream's tool calls: the choice in the high bits, the call's
/// `index` in the low ones.
fn openai_call_key(choice: u64, index: u64) -> u64 {
    (choice << 32) | (index & 0xFFFF_FFFF)
}

/// The text a stream event adds, the tool-call pieces it carries, and how many tool calls it
/// starts. OpenAI chunks: every choice's `delta.content`, reasoning, tool-call names and
/// arguments, or legacy `text`; Anthropic: `content_block_delta` text, thinking or
/// `partial_json`, `tool_use` block starts; Gemini: candidate text parts and `functionCall`s;
/// the Responses API: `response.output_text.delta`, `function_call` items and their
/// `response.function_call_arguments.delta`.
fn stream_pieces(v: &Value, out: &mut Vec<String>, calls_out: &mut Vec<CallPiece>) -> u32 {
    let mut calls = 0;
    if let Some(choices) = v["choices"].as_array() {
        for (pos, c) in choices.iter().enumerate() {
            let d = &c["delta"];
            for key in ["reasoning_content", "reasoning", "content"] {
                if let Some(s) = d[key].as_str() {
                    out.push(s.to_owned());
                }
            }
            if let Some(s) = c["text"].as_str() {
                out.push(s.to_owned());
            }
            let choice = c["index"].as_u64().unwrap_or(pos as u64);
            for (i, t) in d["tool_calls"].as_array().into_iter().flatten().enumerate() {
                if t["id"].is_string() {
                    calls += 1;
                }
                let key = openai_call_key(choice, t["index"].as_u64().unwrap_or(i as u64));
                if let Some(name) = t["function"]["name"].as_str() {
                    calls_out.push(CallPiece::Start(key, name.to_owned()));
                }
                if let Some(s) = t["function"]["arguments"].as_str() {
                    out.push(s.to_owned());
                    calls_out.push(CallPiece::Arguments(key, s.to_owned()));
                }
            }
        }
        return calls;
    }
    if let Some(candidates) = v["candidates"].as_array() {
        for cand in candidates {
            for part in cand["content"]["parts"].as_array().into_iter().flatten() {
                if let Some(s) = part["text"].as_str() {
                    out.push(s.to_owned());
                }
                if let Some(f) = part.get("functionCall") {
                    calls += 1;
                    let args = f
                        .get("args")
                        .map_or_else(|| "{}".to_owned(), Value::to_string);
                    out.push(args.clone());
                    calls_out.push(CallPiece::Whole(
                        f["name"].as_str().unwrap_or_default().to_owned(),
                        args,
                    ));
                }
            }
        }
        return calls;
    }
    let index = v["index"].as_u64().unwrap_or(0);
    match v["type"].as_str() {
        Some("content_block_start") if v["content_block"]["type"] == "tool_use" => {
            let name = v["content_block"]["name"].as_str().unwrap_or_default();
            calls_out.push(CallPiece::Start(index, name.to_owned()));
            1
        }
        Some("content_block_delta") => {
            let d = &v["delta"];
            for key in ["text", "thinking", "partial_json"] {
                if let Some(s) = d[key].as_str() {
                    out.push(s.to_owned());
                    if key == "partial_json" {
                        calls_out.push(CallPiece::Arguments(index, s.to_owned()));
                    }
                }
            }
            0
        }
        // The Responses API's events.
        Some("response.output_text.delta") => {
            if let Some(s) = v["delta"].as_str() {
                out.push(s.to_owned());
            }
            0
        }
        Some("response.output_item.added") if v["item"]["type"] == "function_call" => {
            let key = v["output_index"].as_u64().unwrap_or(0);
            let name = v["item"]["name"].as_str().unwrap_or_default();
            calls_out.push(CallPiece::Start(key, name.to_owned()));
            1
        }
        Some("response.function_call_arguments.delta") => {
            if let Some(s) = v["delta"].as_str() {
                let key = v["output_index"].as_u64().unwrap_or(0);
                out.push(s.to_owned());
                calls_out.push(CallPiece::Arguments(key, s.to_owned()));
            }
            0
        }
        _ => 0,
    }
}

/// The most tool calls a stream's capture assembles (more are counted, not kept).
pub const MAX_STREAM_TOOL_CALLS: usize = 64;

/// One tool call of a stream, as assembled so far.
#[derive(Debug)]
struct StreamCall {
    key: u64,
    name: String,
    arguments: String,
}

/// Redacts a tool call's arguments as capture redacts bodies: a JSON text has its strings
/// redacted (and stays JSON), anything else is redacted as text; `None` when they hold a
/// private key.
fn redact_arguments(engine: &Engine, args: &str) -> Option<String> {
    match serde_json::from_str::<Value>(args) {
        Ok(mut v) => (!redact_value(engine, &mut v)).then(|| v.to_string()),
        Err(_) => {
            let mut s = args.to_owned();
            (!redact_string(engine, &mut s)).then_some(s)
        }
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
    /// A stream's tool calls so far (`full`; at most [`MAX_STREAM_TOOL_CALLS`], their
    /// arguments within `2 * max` bytes in all).
    calls: Vec<StreamCall>,
    /// Bytes of tool-call arguments kept so far.
    call_bytes: usize,
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
            calls: Vec::new(),
            call_bytes: 0,
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

    /// Records a `multipart/form-data` request: its real size and content type, and (with
    /// `full`) `summary` in place of the body: its text fields as they came, each file part a
    /// placeholder naming its file name, content type and size (never its bytes).
    pub fn request_form(&mut self, content_type: &str, bytes: usize, summary: &[u8]) {
        let p = &mut self.payload;
        p.request_bytes = bytes as u64;
        p.request_content_type = content_type.to_owned();
        if self.mode == Mode::Full {
            p.request_body = redact_body(summary, self.max);
        }
    }

    /// Records a complete response the client got as `bytes` bytes, captured as `summary`
    /// (the body with its binary members, such as images' `b64_json`, replaced by
    /// placeholders).
    pub fn response_summary(&mut self, bytes: usize, summary: &[u8]) {
        self.payload.response_bytes += bytes as u64;
        if self.mode == Mode::Full {
            self.payload.response_body = redact_body(summary, self.max);
        }
    }

    /// Records one chunk of a response passed through untouched (a passthrough answer): its
    /// bytes, and with `full` its text as it came (bounded like a stream's text; redacted when
    /// the capture finishes).
    pub fn response_chunk(&mut self, chunk: &[u8]) {
        self.payload.response_bytes += chunk.len() as u64;
        if self.mode == Mode::Full {
            let piece = String::from_utf8_lossy(chunk);
            self.keep_text(&piece);
        }
    }

    /// Keeps `piece` of a response's text within `2 * max` bytes, counting what is left out.
    fn keep_text(&mut self, piece: &str) {
        let room = 2 * self.max;
        if self.dropped > 0 || self.text.len() + piece.len() > room {
            let mut cut = room.saturating_sub(self.text.len()).min(piece.len());
            while !piece.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&piece[..cut]);
            self.dropped += piece.len() - cut;
        } else {
            self.text.push_str(piece);
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
        let mut calls = Vec::new();
        self.payload.tool_call_count += stream_pieces(v, &mut pieces, &mut calls);
        if self.mode != Mode::Full {
            return;
        }
        for piece in pieces {
            self.keep_text(&piece);
        }
        for c in calls {
            self.keep_call(c);
        }
    }

    /// Adds a piece of a stream's tool call to the calls assembled so far (bounded).
    fn keep_call(&mut self, piece: CallPiece) {
        let room = 2 * self.max;
        let (key, name, args) = match piece {
            CallPiece::Start(key, name) => (Some(key), Some(name), String::new()),
            CallPiece::Arguments(key, args) => (Some(key), None, args),
            CallPiece::Whole(name, args) => (None, Some(name), args),
        };
        let open = key.and_then(|k| self.calls.iter().rposition(|c| c.key == k));
        let at = match (open, &name) {
            // A name for a call that has one is a new call under the same key.
            (Some(i), Some(_)) if self.calls.get(i).is_some_and(|c| !c.name.is_empty()) => None,
            (Some(i), _) => Some(i),
            (None, _) => None,
        };
        let at = match at {
            Some(i) => i,
            None if self.calls.len() < MAX_STREAM_TOOL_CALLS => {
                self.calls.push(StreamCall {
                    key: key.unwrap_or(u64::MAX),
                    name: String::new(),
                    arguments: String::new(),
                });
                self.calls.len() - 1
            }
            None => return,
        };
        let Some(call) = self.calls.get_mut(at) else {
            return;
        };
        if let Some(name) = name.filter(|_| call.name.is_empty()) {
            // Client text: bounded like any echoed name.
            call.name = tollgate_core::bound::echo(&name).into_owned();
        }
        let mut cut = room.saturating_sub(self.call_bytes).min(args.len());
        while !args.is_char_boundary(cut) {
            cut -= 1;
        }
        call.arguments.push_str(&args[..cut]);
        self.call_bytes += cut;
    }

    /// The payload for the log event.
    pub fn finish(mut self) -> pb::Payload {
        if self.mode == Mode::Full && !self.calls.is_empty() {
            let calls = std::mem::take(&mut self.calls);
            self.payload.tool_calls = calls
                .into_iter()
                .map(|c| pb::CapturedToolCall {
                    arguments: REDACTOR
                        .as_ref()
                        .and_then(|e| redact_arguments(e, &c.arguments))
                        .map_or_else(|| WITHHELD.to_owned(), |a| cap(a, self.max, 0)),
                    name: c.name,
                })
                .collect();
        }
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
