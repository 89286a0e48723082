//! Guardrails on the wire: which text of a request or response a policy judges, and how its
//! verdicts change what goes through.
//!
//! - Requests: the text the user sends (message contents and their text parts, Anthropic's
//!   `system`, the completions `prompt`, the embeddings `input`) is read from the members the
//!   processor already split out ([`RawObject`]); only those members are parsed further, and
//!   only a redaction writes them back.
//! - Complete responses: the assistant text of the body in the client's dialect, judged in
//!   place so every other member stays as it was.
//! - Streams: the text deltas of each content block go through a [`StreamScanner`] of their
//!   own, between the decoder and the encoder, so redaction is exact wherever the provider's
//!   chunks split the text and the client's event framing is the encoder's as always.
//!
//! Verdicts name rules, never the matched text.

use std::sync::Arc;

use serde_json::Value;
use tollgate_core::config::{ApiFamily, Side};
use tollgate_core::metrics::{GuardrailLabels, Metrics};
use tollgate_core::{ApiError, Endpoint};
use tollgate_guardrails::{Engine, StreamOutput, StreamScanner, Verdict};
use tollgate_proto::logger::v1::GuardrailVerdict;

use crate::stream::Frame;
use crate::translator::hub::{Delta, StreamEvent};
use crate::translator::json::RawObject;

/// One rule that matched one side of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The rule's id.
    pub rule: String,
    /// `block`, `redact` or `flag`.
    pub action: &'static str,
    /// Which side matched.
    pub side: Side,
}

/// Every verdict of one request, once per (rule, action, side).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdicts(Vec<Recorded>);

impl Verdicts {
    /// Adds a verdict about `side`; counts each new (rule, action, side) in `metrics`.
    pub fn add(&mut self, side: Side, v: &Verdict, metrics: &Metrics) {
        let all = v
            .blocked_by
            .iter()
            .map(|r| (r, "block"))
            .chain(v.redacted.iter().map(|r| (r, "redact")))
            .chain(v.flagged.iter().map(|r| (r, "flag")));
        for (rule, action) in all {
            if self
                .0
                .iter()
                .any(|r| r.rule == *rule && r.action == action && r.side == side)
            {
                continue;
            }
            metrics
                .guardrail_verdicts
                .get_or_create(&GuardrailLabels {
                    rule: rule.clone(),
                    action,
                    side: side.label(),
                })
                .inc();
            self.0.push(Recorded {
                rule: rule.clone(),
                action,
                side,
            });
        }
    }

    /// The verdicts, in the order they were recorded.
    pub fn list(&self) -> &[Recorded] {
        &self.0
    }

    /// The verdicts as log-event fields.
    pub fn to_proto(&self) -> Vec<GuardrailVerdict> {
        self.0
            .iter()
            .map(|r| GuardrailVerdict {
                rule: r.rule.clone(),
                action: r.action.to_owned(),
                side: r.side.label().to_owned(),
            })
            .collect()
    }
}

fn merge(into: &mut Verdict, v: Verdict) {
    if into.blocked_by.is_none() {
        into.blocked_by = v.blocked_by;
    }
    for (list, new) in [
        (&mut into.redacted, v.redacted),
        (&mut into.flagged, v.flagged),
    ] {
        for r in new {
            if !list.contains(&r) {
                list.push(r);
            }
        }
    }
}

