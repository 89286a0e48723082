//! ext_authz decision tests.

use std::sync::Arc;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::google::protobuf::value::Kind;
use time::macros::datetime;
use tollgate_core::env::MapEnv;
use tollgate_core::keys::{format_hash, hash_key};
use tollgate_core::metrics::Metrics;
use tollgate_core::Config;

use super::*;

/// Runs a decision to its end (the in-process ledger answers at once).
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn service() -> AuthzService {
    let yaml = format!(
        r#"
providers:
  mock: {{ kind: openai, base_url: "http://127.0.0.1:1/v1" }}
models:
  m1: {{ targets: [{{ provider: mock, model: m1 }}] }}
keys:
  - {{ id: good, hash: "{}", tenant: acme, team: ml, models: [m1] }}
  - {{ id: old, hash: "{}", models: ["*"], expires_at: 2020-01-01T00:00:00Z }}
  - {{ id: off, hash: "{}", models: ["*"], disabled: true }}
  - {{ id: slow, hash: "{}", tenant: small, models: ["*"], requests_per_minute: 3 }}
  - {{ id: slow2, hash: "{}", tenant: small, models: ["*"] }}
tenants:
  small: {{ requests_per_minute: 4 }}
"#,
        format_hash(&hash_key("tg-good")),
        format_hash(&hash_key("tg-old")),
        format_hash(&hash_key("tg-off")),
        format_hash(&hash_key("tg-slow")),
        format_hash(&hash_key("tg-slow2")),
    );
    let config = Config::from_yaml(&yaml, &MapEnv::default()).unwrap();
    AuthzService::new(Arc::new(ArcSwap::from_pointee(config)), Metrics::default())
}

