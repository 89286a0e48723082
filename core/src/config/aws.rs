//! The standard AWS credential chain of a `bedrock` provider that names no keys, resolved
//! from the environment and the shared files the way AWS SDKs do: environment variables, the
//! shared profile (`~/.aws/credentials`, `~/.aws/config`), web identity (IRSA: STS
//! `AssumeRoleWithWebIdentity`), container credentials (ECS, EKS Pod Identity) and instance
//! metadata (IMDSv2). Only the choice of source and what it needs are settled here (no I/O but
//! reading local files); the credentials of the sources that answer over HTTP are fetched and
//! refreshed by the service (`tollgate_extproc::aws`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Secret;
use crate::env::EnvSource;
use crate::sigv4::AwsCredentials;

/// Where a chain provider's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsSource {
    /// Fixed credentials found in the environment or a profile (`origin` says which).
    Static {
        /// `environment` or `profile NAME`.
        origin: String,
    },
    /// STS `AssumeRoleWithWebIdentity` with a token file (EKS IRSA).
    WebIdentity(WebIdentity),
    /// The container credentials endpoint (ECS task roles, EKS Pod Identity).
    Container(ContainerEndpoint),
    /// The EC2 instance metadata service, IMDSv2.
    Imds {
        /// `http://169.254.169.254` unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise.
        endpoint: String,
    },
}

impl AwsSource {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AwsSource::Static { .. } => "static",
            AwsSource::WebIdentity(_) => "web_identity",
            AwsSource::Container(_) => "container",
            AwsSource::Imds { .. } => "imds",
        }
    }

    /// Whether the credentials must be fetched (and refreshed) over HTTP.
    pub fn fetched(&self) -> bool {
        !matches!(self, AwsSource::Static { .. })
    }
}

/// What `AssumeRoleWithWebIdentity` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebIdentity {
    /// The OIDC token file, read anew on every call (the kubelet rotates it).
    pub token_file: PathBuf,
    /// The role to assume.
    pub role_arn: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// The STS endpoint (`https://sts.{region}.amazonaws.com`, the global one with
    /// `AWS_STS_REGIONAL_ENDPOINTS=legacy`, or `AWS_ENDPOINT_URL_STS` / `AWS_ENDPOINT_URL`).
    pub sts_endpoint: String,
}

/// The container credentials endpoint and its authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEndpoint {
    /// The full URL to `GET`.
    pub url: String,
    /// The `authorization` header's value, if any.
    pub token: Option<ContainerToken>,
}

/// Where the container endpoint's authorization token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerToken {
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, read anew on every call.
    File(PathBuf),
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    Value(Secret),
}

/// The ECS container credentials host of `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const ECS_HOST: &str = "http://169.254.170.2";

/// The instance metadata endpoint.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";

