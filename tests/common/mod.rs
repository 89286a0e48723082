//! End-to-end harness: spawns the real `tollgate` binary (mock, serve, logger) and real Envoy,
//! waits until each is ready, kills each on drop, and prints every process's log when a test
//! fails.
//!
//! No port is guessed: a guessed free port (bind port 0, release it, hand the number to a child)
//! is a race with every other process on the machine, and a retried flaky test hides real bugs.
//! Each server binds port 0 itself and says which port it got:
//! - `tollgate mock`, `serve` and `logger` write the addresses they bound to `--ready-file`
//!   (written, then renamed) once they serve; [`wait_ready_file`] reads it.
//! - Envoy renders with listener and admin port 0, runs with `--admin-address-path`, and
//!   [`wait_envoy`] reads the admin address from that file, then the listener's from the
//!   admin's `/listeners?format=json`.
//! - A server a test kills and starts again (the logger, ClickHouse) sits behind a
//!   [`relay::Relay`] the test process owns: clients keep the relay's address while the new
//!   server binds a new port 0. A restarted `serve` gets a new admin port ([`Stack::admin`]
//!   follows); its gRPC stays on its Unix socket.
//! - ClickHouse 18.16 binds port 0 but reports it nowhere: [`clickhouse`] reads it from the
//!   kernel's table of the server's sockets.
//! - `redis-server` listens on a Unix socket only (`--port 0 --unixsocket`), which the ledger
//!   reaches as `redis+unix:///path`.
//! - "A port where nothing listens" is [`closed_port`]: bound by the test process and never
//!   listened on, so connections to it are refused and nobody else can take it.
//!
//! [`free_port`] stays only for servers that cannot report their port.

// Test support: failing loudly is the point here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const TOLLGATE: &str = env!("CARGO_BIN_EXE_tollgate");

/// Keys every stack knows.
pub const KEY_ALL: &str = "tg-e2e-all-models";
pub const KEY_LIMITED: &str = "tg-e2e-limited";
pub const KEY_EXPIRED: &str = "tg-e2e-expired";
pub const KEY_DISABLED: &str = "tg-e2e-disabled";
/// A key limited to 2 requests per minute.
pub const KEY_RATE: &str = "tg-e2e-rate-limited";
/// A key of tenant `guarded`, whose guardrails policy is `e2e` (see [`config_yaml`]).
pub const KEY_GUARDED: &str = "tg-e2e-guarded";
/// Stacks with a webhook only: keys whose policy is a webhook rule `mod` that may block, failing
/// closed; failing open; pointing at a port where nothing listens (failing closed).
pub const KEY_HOOK_CLOSED: &str = "tg-e2e-hook-closed";
pub const KEY_HOOK_OPEN: &str = "tg-e2e-hook-open";
pub const KEY_HOOK_DOWN: &str = "tg-e2e-hook-down";
/// Stacks with a logger only: a key with `capture: metadata`.
pub const KEY_CAPTURE_METADATA: &str = "tg-e2e-capture-metadata";
/// Stacks with a logger only: a key of tenant `recorded`, whose `capture` is `full`.
pub const KEY_CAPTURE_FULL: &str = "tg-e2e-capture-full";
/// Stacks with a logger only: a key of tenant `recorded` with its own `capture: off`.
pub const KEY_CAPTURE_OFF: &str = "tg-e2e-capture-off";
/// The Azure mock's credential, given to `serve` through the environment.
pub const AZURE_SECRET: &str = "azure-upstream-secret";
/// The Anthropic mock's credential, given to `serve` through the environment.
pub const ANTHROPIC_SECRET: &str = "anthropic-upstream-secret";
pub const GEMINI_SECRET: &str = "gemini-upstream-secret";
/// The OpenAI-compatible mock's credential, read from a file.
pub const COMPAT_SECRET: &str = "compat-upstream-secret";
/// The session token `serve` signs Bedrock requests with (the key id and secret are the
/// mock's, [`tollgate_mock::bedrock`]).
pub const AWS_SESSION_TOKEN: &str = "e2e-aws-session-token";
/// The Bedrock model id the `bedrock-model` target names (a `:` to encode in the path).
pub const BEDROCK_MODEL_ID: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// The environment `serve` and `envoy-bootstrap` read provider secrets from.
pub fn provider_env() -> [(&'static str, &'static str); 8] {
    [
        ("E2E_FEEDBACK_SECRET", FEEDBACK_SECRET),
        ("E2E_AZURE_KEY", AZURE_SECRET),
        ("E2E_ANTHROPIC_KEY", ANTHROPIC_SECRET),
        ("E2E_GEMINI_KEY", GEMINI_SECRET),
        (
            "E2E_AWS_ACCESS_KEY_ID",
            tollgate_mock::bedrock::AWS_ACCESS_KEY_ID,
        ),
        (
            "E2E_AWS_SECRET_ACCESS_KEY",
            tollgate_mock::bedrock::AWS_SECRET_ACCESS_KEY,
        ),
        ("E2E_AWS_SESSION_TOKEN", AWS_SESSION_TOKEN),
        ("E2E_AWS_WRONG_SECRET", "not-the-mock-secret"),
    ]
}

/// The feedback-token signing secret of stacks with a logger, given through the environment.
pub const FEEDBACK_SECRET: &str = "e2e-feedback-secret-0123456789abcdef";

pub mod clickhouse;
pub mod prometheus;
pub mod relay;

