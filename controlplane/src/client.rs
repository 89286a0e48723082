//! The admin API client behind `tollgate keys create|list|get|revoke|rotate --control-plane URL`
//! (HTTP/JSON; the admin token comes from `TOLLGATE_ADMIN_TOKEN`).

use std::io::Write;

use anyhow::Context as _;
use serde_json::Value;
use tollgate_core::env::EnvSource;

/// The environment variable holding the admin token.
pub const TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

/// Where the control plane is.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ControlPlaneArgs {
    /// The control plane's base URL, e.g. `http://127.0.0.1:7070` (the admin token comes from
    /// the `TOLLGATE_ADMIN_TOKEN` environment variable).
    #[arg(long = "control-plane", env = "TOLLGATE_CONTROL_PLANE")]
    pub url: String,
}

/// One `tollgate keys` call against a control plane.
#[derive(Debug, Clone)]
pub enum KeysRequest {
    /// `POST /admin/v1/keys`.
    Create {
        /// Where.
        cp: ControlPlaneArgs,
        /// The key's fields (`KeySpec`).
        body: Value,
    },
    /// `GET /admin/v1/keys`.
    List {
        /// Where.
        cp: ControlPlaneArgs,
    },
    /// `GET /admin/v1/keys/{id}`.
    Get {
        /// Where.
        cp: ControlPlaneArgs,
        /// The key's id.
        id: String,
    },
    /// `POST /admin/v1/keys/{id}/revoke`.
    Revoke {
        /// Where.
        cp: ControlPlaneArgs,
        /// The key's id.
        id: String,
    },
    /// `POST /admin/v1/keys/{id}/rotate`.
    Rotate {
        /// Where.
        cp: ControlPlaneArgs,
        /// The key's id.
        id: String,
        /// Grace period of the old secret, seconds.
        grace_secs: Option<u64>,
    },
}

/// A small admin API client.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for `base` (`http://host:port`) with an admin token.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--control-plane `{base}` must be an http:// or https:// URL");
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(AdminClient {
            base,
            token: token.to_owned(),
            http,
        })
    }

    /// Calls `method path` with an optional JSON body; the JSON answer, or an error that
    /// says what the control plane refused and why.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let code = json["error"]["code"].as_str().unwrap_or("error");
            let message = json["error"]["message"]
                .as_str()
                .map_or_else(|| text.chars().take(200).collect(), str::to_owned);
            anyhow::bail!("control plane refused {method} {path}: {status} {code}: {message}");
        }
        Ok(json)
    }
}

fn client(cp: &ControlPlaneArgs, env: &dyn EnvSource) -> anyhow::Result<AdminClient> {
    if cp.url.is_empty() {
        anyhow::bail!(
            "give the control plane with --control-plane URL (or TOLLGATE_CONTROL_PLANE)"
        );
    }
    let token = env
        .var(TOKEN_ENV)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow::anyhow!("set {TOKEN_ENV} to an admin token of the control plane"))?;
    AdminClient::new(&cp.url, &token)
}

fn segment(id: &str) -> String {
    // Ids are letters, digits and `.`, `_`, `-`, `:`; anything else is escaped.
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs one `tollgate keys` control-plane subcommand, writing its answer to `out`.
pub async fn run_keys(
    request: KeysRequest,
    env: &dyn EnvSource,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match request {
        KeysRequest::Create { cp, body } => {
            let c = client(&cp, env)?;
            let v = c
                .call(reqwest::Method::POST, "/admin/v1/keys", Some(&body))
                .await?;
            writeln!(out, "{}", v["key"].as_str().unwrap_or_default())?;
            writeln!(
                out,
                "# Give the key above to its user now: the control plane keeps only its hash."
            )?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v["record"])?)?;
        }
        KeysRequest::List { cp } => {
            let c = client(&cp, env)?;
            let v = c.call(reqwest::Method::GET, "/admin/v1/keys", None).await?;
            writeln!(
                out,
                "{:<24} {:<9} {:<16} {:<16} {:<24} EXPIRES",
                "ID", "STATUS", "TENANT", "TEAM", "MODELS"
            )?;
            for k in v["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let models: Vec<&str> = k["models"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<24} {:<9} {:<16} {:<16} {:<24} {}",
                    k["id"].as_str().unwrap_or_default(),
                    k["status"].as_str().unwrap_or_default(),
                    k["tenant"].as_str().unwrap_or("-"),
                    k["team"].as_str().unwrap_or("-"),
                    models.join(","),
                    k["expires_at"].as_str().unwrap_or("-"),
                )?;
            }
        }
        KeysRequest::Get { cp, id } => {
            let c = client(&cp, env)?;
            let v = c
                .call(
                    reqwest::Method::GET,
                    &format!("/admin/v1/keys/{}", segment(&id)),
                    None,
                )
                .await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        KeysRequest::Revoke { cp, id } => {
            let c = client(&cp, env)?;
            c.call(
                reqwest::Method::POST,
                &format!("/admin/v1/keys/{}/revoke", segment(&id)),
                None,
            )
            .await?;
            writeln!(out, "revoked key `{id}`: it no longer resolves")?;
        }
        KeysRequest::Rotate { cp, id, grace_secs } => {
            let c = client(&cp, env)?;
            let body = match grace_secs {
                Some(g) => serde_json::json!({ "grace_secs": g }),
                None => serde_json::json!({}),
            };
            let v = c
                .call(
                    reqwest::Method::POST,
                    &format!("/admin/v1/keys/{}/rotate", segment(&id)),
                    Some(&body),
                )
                .await?;
            writeln!(out, "{}", v["key"].as_str().unwrap_or_default())?;
            writeln!(
                out,
                "# The new key of `{id}`: give it to its user now; the control plane keeps only its hash."
            )?;
            match v["record"]["previous_hashes"]
                .as_array()
                .and_then(|a| a.last())
            {
                Some(p) => writeln!(
                    out,
                    "# The old key keeps working until {}.",
                    p["valid_until"].as_str().unwrap_or("?")
                )?,
                None => writeln!(out, "# The old key stopped working now.")?,
            }
        }
    }
    Ok(())
}
