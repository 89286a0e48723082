//! OpenAI Chat Completions ⇄ hub: requests (`messages`, `tools`, `tool_choice`, sampling),
//! `chat.completion` bodies, `{"error": …}` bodies, and `chat.completion.chunk` streams.
//!
//! Stream encoding follows the official SDK's accumulator: every string field that identifies
//! something (role, tool-call id, function name) is sent once, in the first delta that
//! carries it; tool calls are numbered from 0 in the order they start.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::usage::OpenAiUsage;
use tollgate_core::Usage;

use super::{insert_sampling, member, start_request, to_bytes, tool_object};
use crate::stream::{self, Frame};
use crate::translator::error::{invalid, TranslateError};
use crate::translator::hub::{
    BlockKind, ChatRequest, ChatResponse, Delta, ErrorInfo, Image, Message, Part, Reasoning,
    ResponseFormat, Role, StopReason, StreamEvent, Tool, ToolCall, ToolChoice, ToolResult,
};
use crate::translator::json::RawObject;

// ---------------------------------------------------------------------------------------------
// Wire types (what OpenAI clients and providers send)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    /// An assistant turn's thinking blocks with their signatures (the member LiteLLM and
    /// Tollgate's Responses API use to carry Anthropic-style thinking through a chat body).
    #[serde(default)]
    thinking_blocks: Option<Vec<WireThinkingBlock>>,
}

