//! Self-contained JWT client keys: a key that is itself a JWT from a trusted issuer
//! (`jwt_keys` in config) is verified here with no lookup (HS256, RS256, ES256) and becomes
//! the same in-memory [`KeyBundle`] a file key does. JWKS URLs are fetched by a background
//! task ([`JwtVerifier::keep_fresh`]) on an interval and, at most once per
//! `unknown_kid_refresh_secs`, when a token names a `kid` the set does not have; a failed
//! fetch keeps the last good set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::DecodingKey;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};
use tollgate_core::budget::Owner;
use tollgate_core::config::{
    parse_jwks, Capture, JwkKeys, JwtIssuer, JwtKeySource, KeyBundle, ModelAccess,
};
use tollgate_core::{ApiError, Config, SharedConfig};

/// The largest JWKS document fetched, in bytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// The longest a JWKS fetch may take.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a JWKS URL waits after a failed fetch before it is tried again (at least).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Why a JWT client key was refused. Every variant becomes a 401 in the client's dialect;
/// the reason goes to the log only (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtRefusal {
    /// Not a well-formed JWT (segments, base64, JSON).
    Malformed,
    /// Its `iss` is none of the configured issuers.
    UnknownIssuer,
    /// Its `alg` is not one the issuer accepts (`none` never is).
    AlgorithmNotAllowed,
    /// No verification key for its `kid` (or, without `kid`, no single key of its `alg`).
    UnknownKid,
    /// The signature does not verify.
    BadSignature,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// `iss` is not the issuer's.
    WrongIssuer,
    /// `aud` names none of the issuer's audiences.
    WrongAudience,
    /// A required claim is missing or has the wrong type (`exp`, `iss`, the key id).
    MissingClaim,
    /// The budget claim names a budget the config does not have, or one that does not apply
    /// to the key.
    UnknownBudget,
}

impl JwtRefusal {
    /// The reason as it appears in the log.
    pub fn label(&self) -> &'static str {
        match self {
            JwtRefusal::Malformed => "malformed",
            JwtRefusal::UnknownIssuer => "unknown_issuer",
            JwtRefusal::AlgorithmNotAllowed => "algorithm_not_allowed",
            JwtRefusal::UnknownKid => "unknown_kid",
            JwtRefusal::BadSignature => "bad_signature",
            JwtRefusal::Expired => "expired",
            JwtRefusal::NotYetValid => "not_yet_valid",
            JwtRefusal::WrongIssuer => "wrong_issuer",
            JwtRefusal::WrongAudience => "wrong_audience",
            JwtRefusal::MissingClaim => "missing_claim",
            JwtRefusal::UnknownBudget => "unknown_budget",
        }
    }

    /// The client-facing refusal: the existing 401s.
    pub fn api_error(&self) -> ApiError {
        match self {
            JwtRefusal::Expired => ApiError::ExpiredKey,
            JwtRefusal::Malformed
            | JwtRefusal::UnknownIssuer
            | JwtRefusal::AlgorithmNotAllowed
            | JwtRefusal::UnknownKid
            | JwtRefusal::BadSignature
            | JwtRefusal::NotYetValid
            | JwtRefusal::WrongIssuer
            | JwtRefusal::WrongAudience
            | JwtRefusal::MissingClaim
            | JwtRefusal::UnknownBudget => ApiError::InvalidKey,
        }
    }
}

/// One JWKS URL's fetch state.
#[derive(Debug, Default, Clone, Copy)]
struct UrlState {
    /// The last fetch attempt.
    last_attempt: Option<Instant>,
    /// The last successful fetch.
    last_success: Option<Instant>,
    /// A token named an unknown `kid` since the last attempt.
    unknown_kid: bool,
}

/// Verifies JWT client keys. Holds the JWKS sets fetched from URLs (they outlive config
/// reloads); everything else comes from the config snapshot. Shared by every request.
pub struct JwtVerifier {
    /// The last good key set of each JWKS URL.
    sets: ArcSwap<HashMap<String, Arc<JwkKeys>>>,
    /// Fetch bookkeeping per URL (touched by the refresher and by unknown-`kid` tokens).
    state: Mutex<HashMap<String, UrlState>>,
    /// Wakes the refresher when a token names an unknown `kid`.
    wake: Notify,
    /// The HTTP client of JWKS fetches.
    client: reqwest::Client,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("urls", &self.sets.load().len())
            .finish()
    }
}

