//! AWS Signature Version 4 (`AWS4-HMAC-SHA256`) for requests to AWS services (Bedrock
//! Runtime, signing name `bedrock`): the canonical request, the string to sign, the signing key
//! derived from the secret (cached per UTC day), and the `authorization`, `x-amz-date`,
//! `x-amz-content-sha256` and `x-amz-security-token` headers.
//!
//! The canonical URI is the path exactly as sent, URI-encoded once more (every service but S3
//! encodes path segments twice: a Bedrock model id `…-v1:0` goes out as `…-v1%3A0` and is
//! signed as `…-v1%253A0`). [`signature`] is the one function that computes a signature; the
//! [`Signer`] (Tollgate towards Bedrock) and the mock provider's verifier both call it.

use std::sync::Mutex;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The algorithm name in the string to sign and the `authorization` header.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The signing name of Bedrock Runtime (`bedrock-runtime.{region}.amazonaws.com`).
pub const BEDROCK_SERVICE: &str = "bedrock";

/// Hex SHA-256 of `data` (the payload hash of `x-amz-content-sha256`).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The signing key of one day (`YYYYMMDD`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut k_secret = Vec::with_capacity(4 + secret.len());
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret.as_bytes());
    let k_date = hmac(&k_secret, date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn push_encoded(out: &mut String, s: &str, keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// `s` URI-encoded as AWS requires: everything but `A-Z a-z 0-9 - _ . ~` as `%XX` (upper
/// case). A model id becomes one path segment this way (`:` → `%3A`, `/` → `%2F`).
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    push_encoded(&mut out, s, false);
    out
}

/// The canonical URI of a path as sent (already encoded once): encoded again, `/` kept.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len() + 8);
    push_encoded(&mut out, path, true);
    out
}

/// The canonical query string: `name=value` pairs as sent, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    let mut out = String::with_capacity(query.len());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// One request as signed: `headers` are the signed headers (any order, any case; values are
/// trimmed and inner runs of spaces collapsed), `payload_hash` the hex SHA-256 of the body.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path as sent, without the query.
    pub path: &'a str,
    /// The query as sent, without `?` (empty for none).
    pub query: &'a str,
    /// The headers to sign.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    pub payload_hash: &'a str,
}

/// The canonical request and the `SignedHeaders` list of `req`.
pub fn canonical_request(req: &Request<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    headers.sort_unstable();
    let mut canonical = String::with_capacity(256 + req.path.len());
    canonical.push_str(req.method);
    canonical.push('\n');
    canonical.push_str(&canonical_uri(req.path));
    canonical.push('\n');
    canonical.push_str(&canonical_query(req.query));
    canonical.push('\n');
    let mut signed = String::with_capacity(64);
    for (i, (k, v)) in headers.iter().enumerate() {
        canonical.push_str(k);
        canonical.push(':');
        canonical.push_str(v);
        canonical.push('\n');
        if i > 0 {
            signed.push(';');
        }
        signed.push_str(k);
    }
    canonical.push('\n');
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(req.payload_hash);
    (canonical, signed)
}

/// The string to sign of a canonical request at `amz_date` (`YYYYMMDDTHHMMSSZ`) in `scope`
/// (`YYYYMMDD/region/service/aws4_request`).
pub fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// The hex signature of `req` with a day's signing `key`, and its `SignedHeaders` list.
pub fn signature(
    req: &Request<'_>,
    key: &[u8; 32],
    amz_date: &str,
    scope: &str,
) -> (String, String) {
    let (canonical, signed) = canonical_request(req);
    let sts = string_to_sign(amz_date, scope, &canonical);
    (hex::encode(hmac(key, sts.as_bytes())), signed)
}

