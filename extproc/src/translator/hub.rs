//! The hub: one internal representation of a chat exchange that every client dialect decodes
//! into and every provider dialect encodes from, so a new dialect needs two codecs rather than
//! one translator per pair.
//!
//! Content is a list of blocks, as Anthropic models it (OpenAI's text, tool calls and tool
//! messages map onto blocks one to one). Streams are [`StreamEvent`]s with Anthropic-style
//! block indices: a block is started, gets deltas, and is stopped, one block at a time.

use tollgate_core::Usage;

/// A chat request, as the client meant it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// The provider's model id (the public name until the target is picked).
    pub model: String,
    /// System instructions, in order.
    pub system: Vec<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<Tool>,
    /// How the model must use the tools.
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one turn (`None`: the provider's default).
    pub parallel_tool_calls: Option<bool>,
    /// The most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Sequences that end generation.
    pub stop: Vec<String>,
    /// Whether the response streams.
    pub stream: bool,
    /// Whether a streaming OpenAI client asked for the usage chunk.
    pub include_usage: bool,
    /// An end-user id for the provider's abuse monitoring.
    pub user: Option<String>,
    /// How much the model reasons before answering (`None`: the provider's default).
    pub reasoning: Option<Reasoning>,
    /// The shape the answer must take (`None`: free text).
    pub response_format: Option<ResponseFormat>,
    /// Top-k sampling (Anthropic models).
    pub top_k: Option<u64>,
    /// Prompt-cache breakpoints the client set on system blocks and tools (Anthropic's
    /// `cache_control`); those on message blocks are [`Part::CachePoint`]s.
    pub cache_points: Vec<CacheAt>,
}

/// A prompt-cache breakpoint outside the messages: everything up to and including the named
/// block is cached (Anthropic's `cache_control`, Bedrock's `cachePoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAt {
    /// After system block `n` (0-based, in [`ChatRequest::system`]).
    System(usize),
    /// After tool `n` (0-based, in [`ChatRequest::tools`]).
    Tool(usize),
}

/// A constraint on the answer's shape.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object (OpenAI `json_object`, Gemini `responseMimeType: application/json`).
    JsonObject,
    /// JSON valid under a schema (OpenAI `json_schema`, Gemini `responseSchema`).
    JsonSchema {
        /// The schema's name (OpenAI requires one).
        name: String,
        /// The JSON Schema.
        schema: serde_json::Value,
    },
}

/// How much a model reasons: OpenAI speaks in efforts, Anthropic in token budgets. Each codec
/// reads its own form; the other converts with [`Reasoning::effort`] and
/// [`Reasoning::budget_tokens`], a documented table (docs/COMPATIBILITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reasoning {
    /// An OpenAI-style effort.
    Effort(Effort),
    /// An Anthropic-style budget of thinking tokens.
    Budget(u64),
    /// No reasoning.
    Off,
}

/// OpenAI's `reasoning_effort` levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    /// `minimal`.
    Minimal,
    /// `low`.
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
}

/// The smallest thinking budget Anthropic accepts.
pub const MIN_THINKING_BUDGET: u64 = 1024;

impl Effort {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Effort::Minimal => "minimal",
            Effort::Low => "low",
            Effort::Medium => "medium",
            Effort::High => "high",
        }
    }
}

impl Reasoning {
    /// From OpenAI's `reasoning_effort` (`none` turns reasoning off).
    pub fn from_effort_name(name: &str) -> Option<Reasoning> {
        Some(match name {
            "none" => Reasoning::Off,
            "minimal" => Reasoning::Effort(Effort::Minimal),
            "low" => Reasoning::Effort(Effort::Low),
            "medium" => Reasoning::Effort(Effort::Medium),
            "high" => Reasoning::Effort(Effort::High),
            _ => return None,
        })
    }

    /// As an effort (`None`: off, which OpenAI expresses by leaving the member out).
    /// Budgets below 4,096 tokens are `low`, below 16,384 `medium`, the rest `high`.
    pub fn effort(self) -> Option<Effort> {
        match self {
            Reasoning::Effort(e) => Some(e),
            Reasoning::Budget(b) if b < 4096 => Some(Effort::Low),
            Reasoning::Budget(b) if b < 16_384 => Some(Effort::Medium),
            Reasoning::Budget(_) => Some(Effort::High),
            Reasoning::Off => None,
        }
    }

    /// As a thinking budget (`None`: off): `minimal` 1,024 tokens, `low` 2,048, `medium`
    /// 8,192, `high` 24,576.
    pub fn budget_tokens(self) -> Option<u64> {
        match self {
            Reasoning::Effort(Effort::Minimal) => Some(MIN_THINKING_BUDGET),
            Reasoning::Effort(Effort::Low) => Some(2048),
            Reasoning::Effort(Effort::Medium) => Some(8192),
            Reasoning::Effort(Effort::High) => Some(24_576),
            Reasoning::Budget(b) => Some(b),
            Reasoning::Off => None,
        }
    }
}

/// Who wrote a message (system text lives in [`ChatRequest::system`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user (tool results included).
    User,
    /// The model.
    Assistant,
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its author.
    pub role: Role,
    /// Its blocks, in order.
    pub content: Vec<Part>,
}

