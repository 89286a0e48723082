//! AWS Bedrock Converse ⇄ hub: requests (`system`, `messages` of content blocks,
//! `inferenceConfig`, `toolConfig`), `converse` response bodies, errors (`{"message":…}` with
//! the exception name in `x-amzn-errortype`), and the `converse-stream` events
//! (`messageStart`, `contentBlockStart`, `contentBlockDelta`, `contentBlockStop`,
//! `messageStop`, `metadata`, and exceptions) read from the event-stream framing.
//!
//! There are no Bedrock clients: requests and responses go one way only. Bedrock streams say
//! neither a response id nor the model; the processor supplies both ([`StreamDecoder::new`],
//! [`response_from_wire`]).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::Usage;

use super::{merged_turns, to_bytes};
use crate::translator::error::TranslateError;
use crate::translator::eventstream::{self, Message as Frame};
use crate::translator::hub::{
    BlockKind, CacheAt, ChatRequest, ChatResponse, Delta, ErrorInfo, Image, Part, Reasoning,
    StopReason, StreamEvent, ToolCall, ToolChoice, MIN_THINKING_BUDGET,
};

// ---------------------------------------------------------------------------------------------
// Wire types (what Bedrock answers)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<WireUsage> for Usage {
    /// Bedrock's `inputTokens` leaves out the cached parts; the hub counts them in.
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_input_tokens,
            cache_write_tokens: u.cache_write_input_tokens,
            ..Default::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    output: WireOutput,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    additional_model_response_fields: Option<Value>,
}

