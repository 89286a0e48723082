//! Credentials the platform provides, fetched over HTTP and kept fresh in the background: the
//! AWS credential chain's web identity (STS `AssumeRoleWithWebIdentity`, an XML answer),
//! container credentials (ECS, EKS Pod Identity; JSON) and instance metadata (IMDSv2: a `PUT`
//! token, then the role's JSON), for `bedrock` providers; and the GCE/GKE metadata server's
//! access token for `vertex` providers without a key ([`crate::google::metadata_token`]).
//!
//! Requests never wait for a refresh: they sign with the credentials stored in the provider's
//! [`Signer`] (or read the stored token). Only the very first request of a provider may wait,
//! at most [`FIRST_WAIT`], for the first fetch ([`first_credentials`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tollgate_core::config::aws::{AwsSource, ContainerEndpoint, ContainerToken, WebIdentity};
use tollgate_core::config::{Provider, Secret};
use tollgate_core::metrics::{CredentialLabels, Metrics};
use tollgate_core::sigv4::{self, AwsCredentials, Signer};
use tollgate_core::SharedConfig;

/// Credentials are refreshed when they have less than this left (or half their lifetime, for
/// short-lived ones).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// How long the first request of a provider may wait for its first credentials.
pub const FIRST_WAIT: Duration = Duration::from_millis(1000);

/// How often the task looks at the credentials.
const TICK: Duration = Duration::from_secs(1);

/// The longest wait before retrying a failed fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Each HTTP call of a fetch may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read from a credentials endpoint.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How long the IMDSv2 session token is asked for.
const IMDS_TOKEN_TTL_SECS: &str = "21600";

/// Why credentials could not be had. Messages never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The endpoint could not be reached or the answer not read.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The endpoint refused (with AWS's error code, when it gave one).
    #[error("answered HTTP {status}{}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        /// The HTTP status.
        status: u16,
        /// STS's `<Code>` or the container endpoint's `code`.
        code: Option<String>,
    },
    /// A local file (a token) could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The answer is not what the endpoint's API says.
    #[error("unexpected answer: {0}")]
    Malformed(&'static str),
}

/// Reads an answer of at most [`MAX_ANSWER_BYTES`].
async fn bounded_text(mut resp: reqwest::Response) -> Result<String, CredentialError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(CredentialError::Malformed("the answer is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| CredentialError::Malformed("the answer is not UTF-8"))
}

fn read_token(path: &std::path::Path) -> Result<String, CredentialError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|error| CredentialError::Read {
            path: path.display().to_string(),
            error,
        })
}

fn parse_time(s: &str) -> Result<SystemTime, CredentialError> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|_| CredentialError::Malformed("the expiration is not an RFC 3339 time"))
}

/// Fetches the credentials of a source that answers over HTTP.
pub async fn fetch(
    client: &reqwest::Client,
    source: &AwsSource,
) -> Result<AwsCredentials, CredentialError> {
    match source {
        AwsSource::Static { .. } => Err(CredentialError::Malformed(
            "fixed credentials are not fetched",
        )),
        AwsSource::WebIdentity(w) => assume_role_with_web_identity(client, w).await,
        AwsSource::Container(c) => container(client, c).await,
        AwsSource::Imds { endpoint } => imds(client, endpoint).await,
    }
}

/// STS `AssumeRoleWithWebIdentity` (an unsigned call; the OIDC token is the proof).
async fn assume_role_with_web_identity(
    client: &reqwest::Client,
    w: &WebIdentity,
) -> Result<AwsCredentials, CredentialError> {
    let token = read_token(&w.token_file)?;
    let body = format!(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}&RoleSessionName={}&WebIdentityToken={}",
        sigv4::uri_encode(&w.role_arn),
        sigv4::uri_encode(&w.session_name),
        sigv4::uri_encode(&token),
    );
    let obtained_at = SystemTime::now();
    let resp = client
        .post(format!("{}/", w.sts_endpoint))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header("accept", "text/xml")
        .body(body)
        .timeout(CALL_TIMEOUT)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = bounded_text(resp).await?;
    if !(200..300).contains(&status) {
        return Err(CredentialError::Refused {
            status,
            code: xml_text(&text, "Code").filter(|c| {
                c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
            }),
        });
    }
    sts_credentials(&text, obtained_at)
}

