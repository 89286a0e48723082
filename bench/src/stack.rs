//! The system under test: starts the mock provider, `tollgate serve`, a plain Envoy and an
//! Envoy with Tollgate's ext_authz + ext_proc filters, all on free 127.0.0.1 ports, waits
//! until each answers its readiness probe, and kills each by its own PID on drop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
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

    /// Polls `url` until it answers 200, the process exits, or `timeout` passes.
    pub async fn wait_ready(&mut self, url: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match http_get(url, PROBE_TIMEOUT).await {
                Ok((status, _)) if status.is_success() => {
                    tracing::info!(name = %self.name, url, "Ready");
                    return Ok(());
                }
                Ok((status, body)) => format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready at {url} after {timeout:?} (last probe: {last}); last log lines:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
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

/// `n` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding a free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
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
        let ports = free_ports(7)?;
        let [mock, grpc_port, admin, base_listen, base_admin, gw_listen, gw_admin] =
            <[u16; 7]>::try_from(ports)
                .map_err(|_| anyhow!("free_ports returned the wrong count"))?;
        let dir = self.workdir.clone();

        // 1. Mock provider.
        let mut cmd = Command::new(tollgate);
        cmd.args(["mock", "--listen", &format!("127.0.0.1:{mock}")]);
        if let Some(ms) = opts.mock_latency_ms {
            cmd.args(["--latency-ms", &ms.to_string()]);
        }
        if let Some(ms) = opts.mock_chunk_delay_ms {
            cmd.args(["--chunk-delay-ms", &ms.to_string()]);
        }
        self.start_proc(
            "mock",
            &mut cmd,
            &format!("http://127.0.0.1:{mock}/v1/models"),
            opts,
        )
        .await?;

        // 2. Key and config for `tollgate serve`.
        let key = mint_key(tollgate).await?;
        let grpc = match opts.grpc {
            GrpcTransport::Tcp => format!("127.0.0.1:{grpc_port}"),
            GrpcTransport::Uds => format!("unix:{}", dir.join("tollgate.sock").display()),
        };
        let admin_addr = format!("127.0.0.1:{admin}");
        let config = gateway_config(
            &grpc,
            &admin_addr,
            mock,
            &key_hash(&key),
            opts.budgets,
            opts.ext_authz,
        );
        let config_path = dir.join("tollgate.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let config_arg = config_path.to_string_lossy().into_owned();

        // 3. `tollgate serve`.
        let mut cmd = Command::new(tollgate);
        cmd.args(["serve", "--config", &config_arg]);
        self.start_proc(
            "tollgate serve",
            &mut cmd,
            &format!("http://{admin_addr}/readyz"),
            opts,
        )
        .await?;

        // 4. Both Envoys, same flags; only the bootstrap differs.
        let base_boot = run_capture(
            tollgate,
            &[
                "envoy-bootstrap",
                "--plain-upstream",
                &format!("127.0.0.1:{mock}"),
                "--listen",
                &format!("127.0.0.1:{base_listen}"),
                "--admin",
                &format!("127.0.0.1:{base_admin}"),
            ],
        )
        .await?;
        let gw_boot = run_capture(
            tollgate,
            &[
                "envoy-bootstrap",
                "--config",
                &config_arg,
                "--listen",
                &format!("127.0.0.1:{gw_listen}"),
                "--admin",
                &format!("127.0.0.1:{gw_admin}"),
            ],
        )
        .await?;
        let base_id = u64::from(std::process::id()) % 100_000 * 10;
        for (i, (name, boot, admin_port)) in [
            ("envoy baseline", base_boot, base_admin),
            ("envoy gateway", gw_boot, gw_admin),
        ]
        .into_iter()
        .enumerate()
        {
            let file = dir.join(format!("{}.yaml", name.replace(' ', "-")));
            std::fs::write(&file, boot).with_context(|| format!("writing {}", file.display()))?;
            let mut cmd = Command::new(&opts.envoy);
            cmd.arg("-c")
                .arg(&file)
                .args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                ])
                .args(["--base-id", &(base_id + i as u64 + 1).to_string()]);
            self.start_proc(
                name,
                &mut cmd,
                &format!("http://127.0.0.1:{admin_port}/ready"),
                opts,
            )
            .await?;
        }

        self.endpoints = Endpoints {
            baseline_url: format!("http://127.0.0.1:{base_listen}{CHAT_PATH}"),
            gateway_url: format!("http://127.0.0.1:{gw_listen}{CHAT_PATH}"),
            key,
        };
        self.sanity_check().await
    }

    async fn start_proc(
        &mut self,
        name: &str,
        cmd: &mut Command,
        ready_url: &str,
        opts: &StackOptions,
    ) -> Result<()> {
        let log = self.workdir.join(format!("{}.log", name.replace(' ', "-")));
        self.procs.push(Proc::spawn(name, cmd, &log)?);
        if let Some(p) = self.procs.last_mut() {
            p.wait_ready(ready_url, opts.ready_timeout).await?;
        }
        Ok(())
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
        RequestSpec::post_json(
            url,
            &[(
                "authorization".to_owned(),
                format!("Bearer {}", self.endpoints.key),
            )],
            chat_body(stream),
        )
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
    fn free_ports_are_distinct() {
        let ports = free_ports(5).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
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
