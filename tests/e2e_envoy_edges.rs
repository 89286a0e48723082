//! Hostile HTTP at the Envoy edge, spoken as raw bytes over TCP to real Envoy in front of real
//! `tollgate serve` (malformed requests need raw sockets; no HTTP client sends them): malformed
//! HTTP, oversized bodies, too many client headers and Envoy's own 4xx all get an answer, in
//! JSON in the client's dialect where the path names one, within a bounded time; plain
//! requests still pass. Runs in either auth shape (`TOLLGATE_E2E_AUTH=ext_authz`).

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// How long any probe may take to be answered.
const DEADLINE: Duration = Duration::from_secs(15);

/// The request body limit of the stack (`StackOptions::default().max_body`).
const LIMIT: usize = 64 * 1024;

/// A response read off the socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The client dialect an error body must be in.
#[derive(Debug, Clone, Copy)]
enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Dialect {
    /// Asserts `r` is an error of `status` in this dialect; `kind` is the Anthropic/OpenAI
    /// error type expected (Gemini: its status string).
    fn assert_error(self, r: &Raw, status: u16, kind: &str) {
        assert_eq!(r.status, status, "{r:?}");
        let v = r.json();
        match self {
            Dialect::OpenAi => {
                assert!(v["error"]["message"].is_string(), "{r:?}");
                assert_eq!(v["error"]["type"], kind, "{r:?}");
            }
            Dialect::Anthropic => {
                assert_eq!(v["type"], "error", "{r:?}");
                assert!(v["error"]["message"].is_string(), "{r:?}");
                assert_eq!(v["error"]["type"], kind, "{r:?}");
            }
            Dialect::Gemini => {
                assert_eq!(v["error"]["code"], status, "{r:?}");
                assert!(v["error"]["message"].is_string(), "{r:?}");
                assert_eq!(v["error"]["status"], kind, "{r:?}");
            }
        }
    }
}

fn listener(stack: &Stack) -> SocketAddr {
    stack
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the stack's base is http://ip:port")
}

/// Sends `request` (from a thread of its own, as a client that writes its whole request
/// before it looks at the answer would, except that this one reads meanwhile) and reads one
/// response: status 0 when none came before [`DEADLINE`] or the connection closed first.
fn exchange(addr: SocketAddr, request: Vec<u8>) -> Raw {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // Envoy may answer and close before it has read everything: not an error here.
        for chunk in request.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let raw = loop {
        if let Some(raw) = parse(&got) {
            break raw;
        }
        let left = DEADLINE.saturating_sub(started.elapsed());
        if left.is_zero() {
            break None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break parse(&got).flatten(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    sender.join().unwrap();
    raw.unwrap_or_else(|| Raw {
        status: 0,
        headers: Vec::new(),
        body: format!(
            "no complete response in {:?}; read {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&got)
        ),
    })
}

/// One complete response in `got` (`Some(None)`: never one; `None`: not yet).
fn parse(got: &[u8]) -> Option<Option<Raw>> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body = &got[end + 4..];
    if body.len() < length {
        return None;
    }
    Some(Some(Raw {
        status,
        headers,
        body: String::from_utf8_lossy(&body[..length]).into_owned(),
    }))
}

/// A POST of `body` to `path` with the key in `key_header`, framed by content-length or
/// chunked (one chunk), `extra` header lines added.
fn post(path: &str, key_header: &str, body: &[u8], chunked: bool, extra: &str) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\n{key_header}\r\ncontent-type: application/json\r\n{extra}"
    )
    .into_bytes();
    if chunked {
        req.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        req.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        req.extend_from_slice(body);
        req.extend_from_slice(b"\r\n0\r\n\r\n");
    } else {
        req.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(body);
    }
    req
}

/// The three client dialects: a path, the key header, a valid body of exactly `size` bytes
/// (at least a small minimum).
fn dialects(size: usize) -> [(Dialect, String, String, Vec<u8>); 3] {
    let openai = |t: &str| serde_json::json!({"model": "mock-model", "messages": [{"role": "user", "content": t}]});
    let anthropic = |t: &str| serde_json::json!({"model": "claude-model", "max_tokens": 16, "messages": [{"role": "user", "content": t}]});
    let gemini =
        |t: &str| serde_json::json!({"contents": [{"role": "user", "parts": [{"text": t}]}]});
    let sized = |make: &dyn Fn(&str) -> serde_json::Value| {
        let overhead = make("").to_string().len();
        let body = make(&"a".repeat(size.saturating_sub(overhead)))
            .to_string()
            .into_bytes();
        assert!(body.len() == size || size < overhead);
        body
    };
    [
        (
            Dialect::OpenAi,
            "/v1/chat/completions".to_owned(),
            format!("authorization: Bearer {KEY_ALL}"),
            sized(&openai),
        ),
        (
            Dialect::Anthropic,
            "/v1/messages".to_owned(),
            format!("x-api-key: {KEY_ALL}"),
            sized(&anthropic),
        ),
        (
            Dialect::Gemini,
            "/v1beta/models/gemini-model:generateContent".to_owned(),
            format!("x-goog-api-key: {KEY_ALL}"),
            sized(&gemini),
        ),
    ]
}

