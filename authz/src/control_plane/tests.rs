//! Bundle verification, call signatures, and the resolver against a small control plane
//! served by the test (single flight, negative cache, outage, hard expiry, the feed).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;
use tollgate_core::config::SigningSecret;
use tollgate_core::env::MapEnv;
use tollgate_core::keys::{format_hash, hash_key};
use tollgate_core::metrics::Metrics;
use tollgate_core::Config;

use super::bundle::{self, BundleError};
use super::*;

const CURRENT: &str = "current-secret-0123456789abcdef0123456789";
const PREVIOUS: &str = "previous-secret-0123456789abcdef012345678";

fn claims(key: &str, exp: i64) -> serde_json::Value {
    json!({
        "key": {"id": "cp-key", "hash": format_hash(&hash_key(key)), "tenant": "acme", "team": null,
                "models": ["*"], "expires_at": null, "disabled": false, "guardrails": null,
                "requests_per_minute": null, "capture": null, "tokens_per_minute": null},
        "tenant": null,
        "budgets": [{"id": "acme-daily", "scope": "tenant", "name": "acme", "period": "daily", "amount_usd": "5", "mode": "hard"}],
        "seq": 7, "iat": exp - 300, "exp": exp,
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn a_bundle_verifies_against_the_current_or_the_previous_secret() {
    let current = SigningSecret::new(CURRENT.into());
    let previous = SigningSecret::new(PREVIOUS.into());
    let token = bundle::sign(CURRENT.as_bytes(), &claims("tg-a", now() + 60));
    let v = bundle::verify(&token, [&current, &previous], now()).unwrap();
    assert_eq!(v.signed_with, current.fingerprint);
    assert_eq!(v.claims.key.id, "cp-key");
    assert_eq!(v.claims.seq, 7);
    assert_eq!(
        v.claims.budgets[0].budget().unwrap().limit,
        5_000_000_000_000
    );

    let old = bundle::sign(PREVIOUS.as_bytes(), &claims("tg-a", now() + 60));
    let v = bundle::verify(&old, [&current, &previous], now()).unwrap();
    assert_eq!(
        v.signed_with, previous.fingerprint,
        "verified by the previous secret"
    );
    // The overlap ended: the previous secret is no longer accepted.
    assert_eq!(
        bundle::verify(&old, [&current], now()).unwrap_err(),
        BundleError::Signature
    );
}

#[test]
fn wrong_secret_expired_tampered_and_other_algorithms_are_refused() {
    let current = SigningSecret::new(CURRENT.into());
    let wrong = bundle::sign(
        b"another-secret-entirely-0123456789abcdef",
        &claims("tg-a", now() + 60),
    );
    assert_eq!(
        bundle::verify(&wrong, [&current], now()).unwrap_err(),
        BundleError::Signature
    );

    let expired = bundle::sign(CURRENT.as_bytes(), &claims("tg-a", now() - 1));
    assert_eq!(
        bundle::verify(&expired, [&current], now()).unwrap_err(),
        BundleError::Expired
    );

    // A payload swapped for another key's, the signature kept.
    let good = bundle::sign(CURRENT.as_bytes(), &claims("tg-a", now() + 60));
    let other = bundle::sign(CURRENT.as_bytes(), &claims("tg-b", now() + 60));
    let parts: Vec<&str> = good.split('.').collect();
    let other_payload = other.split('.').nth(1).unwrap();
    let tampered = format!("{}.{}.{}", parts[0], other_payload, parts[2]);
    assert_eq!(
        bundle::verify(&tampered, [&current], now()).unwrap_err(),
        BundleError::Signature
    );

    // `alg: none` with no signature, and an RS256 header.
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        parts[1]
    );
    assert_eq!(
        bundle::verify(&none, [&current], now()).unwrap_err(),
        BundleError::Algorithm
    );
    let rs = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        parts[1],
        parts[2]
    );
    assert_eq!(
        bundle::verify(&rs, [&current], now()).unwrap_err(),
        BundleError::Algorithm
    );
    assert!(matches!(
        bundle::verify("garbage", [&current], now()).unwrap_err(),
        BundleError::Malformed(_)
    ));
}

#[test]
fn call_signatures_follow_the_contract() {
    // t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<METHOD>.<path and query>.<body>")>
    let sig = bundle::signature(b"k", 1_700_000_000, "POST", "/v1/resolve-key", b"{}");
    let expected =
        tollgate_core::feedback::hmac_sha256(b"k", b"1700000000.POST./v1/resolve-key.{}");
    assert_eq!(sig, format!("t=1700000000,v1={}", hex::encode(expected)));
}

/// A control plane served by the test: `keys` it knows, a call counter, a switch that makes it
/// answer 503, and a change feed whose next page the test sets.
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<AtomicU32>,
    down: Arc<std::sync::atomic::AtomicBool>,
    secret: Arc<std::sync::Mutex<String>>,
    known: Arc<std::sync::Mutex<Vec<String>>>,
    seq: Arc<AtomicU64>,
    feed: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    bad_signatures: Arc<AtomicU32>,
    /// When set, the `seq` bundles carry (a control plane answering from an old cache).
    bundle_seq: Arc<std::sync::Mutex<Option<u64>>>,
}

