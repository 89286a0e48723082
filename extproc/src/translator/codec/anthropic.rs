//! Anthropic Messages ⇄ hub: requests (`system`, content blocks, `tools`, `tool_choice`),
//! `message` bodies, `{"type":"error",…}` bodies, and the `message_start` …
//! `message_stop` event stream.
//!
//! Stream encoding follows the official SDK's habits: exactly one `message_start`, blocks
//! indexed from 0 and each started before its deltas, and the final usage (input and cache
//! counts included) on `message_delta`, which the SDK lets overwrite `message_start`'s.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::error::anthropic_type;
use tollgate_core::usage::AnthropicUsage;
use tollgate_core::Usage;

use super::{insert_sampling, member, merged_turns, start_request, to_bytes, tool_object};
use crate::stream::Frame;
use crate::translator::error::{invalid, TranslateError};
use crate::translator::hub::{
    BlockKind, CacheAt, ChatRequest, ChatResponse, Delta, ErrorInfo, Image, Message, Part,
    Reasoning, Role, StopReason, StreamEvent, Tool, ToolCall, ToolChoice, ToolResult,
    MIN_THINKING_BUDGET,
};
use crate::translator::json::RawObject;

/// The `anthropic_version` of Messages bodies sent to Vertex AI.
pub const VERTEX_VERSION: &str = "vertex-2023-10-16";

/// A Messages body as Vertex AI takes it (`rawPredict`): no `model` (it is in the path), and
/// `anthropic_version` in the body.
pub fn for_vertex(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Map<String, Value>>(body) {
        Ok(mut m) => {
            m.remove("model");
            m.insert("anthropic_version".into(), VERTEX_VERSION.into());
            to_bytes(&Value::Object(m))
        }
        // We wrote or validated this body: it is an object.
        Err(_) => body.to_vec(),
    }
}