#[test]
fn malformed_http_gets_a_json_reply_in_the_clients_dialect() {
    let stack = Stack::start(StackOptions::default());
    let addr = listener(&stack);
    let many: String = (0..120).map(|i| format!("x-many-{i}: v\r\n")).collect();
    let large = format!("x-large: {}\r\n", "a".repeat(70 * 1024));
    let cases: Vec<(&str, String, u16, Dialect, &str)> = vec![
        (
            "HTTP/1.0",
            "GET /v1/models HTTP/1.0\r\n\r\n".into(),
            426,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "too many headers",
            format!("GET /v1/models HTTP/1.1\r\nHost: gateway\r\n{many}\r\n"),
            431,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "headers too large",
            format!("GET /v1/models HTTP/1.1\r\nHost: gateway\r\n{large}\r\n"),
            431,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "content-length and chunked",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "bad content-length",
            "POST /v1/messages HTTP/1.1\r\nHost: gateway\r\ncontent-length: abc\r\n\r\n".into(),
            400,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "bad method",
            "G@T /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n".into(),
            400,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "bad path",
            "GET v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n".into(),
            400,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "missing Host",
            "GET /v1/models HTTP/1.1\r\n\r\n".into(),
            400,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "missing Host, Anthropic path",
            "POST /v1/messages HTTP/1.1\r\ncontent-length: 0\r\n\r\n".into(),
            400,
            Dialect::Anthropic,
            "invalid_request_error",
        ),
        (
            "fragment in the path, Gemini path",
            "GET /v1beta/models#top HTTP/1.1\r\nHost: gateway\r\n\r\n".into(),
            400,
            Dialect::Gemini,
            "INVALID_ARGUMENT",
        ),
        (
            "fragment in the path",
            "GET /v1/models#top HTTP/1.1\r\nHost: gateway\r\n\r\n".into(),
            400,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "WebSocket upgrade",
            format!("GET /v1/models HTTP/1.1\r\nHost: gateway\r\nauthorization: Bearer {KEY_ALL}\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"),
            403,
            Dialect::OpenAi,
            "invalid_request_error",
        ),
        (
            "WebSocket upgrade, Anthropic path",
            format!("GET /v1/messages HTTP/1.1\r\nHost: gateway\r\nx-api-key: {KEY_ALL}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"),
            403,
            Dialect::Anthropic,
            "invalid_request_error",
        ),
    ];
    for (name, request, status, dialect, kind) in cases {
        let started = Instant::now();
        let r = exchange(addr, request.into_bytes());
        assert!(r.status != 0, "{name}: {}", r.body);
        dialect.assert_error(&r, status, kind);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}: answered only after {:?}",
            started.elapsed()
        );
    }
    // Envoy still serves.
    let ok = exchange(
        addr,
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: gateway\r\nauthorization: Bearer {KEY_ALL}\r\n\r\n"
        )
        .into_bytes(),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[test]
fn every_oversized_body_gets_a_413_in_the_clients_dialect() {
    let stack = Stack::start(StackOptions::default());
    let addr = listener(&stack);
    // Just past the limit, well past it (arriving at once while a key check may be running),
    // and past Envoy's connection buffer (twice the limit plus 1 MiB).
    for size in [LIMIT + 1, 4 * LIMIT, 3 * 1024 * 1024] {
        for (dialect, path, key, body) in dialects(size) {
            for chunked in [false, true] {
                for attempt in 0..2 {
                    let r = exchange(addr, post(&path, &key, &body, chunked, ""));
                    assert!(
                        r.status != 0,
                        "{path} {} bytes chunked={chunked} attempt {attempt}: {}",
                        body.len(),
                        r.body
                    );
                    let kind = match dialect {
                        Dialect::OpenAi => "invalid_request_error",
                        Dialect::Anthropic => "request_too_large",
                        Dialect::Gemini => "INVALID_ARGUMENT",
                    };
                    assert_eq!(
                        r.status,
                        413,
                        "{path} {} bytes chunked={chunked} attempt {attempt}",
                        body.len()
                    );
                    dialect.assert_error(&r, 413, kind);
                }
            }
        }
    }
    assert!(
        block_on(stack.posted()).is_empty(),
        "an oversized body reached the provider"
    );
    // A body within the limit still passes, both framings.
    for (_, path, key, body) in dialects(LIMIT / 2) {
        for chunked in [false, true] {
            let r = exchange(addr, post(&path, &key, &body, chunked, ""));
            assert_eq!(r.status, 200, "{path} chunked={chunked}: {r:?}");
        }
    }
}

