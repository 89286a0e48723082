//! Test harness: an in-process control plane on port 0 (SQLite in a temp dir, or a real
//! PostgreSQL 15 cluster the test starts itself), and HTTP helpers for admin and signed calls.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tollgate_controlplane::sign;
use tollgate_core::env::MapEnv;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";
pub const SECRET: &str = "current-signing-secret-for-tests-000001";
pub const OLD_SECRET: &str = "previous-signing-secret-for-tests-00001";

/// A PostgreSQL 15 cluster in a temp dir, listening on a Unix socket in that dir only (no TCP
/// port at all, so nothing to guess or collide on). Stopped on drop.
pub struct Pg {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Pg {
    /// Starts a cluster; `None` (after saying why) when PostgreSQL 15 is not installed.
    pub fn start() -> Option<Pg> {
        let bin = PathBuf::from(PG_BIN);
        if !bin.join("initdb").exists() {
            eprintln!(
                "SKIPPED: PostgreSQL 15 binaries not found in {PG_BIN} (Debian package postgresql-15; scripts/test.sh installs it)"
            );
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // initdb refuses to run as root: run the server as the `postgres` user then.
        let as_postgres = is_root();
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let pg = Pg {
            _dir: tmp,
            dir,
            bin,
            as_postgres,
        };
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "tollgate",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let opts = format!(
            "-k {} -c listen_addresses='' -p 5432 -F -c max_connections=50",
            pg.dir.display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                pg.dir.join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Some(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A connection string for database `postgres`.
    pub fn url(&self) -> String {
        format!(
            "host={} port=5432 user=tollgate dbname=postgres",
            self.dir.display()
        )
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let exe = self.bin.join("pg_ctl");
        let args = [
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            "immediate",
            "stop",
        ];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Which storage a control plane uses in a test.
pub enum Backend<'a> {
    Sqlite(&'a Path),
    Postgres(&'a Pg),
}

/// An in-process control plane, stopped on drop.
pub struct Cp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

#[derive(Default)]
pub struct Options {
    pub previous_secret: bool,
    pub extra: String,
}

impl Cp {
    pub async fn start(backend: Backend<'_>) -> Cp {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend<'_>, opts: Options) -> Cp {
        let mut env = HashMap::from([
            (
                "CP_TOKENS".to_owned(),
                format!("other-admin-token-00000,{ADMIN_TOKEN}"),
            ),
            ("CP_SECRET".to_owned(), SECRET.to_owned()),
            ("CP_OLD_SECRET".to_owned(), OLD_SECRET.to_owned()),
        ]);
        let storage = match backend {
            Backend::Sqlite(dir) => format!(
                "storage: {{sqlite: {{path: {:?}}}}}",
                dir.join("cp.db").display().to_string()
            ),
            Backend::Postgres(pg) => {
                env.insert("CP_PG".to_owned(), pg.url());
                "storage: {postgres: {url_env: CP_PG, pool_size: 4}}".to_owned()
            }
        };
        let previous = if opts.previous_secret {
            ", previous_secret_env: CP_OLD_SECRET"
        } else {
            ""
        };
        let yaml = format!(
            "listen: 127.0.0.1:0\n{storage}\nadmin: {{tokens_env: CP_TOKENS}}\nsigning: {{secret_env: CP_SECRET{previous}}}\nfeed_poll_ms: 100\n{}",
            opts.extra
        );
        let config = tollgate_controlplane::Config::parse(&yaml, &MapEnv(env)).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tollgate_controlplane::start(config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        Cp {
            addr: running.addr,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(running.task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// An admin call with the right token.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.admin_as(Some(ADMIN_TOKEN), method, path, body).await
    }

    pub async fn admin_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A raw admin call with a body as given.
    pub async fn admin_raw(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A sidecar call signed with `secret` at time `t` (None: no signature).
    pub async fn signed_with(
        &self,
        secret: Option<&str>,
        t: i64,
        method: &str,
        path_and_query: &str,
        body: &str,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.url(path_and_query));
        if let Some(s) = secret {
            let sig = sign::sign_request(s.as_bytes(), t, method, path_and_query, body.as_bytes())
                .unwrap();
            req = req.header(sign::SIGNATURE_HEADER, sig);
        }
        if method == "POST" {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn resolve(&self, hash: &str) -> (u16, Value) {
        let body = serde_json::json!({ "hash": hash }).to_string();
        self.signed_with(Some(SECRET), now(), "POST", "/v1/resolve-key", &body)
            .await
    }

    pub async fn changes(&self, since: i64, wait_secs: u64) -> (u16, Value) {
        let pq = format!("/v1/changes?since={since}&wait_secs={wait_secs}");
        self.signed_with(Some(SECRET), now(), "GET", &pq, "").await
    }

    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Verifies a bundle with `secret` (HS256) and returns its claims.
pub fn claims(bundle: &str, secret: &str) -> Value {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims.clear();
    let header = jsonwebtoken::decode_header(bundle).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    jsonwebtoken::decode::<Value>(
        bundle,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .unwrap()
    .claims
}

/// `sha256:<hex>` of a raw key.
pub fn hash_of(raw: &str) -> String {
    tollgate_core::keys::format_hash(&tollgate_core::keys::hash_key(raw))
}
