//! Fuzz targets for every parser that reads bytes a client or a provider controls, on the
//! stable toolchain: `proptest` feeds each one random bytes and inputs mutated from real
//! samples (the translator's fixtures), in ordinary `cargo nextest` tests, and checks that it
//! never panics and keeps the invariants it promises.
//!
//! Each target runs [`DEFAULT_CASES`] cases per test (a few seconds in all, bounded for CI).
//! Run them longer with `TOLLGATE_FUZZ_CASES`, e.g.
//! `TOLLGATE_FUZZ_CASES=200000 cargo nextest run -p tollgate-extproc fuzz_`.

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use tollgate_core::config::ApiFamily;

use crate::translator::eventstream;
use crate::translator::json::RawObject;
use crate::translator::Pair;

/// Cases per property when `TOLLGATE_FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 256;

/// The proptest config of every fuzz target: [`DEFAULT_CASES`] cases unless
/// `TOLLGATE_FUZZ_CASES` says otherwise, no persisted failure files.
pub fn config() -> Config {
    let cases = std::env::var("TOLLGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any JSON value, nested a few levels.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Binary fractions: their text reads back exactly (serde_json's default float
        // parsing is not exact for every f64).
        any::<i32>().prop_map(|i| Value::from(f64::from(i) / 8.0)),
        ".{0,12}".prop_map(Value::String),
        // Text that looks like structure.
        prop_oneof![Just("{[\":,]}"), Just("\\\""), Just("data: x\n\n")]
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/translator/tests")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A Bedrock `stream.jsonl` fixture in the AWS event-stream framing.
fn framed(rel: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(rel)).unwrap();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let payload = v["payload"].to_string();
        out.extend(match (v["event"].as_str(), v["exception"].as_str()) {
            (Some(e), _) => eventstream::event(e, payload.as_bytes()),
            (None, Some(x)) => eventstream::exception(x, payload.as_bytes()),
            _ => panic!("{rel}: a line needs `event` or `exception`"),
        });
    }
    out
}

/// Real request bodies of each client dialect.
fn request_samples() -> Vec<(ApiFamily, Vec<u8>)> {
    vec![
        (
            ApiFamily::OpenAi,
            fixture("openai_to_anthropic/request.json"),
        ),
        (ApiFamily::OpenAi, fixture("openai_to_bedrock/request.json")),
        (
            ApiFamily::Anthropic,
            fixture("anthropic_to_openai/request.json"),
        ),
        (
            ApiFamily::Anthropic,
            fixture("anthropic_to_bedrock/request.json"),
        ),
        (ApiFamily::Gemini, fixture("gemini_to_openai/request.json")),
        (
            ApiFamily::Gemini,
            fixture("gemini_to_anthropic/request.json"),
        ),
    ]
}

/// Real response bodies of each provider dialect.
fn response_samples() -> Vec<(ApiFamily, Vec<u8>)> {
    vec![
        (
            ApiFamily::OpenAi,
            fixture("anthropic_to_openai/response.json"),
        ),
        (
            ApiFamily::Anthropic,
            fixture("openai_to_anthropic/response.json"),
        ),
        (ApiFamily::Gemini, fixture("openai_to_gemini/response.json")),
        (
            ApiFamily::Bedrock,
            fixture("openai_to_bedrock/response.json"),
        ),
    ]
}

/// Real streams of each provider dialect (Bedrock's in its binary framing).
fn stream_samples() -> Vec<(ApiFamily, Vec<u8>)> {
    vec![
        (ApiFamily::OpenAi, fixture("anthropic_to_openai/stream.sse")),
        (
            ApiFamily::Anthropic,
            fixture("openai_to_anthropic/stream.sse"),
        ),
        (ApiFamily::Gemini, fixture("openai_to_gemini/stream.sse")),
        (ApiFamily::Bedrock, framed("openai_to_bedrock/stream.jsonl")),
    ]
}

const CLIENTS: [ApiFamily; 3] = [ApiFamily::OpenAi, ApiFamily::Anthropic, ApiFamily::Gemini];
const UPSTREAMS: [ApiFamily; 4] = [
    ApiFamily::OpenAi,
    ApiFamily::Anthropic,
    ApiFamily::Gemini,
    ApiFamily::Bedrock,
];

