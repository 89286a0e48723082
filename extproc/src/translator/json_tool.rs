//! JSON mode for providers that have none (Anthropic; any provider whose codec lacks a native
//! form): the `response_format` becomes one forced tool whose input schema is the requested
//! schema, and the call the model makes comes back to the client as the answer's text, in
//! complete bodies and in streams alike. Stateless on the request side; the response side
//! recognises the tool by its reserved name, which clients may not use for tools of their own.

use serde_json::json;

use super::error::TranslateError;
use super::hub::{
    BlockKind, ChatRequest, ChatResponse, Delta, Part, ResponseFormat, StopReason, StreamEvent,
    Tool, ToolChoice,
};

/// The reserved name of the tool that carries the answer.
pub const JSON_TOOL: &str = "tollgate_json_response";

fn unsupported(message: &str) -> TranslateError {
    TranslateError::Unsupported {
        param: "response_format",
        message: message.to_owned(),
    }
}

/// Replaces `req.response_format` by the forced [`JSON_TOOL`]. Refused when the client sends
/// tools of its own (the forced call would keep the model from using them) or a schema whose
/// root is not an object (a tool's input always is). Reasoning is left to the provider's
/// default, since forced tool use and extended thinking exclude each other.
pub fn into_tool(req: &mut ChatRequest) -> Result<(), TranslateError> {
    let Some(format) = req.response_format.take() else {
        return Ok(());
    };
    if !req.tools.is_empty() {
        return Err(unsupported(
            "This model's provider has no JSON mode; Tollgate emulates it with a tool, which cannot be combined with the request's own `tools`.",
        ));
    }
    let (description, schema) = match format {
        ResponseFormat::JsonObject => (
            "Give the complete answer as a JSON object.".to_owned(),
            json!({"type": "object"}),
        ),
        ResponseFormat::JsonSchema { name, schema } => {
            if schema.get("type").is_some_and(|t| t != "object") {
                return Err(unsupported(
                    "This model's provider has no JSON mode; Tollgate emulates it with a tool, whose schema must describe an object.",
                ));
            }
            (
                format!("Give the complete answer as the JSON object `{name}`."),
                schema,
            )
        }
    };
    req.tools.push(Tool {
        name: JSON_TOOL.to_owned(),
        description: Some(description),
        parameters: schema,
    });
    req.tool_choice = Some(ToolChoice::Tool(JSON_TOOL.to_owned()));
    req.reasoning = None;
    Ok(())
}

/// A client tool may not take the reserved name.
pub fn check_tool_names(req: &ChatRequest) -> Result<(), TranslateError> {
    if req.tools.iter().any(|t| t.name == JSON_TOOL) {
        return Err(TranslateError::Unsupported {
            param: "tools",
            message: format!("The tool name `{JSON_TOOL}` is reserved by the gateway."),
        });
    }
    Ok(())
}

/// The call to [`JSON_TOOL`] in a complete response becomes the answer's text.
pub fn unwrap_response(r: &mut ChatResponse) {
    let mut found = false;
    for part in &mut r.content {
        if let Part::ToolCall(c) = part {
            if c.name == JSON_TOOL {
                *part = Part::Text(std::mem::take(&mut c.arguments));
                found = true;
            }
        }
    }
    if found && r.stop_reason == Some(StopReason::ToolUse) {
        r.stop_reason = Some(StopReason::EndTurn);
    }
}

fn is_json_tool(block: &BlockKind) -> bool {
    matches!(block, BlockKind::ToolCall { name, .. } if name == JSON_TOOL)
}

/// The stream-side counterpart of [`unwrap_response`]: the [`JSON_TOOL`] block becomes a text
/// block, its argument deltas text deltas.
#[derive(Debug, Default)]
pub struct StreamUnwrap {
    /// The index of the JSON block, once started.
    block: Option<usize>,
}

