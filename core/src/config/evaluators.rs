//! The `evaluators` section: checks that the logger runs on logged results after they are
//! durable (docs/EVALUATORS.md). Each evaluator has a name, a kind, the kind's `params`, a
//! sample (a rate and key/tenant/model selectors) and a pass threshold. Everything a check
//! needs is compiled here, once per config load: regexes, JSON schemas (the `jsonschema`
//! crate), the guardrail detectors of `pii` and `secrets`. The LLM judge's key is only named
//! here and read by the logger at start, so that `serve` (which never judges) does not need it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tollgate_guardrails::{Action, Detector, Engine, RuleSpec};

use super::{ConfigError, Errors, RawCredential, Secret};
use crate::env::EnvSource;

/// The `evaluators` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvaluators {
    /// The evaluators, each run on every sampled event.
    #[serde(default)]
    pub list: Vec<RawEvaluator>,
    /// Events waiting for evaluation, held in the logger's memory (1 to 1000000). An event
    /// that finds the queue full is not evaluated, and counted in
    /// `tollgate_evaluation_drops_total{reason="queue_full"}`: the log write never waits.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Events evaluated at once (1 to 1024).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The most results written in one batch (1 to 100000).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The longest a result waits for its batch to fill, in milliseconds (1 to 60000).
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
}

fn default_queue_capacity() -> usize {
    10_000
}
fn default_concurrency() -> usize {
    16
}
fn default_batch_size() -> usize {
    500
}
fn default_max_delay_ms() -> u64 {
    1_000
}
fn default_rate() -> f64 {
    1.0
}
fn default_threshold() -> f64 {
    0.5
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// The kinds of evaluator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvaluatorKind {
    /// The output is valid JSON.
    JsonValid,
    /// The output is JSON matching `params.schema`.
    JsonSchema,
    /// The output matches `params.pattern`.
    Regex,
    /// The output contains `params.text`.
    Contains,
    /// The output does not contain `params.text`.
    NotContains,
    /// The output is between `params.min_chars` and `params.max_chars` characters long.
    Length,
    /// The output is not a refusal (phrase heuristics; `params.phrases` adds more).
    Refusal,
    /// The output holds no PII (the guardrail detectors; `params.detectors` picks some).
    Pii,
    /// The output holds no secrets (provider keys, tokens, private keys).
    Secrets,
    /// The request took at most `params.max_ms`, start to end.
    Latency,
    /// The first token came within `params.max_ms`.
    Ttft,
    /// Every tool call names a declared tool, with arguments that are JSON matching the tool's
    /// parameters schema.
    ToolCalls,
    /// An LLM judge, called through Tollgate itself.
    LlmJudge,
    /// An HTTP evaluator.
    Webhook,
}

impl EvaluatorKind {
    /// The kind's name in config and metrics.
    pub fn name(self) -> &'static str {
        match self {
            EvaluatorKind::JsonValid => "json_valid",
            EvaluatorKind::JsonSchema => "json_schema",
            EvaluatorKind::Regex => "regex",
            EvaluatorKind::Contains => "contains",
            EvaluatorKind::NotContains => "not_contains",
            EvaluatorKind::Length => "length",
            EvaluatorKind::Refusal => "refusal",
            EvaluatorKind::Pii => "pii",
            EvaluatorKind::Secrets => "secrets",
            EvaluatorKind::Latency => "latency",
            EvaluatorKind::Ttft => "ttft",
            EvaluatorKind::ToolCalls => "tool_calls",
            EvaluatorKind::LlmJudge => "llm_judge",
            EvaluatorKind::Webhook => "webhook",
        }
    }
}

/// One evaluator as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvaluator {
    /// Unique name (1 to 64 letters, digits, `_`, `-`, `.`): the `evaluator` of its results.
    pub name: String,
    /// What it checks.
    pub kind: EvaluatorKind,
    /// The kind's parameters (docs/EVALUATORS.md lists them per kind).
    #[serde(default)]
    pub params: Option<Value>,
    /// Which events it scores (default: all of them).
    #[serde(default)]
    pub sample: RawSample,
    /// A result passes when its score is at least this (0 to 1, default 0.5). Built-in checks
    /// score 1 or 0.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// The longest one evaluation may take, in milliseconds (1 to 300000, default 10000); a
    /// slower one is recorded with `error: timeout`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Which events an evaluator scores.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSample {
    /// The share of matching events scored, 0 to 1 (default 1). The choice is a hash of the
    /// request id and the evaluator's name, so a replayed event is sampled the same way.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Only events of these key ids (empty: any key).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Only events of these tenants (empty: any tenant).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Only events of these public models (empty: any model).
    #[serde(default)]
    pub models: Vec<String>,
}