/// Calls `f` on every user-written string of a message content (a string, or a list of parts
/// with `text`, including the content of Anthropic tool results), a `system` member, a
/// completions `prompt` or an embeddings `input` (strings or lists of strings; token arrays
/// carry no text).
pub(crate) fn visit_text(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(s) => f(s),
                    Value::Object(part) => {
                        if let Some(Value::String(s)) = part.get_mut("text") {
                            f(s);
                        }
                        if let Some(c) = part.get_mut("content") {
                            visit_text(c, f);
                        }
                        // Anthropic tool calls: every string of their JSON input.
                        if part.get("type").and_then(Value::as_str) == Some("tool_use") {
                            if let Some(input) = part.get_mut("input") {
                                visit_strings(input, f);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Calls `f` on every string inside a JSON value (object keys stay).
fn visit_strings(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| visit_strings(i, f)),
        Value::Object(map) => map.values_mut().for_each(|i| visit_strings(i, f)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Calls `f` on the strings of an OpenAI tool call's `arguments` (JSON text held in a string):
/// parsed, each string judged, written back as JSON, so a redaction keeps the arguments valid
/// JSON; arguments that are not JSON are judged as text.
fn visit_arguments(args: &mut String, f: &mut dyn FnMut(&mut String)) {
    match serde_json::from_str::<Value>(args) {
        Ok(mut v) => {
            let mut changed = false;
            visit_strings(&mut v, &mut |s: &mut String| {
                let before = s.clone();
                f(s);
                changed |= *s != before;
            });
            if changed {
                *args = v.to_string();
            }
        }
        Err(_) => f(args),
    }
}

/// Calls `f` on the arguments of every tool call of an OpenAI message (request history or
/// response).
pub(crate) fn visit_tool_calls(message: &mut Value, f: &mut dyn FnMut(&mut String)) {
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        for c in calls {
            if let Some(Value::String(args)) = c
                .get_mut("function")
                .and_then(|fun| fun.get_mut("arguments"))
            {
                visit_arguments(args, f);
            }
        }
    }
}

/// The members of a request body that carry user text, by endpoint.
pub(crate) fn text_members(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::ChatCompletions => &["messages"],
        Endpoint::Messages => &["system", "messages"],
        Endpoint::Completions => &["prompt"],
        Endpoint::Embeddings => &["input"],
        Endpoint::GenerateContent => &["systemInstruction", "contents"],
        // Judged as the Chat Completions body it becomes (`processor/responses.rs`).
        Endpoint::Responses => &["messages"],
        // Judged as the OpenAI embeddings body it is read into (`processor/gemini_methods.rs`).
        Endpoint::EmbedContent => &["input"],
        // Judged by `processor/guard_endpoints.rs` over what each endpoint already parsed
        // (`guard::endpoints` walks it): a media prompt or input (JSON member or form part),
        // the rerank query and documents, a passthrough body of a recognised shape.
        Endpoint::Media(_) => &[],
        Endpoint::Rerank => &[],
        Endpoint::Passthrough => &[],
        Endpoint::Models | Endpoint::Feedback | Endpoint::CountTokens => &[],
    }
}

/// Calls `f` on every user-written string of one text member of a request body (see
/// [`text_members`]): the one walker every policy reads a request through (local rules,
/// webhooks), whatever the client's dialect: OpenAI and Anthropic `messages[].content` and
/// tool-call arguments, Gemini `contents[].parts` and `systemInstruction.parts`, `system`,
/// `prompt`, `input`.
pub(crate) fn visit_member_text(member: &str, value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match member {
        "messages" | "contents" => {
            // Gemini's turns keep their text under `parts`.
            let key = if member == "messages" {
                "content"
            } else {
                "parts"
            };
            if let Value::Array(messages) = value {
                for m in messages {
                    if let Some(c) = m.get_mut(key) {
                        visit_text(c, f);
                    }
                    visit_tool_calls(m, f);
                }
            }
        }
        "systemInstruction" => {
            if let Some(parts) = value.get_mut("parts") {
                visit_text(parts, f);
            }
        }
        _ => visit_text(value, f),
    }
}

/// What a policy decided about a request body.
#[derive(Debug, Default)]
pub struct RequestCheck {
    /// The verdict over every text of the request.
    pub verdict: Verdict,
    /// Members to write back (name, JSON text) because a rule redacted text in them.
    pub replace: Vec<(&'static str, String)>,
}

/// Judges the user text of a request body under `engine`.
pub fn check_request(engine: &Engine, endpoint: Endpoint, obj: &RawObject<'_>) -> RequestCheck {
    let mut check = RequestCheck::default();
    for member in text_members(endpoint) {
        let Some(raw) = obj.get(member) else { continue };
        // A member of the wrong shape is the translator's to refuse; only text is judged here.
        let Ok(mut value) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        let mut changed = false;
        let mut judge = |s: &mut String| {
            let out = engine.check(s);
            if let Some(text) = out.redacted_text {
                *s = text;
                changed = true;
            }
            merge(&mut check.verdict, out.verdict);
        };
        visit_member_text(member, &mut value, &mut judge);
        if changed {
            check.replace.push((member, value.to_string()));
        }
    }
    check
}

/// Judges a request body and records the verdict: the body to send instead when a rule
/// redacted, an error naming the rule when one blocked.
pub fn judge_request(
    engine: &Engine,
    endpoint: Endpoint,
    obj: &RawObject<'_>,
    verdicts: &mut Verdicts,
    metrics: &Metrics,
) -> Result<Option<Vec<u8>>, ApiError> {
    let check = check_request(engine, endpoint, obj);
    verdicts.add(Side::Request, &check.verdict, metrics);
    if let Some(rule) = check.verdict.blocked_by {
        return Err(ApiError::GuardrailBlocked {
            rule,
            side: Side::Request,
        });
    }
    if check.replace.is_empty() {
        return Ok(None);
    }
    let replace: Vec<(&str, &str)> = check
        .replace
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    Ok(Some(obj.write_with(&replace, 0)))
}

/// Judges (and redacts in place) the assistant text of a complete response body in the
/// client's dialect: OpenAI `choices[].message.content` (every choice) and `choices[].text`
/// (legacy completions), Anthropic `content[]` text blocks, Gemini
/// `candidates[].content.parts[]` text. Every other member stays as the provider (or the
/// translator) wrote it. `None` when the body is not a JSON object.
pub fn judge_response(
    engine: &Engine,
    client: ApiFamily,
    body: &[u8],
) -> Option<(Verdict, Option<Vec<u8>>)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    judge_response_value(engine, client, &mut v)
}

/// [`judge_response`] over a body already parsed (shared with the response webhooks).
pub fn judge_response_value(
    engine: &Engine,
    client: ApiFamily,
    v: &mut Value,
) -> Option<(Verdict, Option<Vec<u8>>)> {
    if !v.is_object() {
        return None;
    }
    let mut verdict = Verdict::default();
    let mut changed = false;
    let mut judge = |s: &mut String| {
        let out = engine.check(s);
        if let Some(text) = out.redacted_text {
            *s = text;
            changed = true;
        }
        merge(&mut verdict, out.verdict);
    };
    visit_response_text(v, client, &mut judge);
    let body = changed.then(|| v.to_string().into_bytes());
    Some((verdict, body))
}

/// Calls `f` on every assistant text of a complete response in `family`'s format: every
/// OpenAI choice's `message.content` and legacy completions `text`, Anthropic text blocks,
/// Gemini candidate parts.
pub(crate) fn visit_response_text(
    v: &mut Value,
    family: ApiFamily,
    f: &mut dyn FnMut(&mut String),
) {
    match family {
        // No client speaks Bedrock (its responses reach clients translated).
        ApiFamily::OpenAi | ApiFamily::Bedrock => {
            if let Some(Value::Array(choices)) = v.get_mut("choices") {
                for c in choices {
                    if let Some(Value::String(s)) = c.get_mut("text") {
                        f(s);
                    }
                    if let Some(m) = c.get_mut("message") {
                        for key in ["reasoning_content", "reasoning"] {
                            if let Some(Value::String(s)) = m.get_mut(key) {
                                f(s);
                            }
                        }
                        if let Some(content) = m.get_mut("content") {
                            visit_text(content, f);
                        }
                        visit_tool_calls(m, f);
                    }
                }
            }
        }
        ApiFamily::Anthropic => {
            if let Some(content) = v.get_mut("content") {
                visit_text(content, f);
                for block in content.as_array_mut().into_iter().flatten() {
                    if block.get("type").and_then(Value::as_str) == Some("thinking") {
                        if let Some(Value::String(s)) = block.get_mut("thinking") {
                            f(s);
                        }
                    }
                }
            }
        }
        ApiFamily::Gemini => {
            if let Some(Value::Array(candidates)) = v.get_mut("candidates") {
                for c in candidates {
                    if let Some(parts) = c.get_mut("content").and_then(|m| m.get_mut("parts")) {
                        visit_text(parts, f);
                    }
                }
            }
        }
    }
}

/// The scanners of one stream's open texts (content blocks or choices), by key, and the
/// verdicts of those already finished.
#[derive(Debug)]
struct Scanners {
    engine: Arc<Engine>,
    open: Vec<(u64, StreamScanner)>,
    finished: Verdict,
}

impl Scanners {
    fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            open: Vec::new(),
            finished: Verdict::default(),
        }
    }

    /// Feeds text of `key` (its scanner starts with its first text).
    fn push(&mut self, key: u64, text: &str) -> StreamOutput {
        if let Some((_, s)) = self.open.iter_mut().find(|(k, _)| *k == key) {
            return s.push(text.as_bytes());
        }
        let mut s = StreamScanner::new(Arc::clone(&self.engine));
        let o = s.push(text.as_bytes());
        self.open.push((key, s));
        o
    }

    /// Ends the text of `key`, releasing what its scanner held.
    fn finish(&mut self, key: u64) -> StreamOutput {
        let Some(pos) = self.open.iter().position(|(k, _)| *k == key) else {
            return StreamOutput::default();
        };
        let (_, mut s) = self.open.remove(pos);
        let o = s.finish();
        merge(&mut self.finished, s.verdict().clone());
        o
    }

    fn keys(&self) -> Vec<u64> {
        self.open.iter().map(|(k, _)| *k).collect()
    }

    fn verdict(&self) -> Verdict {
        let mut v = self.finished.clone();
        for (_, s) in &self.open {
            merge(&mut v, s.verdict().clone());
        }
        v
    }
}

/// Makes a delta of one kind (text, tool-call arguments, thinking) from released text.
type DeltaKind = fn(String) -> Delta;

/// The guard of one response stream: a scanner per open text block.
#[derive(Debug)]
pub struct StreamGuard {
    scanners: Scanners,
    blocked_by: Option<String>,
    /// What each judged block carries (text, tool-call arguments or thinking), by index, so
    /// its held text is released as the same kind of delta.
    kinds: Vec<(usize, DeltaKind)>,
}

impl StreamGuard {
    /// A guard for one stream under `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            scanners: Scanners::new(engine),
            blocked_by: None,
            kinds: Vec::new(),
        }
    }

    fn kind(&self, index: usize) -> DeltaKind {
        self.kinds
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(Delta::Text as DeltaKind, |(_, k)| *k)
    }

    /// The rule that blocked the stream, once one has.
    pub fn blocked_by(&self) -> Option<&str> {
        self.blocked_by.as_deref()
    }

    /// Everything decided so far, including blocks still open.
    pub fn verdict(&self) -> Verdict {
        self.scanners.verdict()
    }

    fn released(
        &mut self,
        index: usize,
        text: String,
        blocked: Option<String>,
        out: &mut Vec<StreamEvent>,
    ) {
        // The step that blocks releases the match itself (a block does not redact): withhold
        // all of it, so the blocked text never reaches the client.
        if !text.is_empty() && blocked.is_none() {
            out.push(StreamEvent::Delta {
                index,
                delta: self.kind(index)(text),
            });
        }
        if blocked.is_some() && self.blocked_by.is_none() {
            self.blocked_by = blocked;
        }
    }

    fn close(&mut self, index: usize, out: &mut Vec<StreamEvent>) {
        let o = self.scanners.finish(index as u64);
        self.released(index, o.text, o.blocked_by, out);
    }

    /// Releases every text still held (the stream ends).
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.blocked_by.is_some() {
            return;
        }
        for key in self.scanners.keys() {
            self.close(key as usize, out);
        }
    }

    /// Filters decoded events: text deltas are redacted (holding back what may still be the
    /// start of a match), held text is released before its block stops and before the message
    /// ends. After a block, nothing more is released: the caller ends the stream.
    pub fn apply(&mut self, events: &mut Vec<StreamEvent>) {
        if events.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(events.len());
        for e in events.drain(..) {
            if self.blocked_by.is_some() {
                break;
            }
            match e {
                StreamEvent::Delta { index, delta } => {
                    // Text, tool-call arguments and thinking are judged alike (a redaction
                    // inside arguments replaces text within a JSON string, so they stay JSON);
                    // a signature passes untouched.
                    let (t, kind): (String, DeltaKind) = match delta {
                        Delta::Text(t) => (t, Delta::Text),
                        Delta::ToolArguments(t) => (t, Delta::ToolArguments),
                        Delta::Thinking(t) => (t, Delta::Thinking),
                        signature @ Delta::Signature(_) => {
                            out.push(StreamEvent::Delta {
                                index,
                                delta: signature,
                            });
                            continue;
                        }
                    };
                    if !self.kinds.iter().any(|(i, _)| *i == index) {
                        self.kinds.push((index, kind));
                    }
                    let o = self.scanners.push(index as u64, &t);
                    self.released(index, o.text, o.blocked_by, &mut out);
                }
                StreamEvent::BlockStop { index } => {
                    self.close(index, &mut out);
                    if self.blocked_by.is_none() {
                        out.push(e);
                    }
                }
                StreamEvent::Finish { .. } | StreamEvent::Stop | StreamEvent::Error(_) => {
                    self.finish(&mut out);
                    if self.blocked_by.is_none() {
                        out.push(e);
                    }
                }
                other => out.push(other),
            }
        }
        *events = out;
    }
}

