//! Incremental Server-Sent Events handling for OpenAI-style streams: finds the usage chunk,
//! reads usage from it, and removes it again for a client that did not ask for it.
//!
//! Chunks are processed as they arrive. Only complete events are released; a partial event is
//! held back until its end arrives, so the output is the same wherever the upstream split its
//! bytes. Events without a usage object pass through byte for byte without being parsed.

use memchr::memmem;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tollgate_core::usage::{OpenAiUsage, Usage};

/// The end (exclusive) of the first complete event in `buf`: just past the blank line that
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

/// Feeds `chunk` after the bytes held back in `carry`, calls `f` on each complete event in
/// order, and holds the incomplete rest in `carry`; at `end` the rest is an event too (an
/// upstream that ended without the blank line).
pub fn each_event(carry: &mut Vec<u8>, chunk: &[u8], end: bool, mut f: impl FnMut(&[u8])) {
    carry.extend_from_slice(chunk);
    let buf = std::mem::take(carry);
    let mut pos = 0;
    while let Some(len) = event_end(&buf[pos..]) {
        f(&buf[pos..pos + len]);
        pos += len;
    }
    let rest = &buf[pos..];
    if end {
        if !rest.is_empty() {
            f(rest);
        }
    } else {
        carry.extend_from_slice(rest);
    }
}

/// The joined `data:` lines of one event.
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

/// Whether `event` has a `"usage"` member whose value is an object (not `null`).
fn has_usage_object(event: &[u8]) -> bool {
    let finder = memmem::Finder::new(b"\"usage\"");
    let mut from = 0;
    while let Some(pos) = finder.find(&event[from..]) {
        let rest = &event[from + pos + 7..];
        let mut it = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        if it.next() == Some(&b':') && it.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        from += pos + 7;
    }
    false
}

#[derive(Deserialize)]
struct UsageChunk {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// Per-stream state of the usage filter.
#[derive(Debug, Default)]
pub struct UsageFilter {
    carry: Vec<u8>,
    strip_usage_chunk: bool,
    usage: Option<Usage>,
}

impl UsageFilter {
    /// A filter; `strip_usage_chunk` removes the choice-less usage chunk from the output.
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            carry: Vec::new(),
            strip_usage_chunk,
            usage: None,
        }
    }

    /// The usage seen so far (the last usage object in the stream wins).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Processes one upstream chunk. Returns `None` when the chunk passes unchanged, or the
    /// bytes to send instead. At `end`, everything held back is released.
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        let held_before = !self.carry.is_empty();
        let joined;
        let buf: &[u8] = if held_before {
            self.carry.extend_from_slice(chunk);
            joined = std::mem::take(&mut self.carry);
            &joined
        } else {
            chunk
        };

        let mut out: Option<Vec<u8>> = None; // allocated on the first change
        let mut pos = 0;
        while let Some(len) = event_end(&buf[pos..]) {
            let event = &buf[pos..pos + len];
            let keep = self.inspect(event);
            match (&mut out, keep) {
                (Some(o), true) => o.extend_from_slice(event),
                (Some(_), false) => {}
                (None, false) => out = Some(buf[..pos].to_vec()),
                (None, true) => {}
            }
            pos += len;
        }
        let rest = &buf[pos..];
        if end {
            if let Some(o) = &mut out {
                o.extend_from_slice(rest);
            }
        } else if !rest.is_empty() {
            // Hold the partial event back until its end arrives.
            self.carry.extend_from_slice(rest);
            if out.is_none() {
                out = Some(buf[..pos].to_vec());
            }
        }
        match out {
            Some(o) => Some(o),
            None if held_before => Some(buf.to_vec()),
            None => None,
        }
    }

    /// Reads usage from one event; returns whether the event is kept.
    fn inspect(&mut self, event: &[u8]) -> bool {
        if !has_usage_object(event) {
            return true;
        }
        let data = event_data(event);
        let Ok(chunk) = serde_json::from_slice::<UsageChunk>(&data) else {
            return true;
        };
        let Some(usage) = chunk.usage else {
            return true;
        };
        self.usage = Some(usage.into());
        let choiceless = chunk.choices.is_none_or(|c| c.is_empty());
        !(self.strip_usage_chunk && choiceless)
    }
}

#[cfg(test)]
mod tests;