async fn serve_fake(fake: Fake) -> String {
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    async fn resolve(
        State(f): State<Fake>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        f.calls.fetch_add(1, Ordering::SeqCst);
        // Checks the call's signature as the control plane would.
        let sig = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let t: i64 = sig
            .strip_prefix("t=")
            .and_then(|r| r.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let secret = f.secret.lock().unwrap().clone();
        if sig != bundle::signature(secret.as_bytes(), t, "POST", RESOLVE_PATH, body.as_bytes()) {
            f.bad_signatures.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::UNAUTHORIZED, "{}".into());
        }
        if f.down.load(Ordering::SeqCst) {
            return (StatusCode::SERVICE_UNAVAILABLE, "{}".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let hash: serde_json::Value = serde_json::from_str(&body).unwrap();
        let hash = hash["hash"].as_str().unwrap().to_owned();
        let known = f.known.lock().unwrap().clone();
        match known.iter().find(|k| format_hash(&hash_key(k)) == hash) {
            Some(k) => {
                let mut c = claims(k, now() + 3600);
                let seq = f
                    .bundle_seq
                    .lock()
                    .unwrap()
                    .unwrap_or(f.seq.load(Ordering::SeqCst));
                c["seq"] = json!(seq);
                let token = bundle::sign(secret.as_bytes(), &c);
                (StatusCode::OK, json!({ "bundle": token }).to_string())
            }
            None => (
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "unknown_key"}}).to_string(),
            ),
        }
    }
    async fn changes(
        State(f): State<Fake>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> String {
        let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
        for _ in 0..40 {
            let seq = f.seq.load(Ordering::SeqCst);
            if seq > since {
                let changes: Vec<_> = f.feed.lock().unwrap().drain(..).collect();
                return json!({"seq": seq, "reset": false, "changes": changes}).to_string();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        json!({"seq": f.seq.load(Ordering::SeqCst), "reset": false, "changes": []}).to_string()
    }
    let app = axum::Router::new()
        .route(RESOLVE_PATH, post(resolve))
        .route(CHANGES_PATH, get(changes))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn shared(url: &str, soft: u64, hard: u64, previous: bool) -> SharedConfig {
    let prev = if previous {
        "\n  previous_secret_env: CP_OLD"
    } else {
        ""
    };
    let yaml = format!(
        "listen: {{ grpc: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }}\ncontrol_plane:\n  url: {url}\n  secret_env: CP_SECRET{prev}\n  soft_ttl_secs: {soft}\n  hard_ttl_secs: {hard}\n  negative_ttl_secs: 1\n  timeout_ms: 300\n  feed_wait_secs: 1\n"
    );
    let env = MapEnv::from_pairs([("CP_SECRET", CURRENT), ("CP_OLD", PREVIOUS)]);
    Arc::new(ArcSwap::from_pointee(
        Config::from_yaml(&yaml, &env).unwrap(),
    ))
}

fn client(config: &SharedConfig) -> Arc<ControlPlaneClient> {
    let settings = config.load().control_plane.clone().unwrap();
    ControlPlaneClient::new(settings, Arc::clone(config), Metrics::default()).unwrap()
}

#[tokio::test]
async fn concurrent_requests_for_one_key_share_one_call_and_unknown_keys_are_cached() {
    let fake = Fake::default();
    *fake.secret.lock().unwrap() = CURRENT.into();
    fake.known.lock().unwrap().push("tg-known".into());
    let url = serve_fake(fake.clone()).await;
    let config = shared(&url, 60, 600, false);
    let cp = client(&config);

    let lookups: Vec<_> = (0..50)
        .map(|_| {
            let cp = Arc::clone(&cp);
            tokio::spawn(async move { cp.resolve(hash_key("tg-known")).await })
        })
        .collect();
    for r in lookups {
        let b = r.await.unwrap().unwrap().unwrap();
        assert_eq!(b.id, "cp-key");
        assert_eq!(b.tenant.as_deref(), Some("acme"));
        assert_eq!(b.extra_budgets.len(), 1);
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1,
        "one call for 50 lookups"
    );
    assert_eq!(fake.bad_signatures.load(Ordering::SeqCst), 0);

    // 200 lookups of 20 distinct unknown keys (each asked 10 times in a row): 20 calls.
    for i in 0..200 {
        let r = cp.resolve(hash_key(&format!("tg-bad-{}", i / 10))).await;
        assert!(r.unwrap().is_none());
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 21);
    // The negative entries expire after negative_ttl_secs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(cp.resolve(hash_key("tg-bad-0")).await.unwrap().is_none());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 22);
}

#[tokio::test]
async fn an_outage_serves_cached_bundles_until_the_hard_expiry_and_caches_nothing_new() {
    let fake = Fake::default();
    *fake.secret.lock().unwrap() = CURRENT.into();
    fake.known
        .lock()
        .unwrap()
        .extend(["tg-a".to_owned(), "tg-b".to_owned()]);
    let url = serve_fake(fake.clone()).await;
    let config = shared(&url, 1, 2, false);
    let cp = client(&config);
    assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    fake.down.store(true, Ordering::SeqCst);
    // Cached: served, also past the soft expiry (the refresh fails in the background).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    // Not cached: the control plane cannot be asked; an error, not "unknown", and no entry.
    assert!(matches!(
        cp.resolve(hash_key("tg-b")).await,
        Err(ResolveError::Unavailable(_))
    ));
    // Past the hard expiry the cached bundle is no longer served.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(matches!(
        cp.resolve(hash_key("tg-a")).await,
        Err(ResolveError::Unavailable(_))
    ));
    // Back up: both resolve (the failed lookup left nothing behind).
    fake.down.store(false, Ordering::SeqCst);
    assert!(cp.resolve(hash_key("tg-b")).await.unwrap().is_some());
}

#[tokio::test]
async fn ending_the_overlap_refuses_bundles_signed_with_the_previous_secret() {
    let fake = Fake::default();
    *fake.secret.lock().unwrap() = CURRENT.into();
    fake.known.lock().unwrap().push("tg-a".into());
    let url = serve_fake(fake.clone()).await;
    let config = shared(&url, 60, 600, true);
    let cp = client(&config);
    // Put a bundle signed with the previous secret into the cache, as a control plane not yet
    // rotated would have answered.
    let old = bundle::sign(PREVIOUS.as_bytes(), &claims("tg-a", now() + 3600));
    let v = bundle::verify(
        &old,
        config.load().control_plane.as_ref().unwrap().secrets(),
        now(),
    )
    .unwrap();
    let key = v
        .claims
        .key
        .bundle(hash_key("tg-a"), &config.load().guardrails, None);
    cp.cache
        .insert(
            hash_key("tg-a"),
            Cached::Found(Arc::new(Entry {
                bundle: Arc::new(key),
                hard_at: Instant::now() + Duration::from_secs(600),
                refresh_at_ms: AtomicU64::new(u64::MAX),
                signed_with: v.signed_with,
                broad_epoch: 0,
                seq: 0,
                budget_ids: Vec::new(),
            })),
        )
        .await;
    assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        0,
        "served from the cache"
    );
    // The config reloads without the previous secret: the cached bundle is refused, and the
    // key is resolved again (now under the current secret).
    let reloaded = shared(&url, 60, 600, false);
    config.store(reloaded.load_full());
    assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "asked again");
}

