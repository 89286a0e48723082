//! Passthrough routes' pure parts: the provider path of `/passthrough/{provider}/{path}`, the
//! model a provider path or JSON body names, and usage read on the side from whatever shape a
//! provider answers in (OpenAI `usage`, the Responses API's `usage`, Anthropic `usage` and its
//! `message_start`/`message_delta` events, Gemini `usageMetadata`, Bedrock Converse `usage`),
//! from a complete body, an SSE stream or an AWS event stream. Nothing here changes a byte.

use serde_json::Value;
use tollgate_core::config::ApiFamily;
use tollgate_core::usage::{AnthropicUsage, OpenAiUsage};
use tollgate_core::{Usage, UsageSource};

use crate::translator::eventstream;

/// The longest SSE line (or buffered JSON body) read for usage; longer ones are skipped.
pub const MAX_READ_BYTES: usize = 4 * 1024 * 1024;

/// The upstream `:path` of a passthrough request: `tail` (the path after
/// `/passthrough/{provider}`, query kept) under the provider's base path, unless it already
/// starts with it (SDKs that append their own `/v1/…` to a base URL without one).
pub fn upstream_path(base_path: &str, tail: &str) -> String {
    let tail = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    let already = !base_path.is_empty()
        && tail.starts_with(base_path)
        && matches!(
            tail.as_bytes().get(base_path.len()),
            None | Some(b'/' | b'?')
        );
    if base_path.is_empty() || already {
        tail
    } else {
        format!("{base_path}{tail}")
    }
}

/// A path without its query (what is logged: a query may carry secrets).
pub fn without_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// The model a provider path names: Gemini's and Vertex's `…/models/{model}:{method}`, Bedrock's
/// `/model/{modelId}/{operation}` (percent-decoded: `%3A` is `:`).
pub fn model_in_path(path: &str) -> Option<String> {
    let path = without_query(path);
    if let Some((_, rest)) = path.split_once("/models/") {
        let model = rest.split([':', '/']).next().unwrap_or("");
        return (!model.is_empty()).then(|| percent_decode(model));
    }
    if let Some((_, rest)) = path.split_once("/model/") {
        let model = rest.split('/').next().unwrap_or("");
        return (!model.is_empty()).then(|| percent_decode(model));
    }
    None
}

/// The `model` member of a JSON object body.
pub fn model_in_body(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: Option<String>,
    }
    serde_json::from_slice::<ModelOnly>(body).ok()?.model
}

/// Whether a JSON body asks for a stream (`"stream": true`).
pub fn streams(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct StreamOnly {
        stream: Option<bool>,
    }
    serde_json::from_slice::<StreamOnly>(body)
        .ok()
        .and_then(|s| s.stream)
        .unwrap_or(false)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a response body is read for usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON document.
    Json,
    /// Server-sent events.
    Sse,
    /// AWS event stream (Bedrock `converse-stream`, `invoke-with-response-stream`).
    EventStream,
}

impl Framing {
    /// The framing of a response of this `content-type` (`None`: not read at all).
    pub fn of(content_type: &str) -> Option<Framing> {
        let ct = content_type.trim().to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Some(Framing::Sse)
        } else if ct.starts_with("application/vnd.amazon.eventstream") {
            Some(Framing::EventStream)
        } else if ct.starts_with("application/json") {
            Some(Framing::Json)
        } else {
            None
        }
    }
}

/// Reads usage from a response as its chunks pass, never changing them; memory bounded by
/// [`MAX_READ_BYTES`].
#[derive(Debug)]
pub struct UsageReader {
    family: ApiFamily,
    framing: Framing,
    buf: Vec<u8>,
    /// The current SSE line ran past the bound: skip to its end.
    skipping: bool,
    events: eventstream::Decoder,
    usage: Option<Usage>,
}

