//! OpenAI's images, audio and moderations requests and responses, read for what routing and
//! billing need: the model (rewritten to the provider's id in the JSON body or inside the
//! multipart form), the units a request is billed in (images by size and quality, audio
//! seconds, input characters) and the usage a response reports.

use std::ops::Range;

use serde_json::{Map, Value};
use tollgate_core::config::MediaApi;
use tollgate_core::pricing::media::MediaUsage;
use tollgate_core::{ApiError, Usage, UsageSource};

use crate::{audio, multipart};

/// What a media request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaRequest {
    /// The model the client named.
    pub model: String,
    /// Where the `model` field's value is in a multipart body (`None`: a JSON body).
    pub model_range: Option<Range<usize>>,
    /// Images asked for (`n`, default 1).
    pub images: u32,
    /// The images' `size` (empty: the provider's default).
    pub size: String,
    /// The images' `quality` (empty: the provider's default).
    pub quality: String,
    /// Characters of a speech request's `input`.
    pub characters: u64,
    /// The uploaded audio's length, when its header says it (WAV, MP3, FLAC, Ogg, M4A).
    pub audio_ms: Option<u64>,
    /// The uploaded audio's size in bytes (transcriptions, translations).
    pub audio_bytes: u64,
    /// Transcription `response_format` (empty: `json`); speech `response_format` (empty: mp3).
    pub response_format: String,
    /// Characters of the text prompt (images `prompt`, transcription `prompt`, speech
    /// `input` and `instructions`), for a token-billed model's input estimate.
    pub prompt_chars: u64,
    /// Images uploaded to edit.
    pub input_images: u32,
    /// A multipart body's parts (names, files and byte ranges: the one parse guardrails and
    /// capture read too); empty for a JSON body.
    pub parts: Vec<multipart::Part>,
}

fn field_error(param: &'static str, message: &str) -> ApiError {
    ApiError::InvalidField {
        param,
        message: message.to_owned(),
    }
}

/// Reads a JSON media request (images generations, speech, moderations).
pub fn read_json(
    api: MediaApi,
    body: &[u8],
) -> Result<(MediaRequest, Map<String, Value>), ApiError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = doc else {
        return Err(ApiError::InvalidJson(
            "the body is not a JSON object".into(),
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        // OpenAI's own default for moderations; every other API needs the model.
        None if api == MediaApi::Moderations => "omni-moderation-latest".to_owned(),
        _ => return Err(field_error("model", "you must provide a model parameter")),
    };
    let text = |k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut req = MediaRequest {
        model,
        size: text("size"),
        quality: text("quality"),
        response_format: text("response_format"),
        prompt_chars: (text("prompt").chars().count() + text("instructions").chars().count())
            as u64,
        ..MediaRequest::default()
    };
    match api {
        MediaApi::ImageGenerations => {
            if !obj.get("prompt").is_some_and(Value::is_string) {
                return Err(field_error(
                    "prompt",
                    "Missing required parameter: 'prompt'.",
                ));
            }
            req.images = image_count(obj.get("n"))?;
        }
        MediaApi::Speech => {
            let Some(input) = obj.get("input").and_then(Value::as_str) else {
                return Err(field_error("input", "Missing required parameter: 'input'."));
            };
            req.characters = input.chars().count() as u64;
            req.prompt_chars += req.characters;
        }
        MediaApi::Moderations => {
            if obj.get("input").is_none() {
                return Err(field_error("input", "Missing required parameter: 'input'."));
            }
        }
        MediaApi::ImageEdits | MediaApi::Transcriptions | MediaApi::Translations => {}
    }
    Ok((req, obj))
}

fn image_count(n: Option<&Value>) -> Result<u32, ApiError> {
    match n {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=10).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| field_error("n", "`n` must be an integer from 1 to 10.")),
    }
}

