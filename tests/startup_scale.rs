//! Start-up at scale: a config with tens of thousands of file keys. A regular test fails when
//! loading keys grows faster than linearly (5k against 20k keys, as a ratio, not absolute
//! times); an ignored one measures `serve` from start to ready with 50,000 keys, in YAML and
//! in JSON, and prints the figures:
//!
//! ```text
//! cargo test --release --test startup_scale -- --ignored --nocapture
//! ```

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tollgate_core::env::MapEnv;
use tollgate_core::Config;

/// A config with `n` keys spread over 100 tenants and 1000 teams, each with an allow-list
/// and a request rate, as YAML, or as JSON (the same document).
fn config_with_keys(n: usize, json: bool) -> String {
    let head = r#"listen: { grpc: "127.0.0.1:0", admin: "127.0.0.1:0" }
providers:
  mock: { kind: anthropic, base_url: "http://127.0.0.1:9/v1", credential: { env: E2E_ANTHROPIC_KEY } }
models:
  m1: { targets: [{ provider: mock, model: m1 }] }
  m2: { targets: [{ provider: mock, model: m2 }] }
"#;
    let mut out = String::with_capacity(n * 200);
    if json {
        out.push_str(
            r#"{"listen":{"grpc":"127.0.0.1:0","admin":"127.0.0.1:0"},"providers":{"mock":{"kind":"anthropic","base_url":"http://127.0.0.1:9/v1","credential":{"env":"E2E_ANTHROPIC_KEY"}}},"models":{"m1":{"targets":[{"provider":"mock","model":"m1"}]},"m2":{"targets":[{"provider":"mock","model":"m2"}]}},"keys":["#,
        );
    } else {
        out.push_str(head);
        out.push_str("keys:\n");
    }
    for i in 0..n {
        let hash = hash(&format!("tg-scale-{i}"));
        let (tenant, team) = (i % 100, i % 1000);
        if json {
            let sep = if i + 1 == n { "" } else { "," };
            let _ = write!(
                out,
                r#"{{"id":"key-{i}","hash":"{hash}","tenant":"t{tenant}","team":"team{team}","models":["m1","m2"],"requests_per_minute":600}}{sep}"#
            );
        } else {
            let _ = writeln!(
                out,
                "  - {{ id: key-{i}, hash: \"{hash}\", tenant: t{tenant}, team: team{team}, models: [m1, m2], requests_per_minute: 600 }}"
            );
        }
    }
    if json {
        out.push_str("]}");
    }
    out
}

fn env() -> MapEnv {
    MapEnv::from_pairs(provider_env())
}

/// The least time of `runs` loads of `text` (the least is the one the machine disturbed least).
fn load_time(text: &str, runs: usize) -> Duration {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            let config = Config::from_yaml(text, &env()).unwrap();
            let took = started.elapsed();
            assert!(config.keys.len() >= 5_000);
            drop(config);
            took
        })
        .min()
        .unwrap()
}

/// Loading 20k keys takes about 4× loading 5k: a check, a duplicate test or an index that
/// went quadratic would make it 16×. The bound (8×) leaves room for a busy machine.
#[test]
fn key_loading_grows_linearly() {
    for json in [false, true] {
        let small = config_with_keys(5_000, json);
        let large = config_with_keys(20_000, json);
        let t_small = load_time(&small, 2);
        let t_large = load_time(&large, 2);
        let ratio = t_large.as_secs_f64() / t_small.as_secs_f64();
        eprintln!(
            "{} 5k keys: {t_small:?}, 20k keys: {t_large:?}, ratio {ratio:.2}",
            if json { "JSON" } else { "YAML" }
        );
        assert!(
            ratio < 8.0,
            "loading 4× the keys took {ratio:.1}× as long ({t_small:?} → {t_large:?})"
        );
    }
}

/// A JSON config reads the same as its YAML form, and a JSON error names the field path.
#[test]
fn json_configs_read_as_yaml_does() {
    let yaml = Config::from_yaml(&config_with_keys(10, false), &env()).unwrap();
    let json = Config::from_yaml(&config_with_keys(10, true), &env()).unwrap();
    assert_eq!(yaml.keys.len(), json.keys.len());
    for (hash, key) in &yaml.keys {
        let other = &json.keys[hash];
        assert_eq!(
            (&key.id, &key.tenant, &key.team, &key.models),
            (&other.id, &other.tenant, &other.team, &other.models)
        );
        assert_eq!(key.requests_per_minute, other.requests_per_minute);
    }
    let bad = config_with_keys(3, true).replace(r#""requests_per_minute":600"#, r#""rpm":1"#);
    let errs = Config::from_yaml(&bad, &env()).unwrap_err();
    assert!(errs[0].path.starts_with("keys[0]"), "{errs:?}");
    assert!(errs[0].message.contains("unknown field `rpm`"), "{errs:?}");
    // YAML flow style that is not JSON still reads as YAML.
    let flow = "{listen: {grpc: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}}";
    assert!(Config::from_yaml(flow, &env()).is_ok());
}

/// Spawns `serve` on `config` and returns the time from spawn to its ready file, and the CPU
/// time it used by then (user + system, all threads).
fn serve_until_ready(config: &Path, dir: &Path) -> (Duration, Duration) {
    let ready = dir.join("serve.ready");
    let _ = std::fs::remove_file(&ready);
    let started = Instant::now();
    let mut serve = Proc::spawn(
        "serve",
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .envs(provider_env())
            .env("TOLLGATE_LOG", "warn"),
        dir,
    );
    while !ready.exists() {
        assert!(serve.alive(), "serve died: {}", serve.log());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "serve not ready"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = started.elapsed();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", serve.pid())).unwrap();
    // Fields after the `(comm)`: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let tick_hz = 100; // USER_HZ on Linux
    (wall, Duration::from_millis(ticks * 1000 / tick_hz))
}

/// `serve` from start to ready with 50,000 file keys (YAML and JSON) and with none, best of
/// three each: prints wall and CPU times. The target is ready within 1 s.
#[test]
#[ignore = "a measurement: run it by hand, in release mode"]
fn serve_ready_with_50k_keys() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("no keys", config_with_keys(0, false)),
        ("50k keys, YAML", config_with_keys(50_000, false)),
        ("50k keys, JSON", config_with_keys(50_000, true)),
    ] {
        let path = dir.path().join("tollgate.yaml");
        std::fs::write(&path, &text).unwrap();
        let runs: Vec<_> = (0..3)
            .map(|_| serve_until_ready(&path, dir.path()))
            .collect();
        let wall = runs.iter().map(|r| r.0).min().unwrap();
        let cpu = runs.iter().map(|r| r.1).min().unwrap();
        eprintln!(
            "{name}: ready in {wall:?} (CPU {cpu:?}), config {} KB",
            text.len() / 1024
        );
    }
}
