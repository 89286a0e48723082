//! The response cache in Redis (`cache.backend: redis`) end to end: two stacks (each its own
//! Envoy, `serve` and mock provider) sharing one real `redis-server`. An answer stored through
//! replica A is a hit through replica B (whose provider is never asked), streamed too; entries
//! expire with their TTL in Redis; tenants never share answers; keys carry the documented
//! prefix (`{prefix}:cache:<sha256>`) and values stay within `max_entry_bytes`; a foreign or
//! corrupt value under a key is a miss, never a failure; and a Redis killed mid-test turns
//! lookups into misses and stores into counted errors while the provider still answers.

// Test support: helpers outside `#[test]` functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A key of another tenant, added to the base config.
const KEY_OTHER: &str = "tg-e2e-cache-redis-other-tenant";

fn add_other_tenant(config: String) -> String {
    config.replacen(
        "keys:\n",
        &format!(
            "keys:\n  - {{ id: other, hash: \"{}\", tenant: other, models: [\"*\"] }}\n",
            hash(KEY_OTHER)
        ),
        1,
    )
}

/// The largest answer stored: a short answer fits, a long echo does not.
const MAX_ENTRY_BYTES: usize = 2048;

/// A real `redis-server` listening on a Unix socket only, data in a temporary directory,
/// killed on drop (or by the test, by its PID).
struct Redis {
    url: String,
    socket: PathBuf,
    proc: Proc,
    _dir: tempfile::TempDir,
}

fn start_redis() -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let mut proc = Proc::spawn(
        "redis",
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path()),
        dir.path(),
    );
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(proc.alive(), "redis-server exited:\n{}", proc.log());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "redis-server did not listen:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis {
        url: format!("redis+unix://{}?db=0", socket.display()),
        socket,
        proc,
        _dir: dir,
    }
}

impl Redis {
    /// `redis-cli` against this server; its standard output, trimmed.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("redis-cli is needed");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Every key under the cache's prefix.
    fn cache_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan", "--pattern", "*cache*"])
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect();
        keys.sort();
        keys
    }
}

fn stack_on(redis: &Redis) -> Stack {
    Stack::start(StackOptions {
        extra_yaml: format!(
            "budgets:\n  redis: {{ url: \"{}\", timeout_ms: 300 }}\n\
             cache:\n  backend: redis\n  max_entry_bytes: {MAX_ENTRY_BYTES}\n  policies:\n    \
             - {{ name: short, models: [compat-model], ttl_secs: 1 }}\n    \
             - {{ name: chat, models: [mock-model, claude-model] }}\n",
            redis.url
        ),
        patch_config: Some(add_other_tenant),
        ..Default::default()
    })
}

