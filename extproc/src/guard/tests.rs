//! Guard tests: which text of each request shape is judged, and exact redaction of streams
//! wherever the provider's chunks (and the deltas inside them) split the text.

use serde_json::{json, Value};
use tollgate_core::config::ApiFamily;
use tollgate_guardrails::{Action, Detector, RuleSpec};

use super::*;
use crate::stream::Pipeline;
use crate::translator::Pair;

fn engine(rules: &[(&str, Detector, Action)]) -> Arc<Engine> {
    let specs: Vec<RuleSpec> = rules
        .iter()
        .map(|(id, detector, action)| RuleSpec {
            id: (*id).to_owned(),
            detector: detector.clone(),
            action: *action,
        })
        .collect();
    Arc::new(Engine::new(&specs).unwrap())
}

fn pii() -> Arc<Engine> {
    engine(&[
        ("email", Detector::Email, Action::Redact),
        ("card", Detector::CreditCard, Action::Block),
        (
            "words",
            Detector::DenyList(vec!["project x".into()]),
            Action::Flag,
        ),
    ])
}

fn check(endpoint: Endpoint, body: &Value) -> (RequestCheck, Value) {
    let bytes = body.to_string().into_bytes();
    let obj = RawObject::parse(&bytes).unwrap();
    let c = check_request(&pii(), endpoint, &obj);
    let replace: Vec<(&str, &str)> = c.replace.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out: Value = serde_json::from_slice(&obj.write_with(&replace, 0)).unwrap();
    (c, out)
}

#[test]
fn openai_chat_text_and_text_parts_are_judged_and_redacted_in_place() {
    let body = json!({"model": "m", "temperature": 0.5, "messages": [
        {"role": "system", "content": "about project X"},
        {"role": "user", "content": [
            {"type": "text", "text": "mail bob@example.com"},
            {"type": "image_url", "image_url": {"url": "https://x.test/bob@example.com.png"}}
        ]},
        {"role": "assistant", "content": null},
    ]});
    let (c, out) = check(Endpoint::ChatCompletions, &body);
    assert_eq!(c.verdict.redacted, ["email"]);
    assert_eq!(c.verdict.flagged, ["words"]);
    assert_eq!(c.verdict.blocked_by, None);
    assert_eq!(
        out["messages"][1]["content"][0]["text"],
        "mail [REDACTED:email]"
    );
    // Only text is judged: URLs and other members are untouched.
    assert_eq!(
        out["messages"][1]["content"][1]["image_url"]["url"],
        "https://x.test/bob@example.com.png"
    );
    assert_eq!(out["temperature"], 0.5);
    assert_eq!(out["messages"][0]["content"], "about project X");
}

#[test]
fn anthropic_system_messages_and_tool_results_are_judged() {
    let body = json!({"model": "m", "max_tokens": 5,
    "system": [{"type": "text", "text": "ops: ann@example.org"}],
    "messages": [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
            "content": [{"type": "text", "text": "card 4111 1111 1111 1111"}]}]},
    ]});
    let (c, out) = check(Endpoint::Messages, &body);
    assert_eq!(c.verdict.blocked_by.as_deref(), Some("card"));
    assert_eq!(out["system"][0]["text"], "ops: [REDACTED:email]");
}

#[test]
fn completions_prompts_and_embedding_inputs_are_judged() {
    let (c, out) = check(
        Endpoint::Completions,
        &json!({"model": "m", "prompt": ["a", "to bob@example.com"]}),
    );
    assert_eq!(c.verdict.redacted, ["email"]);
    assert_eq!(out["prompt"][1], "to [REDACTED:email]");
    let (c, out) = check(
        Endpoint::Embeddings,
        &json!({"model": "m", "input": "bob@example.com"}),
    );
    assert_eq!(c.verdict.redacted, ["email"]);
    assert_eq!(out["input"], "[REDACTED:email]");
    // Token arrays carry no text; a clean body is not rewritten.
    let (c, _) = check(
        Endpoint::Embeddings,
        &json!({"model": "m", "input": [[1, 2]]}),
    );
    assert!(!c.verdict.matched() && c.replace.is_empty());
}

