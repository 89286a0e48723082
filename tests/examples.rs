//! Every example config in the repository validates (with every secret it names present).

#![allow(clippy::unwrap_used, clippy::panic)]

use tollgate_core::env::EnvSource;
use tollgate_core::Config;

/// An environment where every variable is set.
struct AnyEnv;

impl EnvSource for AnyEnv {
    fn var(&self, _name: &str) -> Option<String> {
        Some("test-secret".to_owned())
    }
}

#[test]
fn every_example_config_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            seen += 1;
            if let Err(errs) = Config::load(&path, &AnyEnv) {
                let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
                panic!("{}: {}", path.display(), text.join("; "));
            }
        }
    }
    assert!(seen >= 2);
}

#[test]
fn the_config_tollgate_up_writes_validates() {
    let dir = tempfile::tempdir().unwrap();
    for openai in [false, true] {
        let yaml = tollgate::up::local_config(
            dir.path(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            openai,
        );
        let config = Config::from_yaml(&yaml, &AnyEnv).unwrap_or_else(|errs| {
            let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
            panic!("{}", text.join("; "))
        });
        // Both chat APIs have a model to try offline.
        assert!(config.models.contains_key("mock-model"));
        assert!(config.models.contains_key("mock-claude"));
    }
}
