//! `tollgate-bench cache-key`: what a response-cache miss adds to a request, timed in process
//! where it can be measured (the end-to-end benchmark's noise, about ±0.3 ms here, hides
//! it). For chat requests of about 1 KB, 10 KB and 100 KB it times, per request, the steps a
//! miss runs that a request without a cache does not: the key (normalise + SHA-256, from the
//! body already parsed once for the route), the lookup in a memory store holding other
//! entries, and, when the answer is complete, the store (the answer read back to check it
//! stopped normally, then inserted). Reported as medians and 99th percentiles in µs, with a
//! second parse and serialisation of the whole body for comparison (what the key avoids).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tollgate_core::metrics::Metrics;
use tollgate_core::Endpoint;
use tollgate_extproc::cache::{self, replay, Entry, Family, Store};
use tollgate_extproc::translator::openai;

/// Options of `cache-key`.
#[derive(Debug, Clone, Args)]
pub struct CacheKeyArgs {
    /// Timed requests per body size (after as many warm-up requests).
    #[arg(long, default_value_t = 2000)]
    pub iterations: usize,
    /// Entries already in the memory store when the misses are timed.
    #[arg(long, default_value_t = 10_000)]
    pub entries: usize,
}

/// Figures of one body size, µs.
#[derive(Debug, Clone, Serialize)]
pub struct SizeFigures {
    /// The size asked for, KB.
    pub size_kb: usize,
    /// The request body's size in bytes.
    pub body_bytes: usize,
    /// The key: normalise + hash, median.
    pub key_p50_us: f64,
    /// The key, 99th percentile.
    pub key_p99_us: f64,
    /// The memory store's lookup that misses, median.
    pub lookup_p50_us: f64,
    /// Key + lookup: what a miss adds before the provider is asked, median.
    pub miss_p50_us: f64,
    /// Key + lookup, 99th percentile.
    pub miss_p99_us: f64,
    /// Storing the (about 1 KB) answer once it is complete, median.
    pub store_p50_us: f64,
    /// For comparison: parsing the whole body into a tree and serialising it again, median.
    pub reparse_p50_us: f64,
    /// For comparison: SHA-256 of the body's bytes alone (the key's floor), median.
    pub sha256_p50_us: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct CacheKeyReport {
    /// Whether this binary was built with optimisations.
    pub release: bool,
    /// Timed requests per size.
    pub iterations: usize,
    /// One row per body size.
    pub sizes: Vec<SizeFigures>,
}

impl CacheKeyReport {
    /// A markdown table of the figures.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "cache miss cost ({} build, {} requests per size; µs)\n\n| body | key p50 | key p99 | lookup p50 | miss (key + lookup) p50 | miss p99 | store 1 KB answer p50 | reparse + reserialise p50 | SHA-256 of the body p50 |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            if self.release { "release" } else { "debug" },
            self.iterations
        );
        for s in &self.sizes {
            out.push_str(&format!(
                "| {} KB | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                s.size_kb,
                s.key_p50_us,
                s.key_p99_us,
                s.lookup_p50_us,
                s.miss_p50_us,
                s.miss_p99_us,
                s.store_p50_us,
                s.reparse_p50_us,
                s.sha256_p50_us
            ));
        }
        out
    }
}

/// A chat request of about `bytes` bytes: a system prompt, then user and assistant turns of
/// about 500 bytes each, with sampling members and a tool.
pub fn chat_request(bytes: usize, salt: usize) -> Vec<u8> {
    let sentence = "The quick brown fox jumps over the lazy dog while the gateway counts tokens. ";
    let turn: String = sentence.repeat(500 / sentence.len() + 1);
    let mut messages = vec![json!({"role": "system", "content": "You are a helpful assistant."})];
    let write = |messages: &[serde_json::Value]| {
        let mut all = messages.to_vec();
        all.push(json!({"role": "user", "content": format!("Question number {salt}?")}));
        serde_json::to_vec(&json!({
            "model": "bench-model",
            "messages": all,
            "temperature": 0.2,
            "max_tokens": 256,
            "stream": false,
            "user": "bench",
            "tools": [{"type": "function", "function": {"name": "lookup", "description": "Looks a word up.",
                "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}],
        }))
        .unwrap_or_default()
    };
    let mut body = write(&messages);
    let mut i = 0;
    while body.len() < bytes {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let room = bytes - body.len();
        let text = if room < turn.len() + 40 {
            "x".repeat(room.saturating_sub(30).max(1))
        } else {
            format!("{turn}{i}")
        };
        messages.push(json!({"role": role, "content": text}));
        body = write(&messages);
        i += 1;
    }
    body
}

/// A complete OpenAI answer of about 1 KB.
fn answer() -> Vec<u8> {
    let text = "An answer of about one kilobyte, as a short chat reply is. ".repeat(16);
    serde_json::to_vec(&json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 300}
    }))
    .unwrap_or_default()
}

