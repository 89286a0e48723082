//! End to end for issue 13 item 11 (hostile input), through real Envoy and a real `serve`
//! shipping to a real logger: every endpoint of every dialect gets hostile bodies, paths and
//! headers (huge, deep and wide JSON, wrong types, invalid UTF-8, NUL bytes, huge model names,
//! path traversal, unicode) and must answer a clear 4xx in the client's dialect — never a 5xx,
//! never a key in a body or a log line — and keep serving; a body built to be slow to parse
//! must not stall other clients; a huge model name must not cost other tenants their records.
//! Runs in both auth shapes (`TOLLGATE_E2E_AUTH=ext_authz`). Bounded: a fixed number of
//! requests, each with a timeout, all to 127.0.0.1.

// Test helpers outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CHAT: &str = r#"{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}"#;

/// Which error shape a client expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

/// One hostile request.
struct Probe {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    dialect: Dialect,
    /// A request that may succeed (a read with a junk query): a 2xx is fine too.
    may_succeed: bool,
}

fn probe(name: &str, method: &'static str, path: &str, body: impl Into<Vec<u8>>) -> Probe {
    let dialect = if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else if path.starts_with("/v1beta/") {
        Dialect::Gemini
    } else {
        Dialect::OpenAi
    };
    Probe {
        name: name.to_owned(),
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: body.into(),
        dialect,
        may_succeed: false,
    }
}

