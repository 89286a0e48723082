//! Per-attempt failover of a model (`models.NAME.failover`): which failures move a request to
//! the model's next target, how many attempts and how long, and the chains of targets Envoy's
//! retries walk through (one composite cluster per chain, see `docs/ARCHITECTURE.md`).

use serde::Deserialize;

use super::{Errors, Model};

/// The most attempts a request may make (its first and the failovers).
pub const MAX_ATTEMPTS: u32 = 5;

/// The default retry budget: failovers may add this share of the requests in flight.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

/// The prefix of a failover chain's Envoy cluster name (a composite cluster).
pub const CLUSTER_PREFIX: &str = "tollgate-failover";

/// `failover:` as written: `off`, or its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawFailover {
    /// `off` (the only word accepted): no failover, even with several targets.
    Switch(String),
    /// The settings.
    Settings(RawFailoverSettings),
}

/// The failover settings of a model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailoverSettings {
    /// Attempts per request, the first included (default: the number of targets; at most 5).
    /// 1 turns failover off.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// How long one attempt may wait for the provider's response headers (its first byte),
    /// in milliseconds, before the next target is tried (default: no per-attempt limit).
    /// A stream that has started is never cut by it.
    #[serde(default)]
    pub per_try_timeout_ms: Option<u32>,
    /// The overall deadline of a non-streaming request across its attempts, in milliseconds
    /// (default: the route's timeout). Streams keep the route's timeout.
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    /// The failures that move to the next target: `5xx`, `429`, `connect_failure`,
    /// `timeout` (default: all four).
    #[serde(default)]
    pub on: Option<Vec<FailoverOn>>,
    /// Failovers may add at most this percentage of the requests in flight to the chain's
    /// clusters (Envoy's retry budget; default 20), so one provider's outage cannot double
    /// the load on the next.
    #[serde(default)]
    pub retry_budget_percent: Option<u32>,
}

/// A failure that moves a request to the next target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FailoverOn {
    /// Any 5xx from the provider.
    #[serde(rename = "5xx")]
    ServerError,
    /// A 429 from the provider.
    #[serde(rename = "429")]
    TooManyRequests,
    /// No connection (refused, reset before the request went out).
    #[serde(rename = "connect_failure")]
    ConnectFailure,
    /// No response headers within `per_try_timeout_ms`.
    #[serde(rename = "timeout")]
    Timeout,
}

/// A model's validated failover settings (present only when a request may make more than
/// one attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Attempts per request, the first included (2..=5, at most the number of targets).
    pub max_attempts: u32,
    /// Per-attempt limit to the response headers, in milliseconds.
    pub per_try_timeout_ms: Option<u32>,
    /// Overall deadline of a non-streaming request, in milliseconds.
    pub timeout_ms: Option<u32>,
    /// The failures that move to the next target.
    pub on: Vec<FailoverOn>,
    /// Envoy's retry budget for the chain's cluster, in percent.
    pub retry_budget_percent: u32,
}

impl Failover {
    /// Validates `raw` for a model of `targets` targets at `path`: `None` when the model
    /// makes one attempt per request (one target, `off`, or `max_attempts: 1`).
    pub(super) fn validate(
        raw: Option<&RawFailover>,
        targets: usize,
        path: &str,
        errs: &mut Errors,
    ) -> Option<Failover> {
        let settings = match raw {
            // Opt-in: the failover clusters exist only in bootstraps Tollgate renders.
            None => return None,
            Some(RawFailover::Switch(word)) if word == "off" => return None,
            Some(RawFailover::Switch(word)) => {
                errs.add(
                    path,
                    format!("must be `off` or a map of settings, not `{word}`"),
                );
                return None;
            }
            Some(RawFailover::Settings(s)) => s.clone(),
        };
        let targets = u32::try_from(targets).unwrap_or(u32::MAX);
        let max_attempts = match settings.max_attempts {
            Some(0) => {
                errs.add(format!("{path}.max_attempts"), "must be at least 1");
                return None;
            }
            Some(n) if n > MAX_ATTEMPTS => {
                errs.add(
                    format!("{path}.max_attempts"),
                    format!("at most {MAX_ATTEMPTS}"),
                );
                return None;
            }
            Some(n) if n > targets => {
                errs.add(
                    format!("{path}.max_attempts"),
                    format!("at most the model's number of targets ({targets})"),
                );
                return None;
            }
            Some(n) => n,
            None => targets.min(MAX_ATTEMPTS),
        };
        if settings.per_try_timeout_ms == Some(0) {
            errs.add(
                format!("{path}.per_try_timeout_ms"),
                "must be at least 1 (leave it out for no limit)",
            );
        }
        if settings.timeout_ms == Some(0) {
            errs.add(
                format!("{path}.timeout_ms"),
                "must be at least 1 (leave it out for the route's timeout)",
            );
        }
        let budget = settings
            .retry_budget_percent
            .unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT);
        if budget == 0 || budget > 100 {
            errs.add(
                format!("{path}.retry_budget_percent"),
                "must be between 1 and 100",
            );
        }
        let on = settings.on.unwrap_or_else(|| {
            vec![
                FailoverOn::ServerError,
                FailoverOn::TooManyRequests,
                FailoverOn::ConnectFailure,
                FailoverOn::Timeout,
            ]
        });
        if on.is_empty() {
            errs.add(
                format!("{path}.on"),
                "must name at least one failure (or set `failover: off`)",
            );
        }
        (max_attempts > 1).then_some(Failover {
            max_attempts,
            per_try_timeout_ms: settings.per_try_timeout_ms,
            timeout_ms: settings.timeout_ms,
            on,
            retry_budget_percent: budget,
        })
    }

    /// Envoy's `x-envoy-retry-on` value for these failures.
    pub fn retry_on(&self) -> String {
        let mut parts = Vec::with_capacity(4);
        for on in &self.on {
            parts.push(match on {
                FailoverOn::ServerError => "5xx",
                FailoverOn::TooManyRequests => "retriable-status-codes",
                FailoverOn::ConnectFailure => "connect-failure,refused-stream,reset-before-request",
                // A per-try timeout is retried under `5xx` and `gateway-error` alike.
                FailoverOn::Timeout => "gateway-error",
            });
        }
        parts.join(",")
    }

    /// Whether a provider's 429 moves to the next target.
    pub fn on_429(&self) -> bool {
        self.on.contains(&FailoverOn::TooManyRequests)
    }
}

