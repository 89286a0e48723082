//! The control plane's YAML config: raw serde shape, validated into [`Config`] with errors
//! that name the field path. Secrets (admin tokens, signing secrets, the PostgreSQL URL) come
//! from environment variables named here, never from the file itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollgate_core::env::EnvSource;

/// The config file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The HTTP address to listen on (admin API, sidecar endpoints, `/metrics`, `/healthz`);
    /// port 0 lets the system pick one (see `--ready-file`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where keys, tenants, teams, budgets and the change feed live: `sqlite: {path}` (the
    /// default) or `postgres: {url_env}`.
    #[serde(default)]
    pub storage: RawStorage,
    /// Who may call the admin API.
    pub admin: RawAdmin,
    /// The secrets shared with the sidecars: they sign their calls and we sign bundles.
    pub signing: RawSigning,
    /// How long a resolved bundle stays valid, in seconds (`exp - iat`; 1 to 86400).
    #[serde(default = "default_bundle_ttl")]
    pub bundle_ttl_secs: u64,
    /// How many change-feed entries are kept (100 to 10000000); a sidecar that asks for
    /// changes older than that gets `reset: true` and drops its whole cache.
    #[serde(default = "default_change_history")]
    pub change_history: u64,
    /// How often the change feed is read back from storage, in milliseconds (10 to 60000):
    /// picks up writes of other control-plane replicas sharing the same PostgreSQL.
    #[serde(default = "default_feed_poll_ms")]
    pub feed_poll_ms: u64,
    /// Grace period of `POST /admin/v1/keys/{id}/rotate` when the request names none, in
    /// seconds (0 to 2592000): the old key keeps resolving that long.
    #[serde(default = "default_rotation_grace")]
    pub default_rotation_grace_secs: u64,
}

/// Where the data lives: exactly one of `sqlite` and `postgres` (neither: SQLite in
/// `tollgate-cp.db`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// One SQLite file (embedded: nothing to install). One control-plane process per file.
    #[serde(default)]
    pub sqlite: Option<RawSqlite>,
    /// A PostgreSQL database, shared by any number of control-plane replicas.
    #[serde(default)]
    pub postgres: Option<RawPostgres>,
}

/// `storage.sqlite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSqlite {
    /// The database file (created with its schema when missing).
    pub path: PathBuf,
}

/// `storage.postgres`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// The environment variable holding the connection string (`postgresql://user:pw@host/db`
    /// or `host=/run/postgresql user=... dbname=...`).
    pub url_env: String,
    /// Connections kept open (1 to 64).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

/// `admin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// The environment variable holding the admin tokens, comma-separated (each at least 16
    /// characters); `Authorization: Bearer <token>` must match one of them.
    pub tokens_env: String,
}

/// `signing`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    /// The environment variable holding the current secret (at least 32 bytes): it signs
    /// bundles, and sidecar calls signed with it are accepted.
    pub secret_env: String,
    /// During a rotation, the environment variable holding the previous secret: sidecar
    /// calls signed with it are still accepted. Remove it once every sidecar has the new one.
    #[serde(default)]
    pub previous_secret_env: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:7070".to_owned()
}
fn default_bundle_ttl() -> u64 {
    300
}
fn default_change_history() -> u64 {
    100_000
}
fn default_feed_poll_ms() -> u64 {
    500
}
fn default_rotation_grace() -> u64 {
    3600
}
fn default_pool_size() -> usize {
    4
}

/// Validated storage settings.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A SQLite file.
    Sqlite {
        /// The file.
        path: PathBuf,
    },
    /// PostgreSQL.
    Postgres {
        /// The connection string (a secret: never logged).
        url: String,
        /// Connections kept open.
        pool_size: usize,
    },
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Storage.
    pub storage: Storage,
    /// Admin tokens (secrets).
    pub admin_tokens: Vec<String>,
    /// The current signing secret.
    pub secret: Vec<u8>,
    /// The previous signing secret, during a rotation.
    pub previous_secret: Option<Vec<u8>>,
    /// Bundle lifetime in seconds.
    pub bundle_ttl_secs: u64,
    /// Change-feed entries kept.
    pub change_history: u64,
    /// Storage poll interval of the change feed, in milliseconds.
    pub feed_poll_ms: u64,
    /// Default grace of a rotation, in seconds.
    pub default_rotation_grace_secs: u64,
}

