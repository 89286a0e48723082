//! Responses objects and streams written from the hub: a complete `response` object from a
//! [`ChatResponse`], the Responses SSE event sequence from hub [`StreamEvent`]s (the one the
//! official `openai` SDK's `responses.stream()` accumulates: `response.created`,
//! `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`…, `…done`, function-call arguments, `response.completed`,
//! each with its `sequence_number`), and usage read from a provider's Responses bodies.

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tollgate_core::usage::UsageSource;
use tollgate_core::Usage;

use crate::stream::Frame;
use crate::translator::hub::{
    BlockKind, ChatResponse, Delta, ErrorInfo, Part, StopReason, StreamEvent,
};

/// What a response object says besides its output.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// `resp_…`.
    pub id: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The public model the client asked for.
    pub model: String,
    /// The request's members a response repeats ([`super::request::ResponsesRequest::echo`]).
    pub echo: Map<String, Value>,
    /// Whether the client asked for reasoning items' `encrypted_content`
    /// (`include: ["reasoning.encrypted_content"]`).
    pub include_encrypted: bool,
    /// The `encrypted_content` of reasoning items streamed without it, by item id: the stored
    /// response keeps it (shared with the stream encoder, which fills it).
    pub sealed: Sealed,
}

/// Reasoning items' `encrypted_content` kept back from a client that did not ask for it.
#[derive(Debug, Clone, Default)]
pub struct Sealed(Arc<Mutex<Vec<(String, String)>>>);

impl Sealed {
    fn keep(&self, id: &str, content: &str) {
        if let Ok(mut kept) = self.0.lock() {
            kept.push((id.to_owned(), content.to_owned()));
        }
    }

    /// Writes the kept `encrypted_content` back into the reasoning items of `response`'s
    /// output (for the store).
    pub fn restore(&self, response: &mut Value) {
        let Ok(kept) = self.0.lock() else {
            return;
        };
        if kept.is_empty() {
            return;
        }
        for item in response
            .get_mut("output")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
            if let Some((_, c)) = kept.iter().find(|(k, _)| k == id) {
                item["encrypted_content"] = Value::String(c.clone());
            }
        }
    }
}

/// Usage in the Responses shape.
pub fn usage_value(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    })
}

/// Usage from a Responses `usage` object (a complete body's, or `response.completed`'s).
pub fn usage_from_value(u: &Value) -> Option<Usage> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    if !u.is_object() {
        return None;
    }
    Some(Usage {
        input_tokens: n(&u["input_tokens"]),
        output_tokens: n(&u["output_tokens"]),
        cache_read_tokens: n(&u["input_tokens_details"]["cached_tokens"]),
        cache_write_tokens: 0,
        reasoning_tokens: n(&u["output_tokens_details"]["reasoning_tokens"]),
        source: UsageSource::Provider,
    })
}