/// Reads a multipart media request (image edits, transcriptions, translations) whose
/// `content-type` is `content_type`: its fields, and where the `model` value and the file are.
pub fn read_form(api: MediaApi, body: &[u8], content_type: &str) -> Result<MediaRequest, ApiError> {
    let multipart_error = |e: multipart::MultipartError| ApiError::InvalidMultipart(e.to_string());
    let boundary = multipart::boundary(content_type).map_err(multipart_error)?;
    let parts = multipart::parse(body, boundary).map_err(multipart_error)?;
    let value = |p: &multipart::Part| {
        body.get(p.data.clone())
            .map(|v| String::from_utf8_lossy(v).trim().to_owned())
            .unwrap_or_default()
    };
    let mut req = MediaRequest {
        images: 1,
        ..MediaRequest::default()
    };
    let file_field = api.file_field().unwrap_or("file");
    let mut file = None;
    for p in &parts {
        match p.name.as_str() {
            "model" => {
                req.model = value(p);
                req.model_range = Some(p.data.clone());
            }
            "n" => {
                let n: Value = value(p)
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or(Value::Bool(false));
                req.images = image_count(Some(&n))?;
            }
            "size" => req.size = value(p),
            "quality" => req.quality = value(p),
            "response_format" => req.response_format = value(p),
            "prompt" => req.prompt_chars = value(p).chars().count() as u64,
            // The files (`image` or `image[]`: several images may come); the first is read.
            name if name == file_field || name.strip_suffix("[]") == Some(file_field) => {
                req.input_images += 1;
                if file.is_none() {
                    file = Some(p.data.clone());
                }
            }
            _ => {}
        }
    }
    if req.model.is_empty() {
        return Err(field_error("model", "you must provide a model parameter"));
    }
    let Some(file) = file else {
        return Err(field_error(
            file_field,
            &format!("Missing required parameter: '{file_field}'."),
        ));
    };
    if matches!(api, MediaApi::Transcriptions | MediaApi::Translations) {
        let audio = body.get(file).unwrap_or_default();
        req.audio_ms = audio::duration_ms(audio);
        req.audio_bytes = audio.len() as u64;
        req.input_images = 0;
    }
    req.parts = parts;
    Ok(req)
}

/// The length of a WAV (RIFF/WAVE, PCM or any format with a byte rate) file from its header,
/// in milliseconds.
pub fn wav_duration_ms(bytes: &[u8]) -> Option<u64> {
    audio::wav_ms(bytes, bytes.len() as u64)
}

/// Characters of text per token in the estimates of token-billed models (OpenAI's o200k
/// averages ≈ 4.7 on English prose; 4 errs high).
pub const CHARS_PER_TOKEN: u64 = 4;

/// Input image tokens estimated per image to edit (`gpt-image-1`; a 1024² image at high input
/// fidelity is counted at a few hundred to a few thousand).
pub const IMAGE_INPUT_TOKENS: u64 = 1_500;

/// Milliseconds of audio per input audio token estimated for transcription (1,000 tokens a
/// minute: OpenAI's $0.006 a minute estimate for `gpt-4o-transcribe` at $6 per million).
pub const MS_PER_AUDIO_INPUT_TOKEN: u64 = 60;

/// Milliseconds of audio per text token a transcription is estimated to write (300 a minute:
/// fast speech, ≈ 200 words).
pub const MS_PER_TRANSCRIPT_TOKEN: u64 = 200;

/// Milliseconds of speech per audio output token (1,250 a minute: OpenAI's $0.015 a minute
/// estimate for `gpt-4o-mini-tts` at $12 per million).
pub const MS_PER_SPEECH_TOKEN: u64 = 48;

/// Characters spoken a second, for speech whose length the audio does not tell (OpenAI's
/// voices read ≈ 16; 14 errs long).
pub const SPEECH_CHARS_PER_SECOND: u64 = 14;

/// The units a token-billed media model is estimated to use for `req` before the answer (for
/// the reservation), or for a speech answer whose audio lasted `speech_ms` (measured from the
/// streamed audio when its format tells; else from the input's characters). Token counts are
/// estimates: the answer's `usage` replaces them where it has one.
pub fn token_estimate(api: MediaApi, req: &MediaRequest, speech_ms: Option<u64>) -> MediaUsage {
    let mut u = MediaUsage {
        text_tokens: req.prompt_chars.div_ceil(CHARS_PER_TOKEN),
        ..MediaUsage::default()
    };
    match api {
        MediaApi::ImageGenerations | MediaApi::ImageEdits => {
            u.image_tokens = u64::from(req.input_images) * IMAGE_INPUT_TOKENS;
            u.output_tokens = u64::from(req.images)
                * tollgate_core::pricing::media::gpt_image_output_tokens(&req.size, &req.quality);
        }
        MediaApi::Transcriptions | MediaApi::Translations => {
            let ms = req
                .audio_ms
                .unwrap_or_else(|| audio::estimate_ms(req.audio_bytes));
            u.audio_tokens = ms.div_ceil(MS_PER_AUDIO_INPUT_TOKEN);
            u.output_tokens = ms.div_ceil(MS_PER_TRANSCRIPT_TOKEN);
        }
        MediaApi::Speech => {
            let ms = speech_ms.unwrap_or(req.characters * 1000 / SPEECH_CHARS_PER_SECOND);
            u.output_tokens = ms.div_ceil(MS_PER_SPEECH_TOKEN);
        }
        MediaApi::Moderations => u.text_tokens = 0,
    }
    u
}

