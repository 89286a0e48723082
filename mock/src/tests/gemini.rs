//! The mock's Gemini API: `generateContent`, `streamGenerateContent` with and without
//! `alt=sse`, function calls, thought signatures, keys and errors in Google's format.

use super::*;

const FLASH: &str = "/v1beta/models/gemini-mock:generateContent";
const FLASH_SSE: &str = "/v1beta/models/gemini-mock:streamGenerateContent?alt=sse";

fn request(extra: Value) -> Value {
    with(
        json!({"contents": [{"role": "user", "parts": [{"text": "hello gemini mock"}]}]}),
        extra,
    )
}

fn tools() -> Value {
    json!({"tools": [{"functionDeclarations": [{"name": "get_weather",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}}}}]}]})
}

fn gemini_chunks(body: &str) -> Vec<Value> {
    assert!(
        body.contains("\r\n\r\n"),
        "Gemini separates events with CRLF"
    );
    sse_payloads(&body.replace("\r\n", "\n"))
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

#[tokio::test]
async fn generate_content_has_gemini_shape_and_usage() {
    let mock = Mock::default().await;
    let (status, _, body) = mock.post_json(FLASH, &request(json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let c = &body["candidates"][0];
    assert_eq!(c["content"]["role"], "model");
    assert_eq!(
        c["content"]["parts"][0]["text"],
        "Mock reply to: hello gemini mock"
    );
    assert_eq!(c["finishReason"], "STOP");
    assert_eq!(body["modelVersion"], "gemini-mock");
    assert_eq!(body["usageMetadata"]["promptTokenCount"], 3);
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 6);
    assert_eq!(body["usageMetadata"]["totalTokenCount"], 9);
    let (_, _, cut) = mock
        .post_json(
            FLASH,
            &request(json!({"generationConfig": {"maxOutputTokens": 2}})),
        )
        .await;
    assert_eq!(cut["candidates"][0]["finishReason"], "MAX_TOKENS");
}

#[tokio::test]
async fn stream_generate_content_sends_chunks_with_usage_last() {
    let mock = Mock::default().await;
    let body = mock.post_stream(FLASH_SSE, &request(json!({}))).await;
    let chunks = gemini_chunks(&body);
    assert!(!body.contains("[DONE]"));
    assert_eq!(chunks.len(), 7, "six words and a last chunk");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "Mock reply to: hello gemini mock");
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 6);
    assert!(chunks[0]["usageMetadata"]["candidatesTokenCount"].is_null());
    // Without alt=sse: one JSON array of the same chunks.
    let r = mock
        .post(
            "/v1beta/models/gemini-mock:streamGenerateContent",
            &request(json!({})),
        )
        .send()
        .await
        .unwrap();
    let array: Value = r.json().await.unwrap();
    assert_eq!(array.as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn function_calls_until_answered_and_signatures_when_thinking() {
    let mock = Mock::default().await;
    let (_, _, body) = mock.post_json(FLASH, &request(tools())).await;
    let parts = &body["candidates"][0]["content"]["parts"];
    assert_eq!(parts[0]["text"], "Calling get_weather.");
    assert_eq!(
        parts[1]["functionCall"],
        json!({"name": "get_weather", "args": {"city": "mock", "days": 1}})
    );
    assert_eq!(body["candidates"][0]["finishReason"], "STOP");

    let thinking = json!({"generationConfig": {"thinkingConfig": {"includeThoughts": true}}});
    let (_, _, body) = mock
        .post_json(FLASH, &with(request(tools()), thinking.clone()))
        .await;
    let parts = body["candidates"][0]["content"]["parts"].clone();
    assert_eq!(parts[0]["thought"], true);
    assert!(parts[2]["thoughtSignature"].is_string());
    assert_eq!(body["usageMetadata"]["thoughtsTokenCount"], 2);
    // The call echoed back without its signature is refused; with it, answered.
    let mut unsigned = parts.clone();
    unsigned[2]
        .as_object_mut()
        .unwrap()
        .remove("thoughtSignature");
    let history = |model_parts: Value| {
        with(
            json!({"contents": [
                {"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": model_parts},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
            ]}),
            with(tools(), thinking.clone()),
        )
    };
    let (status, _, err) = mock.post_json(FLASH, &history(unsigned)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["status"], "INVALID_ARGUMENT");
    let (status, _, body) = mock.post_json(FLASH, &history(parts)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["candidates"][0]["content"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p.get("functionCall").is_none()));

    let body = mock.post_stream(FLASH_SSE, &request(tools())).await;
    let chunks = gemini_chunks(&body);
    let last = chunks.last().unwrap();
    assert_eq!(
        last["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );
}

#[tokio::test]
async fn gemini_errors_keys_and_faults_use_google_bodies() {
    let mock = Mock::start(MockConfig {
        api_key: Some("AIza-mock".into()),
        ..Default::default()
    })
    .await;
    let (status, _, body) = mock.post_json(FLASH, &request(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(body["error"]["code"], 401);
    let ok = mock
        .post(FLASH, &request(json!({})))
        .header("x-goog-api-key", "AIza-mock")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let ok = mock
        .post(&format!("{FLASH}?key=AIza-mock"), &request(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    let mock = Mock::default().await;
    let (status, headers, body) = mock
        .post_json(
            "/v1beta/models/mock-error-429:generateContent",
            &request(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    // Like Google's: the wait is in the body's `RetryInfo`, not in a header.
    assert!(headers.get("retry-after").is_none());
    let retry = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap();
    assert_eq!(retry["retryDelay"], "1.5s");
    let (status, _, body) = mock.post_json(FLASH, &json!({"contents": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");

    let body = mock
        .post_stream(
            "/v1beta/models/mock-stream-error:streamGenerateContent?alt=sse",
            &request(json!({})),
        )
        .await;
    let chunks = gemini_chunks(&body);
    assert_eq!(chunks.len(), 3);
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], 503);
    assert!(body.contains("\r\n\r\ndata: {\"error\":"));
}

#[tokio::test]
async fn calls_are_always_signed_and_history_needs_the_issued_signature() {
    let mock = Mock::default().await;
    let (_, _, body) = mock.post_json(FLASH, &request(tools())).await;
    let parts = body["candidates"][0]["content"]["parts"].clone();
    let signed = parts[1]["thoughtSignature"].as_str().unwrap().to_owned();
    let url_safe = signed
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_owned();
    let history = |signature: Option<&str>| {
        let mut call = json!({"functionCall": {"name": "get_weather", "args": {"city": "mock"}}});
        if let Some(s) = signature {
            call["thoughtSignature"] = s.into();
        }
        with(
            json!({"contents": [
                {"role": "user", "parts": [{"text": "weather?"}]},
                {"role": "model", "parts": [call]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
            ]}),
            tools(),
        )
    };
    for (signature, want) in [
        (None, StatusCode::BAD_REQUEST),
        (Some("bm90IG91cnM="), StatusCode::BAD_REQUEST),
        (Some(signed.as_str()), StatusCode::OK),
        // google-genai sends bytes back in the URL-safe alphabet.
        (Some(url_safe.as_str()), StatusCode::OK),
        (Some("skip_thought_signature_validator"), StatusCode::OK),
    ] {
        let (status, _, body) = mock.post_json(FLASH, &history(signature)).await;
        assert_eq!(status, want, "{signature:?}: {body}");
    }
}
