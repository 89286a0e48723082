//! The `control_plane` section: where `serve` resolves keys its file does not list
//! (`tollgate control-plane`, HTTP `POST /v1/resolve-key` answering HS256-signed bundles), the
//! shared secret that signs the calls and verifies the bundles, and the bundle cache's limits.

use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{missing_secret, Errors, Secret};
use crate::env::EnvSource;

/// The `control_plane` section. The URL and cache limits are read once at start-up; the
/// secrets follow every config reload (so removing `previous_secret_env` ends a rotation's
/// overlap without a restart).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlPlane {
    /// The control plane's base URL, `http://` or `https://` (e.g.
    /// `http://tollgate-control-plane:7070`); `/v1/resolve-key` and `/v1/changes` are added.
    pub url: String,
    /// The name of the environment variable holding the shared signing secret (at least 32
    /// bytes): it signs every call to the control plane and verifies every bundle.
    pub secret_env: String,
    /// During a secret rotation, the name of the environment variable holding the previous
    /// secret: bundles signed with it still verify (`serve` warns at start while it is set).
    /// Remove it to end the overlap: bundles cached under it are then refused.
    #[serde(default)]
    pub previous_secret_env: Option<String>,
    /// A cached bundle older than this (or past the bundle's own `exp`) is refreshed in the
    /// background on its next use (the request is served from the cache meanwhile), in
    /// seconds (1 to 86400).
    #[serde(default = "default_soft_ttl_secs")]
    pub soft_ttl_secs: u64,
    /// A cached bundle older than this is no longer served: while the control plane is down,
    /// cached bundles serve until then (a bundle's `exp` is checked when it arrives, not
    /// after). In seconds, at least `soft_ttl_secs` (up to 604800).
    #[serde(default = "default_hard_ttl_secs")]
    pub hard_ttl_secs: u64,
    /// How long a key the control plane does not know (404) is refused from the cache
    /// without asking again, in seconds (1 to 3600). A key created meanwhile reaches the
    /// sidecar sooner through the change feed.
    #[serde(default = "default_negative_ttl_secs")]
    pub negative_ttl_secs: u64,
    /// The longest one `resolve-key` call may take, in milliseconds (1 to 10000). Keep it
    /// below Envoy's ext_authz / ext_proc timeout, so a slow control plane meets the clear
    /// 503 rather than Envoy's own.
    #[serde(default = "default_cp_timeout_ms")]
    pub timeout_ms: u64,
    /// The most keys (found or unknown) kept in the cache (1 to 10000000); the least used go
    /// first.
    #[serde(default = "default_max_cached_keys")]
    pub max_cached_keys: u64,
    /// How long one long-poll of the change feed (`GET /v1/changes`) waits for a change, in
    /// seconds (1 to 30).
    #[serde(default = "default_feed_wait_secs")]
    pub feed_wait_secs: u64,
}

fn default_soft_ttl_secs() -> u64 {
    60
}

fn default_hard_ttl_secs() -> u64 {
    3_600
}

fn default_negative_ttl_secs() -> u64 {
    10
}

fn default_cp_timeout_ms() -> u64 {
    500
}

fn default_max_cached_keys() -> u64 {
    100_000
}

fn default_feed_wait_secs() -> u64 {
    25
}

/// One accepted signing secret, with a fingerprint (SHA-256 of the secret) that cached
/// bundles remember, so a bundle whose secret is no longer accepted is refused from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningSecret {
    /// The secret.
    pub value: Secret,
    /// SHA-256 of the secret (not secret itself: never logged anyway).
    pub fingerprint: [u8; 32],
}

impl SigningSecret {
    /// A secret and its fingerprint.
    pub fn new(value: String) -> Self {
        let fingerprint = Sha256::digest(value.as_bytes()).into();
        Self {
            value: Secret::new(value),
            fingerprint,
        }
    }
}

