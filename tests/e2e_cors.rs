//! End to end through real Envoy: browsers (CORS). A preflight is answered by Tollgate without
//! a key and without reaching the provider; a real request's origin is checked against its
//! key's (or its tenant's) policy; answers — successes, streams, Tollgate's refusals, the
//! provider's errors and Envoy's own local replies — carry the CORS headers. Last, a real
//! headless Chromium: a page served from one origin calls chat completions (streaming) with
//! `fetch` and reads the stream; the same page from another origin gets a CORS error. Run in
//! both auth shapes (`TOLLGATE_E2E_AUTH=ext_authz` too).

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A key of tenant `web` (its tenant's policy applies).
const KEY_WEB: &str = "tg-e2e-cors-web";
/// A key of tenant `web` with a policy of its own.
const KEY_OWN: &str = "tg-e2e-cors-own";
/// A key of tenant `web` allowed one request a minute.
const KEY_WEB_RATE: &str = "tg-e2e-cors-web-rate";

const ALLOWED: &str = "http://allowed.test";
const WILDCARD: &str = "https://app.example.com";
const OWN: &str = "http://own.test";
const UNKNOWN: &str = "http://evil.test";

fn add_keys(yaml: String) -> String {
    let keys = format!(
        "  - {{ id: web, hash: \"{}\", tenant: web, models: [\"*\"] }}\n\
         \x20 - {{ id: web-own, hash: \"{}\", tenant: web, models: [\"*\"], cors: {{ origins: [\"{OWN}\"], allow_credentials: true, max_age_secs: 60 }} }}\n\
         \x20 - {{ id: web-rate, hash: \"{}\", tenant: web, models: [\"*\"], requests_per_minute: 1 }}\n\
         guardrails:\n",
        hash(KEY_WEB),
        hash(KEY_OWN),
        hash(KEY_WEB_RATE),
    );
    let patched = yaml.replacen("guardrails:\n", &keys, 1);
    assert_ne!(patched, yaml);
    patched
}

/// A stack whose tenant `web` allows `origins` (besides [`ALLOWED`] and `*.example.com`).
fn stack(extra_origins: &[&str]) -> Stack {
    let mut origins = vec![ALLOWED.to_owned(), "https://*.example.com".to_owned()];
    origins.extend(extra_origins.iter().map(|o| (*o).to_owned()));
    let list = origins
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Stack::start(StackOptions {
        chunk_delay_ms: 5,
        extra_yaml: format!(
            "\ntenants:\n  web:\n    cors:\n      origins: [{list}]\n      exposed_headers: [x-custom-exposed]\n"
        ),
        patch_config: Some(add_keys),
        ..StackOptions::default()
    })
}

fn chat(stream: bool) -> String {
    json!({"model": "mock-model", "stream": stream,
        "messages": [{"role": "user", "content": "hello from a browser"}]})
    .to_string()
}

async fn preflight(s: &Stack, path: &str, origin: &str, headers: &str) -> Reply {
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, format!("{}{path}", s.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", headers)
        .send()
        .await
        .unwrap();
    Reply::from(r).await
}

async fn post_from(s: &Stack, path: &str, origin: &str, key: Option<&str>, body: String) -> Reply {
    let mut req = s
        .http
        .post(format!("{}{path}", s.base))
        .header("origin", origin)
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    Reply::from(req.send().await.unwrap()).await
}

/// Asserts the answer lets a page of `origin` read it, exposing the Tollgate headers.
#[track_caller]
fn readable(r: &Reply, origin: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(origin),
        "{} {:?}",
        r.status,
        r.headers
    );
    let vary: Vec<&str> = r
        .headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        vary.iter().any(|v| v
            .split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("origin"))),
        "vary: {vary:?}"
    );
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default();
    for h in ["x-tollgate-request-id", "x-tollgate-provider"] {
        assert!(exposed.split(", ").any(|e| e == h), "{exposed}");
    }
    assert!(
        r.header("x-tollgate-request-id").is_some(),
        "{:?}",
        r.headers
    );
}

