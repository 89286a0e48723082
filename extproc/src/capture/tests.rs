//! Capture tests: redaction of every kind the policy knows, JSON kept valid, the cap and its
//! marker, stream text assembly in both dialects.

use super::*;
use crate::stream::Pipeline;
use crate::translator::Pair;
use tollgate_core::config::ApiFamily;

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";
const OPENAI_KEY: &str = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD";

fn chat(content: &str) -> Vec<u8> {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}],
        "tools": [{"type": "function", "function": {"name": "f"}}]})
    .to_string()
    .into_bytes()
}

#[test]
fn full_capture_redacts_pii_and_secrets_and_keeps_the_json_valid() {
    let mut c = Capture::new(Mode::Full, 4096).unwrap();
    let text = format!("mail {EMAIL}, card {CARD}, key {OPENAI_KEY}, ssn 123-45-6789");
    c.request("application/json", &chat(&text));
    let p = c.finish();
    assert_eq!((p.message_count, p.tool_count), (1, 1));
    assert_eq!(p.request_content_type, "application/json");
    for secret in [EMAIL, CARD, OPENAI_KEY, "123-45-6789"] {
        assert!(
            !p.request_body.contains(secret),
            "{secret} in {}",
            p.request_body
        );
    }
    let v: Value = serde_json::from_str(&p.request_body).unwrap();
    assert_eq!(
        v["messages"][0]["content"],
        "mail [REDACTED:email], card [REDACTED:credit_card], key [REDACTED:secret], ssn [REDACTED:us_ssn]"
    );
    assert_eq!(p.mode, "full");
}

#[test]
fn metadata_capture_has_sizes_and_counts_but_no_content() {
    let mut c = Capture::new(Mode::Metadata, 4096).unwrap();
    let body = chat(EMAIL);
    c.request("application/json", &body);
    c.response_headers("application/json");
    let answer =
        br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"a"},{"id":"b"}]}}]}"#;
    c.response_body(answer);
    let p = c.finish();
    assert_eq!(p.request_bytes, body.len() as u64);
    assert_eq!(p.response_bytes, answer.len() as u64);
    assert_eq!(p.tool_call_count, 2);
    assert_eq!(
        (p.request_body.as_str(), p.response_body.as_str()),
        ("", "")
    );
    assert!(Capture::new(Mode::Off, 4096).is_none());
}

#[test]
fn a_body_over_the_cap_is_cut_at_a_character_boundary_with_a_marker() {
    let long = "é".repeat(400); // 800 bytes
    let out = cap(long.clone(), 301, 0);
    assert!(out.starts_with(&"é".repeat(150)), "{out}");
    assert!(
        out.ends_with("…[truncated by Tollgate: kept 300 of 800 bytes]"),
        "{out}"
    );
    assert_eq!(cap("short".into(), 301, 0), "short");
    assert_eq!(
        cap("abc".into(), 2, 10),
        "ab…[truncated by Tollgate: kept 2 of 13 bytes]"
    );
    let body = redact_body(&chat(&"word ".repeat(200)), 256);
    assert!(body.contains("[truncated by Tollgate"), "{body}");
}

#[test]
fn a_private_key_withholds_the_whole_body() {
    let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...";
    assert_eq!(redact_body(&chat(key), 4096), WITHHELD);
}

/// Passes `chunks` of a same-dialect `family` stream through its pipeline into `c`.
fn stream(c: &mut Capture, family: ApiFamily, chunks: &[&[u8]]) {
    let pair = Pair {
        client: family,
        upstream: family,
    };
    let mut p = Pipeline::new(pair, false, 0, None);
    for (i, chunk) in chunks.iter().enumerate() {
        let out = p.push_chunk(chunk, i + 1 == chunks.len(), Some(c));
        c.response_bytes(out.map_or(chunk.len(), |o| o.len()));
    }
}

#[test]
fn streams_are_assembled_in_both_dialects_with_reasoning_and_tool_arguments() {
    let mut c = Capture::new(Mode::Full, 4096).unwrap();
    let openai = format!(
        "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        serde_json::json!({"choices":[{"delta":{"reasoning_content":"think "}}]}),
        serde_json::json!({"choices":[{"delta":{"content":format!("write to {EMAIL} ")}}]}),
        serde_json::json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"f","arguments":"{\"to\":\"x@y.io\"}"}}]}}]}),
    );
    // Split at every third byte: the text is the same.
    let parts: Vec<&[u8]> = openai.as_bytes().chunks(3).collect();
    stream(&mut c, ApiFamily::OpenAi, &parts);
    let p = c.finish();
    assert_eq!(
        p.response_body,
        r#"think write to [REDACTED:email] {"to":"[REDACTED:email]"}"#
    );
    assert_eq!(p.tool_call_count, 1);

    let mut c = Capture::new(Mode::Full, 4096).unwrap();
    let anthropic = [
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm "}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"call 415-555-0123 "}}"#,
        r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
        r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":1}"}}"#,
    ]
    .iter()
    .map(|d| format!("event: x\ndata: {d}\n\n"))
    .collect::<String>();
    stream(&mut c, ApiFamily::Anthropic, &[anthropic.as_bytes()]);
    let p = c.finish();
    assert_eq!(p.response_body, r#"hmm call [REDACTED:phone] {"a":1}"#);
    assert_eq!(p.tool_call_count, 1);
}

