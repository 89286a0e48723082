//! Budgets end to end through real Envoy: reservations hold a hard budget under 200 concurrent
//! requests, a failed upstream call gives its reservation back, soft budgets flag, end-user
//! budgets follow the header or the body's `user`, and refusals come in the client's dialect.
//!
//! Prices: `mock-model` and `mock-error-500` cost 1.5 USD per million input tokens and 2 per
//! million output tokens (see `tests/common`), i.e. 1 500 000 and 2 000 000 picodollars per
//! token. The mock counts one token per word.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

const INPUT_PICO: u128 = 1_500_000;
const OUTPUT_PICO: u128 = 2_000_000;
/// Ten words, ten output tokens at most: 35 000 000 picodollars a request as the mock counts.
const TEN_WORDS: &str = "one two three four five six seven eight nine ten";

fn chat(model: &str) -> String {
    json!({"model": model, "max_tokens": 10,
        "messages": [{"role": "user", "content": TEN_WORDS}]})
    .to_string()
}

/// The exact cost of a response's usage.
fn cost(v: &Value) -> u128 {
    let u = &v["usage"];
    u128::from(u["prompt_tokens"].as_u64().unwrap()) * INPUT_PICO
        + u128::from(u["completion_tokens"].as_u64().unwrap()) * OUTPUT_PICO
}

/// The reservation of a [`chat`] request: `o200k_base` counts "user" and the ten words as 11
/// tokens, plus 4 for the message and 3 for the request; 10 output tokens.
const RESERVATION: u128 = 18 * INPUT_PICO + 10 * OUTPUT_PICO;

/// Sends `n` [`chat`] requests at once, spread over `stacks`; every answer must be a 200 or a
/// 429 `budget_exceeded` with `retry-after`. Returns how many were admitted and their cost.
async fn fire(stacks: &[Arc<Stack>], n: usize) -> (u32, u128) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let stack = Arc::clone(&stacks[i % stacks.len()]);
            tokio::spawn(async move {
                stack
                    .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
                    .await
            })
        })
        .collect();
    let (mut admitted, mut spent) = (0u32, 0u128);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => {
                admitted += 1;
                spent += cost(&r.json());
            }
            429 => {
                let v = r.assert_openai_error(429, Some("budget_exceeded"));
                let m = v["error"]["message"].as_str().unwrap();
                assert!(m.contains("daily budget of this key"), "{m}");
                assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    (admitted, spent)
}

/// The documented bound, spend ≤ budget + one maximum reservation; and the budget is used,
/// not refused wholesale: at least what fits at peak concurrency is admitted.
fn assert_bound(admitted: u32, spent: u128, budget: u128) {
    eprintln!("admitted {admitted}, spent {spent} of {budget} picodollars");
    assert!(
        spent <= budget + RESERVATION,
        "spent {spent} > {budget} + {RESERVATION}"
    );
    assert!(
        u128::from(admitted) >= budget / RESERVATION,
        "only {admitted} admitted"
    );
    assert!(admitted < 200);
}

