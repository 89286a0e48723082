//! The `jwt_keys` section: issuers whose signed JWTs are client keys by themselves (no
//! lookup). HS256 secrets come from the environment; RS256/ES256 public keys from a JWKS file
//! (parsed here, once per config version) or a JWKS URL (fetched and refreshed by `serve`).
//! Everything a verification needs (decoding keys, `Validation`s) is built here once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{missing_secret, Errors};
use crate::env::EnvSource;

/// The `jwt_keys` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtKeys {
    /// The issuers whose tokens are accepted as client keys.
    #[serde(default)]
    pub issuers: Vec<RawJwtIssuer>,
}

/// One trusted issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtIssuer {
    /// The `iss` its tokens carry (checked exactly).
    pub issuer: String,
    /// `aud` values accepted; a token must name at least one. Empty: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Signature algorithms accepted: `HS256`, `RS256`, `ES256` (never `none`).
    pub algorithms: Vec<String>,
    /// HS256: the name of the environment variable holding the shared secret (≥ 32 bytes).
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// RS256/ES256: a JWKS file with the public keys, read when the config (re)loads.
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// RS256/ES256: an `http(s)` URL serving the JWKS, fetched at start and refreshed in the
    /// background; a failed fetch keeps the last good set.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often the JWKS URL is fetched again, in seconds (10 to 86400).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// A token with a `kid` the set does not have triggers a fetch of the JWKS URL at most
    /// this often, in seconds (1 to 3600): a flood of made-up `kid`s costs one fetch per period.
    #[serde(default = "default_unknown_kid_refresh_secs")]
    pub unknown_kid_refresh_secs: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (0 to 300).
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Requests per minute for each key id of this issuer (as a file key's
    /// `requests_per_minute`). No limit when absent.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute for each key id of this issuer. No limit when absent.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Which claims carry the key's properties.
    #[serde(default)]
    pub claims: RawJwtClaims,
}

/// The claim names a token's properties are read from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtClaims {
    /// The key id (logs, rate limits, key budgets); when the token lacks it, `sub` is used.
    #[serde(default = "default_key_id_claim")]
    pub key_id: String,
    /// The tenant (a string).
    #[serde(default = "default_tenant_claim")]
    pub tenant: String,
    /// The team (a string).
    #[serde(default = "default_team_claim")]
    pub team: String,
    /// The models the key may use: a list of public model names (`"*"`: every model) or one
    /// space-separated string. A token without it may use no model.
    #[serde(default = "default_models_claim")]
    pub models: String,
    /// Budget ids (a list, or one string): each must be a budget of `budgets.limits` that
    /// applies to the key (by its id, team or tenant), or the token is refused.
    #[serde(default = "default_budget_claim")]
    pub budget: String,
}

impl Default for RawJwtClaims {
    fn default() -> Self {
        Self {
            key_id: default_key_id_claim(),
            tenant: default_tenant_claim(),
            team: default_team_claim(),
            models: default_models_claim(),
            budget: default_budget_claim(),
        }
    }
}

fn default_refresh_secs() -> u64 {
    300
}
fn default_unknown_kid_refresh_secs() -> u64 {
    30
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_key_id_claim() -> String {
    "jti".to_owned()
}
fn default_tenant_claim() -> String {
    "tenant".to_owned()
}
fn default_team_claim() -> String {
    "team".to_owned()
}
fn default_models_claim() -> String {
    "models".to_owned()
}
fn default_budget_claim() -> String {
    "budget".to_owned()
}

/// The validated `jwt_keys` section.
#[derive(Debug, Clone, Default)]
pub struct JwtKeys {
    /// The issuers, in config order.
    pub issuers: Vec<Arc<JwtIssuer>>,
}

/// Where an issuer's verification keys come from.
#[derive(Clone)]
pub enum JwtKeySource {
    /// One HS256 shared secret.
    Hs256(Arc<DecodingKey>),
    /// A JWKS file, parsed when the config loaded.
    File(Arc<JwkKeys>),
    /// A JWKS URL, fetched by `serve` (the set lives outside the config, across reloads).
    Url(String),
}

impl std::fmt::Debug for JwtKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKeySource::Hs256(_) => f.write_str("Hs256(<secret>)"),
            JwtKeySource::File(k) => write!(f, "File({} keys)", k.keys.len()),
            JwtKeySource::Url(u) => write!(f, "Url({u})"),
        }
    }
}

/// A validated issuer: what verifying one of its tokens needs, built once.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    /// Its `iss`.
    pub issuer: String,
    /// The algorithms accepted.
    pub algorithms: Vec<Algorithm>,
    /// Its keys.
    pub source: JwtKeySource,
    /// The JWKS URL's refresh period.
    pub refresh: Duration,
    /// The least time between two fetches caused by unknown `kid`s.
    pub unknown_kid_refresh: Duration,
    /// Per accepted algorithm, the `Validation` (iss, aud, exp, nbf, leeway) for it.
    pub validations: Vec<(Algorithm, Validation)>,
    /// Requests per minute per key id.
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute per key id.
    pub tokens_per_minute: Option<u32>,
    /// Claim names.
    pub claims: JwtClaimNames,
}

