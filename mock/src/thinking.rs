//! Extended thinking as Anthropic's Messages API does it: with `thinking: {type: "enabled",
//! budget_tokens}` the answer starts with a `thinking` block signed by the mock, and the
//! request is checked as Anthropic checks it — every `thinking` block sent back must carry a
//! signature the mock issued for that very text, and while a tool loop is under way (the last
//! user turn holds `tool_result`s) the assistant turn with the `tool_use` must start with a
//! `thinking` or `redacted_thinking` block. The signature scheme is the mock's own (FNV-1a
//! of the text), sharing nothing with the gateway.

use serde_json::Value;

use crate::error::MockError;

/// The text of every thinking block the mock writes.
pub(crate) const THOUGHT: &str = "The user wants an answer; I will think briefly, then reply.";

/// Whether the request turns thinking on.
pub(crate) fn enabled(request: &serde_json::Map<String, Value>) -> bool {
    request
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "enabled" || t == "adaptive")
}

/// The mock's signature of a thinking text.
pub(crate) fn signature(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("EqMockSig{h:016x}")
}

fn invalid(message: String) -> MockError {
    MockError::InvalidParameter {
        param: "messages",
        message,
    }
}

/// Checks the thinking blocks of `messages` as Anthropic does (`on`: thinking is enabled).
pub(crate) fn check(messages: &[Value], on: bool) -> Result<(), MockError> {
    for (i, m) in messages.iter().enumerate() {
        let Some(blocks) = m.get("content").and_then(Value::as_array) else {
            continue;
        };
        for (j, b) in blocks.iter().enumerate() {
            if b["type"] != "thinking" {
                continue;
            }
            let text = b["thinking"].as_str().unwrap_or_default();
            if b["signature"].as_str() != Some(signature(text).as_str()) {
                return Err(invalid(format!(
                    "messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
                )));
            }
        }
    }
    if !on {
        return Ok(());
    }
    let in_tool_loop = messages.last().is_some_and(|m| {
        m["role"] == "user"
            && m["content"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"))
    });
    if !in_tool_loop {
        return Ok(());
    }
    let Some((i, turn)) = messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m["role"] == "assistant")
    else {
        return Ok(());
    };
    let first = turn["content"]
        .as_array()
        .and_then(|b| b.first())
        .and_then(|b| b["type"].as_str())
        .unwrap_or("text");
    if first != "thinking" && first != "redacted_thinking" {
        return Err(invalid(format!(
            "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found \
             `{first}`. When `thinking` is enabled, a final `assistant` message must start with a \
             thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). \
             We recommend you include thinking blocks from previous turns. To avoid this \
             requirement, disable `thinking`."
        )));
    }
    Ok(())
}

/// Whether a Bedrock Converse request turns Claude's thinking on
/// (`additionalModelRequestFields.thinking`).
pub(crate) fn enabled_on_bedrock(request: &serde_json::Map<String, Value>) -> bool {
    request
        .get("additionalModelRequestFields")
        .and_then(Value::as_object)
        .is_some_and(enabled)
}

/// Bedrock Converse messages in Anthropic's block shape, for [`check`].
pub(crate) fn from_bedrock(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let blocks: Vec<Value> = m["content"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    if let Some(r) = b.get("reasoningContent") {
                        if let Some(t) = r.get("reasoningText") {
                            return serde_json::json!({"type": "thinking",
                                "thinking": t["text"], "signature": t["signature"]});
                        }
                        return serde_json::json!({"type": "redacted_thinking"});
                    }
                    let kind = if b.get("toolUse").is_some() {
                        "tool_use"
                    } else if b.get("toolResult").is_some() {
                        "tool_result"
                    } else {
                        "text"
                    };
                    serde_json::json!({"type": kind})
                })
                .collect();
            serde_json::json!({"role": m["role"], "content": blocks})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn turn(first: Value) -> Vec<Value> {
        vec![
            json!({"role": "user", "content": "weather?"}),
            json!({"role": "assistant", "content": [first,
                {"type": "tool_use", "id": "t", "name": "get", "input": {}}]}),
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "sunny"}]}),
        ]
    }

    #[test]
    fn a_tool_loop_with_thinking_needs_the_signed_block_first() {
        let signed =
            json!({"type": "thinking", "thinking": THOUGHT, "signature": signature(THOUGHT)});
        assert!(check(&turn(signed.clone()), true).is_ok());
        let text = json!({"type": "text", "text": "Calling."});
        let e = check(&turn(text.clone()), true).unwrap_err().to_string();
        assert!(
            e.contains("Expected `thinking` or `redacted_thinking`"),
            "{e}"
        );
        // Thinking off: no block required.
        assert!(check(&turn(text), false).is_ok());
        let forged = json!({"type": "thinking", "thinking": THOUGHT, "signature": "other"});
        let e = check(&turn(forged), false).unwrap_err().to_string();
        assert!(e.contains("Invalid `signature`"), "{e}");
        let redacted = json!({"type": "redacted_thinking", "data": "x"});
        assert!(check(&turn(redacted), true).is_ok());
    }
}
