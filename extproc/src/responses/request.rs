//! A Responses request (`POST /v1/responses`) read once: validated, its conversation expanded
//! with the stored one `previous_response_id` names, and written as the Chat Completions body
//! that every other step of the gateway (guardrails, estimates, budgets, the hub's
//! translation to each provider) reads, and, for OpenAI and Azure, as the Responses body the
//! provider gets.
//!
//! Mapping (docs/COMPATIBILITY.md, "Responses"): `instructions` → a system message; `input`
//! text → a user message; message items (`input_text`, `output_text`, `input_image`) → chat
//! messages; consecutive `function_call` items → one assistant message's `tool_calls`;
//! `function_call_output` → a `tool` message; `reasoning` items Tollgate wrote from a
//! provider's thinking (`rs_tg_…`) → the `thinking_blocks` that open their assistant turn
//! (signature from `encrypted_content`), OpenAI's own → nothing (only OpenAI can read them,
//! and it gets the Responses body itself); function `tools`, `tool_choice`, `text.format` →
//! `response_format`, `max_output_tokens`, `temperature`, `top_p`, `parallel_tool_calls`,
//! `reasoning.effort`, `user`/`safety_identifier`; `truncation` checked, `text.verbosity`
//! dropped.

use serde_json::{json, Map, Value};
use tollgate_core::ApiError;

/// The id prefix of reasoning items Tollgate wrote from another provider's thinking: their
/// `encrypted_content` (that provider's signature) would be refused by OpenAI, so they are
/// dropped from what an OpenAI or Azure target gets.
pub const HUB_REASONING_PREFIX: &str = "rs_tg_";

/// What starts the `encrypted_content` of a reasoning item written from Anthropic's
/// `redacted_thinking` (the encrypted data follows).
pub const REDACTED_PREFIX: &str = "tg_redacted:";

/// What a Responses request says, read once.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    /// The client's body, as an object.
    pub body: Map<String, Value>,
    /// The public model.
    pub model: String,
    /// Whether the client streams.
    pub stream: bool,
    /// Whether the client lets the response be stored (`store`, default true).
    pub store: bool,
    /// The stored response this one continues.
    pub previous_response_id: Option<String>,
    /// The request's own input items (a text input as one user message item).
    pub input: Vec<Value>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param,
        message: message.into(),
    }
}

/// Parses and validates a Responses body.
pub fn parse(body: &[u8]) -> Result<ResponsesRequest, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Object(body) = value else {
        return Err(ApiError::InvalidJson(
            "the body must be a JSON object".to_owned(),
        ));
    };
    let model = match body.get("model") {
        None | Some(Value::Null) => {
            return Err(invalid("model", "You must provide a model parameter."))
        }
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => {
            return Err(invalid("model", "You must provide a model parameter."))
        }
        Some(_) => return Err(invalid("model", "`model` must be a string.")),
    };
    let flag = |name: &'static str, default: bool| match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(name, format!("`{name}` must be a boolean."))),
    };
    let stream = flag("stream", false)?;
    let store = flag("store", true)?;
    if flag("background", false)? {
        return Err(invalid(
            "background",
            "Background responses are not supported by this gateway.",
        ));
    }
    // `auto` is accepted: the conversation goes whole, and one past the model's context gets
    // the provider's own error (no item is dropped on the gateway).
    match body.get("truncation") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "auto" || t == "disabled" => {}
        Some(_) => {
            return Err(invalid(
                "truncation",
                "`truncation` must be `auto` or `disabled`.",
            ))
        }
    }
    let previous_response_id = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        Some(_) => {
            return Err(invalid(
                "previous_response_id",
                "`previous_response_id` must be a non-empty string.",
            ))
        }
    };
    let input = match body.get("input") {
        None | Some(Value::Null) if previous_response_id.is_some() => Vec::new(),
        None | Some(Value::Null) => {
            return Err(invalid("input", "You must provide an input parameter."))
        }
        Some(Value::String(text)) => vec![user_item(text)],
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_item(i, item)?;
            }
            items.clone()
        }
        Some(_) => {
            return Err(invalid(
                "input",
                "`input` must be a string or an array of input items.",
            ))
        }
    };
    Ok(ResponsesRequest {
        body,
        model,
        stream,
        store,
        previous_response_id,
        input,
    })
}

/// A user message item holding `text`.
pub fn user_item(text: &str) -> Value {
    json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
}

