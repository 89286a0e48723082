//! Between a cached complete answer and a stream, in one client dialect: a hit on a streaming
//! request is replayed as a well-formed stream (hub events from the complete answer, through
//! the dialect's own stream encoder, usage included), and a streamed answer is assembled
//! into the complete one that is stored (the client's events decoded back into hub events).

use std::collections::HashMap;

use tollgate_core::Usage;

use super::Family;
use crate::stream::{event_data, event_end, Frame};
use crate::translator::codec::{anthropic, gemini, openai};
use crate::translator::hub::{
    BlockKind, ChatResponse, Delta, Part, StopReason, StreamEvent, ToolCall,
};

/// A complete answer in `family`'s dialect, decoded (`None`: not a chat answer).
pub fn decode_complete(family: Family, body: &[u8]) -> Option<ChatResponse> {
    match family {
        Family::OpenAi => openai::response_from_wire(body),
        Family::Anthropic => anthropic::response_from_wire(body),
        Family::Gemini => gemini::response_from_wire(body),
        Family::Responses => return super::responses::decode(body),
    }
    .ok()
}

/// Whether an answer ended the normal way (not refused, filtered or paused): only such
/// answers are stored.
pub fn normal_stop(r: &ChatResponse) -> bool {
    matches!(
        r.stop_reason,
        Some(
            StopReason::EndTurn
                | StopReason::StopSequence
                | StopReason::ToolUse
                | StopReason::MaxTokens
        )
    )
}

/// The stream of a cached complete answer `body` in `family`'s dialect (`include_usage`: an
/// OpenAI client asked for the usage chunk; `created`: the `created` of OpenAI chunks);
/// `None` when the body is not a chat answer.
pub fn stream_of(
    family: Family,
    body: &[u8],
    include_usage: bool,
    created: u64,
) -> Option<Vec<u8>> {
    // A Responses hit is written with its own request's envelope (see `processor::cache`).
    if family == Family::Responses {
        return None;
    }
    let r = decode_complete(family, body)?;
    let events = events_of(&r);
    let mut frames: Vec<Frame<'_>> = Vec::new();
    match family {
        Family::OpenAi => {
            let mut enc = openai::StreamEncoder::new(include_usage, created);
            for e in events {
                enc.encode(e, &mut frames);
            }
        }
        Family::Anthropic => {
            let mut enc = anthropic::StreamEncoder::default();
            for e in events {
                enc.encode(e, &mut frames);
            }
        }
        Family::Gemini => {
            let mut enc = gemini::StreamEncoder::default();
            for e in events {
                enc.encode(e, &mut frames);
            }
        }
        Family::Responses => {}
    }
    let mut out = Vec::with_capacity(body.len() * 2 + 256);
    for f in &frames {
        f.write(&mut out);
    }
    Some(out)
}

/// The hub events of a complete answer: one block per part, each whole in one delta.
pub fn events_of(r: &ChatResponse) -> Vec<StreamEvent> {
    let mut events = Vec::with_capacity(2 + r.content.len() * 3 + 2);
    events.push(StreamEvent::Start {
        id: r.id.clone(),
        model: r.model.clone(),
        usage: Usage {
            output_tokens: 0,
            ..r.usage
        },
    });
    let mut index = 0;
    for part in &r.content {
        let (block, delta) = match part {
            Part::Text(t) => (BlockKind::Text, Some(Delta::Text(t.clone()))),
            Part::ToolCall(c) => (
                BlockKind::ToolCall {
                    id: c.id.clone(),
                    name: c.name.clone(),
                },
                Some(Delta::ToolArguments(c.arguments.clone())),
            ),
            Part::Thinking { text, signature } => {
                events.push(StreamEvent::BlockStart {
                    index,
                    block: BlockKind::Thinking,
                });
                events.push(StreamEvent::Delta {
                    index,
                    delta: Delta::Thinking(text.clone()),
                });
                if let Some(s) = signature {
                    events.push(StreamEvent::Delta {
                        index,
                        delta: Delta::Signature(s.clone()),
                    });
                }
                events.push(StreamEvent::BlockStop { index });
                index += 1;
                continue;
            }
            Part::RedactedThinking { data } => {
                (BlockKind::RedactedThinking { data: data.clone() }, None)
            }
            // Not in answers.
            Part::Image(_) | Part::ToolResult(_) | Part::CachePoint => continue,
        };
        events.push(StreamEvent::BlockStart { index, block });
        if let Some(delta) = delta {
            events.push(StreamEvent::Delta { index, delta });
        }
        events.push(StreamEvent::BlockStop { index });
        index += 1;
    }
    events.push(StreamEvent::Finish {
        stop_reason: r.stop_reason,
        stop_sequence: r.stop_sequence.clone(),
        usage: Some(r.usage),
    });
    events.push(StreamEvent::Stop);
    events
}

