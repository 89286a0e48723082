//! `tollgate keys create|list|get|rotate|revoke --control-plane URL` against a real
//! `tollgate control-plane` process (SQLite), checked through the sidecar's own endpoint,
//! `resolve-key`; clear errors for a missing or wrong token, an unknown key and an unreachable
//! control plane; `tollgate keys new` keeps working offline.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const ADMIN_TOKEN: &str = "cli-admin-token-000000001";
const SECRET: &str = "cli-test-signing-secret-0000000000000001";

fn tollgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.env_remove("TOLLGATE_CONTROL_PLANE")
        .env_remove("TOLLGATE_ADMIN_TOKEN");
    c
}

fn keys(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = tollgate();
    c.arg("keys").args(args).arg("--control-plane").arg(url);
    if let Some(t) = token {
        c.env("TOLLGATE_ADMIN_TOKEN", t);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn failure(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// What `resolve-key` answers for a raw key, signed as a sidecar signs.
fn resolve(addr: &str, raw: &str) -> u16 {
    let body = serde_json::json!({ "hash": hash(raw) }).to_string();
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let sig = tollgate_controlplane::sign::sign_request(
        SECRET.as_bytes(),
        t,
        "POST",
        "/v1/resolve-key",
        body.as_bytes(),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/resolve-key"))
            .header("x-tollgate-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

fn start(dir: &Path) -> (Proc, String) {
    let config = dir.join("cp.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nstorage: {{sqlite: {{path: {:?}}}}}\nadmin: {{tokens_env: CP_TOKENS}}\nsigning: {{secret_env: CP_SECRET}}\n",
            dir.join("cp.db").display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = tollgate();
    cmd.arg("control-plane")
        .arg("--config")
        .arg(&config)
        .env("CP_TOKENS", ADMIN_TOKEN)
        .env("CP_SECRET", SECRET);
    let (p, ready) = spawn_ready("control-plane", &mut cmd, dir, &mut []);
    let addr = ready_addr(&ready, "listen").to_string();
    (p, addr)
}

#[test]
fn the_cli_creates_rotates_and_revokes_keys_on_a_real_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cp, addr) = start(dir.path());
    let url = format!("http://{addr}");

    let out = stdout(&keys(
        &url,
        Some(ADMIN_TOKEN),
        &[
            "create",
            "--id",
            "svc-a",
            "--models",
            "gpt-4o,claude",
            "--tenant",
            "acme",
        ],
    ));
    let raw = out.lines().next().unwrap().to_owned();
    assert!(raw.starts_with("tg-"), "{out}");
    assert!(out.contains(&hash(&raw)), "{out}");
    assert_eq!(resolve(&addr, &raw), 200);

    let list = stdout(&keys(&url, Some(ADMIN_TOKEN), &["list"]));
    let line = list
        .lines()
        .find(|l| l.starts_with("svc-a"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("active") && line.contains("acme") && line.contains("gpt-4o,claude"),
        "{line}"
    );
    assert!(!list.contains(&raw), "the secret is listed");

    let got: serde_json::Value =
        serde_json::from_str(&stdout(&keys(&url, Some(ADMIN_TOKEN), &["get", "svc-a"]))).unwrap();
    assert_eq!(got["hash"], hash(&raw));

    // Rotate with a grace: both secrets resolve.
    let out = stdout(&keys(
        &url,
        Some(ADMIN_TOKEN),
        &["rotate", "svc-a", "--grace-secs", "600"],
    ));
    let new_raw = out.lines().next().unwrap().to_owned();
    assert!(new_raw.starts_with("tg-") && new_raw != raw, "{out}");
    assert!(out.contains("keeps working until"), "{out}");
    assert_eq!(resolve(&addr, &raw), 200);
    assert_eq!(resolve(&addr, &new_raw), 200);

    // Revoke: neither resolves any more.
    let out = stdout(&keys(&url, Some(ADMIN_TOKEN), &["revoke", "svc-a"]));
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(resolve(&addr, &raw), 404);
    assert_eq!(resolve(&addr, &new_raw), 404);
    let list = stdout(&keys(&url, Some(ADMIN_TOKEN), &["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("svc-a") && l.contains("revoked")),
        "{list}"
    );

    // Clear errors.
    let err = failure(&keys(&url, None, &["list"]));
    assert!(err.contains("TOLLGATE_ADMIN_TOKEN"), "{err}");
    let err = failure(&keys(&url, Some("wrong-token-000000000"), &["list"]));
    assert!(err.contains("401") && err.contains("admin token"), "{err}");
    let err = failure(&keys(&url, Some(ADMIN_TOKEN), &["revoke", "nope"]));
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    let err = failure(&keys(
        &url,
        Some(ADMIN_TOKEN),
        &["create", "--id", "bad id"],
    ));
    assert!(err.contains("422") && err.contains("id:"), "{err}");
    let err = failure(&keys(&url, Some(ADMIN_TOKEN), &["revoke", "svc-a"]));
    assert!(
        err.contains("409") && err.contains("already revoked"),
        "{err}"
    );
    let err = failure(&keys(
        &format!("http://{}", closed_port_addr()),
        Some(ADMIN_TOKEN),
        &["list"],
    ));
    assert!(err.contains("cannot reach the control plane"), "{err}");

    // The offline `keys new` is unchanged.
    let out = tollgate()
        .args(["keys", "new", "--id", "offline"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().starts_with("tg-"));
    assert!(text.contains("hash: \"sha256:"), "{text}");

    assert!(cp.alive(), "{}", cp.log());
    assert!(
        !cp.log().contains(&raw),
        "the control plane logged a secret"
    );
}

fn closed_port_addr() -> String {
    format!("127.0.0.1:{}", closed_port())
}
