//! End to end through real Envoy: respecting the provider. Consecutive failures (a provider's
//! 5xx, or no answer at all: a refused connection) eject a target and traffic moves to the
//! model's other target, growing ejections and the return after the ejection time; Gemini's
//! `google.rpc.RetryInfo` in a 429's body taking its target out of rotation that long; a
//! cool-down shared through a real Redis between two `serve` replicas; and a replica catching
//! up on the deadlines stored before it subscribed, and subscribing again after Redis
//! restarts. Times are kept short through each model's `ejection` config.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Providers on the mock (one per test, so the per-provider counters do not mix) and one
/// model per case.
fn respect_models(yaml: String) -> String {
    let mock = yaml
        .split("base_url: \"http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .to_owned();
    let provider =
        |name: &str| format!("  {name}:\n    kind: openai\n    base_url: \"http://{mock}/v1\"\n");
    let providers: String = ["fast", "flaky", "flaky-weighted", "limited"]
        .iter()
        .map(|p| provider(p))
        .collect();
    yaml.replacen(
        "\nmodels:\n",
        &format!(
            r#"
{providers}models:
  ejecting:
    strategy: priority
    ejection: {{ consecutive_failures: 3, base_ms: 1500, max_ms: 3000 }}
    targets: [{{ provider: flaky, model: mock-error-500 }}, {{ provider: fast, model: mock-model }}]
  weighted-ejecting:
    ejection: {{ consecutive_failures: 2, base_ms: 60000 }}
    targets: [{{ provider: flaky-weighted, model: mock-error-503 }}, {{ provider: fast, model: mock-model }}]
  refusing:
    strategy: priority
    targets:
      - {{ provider: down, model: whatever, ejection: {{ consecutive_failures: 2, base_ms: 60000 }} }}
      - {{ provider: fast, model: mock-model }}
  gemini-cooling:
    strategy: priority
    targets: [{{ provider: gemini, model: mock-error-429 }}, {{ provider: fast, model: mock-model }}]
  shared:
    strategy: priority
    ejection: {{ consecutive_failures: 1, base_ms: 4000 }}
    targets: [{{ provider: limited, model: mock-error-429 }}, {{ provider: fast, model: mock-model }}]
"#
        ),
        1,
    )
}

fn options() -> StackOptions {
    StackOptions {
        patch_config: Some(respect_models),
        ..Default::default()
    }
}

async fn chat(stack: &Stack, model: &str) -> Reply {
    stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": model, "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .await
}

/// The provider that answered (the `x-tollgate-provider` header), with the status.
fn answered(r: &Reply) -> (u16, String) {
    let p = r
        .header("x-tollgate-provider")
        .unwrap_or_else(|| panic!("no x-tollgate-provider: {} {:?}", r.status, r.headers));
    (r.status, p.to_owned())
}

fn served_by_fast(r: &Reply) {
    assert_eq!(answered(r), (200, "fast".to_owned()), "{}", r.text);
}

/// The value of one sample in a scrape (`None` when absent).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

/// Polls the scrape until `series` reads `want`, for at most `within`; returns how long it took.
async fn wait_for_sample(stack: &Stack, series: &str, want: f64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let scrape = stack.metrics().await;
        if sample(&scrape, series) == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{series} is not {want} after {within:?}:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn consecutive_5xx_eject_a_target_for_a_growing_time_and_it_returns() {
    let stack = Stack::start(options());
    // Two failures: still in rotation (the client sees each 500).
    for _ in 0..2 {
        assert_eq!(answered(&chat(&stack, "ejecting").await).1, "flaky");
    }
    // The third in a row ejects it for base_ms (1.5 s): the next target serves meanwhile.
    let r = chat(&stack, "ejecting").await;
    assert_eq!(answered(&r), (500, "flaky".to_owned()), "{}", r.text);
    let ejected = Instant::now();
    let mut served = 0;
    while ejected.elapsed() < Duration::from_millis(1_100) {
        served_by_fast(&chat(&stack, "ejecting").await);
        served += 1;
    }
    assert!(served > 0);
    let scrape = stack.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            "tollgate_target_ejections_total{provider=\"flaky\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        sample(&scrape, "tollgate_targets_cooling{model=\"ejecting\"}"),
        Some(1.0),
        "{scrape}"
    );
    // Back after the ejection time (and still failing).
    tokio::time::sleep(Duration::from_millis(1_700).saturating_sub(ejected.elapsed())).await;
    for _ in 0..3 {
        assert_eq!(
            answered(&chat(&stack, "ejecting").await),
            (500, "flaky".to_owned())
        );
    }
    // The second ejection in a row lasts twice as long: still out after 1.7 s.
    let again = Instant::now();
    served_by_fast(&chat(&stack, "ejecting").await);
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    served_by_fast(&chat(&stack, "ejecting").await);
    assert!(
        again.elapsed() < Duration::from_millis(2_900),
        "too slow to tell"
    );
    let scrape = stack.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            "tollgate_target_ejections_total{provider=\"flaky\"}"
        ),
        Some(2.0),
        "{scrape}"
    );
}

