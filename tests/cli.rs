//! The small commands: `tollgate keys new` mints a key that the config it prints accepts, and
//! `tollgate check` reports every error with its field path.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;
use tollgate_core::env::MapEnv;
use tollgate_core::{keys, Config};

const BASE: &str = r#"providers:
  mock: { kind: openai, base_url: "http://127.0.0.1:1/v1" }
models:
  mock-model: { targets: [{ provider: mock, model: m }] }
keys:
"#;

#[test]
fn keys_new_prints_the_key_once_and_an_entry_storing_only_its_hash() {
    let out = Command::new(TOLLGATE)
        .args([
            "keys", "new", "--id", "ci-bot", "--tenant", "acme", "--team", "ml",
        ])
        .args([
            "--models",
            "mock-model",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap().trim().to_owned();
    assert!(key.starts_with("tg-") && key.len() > 40, "{text}");
    assert_eq!(
        text.matches(&key).count(),
        1,
        "the key is printed once:\n{text}"
    );
    assert!(text.contains(&hash(&key)), "{text}");

    let entry: String = text
        .lines()
        .skip_while(|l| !l.starts_with("- id:"))
        .map(|l| format!("  {l}\n"))
        .collect();
    let config = Config::from_yaml(&format!("{BASE}{entry}"), &MapEnv::default())
        .unwrap_or_else(|e| panic!("{e:?}\n{entry}"));
    let bundle = config.key(&keys::hash_key(&key)).expect("the key resolves");
    assert_eq!(bundle.id, "ci-bot");
    assert_eq!(bundle.tenant.as_deref(), Some("acme"));
    assert_eq!(bundle.team.as_deref(), Some("ml"));
    assert!(bundle.models.allows("mock-model"));
    assert!(!bundle.models.allows("other"));
    assert!(bundle.expires_at.is_some());
}

#[test]
fn keys_new_refuses_a_bad_expiry() {
    let out = Command::new(TOLLGATE)
        .args(["keys", "new", "--id", "x", "--expires-at", "next tuesday"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    assert!(out.stdout.is_empty(), "no key is minted on error");
}

#[test]
fn check_lists_every_error_with_its_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"listen: { grpc: "nonsense", admin: "127.0.0.1:9464" }
providers:
  az: { kind: azure_openai, base_url: "ftp://x" }
models:
  m: { targets: [{ provider: nope, model: x, weight: 0 }] }
keys:
  - { id: k, hash: "sha256:1234", models: [m, ghost] }
"#,
    )
    .unwrap();
    let out = Command::new(TOLLGATE)
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "listen.grpc:",
        "providers.az.base_url:",
        "providers.az.api_version: is required for `azure_openai`",
        "models.m.targets[0].weight: must be at least 1",
        "models.m.targets[0].provider: unknown provider `nope`",
        "keys[0].hash:",
        "keys[0].models[1]: unknown model `ghost`",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
}