/// `max_tokens` is required by Anthropic; this is sent when an OpenAI client gave none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    content: WireContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Blocks(Vec<WireBlock>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    Image {
        source: WireSource,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<WireContent>,
        #[serde(default)]
        is_error: bool,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireSource {
    Base64 {
        media_type: String,
        data: String,
    },
    Url {
        url: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireSystem {
    Text(String),
    Blocks(Vec<WireSystemBlock>),
}

#[derive(Deserialize)]
struct WireSystemBlock {
    #[serde(default)]
    text: String,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Deserialize)]
struct WireToolChoice {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct WireThinking {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireMetadata {
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct WireErrorEnvelope {
    #[serde(rename = "type")]
    kind: String,
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: WireStartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: WireBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: WireDelta,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: WireMessageDelta,
        #[serde(default)]
        usage: Option<AnthropicUsage>,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireStartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessageDelta {
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

fn unsupported_block() -> TranslateError {
    TranslateError::Unsupported {
        param: "messages",
        message: "Only text, image, tool_use, tool_result and thinking blocks can be sent to this model's provider.".to_owned(),
    }
}

fn part_of(b: WireBlock) -> Result<Part, TranslateError> {
    Ok(match b {
        WireBlock::Text { text } => Part::Text(text),
        WireBlock::Image { source } => Part::Image(match source {
            WireSource::Base64 { media_type, data } => Image::Base64 { media_type, data },
            WireSource::Url { url } => Image::Url(url),
            WireSource::Other => return Err(unsupported_block()),
        }),
        WireBlock::ToolUse { id, name, input } => Part::ToolCall(ToolCall {
            id,
            name,
            arguments: if input.is_null() {
                "{}".to_owned()
            } else {
                input.to_string()
            },
        }),
        WireBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => Part::ToolResult(ToolResult {
            call_id: tool_use_id,
            content: match content {
                None => Vec::new(),
                Some(c) => parts_of(c)?,
            },
            is_error,
        }),
        WireBlock::Thinking {
            thinking,
            signature,
        } => Part::Thinking {
            text: thinking,
            signature,
        },
        WireBlock::RedactedThinking { data } => Part::RedactedThinking { data },
        WireBlock::Other => return Err(unsupported_block()),
    })
}

fn parts_of(c: WireContent) -> Result<Vec<Part>, TranslateError> {
    match c {
        WireContent::Text(t) => Ok(vec![Part::Text(t)]),
        WireContent::Blocks(b) => b.into_iter().map(part_of).collect(),
    }
}

/// The `cache_control` breakpoints on message blocks, as [`Part::CachePoint`]s after their
/// blocks (each block is one part, [`parts_of`]). Read in a second, shallow pass only when
/// the messages mention `cache_control` at all.
fn cache_points_in_messages(
    obj: &RawObject<'_>,
    messages: &mut [Message],
) -> Result<(), TranslateError> {
    #[derive(Deserialize)]
    struct Scan {
        #[serde(default)]
        content: Option<ScanContent>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ScanContent {
        Blocks(Vec<ScanBlock>),
        Other(serde::de::IgnoredAny),
    }
    #[derive(Deserialize)]
    struct ScanBlock {
        #[serde(default)]
        cache_control: Option<Value>,
    }
    if !obj
        .get("messages")
        .is_some_and(|m| m.get().contains("cache_control"))
    {
        return Ok(());
    }
    let scanned = member::<Vec<Scan>>(obj, "messages")?.unwrap_or_default();
    for (m, scan) in messages.iter_mut().zip(scanned) {
        let Some(ScanContent::Blocks(blocks)) = scan.content else {
            continue;
        };
        // From the last, so the positions of earlier blocks still hold.
        for (i, b) in blocks.iter().enumerate().rev() {
            if b.cache_control.as_ref().is_some_and(|c| !c.is_null()) && i < m.content.len() {
                m.content.insert(i + 1, Part::CachePoint);
            }
        }
    }
    Ok(())
}

/// A client's Messages request, read from its members.
pub fn request_from_wire(
    obj: &RawObject<'_>,
    model: &str,
    stream: bool,
) -> Result<ChatRequest, TranslateError> {
    let (wire, mut req) = start_request::<WireMessage>(obj, model, stream)?;
    for m in wire {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(invalid("messages", format!("unknown role `{other}`"))),
        };
        req.messages.push(Message {
            role,
            content: parts_of(m.content)?,
        });
    }
    req.system = match member::<WireSystem>(obj, "system")? {
        None => Vec::new(),
        Some(WireSystem::Text(t)) => vec![t],
        Some(WireSystem::Blocks(b)) => b
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                if b.cache_control.as_ref().is_some_and(|c| !c.is_null()) {
                    req.cache_points.push(CacheAt::System(i));
                }
                b.text
            })
            .collect(),
    };
    cache_points_in_messages(obj, &mut req.messages)?;
    for (i, t) in member::<Vec<WireTool>>(obj, "tools")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if t.cache_control.as_ref().is_some_and(|c| !c.is_null()) {
            req.cache_points.push(CacheAt::Tool(i));
        }
        if t.kind.as_deref().is_some_and(|k| k != "custom") {
            return Err(TranslateError::Unsupported {
                param: "tools",
                message: format!(
                    "The server tool `{}` cannot be used with this model's provider.",
                    t.name
                ),
            });
        }
        req.tools.push(Tool {
            name: t.name,
            description: t.description,
            parameters: t
                .input_schema
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
    }
    if let Some(c) = member::<WireToolChoice>(obj, "tool_choice")? {
        req.tool_choice = Some(match c.kind.as_str() {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Required,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(
                c.name
                    .ok_or_else(|| invalid("tool_choice", "`name` is required"))?,
            ),
            other => return Err(invalid("tool_choice", format!("unknown type `{other}`"))),
        });
        req.parallel_tool_calls = c.disable_parallel_tool_use.map(|d| !d);
    }
    req.max_tokens = member(obj, "max_tokens")?;
    req.temperature = member(obj, "temperature")?;
    req.top_p = member(obj, "top_p")?;
    req.stop = member(obj, "stop_sequences")?.unwrap_or_default();
    req.user = member::<WireMetadata>(obj, "metadata")?.and_then(|m| m.user_id);
    req.top_k = member(obj, "top_k")?;
    req.reasoning = match member::<WireThinking>(obj, "thinking")? {
        None => None,
        Some(t) => match (t.kind.as_str(), t.budget_tokens) {
            ("enabled", Some(b)) => Some(Reasoning::Budget(b)),
            ("enabled", None) => {
                return Err(invalid(
                    "thinking",
                    "`budget_tokens` is required when enabled",
                ))
            }
            ("disabled", _) => Some(Reasoning::Off),
            (other, _) => {
                return Err(invalid(
                    "thinking",
                    format!("unknown type `{other}` (enabled or disabled)"),
                ))
            }
        },
    };
    Ok(req)
}

fn block_value(p: &Part) -> Option<Value> {
    Some(match p {
        Part::Text(t) if t.is_empty() => return None,
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(Image::Url(url)) => {
            json!({"type": "image", "source": {"type": "url", "url": url}})
        }
        Part::Image(Image::Base64 { media_type, data }) => json!({"type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}}),
        Part::ToolCall(c) => json!({"type": "tool_use", "id": c.id, "name": c.name,
        "input": if c.arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str::<Value>(&c.arguments).unwrap_or_else(|_| json!({}))
        }}),
        Part::ToolResult(r) => {
            let mut v = Map::new();
            v.insert("type".into(), "tool_result".into());
            v.insert("tool_use_id".into(), r.call_id.clone().into());
            let blocks: Vec<Value> = r.content.iter().filter_map(block_value).collect();
            v.insert(
                "content".into(),
                match r.content.as_slice() {
                    [Part::Text(t)] => t.clone().into(),
                    _ => blocks.into(),
                },
            );
            if r.is_error {
                v.insert("is_error".into(), true.into());
            }
            Value::Object(v)
        }
        Part::Thinking { text, signature } => json!({"type": "thinking", "thinking": text,
            "signature": signature.clone().unwrap_or_default()}),
        Part::RedactedThinking { data } => json!({"type": "redacted_thinking", "data": data}),
        // Only Anthropic clients set breakpoints, and their requests reach Anthropic (and
        // Vertex's Claude) as they came, `cache_control` included: never through here.
        Part::CachePoint => return None,
    })
}

/// The body for Anthropic: consecutive turns of one role merged (OpenAI sends one message
/// per tool result), empty turns dropped, `max_tokens` always present.
pub fn request_to_wire(req: &ChatRequest) -> Vec<u8> {
    // `block_value` cannot fail: the error type is only `merged_turns`'s.
    let messages = merged_turns(&req.messages, |p| Ok(block_value(p))).unwrap_or_default();
    let mut body = Map::new();
    body.insert("model".into(), req.model.clone().into());
    let budget = req.reasoning.and_then(Reasoning::budget_tokens);
    // Anthropic counts thinking inside `max_tokens` and wants the budget below it: without a
    // client limit the answer keeps the default room above the budget; under a client limit
    // the budget shrinks, and thinking stays off when less than the minimum budget fits.
    let max_tokens = match (req.max_tokens, budget) {
        (Some(m), _) => m,
        (None, Some(b)) => b.saturating_add(DEFAULT_MAX_TOKENS),
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    body.insert("max_tokens".into(), max_tokens.into());
    match budget.map(|b| b.min(max_tokens.saturating_sub(1))) {
        Some(b) if b >= MIN_THINKING_BUDGET => {
            body.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": b}),
            );
        }
        _ if req.reasoning == Some(Reasoning::Off) => {
            body.insert("thinking".into(), json!({"type": "disabled"}));
        }
        _ => {}
    }
    match req.system.as_slice() {
        [] => {}
        [one] => {
            body.insert("system".into(), one.clone().into());
        }
        many => {
            body.insert(
                "system".into(),
                many.iter()
                    .map(|t| json!({"type": "text", "text": t}))
                    .collect(),
            );
        }
    }
    body.insert("messages".into(), messages.into());
    if !req.tools.is_empty() {
        body.insert(
            "tools".into(),
            req.tools
                .iter()
                .map(|t| Value::Object(tool_object(t, "input_schema")))
                .collect(),
        );
    }
    let choice = match (&req.tool_choice, req.parallel_tool_calls) {
        (None, Some(false)) if !req.tools.is_empty() => Some(json!({"type": "auto"})),
        (None, _) => None,
        (Some(c), _) => Some(match c {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(n) => json!({"type": "tool", "name": n}),
        }),
    };
    if let Some(mut c) = choice {
        if req.parallel_tool_calls == Some(false) && c["type"] != "none" {
            c["disable_parallel_tool_use"] = true.into();
        }
        body.insert("tool_choice".into(), c);
    }
    insert_sampling(&mut body, req, "stop_sequences");
    if let Some(u) = &req.user {
        body.insert("metadata".into(), json!({"user_id": u}));
    }
    if let Some(k) = req.top_k {
        body.insert("top_k".into(), k.into());
    }
    if req.stream {
        body.insert("stream".into(), true.into());
    }
    to_bytes(&Value::Object(body))
}

// ---------------------------------------------------------------------------------------------
// Responses and errors
// ---------------------------------------------------------------------------------------------

fn stop_reason(s: &str) -> StopReason {
    match s {
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "refusal" => StopReason::Refusal,
        "pause_turn" => StopReason::PauseTurn,
        _ => StopReason::EndTurn,
    }
}

fn stop_reason_name(s: StopReason) -> &'static str {
    match s {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::Refusal => "refusal",
        StopReason::PauseTurn => "pause_turn",
    }
}

/// A provider's `message` body.
pub fn response_from_wire(body: &[u8]) -> Result<ChatResponse, TranslateError> {
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| TranslateError::UpstreamBody(e.to_string()))?;
    Ok(ChatResponse {
        id: wire.id,
        model: wire.model,
        // Blocks we cannot represent (server tool results) are left out.
        content: wire
            .content
            .into_iter()
            .filter_map(|b| part_of(b).ok())
            .collect(),
        stop_reason: wire.stop_reason.as_deref().map(stop_reason),
        stop_sequence: wire.stop_sequence,
        usage: wire.usage.map(Usage::from).unwrap_or_default(),
    })
}

/// Anthropic's `usage`; reasoning reported by the provider (OpenAI's
/// `completion_tokens_details.reasoning_tokens`, Gemini's `thoughtsTokenCount`) goes in
/// `output_tokens_details.thinking_tokens`, as Anthropic's own API carries it.
fn usage_value(u: &Usage) -> Value {
    let mut v = json!({
        "input_tokens": u.input_tokens.saturating_sub(u.cache_read_tokens + u.cache_write_tokens),
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
    });
    if u.reasoning_tokens > 0 {
        v["output_tokens_details"] = json!({"thinking_tokens": u.reasoning_tokens});
    }
    v
}

/// A `message` body for an Anthropic client.
pub fn response_to_wire(r: &ChatResponse) -> Vec<u8> {
    let content: Vec<Value> = r.content.iter().filter_map(block_value).collect();
    to_bytes(&json!({
        "id": r.id,
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": stop_reason_name(r.stop_reason.unwrap_or(StopReason::EndTurn)),
        "stop_sequence": r.stop_sequence,
        "usage": usage_value(&r.usage),
    }))
}

/// The HTTP status Anthropic uses for an error type (for errors inside a stream).
fn status_of(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// An Anthropic-format error body, when `body` is one.
pub fn error_from_wire(status: u16, body: &[u8]) -> Option<ErrorInfo> {
    let env = serde_json::from_slice::<WireErrorEnvelope>(body).ok()?;
    (env.kind == "error").then_some(ErrorInfo {
        status,
        kind: env.error.kind,
        message: env.error.message,
    })
}

fn error_value(e: &ErrorInfo) -> Value {
    json!({"type": "error", "error": {"type": anthropic_type(e.status), "message": e.message}})
}

/// An Anthropic-format error body.
pub fn error_to_wire(e: &ErrorInfo) -> Vec<u8> {
    to_bytes(&error_value(e))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// Upstream Messages events → hub events, with usage merged across `message_start` and
/// `message_delta`.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    usage: Option<Usage>,
    finished: bool,
}

impl StreamDecoder {
    /// Usage reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Decodes one event's `data` (its `type` member names the event, as the `event:` line
    /// does).
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) {
        self.event(serde_json::from_slice::<WireEvent>(data).ok(), out);
    }

    /// Decodes one event read from `data` (its bytes, or its value parsed already).
    pub fn read<'de, D: serde::Deserializer<'de>>(&mut self, data: D, out: &mut Vec<StreamEvent>) {
        self.event(WireEvent::deserialize(data).ok(), out);
    }

    fn event(&mut self, event: Option<WireEvent>, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        let Some(event) = event else {
            tracing::debug!("Skipped an unreadable upstream stream event");
            return;
        };
        match event {
            WireEvent::MessageStart { message } => {
                let usage = message.usage.map(Usage::from).unwrap_or_default();
                self.usage = Some(usage);
                out.push(StreamEvent::Start {
                    id: message.id,
                    model: message.model,
                    usage,
                });
            }
            WireEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let (block, first) = match content_block {
                    WireBlock::Text { text } => (BlockKind::Text, Some(Delta::Text(text))),
                    WireBlock::ToolUse { id, name, .. } => (BlockKind::ToolCall { id, name }, None),
                    WireBlock::Thinking { thinking, .. } => {
                        (BlockKind::Thinking, Some(Delta::Thinking(thinking)))
                    }
                    WireBlock::RedactedThinking { data } => {
                        (BlockKind::RedactedThinking { data }, None)
                    }
                    // Server tool blocks have no counterpart; a text block keeps indices dense.
                    _ => (BlockKind::Text, None),
                };
                out.push(StreamEvent::BlockStart { index, block });
                if let Some(d) = first
                    .filter(|d| !matches!(d, Delta::Text(t) | Delta::Thinking(t) if t.is_empty()))
                {
                    out.push(StreamEvent::Delta { index, delta: d });
                }
            }
            WireEvent::ContentBlockDelta { index, delta } => {
                let delta = match delta {
                    WireDelta::TextDelta { text } => Delta::Text(text),
                    WireDelta::InputJsonDelta { partial_json } => {
                        Delta::ToolArguments(partial_json)
                    }
                    WireDelta::ThinkingDelta { thinking } => Delta::Thinking(thinking),
                    WireDelta::SignatureDelta { signature } => Delta::Signature(signature),
                    WireDelta::Other => return,
                };
                if matches!(&delta, Delta::Text(t) | Delta::ToolArguments(t) | Delta::Thinking(t) if t.is_empty())
                {
                    return;
                }
                out.push(StreamEvent::Delta { index, delta });
            }
            WireEvent::ContentBlockStop { index } => out.push(StreamEvent::BlockStop { index }),
            WireEvent::MessageDelta { delta, usage } => {
                let mut total = self.usage.unwrap_or_default();
                if let Some(u) = usage {
                    u.merge_into(&mut total);
                }
                self.usage = Some(total);
                out.push(StreamEvent::Finish {
                    stop_reason: delta.stop_reason.as_deref().map(stop_reason),
                    stop_sequence: delta.stop_sequence,
                    usage: Some(total),
                });
            }
            WireEvent::MessageStop => {
                self.finished = true;
                out.push(StreamEvent::Stop);
            }
            WireEvent::Error { error } => {
                self.finished = true;
                let status = status_of(error.kind.as_deref().unwrap_or(""));
                out.push(StreamEvent::Error(ErrorInfo {
                    status,
                    kind: error.kind,
                    message: error.message,
                }));
            }
            WireEvent::Other => {}
        }
    }
}

/// Hub events → Messages events for an Anthropic client. Blocks are renumbered 0, 1, 2… in
/// the order they start, whatever indices the hub events carry, so the client's accumulator
/// never sees a gap; and they go out strictly one after the other (each `content_block_stop`
/// before the next `content_block_start`), as Anthropic streams them: a block that starts
/// while another is on the wire (an OpenAI provider interleaving the argument fragments of
/// parallel tool calls by `index`) is held, with its deltas, until the blocks before it end.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    started: bool,
    /// The block on the wire: (hub index, client index).
    live: Option<(usize, usize)>,
    /// Blocks started after the live one, in start order, held until it ends.
    held: Vec<Held>,
    /// Hub indices already started (a block is started once).
    seen: Vec<usize>,
    next_index: usize,
    ended: bool,
}

/// A block waiting for the one on the wire to end.
#[derive(Debug)]
struct Held {
    hub: usize,
    block: BlockKind,
    deltas: Vec<Delta>,
    stopped: bool,
}

fn event(name: &'static str, v: Value, out: &mut Vec<Frame<'_>>) {
    out.push(Frame::named(name, v));
}

fn block_start_value(block: BlockKind) -> Value {
    match block {
        BlockKind::Text => json!({"type": "text", "text": ""}),
        BlockKind::ToolCall { id, name } => {
            json!({"type": "tool_use", "id": id, "name": name, "input": {}})
        }
        BlockKind::Thinking => {
            json!({"type": "thinking", "thinking": "", "signature": ""})
        }
        BlockKind::RedactedThinking { data } => {
            json!({"type": "redacted_thinking", "data": data})
        }
    }
}

fn delta_event(index: usize, delta: Delta, out: &mut Vec<Frame<'_>>) {
    let delta = match delta {
        Delta::Text(t) => json!({"type": "text_delta", "text": t}),
        Delta::ToolArguments(a) => {
            json!({"type": "input_json_delta", "partial_json": a})
        }
        Delta::Thinking(t) => json!({"type": "thinking_delta", "thinking": t}),
        Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
    };
    event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": index, "delta": delta}),
        out,
    );
}

fn stop_event(index: usize, out: &mut Vec<Frame<'_>>) {
    event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
        out,
    );
}

