//! What evaluators read of a logged event: the request's input text, the response's output
//! text, the tools the request declared and the tool calls the response made. All of it comes
//! from the event's captured payload (`capture: full`); an event without one has no output to
//! judge. Bodies are in the client's dialect (OpenAI chat or Responses, Anthropic Messages,
//! Gemini); a streamed response's body is the assembled text, and its tool calls come from the
//! capture's assembled calls (`Payload.tool_calls`: name and joined argument deltas per call).

use serde_json::Value;
use tollgate_proto::logger::v1::LogEvent;

/// A response's output, as evaluators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The assistant's text (every text part, joined).
    pub text: String,
    /// The response body as JSON, when it is JSON (a non-streamed response).
    pub body: Option<Value>,
    /// A stream's tool calls as capture assembled them (`None` for a complete response, whose
    /// calls are read from `body`).
    pub stream_calls: Option<Vec<ToolCall>>,
}

/// A tool the request declared.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// Its parameters' JSON Schema, when it has one.
    pub parameters: Option<Value>,
}

/// A tool call in the response.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The tool named.
    pub name: String,
    /// The arguments: a JSON text (OpenAI) or an object (Anthropic, Gemini).
    pub arguments: Arguments,
}

/// Tool-call arguments as the dialect carries them.
#[derive(Debug, Clone, PartialEq)]
pub enum Arguments {
    /// A JSON text that must parse.
    Text(String),
    /// Already JSON.
    Json(Value),
}

/// The captured output of `e`, when it has one: capture `full`, a response body, and a
/// request that did not fail.
pub fn output(e: &LogEvent) -> Option<Output> {
    let p = e.payload.as_ref()?;
    if p.mode != "full" || p.response_body.is_empty() || e.http_status >= 400 {
        return None;
    }
    if e.stream {
        // Every call the stream started was assembled, unless it had more than capture keeps:
        // then its calls are not known.
        let calls: Vec<ToolCall> = p
            .tool_calls
            .iter()
            .map(|c| ToolCall {
                name: c.name.clone(),
                arguments: Arguments::Text(c.arguments.clone()),
            })
            .collect();
        let known = calls.len() >= p.tool_call_count as usize;
        return Some(Output {
            text: p.response_body.clone(),
            body: None,
            stream_calls: known.then_some(calls),
        });
    }
    match serde_json::from_str::<Value>(&p.response_body) {
        Ok(body) => Some(Output {
            text: response_text(&body),
            body: Some(body),
            stream_calls: None,
        }),
        // A body cut at `capture_max_bytes` is no longer JSON: judge the text as it is.
        Err(_) => Some(Output {
            text: p.response_body.clone(),
            body: None,
            stream_calls: None,
        }),
    }
}

/// The captured request body as JSON, when it is.
pub fn request(e: &LogEvent) -> Option<Value> {
    let p = e.payload.as_ref()?;
    (p.mode == "full")
        .then(|| serde_json::from_str(&p.request_body).ok())
        .flatten()
}

/// The text of `content` in any dialect: a string, or parts with `text`.
fn content_text(content: &Value, out: &mut Vec<String>) {
    match content {
        Value::String(s) => out.push(s.clone()),
        Value::Array(parts) => {
            for part in parts {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    out.push(t.to_owned());
                } else if let Some(c) = part.get("content") {
                    content_text(c, out);
                }
            }
        }
        _ => {}
    }
}

/// The assistant text of a complete response body in any dialect.
pub fn response_text(body: &Value) -> String {
    let mut out = Vec::new();
    // OpenAI chat completions (and completions' `text`).
    for choice in body
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(c) = choice.get("message").and_then(|m| m.get("content")) {
            content_text(c, &mut out);
        } else if let Some(t) = choice.get("text").and_then(Value::as_str) {
            out.push(t.to_owned());
        }
    }
    // Anthropic Messages.
    if body.get("type").and_then(Value::as_str) == Some("message") {
        if let Some(c) = body.get("content") {
            content_text(c, &mut out);
        }
    }
    // OpenAI Responses.
    for item in body
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(c) = item.get("content") {
            content_text(c, &mut out);
        }
    }
    // Gemini.
    for cand in body
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(parts) = cand.get("content").and_then(|c| c.get("parts")) {
            content_text(parts, &mut out);
        }
    }
    out.join("\n")
}

/// The request's last user text (the question), in any dialect; empty when none.
pub fn input_text(request: &Value) -> String {
    let mut out = Vec::new();
    let turns = request
        .get("messages")
        .or_else(|| request.get("contents"))
        .and_then(Value::as_array);
    if let Some(last_user) = turns
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    {
        if let Some(c) = last_user.get("content").or_else(|| last_user.get("parts")) {
            content_text(c, &mut out);
        }
    } else if let Some(input) = request.get("input").or_else(|| request.get("prompt")) {
        content_text(input, &mut out);
    }
    out.join("\n")
}

