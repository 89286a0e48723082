//! OpenAI's legacy Completions API (`POST /v1/completions`) ⇄ hub, for providers of another
//! dialect (Anthropic, Gemini, Vertex AI, Bedrock): the prompt becomes one user turn, the
//! answer a `text_completion` object, the stream `text_completion` chunks.
//!
//! - `prompt`: a string, or an array of one string. Several prompts (OpenAI answers one choice
//!   each) and token-id prompts are refused (400 `prompt`): the hub has one conversation.
//! - `max_tokens` (OpenAI's default for this API, [`DEFAULT_MAX_TOKENS`], when absent),
//!   `temperature`, `top_p`, `stop`, `stream`, `stream_options.include_usage`, `user` carry
//!   over; `echo`, `logprobs`, `best_of` > 1, `suffix` and `n` > 1 change what the client
//!   gets back and cannot be served: 400 naming the member. Other members (penalties, `seed`,
//!   `logit_bias`) are dropped, as on the chat path.
//! - `finish_reason`: `stop` or `length` (`content_filter` for a refusal).

use serde_json::{json, Value};
use tollgate_core::Usage;

use super::codec::member;
use super::codec::openai::{WireStop, WireStreamOptions};
use super::error::{invalid, TranslateError};
use super::hub::{ChatRequest, Delta, Message, Part, Role, StopReason, StreamEvent};
use super::json::RawObject;
use crate::stream::{self, Frame};

/// The `max_tokens` OpenAI's Completions API applies when a request sets none.
pub const DEFAULT_MAX_TOKENS: u64 = 16;

fn unsupported(param: &'static str, message: &str) -> TranslateError {
    TranslateError::Unsupported {
        param,
        message: message.to_owned(),
    }
}

/// The prompt of a Completions body: a string or an array of one string.
fn prompt(obj: &RawObject<'_>) -> Result<String, TranslateError> {
    let several = || {
        unsupported(
            "prompt",
            "This model's provider takes one prompt per request: send one string in `prompt`.",
        )
    };
    let tokens = || {
        unsupported(
            "prompt",
            "Token-id prompts can only be sent to OpenAI-family providers: send the text.",
        )
    };
    match member::<Value>(obj, "prompt")? {
        None => Err(invalid("prompt", "it is required")),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => Ok(s.clone()),
            [] => Err(invalid("prompt", "it must not be empty")),
            items if items.iter().all(Value::is_string) => Err(several()),
            items if items.iter().all(|i| i.is_u64() || i.is_array()) => Err(tokens()),
            _ => Err(invalid(
                "prompt",
                "it must be a string or an array of strings",
            )),
        },
        Some(_) => Err(invalid(
            "prompt",
            "it must be a string or an array of strings",
        )),
    }
}

/// A client's Completions request as a hub chat request of one user turn.
pub fn request_from_wire(
    obj: &RawObject<'_>,
    model: &str,
    stream: bool,
) -> Result<ChatRequest, TranslateError> {
    if member::<bool>(obj, "echo")? == Some(true) {
        return Err(unsupported(
            "echo",
            "This model's provider cannot echo the prompt: leave `echo` out.",
        ));
    }
    if member::<Value>(obj, "logprobs")?.is_some() {
        return Err(unsupported(
            "logprobs",
            "This model's provider does not return log probabilities.",
        ));
    }
    if member::<u64>(obj, "best_of")?.is_some_and(|n| n > 1) {
        return Err(unsupported(
            "best_of",
            "This model's provider returns one completion per request: `best_of` must be 1.",
        ));
    }
    if member::<String>(obj, "suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(unsupported(
            "suffix",
            "This model's provider does not complete text before a suffix.",
        ));
    }
    if member::<u64>(obj, "n")?.is_some_and(|n| n > 1) {
        return Err(unsupported(
            "n",
            "This model's provider returns one choice per request: `n` must be 1.",
        ));
    }
    let text = prompt(obj)?;
    Ok(ChatRequest {
        model: model.to_owned(),
        messages: vec![Message {
            role: Role::User,
            content: vec![Part::Text(text)],
        }],
        max_tokens: Some(member(obj, "max_tokens")?.unwrap_or(DEFAULT_MAX_TOKENS)),
        temperature: member(obj, "temperature")?,
        top_p: member(obj, "top_p")?,
        stop: match member::<WireStop>(obj, "stop")? {
            None => Vec::new(),
            Some(WireStop::One(s)) => vec![s],
            Some(WireStop::Many(v)) => v,
        },
        stream,
        include_usage: member::<WireStreamOptions>(obj, "stream_options")?
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        user: member(obj, "user")?,
        ..Default::default()
    })
}

fn finish_reason(chat: Option<&str>) -> &'static str {
    match chat {
        Some("length") => "length",
        Some("content_filter") => "content_filter",
        _ => "stop",
    }
}