#[tokio::test]
async fn the_feed_drops_revoked_keys_and_budget_changes() {
    let fake = Fake::default();
    *fake.secret.lock().unwrap() = CURRENT.into();
    fake.known
        .lock()
        .unwrap()
        .extend(["tg-a".to_owned(), "tg-b".to_owned()]);
    fake.seq.store(1, Ordering::SeqCst);
    let url = serve_fake(fake.clone()).await;
    let config = shared(&url, 60, 600, false);
    let cp = client(&config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let feed = tokio::spawn(Arc::clone(&cp).run_feed(stop_rx));
    // Let the feed catch up with seq 1 first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    assert!(cp.resolve(hash_key("tg-b")).await.unwrap().is_some());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);

    // tg-a revoked.
    fake.known.lock().unwrap().retain(|k| k != "tg-a");
    fake.feed
        .lock()
        .unwrap()
        .push(json!({"seq": 2, "kind": "key", "hash": format_hash(&hash_key("tg-a"))}));
    fake.seq.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        cp.resolve(hash_key("tg-a")).await.unwrap().is_none(),
        "revoked"
    );
    assert!(cp.resolve(hash_key("tg-b")).await.unwrap().is_some());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3, "tg-b still cached");

    // A budget change drops the bundles carrying it.
    fake.feed
        .lock()
        .unwrap()
        .push(json!({"seq": 3, "kind": "budget", "name": "acme-daily"}));
    fake.seq.store(3, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cp.resolve(hash_key("tg-b")).await.unwrap().is_some());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4, "tg-b fetched again");
    let _ = stop_tx.send(true);
    feed.await.unwrap();
}

