//! End to end through real Envoy: client → Envoy → ext_authz → ext_proc → mock provider, with
//! the official `openai` Python SDK and raw HTTP for every error case.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const CHAT: &str =
    r#"{"model":"mock-model","messages":[{"role":"user","content":"hello there gateway"}]}"#;

#[tokio::test]
async fn the_official_openai_sdk_works_through_envoy() {
    let stack = Stack::start(StackOptions::default());
    let base = format!("{}/v1", stack.base);
    run_sdk(
        "openai_sdk.py",
        &[
            ("TOLLGATE_BASE_URL", &base),
            ("TOLLGATE_KEY", KEY_LIMITED),
            ("TOLLGATE_CHAT_MODEL", "mock-model"),
            ("TOLLGATE_EMBED_MODEL", "mock-embedding"),
            ("TOLLGATE_EXPECT_MODELS", "mock-model,mock-embedding"),
        ],
    );
}

#[tokio::test]
async fn errors_reach_clients_in_openai_format_with_the_right_status() {
    let stack = Stack::start(StackOptions::default());
    let s = &stack;

    // ext_authz refusals.
    let r = s.post("/v1/chat/completions", None, CHAT).await;
    let v = r.assert_openai_error(401, None);
    assert!(v["error"]["message"].as_str().unwrap().contains("API key"));
    s.post("/v1/chat/completions", Some("tg-unknown"), CHAT)
        .await
        .assert_openai_error(401, Some("invalid_api_key"));
    s.post("/v1/chat/completions", Some(KEY_EXPIRED), CHAT)
        .await
        .assert_openai_error(401, Some("expired_api_key"));
    s.post("/v1/chat/completions", Some(KEY_DISABLED), CHAT)
        .await
        .assert_openai_error(401, Some("disabled_api_key"));
    // Other key headers work too (Azure and Anthropic style).
    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .header("api-key", KEY_ALL)
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // ext_proc refusals.
    s.post("/v1/chat/completions", Some(KEY_ALL), "{not json")
        .await
        .assert_openai_error(400, Some("invalid_json"));
    let v = s
        .post("/v1/chat/completions", Some(KEY_ALL), r#"{"messages":[]}"#)
        .await
        .assert_openai_error(400, None);
    assert_eq!(v["error"]["param"], "model");
    s.post(
        "/v1/chat/completions",
        Some(KEY_ALL),
        r#"{"model":"gpt-nope","messages":[]}"#,
    )
    .await
    .assert_openai_error(404, Some("model_not_found"));
    s.post(
        "/v1/chat/completions",
        Some(KEY_LIMITED),
        r#"{"model":"azure-model","messages":[]}"#,
    )
    .await
    .assert_openai_error(403, Some("model_not_allowed"));
    let big = format!(
        r#"{{"model":"mock-model","messages":[],"pad":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    s.post("/v1/chat/completions", Some(KEY_ALL), big)
        .await
        .assert_openai_error(413, Some("request_too_large"));
    s.post("/v1/not-an-endpoint", Some(KEY_ALL), CHAT)
        .await
        .assert_openai_error(404, Some("unknown_url"));
    s.get("/v1/nothing-here", Some(KEY_ALL))
        .await
        .assert_openai_error(404, Some("unknown_url"));

    // Upstream errors: OpenAI-format bodies pass through, others are replaced.
    let r = s
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            r#"{"model":"rate-limited","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await;
    r.assert_openai_error(429, Some("rate_limit_exceeded"));
    assert!(r.header("retry-after").is_some());
    let v = s
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            r#"{"model":"html-error","messages":[{"role":"user","content":"x"}]}"#,
        )
        .await
        .assert_openai_error(502, None);
    assert_eq!(v["error"]["type"], "upstream_error");
    assert!(!v.to_string().contains("html"), "{v}");
    // A provider nobody answers for: Envoy's own 503, in OpenAI format.
    s.post(
        "/v1/chat/completions",
        Some(KEY_ALL),
        r#"{"model":"dead-model","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await
    .assert_openai_error(503, Some("upstream_unavailable"));

    // Successful responses carry the request id too.
    let r = s.post("/v1/chat/completions", Some(KEY_ALL), CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-request-id").map(str::len), Some(32));
    // No secret ever reaches a client or the logs.
    assert!(!stack.serve_log().contains(KEY_ALL));
    assert!(!stack.serve_log().contains(AZURE_SECRET));
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use() {
    let stack = Stack::start(StackOptions::default());
    let r = stack.get("/v1/models", Some(KEY_LIMITED)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["mock-embedding", "mock-model"]);
    let r = stack.get("/v1/models", Some(KEY_ALL)).await;
    // Every model of the e2e config (common::config_yaml).
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&stack.config_path).unwrap()).unwrap();
    let configured = config["models"].as_mapping().unwrap().len();
    assert!(configured >= 11);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), configured);
    stack
        .get("/v1/models", None)
        .await
        .assert_openai_error(401, None);
}

