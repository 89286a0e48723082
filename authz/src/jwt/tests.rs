//! Unit tests of JWT client keys: each algorithm, each refusal, the bundle a token becomes,
//! config validation, and (ignored) the cost of one verification.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tollgate_core::config::{looks_like_jwt, ModelAccess};
use tollgate_core::env::MapEnv;
use tollgate_core::metrics::Metrics;
use tollgate_core::Config;

use super::{JwtRefusal, JwtVerifier};

const RSA1: &str = include_str!("../../../tests/fixtures/jwt/rsa1.pem");
const RSA2: &str = include_str!("../../../tests/fixtures/jwt/rsa2.pem");
const EC1: &str = include_str!("../../../tests/fixtures/jwt/ec1.pem");
const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

fn jwks_file() -> String {
    format!(
        "{}/../tests/fixtures/jwt/jwks.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn config_with(issuers: &str) -> Config {
    let yaml = format!(
        r#"
providers:
  mock: {{ kind: openai, base_url: "http://127.0.0.1:1/v1" }}
models:
  m1: {{ targets: [{{ provider: mock, model: m1 }}] }}
budgets:
  limits:
    - {{ id: per-key, scope: key, period: daily, amount_usd: "1" }}
    - {{ id: acme-total, scope: tenant, name: acme, period: total, amount_usd: "10" }}
    - {{ id: other-tenant, scope: tenant, name: globex, period: total, amount_usd: "10" }}
jwt_keys:
  issuers:
{issuers}
"#
    );
    Config::from_yaml(&yaml, &MapEnv::from_pairs([("JWT_SECRET", SECRET)])).unwrap()
}

fn config() -> Config {
    config_with(&format!(
        r#"    - issuer: https://hs.example
      audiences: [tollgate]
      algorithms: [HS256]
      hs256_secret_env: JWT_SECRET
      leeway_secs: 5
    - issuer: https://pk.example
      audiences: [tollgate]
      algorithms: [RS256, ES256]
      jwks_file: {}
      requests_per_minute: 7"#,
        jwks_file()
    ))
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(iss: &str) -> Value {
    json!({
        "iss": iss, "aud": "tollgate", "jti": "tok-1", "sub": "svc-a",
        "tenant": "acme", "team": "ml", "models": ["m1"],
        "iat": now(), "exp": now() + 600,
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA1.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC1.as_bytes()).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn verify(token: &str) -> Result<Arc<tollgate_core::config::KeyBundle>, JwtRefusal> {
    JwtVerifier::new().verify(&config(), token)
}

#[test]
fn each_algorithm_verifies_into_a_bundle() {
    for (alg, iss, kid) in [
        (Algorithm::HS256, "https://hs.example", None),
        (Algorithm::RS256, "https://pk.example", Some("rsa-1")),
        (Algorithm::ES256, "https://pk.example", Some("ec-1")),
    ] {
        let token = sign(alg, kid, &claims(iss));
        assert!(looks_like_jwt(&token), "{alg:?}");
        let b = verify(&token).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(b.id, "tok-1");
        assert_eq!(b.tenant.as_deref(), Some("acme"));
        assert_eq!(b.team.as_deref(), Some("ml"));
        assert_eq!(b.models, ModelAccess::Only(["m1".to_owned()].into()));
        assert!(!b.disabled);
        let exp = b.expires_at.unwrap().unix_timestamp();
        assert!(exp > now() + 500, "{alg:?}: expiry from exp (+ leeway)");
    }
    // The issuer's per-key limits.
    let b = verify(&sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &claims("https://pk.example"),
    ))
    .unwrap();
    assert_eq!(b.requests_per_minute, Some(7));
}

#[test]
fn key_id_falls_back_to_sub_and_models_take_a_string_or_star() {
    let mut c = claims("https://hs.example");
    c.as_object_mut().unwrap().remove("jti");
    c["models"] = json!("m1 m2");
    let b = verify(&sign(Algorithm::HS256, None, &c)).unwrap();
    assert_eq!(b.id, "svc-a");
    assert_eq!(
        b.models,
        ModelAccess::Only(["m1".to_owned(), "m2".to_owned()].into())
    );
    c["models"] = json!(["*"]);
    assert_eq!(
        verify(&sign(Algorithm::HS256, None, &c)).unwrap().models,
        ModelAccess::All
    );
    // No models claim: no model.
    c.as_object_mut().unwrap().remove("models");
    assert_eq!(
        verify(&sign(Algorithm::HS256, None, &c)).unwrap().models,
        ModelAccess::Only(Default::default())
    );
    // Neither jti nor sub: refused.
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        verify(&sign(Algorithm::HS256, None, &c)).unwrap_err(),
        JwtRefusal::MissingClaim
    );
}

#[test]
fn each_refusal() {
    let hs = "https://hs.example";
    let pk = "https://pk.example";
    let refused = |token: &str| verify(token).unwrap_err();

    // Bad signature: RS256 signed by another key under a known kid.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let forged = encode(
        &header,
        &claims(pk),
        &EncodingKey::from_rsa_pem(RSA2.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(refused(&forged), JwtRefusal::BadSignature);
    // A tampered payload.
    let good = sign(Algorithm::HS256, None, &claims(hs));
    let mut parts: Vec<&str> = good.split('.').collect();
    let other = sign(
        Algorithm::HS256,
        None,
        &json!({"iss": hs, "exp": now() + 9, "jti": "x"}),
    );
    parts[1] = other.split('.').nth(1).unwrap();
    assert_eq!(refused(&parts.join(".")), JwtRefusal::BadSignature);
    // HS256 with a wrong secret.
    let wrong = encode(
        &Header::new(Algorithm::HS256),
        &claims(hs),
        &EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!!"),
    )
    .unwrap();
    assert_eq!(refused(&wrong), JwtRefusal::BadSignature);

    // Expired (beyond the 5 s leeway) and not yet valid.
    let mut c = claims(hs);
    c["exp"] = json!(now() - 60);
    assert_eq!(
        refused(&sign(Algorithm::HS256, None, &c)),
        JwtRefusal::Expired
    );
    let mut c = claims(hs);
    c["nbf"] = json!(now() + 60);
    assert_eq!(
        refused(&sign(Algorithm::HS256, None, &c)),
        JwtRefusal::NotYetValid
    );
    // Within the leeway: accepted.
    let mut c = claims(hs);
    c["exp"] = json!(now() - 2);
    assert!(verify(&sign(Algorithm::HS256, None, &c)).is_ok());

    // Unknown issuer (two issuers configured: picked by iss).
    assert_eq!(
        refused(&sign(
            Algorithm::HS256,
            None,
            &claims("https://evil.example")
        )),
        JwtRefusal::UnknownIssuer
    );
    // Wrong audience.
    let mut c = claims(hs);
    c["aud"] = json!("someone-else");
    assert_eq!(
        refused(&sign(Algorithm::HS256, None, &c)),
        JwtRefusal::WrongAudience
    );
    // No exp at all.
    let mut c = claims(hs);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        refused(&sign(Algorithm::HS256, None, &c)),
        JwtRefusal::MissingClaim
    );
    // Unknown kid.
    assert_eq!(
        refused(&sign(Algorithm::RS256, Some("rsa-9"), &claims(pk))),
        JwtRefusal::UnknownKid
    );
    // An algorithm the issuer does not accept: HS256 under the public-key issuer (the
    // RS256-public-key-as-HMAC-secret confusion), RS256 under the HS256 issuer.
    assert_eq!(
        refused(&sign(Algorithm::HS256, Some("rsa-1"), &claims(pk))),
        JwtRefusal::AlgorithmNotAllowed
    );
    assert_eq!(
        refused(&sign(Algorithm::RS256, Some("rsa-1"), &claims(hs))),
        JwtRefusal::AlgorithmNotAllowed
    );
    // `alg: none`, unsigned: never.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims(hs)));
    assert_eq!(refused(&none), JwtRefusal::Malformed);
    let none_sig = format!("{}.{}.c2ln", b64(&json!({"alg": "none"})), b64(&claims(hs)));
    assert_eq!(refused(&none_sig), JwtRefusal::Malformed);
    // Garbage in JWT shape.
    assert_eq!(refused("eyJhbGciOi.eyJ.abc"), JwtRefusal::Malformed);
}

#[test]
fn wrong_issuer_with_a_single_issuer() {
    let config = config_with(
        r#"    - issuer: https://hs.example
      algorithms: [HS256]
      hs256_secret_env: JWT_SECRET"#,
    );
    let token = sign(Algorithm::HS256, None, &claims("https://other.example"));
    assert_eq!(
        JwtVerifier::new().verify(&config, &token).unwrap_err(),
        JwtRefusal::WrongIssuer
    );
    // No audiences configured: `aud` is not checked.
    let token = sign(Algorithm::HS256, None, &claims("https://hs.example"));
    assert!(JwtVerifier::new().verify(&config, &token).is_ok());
}

#[test]
fn budget_claim_must_name_budgets_that_apply() {
    let hs = "https://hs.example";
    let mut c = claims(hs);
    c["budget"] = json!(["per-key", "acme-total"]);
    assert!(verify(&sign(Algorithm::HS256, None, &c)).is_ok());
    c["budget"] = json!("acme-total");
    assert!(verify(&sign(Algorithm::HS256, None, &c)).is_ok());
    // A budget of another tenant, or one the config does not have.
    for bad in ["other-tenant", "nope"] {
        c["budget"] = json!(bad);
        assert_eq!(
            verify(&sign(Algorithm::HS256, None, &c)).unwrap_err(),
            JwtRefusal::UnknownBudget,
            "{bad}"
        );
    }
}

#[test]
fn virtual_keys_do_not_look_like_jwts() {
    assert!(!looks_like_jwt("tg-0123456789abcdef"));
    assert!(!looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJ"));
    assert!(!looks_like_jwt("eyJ a.b.c"));
    assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2ln"));
}

#[test]
fn the_gate_admits_a_jwt_and_refuses_with_the_existing_401() {
    let gate = crate::Gate::new(
        Arc::new(ArcSwap::from_pointee(config())),
        Metrics::default(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let token = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &claims("https://pk.example"),
    );
    let bearer = format!("Bearer {token}");
    let admitted = rt
        .block_on(gate.admit(
            |h| (h == "authorization").then_some(bearer.as_str()),
            "/v1/chat/completions",
            "POST",
            "req-1",
            OffsetDateTime::now_utc(),
        ))
        .unwrap();
    assert_eq!(admitted.bundle.id, "tok-1");
    assert!(
        admitted.rate.is_some(),
        "the issuer's per-key request rate applies"
    );

    let mut c = claims("https://pk.example");
    c["exp"] = json!(now() - 600);
    let expired = sign(Algorithm::ES256, Some("ec-1"), &c);
    let denied = rt
        .block_on(gate.admit(
            |h| (h == "x-api-key").then_some(expired.as_str()),
            "/v1/messages",
            "POST",
            "req-2",
            OffsetDateTime::now_utc(),
        ))
        .unwrap_err();
    assert_eq!(denied.error, tollgate_core::ApiError::ExpiredKey);
    assert_eq!(denied.error.status(), 401);
    let forged = format!("{}x", &token[..token.len() - 1]);
    let denied = rt
        .block_on(gate.admit(
            |h| (h == "x-api-key").then_some(forged.as_str()),
            "/v1/messages",
            "POST",
            "req-3",
            OffsetDateTime::now_utc(),
        ))
        .unwrap_err();
    assert_eq!(denied.error, tollgate_core::ApiError::InvalidKey);
}

#[test]
fn config_errors_name_the_field() {
    let env = MapEnv::from_pairs([("SHORT", "short"), ("JWT_SECRET", SECRET)]);
    let errs = |issuer: &str| {
        let yaml = format!("jwt_keys:\n  issuers:\n{issuer}\n");
        Config::from_yaml(&yaml, &env)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let e = errs("    - { issuer: a, algorithms: [none], hs256_secret_env: JWT_SECRET }");
    assert!(
        e.contains("jwt_keys.issuers[0].algorithms[0]: `none` is not accepted"),
        "{e}"
    );
    let e = errs("    - { issuer: a, algorithms: [HS256], hs256_secret_env: SHORT }");
    assert!(
        e.contains(
            "jwt_keys.issuers[0].hs256_secret_env: the secret in `SHORT` must be at least 32"
        ),
        "{e}"
    );
    let e = errs("    - { issuer: a, algorithms: [HS256], hs256_secret_env: UNSET }");
    assert!(
        e.contains("jwt_keys.issuers[0].hs256_secret_env: environment variable `UNSET`"),
        "{e}"
    );
    let e =
        errs("    - { issuer: a, algorithms: [RS256], jwks_file: /nope.json, jwks_url: http://x }");
    assert!(
        e.contains("jwt_keys.issuers[0]: give exactly one of"),
        "{e}"
    );
    let e = errs("    - { issuer: a, algorithms: [RS256], jwks_file: /nope.json }");
    assert!(
        e.contains("jwt_keys.issuers[0].jwks_file: cannot read /nope.json"),
        "{e}"
    );
    let e = errs("    - { issuer: a, algorithms: [RS256], jwks_url: ftp://x, refresh_secs: 1 }");
    assert!(
        e.contains("jwt_keys.issuers[0].jwks_url: must be an http"),
        "{e}"
    );
    assert!(
        e.contains("jwt_keys.issuers[0].refresh_secs: must be between 10"),
        "{e}"
    );
    let e = errs("    - { issuer: a, algorithms: [HS256, RS256], hs256_secret_env: JWT_SECRET }");
    assert!(
        e.contains("jwt_keys.issuers[0].algorithms: HS256 and RS256/ES256"),
        "{e}"
    );
    let e =
        errs("    - { issuer: a, algorithms: [HS256], hs256_secret_env: JWT_SECRET, bogus: 1 }");
    assert!(e.contains("unknown field `bogus`"), "{e}");
    let e = errs(&format!(
        "    - {{ issuer: a, algorithms: [RS256], jwks_file: {} }}\n    - {{ issuer: a, algorithms: [HS256], hs256_secret_env: JWT_SECRET }}",
        jwks_file()
    ));
    assert!(
        e.contains("jwt_keys.issuers[1].issuer: issuer `a` appears twice"),
        "{e}"
    );
}

/// The cost of one verification (the gate's whole JWT path: issuer pick, header, signature,
/// claims, bundle). `cargo test --release -p tollgate-authz jwt_verification_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run it by hand"]
fn jwt_verification_cost() {
    let config = config();
    let verifier = JwtVerifier::new();
    for (alg, iss, kid) in [
        (Algorithm::HS256, "https://hs.example", None),
        (Algorithm::RS256, "https://pk.example", Some("rsa-1")),
        (Algorithm::ES256, "https://pk.example", Some("ec-1")),
    ] {
        let token = sign(alg, kid, &claims(iss));
        let n = 5_000;
        for _ in 0..200 {
            verifier.verify(&config, &token).unwrap();
        }
        let cpu_started = thread_cpu();
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                verifier
                    .verify(&config, std::hint::black_box(&token))
                    .unwrap(),
            );
        }
        let per = started.elapsed() / n;
        let cpu = thread_cpu().saturating_sub(cpu_started) / n;
        eprintln!("{alg:?}: {per:?} wall, {cpu:?} CPU per verification ({n} runs)");
    }
}

/// This thread's CPU time so far (Linux: `/proc/thread-self/schedstat`, in nanoseconds), so a
/// busy machine's waiting does not count.
fn thread_cpu() -> std::time::Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_nanos(nanos)
}