impl Default for RawSample {
    fn default() -> Self {
        Self {
            rate: default_rate(),
            keys: Vec::new(),
            tenants: Vec::new(),
            models: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaParams {
    /// The JSON Schema (any draft the `jsonschema` crate knows; 2020-12 by default).
    schema: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexParams {
    /// The regex (Rust `regex` syntax); it passes when it matches anywhere in the output.
    pattern: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextParams {
    /// The text looked for.
    text: String,
    /// Compare ignoring case (default false).
    #[serde(default)]
    ignore_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LengthParams {
    /// The fewest characters.
    #[serde(default)]
    min_chars: Option<usize>,
    /// The most characters.
    #[serde(default)]
    max_chars: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RefusalParams {
    /// Phrases that also mark a refusal, besides the built-in ones (case-insensitive).
    #[serde(default)]
    phrases: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PiiParams {
    /// The detectors (default all: email, phone, credit_card, iban, us_ssn, ip_address).
    #[serde(default)]
    detectors: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaxMsParams {
    /// The most milliseconds.
    max_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JudgeParams {
    /// Tollgate's OpenAI-compatible chat completions URL, e.g.
    /// `http://gateway:8080/v1/chat/completions`.
    url: String,
    /// The virtual key the judge uses (its own budget and limits).
    key: RawCredential,
    /// The public model that judges.
    model: String,
    /// The rubric: what a good answer is. The judge sees it with the question and the answer.
    rubric: String,
    /// `unit` (a score 0 to 1, the default) or `five` (1 to 5, normalised to 0..1).
    #[serde(default)]
    scale: JudgeScale,
    /// `max_tokens` of the judge's request (default 256).
    #[serde(default = "default_judge_max_tokens")]
    max_tokens: u32,
}

fn default_judge_max_tokens() -> u32 {
    256
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookParams {
    /// Where the evaluation document is POSTed (`http://` or `https://`).
    url: String,
}

/// The scale the judge answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeScale {
    /// 0 to 1.
    #[default]
    Unit,
    /// 1 to 5, normalised as (score - 1) / 4.
    Five,
}

/// Where the judge's key comes from (read by the logger at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable.
    Env(String),
    /// A file (whitespace trimmed).
    File(PathBuf),
}

impl KeySource {
    /// Reads the key.
    pub fn read(&self, env: &dyn EnvSource) -> Result<Secret, String> {
        match self {
            KeySource::Env(var) => env
                .var(var)
                .filter(|v| !v.trim().is_empty())
                .map(|v| Secret::new(v.trim().to_owned()))
                .ok_or_else(|| format!("environment variable `{var}` is not set")),
            KeySource::File(path) => std::fs::read_to_string(path)
                .map(|s| Secret::new(s.trim().to_owned()))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// A validated LLM judge.
#[derive(Debug, Clone)]
pub struct Judge {
    /// The chat completions URL.
    pub url: String,
    /// Where its key comes from.
    pub key: KeySource,
    /// The model.
    pub model: String,
    /// The rubric.
    pub rubric: String,
    /// The scale.
    pub scale: JudgeScale,
    /// `max_tokens`.
    pub max_tokens: u32,
}

/// What an evaluator checks, compiled.
#[derive(Debug, Clone)]
pub enum Check {
    /// Valid JSON.
    JsonValid,
    /// JSON matching a schema.
    JsonSchema(Arc<jsonschema::Validator>),
    /// A regex matches.
    Regex(regex::Regex),
    /// Contains a text (lowercased when `ignore_case`).
    Contains {
        /// The text.
        text: String,
        /// Ignore case.
        ignore_case: bool,
    },
    /// Does not contain a text.
    NotContains {
        /// The text.
        text: String,
        /// Ignore case.
        ignore_case: bool,
    },
    /// Length bounds in characters.
    Length {
        /// Fewest.
        min: Option<usize>,
        /// Most.
        max: Option<usize>,
    },
    /// Refusal phrases, lowercased (the built-ins and the configured ones).
    Refusal(Vec<String>),
    /// PII detectors; the ids of the rules are the detector names.
    Pii(Arc<Engine>),
    /// Secret detectors.
    Secrets(Arc<Engine>),
    /// Whole-request latency SLO.
    Latency(Duration),
    /// Time-to-first-token SLO.
    Ttft(Duration),
    /// Tool-call validity.
    ToolCalls,
    /// LLM judge.
    LlmJudge(Judge),
    /// Webhook.
    Webhook {
        /// The URL.
        url: String,
    },
}

/// Which events an evaluator scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The share scored.
    pub rate: f64,
    /// Key ids (empty: all).
    pub keys: HashSet<String>,
    /// Tenants (empty: all).
    pub tenants: HashSet<String>,
    /// Public models (empty: all).
    pub models: HashSet<String>,
}

impl Sample {
    /// Whether an event of this key, tenant and model, with this request id, is scored by the
    /// evaluator `name`. Deterministic: the same event always gets the same answer.
    pub fn selects(
        &self,
        name: &str,
        request_id: &str,
        key: &str,
        tenant: &str,
        model: &str,
    ) -> bool {
        let listed = |set: &HashSet<String>, v: &str| set.is_empty() || set.contains(v);
        if !(listed(&self.keys, key)
            && listed(&self.tenants, tenant)
            && listed(&self.models, model))
        {
            return false;
        }
        if self.rate >= 1.0 {
            return true;
        }
        if self.rate <= 0.0 {
            return false;
        }
        // FNV-1a over "name/request_id": cheap, stable across processes and versions.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes().chain([b'/']).chain(request_id.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // FNV's high bits barely change between ids that differ at the end: mix them in
        // (the murmur3 finaliser) before taking the top 53 bits.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.rate
    }
}

/// One validated evaluator.
#[derive(Debug, Clone)]
pub struct Evaluator {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: EvaluatorKind,
    /// What it checks.
    pub check: Check,
    /// Which events.
    pub sample: Sample,
    /// The pass threshold.
    pub threshold: f64,
    /// The longest one evaluation may take.
    pub timeout: Duration,
}

/// The validated `evaluators` section.
#[derive(Debug, Clone)]
pub struct Evaluators {
    /// The evaluators, in config order.
    pub list: Vec<Arc<Evaluator>>,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Events evaluated at once.
    pub concurrency: usize,
    /// Results per write.
    pub batch_size: usize,
    /// The longest a result waits for its batch.
    pub max_delay: Duration,
}

impl Default for Evaluators {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            queue_capacity: default_queue_capacity(),
            concurrency: default_concurrency(),
            batch_size: default_batch_size(),
            max_delay: Duration::from_millis(default_max_delay_ms()),
        }
    }
}

/// The phrases of the built-in refusal heuristic (matched case-insensitively, anywhere in the
/// output; an apostrophe may be straight or curly).
pub const REFUSAL_PHRASES: [&str; 16] = [
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i cannot help with",
    "i can't help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm unable to help",
    "i am unable to help",
    "i'm not able to help",
    "i won't be able to help",
    "i cannot comply",
    "i can't comply",
    "as an ai language model, i cannot",
    "i must decline",
    "i'm not comfortable",
];

/// The PII detectors by name.
fn pii_detector(name: &str) -> Option<Detector> {
    Some(match name {
        "email" => Detector::Email,
        "phone" => Detector::Phone,
        "credit_card" => Detector::CreditCard,
        "iban" => Detector::Iban,
        "us_ssn" => Detector::UsSsn,
        "ip_address" => Detector::IpAddress,
        _ => return None,
    })
}

/// The PII detectors of a `pii` evaluator without `detectors`.
pub const PII_DETECTORS: [&str; 6] = [
    "email",
    "phone",
    "credit_card",
    "iban",
    "us_ssn",
    "ip_address",
];

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn params<T: serde::de::DeserializeOwned>(
    raw: &Option<Value>,
    path: &str,
    errs: &mut Errors,
) -> Option<T> {
    let value = raw
        .clone()
        .unwrap_or_else(|| Value::Object(Default::default()));
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(p) => Some(p),
        Err(e) => {
            let inner = e.path().to_string();
            let at = if inner == "." {
                format!("{path}.params")
            } else {
                format!("{path}.params.{inner}")
            };
            errs.add(at, e.into_inner().to_string());
            None
        }
    }
}

fn engine(path: &str, specs: &[RuleSpec], errs: &mut Errors) -> Option<Arc<Engine>> {
    match Engine::new(specs) {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            errs.add(path, e.to_string());
            None
        }
    }
}

fn check(raw: &RawEvaluator, path: &str, errs: &mut Errors) -> Option<Check> {
    let flag = |id: &str, detector| RuleSpec {
        id: id.to_owned(),
        detector,
        action: Action::Flag,
    };
    Some(match raw.kind {
        EvaluatorKind::JsonValid => {
            params::<NoParams>(&raw.params, path, errs)?;
            Check::JsonValid
        }
        EvaluatorKind::ToolCalls => {
            params::<NoParams>(&raw.params, path, errs)?;
            Check::ToolCalls
        }
        EvaluatorKind::JsonSchema => {
            let p = params::<SchemaParams>(&raw.params, path, errs)?;
            match jsonschema::validator_for(&p.schema) {
                Ok(v) => Check::JsonSchema(Arc::new(v)),
                Err(e) => {
                    errs.add(
                        format!("{path}.params.schema"),
                        format!("is not a valid JSON Schema: {e}"),
                    );
                    return None;
                }
            }
        }
        EvaluatorKind::Regex => {
            let p = params::<RegexParams>(&raw.params, path, errs)?;
            match regex::RegexBuilder::new(&p.pattern)
                .size_limit(1 << 20)
                .build()
            {
                Ok(r) => Check::Regex(r),
                Err(e) => {
                    errs.add(
                        format!("{path}.params.pattern"),
                        format!("invalid regex: {e}"),
                    );
                    return None;
                }
            }
        }
        EvaluatorKind::Contains | EvaluatorKind::NotContains => {
            let p = params::<TextParams>(&raw.params, path, errs)?;
            if p.text.is_empty() {
                errs.add(format!("{path}.params.text"), "must not be empty");
                return None;
            }
            let text = if p.ignore_case {
                p.text.to_lowercase()
            } else {
                p.text
            };
            if raw.kind == EvaluatorKind::Contains {
                Check::Contains {
                    text,
                    ignore_case: p.ignore_case,
                }
            } else {
                Check::NotContains {
                    text,
                    ignore_case: p.ignore_case,
                }
            }
        }
        EvaluatorKind::Length => {
            let p = params::<LengthParams>(&raw.params, path, errs)?;
            match (p.min_chars, p.max_chars) {
                (None, None) => {
                    errs.add(
                        format!("{path}.params"),
                        "give `min_chars`, `max_chars` or both",
                    );
                    return None;
                }
                (Some(lo), Some(hi)) if lo > hi => {
                    errs.add(
                        format!("{path}.params.min_chars"),
                        "must not exceed `max_chars`",
                    );
                    return None;
                }
                (min, max) => Check::Length { min, max },
            }
        }
        EvaluatorKind::Refusal => {
            let p = params::<RefusalParams>(&raw.params, path, errs)?;
            let mut phrases: Vec<String> =
                REFUSAL_PHRASES.iter().map(|p| (*p).to_owned()).collect();
            for (i, extra) in p.phrases.iter().enumerate() {
                if extra.trim().is_empty() {
                    errs.add(format!("{path}.params.phrases[{i}]"), "must not be empty");
                    return None;
                }
                phrases.push(extra.to_lowercase());
            }
            Check::Refusal(phrases)
        }
        EvaluatorKind::Pii => {
            let p = params::<PiiParams>(&raw.params, path, errs)?;
            let names: Vec<String> = if p.detectors.is_empty() {
                PII_DETECTORS.iter().map(|d| (*d).to_owned()).collect()
            } else {
                p.detectors
            };
            let mut specs = Vec::new();
            for (i, name) in names.iter().enumerate() {
                match pii_detector(name) {
                    Some(d) => specs.push(flag(name, d)),
                    None => {
                        errs.add(
                            format!("{path}.params.detectors[{i}]"),
                            format!("`{name}` is not one of {}", PII_DETECTORS.join(", ")),
                        );
                        return None;
                    }
                }
            }
            Check::Pii(engine(&format!("{path}.params.detectors"), &specs, errs)?)
        }
        EvaluatorKind::Secrets => {
            params::<NoParams>(&raw.params, path, errs)?;
            let specs = [
                flag("secret", Detector::Secrets),
                flag("private_key", Detector::PrivateKey),
            ];
            Check::Secrets(engine(path, &specs, errs)?)
        }
        EvaluatorKind::Latency | EvaluatorKind::Ttft => {
            let p = params::<MaxMsParams>(&raw.params, path, errs)?;
            if p.max_ms == 0 {
                errs.add(format!("{path}.params.max_ms"), "must be at least 1");
                return None;
            }
            let max = Duration::from_millis(p.max_ms);
            if raw.kind == EvaluatorKind::Latency {
                Check::Latency(max)
            } else {
                Check::Ttft(max)
            }
        }
        EvaluatorKind::LlmJudge => {
            let p = params::<JudgeParams>(&raw.params, path, errs)?;
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                errs.add(
                    format!("{path}.params.url"),
                    "must start with http:// or https://",
                );
                return None;
            }
            let key = match (p.key.env, p.key.file) {
                (Some(var), None) if !var.is_empty() => KeySource::Env(var),
                (None, Some(file)) => KeySource::File(file),
                _ => {
                    errs.add(
                        format!("{path}.params.key"),
                        "give exactly one of `env` or `file`",
                    );
                    return None;
                }
            };
            for (field, value) in [("model", &p.model), ("rubric", &p.rubric)] {
                if value.trim().is_empty() {
                    errs.add(format!("{path}.params.{field}"), "must not be empty");
                    return None;
                }
            }
            if !(1..=8192).contains(&p.max_tokens) {
                errs.add(
                    format!("{path}.params.max_tokens"),
                    "must be between 1 and 8192",
                );
                return None;
            }
            Check::LlmJudge(Judge {
                url: p.url,
                key,
                model: p.model,
                rubric: p.rubric,
                scale: p.scale,
                max_tokens: p.max_tokens,
            })
        }
        EvaluatorKind::Webhook => {
            let p = params::<WebhookParams>(&raw.params, path, errs)?;
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                errs.add(
                    format!("{path}.params.url"),
                    "must start with http:// or https://",
                );
                return None;
            }
            Check::Webhook { url: p.url }
        }
    })
}

/// Validates the section, every error naming its field path.
pub(super) fn validate(raw: &RawEvaluators, errs: &mut Errors) -> Evaluators {
    if !(1..=1_000_000).contains(&raw.queue_capacity) {
        errs.add("evaluators.queue_capacity", "must be between 1 and 1000000");
    }
    if !(1..=1024).contains(&raw.concurrency) {
        errs.add("evaluators.concurrency", "must be between 1 and 1024");
    }
    if !(1..=100_000).contains(&raw.batch_size) {
        errs.add("evaluators.batch_size", "must be between 1 and 100000");
    }
    if !(1..=60_000).contains(&raw.max_delay_ms) {
        errs.add("evaluators.max_delay_ms", "must be between 1 and 60000");
    }
    let mut names = HashSet::new();
    let mut list = Vec::new();
    for (i, e) in raw.list.iter().enumerate() {
        let path = format!("evaluators.list[{i}]");
        if !valid_name(&e.name) {
            errs.add(
                format!("{path}.name"),
                "must be 1 to 64 letters, digits, `_`, `-` or `.`",
            );
        } else if !names.insert(e.name.as_str()) {
            errs.add(
                format!("{path}.name"),
                format!("`{}` is used twice", e.name),
            );
        }
        if !(0.0..=1.0).contains(&e.sample.rate) {
            errs.add(format!("{path}.sample.rate"), "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&e.threshold) {
            errs.add(format!("{path}.threshold"), "must be between 0 and 1");
        }
        if !(1..=300_000).contains(&e.timeout_ms) {
            errs.add(format!("{path}.timeout_ms"), "must be between 1 and 300000");
        }
        if let Some(check) = check(e, &path, errs) {
            list.push(Arc::new(Evaluator {
                name: e.name.clone(),
                kind: e.kind,
                check,
                sample: Sample {
                    rate: e.sample.rate,
                    keys: e.sample.keys.iter().cloned().collect(),
                    tenants: e.sample.tenants.iter().cloned().collect(),
                    models: e.sample.models.iter().cloned().collect(),
                },
                threshold: e.threshold,
                timeout: Duration::from_millis(e.timeout_ms),
            }));
        }
    }
    Evaluators {
        list,
        queue_capacity: raw.queue_capacity,
        concurrency: raw.concurrency,
        batch_size: raw.batch_size,
        max_delay: Duration::from_millis(raw.max_delay_ms),
    }
}

/// A config file with only its `evaluators` section read (what `tollgate logger --config`
/// needs: the other sections, and the provider secrets they name, are not its business).
#[derive(Debug, Deserialize)]
struct OnlyEvaluators {
    /// The section.
    #[serde(default)]
    evaluators: Option<RawEvaluators>,
}

/// Reads the `evaluators` section of a config file (YAML or JSON), validated; `None` when the
/// file has none.
pub fn load_section(path: &std::path::Path) -> Result<Option<Evaluators>, Vec<ConfigError>> {
    let one = |path: String, message: String| vec![ConfigError { path, message }];
    let text = std::fs::read_to_string(path).map_err(|e| {
        one(
            String::new(),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let de = serde_yaml::Deserializer::from_str(&text);
    let raw: OnlyEvaluators = serde_path_to_error::deserialize(de).map_err(|e| {
        let p = e.path().to_string();
        one(
            if p == "." { String::new() } else { p },
            e.into_inner().to_string(),
        )
    })?;
    let Some(raw) = raw.evaluators else {
        return Ok(None);
    };
    let mut errs = Errors(Vec::new());
    let section = validate(&raw, &mut errs);
    if errs.0.is_empty() {
        Ok(Some(section))
    } else {
        Err(errs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Evaluators, Vec<String>> {
        let raw: RawEvaluators = serde_yaml::from_str(yaml).map_err(|e| vec![e.to_string()])?;
        let mut errs = Errors(Vec::new());
        let v = validate(&raw, &mut errs);
        if errs.0.is_empty() {
            Ok(v)
        } else {
            Err(errs.0.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn every_kind_compiles_once_from_its_params() {
        let e = parse(
            r#"
list:
  - { name: j, kind: json_valid }
  - { name: s, kind: json_schema, params: { schema: { type: object, required: [a] } } }
  - { name: r, kind: regex, params: { pattern: "^Mock" } }
  - { name: c, kind: contains, params: { text: Mock, ignore_case: true } }
  - { name: n, kind: not_contains, params: { text: TOPSECRET } }
  - { name: l, kind: length, params: { max_chars: 100 } }
  - { name: f, kind: refusal }
  - { name: p, kind: pii, params: { detectors: [email] } }
  - { name: k, kind: secrets }
  - { name: t, kind: latency, params: { max_ms: 500 } }
  - { name: u, kind: ttft, params: { max_ms: 50 } }
  - { name: v, kind: tool_calls }
  - { name: w, kind: webhook, params: { url: "http://127.0.0.1:1/e" }, timeout_ms: 200 }
  - name: x
    kind: llm_judge
    sample: { rate: 0.25, tenants: [acme] }
    params: { url: "http://gw/v1/chat/completions", key: { env: JUDGE_KEY }, model: m, rubric: "Be right.", scale: five }
"#,
        )
        .unwrap();
        assert_eq!(e.list.len(), 14);
        assert!(matches!(e.list[1].check, Check::JsonSchema(_)));
        assert!(matches!(&e.list[3].check, Check::Contains { text, .. } if text == "mock"));
        assert_eq!(e.list[12].timeout, Duration::from_millis(200));
        let Check::LlmJudge(j) = &e.list[13].check else {
            panic!()
        };
        assert_eq!(j.key, KeySource::Env("JUDGE_KEY".into()));
        assert_eq!(j.scale, JudgeScale::Five);
    }

    #[test]
    fn errors_name_the_field_path() {
        let errs = parse(
            r#"
queue_capacity: 0
list:
  - { name: a, kind: regex, params: { pattern: "(" } }
  - { name: a, kind: json_schema, params: { schema: { type: 12 } } }
  - { name: "b c", kind: json_valid, params: { what: 1 } }
  - { name: d, kind: length, params: {}, sample: { rate: 2 } }
  - { name: e, kind: llm_judge, params: { url: "ftp://x", key: { env: K }, model: m, rubric: r } }
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "evaluators.queue_capacity",
                "evaluators.list[0].params.pattern",
                "evaluators.list[1].name",
                "evaluators.list[1].params.schema",
                "evaluators.list[2].name",
                "evaluators.list[2].params.what",
                "evaluators.list[3].sample.rate",
                "evaluators.list[3].params",
                "evaluators.list[4].params.url",
            ],
            "{errs:?}"
        );
        assert!(errs[5].contains("unknown field `what`"), "{}", errs[5]);
    }

    #[test]
    fn sampling_selects_by_key_tenant_model_and_rate_deterministically() {
        let s = Sample {
            rate: 0.3,
            keys: HashSet::new(),
            tenants: ["acme".to_owned()].into(),
            models: HashSet::new(),
        };
        assert!(!s.selects("e", "r1", "k", "other", "m"));
        let picked = (0..10_000)
            .filter(|i| s.selects("e", &format!("req-{i}"), "k", "acme", "m"))
            .count();
        assert!((2_700..3_300).contains(&picked), "{picked}");
        assert_eq!(
            s.selects("e", "req-7", "k", "acme", "m"),
            s.selects("e", "req-7", "k", "acme", "m")
        );
    }
}
