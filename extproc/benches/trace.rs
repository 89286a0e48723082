//! What traces cost a request: one streamed chat request (ext_authz metadata, request
//! headers, body, response headers, three SSE chunks, end) through a `Processor`, with traces
//! off, on but the request not sampled (ratio 0, no parent), and on and sampled (a sampled
//! `traceparent`: the span is built, its response bytes read, and queued).

// Benchmark support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use futures::executor::block_on;
use tollgate_core::env::MapEnv;
use tollgate_core::metadata as md;
use tollgate_core::metrics::Metrics;
use tollgate_core::Config;
use tollgate_extproc::processor::Processor;
use tollgate_extproc::trace::Tracer;

const CONFIG: &str = r#"
providers: { p: { kind: openai, base_url: "http://127.0.0.1:1/v1" } }
models: { m: { targets: [{ provider: p, model: m }] } }
"#;

const PATH: &str = "/v1/chat/completions";

fn metadata() -> Metadata {
    let text = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    };
    let mut fields: HashMap<String, Value> = [
        (md::KEY_ID, "k"),
        (md::TENANT, "acme"),
        (md::PATH, PATH),
        (md::METHOD, "POST"),
        (md::REQUEST_ID, "0123456789abcdef0123456789abcdef"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), text(v)))
    .collect();
    fields.insert(
        md::MODELS.to_owned(),
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![text("*")],
            })),
        },
    );
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(md::NAMESPACE.to_owned(), Struct { fields });
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

fn headers(list: &[(&str, &str)], end: bool, response: bool) -> Request {
    let h = HttpHeaders {
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
        end_of_stream: end,
        ..Default::default()
    };
    if response {
        Request::ResponseHeaders(h)
    } else {
        Request::RequestHeaders(h)
    }
}

fn body(text: &str, end: bool, response: bool) -> Request {
    let b = HttpBody {
        body: text.as_bytes().to_vec(),
        end_of_stream: end,
        ..Default::default()
    };
    if response {
        Request::ResponseBody(b)
    } else {
        Request::RequestBody(b)
    }
}

/// The messages of one streamed request, as Envoy sends them.
fn messages(traceparent: Option<&str>) -> Vec<ProcessingRequest> {
    let mut request_headers = vec![(":path", PATH), (":method", "POST")];
    if let Some(t) = traceparent {
        request_headers.push(("traceparent", t));
    }
    let chunk = |delta: &str, finish: &str| {
        format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m-1\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n")
    };
    let usage = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":40,\"total_tokens\":52}}\n\ndata: [DONE]\n\n";
    let md = metadata();
    [
        headers(&request_headers, false, false),
        body(
            r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"Write a short poem about the sea."}]}"#,
            true,
            false,
        ),
        headers(&[(":status", "200")], false, true),
        body(&chunk(r#"{"role":"assistant","content":"The sea"}"#, "null"), false, true),
        body(&chunk(r#"{"content":" is wide and deep and blue"}"#, "null"), false, true),
        body(&(chunk("{}", "\"stop\"") + usage), true, true),
    ]
    .into_iter()
    .map(|r| ProcessingRequest {
        request: Some(r),
        metadata_context: Some(md.clone()),
        ..Default::default()
    })
    .collect()
}

fn bench(c: &mut Criterion) {
    let config = Arc::new(Config::from_yaml(CONFIG, &MapEnv::from_pairs([])).unwrap());
    let metrics = Metrics::default();
    let run = |tracer: Option<Tracer>, msgs: &[ProcessingRequest]| {
        let mut p = Processor::new(Arc::clone(&config), metrics.clone()).with_tracer(tracer, None);
        for m in msgs {
            block_on(p.handle(m.clone())).unwrap();
        }
    };
    let plain = messages(None);
    let sampled_parent = messages(Some(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ));

    c.bench_function("stream request, traces off", |b| {
        b.iter(|| run(None, &plain))
    });

    let (unsampled, _rx) = Tracer::channel(0.0, 1, metrics.clone());
    c.bench_function("stream request, traces on, not sampled", |b| {
        b.iter(|| run(Some(unsampled.clone()), &plain))
    });

    let (sampled, mut rx) = Tracer::channel(1.0, 1024, metrics.clone());
    c.bench_function("stream request, traces on, sampled", |b| {
        b.iter(|| {
            run(Some(sampled.clone()), &sampled_parent);
            rx.try_recv().unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
