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

/// The metadata host when `GCE_METADATA_HOST` names none.
pub const GCE_METADATA_HOST: &str = "metadata.google.internal";

/// The path of the default service account's access token on the metadata server.
pub const GCE_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// The GCE/GKE metadata server (workload identity) and the access token it last gave.
#[derive(Debug)]
pub struct GceMetadata {
    /// `http://{host}/computeMetadata/v1/instance/service-accounts/default/token`.
    pub token_url: String,
    token: ArcSwapOption<AccessToken>,
    /// When the current token was obtained (sets how early it is refreshed).
    obtained_at: ArcSwapOption<SystemTime>,
}

impl GceMetadata {
    /// The server at `GCE_METADATA_HOST` (`host[:port]`, as Google's libraries read it), else
    /// at [`GCE_METADATA_HOST`].
    pub fn from_env(env: &dyn crate::env::EnvSource) -> Result<Self, String> {
        let host = env
            .var("GCE_METADATA_HOST")
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| GCE_METADATA_HOST.to_owned());
        if host.parse::<http::uri::Authority>().is_err() || host.contains('@') {
            return Err(format!("GCE_METADATA_HOST `{host}` is not a host[:port]"));
        }
        Ok(Self {
            token_url: format!("http://{host}{GCE_TOKEN_PATH}"),
            token: ArcSwapOption::empty(),
            obtained_at: ArcSwapOption::empty(),
        })
    }

    /// The current token, unless there is none or it has expired.
    pub fn current(&self, now: SystemTime) -> Option<std::sync::Arc<AccessToken>> {
        self.token.load_full().filter(|t| t.expires_at > now)
    }

    /// Whether the token should be replaced at `now`: none yet, or it expires within
    /// `refresh_before` (within half its lifetime for short-lived ones).
    pub fn due(&self, now: SystemTime, refresh_before: std::time::Duration) -> bool {
        let Some(token) = self.token.load_full() else {
            return true;
        };
        let obtained = self.obtained_at.load_full().map_or(now, |t| *t);
        let lifetime = token
            .expires_at
            .duration_since(obtained)
            .unwrap_or_default();
        now + refresh_before.min(lifetime / 2) >= token.expires_at
    }

    /// Replaces the token, obtained at `obtained_at`.
    pub fn store(&self, token: AccessToken, obtained_at: SystemTime) {
        self.obtained_at
            .store(Some(std::sync::Arc::new(obtained_at)));
        self.token.store(Some(std::sync::Arc::new(token)));
    }

    fn adopt(&self, old: &GceMetadata) {
        if let (Some(t), Some(at)) = (old.token.load_full(), old.obtained_at.load_full()) {
            self.store((*t).clone(), *at);
        }
    }
}

impl Config {
    /// Takes over the access tokens of `old`'s providers with the same service account (or
    /// metadata server), and the fetched AWS credentials of `bedrock` providers with the same
    /// chain source and region, so a reloaded config serves at once.
    pub fn adopt_tokens(&self, old: &Config) {
        for (name, p) in &self.providers {
            let previous = old.providers.get(name);
            if let (Some(new), Some(old)) = (
                &p.gce_metadata,
                previous.and_then(|o| o.gce_metadata.as_ref()),
            ) {
                if new.token_url == old.token_url {
                    new.adopt(old);
                }
            }
            if let (Some(signer), Some(source), Some(o)) = (&p.aws, &p.aws_source, previous) {
                let same = o.aws_source.as_ref() == Some(source)
                    && o.aws
                        .as_ref()
                        .is_some_and(|s| s.region() == signer.region());
                if let Some(c) = o
                    .aws
                    .as_ref()
                    .and_then(|s| s.credentials())
                    .filter(|_| same && source.fetched())
                {
                    signer.store((*c).clone());
                }
            }
        }
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

    /// Every `vertex` provider that gets its token from the metadata server.
    pub fn gce_metadata(&self) -> impl Iterator<Item = (&str, &std::sync::Arc<GceMetadata>)> {
        self.providers
            .iter()
            .filter_map(|(n, p)| p.gce_metadata.as_ref().map(|g| (n.as_str(), g)))
    }

    /// Every `bedrock` provider whose credentials are fetched over HTTP (the AWS chain's web
    /// identity, container or instance metadata source), with its signer and source.
    pub fn aws_fetched(
        &self,
    ) -> impl Iterator<Item = (&str, &crate::sigv4::Signer, &super::AwsSource)> {
        self.providers
            .iter()
            .filter_map(|(n, p)| match (&p.aws, &p.aws_source) {
                (Some(s), Some(src)) if src.fetched() => Some((n.as_str(), s, src)),
                _ => None,
            })
    }

    /// Every service account of the config, with its provider's name.
    pub fn google_accounts(&self) -> impl Iterator<Item = (&str, &std::sync::Arc<GoogleAuth>)> {
        self.providers
            .iter()
            .filter_map(|(n, p)| p.google.as_ref().map(|g| (n.as_str(), g)))
    }
}