#[test]
fn judging_a_request_blocks_naming_the_rule_or_returns_the_redacted_body() {
    let metrics = Metrics::default();
    let mut verdicts = Verdicts::default();
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "x 4111 1111 1111 1111"}]})
            .to_string();
    let obj = RawObject::parse(body.as_bytes()).unwrap();
    let err = judge_request(
        &pii(),
        Endpoint::ChatCompletions,
        &obj,
        &mut verdicts,
        &metrics,
    )
    .unwrap_err();
    assert_eq!(err.class().openai_code, Some("guardrail_blocked"));
    assert!(err.to_string().contains("`card`") && !err.to_string().contains("4111"));
    assert_eq!(verdicts.list()[0].action, "block");

    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "x a@b.co"}]}).to_string();
    let obj = RawObject::parse(body.as_bytes()).unwrap();
    let out = judge_request(
        &pii(),
        Endpoint::ChatCompletions,
        &obj,
        &mut verdicts,
        &metrics,
    )
    .unwrap()
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["messages"][0]["content"], "x [REDACTED:email]");
    let clean = br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;
    let obj = RawObject::parse(clean).unwrap();
    assert!(judge_request(
        &pii(),
        Endpoint::ChatCompletions,
        &obj,
        &mut verdicts,
        &metrics
    )
    .unwrap()
    .is_none());
}

#[test]
fn verdicts_are_recorded_once_and_counted() {
    let metrics = Metrics::default();
    let mut v = Verdicts::default();
    let verdict = Verdict {
        blocked_by: None,
        redacted: vec!["email".into()],
        flagged: vec!["words".into()],
    };
    v.add(Side::Request, &verdict, &metrics);
    v.add(Side::Request, &verdict, &metrics);
    v.add(Side::Response, &verdict, &metrics);
    let p = v.to_proto();
    assert_eq!(p.len(), 4);
    assert_eq!(
        (p[0].rule.as_str(), p[0].action.as_str(), p[0].side.as_str()),
        ("email", "redact", "request")
    );
    let n = metrics
        .guardrail_verdicts
        .get_or_create(&GuardrailLabels {
            rule: "email".into(),
            action: "redact",
            side: "request",
        })
        .get();
    assert_eq!(n, 1);
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

const TEXT: &str = "Sure: write to bob.smith@example.com today, or call. Thanks ✓";
const PII: &str = "bob.smith@example.com";

fn openai_upstream(deltas: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "u",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    s.push_str(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for d in deltas {
        s.push_str(&chunk(json!({"content": d}), Value::Null));
    }
    s.push_str(&chunk(json!({}), json!("stop")));
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

fn anthropic_upstream(deltas: &[&str]) -> Vec<u8> {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"u\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for d in deltas {
        s.push_str(&format!(
            "event: content_block_delta\ndata: {}\n\n",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}})
        ));
    }
    s.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    s.into_bytes()
}

fn gemini_upstream(deltas: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    let last = deltas.len().saturating_sub(1);
    for (i, d) in deltas.iter().enumerate() {
        let mut chunk = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": d}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 3}, "modelVersion": "u", "responseId": "r1"});
        if i == last {
            chunk["candidates"][0]["finishReason"] = "STOP".into();
            chunk["usageMetadata"]["candidatesTokenCount"] = 9.into();
        }
        s.push_str(&format!("data: {chunk}\r\n\r\n"));
    }
    s.into_bytes()
}

