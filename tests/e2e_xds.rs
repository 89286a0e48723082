//! Provider clusters by xDS, through real Envoy: `tollgate serve` with `xds.enabled` answers
//! Envoy's ADS, `tollgate envoy-bootstrap --xds` renders a bootstrap that takes the provider
//! clusters from it, and a provider added to the config file reaches the same running Envoy
//! (same PID) with real traffic. A cluster Envoy cannot build is NACKed, logged with Envoy's
//! reason, and the clusters it had keep serving. The xDS clusters are the ones the static
//! bootstrap writes in, as Envoy itself reports them.

// Test support: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A config with `providers` (YAML lines under `providers:`) and `models`, the all-models
/// key, and ADS on.
fn config(grpc: &str, admin: &str, providers: &str, models: &str, xds_extra: &str) -> String {
    format!(
        "listen:\n  grpc: \"{grpc}\"\n  admin: \"{admin}\"\nproviders:\n{providers}models:\n{models}keys:\n  - {{ id: all, hash: \"{}\", models: [\"*\"] }}\nxds:\n  enabled: true\n{xds_extra}",
        hash(KEY_ALL)
    )
}

fn spawn_mock(name: &str, dir: &Path) -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let p = Proc::spawn(
        name,
        Command::new(TOLLGATE).args(["mock", "--listen", &addr]),
        dir,
    );
    (p, addr)
}

fn spawn_serve(config: &Path, dir: &Path) -> Proc {
    Proc::spawn(
        "serve",
        Command::new(TOLLGATE)
            .args(["serve", "--config"])
            .arg(config)
            .env("TOLLGATE_LOG", "info"),
        dir,
    )
}

/// `envoy-bootstrap` for `config` with `args`, listener and admin on ports Envoy picks.
fn bootstrap(config: &Path, args: &[&str]) -> String {
    let out = Command::new(TOLLGATE)
        .args(["envoy-bootstrap", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy-bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Real Envoy on `bootstrap`; returns it with its admin address (written by Envoy itself).
fn spawn_envoy(name: &str, bootstrap: &str, dir: &Path) -> (Proc, String) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, bootstrap).unwrap();
    let admin_file = dir.join(format!("{name}.admin"));
    let mut p = common::spawn_envoy_with(
        name,
        &path,
        &admin_file,
        dir,
        &["--component-log-level", "upstream:info,config:info"],
    );
    let start = Instant::now();
    loop {
        assert!(p.alive(), "{name} exited:\n{}", p.log());
        if let Ok(a) = std::fs::read_to_string(&admin_file) {
            if !a.trim().is_empty() {
                return (p, format!("http://{}", a.trim()));
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} wrote no admin address:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// The address of Envoy's `llm` listener (bound to a port of Envoy's choice).
async fn listener(http: &reqwest::Client, admin: &str) -> String {
    let v = get_json(http, &format!("{admin}/listeners?format=json")).await;
    let sock = &v["listener_statuses"][0]["local_address"]["socket_address"];
    format!(
        "http://{}:{}",
        sock["address"].as_str().unwrap(),
        sock["port_value"]
    )
}

/// The clusters of one kind in Envoy's config dump (`static_clusters`,
/// `dynamic_active_clusters`, ...): name → (the `cluster` object, `version_info`).
async fn dumped_clusters(
    http: &reqwest::Client,
    admin: &str,
    kind: &str,
) -> std::collections::BTreeMap<String, (Value, String)> {
    let v = get_json(http, &format!("{admin}/config_dump?resource={kind}")).await;
    v["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let cluster = c["cluster"].clone();
            let name = cluster["name"].as_str().unwrap().to_owned();
            let version = c["version_info"].as_str().unwrap_or("").to_owned();
            (name, (cluster, version))
        })
        .collect()
}

async fn chat(http: &reqwest::Client, base: &str, model: &str) -> (u16, String) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY_ALL)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// The chat requests a mock received.
async fn posted(http: &reqwest::Client, mock: &str) -> usize {
    let v = get_json(http, &format!("http://{mock}/__mock/requests")).await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "POST")
        .count()
}

/// One sample of a Prometheus text exposition (`name{labels}` exactly), 0 when absent.
async fn metric(http: &reqwest::Client, admin: &str, sample: &str) -> f64 {
    get_text(http, &format!("http://{admin}/metrics"))
        .await
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` every 100 ms for up to 30 s (a reload is seen within 2 s, the push follows).
async fn wait_for<F, Fut>(what: &str, procs: &Procs, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs: Vec<String> = procs
        .0
        .iter()
        .map(|p| format!("===== {} log =====\n{}", p.name, p.log()))
        .collect();
    panic!("{what} did not happen within 30 s\n{}", logs.join("\n"));
}

/// Rewrites the config file so that `serve`'s watcher sees a new modification time.
fn rewrite(path: &Path, yaml: &str) {
    let before = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    if std::fs::metadata(path).and_then(|m| m.modified()).ok() == before {
        // A coarse file-system clock: make the change visible.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(path, yaml).unwrap();
    }
}

/// `text` without terminal colour codes (`serve` colours its log fields).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ ... m`.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.0 {
                eprintln!("===== {} log =====\n{}", p.name, p.log());
            }
        }
    }
}