impl UsageReader {
    /// A reader for a response of `framing` from a provider speaking `family`.
    pub fn new(family: ApiFamily, framing: Framing) -> Self {
        Self {
            family,
            framing,
            buf: Vec::new(),
            skipping: false,
            events: eventstream::Decoder::default(),
            usage: None,
        }
    }

    /// The usage read so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Reads one chunk (`end`: the last).
    pub fn push(&mut self, chunk: &[u8], end: bool) {
        match self.framing {
            Framing::Json => {
                if !self.skipping && self.buf.len() + chunk.len() <= MAX_READ_BYTES {
                    self.buf.extend_from_slice(chunk);
                } else {
                    self.skipping = true;
                    self.buf = Vec::new();
                }
                if end && !self.skipping {
                    let body = std::mem::take(&mut self.buf);
                    self.read_json(&body);
                }
            }
            Framing::Sse => {
                for piece in chunk.split_inclusive(|b| *b == b'\n') {
                    let complete = piece.ends_with(b"\n");
                    if !self.skipping {
                        if self.buf.len() + piece.len() > MAX_READ_BYTES {
                            self.skipping = true;
                            self.buf = Vec::new();
                        } else {
                            self.buf.extend_from_slice(piece);
                        }
                    }
                    if complete {
                        let line = std::mem::take(&mut self.buf);
                        if !self.skipping {
                            self.sse_line(&line);
                        }
                        self.skipping = false;
                    }
                }
                if end && !self.buf.is_empty() {
                    let line = std::mem::take(&mut self.buf);
                    self.sse_line(&line);
                }
            }
            Framing::EventStream => {
                let mut payloads = Vec::new();
                // A broken frame ends the reading, never the response.
                let _ = self.events.push(chunk, end, |m| {
                    if m.message_type == "event" {
                        payloads.push(m.payload);
                    }
                });
                for p in payloads {
                    self.read_json(&p);
                }
            }
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data.starts_with(b"{") {
            self.read_json(data);
        }
    }

    fn read_json(&mut self, doc: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(doc) else {
            return;
        };
        // Gemini (and Vertex's Gemini models): the latest `usageMetadata` is the whole count.
        if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
            if let Some(u) = gemini_usage(u) {
                self.usage = Some(u);
            }
            return;
        }
        // Anthropic's `message_start` and the Responses API's `response.completed` nest it.
        let usage = v
            .get("usage")
            .or_else(|| v.get("message").and_then(|m| m.get("usage")))
            .or_else(|| v.get("response").and_then(|r| r.get("usage")))
            .filter(|u| u.is_object());
        let Some(u) = usage else { return };
        if u.get("prompt_tokens").is_some() {
            if let Ok(o) = serde_json::from_value::<OpenAiUsage>(u.clone()) {
                self.usage = Some(Usage::from(o));
            }
        } else if u.get("inputTokens").is_some() || u.get("outputTokens").is_some() {
            self.usage = Some(bedrock_usage(u));
        } else if self.family == ApiFamily::OpenAi {
            self.usage = Some(responses_usage(u));
        } else if let Ok(a) = serde_json::from_value::<AnthropicUsage>(u.clone()) {
            // Partial reports (`message_delta`) fold into what `message_start` said.
            let mut merged = self.usage.unwrap_or_default();
            a.merge_into(&mut merged);
            self.usage = Some(merged);
        }
    }
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Gemini's `usageMetadata` (thoughts count as output, as the hub counts them).
fn gemini_usage(u: &Value) -> Option<Usage> {
    let thoughts = count(u, "thoughtsTokenCount");
    Some(Usage {
        input_tokens: count(u, "promptTokenCount") + count(u, "toolUsePromptTokenCount"),
        output_tokens: count(u, "candidatesTokenCount") + thoughts,
        cache_read_tokens: count(u, "cachedContentTokenCount"),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
        source: UsageSource::Provider,
    })
}

/// Bedrock Converse `usage` (its `inputTokens` leaves the cached parts out).
fn bedrock_usage(u: &Value) -> Usage {
    let read = count(u, "cacheReadInputTokens");
    let write = count(u, "cacheWriteInputTokens");
    Usage {
        input_tokens: count(u, "inputTokens") + read + write,
        output_tokens: count(u, "outputTokens"),
        cache_read_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
        source: UsageSource::Provider,
    }
}

/// The Responses API's `usage` (`input_tokens` includes the cached ones).
fn responses_usage(u: &Value) -> Usage {
    let detail = |outer: &str, inner: &str| u.get(outer).map_or(0, |d| count(d, inner));
    Usage {
        input_tokens: count(u, "input_tokens"),
        output_tokens: count(u, "output_tokens"),
        cache_read_tokens: detail("input_tokens_details", "cached_tokens"),
        cache_write_tokens: 0,
        reasoning_tokens: detail("output_tokens_details", "reasoning_tokens"),
        source: UsageSource::Provider,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_path_is_applied_once() {
        assert_eq!(upstream_path("/v1", "/files?limit=2"), "/v1/files?limit=2");
        assert_eq!(upstream_path("/v1", "/v1/files"), "/v1/files");
        assert_eq!(upstream_path("/v1", "/v1"), "/v1");
        assert_eq!(upstream_path("/v1", "/v1beta/x"), "/v1/v1beta/x");
        assert_eq!(upstream_path("", "/model/m/converse"), "/model/m/converse");
    }

    #[test]
    fn models_in_paths() {
        assert_eq!(
            model_in_path("/v1beta/models/gemini-2.0-flash:generateContent?alt=sse").as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            model_in_path("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse").as_deref(),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        assert_eq!(
            model_in_path(
                "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x:rawPredict"
            )
            .as_deref(),
            Some("claude-x")
        );
        assert_eq!(model_in_path("/v1/files"), None);
    }

    #[test]
    fn anthropic_sse_usage_split_anywhere() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n"
        )
        .as_bytes();
        for cut in 0..stream.len() {
            let mut r = UsageReader::new(ApiFamily::Anthropic, Framing::Sse);
            r.push(&stream[..cut], false);
            r.push(&stream[cut..], true);
            let u = r.usage().unwrap();
            assert_eq!(
                (u.input_tokens, u.cache_read_tokens, u.output_tokens),
                (15, 5, 7)
            );
        }
    }

    #[test]
    fn json_shapes() {
        let read = |family, body: &str| {
            let mut r = UsageReader::new(family, Framing::Json);
            r.push(body.as_bytes(), true);
            r.usage()
        };
        let u = read(
            ApiFamily::OpenAi,
            r#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        )
        .unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (3, 4));
        let u = read(
            ApiFamily::OpenAi,
            r#"{"usage":{"input_tokens":9,"output_tokens":2,"input_tokens_details":{"cached_tokens":4}}}"#,
        )
        .unwrap();
        assert_eq!((u.input_tokens, u.cache_read_tokens), (9, 4));
        let u = read(
            ApiFamily::Bedrock,
            r#"{"usage":{"inputTokens":3,"outputTokens":4,"cacheReadInputTokens":10,"cacheWriteInputTokens":2}}"#,
        )
        .unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens),
            (15, 10, 2)
        );
        let u = read(
            ApiFamily::Gemini,
            r#"{"usageMetadata":{"promptTokenCount":6,"candidatesTokenCount":2}}"#,
        )
        .unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (6, 2));
        assert!(read(ApiFamily::OpenAi, r#"{"data":[]}"#).is_none());
    }

    #[test]
    fn bedrock_event_stream_metadata() {
        let mut body = eventstream::event("messageStart", br#"{"role":"assistant"}"#);
        body.extend(eventstream::event(
            "metadata",
            br#"{"usage":{"inputTokens":5,"outputTokens":6},"metrics":{"latencyMs":1}}"#,
        ));
        let mut r = UsageReader::new(ApiFamily::Bedrock, Framing::EventStream);
        r.push(&body[..7], false);
        r.push(&body[7..], true);
        let u = r.usage().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (5, 6));
    }
}
