//! The HMAC contract between sidecars and the control plane: signed calls
//! (`x-tollgate-signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<METHOD>.<path and
//! query>.<body>")>`) and HS256 JWS bundles.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying a sidecar call's signature.
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";
/// The largest clock difference accepted, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;
/// base64url of `{"alg":"HS256","typ":"JWT"}`.
const JWS_HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// HMAC takes keys of any length, so this is always `Some`; no panic path either way.
fn mac(secret: &[u8]) -> Option<HmacSha256> {
    HmacSha256::new_from_slice(secret).ok()
}

fn feed(m: &mut HmacSha256, t: i64, method: &str, path_and_query: &str, body: &[u8]) {
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(method.as_bytes());
    m.update(b".");
    m.update(path_and_query.as_bytes());
    m.update(b".");
    m.update(body);
}

/// The header value for a call (what a sidecar sends).
pub fn sign_request(
    secret: &[u8],
    t: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Option<String> {
    let mut m = mac(secret)?;
    feed(&mut m, t, method, path_and_query, body);
    Some(format!(
        "t={t},v1={}",
        hex::encode(m.finalize().into_bytes())
    ))
}

/// Why a signature was refused (said to the caller: nothing secret in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// No header.
    Missing,
    /// Not `t=...,v1=...`.
    Malformed,
    /// `t` too far from our clock.
    Stale,
    /// Matches neither secret.
    Mismatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureError::Missing => "missing x-tollgate-signature header",
            SignatureError::Malformed => "x-tollgate-signature is not `t=<unix seconds>,v1=<hex>`",
            SignatureError::Stale => {
                "x-tollgate-signature timestamp is more than 300 s from the control plane's clock"
            }
            SignatureError::Mismatch => "x-tollgate-signature does not match",
        })
    }
}

/// Checks a call's signature against the current secret, then the previous one.
pub fn verify_request(
    header: Option<&str>,
    secrets: &[&[u8]],
    now: i64,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    if (now - t).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    for secret in secrets {
        let Some(mut m) = mac(secret) else { continue };
        feed(&mut m, t, method, path_and_query, body);
        if m.verify_slice(&v1).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// A compact HS256 JWS of `claims` (JSON text).
pub fn jws(secret: &[u8], claims: &str) -> Option<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut out = String::with_capacity(JWS_HEADER_B64.len() + claims.len() * 4 / 3 + 48);
    out.push_str(JWS_HEADER_B64);
    out.push('.');
    b64.encode_string(claims.as_bytes(), &mut out);
    let mut m = mac(secret)?;
    m.update(out.as_bytes());
    let sig = m.finalize().into_bytes();
    out.push('.');
    b64.encode_string(sig, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_constant_is_the_contracts() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            JWS_HEADER_B64
        );
    }

    #[test]
    fn signatures_verify_with_either_secret_and_fail_otherwise() {
        let cur = b"current-secret-current-secret-0000";
        let old = b"previous-secret-previous-secret-00";
        let h = sign_request(old, 1000, "POST", "/v1/resolve-key", b"{}").unwrap();
        let both: [&[u8]; 2] = [cur, old];
        assert_eq!(
            verify_request(Some(&h), &both, 1100, "POST", "/v1/resolve-key", b"{}"),
            Ok(())
        );
        assert_eq!(
            verify_request(Some(&h), &[cur], 1100, "POST", "/v1/resolve-key", b"{}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_request(Some(&h), &both, 1100, "POST", "/v1/resolve-key", b"{ }"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_request(Some(&h), &both, 1400, "POST", "/v1/resolve-key", b"{}"),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_request(None, &both, 1000, "POST", "/", b""),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_request(Some("v1=zz"), &both, 1000, "POST", "/", b""),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn bundles_are_standard_hs256_jws() {
        let secret = b"current-secret-current-secret-0000";
        let token = jws(secret, r#"{"seq":1,"iat":1,"exp":2}"#).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(secret),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["seq"], 1);
    }
}
