//! Evaluators on real logged traffic: requests through real Envoy and `serve`, events shipped
//! to a real `tollgate logger` whose `--config` has an `evaluators` section, results in real
//! ClickHouse (and NDJSON), read back with `tollgate evals`. Scores are checked against what
//! the mock is known to answer: `Mock reply to: <the prompt's first words>`.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LoggedStack, KEY_ALL, KEY_CAPTURE_FULL, TOLLGATE};

/// A webhook evaluator that accepts connections and never answers.
async fn hanging_webhook() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (format!("http://{addr}/evaluate"), task)
}

fn evaluators_yaml(judge_url: &str, key_file: &std::path::Path, webhook: &str) -> String {
    format!(
        r#"evaluators:
  batch_size: 50
  max_delay_ms: 100
  list:
    - {{ name: is-json, kind: json_valid, sample: {{ tenants: [recorded] }} }}
    - {{ name: mock-prefix, kind: regex, params: {{ pattern: "^Mock reply to:" }}, sample: {{ tenants: [recorded] }} }}
    - {{ name: no-refusal, kind: refusal, sample: {{ tenants: [recorded] }} }}
    - {{ name: no-pii, kind: pii, sample: {{ tenants: [recorded] }} }}
    - {{ name: short, kind: length, params: {{ max_chars: 200 }}, sample: {{ tenants: [recorded] }} }}
    - {{ name: fast, kind: latency, params: {{ max_ms: 60000 }} }}
    - {{ name: tools-ok, kind: tool_calls, sample: {{ tenants: [recorded] }} }}
    - name: judge
      kind: llm_judge
      sample: {{ tenants: [recorded] }}
      params:
        url: "{judge_url}"
        key: {{ file: "{key_file}" }}
        model: mock-model
        rubric: "The answer repeats the question."
    - name: hook
      kind: webhook
      timeout_ms: 1000
      sample: {{ tenants: [recorded] }}
      params: {{ url: "{webhook}" }}
"#,
        key_file = key_file.display()
    )
}

/// Polls `f` until it gives `Some`, for at most `limit`.
async fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn chat(logged: &LoggedStack, body: serde_json::Value) -> String {
    chat_rated(logged, body).await.0
}

