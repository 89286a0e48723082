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

/// `tollgate check --allow-missing-secrets` (CI, where provider keys do not exist): every
/// secret that is not there is a warning naming its field path, everything else is still an
/// error; without the flag a missing secret fails the check.
#[test]
fn check_can_let_missing_secrets_pass_as_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    let missing_file = dir.path().join("no-such-service-account.json");
    std::fs::write(
        &good,
        format!(
            r#"providers:
  oa: {{ kind: openai, base_url: "https://api.openai.com/v1", credential: {{ env: TOLLGATE_TEST_SURELY_UNSET_KEY }} }}
  vx: {{ kind: vertex, project: p, location: us-east5, credential: {{ file: "{}" }} }}
  br:
    kind: bedrock
    aws:
      region: us-east-1
      access_key_id: {{ env: TOLLGATE_TEST_SURELY_UNSET_AKID }}
      secret_access_key: {{ env: TOLLGATE_TEST_SURELY_UNSET_SAK }}
models:
  m: {{ targets: [{{ provider: oa, model: gpt-4o }}] }}
  c: {{ targets: [{{ provider: vx, model: claude-sonnet-4 }}] }}
  b: {{ targets: [{{ provider: br, model: anthropic.claude-3-haiku }}] }}
keys: []
"#,
            missing_file.display()
        ),
    )
    .unwrap();
    let strict = Command::new(TOLLGATE)
        .arg("check")
        .arg(&good)
        .env_remove("TOLLGATE_TEST_SURELY_UNSET_KEY")
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1), "strict by default");
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(
        err.contains("providers.oa.credential.env: environment variable `TOLLGATE_TEST_SURELY_UNSET_KEY` is not set"),
        "{err}"
    );

    let lenient = Command::new(TOLLGATE)
        .args(["check", "--allow-missing-secrets"])
        .arg(&good)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&lenient.stderr);
    let out = String::from_utf8_lossy(&lenient.stdout);
    assert_eq!(lenient.status.code(), Some(0), "{err}\n{out}");
    for want in [
        "warning: providers.oa.credential.env: environment variable `TOLLGATE_TEST_SURELY_UNSET_KEY` is not set",
        "warning: providers.vx.credential.file: cannot read",
        "warning: providers.br.aws.access_key_id.env:",
        "warning: providers.br.aws.secret_access_key.env:",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    assert!(
        out.contains("ok (3 providers, 3 models, 0 keys, 4 secret(s) missing)"),
        "{out}"
    );

    // Everything else is still validated: a real error fails the check, the warnings stay.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good).unwrap().replace(
            "provider: oa, model: gpt-4o",
            "provider: ghost, model: gpt-4o",
        ),
    )
    .unwrap();
    let out = Command::new(TOLLGATE)
        .args(["check", "--allow-missing-secrets"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("models.m.targets[0].provider: unknown provider `ghost`"),
        "{err}"
    );
    assert!(
        err.contains("warning: providers.oa.credential.env:"),
        "{err}"
    );

    // A bad command line is exit status 2 (clap).
    let usage = Command::new(TOLLGATE)
        .args(["check", "--no-such-flag"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
