//! The media endpoints (OpenAI images, audio and moderations): which API a client path names,
//! its upstream path per provider kind, and the `pricing.media` section that prices them in
//! their own units.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Errors, ProviderKind};
use crate::pricing::media::{MediaPrice, TokenPrices};
use crate::pricing::{parse_usd, PerToken, PriceTable};

/// One of OpenAI's media APIs, served to OpenAI, Azure OpenAI and OpenAI-compatible providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaApi {
    /// `POST /v1/images/generations` (JSON).
    ImageGenerations,
    /// `POST /v1/images/edits` (multipart: `image`, optional `mask`, `prompt`, `model`, …).
    ImageEdits,
    /// `POST /v1/audio/transcriptions` (multipart: `file`, `model`, `response_format`, …).
    Transcriptions,
    /// `POST /v1/audio/translations` (multipart, as transcriptions).
    Translations,
    /// `POST /v1/audio/speech` (JSON in, audio bytes out, streamed through).
    Speech,
    /// `POST /v1/moderations` (JSON).
    Moderations,
}

impl MediaApi {
    /// Every media API.
    pub const ALL: [MediaApi; 6] = [
        MediaApi::ImageGenerations,
        MediaApi::ImageEdits,
        MediaApi::Transcriptions,
        MediaApi::Translations,
        MediaApi::Speech,
        MediaApi::Moderations,
    ];

    /// The API of a client path (`/v1/…`, without its query).
    pub fn from_path(path: &str) -> Option<MediaApi> {
        let suffix = path.strip_prefix("/v1/")?;
        MediaApi::ALL.into_iter().find(|a| a.suffix() == suffix)
    }

    /// The path after the API's base, e.g. `audio/transcriptions`.
    pub fn suffix(self) -> &'static str {
        match self {
            MediaApi::ImageGenerations => "images/generations",
            MediaApi::ImageEdits => "images/edits",
            MediaApi::Transcriptions => "audio/transcriptions",
            MediaApi::Translations => "audio/translations",
            MediaApi::Speech => "audio/speech",
            MediaApi::Moderations => "moderations",
        }
    }

    /// The client path, e.g. `/v1/audio/speech`.
    pub fn client_path(self) -> &'static str {
        match self {
            MediaApi::ImageGenerations => "/v1/images/generations",
            MediaApi::ImageEdits => "/v1/images/edits",
            MediaApi::Transcriptions => "/v1/audio/transcriptions",
            MediaApi::Translations => "/v1/audio/translations",
            MediaApi::Speech => "/v1/audio/speech",
            MediaApi::Moderations => "/v1/moderations",
        }
    }

    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            MediaApi::ImageGenerations => "image_generations",
            MediaApi::ImageEdits => "image_edits",
            MediaApi::Transcriptions => "audio_transcriptions",
            MediaApi::Translations => "audio_translations",
            MediaApi::Speech => "audio_speech",
            MediaApi::Moderations => "moderations",
        }
    }

    /// Whether the request body is `multipart/form-data` (else JSON).
    pub fn multipart(self) -> bool {
        match self {
            MediaApi::ImageEdits | MediaApi::Transcriptions | MediaApi::Translations => true,
            MediaApi::ImageGenerations | MediaApi::Speech | MediaApi::Moderations => false,
        }
    }

    /// The form field that must carry a file (`None` for JSON bodies).
    pub fn file_field(self) -> Option<&'static str> {
        match self {
            MediaApi::ImageEdits => Some("image"),
            MediaApi::Transcriptions | MediaApi::Translations => Some("file"),
            MediaApi::ImageGenerations | MediaApi::Speech | MediaApi::Moderations => None,
        }
    }

    /// The upstream `:path` at a provider of `kind` whose base path is `base_path` (Azure:
    /// the deployment in the path and the `api-version` query); `None` for a provider kind
    /// that does not serve the API.
    pub fn upstream_path(
        self,
        kind: ProviderKind,
        base_path: &str,
        model: &str,
        api_version: Option<&str>,
    ) -> Option<String> {
        match kind {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                Some(format!("{base_path}/{}", self.suffix()))
            }
            ProviderKind::AzureOpenai => Some(format!(
                "{base_path}/openai/deployments/{model}/{}?api-version={}",
                self.suffix(),
                api_version.unwrap_or_default()
            )),
            ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Vertex
            | ProviderKind::Bedrock
            | ProviderKind::Cohere
            | ProviderKind::Jina
            | ProviderKind::Voyage
            | ProviderKind::Tei => None,
        }
    }
}

/// One media model's prices in USD, written as decimal strings (at most 12 decimals).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMediaPrice {
    /// USD per image, by `"{size}/{quality}"` (`"1024x1024/hd"`), `"{size}"` or `"*"`; the
    /// most specific key matching the request wins.
    #[serde(default)]
    pub per_image: BTreeMap<String, String>,
    /// USD per second of input audio (transcriptions, translations).
    #[serde(default)]
    pub per_audio_second: Option<String>,
    /// USD per input character (speech).
    #[serde(default)]
    pub per_character: Option<String>,
    /// USD per million tokens by modality, for token-billed models (`gpt-image-1`,
    /// `gpt-4o-transcribe`, `gpt-4o-mini-tts`).
    #[serde(default)]
    pub tokens: Option<RawMediaTokens>,
}

