//! The system under test: starts the mock provider, `tollgate serve`, a plain Envoy and an
//! Envoy with Tollgate's ext_authz + ext_proc filters, waits until each is ready, and kills
//! each by its own PID on drop. No port is guessed: each process binds 127.0.0.1 port 0 and
//! says which port it got (`tollgate mock` and `serve` through `--ready-file`, Envoy through
//! `--admin-address-path` and its admin's `/listeners`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::loadgen::{http_get, LoadClient, RequestSpec};

/// How often readiness probes are repeated.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Timeout of a one-shot helper command (`envoy-bootstrap`, `keys new`, `--version`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of each process's log shown when something fails.
const LOG_TAIL_LINES: usize = 40;

/// The listen address that lets the system pick the port.
const ANY_PORT: &str = "127.0.0.1:0";

/// Path of the chat completions endpoint both Envoys serve.
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// Model name the config maps to the mock provider.
pub const MODEL: &str = "mock-model";

/// How the gateway's gRPC services listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GrpcTransport {
    /// `127.0.0.1:PORT`.
    Tcp,
    /// A Unix socket in the work directory.
    Uds,
}

/// The response-cache scenario of the gateway (`--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// A cache policy covers the benchmark's model and every request is the same: after the
    /// first, each is answered from the cache (no provider call).
    Hit,
    /// A cache policy covers the model, and every request carries `Cache-Control: no-cache`:
    /// the key is computed and the answer stored each time, never answered from the cache
    /// (a miss's work, store included, without a lookup's hit).
    Miss,
    /// A semantic-only policy (`exact: false`) covers the model, its embedding model the
    /// mock's `mock-embed-bow`: after the first, each request is answered by meaning (one
    /// embedding call to the mock, a cosine scan, the stored answer replayed).
    Semantic,
}

/// Adds a semantic-only `cache` section (and its embedding model) for the benchmark's model.
pub fn with_semantic_cache(config: &mut serde_json::Value) {
    config["models"]["bench-embed"] =
        serde_json::json!({ "targets": [ { "provider": "mock", "model": "mock-embed-bow" } ] });
    config["cache"] = serde_json::json!({ "policies": [ {
        "name": "bench", "models": [MODEL], "exact": false,
        "semantic": { "model": "bench-embed", "threshold": 0.9 }
    } ] });
}

/// Adds a `cache` section covering the benchmark's model to `config`.
pub fn with_cache(config: &mut serde_json::Value) {
    config["cache"] = serde_json::json!({ "policies": [ { "name": "bench", "models": [MODEL] } ] });
}

/// What to start and how.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The `tollgate` binary.
    pub tollgate: PathBuf,
    /// The `envoy` binary.
    pub envoy: PathBuf,
    /// Work directory for configs, bootstraps and logs; a temporary one (deleted at the end)
    /// when `None`.
    pub workdir: Option<PathBuf>,
    /// `tollgate mock --latency-ms`, when set.
    pub mock_latency_ms: Option<u64>,
    /// `tollgate mock --chunk-delay-ms`, when set.
    pub mock_chunk_delay_ms: Option<u64>,
    /// Price the model and give the key a budget (see [`gateway_config`]).
    pub budgets: bool,
    /// Check keys in a separate ext_authz filter (see [`gateway_config`]).
    pub ext_authz: bool,
    /// How Envoy reaches `tollgate serve`.
    pub grpc: GrpcTransport,
    /// How long each process may take to become ready.
    pub ready_timeout: Duration,
    /// The response-cache scenario (`None`: no cache section).
    pub cache: Option<CacheMode>,
    /// Add the failover benchmark's models to the gateway's config
    /// ([`crate::failover::add_failover_models`]).
    pub failover_models: bool,
}

