//! Google service-account credentials (Vertex AI): the JSON key a provider's `credential`
//! holds, and the OAuth access token a background task keeps fresh for it. Requests read the
//! current token and never wait for one.

use std::fmt;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use serde::Deserialize;

use super::{Config, Secret};

/// Google's token endpoint, for keys that name none.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A service account's JSON key (the members Tollgate needs).
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// The account's email: the assertion's issuer.
    pub client_email: String,
    /// The RSA private key, PEM.
    pub private_key: Secret,
    /// The key's id, sent as the assertion's `kid`.
    pub private_key_id: Option<String>,
    /// Where assertions are exchanged for access tokens.
    pub token_uri: String,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawServiceAccount {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads a JSON key; the error says what is missing (never the key itself).
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: RawServiceAccount = serde_json::from_str(json).map_err(|e| {
            format!(
                "is not a service account JSON key ({}: line {}, column {})",
                category(&e),
                e.line(),
                e.column()
            )
        })?;
        if raw.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err("is not a service account key (`type` must be `service_account`)".into());
        }
        if !raw.private_key.contains("-----BEGIN") {
            return Err("the key's `private_key` is not PEM".into());
        }
        Ok(Self {
            client_email: raw.client_email,
            private_key: Secret::new(raw.private_key),
            private_key_id: raw.private_key_id,
            token_uri: raw.token_uri.unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned()),
        })
    }
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "a member is missing or of the wrong type",
        serde_json::error::Category::Eof => "cut short",
    }
}

/// An OAuth access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// `Bearer <token>`, ready for the `authorization` header.
    pub header: Secret,
    /// When it stops working.
    pub expires_at: SystemTime,
}

/// A service account and its current access token.
#[derive(Debug)]
pub struct GoogleAuth {
    /// The account.
    pub account: ServiceAccount,
    token: ArcSwapOption<AccessToken>,
}

impl GoogleAuth {
    /// No token yet.
    pub fn new(account: ServiceAccount) -> Self {
        Self {
            account,
            token: ArcSwapOption::empty(),
        }
    }

    /// The current token, unless there is none or it has expired.
    pub fn current(&self, now: SystemTime) -> Option<std::sync::Arc<AccessToken>> {
        self.token.load_full().filter(|t| t.expires_at > now)
    }

    /// The token as stored, expired or not.
    pub fn stored(&self) -> Option<std::sync::Arc<AccessToken>> {
        self.token.load_full()
    }

    /// Replaces the token.
    pub fn store(&self, token: AccessToken) {
        self.token.store(Some(std::sync::Arc::new(token)));
    }
}

impl Config {
    /// Takes over the access tokens of `old`'s providers with the same service account, so a
    /// reloaded config serves at once.
    pub fn adopt_tokens(&self, old: &Config) {
        for p in self.providers.values() {
            let Some(auth) = &p.google else { continue };
            let previous = old
                .providers
                .values()
                .filter_map(|o| o.google.as_ref())
                .find(|o| o.account == auth.account)
                .and_then(|o| o.stored());
            if let Some(t) = previous {
                auth.store((*t).clone());
            }
        }
    }

    /// Every service account of the config, with its provider's name.
    pub fn google_accounts(&self) -> impl Iterator<Item = (&str, &std::sync::Arc<GoogleAuth>)> {
        self.providers
            .iter()
            .filter_map(|(n, p)| p.google.as_ref().map(|g| (n.as_str(), g)))
    }
}
