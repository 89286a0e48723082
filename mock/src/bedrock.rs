//! `POST …/model/{modelId}/converse` and `…/converse-stream`: AWS Bedrock's Converse API,
//! answered with one Converse body or a stream in the AWS event-stream binary framing
//! (`application/vnd.amazon.eventstream`, CRCs included): `messageStart`, text
//! `contentBlockDelta`s, `contentBlockStop`, a `toolUse` block when the request offers tools,
//! `messageStop`, then `metadata` with the usage.
//!
//! Every request must be signed with SigV4 by [`AWS_ACCESS_KEY_ID`] and
//! [`AWS_SECRET_ACCESS_KEY`] (service `bedrock`, any region): the mock recomputes the signature
//! from what it received (method, path as sent, the signed headers, the body's SHA-256) and
//! answers 403 in Bedrock's format when it differs, as AWS does. Errors are `{"message":…}`
//! with the exception name in `x-amzn-errortype`.

use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use tollgate_core::sigv4;
use tollgate_extproc::translator::eventstream;

use crate::error::MockError;
use crate::messages::ToolUse;
use crate::params::Request;
use crate::platform;
use crate::routes::Exchange;
use crate::sse;
use crate::text::{word_count, FinishReason, Reply};
use crate::thinking;

/// The access key id the mock accepts.
pub const AWS_ACCESS_KEY_ID: &str = "AKIDTOLLGATEMOCK";

/// The secret access key the mock verifies signatures with.
pub const AWS_SECRET_ACCESS_KEY: &str = "mock/K7MDENG+bPxRfiCYTOLLGATEKEY";

/// How far a request's `x-amz-date` may be from the mock's clock (AWS allows 5 minutes).
const MAX_SKEW: Duration = Duration::from_secs(300);

/// A Bedrock error: status, exception name and message.
pub(crate) struct BedrockError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl BedrockError {
    fn forbidden(kind: &'static str, message: &str) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            kind,
            message: message.to_owned(),
        }
    }

    /// A 400 `ValidationException`.
    pub(crate) fn validation(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "ValidationException",
            message,
        }
    }

    /// A 404 `ResourceNotFoundException`.
    pub(crate) fn not_found(message: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "ResourceNotFoundException",
            message: message.to_owned(),
        }
    }

    /// The Bedrock counterpart of one of the mock's own errors.
    pub(crate) fn from_mock(error: &MockError) -> Self {
        let status = error.status();
        let kind = match status.as_u16() {
            400 | 405 | 422 => "ValidationException",
            401 | 403 => "AccessDeniedException",
            404 => "ResourceNotFoundException",
            408 => "ModelTimeoutException",
            424 => "ModelErrorException",
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            _ => "InternalServerException",
        };
        let message = match status.as_u16() {
            429 => "Too many requests, please wait before trying again.".to_owned(),
            _ => error.to_string(),
        };
        Self {
            status,
            kind,
            message,
        }
    }
}

impl IntoResponse for BedrockError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"message": self.message}))).into_response();
        let kind = format!(
            "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            self.kind
        );
        if let Ok(v) = HeaderValue::from_str(&kind) {
            r.headers_mut()
                .insert(HeaderName::from_static("x-amzn-errortype"), v);
        }
        r
    }
}

fn text_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the request's SigV4 signature against the mock's fixed credentials, `now` being the
/// mock's clock.
#[cfg(test)]
pub(crate) fn verify(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), BedrockError> {
    verify_issued(
        method,
        path,
        query,
        headers,
        body,
        now,
        &platform::Issued::default(),
    )
}