/// The request id and the feedback token of a chat request by the capture-full key.
async fn chat_rated(logged: &LoggedStack, body: serde_json::Value) -> (String, String) {
    let r = logged
        .stack
        .post(
            "/v1/chat/completions",
            Some(KEY_CAPTURE_FULL),
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    (
        r.header("x-tollgate-request-id").unwrap().to_owned(),
        r.header("x-tollgate-feedback-token")
            .unwrap_or_default()
            .to_owned(),
    )
}

fn configure(logged: &mut LoggedStack, webhook: &str, metrics_port: u16) {
    let dir = logged.stack.dir.path();
    let key_file = dir.join("judge.key");
    std::fs::write(&key_file, KEY_ALL).unwrap();
    let config = dir.join("evaluators.yaml");
    let judge_url = format!("{}/v1/chat/completions", logged.stack.base);
    std::fs::write(&config, evaluators_yaml(&judge_url, &key_file, webhook)).unwrap();
    logged.logger.restart_with(
        1,
        &[
            "--config".to_owned(),
            config.display().to_string(),
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluators_score_real_traffic_into_clickhouse_and_a_hung_webhook_stalls_nothing() {
    let mut logged = LoggedStack::clickhouse("tg_evals");
    let (webhook, hook_task) = hanging_webhook().await;
    let metrics_port = common::free_port();
    configure(&mut logged, &webhook, metrics_port);

    let sent = Instant::now();
    let (plain, token) = chat_rated(
        &logged,
        serde_json::json!({"model": "mock-model", "messages": [{"role": "user", "content": "hello from ann@example.com"}]}),
    )
    .await;
    let refusal = chat(
        &logged,
        serde_json::json!({"model": "mock-model", "messages": [{"role": "user", "content": "I'm sorry, but I cannot help with that"}]}),
    )
    .await;
    let tools = chat(
        &logged,
        serde_json::json!({"model": "mock-model",
            "messages": [{"role": "user", "content": "weather please"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["unit"]}}}]}),
    )
    .await;

    // The events reach ClickHouse promptly although the webhook evaluator hangs on each.
    let ch = logged.ch();
    let ids = format!("'{plain}', '{refusal}', '{tools}'");
    let stored = eventually(Duration::from_secs(20), || {
        let n = ch.query(&format!(
            "SELECT count() FROM tg_evals.requests WHERE request_id IN ({ids})"
        ))?;
        (n.trim() == "3").then_some(())
    })
    .await;
    assert!(stored.is_some(), "the requests never reached ClickHouse");
    let stored_after = sent.elapsed();
    assert!(
        stored_after < Duration::from_secs(5),
        "logging waited for evaluation: {stored_after:?}"
    );

    // Every evaluator's result, including the webhook's timeout, lands in the evaluations table.
    let sql = format!(
        "SELECT request_id, evaluator, score, passed, label, error FROM tg_evals.requests_evaluations \
         WHERE request_id IN ({ids}) ORDER BY request_id, evaluator FORMAT TSV"
    );
    let rows = eventually(Duration::from_secs(30), || {
        let text = ch.query(&sql)?;
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect();
        // 9 evaluators on each of 3 requests.
        (rows.len() >= 27).then_some(rows)
    })
    .await
    .unwrap_or_else(|| panic!("results missing: {:?}", ch.query(&sql)));
    let result: HashMap<(String, String), Vec<String>> = rows
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone()), r[2..].to_vec()))
        .collect();
    let get = |id: &str, ev: &str| {
        result
            .get(&(id.to_owned(), ev.to_owned()))
            .unwrap_or_else(|| panic!("no {ev} result for {id}: {result:?}"))
            .clone()
    };
    // score, passed, label, error
    assert_eq!(get(&plain, "is-json")[..3], ["0", "0", "invalid_json"]);
    assert_eq!(get(&plain, "mock-prefix")[..2], ["1", "1"]);
    assert_eq!(get(&plain, "no-refusal")[..2], ["1", "1"]);
    assert_eq!(get(&refusal, "no-refusal")[..3], ["0", "0", "refusal"]);
    // The email the mock echoed was redacted by capture: the marker still counts as a leak.
    assert_eq!(get(&plain, "no-pii")[..3], ["0", "0", "leak"]);
    assert_eq!(get(&refusal, "no-pii")[..2], ["1", "1"]);
    assert_eq!(get(&plain, "short")[..2], ["1", "1"]);
    assert_eq!(get(&plain, "fast")[..2], ["1", "1"]);
    assert_eq!(get(&plain, "tools-ok")[..3], ["1", "1", "no_tool_calls"]);
    assert_eq!(
        get(&tools, "tools-ok")[..3],
        ["0", "0", "invalid_tool_call"]
    );
    assert_eq!(get(&plain, "judge")[..2], ["0.75", "1"]);
    let hook = get(&plain, "hook");
    assert_eq!(hook[1], "0");
    assert!(hook[3].starts_with("timeout after 1000 ms"), "{hook:?}");

    // The judge's own requests went through Tollgate: logged, priced, marked, not evaluated.
    let judged = ch
        .query(
            "SELECT count(), min(cost_picodollars) > 0, any(key_id) FROM tg_evals.requests \
             WHERE end_user = 'tollgate-evaluator' FORMAT TSV",
        )
        .unwrap();
    let judged: Vec<&str> = judged.trim().split('\t').collect();
    assert!(judged[0].parse::<u32>().unwrap() >= 3, "{judged:?}");
    assert_eq!(judged[1..], ["1", "all"]);
    let evaluated_judges = ch
        .query(
            "SELECT count() FROM tg_evals.requests_evaluations WHERE request_id IN \
             (SELECT request_id FROM tg_evals.requests WHERE end_user = 'tollgate-evaluator')",
        )
        .unwrap();
    assert_eq!(evaluated_judges.trim(), "0");

    // User feedback on the first request, to sit beside its scores.
    let fb = logged
        .stack
        .post(
            "/v1/feedback",
            Some(KEY_CAPTURE_FULL),
            serde_json::json!({"token": token, "score": 0.5}).to_string(),
        )
        .await;
    assert_eq!(fb.status, 200, "{}", fb.text);
    let fed = eventually(Duration::from_secs(20), || {
        let n = ch.query(&format!(
            "SELECT count() FROM tg_evals.requests_feedback WHERE request_id = '{plain}'"
        ))?;
        (n.trim() == "1").then_some(())
    })
    .await;
    assert!(fed.is_some(), "the feedback never reached ClickHouse");

    // `tollgate evals` summarises them from ClickHouse.
    let out = Command::new(TOLLGATE)
        .args(["evals", "--clickhouse-url", &ch.url])
        .args(["--clickhouse-database", "tg_evals", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |ev: &str| {
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["evaluator"] == ev && r["key"] == "cap-full")
            .unwrap_or_else(|| panic!("no {ev} row in {report}"))
            .clone()
    };
    let refusals = row("no-refusal");
    assert_eq!(refusals["count"], 3);
    assert_eq!(refusals["model"], "mock-model");
    assert!((refusals["pass_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(refusals["feedback_count"], 1);
    assert_eq!(refusals["feedback_mean"], 0.5);
    let hooks = row("hook");
    assert_eq!(
        (hooks["count"].as_u64(), hooks["failures"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(hooks["mean_score"].is_null());
    let table = Command::new(TOLLGATE)
        .args([
            "evals",
            "--clickhouse-url",
            &ch.url,
            "--clickhouse-database",
            "tg_evals",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("day "), "{table}");
    assert!(table.contains("no-refusal"), "{table}");

    // The stage's metrics.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"tollgate_evaluations_total{evaluator="hook",outcome="timeout"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"tollgate_evaluations_total{evaluator="no-refusal",outcome="failed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_evaluation_queue_depth"),
        "{metrics}"
    );
    hook_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluators_write_ndjson_and_tollgate_evals_reads_it() {
    let mut logged = LoggedStack::ndjson();
    let (webhook, hook_task) = hanging_webhook().await;
    configure(&mut logged, &webhook, common::free_port());
    let plain = chat(
        &logged,
        serde_json::json!({"model": "mock-model", "messages": [{"role": "user", "content": "hello there"}]}),
    )
    .await;
    let data = logged.logger.data_dir.clone();
    let found = eventually(Duration::from_secs(30), || {
        let out = Command::new(TOLLGATE)
            .args(["evals", "--json", "--data-dir"])
            .arg(&data)
            .output()
            .ok()?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = report["rows"].as_array()?.clone();
        (rows.len() >= 9).then_some(rows)
    })
    .await
    .expect("no evaluations in the NDJSON files");
    let by = |ev: &str| found.iter().find(|r| r["evaluator"] == ev).unwrap().clone();
    assert_eq!(by("is-json")["pass_rate"], 0.0);
    assert_eq!(by("mock-prefix")["pass_rate"], 1.0);
    assert_eq!(by("judge")["mean_score"], 0.75);
    assert_eq!(by("hook")["failures"], 1);
    // The lines themselves, one per (request, evaluator).
    let dir = data.join("evaluations");
    let text: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["request_id"] == plain.as_str())
        .collect();
    assert_eq!(lines.len(), 9, "{lines:?}");
    let json = lines.iter().find(|l| l["evaluator"] == "is-json").unwrap();
    assert_eq!(json["passed"], false);
    assert_eq!(json["kind"], "json_valid");
    assert_eq!(json["key_id"], "cap-full");
    hook_task.abort();
}

/// A streamed answer's tool calls are kept by capture (name and arguments per call) and scored
/// by `tool_calls` like a whole answer's: the same request streamed and not gets the same
/// score, and a call matching its schema scores 1 (issue 18: a stream's capture once had no
/// tool names, and the evaluator recorded an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_tool_call_is_scored_by_tool_calls_into_ndjson() {
    let mut logged = LoggedStack::ndjson();
    let (webhook, hook_task) = hanging_webhook().await;
    configure(&mut logged, &webhook, common::free_port());
    let strict = |stream: bool| {
        serde_json::json!({"model": "mock-model", "stream": stream,
            "messages": [{"role": "user", "content": "weather please"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["unit"]}}}]})
    };
    let whole = chat(&logged, strict(false)).await;
    let streamed = chat(&logged, strict(true)).await;
    let open = chat(
        &logged,
        serde_json::json!({"model": "mock-model", "stream": true,
            "messages": [{"role": "user", "content": "weather please"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object"}}}]}),
    )
    .await;
    // Translated streams too: Bedrock's ConverseStream reaching an OpenAI client, and an
    // Anthropic client's own stream.
    let bedrock = chat(
        &logged,
        serde_json::json!({"model": "bedrock-model", "stream": true,
            "messages": [{"role": "user", "content": "weather please"}],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object"}}}]}),
    )
    .await;
    let r = logged
        .stack
        .post(
            "/v1/messages",
            Some(KEY_CAPTURE_FULL),
            serde_json::json!({"model": "claude-model", "max_tokens": 64, "stream": true,
                "messages": [{"role": "user", "content": "weather please"}],
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let anthropic = r.header("x-tollgate-request-id").unwrap().to_owned();
    let dir = logged.logger.data_dir.join("evaluations");
    let scored = |id: &str| -> Option<serde_json::Value> {
        let text: String = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["request_id"] == id && l["evaluator"] == "tools-ok")
    };
    let got = eventually(Duration::from_secs(30), || {
        Some((scored(&whole)?, scored(&streamed)?, scored(&open)?))
    })
    .await
    .expect("no tools-ok evaluations in the NDJSON files");
    let (whole, streamed, open) = got;
    assert_eq!(streamed["error"], "", "{streamed}");
    assert_eq!(streamed["score"], whole["score"], "{streamed} vs {whole}");
    assert_eq!(streamed["label"], whole["label"], "{streamed} vs {whole}");
    assert_eq!(streamed["label"], "invalid_tool_call", "{streamed}");
    assert_eq!(open["error"], "", "{open}");
    assert_eq!(open["score"], 1.0, "{open}");
    assert_eq!(open["label"], "", "{open}");
    for id in [&bedrock, &anthropic] {
        let got = eventually(Duration::from_secs(30), || scored(id))
            .await
            .expect("no tools-ok evaluation of a translated stream");
        assert_eq!(got["error"], "", "{got}");
        assert_eq!(got["score"], 1.0, "{got}");
        // Not `no_tool_calls`: the call was seen and checked.
        assert_eq!(got["label"], "", "{got}");
    }
    hook_task.abort();
}