fn bedrock_upstream(deltas: &[&str]) -> Vec<u8> {
    use crate::translator::eventstream::event;
    let mut s = event("messageStart", br#"{"role":"assistant"}"#);
    for d in deltas {
        let delta = json!({"contentBlockIndex": 0, "delta": {"text": d}});
        s.extend(event("contentBlockDelta", delta.to_string().as_bytes()));
    }
    s.extend(event("contentBlockStop", br#"{"contentBlockIndex":0}"#));
    s.extend(event("messageStop", br#"{"stopReason":"end_turn"}"#));
    s.extend(event(
        "metadata",
        br#"{"usage":{"inputTokens":3,"outputTokens":9,"totalTokens":12},"metrics":{"latencyMs":5}}"#,
    ));
    s
}

/// The assistant text a client reads from its stream, and whether the stream ended with an
/// error event.
fn client_text(client: ApiFamily, sse: &[u8]) -> (String, Option<Value>) {
    let mut text = String::new();
    let mut error = None;
    for event in String::from_utf8(sse.to_vec()).unwrap().split("\n\n") {
        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        match client {
            ApiFamily::OpenAi | ApiFamily::Bedrock => {
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    text.push_str(t);
                }
            }
            ApiFamily::Anthropic => {
                if let Some(t) = v["delta"]["text"].as_str() {
                    text.push_str(t);
                }
            }
            ApiFamily::Gemini => {
                for p in v["candidates"][0]["content"]["parts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = p["text"].as_str() {
                        text.push_str(t);
                    }
                }
            }
        }
        if v.get("error").is_some() {
            error = Some(v);
        }
    }
    (text, error)
}

/// The client stream, as the processor builds it: the OpenAI → OpenAI pair judged chunk by
/// chunk in place ([`OpenAiStreamGuard`]), every other pair through the hub with a
/// [`StreamGuard`].
fn run(pair: Pair, engine: &Arc<Engine>, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut t = Pipeline::new(pair, false, 7, Some(Arc::clone(engine)));
    for (i, c) in chunks.iter().enumerate() {
        out.extend(t.push(c, i + 1 == chunks.len()));
    }
    out
}

const PAIRS: [Pair; 9] = [
    Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::OpenAi,
    },
    Pair {
        client: ApiFamily::Anthropic,
        upstream: ApiFamily::Anthropic,
    },
    Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::Anthropic,
    },
    Pair {
        client: ApiFamily::Anthropic,
        upstream: ApiFamily::OpenAi,
    },
    Pair {
        client: ApiFamily::Gemini,
        upstream: ApiFamily::Gemini,
    },
    Pair {
        client: ApiFamily::Gemini,
        upstream: ApiFamily::OpenAi,
    },
    Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::Gemini,
    },
    Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::Bedrock,
    },
    Pair {
        client: ApiFamily::Anthropic,
        upstream: ApiFamily::Bedrock,
    },
];

fn upstream(pair: Pair, deltas: &[&str]) -> Vec<u8> {
    match pair.upstream {
        ApiFamily::OpenAi => openai_upstream(deltas),
        ApiFamily::Anthropic => anthropic_upstream(deltas),
        ApiFamily::Gemini => gemini_upstream(deltas),
        ApiFamily::Bedrock => bedrock_upstream(deltas),
    }
}

#[test]
fn pii_split_at_every_boundary_never_reaches_the_client_and_reads_as_unsplit() {
    let engine = pii();
    let want = TEXT.replace(PII, "[REDACTED:email]");
    for pair in PAIRS {
        let whole = upstream(pair, &[TEXT]);
        let reference = run(pair, &engine, &[&whole]);
        let (text, error) = client_text(pair.client, &reference);
        assert_eq!(text, want, "{pair:?}");
        assert!(error.is_none());

        // The text split into two deltas at every character boundary ...
        for (k, _) in TEXT.char_indices().skip(1) {
            let split = upstream(pair, &[&TEXT[..k], &TEXT[k..]]);
            let out = run(pair, &engine, &[&split]);
            let (text, _) = client_text(pair.client, &out);
            assert_eq!(text, want, "{pair:?} delta split at {k}");
            assert!(!String::from_utf8_lossy(&out).contains(PII));
        }
        // ... and the upstream bytes cut at every offset: the same bytes as unsplit.
        for cut in 1..whole.len() {
            let out = run(pair, &engine, &[&whole[..cut], &whole[cut..]]);
            assert_eq!(out, reference, "{pair:?} byte cut at {cut}");
        }
        // One byte per chunk, the text one character per delta.
        let chars: Vec<String> = TEXT.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        let tiny = upstream(pair, &refs);
        let bytes: Vec<&[u8]> = tiny.chunks(1).collect();
        let out = run(pair, &engine, &bytes);
        assert!(!String::from_utf8_lossy(&out).contains(PII), "{pair:?}");
        assert!(
            !String::from_utf8_lossy(&out).contains("bob.smith"),
            "{pair:?}"
        );
        assert_eq!(client_text(pair.client, &out).0, want, "{pair:?}");
    }
}

