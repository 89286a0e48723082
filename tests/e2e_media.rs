//! End to end through real Envoy: OpenAI's images, audio and moderations APIs with the official
//! `openai` SDK (`tests/sdk/media_sdk.py`) onto OpenAI and Azure OpenAI; the provider's model
//! id rewritten in JSON bodies and inside multipart forms; speech audio streamed through byte
//! for byte; each request priced in its own unit in the log event; bad forms, missing
//! fields, oversized uploads, other providers' models and the allow-list refused in OpenAI's
//! shape. docs/COMPATIBILITY.md names these tests.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The media models: public name → (provider, provider model id).
fn media_models(config: String) -> String {
    config.replacen(
        "\nmodels:\n",
        "\nmodels:\n\
         \x20 image-model:\n    targets: [{ provider: mock, model: dall-e-3 }]\n\
         \x20 whisper:\n    targets: [{ provider: mock, model: whisper-1 }]\n\
         \x20 tts:\n    targets: [{ provider: mock, model: tts-1 }]\n\
         \x20 moderation:\n    targets: [{ provider: mock, model: omni-moderation-latest }]\n\
         \x20 azure-image:\n    targets: [{ provider: azure, model: image-deployment }]\n\
         \x20 azure-whisper:\n    targets: [{ provider: azure, model: whisper-deployment }]\n\
         \x20 azure-tts:\n    targets: [{ provider: azure, model: tts-deployment }]\n\
         \x20 azure-moderation:\n    targets: [{ provider: azure, model: moderation-deployment }]\n\
         \x20 compat-whisper:\n    targets: [{ provider: compat, model: whisper-1 }]\n",
        1,
    )
}

fn options() -> StackOptions {
    StackOptions {
        patch_config: Some(media_models),
        ..Default::default()
    }
}

/// Runs the SDK checks with these public models; returns the speech audio the SDK received.
fn sdk(stack: &Stack, image: &str, audio: &str, speech: &str, moderation: &str) -> Vec<u8> {
    let base = format!("{}/v1", stack.base);
    let out = stack.dir.path().join("speech.bin");
    let out_s = out.display().to_string();
    run_sdk(
        "media_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &base),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_IMAGE_MODEL", image),
            ("TOLLGATE_AUDIO_MODEL", audio),
            ("TOLLGATE_SPEECH_MODEL", speech),
            ("TOLLGATE_MODERATION_MODEL", moderation),
            ("TOLLGATE_SPEECH_OUT", &out_s),
        ],
    );
    std::fs::read(out).unwrap()
}

