//! The wire side of the control plane, without I/O: the HMAC signature every call carries
//! (`x-tollgate-signature`), and the HS256-signed bundle (a compact JWS) that
//! `POST /v1/resolve-key` answers, checked against the current and the previous secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use tollgate_core::config::{RawBudget, RawKey, RawTenant, SigningSecret};
use tollgate_core::feedback::hmac_sha256;

/// The header carrying a call's signature.
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";

/// The signature header's value for a call made at `t` (unix seconds):
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<METHOD>.<path and query>.<body>")>`.
pub fn signature(secret: &[u8], t: i64, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut message = format!("{t}.{method}.{path_and_query}.").into_bytes();
    message.extend_from_slice(body);
    format!("t={t},v1={}", hex::encode(hmac_sha256(secret, &message)))
}

/// What a bundle says (the JWS payload).
#[derive(Debug, Deserialize)]
pub struct Claims {
    /// The key, in the shape of a file key.
    pub key: RawKey,
    /// The key's tenant's settings, when it has a tenant the control plane knows.
    #[serde(default)]
    pub tenant: Option<RawTenant>,
    /// The budgets that apply to the key, its team and its tenant.
    #[serde(default)]
    pub budgets: Vec<RawBudget>,
    /// The change-feed sequence number the bundle reflects.
    pub seq: u64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not to be used after, unix seconds.
    pub exp: i64,
}

/// Why a bundle was refused. None carries a secret or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not three base64url parts, or not the JSON expected.
    #[error("the bundle is malformed: {0}")]
    Malformed(String),
    /// The JOSE header's `alg` is not `HS256`.
    #[error("the bundle's algorithm is not HS256")]
    Algorithm,
    /// Signed with none of the accepted secrets (tampered, or a secret no longer accepted).
    #[error("the bundle's signature matches neither the current nor the previous secret")]
    Signature,
    /// Past its `exp`.
    #[error("the bundle has expired")]
    Expired,
}

/// A bundle that verified: its claims and the fingerprint of the secret that signed it.
#[derive(Debug)]
pub struct Verified {
    /// The claims.
    pub claims: Claims,
    /// [`SigningSecret::fingerprint`] of the secret whose signature matched.
    pub signed_with: [u8; 32],
}

/// The most bytes a bundle may have (a key's shape and its budgets: a few KB).
pub const MAX_BUNDLE_BYTES: usize = 256 * 1024;

/// Checks a bundle's header (`alg` exactly `HS256`), its signature against each of `secrets`
/// in turn (constant-time compare), and its `exp` at `now` (unix seconds).
pub fn verify<'s>(
    token: &str,
    secrets: impl IntoIterator<Item = &'s SigningSecret>,
    now: i64,
) -> Result<Verified, BundleError> {
    let malformed = |what: &str| BundleError::Malformed(what.to_owned());
    if token.len() > MAX_BUNDLE_BYTES {
        return Err(malformed("too large"));
    }
    let (signed, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| malformed("no signature"))?;
    let (header, payload) = signed
        .split_once('.')
        .ok_or_else(|| malformed("no payload"))?;
    if payload.contains('.') {
        return Err(malformed("more than three parts"));
    }
    #[derive(Deserialize)]
    struct Jose {
        alg: String,
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let jose: Jose =
        serde_json::from_slice(&header).map_err(|_| malformed("header is not a JOSE header"))?;
    if jose.alg != "HS256" {
        return Err(BundleError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| malformed("signature is not base64url"))?;
    let signature =
        <[u8; 32]>::try_from(signature.as_slice()).map_err(|_| BundleError::Signature)?;
    let signed_with = secrets
        .into_iter()
        .find(|s| {
            let expected = hmac_sha256(s.value.expose().as_bytes(), signed.as_bytes());
            constant_time_eq::constant_time_eq_32(&signature, &expected)
        })
        .map(|s| s.fingerprint)
        .ok_or(BundleError::Signature)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| malformed("payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| BundleError::Malformed(format!("claims: {e}")))?;
    if claims.exp <= now {
        return Err(BundleError::Expired);
    }
    Ok(Verified {
        claims,
        signed_with,
    })
}

/// Signs `claims` (JSON) into a compact JWS with `{"alg":"HS256","typ":"JWT"}`, as the control
/// plane does. For tests and tools: `serve` only verifies.
pub fn sign(secret: &[u8], claims: &serde_json::Value) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let mac = hmac_sha256(secret, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(mac));
    token
}
