//! Traces end to end through real Envoy: `tollgate serve` exports one span per request to an
//! OTLP collector implemented here (OTLP/gRPC `TraceService`, and OTLP/HTTP on `/v1/traces`),
//! joined to the trace of the request's `traceparent`, with the GenAI semantic conventions'
//! attributes equal to what the mock provider answered, the first-token event on a stream,
//! and nothing at all for a request no sampled trace asked for when the ratio is 0.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tollgate_proto::otlp::collector::trace_service_server::{TraceService, TraceServiceServer};
use tollgate_proto::otlp::collector::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tollgate_proto::otlp::common::{any_value::Value as Any, KeyValue};
use tollgate_proto::otlp::trace::Span;

/// The collector's side: every span it received, with its resource's `service.name`.
type Received = mpsc::UnboundedReceiver<(String, Span)>;

fn forward(seen: &mpsc::UnboundedSender<(String, Span)>, request: ExportTraceServiceRequest) {
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(value)
            .unwrap_or(Value::Null);
        for ss in rs.scope_spans {
            for span in ss.spans {
                seen.send((service.as_str().unwrap_or("").to_owned(), span))
                    .unwrap();
            }
        }
    }
}

struct GrpcCollector(mpsc::UnboundedSender<(String, Span)>);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        forward(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on a port it picked: its `http://host:port` and what it receives.
async fn grpc_collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcCollector(seen)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
}

/// An OTLP/HTTP collector (protobuf bodies on `POST /v1/traces`) on a port it picked.
async fn http_collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    forward(&seen, ExportTraceServiceRequest::decode(body).unwrap());
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rx)
}