/// Deprecated: only for servers that cannot report their port. A port that was free a moment
/// ago, released before the caller's server binds it: another process can take it in between.
/// Give servers `127.0.0.1:0` and read the port they report instead (see the module docs).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// The listen address that lets the system pick the port.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// A port on 127.0.0.1 where nothing listens, for as long as the test runs: bound (never
/// listened on) by this process, so a connection to it is refused and no other process can
/// take the port.
pub fn closed_port() -> u16 {
    static CLOSED: std::sync::OnceLock<(tokio::net::TcpSocket, u16)> = std::sync::OnceLock::new();
    CLOSED
        .get_or_init(|| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(ANY_PORT.parse().unwrap()).unwrap();
            let port = socket.local_addr().unwrap().port();
            (socket, port)
        })
        .1
}

/// How long a process may take to say it is ready (a loaded machine, a debug build).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until `path` (a `--ready-file`) exists and returns its JSON; fails the test, with
/// the logs of `procs`, if one of them exits first or time runs out.
pub fn wait_ready_file(path: &Path, procs: &mut [&mut Proc]) -> serde_json::Value {
    let start = Instant::now();
    while start.elapsed() < READY_TIMEOUT {
        // Renamed into place whole: existing means complete.
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display()));
        }
        for p in procs.iter_mut() {
            assert!(p.alive(), "{} exited during start-up:\n{}", p.name, p.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{} did not appear\n{}",
        path.display(),
        logs_of(procs).join("\n")
    );
}

/// An address from a ready file's field.
pub fn ready_addr(ready: &serde_json::Value, field: &str) -> SocketAddr {
    ready[field]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address `{field}` in the ready file: {ready}"))
}

/// Starts `cmd` (a `tollgate` subcommand taking `--ready-file`) with a ready file of its own
/// in `dir`, and waits for it; returns the process and the file's JSON.
pub fn spawn_ready(
    name: &str,
    cmd: &mut Command,
    dir: &Path,
    others: &mut [&mut Proc],
) -> (Proc, serde_json::Value) {
    let file = dir.join(format!("{name}.ready"));
    let mut p = Proc::spawn(name, cmd.arg("--ready-file").arg(&file), dir);
    let mut procs: Vec<&mut Proc> = others.iter_mut().map(|p| &mut **p).collect();
    procs.push(&mut p);
    let ready = wait_ready_file(&file, &mut procs);
    (p, ready)
}

/// Starts Envoy (one worker, warnings only) on `bootstrap`, writing its admin address to
/// `admin_file` for [`wait_envoy`]; its log goes to `dir/<name>.log`.
pub fn spawn_envoy(name: &str, bootstrap: &Path, admin_file: &Path, dir: &Path) -> Proc {
    spawn_envoy_with(name, bootstrap, admin_file, dir, &[])
}

/// [`spawn_envoy`] with `extra` command-line flags (say, `--component-log-level`).
pub fn spawn_envoy_with(
    name: &str,
    bootstrap: &Path,
    admin_file: &Path,
    dir: &Path,
    extra: &[&str],
) -> Proc {
    Proc::spawn(
        name,
        Command::new(envoy_bin())
            .arg("-c")
            .arg(bootstrap)
            .arg("--admin-address-path")
            .arg(admin_file)
            .args([
                "--concurrency",
                "1",
                "--use-dynamic-base-id",
                "--log-level",
                "warning",
            ])
            .args(extra),
        dir,
    )
}

/// Waits until Envoy, started with `--admin-address-path admin_file`, is ready (`/ready`
/// answers 200); returns its admin address and its listener's.
pub fn wait_envoy(admin_file: &Path, procs: &mut [&mut Proc]) -> (SocketAddr, SocketAddr) {
    let start = Instant::now();
    while start.elapsed() < READY_TIMEOUT {
        for p in procs.iter_mut() {
            assert!(p.alive(), "{} exited during start-up:\n{}", p.name, p.log());
        }
        if let Some(addresses) = tollgate::envoy_admin::ready(admin_file) {
            return addresses;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("Envoy did not become ready\n{}", logs_of(procs).join("\n"));
}

fn logs_of(procs: &[&mut Proc]) -> Vec<String> {
    procs
        .iter()
        .map(|p| format!("===== {} log =====\n{}", p.name, p.log()))
        .collect()
}

pub fn hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A child process with its log file; killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`TERM`, `INT`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1) is needed");
        assert!(
            status.success(),
            "kill -{signal} {} failed",
            self.child.id()
        );
    }

    /// The exit status, if the process has exited (never waits).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn envoy_bin() -> PathBuf {
    tollgate::bootstrap::find_envoy(None).expect(
        "Envoy is needed for end-to-end tests: run the README's test command, which installs it",
    )
}

/// Blocks until `url` answers 200 or `deadline` passes.
pub fn wait_http_ok(url: &str, procs: &mut [&mut Proc]) {
    let client = reqwest::blocking_client();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        for p in procs.iter_mut() {
            assert!(p.alive(), "{} exited during start-up:\n{}", p.name, p.log());
        }
        if let Ok(r) = client.get(url).send() {
            if r.status().is_success() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} did not become ready\n{}", logs_of(procs).join("\n"));
}