/// One of an assistant message's `thinking_blocks`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireThinkingBlock {
    Thinking {
        #[serde(default)]
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Parts(Vec<WirePart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WirePart {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: WireImageUrl,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireImageUrl {
    url: String,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct WireTool {
    function: WireToolFunction,
}

#[derive(Deserialize)]
struct WireToolFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireToolChoice {
    Mode(String),
    Named { function: WireNamed },
}

#[derive(Deserialize)]
struct WireNamed {
    name: String,
}

/// `stop`: one sequence or several (Chat Completions and Completions alike).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum WireStop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options` (Chat Completions and Completions alike).
#[derive(Deserialize)]
pub(crate) struct WireStreamOptions {
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireResponseMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireResponseMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireErrorEnvelope {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCallDelta>>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

fn parts_of(content: Option<WireContent>) -> Result<Vec<Part>, TranslateError> {
    match content {
        None => Ok(Vec::new()),
        Some(WireContent::Text(t)) => Ok(vec![Part::Text(t)]),
        Some(WireContent::Parts(parts)) => parts
            .into_iter()
            .map(|p| match p {
                WirePart::Text { text } => Ok(Part::Text(text)),
                WirePart::ImageUrl { image_url } => Ok(Part::Image(Image::from_url(&image_url.url))),
                WirePart::Other => Err(TranslateError::Unsupported {
                    param: "messages",
                    message: "Only text and image_url content parts can be sent to this model's provider.".to_owned(),
                }),
            })
            .collect(),
    }
}

/// The texts of a system message, one system block per text part.
fn texts_of(parts: Vec<Part>) -> impl Iterator<Item = String> {
    parts.into_iter().filter_map(|p| match p {
        Part::Text(t) => Some(t),
        _ => None,
    })
}

/// A client's chat request, read from its members.
pub fn request_from_wire(
    obj: &RawObject<'_>,
    model: &str,
    stream: bool,
) -> Result<ChatRequest, TranslateError> {
    let (wire, mut req) = start_request::<WireMessage>(obj, model, stream)?;
    for m in wire {
        match m.role.as_str() {
            "system" | "developer" | "user" if m.content.is_none() => {
                return Err(invalid(
                    "messages",
                    format!("a `{}` message needs `content`", m.role),
                ))
            }
            "system" | "developer" => req.system.extend(texts_of(parts_of(m.content)?)),
            "user" => req.messages.push(Message {
                role: Role::User,
                content: parts_of(m.content)?,
            }),
            "assistant" => {
                // Thinking comes first in the turn, as Anthropic requires.
                let mut content: Vec<Part> = m
                    .thinking_blocks
                    .unwrap_or_default()
                    .into_iter()
                    .map(|b| match b {
                        WireThinkingBlock::Thinking {
                            thinking,
                            signature,
                        } => Part::Thinking {
                            text: thinking,
                            signature,
                        },
                        WireThinkingBlock::RedactedThinking { data } => {
                            Part::RedactedThinking { data }
                        }
                    })
                    .collect();
                content.extend(
                    parts_of(m.content)?
                        .into_iter()
                        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty())),
                );
                for c in m.tool_calls.unwrap_or_default() {
                    content.push(Part::ToolCall(ToolCall {
                        id: c.id,
                        name: c.function.name,
                        arguments: c.function.arguments,
                    }));
                }
                req.messages.push(Message {
                    role: Role::Assistant,
                    content,
                });
            }
            "tool" => {
                let call_id = m
                    .tool_call_id
                    .ok_or_else(|| invalid("messages", "a tool message needs `tool_call_id`"))?;
                req.messages.push(Message {
                    role: Role::User,
                    content: vec![Part::ToolResult(ToolResult {
                        call_id,
                        content: parts_of(m.content)?,
                        is_error: false,
                    })],
                });
            }
            other => {
                return Err(TranslateError::Unsupported {
                    param: "messages",
                    message: format!(
                        "Messages with role `{other}` cannot be sent to this model's provider."
                    ),
                })
            }
        }
    }
    req.tools = member::<Vec<WireTool>>(obj, "tools")?
        .unwrap_or_default()
        .into_iter()
        .map(|t| Tool {
            name: t.function.name,
            description: t.function.description,
            parameters: t
                .function
                .parameters
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        })
        .collect();
    req.tool_choice = match member::<WireToolChoice>(obj, "tool_choice")? {
        None => None,
        Some(WireToolChoice::Mode(m)) => Some(match m.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => return Err(invalid("tool_choice", format!("unknown mode `{m}`"))),
        }),
        Some(WireToolChoice::Named { function }) => Some(ToolChoice::Tool(function.name)),
    };
    req.parallel_tool_calls = member(obj, "parallel_tool_calls")?;
    let legacy: Option<u64> = member(obj, "max_tokens")?;
    let current: Option<u64> = member(obj, "max_completion_tokens")?;
    req.max_tokens = current.or(legacy);
    req.temperature = member(obj, "temperature")?;
    req.top_p = member(obj, "top_p")?;
    req.stop = match member::<WireStop>(obj, "stop")? {
        None => Vec::new(),
        Some(WireStop::One(s)) => vec![s],
        Some(WireStop::Many(v)) => v,
    };
    req.include_usage = member::<WireStreamOptions>(obj, "stream_options")?
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    req.user = member(obj, "user")?;
    req.reasoning = match member::<String>(obj, "reasoning_effort")? {
        None => None,
        Some(e) => Some(Reasoning::from_effort_name(&e).ok_or_else(|| {
            invalid(
                "reasoning_effort",
                format!("unknown effort `{e}` (none, minimal, low, medium or high)"),
            )
        })?),
    };
    // Members that change what the client gets back cannot be dropped silently.
    req.response_format = match member::<Value>(obj, "response_format")? {
        None => None,
        Some(f) => match f["type"].as_str() {
            Some("text") => None,
            Some("json_object") => Some(ResponseFormat::JsonObject),
            Some("json_schema") => Some(ResponseFormat::JsonSchema {
                name: f["json_schema"]["name"]
                    .as_str()
                    .unwrap_or("response")
                    .to_owned(),
                schema: f["json_schema"]["schema"].clone(),
            }),
            _ => return Err(invalid("response_format", "unknown `type`")),
        },
    };
    if member::<bool>(obj, "logprobs")? == Some(true) {
        return Err(TranslateError::Unsupported {
            param: "logprobs",
            message: "This model's provider does not return log probabilities.".to_owned(),
        });
    }
    if member::<u64>(obj, "n")?.is_some_and(|n| n > 1) {
        return Err(TranslateError::Unsupported {
            param: "n",
            message: "This model's provider returns one choice per request: `n` must be 1."
                .to_owned(),
        });
    }
    Ok(req)
}

fn content_value(parts: &[&Part]) -> Value {
    if let [Part::Text(t)] = parts {
        return Value::String(t.clone());
    }
    Value::Array(
        parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(json!({"type": "text", "text": t})),
                Part::Image(i) => {
                    Some(json!({"type": "image_url", "image_url": {"url": i.to_url()}}))
                }
                _ => None,
            })
            .collect(),
    )
}

/// The body for an OpenAI-family provider. Streams always ask for usage.
pub fn request_to_wire(req: &ChatRequest) -> Vec<u8> {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    match req.system.as_slice() {
        [] => {}
        [one] => messages.push(json!({"role": "system", "content": one})),
        many => messages.push(json!({"role": "system", "content": many
            .iter()
            .map(|t| json!({"type": "text", "text": t}))
            .collect::<Vec<_>>()})),
    }
    for m in &req.messages {
        match m.role {
            Role::User => {
                let mut rest = Vec::new();
                for p in &m.content {
                    match p {
                        Part::ToolResult(r) => {
                            let parts: Vec<&Part> = r
                                .content
                                .iter()
                                .filter(|p| matches!(p, Part::Text(_)))
                                .collect();
                            let text = match parts.as_slice() {
                                [] => Value::String(String::new()),
                                _ => content_value(&parts),
                            };
                            messages.push(
                                json!({"role": "tool", "tool_call_id": r.call_id, "content": text}),
                            );
                            // Images returned by a tool can only travel as user content.
                            rest.extend(r.content.iter().filter(|p| matches!(p, Part::Image(_))));
                        }
                        Part::Text(_) | Part::Image(_) => rest.push(p),
                        _ => {}
                    }
                }
                if !rest.is_empty() {
                    messages.push(json!({"role": "user", "content": content_value(&rest)}));
                }
            }
            Role::Assistant => messages.push(Value::Object(assistant_message(&m.content))),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), req.model.clone().into());
    body.insert("messages".into(), Value::Array(messages));
    if !req.tools.is_empty() {
        body.insert(
            "tools".into(),
            req.tools
                .iter()
                .map(|t| json!({"type": "function", "function": tool_object(t, "parameters")}))
                .collect(),
        );
        if let Some(p) = req.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), p.into());
        }
    }
    if let Some(c) = &req.tool_choice {
        body.insert(
            "tool_choice".into(),
            match c {
                ToolChoice::Auto => "auto".into(),
                ToolChoice::None => "none".into(),
                ToolChoice::Required => "required".into(),
                ToolChoice::Tool(n) => json!({"type": "function", "function": {"name": n}}),
            },
        );
    }
    if let Some(n) = req.max_tokens {
        body.insert("max_completion_tokens".into(), n.into());
    }
    if let Some(e) = req.reasoning.and_then(Reasoning::effort) {
        body.insert("reasoning_effort".into(), e.as_str().into());
    }
    insert_sampling(&mut body, req, "stop");
    match &req.response_format {
        None => {}
        Some(ResponseFormat::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(ResponseFormat::JsonSchema { name, schema }) => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}}),
            );
        }
    }
    if let Some(u) = &req.user {
        body.insert("user".into(), u.clone().into());
    }
    if req.stream {
        body.insert("stream".into(), true.into());
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    to_bytes(&Value::Object(body))
}