/// The longest grace period of a key rotation: 30 days.
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 24 * 3600;

impl Config {
    /// Reads and validates a config file; every problem found, each naming its field path.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        Self::parse(&text, env)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, env: &dyn EnvSource) -> Result<Config, Vec<String>> {
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            if path == "." || inner.starts_with(&format!("{path}: ")) {
                vec![inner]
            } else {
                vec![format!("{path}: {inner}")]
            }
        })?;
        raw.validate(env)
    }
}

impl RawConfig {
    /// Validates into [`Config`].
    pub fn validate(self, env: &dyn EnvSource) -> Result<Config, Vec<String>> {
        let mut errs = Vec::new();
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errs.push(format!(
                    "listen: `{}` is not an address like 127.0.0.1:7070: {e}",
                    self.listen
                ));
                None
            }
        };
        let storage = match (self.storage.sqlite, self.storage.postgres) {
            (Some(_), Some(_)) => {
                errs.push("storage: set either `sqlite` or `postgres`, not both".to_owned());
                None
            }
            (None, None) => Some(Storage::Sqlite {
                path: PathBuf::from("tollgate-cp.db"),
            }),
            (Some(s), None) => {
                if s.path.as_os_str().is_empty() {
                    errs.push("storage.sqlite.path: must not be empty".to_owned());
                }
                Some(Storage::Sqlite { path: s.path })
            }
            (None, Some(p)) => {
                if !(1..=64).contains(&p.pool_size) {
                    errs.push(format!(
                        "storage.postgres.pool_size: {} is out of range (1 to 64)",
                        p.pool_size
                    ));
                }
                match env.var(&p.url_env).filter(|v| !v.is_empty()) {
                    Some(url) => Some(Storage::Postgres {
                        url,
                        pool_size: p.pool_size,
                    }),
                    None => {
                        errs.push(format!(
                            "storage.postgres.url_env: environment variable `{}` is not set",
                            p.url_env
                        ));
                        None
                    }
                }
            }
        };
        let mut admin_tokens = Vec::new();
        match env.var(&self.admin.tokens_env) {
            Some(v) => {
                for (i, t) in v.split(',').map(str::trim).enumerate() {
                    if t.len() < 16 {
                        errs.push(format!(
                            "admin.tokens_env: token {} in `{}` is shorter than 16 characters",
                            i + 1,
                            self.admin.tokens_env
                        ));
                    } else {
                        admin_tokens.push(t.to_owned());
                    }
                }
            }
            None => errs.push(format!(
                "admin.tokens_env: environment variable `{}` is not set",
                self.admin.tokens_env
            )),
        }
        let secret = read_secret(
            env,
            "signing.secret_env",
            &self.signing.secret_env,
            &mut errs,
        );
        let previous_secret = self
            .signing
            .previous_secret_env
            .as_deref()
            .and_then(|name| read_secret(env, "signing.previous_secret_env", name, &mut errs));
        if let (Some(a), Some(b)) = (&secret, &previous_secret) {
            if a == b {
                errs.push(
                    "signing.previous_secret_env: holds the same secret as signing.secret_env"
                        .to_owned(),
                );
            }
        }
        if !(1..=86_400).contains(&self.bundle_ttl_secs) {
            errs.push(format!(
                "bundle_ttl_secs: {} is out of range (1 to 86400)",
                self.bundle_ttl_secs
            ));
        }
        if !(100..=10_000_000).contains(&self.change_history) {
            errs.push(format!(
                "change_history: {} is out of range (100 to 10000000)",
                self.change_history
            ));
        }
        if !(10..=60_000).contains(&self.feed_poll_ms) {
            errs.push(format!(
                "feed_poll_ms: {} is out of range (10 to 60000)",
                self.feed_poll_ms
            ));
        }
        if self.default_rotation_grace_secs > MAX_ROTATION_GRACE_SECS {
            errs.push(format!(
                "default_rotation_grace_secs: {} is out of range (0 to {MAX_ROTATION_GRACE_SECS})",
                self.default_rotation_grace_secs
            ));
        }
        match (listen, storage, secret) {
            (Some(listen), Some(storage), Some(secret)) if errs.is_empty() => Ok(Config {
                listen,
                storage,
                admin_tokens,
                secret,
                previous_secret,
                bundle_ttl_secs: self.bundle_ttl_secs,
                change_history: self.change_history,
                feed_poll_ms: self.feed_poll_ms,
                default_rotation_grace_secs: self.default_rotation_grace_secs,
            }),
            _ => Err(errs),
        }
    }
}

