//! One pipeline per successful response stream: one framer (SSE, or the AWS event-stream of
//! Bedrock) splits the provider's bytes into events once; each event is parsed at most once;
//! the stages — usage, guardrails, the output cap, capture — see those events; and what the
//! client gets is encoded once.
//!
//! A stream between two dialects is decoded into hub events, judged by the guardrails there,
//! and encoded into client frames. A same-dialect stream keeps the provider's events: one no
//! stage changed goes out as its original bytes, and a chunk nothing changed goes back as
//! "unchanged". Only the one incomplete event is held back between chunks (and the text a
//! guardrail scanner holds), so the output is the same wherever the provider split its bytes.

use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;
use tollgate_core::config::{ApiFamily, Side};
use tollgate_core::usage::OpenAiUsage;
use tollgate_core::{ApiError, Usage};
use tollgate_guardrails::{Engine, Verdict};

use super::{carries_usage, event_data, event_end, Frame, Writer};
use crate::capture::Capture;
use crate::guard::{OpenAiStreamGuard, StreamGuard};
use crate::streamcap::StreamCap;
use crate::translator::codec::{anthropic, bedrock, gemini, openai};
use crate::translator::dialect_of;
use crate::translator::hub::StreamEvent;
use crate::translator::json_tool::StreamUnwrap;
use crate::translator::Pair;

/// Reads the provider's stream.
#[derive(Debug)]
enum Decoder {
    /// `chat.completion.chunk` events.
    OpenAi(openai::StreamDecoder),
    /// Messages events.
    Anthropic(anthropic::StreamDecoder),
    /// `GenerateContentResponse` chunks.
    Gemini(gemini::StreamDecoder),
    /// Bedrock `converse-stream` events in the AWS event-stream framing (not SSE): the
    /// decoder frames its binary messages itself.
    Bedrock(Box<bedrock::StreamDecoder>),
}

impl Decoder {
    fn usage(&self) -> Option<Usage> {
        match self {
            Decoder::OpenAi(d) => d.usage(),
            Decoder::Anthropic(d) => d.usage(),
            Decoder::Gemini(d) => d.usage(),
            Decoder::Bedrock(d) => d.usage(),
        }
    }

    /// Decodes one SSE event's data.
    fn decode(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) {
        match self {
            Decoder::OpenAi(d) => d.decode(data, out),
            Decoder::Anthropic(d) => d.decode(data, out),
            Decoder::Gemini(d) => d.decode(data, out),
            // Never here: Bedrock chunks go to the decoder whole (see `push_chunk`).
            Decoder::Bedrock(_) => {}
        }
    }
}

/// Writes the client's stream.
#[derive(Debug)]
enum Encoder {
    /// `chat.completion.chunk` events.
    OpenAi(openai::StreamEncoder),
    /// Messages events.
    Anthropic(anthropic::StreamEncoder),
    /// `GenerateContentResponse` chunks.
    Gemini(gemini::StreamEncoder),
    /// OpenAI Responses events (`POST /v1/responses` through the hub).
    Responses(Box<crate::responses::response::StreamEncoder>),
    /// `text_completion` chunks (`POST /v1/completions` through the hub).
    Completions(crate::translator::completions::StreamEncoder),
}

impl Encoder {
    fn encode(&mut self, e: StreamEvent, out: &mut Vec<Frame<'_>>) {
        match self {
            Encoder::OpenAi(enc) => enc.encode(e, out),
            Encoder::Anthropic(enc) => enc.encode(e, out),
            Encoder::Gemini(enc) => enc.encode(e, out),
            Encoder::Responses(enc) => enc.encode(e, out),
            Encoder::Completions(enc) => enc.encode(e, out),
        }
    }
}

/// How the provider's events become the client's.
#[derive(Debug)]
enum Mode {
    /// Same dialect: the provider's events go out as they are unless a stage changes them;
    /// only events carrying usage are read for it.
    Passthrough {
        /// Removes the choice-less usage chunk the client did not ask for (OpenAI).
        strip_usage_chunk: bool,
        /// Guardrails on an OpenAI stream, chunk members kept as the provider wrote them.
        guard: Option<Box<OpenAiStreamGuard>>,
    },
    /// Decoded into hub events, judged there, encoded into the client's dialect.
    Translate(Box<Hub>),
}

/// The hub side of a translated stream.
#[derive(Debug)]
struct Hub {
    encoder: Encoder,
    guard: Option<StreamGuard>,
    /// Turns the emulated JSON mode's tool call back into text.
    json: StreamUnwrap,
    /// Decoded, not yet encoded.
    events: Vec<StreamEvent>,
}

