//! OAuth access tokens for Vertex AI providers: an RS256-signed JWT assertion of the service
//! account, exchanged at its `token_uri` (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`)
//! by a background task that refreshes each token well before it expires. Requests only read
//! the current token ([`tollgate_core::config::GoogleAuth::current`]): none ever waits for one.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_core::config::{AccessToken, GceMetadata, Secret, ServiceAccount};
use tollgate_core::SharedConfig;

/// The OAuth scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long an assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A token is refreshed when it has less than this left.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// How often the task looks at the tokens.
const TICK: Duration = Duration::from_secs(1);

/// The longest wait before retrying a failed exchange.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The token endpoint's answer may take this long.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key could not sign (not an RSA private key in PEM).
    #[error("cannot sign the assertion: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// The token endpoint could not be reached or answered garbage.
    #[error("token endpoint request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The token endpoint refused the assertion.
    #[error("token endpoint answered HTTP {0}")]
    Refused(u16),
    /// What answered is not the GCE metadata server (no `Metadata-Flavor: Google`, or no
    /// usable token).
    #[error("the answer is not the GCE metadata server's")]
    NotMetadataServer,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The signed assertion of `sa` at `now`.
pub fn assertion(sa: &ServiceAccount, now: SystemTime) -> Result<String, TokenError> {
    let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = sa.private_key_id.clone();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(sa.private_key.expose().as_bytes())?;
    let claims = Claims {
        iss: &sa.client_email,
        scope: SCOPE,
        aud: &sa.token_uri,
        iat,
        exp: iat + ASSERTION_LIFETIME.as_secs(),
    };
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

/// Exchanges a fresh assertion of `sa` for an access token.
pub async fn exchange(
    client: &reqwest::Client,
    sa: &ServiceAccount,
) -> Result<AccessToken, TokenError> {
    let now = SystemTime::now();
    let body = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={}",
        assertion(sa, now)?
    );
    let resp = client
        .post(&sa.token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(EXCHANGE_TIMEOUT)
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(TokenError::Refused(resp.status().as_u16()));
    }
    let t: TokenResponse = resp.json().await?;
    Ok(AccessToken {
        header: Secret::new(format!("Bearer {}", t.access_token)),
        expires_at: now + Duration::from_secs(t.expires_in),
    })
}

#[derive(Deserialize)]
struct MetadataTokenResponse {
    access_token: String,
    expires_in: u64,
}

/// The current access token of the instance's default service account from the GCE/GKE
/// metadata server (`Metadata-Flavor: Google` both ways), and when it was obtained.
pub async fn metadata_token(
    client: &reqwest::Client,
    server: &GceMetadata,
) -> Result<(AccessToken, SystemTime), TokenError> {
    let now = SystemTime::now();
    let resp = client
        .get(&server.token_url)
        .header("metadata-flavor", "Google")
        .timeout(EXCHANGE_TIMEOUT)
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(TokenError::Refused(resp.status().as_u16()));
    }
    // Anything else answering on that host is not the metadata server.
    if resp
        .headers()
        .get("metadata-flavor")
        .is_none_or(|v| v.as_bytes() != b"Google")
    {
        return Err(TokenError::NotMetadataServer);
    }
    let t: MetadataTokenResponse = resp.json().await?;
    if t.access_token.is_empty() || http::HeaderValue::from_str(&t.access_token).is_err() {
        return Err(TokenError::NotMetadataServer);
    }
    Ok((
        AccessToken {
            header: Secret::new(format!("Bearer {}", t.access_token)),
            expires_at: now + Duration::from_secs(t.expires_in),
        },
        now,
    ))
}

/// Keeps the access token of every service account in the live config fresh until `stop`:
/// a missing token or one within [`REFRESH_BEFORE`] of expiry is exchanged anew; a failure is
/// logged and retried with a doubling delay (the old token keeps serving while it lasts).
pub async fn keep_tokens_fresh(config: SharedConfig, mut stop: watch::Receiver<bool>) {
    let client = reqwest::Client::new();
    // Failures per account email: (next attempt, current backoff).
    let mut retry: HashMap<String, (SystemTime, Duration)> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let snapshot = config.load_full();
        for (provider, auth) in snapshot.google_accounts() {
            let now = SystemTime::now();
            if auth.current(now + REFRESH_BEFORE).is_some() {
                continue;
            }
            let email = &auth.account.client_email;
            if retry.get(email).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            match exchange(&client, &auth.account).await {
                Ok(token) => {
                    tracing::info!(provider, account = %email, "Got an access token");
                    auth.store(token);
                    retry.remove(email);
                }
                Err(error) => {
                    let backoff = retry
                        .get(email)
                        .map_or(TICK, |(_, b)| (*b * 2).min(MAX_BACKOFF));
                    tracing::warn!(provider, account = %email, %error, retry_in_s = backoff.as_secs(), "Could not get an access token");
                    retry.insert(email.clone(), (now + backoff, backoff));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// An RSA key pair made by `openssl` (private PEM, public PEM).
    fn key_pair() -> (String, String) {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let private = String::from_utf8(out.stdout).unwrap();
        let mut child = Command::new("openssl")
            .args(["pkey", "-pubout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (private, String::from_utf8(out.stdout).unwrap())
    }

    #[derive(Deserialize)]
    struct Decoded {
        iss: String,
        scope: String,
        aud: String,
        iat: u64,
        exp: u64,
    }

    #[test]
    fn assertions_are_rs256_signed_for_the_token_endpoint() {
        let (private, public) = key_pair();
        let sa = ServiceAccount::parse(
            &serde_json::json!({"type": "service_account", "client_email": "gw@p.iam.gserviceaccount.com",
                "private_key": private, "private_key_id": "kid-1",
                "token_uri": "https://oauth2.googleapis.com/token"})
            .to_string(),
        )
        .unwrap();
        let now = SystemTime::now();
        let jwt = assertion(&sa, now).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("kid-1"));
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["https://oauth2.googleapis.com/token"]);
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
        let claims = jsonwebtoken::decode::<Decoded>(&jwt, &key, &v)
            .unwrap()
            .claims;
        assert_eq!(claims.iss, "gw@p.iam.gserviceaccount.com");
        assert_eq!(claims.scope, SCOPE);
        assert_eq!(claims.aud, "https://oauth2.googleapis.com/token");
        assert_eq!(claims.exp - claims.iat, 3600);
        // Another key's signature does not verify.
        let (_, other) = key_pair();
        let other = jsonwebtoken::DecodingKey::from_rsa_pem(other.as_bytes()).unwrap();
        assert!(jsonwebtoken::decode::<Decoded>(&jwt, &other, &v).is_err());
        // A key that is not RSA PEM cannot sign.
        let bad = ServiceAccount {
            private_key: Secret::new(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
            ..sa
        };
        assert!(matches!(assertion(&bad, now), Err(TokenError::Sign(_))));
    }
}
