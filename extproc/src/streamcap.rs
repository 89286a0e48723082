//! Mid-stream enforcement: counts the output tokens of a stream as it reaches the client (in
//! the client's dialect, after translation) and, when the request's allowance is used up,
//! ends the stream cleanly with a well-formed final event in that dialect. What the upstream
//! still sends after that is dropped (its usage is still read for settlement).
//!
//! OpenAI clients get a last chunk with `finish_reason: "length"`, a usage chunk when they
//! asked for one, and `data: [DONE]`. Anthropic clients get the open content block closed, a
//! `message_delta` with `stop_reason: "max_tokens"`, and `message_stop`.

use serde_json::{json, Value};
use tollgate_core::config::ApiFamily;

use crate::budget::Counter;
use crate::stream::{self, Frame};

/// Why a stream was ended early (the log event's `error_class`).
pub const OUTPUT_CAP: &str = "output_cap_reached";

/// One stream's output allowance.
#[derive(Debug)]
pub struct StreamCap {
    client: ApiFamily,
    counter: Counter,
    allowance: u64,
    used: u64,
    prompt_tokens: u64,
    include_usage: bool,
    cut: bool,
    /// OpenAI: `id`, `created` and `model` of the stream's chunks, repeated in the last one.
    meta: Option<(Value, Value, Value)>,
    /// Anthropic: the content block started and not yet stopped.
    open_block: Option<u64>,
    /// OpenAI: the stream is legacy `text_completion` chunks, not chat chunks.
    text_completion: bool,
    /// A Responses API stream (`POST /v1/responses`) instead of Chat Completions chunks.
    responses: Option<Box<crate::responses::cap::ResponsesCut>>,
}

impl StreamCap {
    /// A cap of `allowance` output tokens, counted with `counter`, for a `client` stream
    /// (`include_usage`: an OpenAI client asked for the usage chunk). `prompt_tokens` goes
    /// into the usage of the final events.
    pub fn new(
        client: ApiFamily,
        counter: Counter,
        allowance: u64,
        prompt_tokens: u64,
        include_usage: bool,
    ) -> Self {
        Self {
            client,
            counter,
            allowance,
            used: 0,
            prompt_tokens,
            include_usage,
            cut: false,
            meta: None,
            open_block: None,
            text_completion: false,
            responses: None,
        }
    }

    /// The same cap over a Responses API event stream: it ends with the open output items
    /// done and `response.incomplete` (`incomplete_details.reason: max_output_tokens`).
    pub fn for_responses(mut self) -> Self {
        self.responses = Some(Box::default());
        self
    }

    /// Whether the stream was ended early.
    pub fn was_cut(&self) -> bool {
        self.cut
    }

    /// Output tokens passed to the client so far, as counted.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Counts the client's `frames` in order; at the allowance, the frame that would pass it
    /// and everything after are replaced by the final events.
    pub fn apply(&mut self, frames: &mut Vec<Frame<'_>>) {
        if self.cut {
            frames.clear();
            return;
        }
        let mut keep = frames.len();
        for (i, f) in frames.iter_mut().enumerate() {
            let tokens = f.value().map_or(0, |v| self.observe(v));
            if tokens > 0 && self.used + tokens > self.allowance {
                self.cut = true;
                keep = i;
                break;
            }
            self.used += tokens;
        }
        if self.cut {
            frames.truncate(keep);
            self.final_events(frames);
        }
    }

