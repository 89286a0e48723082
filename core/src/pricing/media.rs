//! Prices of the media endpoints in their own units (images, audio seconds, characters, and
//! tokens by modality for the token-billed models `gpt-image-1`, `gpt-4o-transcribe`,
//! `gpt-4o-mini-transcribe`, `gpt-4o-mini-tts`), and the cost of one media request's metered
//! units in picodollars.

use std::collections::{BTreeMap, HashMap};

use super::{parse_usd, PerToken, Picodollars};

/// The price of one media model, each unit in picodollars.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaPrice {
    /// Per image, by `"{size}/{quality}"`, `"{size}"` or `"*"` (the most specific key that
    /// matches the request wins).
    pub per_image: BTreeMap<String, Picodollars>,
    /// Per second of input audio (transcriptions and translations).
    pub per_audio_second: Option<Picodollars>,
    /// Per input character (speech).
    pub per_character: Option<Picodollars>,
    /// Per token by modality (token-billed models).
    pub tokens: Option<TokenPrices>,
}

/// The per-token prices of a token-billed media model, by the modality of the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenPrices {
    /// Input text tokens (the prompt; input tokens the answer does not break down).
    pub text_input: PerToken,
    /// Input image tokens (images to edit).
    pub image_input: PerToken,
    /// Input audio tokens (audio to transcribe).
    pub audio_input: PerToken,
    /// Output tokens, in the model's one output modality (image, text or audio tokens).
    pub output: PerToken,
}

/// What one media request used, in the units its model is billed in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaUsage {
    /// Images generated or edited.
    pub images: u32,
    /// The images' size (`1024x1024`), as requested (empty: the provider's default).
    pub size: String,
    /// The images' quality (`standard`, `hd`, `low`, `medium`, `high`; empty: default).
    pub quality: String,
    /// Milliseconds of input audio (transcriptions and translations).
    pub audio_ms: u64,
    /// Input characters (speech).
    pub characters: u64,
    /// Input tokens of a token-billed model: text (and any the answer does not break down).
    pub text_tokens: u64,
    /// Input image tokens of a token-billed model.
    pub image_tokens: u64,
    /// Input audio tokens of a token-billed model.
    pub audio_tokens: u64,
    /// Output tokens of a token-billed model.
    pub output_tokens: u64,
}

impl MediaUsage {
    /// Whether any token count is set.
    pub fn has_tokens(&self) -> bool {
        self.text_tokens + self.image_tokens + self.audio_tokens + self.output_tokens > 0
    }
}

impl MediaPrice {
    /// The price of one image of `size` and `quality`, if one is set for them.
    pub fn image(&self, size: &str, quality: &str) -> Option<Picodollars> {
        let size = if size.is_empty() { "1024x1024" } else { size };
        let exact = format!("{size}/{quality}");
        self.per_image
            .get(&exact)
            .or_else(|| self.per_image.get(size))
            .or_else(|| self.per_image.get("*"))
            .copied()
    }

    /// The cost of `usage` (`None`: nothing it used has a price here).
    pub fn cost(&self, usage: &MediaUsage) -> Option<Picodollars> {
        let images = (usage.images > 0)
            .then(|| self.image(&usage.size, &usage.quality))
            .flatten()
            .map(|p| p * u128::from(usage.images));
        // Rounded up to the millisecond's share of a second: a fraction of a cent per call.
        let audio = (usage.audio_ms > 0)
            .then_some(self.per_audio_second)
            .flatten()
            .map(|p| (p * u128::from(usage.audio_ms)).div_ceil(1000));
        let chars = (usage.characters > 0)
            .then_some(self.per_character)
            .flatten()
            .map(|p| p * u128::from(usage.characters));
        let tokens = usage
            .has_tokens()
            .then_some(self.tokens)
            .flatten()
            .map(|t| {
                let at = |n: u64, p: PerToken| u128::from(n) * u128::from(p.0);
                at(usage.text_tokens, t.text_input)
                    + at(usage.image_tokens, t.image_input)
                    + at(usage.audio_tokens, t.audio_input)
                    + at(usage.output_tokens, t.output)
            });
        match (images, audio, chars, tokens) {
            (None, None, None, None) => None,
            (a, b, c, d) => Some(a.unwrap_or(0) + b.unwrap_or(0) + c.unwrap_or(0) + d.unwrap_or(0)),
        }
    }
}

/// Built-in media list prices (OpenAI's public pricing page): per image by size and quality.
const IMAGES: &[(&str, &str, &str)] = &[
    ("dall-e-3", "1024x1024/standard", "0.04"),
    ("dall-e-3", "1024x1024", "0.04"),
    ("dall-e-3", "1024x1792/standard", "0.08"),
    ("dall-e-3", "1792x1024/standard", "0.08"),
    ("dall-e-3", "1024x1792", "0.08"),
    ("dall-e-3", "1792x1024", "0.08"),
    ("dall-e-3", "1024x1024/hd", "0.08"),
    ("dall-e-3", "1024x1792/hd", "0.12"),
    ("dall-e-3", "1792x1024/hd", "0.12"),
    ("dall-e-2", "1024x1024", "0.02"),
    ("dall-e-2", "512x512", "0.018"),
    ("dall-e-2", "256x256", "0.016"),
];

