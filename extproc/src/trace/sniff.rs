//! What a span reports of the provider's answer that the processor does not otherwise keep:
//! the finish reasons, the model that answered and the response id, read from the raw
//! response bytes as they pass (any dialect, whole bodies or stream chunks, SSE or AWS
//! event-stream), without parsing them. Only sampled requests pay for it.
//!
//! A member is found by its quoted name followed by `:`; inside a JSON string every quote is
//! escaped, so generated text cannot fake one. A member split across two chunks is found
//! through a small window over the boundary.

use memchr::memmem;

/// Member names whose string values are finish reasons: OpenAI's `finish_reason`,
/// Anthropic's `stop_reason`, Gemini's `finishReason`, Bedrock's `stopReason`.
const FINISH: [&[u8]; 4] = [
    b"\"finish_reason\"",
    b"\"stop_reason\"",
    b"\"finishReason\"",
    b"\"stopReason\"",
];
/// The model that answered: OpenAI's and Anthropic's `model`, Gemini's `modelVersion`.
const MODEL: [&[u8]; 2] = [b"\"model\"", b"\"modelVersion\""];
/// The response id: OpenAI's and Anthropic's `id` (the first one is the response's own),
/// Gemini's `responseId`.
const ID: [&[u8]; 2] = [b"\"id\"", b"\"responseId\""];

/// The most finish reasons kept (one per choice).
const MAX_REASONS: usize = 16;
/// The longest value kept.
const MAX_VALUE: usize = 128;
/// Bytes of the previous chunk kept to find a member split over a chunk boundary.
const CARRY: usize = 96;

/// What has been read of one response so far.
#[derive(Debug)]
pub struct Sniffer {
    /// Finish reasons, in the order they came.
    pub finish_reasons: Vec<String>,
    /// The model the provider says answered.
    pub model: Option<String>,
    /// The provider's response id.
    pub id: Option<String>,
    carry: [u8; CARRY],
    carry_len: usize,
}

impl Default for Sniffer {
    fn default() -> Self {
        Sniffer {
            finish_reasons: Vec::new(),
            model: None,
            id: None,
            carry: [0; CARRY],
            carry_len: 0,
        }
    }
}

/// The string value of the member whose name ends at `at` in `buf` (`Some(None)` for a
/// `null` or non-string value, `None` when the value is not complete in `buf`), with the
/// offset just past it.
fn value_at(buf: &[u8], mut at: usize) -> Option<(Option<&str>, usize)> {
    let skip = |buf: &[u8], mut i: usize| {
        while buf.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    at = skip(buf, at);
    if *buf.get(at)? != b':' {
        return Some((None, at));
    }
    at = skip(buf, at + 1);
    if *buf.get(at)? != b'"' {
        // `null`, a number, an object: complete enough to say it is no string.
        return Some((None, at + 1));
    }
    let start = at + 1;
    let mut i = start;
    loop {
        match *buf.get(i)? {
            b'"' => break,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    let text = std::str::from_utf8(&buf[start..i]).ok();
    Some((text.filter(|t| t.len() <= MAX_VALUE), i + 1))
}

impl Sniffer {
    /// Reads one chunk of the response.
    pub fn push(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        // Members that start in the previous chunk and end in this one.
        if self.carry_len > 0 {
            let head = chunk.len().min(CARRY);
            let mut window = [0u8; 2 * CARRY];
            let carried = self.carry_len;
            window[..carried].copy_from_slice(&self.carry[..carried]);
            window[carried..carried + head].copy_from_slice(&chunk[..head]);
            self.scan(&window[..carried + head], |start, end| {
                start < carried && end > carried
            });
        }
        self.scan(chunk, |_, _| true);
        let keep = chunk.len().min(CARRY);
        if keep == CARRY {
            self.carry.copy_from_slice(&chunk[chunk.len() - CARRY..]);
        } else {
            // A short chunk: keep the tail of what was carried before it too.
            let old = self.carry_len.min(CARRY - keep);
            self.carry
                .copy_within(self.carry_len - old..self.carry_len, 0);
            self.carry[old..old + keep].copy_from_slice(chunk);
            self.carry_len = old + keep;
            return;
        }
        self.carry_len = CARRY;
    }

    /// Records the members of `buf` whose (start, end) `wanted` accepts.
    fn scan(&mut self, buf: &[u8], wanted: impl Fn(usize, usize) -> bool) {
        for name in FINISH {
            for start in memmem::find_iter(buf, name) {
                if self.finish_reasons.len() >= MAX_REASONS {
                    break;
                }
                if let Some((Some(v), end)) = value_at(buf, start + name.len()) {
                    if wanted(start, end) {
                        self.finish_reasons.push(v.to_owned());
                    }
                }
            }
        }
        for (names, slot) in [(MODEL, &mut self.model), (ID, &mut self.id)] {
            if slot.is_some() {
                continue;
            }
            *slot = names.iter().find_map(|name| {
                memmem::find_iter(buf, name).find_map(|start| {
                    match value_at(buf, start + name.len()) {
                        Some((Some(v), end)) if wanted(start, end) => Some(v.to_owned()),
                        _ => None,
                    }
                })
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dialect_names_its_finish_reason_model_and_id() {
        for (body, reason, model, id) in [
            (
                r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"said \"finish_reason\": \"fake\""},"finish_reason":"stop"}]}"#,
                "stop",
                Some("gpt-4o-2024-08-06"),
                Some("chatcmpl-1"),
            ),
            (
                r#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","content":[{"type":"tool_use","id":"toolu_1"}],"stop_reason":"tool_use"}"#,
                "tool_use",
                Some("claude-sonnet-4-5"),
                Some("msg_1"),
            ),
            (
                "{\n  \"candidates\": [{\"finishReason\": \"STOP\"}],\n  \"modelVersion\": \"gemini-2.5-flash\",\n  \"responseId\": \"r-1\"\n}",
                "STOP",
                Some("gemini-2.5-flash"),
                Some("r-1"),
            ),
            (
                r#"{"output":{"message":{}},"stopReason":"max_tokens","usage":{}}"#,
                "max_tokens",
                None,
                None,
            ),
        ] {
            let mut s = Sniffer::default();
            s.push(body.as_bytes());
            assert_eq!(s.finish_reasons, [reason], "{body}");
            assert_eq!(s.model.as_deref(), model, "{body}");
            assert_eq!(s.id.as_deref(), id, "{body}");
        }
    }

    #[test]
    fn a_stream_split_at_any_byte_reads_the_same() {
        let stream = concat!(
            "data: {\"id\":\"c1\",\"model\":\"m-1\",\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m-1\",\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for cut in 1..stream.len() {
            for step in [1, 3, 7, stream.len()] {
                let mut s = Sniffer::default();
                s.push(&stream[..cut]);
                for part in stream[cut..].chunks(step) {
                    s.push(part);
                }
                assert_eq!(s.finish_reasons, ["length"], "cut {cut} step {step}");
                assert_eq!(s.model.as_deref(), Some("m-1"), "cut {cut} step {step}");
                assert_eq!(s.id.as_deref(), Some("c1"), "cut {cut} step {step}");
            }
        }
    }

    #[test]
    fn one_reason_per_choice_and_no_more_than_the_cap() {
        let mut s = Sniffer::default();
        s.push(br#"{"choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}"#);
        assert_eq!(s.finish_reasons, ["stop", "length"]);
        let many = r#"{"finish_reason":"stop"}"#.repeat(40);
        s.push(many.as_bytes());
        assert_eq!(s.finish_reasons.len(), MAX_REASONS);
    }
}