/// A token-billed media model's prices, USD per million tokens (at most 6 decimals).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMediaTokens {
    /// Input text tokens (and input tokens the answer does not break down by modality).
    pub text_input: String,
    /// Input image tokens (default: `text_input`).
    #[serde(default)]
    pub image_input: Option<String>,
    /// Input audio tokens (default: `text_input`).
    #[serde(default)]
    pub audio_input: Option<String>,
    /// Output tokens in the model's output modality (image, text or audio tokens).
    pub output: String,
}

/// Adds `pricing.media` to `table`, naming each bad value's field path.
pub(super) fn validate_media_pricing(
    raw: &BTreeMap<String, RawMediaPrice>,
    table: &mut PriceTable,
    errs: &mut Errors,
) {
    for (model, p) in raw {
        let path = format!("pricing.media.{model}");
        let mut price = MediaPrice::default();
        let mut ok = true;
        for (key, usd) in &p.per_image {
            match parse_usd(usd) {
                Ok(v) => {
                    price.per_image.insert(key.clone(), v);
                }
                Err(m) => {
                    errs.add(format!("{path}.per_image.{key}"), m);
                    ok = false;
                }
            }
        }
        let mut one = |name: &str, v: &Option<String>| match v.as_deref().map(parse_usd) {
            Some(Ok(v)) => Some(v),
            Some(Err(m)) => {
                errs.add(format!("{path}.{name}"), m);
                ok = false;
                None
            }
            None => None,
        };
        price.per_audio_second = one("per_audio_second", &p.per_audio_second);
        price.per_character = one("per_character", &p.per_character);
        if let Some(t) = &p.tokens {
            let mut per = |name: &str, v: &str| match PerToken::parse_usd_per_million(v) {
                Ok(v) => Some(v),
                Err(m) => {
                    errs.add(format!("{path}.tokens.{name}"), m);
                    ok = false;
                    None
                }
            };
            let text = per("text_input", &t.text_input);
            let image = t.image_input.as_deref().map(|v| per("image_input", v));
            let audio = t.audio_input.as_deref().map(|v| per("audio_input", v));
            let output = per("output", &t.output);
            if let (Some(text), Some(output)) = (text, output) {
                price.tokens = Some(TokenPrices {
                    text_input: text,
                    image_input: image.flatten().unwrap_or(text),
                    audio_input: audio.flatten().unwrap_or(text),
                    output,
                });
            }
        }
        if price.per_image.is_empty()
            && price.per_audio_second.is_none()
            && price.per_character.is_none()
            && price.tokens.is_none()
            && ok
        {
            errs.add(
                path,
                "set at least one of per_image, per_audio_second, per_character, tokens",
            );
            continue;
        }
        if ok {
            table.set_media(model, price);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_api_and_azure_its_deployment() {
        assert_eq!(
            MediaApi::from_path("/v1/audio/speech"),
            Some(MediaApi::Speech)
        );
        assert_eq!(MediaApi::from_path("/v1/audio/other"), None);
        assert_eq!(
            MediaApi::Transcriptions
                .upstream_path(ProviderKind::AzureOpenai, "", "whisper", Some("2024-10-21"))
                .as_deref(),
            Some("/openai/deployments/whisper/audio/transcriptions?api-version=2024-10-21")
        );
        assert_eq!(
            MediaApi::Moderations
                .upstream_path(ProviderKind::Openai, "/v1", "m", None)
                .as_deref(),
            Some("/v1/moderations")
        );
        assert!(MediaApi::Speech
            .upstream_path(ProviderKind::Anthropic, "/v1", "m", None)
            .is_none());
    }

    #[test]
    fn token_prices_by_modality_are_read_and_bad_ones_name_their_field() {
        let env = crate::env::MapEnv::from_pairs([("K", "k")]);
        let base = r#"
providers: { p: { kind: openai, base_url: "http://127.0.0.1:1/v1" } }
models: { m: { targets: [{ provider: p, model: img } ] } }
"#;
        let c = crate::config::Config::from_yaml(
            &format!("{base}pricing:\n  media:\n    img: {{ tokens: {{ text_input: \"4\", image_input: \"8\", output: \"30\" }} }}\n"),
            &env,
        )
        .unwrap();
        let t = c.prices.media("img").and_then(|p| p.tokens).unwrap();
        assert_eq!(
            (t.text_input.0, t.image_input.0, t.audio_input.0, t.output.0),
            (4_000_000, 8_000_000, 4_000_000, 30_000_000)
        );
        // The built-in token-billed models stay.
        assert!(c
            .prices
            .media("gpt-image-1")
            .is_some_and(|p| p.tokens.is_some()));
        let errs = crate::config::Config::from_yaml(
            &format!("{base}pricing:\n  media:\n    img: {{ tokens: {{ text_input: \"4\", output: \"x\" }} }}\n"),
            &env,
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("pricing.media.img.tokens.output:")),
            "{text:?}"
        );
    }
}