#[tokio::test]
async fn a_weighted_model_stops_sending_to_an_ejected_target_and_refused_connections_count() {
    let stack = Stack::start(options());
    // Weighted 1:1: the failing target gets picked until its second failure ejects it, then
    // only the healthy one serves (for the minute it is out).
    let mut seen: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for _ in 0..30 {
        *seen
            .entry(answered(&chat(&stack, "weighted-ejecting").await))
            .or_default() += 1;
    }
    assert_eq!(
        seen.get(&(503, "flaky-weighted".to_owned())),
        Some(&2),
        "{seen:?}"
    );
    assert_eq!(seen.get(&(200, "fast".to_owned())), Some(&28), "{seen:?}");

    // A provider that refuses connections never answers: Envoy's own 503 counts as a failure
    // of its target too, and two in a row eject it (its `ejection` is set on the target).
    for _ in 0..2 {
        let r = chat(&stack, "refusing").await;
        assert_eq!(answered(&r), (503, "down".to_owned()), "{}", r.text);
    }
    for _ in 0..5 {
        served_by_fast(&chat(&stack, "refusing").await);
    }
    let scrape = stack.metrics().await;
    for provider in ["flaky-weighted", "down"] {
        assert_eq!(
            sample(
                &scrape,
                &format!("tollgate_target_ejections_total{{provider=\"{provider}\"}}")
            ),
            Some(1.0),
            "{scrape}"
        );
    }
}

#[tokio::test]
async fn gemini_retry_info_takes_the_target_out_of_rotation_that_long() {
    let stack = Stack::start(options());
    // Gemini's 429 carries no Retry-After, only `RetryInfo` (1.5 s) in its body; the OpenAI
    // client gets it in its own dialect.
    let first = chat(&stack, "gemini-cooling").await;
    assert_eq!(
        answered(&first),
        (429, "gemini".to_owned()),
        "{}",
        first.text
    );
    first.assert_openai_error(429, None);
    let cooled = Instant::now();
    let mut served = 0;
    while cooled.elapsed() < Duration::from_millis(1_100) {
        served_by_fast(&chat(&stack, "gemini-cooling").await);
        served += 1;
    }
    assert!(served > 0);
    // Back after 1.5 s.
    tokio::time::sleep(Duration::from_millis(1_800).saturating_sub(cooled.elapsed())).await;
    let again = chat(&stack, "gemini-cooling").await;
    assert_eq!(
        answered(&again),
        (429, "gemini".to_owned()),
        "{}",
        again.text
    );
    // One cool-down per 429: from the body (there is no header to count twice).
    let scrape = stack.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            "tollgate_target_cooldowns_total{provider=\"gemini\"}"
        ),
        Some(2.0),
        "{scrape}"
    );
}

/// A real `redis-server` listening on a Unix socket only (`--port 0`: no port to pick), data
/// in a temporary directory, killed on drop.
struct Redis {
    url: String,
    socket: std::path::PathBuf,
    proc: Proc,
    dir: tempfile::TempDir,
}

fn start_redis() -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let proc = spawn_redis(dir.path(), &socket);
    Redis {
        url: format!("redis+unix://{}?db=0", socket.display()),
        socket,
        proc,
        dir,
    }
}

impl Redis {
    /// Kills the server and starts a fresh one (no data) on the same socket.
    fn restart(&mut self) {
        self.proc.kill9();
        let _ = std::fs::remove_file(&self.socket);
        self.proc = spawn_redis(self.dir.path(), &self.socket);
    }

