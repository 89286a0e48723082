//! The control plane's Prometheus metrics. Reference (name, type, labels):
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `tollgate_cp_resolve_requests_total` | counter | `result` = `found`, `unknown`, `refused` | `POST /v1/resolve-key` calls (`refused`: bad or missing signature) |
//! | `tollgate_cp_changes_requests_total` | counter | `result` = `changes`, `empty`, `reset`, `refused` | `GET /v1/changes` answers |
//! | `tollgate_cp_admin_writes_total` | counter | | admin API calls that changed something |
//! | `tollgate_cp_admin_refused_total` | counter | | admin API calls refused for a missing or wrong token |
//! | `tollgate_cp_cache_entries` | gauge | | hashes in the resolve cache (found and unknown) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}

/// Every metric, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    resolve: Family<ResultLabel, Counter>,
    changes: Family<ResultLabel, Counter>,
    /// Admin writes.
    pub admin_writes: Counter,
    /// Admin calls refused.
    pub admin_refused: Counter,
    /// Resolve cache size.
    pub cache_entries: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let resolve = Family::<ResultLabel, Counter>::default();
        let changes = Family::<ResultLabel, Counter>::default();
        let admin_writes = Counter::default();
        let admin_refused = Counter::default();
        let cache_entries = Gauge::default();
        registry.register(
            "tollgate_cp_resolve_requests",
            "resolve-key calls by result",
            resolve.clone(),
        );
        registry.register(
            "tollgate_cp_changes_requests",
            "change-feed answers by result",
            changes.clone(),
        );
        registry.register(
            "tollgate_cp_admin_writes",
            "admin API calls that changed something",
            admin_writes.clone(),
        );
        registry.register(
            "tollgate_cp_admin_refused",
            "admin API calls refused for a missing or wrong token",
            admin_refused.clone(),
        );
        registry.register(
            "tollgate_cp_cache_entries",
            "hashes in the resolve cache",
            cache_entries.clone(),
        );
        for r in ["found", "unknown", "refused"] {
            let _ = resolve.get_or_create(&ResultLabel { result: r });
        }
        Metrics {
            registry,
            resolve,
            changes,
            admin_writes,
            admin_refused,
            cache_entries,
        }
    }

    /// Counts a resolve-key call.
    pub fn resolve(&self, result: &'static str) {
        self.resolve.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a change-feed answer.
    pub fn changes(&self, result: &'static str) {
        self.changes.get_or_create(&ResultLabel { result }).inc();
    }

    /// The Prometheus text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