/// Checks the request's SigV4 signature against the mock's fixed credentials or the
/// temporary ones it handed out (`issued`): those must be unexpired and come with their
/// session token in a signed `x-amz-security-token`, as AWS requires.
pub(crate) fn verify_issued(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    issued: &platform::Issued,
) -> Result<(), BedrockError> {
    let Some(value) = text_header(headers, "authorization") else {
        return Err(BedrockError::forbidden(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let Some(auth) = sigv4::parse_authorization(value) else {
        return Err(BedrockError::forbidden(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
        ));
    };
    let unrecognized = || {
        BedrockError::forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    };
    let secret = if auth.access_key_id == AWS_ACCESS_KEY_ID {
        AWS_SECRET_ACCESS_KEY.to_owned()
    } else {
        match issued.lookup(auth.access_key_id, now) {
            platform::Lookup::Unknown => return Err(unrecognized()),
            platform::Lookup::Expired => {
                return Err(BedrockError::forbidden(
                    "ExpiredTokenException",
                    "The security token included in the request is expired",
                ))
            }
            platform::Lookup::Valid { secret, token } => {
                let sent = text_header(headers, "x-amz-security-token");
                let signed_in = auth
                    .signed_headers
                    .split(';')
                    .any(|h| h == "x-amz-security-token");
                if sent != Some(token.as_str()) || !signed_in {
                    return Err(unrecognized());
                }
                secret
            }
        }
    };
    let invalid = || {
        BedrockError::forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        )
    };
    let amz_date = text_header(headers, "x-amz-date").ok_or_else(invalid)?;
    if auth.service != sigv4::BEDROCK_SERVICE || !amz_date.starts_with(auth.date) {
        return Err(invalid());
    }
    let skew = |a: SystemTime, b: SystemTime| a.duration_since(b).unwrap_or_default();
    let dated = amz_date_time(amz_date).ok_or_else(invalid)?;
    if skew(now, dated).max(skew(dated, now)) > MAX_SKEW {
        return Err(BedrockError::forbidden(
            "InvalidSignatureException",
            "Signature expired: the request's x-amz-date is more than 5 minutes from the server's time.",
        ));
    }
    // The body the signature covers is the body received.
    let payload_hash = sigv4::sha256_hex(body);
    if text_header(headers, "x-amz-content-sha256").is_some_and(|h| h != payload_hash) {
        return Err(BedrockError {
            status: StatusCode::BAD_REQUEST,
            kind: "XAmzContentSHA256Mismatch",
            message: "The provided 'x-amz-content-sha256' header does not match what was computed."
                .to_owned(),
        });
    }
    let mut signed: Vec<(&str, &str)> = Vec::new();
    for name in auth.signed_headers.split(';') {
        signed.push((name, text_header(headers, name).ok_or_else(invalid)?));
    }
    if !signed.iter().any(|(n, _)| *n == "host") {
        return Err(invalid());
    }
    let req = sigv4::Request {
        method,
        path,
        query,
        headers: &signed,
        payload_hash: &payload_hash,
    };
    let key = sigv4::signing_key(&secret, auth.date, auth.region, sigv4::BEDROCK_SERVICE);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let (expected, _) = sigv4::signature(&req, &key, amz_date, &scope);
    if expected != auth.signature {
        return Err(invalid());
    }
    Ok(())
}

/// The time of an `x-amz-date` (`YYYYMMDDTHHMMSSZ`).
fn amz_date_time(s: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(s, format).ok()?;
    Some(t.assume_utc().into())
}

/// The model id of a Converse path (`…/model/{percent-encoded id}/converse[-stream]`), and
/// whether it streams.
pub(crate) fn parse_path(path: &str) -> Option<(String, bool)> {
    let (prefix, stream) = if let Some(p) = path.strip_suffix("/converse-stream") {
        (p, true)
    } else {
        (path.strip_suffix("/converse")?, false)
    };
    let (_, id) = prefix.rsplit_once("/model/")?;
    (!id.is_empty() && !id.contains('/')).then(|| (percent_decode(id), stream))
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The texts of Converse content blocks, tool results included.
fn block_texts(blocks: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    for b in blocks.as_array().into_iter().flatten() {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            out.push(t);
        }
        if let Some(r) = b.get("toolResult") {
            out.extend(block_texts(&r["content"]));
        }
    }
    out
}

/// Answers one Converse request (`exchange.model` is the path's model id).
/// Cache tokens read by a request with at least one `cachePoint`.
pub const CACHE_READ_TOKENS: u64 = 1000;
/// Cache tokens written per `cachePoint` of a request.
pub const CACHE_WRITE_TOKENS_PER_POINT: u64 = 100;

/// The `cachePoint` blocks of a Converse request: in `system`, message contents and
/// `toolConfig.tools`.
fn cache_points(request: &Request) -> u64 {
    let count = |blocks: Option<&Value>| {
        blocks.and_then(Value::as_array).map_or(0, |b| {
            b.iter().filter(|x| x.get("cachePoint").is_some()).count() as u64
        })
    };
    let in_messages: u64 = request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, |ms| ms.iter().map(|m| count(m.get("content"))).sum());
    count(request.get("system"))
        + in_messages
        + count(request.get("toolConfig").and_then(|t| t.get("tools")))
}

pub(crate) fn respond(
    request: &Request,
    exchange: &Exchange<'_>,
    stream: bool,
) -> Result<Response, MockError> {
    let messages = match request.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => return Err(MockError::MissingParameter("messages")),
    };
    let max_tokens = request
        .get("inferenceConfig")
        .and_then(|c| c.get("maxTokens"))
        .and_then(Value::as_u64);
    let system_words: u64 = request
        .get("system")
        .map(block_texts)
        .unwrap_or_default()
        .into_iter()
        .map(word_count)
        .sum();
    let input_tokens = (system_words
        + messages
            .iter()
            .flat_map(|m| block_texts(&m["content"]))
            .map(word_count)
            .sum::<u64>())
    .max(1);
    let answering_tool = messages.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b.get("toolResult").is_some()))
    });
    check_tool_use_ids(messages)?;
    let thinking = thinking::enabled_on_bedrock(request);
    thinking::check(&thinking::from_bedrock(messages), thinking)?;
    let thought = thinking.then_some(thinking::THOUGHT);
    let tools: Vec<Value> = request
        .get("toolConfig")
        .and_then(|c| c["tools"].as_array())
        .into_iter()
        .flatten()
        .map(|t| &t["toolSpec"])
        .filter(|_| !answering_tool)
        .map(|spec| json!({"name": spec["name"], "input_schema": spec["inputSchema"]["json"]}))
        .collect();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user");
    let user_texts = last_user
        .map(|m| block_texts(&m["content"]))
        .unwrap_or_default();
    let reply = Reply::to(
        user_texts.iter().flat_map(|t| t.split_whitespace()),
        (!exchange.stream_error).then_some(max_tokens).flatten(),
    );
    let calls = ToolUse::for_tools(&tools, &user_texts.join(" "), exchange.number);
    let call = calls.first();
    let text = match call {
        Some(c) => format!("Calling {}.", c.name),
        None => reply.text(),
    };
    let output_tokens = word_count(&text)
        + calls.iter().map(ToolUse::tokens).sum::<u64>()
        + thought.map_or(0, word_count);
    let stop_reason = match (call, reply.finish_reason) {
        (Some(_), _) => "tool_use",
        (None, FinishReason::Length) => "max_tokens",
        (None, FinishReason::Stop) => "end_turn",
    };
    let mut usage = json!({"inputTokens": input_tokens, "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens});
    // A prompt with cache points reads the cached prefix and writes the rest (fixed counts:
    // the mock keeps no cache), reported apart from `inputTokens` as Bedrock does.
    let points = cache_points(request);
    if points > 0 {
        usage["cacheReadInputTokens"] = CACHE_READ_TOKENS.into();
        usage["cacheWriteInputTokens"] = (CACHE_WRITE_TOKENS_PER_POINT * points).into();
        usage["totalTokens"] = (input_tokens
            + output_tokens
            + CACHE_READ_TOKENS
            + CACHE_WRITE_TOKENS_PER_POINT * points)
            .into();
    }
    if stream {
        let pieces: Vec<String> = match call {
            Some(_) => vec![text.clone()],
            None => reply.pieces().collect(),
        };
        // Thinking opens the answer as block 0: every other block moves one up.
        let events = match thought {
            Some(t) => thinking_stream(t, &pieces, &calls, stop_reason, &usage),
            None => stream_events(&pieces, &calls, stop_reason, &usage, exchange.stream_error),
        };
        let mut r = sse::response(events, exchange.chunk_delay);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        return Ok(r);
    }
    if exchange.stream_error {
        return Err(MockError::GenerationFailed);
    }
    let mut content = Vec::with_capacity(3);
    if let Some(t) = thought {
        content.push(json!({"reasoningContent": {"reasoningText":
            {"text": t, "signature": thinking::signature(t)}}}));
    }
    content.push(json!({"text": text}));
    for c in &calls {
        content.push(json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.input}}));
    }
    Ok(Json(json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": 1},
    }))
    .into_response())
}