/// Tiny blocking HTTP/1.1 GET without pulling in reqwest's blocking feature.
mod reqwest {
    pub struct Client;
    pub struct Resp(u16);
    impl Resp {
        pub fn status(&self) -> Status {
            Status(self.0)
        }
    }
    pub struct Status(u16);
    impl Status {
        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.0)
        }
    }
    pub fn blocking_client() -> Client {
        Client
    }
    pub struct Get(String);
    impl Client {
        pub fn get(&self, url: &str) -> Get {
            Get(url.to_owned())
        }
    }
    impl Get {
        pub fn send(self) -> std::io::Result<Resp> {
            use std::io::{Read, Write};
            let rest = self.0.trim_start_matches("http://");
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let mut s = std::net::TcpStream::connect(host)?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
            write!(
                s,
                "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )?;
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf)?;
            let code = std::str::from_utf8(&buf[9..12])
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            Ok(Resp(code))
        }
    }
}

/// Runs an SDK check script from `tests/sdk/` with `envs`; fails the test (showing the
/// script's output) unless every check passed.
pub fn run_sdk(script: &str, envs: &[(&str, &str)]) {
    let out = Command::new("python3")
        .arg(format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR")))
        .envs(envs.iter().copied())
        .output()
        .expect("python3 is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "SDK checks failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

/// Options of a stack.
#[derive(Clone)]
pub struct StackOptions {
    /// gRPC over TCP instead of a Unix socket.
    pub tcp: bool,
    /// Request body limit.
    pub max_body: u64,
    /// Mock chunk delay in ms.
    pub chunk_delay_ms: u64,
    /// Ship log events to a logger at this `host:port` (batches of 4, 50 ms max delay,
    /// spool under the stack's directory).
    pub logger: Option<String>,
    /// Add Vertex AI providers: `vertex` (a service account whose key the mock's token
    /// endpoint trusts) serving `vertex-gemini`, `vertex-claude` and their fault models, and
    /// `vertex-untrusted` (a key the mock does not know) serving `vertex-untrusted`.
    pub vertex: bool,
    /// A webhook guardrail at this base URL (`http://host:port`): adds the `hook-*` policies
    /// and keys, calling `POST {base}/decide` with a 300 ms timeout.
    pub webhook: Option<String>,
    /// YAML appended to the config (top-level sections the base config lacks, e.g. `budgets`).
    pub extra_yaml: String,
    /// Rewrites the whole config before it is written (e.g. to add providers or models).
    pub patch_config: Option<fn(String) -> String>,
    /// Rewrites Envoy's rendered bootstrap before Envoy starts (e.g. outlier detection).
    pub patch_bootstrap: Option<fn(String) -> String>,
    /// Extra arguments of `tollgate mock` (e.g. `--credential-ttl-secs`).
    pub mock_args: Vec<String>,
    /// Extra environment of `serve` (e.g. the AWS chain's variables); `{mock}` in a value
    /// becomes the mock's `host:port`.
    pub serve_env: Vec<(String, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            tcp: false,
            max_body: 64 * 1024,
            chunk_delay_ms: 0,
            logger: None,
            vertex: false,
            webhook: None,
            extra_yaml: String::new(),
            patch_config: None,
            patch_bootstrap: None,
            mock_args: Vec::new(),
            serve_env: Vec::new(),
        }
    }
}

/// An RSA key pair made by `openssl`: (private key PEM, public key PEM).
fn rsa_key_pair(dir: &Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is needed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &private.display().to_string(),
    ]);
    run(&[
        "pkey",
        "-in",
        &private.display().to_string(),
        "-pubout",
        "-out",
        &public.display().to_string(),
    ]);
    (
        std::fs::read_to_string(private).unwrap(),
        std::fs::read_to_string(public).unwrap(),
    )
}

/// Makes the key pairs of two service accounts (`trusted`, `untrusted`) and returns the file
/// of the public key the mock trusts.
fn vertex_keys(dir: &Path) -> PathBuf {
    for name in ["trusted", "untrusted"] {
        rsa_key_pair(dir, name);
    }
    let public = dir.join("trusted.pub.pem");
    assert!(public.exists());
    public
}

/// Writes the two service-account keys of [`vertex_keys`] with the mock's `token_uri`:
/// `sa.json` (trusted) and `untrusted-sa.json`.
fn vertex_accounts(dir: &Path, mock: &str) {
    for (name, file) in [("trusted", "sa.json"), ("untrusted", "untrusted-sa.json")] {
        let private = std::fs::read_to_string(dir.join(format!("{name}.key.pem"))).unwrap();
        let key = serde_json::json!({
            "type": "service_account",
            "project_id": "tollgate-test",
            "private_key_id": format!("{name}-key"),
            "private_key": private,
            "client_email": format!("{name}@tollgate-test.iam.gserviceaccount.com"),
            "token_uri": format!("http://{mock}/token"),
        });
        std::fs::write(dir.join(file), key.to_string()).unwrap();
    }
}

