//! The Prometheus metrics every service emits, in one place. Their reference (names, types,
//! labels, units, where each is emitted) is `docs/METRICS.md`, included below; a test checks
//! it against what [`Metrics::register`] registers, so the two cannot drift.
#![doc = include_str!("../../docs/METRICS.md")]

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A counter of fractional amounts (US dollars).
pub type FloatCounter = Counter<f64, AtomicU64>;
/// A gauge of fractional values (ratios, US dollars).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// Labels of `tollgate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Endpoint label.
    pub endpoint: &'static str,
    /// Provider name.
    pub provider: String,
    /// Public model name.
    pub model: String,
    /// HTTP status returned to the client.
    pub status: u16,
}

/// Labels of `tollgate_tokens_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Provider name.
    pub provider: String,
    /// Public model name.
    pub model: String,
    /// Token kind.
    pub kind: &'static str,
}

/// A single static label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// The phase.
    pub phase: &'static str,
}

/// A provider label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// Provider name.
    pub provider: String,
}

/// A public model label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// The public model.
    pub model: String,
}

/// A decision label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// The decision.
    pub decision: &'static str,
}

/// A code label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The error code.
    pub code: &'static str,
}

/// A result label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The result.
    pub result: &'static str,
}

/// The outcome label of `tollgate_log_events_total` and `tollgate_trace_spans_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `queued`, `sent`, `spooled` or `dropped` (log events); `exported`, `dropped` or
    /// `failed` (spans).
    pub outcome: &'static str,
}

/// Labels of `tollgate_credential_refreshes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    /// The provider's name in the config.
    pub provider: String,
    /// `web_identity`, `container`, `imds` (AWS) or `gce_metadata` (Vertex AI).
    pub source: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of `tollgate_guardrail_verdicts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardrailLabels {
    /// The rule's id.
    pub rule: String,
    /// `block`, `redact` or `flag`.
    pub action: &'static str,
    /// `request` or `response`.
    pub side: &'static str,
}

/// Labels of the per-request usage metrics (`tollgate_usage_cost_usd_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabels {
    /// The key's tenant (empty when none).
    pub tenant: String,
    /// The virtual key's id (never the key).
    pub key_id: String,
    /// The public model the client asked for.
    pub model: String,
}

/// Labels of `tollgate_usage_tokens_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageTokenLabels {
    /// The key's tenant (empty when none).
    pub tenant: String,
    /// The virtual key's id (never the key).
    pub key_id: String,
    /// The public model the client asked for.
    pub model: String,
    /// Token kind.
    pub kind: &'static str,
}

/// A provider and public model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// Provider name.
    pub provider: String,
    /// The public model the client asked for.
    pub model: String,
}

/// The error class of a failed request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// `LogEvent.error_class`: Tollgate's own error code, or the upstream's class.
    pub class: String,
}

/// One budget line.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// The budget's id in the config.
    pub budget: String,
    /// `key`, `team` or `tenant`.
    pub scope: &'static str,
    /// The key id, team or tenant the line belongs to.
    pub member: String,
}

fn phase_histogram() -> Histogram {
    // 10 µs .. ~80 ms
    Histogram::new(exponential_buckets(0.000_01, 2.0, 14))
}

