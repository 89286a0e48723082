//! OpenAI's images, audio and moderations APIs, mocked faithfully enough for the official SDK:
//! `images/generations` (JSON) and `images/edits` (multipart) answering `url` or `b64_json`
//! images (and token `usage` for `gpt-image-*`); `audio/transcriptions` and `translations`
//! (multipart) answering `json`, `verbose_json` (with the upload's `duration`), `text`, `srt` or
//! `vtt`, with whisper's `usage: {type: duration}` or the token usage of `gpt-4o-*-transcribe`;
//! `audio/speech` answering deterministic audio bytes in chunks; `moderations`. The form parser
//! and WAV reader here are the mock's own: they share nothing with the gateway's.
//!
//! Model `mock-error-<status>` answers that status with OpenAI's error body, as elsewhere.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::error::MockError;

/// A media operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Generations,
    Edits,
    Transcriptions,
    Translations,
    Speech,
    Moderations,
}

/// A 1×1 transparent PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

/// Bytes per chunk of a speech answer.
pub(crate) const SPEECH_CHUNK: usize = 4096;

/// The operation of a path (any base: `/v1/…`, `/openai/v1/…`, Azure's deployment paths).
pub(crate) fn operation(path: &str) -> Option<Op> {
    let path = path.trim_end_matches('/');
    [
        ("/images/generations", Op::Generations),
        ("/images/edits", Op::Edits),
        ("/audio/transcriptions", Op::Transcriptions),
        ("/audio/translations", Op::Translations),
        ("/audio/speech", Op::Speech),
        ("/moderations", Op::Moderations),
    ]
    .into_iter()
    .find_map(|(suffix, op)| path.ends_with(suffix).then_some(op))
}

/// One form field: its name, file name and content.
struct Field {
    name: String,
    filename: Option<String>,
    data: Bytes,
}

/// The fields of a `multipart/form-data` body (a plain split on the delimiter).
fn form(headers: &HeaderMap, body: &Bytes) -> Result<Vec<Field>, MockError> {
    let bad = |m: &str| MockError::InvalidParameter {
        param: "file",
        message: format!("Could not parse multipart form: {m}"),
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("multipart/form-data") {
        return Err(bad("the content-type is not multipart/form-data"));
    }
    let boundary = ct
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .ok_or_else(|| bad("no boundary"))?;
    let delimiter = format!("--{boundary}");
    let text = body.as_ref();
    let mut fields = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    let d = delimiter.as_bytes();
    let mut i = 0;
    while i + d.len() <= text.len() {
        if &text[i..i + d.len()] == d && (i == 0 || text[..i].ends_with(b"\r\n")) {
            starts.push(i);
            i += d.len();
        } else {
            i += 1;
        }
    }
    let closed = starts
        .last()
        .is_some_and(|&s| text[s + d.len()..].starts_with(b"--"));
    if !closed {
        return Err(bad("no closing boundary"));
    }
    for w in starts.windows(2) {
        let part = &text[w[0] + d.len()..w[1] - 2];
        let part = part.strip_prefix(b"\r\n").ok_or_else(|| bad("part"))?;
        let split = part
            .windows(4)
            .position(|x| x == b"\r\n\r\n")
            .ok_or_else(|| bad("part headers"))?;
        let head = String::from_utf8_lossy(&part[..split]);
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            if !line
                .to_ascii_lowercase()
                .starts_with("content-disposition:")
            {
                continue;
            }
            for p in line.split(';').skip(1) {
                let Some((k, v)) = p.trim().split_once('=') else {
                    continue;
                };
                let v = v.trim_matches('"').to_owned();
                match k {
                    "name" => name = Some(v),
                    "filename" => filename = Some(v),
                    _ => {}
                }
            }
        }
        fields.push(Field {
            name: name.ok_or_else(|| bad("a part without a name"))?,
            filename,
            data: body.slice_ref(&part[split + 4..]),
        });
    }
    Ok(fields)
}