impl StreamUnwrap {
    /// Rewrites `events` in place.
    pub fn apply(&mut self, events: &mut [StreamEvent]) {
        for e in events {
            match e {
                StreamEvent::BlockStart { index, block } if is_json_tool(block) => {
                    self.block = Some(*index);
                    *block = BlockKind::Text;
                }
                StreamEvent::Delta { index, delta } if Some(*index) == self.block => {
                    if let Delta::ToolArguments(a) = delta {
                        *delta = Delta::Text(std::mem::take(a));
                    }
                }
                StreamEvent::Finish { stop_reason, .. }
                    if self.block.is_some() && *stop_reason == Some(StopReason::ToolUse) =>
                {
                    *stop_reason = Some(StopReason::EndTurn);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::hub::ToolCall;

    fn asked(format: ResponseFormat) -> ChatRequest {
        ChatRequest {
            response_format: Some(format),
            ..Default::default()
        }
    }

    #[test]
    fn a_schema_becomes_one_forced_tool_and_its_call_the_text() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let mut req = asked(ResponseFormat::JsonSchema {
            name: "weather".into(),
            schema: schema.clone(),
        });
        into_tool(&mut req).unwrap();
        assert_eq!(req.response_format, None);
        assert_eq!(req.tools.len(), 1);
        assert_eq!(req.tools[0].parameters, schema);
        assert_eq!(req.tool_choice, Some(ToolChoice::Tool(JSON_TOOL.into())));

        let mut r = ChatResponse {
            id: "m".into(),
            model: "c".into(),
            content: vec![Part::ToolCall(ToolCall {
                id: "t".into(),
                name: JSON_TOOL.into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            })],
            stop_reason: Some(StopReason::ToolUse),
            stop_sequence: None,
            usage: Default::default(),
        };
        unwrap_response(&mut r);
        assert_eq!(r.content, vec![Part::Text(r#"{"city":"Paris"}"#.into())]);
        assert_eq!(r.stop_reason, Some(StopReason::EndTurn));
    }

    #[test]
    fn json_mode_cannot_hide_the_clients_own_tools_or_a_non_object_schema() {
        let mut req = asked(ResponseFormat::JsonObject);
        req.tools.push(Tool {
            name: "f".into(),
            description: None,
            parameters: json!({}),
        });
        assert!(into_tool(&mut req).is_err());
        let mut req = asked(ResponseFormat::JsonSchema {
            name: "list".into(),
            schema: json!({"type": "array"}),
        });
        assert!(into_tool(&mut req).is_err());
        let mut req = ChatRequest::default();
        req.tools.push(Tool {
            name: JSON_TOOL.into(),
            description: None,
            parameters: json!({}),
        });
        assert!(check_tool_names(&req).is_err());
    }

    #[test]
    fn streamed_calls_of_the_json_tool_become_text_and_other_tools_stay() {
        let call = |name: &str| BlockKind::ToolCall {
            id: "t".into(),
            name: name.into(),
        };
        let mut events = vec![
            StreamEvent::BlockStart {
                index: 0,
                block: call(JSON_TOOL),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::ToolArguments("{\"a\":".into()),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::ToolArguments("1}".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Finish {
                stop_reason: Some(StopReason::ToolUse),
                stop_sequence: None,
                usage: None,
            },
        ];
        StreamUnwrap::default().apply(&mut events);
        assert_eq!(
            events[0],
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::Text
            }
        );
        assert_eq!(
            events[2],
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("1}".into())
            }
        );
        assert!(matches!(
            events[4],
            StreamEvent::Finish {
                stop_reason: Some(StopReason::EndTurn),
                ..
            }
        ));
        // An ordinary tool call is left alone.
        let mut events = vec![
            StreamEvent::BlockStart {
                index: 0,
                block: call("get_weather"),
            },
            StreamEvent::Finish {
                stop_reason: Some(StopReason::ToolUse),
                stop_sequence: None,
                usage: None,
            },
        ];
        let before = events.clone();
        StreamUnwrap::default().apply(&mut events);
        assert_eq!(events, before);
    }
}