#[tokio::test]
async fn providers_get_their_own_credentials_paths_and_model_ids() {
    let stack = Stack::start(StackOptions::default());
    let s = &stack;
    s.clear_upstream_requests().await;
    // The client tries to pick a cluster itself: ext_authz strips the header.
    let r = s
        .http
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(KEY_ALL)
        .header("x-tollgate-cluster", "down")
        .body(r#"{"model":"azure-model","messages":[{"role":"user","content":"hi azure"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .post(
            "/v1/embeddings",
            Some(KEY_ALL),
            r#"{"model":"compat-model","input":"hi compat"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s
        .post(
            "/v1/completions",
            Some(KEY_ALL),
            r#"{"model":"mock-model","prompt":"hi legacy"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let seen = s.upstream_requests().await;
    assert_eq!(seen.len(), 3, "{seen:#?}");
    let azure = &seen[0];
    assert_eq!(
        azure["path"],
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(azure["query"], "api-version=2024-10-21");
    assert_eq!(azure["headers"]["api-key"], AZURE_SECRET);
    assert_eq!(azure["body"]["model"], "my-deployment");
    let compat = &seen[1];
    assert_eq!(compat["path"], "/openai/v1/embeddings");
    assert_eq!(
        compat["headers"]["authorization"],
        format!("Bearer {COMPAT_SECRET}")
    );
    assert_eq!(compat["headers"]["x-provider-team"], "e2e");
    assert_eq!(compat["body"]["model"], "upstream-compat-model");
    let legacy = &seen[2];
    assert_eq!(legacy["path"], "/v1/completions");
    assert!(legacy["headers"].get("authorization").is_none(), "{legacy}");
    for req in &seen {
        let text = req.to_string();
        assert!(
            !text.contains(KEY_ALL),
            "client key reached the provider: {text}"
        );
        assert_eq!(
            req["headers"]["content-length"]
                .as_str()
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            req["body"].to_string().len(),
            "content-length does not match the rewritten body: {text}"
        );
    }
}

fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn streams_report_usage_upstream_and_hide_it_from_clients_that_did_not_ask() {
    let stack = Stack::start(StackOptions::default());
    let s = &stack;
    s.clear_upstream_requests().await;
    let plain = json!({"model": "mock-model", "stream": true,
        "messages": [{"role": "user", "content": "count my tokens please"}]});
    let r = s
        .post("/v1/chat/completions", Some(KEY_ALL), plain.to_string())
        .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&r.text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "usage leaked: {}",
        r.text
    );

    let mut asked = plain.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let r = s
        .post("/v1/chat/completions", Some(KEY_ALL), asked.to_string())
        .await;
    let events = sse_events(&r.text);
    let usage_chunks: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("\"usage\":{"))
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{}", r.text);
    let u: serde_json::Value = serde_json::from_str(usage_chunks[0]).unwrap();
    assert_eq!(u["usage"]["prompt_tokens"], 4);

    // Upstream, both asked for usage.
    let seen = s.upstream_requests().await;
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert_eq!(
            req["body"]["stream_options"]["include_usage"], true,
            "{req}"
        );
    }
    // And both were counted.
    let m = s.metrics().await;
    let input = m
        .lines()
        .find(|l| l.starts_with("tollgate_tokens_total{") && l.contains("kind=\"input\""))
        .unwrap_or_else(|| panic!("no input tokens in metrics:\n{m}"));
    assert!(input.ends_with(" 8"), "{input}");
}

