//! The dashboard and the alert rules (issue 17), tested for real: Prometheus from Debian's
//! packages scrapes a running `serve` and Envoy while traffic goes through Envoy, loads the
//! alert rules, and every dashboard panel query, every template variable and every alert
//! expression evaluates there to a non-empty result. The traffic is made so that each alert
//! fires: 5xx answers, a budget used up, a provider ejected by Envoy's outlier detection, a
//! logger gone (the spool grows), a spool that cannot be written (events dropped) and a bad
//! config file. Also checks that every metric and label a running `serve` reports is in
//! `docs/METRICS.md`.

// Test helpers outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, Target};
use common::*;
use serde_json::{json, Value};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const DASHBOARD: &str = "charts/tollgate/dashboards/tollgate.json";
const RULES: &str = "charts/tollgate/alerts/tollgate-rules.yaml";

/// Adds a provider `flaky` (its own Envoy cluster, on the mock) whose model always answers 503.
fn add_flaky_provider(yaml: String) -> String {
    let mock = yaml
        .split("  mock:\n    kind: openai\n    base_url: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    yaml.replacen(
        "providers:\n",
        &format!("providers:\n  flaky:\n    kind: openai\n    base_url: \"{mock}\"\n"),
        1,
    )
    .replacen(
        "\nmodels:\n",
        "\nmodels:\n  flaky-model:\n    targets: [{ provider: flaky, model: mock-error-503 }]\n",
        1,
    )
}

/// Envoy ejects the `flaky` cluster's host after 3 consecutive 5xx.
fn eject_flaky_hosts(bootstrap: String) -> String {
    let line = "  - name: \"flaky\"\n";
    assert!(bootstrap.contains(line), "{bootstrap}");
    bootstrap.replacen(
        line,
        &format!("{line}    outlier_detection: {{ consecutive_5xx: 3, interval: 1s, base_ejection_time: 300s, max_ejection_percent: 100 }}\n"),
        1,
    )
}

fn chat(model: &str, text: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": text}]}).to_string()
}

/// Sends requests that exercise every panel and every alert; returns the statuses seen.
async fn traffic(stack: &Stack) -> BTreeMap<u16, usize> {
    let mut seen = BTreeMap::new();
    let mut note = |status: u16| *seen.entry(status).or_insert(0) += 1;
    for i in 0..4 {
        let r = stack
            .post(
                "/v1/chat/completions",
                Some(KEY_ALL),
                chat("mock-model", &format!("hello {i}")),
            )
            .await;
        note(r.status);
        // Streams: time to first token.
        let body = json!({"model": "mock-model", "stream": true,
            "messages": [{"role": "user", "content": "stream me a few words"}]});
        let (_, _, text) = stack.stream_timed("/v1/chat/completions", body).await;
        assert!(text.ends_with("data: [DONE]\n\n"));
        note(200);
    }
    // A key with a tiny daily budget: used up within a few requests (then 429).
    let mut refused = false;
    for _ in 0..12 {
        let body = json!({"model": "mock-model", "max_tokens": 5,
            "messages": [{"role": "user", "content": "one two three four five six seven eight"}]});
        let r = stack
            .post("/v1/chat/completions", Some(KEY_LIMITED), body.to_string())
            .await;
        note(r.status);
        if r.status == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the budget never refused");
    // Guardrails: redact, flag, block.
    for text in [
        "mail me at someone@example.com",
        "tell me about project x",
        "my card is 4111 1111 1111 1111",
    ] {
        let r = stack
            .post(
                "/v1/chat/completions",
                Some(KEY_GUARDED),
                chat("mock-model", text),
            )
            .await;
        note(r.status);
    }
    // Refused keys and provider failures, in two rounds a few scrapes apart: Prometheus sees
    // a counter rise only after it has scraped the series once.
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        let r = stack
            .post(
                "/v1/chat/completions",
                Some("tg-wrong"),
                chat("mock-model", "hi"),
            )
            .await;
        note(r.status);
        for model in [
            "dead-model",
            "server-error",
            "flaky-model",
            "flaky-model",
            "flaky-model",
        ] {
            let r = stack
                .post("/v1/chat/completions", Some(KEY_ALL), chat(model, "hi"))
                .await;
            note(r.status);
        }
    }
    seen
}