/// Per-stream state of the pipeline.
#[derive(Debug)]
pub struct Pipeline {
    client: ApiFamily,
    /// The incomplete SSE event held back.
    carry: Vec<u8>,
    decoder: Decoder,
    /// Usage read from an OpenAI stream passed through.
    usage: Option<Usage>,
    mode: Mode,
    cap: Option<StreamCap>,
    /// A guardrail ended the client's stream: nothing more goes out.
    ended: bool,
}

impl Pipeline {
    /// The pipeline of `pair`'s streams (`include_usage`: an OpenAI client asked for the usage
    /// chunk; `created`: the `created` of OpenAI chunks made here), judging the assistant's
    /// text with `guard` when given. A same-dialect stream with guardrails is re-encoded from
    /// hub events, except OpenAI's, which is judged chunk by chunk in place.
    pub fn new(pair: Pair, include_usage: bool, created: u64, guard: Option<Arc<Engine>>) -> Self {
        let decoder = match pair.upstream {
            ApiFamily::OpenAi => Decoder::OpenAi(Default::default()),
            ApiFamily::Anthropic => Decoder::Anthropic(Default::default()),
            ApiFamily::Gemini => Decoder::Gemini(Default::default()),
            ApiFamily::Bedrock => Decoder::Bedrock(Default::default()),
        };
        let passthrough = !pair.translates() && (guard.is_none() || pair.is_openai_passthrough());
        let mode = if passthrough {
            Mode::Passthrough {
                strip_usage_chunk: false,
                guard: guard.map(|e| Box::new(OpenAiStreamGuard::new(e))),
            }
        } else {
            let encoder = match pair.client {
                ApiFamily::OpenAi | ApiFamily::Bedrock => {
                    Encoder::OpenAi(openai::StreamEncoder::new(include_usage, created))
                }
                ApiFamily::Anthropic => Encoder::Anthropic(Default::default()),
                ApiFamily::Gemini => Encoder::Gemini(Default::default()),
            };
            Mode::Translate(Box::new(Hub {
                encoder,
                guard: guard.map(StreamGuard::new),
                json: Default::default(),
                events: Vec::new(),
            }))
        };
        Self {
            client: pair.client,
            carry: Vec::new(),
            decoder,
            usage: None,
            mode,
            cap: None,
            ended: false,
        }
    }

    /// Removes the choice-less usage chunk of an OpenAI stream passed through (the client did
    /// not ask for it; Tollgate did, to read usage).
    pub fn strip_usage_chunk(mut self, strip: bool) -> Self {
        if let Mode::Passthrough {
            strip_usage_chunk, ..
        } = &mut self.mode
        {
            *strip_usage_chunk = strip;
        }
        self
    }

    /// Names the response (id, model) for upstreams whose streams name neither (Bedrock).
    pub fn with_identity(mut self, id: &str, model: &str) -> Self {
        if let Decoder::Bedrock(d) = &mut self.decoder {
            **d = bedrock::StreamDecoder::new(id, model);
        }
        self
    }

    /// Writes the client's stream as OpenAI Responses events with `encoder` (decoded into hub
    /// events whatever the provider speaks), judging the text with `guard` when given.
    pub fn into_responses(
        mut self,
        encoder: crate::responses::response::StreamEncoder,
        guard: Option<Arc<Engine>>,
    ) -> Self {
        self.mode = Mode::Translate(Box::new(Hub {
            encoder: Encoder::Responses(Box::new(encoder)),
            guard: guard.map(StreamGuard::new),
            json: Default::default(),
            events: Vec::new(),
        }));
        self
    }

    /// When `on` (a legacy `POST /v1/completions` through the hub): writes the client's
    /// stream as `text_completion` chunks instead of chat chunks. A stream passed through
    /// unchanged (OpenAI to OpenAI) keeps the provider's chunks.
    pub fn with_text_completions(mut self, on: bool, include_usage: bool, created: u64) -> Self {
        if let (true, Mode::Translate(hub)) = (on, &mut self.mode) {
            if matches!(hub.encoder, Encoder::OpenAi(_)) {
                hub.encoder = Encoder::Completions(
                    crate::translator::completions::StreamEncoder::new(include_usage, created),
                );
            }
        }
        self
    }

    /// Ends the client's stream at `cap`'s output allowance.
    pub fn with_cap(mut self, cap: Option<StreamCap>) -> Self {
        self.cap = cap;
        self
    }

    /// Takes the output cap out (to carry it over to another pipeline for the same client).
    pub fn take_cap(&mut self) -> Option<StreamCap> {
        self.cap.take()
    }