fn budget_stack(limits: &str) -> Stack {
    Stack::start(StackOptions {
        extra_yaml: format!("budgets:\n  limits:\n{limits}"),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_never_overshoot_a_hard_budget_by_more_than_one_reservation(
) {
    // About 50 requests' worth: 50 × 35 000 000 picodollars.
    let budget: u128 = 1_750_000_000;
    let stack = Arc::new(budget_stack(
        "    - { id: all-daily, scope: key, name: all, period: daily, amount_usd: \"0.00175\" }\n",
    ));
    let (admitted, spent) = fire(&[stack], 200).await;
    assert_bound(admitted, spent, budget);
}

#[tokio::test]
async fn an_upstream_failure_gives_its_reservation_back() {
    // Room for one reservation, not for two, nor for one after a settled request.
    let stack = budget_stack(
        "    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.00006\" }\n",
    );
    for _ in 0..3 {
        let r = stack
            .post("/v1/chat/completions", Some(KEY_ALL), chat("server-error"))
            .await;
        // Without the refund, the second attempt would be refused with 429.
        assert_eq!(r.status, 500, "{}", r.text);
    }
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // 35 000 000 spent of 60 000 000: the next reservation (47 000 000) does not fit.
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    r.assert_openai_error(429, Some("budget_exceeded"));
    assert!(
        r.text.contains("monthly budget of this tenant"),
        "{}",
        r.text
    );
    assert!(stack
        .metrics()
        .await
        .contains("tollgate_budget_decisions_total{result=\"refused\"} 1"));
}

#[tokio::test]
async fn soft_budgets_flag_and_end_user_budgets_refuse_in_the_clients_dialect() {
    let stack = budget_stack(concat!(
        "    - { id: ml-soft, scope: team, name: ml, period: weekly, amount_usd: \"0.00001\", mode: soft }\n",
        "    - { id: bob, scope: end_user, name: bob, period: total, amount_usd: \"0\" }\n",
    ));
    // Past the soft budget: admitted, flagged.
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("x-tollgate-budget-warning"),
        Some("team weekly budget exceeded")
    );
    assert!(stack
        .metrics()
        .await
        .contains("tollgate_budget_decisions_total{result=\"soft_exceeded\"} 1"));
    // Bob, named in the body: refused by ext_proc's reservation.
    let body = json!({"model": "mock-model", "max_tokens": 10, "user": "bob",
        "messages": [{"role": "user", "content": TEN_WORDS}]});
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body.to_string())
        .await;
    let v = r.assert_openai_error(429, Some("budget_exceeded"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("total budget of this end_user"));
    assert!(
        r.header("retry-after").is_none(),
        "a total budget never resets"
    );
    // Bob, named in the header, in Anthropic's dialect: refused by ext_authz's precheck.
    let r = stack
        .http
        .post(format!("{}/v1/messages", stack.base))
        .bearer_auth(KEY_ALL)
        .header("x-tollgate-end-user", "bob")
        .body(
            json!({"model": "mock-model", "max_tokens": 10,
                "messages": [{"role": "user", "content": TEN_WORDS}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(stack
        .metrics()
        .await
        .contains("tollgate_budget_decisions_total{result=\"prechecked_refused\"} 1"));
    // Alice is not limited, and her header never reaches the provider.
    stack.clear_upstream_requests().await;
    let r = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_ALL)
        .header("x-tollgate-end-user", "alice")
        .body(chat("mock-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = stack.posted().await;
    assert_eq!(seen.len(), 1);
    assert!(seen[0]["headers"].get("x-tollgate-end-user").is_none());
    // It set its own `max_tokens`: left alone. A budgeted request without a limit gets the
    // one it was reserved for, so the provider cannot generate past its reservation.
    assert!(seen[0]["body"].get("max_completion_tokens").is_none());
    let body = json!({"model": "mock-model", "messages": [{"role": "user", "content": TEN_WORDS}]});
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = stack.posted().await;
    assert_eq!(
        seen[1]["body"]["max_completion_tokens"], 4096,
        "{}",
        seen[1]
    );
}

/// The tenant budget of 60 µUSD shows the 35 spent before the restart, and the next
/// reservation (47) does not fit.
async fn assert_the_budget_carries_on(stack: &Stack) {
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(v["data"][0]["spent_usd"], "0.000035000000");
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    r.assert_openai_error(429, Some("budget_exceeded"));
}

/// `kill -9` the stack's `serve`, start it again, and read `GET /v1/usage` (Envoy reconnects to
/// the new `serve` on the next request).
async fn restart_and_read_usage(stack: &mut Stack) -> Value {
    stack.restart_serve(2);
    let start = std::time::Instant::now();
    let mut usage = stack.get("/v1/usage", Some(KEY_ALL)).await;
    while usage.status != 200 && start.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        usage = stack.get("/v1/usage", Some(KEY_ALL)).await;
    }
    assert_eq!(usage.status, 200, "{}", usage.text);
    usage.json()
}

#[tokio::test]
async fn spend_survives_a_restart_of_serve() {
    let data = tempfile::tempdir().unwrap();
    let logger = Logger::start(ANY_PORT, &data.path().join("data"), data.path());
    let mut stack = Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        extra_yaml: format!(
            "budgets:\n  restore: {{ ndjson_dir: \"{}\" }}\n  limits:\n    - {{ id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.00006\" }}\n",
            data.path().join("data").display()
        ),
        ..Default::default()
    });
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The logger has stored the request before `serve` dies without a goodbye.
    let start = std::time::Instant::now();
    while logger.lines().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no record stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let usage = restart_and_read_usage(&mut stack).await;
    assert_eq!(usage["data"][3]["spent_usd"], "0.000035000000");
    assert_the_budget_carries_on(&stack).await;
    assert!(stack
        .serve_log()
        .contains("Restored spend of the current periods"));
}

/// The same with the logger writing a real ClickHouse and `serve` restoring from it: each
/// request id counts once (a duplicate row changes nothing), a request from an earlier month
/// counts in `total` only, and a `serve` that cannot reach ClickHouse does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_a_restart_of_serve_restored_from_clickhouse() {
    let dir = tempfile::tempdir().unwrap();
    let mut ch = common::clickhouse::ClickHouse::start();
    let logger = Logger::start_clickhouse(ANY_PORT, &ch.url, "tg_restore", dir.path());
    let mut stack = Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        extra_yaml: format!(
            "budgets:\n  restore:\n    clickhouse: {{ url: \"{}\", database: tg_restore, table: requests }}\n  limits:\n    - {{ id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.00006\" }}\n",
            ch.url
        ),
        ..Default::default()
    });
    // Nothing stored yet: the first `serve` started from an empty ledger.
    assert!(stack
        .serve_log()
        .contains("Restored spend of the current periods"));
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let start = std::time::Instant::now();
    let count = |ch: &common::clickhouse::ClickHouse| {
        ch.query("SELECT count() FROM tg_restore.requests")
            .map_or(0, |c| c.trim().parse::<u64>().unwrap_or(0))
    };
    while count(&ch) == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no row stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A duplicate row (same request id), and 1 µUSD spent by the same key in January 2020.
    ch.query("INSERT INTO tg_restore.requests SELECT * FROM tg_restore.requests")
        .unwrap();
    ch.query(
        "INSERT INTO tg_restore.requests (request_id, start_time_unix_nanos, key_id, tenant, team, end_user, cost_picodollars) \
         SELECT 'old-1', 1577836800000000000, key_id, tenant, team, end_user, 1000000 FROM tg_restore.requests LIMIT 1",
    )
    .unwrap();
    assert_eq!(count(&ch), 3);
    let u = restart_and_read_usage(&mut stack).await;
    assert_eq!(u["data"][0]["spent_usd"], "0.000035000000", "{u}");
    assert_eq!(u["data"][2]["spent_usd"], "0.000035000000", "{u}");
    assert_eq!(u["data"][3]["spent_usd"], "0.000036000000", "{u}");
    assert_the_budget_carries_on(&stack).await;
    // Without ClickHouse, `serve` refuses to start rather than reset the budgets.
    ch.kill();
    let out = std::process::Command::new(TOLLGATE)
        .args(["serve", "--config"])
        .arg(&stack.config_path)
        .envs(provider_env())
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot restore spend from ClickHouse")
            && err.contains("budgets.restore.clickhouse"),
        "{err}"
    );
}