fn upstream_histogram() -> Histogram {
    // 1 ms .. ~130 s
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

fn first_token_histogram() -> Histogram {
    // 5 ms .. ~80 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~11 min
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// Every metric, registered once and shared by the services.
#[derive(Clone)]
pub struct Metrics {
    /// `tollgate_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `tollgate_tokens_total`.
    pub tokens: Family<TokenLabels, Counter>,
    /// `tollgate_upstream_latency_seconds`.
    pub upstream_latency: Family<ProviderLabel, Histogram>,
    /// `tollgate_phase_duration_seconds`.
    pub phase: Family<PhaseLabel, Histogram>,
    /// `tollgate_authz_decisions_total`.
    pub authz: Family<DecisionLabel, Counter>,
    /// `tollgate_errors_total`.
    pub errors: Family<CodeLabel, Counter>,
    /// `tollgate_config_reloads_total`.
    pub reloads: Family<ResultLabel, Counter>,
    /// `tollgate_log_events_total`.
    pub log_events: Family<OutcomeLabel, Counter>,
    /// `tollgate_guardrail_verdicts_total`.
    pub guardrail_verdicts: Family<GuardrailLabels, Counter>,
    /// `tollgate_budget_decisions_total`.
    pub budget_decisions: Family<ResultLabel, Counter>,
    /// `tollgate_xds_streams`.
    pub xds_streams: Gauge,
    /// `tollgate_xds_pushes_total`.
    pub xds_pushes: Counter,
    /// `tollgate_xds_acks_total`.
    pub xds_acks: Family<ResultLabel, Counter>,
    /// `tollgate_draining`: 1 from the shutdown signal on.
    pub draining: Gauge,
    /// `tollgate_log_spool_batches`.
    pub log_spool_batches: Gauge,
    /// `tollgate_log_spool_bytes`.
    pub log_spool_bytes: Gauge,
    /// `tollgate_usage_tokens_total`.
    pub usage_tokens: Family<UsageTokenLabels, Counter>,
    /// `tollgate_usage_cost_usd_total`.
    pub usage_cost: Family<UsageLabels, FloatCounter>,
    /// `tollgate_time_to_first_token_seconds`.
    pub first_token: Family<ModelLabels, Histogram>,
    /// `tollgate_request_duration_seconds`.
    pub request_duration: Family<ModelLabels, Histogram>,
    /// `tollgate_request_errors_total`.
    pub request_errors: Family<ClassLabel, Counter>,
    /// `tollgate_budget_used_ratio`.
    pub budget_used: Family<BudgetLabels, FloatGauge>,
    /// `tollgate_budget_spent_usd`.
    pub budget_spent: Family<BudgetLabels, FloatGauge>,
    /// `tollgate_trace_spans_total`.
    pub trace_spans: Family<OutcomeLabel, Counter>,
    /// `tollgate_credential_refreshes_total`.
    pub credential_refreshes: Family<CredentialLabels, Counter>,
    /// `tollgate_target_cooldowns_total`.
    pub target_cooldowns: Family<ProviderLabel, Counter>,
    /// `tollgate_cors_preflights_total`.
    pub cors_preflights: Family<ResultLabel, Counter>,
    /// `tollgate_target_ejections_total`.
    pub target_ejections: Family<ProviderLabel, Counter>,
    /// `tollgate_targets_cooling`.
    pub targets_cooling: Family<ModelLabel, Gauge>,
    /// `tollgate_control_plane_resolutions_total`.
    pub cp_resolutions: Family<ResultLabel, Counter>,
    /// `tollgate_control_plane_cache_lookups_total`.
    pub cp_cache: Family<ResultLabel, Counter>,
    /// `tollgate_control_plane_feed_reconnects_total`.
    pub cp_feed_reconnects: Counter,
    /// `tollgate_control_plane_feed_changes_total`.
    pub cp_feed_changes: Family<KindLabel, Counter>,
    /// `tollgate_failovers_total`.
    pub failovers: Family<FailoverLabels, Counter>,
    /// The logger's evaluation stage (`tollgate_evaluation*`).
    pub evaluations: crate::evaluation_metrics::EvaluationMetrics,
    /// `tollgate_cache_lookups_total`: response-cache lookups by model, tenant and result.
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// `tollgate_cache_stores_total`: answers stored in the response cache by model, tenant
    /// and result (`stored`, `too_large`).
    pub cache_stores: Family<CacheLabels, Counter>,
    /// `tollgate_cache_evictions_total`: answers the memory cache dropped (size, expiry).
    pub cache_evictions: Family<KindLabel, Counter>,
    /// `tollgate_cache_bytes`: bytes of answers in the memory cache.
    pub cache_bytes: Gauge,
}

/// The labels of the response-cache metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// The public model name.
    pub model: String,
    /// The tenant (empty: a key without one).
    pub tenant: String,
    /// `hit`, `miss`, `bypass` (`no-cache`/`no-store`) for lookups; `stored`, `too_large`,
    /// `error` for stores.
    pub result: &'static str,
}

/// The labels of `tollgate_failovers_total`: the model, and the providers of the target that
/// failed and of the one tried next.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    /// The public model name.
    pub model: String,
    /// The provider of the attempt that failed.
    pub from: String,
    /// The provider tried next.
    pub to: String,
}