#[track_caller]
fn not_readable(r: &Reply) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "{} {:?}",
        r.status,
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preflights_are_answered_without_a_key_or_the_provider() {
    let stack = stack(&[]);
    let s = &stack;
    s.clear_upstream_requests().await;

    // An origin the tenant lists: 204, the requested headers it allows, its max age.
    let r = preflight(
        s,
        "/v1/chat/completions",
        ALLOWED,
        "authorization, content-type, x-stainless-os, x-not-allowed",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type, x-stainless-os")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, POST, DELETE")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert!(r.header("vary").is_some_and(|v| v.contains("origin")));

    // A subdomain by the wildcard, on every API path (Anthropic's, Gemini's) alike.
    for path in [
        "/v1/messages",
        "/v1beta/models/gemini-model:streamGenerateContent?alt=sse",
        "/v1/embeddings",
    ] {
        let r = preflight(s, path, WILDCARD, "x-api-key, anthropic-version").await;
        assert_eq!(r.status, 204, "{path}: {}", r.text);
        assert_eq!(r.header("access-control-allow-origin"), Some(WILDCARD));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("x-api-key, anthropic-version")
        );
    }

    // Listed only by one key's own policy: that policy's max age and credentials.
    let r = preflight(s, "/v1/chat/completions", OWN, "authorization").await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(r.header("access-control-max-age"), Some("60"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));

    // No policy lists it: refused, nothing a browser would accept.
    for origin in [UNKNOWN, "https://example.com", "http://app.example.com"] {
        let r = preflight(s, "/v1/chat/completions", origin, "authorization").await;
        assert_eq!(r.status, 403, "{origin}: {}", r.text);
        not_readable(&r);
        assert_eq!(r.json()["error"]["code"], "origin_not_allowed");
    }

    // A preflight with a key header does not spend it, and none reached the provider.
    assert!(
        s.upstream_requests()
            .await
            .iter()
            .all(|r| r["method"] != "OPTIONS" && r["method"] != "POST"),
        "{:?}",
        s.upstream_requests().await
    );
    // Counted, by result.
    let metrics = s.metrics().await;
    for (result, n) in [("allowed", 5), ("refused", 3)] {
        let line = format!("tollgate_cors_preflights_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn real_requests_are_checked_against_the_keys_origins_and_answers_carry_cors_headers() {
    let stack = stack(&[]);
    let s = &stack;
    s.clear_upstream_requests().await;

    // Allowed: the answer is readable, the provider never sees the origin.
    let r = post_from(
        s,
        "/v1/chat/completions",
        ALLOWED,
        Some(KEY_WEB),
        chat(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    readable(&r, ALLOWED);
    // The tenant's own exposed header too.
    assert!(r
        .header("access-control-expose-headers")
        .unwrap()
        .contains("x-custom-exposed"));
    let seen = s.posted().await;
    assert_eq!(seen.len(), 1);
    assert!(seen[0]["headers"].get("origin").is_none(), "{}", seen[0]);

    // A stream, by the wildcard.
    let r = post_from(
        s,
        "/v1/chat/completions",
        WILDCARD,
        Some(KEY_WEB),
        chat(true),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.trim_end().ends_with("data: [DONE]"), "{}", r.text);
    readable(&r, WILDCARD);

    // An origin no policy lists: 403 in the client's dialect, not readable, not forwarded.
    let before = s.posted().await.len();
    let r = post_from(
        s,
        "/v1/chat/completions",
        UNKNOWN,
        Some(KEY_WEB),
        chat(false),
    )
    .await;
    r.assert_openai_error(403, Some("origin_not_allowed"));
    not_readable(&r);
    let anthropic = json!({"model": "claude-model", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let r = post_from(s, "/v1/messages", UNKNOWN, Some(KEY_WEB), anthropic.clone()).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "permission_error");
    // An origin another policy lists (the preflight passed): refused, and readable.
    let r = post_from(s, "/v1/chat/completions", OWN, Some(KEY_WEB), chat(false)).await;
    r.assert_openai_error(403, Some("origin_not_allowed"));
    readable(&r, OWN);
    // A key's own policy replaces its tenant's.
    let r = post_from(
        s,
        "/v1/chat/completions",
        ALLOWED,
        Some(KEY_OWN),
        chat(false),
    )
    .await;
    r.assert_openai_error(403, Some("origin_not_allowed"));
    let r = post_from(s, "/v1/chat/completions", OWN, Some(KEY_OWN), chat(false)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), Some(OWN));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(s.posted().await.len(), before + 1);

    // A key without any policy is not checked and gets no CORS headers (as before CORS).
    let r = post_from(
        s,
        "/v1/chat/completions",
        UNKNOWN,
        Some(KEY_ALL),
        chat(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    not_readable(&r);

    // Refusals before the key's policy applies: readable by a listed origin.
    let r = post_from(s, "/v1/chat/completions", ALLOWED, None, chat(false)).await;
    r.assert_openai_error(401, None);
    readable(&r, ALLOWED);
    let r = post_from(
        s,
        "/v1/chat/completions",
        ALLOWED,
        Some("tg-nope"),
        chat(false),
    )
    .await;
    r.assert_openai_error(401, Some("invalid_api_key"));
    readable(&r, ALLOWED);
    let r = post_from(s, "/v1/chat/completions", UNKNOWN, None, chat(false)).await;
    assert_eq!(r.status, 401);
    not_readable(&r);
    // 429 from the request-rate limit.
    let r = post_from(
        s,
        "/v1/chat/completions",
        ALLOWED,
        Some(KEY_WEB_RATE),
        chat(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post_from(
        s,
        "/v1/chat/completions",
        ALLOWED,
        Some(KEY_WEB_RATE),
        chat(false),
    )
    .await;
    r.assert_openai_error(429, Some("rate_limit_exceeded"));
    readable(&r, ALLOWED);

    // Tollgate's own errors after the key: unknown model (404), unknown URL (404).
    let body = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]});
    let r = post_from(
        s,
        "/v1/chat/completions",
        ALLOWED,
        Some(KEY_WEB),
        body.to_string(),
    )
    .await;
    r.assert_openai_error(404, Some("model_not_found"));
    readable(&r, ALLOWED);
    let r = post_from(s, "/v1/nothing/here", ALLOWED, Some(KEY_WEB), chat(false)).await;
    assert_eq!(r.status, 404, "{}", r.text);
    readable(&r, ALLOWED);
    // The provider's 5xx and 429, passed through.
    for (model, status) in [("server-error", 500), ("rate-limited", 429)] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
        let r = post_from(
            s,
            "/v1/chat/completions",
            ALLOWED,
            Some(KEY_WEB),
            body.to_string(),
        )
        .await;
        assert_eq!(r.status, status, "{model}: {}", r.text);
        readable(&r, ALLOWED);
    }
    // Envoy's own local reply: the provider's port is closed (503).
    let body = json!({"model": "dead-model", "messages": [{"role": "user", "content": "x"}]});
    let r = post_from(
        s,
        "/v1/chat/completions",
        ALLOWED,
        Some(KEY_WEB),
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text);
    readable(&r, ALLOWED);
    // A GET Tollgate answers itself.
    let r = s
        .http
        .get(format!("{}/v1/models", s.base))
        .header("origin", ALLOWED)
        .bearer_auth(KEY_WEB)
        .send()
        .await
        .unwrap();
    let r = Reply::from(r).await;
    assert_eq!(r.status, 200, "{}", r.text);
    readable(&r, ALLOWED);
}

// ---------------------------------------------------------------------------------------------
// A real browser
// ---------------------------------------------------------------------------------------------

/// The page: calls chat completions on `gateway` with `fetch`, streaming, reads the SSE body
/// to its end, and reports the outcome as JSON to its own server (`POST /result`, same origin).
fn page(gateway: &str, key: &str) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>cors</title></head><body>
<script>
(async () => {{
  let result;
  try {{
    const r = await fetch('{gateway}/v1/chat/completions', {{
      method: 'POST',
      headers: {{ 'authorization': 'Bearer {key}', 'content-type': 'application/json' }},
      body: JSON.stringify({{ model: 'mock-model', stream: true,
        messages: [{{ role: 'user', content: 'hello from a browser' }}] }}),
    }});
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let text = '', chunks = 0;
    for (;;) {{
      const {{ done, value }} = await reader.read();
      if (done) break;
      chunks += 1;
      text += dec.decode(value, {{ stream: true }});
    }}
    let content = '';
    for (const line of text.split('\n')) {{
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const d = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
      if (d) content += d;
    }}
    result = {{ ok: true, status: r.status,
      requestId: r.headers.get('x-tollgate-request-id'),
      provider: r.headers.get('x-tollgate-provider'),
      done: text.trimEnd().endsWith('data: [DONE]'), chunks, content }};
  }} catch (e) {{
    result = {{ ok: false, error: String(e) }};
  }}
  result.origin = location.origin;
  await fetch('/result', {{ method: 'POST', body: JSON.stringify(result) }});
}})();
</script></body></html>"#
    )
}

/// Serves `html` at `/` on `listener` (bound to 127.0.0.1, port 0) until the test ends, and
/// sends every body POSTed to `/result` to `results`.
fn serve_page(listener: TcpListener, html: String, results: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let (status, body) = if head.starts_with("get / ") {
                ("200 OK", html.as_str())
            } else if head.starts_with("post /result ") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let end = buf.len().min(head_end + len);
                let _ = results.send(String::from_utf8_lossy(&buf[head_end..end]).into_owned());
                ("204 No Content", "")
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// Debian's Chromium, when installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Loads `url` in headless Chromium and returns the JSON the page reported, waiting 60 s at
/// most; then Chromium (this child, by its own handle) is killed.
fn browse(bin: &str, url: &str, dir: &Path, results: &mpsc::Receiver<String>) -> Value {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let log = profile.path().with_extension("log");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-proxy-server",
            "--enable-logging=stderr",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let got = results.recv_timeout(Duration::from_secs(60));
    let _ = child.kill();
    let _ = child.wait();
    let Ok(text) = got else {
        panic!(
            "no result from the page at {url} within 60 s; Chromium's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_streams_from_an_allowed_origin_and_is_refused_from_another() {
    let Some(bin) = chromium() else {
        eprintln!(
            "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: the browser CORS test needs Debian's `chromium` (scripts/test.sh installs \
             it; the install failed or was not run).\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    };
    // The page server's port first: its origin goes into the config. The same server under
    // another host name (`localhost`) is another origin, which no policy lists.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let allowed = format!("http://127.0.0.1:{port}");
    let refused = format!("http://localhost:{port}");
    let stack = stack(&[allowed.as_str()]);
    let s = &stack;
    let (tx, results) = mpsc::channel();
    serve_page(listener, page(&s.base, KEY_WEB), tx);
    s.clear_upstream_requests().await;

    let ok = browse(bin, &format!("{allowed}/"), s.dir.path(), &results);
    assert_eq!(ok["origin"], allowed.as_str(), "{ok}");
    assert_eq!(ok["ok"], true, "{ok}\n{}", s.serve_log());
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["done"], true, "{ok}");
    // Read from exposed headers; the stream's text assembled from its chunks.
    assert!(
        ok["requestId"].as_str().is_some_and(|id| !id.is_empty()),
        "{ok}"
    );
    assert_eq!(ok["provider"], "mock", "{ok}");
    assert!(ok["chunks"].as_u64().unwrap() >= 1, "{ok}");
    assert!(!ok["content"].as_str().unwrap().is_empty(), "{ok}");
    let seen = s.posted().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body"]["stream"], true, "{}", seen[0]);

    let no = browse(bin, &format!("{refused}/"), s.dir.path(), &results);
    assert_eq!(no["origin"], refused.as_str(), "{no}");
    assert_eq!(no["ok"], false, "{no}");
    // Chromium's CORS failure of `fetch`.
    assert!(
        no["error"]
            .as_str()
            .is_some_and(|e| e.contains("TypeError") && e.contains("fetch")),
        "{no}"
    );
    // Refused at the preflight: nothing more reached the provider.
    assert_eq!(s.posted().await.len(), 1);
}
