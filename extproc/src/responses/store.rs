//! The store of served responses, for `previous_response_id` and `GET`/`DELETE
//! /v1/responses/{id}`, keyed by the owner's scope and the response id so one tenant never
//! reads another's responses: one bounded map per process (by count and by bytes, oldest out
//! first, each entry with a time to live), or, when replicas share it, Redis (the budget
//! ledger's connection; one `SET … EX ttl` per response, so Redis's own memory policy and the
//! TTL bound it). The bounds come from each call's config snapshot, so a reload applies at the
//! next insert.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why the shared store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or timed out.
    #[error("the response store (Redis) is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// What the client gets: 503, the store being the gateway's upstream here.
    pub fn api_error(&self) -> tollgate_core::ApiError {
        match self {
            StoreError::Unavailable(_) => tollgate_core::ApiError::Upstream(503),
        }
    }
}

/// A stored response and the conversation it answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// The response object, as the client got it.
    pub response: Value,
    /// Every input item that led to it (the stored chain's too), oldest first.
    pub input: Vec<Value>,
}

impl Stored {
    /// The conversation a continuation builds on: the input, then the response's output.
    pub fn history(&self) -> Vec<Value> {
        let mut all = self.input.clone();
        if let Some(out) = self.response.get("output").and_then(Value::as_array) {
            all.extend(out.iter().cloned());
        }
        all
    }

    fn size(&self) -> u64 {
        let n = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len() as u64);
        n(&self.response) + self.input.iter().map(n).sum::<u64>() + 64
    }
}

/// The store's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most entries.
    pub max_entries: usize,
    /// The most bytes.
    pub max_bytes: u64,
    /// How long an entry lives.
    pub ttl: Duration,
}

#[derive(Debug)]
struct Entry {
    data: Arc<Stored>,
    bytes: u64,
    expires: Instant,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Insertion order: (key, sequence number of the entry when inserted).
    order: VecDeque<(String, u64)>,
    bytes: u64,
    seq: u64,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored.
    Stored,
    /// Larger than an eighth of `max_bytes`: not stored.
    TooLarge,
}

/// The bounded in-memory store.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

fn key(scope: &str, id: &str) -> String {
    format!("{scope}\u{0}{id}")
}