/// One mutation of a sample: flip, insert, delete or duplicate a stretch of bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 1..8),
                // Structure and framing bytes, more likely to reach deep code than noise.
                proptest::sample::select(vec![
                    b"\n\n".to_vec(),
                    b"data: ".to_vec(),
                    b"\"".to_vec(),
                    b"{".to_vec(),
                    b"[".to_vec(),
                    b"null".to_vec(),
                    b"\xf0\x9f".to_vec(),
                    b"\0".to_vec(),
                    b"\\u0000".to_vec(),
                ]),
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

fn mutate(sample: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = sample.to_vec();
    for m in mutations {
        let len = b.len().max(1);
        match m {
            Mutation::Flip(i, x) => {
                if let Some(byte) = b.get_mut(i % len) {
                    *byte ^= x | 1;
                }
            }
            Mutation::Insert(i, bytes) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Mutation::Repeat(i, n) => {
                let at = i % len;
                let end = (at + n).min(b.len());
                let piece = b.get(at..end).map(<[u8]>::to_vec).unwrap_or_default();
                b.splice(end..end, piece);
            }
        }
    }
    b
}

/// `input` cut at `cuts` (offsets taken modulo its length).
fn split_at<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in at {
        out.push(&input[prev..c]);
        prev = c;
    }
    out.push(&input[prev..]);
    out
}

fn run_stream(pair: Pair, chunks: &[&[u8]]) -> (Vec<u8>, Option<tollgate_core::Usage>) {
    let mut p = pair
        .stream(true, 1_700_000_000)
        .with_identity("resp-1", "model-1");
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        out.extend(p.push(c, i + 1 == chunks.len()));
    }
    (out, p.usage())
}

