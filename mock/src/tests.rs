//! End-to-end tests of the mock over real HTTP: each test serves it on a free local port with
//! [`crate::serve`] and talks to it with reqwest.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::{serve, MockConfig};

/// A running mock; shut down when dropped.
struct Mock {
    base: String,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl Mock {
    async fn start(config: MockConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _shutdown: shutdown,
        }
    }

    async fn default() -> Self {
        Self::start(MockConfig::default()).await
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base)).json(body)
    }

    /// POSTs and returns status, headers and the JSON body.
    async fn post_json(
        &self,
        path: &str,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let response = self.post(path, body).send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.json().await.unwrap())
    }

    /// POSTs a streaming request and returns the raw SSE body.
    async fn post_stream(&self, path: &str, body: &Value) -> String {
        let response = self.post(path, body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "streaming content type"
        );
        response.text().await.unwrap()
    }
}

/// Splits an SSE body into its `data:` payloads, checking every event is exactly
/// `data: <payload>\n\n`.
fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "body must end with a blank line: {body:?}"
    );
    let payloads: Vec<String> = body
        .strip_suffix("\n\n")
        .unwrap()
        .split("\n\n")
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event is not `data: …`: {event:?}"));
            assert!(!payload.contains('\n'), "one line per event: {event:?}");
            payload.to_owned()
        })
        .collect();
    let rebuilt: String = payloads.iter().map(|p| format!("data: {p}\n\n")).collect();
    assert_eq!(rebuilt, body);
    payloads
}

/// The JSON chunks of a stream that must end with `[DONE]`.
fn chunks_until_done(body: &str) -> Vec<Value> {
    let payloads = sse_payloads(body);
    let (last, chunks) = payloads.split_last().unwrap();
    assert_eq!(last, "[DONE]", "the last event is [DONE]");
    chunks
        .iter()
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect()
}

fn chat_request(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the world"},
        ],
    })
}

fn with(mut request: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        request[key] = value.clone();
    }
    request
}

fn assert_openai_error(body: &Value, kind: &str) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["type"], kind, "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
}

#[tokio::test]
async fn chat_completion_has_openai_shape_and_word_usage() {
    let mock = Mock::default().await;
    let (status, headers, body) = mock
        .post_json("/v1/chat/completions", &chat_request("gpt-4o-mini"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req-mock-"));
    assert!(
        body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"),
        "{body}"
    );
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["system_fingerprint"].is_string());
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["finish_reason"], "stop");
    assert_eq!(choices[0]["logprobs"], Value::Null);
    let message = &choices[0]["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], "Mock reply to: Say hello to the world");
    assert!(message.get("refusal").is_some_and(Value::is_null));
    // 3 system words + 5 user words; the reply is 8 words.
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 8);
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(usage["total_tokens"], 16);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn chat_reads_text_parts_and_echoes_at_most_twelve_words_of_the_last_user_message() {
    let mock = Mock::default().await;
    let request = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [
                {"type": "text", "text": "one two three four five six"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "text", "text": "seven eight nine ten eleven twelve thirteen"},
            ]},
        ],
    });
    let (status, _, body) = mock
        .post_json("/openai/v1/chat/completions", &request)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock reply to: one two three four five six seven eight nine ten eleven twelve"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 2 + 2 + 13);
    assert_eq!(body["usage"]["completion_tokens"], 15);
}

#[tokio::test]
async fn chat_stream_without_include_usage_has_no_usage_and_ends_with_done() {
    let mock = Mock::default().await;
    let (_, _, whole) = mock
        .post_json("/v1/chat/completions", &chat_request("m"))
        .await;
    let body = mock
        .post_stream(
            "/v1/chat/completions",
            &with(chat_request("m"), json!({"stream": true})),
        )
        .await;
    let chunks = chunks_until_done(&body);
    // Role chunk, 8 word chunks, finish chunk.
    assert_eq!(chunks.len(), 10, "{body}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-mock-"));
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], "m");
        assert!(chunk["created"].is_u64());
        assert!(chunk["system_fingerprint"].is_string());
        assert!(
            chunk.get("usage").is_none(),
            "no usage without include_usage: {chunk}"
        );
        let choices = chunk["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 1);
        assert_eq!(choices[0]["index"], 0);
        assert!(choices[0].get("logprobs").is_some_and(Value::is_null));
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "Mock"}));
    assert_eq!(
        chunks[2]["choices"][0]["delta"],
        json!({"content": " reply"})
    );
    let content: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, whole["choices"][0]["message"]["content"]);
    let (finish, rest) = chunks.split_last().unwrap();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(rest
        .iter()
        .all(|chunk| chunk["choices"][0]["finish_reason"].is_null()));
}

