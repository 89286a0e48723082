//! Prices of the media endpoints in their own units (images, audio seconds, characters), and
//! the cost of one media request's metered units in picodollars. Token-billed media models
//! (`gpt-image-1`, `gpt-4o-transcribe`, `gpt-4o-mini-tts`) are priced per token in
//! `pricing.models` like chat models; these units are for the models billed otherwise.

use std::collections::{BTreeMap, HashMap};

use super::{parse_usd, Picodollars};

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
        match (images, audio, chars) {
            (None, None, None) => None,
            (a, b, c) => Some(a.unwrap_or(0) + b.unwrap_or(0) + c.unwrap_or(0)),
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
}