/// Bedrock's `toolUseId`: 1 to 64 of `[a-zA-Z0-9_-]`, in calls and results alike.
fn check_tool_use_ids(messages: &[Value]) -> Result<(), MockError> {
    let ids = messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter_map(|b| {
            b.get("toolUse")
                .or_else(|| b.get("toolResult"))
                .map(|t| &t["toolUseId"])
        });
    for id in ids {
        let ok = id.as_str().is_some_and(|id| {
            (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !ok {
            return Err(MockError::InvalidParameter {
                param: "messages",
                message: "1 validation error detected: Value at 'messages.content.toolUse.toolUseId' failed to satisfy constraint: Member must have length less than or equal to 64".to_owned(),
            });
        }
    }
    Ok(())
}

/// A streamed answer that opens with a signed `reasoningContent` block (index 0), then the
/// text (1) and the calls.
fn thinking_stream(
    thought: &str,
    pieces: &[String],
    calls: &[ToolUse],
    stop_reason: &str,
    usage: &Value,
) -> Vec<Bytes> {
    let mut events = vec![event("messageStart", &json!({"role": "assistant"}))];
    events.push(event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": thought}}}),
    ));
    events.push(event(
        "contentBlockDelta",
        &json!({"contentBlockIndex": 0,
            "delta": {"reasoningContent": {"signature": thinking::signature(thought)}}}),
    ));
    events.push(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
    for p in pieces {
        events.push(event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 1, "delta": {"text": p}}),
        ));
    }
    events.push(event("contentBlockStop", &json!({"contentBlockIndex": 1})));
    for (n, c) in calls.iter().enumerate() {
        let index = n + 2;
        events.push(event(
            "contentBlockStart",
            &json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": c.id, "name": c.name}}}),
        ));
        for piece in c.argument_pieces() {
            events.push(event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
            ));
        }
        events.push(event(
            "contentBlockStop",
            &json!({"contentBlockIndex": index}),
        ));
    }
    events.push(event("messageStop", &json!({"stopReason": stop_reason})));
    events.push(event(
        "metadata",
        &json!({"usage": usage, "metrics": {"latencyMs": 1}}),
    ));
    events
}