#[tokio::test]
async fn chat_stream_with_include_usage_ends_with_one_usage_chunk() {
    let mock = Mock::default().await;
    let (_, _, whole) = mock
        .post_json("/v1/chat/completions", &chat_request("m"))
        .await;
    let request = with(
        chat_request("m"),
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let chunks = chunks_until_done(&mock.post_stream("/v1/chat/completions", &request).await);
    let (usage_chunk, before) = chunks.split_last().unwrap();
    assert_eq!(before.len(), 10);
    for chunk in before {
        assert!(chunk.get("usage").is_some_and(Value::is_null), "{chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(
        before.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["object"], "chat.completion.chunk");
    assert_eq!(usage_chunk["usage"], whole["usage"]);
}

#[tokio::test]
async fn each_stream_event_is_its_own_body_frame() {
    let mock = Mock::start(MockConfig {
        chunk_delay: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let response = mock
        .post(
            "/v1/chat/completions",
            &with(chat_request("m"), json!({"stream": true})),
        )
        .send()
        .await
        .unwrap();
    let frames: Vec<Vec<u8>> = response
        .bytes_stream()
        .map(|frame| frame.unwrap().to_vec())
        .collect()
        .await;
    assert_eq!(frames.len(), 11, "10 chunks and [DONE]");
    for frame in &frames {
        let frame = std::str::from_utf8(frame).unwrap();
        assert!(
            frame.starts_with("data: ") && frame.ends_with("\n\n"),
            "{frame:?}"
        );
        assert_eq!(frame.matches("\n\n").count(), 1, "{frame:?}");
    }
}

#[tokio::test]
async fn an_endless_stream_repeats_its_content_and_never_finishes() {
    let mock = Mock::default().await;
    let response = mock
        .post(
            "/v1/chat/completions",
            &with(chat_request("m"), json!({"stream": true})),
        )
        .header("x-mock-endless-stream", "1")
        .header("x-mock-chunk-delay-ms", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The reply has 8 content chunks; 30 frames means it went round more than three times.
    let frames: Vec<String> = response
        .bytes_stream()
        .take(30)
        .map(|f| String::from_utf8(f.unwrap().to_vec()).unwrap())
        .collect()
        .await;
    assert_eq!(frames.len(), 30);
    assert!(
        frames[0].contains("\"role\":\"assistant\""),
        "{}",
        frames[0]
    );
    assert_eq!(frames[1], frames[9], "the content comes round again");
    assert!(
        frames
            .iter()
            .all(|f| !f.contains("[DONE]") && !f.contains("\"finish_reason\":\"stop\"")),
        "{frames:?}"
    );
}

#[tokio::test]
async fn max_tokens_truncates_with_finish_reason_length() {
    let mock = Mock::default().await;
    for limit in ["max_tokens", "max_completion_tokens"] {
        let request = with(chat_request("m"), json!({ limit: 4 }));
        let (_, _, body) = mock.post_json("/v1/chat/completions", &request).await;
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Mock reply to: Say"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 4);
        assert_eq!(body["usage"]["total_tokens"], 12);
    }
    // A limit above the reply length changes nothing.
    let request = with(chat_request("m"), json!({"max_tokens": 100}));
    let (_, _, body) = mock.post_json("/v1/chat/completions", &request).await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 8);

    let request = with(chat_request("m"), json!({"max_tokens": 2, "stream": true}));
    let chunks = chunks_until_done(&mock.post_stream("/v1/chat/completions", &request).await);
    assert_eq!(chunks.len(), 4);
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");

    let request = with(chat_request("m"), json!({"max_tokens": 0}));
    let (status, _, body) = mock.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "invalid_request_error");
}

#[tokio::test]
async fn stream_options_without_stream_is_rejected_like_openai() {
    let mock = Mock::default().await;
    let request = with(
        chat_request("m"),
        json!({"stream_options": {"include_usage": true}}),
    );
    let (status, _, body) = mock.post_json("/v1/chat/completions", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "stream_options");
}

#[tokio::test]
async fn legacy_completions_non_streaming_and_streaming() {
    let mock = Mock::default().await;
    let request = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time"});
    let (status, _, body) = mock.post_json("/v1/completions", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-mock-"));
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "gpt-3.5-turbo-instruct");
    assert_eq!(
        body["choices"],
        json!([{"text": "Mock reply to: Once upon a time", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11})
    );

    let request = json!({"model": "m", "prompt": ["a b", "c"], "max_tokens": 4});
    let (_, _, body) = mock.post_json("/v1/completions", &request).await;
    assert_eq!(body["choices"][0]["text"], "Mock reply to: a");
    assert_eq!(body["choices"][1]["text"], "Mock reply to: c");
    assert_eq!(body["choices"][1]["index"], 1);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], 8);

    let request = json!({
        "model": "m", "prompt": "Once upon a time", "stream": true,
        "stream_options": {"include_usage": true},
    });
    let chunks = chunks_until_done(&mock.post_stream("/v1/completions", &request).await);
    let (usage_chunk, before) = chunks.split_last().unwrap();
    let text: String = before
        .iter()
        .map(|chunk| chunk["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Mock reply to: Once upon a time");
    for chunk in before {
        assert_eq!(chunk["object"], "text_completion");
        assert!(chunk.get("usage").is_some_and(Value::is_null));
    }
    assert_eq!(
        before.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["total_tokens"], 11);

    let request = json!({"model": "m", "prompt": "x", "stream": true});
    let chunks = chunks_until_done(&mock.post_stream("/v1/completions", &request).await);
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
}

#[tokio::test]
async fn embeddings_float_and_base64_carry_the_same_vectors() {
    let mock = Mock::default().await;
    let request = json!({"model": "text-embedding-3-small", "input": ["hello world", "bye"]});
    let (status, _, float) = mock.post_json("/v1/embeddings", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(float["object"], "list");
    assert_eq!(float["model"], "text-embedding-3-small");
    assert_eq!(
        float["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let data = float["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    // serde_json's default float parser may be one f64 ulp off the (exact) printed value;
    // narrowing to f32 removes that. The Python SDK check compares the f64s exactly.
    let floats: Vec<Vec<f32>> = data
        .iter()
        .map(|item| {
            item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    assert_eq!(floats[0].len(), 8, "default dimensions");
    assert_ne!(floats[0], floats[1]);

    let request = with(request, json!({"encoding_format": "base64"}));
    let (_, _, encoded) = mock.post_json("/v1/embeddings", &request).await;
    let decoded: Vec<Vec<f32>> = encoded["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(item["embedding"].as_str().unwrap())
                .unwrap();
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect();
    assert_eq!(decoded, floats, "exactly the same numbers");

    // Deterministic across requests, dimensions honoured, token inputs accepted.
    let (_, _, again) = mock
        .post_json(
            "/v1/embeddings",
            &json!({"model": "e", "input": "hello world", "dimensions": 3}),
        )
        .await;
    assert_eq!(again["data"][0]["embedding"].as_array().unwrap().len(), 3);
    let (_, _, tokens) = mock
        .post_json(
            "/v1/embeddings",
            &json!({"model": "e", "input": [[1, 2, 3], [4]]}),
        )
        .await;
    assert_eq!(tokens["data"].as_array().unwrap().len(), 2);
    assert_eq!(tokens["usage"]["prompt_tokens"], 4);
    let (_, _, single) = mock
        .post_json("/v1/embeddings", &json!({"model": "e", "input": [1, 2, 3]}))
        .await;
    assert_eq!(single["data"].as_array().unwrap().len(), 1);
    let (status, _, body) = mock
        .post_json(
            "/v1/embeddings",
            &json!({"model": "e", "input": "x", "encoding_format": "hex"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "invalid_request_error");
}

#[tokio::test]
async fn azure_paths_need_api_version_and_answer_with_the_deployment() {
    let mock = Mock::default().await;
    let request = json!({"messages": [{"role": "user", "content": "hi"}]});
    let path = "/openai/deployments/prod-gpt4o/chat/completions";
    let (status, _, body) = mock.post_json(path, &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api-version"));

    let (status, _, body) = mock
        .post_json(&format!("{path}?api-version=2024-10-21"), &request)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "prod-gpt4o");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock reply to: hi"
    );

    let (status, _, body) = mock
        .post_json(
            "/openai/deployments/emb/embeddings?api-version=2024-10-21",
            &json!({"input": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["model"], "emb");
}

#[tokio::test]
async fn api_key_is_checked_in_bearer_or_api_key_header() {
    let mock = Mock::start(MockConfig {
        api_key: Some("sk-upstream".to_owned()),
        ..MockConfig::default()
    })
    .await;
    let request = chat_request("m");
    let send = |header: Option<(&'static str, &'static str)>, path: &'static str| {
        let mut builder = mock.post(path, &request);
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        builder.send()
    };
    let unauthorized = json!({"error": {
        "message": "Incorrect API key provided",
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key",
    }});
    for header in [
        None,
        Some(("authorization", "Bearer sk-wrong")),
        Some(("api-key", "sk-wrong")),
    ] {
        let response = send(header, "/v1/chat/completions").await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(response.json::<Value>().await.unwrap(), unauthorized);
    }
    for header in [
        ("authorization", "Bearer sk-upstream"),
        ("api-key", "sk-upstream"),
    ] {
        let response = send(Some(header), "/v1/chat/completions").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{header:?}");
    }
    // Azure takes the key in `api-key` only.
    let azure = "/openai/deployments/d/chat/completions?api-version=2024-10-21";
    let response = send(Some(("authorization", "Bearer sk-upstream")), azure)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = send(Some(("api-key", "sk-upstream")), azure).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn error_models_return_openai_errors() {
    let mock = Mock::default().await;
    let (status, headers, body) = mock
        .post_json("/v1/chat/completions", &chat_request("mock-error-429"))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    assert_openai_error(&body, "rate_limit_exceeded");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    for (model, status, kind) in [
        (
            "mock-error-500",
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
        ),
        (
            "mock-error-503",
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
        ),
        (
            "mock-error-400",
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
        ),
    ] {
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
            let request = json!({"model": model, "messages": [], "prompt": "x", "input": "x"});
            let (got, _, body) = mock.post_json(path, &request).await;
            assert_eq!(got, status, "{model} {path}");
            assert_openai_error(&body, kind);
        }
    }
    // Streaming requests fail the same way, before any event.
    let (status, _, body) = mock
        .post_json(
            "/v1/chat/completions",
            &with(chat_request("mock-error-500"), json!({"stream": true})),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_openai_error(&body, "server_error");

    let response = mock
        .post("/v1/chat/completions", &chat_request("mock-html-error"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["content-type"], "text/html");
    assert!(response.text().await.unwrap().contains("<html>"));
}

#[tokio::test]
async fn stream_error_model_fails_mid_stream_without_done() {
    let mock = Mock::default().await;
    let request = with(
        chat_request("mock-stream-error"),
        json!({"stream": true, "max_tokens": 1}),
    );
    let body = mock.post_stream("/v1/chat/completions", &request).await;
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.len(), 4, "{body}");
    assert!(payloads.iter().all(|p| p != "[DONE]"));
    let events: Vec<Value> = payloads
        .iter()
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "Mock");
    assert_eq!(events[2]["choices"][0]["delta"]["content"], " reply");
    assert_eq!(
        events[3],
        json!({"error": {
            "message": crate::error::SERVER_ERROR_MESSAGE,
            "type": "server_error",
            "param": null,
            "code": null,
        }})
    );
    // Without streaming the generation fails as a whole.
    let (status, _, body) = mock
        .post_json("/v1/chat/completions", &chat_request("mock-stream-error"))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_openai_error(&body, "server_error");
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let mock = Mock::default().await;
    let response = mock
        .client
        .post(format!("{}/v1/chat/completions", mock.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_openai_error(&response.json().await.unwrap(), "invalid_request_error");

    let (status, _, body) = mock
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["message"],
        "you must provide a model parameter"
    );

    let (status, _, body) = mock
        .post_json("/v1/chat/completions", &json!({"model": "m"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "messages");

    let (status, _, body) = mock.post_json("/v1/nothing/here", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&body, "invalid_request_error");

    let response = mock
        .client
        .get(format!("{}/v1/chat/completions", mock.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn models_lists_the_mock_model() {
    let mock = Mock::default().await;
    for path in ["/v1/models", "/openai/v1/models"] {
        let response = mock
            .client
            .get(format!("{}{path}", mock.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "list");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], "mock-model");
        assert_eq!(data[0]["object"], "model");
        assert_eq!(data[0]["owned_by"], "tollgate-mock");
        assert!(data[0]["created"].is_u64());
    }
}

#[tokio::test]
async fn latency_header_delays_the_response() {
    let mock = Mock::default().await;
    let start = Instant::now();
    let response = mock
        .post("/v1/chat/completions", &chat_request("m"))
        .header("x-mock-latency-ms", "150")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(150));

    let response = mock
        .post("/v1/chat/completions", &chat_request("m"))
        .header("x-mock-latency-ms", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn request_log_records_api_requests_oldest_first() {
    let mock = Mock::default().await;
    let log_url = format!("{}/__mock/requests", mock.base);
    mock.post("/v1/chat/completions?trace=1", &chat_request("m"))
        .header("Authorization", "Bearer sk-1")
        .send()
        .await
        .unwrap();
    mock.client
        .post(format!("{}/v1/embeddings", mock.base))
        .body("plain text")
        .send()
        .await
        .unwrap();

    let log: Value = mock
        .client
        .get(&log_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = log.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{log}");
    assert_eq!(entries[0]["method"], "POST");
    assert_eq!(entries[0]["path"], "/v1/chat/completions");
    assert_eq!(entries[0]["query"], "trace=1");
    assert_eq!(entries[0]["headers"]["authorization"], "Bearer sk-1");
    assert_eq!(entries[0]["headers"]["content-type"], "application/json");
    assert_eq!(entries[0]["body"], chat_request("m"));
    assert_eq!(entries[1]["path"], "/v1/embeddings");
    assert_eq!(entries[1]["query"], "");
    assert_eq!(entries[1]["body"], "plain text");

    let response = mock.client.delete(&log_url).send().await.unwrap();
    assert!(response.status().is_success());
    let log: Value = mock
        .client
        .get(&log_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log, json!([]));
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages
// ---------------------------------------------------------------------------------------------

fn messages_request(extra: Value) -> Value {
    with(
        json!({
            "model": "claude-mock",
            "max_tokens": 100,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello to the world"}],
        }),
        extra,
    )
}

fn weather_tool() -> Value {
    json!([{"name": "get_weather", "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                             "required": ["city"]}}])
}

/// `(event name, data)` of each event, checking the `event:` line matches the data's `type`.
fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.strip_suffix("\n\n")
        .unwrap()
        .split("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "{e}");
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn messages_answer_in_anthropic_format_with_usage() {
    let mock = Mock::default().await;
    let (status, _, v) = mock
        .post_json("/v1/messages", &messages_request(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(
        v["content"][0]["text"],
        "Mock reply to: Say hello to the world"
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(v["usage"]["output_tokens"], 8);
}

#[tokio::test]
async fn messages_stream_with_anthropic_framing() {
    let mock = Mock::default().await;
    let response = mock
        .post("/v1/messages", &messages_request(json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = anthropic_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Mock reply to: Say hello to the world");
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 7);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["usage"]["output_tokens"], 8);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
}

#[tokio::test]
async fn messages_call_the_first_tool_until_it_has_answered() {
    let mock = Mock::default().await;
    let (_, _, v) = mock
        .post_json(
            "/v1/messages",
            &messages_request(json!({"tools": weather_tool()})),
        )
        .await;
    assert_eq!(v["stop_reason"], "tool_use");
    let call = &v["content"][1];
    assert_eq!(call["type"], "tool_use");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["input"], json!({"city": "mock", "days": 1}));

    let response = mock
        .post(
            "/v1/messages",
            &messages_request(json!({"tools": weather_tool(), "stream": true})),
        )
        .send()
        .await
        .unwrap();
    let events = anthropic_events(&response.text().await.unwrap());
    let args: String = events
        .iter()
        .filter(|(_, d)| d["index"] == 1 && d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "mock", "days": 1})
    );

    let answered = messages_request(json!({"tools": weather_tool(), "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
    ]}));
    let (_, _, v) = mock.post_json("/v1/messages", &answered).await;
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test]
async fn messages_with_a_forced_tool_give_that_call_alone() {
    let mock = Mock::default().await;
    let mut tools = weather_tool();
    tools.as_array_mut().unwrap().push(json!({"name": "answer",
        "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}}}));
    let forced = json!({"tools": tools, "tool_choice": {"type": "tool", "name": "answer"}});
    let (_, _, v) = mock
        .post_json("/v1/messages", &messages_request(forced.clone()))
        .await;
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["content"][0]["name"], "answer");
    assert_eq!(v["content"][0]["input"], json!({"name": "mock"}));

    let response = mock
        .post(
            "/v1/messages",
            &messages_request(with(forced, json!({"stream": true}))),
        )
        .send()
        .await
        .unwrap();
    let events = anthropic_events(&response.text().await.unwrap());
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0]["index"], 0);
    assert_eq!(starts[0]["content_block"]["name"], "answer");
}

#[tokio::test]
async fn messages_errors_use_anthropic_bodies() {
    let mock = Mock::default().await;
    let (status, _, v) = mock
        .post_json(
            "/v1/messages",
            &messages_request(json!({"model": "mock-error-429"})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let mut no_max = messages_request(json!({}));
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let (status, _, v) = mock.post_json("/v1/messages", &no_max).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let response = mock
        .post(
            "/v1/messages",
            &messages_request(json!({"model": "mock-stream-error", "stream": true})),
        )
        .send()
        .await
        .unwrap();
    let events = anthropic_events(&response.text().await.unwrap());
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn chat_calls_the_first_tool_when_offered_tools() {
    let mock = Mock::default().await;
    let tools = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    let (_, _, v) = mock
        .post_json(
            "/v1/chat/completions",
            &with(chat_request("m"), json!({"tools": tools})),
        )
        .await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"q":"mock"}"#
    );
    let body = mock
        .post_stream(
            "/v1/chat/completions",
            &with(chat_request("m"), json!({"tools": tools, "stream": true})),
        )
        .await;
    let chunks = chunks_until_done(&body);
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"q":"mock"}"#);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

mod gemini;

fn chat_tool(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
}

#[tokio::test]
async fn chat_calls_every_tool_the_prompt_names_interleaving_streamed_arguments() {
    let mock = Mock::default().await;
    let ask = json!({"model": "m", "tools": [chat_tool("get_weather"), chat_tool("get_time"), chat_tool("other")],
        "messages": [{"role": "user", "content": "use get_weather and get_time"}]});
    let (_, _, body) = mock.post_json("/v1/chat/completions", &ask).await;
    let calls = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = calls
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_weather", "get_time"]);
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    let stream = mock
        .post_stream("/v1/chat/completions", &with(ask, json!({"stream": true})))
        .await;
    let indices: Vec<u64> = chunks_until_done(&stream)
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["index"].as_u64())
        .collect();
    assert_eq!(indices, [0, 1, 0, 1, 0, 1], "announced, then interleaved");
}

#[tokio::test]
async fn chat_reports_reasoning_tokens_when_asked_to_reason() {
    let mock = Mock::default().await;
    let (_, _, body) = mock
        .post_json(
            "/v1/chat/completions",
            &with(chat_request("o3"), json!({"reasoning_effort": "low"})),
        )
        .await;
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        3
    );
    assert_eq!(body["usage"]["completion_tokens"], 11, "{body}");
}

#[tokio::test]
async fn tool_call_ids_over_the_providers_limits_are_refused() {
    let mock = Mock::default().await;
    let long = "call_".repeat(9);
    let ask = json!({"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": long, "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": long, "content": "ok"}]});
    let (status, _, body) = mock.post_json("/v1/chat/completions", &ask).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum length 40"));
}

#[tokio::test]
async fn counting_apis_answer_in_each_providers_shape_with_the_same_count() {
    let mock = Mock::default().await;
    // 3 + 6 words, plus the mock's overhead.
    let want = 9 + crate::count::COUNT_OVERHEAD;
    let (status, _, body) = mock
        .post_json(
            "/v1/messages/count_tokens",
            &json!({"model": "m", "system": "You are terse.",
                "messages": [{"role": "user", "content": "count these six words right here"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"input_tokens": want}));
    // Anthropic refuses members its count endpoint does not take.
    let (status, _, body) = mock
        .post_json(
            "/v1/messages/count_tokens",
            &json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");

    let contents =
        json!([{"role": "user", "parts": [{"text": "count these six words right here"}]}]);
    let system = json!({"parts": [{"text": "You are terse."}]});
    let (status, _, body) = mock
        .post_json(
            "/v1beta/models/g:countTokens",
            &json!({"generateContentRequest": {"model": "models/g", "contents": contents,
                "systemInstruction": system}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"totalTokens": want}));
    let (status, _, body) = mock
        .post_json(
            "/v1beta/models/g:countTokens",
            &json!({"generateContentRequest": {"model": "models/other", "contents": contents}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT", "{body}");
}