/// The `<Credentials>` of an STS answer.
pub fn sts_credentials(
    xml: &str,
    obtained_at: SystemTime,
) -> Result<AwsCredentials, CredentialError> {
    let creds = xml_element(xml, "Credentials").ok_or(CredentialError::Malformed(
        "no <Credentials> in the STS answer",
    ))?;
    let field = |name: &'static str| {
        xml_text(creds, name).ok_or(CredentialError::Malformed(
            "a member of <Credentials> is missing",
        ))
    };
    Ok(AwsCredentials {
        access_key_id: key_id(field("AccessKeyId")?)?,
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: Some(Secret::new(header_safe(field("SessionToken")?)?)),
        expires_at: Some(parse_time(&field("Expiration")?)?),
        obtained_at,
    })
}

/// The inner text of the first `<tag>…</tag>` (no attributes, as STS writes them).
fn xml_element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(&xml[start..start + len])
}

/// The unescaped text of the first `<tag>…</tag>` without child elements.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let raw = xml_element(xml, tag)?;
    if raw.contains('<') {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let end = after.find(';')?;
        out.push(match &after[..=end] {
            "&amp;" => '&',
            "&lt;" => '<',
            "&gt;" => '>',
            "&quot;" => '"',
            "&apos;" => '\'',
            _ => return None,
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out.trim().to_owned())
}

fn key_id(id: String) -> Result<String, CredentialError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CredentialError::Malformed(
            "the access key id is not alphanumeric",
        ));
    }
    Ok(id)
}

fn header_safe(v: String) -> Result<String, CredentialError> {
    if v.is_empty() || http::HeaderValue::from_str(&v).is_err() {
        return Err(CredentialError::Malformed(
            "the session token is not a header value",
        ));
    }
    Ok(v)
}

/// The JSON of the container endpoint and of IMDS (`Code` only from IMDS).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCredentials {
    #[serde(default)]
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

fn json_credentials(
    text: &str,
    obtained_at: SystemTime,
) -> Result<AwsCredentials, CredentialError> {
    let c: JsonCredentials = serde_json::from_str(text)
        .map_err(|_| CredentialError::Malformed("not the credentials JSON"))?;
    if c.code.as_deref().is_some_and(|c| c != "Success") {
        return Err(CredentialError::Malformed(
            "the credentials' Code is not Success",
        ));
    }
    Ok(AwsCredentials {
        access_key_id: key_id(c.access_key_id)?,
        secret_access_key: Secret::new(c.secret_access_key),
        session_token: Some(Secret::new(header_safe(c.token)?)),
        expires_at: Some(parse_time(&c.expiration)?),
        obtained_at,
    })
}

async fn container(
    client: &reqwest::Client,
    c: &ContainerEndpoint,
) -> Result<AwsCredentials, CredentialError> {
    let mut req = client.get(&c.url).timeout(CALL_TIMEOUT);
    match &c.token {
        Some(ContainerToken::File(path)) => req = req.header("authorization", read_token(path)?),
        Some(ContainerToken::Value(t)) => req = req.header("authorization", t.expose()),
        None => {}
    }
    let obtained_at = SystemTime::now();
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = bounded_text(resp).await?;
    if !(200..300).contains(&status) {
        return Err(CredentialError::Refused { status, code: None });
    }
    json_credentials(&text, obtained_at)
}

async fn imds(client: &reqwest::Client, endpoint: &str) -> Result<AwsCredentials, CredentialError> {
    let refused = |status: u16| CredentialError::Refused { status, code: None };
    let resp = client
        .put(format!("{endpoint}/latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL_SECS)
        .timeout(CALL_TIMEOUT)
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(refused(resp.status().as_u16()));
    }
    let token = bounded_text(resp).await?.trim().to_owned();
    if http::HeaderValue::from_str(&token).is_err() || token.is_empty() {
        return Err(CredentialError::Malformed(
            "the IMDSv2 token is not a header value",
        ));
    }
    let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
    let resp = client
        .get(&base)
        .header("x-aws-ec2-metadata-token", &token)
        .timeout(CALL_TIMEOUT)
        .send()
        .await?;
    if !resp.status().is_success() {
        // 404: the instance has no role attached.
        return Err(refused(resp.status().as_u16()));
    }
    let roles = bounded_text(resp).await?;
    let role = roles.lines().next().unwrap_or_default().trim().to_owned();
    if role.is_empty()
        || !role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        return Err(CredentialError::Malformed("no usable role name from IMDS"));
    }
    let obtained_at = SystemTime::now();
    let resp = client
        .get(format!("{base}{role}"))
        .header("x-aws-ec2-metadata-token", &token)
        .timeout(CALL_TIMEOUT)
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(refused(resp.status().as_u16()));
    }
    json_credentials(&bounded_text(resp).await?, obtained_at)
}

