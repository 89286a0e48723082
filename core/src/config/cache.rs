//! The `cache` section: the response cache (issue 18). Policies opt keys, tenants or models
//! in; a request one applies to is looked up by its exact normalised form (and, when the
//! policy asks, by meaning), and a complete successful answer is kept for its TTL, in each
//! replica's memory (bounded by bytes) or in the budgets' Redis when replicas share.

use std::time::Duration;

use serde::Deserialize;

use super::Errors;

/// Where cached answers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheBackend {
    /// In this replica's memory, bounded by `max_bytes` (least recently used out first).
    #[default]
    Memory,
    /// In the Redis of `budgets.redis` (same URL and key prefix), shared by every replica;
    /// entries carry their TTL.
    Redis,
}

/// The `cache` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Where cached answers live: `memory` (default) or `redis` (needs `budgets.redis`).
    #[serde(default)]
    pub backend: CacheBackend,
    /// The most bytes of cached answers kept in memory (1024 to 68719476736); the least
    /// recently used go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// The largest answer stored, in bytes (1 to `max_bytes`); a larger one (and a stream
    /// whose assembled answer grows past it) is not stored.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: u64,
    /// Who and what is cached: the first policy that matches a request applies to it; a
    /// request no policy matches is neither looked up nor stored.
    #[serde(default)]
    pub policies: Vec<RawCachePolicy>,
}

/// One `cache.policies[]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCachePolicy {
    /// A name for metrics and logs.
    pub name: String,
    /// Key ids the policy applies to (empty: any key).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tenants the policy applies to (empty: any tenant).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Public model names the policy applies to (empty: any model).
    #[serde(default)]
    pub models: Vec<String>,
    /// Whether the exact cache answers (default true).
    #[serde(default = "default_true")]
    pub exact: bool,
    /// How long an answer is kept, in seconds (1 to 31536000).
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// The share of the answer's price a hit is billed against budgets, 0.0 (default: free)
    /// to 1.0 (the full price).
    #[serde(default)]
    pub price_fraction: f64,
    /// The semantic cache: a request whose meaning is close enough to an answered one's is
    /// answered with that answer (absent: off). With `exact: false` only it answers.
    #[serde(default)]
    pub semantic: Option<RawSemantic>,
}

/// A policy's `semantic` subsection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSemantic {
    /// The configured public model that embeds the prompt: every target an OpenAI-API
    /// provider (`openai`, `openai_compatible`, `azure_openai`), called by Tollgate itself
    /// with the provider's credential, priced at the model's price.
    pub model: String,
    /// The cosine similarity at or above which a cached answer is served (0 < t ≤ 1).
    pub threshold: f64,
    /// The most prompts kept per index (one index per tenant scope, policy and model; 1 to
    /// 100000, default 1000); the oldest go first.
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
    /// How long the embedding call may take, in milliseconds (1 to 60000, default 1000); a
    /// slower or failing call is a miss.
    #[serde(default = "default_embed_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_entries() -> u32 {
    1000
}

fn default_embed_timeout_ms() -> u64 {
    1000
}

fn default_true() -> bool {
    true
}

fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_max_entry_bytes() -> u64 {
    1024 * 1024
}

fn default_ttl_secs() -> u64 {
    300
}

/// The validated `cache` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// Where answers live.
    pub backend: CacheBackend,
    /// The most bytes kept in memory.
    pub max_bytes: u64,
    /// The largest answer stored.
    pub max_entry_bytes: u64,
    /// The policies, in order.
    pub policies: Vec<CachePolicy>,
}

/// A validated cache policy.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// Its name.
    pub name: String,
    /// Key ids (empty: any).
    pub keys: Vec<String>,
    /// Tenants (empty: any).
    pub tenants: Vec<String>,
    /// Models (empty: any).
    pub models: Vec<String>,
    /// Whether the exact cache answers.
    pub exact: bool,
    /// How long an answer is kept.
    pub ttl: Duration,
    /// The share of the price a hit is billed, in millionths (0 to 1000000).
    pub price_millionths: u64,
    /// The semantic cache, when on.
    pub semantic: Option<Semantic>,
}

