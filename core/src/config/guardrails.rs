//! The `guardrails` section: named policies of detector rules, attached to keys and tenants,
//! compiled into [`tollgate_guardrails::Engine`]s once per config version.
//!
//! A rule may be scoped to some public models, some endpoints and one side of the exchange, so
//! the rules that apply differ by (side, endpoint, model). Every such combination is resolved
//! here: each distinct set of rules is compiled once and shared, and a request finds its engine
//! with one map lookup ([`Policy::engine`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use tollgate_guardrails::{Action, Detector, Engine, GuardError, RuleSpec};

use super::{Endpoint, Errors, MediaApi, RawModel};

/// The `guardrails` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrails {
    /// Policies by name; keys name one in `keys[].guardrails`.
    #[serde(default)]
    pub policies: BTreeMap<String, RawPolicy>,
    /// The policy of every key of a tenant that names none itself (tenant → policy name).
    #[serde(default)]
    pub tenants: BTreeMap<String, String>,
}

/// One policy: rules applied in order (earlier rules win where matches overlap).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// The rules.
    pub rules: Vec<RawRule>,
}

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique id within the policy; named in client errors, log events and metrics.
    pub id: String,
    /// What to look for: `email`, `phone`, `credit_card`, `iban`, `us_ssn`, `ip_address`,
    /// `secrets`, `private_key`, `prompt_injection`, `{deny_list: [words]}` or
    /// `{regex: "pattern"}` (every repetition bounded).
    pub detector: RawDetector,
    /// `block`, `redact` or `flag`.
    pub action: RawAction,
    /// Which text is checked: `request` (what the client sends), `response` (what the model
    /// answers) or `both` (the default).
    #[serde(default)]
    pub side: RawSide,
    /// Public model names the rule applies to (default: every model).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Endpoints the rule applies to: `chat_completions`, `completions`, `embeddings`,
    /// `messages`, `generate_content`, `image_generations`, `image_edits`,
    /// `audio_transcriptions`, `audio_translations`, `audio_speech`, `moderations`, `rerank`,
    /// `passthrough` (default: every endpoint).
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
}

/// A detector as written: a built-in's name (`email`, `phone`, `credit_card`, `iban`,
/// `us_ssn`, `ip_address`, `secrets`, `private_key`, `prompt_injection`), `{deny_list: [...]}`
/// or `{regex: "..."}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDetector {
    /// A built-in detector by name.
    Named(String),
    /// Whole words or phrases, case-insensitive.
    DenyList {
        /// The words.
        deny_list: Vec<String>,
    },
    /// A custom regex with bounded repetitions.
    Regex {
        /// The pattern.
        regex: String,
    },
    /// An external checker, called over HTTP (see [`RawWebhook`]).
    Webhook {
        /// Where and how to call it.
        webhook: RawWebhook,
    },
}

/// An external guardrail: Tollgate POSTs the text to `url` and the answer decides (see the
/// README's webhook contract). `action` of its rule is the most it may do: `block` lets the
/// webhook block, `flag` turns its blocks into flags (a dry run); `redact` is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `http://host:port/path` of the checker.
    pub url: String,
    /// How long to wait for its answer, in milliseconds (10 to 30000).
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// What an unanswered call (timeout, refused connection, non-200, bad JSON) means:
    /// `closed` (the default) refuses the request with 503, `open` lets it through (recorded
    /// as a flag).
    #[serde(default)]
    pub fail: RawFail,
}

fn default_webhook_timeout() -> u64 {
    1000
}

/// Whether an unanswered webhook refuses or lets through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawFail {
    /// Refuse (503 `guardrail_unavailable`).
    #[default]
    Closed,
    /// Let through, recording a flag.
    Open,
}

/// A validated webhook rule.
#[derive(Debug, Clone)]
pub struct WebhookRule {
    /// The rule's id.
    pub id: String,
    /// The checker's URL.
    pub url: String,
    /// How long to wait for it.
    pub timeout: std::time::Duration,
    /// Whether an unanswered call lets the request through.
    pub fail_open: bool,
    /// Whether its blocks block (`true`) or are recorded as flags.
    pub may_block: bool,
    side: RawSide,
    models: Option<Vec<String>>,
    endpoints: Option<Vec<String>>,
}