/// Waits, at most [`FIRST_WAIT`], until a provider whose credentials are fetched (AWS chain,
/// GCE metadata, a Vertex AI service account's token) has its first ones; returns at once for
/// every other provider and once there are credentials. [`FIRST_WAIT`] stays well under the
/// ext_proc `message_timeout` of Tollgate's bootstraps (2 s).
pub async fn first_credentials(provider: &Provider) {
    let fetched = provider.aws_source.as_ref().is_some_and(AwsSource::fetched);
    let has = |now: SystemTime| {
        let aws = !fetched
            || provider
                .aws
                .as_ref()
                .and_then(Signer::credentials)
                .is_some_and(|c| c.valid_at(now));
        let gce = provider
            .gce_metadata
            .as_ref()
            .is_none_or(|m| m.current(now).is_some());
        let service_account = provider
            .google
            .as_ref()
            .is_none_or(|g| g.current(now).is_some());
        aws && gce && service_account
    };
    if has(SystemTime::now()) {
        return;
    }
    let deadline = tokio::time::Instant::now() + FIRST_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if has(SystemTime::now()) {
            return;
        }
    }
}

/// Retry state of one provider: next attempt, current backoff.
type Retry = HashMap<String, (SystemTime, Duration)>;

fn backoff(retry: &Retry, name: &str) -> Duration {
    retry
        .get(name)
        .map_or(TICK, |(_, b)| (*b * 2).min(MAX_BACKOFF))
}

/// Keeps fetched credentials fresh until `stop`: every `bedrock` provider on the AWS chain's
/// web identity, container or instance metadata source, and every `vertex` provider on the
/// metadata server. Missing credentials or credentials within [`REFRESH_BEFORE`] of expiry
/// (half their lifetime, if shorter) are fetched anew; a failure is logged (never a secret),
/// counted in `tollgate_credential_refreshes_total` and retried with a doubling delay while
/// the old credentials keep serving.
pub async fn keep_credentials_fresh(
    config: SharedConfig,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::new();
    let mut retry = Retry::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let snapshot = config.load_full();
        let now = SystemTime::now();
        let waiting = |name: &str| retry.get(name).is_some_and(|(at, _)| *at > now);
        let aws: Vec<_> = snapshot
            .aws_fetched()
            .filter(|(name, signer, _)| {
                !waiting(name)
                    && signer
                        .credentials()
                        .is_none_or(|c| c.due(now, REFRESH_BEFORE))
            })
            .collect();
        let gce: Vec<_> = snapshot
            .gce_metadata()
            .filter(|(name, m)| !waiting(name) && m.due(now, REFRESH_BEFORE))
            .collect();
        if aws.is_empty() && gce.is_empty() {
            continue;
        }
        let aws_fetches =
            futures::future::join_all(aws.iter().map(|(_, _, source)| fetch(&client, source)));
        let gce_fetches = futures::future::join_all(
            gce.iter()
                .map(|(_, m)| crate::google::metadata_token(&client, m)),
        );
        // Shutdown does not wait for a slow endpoint.
        let (aws_results, gce_results) = tokio::select! {
            r = async { tokio::join!(aws_fetches, gce_fetches) } => r,
            _ = stop.changed() => return,
        };
        for ((name, signer, source), result) in aws.iter().zip(aws_results) {
            let outcome = result.map(|c| {
                let expires_in = c
                    .expires_at
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                    .map_or(0, |d| d.as_secs());
                signer.store(c);
                expires_in
            });
            record(&metrics, &mut retry, name, source.kind(), outcome);
        }
        for ((name, m), result) in gce.iter().zip(gce_results) {
            let outcome = result.map(|(token, obtained_at)| {
                let expires_in = token
                    .expires_at
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_secs());
                m.store(token, obtained_at);
                expires_in
            });
            record(&metrics, &mut retry, name, "gce_metadata", outcome);
        }
    }
}