/// A chat request with the all-models key that must succeed.
async fn answered(stack: &Stack, text: &str) {
    let r = stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            chat("mock-model", text),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Waits until `serve`'s metrics contain `needle` (at most 15 s).
async fn wait_metric(stack: &Stack, needle: &str) {
    let start = Instant::now();
    while !stack.metrics().await.contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no {needle} in:\n{}",
            stack.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Dashboard targets and template variables as PromQL, with Grafana's variables replaced.
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap()).unwrap();
    let grafana = |expr: &str| {
        expr.replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m")
            .replace("$tenant", ".*")
            .replace("$key_id", ".*")
            .replace("$model", ".*")
            .replace("$provider", ".*")
    };
    let mut queries = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            assert!(!grafana(expr).contains('$'), "unknown variable in {expr}");
            queries.push((panel["title"].as_str().unwrap().to_owned(), grafana(expr)));
        }
    }
    // `label_values(selector, label)` → `count by (label) (selector)`.
    for var in dash["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {q}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        queries.push((
            format!("variable {}", var["name"]),
            grafana(&format!(
                "count by ({}) ({})",
                label.trim(),
                selector.trim()
            )),
        ));
    }
    assert!(queries.len() >= 30, "{queries:?}");
    queries
}

/// Alert names and expressions of the rule file.
fn alert_rules() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo(RULES)).unwrap()).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Documented label names by metric (`docs/METRICS.md`'s first table).
fn documented_labels() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(repo("docs/METRICS.md")).unwrap();
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with("tollgate_").then_some(())?;
            let labels = cells
                .get(3)?
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            Some((name.to_owned(), labels))
        })
        .collect()
}