/// A validated `semantic` subsection.
#[derive(Debug, Clone, PartialEq)]
pub struct Semantic {
    /// The embedding model (a configured public model).
    pub model: String,
    /// The least cosine similarity served.
    pub threshold: f32,
    /// The most prompts per index.
    pub max_entries: usize,
    /// The embedding call's bound.
    pub timeout: Duration,
}

impl CachePolicy {
    /// Whether the policy applies to a request of `key` (of `tenant`, empty: none) for
    /// `model`.
    pub fn applies(&self, key: &str, tenant: &str, model: &str) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        any(&self.keys, key) && any(&self.tenants, tenant) && any(&self.models, model)
    }
}

impl Cache {
    /// The policy of a request, when one applies.
    pub fn policy(&self, key: &str, tenant: &str, model: &str) -> Option<&CachePolicy> {
        self.policies.iter().find(|p| p.applies(key, tenant, model))
    }
}

/// Validates the section; `redis`: whether `budgets.redis` is configured; `model_known`:
/// whether a public model name is configured; `embeds`: whether a configured model can embed
/// (every target an OpenAI-API provider).
pub(super) fn validate_cache(
    raw: &RawCache,
    redis: bool,
    model_known: &dyn Fn(&str) -> bool,
    embeds: &dyn Fn(&str) -> bool,
    errs: &mut Errors,
) -> Cache {
    if !(1024..=64 * 1024 * 1024 * 1024).contains(&raw.max_bytes) {
        errs.add("cache.max_bytes", "must be between 1024 and 68719476736");
    }
    if raw.max_entry_bytes == 0 || raw.max_entry_bytes > raw.max_bytes {
        errs.add(
            "cache.max_entry_bytes",
            "must be at least 1 and at most `cache.max_bytes`",
        );
    }
    if raw.backend == CacheBackend::Redis && !redis {
        errs.add(
            "cache.backend",
            "`redis` needs the `budgets.redis` section (the cache shares its connection)",
        );
    }
    let mut policies = Vec::with_capacity(raw.policies.len());
    for (i, p) in raw.policies.iter().enumerate() {
        let path = format!("cache.policies[{i}]");
        if p.name.trim().is_empty() {
            errs.add(format!("{path}.name"), "must not be empty");
        }
        if raw.policies[..i].iter().any(|q| q.name == p.name) {
            errs.add(format!("{path}.name"), "is used by an earlier policy");
        }
        if !(1..=31_536_000).contains(&p.ttl_secs) {
            errs.add(format!("{path}.ttl_secs"), "must be between 1 and 31536000");
        }
        if !(p.price_fraction.is_finite() && (0.0..=1.0).contains(&p.price_fraction)) {
            errs.add(
                format!("{path}.price_fraction"),
                "must be between 0.0 and 1.0",
            );
        }
        for (j, m) in p.models.iter().enumerate() {
            if !model_known(m) {
                errs.add(
                    format!("{path}.models[{j}]"),
                    format!("names no configured model (`{m}`)"),
                );
            }
        }
        if !p.exact && p.semantic.is_none() {
            errs.add(
                format!("{path}.exact"),
                "is off and the policy has no `semantic` subsection: it would cache nothing",
            );
        }
        let semantic = p.semantic.as_ref().and_then(|s| {
            validate_semantic(s, &format!("{path}.semantic"), model_known, embeds, errs)
        });
        policies.push(CachePolicy {
            name: p.name.clone(),
            keys: p.keys.clone(),
            tenants: p.tenants.clone(),
            models: p.models.clone(),
            exact: p.exact,
            ttl: Duration::from_secs(p.ttl_secs),
            // Bounded above: 0.0..=1.0 maps onto 0..=1000000.
            price_millionths: (p.price_fraction.clamp(0.0, 1.0) * 1_000_000.0).round() as u64,
            semantic,
        });
    }
    Cache {
        backend: raw.backend,
        max_bytes: raw.max_bytes,
        max_entry_bytes: raw.max_entry_bytes,
        policies,
    }
}

