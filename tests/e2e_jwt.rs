//! Self-contained JWT client keys end to end through real Envoy (both `envoy.auth` shapes:
//! `TOLLGATE_E2E_AUTH=ext_authz` runs the same tests): RS256/ES256 from a JWKS file and HS256
//! from a secret, a JWKS URL served by the test whose new `kid` is picked up and whose outage
//! keeps the last good set, the model allow-list and budgets of a JWT key, its refusals in the
//! client's dialect, and its id in the log event.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const RSA1: &str = include_str!("fixtures/jwt/rsa1.pem");
const RSA2: &str = include_str!("fixtures/jwt/rsa2.pem");
const EC1: &str = include_str!("fixtures/jwt/ec1.pem");
/// The HS256 issuer's secret: the stack's environment already carries this one (every
/// process of the stack, `tollgate envoy-bootstrap` included, gets `provider_env()`).
const SECRET: &str = FEEDBACK_SECRET;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(iss: &str, jti: &str, models: Value) -> Value {
    json!({"iss": iss, "aud": "tollgate", "jti": jti, "tenant": "acme", "team": "ml",
           "models": models, "iat": now(), "exp": now() + 600})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match (alg, kid) {
        (Algorithm::HS256, _) => EncodingKey::from_secret(SECRET.as_bytes()),
        (Algorithm::RS256, Some("rsa-2")) => EncodingKey::from_rsa_pem(RSA2.as_bytes()).unwrap(),
        (Algorithm::RS256, _) => EncodingKey::from_rsa_pem(RSA1.as_bytes()).unwrap(),
        (Algorithm::ES256, _) => EncodingKey::from_ec_pem(EC1.as_bytes()).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn chat(model: &str) -> String {
    json!({"model": model, "max_tokens": 10,
        "messages": [{"role": "user", "content": "one two three four five"}]})
    .to_string()
}

/// A JWKS file issuer (RS256 + ES256), an HS256 issuer, a tiny per-key budget for one JWT
/// key id, and logging: the file-source scenarios.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_keys_from_a_jwks_file_and_a_secret() {
    let logged = LoggedStack::ndjson_with(StackOptions {
        extra_yaml: format!(
            r#"jwt_keys:
  issuers:
    - issuer: https://idp.example
      audiences: [tollgate]
      algorithms: [RS256, ES256]
      jwks_file: "{}"
    - issuer: https://hs.example
      audiences: [tollgate]
      algorithms: [HS256]
      hs256_secret_env: E2E_FEEDBACK_SECRET
budgets:
  limits:
    - {{ id: tiny, scope: key, name: jwt-poor, period: daily, amount_usd: "0.000001" }}
"#,
            fixture("jwks.json")
        ),
        ..Default::default()
    });
    let stack = &logged.stack;
    let idp = "https://idp.example";

    // RS256 and ES256 from the file, HS256 from the secret: admitted, no lookup.
    let rs = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(idp, "jwt-rs", json!(["mock-model"])),
    );
    let r = stack
        .post("/v1/chat/completions", Some(&rs), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let es = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &claims(idp, "jwt-es", json!(["*"])),
    );
    let r = stack
        .post("/v1/chat/completions", Some(&es), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let hs = sign(
        Algorithm::HS256,
        None,
        &claims("https://hs.example", "jwt-hs", json!("mock-model")),
    );
    let r = stack
        .post("/v1/chat/completions", Some(&hs), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The client's key never reaches the provider.
    let upstream = stack.upstream_requests().await;
    assert!(!json!(upstream).to_string().contains(&rs[..40]));

    // The model allow-list of the token: another model is refused with 403.
    let r = stack
        .post("/v1/chat/completions", Some(&rs), chat("compat-model"))
        .await;
    r.assert_openai_error(403, None);

    // A budget by the JWT key's id (named in its `budget` claim) is enforced: 429.
    let mut poor = claims(idp, "jwt-poor", json!(["mock-model"]));
    poor["budget"] = json!("tiny");
    let poor = sign(Algorithm::RS256, Some("rsa-1"), &poor);
    let r = stack
        .post("/v1/chat/completions", Some(&poor), chat("mock-model"))
        .await;
    r.assert_openai_error(429, None);

    // Refusals: the existing 401s, in the client's dialect.
    let mut expired = claims(idp, "jwt-old", json!(["*"]));
    expired["exp"] = json!(now() - 3600);
    let expired = sign(Algorithm::RS256, Some("rsa-1"), &expired);
    let r = stack
        .post("/v1/chat/completions", Some(&expired), chat("mock-model"))
        .await;
    r.assert_openai_error(401, Some("expired_api_key"));
    let forged = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(idp, "jwt-forged", json!(["*"])),
    );
    let forged = forged.replacen(
        forged.split('.').nth(1).unwrap(),
        rs.split('.').nth(1).unwrap(),
        1,
    );
    let r = stack
        .post("/v1/chat/completions", Some(&forged), chat("mock-model"))
        .await;
    r.assert_openai_error(401, Some("invalid_api_key"));
    // Anthropic's dialect, key in `x-api-key`: a token from an unknown issuer.
    let stranger = sign(
        Algorithm::HS256,
        None,
        &claims("https://evil.example", "jwt-evil", json!(["*"])),
    );
    let r = Reply::from(
        stack
            .http
            .post(format!("{}/v1/messages", stack.base))
            .header("x-api-key", &stranger)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(
                json!({"model": "claude-model", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json()["type"], "error", "{}", r.text);
    assert_eq!(
        r.json()["error"]["type"],
        "authentication_error",
        "{}",
        r.text
    );
    // Tokens with the wrong audience, or signed with `alg: none`.
    let mut other_aud = claims(idp, "jwt-aud", json!(["*"]));
    other_aud["aud"] = json!("someone-else");
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(idp, "jwt-none", json!(["*"])))
    );
    for token in [sign(Algorithm::RS256, Some("rsa-1"), &other_aud), unsigned] {
        let r = stack
            .post("/v1/chat/completions", Some(&token), chat("mock-model"))
            .await;
        r.assert_openai_error(401, Some("invalid_api_key"));
    }

    // The reasons are in serve's log (written a moment later); the tokens are not.
    let ansi = regex::Regex::new("\x1b\\[[0-9;]*m").unwrap();
    let reasons = [
        "expired",
        "bad_signature",
        "unknown_issuer",
        "wrong_audience",
        "malformed",
    ];
    let start = Instant::now();
    let log = loop {
        let log = ansi.replace_all(&stack.serve_log(), "").into_owned();
        let missing: Vec<_> = reasons
            .iter()
            .filter(|r| !log.contains(&format!("reason=\"{r}\"")))
            .collect();
        if missing.is_empty() {
            break log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not in the log: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for token in [&rs, &es, &hs, &expired, &forged, &stranger] {
        assert!(!log.contains(token.as_str()), "a token in the log");
        assert!(!log.contains(token.split('.').nth(2).unwrap()));
    }

    // The log events carry the JWT keys' ids (admitted and refused by budget).
    let start = Instant::now();
    loop {
        let ids: Vec<String> = logged
            .logger
            .lines()
            .iter()
            .filter_map(|l| l["key_id"].as_str().map(str::to_owned))
            .collect();
        if ["jwt-rs", "jwt-es", "jwt-hs", "jwt-poor"]
            .iter()
            .all(|id| ids.iter().any(|i| i == id))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "key ids logged: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JWKS document the test serves, how many times it was fetched, and whether it fails.
#[derive(Default)]
struct Jwks {
    body: Mutex<String>,
    fetches: AtomicUsize,
    failing: AtomicBool,
}

async fn serve_jwks(jwks: Arc<Jwks>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = Arc::clone(&jwks);
            async move {
                jwks.fetches.fetch_add(1, Ordering::SeqCst);
                if jwks.failing.load(Ordering::SeqCst) {
                    return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
                }
                (
                    axum::http::StatusCode::OK,
                    jwks.body.lock().unwrap().clone(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

/// A JWKS URL: fetched before ready, a new `kid` picked up after it appears (an unknown
/// `kid` triggers a fetch, at most once per `unknown_kid_refresh_secs` under a flood), and a
/// failing URL keeps the last good set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_keys_from_a_jwks_url_with_rotation() {
    let jwks = Arc::new(Jwks::default());
    *jwks.body.lock().unwrap() = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let url = serve_jwks(Arc::clone(&jwks)).await;
    let stack = Stack::start(StackOptions {
        extra_yaml: format!(
            r#"jwt_keys:
  issuers:
    - issuer: https://idp.example
      audiences: [tollgate]
      algorithms: [RS256, ES256]
      jwks_url: "{url}"
      unknown_kid_refresh_secs: 2
"#
        ),
        ..Default::default()
    });
    let idp = "https://idp.example";
    // Fetched before ready: the first request verifies.
    let old = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims(idp, "jwt-old-kid", json!(["mock-model"])),
    );
    let r = stack
        .post("/v1/chat/completions", Some(&old), chat("mock-model"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A key the set does not have yet: refused.
    let new = sign(
        Algorithm::RS256,
        Some("rsa-2"),
        &claims(idp, "jwt-new-kid", json!(["mock-model"])),
    );
    let r = stack
        .post("/v1/chat/completions", Some(&new), chat("mock-model"))
        .await;
    r.assert_openai_error(401, Some("invalid_api_key"));

    // The issuer rotates: `rsa-2` appears in the JWKS and is picked up.
    *jwks.body.lock().unwrap() = std::fs::read_to_string(fixture("jwks-rotated.json")).unwrap();
    let start = Instant::now();
    loop {
        let r = stack
            .post("/v1/chat/completions", Some(&new), chat("mock-model"))
            .await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new kid was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A flood of made-up kids costs at most one fetch per `unknown_kid_refresh_secs` (2 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = jwks.fetches.load(Ordering::SeqCst);
    let flood_started = Instant::now();
    for i in 0..40 {
        let bogus = sign(
            Algorithm::RS256,
            Some(&format!("bogus-{i}")),
            &claims(idp, "jwt-bogus", json!(["*"])),
        );
        let r = stack
            .post("/v1/chat/completions", Some(&bogus), chat("mock-model"))
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let fetched = jwks.fetches.load(Ordering::SeqCst) - before;
    let periods = flood_started.elapsed().as_secs() / 2 + 1;
    assert!(
        fetched >= 1 && fetched as u64 <= periods + 1,
        "{fetched} fetches in {:?}",
        flood_started.elapsed()
    );

    // The JWKS URL fails: the last good set stays (both kids still verify after a failed
    // fetch caused by an unknown kid).
    jwks.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = jwks.fetches.load(Ordering::SeqCst);
    let bogus = sign(
        Algorithm::RS256,
        Some("bogus-x"),
        &claims(idp, "jwt-bogus", json!(["*"])),
    );
    stack
        .post("/v1/chat/completions", Some(&bogus), chat("mock-model"))
        .await;
    let start = Instant::now();
    while jwks.fetches.load(Ordering::SeqCst) == before {
        assert!(start.elapsed() < Duration::from_secs(5), "no fetch attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for token in [&old, &new] {
        let r = stack
            .post("/v1/chat/completions", Some(token), chat("mock-model"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(stack
        .serve_log()
        .contains("Cannot fetch the JWKS: keeping the last good set"));
}
