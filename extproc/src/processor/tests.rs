//! Processor tests driven by hand-made ext_proc messages.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders};
use envoy_types::pb::google::protobuf::{Struct, Value};
use tollgate_core::env::MapEnv;

use super::*;

const CONFIG: &str = r#"
providers: { p: { kind: openai, base_url: "http://127.0.0.1:1/v1" } }
models: { m: { targets: [{ provider: p, model: m }] } }
guardrails:
  policies:
    strict: { rules: [{ id: cards, detector: credit_card, action: block }] }
"#;

fn message(request: Request, metadata: &[(&str, &str)]) -> ProcessingRequest {
    let fields: HashMap<String, Value> = metadata
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value {
                    kind: Some(Kind::StringValue((*v).to_owned())),
                },
            )
        })
        .collect();
    let mut fields = fields;
    fields.insert(
        md::MODELS.to_owned(),
        Value {
            kind: Some(Kind::ListValue(
                envoy_types::pb::google::protobuf::ListValue {
                    values: vec![Value {
                        kind: Some(Kind::StringValue("*".to_owned())),
                    }],
                },
            )),
        },
    );
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(md::NAMESPACE.to_owned(), Struct { fields });
    ProcessingRequest {
        request: Some(request),
        metadata_context: Some(Metadata {
            filter_metadata,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn headers(path: &str, extra: &[(&str, &str)]) -> Request {
    let mut list = vec![(":path", path), (":method", "POST")];
    list.extend_from_slice(extra);
    Request::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: list
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        end_of_stream: false,
        ..Default::default()
    })
}

fn body(text: &str) -> Request {
    Request::RequestBody(HttpBody {
        body: text.as_bytes().to_vec(),
        end_of_stream: true,
        ..Default::default()
    })
}

/// Sends the headers and body of a request from a key whose policy is `policy` (as ext_authz
/// saw it) and returns the immediate response, if any.
async fn immediate(
    path: &str,
    extra: &[(&str, &str)],
    policy: &str,
) -> Option<(i32, serde_json::Value)> {
    let config = Config::from_yaml(CONFIG, &MapEnv::from_pairs([])).unwrap();
    let mut p = Processor::new(Arc::new(config), Metrics::default());
    let metadata = [
        (md::KEY_ID, "k"),
        (md::PATH, path),
        (md::METHOD, "POST"),
        (md::REQUEST_ID, "rid"),
        (md::GUARDRAILS, policy),
    ];
    p.handle(message(headers(path, extra), &metadata))
        .await
        .unwrap();
    let r = p
        .handle(message(
            body(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#),
            &metadata,
        ))
        .await
        .unwrap();
    match r.response {
        Some(Response::ImmediateResponse(i)) => Some((
            i.status.unwrap().code,
            serde_json::from_slice(&i.body).unwrap(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn a_key_whose_policy_vanished_is_refused_naming_the_policy_not_served_unguarded() {
    let (status, body) = immediate("/v1/chat/completions", &[], "gone")
        .await
        .unwrap();
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "guardrail_policy_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`gone`"),
        "{body}"
    );
    let (status, body) = immediate(
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        "gone",
    )
    .await
    .unwrap();
    assert_eq!(status, 500);
    assert_eq!(
        (&body["type"], &body["error"]["type"]),
        (&serde_json::json!("error"), &serde_json::json!("api_error"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`gone`"));
    // The policy that exists lets a clean request through to routing.
    assert!(immediate("/v1/chat/completions", &[], "strict")
        .await
        .is_none());
}

/// A processor whose config has one key (`tg-k`, every model) and which asks the key gate at
/// the request headers, as in the `envoy.auth: ext_proc` bootstrap.
fn gated() -> (Processor, Metrics) {
    let yaml = format!(
        "{CONFIG}keys: [{{ id: k, hash: \"{}\", tenant: acme, models: [\"*\"] }}]\n",
        tollgate_core::keys::format_hash(&tollgate_core::keys::hash_key("tg-k"))
    );
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(
        Config::from_yaml(&yaml, &MapEnv::from_pairs([])).unwrap(),
    ));
    let metrics = Metrics::default();
    let gate = Gate::new(Arc::clone(&shared), metrics.clone());
    let p = Processor::new(shared.load_full(), metrics.clone()).with_gate(Some(gate));
    (p, metrics)
}

/// A provider's `200` response headers.
fn ok_response_headers() -> Request {
    Request::ResponseHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: vec![HeaderValue {
                key: ":status".into(),
                raw_value: b"200".to_vec(),
                ..Default::default()
            }],
        }),
        ..Default::default()
    })
}

fn bare(request: Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

fn set_headers(r: &ProcessingResponse) -> Vec<(String, String)> {
    let common = match &r.response {
        Some(Response::RequestHeaders(h) | Response::ResponseHeaders(h)) => h.response.as_ref(),
        Some(Response::RequestBody(b)) => b.response.as_ref(),
        _ => None,
    };
    common
        .and_then(|c| c.header_mutation.as_ref())
        .map(|m| {
            m.set_headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| {
                    (
                        h.key.clone(),
                        String::from_utf8_lossy(&h.raw_value).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn without_ext_authz_the_gate_admits_at_the_request_headers_and_strips_the_key() {
    let (mut p, metrics) = gated();
    let path = "/v1/chat/completions";
    let r = p
        .handle(bare(headers(
            path,
            &[("authorization", "Bearer tg-k"), (md::ROUTE_HEADER, "evil")],
        )))
        .await
        .unwrap();
    let Some(Response::RequestHeaders(h)) = &r.response else {
        panic!("not a headers response: {r:?}");
    };
    let removed = &h
        .response
        .as_ref()
        .unwrap()
        .header_mutation
        .as_ref()
        .unwrap()
        .remove_headers;
    for name in [
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        md::ROUTE_HEADER,
    ] {
        assert!(
            removed.iter().any(|h| h == name),
            "{name} kept: {removed:?}"
        );
    }
    let r = p
        .handle(bare(body(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .await
        .unwrap();
    let routed = set_headers(&r);
    assert!(
        routed
            .iter()
            .any(|(k, v)| k == md::ROUTE_HEADER && !v.is_empty() && v != "evil"),
        "{routed:?}"
    );
    let r = p.handle(bare(ok_response_headers())).await.unwrap();
    let answered = set_headers(&r);
    let id = answered
        .iter()
        .find(|(k, _)| k == md::REQUEST_ID_HEADER)
        .map(|(_, v)| v.clone());
    assert_eq!(id.map(|v| v.len()), Some(32), "{answered:?}");
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("decision=\"allow\""), "{text}");
}

#[tokio::test]
async fn without_ext_authz_a_bad_key_is_refused_in_the_clients_dialect() {
    for (path, key, status, check) in [
        ("/v1/chat/completions", None, 401, "/error/code"),
        ("/v1/messages", Some("tg-nope"), 401, "/error/type"),
        (
            "/v1beta/models/m:generateContent",
            Some("tg-nope"),
            401,
            "/error/status",
        ),
    ] {
        let (mut p, _) = gated();
        let extra: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let r = p.handle(bare(headers(path, &extra))).await.unwrap();
        let Some(Response::ImmediateResponse(i)) = r.response else {
            panic!("{path}: not refused");
        };
        assert_eq!(i.status.unwrap().code, status, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&i.body).unwrap();
        let expected = match check {
            "/error/code" => serde_json::Value::Null,
            "/error/type" => serde_json::json!("authentication_error"),
            _ => serde_json::json!("UNAUTHENTICATED"),
        };
        assert_eq!(v.pointer(check), Some(&expected), "{path}: {v}");
        let named = i.headers.unwrap().set_headers.iter().any(|h| {
            h.header
                .as_ref()
                .is_some_and(|h| h.key == md::REQUEST_ID_HEADER)
        });
        assert!(named, "{path}: no request id");
    }
}

#[tokio::test]
async fn an_unknown_model_name_is_one_metric_label_not_one_series_per_name() {
    let (mut p, metrics) = gated();
    let path = "/v1/chat/completions";
    p.handle(bare(headers(path, &[("authorization", "Bearer tg-k")])))
        .await
        .unwrap();
    p.handle(bare(body(
        r#"{"model":"made-up-1234","messages":[{"role":"user","content":"hi"}]}"#,
    )))
    .await
    .unwrap();
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains("made-up-1234"), "{text}");
    assert!(text.contains("model=\"unknown\""), "{text}");
}

/// A gated processor (keys `tg-k`, and `tg-g` under the `strict` policy) recording every
/// request's span into the returned queue.
fn traced() -> (
    Processor,
    tokio::sync::mpsc::Receiver<tollgate_proto::otlp::trace::Span>,
) {
    let hash = |k: &str| tollgate_core::keys::format_hash(&tollgate_core::keys::hash_key(k));
    let yaml = format!(
        "{CONFIG}keys:\n  - {{ id: k, hash: \"{}\", tenant: acme, team: ml, models: [\"*\"] }}\n  - {{ id: g, hash: \"{}\", models: [\"*\"], guardrails: strict }}\n",
        hash("tg-k"),
        hash("tg-g"),
    );
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(
        Config::from_yaml(&yaml, &MapEnv::from_pairs([])).unwrap(),
    ));
    let metrics = Metrics::default();
    let gate = Gate::new(Arc::clone(&shared), metrics.clone());
    let (tracer, spans) = crate::trace::Tracer::channel(0.0, 8, metrics.clone());
    let p = Processor::new(shared.load_full(), metrics)
        .with_gate(Some(gate))
        .with_tracer(Some(tracer), None);
    (p, spans)
}

/// A sampled `traceparent` a client sent.
const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A [`traced`] processor given the headers (key `key`, [`PARENT`]) and the body of a chat
/// request; its answer to the body.
async fn traced_request(
    key: &str,
    json: &str,
) -> (
    Processor,
    tokio::sync::mpsc::Receiver<tollgate_proto::otlp::trace::Span>,
    ProcessingResponse,
) {
    let (mut p, spans) = traced();
    let auth = format!("Bearer {key}");
    p.handle(bare(headers(
        "/v1/chat/completions",
        &[("authorization", &auth), ("traceparent", PARENT)],
    )))
    .await
    .unwrap();
    let r = p.handle(bare(body(json))).await.unwrap();
    (p, spans, r)
}

fn response_body(chunk: &str, end: bool) -> ProcessingRequest {
    bare(Request::ResponseBody(HttpBody {
        body: chunk.as_bytes().to_vec(),
        end_of_stream: end,
        ..Default::default()
    }))
}

/// A span's attributes as JSON-ish values, by key.
fn attributes(
    list: &[tollgate_proto::otlp::common::KeyValue],
) -> HashMap<String, serde_json::Value> {
    use tollgate_proto::otlp::common::any_value::Value as V;
    list.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(V::StringValue(s)) => serde_json::json!(s),
                Some(V::IntValue(i)) => serde_json::json!(i),
                Some(V::BoolValue(b)) => serde_json::json!(b),
                Some(V::DoubleValue(d)) => serde_json::json!(d),
                Some(V::ArrayValue(a)) => serde_json::Value::Array(
                    a.values
                        .iter()
                        .map(|v| match &v.value {
                            Some(V::StringValue(s)) => serde_json::json!(s),
                            other => serde_json::json!(format!("{other:?}")),
                        })
                        .collect(),
                ),
                other => serde_json::json!(format!("{other:?}")),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tokio::test]
async fn a_finished_stream_leaves_one_span_in_the_callers_trace_with_genai_attributes() {
    let (mut p, mut spans, routed) = traced_request(
        "tg-k",
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"the secret prompt"}]}"#,
    )
    .await;
    // The provider's request carries this span as its parent.
    let upstream_parent = set_headers(&routed)
        .into_iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v)
        .unwrap();
    assert!(
        upstream_parent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{upstream_parent}"
    );
    p.handle(bare(ok_response_headers())).await.unwrap();
    for (chunk, end) in [
        (
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"m-2024-01\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"the secret answer\"},\"finish_reason\":null}]}\n\n",
            false,
        ),
        (
            "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"m-2024-01\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"model\":\"m-2024-01\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n",
            false,
        ),
        ("data: [DONE]\n\n", true),
    ] {
        p.handle(response_body(chunk, end)).await.unwrap();
    }
    let span = spans.try_recv().unwrap();
    assert!(spans.try_recv().is_err(), "one span per request");
    assert_eq!(
        crate::trace::hex(&span.trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(crate::trace::hex(&span.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        upstream_parent,
        format!(
            "00-0af7651916cd43dd8448eb211c80319c-{}-01",
            crate::trace::hex(&span.span_id)
        )
    );
    assert_eq!(span.name, "chat m");
    assert_eq!(
        span.kind,
        i32::from(tollgate_proto::otlp::trace::span::SpanKind::Client)
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let a = attributes(&span.attributes);
    for (key, value) in [
        ("gen_ai.operation.name", serde_json::json!("chat")),
        ("gen_ai.provider.name", serde_json::json!("openai")),
        ("gen_ai.system", serde_json::json!("openai")),
        ("gen_ai.request.model", serde_json::json!("m")),
        ("gen_ai.response.model", serde_json::json!("m-2024-01")),
        ("gen_ai.response.id", serde_json::json!("chatcmpl-9")),
        (
            "gen_ai.response.finish_reasons",
            serde_json::json!(["stop"]),
        ),
        ("gen_ai.usage.input_tokens", serde_json::json!(7)),
        ("gen_ai.usage.output_tokens", serde_json::json!(3)),
        ("server.address", serde_json::json!("127.0.0.1")),
        ("server.port", serde_json::json!(1)),
        ("http.response.status_code", serde_json::json!(200)),
        ("tollgate.key_id", serde_json::json!("k")),
        ("tollgate.tenant", serde_json::json!("acme")),
        ("tollgate.team", serde_json::json!("ml")),
        ("tollgate.provider", serde_json::json!("p")),
        ("tollgate.stream", serde_json::json!(true)),
    ] {
        assert_eq!(a.get(key), Some(&value), "{key}: {a:?}");
    }
    assert_eq!(a["tollgate.request_id"].as_str().map(str::len), Some(32));
    assert!(!a.contains_key("error.type"), "{a:?}");
    let events: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["tollgate.attempt", "tollgate.first_token"]);
    // Neither the prompt nor the answer, nor the key, is in the span.
    let wire = prost::Message::encode_to_vec(&span);
    for secret in [&b"secret"[..], b"tg-k"] {
        assert!(
            !wire.windows(secret.len()).any(|w| w == secret),
            "{:?} in the span",
            String::from_utf8_lossy(secret)
        );
    }
}

#[tokio::test]
async fn a_blocked_request_is_an_error_span_with_its_verdict_and_no_attempt() {
    let (p, mut spans, r) = traced_request(
        "tg-g",
        r#"{"model":"m","messages":[{"role":"user","content":"card 4111 1111 1111 1111"}]}"#,
    )
    .await;
    assert!(matches!(r.response, Some(Response::ImmediateResponse(_))));
    drop(p);
    let span = spans.try_recv().unwrap();
    let a = attributes(&span.attributes);
    assert_eq!(a["error.type"], "guardrail_blocked", "{a:?}");
    assert_eq!(a["gen_ai.request.model"], "m");
    assert!(!a.contains_key("gen_ai.response.model"), "{a:?}");
    let status = span.status.unwrap();
    assert_eq!(
        status.code,
        i32::from(tollgate_proto::otlp::trace::status::StatusCode::Error)
    );
    let [verdict] = span.events.as_slice() else {
        panic!("{:?}", span.events);
    };
    assert_eq!(verdict.name, "tollgate.guardrail");
    let v = attributes(&verdict.attributes);
    assert_eq!(
        (
            &v["tollgate.guardrail.rule"],
            &v["tollgate.guardrail.action"],
            &v["tollgate.guardrail.side"]
        ),
        (
            &serde_json::json!("cards"),
            &serde_json::json!("block"),
            &serde_json::json!("request")
        )
    );
    // Not sampled (ratio 0, no parent): nothing is recorded.
    let (mut p, mut spans) = traced();
    p.handle(bare(headers(
        "/v1/chat/completions",
        &[("authorization", "Bearer tg-k")],
    )))
    .await
    .unwrap();
    p.handle(bare(body(r#"{"model":"m","messages":[]}"#)))
        .await
        .unwrap();
    drop(p);
    assert!(spans.try_recv().is_err());
}

/// The immediate response to `text` sent to `path` by a key allowed every model.
async fn answer(path: &str, text: &str) -> (i32, serde_json::Value) {
    let config = Config::from_yaml(CONFIG, &MapEnv::from_pairs([])).unwrap();
    let mut p = Processor::new(Arc::new(config), Metrics::default());
    let metadata = [
        (md::KEY_ID, "k"),
        (md::PATH, path),
        (md::METHOD, "POST"),
        (md::REQUEST_ID, "rid"),
    ];
    p.handle(message(headers(path, &[]), &metadata)).await;
    let r = p.handle(message(body(text), &metadata)).await.unwrap();
    match r.response {
        Some(Response::ImmediateResponse(i)) => (
            i.status.unwrap().code,
            serde_json::from_slice(&i.body).unwrap(),
        ),
        other => panic!("no immediate response: {other:?}"),
    }
}

#[tokio::test]
async fn a_body_over_the_shape_limits_is_a_400_in_the_clients_dialect() {
    let mut wide = String::from(r#"{"model":"m","messages":[]"#);
    for i in 0..100_000 {
        wide.push_str(&format!(",\"x{i}\":{i}"));
    }
    wide.push('}');
    let deep = format!(
        r#"{{"model":"m","messages":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for body in [&wide, &deep] {
        let started = std::time::Instant::now();
        let (status, v) = answer("/v1/chat/completions", body).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["code"], "request_too_complex", "{v}");
        let (status, v) = answer("/v1/messages", body).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let (status, v) = answer("/v1beta/models/m:generateContent", body).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
        // Refused after one linear scan (the quadratic parse took seconds at 40,000 members).
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_huge_model_name_is_not_echoed_back() {
    let huge = "m".repeat(1 << 20);
    let (status, v) = answer(
        "/v1/chat/completions",
        &format!(r#"{{"model":"{huge}","messages":[]}}"#),
    )
    .await;
    assert_eq!(status, 404);
    assert!(v.to_string().len() < 2048, "{} bytes", v.to_string().len());
    let (status, v) = answer(&format!("/v1beta/models/{huge}:generateContent"), "{}").await;
    assert_eq!(status, 404);
    assert!(v.to_string().len() < 2048, "{} bytes", v.to_string().len());
}

#[tokio::test]
#[ignore = "a measurement: cargo nextest run -p tollgate-extproc --run-ignored only profile_wide_bodies --no-capture"]
async fn profile_wide_bodies() {
    let yaml = format!("{CONFIG}limits: {{ max_json_members: 1000000 }}\n");
    let config = Arc::new(Config::from_yaml(&yaml, &MapEnv::from_pairs([])).unwrap());
    for n in [10_000, 40_000, 100_000] {
        let mut wide = String::from(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]"#,
        );
        for i in 0..n {
            wide.push_str(&format!(",\"x{i}\":{i}"));
        }
        wide.push('}');
        for path in ["/v1/chat/completions", "/v1/messages"] {
            let mut p = Processor::new(Arc::clone(&config), Metrics::default());
            let metadata = [
                (md::KEY_ID, "k"),
                (md::PATH, path),
                (md::METHOD, "POST"),
                (md::REQUEST_ID, "rid"),
            ];
            p.handle(message(headers(path, &[]), &metadata)).await;
            let started = std::time::Instant::now();
            p.handle(message(body(&wide), &metadata)).await;
            eprintln!("{n} members, {path}: {:?}", started.elapsed());
        }
    }
}

/// Collects the batches a [`tollgate_logger::Shipper`] sends.
#[derive(Clone, Default)]
struct Collect(Arc<std::sync::Mutex<Vec<tollgate_proto::logger::v1::LogEvent>>>);

#[tonic::async_trait]
impl tollgate_logger::shipper::Transport for Collect {
    async fn send(
        &mut self,
        batch: tollgate_proto::logger::v1::LogBatch,
    ) -> Result<tollgate_proto::logger::v1::IngestAck, tonic::Status> {
        self.0.lock().unwrap().extend(batch.events);
        Ok(Default::default())
    }
}

use tollgate_core::budget::{Balance, MemoryLedger};

/// How a budgeted request's response goes.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// A stream with its usage chunk, to the end.
    StreamWithUsage,
    /// The client cancels after the first chunk (Envoy drops the ext_proc stream).
    ClientCancels,
    /// The client cancels after a chunk that carried usage so far (as Anthropic's
    /// `message_start` does: the prompt only), before the stream's end.
    ClientCancelsAfterPartialUsage,
    /// The provider sends an error event mid-stream and ends it.
    ErrorMidStream,
    /// A whole stream without a usage chunk.
    StreamWithoutUsage,
    /// A complete (non-stream) 200 without `usage`.
    CompleteWithoutUsage,
    /// Envoy resets the ext_proc stream (upstream timeout, reset) after the first chunk.
    Reset,
    /// The provider answers 500 before any body: nothing to bill.
    UpstreamError,
}

/// Runs one budgeted request (`m` at 1 and 2 USD per million tokens) through a gated
/// processor with a memory ledger and a shipper; returns the tenant's line balance and the
/// request's log event.
async fn billed(ending: Ending) -> (Balance, tollgate_proto::logger::v1::LogEvent) {
    let yaml = format!(
        "{CONFIG}keys: [{{ id: k, hash: \"{}\", tenant: acme, models: [\"*\"] }}]\n\
         pricing: {{ models: {{ m: {{ input: \"1\", output: \"2\" }} }} }}\n\
         budgets: {{ limits: [{{ id: acme, scope: tenant, name: acme, period: total, amount_usd: \"10\" }}] }}\n",
        tollgate_core::keys::format_hash(&tollgate_core::keys::hash_key("tg-k"))
    );
    let shared = Arc::new(arc_swap::ArcSwap::from_pointee(
        Config::from_yaml(&yaml, &MapEnv::from_pairs([])).unwrap(),
    ));
    let metrics = Metrics::default();
    let gate = Gate::new(Arc::clone(&shared), metrics.clone());
    let memory = Arc::new(MemoryLedger::new());
    let ledger: Arc<dyn Ledger> = Arc::clone(&memory) as Arc<dyn Ledger>;
    let dir = tempfile::tempdir().unwrap();
    let collect = Collect::default();
    let shipper = tollgate_logger::Shipper::start_with(
        collect.clone(),
        Arc::new(tollgate_logger::spool::Spool::open(dir.path(), 1 << 20).unwrap()),
        tollgate_logger::shipper::ShipperOptions {
            batch_size: 10,
            max_delay: Duration::from_millis(1),
            queue_capacity: 10,
            attempts: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        },
        metrics.clone(),
    );
    let mut p = Processor::new(shared.load_full(), metrics)
        .with_gate(Some(gate))
        .with_ledger(Some(Arc::clone(&ledger)))
        .with_log(Some(shipper.handle()));
    let stream = !matches!(ending, Ending::CompleteWithoutUsage | Ending::UpstreamError);
    p.handle(bare(headers(
        "/v1/chat/completions",
        &[("authorization", "Bearer tg-k")],
    )))
    .await
    .unwrap();
    let body_json = serde_json::json!({"model": "m", "max_tokens": 10, "stream": stream,
        "messages": [{"role": "user", "content": "hello"}]})
    .to_string();
    let routed = p.handle(bare(body(&body_json))).await.unwrap();
    assert!(
        !matches!(routed.response, Some(Response::ImmediateResponse(_))),
        "{routed:?}"
    );
    let line = "tenant:total:acme".to_owned();
    assert!(memory.balances_now(std::slice::from_ref(&line))[0].reserved > 0);
    let status = if matches!(ending, Ending::UpstreamError) {
        b"500".to_vec()
    } else {
        b"200".to_vec()
    };
    p.handle(bare(Request::ResponseHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: vec![HeaderValue {
                key: ":status".into(),
                raw_value: status,
                ..Default::default()
            }],
        }),
        ..Default::default()
    })))
    .await;
    let chunk = r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#;
    let usage = r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
    match ending {
        Ending::StreamWithUsage => {
            p.handle(response_body(&format!("{chunk}\n\n"), false))
                .await;
            p.handle(response_body(&format!("{usage}\n\ndata: [DONE]\n\n"), true))
                .await;
        }
        Ending::ClientCancels => {
            p.handle(response_body(&format!("{chunk}\n\n"), false))
                .await;
            drop(p);
        }
        Ending::ClientCancelsAfterPartialUsage => {
            p.handle(response_body(&format!("{chunk}\n\n{usage}\n\n"), false))
                .await;
            drop(p);
        }
        Ending::ErrorMidStream => {
            p.handle(response_body(&format!("{chunk}\n\n"), false))
                .await;
            p.handle(response_body(
                "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
                true,
            ))
            .await;
        }
        Ending::StreamWithoutUsage => {
            p.handle(response_body(&format!("{chunk}\n\n"), false))
                .await;
            p.handle(response_body("data: [DONE]\n\n", true)).await;
        }
        Ending::CompleteWithoutUsage => {
            p.handle(response_body(
                r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#,
                true,
            ))
            .await;
        }
        Ending::Reset => {
            p.handle(response_body(&format!("{chunk}\n\n"), false))
                .await;
            p.abandon();
        }
        Ending::UpstreamError => {
            p.handle(response_body(
                r#"{"error":{"message":"boom","type":"server_error"}}"#,
                true,
            ))
            .await;
        }
    }
    shipper.shutdown().await;
    let events = collect.0.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{ending:?}: {events:?}");
    (
        memory.balances_now(std::slice::from_ref(&line))[0],
        events.into_iter().next().unwrap(),
    )
}

#[tokio::test]
async fn the_log_event_carries_the_charge_the_ledger_applied_however_the_response_ended() {
    use tollgate_proto::logger::v1::UsageSource as Src;
    // The reservation: "user" and "hello" (o200k: 1 token each) + 4 for the message + 3, at
    // 1 µUSD; 10 output tokens at 2 µUSD.
    let reservation: u128 = 9 * 1_000_000 + 10 * 2_000_000;
    for ending in [
        Ending::ClientCancels,
        Ending::ClientCancelsAfterPartialUsage,
        Ending::ErrorMidStream,
        Ending::StreamWithoutUsage,
        Ending::CompleteWithoutUsage,
        Ending::Reset,
    ] {
        let (balance, e) = billed(ending).await;
        assert_eq!(balance.reserved, 0, "{ending:?}");
        assert_eq!(balance.spent, reservation, "{ending:?}");
        assert_eq!(u128::from(e.cost_picodollars), balance.spent, "{ending:?}");
        let u = e.usage.unwrap_or_else(|| panic!("{ending:?}: no usage"));
        assert_eq!(u.source(), Src::Reservation, "{ending:?}");
        assert_eq!((u.input_tokens, u.output_tokens), (9, 10), "{ending:?}");
    }
    // Provider usage: billed as reported, the same in the ledger and the event.
    let (balance, e) = billed(Ending::StreamWithUsage).await;
    assert_eq!(balance.spent, 7 * 1_000_000 + 3 * 2_000_000);
    assert_eq!(u128::from(e.cost_picodollars), balance.spent);
    assert_eq!(e.usage.unwrap().source(), Src::Provider);
    // No response: refunded, and the event bills nothing.
    let (balance, e) = billed(Ending::UpstreamError).await;
    assert_eq!(balance, Balance::default());
    assert_eq!(e.cost_picodollars, 0);
    assert!(e.usage.is_none());
}
