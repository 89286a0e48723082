//! SSE usage-filter tests, including the split-anywhere property.

use proptest::prelude::*;

use super::*;

const STREAM: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé \\\"usage\\\": {\"}}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
    "data: [DONE]\n\n",
);

fn run(chunks: &[&[u8]], strip: bool) -> (Vec<u8>, Option<Usage>) {
    let mut f = UsageFilter::new(strip);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let end = i + 1 == chunks.len();
        match f.push(c, end) {
            Some(b) => out.extend_from_slice(&b),
            None => out.extend_from_slice(c),
        }
    }
    (out, f.usage())
}

fn without_usage_chunk() -> String {
    STREAM
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect()
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
    let mut f = UsageFilter::new(true);
    let first = STREAM.split_inclusive("\n\n").next().unwrap();
    assert!(f.push(first.as_bytes(), false).is_none());
}

#[test]
fn event_boundaries_accept_every_line_ending() {
    assert_eq!(event_end(b"data: x\n\nrest"), Some(9));
    assert_eq!(event_end(b"data: x\r\n\r\nrest"), Some(11));
    assert_eq!(event_end(b"data: x\r\rrest"), Some(9));
    assert_eq!(event_end(b"data: x\n"), None);
    assert_eq!(event_end(b"data: x\r\n\r"), None);
    assert_eq!(event_data(b"event: e\ndata: a\ndata:b\n\n"), b"a\nb");
}

#[test]
fn a_stream_cut_short_is_released_at_the_end() {
    let cut = &STREAM.as_bytes()[..STREAM.len() - 30];
    let (out, _) = run(&[cut], true);
    assert!(out.ends_with(&cut[cut.len() - 10..]));
}

proptest! {
    #[test]
    fn splitting_the_stream_anywhere_changes_nothing(
        cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12),
        strip in any::<bool>(),
    ) {
        let bytes = STREAM.as_bytes();
        let mut cuts = cuts;
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut prev = 0;
        for c in cuts {
            chunks.push(&bytes[prev..c]);
            prev = c;
        }
        chunks.push(&bytes[prev..]);
        let (whole, whole_usage) = run(&[bytes], strip);
        let (split, split_usage) = run(&chunks, strip);
        prop_assert_eq!(whole, split);
        prop_assert_eq!(whole_usage, split_usage);
    }
}