// ---------------------------------------------------------------------------------------------
// Responses and errors
// ---------------------------------------------------------------------------------------------

/// An assistant message: its text joined (`null` when it has none) and its tool calls.
fn assistant_message(content: &[Part]) -> Map<String, Value> {
    let text: String = content
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let calls: Vec<Value> = content
        .iter()
        .filter_map(|p| match p {
            Part::ToolCall(c) => Some(json!({"id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments}})),
            _ => None,
        })
        .collect();
    let mut msg = Map::new();
    msg.insert("role".into(), "assistant".into());
    msg.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), calls.into());
    }
    msg
}

fn stop_reason(finish: &str) -> StopReason {
    match finish {
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::Refusal,
        _ => StopReason::EndTurn,
    }
}

fn finish_reason(s: StopReason) -> &'static str {
    match s {
        StopReason::EndTurn | StopReason::StopSequence | StopReason::PauseTurn => "stop",
        StopReason::MaxTokens => "length",
        StopReason::ToolUse => "tool_calls",
        StopReason::Refusal => "content_filter",
    }
}

/// A provider's `chat.completion` body.
pub fn response_from_wire(body: &[u8]) -> Result<ChatResponse, TranslateError> {
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| TranslateError::UpstreamBody(e.to_string()))?;
    let choice = wire
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| TranslateError::UpstreamBody("no choices".to_owned()))?;
    let mut content = Vec::new();
    let m = choice.message;
    if let Some(r) = m.reasoning_content.filter(|r| !r.is_empty()) {
        content.push(Part::Thinking {
            text: r,
            signature: None,
        });
    }
    if let Some(t) = m.content.filter(|t| !t.is_empty()) {
        content.push(Part::Text(t));
    }
    let refused = m.refusal.as_ref().is_some_and(|r| !r.is_empty());
    if let Some(r) = m.refusal.filter(|r| !r.is_empty()) {
        content.push(Part::Text(r));
    }
    for c in m.tool_calls.unwrap_or_default() {
        content.push(Part::ToolCall(ToolCall {
            id: c.id,
            name: c.function.name,
            arguments: c.function.arguments,
        }));
    }
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        content,
        stop_reason: if refused {
            Some(StopReason::Refusal)
        } else {
            choice.finish_reason.as_deref().map(stop_reason)
        },
        stop_sequence: None,
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
    })
}