/// Seconds of a PCM WAV file (RIFF header, `fmt ` then `data`), when it is one.
fn wav_seconds(data: &[u8]) -> Option<f64> {
    if data.len() < 44 || &data[..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12;
    let mut byte_rate = 0u32;
    while at + 8 <= data.len() {
        let id = &data[at..at + 4];
        let size = u32::from_le_bytes(data[at + 4..at + 8].try_into().ok()?) as usize;
        if id == b"fmt " && at + 20 <= data.len() {
            byte_rate = u32::from_le_bytes(data[at + 16..at + 20].try_into().ok()?);
        }
        if id == b"data" && byte_rate > 0 {
            let len = size.min(data.len() - at - 8);
            return Some(len as f64 / f64::from(byte_rate));
        }
        at += 8 + size + (size & 1);
    }
    None
}

/// Seconds of an MP3 file of MPEG-1 layer III frames, counted frame by frame (an ID3v2 tag
/// skipped), when it is one.
fn mp3_seconds(data: &[u8]) -> Option<f64> {
    let mut at = 0usize;
    if data.starts_with(b"ID3") && data.len() >= 10 {
        at = 10
            + data[6..10]
                .iter()
                .fold(0usize, |a, b| (a << 7) | usize::from(*b & 0x7F));
    }
    const KBPS: [u32; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    let (mut frames, mut rate) = (0u32, 0u32);
    while at + 4 <= data.len() {
        let h = &data[at..at + 4];
        // MPEG-1 layer III only: the mock's own narrow reader.
        if h[0] != 0xFF || h[1] & 0xFE != 0xFA {
            break;
        }
        let kbps = *KBPS.get(usize::from(h[2] >> 4))?;
        rate = [44_100, 48_000, 32_000]
            .get(usize::from((h[2] >> 2) & 3))
            .copied()?;
        if kbps == 0 {
            return None;
        }
        at += (144 * kbps * 1000 / rate + u32::from((h[2] >> 1) & 1)) as usize;
        frames += 1;
    }
    (frames > 0).then(|| f64::from(frames) * 1152.0 / f64::from(rate))
}

/// `frames` silent MPEG-1 layer III frames (128 kbit/s, 48 kHz, mono: 24 ms each).
pub(crate) fn mp3_silence(frames: usize) -> Vec<u8> {
    let mut out = vec![0u8; frames * 384];
    for f in out.chunks_mut(384) {
        f[..4].copy_from_slice(&[0xFF, 0xFB, 0x94, 0xC0]);
    }
    out
}

/// Output image tokens of one `gpt-image-1` image (OpenAI's table by quality and size).
fn gpt_image_tokens(size: &str, quality: &str) -> u64 {
    let i = match size {
        "1024x1536" => 1,
        "1536x1024" => 2,
        _ => 0,
    };
    match quality {
        "low" => [272, 408, 400][i],
        "medium" => [1056, 1584, 1568][i],
        _ => [4160, 6240, 6208][i],
    }
}

fn fault(model: &str) -> Result<(), MockError> {
    if let Some(code) = model.strip_prefix("mock-error-") {
        if let Some(status) = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            return Err(MockError::Injected {
                status,
                model: model.to_owned(),
            });
        }
    }
    Ok(())
}

/// Answers one media request (`deployment`: the Azure deployment of the path, which names
/// the model there).
pub(crate) fn respond(
    op: Op,
    deployment: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    number: u64,
    created: u64,
    chunk_delay: Duration,
) -> Result<Response, MockError> {
    match op {
        Op::Generations | Op::Speech | Op::Moderations => {
            let request: Value =
                serde_json::from_slice(body).map_err(|_| MockError::InvalidJson)?;
            let Value::Object(request) = request else {
                return Err(MockError::BodyNotObject);
            };
            let model = deployment.map(str::to_owned).or_else(|| {
                request
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            if let Some(m) = &model {
                fault(m)?;
            }
            match op {
                Op::Generations => {
                    let model = model.ok_or(MockError::MissingModel)?;
                    let prompt = request
                        .get("prompt")
                        .and_then(Value::as_str)
                        .ok_or(MockError::MissingParameter("prompt"))?;
                    let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
                    let format = request
                        .get("response_format")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let text = |k: &str| request.get(k).and_then(Value::as_str).unwrap_or("");
                    let shape = (text("size"), text("quality"), 0);
                    Ok(images(&model, prompt, n, format, shape, number, created))
                }
                Op::Speech => {
                    let model = model.ok_or(MockError::MissingModel)?;
                    let input = request
                        .get("input")
                        .and_then(Value::as_str)
                        .ok_or(MockError::MissingParameter("input"))?;
                    if request.get("voice").is_none() {
                        return Err(MockError::MissingParameter("voice"));
                    }
                    let format = request
                        .get("response_format")
                        .and_then(Value::as_str)
                        .unwrap_or("mp3");
                    Ok(speech(&model, input, format, chunk_delay))
                }
                _ => {
                    let input = request
                        .get("input")
                        .ok_or(MockError::MissingParameter("input"))?;
                    let model = model.unwrap_or_else(|| "omni-moderation-latest".to_owned());
                    Ok(moderations(&model, input, number))
                }
            }
        }
        Op::Edits | Op::Transcriptions | Op::Translations => {
            let fields = form(headers, body)?;
            let text = |name: &str| {
                fields
                    .iter()
                    .find(|f| f.name == name && f.filename.is_none())
                    .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            };
            let model = deployment
                .map(str::to_owned)
                .or_else(|| text("model"))
                .filter(|m| !m.is_empty())
                .ok_or(MockError::MissingModel)?;
            fault(&model)?;
            if op == Op::Edits {
                let image = fields
                    .iter()
                    .any(|f| (f.name == "image" || f.name == "image[]") && f.filename.is_some());
                if !image {
                    return Err(MockError::MissingParameter("image"));
                }
                let prompt = text("prompt").ok_or(MockError::MissingParameter("prompt"))?;
                let n = text("n").and_then(|n| n.parse().ok()).unwrap_or(1);
                let format = text("response_format").unwrap_or_default();
                let size = text("size").unwrap_or_default();
                let quality = text("quality").unwrap_or_default();
                let inputs = fields
                    .iter()
                    .filter(|f| (f.name == "image" || f.name == "image[]") && f.filename.is_some())
                    .count() as u64;
                return Ok(images(
                    &model,
                    &prompt,
                    n,
                    &format,
                    (&size, &quality, inputs),
                    number,
                    created,
                ));
            }
            let file = fields
                .iter()
                .find(|f| f.name == "file" && f.filename.is_some())
                .ok_or(MockError::MissingParameter("file"))?;
            let seconds = wav_seconds(&file.data)
                .or_else(|| mp3_seconds(&file.data))
                .ok_or_else(|| MockError::InvalidParameter {
                    param: "file",
                    message: "Invalid file format. Supported formats: ['wav', 'mp3'] (the mock \
                              reads PCM WAV and MPEG-1 layer III only)"
                        .to_owned(),
                })?;
            let prompt = text("prompt").unwrap_or_default();
            let format = text("response_format").unwrap_or_else(|| "json".to_owned());
            Ok(transcription(
                op == Op::Translations,
                &model,
                seconds,
                &format,
                text("language").as_deref(),
                &prompt,
            ))
        }
    }
}

/// Images of a generation or edit; `shape` is the request's size, quality and the number of
/// images uploaded to edit (for `gpt-image-*` token usage).
fn images(
    model: &str,
    prompt: &str,
    n: u64,
    format: &str,
    shape: (&str, &str, u64),
    number: u64,
    created: u64,
) -> Response {
    let gpt_image = model.starts_with("gpt-image");
    let b64 = format == "b64_json" || gpt_image;
    let data: Vec<Value> = (0..n.max(1))
        .map(|i| {
            let mut item = Map::new();
            if b64 {
                item.insert(
                    "b64_json".into(),
                    base64::engine::general_purpose::STANDARD.encode(PNG).into(),
                );
            } else {
                item.insert(
                    "url".into(),
                    format!("https://mock.invalid/images/img-{number}-{i}.png").into(),
                );
            }
            if model == "dall-e-3" {
                item.insert(
                    "revised_prompt".into(),
                    format!("A mock of: {prompt}").into(),
                );
            }
            Value::Object(item)
        })
        .collect();
    let mut out = json!({"created": created, "data": data});
    if gpt_image {
        // Text tokens ≈ a quarter of the prompt's bytes; 194 tokens per image to edit.
        let (size, quality, inputs) = shape;
        let text = (prompt.len() as u64).div_ceil(4);
        let image = 194 * inputs;
        let output = gpt_image_tokens(size, quality) * n.max(1);
        out["usage"] = json!({
            "input_tokens": text + image,
            "output_tokens": output,
            "total_tokens": text + image + output,
            "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        });
    }
    Json(out).into_response()
}

/// The deterministic audio of a speech answer: 3 chunks and a bit, bytes a function of the
/// input and the position (so a test can compare what it got with the mock's own answer).
pub(crate) fn speech_bytes(input: &str) -> Vec<u8> {
    let seed = input
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..SPEECH_CHUNK * 3 + 100)
        .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn speech(model: &str, input: &str, format: &str, delay: Duration) -> Response {
    // gpt-4o-mini-tts answers real MPEG frames (silence, 3 s) so a reader of the audio's
    // length has something to read; other models deterministic noise.
    let audio = if model.starts_with("gpt-4o") && format == "mp3" {
        Bytes::from(mp3_silence(125))
    } else {
        Bytes::from(speech_bytes(input))
    };
    let content_type = match format {
        "opus" => "audio/opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "pcm" => "audio/pcm",
        _ => "audio/mpeg",
    };
    let chunks: Vec<Bytes> = audio
        .chunks(SPEECH_CHUNK)
        .map(|c| audio.slice_ref(c))
        .collect();
    let stream = crate::sse::paced(chunks, delay).map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(stream));
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = model.parse() {
        response
            .headers_mut()
            .insert(axum::http::HeaderName::from_static("openai-model"), v);
    }
    response
}

fn transcription(
    translate: bool,
    model: &str,
    seconds: f64,
    format: &str,
    language: Option<&str>,
    prompt: &str,
) -> Response {
    let text = if translate {
        "Hello from the mock translation."
    } else {
        "Hello from the mock transcription."
    };
    let plain =
        |body: String, ct: &'static str| ([(header::CONTENT_TYPE, ct)], body).into_response();
    match format {
        "text" => plain(format!("{text}\n"), "text/plain; charset=utf-8"),
        "srt" => plain(
            format!(
                "1\n00:00:00,000 --> 00:00:{:02},000\n{text}\n\n",
                seconds.ceil() as u64
            ),
            "text/plain; charset=utf-8",
        ),
        "vtt" => plain(
            format!(
                "WEBVTT\n\n00:00:00.000 --> 00:00:{:02}.000\n{text}\n\n",
                seconds.ceil() as u64
            ),
            "text/plain; charset=utf-8",
        ),
        "verbose_json" => Json(json!({
            "task": if translate { "translate" } else { "transcribe" },
            "language": if translate { "english" } else { language.unwrap_or("english") },
            "duration": seconds,
            "text": text,
            "segments": [{
                "id": 0, "seek": 0, "start": 0.0, "end": seconds, "text": text,
                "tokens": [50364, 2425], "temperature": 0.0, "avg_logprob": -0.2,
                "compression_ratio": 1.0, "no_speech_prob": 0.01,
            }],
            "usage": {"type": "duration", "seconds": seconds.ceil() as u64},
        }))
        .into_response(),
        _ => {
            let usage = if model.starts_with("gpt-4o") {
                // Ten audio tokens a second of the upload; the prompt's text tokens.
                let audio = (seconds * 10.0).ceil() as u64;
                let text_tokens = (prompt.len() as u64).div_ceil(4);
                json!({"type": "tokens", "input_tokens": audio + text_tokens, "output_tokens": 8,
                       "total_tokens": audio + text_tokens + 8,
                       "input_token_details": {"text_tokens": text_tokens, "audio_tokens": audio}})
            } else {
                json!({"type": "duration", "seconds": seconds.ceil() as u64})
            };
            if translate {
                Json(json!({"text": text})).into_response()
            } else {
                Json(json!({"text": text, "usage": usage})).into_response()
            }
        }
    }
}

const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

fn moderations(model: &str, input: &Value, number: u64) -> Response {
    let inputs: Vec<String> = match input {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            })
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![String::new()],
    };
    let results: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let violent = text.to_lowercase().contains("kill");
            let mut categories = Map::new();
            let mut scores = Map::new();
            let mut applied = Map::new();
            for c in CATEGORIES {
                let hit = violent && c == "violence";
                categories.insert(c.into(), hit.into());
                scores.insert(c.into(), json!(if hit { 0.91 } else { 0.0001 }));
                applied.insert(c.into(), json!(["text"]));
            }
            json!({"flagged": violent, "categories": categories, "category_scores": scores,
                   "category_applied_input_types": applied})
        })
        .collect();
    Json(json!({"id": format!("modr-mock-{number}"), "model": model, "results": results}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_operation() {
        assert_eq!(operation("/v1/audio/speech"), Some(Op::Speech));
        assert_eq!(
            operation("/openai/deployments/w/audio/transcriptions"),
            Some(Op::Transcriptions)
        );
        assert_eq!(operation("/v1/chat/completions"), None);
    }

    #[test]
    fn mp3_frames_are_counted() {
        let s = mp3_seconds(&mp3_silence(125)).unwrap();
        assert!((s - 3.0).abs() < 1e-9, "{s}");
        assert_eq!(mp3_seconds(b"not audio"), None);
    }

    #[test]
    fn speech_is_deterministic_and_chunked() {
        let a = speech_bytes("hello");
        assert_eq!(a, speech_bytes("hello"));
        assert_ne!(a, speech_bytes("hellp"));
        assert!(a.len() > SPEECH_CHUNK * 3);
    }
}
