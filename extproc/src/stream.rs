//! Response streams: SSE framing, and the one event a stream's stages see and its encoder
//! writes ([`Frame`]). The stages themselves run in [`pipeline`].

use std::borrow::Cow;

use serde_json::Value;

pub mod pipeline;

pub use pipeline::Pipeline;

#[cfg(test)]
pub(crate) mod tests;

/// The end (exclusive) of the first complete SSE event in `buf`: just past the blank line that
/// ends it. Accepts `\n`, `\r\n` and `\r` line endings.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    while let Some(off) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
        let p = i + off;
        let mut next = p + 1;
        if buf[p] == b'\r' {
            match buf.get(next) {
                Some(b'\n') => next += 1,
                Some(_) => {}
                None => return None, // `\r` or `\r\n`: wait for the next byte
            }
        }
        if p == line_start {
            return Some(next);
        }
        line_start = next;
        i = next;
    }
    None
}

/// The joined `data:` lines of one SSE event.
pub fn event_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n' || *b == b'\r') {
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// Whether an SSE event carries a usage object (`"usage"` or Gemini's `"usageMetadata"`
/// whose value is an object, not `null`), found without parsing it.
pub fn carries_usage(event: &[u8]) -> bool {
    let finder = memchr::memmem::Finder::new(b"\"usage");
    let mut from = 0;
    while let Some(pos) = finder.find(&event[from..]) {
        from += pos + 6;
        let rest = &event[from..];
        let rest = rest.strip_prefix(b"Metadata").unwrap_or(rest);
        let Some(rest) = rest.strip_prefix(b"\"") else {
            continue;
        };
        let mut it = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        if it.next() == Some(&b':') && it.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
    }
    false
}

/// How a frame goes onto the wire.
#[derive(Debug)]
enum Wire<'a> {
    /// The provider's event, unchanged, at `start` in the bytes being framed.
    Provider { start: usize, bytes: &'a [u8] },
    /// Bytes of our own, sent as they are (`data: [DONE]`, an error event).
    Fixed(Cow<'static, [u8]>),
    /// The frame's value as one SSE event: `name` is its `event:` line, `crlf` ends its lines
    /// with CRLF.
    Json {
        name: Option<&'static str>,
        crlf: bool,
    },
}

/// A frame's `data`, parsed at most once.
#[derive(Debug)]
enum Parsed {
    Unread,
    NotJson,
    Json(Value),
}

/// One event of a stream on its way to the client, in the client's dialect: a provider's event
/// (read only when a stage asks for its value) or one the pipeline made.
#[derive(Debug)]
pub struct Frame<'a> {
    wire: Wire<'a>,
    value: Parsed,
}

impl<'a> Frame<'a> {
    /// The provider's event `bytes`, found at `start` in the bytes being framed.
    pub fn provider(start: usize, bytes: &'a [u8]) -> Self {
        Self {
            wire: Wire::Provider { start, bytes },
            value: Parsed::Unread,
        }
    }

    /// A `data:` event of `value`.
    pub fn json(value: Value) -> Self {
        Self {
            wire: Wire::Json {
                name: None,
                crlf: false,
            },
            value: Parsed::Json(value),
        }
    }

    /// A `data:` event of `value` whose lines end in CRLF.
    pub fn json_crlf(value: Value) -> Self {
        Self {
            wire: Wire::Json {
                name: None,
                crlf: true,
            },
            value: Parsed::Json(value),
        }
    }

    /// An event called `name` (its `event:` line) with `value` as its data.
    pub fn named(name: &'static str, value: Value) -> Self {
        Self {
            wire: Wire::Json {
                name: Some(name),
                crlf: false,
            },
            value: Parsed::Json(value),
        }
    }

    /// Bytes of our own, sent as they are and never read by a stage.
    pub fn fixed(bytes: impl Into<Cow<'static, [u8]>>) -> Self {
        Self {
            wire: Wire::Fixed(bytes.into()),
            value: Parsed::NotJson,
        }
    }

