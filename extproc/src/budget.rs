//! What a request may cost before it goes upstream (the budget reservation's estimate) and who
//! its end user is.
//!
//! The estimate is the prompt's tokens at the input price plus the most the request may
//! generate (`max_tokens`, `max_completion_tokens`, else the configured default, times `n`)
//! at the output price. Prompt tokens are counted with OpenAI's real tokenizers
//! (`o200k_base`, or `cl100k_base` for the GPT-4/3.5 generation and the embedding models)
//! when the provider is OpenAI or Azure OpenAI; for every other provider they are estimated
//! as one token per 3 bytes of text, rounded up (Anthropic's and the open models' tokenizers
//! average 3.5 to 4 bytes per English token, so this errs on the high side). Every counted
//! message adds 4 tokens and every request 3, as OpenAI's chat format does.

use serde_json::Value;
use tiktoken_rs::CoreBPE;
use tollgate_core::config::ProviderKind;
use tollgate_core::pricing::{Picodollars, Price};
use tollgate_core::{Endpoint, Usage, UsageSource};

use crate::translator::json::RawObject;

/// Members whose text is the prompt.
const PROMPT_MEMBERS: [&str; 6] = [
    "messages",
    "system",
    "prompt",
    "input",
    "tools",
    "functions",
];

/// Above this much prompt text (bytes), even OpenAI prompts are estimated instead of tokenised,
/// so a huge body never holds the stream's task for long.
const TOKENISE_AT_MOST: usize = 512 * 1024;

/// How prompt tokens are counted for a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// OpenAI's `o200k_base` (GPT-4o, 4.1, 5, o-series).
    O200k,
    /// OpenAI's `cl100k_base` (GPT-4, GPT-3.5, embeddings).
    Cl100k,
    /// One token per 3 bytes, rounded up.
    Bytes,
}

impl Counter {
    /// The counter for `model` at a provider of `kind`.
    pub fn for_target(kind: ProviderKind, model: &str) -> Counter {
        match kind {
            ProviderKind::Openai | ProviderKind::AzureOpenai => {
                let m = model.rsplit('/').next().unwrap_or(model);
                if m.starts_with("gpt-4-")
                    || m == "gpt-4"
                    || m.starts_with("gpt-3.5")
                    || m.starts_with("text-embedding")
                {
                    Counter::Cl100k
                } else {
                    Counter::O200k
                }
            }
            ProviderKind::OpenaiCompatible
            | ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Vertex
            | ProviderKind::Bedrock
            | ProviderKind::Cohere
            | ProviderKind::Jina
            | ProviderKind::Voyage
            | ProviderKind::Tei => Counter::Bytes,
        }
    }

    fn bpe(self) -> Option<&'static CoreBPE> {
        match self {
            Counter::O200k => Some(tiktoken_rs::o200k_base_singleton()),
            Counter::Cl100k => Some(tiktoken_rs::cl100k_base_singleton()),
            Counter::Bytes => None,
        }
    }

    /// Tokens in `text`.
    pub fn count(self, text: &str) -> u64 {
        match self.bpe() {
            Some(bpe) if text.len() <= TOKENISE_AT_MOST => bpe.count_ordinary(text) as u64,
            _ => (text.len() as u64).div_ceil(3),
        }
    }
}

/// Loads the tokenizers `counters` need (a few hundred milliseconds and tens of MB each,
/// once), so no request waits for them. Blocking: call it from a blocking thread.
pub fn warm_tokenizers(counters: &[Counter]) {
    for c in counters {
        let _ = c.count("warm");
    }
}

