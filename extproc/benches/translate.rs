//! Translation cost on the hot path: one upstream SSE event translated into the client's
//! dialect (criterion reports events per second; a chunk's cost is its inverse), the
//! byte-preserving OpenAI passthrough for comparison, the same streams with every stage on
//! (guardrails, output cap, capture), and whole request bodies.
//!
//! Run: `cargo bench -p tollgate-extproc --bench translate`.

// Benchmark support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tollgate_core::config::{ApiFamily, Capture as CaptureMode};
use tollgate_extproc::budget::Counter;
use tollgate_extproc::capture::Capture;
use tollgate_extproc::stream::Pipeline;
use tollgate_extproc::streamcap::StreamCap;
use tollgate_extproc::translator::json::RawObject;
use tollgate_extproc::translator::Pair;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/translator/tests");

/// (name, pair, fixture directory): the directory holds the upstream's stream and the
/// client's request.
const PAIRS: [(&str, Pair, &str); 2] = [
    (
        "openai_client_from_anthropic_upstream",
        Pair {
            client: ApiFamily::OpenAi,
            upstream: ApiFamily::Anthropic,
        },
        "openai_to_anthropic",
    ),
    (
        "anthropic_client_from_openai_upstream",
        Pair {
            client: ApiFamily::Anthropic,
            upstream: ApiFamily::OpenAi,
        },
        "anthropic_to_openai",
    ),
];

fn read(dir: &str, file: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{dir}/{file}")).unwrap()
}

/// The stream cut into its SSE events, one network chunk each (the usual provider pacing).
fn events(stream: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8(stream.to_vec()).unwrap();
    text.split_inclusive("\n\n")
        .map(|e| e.as_bytes().to_vec())
        .collect()
}

fn streams(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream_chunk");
    for (name, pair, dir) in PAIRS {
        let chunks = events(&read(dir, "stream.sse"));
        g.throughput(Throughput::Elements(chunks.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut t = pair.stream(true, 1_700_000_000);
                let last = chunks.len() - 1;
                for (i, chunk) in chunks.iter().enumerate() {
                    black_box(t.push(chunk, i == last));
                }
                black_box(t.usage())
            })
        });
    }
    // The same-dialect OpenAI stream: read usage, pass bytes through.
    let chunks = events(&read("anthropic_to_openai", "stream.sse"));
    let openai = Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::OpenAi,
    };
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("openai_passthrough_usage_filter", |b| {
        b.iter(|| {
            let mut p = openai.stream(true, 0).strip_usage_chunk(true);
            let last = chunks.len() - 1;
            for (i, chunk) in chunks.iter().enumerate() {
                black_box(p.push_chunk(chunk, i == last, None));
            }
            black_box(p.usage())
        })
    });
    g.finish();
}

/// Every stage on: an e-mail redaction rule, an output cap never reached (bytes counter, so the
/// count is not the cost), full capture.
fn stages(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream_chunk_all_stages");
    let rule = tollgate_guardrails::RuleSpec {
        id: "email".into(),
        detector: tollgate_guardrails::Detector::Email,
        action: tollgate_guardrails::Action::Redact,
    };
    let engine = Arc::new(tollgate_guardrails::Engine::new(&[rule]).unwrap());
    let openai = Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::OpenAi,
    };
    let cases = PAIRS
        .into_iter()
        .chain([("openai_passthrough", openai, "anthropic_to_openai")]);
    for (name, pair, dir) in cases {
        let chunks = events(&read(dir, "stream.sse"));
        g.throughput(Throughput::Elements(chunks.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let cap = StreamCap::new(pair.client, Counter::Bytes, u64::MAX / 2, 0, true);
                let mut capture = Capture::new(CaptureMode::Full, 4096).unwrap();
                let mut p = Pipeline::new(pair, true, 0, Some(Arc::clone(&engine)))
                    .strip_usage_chunk(true)
                    .with_cap(Some(cap));
                let last = chunks.len() - 1;
                for (i, chunk) in chunks.iter().enumerate() {
                    let out = p.push_chunk(chunk, i == last, Some(&mut capture));
                    capture.response_bytes(out.as_ref().map_or(chunk.len(), Vec::len));
                    black_box(out);
                }
                black_box(p.usage())
            })
        });
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_body");
    for (name, pair, dir) in PAIRS {
        let body = read(dir, "request.json");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let obj = RawObject::parse(&body).unwrap();
                black_box(
                    pair.request(&obj, "target-model", true, body.len())
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, streams, stages, requests);
criterion_main!(benches);