/// A real `redis-server` listening on a Unix socket only (`--port 0` turns TCP off; no port
/// to pick), data in a temporary directory, killed on drop.
struct Redis {
    url: String,
    proc: Proc,
    _dir: tempfile::TempDir,
}

fn start_redis() -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let mut proc = Proc::spawn(
        "redis",
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path()),
        dir.path(),
    );
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(proc.alive(), "redis-server exited:\n{}", proc.log());
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "redis-server did not listen:\n{}",
            proc.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Redis {
        url: format!("redis+unix://{}?db=0", socket.display()),
        proc,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sharing_redis_hold_the_same_bounds_and_fail_closed_without_it() {
    let mut redis = start_redis();
    let budget: u128 = 1_750_000_000;
    let yaml = format!(
        "budgets:\n  redis: {{ url: \"{}\", timeout_ms: 1000 }}\n  limits:\n    - {{ id: all-daily, scope: key, name: all, period: daily, amount_usd: \"0.00175\" }}\n",
        redis.url
    );
    // Three `serve` replicas, each with its own Envoy and mock, one ledger.
    let stacks: Vec<Arc<Stack>> = (0..3)
        .map(|_| {
            Arc::new(Stack::start(StackOptions {
                extra_yaml: yaml.clone(),
                ..Default::default()
            }))
        })
        .collect();
    let (admitted, spent) = fire(&stacks, 200).await;
    // Per-replica ledgers would admit about three budgets' worth; a shared one holds one.
    assert_bound(admitted, spent, budget);
    // Every replica reads the same spend, once the last settlements (written behind the
    // responses) are in.
    for s in &stacks {
        let start = std::time::Instant::now();
        let mut v = s.get("/v1/budget", Some(KEY_ALL)).await.json();
        while v["data"][0]["reserved_usd"] != "0.000000000000"
            && start.elapsed() < std::time::Duration::from_secs(10)
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            v = s.get("/v1/budget", Some(KEY_ALL)).await.json();
        }
        assert_eq!(v["data"][0]["spent_usd"], format!("0.{:012}", spent), "{v}");
        assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000");
    }
    // Request rates are shared too: the rate key's 2 per minute hold across the replicas
    // (each replica alone would admit 2).
    let mut admitted = 0;
    for i in 0..9 {
        let r = stacks[i % 3]
            .post("/v1/chat/completions", Some(KEY_RATE), chat("mock-model"))
            .await;
        match r.status {
            200 => admitted += 1,
            _ => {
                r.assert_openai_error(429, Some("rate_limit_exceeded"));
            }
        }
    }
    assert_eq!(admitted, 2);
    // Redis gone: budgets fail closed (the default), in the client's dialect.
    redis.proc.kill9();
    let r = stacks[0]
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    r.assert_openai_error(503, Some("budget_unavailable"));
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_stream_past_its_output_cap_ends_cleanly_in_each_dialect() {
    let data = tempfile::tempdir().unwrap();
    let logger = Logger::start(ANY_PORT, &data.path().join("data"), data.path());
    let stack = Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        extra_yaml: "budgets:\n  max_output_tokens_per_request: 5\n".to_owned(),
        ..Default::default()
    });
    // OpenAI, usage asked for. The mock would answer 13 words, one chunk each.
    let body = json!({"model": "mock-model", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": TEN_WORDS}]});
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = sse_data(&r.text);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert_eq!(finish, "length", "{}", r.text);
    let usage = &chunks[chunks.len() - 1]["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&completion), "{usage}");
    assert!(text.starts_with("Mock reply"), "{text}");
    assert!(!text.contains("ten"), "the stream went on: {text}");
    // Exactly one finish and one usage chunk reached the client.
    assert_eq!(r.text.matches("finish_reason\":\"length").count(), 1);
    assert_eq!(r.text.matches("\"usage\":{").count(), 1, "{}", r.text);

    // Anthropic Messages (translated from the OpenAI-family mock).
    let body = json!({"model": "mock-model", "stream": true, "max_tokens": 64,
        "messages": [{"role": "user", "content": TEN_WORDS}]});
    let r = stack
        .post("/v1/messages", Some(KEY_ALL), body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let names: Vec<&str> = r
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let n = names.len();
    assert_eq!(
        names[n - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{}",
        r.text
    );
    assert!(
        r.text.contains("\"stop_reason\":\"max_tokens\""),
        "{}",
        r.text
    );
    assert_eq!(
        r.text.matches("event: message_delta").count(),
        1,
        "{}",
        r.text
    );
    assert!(!r.text.contains(" ten\""), "the stream went on: {}", r.text);

    // Both requests are logged with the reason.
    let start = std::time::Instant::now();
    while logger.lines().len() < 2 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "not logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for line in logger.lines() {
        assert_eq!(line["error_class"], "output_cap_reached", "{line}");
        assert_eq!(line["http_status"], 200, "{line}");
    }
}

#[tokio::test]
async fn token_rate_limits_admit_while_there_is_room_and_charge_real_tokens() {
    // 30 tokens a minute for tenant acme; each request uses 20 (10 in, 10 out, as the mock
    // counts).
    let stack = Stack::start(StackOptions {
        extra_yaml: "tenants:\n  acme: { tokens_per_minute: 30 }\n".to_owned(),
        ..Default::default()
    });
    let send = || stack.post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"));
    let r = send().await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("30"));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("30"));
    // 20 charged: room for 10 more, so the next is admitted (and takes the tenant into debt).
    let r = send().await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("10"));
    let r = send().await;
    let v = r.assert_openai_error(429, Some("rate_limit_exceeded"));
    assert_eq!(v["error"]["type"], "tokens");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens on this tenant"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((20..=23).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("0"));
}