fn check_request(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn check(path: &str, headers: &[(&str, &str)]) -> CheckResponse {
    block(service().decide(
        &check_request(path, headers),
        datetime!(2026-06-01 0:00 UTC),
    ))
}

fn denied(resp: &CheckResponse) -> (i32, serde_json::Value, Vec<(String, String)>) {
    match resp.http_response.as_ref().unwrap() {
        HttpResponse::DeniedResponse(d) => (
            d.status.as_ref().unwrap().code,
            serde_json::from_str(&d.body).unwrap(),
            d.headers
                .iter()
                .map(|h| {
                    let h = h.header.as_ref().unwrap();
                    (h.key.clone(), h.value.clone())
                })
                .collect(),
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn field(resp: &CheckResponse, name: &str) -> Kind {
    resp.dynamic_metadata.as_ref().unwrap().fields[name]
        .kind
        .clone()
        .unwrap()
}

#[test]
fn a_valid_bearer_key_is_allowed_and_its_bundle_travels_as_metadata() {
    let resp = check(
        "/v1/chat/completions",
        &[("authorization", "Bearer tg-good")],
    );
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    assert_eq!(field(&resp, "key_id"), Kind::StringValue("good".into()));
    assert_eq!(field(&resp, "tenant"), Kind::StringValue("acme".into()));
    assert_eq!(field(&resp, "team"), Kind::StringValue("ml".into()));
    assert_eq!(
        field(&resp, "path"),
        Kind::StringValue("/v1/chat/completions".into())
    );
    let Kind::ListValue(models) = field(&resp, "models") else {
        panic!("models is not a list")
    };
    assert_eq!(models.values.len(), 1);
    let Kind::StringValue(rid) = field(&resp, "request_id") else {
        panic!("no request id")
    };
    assert_eq!(rid.len(), 32);
    let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
        panic!("not ok")
    };
    for h in KEY_HEADERS.iter().chain(&["x-tollgate-cluster"]) {
        assert!(ok.headers_to_remove.iter().any(|r| r == h), "{h} kept");
    }
    let added = ok.response_headers_to_add[0].header.as_ref().unwrap();
    assert_eq!(
        (added.key.as_str(), added.value.as_str()),
        ("x-tollgate-request-id", rid.as_str())
    );
}

#[test]
fn keys_are_read_from_every_supported_header() {
    for h in ["x-api-key", "api-key", "x-goog-api-key"] {
        let resp = check("/v1/chat/completions", &[(h, "tg-good")]);
        assert_eq!(resp.status.unwrap().code, 0, "{h}");
    }
    let resp = check(
        "/v1/chat/completions",
        &[("authorization", "bearer  tg-good ")],
    );
    assert_eq!(resp.status.unwrap().code, 0);
}

#[test]
fn refusals_are_401s_in_the_clients_dialect() {
    let (status, body, headers) = denied(&check("/v1/chat/completions", &[]));
    assert_eq!(status, 401);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API key"));
    assert!(headers.iter().any(|(k, _)| k == "x-tollgate-request-id"));
    assert!(headers.contains(&("content-type".into(), "application/json".into())));

    let (status, body, _) = denied(&check("/v1/models", &[("authorization", "Bearer tg-bad")]));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (_, body, _) = denied(&check("/v1/x", &[("authorization", "Bearer tg-old")]));
    assert_eq!(body["error"]["code"], "expired_api_key");
    let (_, body, _) = denied(&check("/v1/x", &[("authorization", "Bearer tg-off")]));
    assert_eq!(body["error"]["code"], "disabled_api_key");
    let (_, body, _) = denied(&check("/v1/messages", &[("x-api-key", "nope")]));
    assert_eq!(body["error"]["type"], "authentication_error");
}

#[test]
fn a_refusal_never_echoes_the_presented_key() {
    let resp = check(
        "/v1/chat/completions",
        &[("authorization", "Bearer tg-secret-123")],
    );
    assert!(!format!("{resp:?}").contains("tg-secret-123"));
}

#[test]
fn a_refusal_becomes_a_log_event_with_the_key_owner_when_known() {
    let s = service();
    let config = s.gate.config.load();
    let bundle = config.key(&hash_key("tg-old")).unwrap();
    let now = datetime!(2026-01-02 03:04:05 UTC);
    let e = denied_event(
        "rid",
        Some(bundle),
        "/v1/chat/completions?x=1",
        "POST",
        &ApiError::ExpiredKey,
        now,
    );
    assert_eq!(e.request_id, "rid");
    assert_eq!((e.key_id.as_str(), e.http_status), ("old", 401));
    assert_eq!(e.error_class, "expired_api_key");
    assert_eq!(
        (e.client_api.as_str(), e.endpoint.as_str()),
        ("openai", "chat_completions")
    );
    assert_eq!(e.start_time_unix_nanos, 1_767_323_045_000_000_000);
    assert!(e.usage.is_none());

    let e = denied_event(
        "rid",
        None,
        "/v1/messages",
        "POST",
        &ApiError::MissingKey,
        now,
    );
    assert_eq!(
        (e.key_id.as_str(), e.error_class.as_str()),
        ("", "missing_api_key")
    );
    assert_eq!(
        (e.client_api.as_str(), e.endpoint.as_str()),
        ("anthropic", "messages")
    );
}

fn request(path: &str, key: &str) -> CheckRequest {
    check_request(path, &[("authorization", &format!("Bearer {key}"))])
}

fn ok_headers(resp: &CheckResponse) -> HashMap<String, String> {
    match resp.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => ok
            .response_headers_to_add
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect(),
        other => panic!("expected an allow, got {other:?}"),
    }
}

#[test]
fn request_rate_limits_of_key_and_tenant_answer_429_with_retry_after() {
    let svc = service();
    let t0 = datetime!(2026-06-01 0:00 UTC);
    let chat = "/v1/chat/completions";
    // The key allows 3 per minute: three pass, counting down in OpenAI's headers.
    for remaining in ["2", "1", "0"] {
        let h = ok_headers(&block(svc.decide(&request(chat, "tg-slow"), t0)));
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(h["x-ratelimit-remaining-requests"], remaining);
        assert!(h.contains_key("x-ratelimit-reset-requests"));
    }
    let (status, body, headers) = denied(&block(svc.decide(&request(chat, "tg-slow"), t0)));
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("this key: 3 per minute"));
    assert!(
        headers.contains(&("retry-after".into(), "20".into())),
        "{headers:?}"
    );
    // In Anthropic's dialect for Anthropic clients.
    let (status, body, _) = denied(&block(svc.decide(&request("/v1/messages", "tg-slow"), t0)));
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (429, Some("rate_limit_error"))
    );
    // The tenant allows 4 for all its keys: one more for the other key, then the tenant says no.
    assert!(
        ok_headers(&block(svc.decide(&request(chat, "tg-slow2"), t0)))
            .contains_key("x-ratelimit-limit-requests")
    );
    let (status, body, _) = denied(&block(svc.decide(&request(chat, "tg-slow2"), t0)));
    assert_eq!(status, 429);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("this tenant: 4 per minute"));
    // A key without limits gets no rate headers; 20 s later the first key may go again.
    assert!(
        !ok_headers(&block(svc.decide(&request(chat, "tg-good"), t0)))
            .contains_key("x-ratelimit-limit-requests")
    );
    let later = t0 + time::Duration::seconds(20);
    assert!(matches!(
        block(svc.decide(&request(chat, "tg-slow"), later)).http_response,
        Some(HttpResponse::OkResponse(_))
    ));
}

