//! Google Gemini `generateContent` ⇄ hub: requests (`contents`/`parts` with roles `user` and
//! `model`, `systemInstruction`, `tools.functionDeclarations`, `toolConfig`,
//! `generationConfig`), `GenerateContentResponse` bodies, `{"error":{code,message,status}}`
//! bodies, and `streamGenerateContent?alt=sse` streams, where every `data:` event is a whole
//! response chunk and nothing marks the end.
//!
//! Gemini's function calls have no ids: calls read from Gemini get stable ids (`call_<n>`, or
//! the call's own `id` when it has one), and each `functionResponse` takes the id of the
//! earliest unanswered call of its name. Towards Gemini, a result's `name` is the name of the
//! call whose id it answers. `thoughtSignature` rides on hub thinking blocks (see
//! [`Part::Thinking`]).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::error::gemini_status;
use tollgate_core::Usage;

use super::{member, to_bytes};
use crate::stream::Frame;
use crate::translator::call_id;
use crate::translator::error::{invalid, TranslateError};
use crate::translator::hub::{
    BlockKind, ChatRequest, ChatResponse, Delta, ErrorInfo, Image, Message, Part, Reasoning,
    ResponseFormat, Role, StopReason, StreamEvent, Tool, ToolCall, ToolChoice, ToolResult,
};
use crate::translator::json::RawObject;

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireContent {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    parts: Vec<WirePart>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thought: bool,
    #[serde(default)]
    thought_signature: Option<String>,
    #[serde(default)]
    inline_data: Option<WireBlob>,
    #[serde(default)]
    file_data: Option<WireFile>,
    #[serde(default)]
    function_call: Option<WireCall>,
    #[serde(default)]
    function_response: Option<WireFunctionResponse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBlob {
    mime_type: String,
    data: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireFile {
    #[serde(default)]
    mime_type: Option<String>,
    file_uri: String,
}

#[derive(Deserialize)]
struct WireCall {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
struct WireFunctionResponse {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    response: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTool {
    #[serde(default)]
    function_declarations: Option<Vec<WireDeclaration>>,
    /// Google Search, code execution, URL context…: Gemini's own tools.
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDeclaration {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    parameters_json_schema: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireToolConfig {
    #[serde(default)]
    function_calling_config: Option<WireCallingConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCallingConfig {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    allowed_function_names: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireGenerationConfig {
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    candidate_count: Option<u64>,
    #[serde(default)]
    response_mime_type: Option<String>,
    #[serde(default)]
    response_schema: Option<Value>,
    #[serde(default)]
    response_json_schema: Option<Value>,
    #[serde(default)]
    thinking_config: Option<WireThinkingConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireThinkingConfig {
    /// `google-genai` 3.x writes this object's members in snake_case, which Google's proto-JSON
    /// parser accepts too.
    #[serde(default, alias = "thinking_budget")]
    thinking_budget: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Vec<WireCandidate>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default)]
    model_version: String,
    #[serde(default)]
    response_id: String,
    #[serde(default)]
    prompt_feedback: Option<WirePromptFeedback>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

/// `usageMetadata`.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
}

impl From<WireUsage> for Usage {
    /// Gemini counts thoughts apart from the candidates; the hub counts them as output.
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.prompt_token_count + u.tool_use_prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
            cache_read_tokens: u.cached_content_token_count,
            cache_write_tokens: 0,
            reasoning_tokens: u.thoughts_token_count,
            source: Default::default(),
        }
    }
}

#[derive(Deserialize)]
struct WireErrorEnvelope {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    code: u16,
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Call ids
// ---------------------------------------------------------------------------------------------

/// Ids for id-less calls and the results that answer them, in conversation order.
#[derive(Debug, Default)]
struct CallIds {
    prefix: String,
    next: usize,
    /// Calls not answered yet: (name, id).
    pending: Vec<(String, String)>,
}

impl CallIds {
    fn with_prefix(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ..Default::default()
        }
    }

    fn fresh(&mut self) -> String {
        let id = format!("call_{}{}", self.prefix, self.next);
        self.next += 1;
        id
    }

    fn call(&mut self, name: &str, id: Option<String>) -> String {
        let id = id.filter(|i| !i.is_empty()).unwrap_or_else(|| self.fresh());
        self.pending.push((name.to_owned(), id.clone()));
        id
    }

    fn result(&mut self, name: &str, id: Option<String>) -> String {
        if let Some(id) = id.filter(|i| !i.is_empty()) {
            self.pending.retain(|(_, i)| *i != id);
            return id;
        }
        match self.pending.iter().position(|(n, _)| n == name) {
            Some(pos) => self.pending.remove(pos).1,
            None => self.fresh(),
        }
    }
}

/// The prefix of generated call ids in a response: its id, so ids differ between turns.
fn response_prefix(response_id: &str) -> String {
    if response_id.is_empty() {
        String::new()
    } else {
        format!("{response_id}_")
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

fn unsupported_part(param: &'static str) -> TranslateError {
    TranslateError::Unsupported {
        param,
        message: "Only text, image (inlineData, fileData), functionCall and functionResponse parts can be sent to this model's provider.".to_owned(),
    }
}

/// Lowercases every `type` of a schema: the Gemini SDKs send OpenAPI's `"OBJECT"`,
/// `"STRING"`…, JSON Schema (OpenAI, Anthropic) wants `"object"`, `"string"`.
fn lowercase_types(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                match child {
                    Value::String(s) if k == "type" => *s = s.to_ascii_lowercase(),
                    _ => lowercase_types(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(lowercase_types),
        _ => {}
    }
}

/// Hub parts of Gemini parts. Consecutive thoughts make one thinking block; a signature on a
/// thought or on the part after thoughts signs that block (one with no text when there were
/// none). `strict`: a client's request, where a part of an unknown kind is an error; else a
/// provider's response, where it is skipped and a `functionCall`'s signature rides in the
/// call's id instead ([`call_id`]), which OpenAI and Anthropic clients echo unchanged.
fn parts_of(
    parts: Vec<WirePart>,
    ids: &mut CallIds,
    strict: bool,
) -> Result<Vec<Part>, TranslateError> {
    let mut out: Vec<Part> = Vec::with_capacity(parts.len());
    for p in parts {
        if p.thought {
            let text = p.text.unwrap_or_default();
            match out.last_mut() {
                Some(Part::Thinking {
                    text: t,
                    signature: signature @ None,
                }) => {
                    t.push_str(&text);
                    *signature = p.thought_signature;
                }
                _ => out.push(Part::Thinking {
                    text,
                    signature: p.thought_signature,
                }),
            }
            continue;
        }
        let mut call_signature = None;
        if let Some(sig) = p.thought_signature {
            if !strict && p.function_call.is_some() {
                call_signature = Some(sig);
            } else {
                match out.last_mut() {
                    Some(Part::Thinking {
                        signature: signature @ None,
                        ..
                    }) => *signature = Some(sig),
                    _ => out.push(Part::Thinking {
                        text: String::new(),
                        signature: Some(sig),
                    }),
                }
            }
        }
        let part = if let Some(c) = p.function_call {
            let id = ids.call(&c.name, c.id);
            Part::ToolCall(ToolCall {
                id: match call_signature {
                    Some(sig) => call_id::with_signature(&id, &sig),
                    None => id,
                },
                arguments: match c.args {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(a) => a.to_string(),
                },
                name: c.name,
            })
        } else if let Some(r) = p.function_response {
            Part::ToolResult(ToolResult {
                call_id: ids.result(&r.name, r.id),
                content: vec![Part::Text(r.response.to_string())],
                is_error: false,
            })
        } else if let Some(b) = p.inline_data {
            if !b.mime_type.starts_with("image/") {
                if strict {
                    return Err(unsupported_part("contents"));
                }
                continue;
            }
            Part::Image(Image::Base64 {
                media_type: b.mime_type,
                data: b.data,
            })
        } else if let Some(f) = p.file_data {
            if f.mime_type
                .as_deref()
                .is_some_and(|m| !m.starts_with("image/"))
            {
                if strict {
                    return Err(unsupported_part("contents"));
                }
                continue;
            }
            Part::Image(Image::Url(f.file_uri))
        } else if let Some(t) = p.text {
            Part::Text(t)
        } else if strict {
            return Err(unsupported_part("contents"));
        } else {
            continue;
        };
        out.push(part);
    }
    Ok(out)
}

/// A client's `generateContent` request, read from its members (the model and whether it
/// streams come from the path).
pub fn request_from_wire(
    obj: &RawObject<'_>,
    model: &str,
    stream: bool,
) -> Result<ChatRequest, TranslateError> {
    let contents: Vec<WireContent> =
        member(obj, "contents")?.ok_or_else(|| invalid("contents", "it is required"))?;
    if contents.is_empty() {
        return Err(invalid("contents", "at least one content is required"));
    }
    let mut req = ChatRequest {
        model: model.to_owned(),
        stream,
        ..Default::default()
    };
    let mut ids = CallIds::default();
    for c in contents {
        let role = match c.role.as_deref() {
            None | Some("user" | "function") => Role::User,
            Some("model") => Role::Assistant,
            Some(other) => return Err(invalid("contents", format!("unknown role `{other}`"))),
        };
        req.messages.push(Message {
            role,
            content: parts_of(c.parts, &mut ids, true)?,
        });
    }
    // The SDKs may send `systemInstruction` with role `user`: only its text counts.
    if let Some(s) = member::<WireContent>(obj, "systemInstruction")? {
        req.system = s.parts.into_iter().filter_map(|p| p.text).collect();
    }
    for t in member::<Vec<WireTool>>(obj, "tools")?.unwrap_or_default() {
        if let Some(name) = t.other.keys().next() {
            return Err(TranslateError::Unsupported {
                param: "tools",
                message: format!(
                    "The Gemini tool `{name}` cannot be used with this model's provider."
                ),
            });
        }
        for d in t.function_declarations.unwrap_or_default() {
            let mut parameters = d
                .parameters_json_schema
                .or(d.parameters)
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            lowercase_types(&mut parameters);
            req.tools.push(Tool {
                name: d.name,
                description: d.description,
                parameters,
            });
        }
    }
    if let Some(c) =
        member::<WireToolConfig>(obj, "toolConfig")?.and_then(|t| t.function_calling_config)
    {
        req.tool_choice = match c.mode.as_deref() {
            None | Some("MODE_UNSPECIFIED") => None,
            Some("AUTO") => Some(ToolChoice::Auto),
            Some("NONE") => Some(ToolChoice::None),
            Some("ANY" | "VALIDATED") => Some(match c.allowed_function_names.as_slice() {
                [one] => ToolChoice::Tool(one.clone()),
                _ => ToolChoice::Required,
            }),
            Some(other) => {
                return Err(invalid(
                    "toolConfig",
                    format!("unknown functionCallingConfig.mode `{other}`"),
                ))
            }
        };
    }
    let g = member::<WireGenerationConfig>(obj, "generationConfig")?.unwrap_or_default();
    if g.candidate_count.is_some_and(|n| n > 1) {
        return Err(TranslateError::Unsupported {
            param: "generationConfig",
            message: "This model's provider returns one candidate per request: `candidateCount` must be 1.".to_owned(),
        });
    }
    req.temperature = g.temperature;
    req.top_p = g.top_p;
    req.max_tokens = g.max_output_tokens;
    req.stop = g.stop_sequences;
    req.response_format = match g.response_mime_type.as_deref() {
        None | Some("text/plain") => None,
        Some("application/json") => Some(match g.response_json_schema.or(g.response_schema) {
            None => ResponseFormat::JsonObject,
            Some(mut schema) => {
                lowercase_types(&mut schema);
                ResponseFormat::JsonSchema {
                    name: "response".to_owned(),
                    schema,
                }
            }
        }),
        Some(other) => {
            return Err(TranslateError::Unsupported {
                param: "generationConfig",
                message: format!(
                    "`responseMimeType: {other}` cannot be sent to this model's provider."
                ),
            })
        }
    };
    // A budget of -1 asks for dynamic thinking, the providers' default; 0 turns it off.
    req.reasoning = match g.thinking_config.and_then(|t| t.thinking_budget) {
        Some(0) => Some(Reasoning::Off),
        Some(b) => u64::try_from(b).ok().map(Reasoning::Budget),
        None => None,
    };
    Ok(req)
}

/// The MIME type of an image URL, when its extension says it.
fn image_mime(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        _ => return None,
    })
}

/// A tool result as a `functionResponse.response` object: the result's JSON object when it is
/// one, else its text under `result` (`error` when the tool failed).
fn response_object(r: &ToolResult) -> Value {
    let text: String = r
        .content
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) if !r.is_error => v,
        _ if r.is_error => json!({"error": text}),
        _ => json!({"result": text}),
    }
}

fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// Gemini parts of hub parts; `names` gives the call name of a result's id.
fn parts_value(parts: &[Part], names: &HashMap<&str, &str>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::with_capacity(parts.len());
    let mut signature: Option<&str> = None;
    for p in parts {
        let mut v = match p {
            Part::Thinking { text, signature: s } => {
                if !text.is_empty() {
                    out.push(json!({"text": text, "thought": true}));
                }
                // Anthropic writes `""` for blocks that had none.
                signature = s.as_deref().filter(|s| !s.is_empty()).or(signature);
                continue;
            }
            // Gemini caches by explicit `cachedContents`, not breakpoints.
            Part::RedactedThinking { .. } | Part::CachePoint => continue,
            Part::Text(t) if t.is_empty() && signature.is_none() => continue,
            Part::Text(t) => json!({"text": t}),
            Part::Image(Image::Base64 { media_type, data }) => {
                json!({"inlineData": {"mimeType": media_type, "data": data}})
            }
            Part::Image(Image::Url(url)) => match image_mime(url) {
                Some(m) => json!({"fileData": {"mimeType": m, "fileUri": url}}),
                None => json!({"fileData": {"fileUri": url}}),
            },
            Part::ToolCall(c) => {
                json!({"functionCall": {"name": c.name, "args": arguments_object(&c.arguments)}})
            }
            Part::ToolResult(r) => json!({"functionResponse": {
                "name": names.get(r.call_id.as_str()).copied().unwrap_or(&r.call_id),
                "response": response_object(r),
            }}),
        };
        if let Some(s) = signature.take() {
            v["thoughtSignature"] = s.into();
        }
        out.push(v);
    }
    if let Some(s) = signature {
        // Nothing followed the thoughts: the signature stays on them.
        match out.last_mut() {
            Some(last) if last["thought"] == true => last["thoughtSignature"] = s.into(),
            _ => out.push(json!({"text": "", "thought": true, "thoughtSignature": s})),
        }
    }
    out
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::User => "user",
        Role::Assistant => "model",
    }
}

/// The body for Gemini: consecutive turns of one role merged (the results of parallel calls
/// go back in one turn), empty turns dropped; the model is in the path, not the body.
pub fn request_to_wire(req: &ChatRequest) -> Vec<u8> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut contents: Vec<(Role, Vec<Value>)> = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        for p in &m.content {
            if let Part::ToolCall(c) = p {
                names.insert(&c.id, &c.name);
            }
        }
        let parts = parts_value(&m.content, &names);
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((role, existing)) if *role == m.role => existing.extend(parts),
            _ => contents.push((m.role, parts)),
        }
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role_name(role), "parts": parts}))
            .collect(),
    );
    if !req.system.is_empty() {
        let parts: Vec<Value> = req.system.iter().map(|t| json!({"text": t})).collect();
        body.insert("systemInstruction".into(), json!({"parts": parts}));
    }
    if !req.tools.is_empty() {
        let declarations: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut d = Map::new();
                d.insert("name".into(), t.name.clone().into());
                if let Some(desc) = &t.description {
                    d.insert("description".into(), desc.clone().into());
                }
                // Full JSON Schema, not the OpenAPI subset of `parameters`.
                d.insert("parametersJsonSchema".into(), t.parameters.clone());
                Value::Object(d)
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if let Some(c) = &req.tool_choice {
        let config = match c {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    let mut g = Map::new();
    if let Some(t) = req.temperature {
        g.insert("temperature".into(), t.into());
    }
    if let Some(t) = req.top_p {
        g.insert("topP".into(), t.into());
    }
    if let Some(m) = req.max_tokens {
        g.insert("maxOutputTokens".into(), m.into());
    }
    if !req.stop.is_empty() {
        g.insert("stopSequences".into(), req.stop.clone().into());
    }
    match &req.response_format {
        None => {}
        Some(ResponseFormat::JsonObject) => {
            g.insert("responseMimeType".into(), "application/json".into());
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            g.insert("responseMimeType".into(), "application/json".into());
            g.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    match req.reasoning {
        None => {}
        Some(Reasoning::Off) => {
            g.insert("thinkingConfig".into(), json!({"thinkingBudget": 0}));
        }
        Some(r) => {
            g.insert(
                "thinkingConfig".into(),
                json!({"thinkingBudget": r.budget_tokens(), "includeThoughts": true}),
            );
        }
    }
    if !g.is_empty() {
        body.insert("generationConfig".into(), Value::Object(g));
    }
    to_bytes(&Value::Object(body))
}

// ---------------------------------------------------------------------------------------------
// Responses and errors
// ---------------------------------------------------------------------------------------------

/// The hub's reason for Gemini's `finishReason` (`called`: the turn has function calls, which
/// Gemini ends with `STOP`).
fn stop_reason(finish: &str, called: bool) -> StopReason {
    match finish {
        "MAX_TOKENS" => StopReason::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            StopReason::Refusal
        }
        _ if called => StopReason::ToolUse,
        _ => StopReason::EndTurn,
    }
}

fn finish_reason(s: StopReason) -> &'static str {
    match s {
        StopReason::EndTurn
        | StopReason::StopSequence
        | StopReason::ToolUse
        | StopReason::PauseTurn => "STOP",
        StopReason::MaxTokens => "MAX_TOKENS",
        StopReason::Refusal => "SAFETY",
    }
}

/// A provider's `GenerateContentResponse` body (the first candidate).
pub fn response_from_wire(body: &[u8]) -> Result<ChatResponse, TranslateError> {
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| TranslateError::UpstreamBody(e.to_string()))?;
    let mut ids = CallIds::with_prefix(&response_prefix(&wire.response_id));
    let candidate = wire.candidates.into_iter().find(|c| c.index == 0);
    let blocked = wire.prompt_feedback.and_then(|f| f.block_reason).is_some();
    let (content, finish) = match candidate {
        Some(c) => (
            parts_of(c.content.unwrap_or_default().parts, &mut ids, false)?,
            c.finish_reason,
        ),
        None => (Vec::new(), None),
    };
    let called = content.iter().any(|p| matches!(p, Part::ToolCall(_)));
    let stop_reason = match finish {
        Some(f) => Some(stop_reason(&f, called)),
        None if blocked => Some(StopReason::Refusal),
        None => None,
    };
    Ok(ChatResponse {
        id: wire.response_id,
        model: wire.model_version,
        content,
        stop_reason,
        stop_sequence: None,
        usage: wire.usage_metadata.map(Usage::from).unwrap_or_default(),
    })
}

/// Usage from a complete response body (Gemini → Gemini, passed through).
pub fn usage_from_body(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct UsageOnly {
        usage_metadata: Option<WireUsage>,
    }
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage_metadata
        .map(Usage::from)
}

fn usage_value(u: &Usage) -> Value {
    let mut v = json!({
        "promptTokenCount": u.input_tokens,
        "candidatesTokenCount": u.output_tokens.saturating_sub(u.reasoning_tokens),
        "totalTokenCount": u.input_tokens + u.output_tokens,
    });
    if u.cache_read_tokens > 0 {
        v["cachedContentTokenCount"] = u.cache_read_tokens.into();
    }
    if u.reasoning_tokens > 0 {
        v["thoughtsTokenCount"] = u.reasoning_tokens.into();
    }
    v
}

/// A `GenerateContentResponse` body for a Gemini client.
pub fn response_to_wire(r: &ChatResponse) -> Vec<u8> {
    let parts = parts_value(&r.content, &HashMap::new());
    to_bytes(&json!({
        "candidates": [{
            "content": {"role": "model", "parts": parts},
            "finishReason": finish_reason(r.stop_reason.unwrap_or(StopReason::EndTurn)),
            "index": 0,
        }],
        "usageMetadata": usage_value(&r.usage),
        "modelVersion": r.model,
        "responseId": r.id,
    }))
}

/// A Gemini-format error body, when `body` is one (`error.code` a number, which tells it from
/// OpenAI's, whose `code` is a string or null).
pub fn error_from_wire(status: u16, body: &[u8]) -> Option<ErrorInfo> {
    let env = serde_json::from_slice::<WireErrorEnvelope>(body).ok()?;
    Some(ErrorInfo {
        status,
        kind: env.error.status,
        message: env.error.message,
    })
}

fn error_value(e: &ErrorInfo) -> Value {
    json!({"error": {"code": e.status, "message": e.message, "status": gemini_status(e.status)}})
}

/// A Gemini-format error body.
pub fn error_to_wire(e: &ErrorInfo) -> Vec<u8> {
    to_bytes(&error_value(e))
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
}

/// Upstream `GenerateContentResponse` chunks → hub events: text and thoughts become blocks
/// that stay open across chunks, each function call (whole in one part) a block of its own.
/// The chunk with `finishReason` ends the message, with the usage it carries.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    started: bool,
    open: Option<(usize, Open)>,
    next_index: usize,
    ids: CallIds,
    called: bool,
    usage: Option<Usage>,
    finished: bool,
}