#[test]
fn client_headers_outside_the_allow_list_never_reach_the_provider() {
    let stack = Stack::start(StackOptions::default());
    let addr = listener(&stack);
    // ~90 extra headers: with Envoy's and Tollgate's own, past the provider's limit of 100.
    let extra: String = (0..90)
        .map(|i| format!("x-client-extra-{i}: {i}\r\n"))
        .chain([
            "user-agent: hostile/1.0\r\n".to_owned(),
            "cookie: session=secret\r\n".to_owned(),
            "x-tollgate-cluster: down\r\n".to_owned(),
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n".to_owned(),
            "anthropic-version: 2023-06-01\r\n".to_owned(),
        ])
        .collect();
    for (dialect, path, key, body) in dialects(200) {
        block_on(stack.clear_upstream_requests());
        let r = exchange(addr, post(&path, &key, &body, false, &extra));
        assert_eq!(r.status, 200, "{dialect:?}: {r:?}");
        let seen = block_on(stack.posted());
        assert_eq!(seen.len(), 1, "{dialect:?}: {seen:?}");
        let headers = seen[0]["headers"].as_object().unwrap();
        for (name, _) in headers {
            assert!(
                !name.starts_with("x-client-extra-") && name != "cookie" && name != "user-agent",
                "{dialect:?}: {name} reached the provider: {headers:?}"
            );
        }
        assert!(headers.len() < 20, "{dialect:?}: {headers:?}");
        assert_eq!(headers["content-type"], "application/json", "{headers:?}");
        assert!(headers.contains_key("traceparent"), "{headers:?}");
        // Anthropic's headers reach Anthropic-dialect providers only, whoever sends them.
        assert_eq!(
            headers.contains_key("anthropic-version"),
            matches!(dialect, Dialect::Anthropic),
            "{dialect:?}: {headers:?}"
        );
    }
    // Past Envoy's own limit (100 headers): a 431 in the client's dialect, not the provider's.
    let many: String = (0..110)
        .map(|i| format!("x-client-extra-{i}: {i}\r\n"))
        .collect();
    for (dialect, path, key, body) in dialects(200) {
        let r = exchange(addr, post(&path, &key, &body, false, &many));
        assert!(r.status != 0, "{dialect:?}: {}", r.body);
        // Refused by the HTTP/1 codec, before the path is known: OpenAI's shape.
        Dialect::OpenAi.assert_error(&r, 431, "invalid_request_error");
    }
}

#[test]
fn plain_requests_and_tollgates_own_errors_are_unchanged() {
    let stack = Stack::start(StackOptions::default());
    let addr = listener(&stack);
    for (dialect, path, key, body) in dialects(200) {
        let r = exchange(addr, post(&path, &key, &body, false, ""));
        assert_eq!(r.status, 200, "{dialect:?}: {r:?}");
        assert!(r.header("x-tollgate-request-id").is_some(), "{r:?}");
    }
    // Tollgate's own 4xx keep Tollgate's bodies (the local-reply mappers leave them alone).
    let r = exchange(
        addr,
        post(
            "/v1/chat/completions",
            "authorization: Bearer tg-not-a-key",
            br#"{"model":"mock-model","messages":[]}"#,
            false,
            "",
        ),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(!r.body.contains("The gateway refused"), "{r:?}");
    assert!(r.header("x-tollgate-request-id").is_some(), "{r:?}");
    let r = exchange(
        addr,
        post(
            "/v1/chat/completions",
            &format!("authorization: Bearer {KEY_ALL}"),
            b"{not json",
            false,
            "",
        ),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.body.contains("The gateway refused"), "{r:?}");
    let r = exchange(
        addr,
        format!(
            "GET /v1/nowhere HTTP/1.1\r\nHost: gateway\r\nauthorization: Bearer {KEY_ALL}\r\n\r\n"
        )
        .into_bytes(),
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json()["error"]["message"].is_string(), "{r:?}");
    assert!(!r.body.contains("The gateway refused"), "{r:?}");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