/// The Vertex AI providers and models, spliced in before `models:`.
fn vertex_yaml(dir: &Path, mock: &str) -> String {
    format!(
        r#"
  vertex:
    kind: vertex
    base_url: "http://{mock}/v1"
    project: tollgate-test
    location: us-central1
    credential: {{ file: "{sa}" }}
  vertex-untrusted:
    kind: vertex
    base_url: "http://{mock}/v1"
    project: tollgate-test
    location: us-central1
    credential: {{ file: "{untrusted}" }}
models:
  vertex-gemini:
    targets: [{{ provider: vertex, model: gemini-vertex-model }}]
  vertex-rate-limited:
    targets: [{{ provider: vertex, model: mock-error-429 }}]
  vertex-stream-error:
    targets: [{{ provider: vertex, model: mock-stream-error }}]
  vertex-claude:
    targets: [{{ provider: vertex, model: claude-vertex-model }}]
  vertex-claude-rate-limited:
    targets: [{{ provider: vertex, model: claude-mock-error-429 }}]
  vertex-claude-stream-error:
    targets: [{{ provider: vertex, model: claude-mock-stream-error }}]
  vertex-untrusted:
    targets: [{{ provider: vertex-untrusted, model: gemini-vertex-model }}]
"#,
        sa = dir.join("sa.json").display(),
        untrusted = dir.join("untrusted-sa.json").display(),
    )
}

/// The `envoy` section that picks where the key gate runs: `TOLLGATE_E2E_AUTH=ext_authz` runs
/// the whole suite with the ext_authz filter (`scripts/test.sh` does, after the default
/// `ext_proc` run), so both shapes pass the same end-to-end tests.
/// The mock's control headers (`x-mock-*`) are passed on by Envoy's client-header allow-list.
pub fn auth_attach_yaml() -> String {
    let auth = match std::env::var("TOLLGATE_E2E_AUTH").as_deref() {
        Ok("ext_authz") => "  auth: ext_authz\n",
        Ok("ext_proc") | Err(_) => "",
        Ok(other) => panic!("TOLLGATE_E2E_AUTH must be ext_proc or ext_authz, not {other}"),
    };
    format!("\nenvoy:\n{auth}  client_headers: [x-mock-chunk-delay-ms, x-mock-endless-stream]\n")
}

/// Mock, serve and Envoy, all real processes.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub mock: String,
    pub admin: String,
    pub envoy_admin: String,
    pub config_path: PathBuf,
    pub procs: Vec<Proc>,
    pub http: ::reqwest::Client,
}