impl StreamDecoder {
    /// Usage reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    fn open(&mut self, kind: Open, out: &mut Vec<StreamEvent>) -> usize {
        if let Some((index, open)) = self.open {
            if open == kind {
                return index;
            }
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        let block = match kind {
            Open::Text => BlockKind::Text,
            Open::Thinking => BlockKind::Thinking,
        };
        out.push(StreamEvent::BlockStart { index, block });
        index
    }

    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    /// Signs the open thinking block (or one of its own) and closes it.
    fn sign(&mut self, signature: String, out: &mut Vec<StreamEvent>) {
        let index = self.open(Open::Thinking, out);
        out.push(StreamEvent::Delta {
            index,
            delta: Delta::Signature(signature),
        });
        self.close(out);
    }

    /// Decodes one event's `data`: a whole response chunk, or an error.
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) {
        self.chunk(serde_json::from_slice::<WireResponse>(data).ok(), out);
    }

    /// Decodes one event read from `data` (its bytes, or its value parsed already).
    pub fn read<'de, D: serde::Deserializer<'de>>(&mut self, data: D, out: &mut Vec<StreamEvent>) {
        self.chunk(WireResponse::deserialize(data).ok(), out);
    }

    fn chunk(&mut self, chunk: Option<WireResponse>, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        let Some(chunk) = chunk else {
            tracing::debug!("Skipped an unreadable upstream stream event");
            return;
        };
        if let Some(e) = chunk.error {
            self.finished = true;
            out.push(StreamEvent::Error(ErrorInfo {
                status: e.code,
                kind: e.status,
                message: e.message,
            }));
            return;
        }
        if let Some(u) = chunk.usage_metadata {
            self.usage = Some(u.into());
        }
        if !self.started {
            self.started = true;
            self.ids = CallIds::with_prefix(&response_prefix(&chunk.response_id));
            let usage = self.usage.unwrap_or_default();
            out.push(StreamEvent::Start {
                id: chunk.response_id,
                model: chunk.model_version,
                usage: Usage {
                    input_tokens: usage.input_tokens,
                    cache_read_tokens: usage.cache_read_tokens,
                    ..Default::default()
                },
            });
        }
        let Some(candidate) = chunk.candidates.into_iter().find(|c| c.index == 0) else {
            if chunk.prompt_feedback.and_then(|f| f.block_reason).is_some() {
                self.finish(StopReason::Refusal, out);
            }
            return;
        };
        for p in candidate.content.unwrap_or_default().parts {
            if p.thought {
                let index = self.open(Open::Thinking, out);
                if let Some(t) = p.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::Delta {
                        index,
                        delta: Delta::Thinking(t),
                    });
                }
                if let Some(s) = p.thought_signature {
                    self.sign(s, out);
                }
                continue;
            }
            let mut call_signature = None;
            if let Some(s) = p.thought_signature {
                if p.function_call.is_some() {
                    // Rides in the call's id, which clients echo (see `call_id`).
                    call_signature = Some(s);
                } else {
                    self.sign(s, out);
                }
            }
            if let Some(c) = p.function_call {
                self.close(out);
                self.called = true;
                let index = self.next_index;
                self.next_index += 1;
                let id = self.ids.call(&c.name, c.id);
                let id = match call_signature {
                    Some(s) => call_id::with_signature(&id, &s),
                    None => id,
                };
                out.push(StreamEvent::BlockStart {
                    index,
                    block: BlockKind::ToolCall { id, name: c.name },
                });
                let args = match c.args {
                    None | Some(Value::Null) => "{}".to_owned(),
                    Some(a) => a.to_string(),
                };
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::ToolArguments(args),
                });
                out.push(StreamEvent::BlockStop { index });
            } else if let Some(t) = p.text.filter(|t| !t.is_empty()) {
                let index = self.open(Open::Text, out);
                out.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Text(t),
                });
            }
        }
        if let Some(f) = candidate.finish_reason {
            let reason = stop_reason(&f, self.called);
            self.finish(reason, out);
        }
    }

    fn finish(&mut self, reason: StopReason, out: &mut Vec<StreamEvent>) {
        self.finished = true;
        self.close(out);
        out.push(StreamEvent::Finish {
            stop_reason: Some(reason),
            stop_sequence: None,
            usage: self.usage,
        });
        out.push(StreamEvent::Stop);
    }
}