/// Built-in per-second (whisper: $0.006 a minute) and per-character (TTS: $15 and $30 per
/// million characters) prices.
const AUDIO: &[(&str, Option<&str>, Option<&str>)] = &[
    ("whisper-1", Some("0.0001"), None),
    ("tts-1", None, Some("0.000015")),
    ("tts-1-hd", None, Some("0.00003")),
];

/// Built-in per-token prices of the token-billed media models, USD per million tokens: (model,
/// text input, image input, audio input, output). OpenAI's model pages
/// (developers.openai.com/api/docs/models/…, read 2026-12-06): gpt-image-1 text $5, image $10,
/// image output $40; gpt-4o-transcribe text $2.50, audio $6, text output $10;
/// gpt-4o-mini-transcribe text $1.25, audio $3, text output $5; gpt-4o-mini-tts text $0.60,
/// audio output $12. Cached-input discounts are not applied (these APIs report no cached
/// tokens).
const TOKENS: &[(&str, &str, &str, &str, &str)] = &[
    ("gpt-image-1", "5", "10", "10", "40"),
    ("gpt-4o-transcribe", "2.50", "2.50", "6", "10"),
    ("gpt-4o-mini-transcribe", "1.25", "1.25", "3", "5"),
    ("gpt-4o-mini-tts", "0.60", "0.60", "0.60", "12"),
];

/// Output image tokens of one `gpt-image-1` image by quality and size (OpenAI's image
/// generation guide); `auto` and unnamed quality count as `high`, unnamed size as the square.
pub fn gpt_image_output_tokens(size: &str, quality: &str) -> u64 {
    let column = match size {
        "1024x1536" => 1,
        "1536x1024" => 2,
        _ => 0,
    };
    let row: [u64; 3] = match quality {
        "low" => [272, 408, 400],
        "medium" => [1056, 1584, 1568],
        _ => [4160, 6240, 6208],
    };
    row[column]
}

/// The built-in media prices by model id.
pub fn catalog() -> HashMap<String, MediaPrice> {
    let mut out: HashMap<String, MediaPrice> = HashMap::new();
    for &(model, key, usd) in IMAGES {
        if let Ok(p) = parse_usd(usd) {
            out.entry(model.to_owned())
                .or_default()
                .per_image
                .insert(key.to_owned(), p);
        }
    }
    for &(model, second, character) in AUDIO {
        let price = out.entry(model.to_owned()).or_default();
        price.per_audio_second = second.and_then(|s| parse_usd(s).ok());
        price.per_character = character.and_then(|s| parse_usd(s).ok());
    }
    let per = |s: &str| PerToken::parse_usd_per_million(s).unwrap_or_default();
    for &(model, text, image, audio, output) in TOKENS {
        out.entry(model.to_owned()).or_default().tokens = Some(TokenPrices {
            text_input: per(text),
            image_input: per(image),
            audio_input: per(audio),
            output: per(output),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_priced_by_the_most_specific_size_and_quality() {
        let c = catalog();
        let d3 = &c["dall-e-3"];
        let usage = |n, size: &str, quality: &str| MediaUsage {
            images: n,
            size: size.into(),
            quality: quality.into(),
            ..Default::default()
        };
        // $0.08 an HD square image, two of them.
        assert_eq!(d3.cost(&usage(2, "1024x1024", "hd")), Some(160_000_000_000));
        // No quality named: the size's price.
        assert_eq!(d3.cost(&usage(1, "1024x1792", "")), Some(80_000_000_000));
        // No size named: OpenAI's default square.
        assert_eq!(d3.cost(&usage(1, "", "")), Some(40_000_000_000));
        assert_eq!(d3.cost(&usage(1, "9x9", "")), None);
    }

    #[test]
    fn audio_seconds_and_characters_are_priced() {
        let c = catalog();
        let whisper = MediaUsage {
            audio_ms: 1500,
            ..Default::default()
        };
        // $0.0001 a second: 1.5 s.
        assert_eq!(c["whisper-1"].cost(&whisper), Some(150_000_000));
        let speech = MediaUsage {
            characters: 1000,
            ..Default::default()
        };
        assert_eq!(c["tts-1"].cost(&speech), Some(15_000_000_000));
        assert_eq!(c["tts-1"].cost(&whisper), None);
    }

    #[test]
    fn token_billed_models_are_priced_by_modality() {
        let c = catalog();
        let image = MediaUsage {
            images: 1,
            text_tokens: 50,
            image_tokens: 194,
            output_tokens: 4160,
            ..Default::default()
        };
        // 50 × $5 + 194 × $10 + 4160 × $40 per million = 250 + 1940 + 166400 µ$.
        assert_eq!(c["gpt-image-1"].cost(&image), Some(168_590_000_000));
        let transcribe = MediaUsage {
            audio_ms: 3000,
            text_tokens: 4,
            audio_tokens: 50,
            output_tokens: 8,
            ..Default::default()
        };
        // Billed in tokens only (no per-second price): 4 × 2.50 + 50 × 6 + 8 × 10.
        assert_eq!(c["gpt-4o-transcribe"].cost(&transcribe), Some(390_000_000));
        assert_eq!(
            c["gpt-4o-mini-transcribe"].cost(&transcribe),
            Some(195_000_000)
        );
        // No tokens at all: nothing to bill in tokens.
        let none = MediaUsage::default();
        assert_eq!(c["gpt-4o-mini-tts"].cost(&none), None);
        assert_eq!(gpt_image_output_tokens("1536x1024", "medium"), 1568);
        assert_eq!(gpt_image_output_tokens("", "auto"), 4160);
    }
}
