//! The provider's credential on an upstream request, one handler per kind of credential: a
//! static header (OpenAI, Azure, Anthropic, Gemini API keys), a Vertex AI service account's or
//! the GCE metadata server's current OAuth token, or an AWS SigV4 signature (fixed keys or the
//! AWS chain's current credentials) over exactly the bytes Envoy sends.

use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use tollgate_core::config::Provider;
use tollgate_core::ApiError;

use crate::mutation::set;

/// What is signed: the request exactly as Envoy sends it upstream.
pub(super) struct Signed<'a> {
    /// The upstream `:authority`.
    pub authority: &'a str,
    /// The upstream `:path`.
    pub path: &'a str,
    /// The upstream body.
    pub body: &'a [u8],
    /// Whether the response streams (Bedrock's `accept`).
    pub stream: bool,
}

/// Adds `provider`'s credential headers for `request` to `headers`; a 503 while a Vertex AI
/// provider has no access token, or a Bedrock provider on the AWS chain no credentials, yet
/// (the first are still being fetched, see [`crate::aws::first_credentials`]).
pub(super) fn credentials(
    provider: &Provider,
    request: &Signed<'_>,
    headers: &mut Vec<HeaderValueOption>,
) -> Result<(), ApiError> {
    if let Some((name, secret)) = &provider.credential_header {
        headers.push(set(name, secret.expose()));
    }
    if let Some(auth) = &provider.google {
        let Some(token) = auth.current(SystemTime::now()) else {
            tracing::warn!(provider = %provider.name, "No access token for the provider yet");
            return Err(ApiError::Upstream(503));
        };
        headers.push(set("authorization", token.header.expose()));
    }
    if let Some(metadata) = &provider.gce_metadata {
        let Some(token) = metadata.current(SystemTime::now()) else {
            tracing::warn!(provider = %provider.name, "No access token from the metadata server yet");
            return Err(ApiError::Upstream(503));
        };
        headers.push(set("authorization", token.header.expose()));
    }
    if let Some(signer) = &provider.aws {
        if !bedrock(signer, request, headers) {
            tracing::warn!(provider = %provider.name, "No AWS credentials for the provider yet");
            return Err(ApiError::Upstream(503));
        }
    }
    Ok(())
}

/// The SigV4 headers of a Bedrock request, signing exactly the `host` (`:authority`), `path`
/// and `body` Envoy sends upstream; `false` while the signer has no working credentials.
fn bedrock(
    signer: &tollgate_core::sigv4::Signer,
    request: &Signed<'_>,
    headers: &mut Vec<HeaderValueOption>,
) -> bool {
    let Some(signed) = signer.try_sign(
        "POST",
        request.authority,
        request.path,
        request.body,
        SystemTime::now(),
    ) else {
        return false;
    };
    headers.push(set("authorization", signed.authorization));
    headers.push(set("x-amz-date", signed.amz_date));
    headers.push(set("x-amz-content-sha256", signed.content_sha256));
    if let Some(token) = signed.security_token {
        headers.push(set("x-amz-security-token", token));
    }
    headers.push(set("content-type", "application/json"));
    headers.push(set(
        "accept",
        if request.stream {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        },
    ));
    true
}

/// Adds `provider`'s credential headers to a passthrough request: the same credential as
/// [`credentials`], with a Bedrock request signed for its own `method` over its body as the
/// client sent it (its `content-type` and `accept` are the client's).
pub(super) fn passthrough_credentials(
    provider: &Provider,
    method: &str,
    request: &Signed<'_>,
    headers: &mut Vec<HeaderValueOption>,
) -> Result<(), ApiError> {
    let Some(signer) = &provider.aws else {
        return credentials(provider, request, headers);
    };
    let Some(signed) = signer.try_sign(
        method,
        request.authority,
        request.path,
        request.body,
        SystemTime::now(),
    ) else {
        tracing::warn!(provider = %provider.name, "No AWS credentials for the provider yet");
        return Err(ApiError::Upstream(503));
    };
    headers.push(set("authorization", signed.authorization));
    headers.push(set("x-amz-date", signed.amz_date));
    headers.push(set("x-amz-content-sha256", signed.content_sha256));
    if let Some(token) = signed.security_token {
        headers.push(set("x-amz-security-token", token));
    }
    Ok(())
}
