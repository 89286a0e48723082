//! End to end for feedback (issue 5): through real Envoy and a real `tollgate serve`, every
//! admitted response carries a signed `x-tollgate-feedback-token`; `POST /v1/feedback` with it
//! is recorded by a real `tollgate logger` into its NDJSON files and into a real ClickHouse,
//! naming the right request; tampered, foreign-key and expired tokens get a 401 in the
//! client's dialect, bad bodies a 400.

// Test helpers outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use tollgate_core::feedback;

const CHAT: &str = r#"{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}"#;

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A chat request with `key`: its request id and feedback token.
async fn rated(stack: &Stack, key: &str) -> (String, String) {
    let r = stack.post("/v1/chat/completions", Some(key), CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let token = r
        .header(feedback::TOKEN_HEADER)
        .unwrap_or_else(|| panic!("no feedback token on {:?}", r.headers))
        .to_owned();
    (id, token)
}

/// Gives feedback on one request, checks every refusal, and returns the rated request's id
/// and the feedback's own id.
async fn give_feedback(stack: &Stack) -> (String, String) {
    let (id, token) = rated(stack, KEY_ALL).await;
    let c = claims_of(&token);
    assert_eq!(
        (&c["request_id"], &c["key_id"], &c["tenant"]),
        (&json!(id), &json!("all"), &json!("acme")),
        "{c}"
    );
    let ttl = c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap();
    assert_eq!(ttl, 86_400, "{c}");
    // A streamed response carries one too.
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            r#"{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header(feedback::TOKEN_HEADER).is_some(),
        "{:?}",
        r.headers
    );

    let post = |body: Value, key: &'static str| {
        let body = body.to_string();
        async move { stack.post("/v1/feedback", Some(key), body).await }
    };
    let r = post(
        json!({"token": token, "score": 1, "label": "thumbs_up", "comment": "spot on"}),
        KEY_ALL,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let answer = r.json();
    assert_eq!(answer["request_id"], json!(id), "{answer}");
    assert_eq!(answer["status"], "recorded");
    let feedback_id = r.header("x-tollgate-request-id").unwrap().to_owned();
    assert_eq!(answer["id"], json!(feedback_id));

    // Tampered: another request id in the payload, the signature kept.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims_of(&token);
    forged["request_id"] = json!("ffffffffffffffffffffffffffffffff");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    let r = post(json!({"token": tampered, "score": 0}), KEY_ALL).await;
    let v = r.assert_openai_error(401, Some("invalid_feedback_token"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{v}"
    );
    // Expired (signed with the right secret, an hour ago).
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = feedback::sign(
        FEEDBACK_SECRET.as_bytes(),
        &feedback::Claims {
            request_id: id.clone(),
            key_id: "all".into(),
            tenant: "acme".into(),
            iat: now - 7200,
            exp: now - 3600,
        },
    );
    let r = post(json!({"token": expired, "score": 1}), KEY_ALL).await;
    let v = r.assert_openai_error(401, Some("invalid_feedback_token"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("expired"),
        "{v}"
    );
    // Signed with another secret.
    let foreign = feedback::sign(
        b"not-the-gateway-secret-not-the-gateway-secret",
        &feedback::Claims {
            request_id: id.clone(),
            key_id: "all".into(),
            tenant: "acme".into(),
            iat: now,
            exp: now + 60,
        },
    );
    let r = post(json!({"token": foreign, "score": 1}), KEY_ALL).await;
    r.assert_openai_error(401, Some("invalid_feedback_token"));
    // Another key's token.
    let (_, limited_token) = rated(stack, KEY_LIMITED).await;
    let r = post(json!({"token": limited_token, "score": 1}), KEY_ALL).await;
    let v = r.assert_openai_error(401, Some("invalid_feedback_token"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another API key"),
        "{v}"
    );
    // Anthropic clients get Anthropic's error shape.
    let r = stack
        .http
        .post(format!("{}/v1/feedback", stack.base))
        .header("x-api-key", KEY_ALL)
        .header("anthropic-version", "2023-06-01")
        .body(json!({"token": tampered, "score": 0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (&v["type"], &v["error"]["type"]),
        (&json!("error"), &json!("authentication_error")),
        "{v}"
    );
    // Bad bodies.
    let r = stack.post("/v1/feedback", Some(KEY_ALL), "{not json").await;
    r.assert_openai_error(400, Some("invalid_json"));
    let r = post(
        json!({"token": token, "score": 1, "comment": "x".repeat(65)}),
        KEY_ALL,
    )
    .await;
    let v = r.assert_openai_error(400, Some("invalid_value"));
    assert_eq!(v["error"]["param"], "comment");
    (id, feedback_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_with_the_response_token_lands_in_the_ndjson_sink_naming_its_request() {
    let logged = LoggedStack::ndjson();
    let (stack, logger) = (&logged.stack, &logged.logger);
    let (id, feedback_id) = give_feedback(stack).await;

    let data = logger.data_dir.clone();
    let start = Instant::now();
    let mut stored = Vec::new();
    while stored.is_empty() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stored = tollgate_logger::ndjson::read_feedback(&data).unwrap();
    }
    // A little longer, to catch any extra record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = tollgate_logger::ndjson::read_feedback(&data).unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let f = &stored[0];
    assert_eq!(
        (
            f.feedback_id.as_str(),
            f.request_id.as_str(),
            f.key_id.as_str(),
            f.tenant.as_str()
        ),
        (feedback_id.as_str(), id.as_str(), "all", "acme")
    );
    assert_eq!(
        (f.score, f.label.as_str(), f.comment.as_str()),
        (Some(1.0), "thumbs_up", "spot on")
    );
    // The rated request is in the request files; the feedback is not.
    let lines = logger.lines();
    assert!(lines.iter().any(|l| l["request_id"] == json!(id)));
    assert!(
        !lines.iter().any(|l| l["request_id"] == json!(feedback_id)),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_with_the_response_token_lands_in_clickhouse_naming_its_request() {
    let logged = LoggedStack::clickhouse("tg_e2e");
    let (stack, ch) = (&logged.stack, logged.ch());
    let (id, feedback_id) = give_feedback(stack).await;
    let sql = "SELECT feedback_id, request_id, key_id, tenant, score, label, comment \
               FROM tg_e2e.requests_feedback FORMAT TSV";
    let start = Instant::now();
    let mut rows = String::new();
    while rows.is_empty() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows = ch.query(sql).unwrap_or_default();
    }
    assert_eq!(
        rows,
        format!("{feedback_id}\t{id}\tall\tacme\t1\tthumbs_up\tspot on\n")
    );
    // The rated request itself is in the requests table.
    let start = Instant::now();
    let mut found = String::new();
    while found.trim() != "1" && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = ch
            .query(&format!(
                "SELECT count() FROM tg_e2e.requests WHERE request_id = '{id}'"
            ))
            .unwrap_or_default();
    }
    assert_eq!(found.trim(), "1");
}
