//! The semantic cache's index (issue 18): per (tenant scope, cache policy, public model), the
//! prompts of stored answers as unit vectors (normalised once, at insert), each pointing at the
//! answer's entry in the response cache's [`Store`](super::Store). A lookup is a brute-force
//! cosine scan (a dot product per entry) over at most `max_entries` vectors: with 1000
//! entries of 1536 dimensions that is 1.5 M multiply-adds, about 0.3 ms in a release build,
//! under a read lock of that index alone. Indexes never span tenants.
//!
//! What is embedded ([`prompt_text`]): the text of every message (system and every turn,
//! joined by newlines); a request with tools, tool calls or tool results, or any part that is
//! not text (images, audio, documents, files) is not looked up by meaning (the exact cache
//! still serves it). Every other member of the request (sampling, `max_tokens`, `n`, response
//! format…) and the number of turns must be equal for a hit ([`params_of`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_core::Endpoint;

use super::{framed, hash_raw, Family, Key, IGNORED_MEMBERS};
use crate::translator::json::RawObject;
use crate::webhook;

/// Members whose presence means the request is not looked up by meaning.
const TOOL_MEMBERS: &[&str] = &[
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "tool_config",
    "toolConfig",
];

/// One stored prompt.
#[derive(Debug)]
struct Item {
    /// Unit length.
    vector: Box<[f32]>,
    /// The hash of the request's other members ([`params_of`]).
    params: [u8; 32],
    /// The dialect the answer is stored in.
    family: Family,
    /// Where the answer lives in the response cache.
    key: Key,
    /// When it stops counting (the answer's TTL).
    expires: Instant,
}

type Index = RwLock<VecDeque<Item>>;

/// Every index of this process.
#[derive(Debug, Default)]
pub struct Indexes {
    map: Mutex<HashMap<String, Arc<Index>>>,
}

/// The best stored prompt for a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// Where the answer lives.
    pub key: Key,
    /// The cosine similarity.
    pub score: f32,
}

static SHARED: OnceLock<Indexes> = OnceLock::new();

/// The name of the index of (`scope`, `policy`, `model`).
pub fn index_name(scope: &str, policy: &str, model: &str) -> String {
    format!("{scope}\u{0}{policy}\u{0}{model}")
}

/// `v` scaled to unit length; `None` for an empty, zero or non-finite vector.
pub fn normalise(mut v: Vec<f32>) -> Option<Box<[f32]>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if v.is_empty() || !norm.is_finite() || norm == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v.into_boxed_slice())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl Indexes {
    /// The process's indexes.
    pub fn shared() -> &'static Indexes {
        SHARED.get_or_init(Indexes::default)
    }

    fn index(&self, name: &str, create: bool) -> Option<Arc<Index>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = map.get(name) {
            return Some(Arc::clone(i));
        }
        if !create {
            return None;
        }
        let i = Arc::new(Index::default());
        map.insert(name.to_owned(), Arc::clone(&i));
        Some(i)
    }

    /// The stored prompt of index `name` most similar to `query` (unit length) among those
    /// with the same `params` and `family` and not expired at `now`.
    pub fn best(
        &self,
        name: &str,
        query: &[f32],
        params: &[u8; 32],
        family: Family,
        now: Instant,
    ) -> Option<Found> {
        let index = self.index(name, false)?;
        let items = index.read().unwrap_or_else(PoisonError::into_inner);
        let mut best: Option<Found> = None;
        for item in items.iter() {
            if item.params != *params
                || item.family != family
                || item.expires <= now
                || item.vector.len() != query.len()
            {
                continue;
            }
            let score = dot(&item.vector, query);
            if best.is_none_or(|b| score > b.score) {
                best = Some(Found {
                    key: item.key,
                    score,
                });
            }
        }
        best
    }

    /// Adds a prompt to index `name` (an earlier one pointing at the same answer goes), the
    /// oldest going first past `max_entries`.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        name: &str,
        vector: Box<[f32]>,
        params: [u8; 32],
        family: Family,
        key: Key,
        ttl: Duration,
        max_entries: usize,
    ) {
        let Some(index) = self.index(name, true) else {
            return;
        };
        let mut items = index.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        items.retain(|i| i.key != key && i.expires > now);
        items.push_back(Item {
            vector,
            params,
            family,
            key,
            expires: now + ttl,
        });
        while items.len() > max_entries.max(1) {
            items.pop_front();
        }
    }

    /// Forgets the prompt pointing at `key` (its answer is gone from the store).
    pub fn remove(&self, name: &str, key: &Key) {
        if let Some(index) = self.index(name, false) {
            index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|i| i.key != *key);
        }
    }

    /// How many prompts index `name` holds.
    pub fn len(&self, name: &str) -> usize {
        self.index(name, false).map_or(0, |i| {
            i.read().unwrap_or_else(PoisonError::into_inner).len()
        })
    }
}

/// The text embedded for a request: every message's text, or `None` when the request is not
/// looked up by meaning (tools, non-text parts, no text).
pub fn prompt_text(endpoint: Endpoint, obj: &RawObject<'_>) -> Option<String> {
    if TOOL_MEMBERS.iter().any(|m| obj.get(m).is_some()) {
        return None;
    }
    for member in ["messages", "contents"] {
        let Some(raw) = obj.get(member) else { continue };
        let Ok(Value::Array(turns)) = serde_json::from_str::<Value>(raw.get()) else {
            return None;
        };
        for turn in &turns {
            if !text_only(turn) {
                return None;
            }
        }
    }
    let text = webhook::request_text(endpoint, obj);
    (!text.trim().is_empty()).then_some(text)
}

