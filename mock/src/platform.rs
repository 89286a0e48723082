//! Credentials endpoints of the platforms a gateway runs on, with their real wire formats:
//! AWS STS `AssumeRoleWithWebIdentity` (`POST /`, form body, XML answer and XML errors), the
//! container credentials endpoint (`GET /v2/credentials/{id}` as ECS serves it,
//! `GET /v1/credentials` as the EKS Pod Identity agent does, with its `authorization` token),
//! EC2 instance metadata IMDSv2 (`PUT /latest/api/token`, then
//! `GET /latest/meta-data/iam/security-credentials/[role]` with that token) and the GCE/GKE
//! metadata server's access token (`GET /computeMetadata/v1/instance/service-accounts/default/token`,
//! `Metadata-Flavor: Google` both ways).
//!
//! Every AWS credential handed out is temporary (a key id, secret and session token living
//! [`MockConfig::credential_ttl`](crate::MockConfig)); the Bedrock routes accept requests
//! signed with one of them while it lives, with its session token signed in
//! ([`Issued::lookup`]). GCE tokens join the Vertex AI tokens the publisher routes accept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The IAM role the instance metadata names.
pub const INSTANCE_ROLE: &str = "mock-instance-role";

/// The `authorization` the EKS Pod Identity path (`/v1/credentials`) requires.
pub const CONTAINER_AUTH_TOKEN: &str = "mock-pod-identity-token";

/// The lifetime of credentials when the config gives none.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Temporary AWS credentials handed out, by access key id.
#[derive(Default)]
pub struct Issued {
    by_key: Mutex<HashMap<String, IssuedCredentials>>,
    imds_tokens: Mutex<HashMap<String, SystemTime>>,
}

/// One set of temporary credentials.
#[derive(Clone)]
struct IssuedCredentials {
    secret: String,
    token: String,
    expires_at: SystemTime,
}

/// What the Bedrock verifier learns about an access key id.
pub(crate) enum Lookup {
    /// Not issued here.
    Unknown,
    /// Issued here and expired.
    Expired,
    /// Issued here and valid: its secret and session token.
    Valid {
        /// The secret access key.
        secret: String,
        /// The session token that must come with it.
        token: String,
    },
}

impl Issued {
    fn issue(&self, source: &str, number: u64, ttl: Duration) -> (String, IssuedCredentials) {
        let key_id = format!("ASIAMOCK{}{number:08}", source.to_ascii_uppercase());
        let creds = IssuedCredentials {
            secret: format!("mock-secret-{source}-{number}-{}", rand::random::<u64>()),
            token: format!("mock-session-{source}-{number}-{}", rand::random::<u64>()),
            // Whole seconds: the wire formats carry no fractions.
            expires_at: SystemTime::UNIX_EPOCH
                + Duration::from_secs(
                    (SystemTime::now() + ttl)
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                ),
        };
        if let Ok(mut map) = self.by_key.lock() {
            map.insert(key_id.clone(), creds.clone());
        }
        (key_id, creds)
    }

    /// The credentials of `key_id` at `now`.
    pub(crate) fn lookup(&self, key_id: &str, now: SystemTime) -> Lookup {
        let Some(c) = self.by_key.lock().ok().and_then(|m| m.get(key_id).cloned()) else {
            return Lookup::Unknown;
        };
        if c.expires_at <= now {
            return Lookup::Expired;
        }
        Lookup::Valid {
            secret: c.secret,
            token: c.token,
        }
    }
}

fn iso8601(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn ttl(config: Duration) -> Duration {
    if config.is_zero() {
        DEFAULT_TTL
    } else {
        config
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn sts_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>mock-request</RequestId>\n</ErrorResponse>\n",
        xml_escape(message)
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

/// Percent-decodes one form value (`+` is a space).
fn form_value(body: &str, name: &str) -> Option<String> {
    let raw = body
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// STS `AssumeRoleWithWebIdentity` (`POST /`, form body): the token must be a JWT (three
/// base64url parts), the role an IAM role ARN.
pub(crate) fn sts(issued: &Issued, ttl_config: Duration, number: u64, body: &[u8]) -> Response {
    let body = String::from_utf8_lossy(body);
    if form_value(&body, "Action").as_deref() != Some("AssumeRoleWithWebIdentity") {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "Could not find operation for this request.",
        );
    }
    if form_value(&body, "Version").as_deref() != Some("2011-06-15") {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue",
            "Invalid Version.",
        );
    }
    let role = form_value(&body, "RoleArn").unwrap_or_default();
    let session = form_value(&body, "RoleSessionName").unwrap_or_default();
    if !role.starts_with("arn:aws:iam::") || !role.contains(":role/") || session.is_empty() {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "1 validation error detected: Value at 'roleArn' or 'roleSessionName' failed to satisfy constraint.",
        );
    }
    let token = form_value(&body, "WebIdentityToken").unwrap_or_default();
    let jwt_like = token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !jwt_like {
        return sts_error(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "The web identity token that was passed could not be validated by AWS.",
        );
    }
    let (key_id, c) = issued.issue("sts", number, ttl(ttl_config));
    let account = role
        .trim_start_matches("arn:aws:iam::")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let role_name = role.rsplit('/').next().unwrap_or_default();
    let body = format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:default:tollgate</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn>
      <AssumedRoleId>AROAMOCK:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{key_id}</AccessKeyId>
    </Credentials>
    <Provider>arn:aws:iam::{account}:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/MOCK</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>mock-{number}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"#,
        session = xml_escape(&session),
        token = xml_escape(&c.token),
        secret = xml_escape(&c.secret),
        expiration = iso8601(c.expires_at),
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}

fn credentials_json(key_id: &str, c: &IssuedCredentials, with_code: bool) -> serde_json::Value {
    let mut v = json!({
        "AccessKeyId": key_id,
        "SecretAccessKey": c.secret,
        "Token": c.token,
        "Expiration": iso8601(c.expires_at),
    });
    if with_code {
        v["Code"] = json!("Success");
        v["LastUpdated"] = json!(iso8601(SystemTime::now()));
        v["Type"] = json!("AWS-HMAC");
    } else {
        v["RoleArn"] = json!("arn:aws:iam::123456789012:role/mock-task-role");
    }
    v
}

/// The container credentials endpoint: ECS (`/v2/credentials/{id}`) or EKS Pod Identity
/// (`/v1/credentials`, which requires [`CONTAINER_AUTH_TOKEN`] in `authorization`).
pub(crate) fn container(
    issued: &Issued,
    ttl_config: Duration,
    number: u64,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    if path == "/v1/credentials"
        && headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(CONTAINER_AUTH_TOKEN)
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"code": "AccessDeniedException", "message": "Invalid authorization token"}),
            ),
        )
            .into_response();
    }
    let (key_id, c) = issued.issue("container", number, ttl(ttl_config));
    Json(credentials_json(&key_id, &c, false)).into_response()
}