fn event(kind: &str, payload: &Value) -> Bytes {
    Bytes::from(eventstream::event(kind, payload.to_string().as_bytes()))
}

fn stream_events(
    pieces: &[String],
    calls: &[ToolUse],
    stop_reason: &str,
    usage: &Value,
    fail: bool,
) -> Vec<Bytes> {
    let mut events = vec![event("messageStart", &json!({"role": "assistant"}))];
    let delta = |p: &str| {
        event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": p}}),
        )
    };
    if fail {
        events.extend(pieces.iter().take(2).map(|p| delta(p)));
        events.push(Bytes::from(eventstream::exception(
            "modelStreamErrorException",
            br#"{"message":"The model failed while streaming its answer.","originalStatusCode":500}"#,
        )));
        return events;
    }
    events.extend(pieces.iter().map(|p| delta(p)));
    events.push(event("contentBlockStop", &json!({"contentBlockIndex": 0})));
    for (n, c) in calls.iter().enumerate() {
        let index = n + 1;
        events.push(event(
            "contentBlockStart",
            &json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": c.id, "name": c.name}}}),
        ));
        for piece in c.argument_pieces() {
            events.push(event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}),
            ));
        }
        events.push(event(
            "contentBlockStop",
            &json!({"contentBlockIndex": index}),
        ));
    }
    events.push(event("messageStop", &json!({"stopReason": stop_reason})));
    events.push(event(
        "metadata",
        &json!({"usage": usage, "metrics": {"latencyMs": 1}}),
    ));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converse_paths_carry_the_decoded_model_id() {
        assert_eq!(
            parse_path("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"),
            Some((
                "anthropic.claude-3-5-sonnet-20240620-v1:0".to_owned(),
                false
            ))
        );
        assert_eq!(
            parse_path("/bedrock/model/arn%3Aaws%3Ax%2Fy/converse-stream"),
            Some(("arn:aws:x/y".to_owned(), true))
        );
        assert_eq!(parse_path("/model//converse"), None);
        assert_eq!(parse_path("/v1/chat/completions"), None);
    }

    #[test]
    fn signatures_are_verified_against_the_known_secret() {
        let signer = sigv4::Signer::new(
            AWS_ACCESS_KEY_ID.into(),
            tollgate_core::config::Secret::new(AWS_SECRET_ACCESS_KEY.into()),
            None,
            "us-east-1".into(),
            sigv4::BEDROCK_SERVICE,
        );
        let now = SystemTime::now();
        let path = "/model/m%3A0/converse";
        let body = br#"{"messages":[]}"#;
        let s = signer.sign("POST", "127.0.0.1:9", path, body, now);
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9"));
        headers.insert("authorization", s.authorization.parse().unwrap());
        headers.insert("x-amz-date", s.amz_date.parse().unwrap());
        headers.insert("x-amz-content-sha256", s.content_sha256.parse().unwrap());
        assert!(verify("POST", path, "", &headers, body, now).is_ok());
        let kind = |r: Result<(), BedrockError>| r.err().map(|e| (e.status.as_u16(), e.kind));
        // Another body, path or host: refused.
        assert_eq!(
            kind(verify("POST", path, "", &headers, b"{}", now)),
            Some((400, "XAmzContentSHA256Mismatch"))
        );
        assert_eq!(
            kind(verify(
                "POST",
                "/model/m:0/converse",
                "",
                &headers,
                body,
                now
            )),
            Some((403, "InvalidSignatureException"))
        );
        let mut other_host = headers.clone();
        other_host.insert("host", HeaderValue::from_static("example.com"));
        assert_eq!(
            kind(verify("POST", path, "", &other_host, body, now)),
            Some((403, "InvalidSignatureException"))
        );
        // Another secret signs differently.
        let wrong = sigv4::Signer::new(
            AWS_ACCESS_KEY_ID.into(),
            tollgate_core::config::Secret::new("not-the-secret".into()),
            None,
            "us-east-1".into(),
            sigv4::BEDROCK_SERVICE,
        )
        .sign("POST", "127.0.0.1:9", path, body, now);
        let mut bad = headers.clone();
        bad.insert("authorization", wrong.authorization.parse().unwrap());
        assert_eq!(
            kind(verify("POST", path, "", &bad, body, now)),
            Some((403, "InvalidSignatureException"))
        );
        // Too old, no header at all.
        assert!(verify(
            "POST",
            path,
            "",
            &headers,
            body,
            now + Duration::from_secs(600)
        )
        .is_err());
        headers.remove("authorization");
        assert_eq!(
            kind(verify("POST", path, "", &headers, body, now)),
            Some((403, "MissingAuthenticationTokenException"))
        );
    }

    #[test]
    fn issued_credentials_need_their_session_token_signed_and_must_be_valid() {
        let issued = platform::Issued::default();
        let body = br#"{"messages":[]}"#;
        let path = "/model/m/converse";
        let now = SystemTime::now();
        // Credentials from the mock's STS, read back the way a client would.
        let xml = platform::sts(
            &issued,
            Duration::from_secs(60),
            1,
            b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&RoleSessionName=s&WebIdentityToken=a.b.c",
        );
        assert_eq!(xml.status(), StatusCode::OK);
        let creds = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(axum::body::to_bytes(xml.into_body(), 1 << 16))
            .unwrap();
        let creds =
            tollgate_extproc::aws::sts_credentials(std::str::from_utf8(&creds).unwrap(), now)
                .unwrap();
        let signer = sigv4::Signer::without_credentials("us-east-1".into(), sigv4::BEDROCK_SERVICE);
        signer.store(creds.clone());
        let s = signer
            .try_sign("POST", "127.0.0.1:9", path, body, now)
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9"));
        headers.insert("authorization", s.authorization.parse().unwrap());
        headers.insert("x-amz-date", s.amz_date.parse().unwrap());
        headers.insert("x-amz-content-sha256", s.content_sha256.parse().unwrap());
        let kind = |r: Result<(), BedrockError>| r.err().map(|e| (e.status.as_u16(), e.kind));
        // Without the session token: refused.
        assert_eq!(
            kind(verify_issued(
                "POST", path, "", &headers, body, now, &issued
            )),
            Some((403, "UnrecognizedClientException"))
        );
        headers.insert(
            "x-amz-security-token",
            s.security_token.unwrap().parse().unwrap(),
        );
        assert!(verify_issued("POST", path, "", &headers, body, now, &issued).is_ok());
        // Unknown to a mock that did not issue them; expired later.
        assert_eq!(
            kind(verify("POST", path, "", &headers, body, now)),
            Some((403, "UnrecognizedClientException"))
        );
        assert_eq!(
            kind(verify_issued(
                "POST",
                path,
                "",
                &headers,
                body,
                now + Duration::from_secs(61),
                &issued
            )),
            Some((403, "ExpiredTokenException"))
        );
        // The signer refuses to sign with expired credentials.
        assert!(signer
            .try_sign(
                "POST",
                "127.0.0.1:9",
                path,
                body,
                now + Duration::from_secs(61)
            )
            .is_none());
    }
}