pub fn config_yaml(opts: &StackOptions, grpc: &str, admin: &str, mock: &str) -> String {
    format!(
        r#"listen:
  grpc: "{grpc}"
  admin: "{admin}"
limits:
  max_request_body_bytes: {max_body}
providers:
  mock:
    kind: openai
    base_url: "http://{mock}/v1"
  compat:
    kind: openai_compatible
    base_url: "http://{mock}/openai/v1/"
    credential: {{ file: "{compat_file}" }}
    headers: {{ X-Provider-Team: e2e }}
  azure:
    kind: azure_openai
    base_url: "http://{mock}"
    api_version: "2024-10-21"
    credential: {{ env: E2E_AZURE_KEY }}
    cluster: azure-mock
  down:
    kind: openai
    base_url: "http://127.0.0.1:{down}/v1"
  claude:
    kind: anthropic
    base_url: "http://{mock}/v1"
    credential: {{ env: E2E_ANTHROPIC_KEY }}
  bedrock:
    kind: bedrock
    base_url: "http://{mock}"
    aws:
      region: us-east-1
      access_key_id: {{ env: E2E_AWS_ACCESS_KEY_ID }}
      secret_access_key: {{ env: E2E_AWS_SECRET_ACCESS_KEY }}
      session_token: {{ env: E2E_AWS_SESSION_TOKEN }}
  bedrock-wrong-secret:
    kind: bedrock
    base_url: "http://{mock}"
    aws:
      region: eu-west-1
      access_key_id: {{ env: E2E_AWS_ACCESS_KEY_ID }}
      secret_access_key: {{ env: E2E_AWS_WRONG_SECRET }}
  gemini:
    kind: gemini
    base_url: "http://{mock}/v1beta"
    credential: {{ env: E2E_GEMINI_KEY }}
models:
  mock-model:
    targets: [{{ provider: mock, model: mock-model }}]
  mock-embedding:
    targets: [{{ provider: mock, model: mock-embedding }}]
  compat-model:
    targets: [{{ provider: compat, model: upstream-compat-model }}]
  azure-model:
    targets: [{{ provider: azure, model: my-deployment }}]
  dead-model:
    targets: [{{ provider: down, model: whatever }}]
  rate-limited:
    targets: [{{ provider: mock, model: mock-error-429 }}]
  html-error:
    targets: [{{ provider: mock, model: mock-html-error }}]
  stream-error:
    targets: [{{ provider: mock, model: mock-stream-error }}]
  claude-model:
    targets: [{{ provider: claude, model: claude-upstream-model }}]
  claude-rate-limited:
    targets: [{{ provider: claude, model: mock-error-429 }}]
  claude-stream-error:
    targets: [{{ provider: claude, model: mock-stream-error }}]
  bedrock-model:
    targets: [{{ provider: bedrock, model: "{bedrock_model}" }}]
  bedrock-rate-limited:
    targets: [{{ provider: bedrock, model: mock-error-429 }}]
  bedrock-stream-error:
    targets: [{{ provider: bedrock, model: mock-stream-error }}]
  bedrock-wrong-secret:
    targets: [{{ provider: bedrock-wrong-secret, model: "{bedrock_model}" }}]
  gemini-model:
    targets: [{{ provider: gemini, model: gemini-upstream-model }}]
  gemini-rate-limited:
    targets: [{{ provider: gemini, model: mock-error-429 }}]
  gemini-stream-error:
    targets: [{{ provider: gemini, model: mock-stream-error }}]
  server-error:
    targets: [{{ provider: mock, model: mock-error-500 }}]
pricing:
  models:
    # The mock's model has no list price: one for the cost checks (USD per million tokens).
    mock-model: {{ input: "1.5", output: "2" }}
    mock-error-500: {{ input: "1.5", output: "2" }}
keys:
  - {{ id: all, hash: "{all}", tenant: acme, team: ml, models: ["*"] }}
  - {{ id: limited, hash: "{limited}", tenant: acme, models: [mock-model, mock-embedding] }}
  - {{ id: expired, hash: "{expired}", models: ["*"], expires_at: 2020-01-01T00:00:00Z }}
  - {{ id: disabled, hash: "{disabled}", models: ["*"], disabled: true }}
  - {{ id: rate, hash: "{rate}", tenant: slow, models: ["*"], requests_per_minute: 2 }}
  - {{ id: guarded, hash: "{guarded}", tenant: guarded, models: ["*"] }}
{capture_keys}{hook_keys}guardrails:
  tenants: {{ guarded: e2e }}
  policies:
{hook_policies}    e2e:
      rules:
        - {{ id: no-cards, detector: credit_card, action: block, side: request }}
        - {{ id: email, detector: email, action: redact, side: request }}
        - {{ id: watch, detector: {{ deny_list: ["project x"] }}, action: flag, side: request }}
        - {{ id: reply-phone, detector: phone, action: redact, side: response }}
        - {{ id: reply-secret, detector: {{ regex: "TOPSECRET-[0-9]{{4}}" }}, action: block, side: response }}
"#,
        max_body = opts.max_body,
        compat_file = "COMPAT_FILE",
        down = closed_port(),
        all = hash(KEY_ALL),
        limited = hash(KEY_LIMITED),
        expired = hash(KEY_EXPIRED),
        disabled = hash(KEY_DISABLED),
        rate = hash(KEY_RATE),
        guarded = hash(KEY_GUARDED),
        bedrock_model = BEDROCK_MODEL_ID,
        hook_keys = match &opts.webhook {
            Some(_) => format!(
                "  - {{ id: hook-closed, hash: \"{}\", models: [\"*\"], guardrails: hook-closed }}\n\
                 \x20 - {{ id: hook-open, hash: \"{}\", models: [\"*\"], guardrails: hook-open }}\n\
                 \x20 - {{ id: hook-down, hash: \"{}\", models: [\"*\"], guardrails: hook-down }}\n",
                hash(KEY_HOOK_CLOSED),
                hash(KEY_HOOK_OPEN),
                hash(KEY_HOOK_DOWN)
            ),
            None => String::new(),
        },
        hook_policies = match &opts.webhook {
            Some(base) => {
                let rule = |url: &str, fail: &str| {
                    format!("      rules: [{{ id: mod, detector: {{ webhook: {{ url: \"{url}\", timeout_ms: 300, fail: {fail} }} }}, action: block }}]\n")
                };
                format!(
                    "    hook-closed:\n{}    hook-open:\n{}    hook-down:\n{}",
                    rule(&format!("{base}/decide"), "closed"),
                    rule(&format!("{base}/decide"), "open"),
                    rule(&format!("http://127.0.0.1:{}/decide", closed_port()), "closed"),
                )
            }
            None => String::new(),
        },
        // Capture needs logging.
        capture_keys = if opts.logger.is_some() {
            format!(
                "  - {{ id: cap-meta, hash: \"{}\", tenant: acme, models: [\"*\"], capture: metadata }}\n\
                 \x20 - {{ id: cap-full, hash: \"{}\", tenant: recorded, models: [\"*\"] }}\n\
                 \x20 - {{ id: cap-off, hash: \"{}\", tenant: recorded, models: [\"*\"], capture: off }}\n",
                hash(KEY_CAPTURE_METADATA),
                hash(KEY_CAPTURE_FULL),
                hash(KEY_CAPTURE_OFF)
            )
        } else {
            String::new()
        },
    )
}

/// The `logging:` section for a stack whose spool lives in `dir`, and a `feedback:` section
/// (which needs logging) signing with [`FEEDBACK_SECRET`].
pub fn logging_yaml(logger: &str, dir: &Path) -> String {
    format!(
        "logging:\n  address: \"{logger}\"\n  spool_dir: \"{}\"\n  batch_size: 4\n  max_delay_ms: 50\n  capture_max_bytes: 2048\n\
         feedback:\n  secret: {{ env: E2E_FEEDBACK_SECRET }}\n  max_comment_bytes: 64\n\
         tenants:\n  recorded: {{ capture: full }}\n",
        dir.join("spool").display()
    )
}

/// A real `tollgate logger` with the NDJSON sink; killed on drop, its log printed when a
/// test fails. The logger binds port 0 itself; clients reach it through a relay this process
/// owns ([`Logger::addr`]), which stays the same when the logger is killed and restarted.
pub struct Logger {
    /// Where clients (`logging.address`) reach the logger: the relay's address.
    pub addr: String,
    pub data_dir: PathBuf,
    log_dir: PathBuf,
    /// The sink's flags.
    sink: Vec<String>,
    pub proc: Proc,
    relay: relay::Relay,
}