impl WebhookRule {
    fn applies(&self, side: Side, endpoint: Endpoint, model: &str) -> bool {
        let side_ok = match self.side {
            RawSide::Both => true,
            RawSide::Request => side == Side::Request,
            RawSide::Response => side == Side::Response,
        };
        side_ok
            && self
                .endpoints
                .as_ref()
                .is_none_or(|es| es.iter().any(|e| e == endpoint.label()))
            && self
                .models
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == model))
    }
}

/// The built-in detectors by name.
const BUILTIN: [(&str, Detector); 9] = [
    ("email", Detector::Email),
    ("phone", Detector::Phone),
    ("credit_card", Detector::CreditCard),
    ("iban", Detector::Iban),
    ("us_ssn", Detector::UsSsn),
    ("ip_address", Detector::IpAddress),
    ("secrets", Detector::Secrets),
    ("private_key", Detector::PrivateKey),
    ("prompt_injection", Detector::PromptInjection),
];

impl RawDetector {
    fn detector(&self) -> Result<Detector, String> {
        match self {
            RawDetector::Named(name) => BUILTIN
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| {
                    format!(
                        "unknown detector `{name}` (one of {}, or {{deny_list: [...]}}, {{regex: \"...\"}})",
                        BUILTIN.map(|(n, _)| n).join(", ")
                    )
                }),
            RawDetector::DenyList { deny_list } => Ok(Detector::DenyList(deny_list.clone())),
            RawDetector::Regex { regex } => Ok(Detector::Regex(regex.clone())),
            RawDetector::Webhook { .. } => Err("a webhook is not an in-process detector".into()),
        }
    }
}

/// A rule's action as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawAction {
    /// Refuse the request, or end the response, naming the rule.
    Block,
    /// Replace the match with `[REDACTED:<rule id>]`.
    Redact,
    /// Pass; record the verdict.
    Flag,
}

/// Which side of the exchange a rule checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSide {
    /// The client's request.
    Request,
    /// The model's response.
    Response,
    /// Both.
    #[default]
    Both,
}

/// A side of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The text the client sends.
    Request,
    /// The text the model answers.
    Response,
}

impl Side {
    /// The label in log events and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Request => 0,
            Side::Response => 1,
        }
    }
}

/// The endpoints a rule can be scoped to, by label: the chat-family endpoints, and (i15-guard)
/// the media APIs, rerank and passthrough, whose texts are judged too.
const SCOPED_ENDPOINTS: [Endpoint; SCOPES] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::Messages,
    Endpoint::GenerateContent,
    Endpoint::Media(MediaApi::ImageGenerations),
    Endpoint::Media(MediaApi::ImageEdits),
    Endpoint::Media(MediaApi::Transcriptions),
    Endpoint::Media(MediaApi::Translations),
    Endpoint::Media(MediaApi::Speech),
    Endpoint::Media(MediaApi::Moderations),
    Endpoint::Rerank,
    Endpoint::Passthrough,
];

/// How many endpoints a rule can be scoped to.
const SCOPES: usize = Endpoint::FORWARDED.len() + MediaApi::ALL.len() + 2;

/// The `by_model` entry of the rules scoped to no model: what a request naming no configured
/// model (a passthrough request) is judged by.
const ANY_MODEL: &str = "";

/// A compiled policy: an engine per (side, endpoint, model), `None` where no rule applies.
#[derive(Debug)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    by_model: HashMap<String, [Option<Arc<Engine>>; 2 * SCOPES]>,
    webhooks: Vec<WebhookRule>,
}

impl Policy {
    /// Whether any rule of the policy is a webhook.
    pub fn has_webhooks(&self) -> bool {
        !self.webhooks.is_empty()
    }

    /// The webhook rules for `side` of a request to `model` at `endpoint`, in policy order.
    pub fn webhooks(&self, side: Side, endpoint: Endpoint, model: &str) -> Vec<&WebhookRule> {
        self.webhooks
            .iter()
            .filter(|w| w.applies(side, endpoint, model))
            .collect()
    }

    /// The engine for `side` of a request to `model` at `endpoint`; `None` when no rule applies.
    pub fn engine(&self, side: Side, endpoint: Endpoint, model: &str) -> Option<&Arc<Engine>> {
        let slot = SCOPED_ENDPOINTS.iter().position(|e| *e == endpoint)?;
        self.by_model
            .get(model)?
            .get(side.index() * SCOPES + slot)?
            .as_ref()
    }

