//! The exact response cache (issue 18): a request a `cache` policy applies to is hashed into
//! a key (tenant scope, guardrails policy, endpoint, model and the request normalised: members
//! sorted at every depth, members that do not change the answer left out), looked up at the
//! request-body phase and, on a hit, answered by ext_proc itself as an immediate response in
//! the client's dialect (a stream replayed from the cached complete answer, [`replay`]). A
//! complete successful answer (streamed ones assembled on the side) is stored for the policy's
//! TTL in this process's memory (moka, bounded by bytes) or in Redis.

pub mod replay;
pub mod semantic;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use moka::future::Cache as Moka;
use moka::notification::RemovalCause;
use moka::Expiry;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tollgate_core::config::ApiFamily;
use tollgate_core::metrics::{KindLabel, Metrics};
use tollgate_core::Usage;

use crate::translator::json::RawObject;

/// Top-level request members that do not change the answer: left out of the key. `n` stays
/// in (it changes how many answers come back); sampling members stay in (a client asking for
/// another temperature asks for another answer).
pub const IGNORED_MEMBERS: &[&str] = &[
    "user",
    "stream",
    "stream_options",
    "metadata",
    "store",
    "service_tier",
];

/// The version of the key's recipe: a change of it never reads entries of another.
const KEY_VERSION: &[u8] = b"tollgate-cache-v1";

/// A cached answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The complete answer in the client's dialect (JSON).
    pub body: Vec<u8>,
    /// The client dialect the body is written in.
    pub family: Family,
    /// The answer's usage as the provider reported it (what a hit would have cost).
    pub usage: Option<Usage>,
    /// The provider's model id that answered (prices a hit's fraction).
    pub upstream_model: String,
    /// The request id of the request whose answer this is.
    pub source_request_id: String,
    /// How long the entry lives from its store.
    pub ttl_secs: u64,
}

/// The client dialect of an entry (serialisable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// OpenAI Chat Completions / Completions / Embeddings bodies.
    OpenAi,
    /// Anthropic Messages bodies.
    Anthropic,
    /// Gemini `GenerateContentResponse` bodies.
    Gemini,
}

impl Family {
    /// The family of a client API (`None`: no client speaks it).
    pub fn of(f: ApiFamily) -> Option<Family> {
        match f {
            ApiFamily::OpenAi => Some(Family::OpenAi),
            ApiFamily::Anthropic => Some(Family::Anthropic),
            ApiFamily::Gemini => Some(Family::Gemini),
            ApiFamily::Bedrock => None,
        }
    }
}

/// A cache key: SHA-256 of the key recipe.
pub type Key = [u8; 32];

/// The key of a request: `scope` (`t:<tenant>` or `k:<key id>`), the key's guardrails policy
/// (keys under different policies never share answers), the endpoint label, the public model
/// and the request object normalised.
pub fn key(scope: &str, policy: &str, endpoint: &str, model: &str, obj: &RawObject<'_>) -> Key {
    let mut h = Sha256::new();
    for part in [
        KEY_VERSION,
        scope.as_bytes(),
        policy.as_bytes(),
        endpoint.as_bytes(),
        model.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let mut members: Vec<(&str, &RawValue)> = obj
        .members()
        .filter(|(k, _)| !IGNORED_MEMBERS.contains(k))
        .collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    let mut canon = Vec::with_capacity(256);
    canon.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            canon.push(b',');
        }
        write_str(&mut canon, k);
        canon.push(b':');
        match serde_json::from_str::<serde_json::Value>(v.get()) {
            Ok(value) => write_canonical(&mut canon, &value),
            // A member that is not JSON cannot reach here (the body parsed); its text keys it.
            Err(_) => canon.extend_from_slice(v.get().as_bytes()),
        }
    }
    canon.push(b'}');
    h.update(&canon);
    h.finalize().into()
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a str cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Canonical JSON: object members sorted by key at every depth, no whitespace.
pub(crate) fn write_canonical(out: &mut Vec<u8>, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                if let Some(inner) = map.get(*k) {
                    write_canonical(out, inner);
                }
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// What `Cache-Control` asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directives {
    /// `no-cache`: do not answer from the cache (the answer is still stored).
    pub no_cache: bool,
    /// `no-store`: neither answer from the cache nor store.
    pub no_store: bool,
}

impl Directives {
    /// The directives of a `Cache-Control` request header value.
    pub fn parse(value: &[u8]) -> Self {
        let mut d = Directives::default();
        for part in value.split(|b| *b == b',') {
            let name = part
                .split(|b| *b == b'=')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if name.eq_ignore_ascii_case(b"no-cache") {
                d.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"no-store") {
                d.no_store = true;
            }
        }
        d
    }
}

struct PerEntryTtl;

impl Expiry<Key, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.ttl_secs))
    }
}

/// Where entries live.
#[derive(Clone)]
enum Backend {
    Memory(Moka<Key, Arc<Entry>>),
    Redis {
        con: ConnectionManager,
        prefix: String,
        timeout: Duration,
    },
}

/// The cache of a process.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    metrics: Metrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Store> = OnceLock::new();

impl Store {
    /// A memory store holding at most `max_bytes` of answers.
    pub fn memory(max_bytes: u64, metrics: Metrics) -> Self {
        let evictions = metrics.cache_evictions.clone();
        let moka = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Key, v: &Arc<Entry>| {
                u32::try_from(k.len() + v.body.len() + v.source_request_id.len() + 128)
                    .unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_k, _v, cause| {
                let kind = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                evictions.get_or_create(&KindLabel { kind }).inc();
            })
            .build();
        Self {
            backend: Backend::Memory(moka),
            metrics,
        }
    }

