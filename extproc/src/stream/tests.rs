//! Pipeline tests: usage read and the usage chunk hidden on a passed-through stream, bytes
//! kept where nothing changed, and the split-anywhere property through every stage.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use tollgate_core::config::ApiFamily;
use tollgate_guardrails::{Action, Detector, Engine, RuleSpec};

use super::*;
use crate::budget::Counter;
use crate::capture::Capture;
use crate::streamcap::StreamCap;
use crate::translator::Pair;
use tollgate_core::config::Capture as CaptureMode;

const STREAM: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé \\\"usage\\\": {\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
    "data: [DONE]\n\n",
);

const OPENAI: Pair = Pair {
    client: ApiFamily::OpenAi,
    upstream: ApiFamily::OpenAi,
};

fn run(chunks: &[&[u8]], strip: bool) -> (Vec<u8>, Option<tollgate_core::Usage>) {
    let mut p = OPENAI.stream(false, 0).strip_usage_chunk(strip);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(p.push(c, i + 1 == chunks.len()));
    }
    (out, p.usage())
}

fn without_usage_chunk() -> String {
    STREAM
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect()
}

/// Cuts `bytes` at `cuts` (each taken modulo the length + 1, in any order).
pub(crate) fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut prev = 0;
    for c in cuts {
        chunks.push(&bytes[prev..c]);
        prev = c;
    }
    chunks.push(&bytes[prev..]);
    chunks
}

#[test]
fn whole_stream_keeps_or_strips_the_usage_chunk() {
    let (out, usage) = run(&[STREAM.as_bytes()], false);
    assert_eq!(out, STREAM.as_bytes());
    let u = usage.unwrap();
    assert_eq!(
        (u.input_tokens, u.output_tokens, u.cache_read_tokens),
        (9, 3, 4)
    );

    let (out, usage) = run(&[STREAM.as_bytes()], true);
    assert_eq!(String::from_utf8(out).unwrap(), without_usage_chunk());
    assert!(usage.is_some());
}

#[test]
fn unchanged_chunks_are_not_copied() {
    let mut p = OPENAI.stream(false, 0).strip_usage_chunk(true);
    let first = STREAM.split_inclusive("\n\n").next().unwrap();
    assert!(p.push_chunk(first.as_bytes(), false, None).is_none());
    // A chunk that ends inside an event is not the client's bytes.
    let second = STREAM.split_inclusive("\n\n").nth(1).unwrap().as_bytes();
    let (a, b) = second.split_at(10);
    assert_eq!(p.push_chunk(a, false, None), Some(Vec::new()));
    assert_eq!(p.push_chunk(b, false, None).as_deref(), Some(second));
}

