//! The control plane against real storage: one admin API suite run on SQLite and on a real
//! PostgreSQL 15 cluster; signatures, rotation grace, revocation and the change feed; the
//! OpenAPI document against the real routes; two replicas sharing one PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Every admin behaviour, run against one backend.
async fn api_suite(cp: &Cp) {
    // --- refusals: no token, wrong token; nothing is written ---
    let key_body = json!({"id": "svc-a", "tenant": "acme", "team": "ml", "models": ["gpt-4o"]});
    let (s, v) = cp
        .admin_as(None, "POST", "/admin/v1/keys", Some(key_body.clone()))
        .await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    let (s, _) = cp
        .admin_as(
            Some("wrong-token-wrong-token"),
            "POST",
            "/admin/v1/keys",
            Some(key_body.clone()),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = cp
        .admin_as(Some(ADMIN_TOKEN), "GET", "/admin/v1/keys", None)
        .await;
    assert_eq!(s, 200);
    // Bad input: 400 for malformed JSON, 422 naming the field for the rest.
    let (s, v) = cp.admin_raw("POST", "/admin/v1/keys", "{\"id\": ").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (s, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "x", "models": ["*"], "colour": 1})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("colour"),
        "{v}"
    );
    let (s, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "x", "models": [], "capture": "all"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("models") && msg.contains("capture"), "{v}");
    let (s, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "x", "models": ["*"], "requests_per_minute": "fast"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests_per_minute"),
        "{v}"
    );
    let (s, v) = cp
        .admin(
            "POST",
            "/admin/v1/budgets",
            Some(json!({"id": "b", "scope": "galaxy", "period": "monthly", "amount_usd": "1e3"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("scope") && msg.contains("amount_usd"), "{v}");
    let (_, v) = cp.admin("GET", "/admin/v1/keys", None).await;
    assert_eq!(v["items"], json!([]), "a refused call wrote something");
    let (_, v) = cp.admin("GET", "/admin/v1/budgets", None).await;
    assert_eq!(v["items"], json!([]));
    let (s, feed) = cp.changes(0, 0).await;
    assert_eq!(s, 200);
    assert_eq!(
        feed["seq"], 0,
        "a refused call appended to the feed: {feed}"
    );
    // The second configured token works too.
    let (s, _) = cp
        .admin_as(
            Some("other-admin-token-00000"),
            "GET",
            "/admin/v1/tenants",
            None,
        )
        .await;
    assert_eq!(s, 200);

    // --- tenants, teams, budgets ---
    let (s, v) = cp
        .admin(
            "POST",
            "/admin/v1/tenants",
            Some(json!({"name": "acme", "requests_per_minute": 600})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "acme");
    let (s, v) = cp
        .admin("POST", "/admin/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    let (s, _) = cp
        .admin(
            "POST",
            "/admin/v1/teams",
            Some(json!({"name": "ml", "tenant": "acme"})),
        )
        .await;
    assert_eq!(s, 201);
    for b in [
        json!({"id": "acme-monthly", "scope": "tenant", "name": "acme", "period": "monthly", "amount_usd": "100"}),
        json!({"id": "svc-a-daily", "scope": "key", "name": "svc-a", "period": "daily", "amount_usd": "5", "mode": "soft"}),
        json!({"id": "other-team", "scope": "team", "name": "other", "period": "total", "amount_usd": "1"}),
        json!({"id": "per-user", "scope": "end_user", "period": "daily", "amount_usd": "0.50"}),
    ] {
        let (s, v) = cp.admin("POST", "/admin/v1/budgets", Some(b)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = cp.admin("GET", "/admin/v1/budgets", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
    let (s, v) = cp.admin("GET", "/admin/v1/teams/ml", None).await;
    assert_eq!((s, v["tenant"].as_str()), (200, Some("acme")));
    let (s, v) = cp.admin("GET", "/admin/v1/teams/nope", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    // --- keys: create shows the secret once and stores its hash ---
    let (s, v) = cp
        .admin("POST", "/admin/v1/keys", Some(key_body.clone()))
        .await;
    assert_eq!(s, 201, "{v}");
    let raw = v["key"].as_str().unwrap().to_owned();
    assert!(raw.starts_with("tg-"));
    let hash = hash_of(&raw);
    assert_eq!(v["record"]["hash"], hash);
    assert_eq!(v["record"]["status"], "active");
    let (s, got) = cp.admin("GET", "/admin/v1/keys/svc-a", None).await;
    assert_eq!(s, 200);
    assert!(
        !got.to_string().contains(&raw),
        "the secret is readable: {got}"
    );
    let (_, list) = cp.admin("GET", "/admin/v1/keys", None).await;
    assert!(!list.to_string().contains(&raw));
    assert_eq!(list["items"][0]["id"], "svc-a");
    let (s, _) = cp
        .admin("POST", "/admin/v1/keys", Some(key_body.clone()))
        .await;
    assert_eq!(s, 409);

    // --- resolve: the bundle ---
    let (s, v) = cp.resolve(&hash).await;
    assert_eq!(s, 200, "{v}");
    let c = claims(v["bundle"].as_str().unwrap(), SECRET);
    assert_eq!(c["key"]["id"], "svc-a");
    assert_eq!(c["key"]["hash"], hash);
    assert_eq!(c["key"]["models"], json!(["gpt-4o"]));
    let _: tollgate_core::config::RawKey = serde_json::from_value(c["key"].clone()).unwrap();
    assert_eq!(c["tenant"], json!({"requests_per_minute": 600}));
    let _: tollgate_core::config::RawTenant = serde_json::from_value(c["tenant"].clone()).unwrap();
    let ids: BTreeSet<&str> = c["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["acme-monthly", "per-user", "svc-a-daily"])
    );
    for b in c["budgets"].as_array().unwrap() {
        let _: tollgate_core::config::RawBudget = serde_json::from_value(b.clone()).unwrap();
    }
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    let seq_before = c["seq"].as_i64().unwrap();
    assert!(seq_before > 0);
    let (s, v) = cp.resolve(&hash_of("tg-never-issued")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("unknown_key")));
    let (s, _) = cp.resolve("sha256:nothex").await;
    assert_eq!(s, 422);

    // --- updates take effect on the next resolve (the cache is invalidated) ---
    let (s, v) = cp
        .admin(
            "PATCH",
            "/admin/v1/keys/svc-a",
            Some(json!({"models": ["gpt-4o", "claude"], "requests_per_minute": 60, "expires_at": "2099-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["requests_per_minute"], 60);
    let c = claims(
        cp.resolve(&hash).await.1["bundle"].as_str().unwrap(),
        SECRET,
    );
    assert_eq!(c["key"]["models"], json!(["gpt-4o", "claude"]));
    assert_eq!(c["key"]["requests_per_minute"], 60);
    assert_eq!(c["key"]["expires_at"], "2099-01-01T00:00:00Z");
    assert!(c["seq"].as_i64().unwrap() > seq_before);
    let (s, _) = cp
        .admin(
            "PATCH",
            "/admin/v1/keys/svc-a",
            Some(json!({"requests_per_minute": null, "disabled": true})),
        )
        .await;
    assert_eq!(s, 200);
    let c = claims(
        cp.resolve(&hash).await.1["bundle"].as_str().unwrap(),
        SECRET,
    );
    assert_eq!(c["key"]["requests_per_minute"], Value::Null);
    assert_eq!(c["key"]["disabled"], true);
    let (s, v) = cp
        .admin(
            "PATCH",
            "/admin/v1/keys/svc-a",
            Some(json!({"id": "renamed"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = cp
        .admin(
            "PATCH",
            "/admin/v1/keys/svc-a",
            Some(json!({"models": "gpt-4o"})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = cp
        .admin(
            "PATCH",
            "/admin/v1/keys/nope",
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = cp
        .admin(
            "PATCH",
            "/admin/v1/tenants/acme",
            Some(json!({"requests_per_minute": 10, "capture": "metadata"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = cp
        .admin(
            "PATCH",
            "/admin/v1/budgets/acme-monthly",
            Some(json!({"amount_usd": "250"})),
        )
        .await;
    assert_eq!(s, 200);
    let c = claims(
        cp.resolve(&hash).await.1["bundle"].as_str().unwrap(),
        SECRET,
    );
    assert_eq!(
        c["tenant"],
        json!({"requests_per_minute": 10, "capture": "metadata"})
    );
    let monthly = c["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "acme-monthly")
        .unwrap();
    assert_eq!(monthly["amount_usd"], "250");
    let (s, _) = cp
        .admin("DELETE", "/admin/v1/budgets/svc-a-daily", None)
        .await;
    assert_eq!(s, 200);
    let c = claims(
        cp.resolve(&hash).await.1["bundle"].as_str().unwrap(),
        SECRET,
    );
    assert!(!c["budgets"].to_string().contains("svc-a-daily"));
    let (s, _) = cp.admin("DELETE", "/admin/v1/teams/ml", None).await;
    assert_eq!(s, 200);
    let (s, _) = cp.admin("GET", "/admin/v1/teams/ml", None).await;
    assert_eq!(s, 404);

    // --- the feed holds every change, in order ---
    let (_, feed) = cp.changes(0, 0).await;
    let entries = feed["changes"].as_array().unwrap();
    let kinds: BTreeSet<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["budget", "key", "team", "tenant"]));
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "key" && e["hash"] == hash));
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(feed["seq"].as_i64(), seqs.last().copied());
    let latest = feed["seq"].as_i64().unwrap();

    // --- revoke: 404 at once, a feed entry, and no way back ---
    let (s, v) = cp.admin("POST", "/admin/v1/keys/svc-a/revoke", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")), "{v}");
    let (s, v) = cp.resolve(&hash).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("unknown_key")));
    let (_, feed) = cp.changes(latest, 0).await;
    assert_eq!(
        feed["changes"],
        json!([{"seq": latest + 1, "kind": "key", "hash": hash}])
    );
    let (s, _) = cp.admin("POST", "/admin/v1/keys/svc-a/revoke", None).await;
    assert_eq!(s, 409);
    let (s, _) = cp
        .admin(
            "PATCH",
            "/admin/v1/keys/svc-a",
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = cp.admin("POST", "/admin/v1/keys/svc-a/rotate", None).await;
    assert_eq!(s, 409);

    // --- an expired key does not resolve ---
    let (s, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "old", "models": ["*"], "expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["record"]["status"], "expired");
    let (s, _) = cp.resolve(&hash_of(v["key"].as_str().unwrap())).await;
    assert_eq!(s, 404);

    // --- rotation: the old secret resolves during the grace, then not ---
    let (_, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "rot", "models": ["*"]})),
        )
        .await;
    let old_hash = hash_of(v["key"].as_str().unwrap());
    assert_eq!(cp.resolve(&old_hash).await.0, 200);
    let (s, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys/rot/rotate",
            Some(json!({"grace_secs": 2})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let new_hash = hash_of(v["key"].as_str().unwrap());
    assert_ne!(new_hash, old_hash);
    assert_eq!(v["record"]["hash"], new_hash);
    assert_eq!(v["record"]["previous_hashes"][0]["hash"], old_hash);
    let c = claims(
        cp.resolve(&new_hash).await.1["bundle"].as_str().unwrap(),
        SECRET,
    );
    assert_eq!(
        (c["key"]["id"].as_str(), c["key"]["expires_at"].clone()),
        (Some("rot"), Value::Null)
    );
    let (s, v) = cp.resolve(&old_hash).await;
    assert_eq!(s, 200, "the old key must resolve during the grace");
    let c = claims(v["bundle"].as_str().unwrap(), SECRET);
    assert_eq!(c["key"]["id"], "rot");
    assert_eq!(c["key"]["hash"], old_hash);
    let until = time::OffsetDateTime::parse(
        c["key"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();
    assert!((until - now()).abs() <= 3, "grace end {until}");
    let (_, feed) = cp.changes(latest, 0).await;
    let hashes: Vec<&str> = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["hash"].as_str())
        .collect();
    assert!(hashes.contains(&old_hash.as_str()) && hashes.contains(&new_hash.as_str()));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(cp.resolve(&old_hash).await.0, 404, "the grace is over");
    assert_eq!(cp.resolve(&new_hash).await.0, 200);
    // Grace 0: the old secret stops at once.
    let (_, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys/rot/rotate",
            Some(json!({"grace_secs": 0})),
        )
        .await;
    assert_eq!(cp.resolve(&new_hash).await.0, 404);
    assert_eq!(
        cp.resolve(&hash_of(v["key"].as_str().unwrap())).await.0,
        200
    );
    let (s, _) = cp
        .admin(
            "POST",
            "/admin/v1/keys/rot/rotate",
            Some(json!({"grace_secs": 99999999})),
        )
        .await;
    assert_eq!(s, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_suite_passes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Cp::start(Backend::Sqlite(dir.path())).await;
    api_suite(&cp).await;
    // Data survives a restart (the migration is not applied twice).
    drop(cp);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cp = Cp::start(Backend::Sqlite(dir.path())).await;
    let (_, v) = cp.admin("GET", "/admin/v1/keys/rot", None).await;
    assert_eq!(v["id"], "rot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_suite_passes_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    let cp = Cp::start(Backend::Postgres(&pg)).await;
    api_suite(&cp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_see_each_others_changes() {
    let Some(pg) = Pg::start() else { return };
    let a = Cp::start(Backend::Postgres(&pg)).await;
    let b = Cp::start(Backend::Postgres(&pg)).await;
    let (_, v) = a
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "shared", "models": ["*"]})),
        )
        .await;
    let hash = hash_of(v["key"].as_str().unwrap());
    // B answers from its cache after this.
    assert_eq!(b.resolve(&hash).await.0, 200);
    assert_eq!(b.resolve(&hash).await.0, 200);
    // A long poll on B wakes up for a write made on A.
    let (_, feed) = b.changes(0, 0).await;
    let since = feed["seq"].as_i64().unwrap();
    let started = Instant::now();
    let poll = b.changes(since, 10);
    let revoke = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.admin("POST", "/admin/v1/keys/shared/revoke", None).await
    };
    let ((s, feed), (rs, _)) = tokio::join!(poll, revoke);
    assert_eq!((s, rs), (200, 200));
    assert_eq!(feed["changes"][0]["hash"], hash, "{feed}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // B's cache was invalidated by the feed: the revoked key is refused there too.
    assert_eq!(b.resolve(&hash).await.0, 404);
    // Concurrent writes on both replicas get distinct, ordered sequence numbers.
    let mut jobs = Vec::new();
    for i in 0..20 {
        let cp = if i % 2 == 0 { &a } else { &b };
        jobs.push(cp.admin(
            "POST",
            "/admin/v1/tenants",
            Some(json!({"name": format!("t{i}")})),
        ));
    }
    for (s, v) in futures::future::join_all(jobs).await {
        assert_eq!(s, 201, "{v}");
    }
    let (_, feed) = a.changes(since, 0).await;
    let seqs: Vec<i64> = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 21);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_calls_need_a_fresh_signature_with_a_configured_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Cp::start(Backend::Sqlite(dir.path())).await;
    let (_, v) = cp
        .admin(
            "POST",
            "/admin/v1/keys",
            Some(json!({"id": "k", "models": ["*"]})),
        )
        .await;
    let body = json!({"hash": hash_of(v["key"].as_str().unwrap())}).to_string();
    let p = "/v1/resolve-key";
    let t = now();
    for (secret, at, what) in [
        (None, t, "no signature"),
        (
            Some("wrong-secret-wrong-secret-wrong-secret"),
            t,
            "wrong secret",
        ),
        (Some(OLD_SECRET), t, "the previous secret, not configured"),
        (Some(SECRET), t - 301, "a signature older than 300 s"),
        (Some(SECRET), t + 301, "a signature from the future"),
    ] {
        let (s, v) = cp.signed_with(secret, at, "POST", p, &body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("bad_signature")),
            "{what}: {v}"
        );
    }
    // A signature over another body, path or method does not carry over.
    let sig =
        tollgate_controlplane::sign::sign_request(SECRET.as_bytes(), t, "POST", p, b"{}").unwrap();
    let resp = cp
        .http
        .post(cp.url(p))
        .header("x-tollgate-signature", sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let (s, _) = cp
        .signed_with(Some(SECRET), t, "GET", "/v1/changes?since=0", "")
        .await;
    assert_eq!(s, 200);
    let pq = "/v1/changes?since=0";
    let sig =
        tollgate_controlplane::sign::sign_request(SECRET.as_bytes(), t, "GET", pq, b"").unwrap();
    let resp = cp
        .http
        .get(cp.url("/v1/changes?since=1"))
        .header("x-tollgate-signature", sig)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        401,
        "a signature for another query was accepted"
    );
    let (s, _) = cp.signed_with(Some(SECRET), t, "POST", p, &body).await;
    assert_eq!(s, 200);
    assert_eq!(
        cp.metric("tollgate_cp_resolve_requests_total{result=\"refused\"}")
            .await,
        6.0
    );
    assert_eq!(
        cp.metric("tollgate_cp_resolve_requests_total{result=\"found\"}")
            .await,
        1.0
    );
    drop(cp);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // During a secret rotation, both secrets are accepted; bundles are signed with the new one.
    let cp = Cp::start_with(
        Backend::Sqlite(dir.path()),
        Options {
            previous_secret: true,
            ..Options::default()
        },
    )
    .await;
    let (s, v) = cp
        .signed_with(Some(OLD_SECRET), now(), "POST", p, &body)
        .await;
    assert_eq!(s, 200, "{v}");
    claims(v["bundle"].as_str().unwrap(), SECRET);
    let (s, _) = cp.signed_with(Some(SECRET), now(), "POST", p, &body).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_long_polls_and_resets_beyond_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Cp::start_with(
        Backend::Sqlite(dir.path()),
        Options {
            extra: "change_history: 100\n".to_owned(),
            ..Options::default()
        },
    )
    .await;
    // Nothing to say: the answer comes after wait_secs.
    let started = Instant::now();
    let (s, feed) = cp.changes(0, 1).await;
    assert_eq!(s, 200);
    assert_eq!(feed, json!({"seq": 0, "reset": false, "changes": []}));
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A change during the wait answers at once.
    let started = Instant::now();
    let poll = cp.changes(0, 20);
    let write = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cp.admin("POST", "/admin/v1/tenants", Some(json!({"name": "acme"})))
            .await
    };
    let ((s, feed), _) = tokio::join!(poll, write);
    assert_eq!(s, 200);
    assert_eq!(
        feed["changes"],
        json!([{"seq": 1, "kind": "tenant", "name": "acme"}])
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (s, v) = cp.changes(0, 31).await;
    assert_eq!(s, 400, "{v}");
    // Past the kept history: reset.
    for i in 0..110 {
        let (s, _) = cp
            .admin(
                "POST",
                "/admin/v1/teams",
                Some(json!({"name": format!("team-{i}")})),
            )
            .await;
        assert_eq!(s, 201);
    }
    let (_, feed) = cp.changes(1, 0).await;
    assert_eq!(feed, json!({"seq": 111, "reset": true, "changes": []}));
    let (_, feed) = cp.changes(500, 0).await;
    assert_eq!(feed["reset"], true, "a seq from another database");
    let (_, feed) = cp.changes(105, 0).await;
    assert_eq!(feed["reset"], false);
    assert_eq!(feed["changes"].as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_real_routes() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Cp::start(Backend::Sqlite(dir.path())).await;
    let resp = cp
        .http
        .get(cp.url("/admin/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = tollgate_controlplane::server::route_list()
        .into_iter()
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
    // And the real server answers each documented (method, path): never "no route" or 405.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "x").replace("{name}", "x");
        let resp = cp
            .http
            .request(method.to_uppercase().parse().unwrap(), cp.url(&concrete))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        let code = serde_json::from_str::<Value>(&body)
            .ok()
            .map(|v| v["error"]["code"].clone());
        assert_ne!(code, Some(json!("no_route")), "{method} {path}: {body}");
    }
    // The fallbacks answer in the same JSON shape.
    let (s, v) = cp.admin("GET", "/admin/v1/nothing", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("no_route")));
    let (s, v) = cp.admin("PUT", "/admin/v1/keys", None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

/// Throughput of `POST /v1/resolve-key` on 127.0.0.1 (bounded: a few seconds). Run with
/// `cargo nextest run -p tollgate-controlplane --run-ignored only resolve_key_throughput`
/// (add `--release` for the figure that matters).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a test"]
async fn resolve_key_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Cp::start(Backend::Sqlite(dir.path())).await;
    let mut hashes = Vec::new();
    for i in 0..1000 {
        let (_, v) = cp
            .admin(
                "POST",
                "/admin/v1/keys",
                Some(json!({"id": format!("k{i}"), "models": ["*"]})),
            )
            .await;
        hashes.push(hash_of(v["key"].as_str().unwrap()));
    }
    let hashes = std::sync::Arc::new(hashes);
    let secs = 5;
    let workers = 32;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let hashes = hashes.clone();
        let url = cp.url("/v1/resolve-key");
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            let mut i = w;
            while Instant::now() < deadline {
                let body = json!({"hash": hashes[i % hashes.len()]}).to_string();
                let sig = tollgate_controlplane::sign::sign_request(
                    SECRET.as_bytes(),
                    now(),
                    "POST",
                    "/v1/resolve-key",
                    body.as_bytes(),
                )
                .unwrap();
                let r = http
                    .post(&url)
                    .header("x-tollgate-signature", sig)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let _ = r.bytes().await.unwrap();
                n += 1;
                i += workers;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "resolve-key: {total} calls in {:.1} s = {rate:.0} calls/s ({workers} connections, 1000 keys, SQLite, client in the same process)",
        started.elapsed().as_secs_f64()
    );
}
