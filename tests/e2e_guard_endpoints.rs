//! Guardrails and payload capture on the endpoints that are not chat, end to end through real
//! Envoy: a denied word in an image prompt, a speech input, a moderation input, a rerank query
//! and passthrough bodies (OpenAI, Anthropic, Gemini) is refused in the client's (or the
//! provider's) dialect and nothing reaches the mock; PII in a multipart transcription prompt
//! reaches the mock redacted with the rest of the form (the audio) byte for byte as sent; a
//! passthrough body of no known shape goes on unjudged; capture `full` of a transcription
//! keeps its text fields and a placeholder for the file, never the audio, and of a passthrough
//! call its JSON body and answer.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WORD: &str = "forbidden-word";
const EMAIL: &str = "jane.doe@example.com";

/// Media models, a Cohere rerank provider, a denied word in the `e2e` policy.
fn patched(yaml: String) -> String {
    let start = yaml.find("base_url: \"http://").unwrap() + "base_url: \"http://".len();
    let mock = yaml[start..start + yaml[start..].find('/').unwrap()].to_owned();
    let out = yaml
        .replacen(
            "\nmodels:\n",
            &format!(
                "\n  cohere:\n    kind: cohere\n    base_url: \"http://{mock}/cohere/v2\"\n    credential: {{ env: E2E_ANTHROPIC_KEY }}\n\
                 models:\n\
                 \x20 image-model:\n    targets: [{{ provider: mock, model: dall-e-3 }}]\n\
                 \x20 whisper:\n    targets: [{{ provider: mock, model: whisper-1 }}]\n\
                 \x20 tts:\n    targets: [{{ provider: mock, model: tts-1 }}]\n\
                 \x20 moderation:\n    targets: [{{ provider: mock, model: omni-moderation-latest }}]\n\
                 \x20 rerank-cohere:\n    targets: [{{ provider: cohere, model: rerank-v3.5 }}]\n"
            ),
            1,
        )
        .replacen(
            "    e2e:\n      rules:\n",
            &format!("    e2e:\n      rules:\n        - {{ id: no-word, detector: {{ deny_list: [\"{WORD}\"] }}, action: block, side: request }}\n\
                 \x20       - {{ id: no-translation, detector: {{ deny_list: [\"mock translation\"] }}, action: block, side: response, endpoints: [audio_translations] }}\n\
                 \x20       - {{ id: hello, detector: {{ regex: \"Hello\" }}, action: redact, side: response, endpoints: [audio_transcriptions] }}\n"),
            1,
        );
    assert!(out.contains("no-word") && out.contains("rerank-cohere"));
    out
}

fn options() -> StackOptions {
    StackOptions {
        patch_config: Some(patched),
        extra_yaml: "passthrough:\n  tenants: { guarded: ['*'], recorded: ['*'] }\n".to_owned(),
        ..Default::default()
    }
}

/// An 8-bit mono WAV (8 kHz) whose every byte is ASCII, so the mock's recorded body (lossy
/// UTF-8) compares byte for byte; its samples hold CRLFs and dashes like a form's delimiters.
fn wav() -> Vec<u8> {
    let data = 4096u32;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    let samples = b"\r\n--not-the-boundary\r\nprompt=jane.doe@example.com ";
    while out.len() < 44 + data as usize {
        out.push(samples[out.len() % samples.len()]);
    }
    assert!(out.iter().all(u8::is_ascii));
    out
}

/// A multipart form of text fields and one audio file.
fn form(boundary: &str, fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
            .as_bytes(),
    );
    out.extend_from_slice(file);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

async fn post_form(stack: &Stack, key: &str, boundary: &str, body: Vec<u8>) -> Reply {
    post_form_to(stack, "/v1/audio/transcriptions", key, boundary, body).await
}

async fn post_form_to(
    stack: &Stack,
    path: &str,
    key: &str,
    boundary: &str,
    body: Vec<u8>,
) -> Reply {
    let resp = stack
        .http
        .post(format!("{}{path}", stack.base))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    Reply::from(resp).await
}

fn assert_names_rule(message: &str) {
    assert!(message.contains("`no-word`"), "{message}");
    assert!(
        !message.contains(WORD),
        "the error must not echo the text: {message}"
    );
}