fn var(env: &dyn EnvSource, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Resolves the chain for a provider in `region`: the first source that is configured wins
/// (environment, profile, web identity, container, instance metadata). The error names the
/// variable or file that is wrong, or says that no source is configured at all.
pub fn resolve(
    env: &dyn EnvSource,
    region: &str,
) -> Result<(AwsSource, Option<AwsCredentials>), String> {
    // 1. Environment.
    let key_id = var(env, "AWS_ACCESS_KEY_ID");
    let secret = var(env, "AWS_SECRET_ACCESS_KEY");
    match (key_id, secret) {
        (Some(id), Some(secret)) => {
            let token = var(env, "AWS_SESSION_TOKEN").map(Secret::new);
            let creds = AwsCredentials::long_lived(check_key_id(id)?, Secret::new(secret), token);
            let origin = "environment".to_owned();
            return Ok((AwsSource::Static { origin }, Some(creds)));
        }
        (Some(_), None) => {
            return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into())
        }
        (None, Some(_)) => {
            return Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into())
        }
        (None, None) => {}
    }
    // 2. The shared profile.
    if let Some(found) = profile(env, region)? {
        return Ok(found);
    }
    // 3. Web identity.
    match (
        var(env, "AWS_WEB_IDENTITY_TOKEN_FILE"),
        var(env, "AWS_ROLE_ARN"),
    ) {
        (Some(file), Some(role)) => {
            let session = var(env, "AWS_ROLE_SESSION_NAME");
            return web_identity(env, region, PathBuf::from(file), role, session)
                .map(|w| (AwsSource::WebIdentity(w), None));
        }
        (Some(_), None) => {
            return Err("AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not".into())
        }
        (None, Some(_)) => {
            return Err("AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not".into())
        }
        (None, None) => {}
    }
    // 4. Container credentials.
    if let Some(c) = container(env)? {
        return Ok((AwsSource::Container(c), None));
    }
    // 5. Instance metadata.
    if var(env, "AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(
            "no AWS credentials: none in the environment, the shared profile, web \
                    identity or container variables, and AWS_EC2_METADATA_DISABLED=true"
                .into(),
        );
    }
    let endpoint = match var(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        Some(e) => check_url(&e, "AWS_EC2_METADATA_SERVICE_ENDPOINT")?,
        None => IMDS_ENDPOINT.to_owned(),
    };
    Ok((AwsSource::Imds { endpoint }, None))
}

fn check_key_id(id: String) -> Result<String, String> {
    if id.contains(['/', ',', ' ']) || http::HeaderValue::from_str(&id).is_err() {
        return Err("the access key id contains characters not allowed in it".into());
    }
    Ok(id)
}