#[cfg(test)]
mod tests;

pub mod endpoints;

/// The guard of a same-dialect OpenAI stream (chat or legacy completions), event by event
/// without a round trip through the hub: every choice's `delta.content` (or completions
/// `text`) goes through a scanner of its own, and every other member of a chunk stays as the
/// provider wrote it. Text still held when a choice finishes is released in its finishing
/// chunk.
#[derive(Debug)]
pub struct OpenAiStreamGuard {
    /// By choice index.
    scanners: Scanners,
    blocked_by: Option<String>,
    /// `id`, `object`, `created`, `model` of the last chunk, for a chunk releasing held text
    /// of choices that never finished.
    template: Option<Value>,
    /// The member reasoning deltas arrive in (`reasoning_content` or `reasoning`).
    reasoning_field: &'static str,
}

/// Scanner keys of an OpenAI stream: the choice index in the low bits; reasoning and each
/// tool call's arguments of a choice have scanners of their own.
const CHOICE_MASK: u64 = (1 << 20) - 1;
const REASONING: u64 = 1 << 40;
const TOOL: u64 = 2 << 40;

fn tool_key(choice: u64, tool: u64) -> u64 {
    TOOL | ((tool & CHOICE_MASK) << 20) | choice
}

/// The reasoning text members of a chat delta.
fn reasoning_fields(delta: &mut Value) -> Vec<(&'static str, &mut String)> {
    let Some(d) = delta.as_object_mut() else {
        return Vec::new();
    };
    d.iter_mut()
        .filter_map(|(k, v)| {
            let name = match k.as_str() {
                "reasoning_content" => "reasoning_content",
                "reasoning" => "reasoning",
                _ => return None,
            };
            match v {
                Value::String(s) => Some((name, s)),
                _ => None,
            }
        })
        .collect()
}