fn usage_value(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// A `chat.completion` body for an OpenAI client.
pub fn response_to_wire(r: &ChatResponse, created: u64) -> Vec<u8> {
    let mut message = assistant_message(&r.content);
    if message["content"].is_null() && !message.contains_key("tool_calls") {
        message.insert("content".into(), "".into());
    }
    message.insert("refusal".into(), Value::Null);
    let reasoning: String = r
        .content
        .iter()
        .filter_map(|p| match p {
            Part::Thinking { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), reasoning.into());
    }
    to_bytes(&json!({
        "id": r.id,
        "object": "chat.completion",
        "created": created,
        "model": r.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(r.stop_reason.unwrap_or(StopReason::EndTurn)),
        }],
        "usage": usage_value(&r.usage),
    }))
}

/// An OpenAI-format error body, when `body` is one.
pub fn error_from_wire(status: u16, body: &[u8]) -> Option<ErrorInfo> {
    let e = serde_json::from_slice::<WireErrorEnvelope>(body)
        .ok()?
        .error;
    Some(ErrorInfo {
        status,
        kind: e.kind,
        message: e.message,
    })
}

fn error_value(e: &ErrorInfo) -> Value {
    let fallback = tollgate_core::ApiError::Upstream(e.status)
        .class()
        .openai_type;
    json!({"error": {
        "message": e.message,
        "type": e.kind.as_deref().unwrap_or(fallback),
        "param": null,
        "code": null,
    }})
}

/// An OpenAI-format error body.
pub fn error_to_wire(e: &ErrorInfo) -> Vec<u8> {
    to_bytes(&error_value(e))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// The block the decoder has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool(usize),
}

/// Upstream `chat.completion.chunk` events → hub events, numbering blocks as they start.
///
/// Tool-call blocks stay open until text follows or the choice finishes, so a provider that
/// interleaves the arguments of parallel calls loses none of them.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    /// Open blocks, in start order: (block index, kind).
    open: Vec<(usize, Open)>,
    next_index: usize,
    /// OpenAI tool-call index → block index.
    tools: HashMap<usize, usize>,
    stop_reason: Option<StopReason>,
    usage: Option<Usage>,
    finished: bool,
}