/// `YYYYMMDDTHHMMSSZ` of a time (UTC).
pub fn amz_date(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The parts of a parsed `authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    /// The access key id.
    pub access_key_id: &'a str,
    /// `YYYYMMDD` of the scope.
    pub date: &'a str,
    /// The scope's region.
    pub region: &'a str,
    /// The scope's service.
    pub service: &'a str,
    /// The signed header names, `;`-separated.
    pub signed_headers: &'a str,
    /// The hex signature.
    pub signature: &'a str,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=hex` (what a verifier reads back).
pub fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix(ALGORITHM)?.trim_start();
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let auth = Authorization {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed_headers?,
        signature: signature?,
    };
    (scope.next()? == "aws4_request" && scope.next().is_none()).then_some(auth)
}

/// Headers that sign one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `authorization`.
    pub authorization: String,
    /// `x-amz-date`.
    pub amz_date: String,
    /// `x-amz-content-sha256`.
    pub content_sha256: String,
    /// `x-amz-security-token`: the session token of the credentials that signed (temporary
    /// credentials only). Send exactly this one: it is part of the signature.
    pub security_token: Option<String>,
}

/// One set of AWS credentials: long-lived (an access key) or temporary (with a session
/// token and an expiry).
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// The access key id (not secret, but kept out of logs all the same).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token of temporary credentials.
    pub session_token: Option<Secret>,
    /// When temporary credentials stop working (`None`: they do not expire).
    pub expires_at: Option<SystemTime>,
    /// When these credentials were obtained (sets how early they are refreshed).
    pub obtained_at: SystemTime,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("session_token", &self.session_token.is_some())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    /// Credentials that never expire (an access key).
    pub fn long_lived(
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    ) -> Self {
        Self {
            access_key_id,
            secret_access_key,
            session_token,
            expires_at: None,
            obtained_at: SystemTime::now(),
        }
    }

    /// Whether these credentials should be replaced at `now`: they expire within
    /// `refresh_before`, or within half their lifetime for short-lived ones.
    pub fn due(&self, now: SystemTime, refresh_before: std::time::Duration) -> bool {
        let Some(expires_at) = self.expires_at else {
            return false;
        };
        let lifetime = expires_at
            .duration_since(self.obtained_at)
            .unwrap_or_default();
        let margin = refresh_before.min(lifetime / 2);
        now + margin >= expires_at
    }

    /// Whether they still work at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// Signs requests for one region and service with the current AWS credentials: fixed ones
/// ([`Signer::new`]) or those a background task keeps fresh ([`Signer::without_credentials`]
/// then [`Signer::store`]). The signing key is derived once per UTC day and credentials and
/// kept.
pub struct Signer {
    credentials: arc_swap::ArcSwapOption<AwsCredentials>,
    region: String,
    service: &'static str,
    /// `/{region}/{service}/aws4_request`, appended to the day of a scope.
    scope_suffix: String,
    /// The signing key of the last day and access key id used.
    key: Mutex<Option<(String, String, [u8; 32])>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of logs, the key id too.
        f.debug_struct("Signer")
            .field("region", &self.region)
            .field("service", &self.service)
            .field("credentials", &self.credentials.load_full())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `service` in `region` with fixed credentials.
    pub fn new(
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
        region: String,
        service: &'static str,
    ) -> Self {
        let signer = Self::without_credentials(region, service);
        signer.store(AwsCredentials::long_lived(
            access_key_id,
            secret_access_key,
            session_token,
        ));
        signer
    }