impl StreamEncoder {
    fn start(&mut self, id: &str, model: &str, usage: &Usage, out: &mut Vec<Frame<'_>>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut u = usage_value(usage);
        u["output_tokens"] = usage.output_tokens.into();
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": u,
            }}),
            out,
        );
    }

    /// Puts a block on the wire under the next client index.
    fn open_block(&mut self, hub: usize, block: BlockKind, out: &mut Vec<Frame<'_>>) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                "content_block": block_start_value(block)}),
            out,
        );
        self.live = Some((hub, index));
        index
    }

    /// Ends the live block, then sends the held ones in order until one is still open.
    fn stop_live(&mut self, out: &mut Vec<Frame<'_>>) {
        if let Some((_, index)) = self.live.take() {
            stop_event(index, out);
        }
        while !self.held.is_empty() {
            let h = self.held.remove(0);
            let index = self.open_block(h.hub, h.block, out);
            for d in h.deltas {
                delta_event(index, d, out);
            }
            if !h.stopped {
                return;
            }
            self.live = None;
            stop_event(index, out);
        }
    }

    fn close_all(&mut self, out: &mut Vec<Frame<'_>>) {
        for h in &mut self.held {
            h.stopped = true;
        }
        self.stop_live(out);
    }

    /// Encodes one hub event.
    pub fn encode(&mut self, e: StreamEvent, out: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        if !self.started && !matches!(e, StreamEvent::Start { .. } | StreamEvent::Error(_)) {
            self.start("", "", &Usage::default(), out);
        }
        match e {
            StreamEvent::Start { id, model, usage } => self.start(&id, &model, &usage, out),
            StreamEvent::BlockStart { index, block } => {
                if self.seen.contains(&index) {
                    return; // a block twice: keep the indices consistent
                }
                self.seen.push(index);
                if self.live.is_none() && self.held.is_empty() {
                    self.open_block(index, block, out);
                } else {
                    self.held.push(Held {
                        hub: index,
                        block,
                        deltas: Vec::new(),
                        stopped: false,
                    });
                }
            }
            StreamEvent::Delta { index, delta } => match self.live {
                Some((hub, client)) if hub == index => delta_event(client, delta, out),
                // A delta outside its block would break the client's accumulator.
                _ => {
                    if let Some(h) = self.held.iter_mut().find(|h| h.hub == index && !h.stopped) {
                        h.deltas.push(delta);
                    }
                }
            },
            StreamEvent::BlockStop { index } => match self.live {
                Some((hub, _)) if hub == index => self.stop_live(out),
                _ => {
                    if let Some(h) = self.held.iter_mut().find(|h| h.hub == index) {
                        h.stopped = true;
                    }
                }
            },
            StreamEvent::Finish {
                stop_reason,
                stop_sequence,
                usage,
            } => {
                self.close_all(out);
                event(
                    "message_delta",
                    json!({"type": "message_delta",
                        "delta": {
                            "stop_reason": stop_reason_name(stop_reason.unwrap_or(StopReason::EndTurn)),
                            "stop_sequence": stop_sequence,
                        },
                        "usage": usage_value(&usage.unwrap_or_default())}),
                    out,
                );
            }
            StreamEvent::Stop => {
                self.close_all(out);
                self.ended = true;
                event("message_stop", json!({"type": "message_stop"}), out);
            }
            StreamEvent::Error(e) => {
                self.ended = true;
                event("error", error_value(&e), out);
            }
        }
    }
}