/// Polls ClickHouse until `sql` returns something (at most 20 s).
fn ch_row(ch: &common::clickhouse::ClickHouse, sql: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Some(out) = ch.query(sql).filter(|o| !o.trim().is_empty()) {
            return out.trim().to_owned();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "nothing for {sql}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A stream the client cancels after it started is charged its whole reservation in the
/// ledger (the provider bills what it generated, which nobody counted), and its log event
/// carries that same charge with usage source `reservation`: `tollgate usage` shows it, and a
/// `serve` restarted from the logger's ClickHouse table starts with it in the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_cancels_is_billed_its_reservation_in_ledger_records_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let ch = common::clickhouse::ClickHouse::start();
    let logger = Logger::start_clickhouse(ANY_PORT, &ch.url, "tg_cancel", dir.path());
    let mut stack = Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        extra_yaml: format!(
            "budgets:\n  restore:\n    clickhouse: {{ url: \"{}\", database: tg_cancel, table: requests }}\n  limits:\n    - {{ id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.0001\" }}\n",
            ch.url
        ),
        ..Default::default()
    });
    let body = json!({"model": "mock-model", "max_tokens": 10, "stream": true,
        "messages": [{"role": "user", "content": TEN_WORDS}]});
    let mut resp = stack
        .http
        .post(format!("{}/v1/chat/completions", stack.base))
        .bearer_auth(KEY_ALL)
        .header("x-mock-chunk-delay-ms", "400")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-tollgate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    // The client goes away mid-stream.
    drop(resp);

    // The record: the reservation (18 prompt tokens as estimated, 10 at most generated),
    // charged whole, with its source.
    let row = ch_row(
        &ch,
        &format!("SELECT usage_source, cost_picodollars, input_tokens, output_tokens, http_status FROM tg_cancel.requests WHERE request_id = '{id}' FORMAT TSV"),
    );
    assert_eq!(row, format!("reservation\t{RESERVATION}\t18\t10\t200"));
    // The ledger charged the same.
    let spent = format!("0.{RESERVATION:012}");
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(v["data"][0]["spent_usd"], spent.as_str(), "{v}");
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
    // `tollgate usage`, the billing source, shows it.
    let out = std::process::Command::new(TOLLGATE)
        .args(["usage", "--clickhouse-url", &ch.url])
        .args([
            "--clickhouse-database",
            "tg_cancel",
            "--by",
            "key",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        usage["total"]["cost_picodollars"],
        RESERVATION.to_string().as_str(),
        "{usage}"
    );
    // After a restart restored from ClickHouse, the budget still holds it.
    let u = restart_and_read_usage(&mut stack).await;
    assert_eq!(u["data"][2]["spent_usd"], spent.as_str(), "{u}");
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(v["data"][0]["spent_usd"], spent.as_str(), "{v}");
}