#[test]
fn event_boundaries_accept_every_line_ending() {
    assert_eq!(event_end(b"data: x\n\nrest"), Some(9));
    assert_eq!(event_end(b"data: x\r\n\r\nrest"), Some(11));
    assert_eq!(event_end(b"data: x\r\rrest"), Some(9));
    assert_eq!(event_end(b"data: x\n"), None);
    assert_eq!(event_end(b"data: x\r\n\r"), None);
    assert_eq!(event_data(b"event: e\ndata: a\ndata:b\n\n"), b"a\nb");
    assert!(carries_usage(br#"data: {"usage" : {"a":1}}"#));
    assert!(carries_usage(br#"data: {"usageMetadata":{"a":1}}"#));
    assert!(!carries_usage(
        br#"data: {"usage":null,"x":"\"usage\": {"}"#
    ));
}

#[test]
fn a_stream_cut_short_is_released_at_the_end() {
    let cut = &STREAM.as_bytes()[..STREAM.len() - 30];
    let (out, _) = run(&[cut], true);
    assert!(out.ends_with(&cut[cut.len() - 10..]));
}

/// An engine that redacts e-mail addresses and blocks the word `forbidden`.
fn engine() -> Arc<Engine> {
    let rule = |id: &str, detector: Detector, action: Action| RuleSpec {
        id: id.into(),
        detector,
        action,
    };
    Arc::new(
        Engine::new(&[
            rule("email", Detector::Email, Action::Redact),
            rule(
                "words",
                Detector::DenyList(vec!["forbidden".into()]),
                Action::Block,
            ),
        ])
        .unwrap(),
    )
}

/// A provider stream of `pair`'s upstream dialect carrying `texts`.
fn upstream(pair: Pair, texts: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    match pair.upstream {
        ApiFamily::Anthropic => {
            let ev = |name: &str, v: Value| out_event(Some(name), &v);
            out.push_str(&ev("message_start", json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "model": "claude", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}})));
            out.push_str(&ev("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            for t in texts {
                out.push_str(&ev("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})));
            }
            out.push_str(&ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            out.push_str(&ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}})));
            out.push_str(&ev("message_stop", json!({"type": "message_stop"})));
        }
        _ => {
            let chunk = |delta: Value, finish: Value, usage: Value| {
                out_event(
                    None,
                    &json!({"id": "c", "object": "chat.completion.chunk", "created": 3, "model": "gpt",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}),
                )
            };
            out.push_str(&chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                Value::Null,
            ));
            for t in texts {
                out.push_str(&chunk(json!({"content": t}), Value::Null, Value::Null));
            }
            out.push_str(&chunk(json!({}), json!("stop"), Value::Null));
            out.push_str(&out_event(None, &json!({"id": "c", "object": "chat.completion.chunk", "created": 3, "model": "gpt", "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})));
            out.push_str("data: [DONE]\n\n");
        }
    }
    out.into_bytes()
}

fn out_event(name: Option<&str>, v: &Value) -> String {
    match name {
        Some(n) => format!("event: {n}\ndata: {v}\n\n"),
        None => format!("data: {v}\n\n"),
    }
}

/// Every pair of OpenAI and Anthropic: passed through (OpenAI's judged in place, Anthropic's
/// re-encoded when judged) and translated.
fn pairs() -> Vec<Pair> {
    let families = [ApiFamily::OpenAi, ApiFamily::Anthropic];
    families
        .iter()
        .flat_map(|&client| {
            families
                .iter()
                .map(move |&upstream| Pair { client, upstream })
        })
        .collect()
}

/// `chunks` through `pair`'s whole pipeline (guardrails, a cap of `allowance`, capture):
/// the client's bytes, usage, whether the cap cut, and the captured payload.
fn whole(
    pair: Pair,
    allowance: u64,
    chunks: &[&[u8]],
) -> (Vec<u8>, Option<tollgate_core::Usage>, bool, String, u64) {
    let cap = StreamCap::new(pair.client, Counter::Bytes, allowance, 5, true);
    let mut p = Pipeline::new(pair, true, 9, Some(engine()))
        .strip_usage_chunk(true)
        .with_cap(Some(cap));
    let mut capture = Capture::new(CaptureMode::Full, 4096).unwrap();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let o = p.push_chunk(c, i + 1 == chunks.len(), Some(&mut capture));
        let o = o.unwrap_or_else(|| c.to_vec());
        capture.response_bytes(o.len());
        out.extend(o);
    }
    let cut = p.cap().unwrap().was_cut();
    let payload = capture.finish();
    (
        out,
        p.usage(),
        cut,
        payload.response_body,
        payload.response_bytes,
    )
}

#[test]
fn the_whole_pipeline_redacts_caps_and_captures() {
    let texts = [
        "Write to bob@exa",
        "mple.com now ",
        "and then some more text ",
        "and more",
    ];
    for pair in pairs() {
        let bytes = upstream(pair, &texts);
        let (out, usage, cut, captured, n) = whole(pair, 1000, &[&bytes]);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("bob@example.com"), "{pair:?}: {text}");
        assert!(text.contains("[REDACTED:email]"), "{pair:?}: {text}");
        assert!(!cut, "{pair:?}");
        assert_eq!(usage.unwrap().output_tokens, 7, "{pair:?}");
        assert!(
            captured.contains("[REDACTED:email]"),
            "{pair:?}: {captured}"
        );
        assert_eq!(n, text.len() as u64);

        // A small allowance ends the stream early, well formed.
        let (out, usage, cut, _, _) = whole(pair, 8, &[&bytes]);
        let text = String::from_utf8(out).unwrap();
        assert!(cut, "{pair:?}: {text}");
        assert!(!text.contains("some more"), "{pair:?}: {text}");
        assert_eq!(usage.unwrap().output_tokens, 7, "{pair:?}");
        match pair.client {
            ApiFamily::Anthropic => assert!(
                text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
                "{text}"
            ),
            _ => assert!(text.ends_with("data: [DONE]\n\n"), "{text}"),
        }

        // A blocked word ends it with an error event.
        let bytes = upstream(pair, &["all fine ", "then forb", "idden"]);
        let (out, _, _, _, _) = whole(pair, 1000, &[&bytes]);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("forbidden"), "{pair:?}: {text}");
        assert!(text.contains("guardrail"), "{pair:?}: {text}");
    }
}

proptest! {
    #[test]
    fn splitting_the_stream_anywhere_changes_nothing(
        cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12),
        strip in any::<bool>(),
    ) {
        let bytes = STREAM.as_bytes();
        let (whole_out, whole_usage) = run(&[bytes], strip);
        let (split_out, split_usage) = run(&split_at(bytes, &cuts), strip);
        prop_assert_eq!(whole_out, split_out);
        prop_assert_eq!(whole_usage, split_usage);
    }

    #[test]
    fn splitting_anywhere_changes_nothing_through_guard_cap_and_capture(
        pair in proptest::sample::select(pairs()),
        cuts in proptest::collection::vec(0usize..2000, 0..16),
        allowance in 4u64..40,
        blocked in any::<bool>(),
    ) {
        let last = if blocked { "forbidden end" } else { "the end" };
        let bytes = upstream(pair, &["Hé, write to bob@exa", "mple.com ", "now ", "and ", last]);
        let whole_run = whole(pair, allowance, &[&bytes]);
        let split_run = whole(pair, allowance, &split_at(&bytes, &cuts));
        prop_assert_eq!(whole_run, split_run);
    }
}
