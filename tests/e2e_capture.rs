//! End to end for payload capture (issue 5): requests through real Envoy and a real
//! `tollgate serve`, recorded by a real `tollgate logger` into NDJSON files and into a real
//! ClickHouse. Per key (and tenant, which a key overrides): `off` stores no payload,
//! `metadata` sizes and counts only, `full` the bodies (a stream's assembled text) with the
//! email, card number and API key in the prompt (and echoed in the answer) redacted, capped
//! with a marker; none of those ever reaches the store, nor any header.

// Test helpers outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";
const API_KEY: &str = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD";

fn prompt() -> String {
    format!("mail {EMAIL} key {API_KEY} card {CARD} thanks")
}

/// A chat body; with `tools`, one tool is offered (and the mock answers with a call to it).
fn chat(stream: bool, tools: bool, content: &str) -> String {
    let mut body = json!({"model": "mock-model", "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}]});
    if tools {
        body["tools"] = json!([{"type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    }
    body.to_string()
}

/// The requests of the test, by name: (request id, body sent).
async fn send_all(stack: &Stack) -> HashMap<&'static str, (String, String)> {
    let mut out = HashMap::new();
    let cases: [(&str, &str, bool, bool, String); 7] = [
        ("off", KEY_ALL, false, false, prompt()),
        ("key-off", KEY_CAPTURE_OFF, false, false, prompt()),
        ("metadata", KEY_CAPTURE_METADATA, false, true, prompt()),
        ("full", KEY_CAPTURE_FULL, false, false, prompt()),
        ("full-stream", KEY_CAPTURE_FULL, true, false, prompt()),
        ("full-stream-tools", KEY_CAPTURE_FULL, true, true, prompt()),
        (
            "full-long",
            KEY_CAPTURE_FULL,
            false,
            false,
            "long ".repeat(1000),
        ),
    ];
    for (name, key, stream, tools, content) in cases {
        let body = chat(stream, tools, &content);
        let r = stack
            .post("/v1/chat/completions", Some(key), body.clone())
            .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        let id = r.header("x-tollgate-request-id").unwrap().to_owned();
        out.insert(name, (id, body));
    }
    out
}

/// Checks the stored records (NDJSON lines or ClickHouse rows as JSON objects) by request id.
fn check(records: &HashMap<String, Value>, sent: &HashMap<&'static str, (String, String)>) {
    let rec = |name: &str| {
        let id = &sent[name].0;
        records
            .get(id)
            .unwrap_or_else(|| panic!("{name} ({id}) not stored: {records:#?}"))
    };
    for name in ["off", "key-off"] {
        let r = rec(name);
        assert_eq!(r["payload_mode"], "off", "{name}: {r}");
        assert_eq!(
            (&r["request_bytes"], &r["request_body"], &r["response_body"]),
            (&json!(0), &json!(""), &json!("")),
            "{name}: {r}"
        );
    }
    let m = rec("metadata");
    assert_eq!(m["payload_mode"], "metadata", "{m}");
    assert_eq!(m["request_bytes"], json!(sent["metadata"].1.len()), "{m}");
    assert_eq!(m["request_content_type"], "application/json", "{m}");
    assert_eq!(
        (&m["message_count"], &m["tool_count"], &m["tool_call_count"]),
        (&json!(2), &json!(1), &json!(1)),
        "{m}"
    );
    assert!(m["response_bytes"].as_u64().unwrap() > 50, "{m}");
    assert!(
        m["response_content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/json"),
        "{m}"
    );
    assert_eq!(
        (&m["request_body"], &m["response_body"]),
        (&json!(""), &json!(""))
    );

    let f = rec("full");
    assert_eq!(f["payload_mode"], "full", "{f}");
    let request: Value = serde_json::from_str(f["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(
        request["messages"][1]["content"],
        "mail [REDACTED:email] key [REDACTED:secret] card [REDACTED:credit_card] thanks",
        "{f}"
    );
    let response: Value = serde_json::from_str(f["response_body"].as_str().unwrap()).unwrap();
    assert_eq!(
        response["choices"][0]["message"]["content"],
        "Mock reply to: mail [REDACTED:email] key [REDACTED:secret] card [REDACTED:credit_card] thanks",
        "{f}"
    );
    let s = rec("full-stream");
    assert_eq!(
        s["response_body"],
        "Mock reply to: mail [REDACTED:email] key [REDACTED:secret] card [REDACTED:credit_card] thanks",
        "{s}"
    );
    assert_eq!(s["stream"], json!(true));
    assert!(
        s["response_content_type"]
            .as_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{s}"
    );
    let t = rec("full-stream-tools");
    assert_eq!(
        (&t["tool_count"], &t["tool_call_count"]),
        (&json!(1), &json!(1)),
        "{t}"
    );
    let l = rec("full-long");
    let body = l["request_body"].as_str().unwrap();
    assert!(
        body.ends_with(&format!(
            "…[truncated by Tollgate: kept 2048 of {} bytes]",
            sent["full-long"].1.len()
        )),
        "{body}"
    );
    assert_eq!(l["request_bytes"], json!(sent["full-long"].1.len()));
}

/// Asserts that no secret of the prompt (nor any key) appears in `stored`.
fn assert_nothing_secret(stored: &str) {
    for secret in [
        EMAIL,
        API_KEY,
        CARD,
        KEY_CAPTURE_FULL,
        KEY_CAPTURE_METADATA,
        KEY_ALL,
    ] {
        assert!(!stored.contains(secret), "`{secret}` was stored:\n{stored}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_per_key_lands_in_ndjson_redacted_and_capped() {
    let logged = LoggedStack::ndjson();
    let (stack, logger) = (&logged.stack, &logged.logger);
    let sent = send_all(stack).await;
    let start = Instant::now();
    while logger.lines().len() < sent.len() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records: HashMap<String, Value> = logger
        .lines()
        .into_iter()
        .map(|l| (l["request_id"].as_str().unwrap().to_owned(), l))
        .collect();
    check(&records, &sent);
    let mut stored = String::new();
    for e in std::fs::read_dir(&logger.data_dir).unwrap().flatten() {
        if e.path().is_file() {
            stored.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
    }
    assert_nothing_secret(&stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_per_key_lands_in_clickhouse_redacted_and_capped() {
    let logged = LoggedStack::clickhouse("tg_cap");
    let (stack, ch) = (&logged.stack, logged.ch());
    let sent = send_all(stack).await;
    let sql = "SELECT request_id, stream, payload_mode, request_bytes, request_content_type, \
               message_count, tool_count, response_bytes, response_content_type, \
               tool_call_count, request_body, response_body FROM tg_cap.requests FORMAT JSONEachRow";
    let start = Instant::now();
    let mut rows = String::new();
    while rows.lines().count() < sent.len() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows = ch.query(sql).unwrap_or_default();
    }
    let records: HashMap<String, Value> = rows
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            // JSONEachRow quotes 64-bit integers and writes UInt8 for booleans.
            for k in ["request_bytes", "response_bytes"] {
                v[k] = json!(v[k].as_str().unwrap().parse::<u64>().unwrap());
            }
            v["stream"] = json!(v["stream"] == 1);
            (v["request_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    check(&records, &sent);
    let everything = ch
        .query("SELECT * FROM tg_cap.requests FORMAT TSV")
        .unwrap();
    assert_nothing_secret(&everything);
}