    /// Notes what the event says about the stream; returns its output tokens.
    fn observe(&mut self, v: &Value) -> u64 {
        if let Some(r) = &mut self.responses {
            return r
                .observe(v)
                .map_or(0, |text| self.counter.count(text.as_str()));
        }
        match self.client {
            // No client speaks Bedrock; its streams reach clients translated.
            ApiFamily::OpenAi | ApiFamily::Bedrock => {
                if self.meta.is_none() && v.get("id").is_some() {
                    self.meta = Some((v["id"].clone(), v["created"].clone(), v["model"].clone()));
                    self.text_completion = v["object"] == "text_completion";
                }
                let choices = v.get("choices").and_then(Value::as_array);
                choices.map_or(0, |cs| {
                    cs.iter()
                        .map(|c| {
                            let d = &c["delta"];
                            ["content", "reasoning_content", "refusal"]
                                .iter()
                                .filter_map(|k| d.get(*k).and_then(Value::as_str))
                                .chain(c.get("text").and_then(Value::as_str))
                                .map(|t| self.counter.count(t))
                                .sum::<u64>()
                                + d.get("tool_calls")
                                    .map_or(0, |t| self.counter.count(&t.to_string()))
                        })
                        .sum()
                })
            }
            ApiFamily::Anthropic => match v.get("type").and_then(Value::as_str) {
                Some("content_block_start") => {
                    self.open_block = v.get("index").and_then(Value::as_u64);
                    0
                }
                Some("content_block_stop") => {
                    self.open_block = None;
                    0
                }
                Some("content_block_delta") => {
                    let d = &v["delta"];
                    ["text", "thinking", "partial_json"]
                        .iter()
                        .filter_map(|k| d.get(*k).and_then(Value::as_str))
                        .map(|t| self.counter.count(t))
                        .sum()
                }
                _ => 0,
            },
            ApiFamily::Gemini => {
                if self.meta.is_none() {
                    self.meta = Some((
                        v["responseId"].clone(),
                        Value::Null,
                        v["modelVersion"].clone(),
                    ));
                }
                let candidates = v.get("candidates").and_then(Value::as_array);
                candidates.map_or(0, |cs| {
                    cs.iter()
                        .flat_map(|c| c["content"]["parts"].as_array().into_iter().flatten())
                        .map(|p| {
                            p.get("text")
                                .and_then(Value::as_str)
                                .map_or(0, |t| self.counter.count(t))
                                + p.get("functionCall")
                                    .map_or(0, |f| self.counter.count(&f.to_string()))
                        })
                        .sum()
                })
            }
        }
    }

    fn final_events(&mut self, out: &mut Vec<Frame<'_>>) {
        if let Some(r) = &mut self.responses {
            r.final_events(self.prompt_tokens, self.used, out);
            return;
        }
        match self.client {
            ApiFamily::OpenAi | ApiFamily::Bedrock => {
                let (id, created, model) = self.meta.clone().unwrap_or_default();
                let object = if self.text_completion {
                    "text_completion"
                } else {
                    "chat.completion.chunk"
                };
                let chunk = |choices: Value, usage: Option<Value>| {
                    let mut c = json!({"id": id, "object": object,
                        "created": created, "model": model, "choices": choices});
                    if let Some(u) = usage {
                        c["usage"] = u;
                    }
                    Frame::json(c)
                };
                // A legacy completion's last chunk carries `text`, a chat chunk's a `delta`.
                let last = if self.text_completion {
                    json!([{"text": "", "index": 0, "logprobs": null, "finish_reason": "length"}])
                } else {
                    json!([{"index": 0, "delta": {}, "finish_reason": "length"}])
                };
                out.push(chunk(last, None));
                if self.include_usage {
                    out.push(chunk(
                        json!([]),
                        Some(json!({"prompt_tokens": self.prompt_tokens,
                            "completion_tokens": self.used,
                            "total_tokens": self.prompt_tokens + self.used})),
                    ));
                }
                out.push(Frame::fixed(stream::DONE));
            }
            ApiFamily::Anthropic => {
                if let Some(i) = self.open_block {
                    out.push(Frame::named(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": i}),
                    ));
                }
                out.push(Frame::named(
                    "message_delta",
                    json!({"type": "message_delta",
                        "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
                        "usage": {"output_tokens": self.used}}),
                ));
                out.push(Frame::named(
                    "message_stop",
                    json!({"type": "message_stop"}),
                ));
            }
            ApiFamily::Gemini => {
                let (id, _, model) = self.meta.clone().unwrap_or_default();
                out.push(Frame::json_crlf(json!({
                    "candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
                        "finishReason": "MAX_TOKENS", "index": 0}],
                    "usageMetadata": {"promptTokenCount": self.prompt_tokens,
                        "candidatesTokenCount": self.used,
                        "totalTokenCount": self.prompt_tokens + self.used},
                    "modelVersion": model, "responseId": id})));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Pipeline;
    use crate::translator::Pair;

    /// A same-dialect `client` stream's pipeline with `cap` on.
    fn pipeline(client: ApiFamily, cap: StreamCap) -> Pipeline {
        let pair = Pair {
            client,
            upstream: client,
        };
        Pipeline::new(pair, false, 0, None).with_cap(Some(cap))
    }

    fn openai_chunk(text: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        )
    }