/// One failover chain: the targets a request tries in order, and the composite cluster that
/// walks their provider clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Indexes into the model's `targets`, in the order tried.
    pub targets: Vec<usize>,
    /// The provider clusters of those targets, in the same order.
    pub clusters: Vec<String>,
}

impl Chain {
    /// The composite cluster's name: the prefix and the provider clusters in order.
    pub fn cluster_name(&self) -> String {
        let mut name = String::from(CLUSTER_PREFIX);
        for c in &self.clusters {
            name.push('~');
            name.push_str(c);
        }
        name
    }
}

impl Model {
    /// The chain of a request whose first attempt goes to target `first`: that target, then
    /// the others in the order configured, `max_attempts` in all. `None` without failover.
    pub fn failover_chain(&self, first: usize) -> Option<Chain> {
        let f = self.failover.as_ref()?;
        let n = usize::try_from(f.max_attempts).unwrap_or(usize::MAX);
        let targets: Vec<usize> = std::iter::once(first)
            .chain((0..self.targets.len()).filter(|i| *i != first))
            .take(n)
            .collect();
        let clusters = targets
            .iter()
            .filter_map(|i| self.targets.get(*i))
            .map(|t| t.provider.cluster.clone())
            .collect();
        Some(Chain { targets, clusters })
    }
}

/// One composite cluster the bootstrap needs: its name, the provider clusters it walks and
/// its retry budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverCluster {
    /// The composite cluster's name ([`Chain::cluster_name`]).
    pub name: String,
    /// Its sub-clusters, in attempt order.
    pub clusters: Vec<String>,
    /// The retry budget in percent (the smallest of the models sharing the cluster).
    pub retry_budget_percent: u32,
}

