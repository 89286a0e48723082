//! Feedback tokens: short-lived HS256 JWTs (RFC 7519) that name one request, handed to the
//! client in `x-tollgate-feedback-token` on every admitted request and given back with
//! `POST /v1/feedback`. The secret comes from the config (`feedback.secret`, an environment
//! variable or a file); only tokens signed with it, with `alg` exactly `HS256`, unexpired, are
//! accepted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The response header carrying the token.
pub const TOKEN_HEADER: &str = "x-tollgate-feedback-token";

/// The JOSE header of every token (fixed, so it is compared as bytes).
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The request the feedback is about (`x-tollgate-request-id`).
    pub request_id: String,
    /// The virtual key's id that made the request.
    pub key_id: String,
    /// The key's tenant, empty when none.
    #[serde(default)]
    pub tenant: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
}

/// Why a token was refused (the client sees the message; none carries the secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or not the JSON expected.
    #[error("the feedback token is malformed")]
    Malformed,
    /// The header is not `{"alg":"HS256","typ":"JWT"}`.
    #[error("the feedback token's algorithm is not HS256")]
    Algorithm,
    /// The signature does not match (tampered, or signed with another secret).
    #[error("the feedback token's signature is invalid")]
    Signature,
    /// Past its `exp`.
    #[error("the feedback token has expired")]
    Expired,
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Signs `claims` into a compact JWT.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = URL_SAFE_NO_PAD.encode(HEADER);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = hmac_sha256(secret, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

/// Checks a token's algorithm, signature (in constant time) and expiry at `now` (unix
/// seconds), and returns its claims.
pub fn verify(secret: &[u8], token: &str, now: i64) -> Result<Claims, TokenError> {
    let token = token.trim();
    let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if payload.contains('.') {
        return Err(TokenError::Malformed);
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    #[derive(Deserialize)]
    struct Jose {
        alg: String,
    }
    let jose: Jose = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    if jose.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let expected = hmac_sha256(secret, signed.as_bytes());
    let Ok(signature) = <[u8; 32]>::try_from(signature.as_slice()) else {
        return Err(TokenError::Signature);
    };
    if !constant_time_eq::constant_time_eq_32(&signature, &expected) {
        return Err(TokenError::Signature);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            request_id: "0123456789abcdef0123456789abcdef".into(),
            key_id: "k1".into(),
            tenant: "acme".into(),
            iat: 1_000,
            exp,
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let token = sign(b"secret", &claims(2_000));
        assert_eq!(verify(b"secret", &token, 1_999).unwrap(), claims(2_000));
        assert_eq!(verify(b"secret", &token, 2_000), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_foreign_and_unsigned_tokens_are_refused() {
        let token = sign(b"secret", &claims(2_000));
        assert_eq!(verify(b"other", &token, 1_500), Err(TokenError::Signature));
        // Another request id in the payload, the old signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = serde_json::to_vec(&Claims {
            request_id: "ffffffffffffffffffffffffffffffff".into(),
            ..claims(2_000)
        })
        .unwrap();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged),
            parts[2]
        );
        assert_eq!(
            verify(b"secret", &tampered, 1_500),
            Err(TokenError::Signature)
        );
        // `alg: none` with no signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(verify(b"secret", &none, 1_500), Err(TokenError::Algorithm));
        for garbage in ["", "a.b", "a.b.c.d", "!!.??.**"] {
            assert_eq!(
                verify(b"secret", garbage, 1_500),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
    }
}