/// A kind label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            tokens: Family::default(),
            upstream_latency: Family::new_with_constructor(upstream_histogram),
            phase: Family::new_with_constructor(phase_histogram),
            authz: Family::default(),
            errors: Family::default(),
            reloads: Family::default(),
            log_events: Family::default(),
            guardrail_verdicts: Family::default(),
            budget_decisions: Family::default(),
            xds_streams: Gauge::default(),
            xds_pushes: Counter::default(),
            xds_acks: Family::default(),
            draining: Gauge::default(),
            log_spool_batches: Gauge::default(),
            log_spool_bytes: Gauge::default(),
            usage_tokens: Family::default(),
            usage_cost: Family::default(),
            first_token: Family::new_with_constructor(first_token_histogram),
            request_duration: Family::new_with_constructor(duration_histogram),
            request_errors: Family::default(),
            budget_used: Family::default(),
            budget_spent: Family::default(),
            trace_spans: Family::default(),
            credential_refreshes: Family::default(),
            target_cooldowns: Family::default(),
            cors_preflights: Family::default(),
            target_ejections: Family::default(),
            targets_cooling: Family::default(),
            cp_resolutions: Family::default(),
            cp_cache: Family::default(),
            cp_feed_reconnects: Counter::default(),
            cp_feed_changes: Family::default(),
            failovers: Family::default(),
            evaluations: Default::default(),
            cache_lookups: Family::default(),
            cache_stores: Family::default(),
            cache_evictions: Family::default(),
            cache_bytes: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` (names get the `tollgate_` prefix there).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tollgate");
        r.register(
            "requests",
            "Requests by endpoint, provider, model and status",
            self.requests.clone(),
        );
        r.register(
            "tokens",
            "Tokens by provider, model and kind",
            self.tokens.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Time from forwarding a request to the provider's response headers",
            Unit::Seconds,
            self.upstream_latency.clone(),
        );
        r.register_with_unit(
            "phase_duration",
            "Time Tollgate spent processing one message of a phase",
            Unit::Seconds,
            self.phase.clone(),
        );
        r.register("authz_decisions", "ext_authz decisions", self.authz.clone());
        r.register(
            "errors",
            "Requests Tollgate answered with an error itself",
            self.errors.clone(),
        );
        r.register(
            "credential_refreshes",
            "Fetches of provider credentials from the AWS chain or the GCE metadata server, by provider, source and result",
            self.credential_refreshes.clone(),
        );
        r.register(
            "target_cooldowns",
            "Times a provider's 429 with Retry-After took a routing target out of rotation, by provider",
            self.target_cooldowns.clone(),
        );
        r.register(
            "cors_preflights",
            "Browser (CORS) preflights Tollgate answered, by result (allowed, refused)",
            self.cors_preflights.clone(),
        );
        r.register(
            "target_ejections",
            "Times consecutive failures (5xx, 429, no response) took a routing target out of rotation, by provider",
            self.target_ejections.clone(),
        );
        r.register(
            "targets_cooling",
            "Routing targets out of rotation now (a provider's wait or an ejection), by model",
            self.targets_cooling.clone(),
        );
        r.register(
            "failovers",
            "Requests moved from a failed attempt to the model's next target, by model and providers",
            self.failovers.clone(),
        );
        r.register(
            "cache_lookups",
            "Response-cache lookups by model, tenant and result (hit, miss, bypass)",
            self.cache_lookups.clone(),
        );
        r.register(
            "cache_stores",
            "Answers offered to the response cache by model, tenant and result (stored, too_large, error)",
            self.cache_stores.clone(),
        );
        r.register(
            "cache_evictions",
            "Answers the memory response cache dropped, by kind (size, expired)",
            self.cache_evictions.clone(),
        );
        r.register_with_unit(
            "cache",
            "Bytes of answers held in the memory response cache",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        r.register(
            "log_events",
            "Per-request log events by outcome",
            self.log_events.clone(),
        );
        r.register(
            "guardrail_verdicts",
            "Guardrail rules that matched, by rule, action and side",
            self.guardrail_verdicts.clone(),
        );
        r.register(
            "budget_decisions",
            "Budget decisions by result",
            self.budget_decisions.clone(),
        );
        r.register("xds_streams", "Open ADS streams", self.xds_streams.clone());
        r.register(
            "xds_pushes",
            "Cluster sets sent to Envoys over ADS",
            self.xds_pushes.clone(),
        );
        r.register(
            "xds_acks",
            "Envoy's answers to ADS pushes by result",
            self.xds_acks.clone(),
        );
        r.register(
            "draining",
            "1 while serve drains after a shutdown signal, else 0",
            self.draining.clone(),
        );
        r.register(
            "log_spool_batches",
            "Log batches waiting in the sidecar's disk spool",
            self.log_spool_batches.clone(),
        );
        r.register_with_unit(
            "log_spool",
            "Size of the sidecar's disk spool",
            Unit::Bytes,
            self.log_spool_bytes.clone(),
        );
        r.register(
            "usage_tokens",
            "Tokens by tenant, key and public model, from each request's log event",
            self.usage_tokens.clone(),
        );
        r.register(
            "usage_cost_usd",
            "Cost in US dollars by tenant, key and public model, at the model's price",
            self.usage_cost.clone(),
        );
        r.register_with_unit(
            "time_to_first_token",
            "Time from the request reaching Tollgate to the first streamed response bytes",
            Unit::Seconds,
            self.first_token.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from the request reaching Tollgate to the end of its response",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        r.register(
            "request_errors",
            "Failed requests by error class (Tollgate's own and the providers')",
            self.request_errors.clone(),
        );
        r.register(
            "budget_used_ratio",
            "Spend plus reservations over the limit, per budget line of the current period",
            self.budget_used.clone(),
        );
        r.register(
            "budget_spent_usd",
            "Settled spend in US dollars, per budget line of the current period",
            self.budget_spent.clone(),
        );
        r.register(
            "trace_spans",
            "Request spans by export outcome",
            self.trace_spans.clone(),
        );
        r.register(
            "control_plane_resolutions",
            "Calls to the control plane's resolve-key, by result",
            self.cp_resolutions.clone(),
        );
        r.register(
            "control_plane_cache_lookups",
            "Lookups of keys the file does not list in the control-plane bundle cache, by result",
            self.cp_cache.clone(),
        );
        r.register(
            "control_plane_feed_reconnects",
            "Failed polls of the control plane's change feed (each is retried with backoff)",
            self.cp_feed_reconnects.clone(),
        );
        r.register(
            "control_plane_feed_changes",
            "Changes from the control plane's feed applied to the bundle cache, by kind",
            self.cp_feed_changes.clone(),
        );
        self.evaluations.register(r);
    }

    /// These metrics alone in the text exposition format, as `/metrics` serves them (for
    /// tests and tools; `serve` encodes its own registry).
    pub fn text(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Counts `n` request spans with this export outcome.
    pub fn trace_spans(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.trace_spans
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
    }

    /// Counts one budget decision.
    pub fn budget(&self, result: &'static str) {
        self.budget_decisions
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts `n` log events with this outcome.
    pub fn log_events(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.log_events
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
    }

    /// Records the time one phase took.
    pub fn observe_phase(&self, phase: &'static str, started: std::time::Instant) {
        self.phase
            .get_or_create(&PhaseLabel { phase })
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(name, type)` of every metric the doc's first table lists.
    fn documented() -> Vec<(String, String)> {
        let doc = include_str!("../../docs/METRICS.md");
        let mut rows: Vec<(String, String)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells
                    .get(1)?
                    .strip_prefix("`tollgate_")?
                    .strip_suffix('`')?;
                Some((format!("tollgate_{name}"), (*cells.get(2)?).to_owned()))
            })
            .collect();
        rows.sort();
        rows
    }

    /// `(name, type)` of every registered metric, counters with their `_total` suffix.
    fn registered() -> Vec<(String, String)> {
        let text = Metrics::default().text();
        let mut rows: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| {
                let name = if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                (name, kind.to_owned())
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn metrics_doc_lists_every_registered_metric() {
        let registered = registered();
        assert!(registered.len() >= 20, "{registered:?}");
        assert_eq!(
            documented(),
            registered,
            "docs/METRICS.md and Metrics::register disagree"
        );
    }
}
