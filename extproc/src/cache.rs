//! The exact response cache (issue 18): a request a `cache` policy applies to is hashed into
//! a key (tenant scope, guardrails policy, endpoint, model and the request normalised: members
//! sorted at every depth, members that do not change the answer left out), looked up at the
//! request-body phase and, on a hit, answered by ext_proc itself as an immediate response in
//! the client's dialect (a stream replayed from the cached complete answer, [`replay`]). A
//! complete successful answer (streamed ones assembled on the side) is stored for the policy's
//! TTL in this process's memory (moka, bounded by bytes) or in Redis.

pub mod replay;
pub mod responses;
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
    /// OpenAI Responses API `response` objects ([`responses`]): replayed with the hit's own
    /// id, items and envelope.
    Responses,
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
///
/// The request is hashed straight from the body parsed once (no tree is built, nothing is
/// copied or serialised again): objects with their members sorted by name at every depth,
/// arrays in order, and every other value (strings, numbers, literals) by its JSON text. Each piece is
/// framed by a tag and its length, so no two different requests hash the same bytes. Two requests that differ only in how a string is escaped or a number is written
/// (`"\u0041"` and `"A"`, `1.0` and `1`) get different keys: a miss, never a wrong hit.
pub fn key(scope: &str, policy: &str, endpoint: &str, model: &str, obj: &RawObject<'_>) -> Key {
    let mut h = hasher(scope, policy, endpoint, model);
    let mut members: Vec<(&str, &RawValue)> = obj
        .members()
        .filter(|(k, _)| !IGNORED_MEMBERS.contains(k))
        .collect();
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    hash_members(&mut h, &members);
    h.finalize().into()
}

/// A hasher fed the key recipe's version and the request's scope, policy, endpoint and model.
pub(crate) fn hasher(scope: &str, policy: &str, endpoint: &str, model: &str) -> Sha256 {
    let mut h = Sha256::new();
    for part in [
        KEY_VERSION,
        scope.as_bytes(),
        policy.as_bytes(),
        endpoint.as_bytes(),
        model.as_bytes(),
    ] {
        framed(&mut h, b'p', part);
    }
    h
}

/// `bytes` behind a tag and their length.
pub(crate) fn framed(h: &mut Sha256, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Object members (already sorted by name) into the hash.
fn hash_members(h: &mut Sha256, members: &[(&str, &RawValue)]) {
    h.update([b'{']);
    h.update((members.len() as u64).to_le_bytes());
    for (k, v) in members {
        framed(h, b'k', k.as_bytes());
        hash_raw(h, v);
    }
    h.update([b'}']);
}

/// How deep [`hash_raw`] walks nested values (the body's shape check bounds depth lower).
const MAX_DEPTH: usize = 128;

/// One JSON value, unparsed, into the hash, with no copy and no tree: an object as its
/// members sorted by name (one pass finds where each value starts, a second hashes them in
/// order: bytes nested in n objects are scanned n + 1 times, by `memchr`), an array's items
/// in order, strings and other values by their text. A value that does not scan (it cannot
/// be: the body parsed) is hashed by its whole text after what was hashed of it.
pub(crate) fn hash_raw(h: &mut Sha256, v: &RawValue) {
    let text = v.get().as_bytes();
    let mut pos = 0;
    if walk(text, &mut pos, Some(&mut *h), 0).is_none() {
        framed(h, b'x', text);
    }
}

fn skip_ws(b: &[u8], pos: &mut usize) {
    while b
        .get(*pos)
        .is_some_and(|c| matches!(c, b' ' | b'\n' | b'\r' | b'\t'))
    {
        *pos += 1;
    }
}

/// The text between the quotes of the string at `b[*pos]` (escapes as written).
fn string_at<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    if b.get(*pos) != Some(&b'"') {
        return None;
    }
    let start = *pos + 1;
    let mut i = start;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        *pos = i + 1;
        return b.get(start..i);
    }
}