#[test]
fn a_block_mid_stream_ends_it_with_an_error_in_the_client_dialect() {
    let engine = pii();
    let deltas = [
        "Your card: 4111 1111 ",
        "1111 1111 is on file.",
        " More text.",
    ];
    for pair in PAIRS {
        let out = run(pair, &engine, &[&upstream(pair, &deltas)]);
        let (text, error) = client_text(pair.client, &out);
        assert!(!text.contains("1111 1111"), "{pair:?}: {text}");
        let error = error.unwrap_or_else(|| panic!("{pair:?}: no error event"));
        let s = String::from_utf8_lossy(&out);
        match pair.client {
            ApiFamily::OpenAi | ApiFamily::Bedrock => {
                assert_eq!(error["error"]["code"], "guardrail_blocked");
                assert!(!s.contains("[DONE]"));
            }
            ApiFamily::Anthropic => {
                assert_eq!(error["type"], "error");
                assert!(s.contains("event: error\n"));
                assert!(!s.contains("message_stop"));
            }
            ApiFamily::Gemini => {
                assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
                assert!(!s.contains("finishReason"));
            }
        }
        assert!(error.to_string().contains("`card`"));
        // The error event is the last one.
        assert!(s.trim_end().ends_with('}'));
        assert!(s.rfind("error").unwrap() > s.rfind("text").unwrap_or(0));
    }
}

#[test]
fn stream_verdicts_cover_redactions_and_flags() {
    let engine = pii();
    let pair = PAIRS[0];
    let mut t = Pipeline::new(pair, false, 7, Some(Arc::clone(&engine)));
    t.push(
        &upstream(pair, &["about project ", "x: bob@example.com"]),
        true,
    );
    let v = t.verdict().unwrap();
    assert_eq!(v.redacted, ["email"]);
    assert_eq!(v.flagged, ["words"]);
}

#[test]
fn complete_responses_are_judged_in_place_in_each_dialect() {
    let body = json!({"id": "c", "system_fingerprint": "fp", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": format!("hi {PII}")}, "logprobs": null},
        {"index": 1, "message": {"role": "assistant", "content": "clean"}},
        {"index": 2, "text": format!("legacy {PII}")},
    ]});
    let (v, out) = judge_response(&pii(), ApiFamily::OpenAi, body.to_string().as_bytes()).unwrap();
    assert_eq!(v.redacted, ["email"]);
    let out: Value = serde_json::from_slice(&out.unwrap()).unwrap();
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "hi [REDACTED:email]"
    );
    assert_eq!(out["choices"][1]["message"]["content"], "clean");
    assert_eq!(out["choices"][2]["text"], "legacy [REDACTED:email]");
    assert_eq!(out["system_fingerprint"], "fp");

    let body = json!({"type": "message", "content": [
        {"type": "text", "text": "card 4111 1111 1111 1111"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"text": PII}},
    ]});
    let (v, _) = judge_response(&pii(), ApiFamily::Anthropic, body.to_string().as_bytes()).unwrap();
    assert_eq!(v.blocked_by.as_deref(), Some("card"));
    assert_eq!(v.redacted, ["email"], "tool inputs are judged too");
    // Clean bodies are not rewritten; non-objects are not judged.
    let (_, out) = judge_response(&pii(), ApiFamily::Anthropic, br#"{"content":[]}"#).unwrap();
    assert!(out.is_none());
    assert!(judge_response(&pii(), ApiFamily::OpenAi, b"<html>").is_none());
}