/// An `http(s)://` URL without a trailing slash; the error names `what`.
fn check_url(url: &str, what: &str) -> Result<String, String> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|_| format!("{what}: `{url}` is not a URL"))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
        return Err(format!(
            "{what}: `{url}` must be an http:// or https:// URL"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn web_identity(
    env: &dyn EnvSource,
    region: &str,
    token_file: PathBuf,
    role_arn: String,
    session_name: Option<String>,
) -> Result<WebIdentity, String> {
    std::fs::metadata(&token_file).map_err(|e| {
        format!(
            "the web identity token file {} cannot be read: {e}",
            token_file.display()
        )
    })?;
    if !role_arn.starts_with("arn:") {
        return Err(format!("the role `{role_arn}` is not an ARN"));
    }
    let region = var(env, "AWS_REGION")
        .or_else(|| var(env, "AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| region.to_owned());
    let sts_endpoint = if let Some(url) = var(env, "AWS_ENDPOINT_URL_STS") {
        check_url(&url, "AWS_ENDPOINT_URL_STS")?
    } else if let Some(url) = var(env, "AWS_ENDPOINT_URL") {
        check_url(&url, "AWS_ENDPOINT_URL")?
    } else if var(env, "AWS_STS_REGIONAL_ENDPOINTS").as_deref() == Some("legacy") {
        "https://sts.amazonaws.com".to_owned()
    } else {
        format!("https://sts.{region}.amazonaws.com")
    };
    Ok(WebIdentity {
        token_file,
        role_arn,
        session_name: session_name.unwrap_or_else(|| "tollgate".to_owned()),
        sts_endpoint,
    })
}

/// Whether an `http://` container endpoint's host may be trusted, as AWS SDKs require:
/// loopback, the ECS host or the EKS Pod Identity agent.
fn trusted_container_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    matches!(
        host,
        "localhost" | "169.254.170.2" | "169.254.170.23" | "fd00:ec2::23"
    ) || host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn container(env: &dyn EnvSource) -> Result<Option<ContainerEndpoint>, String> {
    let url = if let Some(rel) = var(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        if !rel.starts_with('/') {
            return Err("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with `/`".into());
        }
        format!("{ECS_HOST}{rel}")
    } else if let Some(full) = var(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        let uri: http::Uri = full
            .parse()
            .map_err(|_| "AWS_CONTAINER_CREDENTIALS_FULL_URI is not a URL".to_owned())?;
        let host = uri.host().unwrap_or_default();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if trusted_container_host(host) => {}
            _ => {
                return Err(format!(
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI: `{host}` is not allowed over http \
                     (only loopback, 169.254.170.2, 169.254.170.23 or fd00:ec2::23; else https)"
                ))
            }
        }
        full
    } else {
        return Ok(None);
    };
    let token = if let Some(file) = var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        let file = PathBuf::from(file);
        std::fs::metadata(&file).map_err(|e| {
            format!(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {} cannot be read: {e}",
                file.display()
            )
        })?;
        Some(ContainerToken::File(file))
    } else {
        var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN").map(|t| ContainerToken::Value(Secret::new(t)))
    };
    Ok(Some(ContainerEndpoint { url, token }))
}

/// An INI file's sections: name → (key → value).
type Ini = HashMap<String, HashMap<String, String>>;

/// Sections of an INI file. Comments (`#`, `;`) and blank lines skipped.
fn ini(text: &str) -> Ini {
    let mut out = Ini::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_owned();
            out.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

fn home_file(env: &dyn EnvSource, var_name: &str, default: &str) -> Option<PathBuf> {
    var(env, var_name)
        .map(PathBuf::from)
        .or_else(|| var(env, "HOME").map(|h| Path::new(&h).join(".aws").join(default)))
}

/// The shared profile (`AWS_PROFILE`, else `default`) from the credentials file, then the
/// config file (`[profile NAME]`): its access key, or its web identity role. `None` when no
/// file has the profile; a named profile that exists nowhere is an error.
fn profile(
    env: &dyn EnvSource,
    region: &str,
) -> Result<Option<(AwsSource, Option<AwsCredentials>)>, String> {
    let named = var(env, "AWS_PROFILE");
    let name = named.clone().unwrap_or_else(|| "default".to_owned());
    let read = |path: &Option<PathBuf>| -> Result<Option<Ini>, String> {
        let Some(path) = path else { return Ok(None) };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(ini(&text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    let credentials_file = home_file(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_file = home_file(env, "AWS_CONFIG_FILE", "config");
    let mut section = read(&credentials_file)?.and_then(|mut s| s.remove(&name));
    let mut file = credentials_file;
    if section.is_none() {
        let config_name = if name == "default" {
            name.clone()
        } else {
            format!("profile {name}")
        };
        section = read(&config_file)?.and_then(|mut s| s.remove(&config_name));
        file = config_file;
    }
    let Some(section) = section else {
        return match named {
            Some(n) => Err(format!(
                "AWS_PROFILE names `{n}`, which neither the shared credentials file nor the \
                 config file has"
            )),
            None => Ok(None),
        };
    };
    let where_ = file.map(|f| f.display().to_string()).unwrap_or_default();
    let get = |k: &str| section.get(k).filter(|v| !v.is_empty()).cloned();
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => {
            let creds = AwsCredentials::long_lived(
                check_key_id(id).map_err(|e| format!("profile `{name}` in {where_}: {e}"))?,
                Secret::new(secret),
                get("aws_session_token").map(Secret::new),
            );
            let origin = format!("profile {name}");
            return Ok(Some((AwsSource::Static { origin }, Some(creds))));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(format!(
            "profile `{name}` in {where_} needs both aws_access_key_id and aws_secret_access_key"
        ))
        }
        (None, None) => {}
    }
    if let (Some(role), Some(token_file)) = (get("role_arn"), get("web_identity_token_file")) {
        let w = web_identity(
            env,
            region,
            PathBuf::from(token_file),
            role,
            get("role_session_name"),
        )
        .map_err(|e| format!("profile `{name}` in {where_}: {e}"))?;
        return Ok(Some((AwsSource::WebIdentity(w), None)));
    }
    // A profile with other settings only (region, output): the chain goes on.
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;

    #[test]
    fn environment_first_then_profile_then_web_identity_container_imds() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "jwt").unwrap();
        let token = token.display().to_string();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = s3cr3t\n\n\
             [other]\n# a comment\naws_access_key_id=AKIDOTHER\naws_secret_access_key=x\naws_session_token=tok\n",
        )
        .unwrap();
        let creds = creds.display().to_string();

        let env = MapEnv::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "session"),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_str()),
        ]);
        let (source, c) = resolve(&env, "us-east-1").unwrap();
        assert_eq!(source.kind(), "static");
        let c = c.unwrap();
        assert_eq!(c.access_key_id, "AKIDENV");
        assert_eq!(c.session_token.unwrap().expose(), "session");

        let env = MapEnv::from_pairs([("AWS_SHARED_CREDENTIALS_FILE", creds.as_str())]);
        let (source, c) = resolve(&env, "us-east-1").unwrap();
        assert_eq!(
            source,
            AwsSource::Static {
                origin: "profile default".into()
            }
        );
        assert_eq!(c.unwrap().access_key_id, "AKIDPROFILE");

        let env = MapEnv::from_pairs([
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_str()),
            ("AWS_PROFILE", "other"),
        ]);
        let c = resolve(&env, "us-east-1").unwrap().1.unwrap();
        assert_eq!(c.access_key_id, "AKIDOTHER");
        assert_eq!(c.session_token.unwrap().expose(), "tok");

        // A named profile that exists nowhere is a misconfiguration.
        let env = MapEnv::from_pairs([
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_str()),
            ("AWS_PROFILE", "missing"),
        ]);
        assert!(resolve(&env, "us-east-1")
            .unwrap_err()
            .contains("`missing`"));

        // Web identity: regional STS by default, the override, the legacy global endpoint.
        let missing = dir.path().join("none").display().to_string();
        let base = [
            ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
            ("AWS_CONFIG_FILE", missing.as_str()),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.as_str()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gw"),
        ];
        let env = MapEnv::from_pairs(base);
        let AwsSource::WebIdentity(w) = resolve(&env, "eu-west-1").unwrap().0 else {
            panic!("not web identity")
        };
        assert_eq!(w.sts_endpoint, "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(w.session_name, "tollgate");
        let env = MapEnv::from_pairs(
            base.into_iter()
                .chain([("AWS_STS_REGIONAL_ENDPOINTS", "legacy")]),
        );
        let AwsSource::WebIdentity(w) = resolve(&env, "eu-west-1").unwrap().0 else {
            panic!("not web identity")
        };
        assert_eq!(w.sts_endpoint, "https://sts.amazonaws.com");
        let env = MapEnv::from_pairs(base.into_iter().chain([
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9/"),
            ("AWS_REGION", "ap-south-1"),
        ]));
        let AwsSource::WebIdentity(w) = resolve(&env, "eu-west-1").unwrap().0 else {
            panic!("not web identity")
        };
        assert_eq!(w.sts_endpoint, "http://127.0.0.1:9");
        // A token file that is not there: a start-up error, not a retry.
        let env = MapEnv::from_pairs([
            ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", missing.as_str()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/gw"),
        ]);
        assert!(resolve(&env, "us-east-1")
            .unwrap_err()
            .contains("cannot be read"));

        // Container credentials: relative (ECS), full (trusted hosts only over http).
        let none = [
            ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
            ("AWS_CONFIG_FILE", missing.as_str()),
        ];
        let env = MapEnv::from_pairs(none.into_iter().chain([(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/abc",
        )]));
        assert_eq!(
            resolve(&env, "us-east-1").unwrap().0,
            AwsSource::Container(ContainerEndpoint {
                url: "http://169.254.170.2/v2/credentials/abc".into(),
                token: None
            })
        );
        let env = MapEnv::from_pairs(none.into_iter().chain([
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token.as_str()),
        ]));
        let AwsSource::Container(c) = resolve(&env, "us-east-1").unwrap().0 else {
            panic!("not container")
        };
        assert_eq!(c.token, Some(ContainerToken::File(PathBuf::from(&token))));
        let env = MapEnv::from_pairs(none.into_iter().chain([(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://evil.example/creds",
        )]));
        assert!(resolve(&env, "us-east-1")
            .unwrap_err()
            .contains("not allowed"));

        // Nothing configured: instance metadata, unless disabled.
        let env = MapEnv::from_pairs(none);
        assert_eq!(
            resolve(&env, "us-east-1").unwrap().0,
            AwsSource::Imds {
                endpoint: IMDS_ENDPOINT.into()
            }
        );
        let env = MapEnv::from_pairs(
            none.into_iter()
                .chain([("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/")]),
        );
        assert_eq!(
            resolve(&env, "us-east-1").unwrap().0,
            AwsSource::Imds {
                endpoint: "http://127.0.0.1:9".into()
            }
        );
        let env = MapEnv::from_pairs(
            none.into_iter()
                .chain([("AWS_EC2_METADATA_DISABLED", "true")]),
        );
        assert!(resolve(&env, "us-east-1")
            .unwrap_err()
            .starts_with("no AWS credentials"));
        // Half a key pair is a misconfiguration.
        let env = MapEnv::from_pairs([("AWS_ACCESS_KEY_ID", "AKID")]);
        assert!(resolve(&env, "us-east-1").is_err());
    }

    #[test]
    fn a_config_file_profile_may_assume_a_role_with_web_identity() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "jwt").unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            format!(
                "[default]\nregion = us-east-1\n\n[profile irsa]\nrole_arn = arn:aws:iam::1:role/r\nweb_identity_token_file = {}\nrole_session_name = s1\n",
                token.display()
            ),
        )
        .unwrap();
        let missing = dir.path().join("none").display().to_string();
        let config = config.display().to_string();
        let env = MapEnv::from_pairs([
            ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
            ("AWS_CONFIG_FILE", config.as_str()),
            ("AWS_PROFILE", "irsa"),
        ]);
        let AwsSource::WebIdentity(w) = resolve(&env, "eu-central-1").unwrap().0 else {
            panic!("not web identity")
        };
        assert_eq!(w.role_arn, "arn:aws:iam::1:role/r");
        assert_eq!(w.session_name, "s1");
        assert_eq!(w.sts_endpoint, "https://sts.eu-central-1.amazonaws.com");
        // The default profile with only a region: the chain goes on (to instance metadata).
        let env = MapEnv::from_pairs([
            ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
            ("AWS_CONFIG_FILE", config.as_str()),
        ]);
        assert_eq!(resolve(&env, "us-east-1").unwrap().0.kind(), "imds");
        // A container token given as a value.
        let env = MapEnv::from_pairs([
            ("AWS_SHARED_CREDENTIALS_FILE", missing.as_str()),
            ("AWS_CONFIG_FILE", missing.as_str()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "https://creds.example/v1",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok"),
        ]);
        let AwsSource::Container(c) = resolve(&env, "us-east-1").unwrap().0 else {
            panic!("not container")
        };
        assert_eq!(
            c.token,
            Some(ContainerToken::Value(Secret::new("tok".into())))
        );
        assert!(!format!("{c:?}").contains("tok\""));
    }

    #[test]
    fn credentials_are_due_before_they_expire() {
        use std::time::{Duration, SystemTime};
        let now = SystemTime::now();
        let mut c = AwsCredentials::long_lived("A".into(), Secret::new("s".into()), None);
        assert!(!c.due(now, Duration::from_secs(300)));
        c.obtained_at = now;
        c.expires_at = Some(now + Duration::from_secs(3600));
        assert!(!c.due(now, Duration::from_secs(300)));
        assert!(c.due(now + Duration::from_secs(3301), Duration::from_secs(300)));
        // Short-lived: refreshed at half their lifetime.
        c.expires_at = Some(now + Duration::from_secs(10));
        assert!(!c.due(now + Duration::from_secs(4), Duration::from_secs(300)));
        assert!(c.due(now + Duration::from_secs(5), Duration::from_secs(300)));
    }
}