/// The `arguments` text of each tool call in a chat delta, with the call's index.
fn tool_argument_fields(delta: &mut Value) -> Vec<(u64, &mut String)> {
    let Some(Value::Array(calls)) = delta.get_mut("tool_calls") else {
        return Vec::new();
    };
    calls
        .iter_mut()
        .enumerate()
        .filter_map(|(i, c)| {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            match c.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                Some(Value::String(a)) => Some((index, a)),
                _ => None,
            }
        })
        .collect()
}

/// Adds released `text` of scanner `key` to a chat `delta`: content, reasoning, or the
/// arguments of the tool call the key names.
fn put(delta: &mut Value, key: u64, text: String, reasoning_field: &str) {
    let Some(d) = delta.as_object_mut() else {
        return;
    };
    let append = |slot: Option<&mut Value>, text: String| match slot {
        Some(Value::String(s)) => {
            s.push_str(&text);
            None
        }
        _ => Some(Value::String(text)),
    };
    if key & TOOL != 0 {
        let tool = (key >> 20) & CHOICE_MASK;
        let calls = d
            .entry("tool_calls")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(list) = calls.as_array_mut() else {
            return;
        };
        let pos = list
            .iter()
            .position(|c| c.get("index").and_then(Value::as_u64) == Some(tool));
        match pos.and_then(|p| list.get_mut(p)) {
            Some(c) => {
                if let Some(v) = append(c.pointer_mut("/function/arguments"), text) {
                    c["function"]["arguments"] = v;
                }
            }
            None => list.push(serde_json::json!({"index": tool, "function": {"arguments": text}})),
        }
    } else if key & REASONING != 0 {
        if let Some(v) = append(d.get_mut(reasoning_field), text) {
            d.insert(reasoning_field.to_owned(), v);
        }
    } else if let Some(v) = append(d.get_mut("content"), text) {
        d.insert("content".to_owned(), v);
    }
}