/// Assembles a stream the client got, in its dialect, into the complete answer; bounded:
/// more than `max_bytes` of stream gives up.
#[derive(Debug)]
pub struct Assembler {
    family: Family,
    bytes: Vec<u8>,
    max_bytes: usize,
    overflowed: bool,
}

impl Assembler {
    /// An assembler of a `family` stream of at most `max_bytes`.
    pub fn new(family: Family, max_bytes: usize) -> Self {
        Self {
            family,
            bytes: Vec::new(),
            max_bytes,
            overflowed: false,
        }
    }

    /// Takes the next bytes the client got.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.bytes.len() + chunk.len() > self.max_bytes {
            self.overflowed = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }

    /// Whether the stream grew past the bound.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The complete answer in the client's dialect, with `usage` when the stream carried
    /// none (an OpenAI client that did not ask for the usage chunk); `None` when the stream
    /// was not whole (an error event, no end, no normal stop) or overflowed.
    pub fn finish(self, usage: Option<Usage>, created: u64) -> Option<Vec<u8>> {
        if self.overflowed {
            return None;
        }
        let mut events = Vec::new();
        let mut buf: &[u8] = &self.bytes;
        match self.family {
            // The final `response` object the stream carries is the complete answer.
            Family::Responses => return super::responses::final_of_stream(&self.bytes),
            Family::OpenAi => {
                let mut d = openai::StreamDecoder::default();
                while let Some(len) = event_end(buf) {
                    let data = event_data(&buf[..len]);
                    buf = &buf[len..];
                    if data.is_empty() || data == b"[DONE]" {
                        continue;
                    }
                    d.decode(&data, &mut events);
                }
                d.finish(&mut events);
            }
            Family::Anthropic => {
                let mut d = anthropic::StreamDecoder::default();
                while let Some(len) = event_end(buf) {
                    let data = event_data(&buf[..len]);
                    buf = &buf[len..];
                    if !data.is_empty() {
                        d.decode(&data, &mut events);
                    }
                }
            }
            Family::Gemini => {
                let mut d = gemini::StreamDecoder::default();
                while let Some(len) = event_end(buf) {
                    let data = event_data(&buf[..len]);
                    buf = &buf[len..];
                    if !data.is_empty() {
                        d.decode(&data, &mut events);
                    }
                }
            }
        }
        let mut r = fold(events)?;
        if let Some(u) = usage {
            if r.usage.input_tokens == 0 && r.usage.output_tokens == 0 {
                r.usage = u;
            }
        }
        if !normal_stop(&r) {
            return None;
        }
        Some(match self.family {
            Family::OpenAi => openai::response_to_wire(&r, created),
            Family::Anthropic => anthropic::response_to_wire(&r),
            Family::Gemini => gemini::response_to_wire(&r),
            Family::Responses => return None,
        })
    }
}