/// Whether a path is the container endpoint's.
pub(crate) fn is_container(path: &str) -> bool {
    path == "/v1/credentials"
        || path
            .strip_prefix("/v2/credentials/")
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// IMDSv2: the token, then the role, then its credentials; `None` for other paths.
pub(crate) fn imds(
    issued: &Issued,
    ttl_config: Duration,
    number: u64,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
    let text = |status: StatusCode, body: String| {
        (status, [("content-type", "text/plain")], body).into_response()
    };
    if path == "/latest/api/token" {
        if *method != Method::PUT {
            return Some(text(StatusCode::METHOD_NOT_ALLOWED, String::new()));
        }
        let ttl_ok = headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| (1..=21_600).contains(&s));
        if !ttl_ok {
            return Some(text(StatusCode::BAD_REQUEST, String::new()));
        }
        let token = format!("mock-imds-token-{number}-{}", rand::random::<u32>());
        if let Ok(mut t) = issued.imds_tokens.lock() {
            t.insert(
                token.clone(),
                SystemTime::now() + Duration::from_secs(21_600),
            );
        }
        return Some(text(StatusCode::OK, token));
    }
    let role = path
        .strip_prefix(CREDS)
        .or_else(|| (path == CREDS.trim_end_matches('/')).then_some(""))?;
    let token_ok = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            issued
                .imds_tokens
                .lock()
                .is_ok_and(|m| m.get(t).is_some_and(|e| *e > SystemTime::now()))
        });
    if !token_ok {
        // IMDSv2 only: no token, no answer.
        return Some(text(StatusCode::UNAUTHORIZED, String::new()));
    }
    Some(match role {
        "" => text(StatusCode::OK, INSTANCE_ROLE.to_owned()),
        INSTANCE_ROLE => {
            let (key_id, c) = issued.issue("imds", number, ttl(ttl_config));
            Json(credentials_json(&key_id, &c, true)).into_response()
        }
        _ => text(StatusCode::NOT_FOUND, String::new()),
    })
}

/// The GCE metadata server's path of the default account's token.
pub(crate) const GCE_TOKEN_PATH: &str =
    "/computeMetadata/v1/instance/service-accounts/default/token";

/// The GCE metadata token: `Metadata-Flavor: Google` required; the token is one the Vertex
/// routes accept (`issue`), living the configured lifetime.
pub(crate) fn gce_token(
    ttl_config: Duration,
    headers: &HeaderMap,
    issue: impl FnOnce() -> String,
) -> Response {
    let flavor = headers.get("metadata-flavor").map(HeaderValue::as_bytes);
    let mut r = if flavor != Some(b"Google") {
        (
            StatusCode::FORBIDDEN,
            [("content-type", "text/html")],
            "Missing required header \"Metadata-Flavor\": \"Google\"",
        )
            .into_response()
    } else {
        Json(json!({
            "access_token": issue(),
            "expires_in": ttl(ttl_config).as_secs(),
            "token_type": "Bearer",
        }))
        .into_response()
    };
    r.headers_mut().insert(
        HeaderName::from_static("metadata-flavor"),
        HeaderValue::from_static("Google"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_live_their_ttl() {
        let issued = Issued::default();
        let (id, c) = issued.issue("sts", 7, Duration::from_secs(60));
        assert!(id.starts_with("ASIAMOCKSTS"));
        let now = SystemTime::now();
        assert!(matches!(issued.lookup(&id, now), Lookup::Valid { token, .. } if token == c.token));
        assert!(matches!(
            issued.lookup(&id, now + Duration::from_secs(61)),
            Lookup::Expired
        ));
        assert!(matches!(issued.lookup("AKIDOTHER", now), Lookup::Unknown));
    }

    #[test]
    fn form_values_decode() {
        assert_eq!(
            form_value(
                "Action=X&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr",
                "RoleArn"
            )
            .as_deref(),
            Some("arn:aws:iam::1:role/r")
        );
        assert_eq!(form_value("a=1", "b"), None);
    }
}
