//! `tollgate up`: a local all-in-one for a newcomer. Starts the built-in mock provider, the
//! logger (NDJSON files under `<dir>/events`) and `serve` in this process and Envoy as a child,
//! writes a config with a fresh key, and prints a curl that works. With `OPENAI_API_KEY` set, OpenAI models are added next to the mock.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tollgate_core::keys;

use crate::bootstrap::{self, EnvoyOptions};
use crate::envoy_admin;

/// Options of `tollgate up`. A port of 0 lets the system pick a free one; the greeting shows
/// the ports in use.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Envoy's client-facing port.
    pub port: u16,
    /// Envoy's admin port.
    pub envoy_admin_port: u16,
    /// Tollgate's admin port.
    pub admin_port: u16,
    /// Where the config, bootstrap and socket go.
    pub dir: PathBuf,
    /// An explicit Envoy binary.
    pub envoy: Option<PathBuf>,
}

fn ensure_free(port: u16, flag: &str) -> anyhow::Result<SocketAddr> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("port {port} is busy: stop what uses it or pass {flag} PORT"))?;
    Ok(addr)
}

/// The config `up` writes: the mock, OpenAI when a key is in the environment, and logging to
/// the in-process logger at `logger` (spool under `dir`).
pub fn local_config(
    dir: &std::path::Path,
    mock: SocketAddr,
    admin: SocketAddr,
    logger: SocketAddr,
    key_hash: &str,
    openai: bool,
) -> String {
    let mut yaml = format!(
        r#"# Written by `tollgate up`. Edit freely: `tollgate serve` reloads it on change.
listen:
  grpc: "unix:{sock}"
  admin: "{admin}"
providers:
  mock:
    kind: openai
    base_url: "http://{mock}/v1"
  # The same mock speaking Anthropic's Messages API.
  mock-anthropic:
    kind: anthropic
    base_url: "http://{mock}/v1"
"#,
        sock = dir.join("tollgate.sock").display(),
    );
    if openai {
        yaml.push_str(
            r#"  openai:
    kind: openai
    base_url: "https://api.openai.com/v1"
    credential: { env: OPENAI_API_KEY }
"#,
        );
    }
    yaml.push_str(
        r#"models:
  mock-model:
    targets: [{ provider: mock, model: mock-model }]
  mock-embedding:
    targets: [{ provider: mock, model: mock-embedding }]
  mock-claude:
    targets: [{ provider: mock-anthropic, model: mock-claude }]
"#,
    );
    if openai {
        yaml.push_str(
            r#"  gpt-4o-mini:
    targets: [{ provider: openai, model: gpt-4o-mini }]
  gpt-4o:
    targets: [{ provider: openai, model: gpt-4o }]
  text-embedding-3-small:
    targets: [{ provider: openai, model: text-embedding-3-small }]
"#,
        );
    }
    yaml.push_str(&format!(
        "keys:\n  - id: local-dev\n    hash: \"{key_hash}\"\n    tenant: local\n    models: [\"*\"]\n"
    ));
    yaml.push_str(&format!(
        "logging:\n  address: \"{logger}\"\n  spool_dir: \"{}\"\n  max_delay_ms: 200\n",
        dir.join("spool").display()
    ));
    // No load balancer to wait for on a laptop: Ctrl-C drains at once.
    yaml.push_str("shutdown:\n  pre_drain_wait_ms: 0\n  drain_timeout_ms: 5000\n");
    yaml
}

/// The longest `serve` may take to become ready (it loads tokenizers, slow in debug builds).
const SERVE_READY: Duration = Duration::from_secs(60);