fn status_of(stop: Option<StopReason>) -> (&'static str, Value) {
    match stop {
        Some(StopReason::MaxTokens) => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some(StopReason::Refusal) => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

impl Envelope {
    /// The response object with `output`, `status` and `usage`.
    pub fn object(
        &self,
        status: &str,
        incomplete: Value,
        output: Vec<Value>,
        usage: Option<&Usage>,
    ) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), Value::String(self.id.clone()));
        o.insert("object".into(), "response".into());
        o.insert("created_at".into(), self.created_at.into());
        o.insert("status".into(), status.into());
        o.insert("error".into(), Value::Null);
        o.insert("incomplete_details".into(), incomplete);
        o.insert("model".into(), Value::String(self.model.clone()));
        o.insert("output".into(), Value::Array(output));
        for (k, v) in &self.echo {
            o.insert(k.clone(), v.clone());
        }
        o.insert("usage".into(), usage.map_or(Value::Null, usage_value));
        Value::Object(o)
    }

    /// An output item's id: `{prefix}_tg_…`, so items Tollgate wrote from the hub are told
    /// apart from a provider's own (see [`super::request::HUB_REASONING_PREFIX`]).
    fn item_id(&self, prefix: &str, n: usize) -> String {
        let tail = self.id.strip_prefix("resp_").unwrap_or(&self.id);
        format!("{prefix}_tg_{tail}_{n}")
    }

    /// `response` as the client gets it: without reasoning items' `encrypted_content` unless
    /// it asked for it.
    pub fn for_client(&self, response: &Value) -> Value {
        let mut out = response.clone();
        if !self.include_encrypted {
            for item in out
                .get_mut("output")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(o) = item.as_object_mut() {
                    o.remove("encrypted_content");
                }
            }
        }
        out
    }

    /// A reasoning item as the client gets it (its `encrypted_content` kept back in
    /// [`Envelope::sealed`] unless the client asked for it).
    fn reasoning_for_client(&self, id: &str, text: &str, sealed: Option<&str>) -> Value {
        let mut item = reasoning_item(id, text, sealed);
        if !self.include_encrypted {
            if let Some(s) = sealed {
                self.sealed.keep(id, s);
            }
            if let Some(o) = item.as_object_mut() {
                o.remove("encrypted_content");
            }
        }
        item
    }

    /// The complete response object of a hub response (reasoning items with their
    /// `encrypted_content`: see [`Envelope::for_client`]).
    pub fn complete(&self, r: &ChatResponse) -> Value {
        let mut output = Vec::new();
        let mut text = String::new();
        let flush_text = |text: &mut String, output: &mut Vec<Value>| {
            if !text.is_empty() {
                let id = self.item_id("msg", output.len());
                output.push(message_item(&id, std::mem::take(text), "completed"));
            }
        };
        for p in &r.content {
            match p {
                Part::Text(t) => text.push_str(t),
                Part::ToolCall(c) => {
                    flush_text(&mut text, &mut output);
                    let id = self.item_id("fc", output.len());
                    output.push(json!({"type": "function_call", "id": id, "call_id": c.id,
                        "name": c.name, "arguments": c.arguments, "status": "completed"}));
                }
                Part::Thinking { text: t, signature } => {
                    flush_text(&mut text, &mut output);
                    let id = self.item_id("rs", output.len());
                    output.push(reasoning_item(&id, t, signature.as_deref()));
                }
                Part::RedactedThinking { data } => {
                    flush_text(&mut text, &mut output);
                    let id = self.item_id("rs", output.len());
                    let sealed = format!("{}{data}", super::request::REDACTED_PREFIX);
                    output.push(reasoning_item(&id, "", Some(&sealed)));
                }
                Part::Image(_) | Part::ToolResult(_) | Part::CachePoint => {}
            }
        }
        flush_text(&mut text, &mut output);
        let (status, incomplete) = status_of(r.stop_reason);
        self.object(status, incomplete, output, Some(&r.usage))
    }
}

fn message_item(id: &str, text: String, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn reasoning_item(id: &str, text: &str, signature: Option<&str>) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    json!({"type": "reasoning", "id": id, "summary": summary, "encrypted_content": signature})
}

/// The item a stream has open.
#[derive(Debug)]
enum OpenItem {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
    Reasoning {
        id: String,
        text: String,
        signature: Option<String>,
    },
}

/// Hub events → Responses SSE events.
#[derive(Debug)]
pub struct StreamEncoder {
    envelope: Envelope,
    seq: u64,
    started: bool,
    ended: bool,
    /// Hub block index → (output index, item).
    open: Vec<(usize, usize, OpenItem)>,
    /// Finished output items, by output index.
    done: Vec<Value>,
    next_output: usize,
}

impl StreamEncoder {
    /// An encoder for the response `envelope` names.
    pub fn new(envelope: Envelope) -> Self {
        Self {
            envelope,
            seq: 0,
            started: false,
            ended: false,
            open: Vec::new(),
            done: Vec::new(),
            next_output: 0,
        }
    }

    fn emit(&mut self, name: &'static str, v: Value, out: &mut Vec<Frame<'_>>) {
        emit_event(&mut self.seq, name, v, out);
    }

    fn start(&mut self, out: &mut Vec<Frame<'_>>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self
            .envelope
            .object("in_progress", Value::Null, Vec::new(), None);
        self.emit("response.created", json!({"response": r}), out);
        self.emit("response.in_progress", json!({"response": r}), out);
    }