impl StreamDecoder {
    /// Usage reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn open(&mut self, kind: Open, block: BlockKind, out: &mut Vec<StreamEvent>) -> usize {
        match (self.open.last(), kind) {
            (Some(&(index, open)), _) if open == kind => return index,
            // A new tool call leaves the other calls open.
            (_, Open::Tool(_)) => {
                let (tools, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
                    .into_iter()
                    .partition(|(_, k)| matches!(k, Open::Tool(_)));
                for (index, _) in rest {
                    out.push(StreamEvent::BlockStop { index });
                }
                self.open = tools;
            }
            _ => self.close(out),
        }
        let index = self.next_index;
        self.next_index += 1;
        self.open.push((index, kind));
        out.push(StreamEvent::BlockStart { index, block });
        index
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        for (index, _) in std::mem::take(&mut self.open) {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    /// Decodes one event's `data`.
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        if data == b"[DONE]" {
            self.finish(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<WireChunk>(data) else {
            tracing::debug!("Skipped an unreadable upstream stream event");
            return;
        };
        if let Some(e) = chunk.error {
            self.finished = true;
            out.push(StreamEvent::Error(ErrorInfo {
                status: 500,
                kind: e.kind,
                message: e.message,
            }));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.id.clone().unwrap_or_default(),
                model: chunk.model.clone().unwrap_or_default(),
                usage: Usage::default(),
            });
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(d) = choice.delta {
                if let Some(r) = d.reasoning_content.filter(|r| !r.is_empty()) {
                    let index = self.open(Open::Thinking, BlockKind::Thinking, out);
                    out.push(StreamEvent::Delta {
                        index,
                        delta: Delta::Thinking(r),
                    });
                }
                for t in [d.content, d.refusal].into_iter().flatten() {
                    if !t.is_empty() {
                        let index = self.open(Open::Text, BlockKind::Text, out);
                        out.push(StreamEvent::Delta {
                            index,
                            delta: Delta::Text(t),
                        });
                    }
                }
                for call in d.tool_calls.unwrap_or_default() {
                    let (name, args) = call
                        .function
                        .map(|f| (f.name, f.arguments))
                        .unwrap_or((None, None));
                    let index = match self.tools.get(&call.index) {
                        Some(i) => *i,
                        None => {
                            let block = BlockKind::ToolCall {
                                id: call.id.unwrap_or_default(),
                                name: name.unwrap_or_default(),
                            };
                            let i = self.open(Open::Tool(call.index), block, out);
                            self.tools.insert(call.index, i);
                            i
                        }
                    };
                    if let Some(a) = args.filter(|a| !a.is_empty()) {
                        out.push(StreamEvent::Delta {
                            index,
                            delta: Delta::ToolArguments(a),
                        });
                    }
                }
            }
            if let Some(f) = choice.finish_reason {
                self.close(out);
                self.stop_reason = Some(stop_reason(&f));
            }
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u.into());
        }
    }

    /// Ends the message: at `[DONE]`, or at the end of a stream that finished without one.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished || !self.started || self.stop_reason.is_none() {
            return;
        }
        self.finished = true;
        self.close(out);
        out.push(StreamEvent::Finish {
            stop_reason: self.stop_reason,
            stop_sequence: None,
            usage: self.usage,
        });
        out.push(StreamEvent::Stop);
    }
}

/// Hub events → `chat.completion.chunk` events for an OpenAI client.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    /// Block index → tool-call index.
    tools: HashMap<usize, usize>,
    ended: bool,
}

impl StreamEncoder {
    /// An encoder; `include_usage` adds the usage chunk the client asked for.
    pub fn new(include_usage: bool, created: u64) -> Self {
        Self {
            id: String::new(),
            model: String::new(),
            created,
            include_usage,
            started: false,
            tools: HashMap::new(),
            ended: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<Frame<'_>>) {
        let v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        out.push(Frame::json(v));
    }

    fn start(&mut self, out: &mut Vec<Frame<'_>>) {
        if !self.started {
            self.started = true;
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
    }

    /// Encodes one hub event.
    pub fn encode(&mut self, e: StreamEvent, out: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        match e {
            StreamEvent::Start { id, model, .. } => {
                self.id = id;
                self.model = model;
                self.start(out);
            }
            StreamEvent::BlockStart {
                index,
                block: BlockKind::ToolCall { id, name },
            } => {
                self.start(out);
                let n = self.tools.len();
                self.tools.insert(index, n);
                self.chunk(
                    json!({"tool_calls": [{"index": n, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                    out,
                );
            }
            StreamEvent::BlockStart { .. } | StreamEvent::BlockStop { .. } => {}
            StreamEvent::Delta { index, delta } => {
                self.start(out);
                let d = match delta {
                    Delta::Text(t) => json!({"content": t}),
                    Delta::Thinking(t) => json!({"reasoning_content": t}),
                    Delta::ToolArguments(a) => match self.tools.get(&index) {
                        Some(n) => {
                            json!({"tool_calls": [{"index": n, "function": {"arguments": a}}]})
                        }
                        None => return,
                    },
                    Delta::Signature(_) => return,
                };
                self.chunk(d, None, out);
            }
            StreamEvent::Finish {
                stop_reason, usage, ..
            } => {
                self.start(out);
                self.chunk(
                    json!({}),
                    Some(finish_reason(stop_reason.unwrap_or(StopReason::EndTurn))),
                    out,
                );
                if self.include_usage {
                    let v = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_value(&usage.unwrap_or_default()),
                    });
                    out.push(Frame::json(v));
                }
            }
            StreamEvent::Stop => {
                self.ended = true;
                out.push(Frame::fixed(stream::DONE));
            }
            StreamEvent::Error(e) => {
                self.ended = true;
                out.push(Frame::json(error_value(&e)));
            }
        }
    }
}
