//! Bedrock's cost on the hot path: SigV4-signing a 10 KB request (the day's signing key is
//! cached, as in `serve`), and translating a 200-delta `converse-stream` in the AWS
//! event-stream framing into an OpenAI client's SSE, whole and in 1 KB chunks.

// Benchmark support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::SystemTime;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tollgate_core::config::{ApiFamily, Secret};
use tollgate_core::sigv4::{Signer, BEDROCK_SERVICE};
use tollgate_extproc::translator::eventstream::event;
use tollgate_extproc::translator::Pair;

fn stream() -> Vec<u8> {
    let mut s = event("messageStart", br#"{"role":"assistant"}"#);
    for i in 0..200 {
        let d =
            format!(r#"{{"contentBlockIndex":0,"delta":{{"text":" word{i}"}},"p":"abcdefgh"}}"#);
        s.extend(event("contentBlockDelta", d.as_bytes()));
    }
    s.extend(event("contentBlockStop", br#"{"contentBlockIndex":0}"#));
    s.extend(event("messageStop", br#"{"stopReason":"end_turn"}"#));
    s.extend(event(
        "metadata",
        br#"{"usage":{"inputTokens":10,"outputTokens":200,"totalTokens":210},"metrics":{"latencyMs":9}}"#,
    ));
    s
}

fn bench(c: &mut Criterion) {
    let signer = Signer::new(
        "AKIDEXAMPLE".into(),
        Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        Some(Secret::new("token".into())),
        "us-east-1".into(),
        BEDROCK_SERVICE,
    );
    let body = vec![b'x'; 10 * 1024];
    let now = SystemTime::now();
    c.bench_function("sigv4_sign_10kb", |b| {
        b.iter(|| {
            signer.sign(
                "POST",
                black_box("bedrock-runtime.us-east-1.amazonaws.com"),
                black_box("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"),
                black_box(&body),
                now,
            )
        })
    });

    let input = stream();
    let pair = Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::Bedrock,
    };
    let mut g = c.benchmark_group("bedrock_stream_to_openai");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("whole", |b| {
        b.iter(|| {
            let mut t = pair.stream(true, 0).with_identity("id", "model");
            black_box(t.push(&input, true))
        })
    });
    g.bench_function("1kb_chunks", |b| {
        b.iter(|| {
            let mut t = pair.stream(true, 0).with_identity("id", "model");
            let chunks: Vec<&[u8]> = input.chunks(1024).collect();
            let mut n = 0;
            for (i, c) in chunks.iter().enumerate() {
                n += t.push(c, i + 1 == chunks.len()).len();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