    /// [`Policy::engine`] for a request whose model may be no configured model (a passthrough
    /// request names the provider's own id, or none): a configured model's engine, else the
    /// engine of the rules scoped to no model.
    pub fn engine_for_any_model(
        &self,
        side: Side,
        endpoint: Endpoint,
        model: &str,
    ) -> Option<&Arc<Engine>> {
        let slot = SCOPED_ENDPOINTS.iter().position(|e| *e == endpoint)?;
        self.by_model
            .get(model)
            .or_else(|| self.by_model.get(ANY_MODEL))?
            .get(side.index() * SCOPES + slot)?
            .as_ref()
    }
}

/// The validated `guardrails` section.
#[derive(Debug, Default)]
pub struct Guardrails {
    /// Policies by name.
    pub policies: HashMap<String, Arc<Policy>>,
    /// The policy name of each tenant.
    pub tenants: HashMap<String, String>,
}

impl Guardrails {
    /// The policy a key uses: its own, else its tenant's.
    pub fn resolve(&self, own: Option<&str>, tenant: Option<&str>) -> Option<String> {
        own.map(str::to_owned)
            .or_else(|| tenant.and_then(|t| self.tenants.get(t).cloned()))
    }
}

fn action(a: RawAction) -> Action {
    match a {
        RawAction::Block => Action::Block,
        RawAction::Redact => Action::Redact,
        RawAction::Flag => Action::Flag,
    }
}

/// The field of a rule that a compile error concerns.
fn guard_error_field(e: &GuardError) -> &'static str {
    match e {
        GuardError::InvalidRegex { .. }
        | GuardError::Unbounded { .. }
        | GuardError::MatchesEmpty { .. }
        | GuardError::EmptyDenyList { .. } => "detector",
        GuardError::UnsupportedAction { .. } => "action",
        GuardError::DuplicateRule { .. } => "id",
    }
}

