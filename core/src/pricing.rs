//! Model prices and exact cost: a built-in catalog of public list prices, overridable per model,
//! and the cost of a normalised [`Usage`] in integer picodollars (10⁻¹² USD), so that sums over
//! millions of requests never drift the way floating-point totals do.
//!
//! Prices are written as USD per million tokens with at most six decimals (`"2.50"`,
//! `"0.075"`), which is exactly one whole number of picodollars per token.

use std::collections::HashMap;
use std::fmt;

use crate::usage::Usage;

pub mod media;

/// Picodollars (10⁻¹² USD): the unit of every cost.
pub type Picodollars = u128;

/// One picodollar per token is 0.000001 USD per million tokens.
const PICO_PER_USD_PER_MTOK: u64 = 1_000_000;

/// A price in picodollars per token (= micro-USD per million tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerToken(pub u64);

impl PerToken {
    /// Parses USD per million tokens written as a decimal (`"2.50"`, `"0.075"`, `"3"`).
    pub fn parse_usd_per_million(s: &str) -> Result<PerToken, String> {
        let value = parse_fixed(
            s,
            6,
            "a price in USD per million tokens, e.g. \"2.50\"",
            "0.000001 USD per million tokens",
        )?;
        u64::try_from(value)
            .map(PerToken)
            .map_err(|_| format!("`{}` is too large", s.trim()))
    }
}

impl fmt::Display for PerToken {
    /// USD per million tokens, without trailing zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / PICO_PER_USD_PER_MTOK;
        let frac = self.0 % PICO_PER_USD_PER_MTOK;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let frac = format!("{frac:06}");
            write!(f, "{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// The prices of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input: PerToken,
    /// Generated tokens (reasoning included unless `reasoning` is set).
    pub output: PerToken,
    /// Prompt tokens read from the cache (defaults to `input` where a provider has no discount).
    pub cache_read: PerToken,
    /// Prompt tokens written to the cache (defaults to `input`).
    pub cache_write: PerToken,
    /// Reasoning tokens, where a provider prices them apart from other output.
    pub reasoning: Option<PerToken>,
    /// Prices above a prompt size, where the provider charges more for long prompts.
    pub long_context: Option<LongContext>,
}

/// Higher prices for prompts above a size (Gemini 2.5 Pro, Claude Sonnet 4 with 1M context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongContext {
    /// Prompts of more than this many input tokens use these prices for the whole request.
    pub above_input_tokens: u64,
    /// Uncached prompt tokens.
    pub input: PerToken,
    /// Generated tokens.
    pub output: PerToken,
    /// Cached prompt tokens.
    pub cache_read: PerToken,
    /// Cache writes.
    pub cache_write: PerToken,
}

impl Price {
    /// The exact cost of `usage`. `usage.input_tokens` counts cached tokens too; they are
    /// charged at the cache prices and only the rest at `input`.
    pub fn cost(&self, usage: &Usage) -> Picodollars {
        let long = self
            .long_context
            .filter(|l| usage.input_tokens > l.above_input_tokens);
        let (input, output, cache_read, cache_write) = match long {
            Some(l) => (l.input, l.output, l.cache_read, l.cache_write),
            None => (self.input, self.output, self.cache_read, self.cache_write),
        };
        let cached = usage
            .cache_read_tokens
            .saturating_add(usage.cache_write_tokens);
        let uncached = usage.input_tokens.saturating_sub(cached);
        let (plain_output, reasoning) = match self.reasoning {
            Some(r) => (
                usage.output_tokens.saturating_sub(usage.reasoning_tokens),
                u128::from(usage.reasoning_tokens.min(usage.output_tokens)) * u128::from(r.0),
            ),
            None => (usage.output_tokens, 0),
        };
        u128::from(uncached) * u128::from(input.0)
            + u128::from(usage.cache_read_tokens) * u128::from(cache_read.0)
            + u128::from(usage.cache_write_tokens) * u128::from(cache_write.0)
            + u128::from(plain_output) * u128::from(output.0)
            + reasoning
    }
}

/// Parses an amount of USD written as a decimal (`"100"`, `"0.50"`, at most 12 decimals) into
/// exact picodollars.
pub fn parse_usd(s: &str) -> Result<Picodollars, String> {
    parse_fixed(
        s,
        12,
        "an amount in USD, e.g. \"100\" or \"2.50\"",
        "0.000000000001 USD",
    )
}