/// Whether a message (OpenAI, Anthropic) or content (Gemini) carries only text.
fn text_only(turn: &Value) -> bool {
    if turn.get("tool_calls").is_some() || turn.get("function_call").is_some() {
        return false;
    }
    if matches!(
        turn.get("role").and_then(Value::as_str),
        Some("tool" | "function")
    ) {
        return false;
    }
    let content = turn.get("content").or_else(|| turn.get("parts"));
    match content {
        None | Some(Value::Null | Value::String(_)) => true,
        Some(Value::Array(parts)) => parts.iter().all(|p| match p {
            Value::String(_) => true,
            Value::Object(part) => match part.get("type").and_then(Value::as_str) {
                Some(t) => t == "text",
                // Gemini parts: `{"text": …}` alone (a `thought` flag may ride along).
                None => part.keys().all(|k| k == "text" || k == "thought"),
            },
            _ => false,
        }),
        Some(_) => false,
    }
}

/// The hash of what must be equal besides the prompt's meaning: the endpoint, the number of
/// turns and every member that is neither text nor ignored by the exact cache.
pub fn params_of(endpoint: Endpoint, obj: &RawObject<'_>) -> [u8; 32] {
    let text = crate::guard::text_members(endpoint);
    let mut members: Vec<(&str, &serde_json::value::RawValue)> = obj
        .members()
        .filter(|(k, _)| !IGNORED_MEMBERS.contains(k) && !text.contains(k))
        .collect();
    members.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    h.update(endpoint.label().as_bytes());
    let turns = text
        .iter()
        .filter_map(|m| obj.get(m))
        .filter_map(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .map(|v| v.as_array().map_or(1, Vec::len))
        .sum::<usize>();
    h.update((turns as u64).to_le_bytes());
    for (k, v) in members {
        framed(&mut h, b'k', k.as_bytes());
        hash_raw(&mut h, v);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> RawObject<'_> {
        RawObject::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn the_nearest_prompt_of_the_same_shape_is_found_and_the_bound_holds() {
        let ix = Indexes::default();
        let ttl = Duration::from_secs(60);
        let p = [1; 32];
        ix.insert(
            "a",
            normalise(vec![1.0, 0.0]).unwrap(),
            p,
            Family::OpenAi,
            [1; 32],
            ttl,
            2,
        );
        ix.insert(
            "a",
            normalise(vec![1.0, 1.0]).unwrap(),
            p,
            Family::OpenAi,
            [2; 32],
            ttl,
            2,
        );
        let q = normalise(vec![1.0, 0.1]).unwrap();
        let f = ix
            .best("a", &q, &p, Family::OpenAi, Instant::now())
            .unwrap();
        assert_eq!(f.key, [1; 32]);
        assert!(f.score > 0.99);
        // Other params, family or index: nothing.
        assert!(ix
            .best("a", &q, &[2; 32], Family::OpenAi, Instant::now())
            .is_none());
        assert!(ix
            .best("a", &q, &p, Family::Anthropic, Instant::now())
            .is_none());
        assert!(ix
            .best("b", &q, &p, Family::OpenAi, Instant::now())
            .is_none());
        // The oldest goes first past the bound.
        ix.insert(
            "a",
            normalise(vec![0.0, 1.0]).unwrap(),
            p,
            Family::OpenAi,
            [3; 32],
            ttl,
            2,
        );
        assert_eq!(ix.len("a"), 2);
        let f = ix
            .best("a", &q, &p, Family::OpenAi, Instant::now())
            .unwrap();
        assert_eq!(f.key, [2; 32]);
        ix.remove("a", &[2; 32]);
        assert_eq!(ix.len("a"), 1);
        // Expired entries are skipped.
        let later = Instant::now() + Duration::from_secs(120);
        assert!(ix.best("a", &q, &p, Family::OpenAi, later).is_none());
        assert!(normalise(vec![0.0, 0.0]).is_none());
    }

    #[test]
    fn tools_and_images_are_not_embedded_and_params_exclude_the_text() {
        let chat = Endpoint::ChatCompletions;
        let text = prompt_text(
            chat,
            &obj(
                r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
            ),
        );
        assert_eq!(text.as_deref(), Some("be brief\nhi"));
        assert!(prompt_text(
            chat,
            &obj(r#"{"model":"m","tools":[],"messages":[{"role":"user","content":"hi"}]}"#)
        )
        .is_none());
        assert!(prompt_text(chat, &obj(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#)).is_none());
        assert!(prompt_text(
            Endpoint::GenerateContent,
            &obj(r#"{"contents":[{"role":"user","parts":[{"inlineData":{}}]}]}"#)
        )
        .is_none());
        let a = params_of(
            chat,
            &obj(
                r#"{"model":"m","max_tokens":5,"user":"u","messages":[{"role":"user","content":"a"}]}"#,
            ),
        );
        let b = params_of(
            chat,
            &obj(r#"{"max_tokens":5,"model":"m","messages":[{"role":"user","content":"b"}]}"#),
        );
        let c = params_of(
            chat,
            &obj(r#"{"model":"m","max_tokens":6,"messages":[{"role":"user","content":"a"}]}"#),
        );
        let d = params_of(
            chat,
            &obj(
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a"},{"role":"user","content":"a"}]}"#,
            ),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