impl JwtIssuer {
    /// The `Validation` for `alg`, when the issuer accepts it.
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

/// The claim names of an issuer's tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaimNames {
    /// Key id (then `sub`).
    pub key_id: String,
    /// Tenant.
    pub tenant: String,
    /// Team.
    pub team: String,
    /// Models.
    pub models: String,
    /// Budget ids.
    pub budget: String,
}

/// A parsed JWKS: each usable key with its `kid` and algorithm, decoded once.
#[derive(Clone, Default)]
pub struct JwkKeys {
    /// `(kid, algorithm, key)`.
    pub keys: Vec<(Option<String>, Algorithm, Arc<DecodingKey>)>,
}

impl std::fmt::Debug for JwkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|(k, a, _)| (k, a)).collect();
        write!(f, "JwkKeys({kids:?})")
    }
}

impl JwkKeys {
    /// The key for a token's `kid` and `alg`: the one with that `kid`, or, for a token
    /// without `kid`, the only key of that algorithm.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<DecodingKey>> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, a, _)| k.as_deref() == Some(kid) && *a == alg)
                .map(|(_, _, key)| key),
            None => {
                let mut of_alg = self.keys.iter().filter(|(_, a, _)| *a == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some((_, _, key)), None) => Some(key),
                    _ => None,
                }
            }
        }
    }

    /// Whether a key with this `kid` is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _, _)| k.as_deref() == Some(kid))
    }
}

/// Parses a JWKS document. RSA keys are RS256 and P-256 EC keys ES256 unless their `alg`
/// says otherwise; keys of other types or algorithms (and `use: enc` keys) are skipped.
/// An error when the document is not a JWKS or holds no usable key.
pub fn parse_jwks(text: &str) -> Result<JwkKeys, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("is not a JWKS: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            format!(
                "key {}: {e}",
                jwk.common.key_id.as_deref().unwrap_or("(no kid)")
            )
        })?;
        keys.push((jwk.common.key_id.clone(), alg, Arc::new(key)));
    }
    if keys.is_empty() {
        return Err("holds no RS256 or ES256 signing key".to_owned());
    }
    Ok(JwkKeys { keys })
}