/// The tokenizers requests under `config` can use: those of its models' targets (budget
/// estimates, stream caps and `count_tokens` count with the target's), loaded before the
/// config serves. A config without OpenAI-family targets loads none.
pub fn tokenizers_needed(config: &tollgate_core::Config) -> Vec<Counter> {
    let mut out = Vec::new();
    for t in config.models.values().flat_map(|m| m.targets.iter()) {
        let c = Counter::for_target(t.provider.kind, &t.upstream_model);
        if c != Counter::Bytes && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn strings<'v>(v: &'v Value, out: &mut Vec<&'v str>, messages: &mut u64) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out, messages)),
        Value::Object(o) => {
            if o.contains_key("role") {
                *messages += 1;
            }
            // Images and other binary payloads are not text the model reads as tokens.
            for (k, x) in o {
                if !matches!(k.as_str(), "image_url" | "data" | "url") {
                    strings(x, out, messages);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The prompt's tokens, as `counter` counts them.
pub fn prompt_tokens(obj: &RawObject<'_>, counter: Counter) -> u64 {
    let mut total = 3u64;
    for member in PROMPT_MEMBERS {
        let Some(raw) = obj.get(member) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(raw.get()) else {
            total += (raw.get().len() as u64).div_ceil(3);
            continue;
        };
        let mut texts = Vec::new();
        let mut messages = 0u64;
        strings(&v, &mut texts, &mut messages);
        let bytes: usize = texts.iter().map(|t| t.len()).sum();
        let counter = if bytes > TOKENISE_AT_MOST {
            Counter::Bytes
        } else {
            counter
        };
        total += messages * 4;
        total += texts.iter().map(|t| counter.count(t)).sum::<u64>();
    }
    total
}

fn integer(obj: &RawObject<'_>, member: &str) -> Option<u64> {
    obj.get(member)
        .and_then(|r| serde_json::from_str::<u64>(r.get()).ok())
}

/// The most output tokens the request may produce: its own limit, else `default`, times the
/// number of choices (`n`). Embeddings produce none.
pub fn max_output_tokens(obj: &RawObject<'_>, endpoint: Endpoint, default: u64) -> u64 {
    if endpoint == Endpoint::Embeddings {
        return 0;
    }
    let limit = [
        integer(obj, "max_completion_tokens"),
        integer(obj, "max_tokens"),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(default);
    limit.saturating_mul(integer(obj, "n").unwrap_or(1).max(1))
}

/// A request's token estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// How its tokens are counted.
    pub counter: Counter,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// The most output tokens it may produce.
    pub max_output_tokens: u64,
    /// Whether the request set its own output limit.
    pub own_limit: bool,
}

/// Whether the request sets `max_tokens` or `max_completion_tokens` itself.
pub fn has_own_limit(obj: &RawObject<'_>) -> bool {
    integer(obj, "max_tokens").is_some() || integer(obj, "max_completion_tokens").is_some()
}

/// The reservation for a request: the estimated usage at `price`.
pub fn estimate(price: &Price, prompt: u64, max_output: u64) -> Picodollars {
    price.cost(&Usage {
        input_tokens: prompt,
        output_tokens: max_output,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        source: UsageSource::Estimated,
    })
}

/// The end user named in the body: OpenAI's `user`, or Anthropic's `metadata.user_id`.
pub fn end_user_in_body(obj: &RawObject<'_>) -> Option<String> {
    if let Some(u) = obj
        .get("user")
        .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
    {
        return Some(u).filter(|u| !u.is_empty());
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        user_id: Option<String>,
    }
    obj.get("metadata")
        .and_then(|r| serde_json::from_str::<Meta>(r.get()).ok())
        .and_then(|m| m.user_id)
        .filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> RawObject<'_> {
        RawObject::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn openai_prompts_are_counted_with_the_real_tokenizer() {
        let body = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":[{"type":"text","text":"Hello world"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
        let o = obj(body);
        let c = Counter::for_target(ProviderKind::Openai, "gpt-4o");
        assert_eq!(c, Counter::O200k);
        // Two messages (4 each) + 3, and the texts: roles, part types, the two strings; not the
        // image.
        let texts: u64 = [
            "system",
            "You are terse.",
            "user",
            "text",
            "Hello world",
            "image_url",
        ]
        .iter()
        .map(|t| tiktoken_rs::o200k_base_singleton().count_ordinary(t) as u64)
        .sum();
        assert_eq!(prompt_tokens(&o, c), 3 + 8 + texts);
        assert_eq!(
            Counter::for_target(ProviderKind::AzureOpenai, "gpt-35-turbo"),
            Counter::O200k
        );
        assert_eq!(
            Counter::for_target(ProviderKind::Openai, "gpt-4-turbo"),
            Counter::Cl100k
        );
    }

    #[test]
    fn other_providers_get_the_byte_estimate() {
        let o =
            obj(r#"{"model":"m","system":"abcdef","messages":[{"role":"user","content":"abcd"}]}"#);
        let c = Counter::for_target(ProviderKind::Anthropic, "claude-sonnet-4");
        assert_eq!(c, Counter::Bytes);
        // "abcdef" → 2; one message (4) with "user" → 2 and "abcd" → 2; plus 3.
        assert_eq!(prompt_tokens(&o, c), 3 + 2 + 4 + 2 + 2);
    }

    #[test]
    fn output_is_the_requests_limit_times_choices_or_the_default() {
        let e = Endpoint::ChatCompletions;
        assert_eq!(max_output_tokens(&obj(r#"{"max_tokens":50}"#), e, 4096), 50);
        assert_eq!(
            max_output_tokens(
                &obj(r#"{"max_tokens":50,"max_completion_tokens":20,"n":3}"#),
                e,
                4096
            ),
            60
        );
        assert_eq!(max_output_tokens(&obj(r#"{}"#), e, 4096), 4096);
        assert_eq!(
            max_output_tokens(&obj(r#"{"max_tokens":50}"#), Endpoint::Embeddings, 4096),
            0
        );
    }

    #[test]
    fn the_end_user_comes_from_user_or_anthropic_metadata() {
        assert_eq!(
            end_user_in_body(&obj(r#"{"user":"u1"}"#)).as_deref(),
            Some("u1")
        );
        assert_eq!(
            end_user_in_body(&obj(r#"{"metadata":{"user_id":"u2"}}"#)).as_deref(),
            Some("u2")
        );
        assert_eq!(end_user_in_body(&obj(r#"{"user":""}"#)), None);
        assert_eq!(end_user_in_body(&obj(r#"{"user":5}"#)), None);
    }

    #[test]
    fn the_estimate_prices_input_and_output() {
        let price = Price {
            input: tollgate_core::pricing::PerToken(1_000_000),
            output: tollgate_core::pricing::PerToken(2_000_000),
            ..Default::default()
        };
        assert_eq!(estimate(&price, 10, 5), 10 * 1_000_000 + 5 * 2_000_000);
    }
}