fn validate_semantic(
    s: &RawSemantic,
    path: &str,
    model_known: &dyn Fn(&str) -> bool,
    embeds: &dyn Fn(&str) -> bool,
    errs: &mut Errors,
) -> Option<Semantic> {
    let mut ok = true;
    let mut add = |field: &str, message: String| {
        ok = false;
        errs.add(format!("{path}.{field}"), message);
    };
    if !model_known(&s.model) {
        add(
            "model",
            format!("names no configured model (`{}`)", s.model),
        );
    } else if !embeds(&s.model) {
        add(
            "model",
            format!(
                "`{}` cannot embed: every target must be an `openai`, `openai_compatible` or `azure_openai` provider",
                s.model
            ),
        );
    }
    if !(s.threshold.is_finite() && s.threshold > 0.0 && s.threshold <= 1.0) {
        add("threshold", "must be above 0.0 and at most 1.0".into());
    }
    if !(1..=100_000).contains(&s.max_entries) {
        add("max_entries", "must be between 1 and 100000".into());
    }
    if !(1..=60_000).contains(&s.timeout_ms) {
        add("timeout_ms", "must be between 1 and 60000".into());
    }
    ok.then(|| Semantic {
        model: s.model.clone(),
        threshold: s.threshold as f32,
        max_entries: s.max_entries as usize,
        timeout: Duration::from_millis(s.timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::env::MapEnv;

    fn errors(policy: &str) -> Result<Config, Vec<String>> {
        let yaml = format!(
            r#"
listen:
  grpc: "unix:/tmp/tollgate.sock"
  admin: "127.0.0.1:9464"
providers:
  a: {{ kind: openai, base_url: "http://127.0.0.1:1/v1" }}
  b: {{ kind: anthropic, base_url: "http://127.0.0.1:2/v1" }}
models:
  chat: {{ targets: [{{ provider: a, model: x }}] }}
  emb: {{ targets: [{{ provider: a, model: e }}] }}
  claude: {{ targets: [{{ provider: b, model: c }}] }}
keys: []
cache:
  policies:
    - {policy}
"#
        );
        Config::from_yaml(&yaml, &MapEnv::from_pairs([("X", "y")]))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_semantic_policy_is_validated_and_may_stand_alone() {
        let c = errors(
            "{ name: s, exact: false, semantic: { model: emb, threshold: 0.9, max_entries: 10, timeout_ms: 200 } }",
        )
        .unwrap();
        let p = &c.cache.as_ref().unwrap().policies[0];
        assert!(!p.exact);
        let s = p.semantic.as_ref().unwrap();
        assert_eq!((s.model.as_str(), s.max_entries), ("emb", 10));
        assert!((s.threshold - 0.9).abs() < 1e-6);
        let e = errors("{ name: s, exact: false }").unwrap_err();
        assert!(
            e.iter().any(|e| e.contains("cache.policies[0].exact")),
            "{e:?}"
        );
        let e = errors("{ name: s, semantic: { model: nope, threshold: 0.9 } }").unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.contains("cache.policies[0].semantic.model")),
            "{e:?}"
        );
        let e = errors("{ name: s, semantic: { model: claude, threshold: 0.9 } }").unwrap_err();
        assert!(e.iter().any(|e| e.contains("cannot embed")), "{e:?}");
        let e = errors(
            "{ name: s, semantic: { model: emb, threshold: 0, max_entries: 0, timeout_ms: 0 } }",
        )
        .unwrap_err();
        for f in ["threshold", "max_entries", "timeout_ms"] {
            let path = format!("cache.policies[0].semantic.{f}");
            assert!(e.iter().any(|e| e.contains(&path)), "{path}: {e:?}");
        }
        let e =
            errors("{ name: s, semantic: { model: emb, threshold: 0.9, bogus: 1 } }").unwrap_err();
        assert!(!e.is_empty());
    }
}