/// Whether a presented client key is shaped like a JWT (three base64url segments, the first
/// a JSON object: `eyJ…`), not a `tg-` virtual key. Cheap: no decoding.
pub fn looks_like_jwt(key: &str) -> bool {
    key.starts_with("eyJ")
        && key.bytes().filter(|b| *b == b'.').count() == 2
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The shortest HS256 secret accepted, in bytes.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

pub(super) fn validate(raw: &RawJwtKeys, env: &dyn EnvSource, errs: &mut Errors) -> JwtKeys {
    let mut issuers = Vec::with_capacity(raw.issuers.len());
    let mut seen = HashSet::new();
    for (i, r) in raw.issuers.iter().enumerate() {
        let path = format!("jwt_keys.issuers[{i}]");
        if let Some(issuer) = validate_issuer(r, &path, env, errs) {
            if !seen.insert(r.issuer.clone()) {
                errs.add(
                    format!("{path}.issuer"),
                    format!("issuer `{}` appears twice", r.issuer),
                );
            }
            issuers.push(Arc::new(issuer));
        }
    }
    JwtKeys { issuers }
}

fn validate_issuer(
    r: &RawJwtIssuer,
    path: &str,
    env: &dyn EnvSource,
    errs: &mut Errors,
) -> Option<JwtIssuer> {
    let before = errs.0.len();
    if r.issuer.trim().is_empty() {
        errs.add(format!("{path}.issuer"), "must not be empty");
    }
    if r.audiences.iter().any(|a| a.trim().is_empty()) {
        errs.add(
            format!("{path}.audiences"),
            "must not hold an empty audience",
        );
    }
    let mut algorithms = Vec::new();
    if r.algorithms.is_empty() {
        errs.add(format!("{path}.algorithms"), "needs at least one algorithm");
    }
    for (j, a) in r.algorithms.iter().enumerate() {
        match a.as_str() {
            "HS256" => algorithms.push(Algorithm::HS256),
            "RS256" => algorithms.push(Algorithm::RS256),
            "ES256" => algorithms.push(Algorithm::ES256),
            other => errs.add(
                format!("{path}.algorithms[{j}]"),
                format!("`{other}` is not accepted: use HS256, RS256 or ES256"),
            ),
        }
    }
    let hmac = algorithms.contains(&Algorithm::HS256);
    let public = algorithms
        .iter()
        .any(|a| matches!(a, Algorithm::RS256 | Algorithm::ES256));
    if hmac && public {
        errs.add(
            format!("{path}.algorithms"),
            "HS256 and RS256/ES256 need different key sources: make two issuers",
        );
    }
    let sources = [
        r.hs256_secret_env.is_some(),
        r.jwks_file.is_some(),
        r.jwks_url.is_some(),
    ];
    let source = match (&r.hs256_secret_env, &r.jwks_file, &r.jwks_url) {
        _ if sources.iter().filter(|s| **s).count() != 1 => {
            errs.add(
                path,
                "give exactly one of `hs256_secret_env`, `jwks_file` or `jwks_url`",
            );
            None
        }
        (Some(var), _, _) => {
            if public {
                errs.add(
                    format!("{path}.hs256_secret_env"),
                    "only verifies HS256: RS256/ES256 need `jwks_file` or `jwks_url`",
                );
            }
            let secret = match env.var(var).filter(|v| !v.trim().is_empty()) {
                Some(v) => Ok(v),
                None => missing_secret(
                    format!("{path}.hs256_secret_env"),
                    format!("environment variable `{var}` is not set"),
                    env,
                    errs,
                ),
            };
            match secret {
                Ok(s) if s.len() < MIN_HS256_SECRET_BYTES => {
                    errs.add(
                        format!("{path}.hs256_secret_env"),
                        format!(
                            "the secret in `{var}` must be at least {MIN_HS256_SECRET_BYTES} bytes long"
                        ),
                    );
                    None
                }
                Ok(s) => Some(JwtKeySource::Hs256(Arc::new(DecodingKey::from_secret(
                    s.as_bytes(),
                )))),
                Err(()) => None,
            }
        }
        (None, Some(file), _) => {
            if hmac {
                errs.add(
                    format!("{path}.jwks_file"),
                    "holds public keys: HS256 needs `hs256_secret_env`",
                );
            }
            match std::fs::read_to_string(file) {
                Ok(text) => match parse_jwks(&text) {
                    Ok(keys) => Some(JwtKeySource::File(Arc::new(keys))),
                    Err(e) => {
                        errs.add(
                            format!("{path}.jwks_file"),
                            format!("{}: {e}", file.display()),
                        );
                        None
                    }
                },
                Err(e) => {
                    errs.add(
                        format!("{path}.jwks_file"),
                        format!("cannot read {}: {e}", file.display()),
                    );
                    None
                }
            }
        }
        (None, None, Some(url)) => {
            if hmac {
                errs.add(
                    format!("{path}.jwks_url"),
                    "serves public keys: HS256 needs `hs256_secret_env`",
                );
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errs.add(
                    format!("{path}.jwks_url"),
                    "must be an http:// or https:// URL",
                );
            }
            Some(JwtKeySource::Url(url.clone()))
        }
        (None, None, None) => None,
    };
    if !(10..=86_400).contains(&r.refresh_secs) {
        errs.add(
            format!("{path}.refresh_secs"),
            "must be between 10 and 86400",
        );
    }
    if !(1..=3_600).contains(&r.unknown_kid_refresh_secs) {
        errs.add(
            format!("{path}.unknown_kid_refresh_secs"),
            "must be between 1 and 3600",
        );
    }
    if r.leeway_secs > 300 {
        errs.add(format!("{path}.leeway_secs"), "must be between 0 and 300");
    }
    for (field, v) in [
        ("requests_per_minute", r.requests_per_minute),
        ("tokens_per_minute", r.tokens_per_minute),
    ] {
        if v == Some(0) {
            errs.add(
                format!("{path}.{field}"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
    }
    let c = &r.claims;
    for (field, name) in [
        ("key_id", &c.key_id),
        ("tenant", &c.tenant),
        ("team", &c.team),
        ("models", &c.models),
        ("budget", &c.budget),
    ] {
        if name.trim().is_empty() {
            errs.add(format!("{path}.claims.{field}"), "must not be empty");
        }
    }
    let source = source?;
    if errs.0.len() != before {
        return None;
    }
    let validations = algorithms
        .iter()
        .map(|alg| {
            let mut v = Validation::new(*alg);
            v.leeway = r.leeway_secs;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "iss"]);
            v.set_issuer(&[r.issuer.as_str()]);
            if r.audiences.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&r.audiences);
            }
            (*alg, v)
        })
        .collect();
    Some(JwtIssuer {
        issuer: r.issuer.clone(),
        algorithms,
        source,
        refresh: Duration::from_secs(r.refresh_secs),
        unknown_kid_refresh: Duration::from_secs(r.unknown_kid_refresh_secs),
        validations,
        requests_per_minute: r.requests_per_minute,
        tokens_per_minute: r.tokens_per_minute,
        claims: JwtClaimNames {
            key_id: c.key_id.clone(),
            tenant: c.tenant.clone(),
            team: c.team.clone(),
            models: c.models.clone(),
            budget: c.budget.clone(),
        },
    })
}