/// A `redis-server` on a Unix socket in `dir` that keeps its data across a `kill -9` (AOF,
/// fsync on every write), so that it can be started again on the same socket with the same
/// lines; killed on drop.
fn durable_redis(dir: &std::path::Path, run: u32) -> Proc {
    let socket = dir.join("redis.sock");
    let mut proc = Proc::spawn(
        &format!("redis-{run}"),
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir),
        dir,
    );
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(proc.alive(), "redis-server exited:\n{}", proc.log());
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "redis-server did not listen:\n{}",
            proc.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    proc
}

/// With the Redis ledger gone (hung: every call waits for its timeout, the worst case), SIGTERM
/// in the middle of five streams: `serve` exits within its bound (the streams' end +
/// `shutdown.flush_timeout_ms` + a little; retrying the queued settlements one by one took
/// ≥ 2 s each here, 45–50 s with a TCP Redis gone), every log event reaches the logger, the
/// settlements Redis did not take are written to `budgets.redis.pending_dir`, and once Redis
/// is back (killed, restarted from its append-only file) the next start applies them: nothing
/// stays reserved and the spend is what the records say.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_gone_serve_exits_within_its_bound_and_the_next_start_settles_what_was_left() {
    let rdir = tempfile::tempdir().unwrap();
    let mut redis = durable_redis(rdir.path(), 0);
    let url = format!(
        "redis+unix://{}?db=0",
        rdir.path().join("redis.sock").display()
    );
    let data = tempfile::tempdir().unwrap();
    let logger = Logger::start(ANY_PORT, &data.path().join("data"), data.path());
    let pending = data.path().join("pending");
    let mut stack = Stack::start(StackOptions {
        logger: Some(logger.addr.clone()),
        extra_yaml: format!(
            "budgets:\n  redis: {{ url: \"{url}\", timeout_ms: 250, pending_dir: \"{}\" }}\n  limits:\n    - {{ id: acme, scope: tenant, name: acme, period: total, amount_usd: \"1\" }}\n\
             shutdown: {{ pre_drain_wait_ms: 0, drain_timeout_ms: 10000, flush_timeout_ms: 2000 }}\n",
            pending.display()
        ),
        ..Default::default()
    });
    // One request settled while Redis is there.
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut ids = vec![r.header("x-tollgate-request-id").unwrap().to_owned()];
    // Five streams of about ten chunks, 150 ms apart, reserved before Redis goes.
    let mut readers = Vec::new();
    for _ in 0..5 {
        let mut resp = stack
            .http
            .post(format!("{}/v1/chat/completions", stack.base))
            .bearer_auth(KEY_ALL)
            .header("x-mock-chunk-delay-ms", "150")
            .body(
                json!({"model": "mock-model", "stream": true,
                       "messages": [{"role": "user", "content": TEN_WORDS}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        ids.push(
            resp.headers()["x-tollgate-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        readers.push(tokio::spawn(async move {
            let mut body = Vec::new();
            while let Ok(Some(c)) = resp.chunk().await {
                body.extend_from_slice(&c);
            }
            String::from_utf8_lossy(&body).into_owned()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    redis.signal("STOP");
    let signalled = std::time::Instant::now();
    stack.procs[1].signal("TERM");
    let exited = loop {
        if let Some(status) = stack.procs[1].exit_status() {
            assert!(
                status.success(),
                "serve exited with {status}:\n{}",
                stack.serve_log()
            );
            break signalled.elapsed();
        }
        assert!(
            signalled.elapsed() < std::time::Duration::from_secs(30),
            "serve did not exit within 30 s:\n{}",
            stack.serve_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut streamed_to_the_end = 0;
    for r in readers {
        if r.await.unwrap().contains("data: [DONE]") {
            streamed_to_the_end += 1;
        }
    }
    assert_eq!(streamed_to_the_end, 5, "{}", stack.serve_log());
    // The streams' ≈ 1.6 s, the 2 s flush bound, a margin for a loaded machine.
    eprintln!("serve exited {exited:?} after SIGTERM");
    assert!(
        exited < std::time::Duration::from_millis(6500),
        "serve took {exited:?} to exit:\n{}",
        stack.serve_log()
    );
    let log = stack.serve_log();
    assert!(
        log.contains("Wrote budget settlements Redis did not take"),
        "{log}"
    );

    // Every event reached the logger, each with its cost.
    let start = std::time::Instant::now();
    let events = loop {
        let lines = logger.lines();
        if ids
            .iter()
            .all(|id| lines.iter().any(|l| l["request_id"] == id.as_str()))
        {
            break lines;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "missing events: {ids:?} in {lines:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let billed: u128 = ids
        .iter()
        .map(|id| {
            let e = events
                .iter()
                .find(|l| l["request_id"] == id.as_str())
                .unwrap();
            u128::from(e["cost_picodollars"].as_u64().unwrap())
        })
        .sum();
    assert!(billed > 0);
    let files: Vec<_> = std::fs::read_dir(&pending).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");

    // Redis killed and back with its data: the streams' reservations are still held there.
    redis.kill9();
    let _redis = durable_redis(rdir.path(), 1);
    stack.restart_serve(2);
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
    assert_eq!(v["data"][0]["spent_usd"], format!("0.{billed:012}"), "{v}");
    assert!(
        stack
            .serve_log()
            .contains("Applied the budget settlements an earlier run left pending"),
        "{}",
        stack.serve_log()
    );
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0);
}

/// The base config with a price for the mock's fault model `mock-stream-error` (served as
/// `stream-error`), so that its requests are reserved.
fn price_the_stream_error_model(config: String) -> String {
    config.replacen(
        "    mock-error-500: {",
        "    mock-stream-error: { input: \"1.5\", output: \"2\" }\n    mock-error-500: {",
        1,
    )
}

/// Another way a started response's usage never comes, through real Envoy: the provider sends
/// an error event mid-stream and ends it. The ledger keeps the whole reservation, and the
/// record carries the same charge, with usage source `reservation`.
#[tokio::test]
async fn a_stream_that_breaks_off_with_an_error_is_billed_its_reservation_in_ledger_and_record() {
    let logged = LoggedStack::ndjson_with(StackOptions {
        extra_yaml: "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"0.0001\" }\n".into(),
        patch_config: Some(price_the_stream_error_model),
        ..Default::default()
    });
    let stack = &logged.stack;
    let body = json!({"model": "stream-error", "max_tokens": 10, "stream": true,
        "messages": [{"role": "user", "content": TEN_WORDS}]});
    let r = stack
        .post("/v1/chat/completions", Some(KEY_ALL), body.to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("\"error\""), "{}", r.text);
    let id = r.header("x-tollgate-request-id").unwrap().to_owned();
    let start = std::time::Instant::now();
    let event = loop {
        if let Some(e) = logged
            .logger
            .lines()
            .into_iter()
            .find(|l| l["request_id"] == id.as_str())
        {
            break e;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no event for {id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(event["usage_source"], "reservation", "{event}");
    assert_eq!(
        u128::from(event["cost_picodollars"].as_u64().unwrap()),
        RESERVATION,
        "{event}"
    );
    assert_eq!(
        (
            event["input_tokens"].as_u64(),
            event["output_tokens"].as_u64()
        ),
        (Some(18), Some(10)),
        "{event}"
    );
    let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
    assert_eq!(
        v["data"][0]["spent_usd"],
        format!("0.{RESERVATION:012}"),
        "{v}"
    );
    assert_eq!(v["data"][0]["reserved_usd"], "0.000000000000", "{v}");
}

/// The base config with prices for the Anthropic, Gemini and Bedrock mock models.
fn price_every_provider(config: String) -> String {
    config.replacen(
        "    mock-error-500: {",
        &format!(
            "    claude-upstream-model: {{ input: \"3\", output: \"15\" }}\n    gemini-upstream-model: {{ input: \"1\", output: \"4\" }}\n    \"{BEDROCK_MODEL_ID}\": {{ input: \"3\", output: \"15\" }}\n    mock-error-500: {{"
        ),
        1,
    )
}

/// A cancelled stream is billed its reservation whatever the provider, an OpenAI client
/// asking each: Anthropic's and Bedrock's streams report the prompt's usage as they start,
/// which must not replace the reservation; the record and the ledger agree on each.
#[tokio::test]
async fn a_cancelled_stream_is_billed_its_reservation_at_every_provider() {
    let logged = LoggedStack::ndjson_with(StackOptions {
        extra_yaml: "budgets:\n  limits:\n    - { id: acme, scope: tenant, name: acme, period: monthly, amount_usd: \"10\" }\n".into(),
        patch_config: Some(price_every_provider),
        ..Default::default()
    });
    let stack = &logged.stack;
    let spent = |v: &Value| -> u128 {
        let s = v["data"][0]["spent_usd"].as_str().unwrap().replace('.', "");
        s.parse().unwrap()
    };
    for model in [
        "mock-model",
        "claude-model",
        "gemini-model",
        "bedrock-model",
    ] {
        let before = spent(&stack.get("/v1/budget", Some(KEY_ALL)).await.json());
        let mut resp = stack
            .http
            .post(format!("{}/v1/chat/completions", stack.base))
            .bearer_auth(KEY_ALL)
            .header("x-mock-chunk-delay-ms", "400")
            .body(
                json!({"model": model, "max_tokens": 10, "stream": true,
                       "messages": [{"role": "user", "content": TEN_WORDS}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let id = resp.headers()["x-tollgate-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(!first.is_empty(), "{model}");
        drop(resp);
        let start = std::time::Instant::now();
        let event = loop {
            if let Some(e) = logged
                .logger
                .lines()
                .into_iter()
                .find(|l| l["request_id"] == id.as_str())
            {
                break e;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "{model}: no event for {id}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(event["usage_source"], "reservation", "{model}: {event}");
        assert_eq!(event["output_tokens"], 10, "{model}: {event}");
        let cost = u128::from(event["cost_picodollars"].as_u64().unwrap());
        assert!(cost > 0, "{model}: {event}");
        let v = stack.get("/v1/budget", Some(KEY_ALL)).await.json();
        assert_eq!(spent(&v) - before, cost, "{model}: {v} {event}");
        assert_eq!(
            v["data"][0]["reserved_usd"], "0.000000000000",
            "{model}: {v}"
        );
    }
}