    /// Runs `redis-cli` with `args`; its output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn spawn_redis(dir: &std::path::Path, socket: &std::path::Path) -> Proc {
    let mut proc = Proc::spawn(
        "redis",
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir),
        dir,
    );
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(proc.alive(), "redis-server exited:\n{}", proc.log());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "redis-server did not listen:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_replica_takes_the_target_out_on_another_through_redis() {
    let redis = start_redis();
    let with_redis = || StackOptions {
        extra_yaml: format!(
            "budgets:\n  redis: {{ url: \"{}\", timeout_ms: 1000 }}\n",
            redis.url
        ),
        ..options()
    };
    // Two replicas, each with its own Envoy and mock, one Redis.
    let a = Stack::start(with_redis());
    let b = Stack::start(with_redis());
    // Both subscribed before the 429 (the catch-up on connect would find it anyway).
    for s in [&a, &b] {
        wait_for_sample(
            s,
            "tollgate_targets_cooling{model=\"shared\"}",
            0.0,
            Duration::from_secs(10),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A 429 on replica A: out of rotation there (one failure ejects this target for 4 s).
    let r = chat(&a, "shared").await;
    assert_eq!(answered(&r), (429, "limited".to_owned()), "{}", r.text);
    let started = Instant::now();
    // Replica B, which never saw the 429, takes it out within a second.
    let took = wait_for_sample(
        &b,
        "tollgate_targets_cooling{model=\"shared\"}",
        1.0,
        Duration::from_secs(1),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {took:?}");
    served_by_fast(&chat(&b, "shared").await);
    served_by_fast(&chat(&a, "shared").await);
    // B neither saw a 429 nor ejected anything itself: what it applied came from A.
    let scrape = b.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            "tollgate_target_ejections_total{provider=\"limited\"}"
        ),
        None,
        "{scrape}"
    );
    let scrape = a.metrics().await;
    assert_eq!(
        sample(
            &scrape,
            "tollgate_target_ejections_total{provider=\"limited\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    // The deadline is in Redis, under the documented key, with its expiry.
    let pttl: i64 = redis
        .cli(&["PTTL", "{tollgate}:cool:limited:mock-error-429"])
        .parse()
        .unwrap();
    assert!((1..=4_000).contains(&pttl), "PTTL {pttl}");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_catches_up_on_stored_deadlines_and_resubscribes_after_redis_comes_back() {
    let mut redis = start_redis();
    // Another replica's deadline, stored before this one starts.
    let until = unix_ms() + 20_000;
    redis.cli(&[
        "SET",
        "{tollgate}:cool:limited:mock-error-429",
        &until.to_string(),
        "PX",
        "20000",
    ]);
    let stack = Stack::start(StackOptions {
        extra_yaml: format!(
            "budgets:\n  redis: {{ url: \"{}\", timeout_ms: 1000 }}\n",
            redis.url
        ),
        ..options()
    });
    // Read when it subscribed: the target is out before it ever failed here.
    wait_for_sample(
        &stack,
        "tollgate_targets_cooling{model=\"shared\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    served_by_fast(&chat(&stack, "shared").await);
    // Redis restarts empty: the subscriber reconnects (backoff at most 5 s) and applies what
    // is published after. The gateway serves meanwhile.
    redis.restart();
    served_by_fast(&chat(&stack, "shared").await);
    let message = format!(
        r#"{{"provider":"flaky","model":"mock-error-500","until_ms":{}}}"#,
        unix_ms() + 30_000
    );
    let started = Instant::now();
    loop {
        // Published until someone hears it (the subscriber may not be back yet).
        let listeners: u32 = redis
            .cli(&["PUBLISH", "{tollgate}:cool", &message])
            .parse()
            .unwrap();
        if listeners > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the subscriber did not come back:\n{}",
            stack.serve_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_sample(
        &stack,
        "tollgate_targets_cooling{model=\"ejecting\"}",
        1.0,
        Duration::from_secs(2),
    )
    .await;
    // `flaky` never failed here: out only because another replica said so.
    served_by_fast(&chat(&stack, "ejecting").await);
}