pub(super) fn validate(
    raw: &RawGuardrails,
    models: &BTreeMap<String, RawModel>,
    errs: &mut Errors,
) -> Guardrails {
    let mut policies = HashMap::new();
    for (name, p) in &raw.policies {
        if let Some(policy) = validate_policy(name, p, models, errs) {
            policies.insert(name.clone(), Arc::new(policy));
        }
    }
    for (tenant, policy) in &raw.tenants {
        if !raw.policies.contains_key(policy) {
            errs.add(
                format!("guardrails.tenants.{tenant}"),
                format!("unknown guardrails policy `{policy}`"),
            );
        }
    }
    Guardrails {
        policies,
        tenants: raw
            .tenants
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn validate_policy(
    name: &str,
    p: &RawPolicy,
    models: &BTreeMap<String, RawModel>,
    errs: &mut Errors,
) -> Option<Policy> {
    let path = format!("guardrails.policies.{name}");
    let before = errs.0.len();
    if p.rules.is_empty() {
        errs.add(format!("{path}.rules"), "needs at least one rule");
    }
    let mut specs: Vec<Option<RuleSpec>> = Vec::with_capacity(p.rules.len());
    let mut webhooks = Vec::new();
    for (i, r) in p.rules.iter().enumerate() {
        let rpath = format!("{path}.rules[{i}]");
        if r.id.trim().is_empty() {
            errs.add(format!("{rpath}.id"), "must not be empty");
        } else if p.rules[..i].iter().any(|o| o.id == r.id) {
            errs.add(
                format!("{rpath}.id"),
                format!("duplicate rule id `{}`", r.id),
            );
        }
        for (j, m) in r.models.iter().flatten().enumerate() {
            if !models.contains_key(m) {
                errs.add(
                    format!("{rpath}.models[{j}]"),
                    format!("unknown model `{m}`"),
                );
            }
        }
        for (j, e) in r.endpoints.iter().flatten().enumerate() {
            if !SCOPED_ENDPOINTS.iter().any(|s| s.label() == e) {
                errs.add(
                    format!("{rpath}.endpoints[{j}]"),
                    format!(
                        "unknown endpoint `{e}` (one of {})",
                        SCOPED_ENDPOINTS.map(Endpoint::label).join(", ")
                    ),
                );
            }
        }
        if let RawDetector::Webhook { webhook } = &r.detector {
            if let Some(w) = validate_webhook(r, webhook, &rpath, errs) {
                webhooks.push(w);
            }
            specs.push(None);
            continue;
        }
        let detector = match r.detector.detector() {
            Ok(d) => d,
            Err(m) => {
                errs.add(format!("{rpath}.detector"), m);
                continue;
            }
        };
        let spec = RuleSpec {
            id: r.id.clone(),
            detector,
            action: action(r.action),
        };
        // Compiled alone first, so an error names its rule's index.
        match Engine::new(std::slice::from_ref(&spec)) {
            Ok(_) => specs.push(Some(spec)),
            Err(e) => errs.add(format!("{rpath}.{}", guard_error_field(&e)), e.to_string()),
        }
    }
    if errs.0.len() != before {
        return None;
    }
    let applies = |r: &RawRule, side: Side, endpoint: Endpoint, model: &str| {
        let side_ok = match r.side {
            RawSide::Both => true,
            RawSide::Request => side == Side::Request,
            RawSide::Response => side == Side::Response,
        };
        side_ok
            && r.endpoints
                .as_ref()
                .is_none_or(|es| es.iter().any(|e| e == endpoint.label()))
            && r.models
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == model))
    };
    // Each distinct set of rules is compiled once.
    let mut compiled: HashMap<Vec<usize>, Arc<Engine>> = HashMap::new();
    let mut by_model = HashMap::with_capacity(models.len());
    for model in models.keys().map(String::as_str).chain([ANY_MODEL]) {
        let mut slots: [Option<Arc<Engine>>; 2 * SCOPES] = Default::default();
        for side in [Side::Request, Side::Response] {
            for (e, endpoint) in SCOPED_ENDPOINTS.iter().enumerate() {
                let set: Vec<usize> = p
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| {
                        specs.get(*i).is_some_and(Option::is_some)
                            && applies(r, side, *endpoint, model)
                    })
                    .map(|(i, _)| i)
                    .collect();
                if set.is_empty() {
                    continue;
                }
                let engine = match compiled.get(&set) {
                    Some(engine) => Arc::clone(engine),
                    None => {
                        let rules: Vec<RuleSpec> = set
                            .iter()
                            .filter_map(|i| specs.get(*i).cloned().flatten())
                            .collect();
                        match Engine::new(&rules) {
                            Ok(engine) => {
                                let engine = Arc::new(engine);
                                compiled.insert(set, Arc::clone(&engine));
                                engine
                            }
                            Err(e) => {
                                errs.add(format!("{path}.rules"), e.to_string());
                                return None;
                            }
                        }
                    }
                };
                if let Some(slot) = slots.get_mut(side.index() * SCOPES + e) {
                    *slot = Some(engine);
                }
            }
        }
        by_model.insert(model.to_owned(), slots);
    }
    Some(Policy {
        name: name.to_owned(),
        by_model,
        webhooks,
    })
}

fn validate_webhook(
    r: &RawRule,
    w: &RawWebhook,
    rpath: &str,
    errs: &mut Errors,
) -> Option<WebhookRule> {
    let before = errs.0.len();
    let uri = w.url.parse::<http::Uri>().ok();
    if uri
        .as_ref()
        .is_none_or(|u| u.scheme_str() != Some("http") || u.host().is_none())
    {
        errs.add(
            format!("{rpath}.detector.webhook.url"),
            format!("`{}` is not an http:// URL", w.url),
        );
    }
    if !(10..=30_000).contains(&w.timeout_ms) {
        errs.add(
            format!("{rpath}.detector.webhook.timeout_ms"),
            "must be between 10 and 30000",
        );
    }
    let may_block = match r.action {
        RawAction::Block => true,
        RawAction::Flag => false,
        RawAction::Redact => {
            errs.add(
                format!("{rpath}.action"),
                "a webhook rule supports `block` and `flag` only",
            );
            false
        }
    };
    (errs.0.len() == before).then(|| WebhookRule {
        id: r.id.clone(),
        url: w.url.clone(),
        timeout: std::time::Duration::from_millis(w.timeout_ms),
        fail_open: w.fail == RawFail::Open,
        may_block,
        side: r.side,
        models: r.models.clone(),
        endpoints: r.endpoints.clone(),
    })
}