#[tokio::test]
async fn denied_words_are_refused_in_each_dialect_and_pii_redacted_in_forms() {
    let stack = Stack::start(options());
    stack.clear_upstream_requests().await;

    // OpenAI's shape for the media APIs.
    let refused = [
        (
            "/v1/images/generations",
            json!({"model": "image-model", "prompt": format!("a cat and a {WORD}")}),
        ),
        (
            "/v1/audio/speech",
            json!({"model": "tts", "voice": "alloy", "input": format!("say {WORD}")}),
        ),
        (
            "/v1/moderations",
            json!({"model": "moderation", "input": ["fine", format!("a {WORD}")]}),
        ),
        (
            "/v1/moderations",
            json!({"model": "moderation", "input": [{"type": "text", "text": format!("a {WORD}")},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}),
        ),
        (
            "/passthrough/mock/v1/chat/completions",
            json!({"model": "mock-model", "messages": [{"role": "user", "content": format!("a {WORD}")}]}),
        ),
        (
            "/passthrough/mock/v1/responses",
            json!({"model": "mock-model", "input": format!("a {WORD}")}),
        ),
    ];
    for (path, body) in refused {
        let r = stack.post(path, Some(KEY_GUARDED), body.to_string()).await;
        let v = r.assert_openai_error(400, Some("guardrail_blocked"));
        assert_names_rule(v["error"]["message"].as_str().unwrap());
    }
    // Cohere's shape for rerank: the query, and a document.
    for body in [
        json!({"model": "rerank-cohere", "query": format!("where is the {WORD}"), "documents": ["a", "b"]}),
        json!({"model": "rerank-cohere", "query": "where", "documents": ["a", {"text": format!("the {WORD}")}]}),
    ] {
        let r = stack
            .post("/v1/rerank", Some(KEY_GUARDED), body.to_string())
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        let v = r.json();
        assert!(v.get("error").is_none(), "{v}");
        assert_names_rule(v["message"].as_str().unwrap());
    }
    // The provider's dialect for passthrough: Anthropic's and Gemini's.
    let r = stack
        .post(
            "/passthrough/claude/v1/messages",
            Some(KEY_GUARDED),
            json!({"model": "claude-upstream-model", "max_tokens": 16,
                "messages": [{"role": "user", "content": [{"type": "text", "text": format!("a {WORD}")}]}]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_names_rule(v["error"]["message"].as_str().unwrap());
    let r = stack
        .post(
            "/passthrough/gemini/models/gemini-upstream-model:generateContent",
            Some(KEY_GUARDED),
            json!({"contents": [{"role": "user", "parts": [{"text": format!("a {WORD}")}]}]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
    assert_names_rule(v["error"]["message"].as_str().unwrap());
    // None of them reached the provider.
    let seen = stack.posted().await;
    assert!(
        seen.is_empty(),
        "a refused request reached the mock: {seen:?}"
    );
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_guardrail_verdicts_total{rule=\"no-word\",action=\"block\",side=\"request\"}"
        ),
        "{metrics}"
    );

    // A passthrough body of no known shape goes on unjudged (the README says so).
    let r = stack
        .post(
            "/passthrough/mock/v1/batches",
            Some(KEY_GUARDED),
            json!({"input_file_id": format!("file-{WORD}"), "endpoint": "/v1/chat/completions",
                "completion_window": "24h"})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Redaction: a multipart prompt reaches the mock redacted, the model rewritten in the
    // same copy, the audio (and every other byte of the form) as sent.
    stack.clear_upstream_requests().await;
    let audio = wav();
    let boundary = "tollgate-guard-boundary";
    let sent = form(
        boundary,
        &[
            ("model", "whisper"),
            ("prompt", &format!("call {EMAIL} now")),
        ],
        &audio,
    );
    let r = post_form(&stack, KEY_GUARDED, boundary, sent).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The transcript judged on its way back: `hello` (scoped to transcriptions) redacts.
    assert_eq!(
        r.json()["text"],
        "[REDACTED:hello] from the mock transcription."
    );
    let expected = form(
        boundary,
        &[
            ("model", "whisper-1"),
            ("prompt", "call [REDACTED:email] now"),
        ],
        &audio,
    );
    let seen = stack.posted().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    let got = seen[0]["body"].as_str().unwrap();
    assert_eq!(got.as_bytes(), &expected[..], "the form the mock received");
    assert_eq!(
        seen[0]["headers"]["content-length"],
        expected.len().to_string()
    );

    // A translation's answer blocked (`no-translation`, scoped to translations) in OpenAI's
    // shape; a `text` answer redacted as text.
    let r = post_form_to(
        &stack,
        "/v1/audio/translations",
        KEY_GUARDED,
        boundary,
        form(boundary, &[("model", "whisper")], &audio),
    )
    .await;
    let v = r.assert_openai_error(400, Some("guardrail_blocked"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`no-translation`"),
        "{v}"
    );
    let r = post_form(
        &stack,
        KEY_GUARDED,
        boundary,
        form(
            boundary,
            &[("model", "whisper"), ("response_format", "text")],
            &audio,
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.text, "[REDACTED:hello] from the mock transcription.\n");

    // Redaction in JSON bodies: an image prompt, a rerank query, a passthrough chat body.
    stack.clear_upstream_requests().await;
    let r = stack
        .post(
            "/v1/images/generations",
            Some(KEY_GUARDED),
            json!({"model": "image-model", "prompt": format!("a card for {EMAIL}")}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = stack
        .post(
            "/v1/rerank",
            Some(KEY_GUARDED),
            json!({"model": "rerank-cohere", "query": format!("mail {EMAIL}"), "documents": ["a", "b"]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = stack
        .post(
            "/passthrough/mock/v1/chat/completions",
            Some(KEY_GUARDED),
            json!({"model": "mock-model", "messages": [{"role": "user", "content": format!("mail {EMAIL}")}]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = stack.posted().await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0]["body"]["prompt"], "a card for [REDACTED:email]");
    assert_eq!(seen[1]["body"]["query"], "mail [REDACTED:email]");
    assert_eq!(
        seen[2]["body"]["messages"][0]["content"],
        "mail [REDACTED:email]"
    );
    for s in &seen {
        assert!(!s["body"].to_string().contains(EMAIL), "{s}");
    }
}

/// The log event of `request_id`, once the logger has it.
async fn event(logger: &Logger, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = logger
            .lines()
            .into_iter()
            .find(|e| e["request_id"] == request_id)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "no log event for {request_id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn full_capture_of_media_keeps_text_parts_and_a_file_placeholder_never_the_bytes() {
    let ls = LoggedStack::ndjson_with(options());
    let stack = &ls.stack;
    let audio = wav();
    let boundary = "capture-boundary";
    let sent = form(
        boundary,
        &[
            ("model", "whisper"),
            ("prompt", "names: Ann, Bo"),
            ("response_format", "verbose_json"),
        ],
        &audio,
    );
    let size = sent.len();
    let r = post_form(stack, KEY_CAPTURE_FULL, boundary, sent).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let e = event(&ls.logger, &id).await;
    assert_eq!(e["payload_mode"], "full", "{e}");
    assert_eq!(e["request_bytes"], json!(size), "{e}");
    let request: Value = serde_json::from_str(e["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(request["model"], "whisper");
    assert_eq!(request["prompt"], "names: Ann, Bo");
    assert_eq!(request["response_format"], "verbose_json");
    assert_eq!(
        request["file"],
        format!(
            "[file `a.wav`, audio/wav, {} bytes: not captured]",
            audio.len()
        )
    );
    assert!(
        !e["request_body"]
            .as_str()
            .unwrap()
            .contains("not-the-boundary"),
        "the audio's bytes were captured: {e}"
    );
    let response: Value = serde_json::from_str(e["response_body"].as_str().unwrap()).unwrap();
    assert_eq!(response["text"], "Hello from the mock transcription.");

    // Speech: the audio answer is its size and type only.
    let r = stack
        .post(
            "/v1/audio/speech",
            Some(KEY_CAPTURE_FULL),
            json!({"model": "tts", "voice": "alloy", "input": "hello"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let e = event(&ls.logger, &id).await;
    assert_eq!(e["payload_mode"], "full", "{e}");
    assert_eq!(e["response_body"], "", "{e}");
    assert!(e["response_bytes"].as_u64().unwrap() > 0, "{e}");
    assert!(
        e["response_content_type"]
            .as_str()
            .unwrap()
            .starts_with("audio/"),
        "{e}"
    );
    let request: Value = serde_json::from_str(e["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(request["input"], "hello");

    // Passthrough: the JSON body and the answer as it passed, redacted like every capture.
    let r = stack
        .post(
            "/passthrough/mock/v1/chat/completions",
            Some(KEY_CAPTURE_FULL),
            json!({"model": "mock-model", "messages": [{"role": "user", "content": format!("hi from {EMAIL}")}]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let e = event(&ls.logger, &id).await;
    assert_eq!(e["endpoint"], "passthrough", "{e}");
    let request: Value = serde_json::from_str(e["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(
        request["messages"][0]["content"],
        "hi from [REDACTED:email]"
    );
    let response = e["response_body"].as_str().unwrap();
    assert!(response.contains("Mock reply to"), "{e}");
    assert!(!response.contains(EMAIL), "{e}");
    assert_eq!(e["response_bytes"], json!(r.text.len()), "{e}");
}