    /// A store in Redis under `prefix` (each entry with its TTL), every call bounded by
    /// `timeout`.
    pub fn redis(
        con: ConnectionManager,
        prefix: &str,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            backend: Backend::Redis {
                con,
                prefix: prefix.to_owned(),
                timeout,
            },
            metrics,
        }
    }

    /// Installs the process's store (`serve` does, once, at start-up); later calls keep the
    /// first.
    pub fn install(store: Store) {
        let _ = SHARED.set(store);
    }

    /// The process's store: the one installed, else a memory store of `max_bytes` made on
    /// first use.
    pub fn shared(max_bytes: u64, metrics: &Metrics) -> &'static Store {
        SHARED.get_or_init(|| Store::memory(max_bytes, metrics.clone()))
    }

    fn redis_key(prefix: &str, key: &Key) -> String {
        format!("{prefix}cache:{}", hex::encode(key))
    }

    /// The entry under `key`, when one is fresh. A Redis that does not answer is a miss.
    pub async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        match &self.backend {
            Backend::Memory(m) => m.get(key).await,
            Backend::Redis {
                con,
                prefix,
                timeout,
            } => {
                let mut con = con.clone();
                let cmd = redis::cmd("GET")
                    .arg(Self::redis_key(prefix, key))
                    .to_owned();
                let got: Option<Vec<u8>> = match tokio::time::timeout(
                    *timeout,
                    cmd.query_async(&mut con),
                )
                .await
                {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "Response cache: Redis GET failed, treated as a miss");
                        None
                    }
                    Err(_) => {
                        tracing::warn!("Response cache: Redis GET timed out, treated as a miss");
                        None
                    }
                };
                got.and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
                    .map(Arc::new)
            }
        }
    }

    /// Stores `entry` under `key` for its TTL; `false` when the store failed.
    pub async fn put(&self, key: Key, entry: Entry) -> bool {
        match &self.backend {
            Backend::Memory(m) => {
                // No `run_pending_tasks` here: moka's housekeeping runs on its own schedule (the
                // gauge reads its eventually consistent size); forcing it per store made a store
                // cost milliseconds under load.
                m.insert(key, Arc::new(entry)).await;
                self.metrics
                    .cache_bytes
                    .set(i64::try_from(m.weighted_size()).unwrap_or(i64::MAX));
                true
            }
            Backend::Redis {
                con,
                prefix,
                timeout,
            } => {
                let mut con = con.clone();
                let Ok(value) = serde_json::to_vec(&entry) else {
                    return false;
                };
                let cmd = redis::cmd("SET")
                    .arg(Self::redis_key(prefix, &key))
                    .arg(value)
                    .arg("EX")
                    .arg(entry.ttl_secs.max(1))
                    .to_owned();
                match tokio::time::timeout(*timeout, cmd.query_async::<()>(&mut con)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "Response cache: Redis SET failed");
                        false
                    }
                    Err(_) => {
                        tracing::warn!("Response cache: Redis SET timed out");
                        false
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(body: &str) -> Key {
        let obj = RawObject::parse(body.as_bytes()).unwrap();
        key("t:acme", "", "chat_completions", "m", &obj)
    }

    #[test]
    fn member_order_and_ignored_members_do_not_change_the_key() {
        let a = k(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = k(
            r#"{"temperature":0,"stream":true,"user":"u1","stream_options":{"include_usage":true},"messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
        );
        assert_eq!(a, b);
        let c = k(r#"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0}"#);
        assert_ne!(a, c);
        let d = k(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1}"#);
        assert_ne!(a, d);
    }

    #[test]
    fn scopes_and_policies_do_not_share_keys() {
        let obj = RawObject::parse(br#"{"model":"m","messages":[]}"#).unwrap();
        let a = key("t:acme", "", "chat_completions", "m", &obj);
        let b = key("t:other", "", "chat_completions", "m", &obj);
        let c = key("t:acme", "strict", "chat_completions", "m", &obj);
        let d = key("t:acme", "", "messages", "m", &obj);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn cache_control_directives() {
        assert!(Directives::parse(b"no-cache").no_cache);
        let d = Directives::parse(b"max-age=0, No-Store");
        assert!(d.no_store && !d.no_cache);
        assert_eq!(Directives::parse(b"max-age=10"), Directives::default());
    }

    fn entry(ttl: u64, size: usize) -> Entry {
        Entry {
            body: vec![b'x'; size],
            family: Family::OpenAi,
            usage: None,
            upstream_model: "m".into(),
            source_request_id: "r1".into(),
            ttl_secs: ttl,
        }
    }

    #[tokio::test]
    async fn memory_store_keeps_and_bounds_entries() {
        let s = Store::memory(4096, Metrics::default());
        assert!(s.put([1; 32], entry(60, 100)).await);
        assert_eq!(s.get(&[1; 32]).await.unwrap().body.len(), 100);
        assert!(s.get(&[2; 32]).await.is_none());
        for i in 0..20u8 {
            s.put([i + 10; 32], entry(60, 1000)).await;
        }
        if let Backend::Memory(m) = &s.backend {
            m.run_pending_tasks().await;
            assert!(m.weighted_size() <= 4096);
        }
    }
}
