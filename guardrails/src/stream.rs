//! Redaction of a text stream in flight (the text of a streamed response, chunk by chunk).
//!
//! After each chunk the scanner releases everything that can no longer be part of a match and
//! holds back the rest: for each rule, the trailing run of bytes that the rule's matches can
//! contain, at most the rule's longest match (and whole UTF-8 characters only). A match that
//! starts before that point is complete, because everything it could span has arrived. So the
//! released text is exactly what redacting the whole text at once would give, wherever the
//! chunk boundaries fall, and prose is held back by a few bytes at most.

use std::sync::Arc;

use crate::engine::{Engine, Verdict};

/// What one step of the stream released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOutput {
    /// Text to pass on now (redactions applied).
    pub text: String,
    /// Set once a blocking rule matched: pass `text` on, then end the stream.
    pub blocked_by: Option<String>,
}

/// The scanner of one stream.
#[derive(Debug)]
pub struct StreamScanner {
    engine: Arc<Engine>,
    /// The last character released, so `\b` sees what came before the held text.
    context: String,
    /// Bytes not yet released: the held-back text, then any incomplete UTF-8 sequence.
    pending: Vec<u8>,
    verdict: Verdict,
    /// Not UTF-8: passed through unscanned from then on (and flagged in the verdict).
    raw: bool,
}

impl StreamScanner {
    /// A scanner for one stream under `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            context: String::new(),
            pending: Vec::new(),
            verdict: Verdict::default(),
            raw: false,
        }
    }

    /// Everything decided so far.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Feeds the next chunk; returns what may be released now.
    pub fn push(&mut self, chunk: &[u8]) -> StreamOutput {
        self.pending.extend_from_slice(chunk);
        self.release(false)
    }

    /// The stream ended: releases everything still held.
    pub fn finish(&mut self) -> StreamOutput {
        self.release(true)
    }

    fn release(&mut self, last: bool) -> StreamOutput {
        let blocked_before = self.verdict.blocked_by.is_some();
        if self.raw {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned();
            return StreamOutput {
                text,
                blocked_by: None,
            };
        }
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() && !last => e.valid_up_to(),
            Err(_) => {
                // Not UTF-8 (or cut inside a character at the very end): scan no further.
                self.raw = true;
                self.verdict.flagged.push("not_utf8".to_owned());
                return self.release(last);
            }
        };
        let from = self.context.len();
        let mut text = std::mem::take(&mut self.context);
        text.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or(""));
        let hold = if last { 0 } else { self.hold(&text[from..]) };
        let mut cut = text.len() - hold;
        let findings: Vec<_> = self
            .engine
            .findings(&text, from)
            .into_iter()
            .filter(|f| f.start < cut)
            .collect();
        if let Some(f) = findings.last() {
            cut = cut.max(f.end);
        }
        let mut out = String::with_capacity(cut - from + 16);
        self.engine
            .apply(&text, from, cut, &findings, &mut out, &mut self.verdict);
        self.context = text[..cut]
            .chars()
            .next_back()
            .map(String::from)
            .unwrap_or_default();
        self.pending.drain(..cut - from);
        StreamOutput {
            text: out,
            blocked_by: if blocked_before {
                None
            } else {
                self.verdict.blocked_by.clone()
            },
        }
    }

    /// How many trailing bytes of `text` could still be part of a match.
    fn hold(&self, text: &str) -> usize {
        let bytes = text.as_bytes();
        let mut hold = 0;
        for rule in &self.engine.rules {
            let run = bytes
                .iter()
                .rev()
                .take(rule.max_len)
                .take_while(|b| rule.alphabet[usize::from(**b)])
                .count();
            hold = hold.max(run);
        }
        // Whole characters only.
        while hold < bytes.len() && !text.is_char_boundary(bytes.len() - hold) {
            hold += 1;
        }
        hold
    }
}
