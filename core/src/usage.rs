//! Token usage normalised across providers.

use serde::{Deserialize, Serialize};

/// Where a usage figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider reported it.
    #[default]
    Provider,
    /// Tollgate estimated it (the provider reported nothing).
    Estimated,
    /// The request's budget reservation, charged whole because the provider's usage never
    /// came (a stream the client cancelled or that broke off after it started, a response
    /// without usage): the estimate's tokens (prompt, and the most it could generate).
    Reservation,
}

/// Token counts of one request, the same shape for every provider.
///
/// `input_tokens` counts every prompt token, cached or not; `cache_read_tokens` and
/// `cache_write_tokens` are the parts of it read from / written to a prompt cache.
/// `output_tokens` counts every generated token; `reasoning_tokens` is the part of it spent
/// on hidden reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// All prompt tokens, cached included.
    pub input_tokens: u64,
    /// All generated tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write_tokens: u64,
    /// Generated tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// Where the figures came from.
    pub source: UsageSource,
}

impl Usage {
    /// The token counts by the `kind` label of the token metrics: `input`, `output`,
    /// `cache_read`, `cache_write`, `reasoning`.
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        token_kinds(
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )
    }
}

/// Token counts labelled by kind, in the order of [`Usage`]'s fields (for usage held in
/// another shape, such as a log event's).
pub fn token_kinds(
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    reasoning: u64,
) -> [(&'static str, u64); 5] {
    [
        ("input", input),
        ("output", output),
        ("cache_read", cache_read),
        ("cache_write", cache_write),
        ("reasoning", reasoning),
    ]
}

/// The `usage` object of OpenAI's chat, completions and embeddings APIs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenAiUsage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens (absent for embeddings).
    #[serde(default)]
    pub completion_tokens: u64,
    /// Breakdown of the prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: Option<OpenAiPromptDetails>,
    /// Breakdown of the completion tokens.
    #[serde(default)]
    pub completion_tokens_details: Option<OpenAiCompletionDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenAiPromptDetails {
    /// Prompt tokens read from the cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenAiCompletionDetails {
    /// Completion tokens spent on reasoning.
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl From<OpenAiUsage> for Usage {
    fn from(u: OpenAiUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            cache_read_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            source: UsageSource::Provider,
        }
    }
}

/// The `usage` object of Anthropic's Messages API (responses, `message_start` and
/// `message_delta` events). Anthropic's `input_tokens` excludes the cached parts.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnthropicUsage {
    /// Prompt tokens neither read from nor written to the cache.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Generated tokens.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Prompt tokens written to the cache.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Prompt tokens read from the cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    /// Breakdown of the output tokens (newer API versions).
    #[serde(default)]
    pub output_tokens_details: Option<AnthropicOutputDetails>,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnthropicOutputDetails {
    /// Output tokens spent on extended thinking.
    #[serde(default)]
    pub thinking_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Folds this (possibly partial) report into `usage`: fields present here overwrite,
    /// absent ones keep their value, as Anthropic's `message_delta` usage does.
    pub fn merge_into(&self, usage: &mut Usage) {
        let read = self.cache_read_input_tokens;
        let write = self.cache_creation_input_tokens;
        let uncached = usage
            .input_tokens
            .saturating_sub(usage.cache_read_tokens + usage.cache_write_tokens);
        if let Some(r) = read {
            usage.cache_read_tokens = r;
        }
        if let Some(w) = write {
            usage.cache_write_tokens = w;
        }
        let uncached = self.input_tokens.unwrap_or(uncached);
        usage.input_tokens = uncached + usage.cache_read_tokens + usage.cache_write_tokens;
        if let Some(o) = self.output_tokens {
            usage.output_tokens = o;
        }
        if let Some(t) = self
            .output_tokens_details
            .as_ref()
            .and_then(|d| d.thinking_tokens)
        {
            usage.reasoning_tokens = t;
        }
        usage.source = UsageSource::Provider;
    }
}

impl From<AnthropicUsage> for Usage {
    fn from(u: AnthropicUsage) -> Self {
        let mut usage = Usage::default();
        u.merge_into(&mut usage);
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_usage_counts_cached_tokens_as_input_and_merges_deltas() {
        let start: AnthropicUsage = serde_json::from_str(
            r#"{"input_tokens":20,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":1}"#,
        )
        .unwrap();
        let mut u = Usage::from(start);
        assert_eq!(
            (
                u.input_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.output_tokens
            ),
            (125, 100, 5, 1)
        );
        let delta: AnthropicUsage = serde_json::from_str(
            r#"{"output_tokens":42,"output_tokens_details":{"thinking_tokens":30}}"#,
        )
        .unwrap();
        delta.merge_into(&mut u);
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.reasoning_tokens),
            (125, 42, 30)
        );
        let delta: AnthropicUsage =
            serde_json::from_str(r#"{"input_tokens":21,"cache_read_input_tokens":0}"#).unwrap();
        delta.merge_into(&mut u);
        assert_eq!((u.input_tokens, u.cache_read_tokens), (26, 0));
    }

    #[test]
    fn openai_usage_normalises_cached_and_reasoning_tokens() {
        let raw: OpenAiUsage = serde_json::from_str(
            r#"{"prompt_tokens":120,"completion_tokens":40,"total_tokens":160,
                "prompt_tokens_details":{"cached_tokens":100,"audio_tokens":0},
                "completion_tokens_details":{"reasoning_tokens":25}}"#,
        )
        .unwrap();
        let u = Usage::from(raw);
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.reasoning_tokens
            ),
            (120, 40, 100, 25)
        );
        assert_eq!(u.source, UsageSource::Provider);
    }

    #[test]
    fn embeddings_usage_has_no_completion_tokens() {
        let raw: OpenAiUsage =
            serde_json::from_str(r#"{"prompt_tokens":7,"total_tokens":7}"#).unwrap();
        let u = Usage::from(raw);
        assert_eq!((u.input_tokens, u.output_tokens), (7, 0));
    }
}
