//! The output cap's end of a Responses API event stream: what it reads of each event (the
//! text deltas it counts, the response envelope, the output items and how far each got) and
//! the well-formed end it writes when the allowance is used up, as OpenAI ends a response
//! that reached `max_output_tokens`: every open output item done with status `incomplete`,
//! then `response.incomplete` with `incomplete_details.reason: "max_output_tokens"`, the
//! output so far and usage, each event with the next `sequence_number`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::stream::Frame;

/// One output item as far as the stream got.
#[derive(Debug)]
struct Item {
    item: Value,
    /// The text or arguments its deltas added.
    text: String,
    done: bool,
}

/// What the cap knows of a Responses stream.
#[derive(Debug, Default)]
pub struct ResponsesCut {
    /// The `response` of the first lifecycle event.
    response: Option<Value>,
    /// The next `sequence_number`.
    seq: u64,
    /// Output items by output index.
    items: BTreeMap<u64, Item>,
    /// The last event's number and delta, taken into account at the next event: the event
    /// that passes the allowance is dropped, and its number reused.
    last: Option<Last>,
}

/// An event's `sequence_number` and (output index, text delta).
type Last = (Option<u64>, Option<(u64, String)>);

impl ResponsesCut {
    /// Reads one event of the client's stream; returns the generated text it carries (`None`:
    /// none to count).
    pub fn observe(&mut self, v: &Value) -> Option<String> {
        if let Some((n, delta)) = self.last.take() {
            if let Some(n) = n {
                self.seq = self.seq.max(n + 1);
            }
            if let Some((i, d)) = delta {
                if let Some(item) = self.items.get_mut(&i) {
                    item.text.push_str(&d);
                }
            }
        }
        self.last = Some((v.get("sequence_number").and_then(Value::as_u64), None));
        let index = v.get("output_index").and_then(Value::as_u64);
        match v.get("type").and_then(Value::as_str)? {
            "response.created" | "response.in_progress" => {
                if self.response.is_none() {
                    self.response = v.get("response").cloned();
                }
                None
            }
            "response.output_item.added" => {
                let item = v.get("item").cloned().unwrap_or_default();
                self.items.insert(
                    index?,
                    Item {
                        item,
                        text: String::new(),
                        done: false,
                    },
                );
                None
            }
            "response.output_item.done" => {
                let item = v.get("item").cloned().unwrap_or_default();
                self.items.insert(
                    index?,
                    Item {
                        item,
                        text: String::new(),
                        done: true,
                    },
                );
                None
            }
            "response.output_text.delta"
            | "response.refusal.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta" => {
                let delta = v.get("delta").and_then(Value::as_str)?.to_owned();
                if let (Some(i), Some(last)) = (index, &mut self.last) {
                    last.1 = Some((i, delta.clone()));
                }
                Some(delta)
            }
            _ => None,
        }
    }

    fn emit(&mut self, name: &'static str, v: Value, out: &mut Vec<Frame<'_>>) {
        super::response::emit_event(&mut self.seq, name, v, out);
    }

    /// The events that end the stream: `prompt_tokens` and `used` are its usage.
    pub fn final_events(&mut self, prompt_tokens: u64, used: u64, out: &mut Vec<Frame<'_>>) {
        let open: Vec<u64> = self
            .items
            .iter()
            .filter(|(_, i)| !i.done)
            .map(|(n, _)| *n)
            .collect();
        for n in open {
            let Some(entry) = self.items.get_mut(&n) else {
                continue;
            };
            let text = std::mem::take(&mut entry.text);
            let item = &mut entry.item;
            match item.get("type").and_then(Value::as_str) {
                Some("message") => {
                    item["content"] = json!([{"type": "output_text", "text": text,
                        "annotations": [], "logprobs": []}]);
                    item["status"] = "incomplete".into();
                }
                Some("function_call") => {
                    item["arguments"] = text.into();
                    item["status"] = "incomplete".into();
                }
                _ => {}
            }
            entry.done = true;
            let item = entry.item.clone();
            self.emit(
                "response.output_item.done",
                json!({"output_index": n, "item": item}),
                out,
            );
        }
        let mut response = self.response.clone().unwrap_or_else(|| json!({}));
        response["status"] = "incomplete".into();
        response["incomplete_details"] = json!({"reason": "max_output_tokens"});
        response["output"] = self.items.values().map(|i| i.item.clone()).collect();
        response["usage"] = json!({
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": used,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + used,
        });
        self.emit("response.incomplete", json!({"response": response}), out);
    }
}

#[cfg(test)]
mod tests {
    use crate::budget::Counter;
    use crate::stream::Pipeline;
    use crate::streamcap::StreamCap;
    use crate::translator::Pair;
    use serde_json::{json, Value};
    use tollgate_core::config::ApiFamily;

    fn event(v: Value) -> String {
        format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap())
    }

    #[test]
    fn a_responses_stream_ends_incomplete_at_its_allowance() {
        let pair = Pair {
            client: ApiFamily::OpenAi,
            upstream: ApiFamily::OpenAi,
        };
        let cap = StreamCap::new(ApiFamily::OpenAi, Counter::Bytes, 2, 5, false).for_responses();
        let mut p = Pipeline::new(pair, false, 0, None).with_cap(Some(cap));
        let resp = json!({"id": "resp_1", "object": "response", "status": "in_progress",
            "output": [], "metadata": {"k": "v"}});
        let mut out = String::new();
        let mut push = |v: Value| {
            out.push_str(&String::from_utf8(p.push(event(v).as_bytes(), false)).unwrap());
        };
        push(json!({"type": "response.created", "sequence_number": 0, "response": resp}));
        push(
            json!({"type": "response.output_item.added", "sequence_number": 1,
            "output_index": 0, "item": {"type": "message", "id": "msg_1", "status": "in_progress",
            "role": "assistant", "content": []}}),
        );
        // Three bytes a token: "abc" is 1, "abcdef" 2 (past the allowance of 2).
        for (n, d) in [(2, "abc"), (3, "abcdef"), (4, "ghi")] {
            push(
                json!({"type": "response.output_text.delta", "sequence_number": n,
                "output_index": 0, "item_id": "msg_1", "content_index": 0, "delta": d}),
            );
        }
        push(json!({"type": "response.completed", "sequence_number": 5, "response": resp}));
        let events: Vec<Value> = out
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.split("data: ").nth(1).unwrap()).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.output_item.added",
                "response.output_text.delta",
                "response.output_item.done",
                "response.incomplete"
            ]
        );
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        let last = &events[4]["response"];
        assert_eq!(last["status"], "incomplete");
        assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(last["output"][0]["content"][0]["text"], "abc");
        assert_eq!(last["output"][0]["status"], "incomplete");
        assert_eq!(last["metadata"]["k"], "v");
        assert_eq!(last["usage"]["output_tokens"], 1);
        assert_eq!(last["usage"]["input_tokens"], 5);
    }
}