/// A child process killed (SIGKILL, by its own PID) and reaped on drop; output goes to a log.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout + stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        tracing::info!(name, pid = child.id(), "Started process");
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// Errors (with the log tail) if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} (pid {}) exited with {status}; last log lines:\n{}",
                self.name,
                self.child.id(),
                self.log_tail()
            ),
        }
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, LOG_TAIL_LINES)
    }

    /// Waits until the process has written its `--ready-file` (written, then renamed: there
    /// means complete) and returns the file's JSON.
    pub async fn wait_ready_file(
        &mut self,
        file: &Path,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = std::fs::read_to_string(file) {
                tracing::info!(name = %self.name, "Ready");
                return serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON: {text}", file.display()));
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "{} did not write {} within {timeout:?}; last log lines:\n{}",
                    self.name,
                    file.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Waits until this Envoy, started with `--admin-address-path admin_file`, is ready;
    /// returns its listener's address (read from the admin's `/listeners?format=json`).
    pub async fn wait_envoy(&mut self, admin_file: &Path, timeout: Duration) -> Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            // Envoy writes the file in place: empty or unparsable means not yet.
            let admin = std::fs::read_to_string(admin_file)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            let mut last = format!("no admin address in {} yet", admin_file.display());
            if let Some(admin) = admin {
                match envoy_listener(admin).await {
                    Ok(listener) => {
                        tracing::info!(name = %self.name, %listener, "Ready");
                        return Ok(listener);
                    }
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {timeout:?} ({last}); last log lines:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

/// Once the Envoy with admin endpoint `admin` is ready, the address its (only) listener is
/// bound to.
async fn envoy_listener(admin: SocketAddr) -> Result<SocketAddr> {
    let (status, _) = http_get(&format!("http://{admin}/ready"), PROBE_TIMEOUT).await?;
    if !status.is_success() {
        bail!("Envoy's /ready answers {status}");
    }
    let (_, body) = http_get(
        &format!("http://{admin}/listeners?format=json"),
        PROBE_TIMEOUT,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let socket = &v["listener_statuses"][0]["local_address"]["socket_address"];
    let listener = SocketAddr::new(
        socket["address"]
            .as_str()
            .context("no listener address")?
            .parse()?,
        u16::try_from(socket["port_value"].as_u64().context("no listener port")?)?,
    );
    if listener.port() == 0 {
        bail!("the listener is not bound yet");
    }
    Ok(listener)
}

/// An address from a ready file's field.
fn ready_addr(ready: &serde_json::Value, field: &str) -> Result<SocketAddr> {
    ready[field]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address `{field}` in the ready file {ready}"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Kill only our own child, by its PID, and reap it so no zombie is left.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        tracing::debug!(name = %self.name, pid = self.child.id(), "Stopped process");
    }
}

/// The last `n` lines of a file (reads at most the final 64 KiB).
fn tail_file(path: &Path, n: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// `sha256:<hex>` of a key, the form the config stores.
pub fn key_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// Runs a helper command to completion (bounded) and returns its stdout; errors carry stderr.
pub async fn run_capture(program: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let shown = format!("{} {}", program.display(), args.join(" "));
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("`{shown}` timed out"))?
        .with_context(|| format!("running `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}

/// The Tollgate config the gateway runs with (written as YAML).
pub fn gateway_config(
    grpc: &str,
    admin: &str,
    mock_port: u16,
    key_hash: &str,
    budgets: bool,
    ext_authz: bool,
) -> serde_json::Value {
    let mut config = serde_json::json!({
        "listen": { "grpc": grpc, "admin": admin },
        "providers": {
            "mock": { "kind": "openai", "base_url": format!("http://127.0.0.1:{mock_port}/v1") }
        },
        "models": {
            MODEL: { "targets": [ { "provider": "mock", "model": MODEL } ] }
        },
        "keys": [ { "id": "bench", "hash": key_hash, "models": ["*"] } ]
    });
    if ext_authz {
        // Left out otherwise, so a tollgate built before the `envoy` section still runs.
        config["envoy"] = serde_json::json!({ "auth": "ext_authz" });
    }
    if budgets {
        // A price, and a monthly key budget no benchmark exhausts: every request is
        // prechecked by ext_authz, reserved (tokenizer estimate) and settled by ext_proc.
        config["pricing"] =
            serde_json::json!({ "models": { MODEL: { "input": "1", "output": "2" } } });
        config["budgets"] = serde_json::json!({ "limits": [
            { "id": "bench", "scope": "key", "period": "monthly", "amount_usd": "1000000" }
        ] });
    }
    config
}

/// The request body for the benchmark: a small chat completion, optionally streaming.
pub fn chat_body(stream: bool) -> Bytes {
    let mut body = serde_json::json!({
        "model": MODEL,
        "messages": [ { "role": "user", "content": "hello benchmark" } ],
        "max_tokens": 16
    });
    if stream {
        body["stream"] = serde_json::Value::Bool(true);
    }
    Bytes::from(body.to_string())
}

/// Where the running stack can be reached.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Plain Envoy (no filters) → mock.
    pub baseline_url: String,
    /// Envoy + ext_authz + ext_proc → mock.
    pub gateway_url: String,
    /// The virtual key the gateway accepts. Secret-ish: never logged.
    pub key: String,
}

/// All processes of one benchmark run. Dropping it kills them (newest first).
pub struct Stack {
    workdir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    procs: Vec<Proc>,
    /// Where to send requests.
    pub endpoints: Endpoints,
    /// The response-cache scenario the gateway runs.
    cache: Option<CacheMode>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

impl Stack {
    /// Starts everything and waits until it is ready and answers a sanity request.
    pub async fn start(opts: &StackOptions) -> Result<Self> {
        let (tempdir, workdir) = match &opts.workdir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("tollgate-bench-")
                    .tempdir()?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        tracing::info!(workdir = %workdir.display(), "Starting the stack");
        let mut stack = Stack {
            workdir,
            _tempdir: tempdir,
            procs: Vec::new(),
            endpoints: Endpoints {
                baseline_url: String::new(),
                gateway_url: String::new(),
                key: String::new(),
            },
            cache: opts.cache,
        };
        // On failure `stack` is dropped here, which kills whatever was started.
        stack.boot(opts).await?;
        Ok(stack)
    }

    /// The PID of the process started as `name` (`tollgate serve`, `envoy gateway`, ...).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Errors if any process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }

    /// The last log lines of every process, for failure reports.
    pub fn log_tails(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "----- {} ({}) -----\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn boot(&mut self, opts: &StackOptions) -> Result<()> {
        let tollgate = &opts.tollgate;
        let dir = self.workdir.clone();

        // 1. Mock provider.
        let mut cmd = Command::new(tollgate);
        cmd.args(["mock", "--listen", ANY_PORT]);
        if let Some(ms) = opts.mock_latency_ms {
            cmd.args(["--latency-ms", &ms.to_string()]);
        }
        if let Some(ms) = opts.mock_chunk_delay_ms {
            cmd.args(["--chunk-delay-ms", &ms.to_string()]);
        }
        let ready = self.start_reporting("mock", &mut cmd, opts).await?;
        let mock = ready_addr(&ready, "listen")?;

        // 2. Key and config for `tollgate serve`.
        let key = mint_key(tollgate).await?;
        let grpc = match opts.grpc {
            GrpcTransport::Tcp => ANY_PORT.to_owned(),
            GrpcTransport::Uds => format!("unix:{}", dir.join("tollgate.sock").display()),
        };
        let config = |grpc: &str| {
            let mut c = gateway_config(
                grpc,
                ANY_PORT,
                mock.port(),
                &key_hash(&key),
                opts.budgets,
                opts.ext_authz,
            );
            match opts.cache {
                Some(CacheMode::Semantic) => with_semantic_cache(&mut c),
                Some(CacheMode::Hit | CacheMode::Miss) => with_cache(&mut c),
                None => {}
            }
            if opts.failover_models {
                crate::failover::add_failover_models(&mut c);
            }
            c
        };
        let config_path = dir.join("tollgate.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config(&grpc))?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let config_arg = config_path.to_string_lossy().into_owned();

        // 3. `tollgate serve`.
        let mut cmd = Command::new(tollgate);
        cmd.args(["serve", "--config", &config_arg]);
        let ready = self
            .start_reporting("tollgate serve", &mut cmd, opts)
            .await?;
        // Envoy is pointed at the gRPC address `serve` bound.
        let bound_path = dir.join("tollgate-bound.yaml");
        let bound_grpc = ready["grpc"]
            .as_str()
            .with_context(|| format!("no `grpc` in serve's ready file {ready}"))?;
        std::fs::write(&bound_path, serde_yaml::to_string(&config(bound_grpc))?)
            .with_context(|| format!("writing {}", bound_path.display()))?;
        let bound_arg = bound_path.to_string_lossy().into_owned();

        // 4. Both Envoys, same flags; only the bootstrap differs.
        let base_boot = run_capture(
            tollgate,
            &[
                "envoy-bootstrap",
                "--plain-upstream",
                &mock.to_string(),
                "--listen",
                ANY_PORT,
                "--admin",
                ANY_PORT,
            ],
        )
        .await?;
        let gw_boot = run_capture(
            tollgate,
            &[
                "envoy-bootstrap",
                "--config",
                &bound_arg,
                "--listen",
                ANY_PORT,
                "--admin",
                ANY_PORT,
            ],
        )
        .await?;
        let base_id = u64::from(std::process::id()) % 100_000 * 10;
        let mut listeners = Vec::new();
        for (i, (name, boot)) in [("envoy baseline", base_boot), ("envoy gateway", gw_boot)]
            .into_iter()
            .enumerate()
        {
            let stem = name.replace(' ', "-");
            let file = dir.join(format!("{stem}.yaml"));
            std::fs::write(&file, boot).with_context(|| format!("writing {}", file.display()))?;
            let admin_file = dir.join(format!("{stem}.admin-address"));
            let mut cmd = Command::new(&opts.envoy);
            cmd.arg("-c")
                .arg(&file)
                .arg("--admin-address-path")
                .arg(&admin_file)
                .args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                ])
                .args(["--base-id", &(base_id + i as u64 + 1).to_string()]);
            let log = dir.join(format!("{stem}.log"));
            self.procs.push(Proc::spawn(name, &mut cmd, &log)?);
            if let Some(p) = self.procs.last_mut() {
                listeners.push(p.wait_envoy(&admin_file, opts.ready_timeout).await?);
            }
        }
        let [base_listen, gw_listen] = <[SocketAddr; 2]>::try_from(listeners)
            .map_err(|_| anyhow!("expected the listeners of two Envoys"))?;

        self.endpoints = Endpoints {
            baseline_url: format!("http://{base_listen}{CHAT_PATH}"),
            gateway_url: format!("http://{gw_listen}{CHAT_PATH}"),
            key,
        };
        self.sanity_check().await
    }

    /// Starts `cmd` (a `tollgate` subcommand) with `--ready-file` and waits for the file;
    /// returns its JSON.
    async fn start_reporting(
        &mut self,
        name: &str,
        cmd: &mut Command,
        opts: &StackOptions,
    ) -> Result<serde_json::Value> {
        let stem = name.replace(' ', "-");
        let ready = self.workdir.join(format!("{stem}.ready"));
        if ready.exists() {
            std::fs::remove_file(&ready)
                .with_context(|| format!("removing the stale {}", ready.display()))?;
        }
        cmd.arg("--ready-file").arg(&ready);
        let log = self.workdir.join(format!("{stem}.log"));
        self.procs.push(Proc::spawn(name, cmd, &log)?);
        match self.procs.last_mut() {
            Some(p) => p.wait_ready_file(&ready, opts.ready_timeout).await,
            None => bail!("{name} was not started"),
        }
    }

    /// One plain and one streaming request through each Envoy must succeed before measuring.
    async fn sanity_check(&mut self) -> Result<()> {
        let client = LoadClient::new(4, Duration::from_secs(10));
        for (name, url) in [
            ("baseline", self.endpoints.baseline_url.clone()),
            ("gateway", self.endpoints.gateway_url.clone()),
        ] {
            for stream in [false, true] {
                let spec = self.request(&url, stream)?;
                let (status, body) = client.fetch(&spec).await?;
                let text = String::from_utf8_lossy(&body);
                let shape_ok = if stream {
                    text.contains("data:")
                } else {
                    text.contains("choices")
                };
                if !status.is_success() || !shape_ok {
                    bail!(
                        "sanity request (stream={stream}) through the {name} Envoy got HTTP {status}: {}\n{}",
                        text.chars().take(500).collect::<String>(),
                        self.log_tails()
                    );
                }
            }
        }
        tracing::info!("Sanity requests succeeded through both Envoys");
        Ok(())
    }

    /// The benchmark request to `url` with the gateway key.
    pub fn request(&self, url: &str, stream: bool) -> Result<RequestSpec> {
        let mut headers = vec![(
            "authorization".to_owned(),
            format!("Bearer {}", self.endpoints.key),
        )];
        if self.cache == Some(CacheMode::Miss) {
            headers.push(("cache-control".to_owned(), "no-cache".to_owned()));
        }
        RequestSpec::post_json(url, &headers, chat_body(stream))
    }
}

/// A virtual key from `tollgate keys new` (first stdout line), or a locally generated one
/// if that command fails. The config stores only its hash, which we compute ourselves.
async fn mint_key(tollgate: &Path) -> Result<String> {
    match run_capture(tollgate, &["keys", "new", "--id", "bench"]).await {
        Ok(out) => {
            let first = out.lines().next().unwrap_or_default().trim().to_owned();
            if first.starts_with("tg-") {
                return Ok(first);
            }
            tracing::warn!(
                "`tollgate keys new` did not print a tg- key on its first line; generating one"
            );
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "`tollgate keys new` failed; generating a key")
        }
    }
    let seed = format!("{:?}{}", Instant::now(), std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{seed}{nanos}").as_bytes());
    Ok(format!("tg-bench-{}", hex::encode(&digest[..16])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_sha256_hex() {
        // sha256("abc")
        assert_eq!(
            key_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn config_has_the_documented_shape() {
        let c = gateway_config("127.0.0.1:1", "127.0.0.1:2", 3, "sha256:ab", false, false);
        let yaml = serde_yaml::to_string(&c).unwrap();
        let back: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(
            back["providers"]["mock"]["base_url"],
            "http://127.0.0.1:3/v1"
        );
        assert_eq!(back["models"][MODEL]["targets"][0]["provider"], "mock");
        assert_eq!(back["keys"][0]["hash"], "sha256:ab");
        assert_eq!(back["listen"]["grpc"], "127.0.0.1:1");
        assert!(back.get("envoy").is_none(), "{back}");
        let c = gateway_config("127.0.0.1:1", "127.0.0.1:2", 3, "sha256:ab", false, true);
        assert_eq!(c["envoy"]["auth"], "ext_authz");
    }

    #[test]
    fn the_semantic_scenario_adds_an_embedding_model_and_a_semantic_only_policy() {
        let mut c = gateway_config("127.0.0.1:1", "127.0.0.1:2", 3, "sha256:ab", false, false);
        with_semantic_cache(&mut c);
        assert_eq!(
            c["models"]["bench-embed"]["targets"][0]["model"],
            "mock-embed-bow"
        );
        let p = &c["cache"]["policies"][0];
        assert_eq!(p["exact"], false);
        assert_eq!(p["semantic"]["model"], "bench-embed");
        assert_eq!(p["models"][0], MODEL);
    }

    #[test]
    fn chat_body_adds_stream_only_when_asked() {
        let plain: serde_json::Value = serde_json::from_slice(&chat_body(false)).unwrap();
        let stream: serde_json::Value = serde_json::from_slice(&chat_body(true)).unwrap();
        assert!(plain.get("stream").is_none());
        assert_eq!(stream["stream"], true);
        assert_eq!(plain["max_tokens"], 16);
    }

    #[test]
    fn proc_is_killed_on_drop_and_tail_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let mut p = Proc::spawn("sleep", &mut cmd, &log).unwrap();
        let pid = p.child.id();
        p.check_alive().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(p.log_tail().contains("started"));
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
    }
}
