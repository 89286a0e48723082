//! The `responses` section: how `POST /v1/responses` keeps the responses it served, for
//! `previous_response_id` and `GET`/`DELETE /v1/responses/{id}` (a bounded store in each
//! replica's memory, or the budgets' Redis when replicas share one).

use std::time::Duration;

use serde::Deserialize;

use super::Errors;

/// Where stored responses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResponsesBackend {
    /// In this replica's memory, bounded by `max_entries` and `max_bytes` (oldest out first).
    #[default]
    Memory,
    /// In the Redis of `budgets.redis` (same URL and key prefix), shared by every replica.
    Redis,
}

/// The `responses` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    /// Whether Tollgate keeps the responses it serves (a request's own `store: false` opts
    /// out); with this off, `previous_response_id` and `GET /v1/responses/{id}` are refused.
    #[serde(default = "default_store")]
    pub store: bool,
    /// Where stored responses live: `memory` (default) or `redis` (needs `budgets.redis`).
    #[serde(default)]
    pub backend: ResponsesBackend,
    /// The most responses kept in memory (1 to 10000000); the oldest go first.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// The most bytes of stored conversations kept in memory (1024 to 68719476736); the
    /// oldest go first, and one larger than an eighth of this is not stored.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// How long a response is kept, in seconds (1 to 31536000).
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
}

impl Default for RawResponses {
    fn default() -> Self {
        Self {
            store: default_store(),
            backend: ResponsesBackend::default(),
            max_entries: default_max_entries(),
            max_bytes: default_max_bytes(),
            ttl_secs: default_ttl_secs(),
        }
    }
}

fn default_store() -> bool {
    true
}

fn default_max_entries() -> usize {
    10_000
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_ttl_secs() -> u64 {
    3_600
}

/// The validated `responses` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responses {
    /// Whether responses are kept.
    pub store: bool,
    /// Where.
    pub backend: ResponsesBackend,
    /// The most responses kept in memory.
    pub max_entries: usize,
    /// The most bytes kept in memory.
    pub max_bytes: u64,
    /// How long one is kept.
    pub ttl: Duration,
}

impl Default for Responses {
    fn default() -> Self {
        let raw = RawResponses::default();
        Self {
            store: raw.store,
            backend: raw.backend,
            max_entries: raw.max_entries,
            max_bytes: raw.max_bytes,
            ttl: Duration::from_secs(raw.ttl_secs),
        }
    }
}

/// Validates the section; `redis`: whether `budgets.redis` is configured.
pub(super) fn validate_responses(raw: &RawResponses, redis: bool, errs: &mut Errors) -> Responses {
    if !(1..=10_000_000).contains(&raw.max_entries) {
        errs.add("responses.max_entries", "must be between 1 and 10000000");
    }
    if !(1024..=64 * 1024 * 1024 * 1024).contains(&raw.max_bytes) {
        errs.add(
            "responses.max_bytes",
            "must be between 1024 and 68719476736",
        );
    }
    if !(1..=31_536_000).contains(&raw.ttl_secs) {
        errs.add("responses.ttl_secs", "must be between 1 and 31536000");
    }
    if raw.backend == ResponsesBackend::Redis && !redis {
        errs.add(
            "responses.backend",
            "`redis` needs the `budgets.redis` section (the store shares its connection)",
        );
    }
    Responses {
        store: raw.store,
        backend: raw.backend,
        max_entries: raw.max_entries,
        max_bytes: raw.max_bytes,
        ttl: Duration::from_secs(raw.ttl_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_redis_needs_the_ledger() {
        let mut errs = Errors(Vec::new());
        let raw = RawResponses {
            max_entries: 0,
            backend: ResponsesBackend::Redis,
            ..Default::default()
        };
        validate_responses(&raw, false, &mut errs);
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["responses.max_entries", "responses.backend"]);
        let mut errs = Errors(Vec::new());
        let ok = validate_responses(&RawResponses::default(), false, &mut errs);
        assert!(errs.0.is_empty());
        assert!(ok.store);
        assert_eq!(ok.ttl, Duration::from_secs(3600));
    }
}
