//! End to end through real Envoy with credentials the way clusters provide them: Bedrock
//! signed with the AWS credential chain (web identity / IRSA through the mock's STS, container
//! credentials, IMDSv2, a shared profile), short-lived credentials rotated in the background,
//! and Vertex AI with the GCE metadata server's token (workload identity). The mock hands out
//! every credential and accepts a Bedrock request only when it is signed with one it issued and
//! still valid, session token included.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A JWT-shaped service account token, as the kubelet projects it for IRSA.
const OIDC_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDp0b2xsZ2F0ZSJ9.c2lnbmF0dXJl";

/// The `bedrock` provider of the base config without its explicit keys: it uses the chain.
fn bedrock_on_the_chain(yaml: String) -> String {
    let keys = "      access_key_id: { env: E2E_AWS_ACCESS_KEY_ID }\n      secret_access_key: { env: E2E_AWS_SECRET_ACCESS_KEY }\n      session_token: { env: E2E_AWS_SESSION_TOKEN }\n";
    let patched = yaml.replacen(keys, "", 1);
    assert_ne!(patched, yaml, "the base config's bedrock keys moved");
    patched
}

/// [`bedrock_on_the_chain`], plus a Vertex AI provider without a key (the metadata server)
/// serving `vertex-wi`.
fn chain_and_workload_identity(yaml: String) -> String {
    let yaml = bedrock_on_the_chain(yaml);
    let mock = yaml
        .split("base_url: \"http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap()
        .to_owned();
    yaml.replacen(
        "\nmodels:\n",
        &format!(
            "\n  vertex-wi:\n    kind: vertex\n    base_url: \"http://{mock}/v1\"\n    project: tollgate-test\n    location: us-central1\nmodels:\n  vertex-wi:\n    targets: [{{ provider: vertex-wi, model: gemini-vertex-model }}]\n"
        ),
        1,
    )
}

/// Chain variables that keep the test machine's own AWS setup out of `serve`.
fn isolated(dir: &Path, vars: &[(&str, String)]) -> Vec<(String, String)> {
    let none = dir.join("none").display().to_string();
    let mut env = vec![
        ("AWS_SHARED_CREDENTIALS_FILE".to_owned(), none.clone()),
        ("AWS_CONFIG_FILE".to_owned(), none),
        ("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned()),
    ];
    env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

async fn chat(stack: &Stack, model: &str) -> Reply {
    stack
        .post(
            "/v1/chat/completions",
            Some(KEY_ALL),
            json!({"model": model, "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .await
}

/// The last Bedrock Converse request the mock saw: (access key id, session token).
async fn last_signed(stack: &Stack) -> (String, Option<String>) {
    let seen = stack.upstream_requests().await;
    let req = seen
        .iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/converse")))
        .unwrap_or_else(|| panic!("no Converse request in {seen:?}"));
    let auth = req["headers"]["authorization"].as_str().unwrap();
    let key_id = auth
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .and_then(|s| s.split('/').next())
        .unwrap()
        .to_owned();
    let token = req["headers"]["x-amz-security-token"]
        .as_str()
        .map(str::to_owned);
    (key_id, token)
}

fn requests_to<'a>(seen: &'a [Value], method: &str, path: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|r| r["method"] == method && r["path"] == path)
        .collect()
}

fn metric(metrics: &str, provider: &str, source: &str, result: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("tollgate_credential_refreshes_total{")
                && l.contains(&format!("provider=\"{provider}\""))
                && l.contains(&format!("source=\"{source}\""))
                && l.contains(&format!("result=\"{result}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn web_identity_credentials_sign_bedrock_and_rotate_with_the_metadata_token() {
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("token");
    std::fs::write(&token_file, format!("{OIDC_TOKEN}\n")).unwrap();
    let stack = Stack::start(StackOptions {
        // Credentials and tokens that live 6 s: refreshed at half their lifetime.
        mock_args: vec!["--credential-ttl-secs".into(), "6".into()],
        serve_env: isolated(
            tokens.path(),
            &[
                (
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    token_file.display().to_string(),
                ),
                (
                    "AWS_ROLE_ARN",
                    "arn:aws:iam::123456789012:role/tollgate".into(),
                ),
                ("AWS_ROLE_SESSION_NAME", "gw-e2e".into()),
                ("AWS_ENDPOINT_URL_STS", "http://{mock}".into()),
                ("GCE_METADATA_HOST", "{mock}".into()),
            ],
        ),
        patch_config: Some(chain_and_workload_identity),
        ..Default::default()
    });
    let r = chat(&stack, "bedrock-model").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Mock reply to: hi"
    );
    let (first_key, first_token) = last_signed(&stack).await;
    assert!(first_key.starts_with("ASIAMOCKSTS"), "{first_key}");
    assert!(first_token
        .as_deref()
        .is_some_and(|t| t.starts_with("mock-session-sts-")));

    // STS got the role, the session name and the token file's contents, as a form.
    let seen = stack.upstream_requests().await;
    let sts = requests_to(&seen, "POST", "/");
    assert!(!sts.is_empty(), "{seen:?}");
    let body = sts[0]["body"].to_string();
    for part in [
        "Action=AssumeRoleWithWebIdentity",
        "Version=2011-06-15",
        "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Ftollgate",
        "RoleSessionName=gw-e2e",
        &format!("WebIdentityToken={OIDC_TOKEN}"),
    ] {
        assert!(body.contains(part), "{part} not in {body}");
    }

    // Vertex AI on the metadata server's token.
    let r = chat(&stack, "vertex-wi").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let seen = stack.upstream_requests().await;
    let gce = requests_to(
        &seen,
        "GET",
        "/computeMetadata/v1/instance/service-accounts/default/token",
    );
    assert!(!gce.is_empty());
    assert!(gce
        .iter()
        .all(|r| r["headers"]["metadata-flavor"] == "Google"));
    let vertex_auth = |seen: &[Value]| {
        seen.iter()
            .rev()
            .find(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/publishers/google/"))
            })
            .map(|r| r["headers"]["authorization"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let first_bearer = vertex_auth(&seen);
    assert!(
        first_bearer.starts_with("Bearer ya29.mock-"),
        "{first_bearer}"
    );

    // Before the first credentials expire, new ones are fetched in the background and used:
    // the mock refuses expired ones, so every request succeeds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut rotated_key, mut rotated_bearer) = (None, None);
    while Instant::now() < deadline && (rotated_key.is_none() || rotated_bearer.is_none()) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let r = chat(&stack, "bedrock-model").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let (key, token) = last_signed(&stack).await;
        if key != first_key {
            assert_ne!(token, first_token);
            rotated_key = Some(key);
        }
        let r = chat(&stack, "vertex-wi").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let bearer = vertex_auth(&stack.upstream_requests().await);
        if bearer != first_bearer {
            rotated_bearer = Some(bearer);
        }
    }
    assert!(rotated_key.is_some(), "AWS credentials never rotated");
    assert!(rotated_bearer.is_some(), "the metadata token never rotated");
    let m = stack.metrics().await;
    assert!(metric(&m, "bedrock", "web_identity", "ok") >= 2, "{m}");
    assert!(metric(&m, "vertex-wi", "gce_metadata", "ok") >= 2, "{m}");
    // The explicit keys of another provider still sign as before.
    let r = chat(&stack, "bedrock-wrong-secret").await;
    assert_eq!(r.status, 403, "{}", r.text);
    // No secret reaches the log.
    let log = stack.serve_log();
    assert!(!log.contains("mock-secret-"), "a secret was logged");
    assert!(!log.contains("mock-session-"), "a session token was logged");
    assert!(
        !log.contains(OIDC_TOKEN),
        "the web identity token was logged"
    );
}

#[tokio::test]
async fn container_credentials_with_the_authorization_token_file() {
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, tollgate_mock::platform::CONTAINER_AUTH_TOKEN).unwrap();
    let stack = Stack::start(StackOptions {
        serve_env: isolated(
            files.path(),
            &[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://{mock}/v1/credentials".into(),
                ),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    token_file.display().to_string(),
                ),
            ],
        ),
        patch_config: Some(bedrock_on_the_chain),
        ..Default::default()
    });
    let r = chat(&stack, "bedrock-model").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (key, token) = last_signed(&stack).await;
    assert!(key.starts_with("ASIAMOCKCONTAINER"), "{key}");
    assert!(token.is_some());
    let seen = stack.upstream_requests().await;
    let calls = requests_to(&seen, "GET", "/v1/credentials");
    assert_eq!(
        calls[0]["headers"]["authorization"],
        tollgate_mock::platform::CONTAINER_AUTH_TOKEN
    );
    let m = stack.metrics().await;
    assert_eq!(metric(&m, "bedrock", "container", "ok"), 1, "{m}");
}

#[tokio::test]
async fn instance_metadata_v2_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = isolated(
        dir.path(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://{mock}".into())],
    );
    env.retain(|(k, _)| k != "AWS_EC2_METADATA_DISABLED");
    let stack = Stack::start(StackOptions {
        serve_env: env,
        patch_config: Some(bedrock_on_the_chain),
        ..Default::default()
    });
    let r = chat(&stack, "bedrock-model").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (key, _) = last_signed(&stack).await;
    assert!(key.starts_with("ASIAMOCKIMDS"), "{key}");
    // IMDSv2: a PUT for the session token first, then the role and its credentials with it.
    let seen = stack.upstream_requests().await;
    let put = requests_to(&seen, "PUT", "/latest/api/token");
    assert_eq!(
        put[0]["headers"]["x-aws-ec2-metadata-token-ttl-seconds"],
        "21600"
    );
    let role = requests_to(
        &seen,
        "GET",
        &format!(
            "/latest/meta-data/iam/security-credentials/{}",
            tollgate_mock::platform::INSTANCE_ROLE
        ),
    );
    assert!(role[0]["headers"]["x-aws-ec2-metadata-token"]
        .as_str()
        .is_some_and(|t| t.starts_with("mock-imds-token-")));
}

#[tokio::test]
async fn a_shared_profile_gives_long_lived_keys() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = AKIDWRONG\naws_secret_access_key = wrong\n\n[gateway]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            tollgate_mock::bedrock::AWS_ACCESS_KEY_ID,
            tollgate_mock::bedrock::AWS_SECRET_ACCESS_KEY
        ),
    )
    .unwrap();
    let mut env = isolated(dir.path(), &[("AWS_PROFILE", "gateway".into())]);
    for (k, v) in &mut env {
        if k == "AWS_SHARED_CREDENTIALS_FILE" {
            *v = credentials.display().to_string();
        }
    }
    let stack = Stack::start(StackOptions {
        serve_env: env,
        patch_config: Some(bedrock_on_the_chain),
        ..Default::default()
    });
    let r = chat(&stack, "bedrock-model").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (key, token) = last_signed(&stack).await;
    assert_eq!(key, tollgate_mock::bedrock::AWS_ACCESS_KEY_ID);
    assert_eq!(token, None);
}