    fn open_item(&mut self, index: usize, block: BlockKind, out: &mut Vec<Frame<'_>>) {
        let oi = self.next_output;
        self.next_output += 1;
        let (item, added) = match block {
            BlockKind::Text => {
                let id = self.envelope.item_id("msg", oi);
                let added = json!({"type": "message", "id": id, "status": "in_progress",
                    "role": "assistant", "content": []});
                (
                    OpenItem::Message {
                        id,
                        text: String::new(),
                    },
                    added,
                )
            }
            BlockKind::ToolCall { id: call_id, name } => {
                let id = self.envelope.item_id("fc", oi);
                let added = json!({"type": "function_call", "id": id, "call_id": call_id,
                    "name": name, "arguments": "", "status": "in_progress"});
                (
                    OpenItem::Call {
                        id,
                        call_id,
                        name,
                        arguments: String::new(),
                    },
                    added,
                )
            }
            BlockKind::Thinking | BlockKind::RedactedThinking { .. } => {
                let id = self.envelope.item_id("rs", oi);
                let added = json!({"type": "reasoning", "id": id, "summary": []});
                let signature = match block {
                    BlockKind::RedactedThinking { data } => {
                        Some(format!("{}{data}", super::request::REDACTED_PREFIX))
                    }
                    _ => None,
                };
                (
                    OpenItem::Reasoning {
                        id,
                        text: String::new(),
                        signature,
                    },
                    added,
                )
            }
        };
        self.emit(
            "response.output_item.added",
            json!({"output_index": oi, "item": added}),
            out,
        );
        if let OpenItem::Message { id, .. } = &item {
            let v = json!({"item_id": id, "output_index": oi, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}});
            self.emit("response.content_part.added", v, out);
        }
        if let OpenItem::Reasoning { id, .. } = &item {
            let v = json!({"item_id": id, "output_index": oi, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}});
            self.emit("response.reasoning_summary_part.added", v, out);
        }
        self.open.push((index, oi, item));
    }

    fn close_item(&mut self, index: usize, out: &mut Vec<Frame<'_>>) {
        let Some(pos) = self.open.iter().position(|(i, _, _)| *i == index) else {
            return;
        };
        let (_, oi, item) = self.open.remove(pos);
        let done = match item {
            OpenItem::Message { id, text } => {
                let v = json!({"item_id": id, "output_index": oi, "content_index": 0,
                    "text": text, "logprobs": []});
                self.emit("response.output_text.done", v, out);
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                let v =
                    json!({"item_id": id, "output_index": oi, "content_index": 0, "part": part});
                self.emit("response.content_part.done", v, out);
                message_item(&id, text, "completed")
            }
            OpenItem::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                let v = json!({"item_id": id, "output_index": oi, "name": name, "arguments": arguments});
                self.emit("response.function_call_arguments.done", v, out);
                json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
                    "arguments": arguments, "status": "completed"})
            }
            OpenItem::Reasoning {
                id,
                text,
                signature,
            } => {
                let v =
                    json!({"item_id": id, "output_index": oi, "summary_index": 0, "text": text});
                self.emit("response.reasoning_summary_text.done", v, out);
                let v = json!({"item_id": id, "output_index": oi, "summary_index": 0,
                    "part": {"type": "summary_text", "text": text}});
                self.emit("response.reasoning_summary_part.done", v, out);
                self.envelope
                    .reasoning_for_client(&id, &text, signature.as_deref())
            }
        };
        self.emit(
            "response.output_item.done",
            json!({"output_index": oi, "item": done}),
            out,
        );
        if self.done.len() <= oi {
            self.done.resize(oi + 1, Value::Null);
        }
        self.done[oi] = done;
    }

    /// Encodes one hub event.
    pub fn encode(&mut self, e: StreamEvent, out: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        match e {
            StreamEvent::Start { .. } => self.start(out),
            StreamEvent::BlockStart { index, block } => {
                self.start(out);
                self.open_item(index, block, out);
            }
            StreamEvent::Delta { index, delta } => {
                self.start(out);
                let Some((_, oi, item)) = self.open.iter_mut().find(|(i, _, _)| *i == index) else {
                    return;
                };
                let oi = *oi;
                let (name, v) = match (item, delta) {
                    (OpenItem::Message { id, text }, Delta::Text(t)) => {
                        text.push_str(&t);
                        (
                            "response.output_text.delta",
                            json!({"item_id": id, "output_index": oi, "content_index": 0,
                                "delta": t, "logprobs": []}),
                        )
                    }
                    (OpenItem::Call { id, arguments, .. }, Delta::ToolArguments(a)) => {
                        arguments.push_str(&a);
                        (
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": oi, "delta": a}),
                        )
                    }
                    (OpenItem::Reasoning { id, text, .. }, Delta::Thinking(t)) => {
                        text.push_str(&t);
                        (
                            "response.reasoning_summary_text.delta",
                            json!({"item_id": id, "output_index": oi, "summary_index": 0, "delta": t}),
                        )
                    }
                    (OpenItem::Reasoning { signature, .. }, Delta::Signature(s)) => {
                        signature.get_or_insert_with(String::new).push_str(&s);
                        return;
                    }
                    _ => return,
                };
                self.emit(name, v, out);
            }
            StreamEvent::BlockStop { index } => self.close_item(index, out),
            StreamEvent::Finish {
                stop_reason, usage, ..
            } => {
                self.start(out);
                let open: Vec<usize> = self.open.iter().map(|(i, _, _)| *i).collect();
                for i in open {
                    self.close_item(i, out);
                }
                let (status, incomplete) = status_of(stop_reason);
                let output: Vec<Value> =
                    self.done.iter().filter(|v| !v.is_null()).cloned().collect();
                let r = self.envelope.object(
                    status,
                    incomplete,
                    output,
                    Some(&usage.unwrap_or_default()),
                );
                let name = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                self.emit(name, json!({"response": r}), out);
                self.ended = true;
            }
            StreamEvent::Stop => self.ended = true,
            StreamEvent::Error(e) => self.error(&e, out),
        }
    }

    /// Ends the stream with an `error` event and `response.failed`.
    pub fn error(&mut self, e: &ErrorInfo, out: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        self.start(out);
        let code = e.kind.clone().unwrap_or_else(|| "server_error".to_owned());
        self.emit(
            "error",
            json!({"code": code, "message": e.message, "param": null}),
            out,
        );
        let mut r = self
            .envelope
            .object("failed", Value::Null, Vec::new(), None);
        r["error"] = json!({"code": code, "message": e.message});
        self.emit("response.failed", json!({"response": r}), out);
        self.ended = true;
    }
}