    /// The provider's event bytes (empty for a frame the pipeline made).
    pub fn provider_bytes(&self) -> &'a [u8] {
        match self.wire {
            Wire::Provider { bytes, .. } => bytes,
            Wire::Fixed(_) | Wire::Json { .. } => &[],
        }
    }

    /// The event's data as JSON (parsed on first use), or `None` when it is not JSON.
    pub fn value(&mut self) -> Option<&Value> {
        self.read();
        match &self.value {
            Parsed::Json(v) => Some(v),
            Parsed::Unread | Parsed::NotJson => None,
        }
    }

    /// Lets `f` change the event's JSON data (`f` returns whether it did: the frame is written
    /// from its value from then on); returns whether the event is JSON.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value) -> bool) -> bool {
        self.read();
        let Parsed::Json(v) = &mut self.value else {
            return false;
        };
        if f(v) && matches!(self.wire, Wire::Provider { .. }) {
            self.wire = Wire::Json {
                name: None,
                crlf: false,
            };
        }
        true
    }

    /// Whether the event is the OpenAI stream's `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        match &self.wire {
            Wire::Provider { bytes, .. } => event_data(bytes) == b"[DONE]",
            Wire::Fixed(b) => b.as_ref() == DONE,
            Wire::Json { .. } => false,
        }
    }

    fn read(&mut self) {
        if let (Parsed::Unread, Wire::Provider { bytes, .. }) = (&self.value, &self.wire) {
            let data = event_data(bytes);
            self.value = match serde_json::from_slice(&data) {
                Ok(v) => Parsed::Json(v),
                Err(_) => Parsed::NotJson,
            };
        }
    }

    /// Where the frame's unchanged provider bytes start, if it is one.
    fn provider_start(&self) -> Option<usize> {
        match self.wire {
            Wire::Provider { start, .. } => Some(start),
            Wire::Fixed(_) | Wire::Json { .. } => None,
        }
    }

    /// Writes the frame.
    pub fn write(&self, out: &mut Vec<u8>) {
        match (&self.wire, &self.value) {
            (Wire::Provider { bytes, .. }, _) => out.extend_from_slice(bytes),
            (Wire::Fixed(b), _) => out.extend_from_slice(b),
            (Wire::Json { name, crlf }, Parsed::Json(v)) => {
                if let Some(name) = name {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                // Serializing a `Value` to memory cannot fail.
                let _ = serde_json::to_writer(&mut *out, v);
                out.extend_from_slice(if *crlf { b"\r\n\r\n" } else { b"\n\n" });
            }
            (Wire::Json { .. }, Parsed::Unread | Parsed::NotJson) => {}
        }
    }
}

/// The OpenAI stream's last event.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Writes a stream's frames, copying nothing while they are the provider's bytes in order: a
/// chunk no stage changed goes back as "unchanged".
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a [u8],
    /// Output so far is `buf[..same]` (while `out` is `None`).
    same: usize,
    out: Option<Vec<u8>>,
}

impl<'a> Writer<'a> {
    /// A writer for frames of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            same: 0,
            out: None,
        }
    }

    /// Writes `f`.
    pub fn frame(&mut self, f: &Frame<'_>) {
        match &mut self.out {
            Some(out) => f.write(out),
            None if f.provider_start() == Some(self.same) => {
                self.same += f.provider_bytes().len();
            }
            None => {
                let mut out = Vec::with_capacity(self.buf.len() + 64);
                out.extend_from_slice(&self.buf[..self.same]);
                f.write(&mut out);
                self.out = Some(out);
            }
        }
    }

    /// The bytes written, or `None` when they are all of `buf` and `buf` is the chunk as it
    /// arrived (`as_arrived`).
    pub fn finish(self, as_arrived: bool) -> Option<Vec<u8>> {
        match self.out {
            Some(out) => Some(out),
            None if as_arrived && self.same == self.buf.len() => None,
            None => Some(self.buf[..self.same].to_vec()),
        }
    }
}