    #[test]
    fn an_openai_stream_ends_with_length_usage_and_done_at_its_allowance() {
        let mut cap = pipeline(
            ApiFamily::OpenAi,
            StreamCap::new(ApiFamily::OpenAi, Counter::Bytes, 2, 9, true),
        );
        // Three bytes a token: "abc" is 1, "abcdef" 2.
        let mut out = cap.push(openai_chunk("abc").as_bytes(), false);
        assert!(!cap.cap().unwrap().was_cut());
        out.extend(cap.push(openai_chunk("abcdef").as_bytes(), false));
        assert!(cap.cap().unwrap().was_cut());
        out.extend(cap.push(openai_chunk("more").as_bytes(), false));
        out.extend(cap.push(b"data: [DONE]\n\n", true));
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{text}");
        assert!(events[0].contains("\"abc\""));
        let last: Value = serde_json::from_str(&events[1][6..]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(
            (last["id"].as_str(), last["created"].as_i64()),
            (Some("c1"), Some(7))
        );
        let usage: Value = serde_json::from_str(&events[2][6..]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 1);
        assert_eq!(usage["usage"]["prompt_tokens"], 9);
        assert_eq!(events[3], "data: [DONE]");
    }

    #[test]
    fn a_legacy_completion_stream_ends_with_a_text_completion_chunk() {
        let mut cap = pipeline(
            ApiFamily::OpenAi,
            StreamCap::new(ApiFamily::OpenAi, Counter::Bytes, 1, 0, false),
        );
        let chunk = |text: &str| {
            format!(
                "data: {}\n\n",
                json!({"id": "c1", "object": "text_completion", "created": 7, "model": "m",
                    "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": null}]})
            )
        };
        let mut out = cap.push(chunk("abc").as_bytes(), false);
        out.extend(cap.push(chunk("abcdef").as_bytes(), false));
        assert!(cap.cap().unwrap().was_cut());
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{text}");
        let last: Value = serde_json::from_str(&events[1][6..]).unwrap();
        assert_eq!(last["object"], "text_completion", "{last}");
        assert_eq!(
            last["choices"][0],
            json!({"text": "", "index": 0, "logprobs": null, "finish_reason": "length"})
        );
        assert_eq!(events[2], "data: [DONE]");
    }

    #[test]
    fn an_anthropic_stream_closes_its_block_and_stops_with_max_tokens() {
        let mut cap = pipeline(
            ApiFamily::Anthropic,
            StreamCap::new(ApiFamily::Anthropic, Counter::Bytes, 1, 0, false),
        );
        let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut out = cap.push(
            ev(
                "message_start",
                json!({"type": "message_start", "message": {}}),
            )
            .as_bytes(),
            false,
        );
        out.extend(
            cap.push(
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
                )
                .as_bytes(),
                false,
            ),
        );
        let delta = |t: &str| {
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": t}}),
            )
        };
        out.extend(cap.push(delta("abc").as_bytes(), false));
        out.extend(cap.push(delta("def").as_bytes(), false));
        out.extend(cap.push(delta("ghi").as_bytes(), true));
        let text = String::from_utf8(out).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(text.contains("\"stop_reason\":\"max_tokens\""), "{text}");
        assert!(!text.contains("def"), "{text}");
    }

    #[test]
    fn a_split_event_is_counted_once_whole() {
        let mut cap = pipeline(
            ApiFamily::OpenAi,
            StreamCap::new(ApiFamily::OpenAi, Counter::Bytes, 100, 0, false),
        );
        let c = openai_chunk("abcdef");
        let (a, b) = c.split_at(20);
        let mut out = cap.push(a.as_bytes(), false);
        out.extend(cap.push(b.as_bytes(), false));
        assert_eq!(out, c.as_bytes());
        assert_eq!(cap.cap().unwrap().used(), 2);
    }
}