/// One Responses stream event: `v` with its `type` and the next `sequence_number` (`seq`,
/// then advanced).
pub(crate) fn emit_event(
    seq: &mut u64,
    name: &'static str,
    mut v: Value,
    out: &mut Vec<Frame<'_>>,
) {
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), name.into());
        o.insert("sequence_number".into(), (*seq).into());
    }
    *seq += 1;
    out.push(Frame::named(name, v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::hub::ToolCall;

    fn envelope() -> Envelope {
        Envelope {
            id: "resp_abc".into(),
            created_at: 7,
            model: "m".into(),
            echo: Map::new(),
            ..Default::default()
        }
    }

    #[test]
    fn complete_response_has_message_and_call_items() {
        let r = ChatResponse {
            id: "x".into(),
            model: "up".into(),
            content: vec![
                Part::Text("hi".into()),
                Part::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                }),
            ],
            stop_reason: Some(StopReason::ToolUse),
            stop_sequence: None,
            usage: Usage {
                input_tokens: 3,
                output_tokens: 2,
                ..Default::default()
            },
        };
        let v = envelope().complete(&r);
        assert_eq!(v["status"], "completed");
        assert_eq!(v["output"][0]["content"][0]["text"], "hi");
        assert_eq!(v["output"][1]["call_id"], "c1");
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(usage_from_value(&v["usage"]).unwrap().input_tokens, 3);
    }

    #[test]
    fn stream_events_are_numbered_and_complete() {
        let mut enc = StreamEncoder::new(envelope());
        let mut out = Vec::new();
        for e in [
            StreamEvent::Start {
                id: "x".into(),
                model: "m".into(),
                usage: Usage::default(),
            },
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::Text,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("a".into()),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Text("b".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Finish {
                stop_reason: Some(StopReason::EndTurn),
                stop_sequence: None,
                usage: None,
            },
            StreamEvent::Stop,
        ] {
            enc.encode(e, &mut out);
        }
        let types: Vec<String> = out
            .iter_mut()
            .map(|f| f.value().unwrap()["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let last = out.last_mut().unwrap().value().unwrap().clone();
        assert_eq!(last["sequence_number"], 9);
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "ab");
    }

    #[test]
    fn thinking_becomes_reasoning_items_sealed_unless_included() {
        let r = ChatResponse {
            content: vec![
                Part::Thinking {
                    text: "hmm".into(),
                    signature: Some("sig".into()),
                },
                Part::RedactedThinking { data: "d".into() },
                Part::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                }),
            ],
            id: "x".into(),
            model: "up".into(),
            stop_reason: Some(StopReason::ToolUse),
            stop_sequence: None,
            usage: Usage::default(),
        };
        let mut env = envelope();
        let full = env.complete(&r);
        assert_eq!(full["output"][0]["id"], "rs_tg_abc_0");
        assert_eq!(full["output"][0]["encrypted_content"], "sig");
        assert_eq!(full["output"][0]["summary"][0]["text"], "hmm");
        assert_eq!(full["output"][1]["encrypted_content"], "tg_redacted:d");
        assert_eq!(full["output"][2]["type"], "function_call");
        let client = env.for_client(&full);
        assert!(client["output"][0].get("encrypted_content").is_none());
        env.include_encrypted = true;
        assert_eq!(
            env.for_client(&full)["output"][0]["encrypted_content"],
            "sig"
        );

        // Streamed: the client's item has none; the store gets it back.
        let env = envelope();
        let sealed = env.sealed.clone();
        let mut enc = StreamEncoder::new(env);
        let mut out = Vec::new();
        for e in [
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::Thinking,
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Thinking("hmm".into()),
            },
            StreamEvent::Delta {
                index: 0,
                delta: Delta::Signature("sig".into()),
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::Finish {
                stop_reason: Some(StopReason::EndTurn),
                stop_sequence: None,
                usage: None,
            },
        ] {
            enc.encode(e, &mut out);
        }
        let mut last = out.last_mut().unwrap().value().unwrap()["response"].clone();
        assert!(
            last["output"][0].get("encrypted_content").is_none(),
            "{last}"
        );
        sealed.restore(&mut last);
        assert_eq!(last["output"][0]["encrypted_content"], "sig");
    }
}
