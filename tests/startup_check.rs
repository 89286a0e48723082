//! The opt-in start-up network check (`startup_check.network`), through the real binary: a
//! provider at a closed local port or with a name that does not resolve stops the start with
//! a message naming the provider, the step and the address; a live one passes; without the
//! option nothing is checked. Only 127.0.0.1 and `.invalid` names are contacted.

// Test helpers outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A config with these providers (`name: base_url`) and the check on or off.
fn config(dir: &Path, providers: &[(&str, String)], check: bool) -> std::path::PathBuf {
    let mut yaml = format!(
        "listen:\n  grpc: \"unix:{}\"\n  admin: \"127.0.0.1:{}\"\nproviders:\n",
        dir.join("tollgate.sock").display(),
        free_port()
    );
    for (name, url) in providers {
        yaml.push_str(&format!(
            "  {name}: {{ kind: openai, base_url: \"{url}\" }}\n"
        ));
    }
    if check {
        yaml.push_str("startup_check:\n  network: true\n  timeout_ms: 2000\n");
    }
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `tollgate serve` on `config`, logging beside it.
fn spawn_serve(config: &Path) -> Proc {
    Proc::spawn(
        "serve",
        Command::new(TOLLGATE)
            .args(["serve", "--config"])
            .arg(config),
        config.parent().unwrap(),
    )
}

/// Runs `serve`, which must stop with an error (within 20 s); its log.
fn start_fails(config: &Path) -> String {
    let mut p = spawn_serve(config);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = p.exit_status() {
            let log = p.log();
            assert!(!status.success(), "{log}");
            assert!(
                log.contains("start-up network check failed (startup_check.network)"),
                "{log}"
            );
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("serve did not exit:\n{}", p.log());
}

/// Starts `serve` and waits until `/readyz` answers 200; the running process.
fn serve_ready(config: &Path) -> Proc {
    let yaml = std::fs::read_to_string(config).unwrap();
    let admin = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let mut p = spawn_serve(config);
    wait_http_ok(&format!("http://{admin}/readyz"), &mut [&mut p]);
    p
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    free_port()
}

#[test]
fn a_provider_at_a_closed_port_stops_the_start_naming_it_the_connect_step_and_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed_port();
    let config = config(
        dir.path(),
        &[
            ("live", format!("http://{}/v1", live.local_addr().unwrap())),
            ("closed", format!("http://127.0.0.1:{port}/v1")),
        ],
        true,
    );
    let log = start_fails(&config);
    assert!(
        log.contains(&format!(
            "provider `closed`: connect 127.0.0.1:{port} failed: Connection refused"
        )),
        "{log}"
    );
    assert!(!log.contains("provider `live`"), "{log}");
    assert!(!log.contains("Tollgate serving"), "{log}");
}

#[test]
fn without_the_option_nothing_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &[("closed", format!("http://127.0.0.1:{}/v1", closed_port()))],
        false,
    );
    let p = serve_ready(&config);
    assert!(!p.log().contains("network check"), "{}", p.log());
}

#[test]
fn a_provider_with_a_live_listener_passes() {
    let dir = tempfile::tempdir().unwrap();
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config(
        dir.path(),
        &[("live", format!("http://{}/v1", live.local_addr().unwrap()))],
        true,
    );
    let p = serve_ready(&config);
    assert!(
        p.log().contains("Start-up network check passed"),
        "{}",
        p.log()
    );
}

#[test]
fn a_name_that_does_not_resolve_stops_the_start_naming_the_dns_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &[("nowhere", "https://nonexistent.invalid/v1".to_owned())],
        true,
    );
    let log = start_fails(&config);
    assert!(
        log.contains("provider `nowhere`: dns nonexistent.invalid:443 failed: "),
        "{log}"
    );
}