#[derive(Deserialize)]
struct WireOutput {
    message: WireMessage,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Vec<WireBlock>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<WireToolUse>,
    #[serde(default)]
    reasoning_content: Option<WireReasoning>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReasoning {
    #[serde(default)]
    reasoning_text: Option<WireReasoningText>,
    #[serde(default)]
    redacted_content: Option<String>,
}

#[derive(Deserialize)]
struct WireReasoningText {
    #[serde(default)]
    text: String,
    #[serde(default)]
    signature: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlockStart {
    content_block_index: usize,
    start: WireStart,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStart {
    #[serde(default)]
    tool_use: Option<WireToolUseStart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolUseStart {
    tool_use_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlockDelta {
    content_block_index: usize,
    delta: WireDelta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDelta {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<WireToolUseDelta>,
    #[serde(default)]
    reasoning_content: Option<WireReasoningDelta>,
}

#[derive(Deserialize)]
struct WireToolUseDelta {
    #[serde(default)]
    input: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReasoningDelta {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    redacted_content: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlockStop {
    content_block_index: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessageStop {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    additional_model_response_fields: Option<Value>,
}

#[derive(Deserialize)]
struct WireMetadata {
    #[serde(default)]
    usage: Option<WireUsage>,
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

fn unsupported(param: &'static str, message: &str) -> TranslateError {
    TranslateError::Unsupported {
        param,
        message: message.to_owned(),
    }
}

/// `{"image":{"format","source":{"bytes"}}}`: Bedrock takes inline bytes only.
fn image_value(i: &Image) -> Result<Value, TranslateError> {
    let Image::Base64 { media_type, data } = i else {
        return Err(unsupported(
            "messages",
            "This model's provider (AWS Bedrock) takes images as inline bytes only: send a `data:` URL or base64 source.",
        ));
    };
    let format = match media_type.as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => {
            return Err(unsupported(
                "messages",
                "AWS Bedrock takes png, jpeg, gif and webp images only.",
            ))
        }
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!({}))
}

fn block_value(p: &Part) -> Result<Option<Value>, TranslateError> {
    Ok(Some(match p {
        Part::Text(t) if t.trim().is_empty() => return Ok(None),
        Part::Text(t) => json!({"text": t}),
        Part::Image(i) => image_value(i)?,
        Part::ToolCall(c) => json!({"toolUse": {"toolUseId": c.id, "name": c.name,
            "input": tool_input(&c.arguments)}}),
        Part::ToolResult(r) => {
            let mut content = Vec::with_capacity(r.content.len());
            for p in &r.content {
                match p {
                    Part::Text(t) => content.push(json!({"text": t})),
                    Part::Image(i) => content.push(image_value(i)?),
                    _ => {}
                }
            }
            if content.is_empty() {
                content.push(json!({"text": ""}));
            }
            let mut v = json!({"toolUseId": r.call_id, "content": content});
            if r.is_error {
                v["status"] = "error".into();
            }
            json!({"toolResult": v})
        }
        Part::Thinking { text, signature } => {
            let mut t = json!({"text": text});
            if let Some(s) = signature.as_deref().filter(|s| !s.is_empty()) {
                t["signature"] = s.into();
            }
            json!({"reasoningContent": {"reasoningText": t}})
        }
        Part::RedactedThinking { data } => {
            json!({"reasoningContent": {"redactedContent": data}})
        }
        Part::CachePoint => cache_point(),
    }))
}

/// Converse's prompt-cache breakpoint (a content, system or tool block of its own), what an
/// Anthropic client's `cache_control` on the block before it becomes.
fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

fn has_tool_blocks(req: &ChatRequest) -> bool {
    req.messages.iter().any(|m| {
        m.content
            .iter()
            .any(|p| matches!(p, Part::ToolCall(_) | Part::ToolResult(_)))
    })
}

/// The `converse` / `converse-stream` body: consecutive turns of one role merged, empty turns
/// dropped. Bedrock has no `none` tool choice: with it, tools are left out unless the
/// conversation already holds tool blocks (Bedrock then needs `toolConfig`), where the model
/// decides. Anthropic's `thinking` and `top_k` go in `additionalModelRequestFields`; `user`
/// and `parallel_tool_calls` have no counterpart and are dropped.
pub fn request_to_wire(req: &ChatRequest) -> Result<Vec<u8>, TranslateError> {
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        merged_turns(&req.messages, block_value)?.into(),
    );
    let mut system: Vec<Value> = Vec::with_capacity(req.system.len());
    for (i, t) in req.system.iter().enumerate() {
        if !t.trim().is_empty() {
            system.push(json!({"text": t}));
        }
        if req.cache_points.contains(&CacheAt::System(i)) && !system.is_empty() {
            system.push(cache_point());
        }
    }
    if !system.is_empty() {
        body.insert("system".into(), system.into());
    }
    let mut inference = Map::new();
    if let Some(n) = req.max_tokens {
        inference.insert("maxTokens".into(), n.into());
    }
    if let Some(t) = req.temperature {
        inference.insert("temperature".into(), t.into());
    }
    if let Some(t) = req.top_p {
        inference.insert("topP".into(), t.into());
    }
    if !req.stop.is_empty() {
        inference.insert("stopSequences".into(), req.stop.clone().into());
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    // Model-specific members Converse has no field of, in the model's own request format
    // (Anthropic's names: only Anthropic clients set them).
    let mut additional = Map::new();
    // Claude on Bedrock takes Anthropic's `thinking` (other models have no such member), with
    // the budget below `maxTokens` and at least Anthropic's minimum.
    if req.model.contains("anthropic.") {
        let budget = req
            .reasoning
            .and_then(Reasoning::budget_tokens)
            .map(|b| req.max_tokens.map_or(b, |m| b.min(m.saturating_sub(1))))
            .filter(|b| *b >= MIN_THINKING_BUDGET);
        if let Some(b) = budget {
            additional.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": b}),
            );
        }
    }
    if let Some(k) = req.top_k {
        additional.insert("top_k".into(), k.into());
    }
    if !additional.is_empty() {
        body.insert(
            "additionalModelRequestFields".into(),
            Value::Object(additional),
        );
    }
    let none = req.tool_choice == Some(ToolChoice::None);
    if !req.tools.is_empty() && (!none || has_tool_blocks(req)) {
        let mut tools: Vec<Value> = Vec::with_capacity(req.tools.len());
        for (i, t) in req.tools.iter().enumerate() {
            let mut spec = json!({"name": t.name, "inputSchema": {"json": t.parameters}});
            if let Some(d) = t.description.as_deref().filter(|d| !d.is_empty()) {
                spec["description"] = d.into();
            }
            tools.push(json!({"toolSpec": spec}));
            if req.cache_points.contains(&CacheAt::Tool(i)) {
                tools.push(cache_point());
            }
        }
        let mut config = json!({ "tools": tools });
        match &req.tool_choice {
            Some(ToolChoice::Auto) => config["toolChoice"] = json!({"auto": {}}),
            Some(ToolChoice::Required) => config["toolChoice"] = json!({"any": {}}),
            Some(ToolChoice::Tool(n)) => config["toolChoice"] = json!({"tool": {"name": n}}),
            Some(ToolChoice::None) | None => {}
        }
        body.insert("toolConfig".into(), config);
    }
    Ok(to_bytes(&Value::Object(body)))
}

// ---------------------------------------------------------------------------------------------
// Responses and errors
// ---------------------------------------------------------------------------------------------

fn stop_reason(s: &str) -> StopReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "guardrail_intervened" | "content_filtered" => StopReason::Refusal,
        _ => StopReason::EndTurn,
    }
}

/// The stop sequence Anthropic models on Bedrock report in `additionalModelResponseFields`.
fn stop_sequence(fields: Option<&Value>) -> Option<String> {
    fields?.get("stop_sequence")?.as_str().map(str::to_owned)
}

fn part_of(b: WireBlock) -> Option<Part> {
    if let Some(t) = b.text {
        return Some(Part::Text(t));
    }
    if let Some(u) = b.tool_use {
        return Some(Part::ToolCall(ToolCall {
            id: u.tool_use_id,
            name: u.name,
            arguments: if u.input.is_null() {
                "{}".to_owned()
            } else {
                u.input.to_string()
            },
        }));
    }
    let r = b.reasoning_content?;
    if let Some(data) = r.redacted_content {
        return Some(Part::RedactedThinking { data });
    }
    r.reasoning_text.map(|t| Part::Thinking {
        text: t.text,
        signature: t.signature,
    })
}

/// A `converse` response body; Bedrock names neither the response nor the model, so `id` and
/// `model` are given.
pub fn response_from_wire(
    body: &[u8],
    id: &str,
    model: &str,
) -> Result<ChatResponse, TranslateError> {
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| TranslateError::UpstreamBody(e.to_string()))?;
    Ok(ChatResponse {
        id: id.to_owned(),
        model: model.to_owned(),
        content: wire
            .output
            .message
            .content
            .into_iter()
            .filter_map(part_of)
            .collect(),
        stop_reason: wire.stop_reason.as_deref().map(stop_reason),
        stop_sequence: stop_sequence(wire.additional_model_response_fields.as_ref()),
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
    })
}

/// The exception name of an `x-amzn-errortype` value (`ThrottlingException:http://…` →
/// `ThrottlingException`).
pub fn error_type_name(header: &str) -> &str {
    header.split(':').next().unwrap_or(header).trim()
}

/// A Bedrock error body (`{"message":…}`, `{"Message":…}`), with the exception name from
/// `x-amzn-errortype` when the response had one.
pub fn error_from_wire(status: u16, body: &[u8], error_type: Option<&str>) -> Option<ErrorInfo> {
    let e = serde_json::from_slice::<WireError>(body).ok()?;
    Some(ErrorInfo {
        status,
        kind: error_type
            .map(error_type_name)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        message: e.message?,
    })
}

/// The HTTP status Bedrock uses for an exception (for exceptions inside a stream, whose names
/// start lower case there).
fn status_of(exception: &str) -> u16 {
    let e = exception.to_ascii_lowercase();
    match e.as_str() {
        "validationexception" => 400,
        "accessdeniedexception" => 403,
        "resourcenotfoundexception" => 404,
        "modeltimeoutexception" => 408,
        "throttlingexception" | "modelnotreadyexception" => 429,
        "modelstreamerrorexception" | "modelerrorexception" => 424,
        "serviceunavailableexception" => 503,
        _ => 500,
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// `converse-stream` → hub events. Text and reasoning blocks have no start event in Bedrock:
/// the first delta of an index starts its block. `messageStop` comes before `metadata` (the
/// usage), so the hub's `Finish` waits for the metadata, or for the end of the stream.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    frames: eventstream::Decoder,
    id: String,
    model: String,
    started: bool,
    /// Bedrock block indices started and not yet stopped.
    open: Vec<usize>,
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
    usage: Option<Usage>,
    finished: bool,
}

impl StreamDecoder {
    /// A decoder whose stream is called `id`, answered by `model`.
    pub fn new(id: &str, model: &str) -> Self {
        Self {
            id: id.to_owned(),
            model: model.to_owned(),
            ..Default::default()
        }
    }

    /// Usage reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Decodes one upstream chunk; at `end`, a message that stopped without `metadata` is
    /// finished. A corrupt stream (bad CRC, absurd length, cut inside a message) ends with an
    /// error event.
    pub fn push(&mut self, chunk: &[u8], end: bool, out: &mut Vec<StreamEvent>) {
        let mut frames = std::mem::take(&mut self.frames);
        let r = frames.push(chunk, end, |m| self.frame(m, out));
        self.frames = frames;
        if let Err(e) = r {
            if !self.finished {
                tracing::warn!(error = %e, "Unreadable Bedrock event stream");
                self.finished = true;
                out.push(StreamEvent::Error(ErrorInfo {
                    status: 502,
                    kind: None,
                    message: "The upstream provider's stream could not be read.".to_owned(),
                }));
            }
            return;
        }
        if end {
            self.finish(out);
        }
    }

    fn start(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: self.id.clone(),
                model: self.model.clone(),
                usage: Usage::default(),
            });
        }
    }

    fn open(&mut self, index: usize, block: BlockKind, out: &mut Vec<StreamEvent>) {
        if !self.open.contains(&index) {
            self.open.push(index);
            out.push(StreamEvent::BlockStart { index, block });
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished || self.stop_reason.is_none() {
            return;
        }
        self.finished = true;
        for index in std::mem::take(&mut self.open) {
            out.push(StreamEvent::BlockStop { index });
        }
        out.push(StreamEvent::Finish {
            stop_reason: self.stop_reason,
            stop_sequence: self.stop_sequence.take(),
            usage: self.usage,
        });
        out.push(StreamEvent::Stop);
    }

    fn frame(&mut self, m: Frame, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        match m.message_type.as_str() {
            "event" => self.event(&m.event_type, &m.payload, out),
            "exception" | "error" => {
                let (name, message) = if m.message_type == "error" {
                    (m.error_code, m.error_message)
                } else {
                    let msg = serde_json::from_slice::<WireError>(&m.payload)
                        .ok()
                        .and_then(|e| e.message)
                        .unwrap_or_default();
                    (m.exception_type, msg)
                };
                self.finished = true;
                out.push(StreamEvent::Error(ErrorInfo {
                    status: status_of(&name),
                    kind: (!name.is_empty()).then_some(name),
                    message,
                }));
            }
            _ => tracing::debug!("Skipped a Bedrock stream message of an unknown type"),
        }
    }

    fn event(&mut self, kind: &str, payload: &[u8], out: &mut Vec<StreamEvent>) {
        fn read<T: serde::de::DeserializeOwned>(p: &[u8]) -> Option<T> {
            let r = serde_json::from_slice(p);
            if r.is_err() {
                tracing::debug!("Skipped an unreadable Bedrock stream event");
            }
            r.ok()
        }
        match kind {
            "messageStart" => self.start(out),
            "contentBlockStart" => {
                let Some(e) = read::<WireBlockStart>(payload) else {
                    return;
                };
                self.start(out);
                if let Some(t) = e.start.tool_use {
                    let block = BlockKind::ToolCall {
                        id: t.tool_use_id,
                        name: t.name,
                    };
                    self.open(e.content_block_index, block, out);
                }
            }
            "contentBlockDelta" => {
                let Some(e) = read::<WireBlockDelta>(payload) else {
                    return;
                };
                self.start(out);
                let index = e.content_block_index;
                let d = e.delta;
                if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                    self.open(index, BlockKind::Text, out);
                    out.push(StreamEvent::Delta {
                        index,
                        delta: Delta::Text(t),
                    });
                } else if let Some(u) = d.tool_use.filter(|u| !u.input.is_empty()) {
                    // A toolUse delta without its start cannot name the call: dropped.
                    if self.open.contains(&index) {
                        out.push(StreamEvent::Delta {
                            index,
                            delta: Delta::ToolArguments(u.input),
                        });
                    }
                } else if let Some(r) = d.reasoning_content {
                    if let Some(data) = r.redacted_content {
                        self.open(index, BlockKind::RedactedThinking { data }, out);
                        return;
                    }
                    self.open(index, BlockKind::Thinking, out);
                    if let Some(t) = r.text.filter(|t| !t.is_empty()) {
                        out.push(StreamEvent::Delta {
                            index,
                            delta: Delta::Thinking(t),
                        });
                    }
                    if let Some(s) = r.signature.filter(|s| !s.is_empty()) {
                        out.push(StreamEvent::Delta {
                            index,
                            delta: Delta::Signature(s),
                        });
                    }
                }
            }
            "contentBlockStop" => {
                let Some(e) = read::<WireBlockStop>(payload) else {
                    return;
                };
                if let Some(pos) = self.open.iter().position(|i| *i == e.content_block_index) {
                    self.open.remove(pos);
                    out.push(StreamEvent::BlockStop {
                        index: e.content_block_index,
                    });
                }
            }
            "messageStop" => {
                let Some(e) = read::<WireMessageStop>(payload) else {
                    return;
                };
                self.start(out);
                self.stop_reason = Some(
                    e.stop_reason
                        .as_deref()
                        .map_or(StopReason::EndTurn, stop_reason),
                );
                self.stop_sequence = stop_sequence(e.additional_model_response_fields.as_ref());
            }
            "metadata" => {
                let Some(e) = read::<WireMetadata>(payload) else {
                    return;
                };
                if let Some(u) = e.usage {
                    self.usage = Some(u.into());
                }
                self.finish(out);
            }
            _ => {}
        }
    }
}