proptest! {
    #![proptest_config(config())]

    /// The SSE framer and every stream decoder behind it (all client × provider pairs):
    /// no panic on mutated streams, and any split of the input gives the same output and
    /// usage.
    #[test]
    fn fuzz_stream_pipelines_are_split_invariant(
        sample in 0usize..4,
        mutations in proptest::collection::vec(mutation(), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let samples = stream_samples();
        let (upstream, bytes) = &samples[sample];
        let input = mutate(bytes, &mutations);
        for client in CLIENTS {
            if *upstream == ApiFamily::Bedrock && client == ApiFamily::Gemini {
                continue; // Gemini clients are not served by Bedrock streams.
            }
            let pair = Pair { client, upstream: *upstream };
            let whole = run_stream(pair, &[&input]);
            let split = run_stream(pair, &split_at(&input, &cuts));
            prop_assert_eq!(&whole.0, &split.0, "{:?}", pair);
            prop_assert_eq!(whole.1, split.1, "{:?}", pair);
        }
    }

    /// The SSE framer alone: on random bytes, event ends are in bounds and never empty.
    #[test]
    fn fuzz_sse_event_boundaries_stay_in_bounds(
        bytes in proptest::collection::vec(
            proptest::sample::select(vec![b'\n', b'\r', b'd', b':', b' ', b'{', b'x']), 0..256),
    ) {
        let mut pos = 0;
        while let Some(len) = crate::stream::event_end(&bytes[pos..]) {
            prop_assert!(len > 0 && pos + len <= bytes.len());
            let _ = crate::stream::event_data(&bytes[pos..pos + len]);
            pos += len;
        }
    }

    /// The AWS event-stream decoder: messages come out the same wherever the input is cut,
    /// and corrupted input is an error (or fewer messages), never a panic.
    #[test]
    fn fuzz_eventstream_decoder_is_split_invariant(
        mutations in proptest::collection::vec(mutation(), 0..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let input = mutate(&framed("openai_to_bedrock/stream.jsonl"), &mutations);
        let decode = |chunks: &[&[u8]]| {
            let mut d = eventstream::Decoder::default();
            let mut got = Vec::new();
            let mut err = None;
            for (i, c) in chunks.iter().enumerate() {
                if let Err(e) = d.push(c, i + 1 == chunks.len(), |m| got.push(m)) {
                    err.get_or_insert(e);
                }
            }
            (got, err)
        };
        let whole = decode(&[&input]);
        let split = decode(&split_at(&input, &cuts));
        prop_assert_eq!(whole, split);
    }

    /// Random messages round-trip through the encoder and the decoder, cut anywhere.
    #[test]
    fn fuzz_eventstream_round_trips(
        messages in proptest::collection::vec(
            (".{0,16}", proptest::collection::vec(any::<u8>(), 0..64)), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut input = Vec::new();
        for (event, payload) in &messages {
            input.extend(eventstream::event(event, payload));
        }
        let mut d = eventstream::Decoder::default();
        let mut got = Vec::new();
        let chunks = split_at(&input, &cuts);
        for (i, c) in chunks.iter().enumerate() {
            d.push(c, i + 1 == chunks.len(), |m| got.push((m.event_type, m.payload))).unwrap();
        }
        prop_assert_eq!(got, messages);
    }

    /// Every codec's request decoding (each client dialect into each provider's), on mutated
    /// real requests and on random JSON objects: a result or an error, never a panic; a
    /// translated body is JSON.
    #[test]
    fn fuzz_codec_requests_never_panic(
        sample in 0usize..6,
        mutations in proptest::collection::vec(mutation(), 0..6),
        random in json_value(),
        stream in any::<bool>(),
    ) {
        let samples = request_samples();
        let (client, bytes) = &samples[sample];
        let mut random_obj = serde_json::Map::new();
        random_obj.insert("model".into(), Value::from("m"));
        random_obj.insert("messages".into(), random.clone());
        random_obj.insert("contents".into(), random.clone());
        random_obj.insert("tools".into(), random);
        let random_body = serde_json::to_vec(&Value::Object(random_obj)).unwrap();
        for body in [mutate(bytes, &mutations), random_body] {
            let Ok(obj) = RawObject::parse(&body) else { continue };
            for upstream in UPSTREAMS {
                let pair = Pair { client: *client, upstream };
                if let Ok((out, _)) = pair.request(&obj, "upstream-model", stream, body.len()) {
                    prop_assert!(
                        serde_json::from_slice::<Value>(&out).is_ok(),
                        "{:?}: {}", pair, String::from_utf8_lossy(&out)
                    );
                }
            }
        }
    }

    /// Every codec's response decoding (each provider dialect into each client's), success
    /// and error statuses, on mutated real responses: never a panic; a translated body is
    /// JSON.
    #[test]
    fn fuzz_codec_responses_never_panic(
        sample in 0usize..4,
        mutations in proptest::collection::vec(mutation(), 0..6),
        status in proptest::sample::select(vec![200u16, 400, 429, 500, 529]),
    ) {
        let samples = response_samples();
        let (upstream, bytes) = &samples[sample];
        let body = mutate(bytes, &mutations);
        for client in CLIENTS {
            let pair = Pair { client, upstream: *upstream };
            let done = pair.complete(status, &body, 1_700_000_000);
            if let Some(out) = done.body {
                prop_assert!(
                    serde_json::from_slice::<Value>(&out).is_ok(),
                    "{:?} {}: {}", pair, status, String::from_utf8_lossy(&out)
                );
            }
        }
    }

    /// The raw-member body parse: random bytes never panic; a valid object with distinct
    /// members parses to the same members, written back as the same value.
    #[test]
    fn fuzz_raw_member_parse(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        members in proptest::collection::btree_map(".{0,8}", json_value(), 0..12),
    ) {
        let _ = RawObject::parse(&bytes);
        let v = Value::Object(members.into_iter().collect());
        let body = serde_json::to_vec(&v).unwrap();
        let obj = RawObject::parse(&body).unwrap();
        for (k, want) in v.as_object().unwrap() {
            let got: Value = serde_json::from_str(obj.get(k).unwrap().get()).unwrap();
            prop_assert_eq!(&got, want);
        }
        let back: Value = serde_json::from_slice(&obj.write_with(&[], body.len())).unwrap();
        prop_assert_eq!(back, v);
    }
}