/// `{"model": .., <n extra members>}`: about 15 bytes a member.
fn wide(n: usize) -> String {
    let mut body = String::with_capacity(n * 16 + 100);
    body.push_str(r#"{"model":"mock-model","messages":[{"role":"user","content":"hi"}]"#);
    for i in 0..n {
        body.push_str(&format!(",\"x{i}\":{i}"));
    }
    body.push('}');
    body
}

/// `{"model":..,"messages":[[[[...]]]]}`, `depth` arrays deep.
fn deep(depth: usize) -> String {
    format!(
        r#"{{"model":"mock-model","messages":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// Bodies every JSON endpoint gets, for a request that names `model` in its body.
fn bad_bodies(model_member: bool) -> Vec<(&'static str, Vec<u8>)> {
    let m = |rest: &str| {
        if model_member {
            format!(r#"{{"model":"mock-model",{rest}}}"#)
        } else {
            format!("{{{rest}}}")
        }
    };
    vec![
        ("wide 100k members", wide(100_000).into_bytes()),
        ("deep 100k arrays", deep(100_000).into_bytes()),
        ("deep 200 objects", {
            let mut s = m(r#""x":"#);
            s.pop();
            s.push_str(&"{\"a\":".repeat(200));
            s.push('1');
            s.push_str(&"}".repeat(201));
            s.into_bytes()
        }),
        ("not json", b"this is not json".to_vec()),
        ("empty", Vec::new()),
        (
            "truncated",
            br#"{"model":"mock-model","messages":[{"role":"#.to_vec(),
        ),
        ("an array", b"[1,2,3]".to_vec()),
        ("null", b"null".to_vec()),
        ("a string", br#""model""#.to_vec()),
        ("invalid utf-8", {
            let mut b = br#"{"model":"mock-model","messages":[{"role":"user","content":""#.to_vec();
            b.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
            b.extend_from_slice(br#""}]}"#);
            b
        }),
        ("raw NUL byte", {
            let mut b =
                br#"{"model":"mock-model","messages":[{"role":"user","content":"a"#.to_vec();
            b.push(0);
            b.extend_from_slice(br#"b"}]}"#);
            b
        }),
        (
            "duplicate members",
            br#"{"model":"mock-model","model":"other"}"#.to_vec(),
        ),
        ("model a number", br#"{"model":5,"messages":[]}"#.to_vec()),
        (
            "model an object",
            br#"{"model":{"$ne":1},"messages":[]}"#.to_vec(),
        ),
        (
            "huge model name",
            format!(r#"{{"model":"{}","messages":[]}}"#, "m".repeat(1 << 20)).into_bytes(),
        ),
        (
            "unicode model name",
            r#"{"model":"模型\u202e\u0000🦀","messages":[]}"#.as_bytes().to_vec(),
        ),
        (
            "model path traversal",
            br#"{"model":"../../etc/passwd","messages":[]}"#.to_vec(),
        ),
        ("stream a string", m(r#""stream":"yes""#).into_bytes()),
        (
            "huge number",
            m(&format!(r#""max_tokens":1{}"#, "0".repeat(5000))).into_bytes(),
        ),
    ]
}

/// Every hostile probe: each endpoint of each dialect × the bad bodies, plus paths and headers.
fn probes() -> Vec<Probe> {
    let mut out = Vec::new();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/feedback",
    ] {
        for (name, body) in bad_bodies(true) {
            let mut p = probe(&format!("{path} {name}"), "POST", path, body);
            // Counting reads only the text: members it does not use may be anything.
            p.may_succeed =
                path.ends_with("count_tokens") && matches!(name, "stream a string" | "huge number");
            out.push(p);
        }
    }
    for path in [
        "/v1beta/models/gemini-model:generateContent",
        "/v1beta/models/gemini-model:streamGenerateContent?alt=sse",
    ] {
        for (name, body) in bad_bodies(false) {
            out.push(probe(&format!("{path} {name}"), "POST", path, body));
        }
    }
    let huge = "m".repeat(40_000);
    for (name, method, path) in [
        (
            "gemini huge model in path",
            "POST",
            format!("/v1beta/models/{huge}:generateContent"),
        ),
        (
            "gemini unicode model in path",
            "POST",
            "/v1beta/models/%E6%A8%A1%E5%9E%8B%F0%9F%A6%80:generateContent".to_owned(),
        ),
        (
            "gemini traversal in path",
            "POST",
            "/v1beta/models/..%2F..%2Fadmin:generateContent".to_owned(),
        ),
        (
            "openai traversal",
            "POST",
            "/v1/chat/../../admin".to_owned(),
        ),
        ("unknown endpoint", "POST", format!("/v1/{huge}")),
        (
            "encoded NUL in path",
            "POST",
            "/v1/chat/completions%00".to_owned(),
        ),
        ("models huge name", "GET", format!("/v1/models/{huge}")),
        ("budget wrong method", "POST", "/v1/budget".to_owned()),
        ("usage wrong method", "POST", "/v1/usage".to_owned()),
    ] {
        out.push(probe(name, method, &path, CHAT.as_bytes().to_vec()));
    }
    for path in [
        format!("/v1/models?x={huge}"),
        format!("/v1/budget?x={huge}"),
        format!("/v1/usage?from={huge}&to=%00%ff"),
        "/v1beta/models?pageToken=%F0%9F%A6%80".to_owned(),
    ] {
        let mut p = probe("read with a junk query", "GET", &path, Vec::new());
        p.may_succeed = true;
        out.push(p);
    }
    // Headers: a huge end user, unicode and control characters, a wrong content type.
    let mut p = probe("huge end user header", "POST", "/v1/chat/completions", {
        br#"{"model":"no-such-model","messages":[]}"#.to_vec()
    });
    p.headers.push(("x-tollgate-end-user", "u".repeat(30_000)));
    out.push(p);
    let mut p = probe("unicode end user header", "POST", "/v1/messages", {
        br#"{"model":"no-such-model","max_tokens":5,"messages":[]}"#.to_vec()
    });
    p.headers
        .push(("x-tollgate-end-user", "ünï 模型 🦀".to_owned()));
    out.push(p);
    let mut p = probe(
        "xml content type",
        "POST",
        "/v1/chat/completions",
        b"<a/>".to_vec(),
    );
    p.headers
        .push(("content-type", "application/xml".to_owned()));
    out.push(p);
    out
}

/// Probes whose 4xx depends on another issue-13 branch (the translator codecs' structural
/// validation): they go to translated paths (OpenAI → Anthropic, Gemini → OpenAI).
fn structural_probes() -> Vec<Probe> {
    let mut out = Vec::new();
    for (name, body) in [
        (
            "messages [null]",
            r#"{"model":"claude-model","messages":[null]}"#,
        ),
        (
            "unknown role",
            r#"{"model":"claude-model","messages":[{"role":"wizard","content":"hi"}]}"#,
        ),
        (
            "tools a string",
            r#"{"model":"claude-model","messages":[{"role":"user","content":"hi"}],"tools":"all"}"#,
        ),
        (
            "content a number",
            r#"{"model":"claude-model","messages":[{"role":"user","content":5}]}"#,
        ),
    ] {
        out.push(probe(name, "POST", "/v1/chat/completions", body));
    }
    out.push(probe(
        "gemini contents [null]",
        "POST",
        "/v1beta/models/mock-model:generateContent",
        r#"{"contents":[null]}"#,
    ));
    out.push(probe(
        "anthropic messages a string to openai",
        "POST",
        "/v1/messages",
        r#"{"model":"mock-model","max_tokens":5,"messages":"hi"}"#,
    ));
    out
}

/// Sends `p` with the all-models key (in the header its dialect uses).
async fn send(stack: &Stack, p: &Probe) -> Reply {
    let url = format!("{}{}", stack.base, p.path);
    let mut req = match p.method {
        "GET" => stack.http.get(url),
        _ => stack.http.post(url).body(p.body.clone()),
    };
    req = match p.dialect {
        Dialect::OpenAi => req.bearer_auth(KEY_ALL),
        Dialect::Anthropic => req
            .header("x-api-key", KEY_ALL)
            .header("anthropic-version", "2023-06-01"),
        Dialect::Gemini => req.header("x-goog-api-key", KEY_ALL),
    };
    if !p.headers.iter().any(|(k, _)| *k == "content-type") {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in &p.headers {
        // Raw bytes: non-ASCII header values (obs-text) are what a hostile client sends.
        let value = ::reqwest::header::HeaderValue::from_bytes(v.as_bytes()).unwrap();
        req = req.header(*k, value);
    }
    let r = tokio::time::timeout(Duration::from_secs(30), req.send())
        .await
        .unwrap_or_else(|_| panic!("{}: no answer in 30 s", p.name))
        .unwrap_or_else(|e| panic!("{}: {e}", p.name));
    Reply::from(r).await
}

/// What is wrong with the reply to `p`, if anything: not a 4xx, not JSON in the dialect, a
/// key or a huge echo in it.
fn judge(p: &Probe, r: &Reply) -> Option<String> {
    let head = |t: &str| t.chars().take(300).collect::<String>();
    let ok = p.may_succeed && (200..300).contains(&r.status);
    if !ok && !(400..500).contains(&r.status) {
        return Some(format!(
            "{}: status {} ({})",
            p.name,
            r.status,
            head(&r.text)
        ));
    }
    if r.text.contains(KEY_ALL) {
        return Some(format!("{}: the key is in the body", p.name));
    }
    if r.text.len() > 4096 {
        return Some(format!(
            "{}: a {}-byte error body (echoes the input?)",
            p.name,
            r.text.len()
        ));
    }
    let Ok(v) = serde_json::from_str::<Value>(&r.text) else {
        return Some(format!(
            "{}: {} not JSON: {}",
            p.name,
            r.status,
            head(&r.text)
        ));
    };
    if ok {
        return None;
    }
    let ok = match p.dialect {
        Dialect::OpenAi => v["error"]["message"].is_string(),
        Dialect::Anthropic => v["type"] == "error" && v["error"]["type"].is_string(),
        Dialect::Gemini => v["error"]["code"].is_u64() && v["error"]["status"].is_string(),
    };
    (!ok).then(|| format!("{}: not a {:?} error: {}", p.name, p.dialect, head(&r.text)))
}

/// Runs `probes` (a few at a time) and returns every failure.
async fn run(stack: &Stack, probes: &[Probe]) -> Vec<String> {
    let mut failures = Vec::new();
    for batch in probes.chunks(4) {
        let replies = futures::future::join_all(batch.iter().map(|p| send(stack, p))).await;
        for (p, r) in batch.iter().zip(&replies) {
            failures.extend(judge(p, r));
        }
    }
    failures
}

async fn still_serving(stack: &Stack) {
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), CHAT)
        .await;
    assert_eq!(r.status, 200, "after the probes: {}", r.text);
}

fn hostile_options() -> StackOptions {
    StackOptions {
        // Room for the 1.5 MB wide body and the 1 MB model name.
        max_body: 4 * 1024 * 1024,
        ..StackOptions::default()
    }
}

#[tokio::test]
async fn every_endpoint_answers_hostile_input_with_a_4xx_in_its_dialect() {
    let logged = LoggedStack::ndjson_with(hostile_options());
    let stack = &logged.stack;
    let probes = probes();
    assert!(probes.len() > 150, "{} probes", probes.len());
    let failures = run(stack, &probes).await;
    assert!(
        failures.is_empty(),
        "{} of {} probes failed:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );
    still_serving(stack).await;
    // No key in any log line of serve, nor in any stored event; no event echoes a huge input.
    assert!(
        !stack.serve_log().contains(KEY_ALL),
        "the key is in serve's log"
    );
    let lines = logged.logger.lines();
    assert!(!lines.is_empty());
    for l in &lines {
        let text = l.to_string();
        assert!(!text.contains(KEY_ALL), "the key is in an event: {text}");
        assert!(text.len() < 8192, "a {}-byte event", text.len());
    }
    assert!(!logged.logger.proc.log().contains(KEY_ALL));
}

#[tokio::test]
async fn structurally_invalid_requests_on_translated_paths_get_a_4xx() {
    // Depends on the translator branch of issue 13 (structural validation of codecs).
    let stack = Stack::start(StackOptions::default());
    let failures = run(&stack, &structural_probes()).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    still_serving(&stack).await;
}

#[tokio::test]
async fn a_body_built_to_be_slow_does_not_stall_other_clients() {
    let stack = Stack::start(hostile_options());
    // Warm up (first connections, the key cache).
    still_serving(&stack).await;
    let hostile = wide(100_000);
    assert!(hostile.len() > 1_400_000, "{}", hostile.len());
    let started = Instant::now();
    // Four attackers send the worst body over and over while twelve normal clients run.
    let attackers = (0..4).map(|_| {
        let (stack, body) = (&stack, hostile.clone());
        async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let r = stack
                    .post("/v1/chat/completions", Some(KEY_ALL), body.clone())
                    .await;
                statuses.push((r.status, r.json()["error"]["code"].clone()));
            }
            statuses
        }
    });
    let clients = (0..12).map(|i| {
        let stack = &stack;
        async move {
            let mut worst = Duration::ZERO;
            for _ in 0..3 {
                let t = Instant::now();
                let body = json!({"model": "mock-model",
                    "messages": [{"role": "user", "content": format!("client {i}")}]});
                let r = stack
                    .post("/v1/chat/completions", Some(KEY_ALL), body.to_string())
                    .await;
                assert_eq!(r.status, 200, "client {i}: {}", r.text);
                worst = worst.max(t.elapsed());
            }
            worst
        }
    });
    let (attacks, worst) = tokio::join!(
        futures::future::join_all(attackers),
        futures::future::join_all(clients)
    );
    for statuses in attacks {
        for (status, code) in statuses {
            assert_eq!(status, 400);
            assert_eq!(code, "request_too_complex");
        }
    }
    let worst = worst.into_iter().max().unwrap();
    // Before: 12 of 12 normal requests got 504 after ≈ 10 s. Now each is served; the bound is
    // generous for a debug build on a loaded two-core machine.
    assert!(
        worst < Duration::from_secs(5),
        "a normal request took {worst:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    still_serving(&stack).await;
}

#[tokio::test]
async fn a_large_valid_body_is_served_off_the_async_workers() {
    // 1 MB of prompt: over `limits.blocking_body_bytes` (256 KiB), so handled on a blocking
    // thread, and still answered like any other request, in every client dialect.
    let stack = Stack::start(hostile_options());
    let text = "lorem ipsum ".repeat(90_000);
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": "mock-model", "messages": [{"role": "user", "content": text}]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = stack
        .post(
            "/v1/messages",
            Some(KEY_ALL),
            json!({"model": "mock-model", "max_tokens": 5,
                "messages": [{"role": "user", "content": text}]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["type"], "message");
}

#[tokio::test]
async fn a_huge_model_name_costs_no_other_tenant_its_record() {
    let logged = LoggedStack::ndjson_with(hostile_options());
    let stack = &logged.stack;
    let huge = "g".repeat(40_000);
    let mut ids = Vec::new();
    for i in 0..12 {
        if i == 5 {
            let r = stack
                .http
                .post(format!(
                    "{}/v1beta/models/{huge}:generateContent",
                    stack.base
                ))
                .header("x-goog-api-key", KEY_ALL)
                .header("content-type", "application/json")
                .body(r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#)
                .send()
                .await
                .unwrap();
            let r = Reply::from(r).await;
            assert_eq!(r.status, 404, "{}", r.text);
            assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
            assert!(r.text.len() < 2048, "the 404 echoed {} bytes", r.text.len());
            ids.push(r.header("x-tollgate-request-id").unwrap().to_owned());
        }
        let r = stack
            .post("/v1/chat/completions", Some(KEY_ALL), CHAT)
            .await;
        assert_eq!(r.status, 200);
        ids.push(r.header("x-tollgate-request-id").unwrap().to_owned());
    }
    let start = Instant::now();
    let mut lines = logged.logger.lines();
    while lines.len() < ids.len() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        lines = logged.logger.lines();
    }
    for id in &ids {
        let line = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no record of {id}"));
        let model = line["requested_model"].as_str().unwrap_or("");
        assert!(
            model.len() < 512,
            "a {}-byte model name logged",
            model.len()
        );
    }
    let bad = lines
        .iter()
        .find(|l| l["request_id"] == ids[5].as_str())
        .unwrap();
    assert!(
        bad["requested_model"].as_str().unwrap().contains("…[+"),
        "{bad}"
    );
    assert!(!logged.logger.proc.log().contains("refused"));
}