impl super::Config {
    /// Every composite cluster a failover chain of some model needs, each once (chains over
    /// the same provider clusters share one), in name order.
    pub fn failover_clusters(&self) -> Vec<FailoverCluster> {
        let mut out: std::collections::BTreeMap<String, FailoverCluster> =
            std::collections::BTreeMap::new();
        for m in self.models.values() {
            let Some(f) = &m.failover else { continue };
            for first in 0..m.targets.len() {
                let Some(chain) = m.failover_chain(first) else {
                    continue;
                };
                let name = chain.cluster_name();
                out.entry(name.clone())
                    .and_modify(|c| {
                        c.retry_budget_percent = c.retry_budget_percent.min(f.retry_budget_percent);
                    })
                    .or_insert(FailoverCluster {
                        name,
                        clusters: chain.clusters,
                        retry_budget_percent: f.retry_budget_percent,
                    });
            }
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::env::MapEnv;

    fn config(models: &str) -> Result<Config, Vec<crate::config::ConfigError>> {
        let yaml = format!(
            r#"
listen:
  grpc: "unix:/tmp/tollgate.sock"
  admin: "127.0.0.1:9464"
providers:
  a: {{ kind: openai, base_url: "http://127.0.0.1:1/v1" }}
  b: {{ kind: anthropic, base_url: "http://127.0.0.1:2/v1" }}
  c: {{ kind: openai, base_url: "http://127.0.0.1:3/v1", cluster: shared }}
  d: {{ kind: openai, base_url: "http://127.0.0.1:3/v1", cluster: shared }}
models:
{models}
keys: []
"#
        );
        Config::from_yaml(&yaml, &MapEnv::from_pairs([("X", "y")]))
    }

    fn errors(models: &str) -> Vec<String> {
        config(models)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn failover_is_opt_in_and_one_attempt_is_none() {
        let c = config(
            "  plain:\n    targets: [{ provider: a, model: x }, { provider: b, model: y }]\n  \
             off:\n    failover: off\n    targets: [{ provider: a, model: x }, { provider: b, model: y }]\n  \
             single:\n    failover: {}\n    targets: [{ provider: a, model: x }]\n  \
             once:\n    failover: { max_attempts: 1 }\n    targets: [{ provider: a, model: x }, { provider: b, model: y }]\n",
        )
        .unwrap();
        for m in ["plain", "off", "single", "once"] {
            assert_eq!(c.models[m].failover, None, "{m}");
            assert_eq!(c.models[m].failover_chain(0), None, "{m}");
        }
        assert!(c.failover_clusters().is_empty());
    }

    #[test]
    fn defaults_and_chains_from_each_first_target() {
        let c = config(
            "  m:\n    failover: {}\n    targets:\n      - { provider: a, model: x }\n      \
             - { provider: b, model: y }\n      - { provider: c, model: z }\n",
        )
        .unwrap();
        let m = &c.models["m"];
        let f = m.failover.as_ref().unwrap();
        assert_eq!((f.max_attempts, f.retry_budget_percent), (3, 20));
        assert_eq!(f.on.len(), 4);
        assert_eq!(
            f.retry_on(),
            "5xx,retriable-status-codes,connect-failure,refused-stream,reset-before-request,gateway-error"
        );
        // The first target by the strategy, then the others in the order configured.
        let chain = m.failover_chain(1).unwrap();
        assert_eq!(chain.targets, [1, 0, 2]);
        assert_eq!(chain.clusters, ["b", "a", "shared"]);
        assert_eq!(chain.cluster_name(), "tollgate-failover~b~a~shared");
        assert_eq!(m.failover_chain(2).unwrap().targets, [2, 0, 1]);
        let names: Vec<String> = c.failover_clusters().into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "tollgate-failover~a~b~shared",
                "tollgate-failover~b~a~shared",
                "tollgate-failover~shared~a~b"
            ]
        );
    }

    #[test]
    fn max_attempts_bounds_the_chain_and_clusters_are_shared() {
        let c = config(
            "  m:\n    failover: { max_attempts: 2, retry_budget_percent: 50, on: [\"5xx\"] }\n    targets:\n      \
             - { provider: a, model: x }\n      - { provider: b, model: y }\n      - { provider: c, model: z }\n  \
             n:\n    failover: { retry_budget_percent: 10 }\n    targets: [{ provider: a, model: q }, { provider: b, model: r }]\n",
        )
        .unwrap();
        assert_eq!(c.models["m"].failover_chain(0).unwrap().targets, [0, 1]);
        assert_eq!(c.models["m"].failover.as_ref().unwrap().retry_on(), "5xx");
        assert!(!c.models["m"].failover.as_ref().unwrap().on_429());
        // `m` from `a` and `n` from `a` walk the same clusters: one composite, the smaller budget.
        let shared = c
            .failover_clusters()
            .into_iter()
            .find(|f| f.name == "tollgate-failover~a~b")
            .unwrap();
        assert_eq!(shared.retry_budget_percent, 10);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let two = "targets: [{ provider: a, model: x }, { provider: b, model: y }]";
        for (failover, field) in [
            ("{ max_attempts: 0 }", "models.m.failover.max_attempts"),
            ("{ max_attempts: 3 }", "models.m.failover.max_attempts"),
            (
                "{ per_try_timeout_ms: 0 }",
                "models.m.failover.per_try_timeout_ms",
            ),
            ("{ timeout_ms: 0 }", "models.m.failover.timeout_ms"),
            (
                "{ retry_budget_percent: 0 }",
                "models.m.failover.retry_budget_percent",
            ),
            ("{ on: [] }", "models.m.failover.on"),
            ("on", "models.m.failover"),
        ] {
            let errs = errors(&format!("  m:\n    failover: {failover}\n    {two}\n"));
            assert!(
                errs.iter().any(|e| e.contains(field)),
                "{failover}: {errs:?}"
            );
        }
        // Unknown settings and failures are refused by the parser.
        assert!(config(&format!(
            "  m:\n    failover: {{ retries: 2 }}\n    {two}\n"
        ))
        .is_err());
        assert!(config(&format!(
            "  m:\n    failover: {{ on: [\"4xx\"] }}\n    {two}\n"
        ))
        .is_err());
    }
}
