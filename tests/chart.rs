//! The Helm chart (`charts/tollgate`): runs its test suite, `charts/tollgate/tests/test_chart.py`,
//! with this build's `tollgate` binary and the pinned Envoy. It lints and renders the chart with
//! Helm's own engine in every mode, validates every object against the vendored Kubernetes and
//! CRD schemas, and checks with Envoy that the bootstrap, the ready listener and the filters the
//! Istio and Envoy Gateway objects carry are accepted and match the bootstrap's.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

#[test]
fn chart_lints_renders_and_validates_in_every_mode() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let envoy = tollgate::bootstrap::find_envoy(None).expect(
        "Envoy is needed for the chart's tests: run the README's test command, which installs it",
    );
    let out = Command::new("python3")
        .arg(root.join("charts/tollgate/tests/test_chart.py"))
        .env("TOLLGATE_BIN", env!("CARGO_BIN_EXE_tollgate"))
        .env("ENVOY_BIN", &envoy)
        .output()
        .expect("python3 is needed for the chart's tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the chart's tests failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
}