/// The speech audio the mock answers for this input, asked of it directly.
async fn mock_speech(stack: &Stack, input: &str) -> Vec<u8> {
    stack
        .http
        .post(format!("{}/v1/audio/speech", stack.mock))
        .json(&json!({"model": "tts-1", "voice": "alloy", "input": input}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// A PCM WAV of `ms` milliseconds (8 kHz, 16-bit mono).
fn wav(ms: u32) -> Vec<u8> {
    let data = 16 * ms;
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
    out.resize(out.len() + data as usize, 1);
    out
}

/// A multipart form of text fields and one file field.
fn form(boundary: &str, fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, data)) = file {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

async fn post_form(
    stack: &Stack,
    path: &str,
    key: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Reply {
    let resp = stack
        .http
        .post(format!("{}{path}", stack.base))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    Reply::from(resp).await
}

#[tokio::test]
async fn openai_sdk_media_onto_openai() {
    let ls = LoggedStack::ndjson_with(options());
    let stack = &ls.stack;
    let audio = sdk(stack, "image-model", "whisper", "tts", "moderation");
    // The speech audio went through byte for byte (streamed, never re-encoded).
    assert_eq!(
        audio,
        mock_speech(stack, "Hello from the Tollgate media check.").await
    );
    let seen = stack.posted().await;
    let paths: Vec<&str> = seen.iter().map(|r| r["path"].as_str().unwrap()).collect();
    for p in [
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/speech",
        "/v1/moderations",
    ] {
        assert!(paths.contains(&p), "{p} not in {paths:?}");
    }
    for r in &seen {
        let body = &r["body"];
        match r["path"].as_str().unwrap() {
            "/v1/images/generations" => assert_eq!(body["model"], "dall-e-3", "{r}"),
            "/v1/audio/speech" => assert_eq!(body["model"], "tts-1", "{r}"),
            "/v1/moderations" => assert_eq!(body["model"], "omni-moderation-latest", "{r}"),
            // The form's model field carries the provider's id, the rest of the form as sent.
            "/v1/audio/transcriptions" | "/v1/audio/translations" => {
                let text = body.as_str().unwrap();
                assert!(text.contains("name=\"model\"\r\n\r\nwhisper-1\r\n"), "{r}");
                assert!(text.contains("filename=\"h"), "{r}");
                assert!(r["headers"]["content-type"]
                    .as_str()
                    .unwrap()
                    .starts_with("multipart/form-data; boundary="));
            }
            "/v1/images/edits" => {
                let text = body.as_str().unwrap();
                assert!(text.contains("name=\"model\"\r\n\r\ndall-e-3\r\n"), "{r}");
            }
            other => panic!("unexpected request to {other}"),
        }
    }
    // Each request priced in its own unit: wait for every event, then check them by endpoint.
    let start = Instant::now();
    let events = loop {
        let lines = ls.logger.lines();
        if lines.len() >= 9 {
            break lines;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cost = |endpoint: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|l| l["endpoint"] == endpoint)
            .map(|l| {
                assert_eq!(l["http_status"], 200, "{l}");
                l["cost_picodollars"].as_u64().unwrap_or(u64::MAX)
            })
            .collect()
    };
    // Two HD squares of dall-e-3 ($0.08 each), then one standard square ($0.04).
    assert_eq!(
        cost("image_generations"),
        vec![160_000_000_000, 40_000_000_000]
    );
    assert_eq!(cost("image_edits"), vec![40_000_000_000]);
    // $0.0001 a second: the 2 s whisper bills for 1.5 s of audio when its answer says so
    // (json, verbose_json), else the upload's own 1.5 s (text).
    assert_eq!(
        cost("audio_transcriptions"),
        vec![200_000_000, 200_000_000, 150_000_000]
    );
    assert_eq!(cost("audio_translations"), vec![150_000_000]);
    // 36 characters at $15 per million.
    assert_eq!(cost("audio_speech"), vec![36 * 15_000_000]);
    assert_eq!(cost("moderations"), vec![0]);
    // The units themselves, in the event's own columns.
    let speech = events
        .iter()
        .find(|l| l["endpoint"] == "audio_speech")
        .unwrap();
    assert_eq!(speech["upstream_model"], "tts-1", "{speech}");
    assert_eq!(speech["requested_model"], "tts", "{speech}");
    assert_eq!(speech["media_characters"], 36, "{speech}");
    let image = events
        .iter()
        .find(|l| l["endpoint"] == "image_generations")
        .unwrap();
    assert_eq!(
        (
            &image["media_images"],
            &image["media_image_size"],
            &image["media_image_quality"]
        ),
        (&json!(2), &json!("1024x1024"), &json!("hd")),
        "{image}"
    );
    let audio_ms: Vec<&Value> = events
        .iter()
        .filter(|l| l["endpoint"] == "audio_transcriptions")
        .map(|l| &l["media_audio_ms"])
        .collect();
    assert_eq!(audio_ms, [&json!(2000), &json!(2000), &json!(1500)]);
}

#[tokio::test]
async fn openai_sdk_media_onto_azure() {
    let stack = Stack::start(options());
    let audio = sdk(
        &stack,
        "azure-image",
        "azure-whisper",
        "azure-tts",
        "azure-moderation",
    );
    let seen = stack.posted().await;
    assert_eq!(
        audio,
        mock_speech(&stack, "Hello from the Tollgate media check.").await
    );
    assert!(seen.len() >= 9, "{seen:?}");
    for r in &seen {
        let path = r["path"].as_str().unwrap();
        assert!(path.starts_with("/openai/deployments/"), "{r}");
        assert_eq!(r["query"], "api-version=2024-10-21", "{r}");
        assert!(r["headers"].get("api-key").is_some(), "{r}");
        assert!(r["headers"].get("authorization").is_none(), "{r}");
        let deployment = path.split('/').nth(3).unwrap();
        let suffix = path.splitn(5, '/').nth(4).unwrap();
        let expected = match suffix {
            "images/generations" | "images/edits" => "image-deployment",
            "audio/transcriptions" | "audio/translations" => "whisper-deployment",
            "audio/speech" => "tts-deployment",
            "moderations" => "moderation-deployment",
            other => panic!("unexpected {other}"),
        };
        assert_eq!(deployment, expected, "{r}");
    }
}

#[tokio::test]
async fn media_onto_an_openai_compatible_provider_rewrites_the_form() {
    let stack = Stack::start(options());
    let b = "tg-boundary-1";
    let body = form(b, &[("model", "compat-whisper")], Some(("file", &wav(500))));
    let r = post_form(
        &stack,
        "/v1/audio/transcriptions",
        KEY_ALL,
        &format!("multipart/form-data; boundary={b}"),
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = stack.posted().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["path"], "/openai/v1/audio/transcriptions");
    // The same form with only the model's value changed, and its length with it.
    let expected = form(b, &[("model", "whisper-1")], Some(("file", &wav(500))));
    assert_eq!(
        seen[0]["headers"]["content-length"],
        expected.len().to_string()
    );
    assert_eq!(seen[0]["headers"]["x-provider-team"], "e2e");
}

#[tokio::test]
async fn bad_media_requests_are_refused_in_openai_shape() {
    let stack = Stack::start(options());
    let b = "tg-b";
    let ct = format!("multipart/form-data; boundary={b}");
    let audio = wav(300);
    let whole = form(b, &[("model", "whisper")], Some(("file", &audio)));
    // No boundary; a truncated form; no model; no file.
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "no boundary",
            "multipart/form-data".to_owned(),
            whole.clone(),
            400,
            "invalid_multipart",
        ),
        (
            "truncated",
            ct.clone(),
            whole[..whole.len() / 2].to_vec(),
            400,
            "invalid_multipart",
        ),
        (
            "missing model",
            ct.clone(),
            form(b, &[("language", "en")], Some(("file", &audio))),
            400,
            "invalid_value",
        ),
        (
            "missing file",
            ct.clone(),
            form(b, &[("model", "whisper")], None),
            400,
            "invalid_value",
        ),
        (
            "a model of an Anthropic provider",
            ct.clone(),
            form(b, &[("model", "claude-model")], Some(("file", &audio))),
            400,
            "unsupported_endpoint",
        ),
    ];
    for (what, content_type, body, status, code) in cases {
        let r = post_form(
            &stack,
            "/v1/audio/transcriptions",
            KEY_ALL,
            &content_type,
            body,
        )
        .await;
        let e = r.assert_openai_error(status, Some(code));
        eprintln!("{what}: {e}");
    }
    // The param names what is missing.
    let r = post_form(
        &stack,
        "/v1/audio/transcriptions",
        KEY_ALL,
        &ct,
        form(b, &[("model", "whisper")], None),
    )
    .await;
    assert_eq!(r.json()["error"]["param"], "file");
    // JSON endpoints too: speech on a Gemini model, images without a model.
    let r = stack
        .post(
            "/v1/audio/speech",
            Some(KEY_ALL),
            json!({"model": "gemini-model", "input": "hi", "voice": "alloy"}).to_string(),
        )
        .await;
    let e = r.assert_openai_error(400, Some("unsupported_endpoint"));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/audio/speech"),
        "{e}"
    );
    let r = stack
        .post(
            "/v1/images/generations",
            Some(KEY_ALL),
            json!({"prompt": "a cat"}).to_string(),
        )
        .await;
    r.assert_openai_error(400, Some("invalid_value"));
    // The allow-list: the limited key may not use the media models.
    let r = post_form(
        &stack,
        "/v1/audio/transcriptions",
        KEY_LIMITED,
        &ct,
        whole.clone(),
    )
    .await;
    r.assert_openai_error(403, Some("model_not_allowed"));
    // An upload over limits.max_request_body_bytes (64 KiB here): Envoy's 413, OpenAI's shape.
    let big = form(b, &[("model", "whisper")], Some(("file", &wav(5000))));
    assert!(big.len() > 64 * 1024);
    let r = post_form(&stack, "/v1/audio/transcriptions", KEY_ALL, &ct, big).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "request_too_large", "{}", r.text);
    // Nothing reached a provider.
    assert!(stack.posted().await.is_empty());
}