/// Hub events → `GenerateContentResponse` chunks for a Gemini client: a chunk per text or
/// thought delta, a function call whole when its block ends, and a last chunk with
/// `finishReason` and `usageMetadata`. A block's signature goes onto the next part.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    id: String,
    model: String,
    usage: Usage,
    /// Open tool calls: (hub index, name, arguments so far).
    calls: Vec<(usize, String, String)>,
    signature: Option<String>,
    ended: bool,
}

impl StreamEncoder {
    fn chunk(
        &mut self,
        mut parts: Vec<Value>,
        finish: Option<(StopReason, Usage)>,
        out: &mut Vec<Frame<'_>>,
    ) {
        if let Some(s) = self.signature.take() {
            match parts.first_mut() {
                Some(first) => first["thoughtSignature"] = s.into(),
                None => parts.push(json!({"text": "", "thought": true, "thoughtSignature": s})),
            }
        }
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        let mut v = json!({"candidates": [], "modelVersion": self.model, "responseId": self.id});
        if let Some((reason, usage)) = finish {
            candidate["finishReason"] = finish_reason(reason).into();
            v["usageMetadata"] = usage_value(&usage);
        }
        v["candidates"] = json!([candidate]);
        out.push(Frame::json(v));
    }

    fn call_part(name: &str, arguments: &str) -> Value {
        json!({"functionCall": {"name": name, "args": arguments_object(arguments)}})
    }