/// The second provider's cluster.
const SECOND: &str = "outbound|80||second.mock";

#[tokio::test]
async fn a_provider_added_to_the_config_reaches_the_running_envoy_through_xds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let http = reqwest::Client::new();
    let (mut mock_a, a) = spawn_mock("mock-a", d);
    let (mut mock_b, b) = spawn_mock("mock-b", d);
    let grpc = format!("unix:{}", d.join("tollgate.sock").display());
    let admin = format!("127.0.0.1:{}", free_port());
    let first = format!("  first: {{ kind: openai, base_url: \"http://{a}/v1\" }}\n");
    let second = format!(
        // An Istio-style cluster name: the routing header carries it as it is.
        "  second: {{ kind: openai_compatible, base_url: \"http://{b}/v1\", cluster: \"{SECOND}\" }}\n"
    );
    let first_model = "  first-model: { targets: [{ provider: first, model: mock-model }] }\n";
    let second_model = "  second-model: { targets: [{ provider: second, model: mock-model }] }\n";
    let config_path = d.join("tollgate.yaml");
    std::fs::write(&config_path, config(&grpc, &admin, &first, first_model, "")).unwrap();

    let mut serve = spawn_serve(&config_path, d);
    let rendered = bootstrap(&config_path, &["--xds", "--node-id", "e2e-envoy"]);
    assert!(rendered.contains("dynamic_resources:"), "{rendered}");
    assert!(rendered.contains("cds_config: { ads: {}"), "{rendered}");
    assert!(
        !rendered.contains("- name: \"first\""),
        "provider clusters must not be static in an xDS bootstrap:\n{rendered}"
    );
    assert!(bootstrap(&config_path, &[]).contains("- name: \"first\""));
    wait_http_ok(
        &format!("http://{admin}/readyz"),
        &mut [&mut mock_a, &mut mock_b, &mut serve],
    );
    let (mut envoy, envoy_admin) = spawn_envoy("envoy", &rendered, d);
    wait_http_ok(
        &format!("{}/ready", envoy_admin),
        &mut [&mut mock_a, &mut mock_b, &mut serve, &mut envoy],
    );
    let envoy_pid = envoy.pid();
    let base = listener(&http, &envoy_admin).await;
    let mut procs = Procs(vec![mock_a, mock_b, serve, envoy]);

    // The first provider's cluster came by ADS, and traffic reaches its mock.
    let dynamic = dumped_clusters(&http, &envoy_admin, "dynamic_active_clusters").await;
    assert_eq!(dynamic.keys().collect::<Vec<_>>(), ["first"], "{dynamic:?}");
    let static_ = dumped_clusters(&http, &envoy_admin, "static_clusters").await;
    assert_eq!(
        static_.keys().collect::<Vec<_>>(),
        ["tollgate"],
        "only the tollgate cluster is static: {static_:?}"
    );
    let v1 = dynamic["first"].1.clone();
    assert_eq!(v1.len(), 16, "the version is the snapshot hash: {v1}");
    let (status, body) = chat(&http, &base, "first-model").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(posted(&http, &a).await, 1);
    // The second model does not exist yet.
    let (status, _) = chat(&http, &base, "second-model").await;
    assert_ne!(status, 200);
    assert_eq!(posted(&http, &b).await, 0);

    // Add a provider and a model: the reload pushes the new cluster to the same Envoy.
    let both_models = format!("{first_model}{second_model}");
    let set_config = |providers: &str, xds_extra: &str| {
        rewrite(
            &config_path,
            &config(&grpc, &admin, providers, &both_models, xds_extra),
        );
    };
    set_config(&format!("{first}{second}"), "");
    wait_for("the second cluster's arrival in Envoy", &procs, || async {
        dumped_clusters(&http, &envoy_admin, "dynamic_active_clusters")
            .await
            .contains_key(SECOND)
    })
    .await;
    let clusters = get_text(&http, &format!("{envoy_admin}/clusters")).await;
    assert!(clusters.contains(&format!("{SECOND}::{b}::")), "{clusters}");
    let dynamic = dumped_clusters(&http, &envoy_admin, "dynamic_active_clusters").await;
    let v2 = dynamic[SECOND].1.clone();
    assert_ne!(v2, v1);
    // Envoy keeps an unchanged cluster (and its connections) as it was: its version stays.
    assert_eq!(dynamic["first"].1, v1, "the unchanged cluster was rebuilt");
    wait_for("the reload in serve", &procs, || async {
        chat(&http, &base, "second-model").await.0 == 200
    })
    .await;
    assert_eq!(
        posted(&http, &b).await,
        1,
        "the new model reached the new mock"
    );
    assert_eq!(posted(&http, &a).await, 1, "and not the first one");
    assert_eq!(chat(&http, &base, "first-model").await.0, 200);
    assert_eq!(posted(&http, &a).await, 2);
    // The same Envoy process all along.
    assert_eq!(procs.0[3].pid(), envoy_pid);
    assert!(procs.0[3].alive(), "Envoy was not restarted");
    assert_eq!(
        metric(&http, &admin, "tollgate_xds_acks_total{result=\"ack\"}").await,
        2.0
    );
    assert_eq!(metric(&http, &admin, "tollgate_xds_streams").await, 1.0);

    // A cluster Envoy cannot build (its CA file does not exist on Envoy's side): Envoy NACKs,
    // serve logs Envoy's reason, and the clusters Envoy had keep serving.
    let bad = "  tls-bad: { kind: openai, base_url: \"https://localhost:1/v1\" }\n";
    set_config(
        &format!("{first}{second}{bad}"),
        "  ca_file: /nonexistent/tollgate-e2e/ca.pem\n",
    );
    wait_for("the NACK", &procs, || async {
        metric(&http, &admin, "tollgate_xds_acks_total{result=\"nack\"}").await >= 1.0
    })
    .await;
    let log = strip_ansi(&procs.0[2].log());
    let nack = log
        .lines()
        .find(|l| l.contains("Envoy rejected the provider clusters"))
        .unwrap_or_else(|| panic!("no NACK in serve's log:\n{log}"));
    assert!(
        nack.contains("/nonexistent/tollgate-e2e/ca.pem"),
        "the NACK names Envoy's reason: {nack}"
    );
    assert!(nack.contains(&format!("kept_version={v2}")), "{nack}");
    for (model, mock, n) in [("first-model", &a, 3), ("second-model", &b, 2)] {
        let (status, body) = chat(&http, &base, model).await;
        assert_eq!(status, 200, "{model} after the NACK: {body}");
        assert_eq!(posted(&http, mock).await, n);
    }

    // Fixing the config pushes again, and Envoy applies it.
    set_config(&format!("{first}{second}"), "");
    wait_for("the ACK of the fixed config", &procs, || async {
        metric(&http, &admin, "tollgate_xds_acks_total{result=\"ack\"}").await >= 3.0
    })
    .await;
    let dynamic = dumped_clusters(&http, &envoy_admin, "dynamic_active_clusters").await;
    assert_eq!(
        dynamic.keys().collect::<Vec<_>>(),
        ["first", SECOND],
        "{dynamic:?}"
    );
    assert_eq!(procs.0[3].pid(), envoy_pid);
    assert!(procs.0[3].alive());

    // SIGTERM: `serve` ends the open ADS stream and exits (an ADS stream never ends by
    // itself, so a shutdown that waited for it would hang); Envoy keeps its clusters.
    let term = Command::new("kill")
        .args(["-TERM", &procs.0[2].pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    while procs.0[2].alive() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve did not exit on SIGTERM with an ADS stream open:\n{}",
            procs.0[2].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        strip_ansi(&procs.0[2].log()).contains("Closing the ADS stream: shutting down"),
        "{}",
        procs.0[2].log()
    );
    let dynamic = dumped_clusters(&http, &envoy_admin, "dynamic_active_clusters").await;
    assert_eq!(
        dynamic.keys().collect::<Vec<_>>(),
        ["first", SECOND],
        "Envoy keeps the clusters while its control plane is away"
    );
}