#[tokio::test]
async fn an_unreachable_sts_is_retried_while_serve_serves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, OIDC_TOKEN).unwrap();
    let stack = Stack::start(StackOptions {
        serve_env: isolated(
            dir.path(),
            &[
                (
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    token_file.display().to_string(),
                ),
                (
                    "AWS_ROLE_ARN",
                    "arn:aws:iam::123456789012:role/tollgate".into(),
                ),
                (
                    "AWS_ENDPOINT_URL_STS",
                    format!("http://127.0.0.1:{}", closed_port()),
                ),
            ],
        ),
        patch_config: Some(bedrock_on_the_chain),
        ..Default::default()
    });
    // `serve` is up; the provider without credentials answers 503 after a bounded wait.
    let started = Instant::now();
    let r = chat(&stack, "bedrock-model").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(r.header("x-tollgate-request-id").is_some());
    // Other providers serve.
    assert_eq!(chat(&stack, "mock-model").await.status, 200);
    let m = stack.metrics().await;
    assert!(metric(&m, "bedrock", "web_identity", "error") >= 1, "{m}");
    assert!(stack
        .serve_log()
        .contains("Could not get provider credentials"));
}

#[test]
fn a_misconfigured_chain_is_a_start_up_error_naming_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.yaml");
    std::fs::write(
        &config,
        "providers:\n  bedrock:\n    kind: bedrock\n    aws: { region: us-east-1 }\n",
    )
    .unwrap();
    let none = dir.path().join("none");
    let out = std::process::Command::new(TOLLGATE)
        .arg("check")
        .arg(&config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &none)
        .env("AWS_CONFIG_FILE", &none)
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/tollgate")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &none)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("providers.bedrock.aws"), "{text}");
    assert!(text.contains("web identity token file"), "{text}");
}