impl Logger {
    /// A logger reached at `addr`: [`ANY_PORT`] for a port the test process picks and holds
    /// (read [`Logger::addr`] afterwards). A fixed port (say, from [`free_port`]) still works,
    /// but is a guess.
    pub fn start(addr: &str, data_dir: &Path, log_dir: &Path) -> Logger {
        let sink = vec!["--data-dir".to_owned(), data_dir.display().to_string()];
        Self::start_with(addr, data_dir, log_dir, sink)
    }

    /// A logger writing ClickHouse at `url`, database `database`.
    pub fn start_clickhouse(addr: &str, url: &str, database: &str, log_dir: &Path) -> Logger {
        let sink = ["--sink", "clickhouse", "--clickhouse-url", url]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["--clickhouse-database".to_owned(), database.to_owned()])
            .collect();
        Self::start_with(addr, &log_dir.join("unused"), log_dir, sink)
    }

    fn start_with(addr: &str, data_dir: &Path, log_dir: &Path, sink: Vec<String>) -> Logger {
        let relay = relay::Relay::start(addr, None);
        let (proc, bound) = Self::spawn(&sink, log_dir, 0);
        relay.set_target(Some(bound));
        Logger {
            addr: relay.addr().to_string(),
            data_dir: data_dir.to_owned(),
            log_dir: log_dir.to_owned(),
            sink,
            proc,
            relay,
        }
    }

    /// Starts logger number `run` on port 0 and waits until it serves; returns it and the
    /// address it bound.
    fn spawn(sink: &[String], log_dir: &Path, run: u32) -> (Proc, SocketAddr) {
        let (proc, ready) = spawn_ready(
            &format!("logger-{run}"),
            Command::new(TOLLGATE)
                .args(["logger", "--listen", ANY_PORT])
                .args(sink)
                .env("TOLLGATE_LOG", "info,tollgate_logger=debug"),
            log_dir,
            &mut [],
        );
        (proc, ready_addr(&ready, "listen"))
    }

    /// `kill -9` the logger: no chance to flush or say goodbye. Its clients' connections end;
    /// new ones are closed at once until [`Logger::restart`].
    pub fn kill9(&mut self) {
        self.relay.set_target(None);
        self.proc.kill9();
    }

    /// Starts a new logger (number `run`) on the same data directory, behind the same
    /// [`Logger::addr`]; returns once it serves.
    pub fn restart(&mut self, run: u32) {
        let (proc, bound) = Self::spawn(&self.sink, &self.log_dir, run);
        self.proc = proc;
        self.relay.set_target(Some(bound));
    }

    /// Kills the logger and starts a new one (number `run`) with `extra` flags besides its
    /// sink's (e.g. `--config` for evaluators), behind the same [`Logger::addr`].
    pub fn restart_with(&mut self, run: u32, extra: &[String]) {
        self.kill9();
        self.sink.extend(extra.iter().cloned());
        self.restart(run);
    }

    /// Every stored line, oldest file first. A last line without its newline is a write in
    /// progress (the logger appends while the test reads): it is left for the next read.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.data_dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "ndjson"));
        files.sort();
        files
            .iter()
            .flat_map(|p| {
                let text = std::fs::read_to_string(p).unwrap();
                let complete = text.rfind('\n').map_or("", |end| &text[..end]);
                complete
                    .lines()
                    .map(|l| {
                        serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l}"))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A stack shipping its events to a logger of its own (NDJSON, or a fresh ClickHouse).
/// Fields drop in order: the stack first, so `serve` flushes to a logger still running.
pub struct LoggedStack {
    pub stack: Stack,
    pub logger: Logger,
    pub clickhouse: Option<clickhouse::ClickHouse>,
    _dir: tempfile::TempDir,
}

impl LoggedStack {
    /// With the NDJSON sink (data under the logger's `data_dir`).
    pub fn ndjson() -> LoggedStack {
        Self::start(None, StackOptions::default())
    }

    /// With the NDJSON sink and these options (their `logger` is set to the stack's logger).
    pub fn ndjson_with(opts: StackOptions) -> LoggedStack {
        Self::start(None, opts)
    }

    /// With the ClickHouse sink, database `database` of a fresh server.
    pub fn clickhouse(database: &str) -> LoggedStack {
        Self::start(Some(database), StackOptions::default())
    }

    fn start(database: Option<&str>, opts: StackOptions) -> LoggedStack {
        let dir = tempfile::tempdir().unwrap();
        let (logger, clickhouse) = match database {
            Some(db) => {
                let ch = clickhouse::ClickHouse::start();
                let logger = Logger::start_clickhouse(ANY_PORT, &ch.url, db, dir.path());
                (logger, Some(ch))
            }
            None => (
                Logger::start(ANY_PORT, &dir.path().join("data"), dir.path()),
                None,
            ),
        };
        let stack = Stack::start(StackOptions {
            logger: Some(logger.addr.clone()),
            ..opts
        });
        LoggedStack {
            stack,
            logger,
            clickhouse,
            _dir: dir,
        }
    }

    /// The ClickHouse server (stacks made with [`LoggedStack::clickhouse`]).
    pub fn ch(&self) -> &clickhouse::ClickHouse {
        self.clickhouse.as_ref().unwrap()
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.log_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("logger-") && name.ends_with(".log") {
                    eprintln!(
                        "===== {name} =====\n{}",
                        std::fs::read_to_string(entry.path()).unwrap_or_default()
                    );
                }
            }
        }
    }
}

/// `tollgate serve` on a stack's config, with the stack's provider secrets and a ready file
/// `<name>.ready` in `dir` (not waited for).
fn spawn_serve(name: &str, config_path: &Path, dir: &Path) -> (Proc, PathBuf) {
    spawn_serve_env(name, config_path, dir, &[])
}

fn spawn_serve_env(
    name: &str,
    config_path: &Path,
    dir: &Path,
    env: &[(String, String)],
) -> (Proc, PathBuf) {
    let ready = dir.join(format!("{name}.ready"));
    let _ = std::fs::remove_file(&ready);
    let proc = Proc::spawn(
        name,
        Command::new(TOLLGATE)
            .args(["serve", "--config"])
            .arg(config_path)
            .arg("--ready-file")
            .arg(&ready)
            .envs(provider_env())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "TOLLGATE_LOG",
                "info,tollgate_extproc=debug,tollgate_authz=debug",
            ),
        dir,
    );
    (proc, ready)
}