/// What a successful response says it used: the media units (images returned, audio seconds)
/// and the tokens of a token-billed model (`gpt-image-1`, `gpt-4o-transcribe`).
pub fn response_usage(
    api: MediaApi,
    req: &MediaRequest,
    body: &[u8],
) -> (MediaUsage, Option<Usage>) {
    let mut units = MediaUsage {
        size: req.size.clone(),
        quality: req.quality.clone(),
        characters: req.characters,
        ..MediaUsage::default()
    };
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let doc = doc.as_ref();
    match api {
        MediaApi::ImageGenerations | MediaApi::ImageEdits => {
            units.images = doc
                .and_then(|d| d.get("data"))
                .and_then(Value::as_array)
                .map_or(0, |a| u32::try_from(a.len()).unwrap_or(u32::MAX));
        }
        MediaApi::Transcriptions | MediaApi::Translations => {
            // The seconds the provider bills (whisper-1's `usage: {type: duration, seconds}`),
            // else verbose_json's `duration`, else the upload's own header (text, srt and vtt
            // answers say nothing).
            let usage = doc.and_then(|d| d.get("usage"));
            let seconds = usage
                .filter(|u| u.get("type").and_then(Value::as_str) == Some("duration"))
                .and_then(|u| u.get("seconds"))
                .and_then(Value::as_f64)
                .or_else(|| doc.and_then(|d| d.get("duration")).and_then(Value::as_f64));
            units.audio_ms = match seconds {
                Some(s) if s.is_finite() && s >= 0.0 => (s * 1000.0).round() as u64,
                _ => req.audio_ms.unwrap_or(0),
            };
        }
        MediaApi::Speech | MediaApi::Moderations => {}
    }
    let usage = doc.and_then(|d| d.get("usage"));
    let tokens = usage.and_then(token_usage);
    if let (Some(t), Some(u)) = (&tokens, usage) {
        // By modality: images name it `input_tokens_details`, transcriptions
        // `input_token_details`; input tokens not broken down count as text.
        let details = u
            .get("input_tokens_details")
            .or_else(|| u.get("input_token_details"));
        let n = |k: &str| {
            details
                .and_then(|d| d.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        units.image_tokens = n("image_tokens").min(t.input_tokens);
        units.audio_tokens = n("audio_tokens").min(t.input_tokens - units.image_tokens);
        units.text_tokens = t.input_tokens - units.image_tokens - units.audio_tokens;
        units.output_tokens = t.output_tokens;
    }
    (units, tokens)
}

/// Token usage in the media APIs' shape (`input_tokens`, `output_tokens`).
fn token_usage(u: &Value) -> Option<Usage> {
    if u.get("type").and_then(Value::as_str) == Some("duration") {
        return None;
    }
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let input = n("input_tokens").or_else(|| n("prompt_tokens"))?;
    let output = n("output_tokens")
        .or_else(|| n("completion_tokens"))
        .unwrap_or(0);
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        source: UsageSource::Provider,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PCM WAV of `ms` milliseconds at 8 kHz, 16-bit mono.
    fn wav(ms: u32) -> Vec<u8> {
        let data = 16 * ms; // 16 bytes a millisecond
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&8000u32.to_le_bytes());
        out.extend_from_slice(&16000u32.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data.to_le_bytes());
        out.resize(out.len() + data as usize, 0);
        out
    }

    #[test]
    fn a_wav_header_gives_the_duration() {
        assert_eq!(wav_duration_ms(&wav(1500)), Some(1500));
        assert_eq!(wav_duration_ms(b"ID3 not a wav"), None);
        assert_eq!(wav_duration_ms(&wav(1500)[..30]), None);
    }

    #[test]
    fn json_requests_are_read_and_refused_with_openai_params() {
        let (r, _) = read_json(
            MediaApi::ImageGenerations,
            br#"{"model":"dall-e-3","prompt":"a cat","n":2,"size":"1024x1792","quality":"hd"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.images, r.size.as_str(), r.quality.as_str()),
            (2, "1024x1792", "hd")
        );
        let (r, _) = read_json(
            MediaApi::Speech,
            r#"{"model":"tts-1","input":"héllo","voice":"alloy"}"#.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.characters, 5);
        let (r, _) = read_json(MediaApi::Moderations, br#"{"input":"x"}"#).unwrap();
        assert_eq!(r.model, "omni-moderation-latest");
        let e = read_json(MediaApi::Speech, br#"{"input":"x"}"#).unwrap_err();
        assert_eq!(e.status(), 400);
        let e = read_json(
            MediaApi::ImageGenerations,
            br#"{"model":"m","prompt":"p","n":0}"#,
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::InvalidField { param: "n", .. }));
    }

    #[test]
    fn token_billed_models_are_estimated_from_the_request() {
        let image = MediaRequest {
            images: 2,
            size: "1024x1536".into(),
            quality: "low".into(),
            prompt_chars: 17,
            input_images: 1,
            ..Default::default()
        };
        let u = token_estimate(MediaApi::ImageEdits, &image, None);
        assert_eq!(
            (u.text_tokens, u.image_tokens, u.output_tokens),
            (5, 1500, 816)
        );
        // An upload whose header says 3 s; one that says nothing, by its size at the floor.
        let mut audio = MediaRequest {
            audio_ms: Some(3000),
            ..Default::default()
        };
        let u = token_estimate(MediaApi::Transcriptions, &audio, None);
        assert_eq!((u.audio_tokens, u.output_tokens), (50, 15));
        audio.audio_ms = None;
        audio.audio_bytes = 12_000;
        let u = token_estimate(MediaApi::Transcriptions, &audio, None);
        assert_eq!((u.audio_tokens, u.output_tokens), (100, 30));
        // Speech: the audio's measured length, else 14 characters a second.
        let speech = MediaRequest {
            characters: 140,
            prompt_chars: 140,
            ..Default::default()
        };
        assert_eq!(
            token_estimate(MediaApi::Speech, &speech, Some(4800)).output_tokens,
            100
        );
        let u = token_estimate(MediaApi::Speech, &speech, None);
        assert_eq!((u.text_tokens, u.output_tokens), (35, 209));
    }

    #[test]
    fn usage_comes_from_the_response_or_the_upload() {
        let req = MediaRequest {
            audio_ms: Some(2000),
            ..Default::default()
        };
        let (u, t) = response_usage(
            MediaApi::Transcriptions,
            &req,
            br#"{"text":"x","duration":3.25}"#,
        );
        assert_eq!((u.audio_ms, t), (3250, None));
        let (u, _) = response_usage(
            MediaApi::Transcriptions,
            &req,
            br#"{"text":"x","usage":{"type":"duration","seconds":4}}"#,
        );
        assert_eq!(u.audio_ms, 4000);
        let (u, _) = response_usage(MediaApi::Transcriptions, &req, b"plain text");
        assert_eq!(u.audio_ms, 2000);
        let (_, t) = response_usage(
            MediaApi::Transcriptions,
            &req,
            br#"{"text":"x","usage":{"type":"tokens","input_tokens":14,"output_tokens":45,"total_tokens":59}}"#,
        );
        assert_eq!(t.map(|t| (t.input_tokens, t.output_tokens)), Some((14, 45)));
        let (u, _) = response_usage(
            MediaApi::Transcriptions,
            &req,
            br#"{"text":"x","usage":{"type":"tokens","input_tokens":14,"output_tokens":45,"input_token_details":{"text_tokens":4,"audio_tokens":10}}}"#,
        );
        assert_eq!(
            (
                u.text_tokens,
                u.audio_tokens,
                u.image_tokens,
                u.output_tokens
            ),
            (4, 10, 0, 45)
        );
        let (u, _) = response_usage(
            MediaApi::ImageEdits,
            &req,
            br#"{"data":[{"b64_json":"x"}],"usage":{"input_tokens":250,"output_tokens":4160,"input_tokens_details":{"text_tokens":56,"image_tokens":194}}}"#,
        );
        assert_eq!(
            (u.images, u.text_tokens, u.image_tokens, u.output_tokens),
            (1, 56, 194, 4160)
        );
        let (u, _) = response_usage(
            MediaApi::ImageGenerations,
            &req,
            br#"{"created":1,"data":[{"url":"u"},{"url":"v"}]}"#,
        );
        assert_eq!(u.images, 2);
    }
}