fn read_secret(
    env: &dyn EnvSource,
    path: &str,
    name: &str,
    errs: &mut Vec<String>,
) -> Option<Vec<u8>> {
    match env.var(name) {
        Some(v) if v.len() >= 32 => Some(v.into_bytes()),
        Some(_) => {
            errs.push(format!(
                "{path}: the secret in `{name}` is shorter than 32 bytes"
            ));
            None
        }
        None => {
            errs.push(format!("{path}: environment variable `{name}` is not set"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tollgate_core::env::MapEnv;

    use super::*;

    fn env() -> MapEnv {
        MapEnv(HashMap::from([
            ("CP_TOKENS".to_owned(), "admin-token-0123456789".to_owned()),
            ("CP_SECRET".to_owned(), "s".repeat(32)),
            ("CP_OLD".to_owned(), "o".repeat(32)),
        ]))
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let c = Config::parse(
            "admin: {tokens_env: CP_TOKENS}\nsigning: {secret_env: CP_SECRET}\n",
            &env(),
        )
        .unwrap();
        assert!(matches!(c.storage, Storage::Sqlite { .. }));
        let c = Config::parse(
            "storage: {sqlite: {path: /tmp/x.db}}\nadmin: {tokens_env: CP_TOKENS}\nsigning: {secret_env: CP_SECRET}\n",
            &env(),
        )
        .unwrap();
        assert!(matches!(c.storage, Storage::Sqlite { ref path } if path.ends_with("x.db")));
        assert_eq!(c.bundle_ttl_secs, 300);
        assert_eq!(c.admin_tokens, vec!["admin-token-0123456789".to_owned()]);
        assert!(c.previous_secret.is_none());
    }

    #[test]
    fn errors_name_the_field_path() {
        let errs = Config::parse(
            "admin: {tokens_env: CP_TOKENS}\nsigning: {secret_env: CP_SECRET, bogus: 1}\n",
            &env(),
        )
        .unwrap_err();
        assert!(errs[0].starts_with("signing"), "{errs:?}");
        let errs = Config::parse(
            "listen: nope\nadmin: {tokens_env: NOPE}\nsigning: {secret_env: CP_SECRET, previous_secret_env: CP_SECRET}\nbundle_ttl_secs: 0\nstorage: {postgres: {url_env: NOPE_URL}}\n",
            &env(),
        )
        .unwrap_err();
        let all = errs.join("\n");
        for want in [
            "listen:",
            "admin.tokens_env:",
            "signing.previous_secret_env:",
            "bundle_ttl_secs:",
            "storage.postgres.url_env:",
        ] {
            assert!(all.contains(want), "{want} missing in {all}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        let mut e = env();
        e.0.insert("CP_SECRET".to_owned(), "short".to_owned());
        let errs = Config::parse(
            "admin: {tokens_env: CP_TOKENS}\nsigning: {secret_env: CP_SECRET}\n",
            &e,
        )
        .unwrap_err();
        assert!(errs[0].contains("shorter than 32"), "{errs:?}");
    }
}