#[tokio::test]
async fn media_requests_reserve_and_settle_budgets_in_their_units() {
    // Room for one HD dall-e-3 image ($0.08) and not two.
    let stack = Stack::start(StackOptions {
        extra_yaml: "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.10\" }\n".to_owned(),
        ..options()
    });
    let img = |n: u32| {
        json!({"model": "image-model", "prompt": "a cat", "n": n, "quality": "hd"}).to_string()
    };
    let r = stack
        .post("/v1/images/generations", Some(KEY_ALL), img(2))
        .await;
    r.assert_openai_error(429, Some("budget_exceeded"));
    let r = stack
        .post("/v1/images/generations", Some(KEY_ALL), img(1))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(v["data"][0]["spent_usd"], "0.080000000000", "{v}");
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
}

/// The token-billed media models: public name → the mock's gpt-image-1, gpt-4o-transcribe and
/// gpt-4o-mini-tts (built-in prices per token by modality).
fn token_models(config: String) -> String {
    media_models(config).replacen(
        "\nmodels:\n",
        "\nmodels:\n\
         \x20 token-image:\n    targets: [{ provider: mock, model: gpt-image-1 }]\n\
         \x20 token-transcribe:\n    targets: [{ provider: mock, model: gpt-4o-transcribe }]\n\
         \x20 token-tts:\n    targets: [{ provider: mock, model: gpt-4o-mini-tts }]\n",
        1,
    )
}