/// The type of an input item (`message` when it has a role and no type).
fn item_type(item: &Value) -> Option<&str> {
    match item.get("type").and_then(Value::as_str) {
        Some(t) => Some(t),
        None if item.get("role").is_some() => Some("message"),
        None => None,
    }
}

/// Checks one input item's shape (`i`: its index), so a wrong item is a 400 before anything
/// is routed.
fn check_item(i: usize, item: &Value) -> Result<(), ApiError> {
    let bad = |m: String| invalid("input", m);
    if !item.is_object() {
        return Err(bad(format!("input[{i}] must be an object.")));
    }
    match item_type(item) {
        Some("message") => {
            match item.get("role").and_then(Value::as_str) {
                Some("user" | "assistant" | "system" | "developer") => {}
                _ => {
                    return Err(bad(format!(
                        "input[{i}].role must be one of user, assistant, system or developer."
                    )))
                }
            }
            match item.get("content") {
                Some(Value::String(_)) => Ok(()),
                Some(Value::Array(parts)) => {
                    for (j, p) in parts.iter().enumerate() {
                        match p.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "refusal" | "input_image") => {}
                            Some(other) => {
                                return Err(bad(format!(
                                    "input[{i}].content[{j}]: content of type `{other}` is not supported (input_text, output_text, refusal or input_image)."
                                )))
                            }
                            None => {
                                return Err(bad(format!(
                                    "input[{i}].content[{j}] needs a `type`."
                                )))
                            }
                        }
                    }
                    Ok(())
                }
                _ => Err(bad(format!(
                    "input[{i}].content must be a string or an array of content parts."
                ))),
            }
        }
        Some("function_call") => {
            for field in ["call_id", "name", "arguments"] {
                if !item.get(field).is_some_and(Value::is_string) {
                    return Err(bad(format!(
                        "input[{i}]: a function_call item needs a string `{field}`."
                    )));
                }
            }
            Ok(())
        }
        Some("function_call_output") => {
            if !item.get("call_id").is_some_and(Value::is_string) {
                return Err(bad(format!(
                    "input[{i}]: a function_call_output item needs a string `call_id`."
                )));
            }
            match item.get("output") {
                Some(Value::String(_) | Value::Array(_)) => Ok(()),
                _ => Err(bad(format!(
                    "input[{i}]: a function_call_output item needs an `output`."
                ))),
            }
        }
        Some("reasoning") => Ok(()),
        Some(other) => Err(bad(format!(
            "input[{i}]: items of type `{other}` are not supported (message, function_call, function_call_output or reasoning)."
        ))),
        None => Err(bad(format!("input[{i}] needs a `type`."))),
    }
}