    /// Encodes one hub event.
    pub fn encode(&mut self, e: StreamEvent, out: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        match e {
            StreamEvent::Start { id, model, usage } => {
                self.id = id;
                self.model = model;
                self.usage = usage;
            }
            StreamEvent::BlockStart { index, block } => {
                if let BlockKind::ToolCall { name, .. } = block {
                    self.calls.push((index, name, String::new()));
                }
            }
            StreamEvent::Delta { index, delta } => match delta {
                Delta::Text(t) => self.chunk(vec![json!({"text": t})], None, out),
                Delta::Thinking(t) => {
                    self.chunk(vec![json!({"text": t, "thought": true})], None, out)
                }
                Delta::Signature(s) => self.signature = Some(s),
                Delta::ToolArguments(a) => {
                    if let Some((_, _, args)) = self.calls.iter_mut().find(|(i, _, _)| *i == index)
                    {
                        args.push_str(&a);
                    }
                }
            },
            StreamEvent::BlockStop { index } => {
                if let Some(pos) = self.calls.iter().position(|(i, _, _)| *i == index) {
                    let (_, name, args) = self.calls.remove(pos);
                    self.chunk(vec![Self::call_part(&name, &args)], None, out);
                }
            }
            StreamEvent::Finish {
                stop_reason, usage, ..
            } => {
                let parts: Vec<Value> = std::mem::take(&mut self.calls)
                    .iter()
                    .map(|(_, name, args)| Self::call_part(name, args))
                    .collect();
                let usage = usage.unwrap_or(self.usage);
                self.chunk(
                    parts,
                    Some((stop_reason.unwrap_or(StopReason::EndTurn), usage)),
                    out,
                );
                self.ended = true;
            }
            StreamEvent::Stop => self.ended = true,
            StreamEvent::Error(e) => {
                self.ended = true;
                out.push(Frame::json(error_value(&e)));
            }
        }
    }
}