    /// The stream's output cap, when it has one.
    pub fn cap(&self) -> Option<&StreamCap> {
        self.cap.as_ref()
    }

    /// Usage the provider reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.usage.or_else(|| self.decoder.usage())
    }

    /// Everything the guardrails decided so far, when the stream has them.
    pub fn verdict(&self) -> Option<Verdict> {
        match &self.mode {
            Mode::Passthrough { guard, .. } => guard.as_deref().map(OpenAiStreamGuard::verdict),
            Mode::Translate(hub) => hub.guard.as_ref().map(StreamGuard::verdict),
        }
    }

    /// The client's bytes for one provider chunk; at `end`, whatever is held back too.
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        self.push_chunk(chunk, end, None)
            .unwrap_or_else(|| chunk.to_vec())
    }

    /// The client's bytes for one provider chunk, `None` when they are the chunk unchanged;
    /// `capture` reads what the client gets.
    pub fn push_chunk(
        &mut self,
        chunk: &[u8],
        end: bool,
        mut capture: Option<&mut Capture>,
    ) -> Option<Vec<u8>> {
        if let Decoder::Bedrock(d) = &mut self.decoder {
            let mut w = Writer::new(&[]);
            let mut frames = Vec::new();
            if let Mode::Translate(hub) = &mut self.mode {
                d.push(chunk, end, &mut hub.events);
            }
            self.flush(&mut frames);
            if end {
                self.finish(&mut frames);
            }
            self.stages(&mut frames, capture, &mut w);
            return w.finish(false);
        }
        let held = !self.carry.is_empty();
        let joined;
        let buf: &[u8] = if held {
            self.carry.extend_from_slice(chunk);
            joined = std::mem::take(&mut self.carry);
            &joined
        } else {
            chunk
        };
        let mut w = Writer::new(buf);
        let mut frames = Vec::new();
        // No stage but usage reads this stream: each event is written as it is read.
        let plain = matches!(self.mode, Mode::Passthrough { guard: None, .. })
            && self.cap.is_none()
            && capture.is_none();
        let mut pos = 0;
        while let Some(len) = event_end(&buf[pos..]) {
            let mut frame = Frame::provider(pos, &buf[pos..pos + len]);
            if plain {
                if self.read_usage(&mut frame, false) {
                    w.frame(&frame);
                }
            } else {
                self.event(frame, &mut frames, capture.is_some());
                self.stages(&mut frames, capture.as_deref_mut(), &mut w);
            }
            pos += len;
        }
        let rest = &buf[pos..];
        if end {
            // An upstream that ended without the blank line: the rest is an event too.
            if !rest.is_empty() {
                self.event(Frame::provider(pos, rest), &mut frames, capture.is_some());
            }
            self.finish(&mut frames);
            self.stages(&mut frames, capture, &mut w);
        } else {
            self.carry.extend_from_slice(rest);
        }
        w.finish(!held)
    }

    /// One provider event through usage and the guardrails (or translation) into `frames`.
    fn event<'a>(&mut self, mut frame: Frame<'a>, frames: &mut Vec<Frame<'a>>, captured: bool) {
        if let Mode::Translate(hub) = &mut self.mode {
            if self.ended {
                return;
            }
            let data = event_data(frame.provider_bytes());
            if !data.is_empty() {
                self.decoder.decode(&data, &mut hub.events);
            }
            self.flush(frames);
            return;
        }
        let guarded = matches!(self.mode, Mode::Passthrough { guard: Some(_), .. });
        let parsed_later = guarded || self.cap.is_some() || captured;
        if !self.read_usage(&mut frame, parsed_later) || self.ended {
            return;
        }
        let Mode::Passthrough { guard: Some(g), .. } = &mut self.mode else {
            frames.push(frame);
            return;
        };
        g.event(frame, frames);
        if let Some(rule) = g.blocked_by() {
            let rule = rule.to_owned();
            self.block(rule, frames);
        }
    }

    /// Reads usage from a passed-through event that carries it: from its value when a later
    /// stage parses it anyway (`parsed_later`), else straight from its data into the usage
    /// fields alone. Returns whether the event is kept.
    fn read_usage(&mut self, frame: &mut Frame<'_>, parsed_later: bool) -> bool {
        let Mode::Passthrough {
            strip_usage_chunk: strip,
            ..
        } = self.mode
        else {
            return true;
        };
        if !carries_usage(frame.provider_bytes()) {
            return true;
        }
        if parsed_later {
            frame
                .value()
                .is_none_or(|v| read_usage(&mut self.decoder, &mut self.usage, strip, v))
        } else {
            let data = event_data(frame.provider_bytes());
            let mut de = serde_json::Deserializer::from_slice(&data);
            read_usage(&mut self.decoder, &mut self.usage, strip, &mut de)
        }
    }

    /// Hub events decoded so far through the guardrails and the encoder into `frames`.
    fn flush(&mut self, frames: &mut Vec<Frame<'_>>) {
        let Mode::Translate(hub) = &mut self.mode else {
            return;
        };
        let Hub {
            encoder,
            guard,
            json,
            events,
        } = &mut **hub;
        if self.ended {
            events.clear();
            return;
        }
        json.apply(events);
        if let Some(g) = guard.as_mut() {
            g.apply(events);
        }
        for e in events.drain(..) {
            encoder.encode(e, frames);
        }
        if let Some(rule) = guard.as_ref().and_then(|g| g.blocked_by()) {
            let rule = rule.to_owned();
            self.block(rule, frames);
        }
    }

    /// The end of the provider's stream: what the decoder and the guardrails still hold.
    fn finish(&mut self, frames: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        match &mut self.mode {
            Mode::Translate(hub) => {
                if let Decoder::OpenAi(d) = &mut self.decoder {
                    d.finish(&mut hub.events);
                }
                self.flush(frames);
                if let Mode::Translate(hub) = &mut self.mode {
                    if let Some(g) = &mut hub.guard {
                        g.finish(&mut hub.events);
                    }
                }
                self.flush(frames);
            }
            Mode::Passthrough { guard: Some(g), .. } => {
                g.finish(frames);
                if let Some(rule) = g.blocked_by() {
                    let rule = rule.to_owned();
                    self.block(rule, frames);
                }
            }
            Mode::Passthrough { guard: None, .. } => {}
        }
    }

    /// A guardrail blocked the stream: it ends with an error event in the client's dialect.
    fn block(&mut self, rule: String, frames: &mut Vec<Frame<'_>>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Mode::Translate(hub) = &mut self.mode {
            if let Encoder::Responses(enc) = &mut hub.encoder {
                let e = ApiError::GuardrailBlocked {
                    rule,
                    side: Side::Response,
                };
                let info = crate::translator::hub::ErrorInfo {
                    status: e.status(),
                    kind: Some("guardrail_blocked".to_owned()),
                    message: e.to_string(),
                };
                enc.error(&info, frames);
                return;
            }
        }
        let dialect = dialect_of(self.client);
        let body = ApiError::GuardrailBlocked {
            rule,
            side: Side::Response,
        }
        .body(dialect);
        let mut out = Vec::with_capacity(body.len() + 24);
        if self.client == ApiFamily::Anthropic {
            out.extend_from_slice(b"event: error\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        frames.push(Frame::fixed(out));
    }

    /// The client's frames through the cap and capture, then written.
    fn stages(
        &mut self,
        frames: &mut Vec<Frame<'_>>,
        capture: Option<&mut Capture>,
        w: &mut Writer<'_>,
    ) {
        if frames.is_empty() {
            return;
        }
        if let Some(cap) = &mut self.cap {
            cap.apply(frames);
        }
        if let Some(c) = capture {
            for f in frames.iter_mut() {
                if let Some(v) = f.value() {
                    c.response_event(v);
                }
            }
        }
        for f in frames.drain(..) {
            w.frame(&f);
        }
    }
}

/// What a passed-through stream's usage is read from: the usage and choices of an OpenAI
/// chunk (nothing else of it is parsed).
#[derive(Deserialize)]
struct UsageChunk {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// Reads the usage of one passed-through event from `data` (its bytes, or its value); returns
/// whether the event is kept (`strip`: an OpenAI choice-less usage chunk is not).
fn read_usage<'de, D>(
    decoder: &mut Decoder,
    usage: &mut Option<Usage>,
    strip: bool,
    data: D,
) -> bool
where
    D: serde::Deserializer<'de>,
{
    match decoder {
        Decoder::OpenAi(_) => {
            let Some(u) = UsageChunk::deserialize(data).ok().and_then(|c| {
                let choiceless = c.choices.is_none_or(|c| c.is_empty());
                c.usage.map(|u| (u, choiceless))
            }) else {
                return true;
            };
            *usage = Some(u.0.into());
            !(strip && u.1)
        }
        Decoder::Anthropic(d) => {
            d.read(data, &mut Vec::new());
            true
        }
        Decoder::Gemini(d) => {
            d.read(data, &mut Vec::new());
            true
        }
        Decoder::Bedrock(_) => true,
    }
}