/// Walks the value at `b[*pos]` past its end, hashing it into `h` when one is given (`None`:
/// only skipped, to find where an object's member values start).
fn walk(b: &[u8], pos: &mut usize, mut h: Option<&mut Sha256>, depth: usize) -> Option<()> {
    skip_ws(b, pos);
    match *b.get(*pos)? {
        b'{' => {
            if depth > MAX_DEPTH {
                return None;
            }
            *pos += 1;
            // First pass: the members' names and where their values start.
            let mut members: Vec<(&[u8], usize)> = Vec::new();
            skip_ws(b, pos);
            if b.get(*pos) == Some(&b'}') {
                *pos += 1;
            } else {
                loop {
                    skip_ws(b, pos);
                    let name = string_at(b, pos)?;
                    skip_ws(b, pos);
                    if b.get(*pos) != Some(&b':') {
                        return None;
                    }
                    *pos += 1;
                    members.push((name, *pos));
                    walk(b, pos, None, depth + 1)?;
                    skip_ws(b, pos);
                    match b.get(*pos)? {
                        b',' => *pos += 1,
                        b'}' => {
                            *pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            if let Some(h) = h {
                // Second pass: the values hashed in their names' order.
                members.sort_unstable_by(|x, y| x.0.cmp(y.0));
                h.update([b'{']);
                h.update((members.len() as u64).to_le_bytes());
                for (name, start) in &members {
                    framed(h, b'k', name);
                    let mut at = *start;
                    walk(b, &mut at, Some(&mut *h), depth + 1)?;
                }
                h.update([b'}']);
            }
        }
        b'[' => {
            if depth > MAX_DEPTH {
                return None;
            }
            *pos += 1;
            if let Some(h) = h.as_deref_mut() {
                h.update([b'[']);
            }
            skip_ws(b, pos);
            if b.get(*pos) == Some(&b']') {
                *pos += 1;
            } else {
                loop {
                    if let Some(h) = h.as_deref_mut() {
                        h.update([b'e']);
                    }
                    walk(b, pos, h.as_deref_mut(), depth + 1)?;
                    skip_ws(b, pos);
                    match b.get(*pos)? {
                        b',' => *pos += 1,
                        b']' => {
                            *pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            if let Some(h) = h {
                h.update([b']']);
            }
        }
        b'"' => {
            let s = string_at(b, pos)?;
            if let Some(h) = h {
                framed(h, b'q', s);
            }
        }
        _ => {
            let start = *pos;
            while b
                .get(*pos)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
            {
                *pos += 1;
            }
            let text = b.get(start..*pos)?;
            if let Some(h) = h {
                framed(h, b'n', text);
            }
        }
    }
    Some(())
}

/// A parsed JSON value into the hash, framed exactly as [`hash_raw`] frames its text (for
/// requests Tollgate itself rewrote, e.g. a Responses request's resolved conversation).
pub(crate) fn hash_value(h: &mut Sha256, v: &serde_json::Value) {
    value_into(h, v);
}

fn value_into(h: &mut Sha256, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let mut members: Vec<(String, &serde_json::Value)> =
                map.iter().map(|(k, inner)| (escaped(k), inner)).collect();
            members.sort_unstable_by(|x, y| x.0.cmp(&y.0));
            h.update([b'{']);
            h.update((members.len() as u64).to_le_bytes());
            for (name, inner) in members {
                framed(h, b'k', name.as_bytes());
                value_into(h, inner);
            }
            h.update([b'}']);
        }
        serde_json::Value::Array(items) => {
            h.update([b'[']);
            for item in items {
                h.update([b'e']);
                value_into(h, item);
            }
            h.update([b']']);
        }
        serde_json::Value::String(text) => framed(h, b'q', escaped(text).as_bytes()),
        other => framed(h, b'n', other.to_string().as_bytes()),
    }
}

/// A string as JSON writes it, without the quotes.
fn escaped(s: &str) -> String {
    let quoted = serde_json::Value::String(s.to_owned()).to_string();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_owned()
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

    /// `{prefix}:cache:<sha256 hex>`: the prefix as the Redis Cluster hash tag, as the ledger's
    /// and the response store's keys have it.
    fn redis_key(prefix: &str, key: &Key) -> String {
        format!("{{{prefix}}}:cache:{}", hex::encode(key))
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
                let got = got?;
                match decode_entry(&got) {
                    Some(entry) => Some(Arc::new(entry)),
                    None => {
                        // Another version's entry, or something else under the key: a miss
                        // (the answer stored after it replaces it).
                        tracing::warn!(
                            bytes = got.len(),
                            "Response cache: a Redis value is not a cache entry, treated as a miss"
                        );
                        None
                    }
                }
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
                let Some(value) = encode_entry(&entry) else {
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

/// The first bytes of a cache entry's Redis value (the layout's version).
const REDIS_MAGIC: &[u8] = b"tgcache1\n";

/// An entry's members besides its body, as its Redis value carries them.
#[derive(Serialize, Deserialize)]
struct EntryMeta {
    family: Family,
    usage: Option<Usage>,
    upstream_model: String,
    source_request_id: String,
    ttl_secs: u64,
}

/// An entry's Redis value: [`REDIS_MAGIC`], its other members as one line of JSON, then the
/// body's bytes as they are (so a value is its body plus about 200 bytes: the bound
/// `max_entry_bytes` holds in Redis too).
fn encode_entry(entry: &Entry) -> Option<Vec<u8>> {
    let meta = serde_json::to_vec(&EntryMeta {
        family: entry.family,
        usage: entry.usage,
        upstream_model: entry.upstream_model.clone(),
        source_request_id: entry.source_request_id.clone(),
        ttl_secs: entry.ttl_secs,
    })
    .ok()?;
    let mut out = Vec::with_capacity(REDIS_MAGIC.len() + meta.len() + 1 + entry.body.len());
    out.extend_from_slice(REDIS_MAGIC);
    out.extend_from_slice(&meta);
    out.push(b'\n');
    out.extend_from_slice(&entry.body);
    Some(out)
}

/// The entry of a Redis value (`None`: not one of [`encode_entry`]'s).
fn decode_entry(value: &[u8]) -> Option<Entry> {
    let rest = value.strip_prefix(REDIS_MAGIC)?;
    // Compact JSON holds no raw newline: the first one ends the members.
    let end = memchr::memchr(b'\n', rest)?;
    let meta: EntryMeta = serde_json::from_slice(&rest[..end]).ok()?;
    Some(Entry {
        body: rest[end + 1..].to_vec(),
        family: meta.family,
        usage: meta.usage,
        upstream_model: meta.upstream_model,
        source_request_id: meta.source_request_id,
        ttl_secs: meta.ttl_secs,
    })
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
    fn whitespace_does_not_change_the_key_and_framing_keeps_values_apart() {
        let a = k(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a","b"]}"#);
        let b = k(
            "{ \"stop\" : [ \"a\" ,\n \"b\" ] ,\"messages\":[ {\"content\":\"hi\", \"role\":\"user\"} ],\"model\":\"m\" }",
        );
        assert_eq!(a, b);
        let c = k(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a,b"]}"#);
        assert_ne!(a, c);
        // A string is not the number it spells; nested members are sorted too.
        assert_ne!(k(r#"{"model":"m","n":1}"#), k(r#"{"model":"m","n":"1"}"#));
        assert_ne!(
            k(r#"{"model":"m","x":[[1],[]]}"#),
            k(r#"{"model":"m","x":[[],[1]]}"#)
        );
        assert_eq!(
            k(r#"{"model":"m","t":[{"f":{"a":1,"b":[true,null]}}]}"#),
            k(r#"{"model":"m","t":[ { "f" : { "b" : [ true , null ] , "a" : 1 } } ]}"#)
        );
        // A parsed value hashes as its text does (Responses requests are keyed parsed).
        let raw: &RawValue = serde_json::from_str(r#"{"b":[1,"x",null],"a":{"c":true}}"#).unwrap();
        let value: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
        let (mut h1, mut h2) = (Sha256::new(), Sha256::new());
        hash_raw(&mut h1, raw);
        hash_value(&mut h2, &value);
        assert_eq!(h1.finalize(), h2.finalize());
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

    #[test]
    fn redis_values_are_the_body_plus_a_small_header() {
        let e = entry(60, 10_000);
        let v = encode_entry(&e).unwrap();
        assert!(v.len() < 10_000 + 256, "{}", v.len());
        let back = decode_entry(&v).unwrap();
        assert_eq!(back.body, e.body);
        assert_eq!(back.source_request_id, "r1");
        assert!(decode_entry(b"garbage").is_none());
        assert!(decode_entry(b"tgcache1\n{not json}\nbody").is_none());
        assert!(decode_entry(&v[..REDIS_MAGIC.len() + 5]).is_none());
        assert_eq!(
            Store::redis_key("tollgate", &[0xab; 32]),
            format!("{{tollgate}}:cache:{}", "ab".repeat(32))
        );
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