#[tokio::test]
async fn a_bundle_older_than_a_change_of_its_key_serves_once_and_is_not_kept() {
    let fake = Fake::default();
    *fake.secret.lock().unwrap() = CURRENT.into();
    fake.known.lock().unwrap().push("tg-a".into());
    fake.seq.store(1, Ordering::SeqCst);
    let url = serve_fake(fake.clone()).await;
    let config = shared(&url, 60, 600, false);
    let cp = client(&config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let feed = tokio::spawn(Arc::clone(&cp).run_feed(stop_rx));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The key changes at seq 5, but the control plane still answers with a bundle of seq 1.
    *fake.bundle_seq.lock().unwrap() = Some(1);
    fake.feed
        .lock()
        .unwrap()
        .push(json!({"seq": 5, "kind": "key", "hash": format_hash(&hash_key("tg-a"))}));
    fake.seq.store(5, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        2,
        "the stale bundle was not kept"
    );
    // A bundle that reflects the change is kept; an unrelated key change does not matter.
    *fake.bundle_seq.lock().unwrap() = Some(5);
    fake.feed
        .lock()
        .unwrap()
        .push(json!({"seq": 6, "kind": "key", "hash": format_hash(&hash_key("tg-other"))}));
    fake.seq.store(6, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert!(cp.resolve(hash_key("tg-a")).await.unwrap().is_some());
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3, "kept");
    let _ = stop_tx.send(true);
    feed.await.unwrap();
}