#[test]
fn same_dialect_openai_streams_keep_every_choice_and_member() {
    let engine = pii();
    let chunk = |choices: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "u",
                "system_fingerprint": "fp_1", "choices": choices})
        )
    };
    let mut up = String::new();
    up.push_str(&chunk(json!([
        {"index": 0, "delta": {"role": "assistant", "content": "a: bob@exa"}, "logprobs": {"content": []}, "finish_reason": null},
        {"index": 1, "delta": {"role": "assistant", "content": "b: ann@exa"}, "finish_reason": null}
    ])));
    up.push_str(&chunk(json!([
        {"index": 1, "delta": {"content": "mple.org"}, "finish_reason": "stop"},
        {"index": 0, "delta": {"content": "mple.com ok"}, "finish_reason": null}
    ])));
    up.push_str(&chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ));
    up.push_str("data: [DONE]\n\n");
    let out = run(PAIRS[0], &engine, &[up.as_bytes()]);
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("example"), "{s}");
    let mut texts = [String::new(), String::new()];
    for data in s.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["system_fingerprint"], "fp_1");
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["delta"]["content"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(texts, ["a: [REDACTED:email] ok", "b: [REDACTED:email]"]);
    assert!(s.contains("\"logprobs\":{\"content\":[]}"));
    assert!(s.ends_with("data: [DONE]\n\n"));
}

#[test]
fn legacy_completions_streams_are_redacted_and_blocked() {
    let engine = pii();
    let chunk = |text: &str, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "text_completion", "created": 1, "model": "u",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]})
        )
    };
    let up = [
        chunk("mail bob@", Value::Null),
        chunk("example.com", Value::Null),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let out = String::from_utf8(run(PAIRS[0], &engine, &[up.as_bytes()])).unwrap();
    let text: String = out
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "mail [REDACTED:email]");
    assert!(out.ends_with("data: [DONE]\n\n"));

    let up = [
        chunk("card 4111 1111 1111 1111 ok", Value::Null),
        chunk("more", json!("stop")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let out = String::from_utf8(run(PAIRS[0], &engine, &[up.as_bytes()])).unwrap();
    assert!(!out.contains("4111") && !out.contains("[DONE]"), "{out}");
    assert!(out.contains("guardrail_blocked"), "{out}");
}

#[test]
fn tool_call_arguments_and_reasoning_are_judged_and_stay_valid_json() {
    // Response: OpenAI arguments (JSON in a string) and reasoning; Anthropic tool input and
    // thinking.
    let args = json!({"to": PII, "n": 1, "tags": ["x", PII]}).to_string();
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
        "reasoning_content": format!("mail {PII}"),
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "send", "arguments": args}}]}}]});
    let (v, out) = judge_response(&pii(), ApiFamily::OpenAi, body.to_string().as_bytes()).unwrap();
    assert_eq!(v.redacted, ["email"]);
    let out: Value = serde_json::from_slice(&out.unwrap()).unwrap();
    let m = &out["choices"][0]["message"];
    assert_eq!(m["reasoning_content"], "mail [REDACTED:email]");
    let args: Value = serde_json::from_str(
        m["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        args,
        json!({"to": "[REDACTED:email]", "n": 1, "tags": ["x", "[REDACTED:email]"]})
    );
    let body = json!({"content": [{"type": "thinking", "thinking": format!("hmm {PII}"), "signature": "sig"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"to": PII}}]});
    let (_, out) =
        judge_response(&pii(), ApiFamily::Anthropic, body.to_string().as_bytes()).unwrap();
    let out: Value = serde_json::from_slice(&out.unwrap()).unwrap();
    assert_eq!(out["content"][0]["thinking"], "hmm [REDACTED:email]");
    assert_eq!(out["content"][0]["signature"], "sig");
    assert_eq!(out["content"][1]["input"]["to"], "[REDACTED:email]");

    // Request: assistant tool calls in the history, both dialects.
    let body = json!({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "send", "arguments": json!({"to": PII}).to_string()}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sent"}]})
    .to_string();
    let obj = crate::translator::json::RawObject::parse(body.as_bytes()).unwrap();
    let check = check_request(&pii(), Endpoint::ChatCompletions, &obj);
    assert_eq!(check.verdict.redacted, ["email"]);
    let messages: Value = serde_json::from_str(&check.replace[0].1).unwrap();
    let args: Value = serde_json::from_str(
        messages[0]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"to": "[REDACTED:email]"}));
    let body = json!({"model": "m", "max_tokens": 9, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"to": PII}}]}]})
    .to_string();
    let obj = crate::translator::json::RawObject::parse(body.as_bytes()).unwrap();
    let check = check_request(&pii(), Endpoint::Messages, &obj);
    let messages: Value = serde_json::from_str(&check.replace[0].1).unwrap();
    assert_eq!(messages[0]["content"][0]["input"]["to"], "[REDACTED:email]");
}