#[tokio::test]
async fn streams_pass_through_chunk_by_chunk() {
    let stack = Stack::start(StackOptions {
        chunk_delay_ms: 150,
        ..Default::default()
    });
    let body = json!({"model": "mock-model", "stream": true,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}]});
    let (first, total, text) = stack.stream_timed("/v1/chat/completions", body).await;
    // 14 chunks 150 ms apart: a gateway that buffered the stream would deliver nothing before
    // the end (about 2 s).
    assert!(total >= Duration::from_millis(1500), "{total:?}");
    assert!(first < total / 3, "first byte at {first:?} of {total:?}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn metrics_count_requests_tokens_and_phases() {
    let stack = Stack::start(StackOptions::default());
    for _ in 0..3 {
        let r = stack
            .post("/v1/chat/completions", Some(KEY_ALL), CHAT)
            .await;
        assert_eq!(r.status, 200);
    }
    let _ = stack
        .post("/v1/chat/completions", Some("tg-wrong"), CHAT)
        .await;
    let m = stack.metrics().await;
    let has = |prefix: &str, parts: &[&str]| {
        m.lines()
            .any(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
    };
    assert!(
        has(
            "tollgate_requests_total{",
            &[
                "provider=\"mock\"",
                "model=\"mock-model\"",
                "status=\"200\"",
                "} 3"
            ]
        ),
        "{m}"
    );
    assert!(
        has("tollgate_tokens_total{", &["kind=\"output\"", "} 18"]),
        "{m}"
    );
    assert!(
        has(
            "tollgate_authz_decisions_total{",
            &["decision=\"invalid_api_key\"", "} 1"]
        ),
        "{m}"
    );
    for phase in [
        "authz",
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ] {
        assert!(
            has(
                "tollgate_phase_duration_seconds_count{",
                &[&format!("phase=\"{phase}\"")]
            ),
            "no {phase} histogram:\n{m}"
        );
    }
    assert!(
        has(
            "tollgate_upstream_latency_seconds_count{",
            &["provider=\"mock\"", "} 3"]
        ),
        "{m}"
    );
    for path in ["/healthz", "/readyz"] {
        let r = stack
            .http
            .get(format!("{}{path}", stack.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn grpc_over_tcp_works_too() {
    let stack = Stack::start(StackOptions {
        tcp: true,
        ..Default::default()
    });
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), CHAT)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["model"], "mock-model");
}

#[tokio::test]
async fn config_reload_applies_good_files_and_keeps_the_old_config_on_bad_ones() {
    let stack = Stack::start(StackOptions::default());
    let original = std::fs::read_to_string(&stack.config_path).unwrap();
    // A bad file: the old config stays in force.
    std::fs::write(
        &stack.config_path,
        original.replace("kind: openai\n", "kind: nonsense\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.serve_log().contains("Rejected new config") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            stack.serve_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        stack.serve_log().contains("providers.mock.kind"),
        "{}",
        stack.serve_log()
    );
    assert_eq!(
        stack
            .post("/v1/chat/completions", Some(KEY_ALL), CHAT)
            .await
            .status,
        200
    );

    // A good file that drops `compat-model`: new requests see it gone.
    let compat = r#"{"model":"compat-model","messages":[{"role":"user","content":"x"}]}"#;
    assert_eq!(
        stack
            .post("/v1/chat/completions", Some(KEY_ALL), compat)
            .await
            .status,
        200
    );
    let dropped = original.replace(
        "  compat-model:\n    targets: [{ provider: compat, model: upstream-compat-model }]\n",
        "",
    );
    assert_ne!(dropped, original);
    std::fs::write(&stack.config_path, dropped).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = stack
            .post("/v1/chat/completions", Some(KEY_ALL), compat)
            .await;
        if r.status == 404 {
            r.assert_openai_error(404, Some("model_not_found"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload not applied:\n{}",
            stack.serve_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_openai_headers() {
    let stack = Stack::start(StackOptions::default());
    for remaining in ["1", "0"] {
        let r = stack
            .post("/v1/chat/completions", Some(KEY_RATE), CHAT)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(remaining));
        assert!(r.header("x-ratelimit-reset-requests").is_some());
    }
    let r = stack
        .post("/v1/chat/completions", Some(KEY_RATE), CHAT)
        .await;
    r.assert_openai_error(429, Some("rate_limit_exceeded"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    // Refused before ext_proc: the provider never saw a third request.
    let upstream = stack.upstream_requests().await;
    let posts = upstream.iter().filter(|r| r["method"] == "POST").count();
    assert_eq!(posts, 2, "{upstream:?}");
    // Other keys are not affected.
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), CHAT)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-requests"), None);
}
