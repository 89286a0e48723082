//! Keys from the control plane, end to end: the real `tollgate control-plane` (SQLite), real
//! `serve` replicas each behind its own real Envoy. Keys created through the admin API work on
//! both replicas, revocations and budget changes reach both within seconds through the change
//! feed, a flood of bad keys costs the control plane one call per distinct key (negative
//! cache), a control plane killed by its PID leaves cached keys working until the hard expiry
//! and unknown keys with a clear 503 in the client's dialect, and a signing-secret rotation
//! overlaps (old and new bundles verify) until the previous secret is removed.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SECRET_A: &str = "e2e-cp-signing-secret-A-0123456789abcdef";
const SECRET_B: &str = "e2e-cp-signing-secret-B-0123456789abcdef";
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// A running control plane.
struct ControlPlane {
    proc: Proc,
    url: String,
    http: reqwest::Client,
}

/// Starts `tollgate control-plane` on `db` (SQLite), signing with `current` (and accepting
/// calls signed with `previous`), on a port it picks.
fn start_control_plane(
    dir: &Path,
    run: &str,
    db: &Path,
    listen: &str,
    current: &str,
    previous: Option<&str>,
) -> ControlPlane {
    let config = dir.join(format!("cp-{run}.yaml"));
    let previous_line = if previous.is_some() {
        "\n  previous_secret_env: E2E_CP_PREVIOUS"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "listen: \"{listen}\"\nstorage:\n  sqlite: {{ path: \"{}\" }}\nadmin:\n  tokens_env: E2E_CP_ADMIN\nsigning:\n  secret_env: E2E_CP_CURRENT{previous_line}\nbundle_ttl_secs: 300\nfeed_poll_ms: 100\n",
            db.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(TOLLGATE);
    cmd.args(["control-plane", "--config"])
        .arg(&config)
        .env("E2E_CP_ADMIN", ADMIN_TOKEN)
        .env("E2E_CP_CURRENT", current)
        .env("TOLLGATE_LOG", "info");
    if let Some(p) = previous {
        cmd.env("E2E_CP_PREVIOUS", p);
    }
    let (proc, ready) = spawn_ready(&format!("control-plane-{run}"), &mut cmd, dir, &mut []);
    ControlPlane {
        proc,
        url: format!("http://{}", ready_addr(&ready, "listen")),
        http: reqwest::Client::new(),
    }
}

impl ControlPlane {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Creates a key through the admin API; returns the key (shown once).
    async fn create_key(&self, id: &str) -> String {
        let v = self
            .admin(
                reqwest::Method::POST,
                "/admin/v1/keys",
                Some(json!({"id": id, "tenant": "acme", "models": ["*"]})),
            )
            .await;
        v["key"].as_str().unwrap().to_owned()
    }

    /// The sum of `tollgate_cp_resolve_requests_total` over its results.
    async fn resolves(&self) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("tollgate_cp_resolve_requests_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// The sidecar's `control_plane` section: the secret from `E2E_SECRET_A` (and the previous one
/// from `previous`, a variable name), the given lifetimes.
fn control_plane_yaml(
    url: &str,
    secret_env: &str,
    previous: Option<&str>,
    soft: u64,
    hard: u64,
) -> String {
    let previous = previous
        .map(|p| format!("  previous_secret_env: {p}\n"))
        .unwrap_or_default();
    format!(
        "\ncontrol_plane:\n  url: \"{url}\"\n  secret_env: {secret_env}\n{previous}  soft_ttl_secs: {soft}\n  hard_ttl_secs: {hard}\n  negative_ttl_secs: 60\n  timeout_ms: 500\n  feed_wait_secs: 2\n"
    )
}

fn sidecar(url: &str, soft: u64, hard: u64) -> Stack {
    sidecar_with(url, None, soft, hard)
}

/// A sidecar accepting bundles signed with the secret in `previous` (a variable name) too.
fn sidecar_with(url: &str, previous: Option<&str>, soft: u64, hard: u64) -> Stack {
    Stack::start(StackOptions {
        extra_yaml: control_plane_yaml(url, "E2E_SECRET_A", previous, soft, hard),
        serve_env: vec![
            ("E2E_SECRET_A".into(), SECRET_A.into()),
            ("E2E_SECRET_B".into(), SECRET_B.into()),
        ],
        ..StackOptions::default()
    })
}

fn chat() -> String {
    json!({"model": "mock-model", "max_tokens": 10,
        "messages": [{"role": "user", "content": "one two three"}]})
    .to_string()
}

/// Polls `check` every 100 ms until it holds or `within` passes; returns the time it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric's value summed over the series whose line contains every one of `parts`.
fn metric(text: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_shares_one_control_plane_create_use_flood_budget_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_control_plane(
        dir.path(),
        "1",
        &dir.path().join("cp.db"),
        ANY_PORT,
        SECRET_A,
        None,
    );
    let a = sidecar(&cp.url, 30, 600);
    let b = sidecar(&cp.url, 30, 600);

    // Created through the admin API; the key is shown once.
    let key = cp.create_key("svc-fleet").await;
    assert!(key.starts_with("tg-"));
    let before = cp.resolves().await;
    // A cold replica: its first request costs one control-plane round trip.
    let t = Instant::now();
    let r = a.post("/v1/chat/completions", Some(&key), chat()).await;
    let cold = t.elapsed();
    assert_eq!(r.status, 200, "first use: {}\n{}", r.text, cp.proc.log());
    let mut cached = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let r = a.post("/v1/chat/completions", Some(&key), chat()).await;
        cached = cached.min(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // An unrelated change reaches the feeds before replica B first sees the key: the control
    // plane answers B from its own cache, with the `seq` of A's resolution, and B keeps it.
    let _other = cp.create_key("svc-unrelated").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let r = b.post("/v1/chat/completions", Some(&key), chat()).await;
        assert_eq!(r.status, 200, "replica B: {}", r.text);
    }
    eprintln!("first request of a cold replica {cold:?}, cached {cached:?} (best of 5)");
    assert_eq!(
        cp.resolves().await - before,
        2,
        "one resolve per replica, then the cache"
    );
    let m = a.metrics().await;
    assert_eq!(
        metric(
            &m,
            &[
                "tollgate_control_plane_resolutions_total",
                "result=\"found\""
            ]
        ),
        1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            &[
                "tollgate_control_plane_cache_lookups_total",
                "result=\"hit\""
            ]
        ) >= 5.0,
        "{m}"
    );
    // The key's id is in the log events and metrics, never the key.
    assert!(!a.serve_log().contains(&key));

    // A flood of 300 distinct bad keys, each sent twice: one resolve per distinct key.
    let before = cp.resolves().await;
    // In waves of 50 at once (a bounded load on 127.0.0.1).
    for wave in 0..12 {
        let flood: Vec<_> = (0..50)
            .map(|i| {
                let http = a.http.clone();
                let url = format!("{}/v1/chat/completions", a.base);
                let bad = format!("tg-bad-{}", (wave * 50 + i) % 300);
                tokio::spawn(async move {
                    http.post(url)
                        .bearer_auth(bad)
                        .header("content-type", "application/json")
                        .body(chat())
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for f in flood {
            assert_eq!(f.await.unwrap(), 401);
        }
    }
    let calls = cp.resolves().await - before;
    eprintln!("600 requests with 300 distinct bad keys: {calls} resolve-key calls");
    assert!(
        (300..=310).contains(&calls),
        "{calls} calls for 300 distinct bad keys"
    );
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            &[
                "tollgate_control_plane_cache_lookups_total",
                "result=\"negative\""
            ]
        ) >= 290.0,
        "{m}"
    );

    // A budget on the key, then lowered through the API: both replicas refuse within seconds.
    cp.admin(
        reqwest::Method::POST,
        "/admin/v1/budgets",
        Some(json!({"id": "fleet-daily", "scope": "key", "name": "svc-fleet", "period": "daily", "amount_usd": "100", "mode": "hard"})),
    )
    .await;
    for s in [&a, &b] {
        eventually(
            Duration::from_secs(10),
            "the budget reaches the replica",
            || async {
                let r = s.get("/v1/budget", Some(&key)).await;
                r.status == 200
                    && r.json()["data"].as_array().is_some_and(|d| {
                        d.iter().any(|b| {
                            b["id"] == "fleet-daily" && b["limit_usd"] == "100.000000000000"
                        })
                    })
            },
        )
        .await;
        let r = s.post("/v1/chat/completions", Some(&key), chat()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        // `GET /v1/usage` answers for a control-plane key too: its own spend on this replica.
        let u = s.get("/v1/usage", Some(&key)).await;
        assert_eq!(u.status, 200, "{}", u.text);
        let u = u.json();
        assert_eq!(u["key_id"], "svc-fleet", "{u}");
        assert_ne!(u["data"][0]["spent_usd"], "0.000000000000", "{u}");
    }
    cp.admin(
        reqwest::Method::PATCH,
        "/admin/v1/budgets/fleet-daily",
        Some(json!({"amount_usd": "0.000001"})),
    )
    .await;
    for (name, s) in [("A", &a), ("B", &b)] {
        let took = eventually(
            Duration::from_secs(10),
            "the lowered budget refuses",
            || async {
                let r = s.post("/v1/chat/completions", Some(&key), chat()).await;
                r.status == 429 && r.json()["error"]["code"] == "budget_exceeded"
            },
        )
        .await;
        eprintln!("lowered budget refused on replica {name} after {took:?}");
        // Used up: the gate's precheck refuses even `GET /v1/budget` (as for file keys).
    }

    // Revoked through the API: refused on both replicas within seconds.
    cp.admin(
        reqwest::Method::POST,
        "/admin/v1/keys/svc-fleet/revoke",
        None,
    )
    .await;
    for (name, s) in [("A", &a), ("B", &b)] {
        let took = eventually(
            Duration::from_secs(10),
            "the revoked key is refused",
            || async {
                s.post("/v1/chat/completions", Some(&key), chat())
                    .await
                    .status
                    == 401
            },
        )
        .await;
        eprintln!("revocation reached replica {name} after {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let r = s.post("/v1/chat/completions", Some(&key), chat()).await;
        r.assert_openai_error(401, Some("invalid_api_key"));
    }
    let m = b.metrics().await;
    assert!(
        metric(
            &m,
            &["tollgate_control_plane_feed_changes_total", "kind=\"key\""]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            &[
                "tollgate_control_plane_feed_changes_total",
                "kind=\"budget\""
            ]
        ) >= 1.0,
        "{m}"
    );
    drop(cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_that_is_down_leaves_cached_keys_working_until_the_hard_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = start_control_plane(
        dir.path(),
        "1",
        &dir.path().join("cp.db"),
        ANY_PORT,
        SECRET_A,
        None,
    );
    // A previous secret set (any accepted secret): `serve` warns about it at start.
    let s = sidecar_with(&cp.url, Some("E2E_SECRET_B"), 1, 8);
    assert!(
        s.serve_log().contains("previous_secret_env is set"),
        "{}",
        s.serve_log()
    );
    let key = cp.create_key("svc-outage").await;
    let never_seen = cp.create_key("svc-never-seen").await;
    let r = s.post("/v1/chat/completions", Some(&key), chat()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let cached_at = Instant::now();

    // Killed by its PID.
    cp.proc.kill9();
    // Cached: keeps working past its soft expiry (the background refresh fails).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = s.post("/v1/chat/completions", Some(&key), chat()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Not cached: a clear 503 in the client's dialect, not a 401.
    let r = s
        .post("/v1/chat/completions", Some(&never_seen), chat())
        .await;
    let v = r.assert_openai_error(503, Some("key_unverifiable"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be checked"),
        "{v}"
    );
    let anthropic = s
        .http
        .post(format!("{}/v1/messages", s.base))
        .header("x-api-key", &never_seen)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(json!({"model": "mock-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 503);
    let v: Value = anthropic.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    // Nothing was cached for the outage: asked again, still 503 (not a cached 401).
    let r = s
        .post("/v1/chat/completions", Some(&never_seen), chat())
        .await;
    assert_eq!(r.status, 503);

    // Past the hard expiry the cached key is no longer served: the same clear 503.
    let left = Duration::from_secs(8).saturating_sub(cached_at.elapsed());
    tokio::time::sleep(left + Duration::from_millis(500)).await;
    let r = s.post("/v1/chat/completions", Some(&key), chat()).await;
    r.assert_openai_error(503, Some("key_unverifiable"));
    let m = s.metrics().await;
    assert!(
        metric(
            &m,
            &[
                "tollgate_control_plane_resolutions_total",
                "result=\"unavailable\""
            ]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            &[
                "tollgate_control_plane_cache_lookups_total",
                "result=\"stale\""
            ]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, &["tollgate_control_plane_feed_reconnects_total"]) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            &[
                "tollgate_authz_decisions_total",
                "decision=\"key_unverifiable\""
            ]
        ) >= 1.0,
        "{m}"
    );
}

/// Rewrites the sidecar's config with another `control_plane` section and waits for the
/// reload to take.
async fn reload_with(s: &Stack, cp_url: &str, secret_env: &str, previous: Option<&str>) {
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    let start = text.find("\ncontrol_plane:\n").unwrap();
    let end = start + 1 + text[start + 1..].find("\nenvoy:\n").unwrap();
    let reloads = metric(
        &s.metrics().await,
        &["tollgate_config_reloads_total", "result=\"ok\""],
    );
    let new = format!(
        "{}{}{}",
        &text[..start],
        control_plane_yaml(cp_url, secret_env, previous, 60, 600).trim_end(),
        &text[end..]
    );
    // A modification time the watcher sees as new.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&s.config_path, new).unwrap();
    eventually(Duration::from_secs(10), "the config reloads", || async {
        metric(
            &s.metrics().await,
            &["tollgate_config_reloads_total", "result=\"ok\""],
        ) > reloads
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signing_secret_rotation_overlaps_until_the_previous_secret_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db: PathBuf = dir.path().join("cp.db");
    let mut cp = start_control_plane(dir.path(), "1", &db, ANY_PORT, SECRET_A, None);
    // The sidecar reads the URL once: the restarted control plane takes the same port.
    let listen = cp.url.trim_start_matches("http://").to_owned();
    let s = sidecar(&cp.url, 60, 600);
    let old_key = cp.create_key("svc-old").await;
    let new_key = cp.create_key("svc-new").await;
    // Resolved and cached under secret A.
    let r = s.post("/v1/chat/completions", Some(&old_key), chat()).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Rotation, step 1: the control plane signs with B and still accepts calls signed with A;
    // the sidecar verifies B and, during the overlap, A.
    cp.proc.kill9();
    let cp = start_control_plane(dir.path(), "2", &db, &listen, SECRET_B, Some(SECRET_A));
    reload_with(&s, &cp.url, "E2E_SECRET_B", Some("E2E_SECRET_A")).await;
    let before = cp.resolves().await;
    // The bundle signed with A still serves (from the cache: no call).
    let r = s.post("/v1/chat/completions", Some(&old_key), chat()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(cp.resolves().await, before, "served from the cache");
    // A new resolution is signed with B and verifies.
    let r = s.post("/v1/chat/completions", Some(&new_key), chat()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(cp.resolves().await, before + 1);

    // Step 2: the previous secret is removed from the sidecar. With the control plane away
    // (killed), the bundle signed with A is refused from the cache; B's serves on.
    let mut cp = cp;
    cp.proc.kill9();
    reload_with(&s, &cp.url, "E2E_SECRET_B", None).await;
    let r = s.post("/v1/chat/completions", Some(&new_key), chat()).await;
    assert_eq!(r.status, 200, "bundle signed with B: {}", r.text);
    let r = s.post("/v1/chat/completions", Some(&old_key), chat()).await;
    r.assert_openai_error(503, Some("key_unverifiable"));
}

/// A tenant's request-rate limit set through the admin API holds for every key of the tenant
/// on the sidecar, whose own file does not know the tenant (the bundle carries it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_rate_limit_from_the_control_plane_holds_for_all_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_control_plane(
        dir.path(),
        "1",
        &dir.path().join("cp.db"),
        ANY_PORT,
        SECRET_A,
        None,
    );
    cp.admin(
        reqwest::Method::POST,
        "/admin/v1/tenants",
        Some(json!({"name": "metered", "requests_per_minute": 3})),
    )
    .await;
    let mut keys = Vec::new();
    for id in ["svc-metered-1", "svc-metered-2"] {
        let v = cp
            .admin(
                reqwest::Method::POST,
                "/admin/v1/keys",
                Some(json!({"id": id, "tenant": "metered", "models": ["*"]})),
            )
            .await;
        keys.push(v["key"].as_str().unwrap().to_owned());
    }
    let s = sidecar(&cp.url, 30, 600);
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = s
            .post("/v1/chat/completions", Some(&keys[i % 2]), chat())
            .await;
        statuses.push(r.status);
        if r.status == 429 {
            r.assert_openai_error(429, Some("rate_limit_exceeded"));
            assert!(r.text.contains("tenant"), "{}", r.text);
        }
    }
    // Three requests a minute for the tenant, whichever of its keys sends them.
    assert_eq!(statuses, vec![200, 200, 200, 429, 429], "{statuses:?}");
    drop(cp);
}
