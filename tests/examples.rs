//! Every example in the repo is checked: each config in `examples/` validates, each renders an
//! Envoy bootstrap that Envoy 1.40 itself accepts (`envoy --mode validate`), and
//! `envoy/sidecar.yaml` is exactly what `tollgate envoy-bootstrap` renders for the production
//! example, so the committed file cannot drift from the code.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate_core::env::EnvSource;
use tollgate_core::Config;

/// Every variable is set (to a placeholder): examples name secrets they cannot ship.
struct AnyEnv;

impl EnvSource for AnyEnv {
    fn var(&self, _name: &str) -> Option<String> {
        Some("placeholder-secret".to_owned())
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The environment variables a config's providers read.
fn credential_vars(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("env: ")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn render(config: &Path, listen: &str, admin: &str) -> String {
    let mut cmd = Command::new(common::TOLLGATE);
    cmd.args(["envoy-bootstrap", "--config"])
        .arg(config)
        .args(["--listen", listen, "--admin", admin]);
    for var in credential_vars(config) {
        cmd.env(var, "placeholder-secret");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "envoy-bootstrap {} failed: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn envoy_accepts(bootstrap: &str, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, bootstrap).unwrap();
    let out = Command::new(common::envoy_bin())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Envoy rejects the bootstrap for {name}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn there_are_examples() {
    assert!(examples().len() >= 2, "{:?}", examples());
}

#[test]
fn every_example_config_is_valid() {
    for path in examples() {
        if let Err(errs) = Config::load(&path, &AnyEnv) {
            panic!("{} is invalid: {errs:?}", path.display());
        }
    }
}

#[test]
fn tollgate_check_accepts_every_example_and_names_the_field_of_a_bad_one() {
    for path in examples() {
        let mut cmd = Command::new(common::TOLLGATE);
        cmd.arg("check").arg(&path);
        for var in credential_vars(&path) {
            cmd.env(var, "placeholder-secret");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "tollgate check {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without the secrets' variables, `check` fails and names each missing one by field path.
    let prod = root().join("examples/production.yaml");
    let out = Command::new(common::TOLLGATE)
        .arg("check")
        .arg(&prod)
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "providers.openai.credential.env: environment variable `OPENAI_API_KEY` is not set"
        ),
        "{err}"
    );
}

#[test]
fn every_example_renders_a_bootstrap_envoy_accepts() {
    for path in examples() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        envoy_accepts(&render(&path, "127.0.0.1:8080", "127.0.0.1:9901"), &name);
    }
}

#[test]
fn the_plain_baseline_bootstrap_is_accepted_by_envoy() {
    let out = Command::new(common::TOLLGATE)
        .args(["envoy-bootstrap", "--plain-upstream", "127.0.0.1:8081"])
        .output()
        .unwrap();
    assert!(out.status.success());
    envoy_accepts(&String::from_utf8(out.stdout).unwrap(), "plain");
}

#[test]
fn the_sidecar_example_is_what_envoy_bootstrap_renders_and_envoy_accepts_it() {
    let rendered = render(
        &root().join("examples/production.yaml"),
        "0.0.0.0:8080",
        "127.0.0.1:9901",
    );
    let committed = std::fs::read_to_string(root().join("envoy/sidecar.yaml")).unwrap();
    let body = committed
        .split_once(SIDECAR_HEADER_END)
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("envoy/sidecar.yaml lacks its header"));
    assert_eq!(
        body, rendered,
        "envoy/sidecar.yaml is stale: regenerate it with the command in its header"
    );
    assert!(!committed.contains("placeholder-secret"));
    envoy_accepts(&committed, "sidecar");
}

const SIDECAR_HEADER_END: &str = "# ---- rendered below ----\n";

#[test]
fn the_config_tollgate_up_writes_validates() {
    let dir = tempfile::tempdir().unwrap();
    for openai in [false, true] {
        let yaml = tollgate::up::local_config(
            dir.path(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            openai,
        );
        let config = Config::from_yaml(&yaml, &AnyEnv)
            .unwrap_or_else(|errs| panic!("the config `up` writes is invalid: {errs:?}"));
        // Both chat APIs have a model to try offline.
        assert!(config.models.contains_key("mock-model"));
        assert!(config.models.contains_key("mock-claude"));
        assert!(config.logging.is_some(), "up logs every request");
    }
}