/// Every label of every `tollgate_` sample of a scrape is documented for its metric.
fn assert_scrape_is_documented(scrape: &str) {
    let doc = documented_labels();
    let mut families = BTreeSet::new();
    for line in scrape.lines().filter(|l| l.starts_with("tollgate_")) {
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.rsplit_once('}').unwrap().0),
            None => (line.split_once(' ').unwrap().0, ""),
        };
        let family = ["_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| doc.contains_key(*f)))
            .unwrap_or(name);
        let listed = doc
            .get(family)
            .unwrap_or_else(|| panic!("{family} is not in docs/METRICS.md ({line})"));
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let label = pair.split_once('=').unwrap().0;
            assert!(
                label == "le" || listed.contains(label),
                "label {label} of {family} is not in docs/METRICS.md ({line})"
            );
        }
        families.insert(family.to_owned());
    }
    // The traffic made every family report at least one sample (but the ADS ones, which need
    // an Envoy on xDS: `src/xds/tests.rs` counts those; the span exporter's, which needs
    // `traces` and a collector: `tests/e2e_traces.rs` reads it; and the credential refreshes,
    // which need chain or metadata credentials: `tests/e2e_credentials.rs` reads them; and the
    // routing cool-downs, which need a model of several targets: `tests/e2e_routing.rs`; and
    // the CORS preflights, which need a `cors` policy: `tests/e2e_cors.rs`; the ejections,
    // which need consecutive failures: `tests/e2e_respect.rs`; the control-plane families,
    // which need a control plane: `tests/e2e_control_plane.rs`; and the failovers, which need
    // a failover model: `tests/e2e_failover.rs`; the response cache's, which need a `cache`
    // policy: `tests/e2e_cache.rs`; and the evaluation stage's, which the logger serves:
    // `tests/e2e_evaluators.rs`).
    let missing: Vec<&String> = doc
        .keys()
        .filter(|k| {
            !families.contains(*k)
                && !k.starts_with("tollgate_xds_")
                && k.as_str() != "tollgate_trace_spans_total"
                && k.as_str() != "tollgate_credential_refreshes_total"
                && k.as_str() != "tollgate_target_cooldowns_total"
                && k.as_str() != "tollgate_cors_preflights_total"
                && k.as_str() != "tollgate_target_ejections_total"
                && !k.starts_with("tollgate_control_plane_")
                && k.as_str() != "tollgate_failovers_total"
                && !k.starts_with("tollgate_cache_")
                && !k.starts_with("tollgate_evaluation")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "no samples of {missing:?} in:\n{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_query_and_fires_every_alert() {
    let status = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo(RULES))
        .status()
        .expect("promtool (Debian prometheus package) is needed");
    assert!(status.success(), "promtool check rules failed");

    let mut logged = LoggedStack::ndjson_with(StackOptions {
        patch_config: Some(add_flaky_provider),
        patch_bootstrap: Some(eject_flaky_hosts),
        extra_yaml: "budgets:\n  limits:\n    - { id: limited-daily, scope: key, name: limited, period: daily, amount_usd: \"0.0001\" }\n    - { id: limited-weekly-soft, scope: key, name: limited, period: weekly, amount_usd: \"0.00005\", mode: soft }\n".into(),
        ..Default::default()
    });
    let admin = logged.stack.admin.trim_start_matches("http://").to_owned();
    let envoy_admin = logged
        .stack
        .envoy_admin
        .trim_start_matches("http://")
        .to_owned();
    let prom = Prometheus::start(
        &[
            Target {
                job: "tollgate",
                address: &admin,
                path: "/metrics",
            },
            Target {
                job: "envoy",
                address: &envoy_admin,
                path: "/stats/prometheus",
            },
        ],
        &[&repo(RULES)],
    );
    prom.wait_targets_up(2).await;

    let stack = &logged.stack;
    let seen = traffic(stack).await;
    for status in [200, 400, 401, 429, 500, 503] {
        assert!(seen.contains_key(&status), "no {status} in {seen:?}");
    }

    // Bad config files are rejected (twice, a few scrapes apart), the good one comes back.
    let good = std::fs::read_to_string(&stack.config_path).unwrap();
    for n in 1..=2 {
        std::fs::write(
            &stack.config_path,
            format!("providers: [not, a, map, {n}]\n"),
        )
        .unwrap();
        wait_metric(
            stack,
            &format!("tollgate_config_reloads_total{{result=\"rejected\"}} {n}"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    std::fs::write(&stack.config_path, &good).unwrap();

    // The logger goes away: events spool, across several scrapes.
    logged.logger.kill9();
    for i in 0..4 {
        answered(stack, &format!("spooled {i}")).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let m = stack.metrics().await;
    assert!(!m.contains("tollgate_log_spool_bytes 0\n"), "{m}");
    // The spool cannot be written any more: events are dropped (twice, scrapes apart).
    let spool = stack.dir.path().join("spool");
    std::fs::remove_dir_all(&spool).unwrap();
    std::fs::write(&spool, "not a directory").unwrap();
    for round in 0..2 {
        answered(stack, &format!("dropped {round}")).await;
        wait_metric(
            stack,
            &format!(
                "tollgate_log_events_total{{outcome=\"dropped\"}} {}",
                round + 1
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    assert_scrape_is_documented(&stack.metrics().await);

    // Every alert reaches pending or firing (rules are evaluated every second).
    let alerts = alert_rules();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let start = Instant::now();
    let active = loop {
        let data = prom.api("alerts", &[]).await;
        let active: BTreeSet<String> = data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned())
            .collect();
        if alerts.iter().all(|(name, _)| active.contains(name)) {
            break active;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "alerts active: {active:?}; rules: {}",
            prom.api("rules", &[]).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rules = prom.api("rules", &[("type", "alert")]).await;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    eprintln!("alerts active: {active:?}");

    for (name, expr) in alerts {
        let result = prom.query(&expr).await;
        assert!(!result.is_empty(), "alert {name} is empty: {expr}");
    }
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries() {
        if prom.query(&expr).await.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "empty dashboard queries:\n{}",
        empty.join("\n")
    );
}