impl OpenAiStreamGuard {
    /// A guard for one stream under `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            scanners: Scanners::new(engine),
            blocked_by: None,
            template: None,
            reasoning_field: "reasoning_content",
        }
    }

    /// Everything decided so far, including choices still open.
    pub fn verdict(&self) -> Verdict {
        self.scanners.verdict()
    }

    /// The rule that blocked the stream, once one has: the caller ends the stream.
    pub fn blocked_by(&self) -> Option<&str> {
        self.blocked_by.as_deref()
    }

    /// Judges one event of the stream into `out`: its text replaced by what the scanners
    /// release, the event unchanged when nothing of it changed.
    pub fn event<'a>(&mut self, mut frame: Frame<'a>, out: &mut Vec<Frame<'a>>) {
        if self.blocked_by.is_some() {
            return;
        }
        if frame.is_done() {
            self.finish(out);
            if self.blocked_by.is_none() {
                out.push(frame);
            }
            return;
        }
        let mut blocked = None;
        frame.edit(|v| match self.judge(v) {
            Ok(changed) => changed,
            Err(rule) => {
                blocked = Some(rule);
                false
            }
        });
        match blocked {
            Some(rule) => self.blocked_by = Some(rule),
            None => out.push(frame),
        }
    }

    /// Judges one chunk in place; returns whether it changed, or the rule that blocked it.
    fn judge(&mut self, v: &mut Value) -> Result<bool, String> {
        let mut changed = false;
        if let Some(Value::Array(choices)) = v.get_mut("choices") {
            for c in choices {
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(0) & CHOICE_MASK;
                let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
                let chat = c.get("delta").is_some();
                let field = if chat {
                    c.get_mut("delta").and_then(|d| d.get_mut("content"))
                } else {
                    c.get_mut("text")
                };
                let mut released = None;
                if let Some(Value::String(t)) = field {
                    let o = self.scanners.push(index, t);
                    if let Some(rule) = o.blocked_by {
                        return Err(rule);
                    }
                    released = Some(o.text);
                }
                // Reasoning and tool-call argument deltas: a scanner each, their text
                // replaced in place by what the scanner releases.
                if let Some(d) = c.get_mut("delta") {
                    for (name, value) in reasoning_fields(d) {
                        let o = self.scanners.push(REASONING | index, value);
                        if let Some(rule) = o.blocked_by {
                            return Err(rule);
                        }
                        self.reasoning_field = name;
                        *value = o.text;
                        changed = true;
                    }
                    for (tool, args) in tool_argument_fields(d) {
                        let o = self.scanners.push(tool_key(index, tool), args);
                        if let Some(rule) = o.blocked_by {
                            return Err(rule);
                        }
                        *args = o.text;
                        changed = true;
                    }
                }
                if finished {
                    let o = self.scanners.finish(index);
                    if let Some(rule) = o.blocked_by {
                        return Err(rule);
                    }
                    if !o.text.is_empty() {
                        released.get_or_insert_with(String::new).push_str(&o.text);
                    }
                    for key in self.scanners.keys() {
                        if key & CHOICE_MASK != index || key == index {
                            continue;
                        }
                        let o = self.scanners.finish(key);
                        if let Some(rule) = o.blocked_by {
                            return Err(rule);
                        }
                        if let (false, Some(d)) = (o.text.is_empty(), c.get_mut("delta")) {
                            put(d, key, o.text, self.reasoning_field);
                            changed = true;
                        }
                    }
                }
                let Some(text) = released else { continue };
                changed = true;
                if chat {
                    if let Some(d) = c.get_mut("delta").and_then(Value::as_object_mut) {
                        d.insert("content".into(), Value::String(text));
                    }
                } else if let Some(c) = c.as_object_mut() {
                    c.insert("text".into(), Value::String(text));
                }
            }
        }
        if let Some(obj) = v.as_object() {
            let keep = ["id", "object", "created", "model"];
            let t: serde_json::Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if t.contains_key("object") {
                self.template = Some(Value::Object(t));
            }
        }
        Ok(changed)
    }

    /// Releases the text of choices that never finished (the stream ends).
    pub fn finish(&mut self, out: &mut Vec<Frame<'_>>) {
        if self.blocked_by.is_some() {
            return;
        }
        for index in self.scanners.keys() {
            let o = self.scanners.finish(index);
            if let Some(rule) = o.blocked_by {
                self.blocked_by = Some(rule);
                return;
            }
            let Some(mut chunk) = self.template.clone().filter(|_| !o.text.is_empty()) else {
                continue;
            };
            let chat = chunk["object"] == "chat.completion.chunk";
            let choice = if chat {
                let mut delta = serde_json::json!({});
                put(&mut delta, index, o.text, self.reasoning_field);
                serde_json::json!({"index": index & CHOICE_MASK, "delta": delta, "finish_reason": null})
            } else {
                serde_json::json!({"index": index, "text": o.text, "finish_reason": null})
            };
            chunk["choices"] = Value::Array(vec![choice]);
            out.push(Frame::json(chunk));
        }
    }
}