/// One content block.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Plain text.
    Text(String),
    /// An image.
    Image(Image),
    /// A tool call made by the model.
    ToolCall(ToolCall),
    /// The result of a tool call, sent back by the client.
    ToolResult(ToolResult),
    /// Visible reasoning, with the provider's signature that must come back unchanged. Gemini
    /// signs the part after its thoughts (`thoughtSignature` on a `functionCall` or text part):
    /// its signature lands on the thinking block before that part, one with empty text when
    /// the model showed no thoughts, and goes back onto the part after it.
    Thinking {
        /// The reasoning text.
        text: String,
        /// The opaque signature.
        signature: Option<String>,
    },
    /// Reasoning the provider encrypted.
    RedactedThinking {
        /// The opaque data.
        data: String,
    },
    /// A prompt-cache breakpoint after the block before it (Anthropic's `cache_control` on
    /// that block, Bedrock's `cachePoint` block); providers without one drop it.
    CachePoint,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    /// A URL the provider fetches.
    Url(String),
    /// Inline bytes.
    Base64 {
        /// e.g. `image/png`.
        media_type: String,
        /// Base64 of the bytes.
        data: String,
    },
}

impl Image {
    /// An image from an OpenAI `image_url.url`: a `data:` URL becomes inline bytes.
    pub fn from_url(url: &str) -> Image {
        if let Some(rest) = url.strip_prefix("data:") {
            if let Some((media_type, data)) = rest.split_once(";base64,") {
                return Image::Base64 {
                    media_type: media_type.to_owned(),
                    data: data.to_owned(),
                };
            }
        }
        Image::Url(url.to_owned())
    }

    /// The image as an OpenAI `image_url.url` (inline bytes as a `data:` URL).
    pub fn to_url(&self) -> String {
        match self {
            Image::Url(u) => u.clone(),
            Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

/// A tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, which its result names.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as JSON text.
    pub arguments: String,
}

/// A tool result.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The id of the call it answers.
    pub call_id: String,
    /// What the tool returned (text and images).
    pub content: Vec<Part>,
    /// Whether the tool failed.
    pub is_error: bool,
}

/// A tool definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// How the model must use tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This tool.
    Tool(String),
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model finished its turn.
    EndTurn,
    /// The token limit was reached.
    MaxTokens,
    /// A stop sequence was generated.
    StopSequence,
    /// The model called tools.
    ToolUse,
    /// The provider refused or filtered the output.
    Refusal,
    /// A long-running turn paused (Anthropic server tools).
    PauseTurn,
}

/// A complete (non-streamed) response.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The provider's response id.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The generated blocks.
    pub content: Vec<Part>,
    /// Why generation stopped.
    pub stop_reason: Option<StopReason>,
    /// The stop sequence that ended it, when known.
    pub stop_sequence: Option<String>,
    /// Token usage.
    pub usage: Usage,
}

/// What kind of block a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockKind {
    /// Text.
    Text,
    /// A tool call; its arguments follow as [`Delta::ToolArguments`].
    ToolCall {
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// Reasoning; text follows as [`Delta::Thinking`], then a [`Delta::Signature`].
    Thinking,
    /// Encrypted reasoning, whole.
    RedactedThinking {
        /// The opaque data.
        data: String,
    },
}

/// A piece of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// More text.
    Text(String),
    /// More of a tool call's JSON arguments.
    ToolArguments(String),
    /// More reasoning.
    Thinking(String),
    /// The reasoning block's signature.
    Signature(String),
}

/// An error reported by the provider, in no dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The HTTP status it came with (or stands for, inside a stream).
    pub status: u16,
    /// The provider's error type, when it gave one.
    pub kind: Option<String>,
    /// The message.
    pub message: String,
}

/// One event of a streamed response. A well-formed stream is: `Start`, then blocks
/// (`BlockStart`, `Delta`s, `BlockStop`, indices counting up from 0), then `Finish`, then
/// `Stop`; an `Error` may end it anywhere.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The response begins.
    Start {
        /// Response id.
        id: String,
        /// The model that answers.
        model: String,
        /// Usage known at the start (the prompt, for Anthropic).
        usage: Usage,
    },
    /// A block begins.
    BlockStart {
        /// Its index.
        index: usize,
        /// Its kind.
        block: BlockKind,
    },
    /// A piece of an open block.
    Delta {
        /// The block's index.
        index: usize,
        /// The piece.
        delta: Delta,
    },
    /// A block ends.
    BlockStop {
        /// Its index.
        index: usize,
    },
    /// Generation ended; `usage` is the complete count when the provider reported one.
    Finish {
        /// Why.
        stop_reason: Option<StopReason>,
        /// The stop sequence, when known.
        stop_sequence: Option<String>,
        /// Final usage.
        usage: Option<Usage>,
    },
    /// The stream is complete.
    Stop,
    /// The provider failed mid-stream.
    Error(ErrorInfo),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_become_inline_images_and_back() {
        let img = Image::from_url("data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(
            img,
            Image::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            }
        );
        assert_eq!(img.to_url(), "data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(
            Image::from_url("https://x.test/a.png"),
            Image::Url("https://x.test/a.png".into())
        );
    }
}