#[test]
fn stream_tool_arguments_and_thinking_deltas_are_redacted_as_their_own_kind() {
    let mut g = StreamGuard::new(pii());
    let mut events = vec![
        StreamEvent::Delta {
            index: 0,
            delta: Delta::Thinking(format!("think {PII} ")),
        },
        StreamEvent::Delta {
            index: 0,
            delta: Delta::Signature("sig".into()),
        },
        StreamEvent::BlockStop { index: 0 },
        StreamEvent::Delta {
            index: 1,
            delta: Delta::ToolArguments("{\"to\":\"bob@exa".into()),
        },
        StreamEvent::Delta {
            index: 1,
            delta: Delta::ToolArguments("mple.com\"}".into()),
        },
        StreamEvent::BlockStop { index: 1 },
    ];
    g.apply(&mut events);
    let mut thinking = String::new();
    let mut args = String::new();
    for e in &events {
        match e {
            StreamEvent::Delta {
                delta: Delta::Thinking(t),
                ..
            } => thinking.push_str(t),
            StreamEvent::Delta {
                delta: Delta::ToolArguments(t),
                ..
            } => args.push_str(t),
            StreamEvent::Delta {
                delta: Delta::Text(t),
                ..
            } => panic!("released as text: {t}"),
            _ => {}
        }
    }
    assert_eq!(thinking, "think [REDACTED:email] ");
    let parsed: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(parsed, json!({"to": "[REDACTED:email]"}));
    assert!(events.iter().any(|e| matches!(
        e,
        StreamEvent::Delta {
            delta: Delta::Signature(_),
            ..
        }
    )));
}

#[test]
fn openai_stream_reasoning_and_tool_arguments_are_redacted_where_they_are_split() {
    let chunk = |delta: Value, finish: Option<&str>| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let stream = [
        chunk(json!({"reasoning_content": "mail bob.smith@exa"}), None),
        chunk(json!({"reasoning_content": "mple.com ok"}), None),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "t", "type": "function",
                "function": {"name": "send", "arguments": "{\"to\":\"bob.smith@"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "example.com\"}"}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let pair = Pair {
        client: ApiFamily::OpenAi,
        upstream: ApiFamily::OpenAi,
    };
    let mut g = Pipeline::new(pair, false, 7, Some(pii()));
    let out = g.push(stream.as_bytes(), true);
    let (mut reasoning, mut args) = (String::new(), String::new());
    for data in String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
    {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let d = &v["choices"][0]["delta"];
        reasoning.push_str(d["reasoning_content"].as_str().unwrap_or_default());
        for c in d["tool_calls"].as_array().into_iter().flatten() {
            args.push_str(c["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(reasoning, "mail [REDACTED:email] ok");
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"to": "[REDACTED:email]"})
    );
    assert_eq!(g.verdict().unwrap().redacted, ["email"]);
}