fn stop_finish_reason(s: Option<StopReason>) -> &'static str {
    match s {
        Some(StopReason::MaxTokens) => "length",
        Some(StopReason::Refusal) => "content_filter",
        Some(
            StopReason::EndTurn
            | StopReason::StopSequence
            | StopReason::ToolUse
            | StopReason::PauseTurn,
        )
        | None => "stop",
    }
}

/// A `chat.completion` body the hub wrote for an OpenAI client, as the `text_completion`
/// object a Completions client expects (`None`: not a chat completion).
pub fn text_completion_of_chat(body: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choice = v.get("choices")?.get(0)?;
    let text = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let usage = v.get("usage").cloned().unwrap_or(Value::Null);
    let usage = json!({
        "prompt_tokens": usage["prompt_tokens"].as_u64().unwrap_or(0),
        "completion_tokens": usage["completion_tokens"].as_u64().unwrap_or(0),
        "total_tokens": usage["total_tokens"].as_u64().unwrap_or(0),
    });
    serde_json::to_vec(&json!({
        "id": v["id"],
        "object": "text_completion",
        "created": v["created"],
        "model": v["model"],
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish_reason(choice.get("finish_reason").and_then(Value::as_str)),
        }],
        "usage": usage,
    }))
    .ok()
}

fn usage_value(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// Hub events → `text_completion` stream chunks for a Completions client.
#[derive(Debug)]
pub struct StreamEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
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
            ended: false,
        }
    }

    fn chunk(&self, text: &str, finish: Option<&str>, out: &mut Vec<Frame<'_>>) {
        out.push(Frame::json(json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
        })));
    }

    /// Encodes one hub event (reasoning and tool calls have no place in a text completion).
    pub fn encode(&mut self, e: StreamEvent, out: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        match e {
            StreamEvent::Start { id, model, .. } => {
                self.id = id;
                self.model = model;
            }
            StreamEvent::Delta {
                delta: Delta::Text(t),
                ..
            } if !t.is_empty() => self.chunk(&t, None, out),
            StreamEvent::Delta { .. }
            | StreamEvent::BlockStart { .. }
            | StreamEvent::BlockStop { .. } => {}
            StreamEvent::Finish {
                stop_reason, usage, ..
            } => {
                self.chunk("", Some(stop_finish_reason(stop_reason)), out);
                if self.include_usage {
                    out.push(Frame::json(json!({
                        "id": self.id,
                        "object": "text_completion",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_value(&usage.unwrap_or_default()),
                    })));
                }
            }
            StreamEvent::Stop => {
                self.ended = true;
                out.push(Frame::fixed(stream::DONE));
            }
            StreamEvent::Error(e) => {
                self.ended = true;
                let fallback = tollgate_core::ApiError::Upstream(e.status)
                    .class()
                    .openai_type;
                out.push(Frame::json(json!({"error": {
                    "message": e.message,
                    "type": e.kind.as_deref().unwrap_or(fallback),
                    "param": null,
                    "code": null,
                }})));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::hub::{BlockKind, ErrorInfo};
    use crate::translator::{codec, Pair};
    use tollgate_core::config::ApiFamily;

    fn obj(s: &str) -> RawObject<'_> {
        RawObject::parse(s.as_bytes()).unwrap()
    }

    fn pair(upstream: ApiFamily) -> Pair {
        Pair {
            client: ApiFamily::OpenAi,
            upstream,
        }
    }

    fn encoded(upstream: ApiFamily, body: &str, stream: bool) -> Value {
        let req = request_from_wire(&obj(body), "up", stream).unwrap();
        let (bytes, _) = pair(upstream).encode_request(req).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Golden requests: the prompt is one user turn in each provider's dialect.
    #[test]
    fn the_prompt_becomes_one_user_turn_for_each_provider() {
        let body = r#"{"model":"m","prompt":"Say hi","max_tokens":5,"temperature":0.5,"top_p":0.9,"stop":"\n"}"#;
        assert_eq!(
            encoded(ApiFamily::Anthropic, body, false),
            json!({"model": "up", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
                "stop_sequences": ["\n"],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}]})
        );
        let g = encoded(ApiFamily::Gemini, body, false);
        assert_eq!(
            g["contents"],
            json!([{"role": "user", "parts": [{"text": "Say hi"}]}])
        );
        assert_eq!(
            g["generationConfig"],
            json!({"maxOutputTokens": 5, "temperature": 0.5, "topP": 0.9, "stopSequences": ["\n"]})
        );
        let b = encoded(
            ApiFamily::Bedrock,
            r#"{"model":"m","prompt":["Say hi"]}"#,
            true,
        );
        assert_eq!(
            b["messages"],
            json!([{"role": "user", "content": [{"text": "Say hi"}]}])
        );
        // OpenAI's default for this API.
        assert_eq!(b["inferenceConfig"]["maxTokens"], DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn what_cannot_be_served_is_refused_by_name() {
        for (body, param) in [
            (r#"{"prompt":"a","echo":true}"#, "echo"),
            (r#"{"prompt":"a","logprobs":2}"#, "logprobs"),
            (r#"{"prompt":"a","best_of":3}"#, "best_of"),
            (r#"{"prompt":"a","suffix":"end"}"#, "suffix"),
            (r#"{"prompt":"a","n":2}"#, "n"),
            (r#"{"prompt":["a","b"]}"#, "prompt"),
            (r#"{"prompt":[1,2,3]}"#, "prompt"),
            (r#"{"prompt":[[1,2]]}"#, "prompt"),
            (r#"{"prompt":[]}"#, "prompt"),
            (r#"{"prompt":5}"#, "prompt"),
            (r#"{}"#, "prompt"),
        ] {
            let e = request_from_wire(&obj(body), "m", false)
                .unwrap_err()
                .api_error();
            let v: Value = serde_json::from_slice(&e.body(tollgate_core::Dialect::OpenAi)).unwrap();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(v["error"]["param"], param, "{body}: {v}");
        }
        // Members that change nothing the client gets back pass.
        for body in [
            r#"{"prompt":"a","echo":false,"best_of":1,"n":1,"suffix":null,"logprobs":null}"#,
            r#"{"prompt":"a","presence_penalty":1,"seed":3}"#,
        ] {
            assert!(request_from_wire(&obj(body), "m", false).is_ok(), "{body}");
        }
    }

    /// Golden answer: a chat completion the hub wrote becomes a text completion.
    #[test]
    fn a_chat_answer_becomes_a_text_completion() {
        let chat = codec::openai::response_to_wire(
            &crate::translator::hub::ChatResponse {
                id: "msg_1".into(),
                model: "claude-x".into(),
                content: vec![Part::Text("Hello there".into())],
                stop_reason: Some(StopReason::MaxTokens),
                stop_sequence: None,
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 2,
                    ..Default::default()
                },
            },
            42,
        );
        let v: Value = serde_json::from_slice(&text_completion_of_chat(&chat).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"id": "msg_1", "object": "text_completion", "created": 42, "model": "claude-x",
                "choices": [{"text": "Hello there", "index": 0, "logprobs": null, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
        );
        assert!(text_completion_of_chat(b"{}").is_none());
    }

    fn frames(enc: &mut StreamEncoder, events: Vec<StreamEvent>) -> String {
        let mut out = Vec::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        let mut bytes = Vec::new();
        for f in &out {
            f.write(&mut bytes);
        }
        String::from_utf8(bytes).unwrap()
    }

    /// Golden stream: text deltas become `text_completion` chunks, then the finish, the usage
    /// chunk the client asked for, and `[DONE]`.
    #[test]
    fn a_hub_stream_becomes_text_completion_chunks() {
        let mut enc = StreamEncoder::new(true, 7);
        let out = frames(
            &mut enc,
            vec![
                StreamEvent::Start {
                    id: "id1".into(),
                    model: "m".into(),
                    usage: Usage::default(),
                },
                StreamEvent::BlockStart {
                    index: 0,
                    block: BlockKind::Thinking,
                },
                StreamEvent::Delta {
                    index: 0,
                    delta: Delta::Thinking("hmm".into()),
                },
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::BlockStart {
                    index: 1,
                    block: BlockKind::Text,
                },
                StreamEvent::Delta {
                    index: 1,
                    delta: Delta::Text("Hi".into()),
                },
                StreamEvent::BlockStop { index: 1 },
                StreamEvent::Finish {
                    stop_reason: Some(StopReason::EndTurn),
                    stop_sequence: None,
                    usage: Some(Usage {
                        input_tokens: 4,
                        output_tokens: 1,
                        ..Default::default()
                    }),
                },
                StreamEvent::Stop,
            ],
        );
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{out}");
        let chunk = |i: usize| -> Value {
            serde_json::from_str(events[i].strip_prefix("data: ").unwrap()).unwrap()
        };
        assert_eq!(
            chunk(0),
            json!({"id": "id1", "object": "text_completion", "created": 7, "model": "m",
                "choices": [{"text": "Hi", "index": 0, "logprobs": null, "finish_reason": null}]})
        );
        assert_eq!(chunk(1)["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            chunk(2)["usage"],
            json!({"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5})
        );
        assert_eq!(events[3], "data: [DONE]");

        let mut enc = StreamEncoder::new(false, 7);
        let out = frames(
            &mut enc,
            vec![StreamEvent::Error(ErrorInfo {
                status: 529,
                kind: Some("overloaded_error".into()),
                message: "Overloaded".into(),
            })],
        );
        assert!(out.starts_with("data: {\"error\""), "{out}");
        assert!(out.contains("overloaded_error"), "{out}");
    }
}
