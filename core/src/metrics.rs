//! The Prometheus metrics every service emits, in one place.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `tollgate_requests_total` | counter | `endpoint`, `provider`, `model`, `status` | requests |
//! | `tollgate_tokens_total` | counter | `provider`, `model`, `kind` (`input`, `output`, `cache_read`, `cache_write`, `reasoning`) | tokens |
//! | `tollgate_upstream_latency_seconds` | histogram | `provider` | seconds from the forwarded request to the provider's response headers |
//! | `tollgate_phase_duration_seconds` | histogram | `phase` (`authz`, `request_headers`, `request_body`, `response_headers`, `response_body`) | seconds Tollgate spent on one message |
//! | `tollgate_authz_decisions_total` | counter | `decision` (`allow`, `missing_key`, `invalid_key`, `expired_key`, `disabled_key`, `rate_limited`) | checks |
//! | `tollgate_errors_total` | counter | `code` (the client-facing error code or type) | requests answered with an error by Tollgate itself |
//! | `tollgate_config_reloads_total` | counter | `result` (`ok`, `rejected`) | reloads |
//! | `tollgate_guardrail_verdicts_total` | counter | `rule` (a rule id of a `guardrails` policy), `action` (`block`, `redact`, `flag`), `side` (`request`, `response`) | requests in which the rule matched that side (once per request, however many matches) |
//! | `tollgate_log_events_total` | counter | `outcome` (`queued`, `sent`, `spooled`, `dropped`) | log events: `queued` entered the in-memory queue, `sent` were acknowledged by the logger, `spooled` went to the disk spool (a full queue or an unreachable logger; once replayed they count as `sent` too), `dropped` were lost (spool full or unwritable, or refused by the logger as malformed) |
//! | `tollgate_budget_decisions_total` | counter | `result` (`reserved`, `refused`, `soft_exceeded`, `prechecked_refused`, `unpriced`, `ledger_error`) | budget decisions: a reservation made or refused, a soft budget gone past, a request refused by ext_authz's precheck, a budgeted request to a model without a price (not charged), a ledger that could not answer |
//! | `tollgate_xds_streams` | gauge | — | ADS streams open now (one per connected Envoy; `xds.enabled`) |
//! | `tollgate_xds_pushes_total` | counter | — | cluster sets (CDS `DiscoveryResponse`s) sent to Envoys: on connect and after each config change that alters a cluster |
//! | `tollgate_xds_acks_total` | counter | `result` (`ack`, `nack`) | Envoy's answers to those pushes: applied, or rejected (logged with Envoy's error; that Envoy keeps the clusters it had) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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

/// The outcome label of `tollgate_log_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `queued`, `sent`, `spooled` or `dropped`.
    pub outcome: &'static str,
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

fn phase_histogram() -> Histogram {
    // 10 µs .. ~80 ms
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_01, 2.0, 14,
    ))
}

fn upstream_histogram() -> Histogram {
    // 1 ms .. ~130 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 18,
    ))
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
            prometheus_client::registry::Unit::Seconds,
            self.upstream_latency.clone(),
        );
        r.register_with_unit(
            "phase_duration",
            "Time Tollgate spent processing one message of a phase",
            prometheus_client::registry::Unit::Seconds,
            self.phase.clone(),
        );
        r.register("authz_decisions", "ext_authz decisions", self.authz.clone());
        r.register(
            "errors",
            "Requests Tollgate answered with an error itself",
            self.errors.clone(),
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