/// The text of a message item's content.
fn text_parts(content: &Value) -> Vec<Value> {
    match content {
        Value::String(t) => vec![json!({"type": "text", "text": t})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("input_text" | "output_text") => {
                    Some(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or_default()}))
                }
                Some("refusal") => Some(
                    json!({"type": "text", "text": p.get("refusal").and_then(Value::as_str).unwrap_or_default()}),
                ),
                Some("input_image") => {
                    let url = p
                        .get("image_url")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Some(json!({"type": "image_url", "image_url": {"url": url}}))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Chat content: one string when it is text alone.
fn chat_content(parts: Vec<Value>) -> Value {
    let all_text = parts.iter().all(|p| p["type"] == "text");
    if all_text {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        Value::String(text.join(""))
    } else {
        Value::Array(parts)
    }
}

/// The chat member that carries an assistant turn's thinking ([`crate::translator::thinking_blocks`]).
const THINKING_BLOCKS: &str = crate::translator::thinking_blocks::MEMBER;

/// Whether a chat message is an assistant turn holding nothing but thinking so far.
fn thinking_only(message: &Value) -> bool {
    message["role"] == "assistant"
        && message.get(THINKING_BLOCKS).is_some()
        && message["content"].is_null()
        && message.get("tool_calls").is_none()
}

/// The thinking block a reasoning item Tollgate wrote from a provider's thinking stands for
/// (`None`: another's, whose `encrypted_content` only OpenAI can read, or one without a
/// signature). Its summary texts are the thinking text; `encrypted_content` the signature, or
/// `redacted_thinking`'s data after [`REDACTED_PREFIX`].
fn thinking_block(item: &Value) -> Option<Value> {
    let id = item.get("id").and_then(Value::as_str)?;
    if !id.starts_with(HUB_REASONING_PREFIX) {
        return None;
    }
    let sealed = item
        .get("encrypted_content")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())?;
    if let Some(data) = sealed.strip_prefix(REDACTED_PREFIX) {
        return Some(json!({"type": "redacted_thinking", "data": data}));
    }
    let text: String = item
        .get("summary")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("");
    Some(json!({"type": "thinking", "thinking": text, "signature": sealed}))
}

/// `items` (the whole conversation, oldest first) as chat messages, after `instructions`.
/// Reasoning items Tollgate issued from a provider's thinking open the assistant turn they
/// belong to as its `thinking_blocks`; OpenAI's own are left out (the native path gets them).
pub fn chat_messages(instructions: Option<&str>, items: &[Value]) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::with_capacity(items.len() + 1);
    if let Some(i) = instructions.filter(|i| !i.is_empty()) {
        messages.push(json!({"role": "system", "content": i}));
    }
    for item in items {
        match item_type(item) {
            Some("message") => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                let content = chat_content(text_parts(item.get("content").unwrap_or(&Value::Null)));
                // An assistant turn opened by its thinking takes the text that follows.
                match messages.last_mut() {
                    Some(last) if role == "assistant" && thinking_only(last) => {
                        last["content"] = content;
                    }
                    _ => messages.push(json!({"role": role, "content": content})),
                }
            }
            Some("reasoning") => {
                let Some(block) = thinking_block(item) else {
                    continue;
                };
                match messages.last_mut() {
                    Some(last) if thinking_only(last) => {
                        if let Some(blocks) =
                            last.get_mut(THINKING_BLOCKS).and_then(Value::as_array_mut)
                        {
                            blocks.push(block);
                        }
                    }
                    _ => messages.push(
                        json!({"role": "assistant", "content": null, THINKING_BLOCKS: [block]}),
                    ),
                }
            }
            Some("function_call") => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or_default(),
                    "type": "function",
                    "function": {
                        "name": item.get("name").cloned().unwrap_or_default(),
                        "arguments": item.get("arguments").cloned().unwrap_or_default(),
                    },
                });
                // Calls join the assistant message just before them (its text, or other calls).
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        let obj = last.as_object_mut();
                        if let Some(obj) = obj {
                            match obj.get_mut("tool_calls").and_then(Value::as_array_mut) {
                                Some(calls) => calls.push(call),
                                None => {
                                    obj.insert("tool_calls".into(), Value::Array(vec![call]));
                                }
                            }
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let content = match item.get("output") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(other) => chat_content(text_parts(other)),
                    None => Value::String(String::new()),
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": item.get("call_id").cloned().unwrap_or_default(),
                    "content": content,
                }));
            }
            _ => {}
        }
    }
    messages
}

impl ResponsesRequest {
    /// The whole conversation: the stored one (`history`, input then output items of the
    /// previous responses) followed by this request's input.
    pub fn conversation(&self, history: &[Value]) -> Vec<Value> {
        let mut all = Vec::with_capacity(history.len() + self.input.len());
        all.extend(history.iter().cloned());
        all.extend(self.input.iter().cloned());
        all
    }

    fn instructions(&self) -> Option<&str> {
        self.body.get("instructions").and_then(Value::as_str)
    }

