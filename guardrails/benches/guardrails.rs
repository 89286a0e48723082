//! Guardrail cost on the hot path: a 10 KB prompt checked whole (clean, and with PII to redact),
//! and one streamed chunk through the stream scanner.

// Benchmark support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tollgate_guardrails::{Action, Detector, Engine, RuleSpec, StreamScanner};

fn policy() -> Engine {
    let rules = [
        ("email", Detector::Email, Action::Redact),
        ("phone", Detector::Phone, Action::Redact),
        ("card", Detector::CreditCard, Action::Block),
        ("iban", Detector::Iban, Action::Redact),
        ("ssn", Detector::UsSsn, Action::Redact),
        ("ip", Detector::IpAddress, Action::Flag),
        ("secrets", Detector::Secrets, Action::Block),
        ("pk", Detector::PrivateKey, Action::Block),
        ("injection", Detector::PromptInjection, Action::Block),
        (
            "deny",
            Detector::DenyList(vec!["project titan".into(), "falcon".into()]),
            Action::Block,
        ),
    ];
    Engine::new(
        &rules
            .into_iter()
            .map(|(id, detector, action)| RuleSpec {
                id: id.into(),
                detector,
                action,
            })
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

fn prose(bytes: usize) -> String {
    let words =
        "the quick brown fox jumps over the lazy dog while a model writes a long answer about \
                 distributed systems, caching, and the cost of network round trips. ";
    words.repeat(bytes / words.len() + 1)[..bytes].to_owned()
}

fn bench(c: &mut Criterion) {
    let engine = Arc::new(policy());
    let clean = prose(10 * 1024);
    let mut dirty = prose(10 * 1024 - 60);
    dirty.push_str(" mail jane@example.com or call (415) 555-0123 ");
    c.bench_function("check 10 KB clean prompt", |b| {
        b.iter(|| engine.check(black_box(&clean)))
    });
    c.bench_function("check 10 KB prompt with PII", |b| {
        b.iter(|| engine.check(black_box(&dirty)))
    });
    let chunk = b"a typical streamed token chunk, ";
    c.bench_function("stream one 32-byte chunk", |b| {
        let mut s = StreamScanner::new(Arc::clone(&engine));
        b.iter(|| s.push(black_box(chunk)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