fn entry(body: Vec<u8>) -> Entry {
    Entry {
        body,
        family: Family::OpenAi,
        usage: None,
        upstream_model: "bench-model".to_owned(),
        source_request_id: "0123456789abcdef0123456789abcdef".to_owned(),
        ttl_secs: 3600,
    }
}

fn micros(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let at = ((v.len() - 1) as f64 * p).round() as usize;
    v[at.min(v.len() - 1)]
}

/// Runs the scenario.
pub async fn cache_key(args: &CacheKeyArgs) -> Result<CacheKeyReport> {
    let store = Store::memory(1 << 30, Metrics::default());
    let answer = answer();
    // Other entries, so that a lookup searches a populated store.
    for i in 0..args.entries {
        let body = chat_request(1024, i);
        let parsed =
            openai::parse_request_at(Endpoint::ChatCompletions, "/v1/chat/completions", &body)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let key = cache::key(
            "t:bench",
            "",
            "chat_completions",
            "bench-model",
            parsed.object(),
        );
        store.put(key, entry(answer.clone())).await;
    }
    let mut sizes = Vec::new();
    for bytes in [1024, 10 * 1024, 100 * 1024] {
        let body = chat_request(bytes, usize::MAX);
        let parsed =
            openai::parse_request_at(Endpoint::ChatCompletions, "/v1/chat/completions", &body)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
                .context("the bench request does not parse")?;
        let n = args.iterations.max(1);
        let mut sha_t = Vec::with_capacity(n);
        let (mut key_t, mut lookup_t, mut miss_t, mut store_t, mut reparse_t) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for i in 0..n * 2 {
            // The scope differs per request so that every lookup misses and every store is new.
            let scope = format!("t:bench-{i}");
            let t = Instant::now();
            let key = cache::key(
                &scope,
                "",
                "chat_completions",
                "bench-model",
                parsed.object(),
            );
            let k = micros(t);
            let t = Instant::now();
            let hit = store.get(&key).await;
            let l = micros(t);
            anyhow::ensure!(hit.is_none(), "a bench lookup hit");
            let t = Instant::now();
            let ok = replay::decode_complete(Family::OpenAi, &answer)
                .filter(replay::normal_stop)
                .is_some();
            store.put(key, entry(answer.clone())).await;
            let s = micros(t);
            anyhow::ensure!(ok, "the bench answer is not stored");
            let t = Instant::now();
            let tree: serde_json::Value = serde_json::from_slice(&body)?;
            let again = serde_json::to_vec(&tree)?;
            let r = micros(t);
            std::hint::black_box(again);
            let t = Instant::now();
            std::hint::black_box(Sha256::digest(&body));
            let h = micros(t);
            if i >= n {
                sha_t.push(h);
                key_t.push(k);
                lookup_t.push(l);
                miss_t.push(k + l);
                store_t.push(s);
                reparse_t.push(r);
            }
        }
        sizes.push(SizeFigures {
            size_kb: bytes / 1024,
            body_bytes: body.len(),
            key_p50_us: percentile(&mut key_t, 0.5),
            key_p99_us: percentile(&mut key_t, 0.99),
            lookup_p50_us: percentile(&mut lookup_t, 0.5),
            miss_p50_us: percentile(&mut miss_t, 0.5),
            miss_p99_us: percentile(&mut miss_t, 0.99),
            store_p50_us: percentile(&mut store_t, 0.5),
            reparse_p50_us: percentile(&mut reparse_t, 0.5),
            sha256_p50_us: percentile(&mut sha_t, 0.5),
        });
    }
    Ok(CacheKeyReport {
        release: !cfg!(debug_assertions),
        iterations: args.iterations,
        sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_requests_have_the_sizes_asked() {
        for bytes in [1024, 10 * 1024, 100 * 1024] {
            let len = chat_request(bytes, 1).len();
            assert!(len >= bytes && len < bytes + 1024, "{bytes}: {len}");
        }
    }

    #[tokio::test]
    async fn the_scenario_runs() {
        let r = cache_key(&CacheKeyArgs {
            iterations: 3,
            entries: 10,
        })
        .await
        .unwrap();
        assert_eq!(r.sizes.len(), 3);
        assert!(r.sizes.iter().all(|s| s.miss_p50_us > 0.0));
        assert!(r.markdown().contains("100 KB"));
    }
}