/// The claims of a token, as sent (the issuer's claim names pick from them).
type Claims = HashMap<String, Value>;

impl Default for JwtVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl JwtVerifier {
    /// A verifier with no fetched sets.
    pub fn new() -> Self {
        Self {
            sets: ArcSwap::default(),
            state: Mutex::default(),
            wake: Notify::new(),
            client: reqwest::Client::builder()
                .timeout(JWKS_FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    /// Verifies `token` against the config's issuers and builds its bundle.
    pub fn verify(&self, config: &Config, token: &str) -> Result<Arc<KeyBundle>, JwtRefusal> {
        let issuers = &config.jwt_keys.issuers;
        let issuer = match issuers.as_slice() {
            [only] => only,
            _ => {
                let iss = peek_issuer(token)?;
                issuers
                    .iter()
                    .find(|i| i.issuer == iss)
                    .ok_or(JwtRefusal::UnknownIssuer)?
            }
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRefusal::Malformed)?;
        let validation = issuer
            .validation(header.alg)
            .ok_or(JwtRefusal::AlgorithmNotAllowed)?;
        let kid = header.kid.as_deref();
        let fetched;
        let key: &DecodingKey = match &issuer.source {
            JwtKeySource::Hs256(k) => k,
            JwtKeySource::File(keys) => keys.find(kid, header.alg).ok_or(JwtRefusal::UnknownKid)?,
            JwtKeySource::Url(url) => {
                fetched = self.sets.load().get(url).cloned();
                match fetched.as_ref().and_then(|k| k.find(kid, header.alg)) {
                    Some(k) => k,
                    None => {
                        if kid.is_some() {
                            self.want_refresh(url);
                        }
                        return Err(JwtRefusal::UnknownKid);
                    }
                }
            }
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => JwtRefusal::BadSignature,
                ErrorKind::ExpiredSignature => JwtRefusal::Expired,
                ErrorKind::ImmatureSignature => JwtRefusal::NotYetValid,
                ErrorKind::InvalidIssuer => JwtRefusal::WrongIssuer,
                ErrorKind::InvalidAudience => JwtRefusal::WrongAudience,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    JwtRefusal::AlgorithmNotAllowed
                }
                ErrorKind::MissingRequiredClaim(_) => JwtRefusal::MissingClaim,
                _ => JwtRefusal::Malformed,
            })?;
        bundle(config, issuer, validation.leeway, data.claims).map(Arc::new)
    }

    /// Notes that a token named a `kid` this URL's set lacks; the refresher fetches again
    /// once `unknown_kid_refresh_secs` has passed since its last attempt.
    fn want_refresh(&self, url: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match state.get_mut(url) {
            Some(s) if !s.unknown_kid => {
                s.unknown_kid = true;
                drop(state);
                self.wake.notify_one();
            }
            Some(_) => {}
            // Not fetched yet: the refresher is on it.
            None => {}
        }
    }

    /// Fetches every JWKS URL of `config` once (bounded by [`JWKS_FETCH_TIMEOUT`] each),
    /// so tokens verify from the first request. A failure is logged; `serve` starts anyway.
    pub async fn prime(&self, config: &Config) {
        for (url, _) in urls(config) {
            self.fetch(&url).await;
        }
    }

    /// Keeps every JWKS URL of the live config fresh until `stop` turns true: refetched
    /// every `refresh_secs`, and on an unknown `kid` at most once per
    /// `unknown_kid_refresh_secs`. Owned by `serve`, which awaits it on shutdown.
    pub async fn keep_fresh(
        self: Arc<Self>,
        config: SharedConfig,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let now = Instant::now();
            for (url, issuer) in urls(&config.load()) {
                let due = {
                    let Ok(state) = self.state.lock() else {
                        return;
                    };
                    let s = state.get(&url).copied().unwrap_or_default();
                    match (s.last_attempt, s.last_success) {
                        (None, _) => true,
                        (Some(a), _) if s.unknown_kid => {
                            now.duration_since(a) >= issuer.unknown_kid_refresh
                        }
                        (Some(_), Some(ok)) => now.duration_since(ok) >= issuer.refresh,
                        (Some(a), None) => now.duration_since(a) >= RETRY_AFTER_FAILURE,
                    }
                };
                if due {
                    self.fetch(&url).await;
                }
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Fetches one JWKS URL; on success its set replaces the last one, on failure the last
    /// good set stays.
    async fn fetch(&self, url: &str) {
        let outcome = fetch_jwks(&self.client, url).await;
        let now = Instant::now();
        if let Ok(mut state) = self.state.lock() {
            let s = state.entry(url.to_owned()).or_default();
            s.last_attempt = Some(now);
            s.unknown_kid = false;
            if outcome.is_ok() {
                s.last_success = Some(now);
            }
        }
        match outcome {
            Ok(keys) => {
                tracing::debug!(url, keys = keys.keys.len(), "Fetched a JWKS");
                let mut sets = HashMap::clone(&self.sets.load());
                sets.insert(url.to_owned(), Arc::new(keys));
                self.sets.store(Arc::new(sets));
            }
            Err(error) => {
                tracing::warn!(url, %error, "Cannot fetch the JWKS: keeping the last good set");
            }
        }
    }
}

/// The JWKS URLs of a config, with the issuer of each.
fn urls(config: &Config) -> Vec<(String, Arc<JwtIssuer>)> {
    config
        .jwt_keys
        .issuers
        .iter()
        .filter_map(|i| match &i.source {
            JwtKeySource::Url(u) => Some((u.clone(), Arc::clone(i))),
            JwtKeySource::Hs256(_) | JwtKeySource::File(_) => None,
        })
        .collect()
}

async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<JwkKeys, String> {
    let response = client
        .get(url)
        .timeout(JWKS_FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let text = std::str::from_utf8(&body).map_err(|_| "is not UTF-8".to_owned())?;
    parse_jwks(text)
}

/// The `iss` of an unverified token, to pick among several issuers (verified afterwards).
fn peek_issuer(token: &str) -> Result<String, JwtRefusal> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1).ok_or(JwtRefusal::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| JwtRefusal::Malformed)?;
    let iss: Iss = serde_json::from_slice(&bytes).map_err(|_| JwtRefusal::Malformed)?;
    iss.iss.ok_or(JwtRefusal::MissingClaim)
}

/// The bundle of verified claims: what a file key with the same properties would be.
fn bundle(
    config: &Config,
    issuer: &JwtIssuer,
    leeway: u64,
    mut claims: Claims,
) -> Result<KeyBundle, JwtRefusal> {
    let names = &issuer.claims;
    let mut text = |name: &str| match claims.remove(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    let id = text(&names.key_id)
        .or_else(|| text("sub"))
        .ok_or(JwtRefusal::MissingClaim)?;
    let tenant = text(&names.tenant);
    let team = text(&names.team);
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtRefusal::MissingClaim)?;
    let models = match claims.remove(&names.models) {
        Some(Value::Array(list)) => strings(list),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let models = if models.iter().any(|m| m == "*") {
        ModelAccess::All
    } else {
        ModelAccess::Only(models.into_iter().collect())
    };
    let budgets = match claims.remove(&names.budget) {
        Some(Value::Array(list)) => strings(list),
        Some(Value::String(s)) => vec![s],
        _ => Vec::new(),
    };
    if !budgets.is_empty() {
        let owner = Owner {
            key: &id,
            team: team.as_deref(),
            tenant: tenant.as_deref(),
            end_user: None,
        };
        let applies = |want: &String| {
            config.budgets.limits.iter().any(|b| {
                b.id == *want
                    && owner
                        .member(b.scope)
                        .is_some_and(|m| b.member.as_deref().is_none_or(|n| n == m))
            })
        };
        if !budgets.iter().all(applies) {
            return Err(JwtRefusal::UnknownBudget);
        }
    }
    let leeway = i64::try_from(leeway).unwrap_or(0);
    let expires_at = OffsetDateTime::from_unix_timestamp(exp.saturating_add(leeway))
        .map_err(|_| JwtRefusal::MissingClaim)?;
    Ok(KeyBundle {
        guardrails: config.guardrails.resolve(None, tenant.as_deref()),
        id,
        hash: [0; 32],
        tenant,
        team,
        models,
        expires_at: Some(expires_at),
        disabled: false,
        requests_per_minute: issuer.requests_per_minute,
        capture: Capture::Off,
        tokens_per_minute: issuer.tokens_per_minute,
        extra_budgets: Vec::new(),
        tenant_requests_per_minute: None,
        tenant_tokens_per_minute: None,
    })
}

fn strings(list: Vec<Value>) -> Vec<String> {
    list.into_iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