fn record<E: std::fmt::Display>(
    metrics: &Metrics,
    retry: &mut Retry,
    provider: &str,
    source: &'static str,
    outcome: Result<u64, E>,
) {
    let result = if outcome.is_ok() { "ok" } else { "error" };
    metrics
        .credential_refreshes
        .get_or_create(&CredentialLabels {
            provider: provider.to_owned(),
            source,
            result,
        })
        .inc();
    match outcome {
        Ok(expires_in_s) => {
            tracing::info!(provider, source, expires_in_s, "Got provider credentials");
            retry.remove(provider);
        }
        Err(error) => {
            let wait = backoff(retry, provider);
            tracing::warn!(provider, source, %error, retry_in_s = wait.as_secs(), "Could not get provider credentials");
            retry.insert(provider.to_owned(), (SystemTime::now() + wait, wait));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STS_ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/gw/tollgate</Arn>
      <AssumedRoleId>AROA:tollgate</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>FwoG&amp;token/+=</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCY</SecretAccessKey>
      <Expiration>2026-12-06T15:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE1</AccessKeyId>
    </Credentials>
    <Audience>sts.amazonaws.com</Audience>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn sts_answers_are_read_minimally_and_safely() {
        let now = SystemTime::now();
        let c = sts_credentials(STS_ANSWER, now).unwrap();
        assert_eq!(c.access_key_id, "ASIAEXAMPLE1");
        assert_eq!(
            c.secret_access_key.expose(),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"
        );
        assert_eq!(c.session_token.unwrap().expose(), "FwoG&token/+=");
        assert_eq!(
            c.expires_at.unwrap(),
            SystemTime::from(time::macros::datetime!(2026-12-06 15:00:00 UTC))
        );
        // Missing members, child elements where text belongs, unknown entities: refused.
        for bad in [
            STS_ANSWER.replace("<AccessKeyId>ASIAEXAMPLE1</AccessKeyId>", ""),
            STS_ANSWER.replace("ASIAEXAMPLE1", "<x>ASIA</x>"),
            STS_ANSWER.replace("&amp;", "&bogus;"),
            STS_ANSWER.replace("2026-12-06T15:00:00Z", "tomorrow"),
            STS_ANSWER.replace("ASIAEXAMPLE1", "ASIA/bad"),
            "<ErrorResponse/>".to_owned(),
            String::new(),
        ] {
            assert!(sts_credentials(&bad, now).is_err(), "{bad}");
        }
        let error = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider</Message></Error></ErrorResponse>";
        assert_eq!(
            xml_text(error, "Code").as_deref(),
            Some("InvalidIdentityToken")
        );
    }

    #[test]
    fn container_and_imds_json_is_checked() {
        let now = SystemTime::now();
        let ok = r#"{"Code":"Success","LastUpdated":"2026-12-06T13:00:00Z","Type":"AWS-HMAC","AccessKeyId":"ASIAIMDS","SecretAccessKey":"s","Token":"t","Expiration":"2026-12-06T19:00:00Z"}"#;
        let c = json_credentials(ok, now).unwrap();
        assert_eq!(c.access_key_id, "ASIAIMDS");
        assert!(json_credentials(&ok.replace("Success", "Failed"), now).is_err());
        assert!(json_credentials(&ok.replace("\"t\"", "\"a\\nb\""), now).is_err());
        assert!(json_credentials("{}", now).is_err());
        // The container endpoint's answer has no Code.
        let container = r#"{"AccessKeyId":"ASIAC","SecretAccessKey":"s","Token":"t","Expiration":"2026-12-06T19:00:00Z","RoleArn":"arn:aws:iam::1:role/r"}"#;
        assert_eq!(
            json_credentials(container, now).unwrap().access_key_id,
            "ASIAC"
        );
    }

    #[test]
    fn credential_errors_never_hold_the_answer() {
        let e = CredentialError::Refused {
            status: 403,
            code: Some("InvalidIdentityToken".into()),
        };
        assert_eq!(e.to_string(), "answered HTTP 403 (InvalidIdentityToken)");
    }
}