/// A non-negative decimal with at most `places` decimals, as an integer of that many places.
/// `what` and `step` word the errors.
fn parse_fixed(s: &str, places: u32, what: &str, step: &str) -> Result<u128, String> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) {
        return Err(format!("`{s}` is not {what}"));
    }
    if frac.len() > places as usize {
        return Err(format!(
            "`{s}` has more than {places} decimals (the smallest step is {step})"
        ));
    }
    let too_large = || format!("`{s}` is too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().unwrap_or(0) * 10u128.pow(places - frac.len() as u32)
    };
    whole
        .checked_mul(10u128.pow(places))
        .and_then(|w| w.checked_add(frac_value))
        .ok_or_else(too_large)
}

/// A cost in USD as a decimal string with twelve places (exact), e.g. `"0.000012500000"`.
pub fn format_usd(cost: Picodollars) -> String {
    format!(
        "{}.{:012}",
        cost / 1_000_000_000_000,
        cost % 1_000_000_000_000
    )
}

/// A cost in USD as a float, for metrics and dashboards (sums of these may drift; sum
/// picodollars instead where exactness matters).
pub fn to_usd_f64(cost: Picodollars) -> f64 {
    cost as f64 / 1e12
}

/// Built-in list prices, USD per million tokens: (model, input, cached input read, cache
/// write, output). Checked against the providers' public pricing pages; config overrides win.
const CATALOG: &[(&str, &str, &str, &str, &str)] = &[
    // OpenAI (cache writes are free: charged as plain input).
    ("gpt-5", "1.25", "0.125", "1.25", "10"),
    ("gpt-5-mini", "0.25", "0.025", "0.25", "2"),
    ("gpt-5-nano", "0.05", "0.005", "0.05", "0.40"),
    ("gpt-4.1", "2", "0.50", "2", "8"),
    ("gpt-4.1-mini", "0.40", "0.10", "0.40", "1.60"),
    ("gpt-4.1-nano", "0.10", "0.025", "0.10", "0.40"),
    ("gpt-4o", "2.50", "1.25", "2.50", "10"),
    ("gpt-4o-mini", "0.15", "0.075", "0.15", "0.60"),
    ("o1", "15", "7.50", "15", "60"),
    ("o3", "2", "0.50", "2", "8"),
    ("o3-mini", "1.10", "0.55", "1.10", "4.40"),
    ("o4-mini", "1.10", "0.275", "1.10", "4.40"),
    ("text-embedding-3-small", "0.02", "0.02", "0.02", "0"),
    ("text-embedding-3-large", "0.13", "0.13", "0.13", "0"),
    ("text-embedding-ada-002", "0.10", "0.10", "0.10", "0"),
    // Anthropic (5-minute cache writes at 1.25x input, reads at 0.1x).
    ("claude-opus-4-1", "15", "1.50", "18.75", "75"),
    ("claude-opus-4", "15", "1.50", "18.75", "75"),
    ("claude-opus-4-5", "5", "0.50", "6.25", "25"),
    ("claude-sonnet-4-5", "3", "0.30", "3.75", "15"),
    ("claude-sonnet-4", "3", "0.30", "3.75", "15"),
    ("claude-3-7-sonnet", "3", "0.30", "3.75", "15"),
    ("claude-3-5-sonnet", "3", "0.30", "3.75", "15"),
    ("claude-haiku-4-5", "1", "0.10", "1.25", "5"),
    ("claude-3-5-haiku", "0.80", "0.08", "1", "4"),
    ("claude-3-haiku", "0.25", "0.03", "0.30", "1.25"),
    // Google Gemini (prompts up to 200k tokens; see LONG_CONTEXT for above).
    ("gemini-2.5-pro", "1.25", "0.31", "1.25", "10"),
    ("gemini-2.5-flash", "0.30", "0.03", "0.30", "2.50"),
    ("gemini-2.5-flash-lite", "0.10", "0.01", "0.10", "0.40"),
    ("gemini-2.0-flash", "0.10", "0.025", "0.10", "0.40"),
    ("gemini-2.0-flash-lite", "0.075", "0.075", "0.075", "0.30"),
    // Gemini API embeddings (input only).
    ("gemini-embedding-001", "0.15", "0.15", "0.15", "0"),
];