    /// The Chat Completions body of this request over `conversation`, for the public model
    /// (the rest of the gateway rewrites the model).
    pub fn chat_body(&self, conversation: &[Value]) -> Result<Vec<u8>, ApiError> {
        let mut chat = Map::new();
        chat.insert("model".into(), Value::String(self.model.clone()));
        let messages = chat_messages(self.instructions(), conversation);
        if messages.is_empty() {
            return Err(invalid("input", "The conversation is empty."));
        }
        chat.insert("messages".into(), Value::Array(messages));
        if self.stream {
            chat.insert("stream".into(), Value::Bool(true));
        }
        if let Some(tools) = self.body.get("tools").and_then(Value::as_array) {
            let mut out = Vec::with_capacity(tools.len());
            for t in tools {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(ApiError::InvalidField {
                        param: "tools",
                        message: format!(
                            "Tools of type `{}` are served by OpenAI itself: this model's provider takes function tools only.",
                            tollgate_core::bound::echo(t.get("type").and_then(Value::as_str).unwrap_or("?"))
                        ),
                    });
                }
                let mut f = Map::new();
                f.insert("name".into(), t.get("name").cloned().unwrap_or_default());
                if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                    f.insert("description".into(), d.clone());
                }
                f.insert(
                    "parameters".into(),
                    t.get("parameters")
                        .filter(|p| !p.is_null())
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                out.push(json!({"type": "function", "function": f}));
            }
            if !out.is_empty() {
                chat.insert("tools".into(), Value::Array(out));
            }
        }
        match self.body.get("tool_choice") {
            None | Some(Value::Null) => {}
            Some(Value::String(mode)) => {
                chat.insert("tool_choice".into(), Value::String(mode.clone()));
            }
            Some(Value::Object(c)) if c.get("type").and_then(Value::as_str) == Some("function") => {
                chat.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": c.get("name").cloned().unwrap_or_default()}}),
                );
            }
            Some(_) => {
                return Err(invalid(
                    "tool_choice",
                    "`tool_choice` must be auto, none, required or a function.",
                ))
            }
        }
        if let Some(format) = self.body.get("text").and_then(|t| t.get("format")) {
            match format.get("type").and_then(Value::as_str) {
                Some("text") | None => {}
                Some("json_object") => {
                    chat.insert("response_format".into(), json!({"type": "json_object"}));
                }
                Some("json_schema") => {
                    let mut schema = Map::new();
                    schema.insert(
                        "name".into(),
                        format
                            .get("name")
                            .cloned()
                            .unwrap_or_else(|| "response".into()),
                    );
                    schema.insert(
                        "schema".into(),
                        format.get("schema").cloned().unwrap_or_default(),
                    );
                    if let Some(s) = format.get("strict").filter(|s| s.is_boolean()) {
                        schema.insert("strict".into(), s.clone());
                    }
                    chat.insert(
                        "response_format".into(),
                        json!({"type": "json_schema", "json_schema": schema}),
                    );
                }
                Some(_) => return Err(invalid("text", "unknown `text.format.type`")),
            }
        }
        for (from, to) in [
            ("max_output_tokens", "max_completion_tokens"),
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("parallel_tool_calls", "parallel_tool_calls"),
        ] {
            if let Some(v) = self.body.get(from).filter(|v| !v.is_null()) {
                chat.insert(to.into(), v.clone());
            }
        }
        if let Some(u) = self
            .body
            .get("safety_identifier")
            .or_else(|| self.body.get("user"))
            .filter(|v| v.is_string())
        {
            chat.insert("user".into(), u.clone());
        }
        if let Some(e) = self
            .body
            .get("reasoning")
            .and_then(|r| r.get("effort"))
            .filter(|e| e.is_string())
        {
            chat.insert("reasoning_effort".into(), e.clone());
        }
        serde_json::to_vec(&Value::Object(chat)).map_err(|_| ApiError::Internal)
    }

    /// The Responses body for an OpenAI or Azure provider: the client's, with the provider's
    /// model, the conversation in `input` when a stored one was expanded (and
    /// `previous_response_id` gone: Tollgate keeps the chain, whichever provider served it),
    /// and `max_output_tokens` set to `limit` when the client set none and one is given.
    pub fn native_body(
        &self,
        upstream_model: &str,
        expanded: Option<&[Value]>,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, ApiError> {
        let mut body = self.body.clone();
        body.insert("model".into(), Value::String(upstream_model.to_owned()));
        if let Some(items) = expanded {
            body.remove("previous_response_id");
            body.insert("input".into(), Value::Array(items.to_vec()));
        }
        // Reasoning another provider issued (through the hub) cannot be read by this one.
        if let Some(Value::Array(items)) = body.get_mut("input") {
            items.retain(|i| {
                !(i.get("type").and_then(Value::as_str) == Some("reasoning")
                    && i.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|id| id.starts_with(HUB_REASONING_PREFIX)))
            });
        }
        if let Some(limit) = limit {
            if body.get("max_output_tokens").is_none_or(Value::is_null) {
                body.insert("max_output_tokens".into(), Value::from(limit));
            }
        }
        serde_json::to_vec(&Value::Object(body)).map_err(|_| ApiError::Internal)
    }

    /// Whether `include` names `what`.
    pub fn includes(&self, what: &str) -> bool {
        self.body
            .get("include")
            .and_then(Value::as_array)
            .is_some_and(|i| i.iter().any(|v| v == what))
    }

    /// The members a response object repeats from its request.
    pub fn echo(&self) -> Map<String, Value> {
        let mut out = Map::new();
        for (k, default) in [
            ("instructions", Value::Null),
            ("max_output_tokens", Value::Null),
            ("parallel_tool_calls", Value::Bool(true)),
            ("previous_response_id", Value::Null),
            ("temperature", Value::from(1.0)),
            ("top_p", Value::from(1.0)),
            ("tool_choice", Value::from("auto")),
            ("tools", Value::Array(Vec::new())),
            ("metadata", Value::Object(Map::new())),
            ("text", json!({"format": {"type": "text"}})),
            ("reasoning", json!({"effort": null, "summary": null})),
            ("truncation", Value::from("disabled")),
            ("user", Value::Null),
        ] {
            let v = self
                .body
                .get(k)
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or(default);
            out.insert(k.into(), v);
        }
        out.insert("store".into(), Value::Bool(self.store));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Value {
        let req = parse(body.to_string().as_bytes()).unwrap();
        let conv = req.conversation(&[]);
        serde_json::from_slice(&req.chat_body(&conv).unwrap()).unwrap()
    }

    #[test]
    fn text_input_and_instructions_become_system_and_user() {
        let c = chat(
            json!({"model": "m", "input": "hi", "instructions": "be brief",
            "max_output_tokens": 20, "temperature": 0.5}),
        );
        assert_eq!(
            c["messages"],
            json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        );
        assert_eq!(c["max_completion_tokens"], 20);
        assert_eq!(c["temperature"], 0.5);
    }

    #[test]
    fn function_calls_and_outputs_become_tool_messages() {
        let c = chat(json!({"model": "m", "input": [
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        ], "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}],
           "tool_choice": {"type": "function", "name": "get"}}));
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
        );
        assert_eq!(c["tools"][0]["function"]["name"], "get");
        assert_eq!(c["tool_choice"]["function"]["name"], "get");
    }

    #[test]
    fn json_schema_format_becomes_response_format() {
        let c = chat(json!({"model": "m", "input": "x", "text": {"format":
            {"type": "json_schema", "name": "r", "schema": {"type": "object"}, "strict": true}}}));
        assert_eq!(c["response_format"]["type"], "json_schema");
        assert_eq!(c["response_format"]["json_schema"]["name"], "r");
    }

    #[test]
    fn bad_input_is_refused() {
        for body in [
            json!({"input": "x"}),
            json!({"model": "m"}),
            json!({"model": "m", "input": [{"type": "computer_call_output"}]}),
            json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
            json!({"model": "m", "input": 3}),
        ] {
            assert!(parse(body.to_string().as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn native_body_expands_the_stored_conversation() {
        let req =
            parse(br#"{"model":"m","input":"again","previous_response_id":"resp_1"}"#).unwrap();
        let history = vec![
            user_item("first"),
            json!({"type": "reasoning", "id": "rs_tg_abc_0", "summary": [], "encrypted_content": "anthropic-sig"}),
            json!({"type": "reasoning", "id": "rs_openai", "summary": [], "encrypted_content": "gAAAA"}),
        ];
        let conv = req.conversation(&history);
        let body: Value =
            serde_json::from_slice(&req.native_body("up", Some(&conv), Some(64)).unwrap()).unwrap();
        assert_eq!(body["model"], "up");
        assert!(body.get("previous_response_id").is_none());
        // The hub-issued reasoning is dropped; OpenAI's own goes back.
        let input = body["input"].as_array().unwrap();
        assert_eq!(input.len(), 3, "{body}");
        assert_eq!(input[1]["id"], "rs_openai");
        assert_eq!(body["max_output_tokens"], 64);
    }

    /// The provider body a Responses request becomes for `upstream` through the hub.
    fn through_hub(body: Value, upstream: tollgate_core::config::ApiFamily) -> Value {
        use crate::translator::json::RawObject;
        use crate::translator::Pair;
        let req = parse(body.to_string().as_bytes()).unwrap();
        let chat = req.chat_body(&req.conversation(&[])).unwrap();
        let obj = RawObject::parse(&chat).unwrap();
        let pair = Pair {
            client: tollgate_core::config::ApiFamily::OpenAi,
            upstream,
        };
        let (out, _) = pair.request(&obj, "up", req.stream, chat.len()).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    /// A thinking + tool turn as the SDK sends it back: Tollgate's reasoning item, then the call.
    fn thinking_loop() -> Value {
        json!({"model": "m", "reasoning": {"effort": "low", "summary": "auto"},
            "include": ["reasoning.encrypted_content"], "input": [
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "id": "rs_tg_abc_0", "summary": [{"type": "summary_text", "text": "I should call it."}],
             "encrypted_content": "sig-anthropic"},
            {"type": "reasoning", "id": "rs_tg_abc_1", "summary": [], "encrypted_content": "tg_redacted:opaque"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
            {"type": "function_call", "call_id": "toolu_1", "name": "get", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "toolu_1", "output": "sunny"},
        ], "tools": [{"type": "function", "name": "get", "parameters": {"type": "object"}}]})
    }

    #[test]
    fn tollgate_reasoning_items_open_the_assistant_turn_as_thinking_blocks() {
        let c = chat(thinking_loop());
        let m = c["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{c}");
        assert_eq!(
            m[1]["thinking_blocks"],
            json!([{"type": "thinking", "thinking": "I should call it.", "signature": "sig-anthropic"},
                   {"type": "redacted_thinking", "data": "opaque"}])
        );
        assert_eq!(m[1]["content"], "Calling.");
        assert_eq!(m[1]["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(c["reasoning_effort"], "low");
        // OpenAI's own reasoning items are not Tollgate's to carry.
        let c = chat(json!({"model": "m", "input": [
            {"role": "user", "content": "x"},
            {"type": "reasoning", "id": "rs_openai", "summary": [], "encrypted_content": "gAAAA"},
            {"type": "function_call", "call_id": "c", "name": "get", "arguments": "{}"},
        ]}));
        assert!(c["messages"][1].get("thinking_blocks").is_none(), "{c}");
    }

    #[test]
    fn thinking_reaches_anthropic_and_bedrock_before_the_tool_use_with_its_signature() {
        use tollgate_core::config::ApiFamily;
        let a = through_hub(thinking_loop(), ApiFamily::Anthropic);
        let turn = &a["messages"][1]["content"];
        assert_eq!(turn[0]["type"], "thinking", "{a}");
        assert_eq!(turn[0]["signature"], "sig-anthropic");
        assert_eq!(turn[0]["thinking"], "I should call it.");
        assert_eq!(
            turn[1],
            json!({"type": "redacted_thinking", "data": "opaque"})
        );
        assert_eq!(turn[2]["type"], "text");
        assert_eq!(turn[3]["type"], "tool_use");
        // `reasoning.effort: low` is Anthropic's thinking budget of 2,048 tokens.
        assert_eq!(
            a["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
        let b = through_hub(thinking_loop(), ApiFamily::Bedrock);
        let turn = &b["messages"][1]["content"];
        assert_eq!(
            turn[0]["reasoningContent"]["reasoningText"]["signature"], "sig-anthropic",
            "{b}"
        );
        assert_eq!(turn[1]["reasoningContent"]["redactedContent"], "opaque");
        assert!(turn[3].get("toolUse").is_some(), "{b}");
        // Nobody else can check an Anthropic signature: Gemini gets none (OpenAI-family chat
        // providers keep the client's bytes, `thinking_blocks::strip_raw_messages` removes it).
        let out = through_hub(thinking_loop(), ApiFamily::Gemini).to_string();
        assert!(!out.contains("sig-anthropic"), "{out}");
        assert!(!out.contains("opaque"), "{out}");
    }

    #[test]
    fn tool_choice_forms_parallel_calls_and_text_options_map() {
        for (choice, want) in [
            (json!("required"), json!("required")),
            (json!("none"), json!("none")),
            (json!("auto"), json!("auto")),
            (
                json!({"type": "function", "name": "get"}),
                json!({"type": "function", "function": {"name": "get"}}),
            ),
        ] {
            let c = chat(json!({"model": "m", "input": "x", "tool_choice": choice,
                "parallel_tool_calls": false, "truncation": "auto",
                "text": {"verbosity": "low"},
                "tools": [{"type": "function", "name": "get"}]}));
            assert_eq!(c["tool_choice"], want);
            assert_eq!(c["parallel_tool_calls"], false);
            // Verbosity has no counterpart on hub backends: dropped, not sent.
            assert!(!c.to_string().contains("verbosity"), "{c}");
        }
        let r = parse(br#"{"model":"m","input":"x","truncation":"middle"}"#);
        assert!(r.is_err());
        let req = parse(
            br#"{"model":"m","input":"x","metadata":{"run":"7"},"include":["reasoning.encrypted_content"]}"#,
        )
        .unwrap();
        assert!(req.includes("reasoning.encrypted_content"));
        let echo = req.echo();
        assert_eq!(echo["metadata"], json!({"run": "7"}));
        assert_eq!(echo["truncation"], "disabled");
    }
}