/// A self-signed CA certificate in PEM, made by `openssl`.
fn ca_file(dir: &Path) -> PathBuf {
    let cert = dir.join("ca.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=tollgate-e2e"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

#[tokio::test]
async fn envoy_sees_the_same_clusters_from_xds_as_from_the_static_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let http = reqwest::Client::new();
    let ca = ca_file(d);
    let grpc = format!("unix:{}", d.join("tollgate.sock").display());
    let admin = format!("127.0.0.1:{}", free_port());
    // Every shape a provider cluster takes: an IP (STATIC), a host name (LOGICAL_DNS), TLS.
    let providers = concat!(
        "  ip: { kind: openai, base_url: \"http://127.0.0.1:9/v1\" }\n",
        "  named: { kind: anthropic, base_url: \"http://localhost:9/v1\", cluster: \"outbound|9||localhost\" }\n",
        "  tls: { kind: openai_compatible, base_url: \"https://localhost:9443/openai/v1\" }\n",
    );
    let config_path = d.join("tollgate.yaml");
    std::fs::write(
        &config_path,
        config(
            &grpc,
            &admin,
            providers,
            // And a failover chain over two of them (its composite clusters).
            "  m: { failover: {}, targets: [{ provider: ip, model: x }, { provider: named, model: y }] }\n",
            &format!("  ca_file: \"{}\"\n", ca.display()),
        ),
    )
    .unwrap();
    let mut serve = spawn_serve(&config_path, d);
    wait_http_ok(&format!("http://{admin}/readyz"), &mut [&mut serve]);
    let ca_arg = ca.display().to_string();
    let (mut fixed, fixed_admin) = spawn_envoy(
        "envoy-static",
        &bootstrap(&config_path, &["--ca-file", &ca_arg]),
        d,
    );
    let (mut dynamic, dynamic_admin) =
        spawn_envoy("envoy-xds", &bootstrap(&config_path, &["--xds"]), d);
    for admin in [&fixed_admin, &dynamic_admin] {
        wait_http_ok(
            &format!("{admin}/ready"),
            &mut [&mut serve, &mut fixed, &mut dynamic],
        );
    }
    let _procs = Procs(vec![serve, fixed, dynamic]);

    let mut from_bootstrap = dumped_clusters(&http, &fixed_admin, "static_clusters").await;
    from_bootstrap.remove("tollgate");
    let from_xds = dumped_clusters(&http, &dynamic_admin, "dynamic_active_clusters").await;
    assert_eq!(
        from_bootstrap.keys().collect::<Vec<_>>(),
        [
            "ip",
            "outbound|9||localhost",
            "tls",
            "tollgate-failover~ip~outbound|9||localhost",
            "tollgate-failover~outbound|9||localhost~ip"
        ]
    );
    assert_eq!(
        from_bootstrap.keys().collect::<Vec<_>>(),
        from_xds.keys().collect::<Vec<_>>()
    );
    for (name, (cluster, _)) in &from_bootstrap {
        assert_eq!(
            cluster, &from_xds[name].0,
            "cluster {name} differs between the static bootstrap and xDS"
        );
    }
    // The failover cluster really is composite, with Tollgate's ext_proc upstream.
    let composite = from_xds["tollgate-failover~ip~outbound|9||localhost"]
        .0
        .to_string();
    assert!(
        composite.contains("envoy.clusters.composite"),
        "{composite}"
    );
    assert!(
        composite.contains("envoy.filters.http.ext_proc"),
        "{composite}"
    );
    // The TLS cluster really carries TLS (the comparison above is not of two empty objects).
    assert_eq!(
        from_xds["tls"].0["transport_socket"]["typed_config"]["sni"],
        "localhost"
    );
}

#[test]
fn an_xds_bootstrap_needs_xds_enabled_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(
        &path,
        "providers:\n  p: { kind: openai, base_url: \"http://127.0.0.1:9/v1\" }\n",
    )
    .unwrap();
    let out = Command::new(TOLLGATE)
        .args(["envoy-bootstrap", "--xds", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xds: { enabled: true }"), "{err}");
}