#[test]
fn a_long_stream_is_bounded_and_never_keeps_a_secret_cut_by_the_bound() {
    let mut c = Capture::new(Mode::Full, 256).unwrap();
    let chunk = format!(
        "data: {}\n\n",
        serde_json::json!({"choices":[{"delta":{"content": format!("{OPENAI_KEY} ")}}]})
    );
    stream(&mut c, ApiFamily::OpenAi, &vec![chunk.as_bytes(); 200]);
    let p = c.finish();
    assert!(p.response_body.len() < 400, "{}", p.response_body);
    assert!(
        p.response_body.contains("[truncated by Tollgate"),
        "{}",
        p.response_body
    );
    assert!(!p.response_body.contains("sk-proj"), "{}", p.response_body);
}

#[test]
fn streamed_tool_calls_are_assembled_per_call_in_every_client_dialect() {
    use serde_json::json;
    let names = |p: &pb::Payload| -> Vec<(String, String)> {
        p.tool_calls
            .iter()
            .map(|c| (c.name.clone(), c.arguments.clone()))
            .collect()
    };
    // OpenAI chat: the name once, arguments in deltas, two calls by index; PII redacted
    // inside the arguments, which stay JSON.
    let mut c = Capture::new(Mode::Full, 4096).unwrap();
    for e in [
        json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"c2","type":"function","function":{"name":"mail","arguments":"{\"to\":"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]}),
        json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":format!("\"{EMAIL}\"}}")}}]}}]}),
    ] {
        c.response_event(&e);
    }
    let p = c.finish();
    assert_eq!(p.tool_call_count, 2);
    assert_eq!(
        names(&p),
        [
            ("get_weather".to_owned(), r#"{"city":"Paris"}"#.to_owned()),
            ("mail".to_owned(), r#"{"to":"[REDACTED:email]"}"#.to_owned())
        ]
    );
    // Anthropic: a tool_use block and its partial_json deltas (text blocks are no calls).
    let mut c = Capture::new(Mode::Full, 4096).unwrap();
    for e in [
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}),
        json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"get_weather","input":{}}}),
        json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}),
        json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Oslo\"}"}}),
    ] {
        c.response_event(&e);
    }
    let p = c.finish();
    assert_eq!(
        names(&p),
        [("get_weather".to_owned(), r#"{"city":"Oslo"}"#.to_owned())]
    );
    assert!(
        p.response_body.starts_with("Let me check."),
        "{}",
        p.response_body
    );
    // Gemini: whole calls in a chunk; its text is the body.
    let mut c = Capture::new(Mode::Full, 4096).unwrap();
    c.response_event(
        &json!({"candidates":[{"content":{"role":"model","parts":[{"text":"ok "},
        {"functionCall":{"name":"get_weather","args":{"city":"Rome"}}}]}}]}),
    );
    let p = c.finish();
    assert_eq!(p.tool_call_count, 1);
    assert_eq!(
        names(&p),
        [("get_weather".to_owned(), r#"{"city":"Rome"}"#.to_owned())]
    );
    // The Responses API: a function_call item and its argument deltas by output index.
    let mut c = Capture::new(Mode::Full, 4096).unwrap();
    for e in [
        json!({"type":"response.output_text.delta","output_index":0,"delta":"hi"}),
        json!({"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","name":"get_weather","call_id":"c","arguments":""}}),
        json!({"type":"response.function_call_arguments.delta","output_index":1,"delta":"{\"city\":\"Lima\"}"}),
    ] {
        c.response_event(&e);
    }
    let p = c.finish();
    assert_eq!(p.tool_call_count, 1);
    assert_eq!(
        names(&p),
        [("get_weather".to_owned(), r#"{"city":"Lima"}"#.to_owned())]
    );
    // Metadata: counted, never kept.
    let mut c = Capture::new(Mode::Metadata, 4096).unwrap();
    c.response_event(&json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","name":"f"}}));
    let p = c.finish();
    assert_eq!((p.tool_call_count, p.tool_calls.len()), (1, 0));
}

#[test]
fn a_stream_keeps_at_most_its_bound_of_tool_calls() {
    let mut c = Capture::new(Mode::Full, 64).unwrap();
    for i in 0..(MAX_STREAM_TOOL_CALLS + 5) {
        c.response_event(&serde_json::json!({"candidates":[{"content":{"parts":[
            {"functionCall":{"name": format!("f{i}"), "args":{"a":"x".repeat(40)}}}]}}]}));
    }
    let p = c.finish();
    assert_eq!(p.tool_call_count as usize, MAX_STREAM_TOOL_CALLS + 5);
    assert_eq!(p.tool_calls.len(), MAX_STREAM_TOOL_CALLS);
    let kept: usize = p.tool_calls.iter().map(|c| c.arguments.len()).sum();
    // Arguments share a bound of twice the capture's (each cut is marked).
    assert!(kept < 64 * MAX_STREAM_TOOL_CALLS, "{kept}");
}