/// Hub events folded into the complete answer; `None` unless the stream started, finished
/// and stopped without an error.
fn fold(events: Vec<StreamEvent>) -> Option<ChatResponse> {
    let mut r = ChatResponse {
        id: String::new(),
        model: String::new(),
        content: Vec::new(),
        stop_reason: None,
        stop_sequence: None,
        usage: Usage::default(),
    };
    let mut at: HashMap<usize, usize> = HashMap::new();
    let (mut started, mut finished) = (false, false);
    for e in events {
        match e {
            StreamEvent::Start { id, model, usage } => {
                started = true;
                r.id = id;
                r.model = model;
                r.usage = usage;
            }
            StreamEvent::BlockStart { index, block } => {
                at.insert(index, r.content.len());
                r.content.push(match block {
                    BlockKind::Text => Part::Text(String::new()),
                    BlockKind::ToolCall { id, name } => Part::ToolCall(ToolCall {
                        id,
                        name,
                        arguments: String::new(),
                    }),
                    BlockKind::Thinking => Part::Thinking {
                        text: String::new(),
                        signature: None,
                    },
                    BlockKind::RedactedThinking { data } => Part::RedactedThinking { data },
                });
            }
            StreamEvent::Delta { index, delta } => {
                let part = at.get(&index).and_then(|i| r.content.get_mut(*i))?;
                match (part, delta) {
                    (Part::Text(t), Delta::Text(d)) => t.push_str(&d),
                    (Part::ToolCall(c), Delta::ToolArguments(d)) => c.arguments.push_str(&d),
                    (Part::Thinking { text, .. }, Delta::Thinking(d)) => text.push_str(&d),
                    (Part::Thinking { signature, .. }, Delta::Signature(s)) => {
                        signature.get_or_insert_with(String::new).push_str(&s);
                    }
                    _ => return None,
                }
            }
            StreamEvent::BlockStop { .. } => {}
            StreamEvent::Finish {
                stop_reason,
                stop_sequence,
                usage,
            } => {
                finished = true;
                r.stop_reason = stop_reason;
                r.stop_sequence = stop_sequence;
                if let Some(u) = usage {
                    r.usage = u;
                }
            }
            StreamEvent::Stop => {}
            StreamEvent::Error(_) => return None,
        }
    }
    (started && finished).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;

    #[test]
    fn a_complete_answer_replays_as_a_stream_and_assembles_back() {
        for family in [Family::OpenAi, Family::Anthropic, Family::Gemini] {
            let r = decode_complete(Family::OpenAi, OPENAI.as_bytes()).unwrap();
            let body = match family {
                Family::OpenAi => openai::response_to_wire(&r, 1),
                Family::Anthropic => anthropic::response_to_wire(&r),
                Family::Gemini => gemini::response_to_wire(&r),
                Family::Responses => unreachable!(),
            };
            let stream = stream_of(family, &body, true, 1).unwrap();
            let text = String::from_utf8(stream.clone()).unwrap();
            assert!(text.contains("Hello there"), "{family:?}: {text}");
            let mut a = Assembler::new(family, 1 << 20);
            // Split anywhere: the assembler reads whole events only.
            let (x, y) = stream.split_at(stream.len() / 2);
            a.push(x);
            a.push(y);
            let back = a.finish(None, 1).unwrap();
            let again = decode_complete(family, &back).unwrap();
            assert_eq!(again.content, vec![Part::Text("Hello there".into())]);
            assert_eq!(again.usage.output_tokens, 2, "{family:?}");
        }
    }

    #[test]
    fn an_unfinished_or_oversized_stream_is_not_assembled() {
        let body = OPENAI.as_bytes();
        let stream = stream_of(Family::OpenAi, body, true, 1).unwrap();
        let mut a = Assembler::new(Family::OpenAi, 1 << 20);
        a.push(&stream[..stream.len() / 3]);
        assert!(a.finish(None, 1).is_none());
        let mut b = Assembler::new(Family::OpenAi, 10);
        b.push(&stream);
        assert!(b.overflowed());
        assert!(b.finish(None, 1).is_none());
    }
}