impl Stack {
    /// `kill -9` the stack's `serve` and start a new one on the same config and socket;
    /// returns once it is ready. The new `serve` has an admin port of its own: [`Stack::admin`]
    /// changes.
    pub fn restart_serve(&mut self, run: u32) {
        self.procs[1].kill9();
        let (mut serve, file) =
            spawn_serve(&format!("serve-{run}"), &self.config_path, self.dir.path());
        let ready = wait_ready_file(&file, &mut [&mut serve]);
        assert!(
            ready["grpc"]
                .as_str()
                .is_some_and(|g| g.starts_with("unix:")),
            "restart_serve needs a stack whose gRPC is a Unix socket: Envoy knows only the old \
             port of {ready}"
        );
        self.admin = format!("http://{}", ready_addr(&ready, "admin"));
        let old = std::mem::replace(&mut self.procs[1], serve);
        // Keep the first run's log for a failure report.
        self.procs.push(old);
    }

    pub fn start(opts: StackOptions) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let grpc = if opts.tcp {
            ANY_PORT.to_owned()
        } else {
            format!("unix:{}", d.join("tollgate.sock").display())
        };

        // 1. The mock provider: the config needs its address.
        let mut mock_args = vec![
            "mock".to_owned(),
            "--listen".to_owned(),
            ANY_PORT.to_owned(),
            "--chunk-delay-ms".to_owned(),
            opts.chunk_delay_ms.to_string(),
        ];
        mock_args.extend(opts.mock_args.iter().cloned());
        if opts.vertex {
            mock_args.push("--google-public-key-file".to_owned());
            mock_args.push(vertex_keys(d).display().to_string());
        }
        let (mut mock_p, ready) =
            spawn_ready("mock", Command::new(TOLLGATE).args(&mock_args), d, &mut []);
        let mock = ready_addr(&ready, "listen").to_string();

        // 2. `serve` on the config, its admin on port 0.
        let compat_file = d.join("compat.key");
        std::fs::write(&compat_file, format!("{COMPAT_SECRET}\n")).unwrap();
        let config_path = d.join("tollgate.yaml");
        let mut yaml = config_yaml(&opts, &grpc, ANY_PORT, &mock)
            .replace("COMPAT_FILE", &compat_file.display().to_string());
        if let Some(logger) = &opts.logger {
            yaml.push_str(&logging_yaml(logger, d));
        }
        if opts.vertex {
            vertex_accounts(d, &mock);
            yaml = yaml.replacen("\nmodels:\n", &vertex_yaml(d, &mock), 1);
        }
        yaml.push_str(&opts.extra_yaml);
        yaml.push_str(&auth_attach_yaml());
        if let Some(patch) = opts.patch_config {
            yaml = patch(yaml);
        }
        std::fs::write(&config_path, &yaml).unwrap();
        let serve_env: Vec<(String, String)> = opts
            .serve_env
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{mock}", &mock)))
            .collect();
        let (mut serve_p, serve_file) = spawn_serve_env("serve", &config_path, d, &serve_env);

        // 3. Envoy, pointed at `serve`: at its Unix socket, or at the gRPC port it bound
        // (which the bootstrap is rendered from a copy of the config naming).
        let mut serve_ready = None;
        let bootstrap_config = if opts.tcp {
            let ready = wait_ready_file(&serve_file, &mut [&mut mock_p, &mut serve_p]);
            let bound = ready_addr(&ready, "grpc");
            let named = yaml.replacen(
                &format!("  grpc: \"{ANY_PORT}\"\n"),
                &format!("  grpc: \"{bound}\"\n"),
                1,
            );
            assert_ne!(named, yaml, "no `listen.grpc: {ANY_PORT}` in the config");
            serve_ready = Some(ready);
            let path = d.join("tollgate-bound.yaml");
            std::fs::write(&path, named).unwrap();
            path
        } else {
            config_path.clone()
        };
        let bootstrap = Command::new(TOLLGATE)
            .args(["envoy-bootstrap", "--config"])
            .arg(&bootstrap_config)
            .args(["--listen", ANY_PORT, "--admin", ANY_PORT])
            .envs(provider_env())
            .envs(serve_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            bootstrap.status.success(),
            "envoy-bootstrap failed: {}",
            String::from_utf8_lossy(&bootstrap.stderr)
        );
        let bootstrap_path = d.join("envoy.yaml");
        let mut rendered = String::from_utf8(bootstrap.stdout).unwrap();
        if let Some(patch) = opts.patch_bootstrap {
            rendered = patch(rendered);
        }
        std::fs::write(&bootstrap_path, rendered).unwrap();
        let admin_file = d.join("envoy-admin.address");
        let mut envoy_p = spawn_envoy("envoy", &bootstrap_path, &admin_file, d);