impl Store {
    /// The process's store.
    pub fn shared() -> &'static Store {
        static STORE: OnceLock<Store> = OnceLock::new();
        STORE.get_or_init(Store::default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every step below is one
        // assignment): keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `data` as `id` for `scope`, evicting the oldest entries past the bounds.
    pub fn insert(&self, scope: &str, id: &str, data: Stored, limits: Limits) -> Inserted {
        let bytes = data.size();
        if bytes > limits.max_bytes / 8 {
            return Inserted::TooLarge;
        }
        let now = Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        inner.seq += 1;
        let seq = inner.seq;
        let k = key(scope, id);
        if let Some(old) = inner.map.insert(
            k.clone(),
            Entry {
                data: Arc::new(data),
                bytes,
                expires: now + limits.ttl,
                seq,
            },
        ) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        inner.order.push_back((k, seq));
        while inner.map.len() > limits.max_entries || inner.bytes > limits.max_bytes {
            let Some((k, seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&k).is_some_and(|e| e.seq == seq) {
                if let Some(e) = inner.map.remove(&k) {
                    inner.bytes -= e.bytes;
                }
            }
        }
        // Stale order entries (replaced or deleted keys) are dropped as they reach the front.
        while inner
            .order
            .front()
            .is_some_and(|(k, s)| inner.map.get(k).is_none_or(|e| e.seq != *s))
        {
            inner.order.pop_front();
        }
        Inserted::Stored
    }

    /// The response `id` of `scope`, unless it expired.
    pub fn get(&self, scope: &str, id: &str) -> Option<Arc<Stored>> {
        let mut g = self.lock();
        let k = key(scope, id);
        match g.map.get(&k) {
            Some(e) if e.expires > Instant::now() => Some(Arc::clone(&e.data)),
            Some(_) => {
                if let Some(e) = g.map.remove(&k) {
                    g.bytes -= e.bytes;
                }
                None
            }
            None => None,
        }
    }

    /// Deletes the response `id` of `scope`; whether it was there.
    pub fn delete(&self, scope: &str, id: &str) -> bool {
        let mut g = self.lock();
        match g.map.remove(&key(scope, id)) {
            Some(e) => {
                g.bytes -= e.bytes;
                e.expires > Instant::now()
            }
            None => false,
        }
    }

    /// How many entries and bytes are held.
    pub fn size(&self) -> (usize, u64) {
        let g = self.lock();
        (g.map.len(), g.bytes)
    }
}

/// The responses kept in the budget ledger's Redis, shared by every replica.
#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// A store on `con`, its keys under `{prefix}:resp:`, each call bounded by `timeout`.
    pub fn new(con: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self {
            con,
            prefix: prefix.to_owned(),
            timeout,
        }
    }

    fn key(&self, scope: &str, id: &str) -> String {
        format!(
            "{{{}}}:resp:{}:{}",
            self.prefix,
            hex::encode(scope),
            hex::encode(id)
        )
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    async fn get(&self, scope: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd("GET").arg(self.key(scope, id)).to_owned();
        let raw: Option<Vec<u8>> = self.bounded(cmd.query_async(&mut con)).await?;
        Ok(raw.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn put(
        &self,
        scope: &str,
        id: &str,
        data: &Stored,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let body = serde_json::to_vec(data).map_err(unavailable)?;
        let cmd = redis::cmd("SET")
            .arg(self.key(scope, id))
            .arg(body)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .to_owned();
        self.bounded(cmd.query_async::<()>(&mut con)).await
    }

    async fn delete(&self, scope: &str, id: &str) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        let cmd = redis::cmd("DEL").arg(self.key(scope, id)).to_owned();
        let n: u64 = self.bounded(cmd.query_async(&mut con)).await?;
        Ok(n > 0)
    }
}

/// Where this process keeps responses.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// [`Store::shared`].
    #[default]
    Memory,
    /// Redis, shared by every replica.
    Redis(RedisStore),
}

impl Backend {
    /// The response `id` of `scope`.
    pub async fn get(&self, scope: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        match self {
            Backend::Memory => Ok(Store::shared().get(scope, id).map(|s| (*s).clone())),
            Backend::Redis(r) => r.get(scope, id).await,
        }
    }

    /// Stores `data` as `id` of `scope`.
    pub async fn insert(
        &self,
        scope: &str,
        id: &str,
        data: Stored,
        limits: Limits,
    ) -> Result<Inserted, StoreError> {
        match self {
            Backend::Memory => Ok(Store::shared().insert(scope, id, data, limits)),
            Backend::Redis(r) => {
                if data.size() > limits.max_bytes / 8 {
                    return Ok(Inserted::TooLarge);
                }
                r.put(scope, id, &data, limits.ttl)
                    .await
                    .map(|()| Inserted::Stored)
            }
        }
    }

    /// Deletes the response `id` of `scope`; whether it was there.
    pub async fn delete(&self, scope: &str, id: &str) -> Result<bool, StoreError> {
        match self {
            Backend::Memory => Ok(Store::shared().delete(scope, id)),
            Backend::Redis(r) => r.delete(scope, id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            response: json!({"id": "r", "output": [{"type": "message", "content": text}]}),
            input: vec![json!({"role": "user", "content": text})],
        }
    }

    fn limits(max_entries: usize, max_bytes: u64) -> Limits {
        Limits {
            max_entries,
            max_bytes,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn scopes_do_not_see_each_other() {
        let s = Store::default();
        s.insert("acme", "r1", stored("a"), limits(10, 1 << 20));
        assert!(s.get("acme", "r1").is_some());
        assert!(s.get("other", "r1").is_none());
        assert!(!s.delete("other", "r1"));
        assert!(s.delete("acme", "r1"));
        assert!(s.get("acme", "r1").is_none());
        assert_eq!(s.size(), (0, 0));
    }

    #[test]
    fn bounded_by_count_and_bytes_oldest_first() {
        let s = Store::default();
        for i in 0..5 {
            s.insert("t", &format!("r{i}"), stored("x"), limits(3, 1 << 20));
        }
        assert_eq!(s.size().0, 3);
        assert!(s.get("t", "r1").is_none());
        assert!(s.get("t", "r4").is_some());
        let big = "y".repeat(500);
        let per = stored(&big).size();
        let s = Store::default();
        for i in 0..4 {
            s.insert(
                "t",
                &format!("r{i}"),
                stored(&big),
                limits(100, per * 8 + 10),
            );
        }
        assert!(s.size().1 <= per * 8 + 10);
        assert_eq!(
            s.insert("t", "huge", stored(&"z".repeat(10_000)), limits(100, 8_000)),
            Inserted::TooLarge
        );
    }

    #[test]
    fn entries_expire() {
        let s = Store::default();
        let l = Limits {
            ttl: Duration::ZERO,
            ..limits(10, 1 << 20)
        };
        s.insert("t", "r", stored("a"), l);
        assert!(s.get("t", "r").is_none());
    }

    #[test]
    fn history_is_input_then_output() {
        let h = stored("a").history();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1]["type"], "message");
    }
}