fn chat(model: &str, text: &str) -> String {
    json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

/// The sum of a metric family's samples whose labels contain every one of `labels`.
fn metric_sum(metrics: &str, family: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_redis_cache() {
    let redis = start_redis();
    let (a, b) = (stack_on(&redis), stack_on(&redis));
    let path = "/v1/chat/completions";

    // Stored through A, a hit through B: B's provider is never asked.
    let body = chat("mock-model", "shared through redis");
    let first = a.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-tollgate-cache"), None);
    assert_eq!(a.posted().await.len(), 1);
    let second = b.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(first.json()["choices"], second.json()["choices"]);
    assert!(b.posted().await.is_empty(), "replica B asked its provider");
    // A stream of the same question through B is replayed from A's answer.
    let streamed = json!({"model": "mock-model", "max_tokens": 20, "stream": true,
        "messages": [{"role": "user", "content": "shared through redis"}]});
    let s = b.post(path, Some(KEY_ALL), streamed.to_string()).await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.header("x-tollgate-cache"), Some("exact"));
    assert!(
        s.text.contains("chat.completion.chunk") && s.text.contains("[DONE]"),
        "{}",
        s.text
    );
    assert!(b.posted().await.is_empty());

    // The key carries the documented prefix (the ledger's hash tag), the value its TTL.
    let keys = redis.cache_keys();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    let hex = key
        .strip_prefix("{tollgate}:cache:")
        .unwrap_or_else(|| panic!("{key}"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()),
        "{key}"
    );
    let ttl: i64 = redis.cli(&["TTL", key]).parse().unwrap();
    assert!((1..=300).contains(&ttl), "TTL {ttl}");
    // The value is the answer plus a small header: bounded by max_entry_bytes.
    let len: usize = redis.cli(&["STRLEN", key]).parse().unwrap();
    assert!(
        len > first.text.len() && len < first.text.len() + 512,
        "{len}"
    );

    // An answer larger than max_entry_bytes is not stored (the mock echoes the prompt).
    let long = "x".repeat(MAX_ENTRY_BYTES * 2);
    let big = a.post(path, Some(KEY_ALL), chat("mock-model", &long)).await;
    assert_eq!(big.status, 200, "{}", big.text);
    assert!(big.text.len() > MAX_ENTRY_BYTES, "{}", big.text.len());
    assert_eq!(
        redis.cache_keys().len(),
        1,
        "an oversized answer was stored"
    );
    let metrics = a.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_cache_stores_total",
            &["result=\"too_large\""]
        ),
        1.0,
        "{metrics}"
    );

    // Another tenant asking the same thing through B misses: its provider answers.
    let other = b.post(path, Some(KEY_OTHER), body.clone()).await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(other.header("x-tollgate-cache"), None);
    assert_eq!(b.posted().await.len(), 1);
    assert_eq!(
        redis.cache_keys().len(),
        2,
        "the other tenant's answer has its own key"
    );

    // TTL: Redis expires the entry (policy `short`: one second).
    let quick = chat("compat-model", "expires in redis");
    let r = a.post(path, Some(KEY_ALL), quick.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = b.post(path, Some(KEY_ALL), quick.clone()).await;
    assert_eq!(r.header("x-tollgate-cache"), Some("exact"));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        redis.cache_keys().len(),
        2,
        "the entry outlived its TTL in Redis"
    );
    b.clear_upstream_requests().await;
    let r = b.post(path, Some(KEY_ALL), quick.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("x-tollgate-cache"),
        None,
        "an expired entry answered"
    );
    assert_eq!(b.posted().await.len(), 1);

    // A corrupt value under the key, then a value of another type: misses, answered by the
    // provider, and the answer stored over it is a hit again.
    b.clear_upstream_requests().await;
    assert_eq!(redis.cli(&["SET", key, "not a cache entry"]), "OK");
    let r = b.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-cache"), None);
    assert_eq!(b.posted().await.len(), 1);
    let r = a.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(
        r.header("x-tollgate-cache"),
        Some("exact"),
        "not stored anew"
    );
    redis.cli(&["DEL", key]);
    redis.cli(&["RPUSH", key, "a", "list"]);
    let r = b.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-tollgate-cache"), None);
    assert_eq!(b.posted().await.len(), 2);
    assert_eq!(
        redis.cli(&["TYPE", key]),
        "string",
        "the answer replaced the list"
    );
    let r = a.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(r.header("x-tollgate-cache"), Some("exact"));
    let metrics = b.metrics().await;
    assert!(
        metric_sum(
            &metrics,
            "tollgate_cache_lookups_total",
            &["result=\"hit\""]
        ) >= 3.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_goes_away_means_misses_and_counted_store_errors() {
    let mut redis = start_redis();
    let stack = stack_on(&redis);
    let path = "/v1/chat/completions";
    let body = chat("mock-model", "before redis goes away");
    let r = stack.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = stack.post(path, Some(KEY_ALL), body.clone()).await;
    assert_eq!(r.header("x-tollgate-cache"), Some("exact"));
    assert_eq!(stack.posted().await.len(), 1);

    // Killed by its PID: every lookup misses, the provider answers, each store fails.
    redis.proc.kill9();
    stack.clear_upstream_requests().await;
    for (i, text) in ["before redis goes away", "while redis is away"]
        .iter()
        .enumerate()
    {
        let started = Instant::now();
        let r = stack
            .post(path, Some(KEY_ALL), chat("mock-model", text))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-tollgate-cache"), None);
        assert_eq!(stack.posted().await.len(), i + 1);
        // Bounded by the Redis timeout (300 ms for the lookup and the store each).
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    let metrics = stack.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_cache_stores_total",
            &["result=\"error\""]
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_cache_lookups_total",
            &["result=\"miss\""]
        ),
        3.0,
        "{metrics}"
    );
    // Streams too: the provider's stream reaches the client whole.
    let streamed = json!({"model": "mock-model", "max_tokens": 20, "stream": true,
        "messages": [{"role": "user", "content": "a stream while redis is away"}]});
    let s = stack.post(path, Some(KEY_ALL), streamed.to_string()).await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert!(s.text.contains("[DONE]"), "{}", s.text);
}