        let all = &mut [&mut mock_p, &mut serve_p, &mut envoy_p];
        let serve_ready = serve_ready.unwrap_or_else(|| wait_ready_file(&serve_file, all));
        let admin = ready_addr(&serve_ready, "admin");
        let (envoy_admin, listen) = wait_envoy(&admin_file, all);
        Stack {
            dir,
            base: format!("http://{listen}"),
            mock: format!("http://{mock}"),
            admin: format!("http://{admin}"),
            envoy_admin: format!("http://{envoy_admin}"),
            config_path,
            procs: vec![mock_p, serve_p, envoy_p],
            http: ::reqwest::Client::new(),
        }
    }

    /// POSTs JSON text to the gateway with a bearer key.
    pub async fn post(&self, path: &str, key: Option<&str>, body: impl Into<String>) -> Reply {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.into());
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    /// POSTs a streaming request with the all-models key and reads the body chunk by chunk:
    /// time to the first body byte, total time, and the whole body.
    pub async fn stream_timed(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (Duration, Duration, String) {
        self.send_timed(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(KEY_ALL)
                .body(body.to_string()),
        )
        .await
    }

    /// Sends a streaming request and reads the body chunk by chunk: time to the first body
    /// byte, total time, and the whole body.
    pub async fn send_timed(&self, req: ::reqwest::RequestBuilder) -> (Duration, Duration, String) {
        let started = Instant::now();
        let mut resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut first = None;
        let mut all = Vec::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            first.get_or_insert_with(|| started.elapsed());
            all.extend_from_slice(&chunk);
        }
        (
            first.unwrap(),
            started.elapsed(),
            String::from_utf8(all).unwrap(),
        )
    }

    /// GETs a gateway path with a bearer key.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    /// What the mock provider received, oldest first.
    pub async fn upstream_requests(&self) -> Vec<serde_json::Value> {
        self.http
            .get(format!("{}/__mock/requests", self.mock))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The API requests the mock received (not the harness's readiness probes).
    pub async fn posted(&self) -> Vec<serde_json::Value> {
        let mut seen = self.upstream_requests().await;
        seen.retain(|r| r["method"] == "POST");
        seen
    }

    /// Runs the official `anthropic` SDK's checks (`tests/sdk/anthropic_sdk.py`) through the
    /// gateway with these public models; the API requests the mock received (at least one).
    pub async fn anthropic_sdk(
        &self,
        chat: &str,
        rate_limited: &str,
        stream_error: &str,
    ) -> Vec<serde_json::Value> {
        run_sdk(
            "anthropic_sdk.py",
            &[
                ("TOLLGATE_BASE_URL", &self.base),
                ("TOLLGATE_KEY", KEY_ALL),
                ("TOLLGATE_CHAT_MODEL", chat),
                ("TOLLGATE_RATE_LIMITED_MODEL", rate_limited),
                ("TOLLGATE_STREAM_ERROR_MODEL", stream_error),
                // Anthropic and Bedrock backends: JSON mode through the forced tool.
                ("TOLLGATE_JSON_MODE", "1"),
            ],
        );
        let seen = self.posted().await;
        assert!(!seen.is_empty());
        seen
    }

    /// Runs the official `openai` SDK's chat checks (`tests/sdk/openai_sdk.py`: text, streams,
    /// tool calls, a mid-stream error) through the gateway; the API requests the mock received
    /// (at least one).
    pub async fn openai_sdk_chat(&self, chat: &str, stream_error: &str) -> Vec<serde_json::Value> {
        let base = format!("{}/v1", self.base);
        run_sdk(
            "openai_sdk.py",
            &[
                ("TOLLGATE_BASE_URL", &base),
                ("TOLLGATE_KEY", KEY_ALL),
                ("TOLLGATE_CHAT_MODEL", chat),
                ("TOLLGATE_STREAM_ERROR_MODEL", stream_error),
            ],
        );
        let seen = self.posted().await;
        assert!(!seen.is_empty());
        seen
    }

    pub async fn clear_upstream_requests(&self) {
        self.http
            .delete(format!("{}/__mock/requests", self.mock))
            .send()
            .await
            .unwrap();
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn serve_log(&self) -> String {
        self.procs[1].log()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("===== {} log =====\n{}", p.name, p.log());
            }
        }
    }
}

/// A response, read whole.
pub struct Reply {
    pub status: u16,
    pub headers: ::reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub async fn from(r: ::reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        Reply {
            status,
            headers,
            text,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OpenAI-format error with this status and code, and a request id.
    pub fn assert_openai_error(&self, status: u16, code: Option<&str>) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        let v = self.json();
        let err = &v["error"];
        assert!(
            err["message"].is_string(),
            "no error.message: {}",
            self.text
        );
        assert!(err["type"].is_string(), "no error.type: {}", self.text);
        if let Some(code) = code {
            assert_eq!(err["code"], code, "body: {}", self.text);
        }
        let rid = self
            .header("x-tollgate-request-id")
            .unwrap_or_else(|| panic!("no x-tollgate-request-id on {status}: {:?}", self.headers));
        assert_eq!(rid.len(), 32);
        v
    }
}