#[test]
fn a_refused_request_rate_says_when_the_limit_resets() {
    let svc = service();
    let t0 = datetime!(2026-06-01 0:00 UTC);
    for _ in 0..3 {
        block(svc.decide(&request("/v1/chat/completions", "tg-slow"), t0));
    }
    let (status, _, headers) = denied(&block(
        svc.decide(&request("/v1/chat/completions", "tg-slow"), t0),
    ));
    assert_eq!(status, 429);
    let h: HashMap<String, String> = headers.into_iter().collect();
    assert_eq!(h["x-ratelimit-limit-requests"], "3");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    // Three taken at once: whole again in a minute.
    assert_eq!(h["x-ratelimit-reset-requests"], "1m0s");
}

#[test]
fn the_key_may_come_in_the_query_string_and_goes_no_further() {
    assert_eq!(
        query_key("/v1beta/models/g:generateContent?key=tg-good").as_deref(),
        Some("tg-good")
    );
    assert_eq!(
        query_key("/x?alt=sse&key=tg%2Dgood").as_deref(),
        Some("tg-good")
    );
    assert_eq!(query_key("/x?keys=1&apikey=2"), None);
    assert_eq!(query_key("/x?key="), None);
    assert_eq!(query_key("/x"), None);
    assert_eq!(without_query_key("/x?key=a"), "/x");
    assert_eq!(without_query_key("/x?alt=sse&key=a&b=c"), "/x?alt=sse&b=c");
    assert_eq!(without_query_key("/x?keys=1"), "/x?keys=1");
    assert_eq!(without_query_key("/x"), "/x");

    let path = "/v1beta/models/m1:generateContent?alt=sse&key=tg-good";
    let resp = check(path, &[]);
    assert_eq!(resp.status.as_ref().unwrap().code, 0, "{resp:?}");
    // ext_proc reads the path without the key; Envoy drops it before the request goes on.
    assert_eq!(
        field(&resp, "path"),
        Kind::StringValue("/v1beta/models/m1:generateContent?alt=sse".into())
    );
    match resp.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => assert_eq!(ok.query_parameters_to_remove, ["key"]),
        other => panic!("expected an allow, got {other:?}"),
    }
    // A header wins over the query; a wrong query key is Gemini's 401.
    let resp = check(
        "/v1beta/models/m1:generateContent?key=tg-bad",
        &[("x-goog-api-key", "tg-good")],
    );
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    let (status, body, _) = denied(&check("/v1beta/models/m1:generateContent?key=tg-bad", &[]));
    assert_eq!(status, 401);
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED", "{body}");
}