    /// A signer for `service` in `region` whose credentials come later ([`Signer::store`]).
    pub fn without_credentials(region: String, service: &'static str) -> Self {
        let scope_suffix = format!("/{region}/{service}/aws4_request");
        Self {
            credentials: arc_swap::ArcSwapOption::empty(),
            region,
            service,
            scope_suffix,
            key: Mutex::new(None),
        }
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Replaces the credentials (a refresh): the next request signs with these.
    pub fn store(&self, credentials: AwsCredentials) {
        self.credentials
            .store(Some(std::sync::Arc::new(credentials)));
    }

    /// The credentials as stored, expired or not.
    pub fn credentials(&self) -> Option<std::sync::Arc<AwsCredentials>> {
        self.credentials.load_full()
    }

    /// The session token of the current credentials (temporary ones), sent as
    /// `x-amz-security-token`. Prefer [`Signed::security_token`]: it belongs to the
    /// credentials that signed, even while they are being replaced.
    pub fn session_token(&self) -> Option<String> {
        self.credentials
            .load()
            .as_ref()
            .and_then(|c| c.session_token.as_ref())
            .map(|t| t.expose().to_owned())
    }

    fn key(&self, day: &str, creds: &AwsCredentials) -> [u8; 32] {
        let derive = || {
            signing_key(
                creds.secret_access_key.expose(),
                day,
                &self.region,
                self.service,
            )
        };
        let Ok(mut cached) = self.key.lock() else {
            return derive();
        };
        match &*cached {
            Some((d, id, k)) if d == day && *id == creds.access_key_id => *k,
            _ => {
                let k = derive();
                *cached = Some((day.to_owned(), creds.access_key_id.clone(), k));
                k
            }
        }
    }

    /// Signs a request with headers `host`, `x-amz-content-sha256`, `x-amz-date` and, with a
    /// session token, `x-amz-security-token`: `host` and `path` must be exactly what the
    /// provider receives, `body` the final body. `None` while the signer has no credentials
    /// that work at `now`.
    pub fn try_sign(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Option<Signed> {
        let creds = self.credentials.load_full().filter(|c| c.valid_at(now))?;
        let amz_date = amz_date(now);
        let day = &amz_date[..8];
        let content_sha256 = sha256_hex(body);
        let token = creds.session_token.as_ref().map(Secret::expose);
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(4);
        headers.push(("host", host));
        headers.push(("x-amz-content-sha256", &content_sha256));
        headers.push(("x-amz-date", &amz_date));
        if let Some(t) = token {
            headers.push(("x-amz-security-token", t));
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let scope = format!("{day}{}", self.scope_suffix);
        let (signature, signed_headers) = signature(
            &Request {
                method,
                path,
                query,
                headers: &headers,
                payload_hash: &content_sha256,
            },
            &self.key(day, &creds),
            &amz_date,
            &scope,
        );
        let authorization = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        );
        Some(Signed {
            authorization,
            amz_date,
            content_sha256,
            security_token: token.map(str::to_owned),
        })
    }

    /// [`Signer::try_sign`] for a signer with fixed credentials ([`Signer::new`]); one without
    /// credentials yet gives an empty `authorization`, which AWS refuses.
    pub fn sign(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Signed {
        self.try_sign(method, host, path, body, now)
            .unwrap_or_else(|| Signed {
                authorization: String::new(),
                amz_date: amz_date(now),
                content_sha256: sha256_hex(body),
                security_token: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    // AWS's published example credentials and the SigV4 test suite's fixed time.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_DATE: &str = "20150830T123600Z";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn suite(method: &str) -> (String, String) {
        let headers = [
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", SUITE_DATE),
        ];
        let req = Request {
            method,
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let key = signing_key(SECRET, "20150830", "us-east-1", "service");
        signature(
            &req,
            &key,
            SUITE_DATE,
            "20150830/us-east-1/service/aws4_request",
        )
    }

    #[test]
    fn the_documented_signing_key_derivation() {
        // AWS's "derive a signing key" example.
        assert_eq!(
            hex::encode(signing_key(SECRET, "20120215", "us-east-1", "iam")),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn the_sigv4_test_suite_vanilla_requests() {
        // get-vanilla: canonical request, its hash in the string to sign, the signature.
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", SUITE_DATE),
        ];
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let (canonical, signed) = canonical_request(&req);
        assert_eq!(
            canonical,
            format!("GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:{SUITE_DATE}\n\nhost;x-amz-date\n{EMPTY_SHA256}")
        );
        assert_eq!(signed, "host;x-amz-date");
        assert_eq!(
            string_to_sign(SUITE_DATE, "20150830/us-east-1/service/aws4_request", &canonical),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(
            suite("GET").0,
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        // post-vanilla.
        assert_eq!(
            suite("POST").0,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    #[test]
    fn paths_are_encoded_twice_and_queries_sorted() {
        assert_eq!(
            uri_encode("anthropic.claude-v2:1"),
            "anthropic.claude-v2%3A1"
        );
        assert_eq!(
            uri_encode("arn:aws:bedrock:us-east-1:1:inference-profile/x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx"
        );
        assert_eq!(
            canonical_uri("/model/anthropic.claude-v2%3A1/converse"),
            "/model/anthropic.claude-v2%253A1/converse"
        );
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_440_938_160)),
            SUITE_DATE
        );
    }

    #[test]
    fn a_bedrock_request_signs_host_path_body_and_token() {
        let signer = Signer::new(
            AKID.into(),
            Secret::new(SECRET.into()),
            Some(Secret::new("session-token".into())),
            "us-east-1".into(),
            BEDROCK_SERVICE,
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let path = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
        let host = "bedrock-runtime.us-east-1.amazonaws.com";
        let s = signer.sign("POST", host, path, body, now);
        assert_eq!(s.amz_date, SUITE_DATE);
        assert_eq!(s.content_sha256, sha256_hex(body));
        let auth = parse_authorization(&s.authorization).unwrap();
        assert_eq!(auth.access_key_id, AKID);
        assert_eq!(auth.date, "20150830");
        assert_eq!((auth.region, auth.service), ("us-east-1", "bedrock"));
        assert_eq!(
            auth.signed_headers,
            "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
        );
        // A verifier recomputing from what it received gets the same signature...
        let headers = [
            ("host", host),
            ("x-amz-content-sha256", s.content_sha256.as_str()),
            ("x-amz-date", s.amz_date.as_str()),
            ("x-amz-security-token", "session-token"),
        ];
        let req = Request {
            method: "POST",
            path,
            query: "",
            headers: &headers,
            payload_hash: &s.content_sha256,
        };
        let key = signing_key(SECRET, "20150830", "us-east-1", "bedrock");
        let scope = "20150830/us-east-1/bedrock/aws4_request";
        assert_eq!(signature(&req, &key, SUITE_DATE, scope).0, auth.signature);
        // ...and any change to the host, the path or the body breaks it.
        for (h, p, b) in [
            ("bedrock-runtime.us-west-2.amazonaws.com", path, &body[..]),
            (
                host,
                "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse",
                &body[..],
            ),
            (host, path, b"{}"),
        ] {
            let other = signer.sign("POST", h, p, b, now);
            assert_ne!(other.authorization, s.authorization);
        }
        // The day's key is cached and reused; a new day derives a new one.
        assert_eq!(signer.sign("POST", host, path, body, now), s);
        let tomorrow = signer.sign("POST", host, path, body, now + Duration::from_secs(86_400));
        assert!(tomorrow
            .authorization
            .contains("/20150831/us-east-1/bedrock/"));
        // Without a session token the token header is not signed.
        let plain = Signer::new(
            AKID.into(),
            Secret::new(SECRET.into()),
            None,
            "us-east-1".into(),
            BEDROCK_SERVICE,
        );
        let s = plain.sign("POST", host, path, body, now);
        assert!(s
            .authorization
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date, "));
        let debug = format!("{plain:?}");
        assert!(!debug.contains(SECRET) && !debug.contains(AKID), "{debug}");
    }

    #[test]
    fn malformed_authorization_headers_are_refused() {
        assert!(parse_authorization("Bearer x").is_none());
        assert!(parse_authorization(
            "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/bedrock, SignedHeaders=host, Signature=ab"
        )
        .is_none());
        assert!(parse_authorization(
            "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=ab"
        )
        .is_some());
    }
}