/// Long-prompt prices: (model, above input tokens, input, cached read, cache write, output).
const LONG_CONTEXT: &[(&str, u64, &str, &str, &str, &str)] = &[
    ("gemini-2.5-pro", 200_000, "2.50", "0.625", "2.50", "15"),
    ("claude-sonnet-4", 200_000, "6", "0.60", "7.50", "22.50"),
    ("claude-sonnet-4-5", 200_000, "6", "0.60", "7.50", "22.50"),
];

fn p(s: &str) -> PerToken {
    PerToken::parse_usd_per_million(s).unwrap_or_default()
}

/// Prices by model id: the built-in catalog plus overrides.
#[derive(Debug, Clone)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
    /// Media models priced in their own units (images, audio seconds, characters).
    media: HashMap<String, media::MediaPrice>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::builtin()
    }
}

impl PriceTable {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        let mut prices: HashMap<String, Price> = CATALOG
            .iter()
            .map(|&(m, input, read, write, output)| {
                (
                    m.to_owned(),
                    Price {
                        input: p(input),
                        output: p(output),
                        cache_read: p(read),
                        cache_write: p(write),
                        reasoning: None,
                        long_context: None,
                    },
                )
            })
            .collect();
        for &(m, above, input, read, write, output) in LONG_CONTEXT {
            if let Some(price) = prices.get_mut(m) {
                price.long_context = Some(LongContext {
                    above_input_tokens: above,
                    input: p(input),
                    output: p(output),
                    cache_read: p(read),
                    cache_write: p(write),
                });
            }
        }
        Self {
            prices,
            media: media::catalog(),
        }
    }

    /// Sets (or replaces) the media price of `model`.
    pub fn set_media(&mut self, model: &str, price: media::MediaPrice) {
        self.media.insert(model.to_owned(), price);
    }

    /// The media price (images, audio seconds, characters) of a model id, exact or without a
    /// routing prefix (`openai/dall-e-3`).
    pub fn media(&self, model: &str) -> Option<&media::MediaPrice> {
        let model = model.trim();
        self.media.get(model).or_else(|| {
            let (_, rest) = model.rsplit_once('/')?;
            self.media.get(rest)
        })
    }

    /// Sets (or replaces) the price of `model`.
    pub fn set(&mut self, model: &str, price: Price) {
        self.prices.insert(model.to_owned(), price);
    }

    /// The price of a model id as a provider names it. Tries the id itself, then without a
    /// routing prefix (`openai/gpt-4o`, Bedrock's `anthropic.`/`us.anthropic.`), then without
    /// a version suffix (`-2024-08-06`, `-20250514`, `-latest`, `-001`, Bedrock's `-v1:0`).
    pub fn get(&self, model: &str) -> Option<&Price> {
        let mut name = model.trim();
        if let Some(p) = self.prices.get(name) {
            return Some(p);
        }
        if let Some((_, rest)) = name.rsplit_once('/') {
            name = rest;
        }
        for vendor in ["anthropic.", "openai.", "google."] {
            if let Some(i) = name.find(vendor) {
                name = &name[i + vendor.len()..];
            }
        }
        let mut candidate = name;
        loop {
            if let Some(p) = self.prices.get(candidate) {
                return Some(p);
            }
            candidate = strip_version(candidate)?;
        }
    }
}

/// `name` without one trailing version part (`-2024-08-06`, `-20250514`, `-001`, `-latest`,
/// `-preview`, `-exp`, Bedrock's `-v1:0`), if it has one.
fn strip_version(name: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let (Some(head), Some(date)) = (
        name.get(..name.len().saturating_sub(11)),
        name.get(name.len().saturating_sub(11)..),
    ) {
        let b = date.as_bytes();
        if b.len() == 11
            && !head.is_empty()
            && b[0] == b'-'
            && b[5] == b'-'
            && b[8] == b'-'
            && digits(&date[1..5])
            && digits(&date[6..8])
            && digits(&date[9..11])
        {
            return Some(head);
        }
    }
    let (head, tail) = name.rsplit_once('-')?;
    let version = matches!(tail, "latest" | "preview" | "exp")
        || (digits(tail) && matches!(tail.len(), 3 | 8))
        || (tail.starts_with('v') && tail.contains(':'));
    version.then_some(head)
}

#[cfg(test)]
mod tests;