/// The tools `request` declares, in any dialect.
pub fn declared_tools(request: &Value) -> Vec<Tool> {
    let mut tools = Vec::new();
    for t in request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(f) = t.get("function") {
            // OpenAI chat: {type: function, function: {name, parameters}}.
            if let Some(name) = f.get("name").and_then(Value::as_str) {
                tools.push(Tool {
                    name: name.to_owned(),
                    parameters: f.get("parameters").cloned(),
                });
            }
        } else if let Some(decls) = t
            .get("functionDeclarations")
            .or_else(|| t.get("function_declarations"))
            .and_then(Value::as_array)
        {
            // Gemini.
            for d in decls {
                if let Some(name) = d.get("name").and_then(Value::as_str) {
                    tools.push(Tool {
                        name: name.to_owned(),
                        parameters: d.get("parameters").map(lowercase_types),
                    });
                }
            }
        } else if let Some(name) = t.get("name").and_then(Value::as_str) {
            // Anthropic ({name, input_schema}) and the Responses API ({type, name, parameters}).
            tools.push(Tool {
                name: name.to_owned(),
                parameters: t
                    .get("input_schema")
                    .or_else(|| t.get("parameters"))
                    .cloned(),
            });
        }
    }
    tools
}

/// Gemini writes schema types in capitals (`OBJECT`); JSON Schema wants them lowercase.
fn lowercase_types(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) => Value::String(t.to_lowercase()),
                        _ => lowercase_types(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(lowercase_types).collect()),
        other => other.clone(),
    }
}

/// The tool calls of a complete response body, in any dialect.
pub fn tool_calls(body: &Value) -> Vec<ToolCall> {
    let mut calls = Vec::new();
    for choice in body
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let listed = choice
            .get("message")
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array);
        for c in listed.into_iter().flatten() {
            let f = c.get("function");
            calls.push(ToolCall {
                name: f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: Arguments::Text(
                    f.and_then(|f| f.get("arguments"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ),
            });
        }
    }
    let anthropic = body.get("content").and_then(Value::as_array);
    let responses = body.get("output").and_then(Value::as_array);
    for block in anthropic.into_iter().chain(responses).flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => calls.push(ToolCall {
                name: str_of(block, "name"),
                arguments: Arguments::Json(block.get("input").cloned().unwrap_or(Value::Null)),
            }),
            Some("function_call") => calls.push(ToolCall {
                name: str_of(block, "name"),
                arguments: Arguments::Text(str_of(block, "arguments")),
            }),
            _ => {}
        }
    }
    for cand in body
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let parts = cand
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            if let Some(f) = part.get("functionCall") {
                calls.push(ToolCall {
                    name: str_of(f, "name"),
                    arguments: Arguments::Json(f.get("args").cloned().unwrap_or(Value::Null)),
                });
            }
        }
    }
    calls
}

fn str_of(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_streams_calls_come_from_its_capture_when_it_kept_them_all() {
        use tollgate_proto::logger::v1::{CapturedToolCall, Payload};
        let event = |calls: usize, count: u32| LogEvent {
            stream: true,
            http_status: 200,
            payload: Some(Payload {
                mode: "full".into(),
                response_body: "text".into(),
                tool_call_count: count,
                tool_calls: (0..calls)
                    .map(|i| CapturedToolCall {
                        name: format!("f{i}"),
                        arguments: "{}".into(),
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = output(&event(2, 2)).unwrap();
        let calls = out.stream_calls.unwrap();
        assert_eq!(calls[1].name, "f1");
        assert_eq!(calls[1].arguments, Arguments::Text("{}".into()));
        // None at all: known (no calls); fewer kept than made: unknown.
        assert_eq!(output(&event(0, 0)).unwrap().stream_calls, Some(Vec::new()));
        assert_eq!(output(&event(1, 3)).unwrap().stream_calls, None);
    }

    #[test]
    fn text_and_tool_calls_are_read_in_every_dialect() {
        let openai = json!({"choices":[{"message":{"content":"hi","tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1}"}}]}}]});
        assert_eq!(response_text(&openai), "hi");
        assert_eq!(
            tool_calls(&openai)[0].arguments,
            Arguments::Text("{\"a\":1}".into())
        );
        let anthropic = json!({"type":"message","content":[{"type":"text","text":"yo"},{"type":"tool_use","name":"g","input":{"b":2}}]});
        assert_eq!(response_text(&anthropic), "yo");
        assert_eq!(tool_calls(&anthropic)[0].name, "g");
        let gemini = json!({"candidates":[{"content":{"parts":[{"text":"g1"},{"functionCall":{"name":"h","args":{}}}]}}]});
        assert_eq!(response_text(&gemini), "g1");
        assert_eq!(tool_calls(&gemini)[0].name, "h");
        let tools = declared_tools(&json!({"tools":[
            {"type":"function","function":{"name":"f","parameters":{"type":"object"}}},
            {"name":"g","input_schema":{"type":"object"}},
            {"functionDeclarations":[{"name":"h","parameters":{"type":"OBJECT"}}]}
        ]}));
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["f", "g", "h"]);
        assert_eq!(tools[2].parameters, Some(json!({"type":"object"})));
        assert_eq!(
            input_text(
                &json!({"messages":[{"role":"user","content":"q1"},{"role":"assistant","content":"a"},{"role":"user","content":[{"type":"text","text":"q2"}]}]})
            ),
            "q2"
        );
    }
}
