//! Stream translation, chunk by chunk: upstream bytes are cut into complete SSE events (a
//! partial event, even one split inside a UTF-8 character, waits for its end), each event is
//! decoded into hub events and encoded at once into the client's dialect. Nothing is
//! buffered beyond the one incomplete event, except the text a guardrail scanner holds back
//! ([`StreamGuard`]): a rule that blocks ends the client's stream with an error event in its
//! dialect.

use tollgate_core::config::Side;
use tollgate_core::{ApiError, Dialect, Usage};

use crate::guard::StreamGuard;

use super::codec::{anthropic, bedrock, gemini, openai};
use super::hub::StreamEvent;
use super::sse::{each_event, event_data};

/// Reads the provider's stream.
#[derive(Debug)]
pub enum Decoder {
    /// `chat.completion.chunk` events.
    OpenAi(openai::StreamDecoder),
    /// Messages events.
    Anthropic(anthropic::StreamDecoder),
    /// `GenerateContentResponse` chunks.
    Gemini(gemini::StreamDecoder),
    /// Bedrock `converse-stream` events in the AWS event-stream framing (not SSE).
    Bedrock(Box<bedrock::StreamDecoder>),
}

/// Writes the client's stream.
#[derive(Debug)]
pub enum Encoder {
    /// `chat.completion.chunk` events.
    OpenAi(openai::StreamEncoder),
    /// Messages events.
    Anthropic(anthropic::StreamEncoder),
    /// `GenerateContentResponse` chunks.
    Gemini(gemini::StreamEncoder),
    /// The upstream events unchanged (same dialect on both sides; decoded for usage only).
    Passthrough,
}

/// Per-stream translation state.
#[derive(Debug)]
pub struct StreamTranslator {
    carry: Vec<u8>,
    decoder: Decoder,
    encoder: Encoder,
    events: Vec<StreamEvent>,
    guard: Option<StreamGuard>,
    /// Turns the emulated JSON mode's tool call back into text.
    json: super::json_tool::StreamUnwrap,
    /// A guardrail ended the stream: everything after is dropped.
    ended: bool,
}

impl StreamTranslator {
    /// A translator from `decoder`'s dialect to `encoder`'s.
    pub fn new(decoder: Decoder, encoder: Encoder) -> Self {
        Self {
            carry: Vec::new(),
            decoder,
            encoder,
            events: Vec::new(),
            guard: None,
            json: Default::default(),
            ended: false,
        }
    }

    /// Judges the text of the stream with `guard` (the encoder must not be `Passthrough`).
    pub fn with_guard(mut self, guard: Option<StreamGuard>) -> Self {
        self.guard = guard;
        self
    }

    /// Names the response (id, model) for upstreams whose streams name neither (Bedrock).
    pub fn with_identity(mut self, id: &str, model: &str) -> Self {
        if let Decoder::Bedrock(d) = &mut self.decoder {
            **d = bedrock::StreamDecoder::new(id, model);
        }
        self
    }

    /// The stream's guard, when it has one.
    pub fn guard(&self) -> Option<&StreamGuard> {
        self.guard.as_ref()
    }

    /// Usage the provider reported so far.
    pub fn usage(&self) -> Option<Usage> {
        match &self.decoder {
            Decoder::OpenAi(d) => d.usage(),
            Decoder::Anthropic(d) => d.usage(),
            Decoder::Gemini(d) => d.usage(),
            Decoder::Bedrock(d) => d.usage(),
        }
    }

    /// Translates one upstream chunk; at `end`, whatever is held back is translated too.
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 2);
        if self.ended {
            return out;
        }
        if let Decoder::Bedrock(d) = &mut self.decoder {
            // Binary framing: the decoder splits messages itself; flushed once per chunk.
            d.push(chunk, end, &mut self.events);
            self.flush(&mut out);
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            each_event(&mut carry, chunk, end, |e| self.event(e, &mut out));
            self.carry = carry;
        }
        if end {
            if let Decoder::OpenAi(d) = &mut self.decoder {
                d.finish(&mut self.events);
            }
            self.flush(&mut out);
            if let Some(g) = &mut self.guard {
                g.finish(&mut self.events);
            }
            self.flush(&mut out);
        }
        out
    }

    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let passthrough = matches!(self.encoder, Encoder::Passthrough);
        // Passed-through streams are read for usage only: skip events that carry none
        // (`"usage"`, or Gemini's `"usageMetadata"`).
        if passthrough && memchr::memmem::find(raw, b"\"usage").is_none() {
            out.extend_from_slice(raw);
            return;
        }
        let data = event_data(raw);
        if !data.is_empty() {
            match &mut self.decoder {
                Decoder::OpenAi(d) => d.decode(&data, &mut self.events),
                Decoder::Anthropic(d) => d.decode(&data, &mut self.events),
                Decoder::Gemini(d) => d.decode(&data, &mut self.events),
                // Never here: Bedrock chunks go to the decoder whole (see `push`).
                Decoder::Bedrock(_) => {}
            }
        }
        if passthrough {
            self.events.clear();
            out.extend_from_slice(raw);
        } else {
            self.flush(out);
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            self.events.clear();
            return;
        }
        self.json.apply(&mut self.events);
        if let Some(g) = &mut self.guard {
            g.apply(&mut self.events);
        }
        for e in self.events.drain(..) {
            match &mut self.encoder {
                Encoder::OpenAi(enc) => enc.encode(e, out),
                Encoder::Anthropic(enc) => enc.encode(e, out),
                Encoder::Gemini(enc) => enc.encode(e, out),
                Encoder::Passthrough => {}
            }
        }
        let Some(rule) = self.guard.as_ref().and_then(|g| g.blocked_by()) else {
            return;
        };
        self.ended = true;
        let err = ApiError::GuardrailBlocked {
            rule: rule.to_owned(),
            side: Side::Response,
        };
        match self.encoder {
            Encoder::Anthropic(_) => {
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(&err.body(Dialect::Anthropic));
            }
            Encoder::Gemini(_) => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&err.body(Dialect::Gemini));
            }
            Encoder::OpenAi(_) | Encoder::Passthrough => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&err.body(Dialect::OpenAi));
            }
        }
        out.extend_from_slice(b"\n\n");
    }
}
