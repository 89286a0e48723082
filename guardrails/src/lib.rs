//! In-process guardrails for LLM traffic: detectors for PII (email, phone, payment cards with
//! the Luhn check, IBAN with its checksum, US SSN, IP addresses), secrets (provider API keys
//! and tokens, private key blocks), prompt-injection heuristics, deny-lists and custom regex
//! rules, each with an action (block, redact or flag).
//!
//! A policy is compiled once per config version into an [`Engine`] (one `RegexSet` pre-filter
//! plus one regex per rule; nothing is compiled per request). [`Engine::check`] judges a whole
//! text; [`StreamScanner`] redacts a response stream in flight, holding back only the bytes
//! that could still be the start of a match, so nothing leaks across chunk boundaries.

mod detectors;
mod engine;
mod stream;

pub use detectors::{iban_valid, luhn_valid, Detector};
pub use engine::{Action, Engine, Finding, Outcome, RuleSpec, Verdict};
pub use stream::{StreamOutput, StreamScanner};

/// A policy that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// A custom regex does not parse.
    #[error("rule `{rule}`: invalid regex: {message}")]
    InvalidRegex {
        /// The rule's id.
        rule: String,
        /// What the regex parser said.
        message: String,
    },
    /// A custom regex can match arbitrarily long text, which no stream can hold back.
    #[error("rule `{rule}`: the regex can match text of unbounded length; bound every repetition (e.g. `{{1,64}}` instead of `+`)")]
    Unbounded {
        /// The rule's id.
        rule: String,
    },
    /// A regex that matches the empty string would match everywhere.
    #[error("rule `{rule}`: the regex matches the empty string")]
    MatchesEmpty {
        /// The rule's id.
        rule: String,
    },
    /// A deny-list with no words.
    #[error("rule `{rule}`: the deny-list is empty")]
    EmptyDenyList {
        /// The rule's id.
        rule: String,
    },
    /// An action this detector does not support.
    #[error("rule `{rule}`: {detector} supports `block` and `flag` only (redacting part of a private key would leak the rest)")]
    UnsupportedAction {
        /// The rule's id.
        rule: String,
        /// The detector's name.
        detector: &'static str,
    },
    /// Two rules with the same id.
    #[error("rule `{rule}` is defined twice")]
    DuplicateRule {
        /// The rule's id.
        rule: String,
    },
}

#[cfg(test)]
mod tests;
