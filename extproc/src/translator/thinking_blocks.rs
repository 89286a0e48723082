//! Anthropic-style thinking carried through an OpenAI chat body: an assistant message's
//! `thinking_blocks` member (`[{"type": "thinking", "thinking", "signature"}]` or
//! `{"type": "redacted_thinking", "data"}`, the shape LiteLLM uses) becomes the hub's
//! [`Part::Thinking`] blocks at the start of that turn. The Responses API writes it from
//! reasoning items Tollgate issued (`rs_tg_…`), so a thinking + tools loop reaches Anthropic,
//! Vertex Claude and Bedrock Claude with each signature intact. No other provider can check
//! those signatures: [`drop_thinking`] removes them from the hub request, and
//! [`strip_raw_messages`] from the byte-preserving OpenAI-family path.

use serde_json::Value;

use super::hub::{ChatRequest, Part};

/// The member's name.
pub const MEMBER: &str = "thinking_blocks";

/// Removes every thinking block from `req`'s messages.
pub fn drop_thinking(req: &mut ChatRequest) {
    for m in &mut req.messages {
        m.content
            .retain(|p| !matches!(p, Part::Thinking { .. } | Part::RedactedThinking { .. }));
    }
    // A turn that held nothing but thinking is gone too.
    req.messages.retain(|m| !m.content.is_empty());
}

/// `messages` (raw JSON text) without any message's `thinking_blocks` (`None`: none had
/// them, after one scan).
pub fn strip_raw_messages(raw: &str) -> Option<String> {
    memchr::memmem::find(raw.as_bytes(), MEMBER.as_bytes())?;
    let mut messages: Value = serde_json::from_str(raw).ok()?;
    let mut changed = false;
    for m in messages.as_array_mut()? {
        if let Some(o) = m.as_object_mut() {
            changed |= o.remove(MEMBER).is_some();
        }
    }
    changed.then(|| messages.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::hub::{Message, Role};

    #[test]
    fn thinking_is_dropped_and_empty_turns_with_it() {
        let mut req = ChatRequest {
            messages: vec![
                Message {
                    role: Role::Assistant,
                    content: vec![Part::Thinking {
                        text: "t".into(),
                        signature: Some("s".into()),
                    }],
                },
                Message {
                    role: Role::Assistant,
                    content: vec![
                        Part::RedactedThinking { data: "d".into() },
                        Part::Text("hi".into()),
                    ],
                },
            ],
            ..Default::default()
        };
        drop_thinking(&mut req);
        assert_eq!(req.messages.len(), 1);
        assert_eq!(req.messages[0].content, vec![Part::Text("hi".into())]);
    }

    #[test]
    fn raw_messages_lose_the_member() {
        let raw = r#"[{"role":"assistant","content":"x","thinking_blocks":[{"type":"thinking","thinking":"t","signature":"s"}]}]"#;
        let out: Value = serde_json::from_str(&strip_raw_messages(raw).unwrap()).unwrap();
        assert_eq!(
            out[0],
            serde_json::json!({"role": "assistant", "content": "x"})
        );
        assert!(strip_raw_messages(r#"[{"role":"user","content":"x"}]"#).is_none());
    }
}