/// The validated `control_plane` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// The base URL, without a trailing `/`.
    pub url: String,
    /// The current secret: signs calls; verifies bundles first.
    pub secret: SigningSecret,
    /// The previous secret during a rotation: verifies bundles too.
    pub previous_secret: Option<SigningSecret>,
    /// Refresh in the background after this.
    pub soft_ttl: Duration,
    /// Serve a cached bundle no longer than this.
    pub hard_ttl: Duration,
    /// Refuse an unknown key from the cache this long.
    pub negative_ttl: Duration,
    /// One call's timeout.
    pub timeout: Duration,
    /// Cache capacity, in keys.
    pub max_cached_keys: u64,
    /// One long-poll's wait.
    pub feed_wait: Duration,
}

impl ControlPlane {
    /// The secrets a bundle may be signed with: the current one, then the previous one.
    pub fn secrets(&self) -> impl Iterator<Item = &SigningSecret> {
        std::iter::once(&self.secret).chain(self.previous_secret.as_ref())
    }
}

/// The shortest signing secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 32;

fn secret(var: &str, path: &str, env: &dyn EnvSource, errs: &mut Errors) -> Option<SigningSecret> {
    let value = match env.var(var).filter(|v| !v.trim().is_empty()) {
        Some(v) => v.trim().to_owned(),
        None => missing_secret(
            path.to_owned(),
            format!("environment variable `{var}` is not set"),
            env,
            errs,
        )
        .ok()?,
    };
    if value.len() < MIN_SECRET_BYTES {
        errs.add(
            path,
            format!("the secret in `{var}` must be at least {MIN_SECRET_BYTES} bytes long"),
        );
        return None;
    }
    Some(SigningSecret::new(value))
}

/// Validates the section; every error names its field path.
pub(super) fn validate(
    raw: &RawControlPlane,
    env: &dyn EnvSource,
    errs: &mut Errors,
) -> Option<ControlPlane> {
    let before = errs.0.len();
    let url = raw.url.trim().trim_end_matches('/').to_owned();
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.contains(['?', '#']) || url.contains(char::is_whitespace) {
        errs.add(
            "control_plane.url",
            "must be an http:// or https:// URL without a query",
        );
    } else if url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.is_empty())
    {
        errs.add("control_plane.url", "has no host");
    }
    let secret_now = secret(&raw.secret_env, "control_plane.secret_env", env, errs);
    let previous = raw.previous_secret_env.as_deref().and_then(|var| {
        if var == raw.secret_env {
            errs.add(
                "control_plane.previous_secret_env",
                "names the same variable as `secret_env`",
            );
            return None;
        }
        secret(var, "control_plane.previous_secret_env", env, errs)
    });
    if !(1..=86_400).contains(&raw.soft_ttl_secs) {
        errs.add("control_plane.soft_ttl_secs", "must be between 1 and 86400");
    }
    if raw.hard_ttl_secs < raw.soft_ttl_secs || raw.hard_ttl_secs > 604_800 {
        errs.add(
            "control_plane.hard_ttl_secs",
            "must be at least `soft_ttl_secs` and at most 604800",
        );
    }
    if !(1..=3_600).contains(&raw.negative_ttl_secs) {
        errs.add(
            "control_plane.negative_ttl_secs",
            "must be between 1 and 3600",
        );
    }
    if !(1..=10_000).contains(&raw.timeout_ms) {
        errs.add("control_plane.timeout_ms", "must be between 1 and 10000");
    }
    if !(1..=10_000_000).contains(&raw.max_cached_keys) {
        errs.add(
            "control_plane.max_cached_keys",
            "must be between 1 and 10000000",
        );
    }
    if !(1..=30).contains(&raw.feed_wait_secs) {
        errs.add("control_plane.feed_wait_secs", "must be between 1 and 30");
    }
    let secret_now = secret_now?;
    (errs.0.len() == before).then(|| ControlPlane {
        url,
        secret: secret_now,
        previous_secret: previous,
        soft_ttl: Duration::from_secs(raw.soft_ttl_secs),
        hard_ttl: Duration::from_secs(raw.hard_ttl_secs),
        negative_ttl: Duration::from_secs(raw.negative_ttl_secs),
        timeout: Duration::from_millis(raw.timeout_ms),
        max_cached_keys: raw.max_cached_keys,
        feed_wait: Duration::from_secs(raw.feed_wait_secs),
    })
}