/// `frames` silent MPEG-1 layer III frames (128 kbit/s, 48 kHz mono: 384 bytes, 24 ms each).
fn mp3(frames: usize) -> Vec<u8> {
    let mut out = vec![0u8; frames * 384];
    for f in out.chunks_mut(384) {
        f[..4].copy_from_slice(&[0xFF, 0xFB, 0x94, 0xC0]);
    }
    out
}

/// Picodollars per token of USD per million: the built-in prices of the token-billed models.
const USD_PER_M: u64 = 1_000_000;

#[tokio::test]
async fn token_billed_media_models_cost_their_prices_times_the_usage() {
    let ls = LoggedStack::ndjson_with(StackOptions {
        patch_config: Some(token_models),
        ..Default::default()
    });
    let stack = &ls.stack;
    let out = stack.dir.path().join("usage.json");
    run_sdk(
        "media_tokens_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &format!("{}/v1", stack.base)),
            ("TOLLGATE_KEY", KEY_ALL),
            ("TOLLGATE_IMAGE_MODEL", "token-image"),
            ("TOLLGATE_AUDIO_MODEL", "token-transcribe"),
            ("TOLLGATE_SPEECH_MODEL", "token-tts"),
            ("TOLLGATE_USAGE_OUT", &out.display().to_string()),
        ],
    );
    let usage: Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    let start = Instant::now();
    let events = loop {
        let lines = ls.logger.lines();
        if lines.len() >= 4 {
            break lines;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let event = |endpoint: &str| -> Value {
        let e = events
            .iter()
            .find(|l| l["endpoint"] == endpoint)
            .unwrap_or_else(|| panic!("no {endpoint} event in {events:?}"))
            .clone();
        assert_eq!(e["http_status"], 200, "{e}");
        e
    };
    let n = |v: &Value| v.as_u64().unwrap();
    // gpt-image-1: text $5, image $10, output $40 per million tokens, from the SDK's usage.
    for endpoint in ["image_generations", "image_edits"] {
        let u = &usage[endpoint];
        let details = &u["input_tokens_details"];
        let expected = n(&details["text_tokens"]) * 5 * USD_PER_M
            + n(&details["image_tokens"]) * 10 * USD_PER_M
            + n(&u["output_tokens"]) * 40 * USD_PER_M;
        let e = event(endpoint);
        assert_eq!(n(&e["cost_picodollars"]), expected, "{endpoint}: {u} {e}");
        assert_eq!(e["output_tokens"], u["output_tokens"], "{e}");
        assert_eq!(e["upstream_model"], "gpt-image-1", "{e}");
    }
    // The mock's own table: a low 1024x1536 image is 408 output tokens, a medium square 1056;
    // the edit's upload 194 image tokens.
    assert_eq!(usage["image_generations"]["output_tokens"], 408);
    assert_eq!(usage["image_edits"]["output_tokens"], 1056);
    assert_eq!(
        usage["image_edits"]["input_tokens_details"]["image_tokens"],
        194
    );
    // gpt-4o-transcribe: text $2.50, audio $6, output $10 per million; the MP3's 3 s.
    let u = &usage["audio_transcriptions"];
    let details = &u["input_token_details"];
    assert_eq!(details["audio_tokens"], 30, "{u}");
    let expected = n(&details["text_tokens"]) * 2_500_000
        + n(&details["audio_tokens"]) * 6 * USD_PER_M
        + n(&u["output_tokens"]) * 10 * USD_PER_M;
    let e = event("audio_transcriptions");
    assert_eq!(n(&e["cost_picodollars"]), expected, "{u} {e}");
    // The upload's length read from the MP3 frames.
    assert_eq!(e["media_audio_ms"], 3000, "{e}");
    // gpt-4o-mini-tts answers no usage: the input's characters at 4 a token ($0.60 per
    // million) and the streamed MP3's 3 s at 1,250 audio tokens a minute ($12 per million).
    let chars = n(&usage["audio_speech"]["characters"]);
    let e = event("audio_speech");
    let expected = chars.div_ceil(4) * 600_000 + 3000u64.div_ceil(48) * 12 * USD_PER_M;
    assert_eq!(n(&e["cost_picodollars"]), expected, "{e}");
    assert_eq!(e["usage_source"], "estimated", "{e}");
    assert_eq!(e["output_tokens"], 63, "{e}");
}

#[tokio::test]
async fn token_billed_and_mp3_requests_reserve_before_and_settle_after() {
    // $0.05: one low gpt-image-1 square fits (272 output tokens ≈ $0.011), a high portrait
    // (6,240 output tokens ≈ $0.25) does not.
    let stack = Stack::start(StackOptions {
        patch_config: Some(token_models),
        extra_yaml: "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.05\" }\n".to_owned(),
        ..Default::default()
    });
    let img = |quality: &str, size: &str| {
        json!({"model": "token-image", "prompt": "a cat", "quality": quality, "size": size})
            .to_string()
    };
    let r = stack
        .post(
            "/v1/images/generations",
            Some(KEY_ALL),
            img("high", "1024x1536"),
        )
        .await;
    r.assert_openai_error(429, Some("budget_exceeded"));
    let r = stack
        .post(
            "/v1/images/generations",
            Some(KEY_ALL),
            img("low", "1024x1024"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let u = &r.json()["usage"];
    // Settled at the answer's usage: "a cat" is 2 text tokens at the mock, 272 output.
    assert_eq!(
        (&u["input_tokens"], &u["output_tokens"]),
        (&json!(2), &json!(272))
    );
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(v["data"][0]["spent_usd"], "0.010890000000", "{v}");
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
    assert!(stack.posted().await.len() == 1);
}

#[tokio::test]
async fn an_mp3_upload_is_reserved_by_its_length() {
    // $0.00025 of whisper-1 ($0.0001 a second): a 3 s MP3 is refused before it is sent (its
    // length read from the frames; a WAV-only reader reserved nothing and let it through); a
    // 1 s one goes, and settles at the 2 s the mock bills (its seconds rounded up).
    let stack = Stack::start(StackOptions {
        extra_yaml: "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.00025\" }\n".to_owned(),
        ..options()
    });
    let b = "tg-mp3";
    let ct = format!("multipart/form-data; boundary={b}");
    let long = form(b, &[("model", "whisper")], Some(("file", &mp3(125))));
    let r = post_form(&stack, "/v1/audio/transcriptions", KEY_ALL, &ct, long).await;
    r.assert_openai_error(429, Some("budget_exceeded"));
    assert!(stack.posted().await.is_empty());
    let short = form(b, &[("model", "whisper")], Some(("file", &mp3(42))));
    let r = post_form(&stack, "/v1/audio/transcriptions", KEY_ALL, &ct, short).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(v["data"][0]["spent_usd"], "0.000200000000", "{v}");
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
}