fn value(kv: &KeyValue) -> Value {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::BoolValue(b)) => json!(b),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::ArrayValue(a)) => Value::Array(
            a.values
                .iter()
                .map(|v| match &v.value {
                    Some(Any::StringValue(s)) => json!(s),
                    other => json!(format!("{other:?}")),
                })
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, Value> {
    list.iter().map(|kv| (kv.key.clone(), value(kv))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The next span the collector receives (within 10 s).
async fn next_span(rx: &mut Received) -> (String, Span) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no span reached the collector within 10 s")
        .unwrap()
}

/// The `traces` section exporting to `endpoint`.
fn traces_yaml(endpoint: &str, protocol: &str, ratio: &str) -> String {
    format!(
        "traces:\n  otlp_endpoint: \"{endpoint}\"\n  protocol: {protocol}\n  sample_ratio: {ratio}\n  service_name: e2e-gateway\n  max_delay_ms: 50\n"
    )
}

/// A request to `base` + `path` with the all-models key and these extra headers.
fn request(
    stack: &Stack,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> ::reqwest::RequestBuilder {
    let mut req = stack
        .http
        .post(format!("{base}{path}"))
        .bearer_auth(KEY_ALL)
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// Sends [`request`] to the stack's Envoy and reads the reply.
async fn send(stack: &Stack, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    Reply::from(
        request(stack, &stack.base, path, headers, body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn hi() -> Value {
    json!({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]})
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_callers_trace_over_otlp_grpc_with_genai_attributes() {
    let (endpoint, mut spans) = grpc_collector().await;
    let stack = Stack::start(StackOptions {
        extra_yaml: traces_yaml(&endpoint, "grpc", "0"),
        ..Default::default()
    });

    // A whole answer, in a sampled trace the client started.
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let reply = send(
        &stack,
        "/v1/chat/completions",
        &[
            ("traceparent", &traceparent),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
        &json!({"model": "mock-model", "messages": [{"role": "user", "content": "say three words"}]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answer = reply.json();
    let (service, span) = next_span(&mut spans).await;
    assert_eq!(service, "e2e-gateway");
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(span.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(span.name, "chat mock-model");
    let a = attributes(&span.attributes);
    let expected = [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.system", json!("openai")),
        ("gen_ai.request.model", json!("mock-model")),
        ("gen_ai.response.model", answer["model"].clone()),
        ("gen_ai.response.id", answer["id"].clone()),
        (
            "gen_ai.usage.input_tokens",
            answer["usage"]["prompt_tokens"].clone(),
        ),
        (
            "gen_ai.usage.output_tokens",
            answer["usage"]["completion_tokens"].clone(),
        ),
        (
            "gen_ai.response.finish_reasons",
            json!([answer["choices"][0]["finish_reason"]]),
        ),
        ("http.response.status_code", json!(200)),
        ("tollgate.key_id", json!("all")),
        ("tollgate.tenant", json!("acme")),
        ("tollgate.team", json!("ml")),
        ("tollgate.provider", json!("mock")),
        (
            "tollgate.request_id",
            json!(reply.header("x-tollgate-request-id").unwrap()),
        ),
        ("tollgate.stream", json!(false)),
    ];
    for (key, value) in expected {
        assert_eq!(a.get(key), Some(&value), "{key} in {a:#?}");
    }
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // The provider was called as a child of the span (its own tracing would join it).
    let upstream = stack.posted().await;
    assert_eq!(
        upstream[0]["headers"]["traceparent"],
        json!(format!("00-{TRACE}-{}-01", hex(&span.span_id)))
    );
    // No prompt or answer text travels in the span.
    let wire = span.encode_to_vec();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    for secret in ["say three words", text, KEY_ALL] {
        assert!(
            !wire.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} in the span"
        );
    }

    // A stream: the first-token event, and the usage the client saw.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let (_, _, body) = stack
        .send_timed(request(
            &stack,
            &stack.base,
            "/v1/chat/completions",
            &[("traceparent", &format!("00-{trace}-b7ad6b7169203331-01"))],
            &json!({"model": "mock-model", "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "count to five"}]}),
        ))
        .await;
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .collect();
    let usage = &events.iter().find(|v| v["usage"].is_object()).unwrap()["usage"];
    let finish = &events
        .iter()
        .find(|v| v["choices"][0]["finish_reason"].is_string())
        .unwrap()["choices"][0]["finish_reason"];
    let (_, span) = next_span(&mut spans).await;
    assert_eq!(hex(&span.trace_id), trace);
    let a = attributes(&span.attributes);
    assert_eq!(a["gen_ai.usage.input_tokens"], usage["prompt_tokens"]);
    assert_eq!(a["gen_ai.usage.output_tokens"], usage["completion_tokens"]);
    assert_eq!(a["tollgate.stream"], json!(true));
    assert_eq!(
        a["gen_ai.response.finish_reasons"],
        json!([finish]),
        "{a:?}"
    );
    let first = span
        .events
        .iter()
        .find(|e| e.name == "tollgate.first_token")
        .expect("a first-token event");
    assert!((span.start_time_unix_nano..=span.end_time_unix_nano).contains(&first.time_unix_nano));
    assert!(span.events.iter().any(|e| e.name == "tollgate.attempt"));

    // Ratio 0: a request with no trace context, or one from an unsampled trace, leaves no
    // span. A sampled request after them is the marker: spans leave in the order requests end.
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    for headers in [&[][..], &[("traceparent", unsampled.as_str())]] {
        let reply = send(&stack, "/v1/chat/completions", headers, &hi()).await;
        assert_eq!(reply.status, 200);
    }
    let marker = "11111111111111111111111111111111";
    let traceparent = format!("00-{marker}-{PARENT}-01");
    let reply = send(
        &stack,
        "/v1/chat/completions",
        &[("traceparent", &traceparent)],
        &hi(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let (_, span) = next_span(&mut spans).await;
    assert_eq!(
        hex(&span.trace_id),
        marker,
        "an unsampled request left a span"
    );
    assert!(spans.try_recv().is_err());
    // Counted once the collector has answered.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = stack.metrics().await;
        if metrics.contains("tollgate_trace_spans_total{outcome=\"exported\"} 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("tollgate_trace_spans_total{outcome=\"exported\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_otlp_http_and_start_new_traces_when_the_ratio_says_so() {
    let (endpoint, mut spans) = http_collector().await;
    let stack = Stack::start(StackOptions {
        extra_yaml: traces_yaml(&endpoint, "http", "1.0"),
        ..Default::default()
    });
    let reply = send(
        &stack,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        &json!({"model": "claude-model", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello there"}]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answer = reply.json();
    let (service, span) = next_span(&mut spans).await;
    assert_eq!(service, "e2e-gateway");
    // A new trace, started here.
    assert!(span.parent_span_id.is_empty());
    assert_eq!(span.trace_id.len(), 16);
    assert_ne!(span.trace_id, vec![0; 16]);
    let a = attributes(&span.attributes);
    for (key, value) in [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("anthropic")),
        ("gen_ai.request.model", json!("claude-model")),
        (
            "gen_ai.usage.input_tokens",
            answer["usage"]["input_tokens"].clone(),
        ),
        (
            "gen_ai.usage.output_tokens",
            answer["usage"]["output_tokens"].clone(),
        ),
        (
            "gen_ai.response.finish_reasons",
            json!([answer["stop_reason"]]),
        ),
        ("tollgate.client_api", json!("anthropic")),
        ("tollgate.upstream_model", json!("claude-upstream-model")),
    ] {
        assert_eq!(a.get(key), Some(&value), "{key} in {a:#?}");
    }
    // An error the provider gave: the span says so.
    let reply = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "rate-limited", "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .await;
    assert_eq!(reply.status, 429);
    let (_, span) = next_span(&mut spans).await;
    let a = attributes(&span.attributes);
    assert_eq!(a["error.type"], json!("upstream_rate_limited"), "{a:?}");
    assert_eq!(a["http.response.status_code"], json!(429));
    assert_eq!(
        span.status.unwrap().code,
        i32::from(tollgate_proto::otlp::trace::status::StatusCode::Error)
    );
}

/// The Stack's bootstrap (listener and admin on port 0) with Envoy's own OpenTelemetry tracing
/// on: every request sampled, spans to `collector` as `envoy-e2e`.
fn traced_envoy_bootstrap(stack: &Stack, collector: &str) -> String {
    let rendered = std::fs::read_to_string(stack.dir.path().join("envoy.yaml")).unwrap();
    let collector = collector.trim_start_matches("http://");
    let (host, collector_port) = collector.split_once(':').unwrap();
    let tracing = r#"          stat_prefix: llm
          tracing:
            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: { envoy_grpc: { cluster_name: otlp }, timeout: 2s }
                service_name: envoy-e2e
"#;
    let mut yaml = rendered.replacen("          stat_prefix: llm\n", tracing, 1);
    assert!(yaml.contains("envoy.tracers.opentelemetry"));
    yaml.push_str(&format!(
        r#"
  - name: otlp
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: otlp
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: "{host}", port_value: {collector_port} }} }} }} }}] }}]
"#
    ));
    // A layer of its own in the bootstrap's runtime (which must stay: it raises RE2's program
    // size limit for the header allow-list).
    let runtime = "layered_runtime:\n  layers:\n";
    assert!(
        yaml.contains(runtime),
        "no layered_runtime in the bootstrap"
    );
    yaml.replacen(
        runtime,
        "layered_runtime:\n  layers:\n  - name: flush-fast\n    static_layer: { tracing.opentelemetry.flush_interval_ms: 100, tracing.opentelemetry.min_flush_spans: 1 }\n",
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_envoy_traces_the_span_is_a_child_of_envoys_ext_proc_call() {
    let (endpoint, mut spans) = grpc_collector().await;
    let mut stack = Stack::start(StackOptions {
        extra_yaml: traces_yaml(&endpoint, "grpc", "0"),
        ..Default::default()
    });
    let bootstrap = stack.dir.path().join("envoy-traced.yaml");
    std::fs::write(&bootstrap, traced_envoy_bootstrap(&stack, &endpoint)).unwrap();
    let admin_file = stack.dir.path().join("envoy-traced-admin.address");
    let mut envoy = spawn_envoy("envoy-traced", &bootstrap, &admin_file, stack.dir.path());
    let (_, listen) = wait_envoy(&admin_file, &mut [&mut envoy]);
    stack.procs.push(envoy);

    // No trace context from the client: Envoy starts the trace (and samples it).
    let reply = Reply::from(
        request(
            &stack,
            &format!("http://{listen}"),
            "/v1/chat/completions",
            &[],
            &hi(),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut ours = None;
    let mut envoys = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ours.is_none() || !envoys.iter().any(|s: &Span| s.parent_span_id.is_empty()) {
        let Ok(Some((service, span))) = tokio::time::timeout_at(deadline, spans.recv()).await
        else {
            panic!("spans so far: ours {ours:?}, Envoy's {envoys:#?}");
        };
        match service.as_str() {
            "e2e-gateway" => ours = Some(span),
            "envoy-e2e" => envoys.push(span),
            other => panic!("a span from {other}"),
        }
    }
    // Envoy 1.40: `ingress` (the request) and its child `async
    // envoy.service.ext_proc.v3.ExternalProcessor.Process egress` (the ext_proc call), whose
    // context rides in the call's gRPC metadata: Tollgate's span is that call's child.
    let ours = ours.unwrap();
    let parent = envoys
        .iter()
        .find(|s| s.span_id == ours.parent_span_id)
        .unwrap_or_else(|| panic!("our parent is none of Envoy's spans: {ours:?} {envoys:#?}"));
    assert_eq!(ours.trace_id, parent.trace_id);
    assert!(
        parent.name.contains("ExternalProcessor"),
        "parent: {}",
        parent.name
    );
}