/// Waits until Envoy, started with `--admin-address-path admin_file`, is ready; returns its
/// admin address (from the file) and its listener's (from the admin's `/listeners`), which
/// port 0 in the bootstrap leaves to the system.
async fn wait_envoy(
    admin_file: &std::path::Path,
    child: &mut tokio::process::Child,
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    // 30 s: a cold Envoy on a busy machine takes a while.
    for _ in 0..600 {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("Envoy exited during start-up ({status}); see its log above");
        }
        let file = admin_file.to_owned();
        if let Ok(Some(addresses)) =
            tokio::task::spawn_blocking(move || envoy_admin::ready(&file)).await
        {
            return Ok(addresses);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("Envoy did not become ready within 30 s; see its log above")
}

/// Runs the all-in-one until Ctrl-C.
pub async fn up(o: UpOptions) -> anyhow::Result<()> {
    let envoy_bin = bootstrap::find_envoy(o.envoy.as_deref())?;
    let listen = ensure_free(o.port, "--port")?;
    let envoy_admin = ensure_free(o.envoy_admin_port, "--envoy-admin-port")?;
    let admin = ensure_free(o.admin_port, "--admin-port")?;
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("cannot create {}", o.dir.display()))?;
    let dir = std::fs::canonicalize(&o.dir)?;

    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mock = mock_listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut mock_stop = stop_rx.clone();
    let mock_task = tokio::spawn(tollgate_mock::serve(
        mock_listener,
        tollgate_mock::MockConfig::default(),
        async move {
            let _ = mock_stop.changed().await;
        },
    ));

    // The logger, in process: every request lands in <dir>/events/*.ndjson.
    let logger_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let logger_addr = logger_listener.local_addr()?;
    let events_dir = dir.join("events");
    let (logger_stop_tx, logger_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let logger_task = tokio::spawn(tollgate_logger::serve(
        logger_listener,
        tollgate_logger::LoggerConfig::new(logger_addr, events_dir.clone()),
        async move {
            let _ = logger_stop_rx.await;
        },
    ));

    let key = keys::generate_key();
    let openai = std::env::var("OPENAI_API_KEY").is_ok_and(|k| !k.trim().is_empty());
    let config_path = dir.join("tollgate.yaml");
    std::fs::write(
        &config_path,
        local_config(
            &dir,
            mock,
            admin,
            logger_addr,
            &keys::format_hash(&keys::hash_key(&key)),
            openai,
        ),
    )?;
    let config = crate::serve::load_config(&config_path)?;
    let bootstrap_path = dir.join("envoy.yaml");
    std::fs::write(
        &bootstrap_path,
        bootstrap::gateway(&config, &EnvoyOptions::new(listen, envoy_admin))?,
    )?;

    let mut serve_stop = stop_rx.clone();
    let serve_path = config_path.clone();
    let (serve_ready, serve_bound) = tokio::sync::oneshot::channel();
    let serve_task = tokio::spawn(async move {
        crate::serve::serve_reporting(&serve_path, serve_ready, async move {
            let _ = serve_stop.changed().await;
        })
        .await
    });

    let admin_file = dir.join("envoy-admin.address");
    if admin_file.exists() {
        std::fs::remove_file(&admin_file)
            .with_context(|| format!("cannot remove the stale {}", admin_file.display()))?;
    }
    let mut envoy = tokio::process::Command::new(&envoy_bin)
        .arg("-c")
        .arg(&bootstrap_path)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .args([
            "--log-level",
            "warning",
            "--use-dynamic-base-id",
            "--concurrency",
            "2",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start Envoy at {}", envoy_bin.display()))?;
    let started = match wait_envoy(&admin_file, &mut envoy).await {
        // `serve` says where its admin endpoint is once it is ready (or stops trying).
        Ok((envoy_admin, listen)) => match tokio::time::timeout(SERVE_READY, serve_bound).await {
            Ok(Ok(bound)) => Ok((envoy_admin, listen, bound.admin)),
            Ok(Err(_)) => Err(anyhow::anyhow!("serve stopped during start-up")),
            Err(_) => Err(anyhow::anyhow!(
                "serve did not become ready within {} s; see its log above",
                SERVE_READY.as_secs()
            )),
        },
        Err(e) => Err(e),
    };
    let (envoy_admin, listen, admin) = match started {
        Ok(addresses) => addresses,
        Err(e) => {
            let _ = envoy.start_kill();
            let _ = stop_tx.send(true);
            let _ = logger_stop_tx.send(());
            // Why `serve` stopped, when it did, says more than that it stopped.
            if let Ok(Ok(Err(serve_error))) =
                tokio::time::timeout(Duration::from_secs(5), serve_task).await
            {
                return Err(serve_error);
            }
            return Err(e);
        }
    };

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nTollgate is up: Envoy on http://{listen}, the mock provider behind it.\n"
    )?;
    writeln!(
        out,
        "Your key (shown once; only its hash is in {}):\n  {key}\n",
        config_path.display()
    )?;
    writeln!(out, "Try it:\n")?;
    writeln!(
        out,
        "  curl -s http://{listen}/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"mock-model\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello Tollgate\"}}]}}'\n"
    )?;
    writeln!(
        out,
        "  curl -s http://{listen}/v1/messages \\\n    -H 'x-api-key: {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"mock-model\",\"max_tokens\":100,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello from the Anthropic API\"}}]}}'\n"
    )?;
    writeln!(
        out,
        "  curl -s http://{listen}/v1/models -H 'Authorization: Bearer {key}'\n"
    )?;
    if openai {
        writeln!(out, "OpenAI is configured from OPENAI_API_KEY: models gpt-4o-mini, gpt-4o, text-embedding-3-small.")?;
    } else {
        writeln!(
            out,
            "To reach OpenAI too: `export OPENAI_API_KEY=sk-...` and run `tollgate up` again;"
        )?;
        writeln!(
            out,
            "models gpt-4o-mini, gpt-4o and text-embedding-3-small then route to api.openai.com."
        )?;
    }
    writeln!(
        out,
        "Every request is logged, one JSON line each, in {}/events-*.ndjson",
        events_dir.display()
    )?;
    writeln!(out, "Metrics: http://{admin}/metrics   Envoy admin: http://{envoy_admin}\nCtrl-C stops everything.")?;
    drop(out);

    tokio::select! {
        _ = crate::serve::shutdown_signal() => {}
        status = envoy.wait() => tracing::error!(status = ?status, "Envoy exited"),
    }
    let _ = envoy.start_kill();
    let _ = stop_tx.send(true);
    let _ = mock_task.await;
    let served = serve_task.await.context("serve task failed");
    // `serve` has drained its log queue into the logger by now: stop the logger last.
    let _ = logger_stop_tx.send(());
    let logged = logger_task.await.context("logger task failed");
    served??;
    logged??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::env::MapEnv;

    #[test]
    fn the_local_config_validates_and_logs_to_the_in_process_logger() {
        let dir = std::path::Path::new("/tmp/tollgate-up");
        let yaml = local_config(
            dir,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
            &keys::format_hash(&keys::hash_key("tg-test")),
            true,
        );
        let env = MapEnv::from_pairs([("OPENAI_API_KEY", "sk-test")]);
        let c = tollgate_core::Config::from_yaml(&yaml, &env).unwrap();
        let l = c.logging.unwrap();
        assert_eq!(l.address, "127.0.0.1:3");
        assert_eq!(l.spool_dir, dir.join("spool"));
        assert!(c.models.contains_key("gpt-4o-mini"));
    }
}
