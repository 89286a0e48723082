//! Google Vertex AI: the OAuth token endpoint (`POST …/token`, a service account's RS256 JWT
//! assertion verified with [`MockConfig::google_public_key`](crate::MockConfig) and exchanged
//! for an access token) and the publisher routes, which accept only tokens issued here:
//! `…/publishers/google/models/{m}:generateContent|:streamGenerateContent` (answered as Gemini)
//! and `…/publishers/anthropic/models/{m}:rawPredict|:streamRawPredict` (Messages bodies
//! without `model`, with `anthropic_version: vertex-2023-10-16`).

use std::collections::HashSet;
use std::sync::Mutex;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// The grant type of a JWT assertion.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The `anthropic_version` Vertex AI requires in Messages bodies.
pub(crate) const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// Access tokens handed out.
#[derive(Default)]
pub(crate) struct Tokens(Mutex<HashSet<String>>);

impl Tokens {
    pub(crate) fn issue(&self, number: u64) -> String {
        let token = format!("ya29.mock-{number}");
        if let Ok(mut set) = self.0.lock() {
            set.insert(token.clone());
        }
        token
    }

    /// Whether the request carries `Authorization: Bearer <a token issued here>`.
    pub(crate) fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.0.lock().is_ok_and(|set| set.contains(token))
    }
}

/// A Vertex publisher path: (publisher, model, method).
pub(crate) fn publisher_call(path: &str) -> Option<(&str, &str, &str)> {
    let (_, rest) = path.split_once("/publishers/")?;
    let (publisher, rest) = rest.split_once("/models/")?;
    let (model, method) = rest.split_once(':')?;
    (!model.is_empty() && !model.contains('/')).then_some((publisher, model, method))
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    aud: String,
}

fn oauth_error(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": description})),
    )
        .into_response()
}

/// Percent-decodes one `application/x-www-form-urlencoded` value.
fn form_value<'a>(body: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    let raw = body
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    if !raw.contains(['%', '+']) {
        return Some(raw.into());
    }
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Into::into)
}

/// `POST …/token`: checks the assertion's signature (RS256, the configured public key),
/// lifetime, scope and audience, then issues an access token.
pub(crate) fn token(
    public_key: Option<&str>,
    tokens: &Tokens,
    number: u64,
    body: &[u8],
) -> Response {
    let Some(pem) = public_key else {
        return oauth_error("This mock has no service account public key configured.");
    };
    let body = String::from_utf8_lossy(body);
    if form_value(&body, "grant_type").as_deref() != Some(JWT_BEARER) {
        return oauth_error("Invalid grant_type.");
    }
    let Some(assertion) = form_value(&body, "assertion") else {
        return oauth_error("Missing assertion.");
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()) else {
        return oauth_error("The mock's public key is not an RSA key in PEM.");
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let claims = match jsonwebtoken::decode::<Claims>(&assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return oauth_error(&format!("Invalid JWT Signature or claims: {e}.")),
    };
    if !claims.aud.ends_with("/token") {
        return oauth_error("Invalid JWT: the audience is not a token endpoint.");
    }
    if !claims
        .scope
        .split(' ')
        .any(|s| s == "https://www.googleapis.com/auth/cloud-platform")
    {
        return oauth_error("Invalid JWT: the scope does not include cloud-platform.");
    }
    tracing::debug!(account = %claims.iss, "Mock issued an access token");
    Json(json!({"access_token": tokens.issue(number), "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

/// Checks a Vertex AI Messages body: no `model`, the Vertex `anthropic_version`.
pub(crate) fn check_anthropic_body(request: &serde_json::Map<String, Value>) -> Result<(), String> {
    if request.contains_key("model") {
        return Err("model: Extra inputs are not permitted".to_owned());
    }
    if request.get("anthropic_version").and_then(Value::as_str) != Some(ANTHROPIC_VERSION) {
        return Err(format!("anthropic_version: must be `{ANTHROPIC_VERSION}`"));
    }
    Ok(())
}
