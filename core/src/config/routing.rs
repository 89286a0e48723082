//! Routing strategies: how a model picks one of its targets for a request (`weighted`,
//! `priority`, `round_robin`, `least_latency`, `least_cost`), under each target's
//! `max_requests_in_flight`. Per-target state (in-flight count, latency average) and the
//! round-robin cursor are atomics shared with the next config version for unchanged targets.
//!
//! The picker takes an [`Excluded`] set, so a caller that failed on one target can ask for
//! the next one after those it already tried: the same strategy orders every attempt.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{Config, Model, Target};
use crate::pricing::Picodollars;

/// The most targets a model may have (the [`Excluded`] set is one bit per target).
pub const MAX_TARGETS: usize = 64;

/// Under `least_latency`, one request in this many (per thousand) goes to a random target
/// instead of the fastest, so a target that recovered (or slowed down) is measured again.
pub const EXPLORATION_PER_MILLE: u64 = 50;

/// The weight of a new sample in the latency average (1/`EWMA_DIVISOR`).
const EWMA_DIVISOR: u64 = 5;

/// How a model picks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// At random, in proportion to the targets' `weight` (the default).
    #[default]
    Weighted,
    /// The first target (in the order listed) that is available.
    Priority,
    /// Each target in turn.
    RoundRobin,
    /// The target with the lowest moving average of time to first byte; a target without a
    /// measurement yet is tried first, and a share of requests explores the others.
    LeastLatency,
    /// The target whose price (from `pricing`) is lowest for the request's estimated tokens:
    /// its prompt estimate plus the output it asks for at most.
    LeastCost,
}

impl Strategy {
    /// The name used in config, logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::Priority => "priority",
            Strategy::RoundRobin => "round_robin",
            Strategy::LeastLatency => "least_latency",
            Strategy::LeastCost => "least_cost",
        }
    }
}

/// When consecutive failures take a target out of rotation, and for how long (validated from
/// a model's or target's `ejection`), after Envoy's outlier detection: the n-th ejection in a
/// row lasts `n × base_ms`, at most `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Failures in a row (5xx, 429, no response) that eject the target; 0: never ejected.
    pub consecutive_failures: u32,
    /// The first ejection's length in milliseconds.
    pub base_ms: u64,
    /// The longest ejection in milliseconds.
    pub max_ms: u64,
}

impl Ejection {
    /// 5 failures in a row; 30 s, growing by 30 s with each ejection in a row, at most 300 s
    /// (Envoy's `consecutive_5xx`, `base_ejection_time` and `max_ejection_time` defaults).
    pub const DEFAULT: Ejection = Ejection {
        consecutive_failures: 5,
        base_ms: 30_000,
        max_ms: 300_000,
    };
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection::DEFAULT
    }
}

/// `ejection` of a model or target: when consecutive failures take a target out of rotation.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEjection {
    /// Failures in a row (a 5xx, a 429, or no response at all) that eject the target
    /// (default 5; 0: never eject).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long the first ejection lasts, in milliseconds (default 30000); the n-th ejection
    /// in a row lasts n times as long.
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    /// The longest an ejection lasts, in milliseconds (default 300000; at least `base_ms`).
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
}

fn default_consecutive_failures() -> u32 {
    Ejection::DEFAULT.consecutive_failures
}

fn default_base_ms() -> u64 {
    Ejection::DEFAULT.base_ms
}

fn default_max_ms() -> u64 {
    Ejection::DEFAULT.max_ms
}

/// The longest ejection accepted in config (one day).
pub const MAX_EJECTION_MS: u64 = 86_400_000;

impl RawEjection {
    /// Validates the policy; errors name fields under `path`.
    pub(super) fn validate(&self, path: &str, errs: &mut super::Errors) -> Ejection {
        if self.base_ms == 0 {
            errs.add(format!("{path}.base_ms"), "must be at least 1");
        }
        if self.max_ms < self.base_ms {
            errs.add(
                format!("{path}.max_ms"),
                format!("must be at least base_ms ({})", self.base_ms),
            );
        }
        if self.max_ms > MAX_EJECTION_MS {
            errs.add(
                format!("{path}.max_ms"),
                format!("must be at most {MAX_EJECTION_MS} (one day)"),
            );
        }
        Ejection {
            consecutive_failures: self.consecutive_failures,
            base_ms: self.base_ms,
            max_ms: self.max_ms,
        }
    }
}

/// A target's ejection policy and history.
#[derive(Debug, Default)]
struct EjectionState {
    policy: Ejection,
    /// Ejections in a row (decays by one per `base_ms` the target stays in rotation).
    level: u64,
    /// When the last ejection ended (Unix milliseconds); 0 before the first.
    last_until_ms: u64,
}

/// Live state of one target, shared by every request routed to it and kept across config
/// reloads while the target (model, provider, provider model id) stays in the config.
#[derive(Debug, Default)]
pub struct TargetStats {
    in_flight: AtomicU32,
    /// Moving average of time to first byte in microseconds; 0 until the first sample.
    ewma_micros: AtomicU64,
    /// Until when (Unix milliseconds) the target is out of rotation: a provider asked to be
    /// left alone (`Retry-After` on a 429) or consecutive failures ejected it; 0 when never.
    cool_until_ms: AtomicU64,
    /// Failures in a row since the last success or ejection.
    consecutive_failures: AtomicU32,
    /// The ejection policy and history (locked on failures only).
    ejection: Mutex<EjectionState>,
    /// The latest `cool_until_ms` other replicas know of (published to or received from the
    /// shared store); 0 without one.
    shared_until_ms: AtomicU64,
}

impl TargetStats {
    /// Requests routed to the target and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The moving average of time to first byte (`None` before the first sample).
    pub fn latency(&self) -> Option<Duration> {
        match self.ewma_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Adds a time-to-first-byte sample to the moving average.
    pub fn record_latency(&self, sample: Duration) {
        let s = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .ewma_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    s
                } else {
                    // old + (s - old) / EWMA_DIVISOR, in integers, never 0.
                    ((old.saturating_mul(EWMA_DIVISOR - 1)).saturating_add(s) / EWMA_DIVISOR).max(1)
                })
            });
    }

    /// Takes the target out of rotation until `until_ms` (Unix milliseconds), as a provider's
    /// `Retry-After` asks; a later deadline already set stays.
    pub fn cool_down_until(&self, until_ms: u64) {
        self.cool_until_ms.fetch_max(until_ms, Ordering::Relaxed);
    }

    /// Whether the target is out of rotation at `now_ms` (Unix milliseconds).
    pub fn cooling(&self, now_ms: u64) -> bool {
        self.cool_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Until when (Unix milliseconds) the target is out of rotation (0: never was).
    pub fn cool_until_ms(&self) -> u64 {
        self.cool_until_ms.load(Ordering::Relaxed)
    }

    /// Records that other replicas know the target is out of rotation until `until_ms`;
    /// true when that is later than anything recorded before (so it is news to share).
    pub fn mark_shared(&self, until_ms: u64) -> bool {
        self.shared_until_ms.fetch_max(until_ms, Ordering::Relaxed) < until_ms
    }

    /// The latest deadline recorded by [`TargetStats::mark_shared`] (0: none).
    pub fn shared_until_ms(&self) -> u64 {
        self.shared_until_ms.load(Ordering::Relaxed)
    }

    /// The ejection policy in force for this target.
    pub fn ejection(&self) -> Ejection {
        self.ejection_state().policy
    }

    /// Sets the ejection policy (from config; a reload sets the new one on adopted state).
    pub fn set_ejection(&self, policy: Ejection) {
        self.ejection_state().policy = policy;
    }

    fn ejection_state(&self) -> std::sync::MutexGuard<'_, EjectionState> {
        // The state holds plain numbers, always consistent: a poisoned lock is still usable.
        self.ejection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes the outcome of a response from the target at `now_ms` (Unix milliseconds): a
    /// success (`ok`) resets the count of failures in a row; a failure (5xx, 429, no response)
    /// adds one, and the one that reaches the policy's `consecutive_failures` ejects the
    /// target — out of rotation for `n × base_ms` (at most `max_ms`) on its n-th ejection in
    /// a row — and returns true. Failures while the target is ejected (the answers of
    /// requests sent before) do not count; a cool-down the provider asked for does not stop
    /// the count. The ejection count decays by one per
    /// `base_ms` the target stays back in rotation, as Envoy's outlier detection does.
    pub fn note_outcome(&self, ok: bool, now_ms: u64) -> bool {
        if ok {
            // Load first: no write (cache-line ping-pong) on the common all-good path.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let mut state = self.ejection_state();
        let policy = state.policy;
        // Out already (ejected): the answers of requests sent before do not count. A provider's
        // wait (`Retry-After`) does not stop the count, whichever was noted first.
        if policy.consecutive_failures == 0 || now_ms < state.last_until_ms {
            return false;
        }
        let failures = self
            .consecutive_failures
            .load(Ordering::Relaxed)
            .saturating_add(1);
        if failures < policy.consecutive_failures {
            self.consecutive_failures.store(failures, Ordering::Relaxed);
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let base = policy.base_ms.max(1);
        let healthy_periods = now_ms.saturating_sub(state.last_until_ms) / base;
        state.level = state
            .level
            .saturating_sub(healthy_periods)
            .saturating_add(1);
        let length = base
            .saturating_mul(state.level)
            .min(policy.max_ms.max(base));
        let until = now_ms.saturating_add(length);
        state.last_until_ms = until;
        drop(state);
        self.cool_down_until(until);
        true
    }

    /// Takes an in-flight slot unless `limit` are taken already.
    fn try_acquire(self: &Arc<Self>, limit: Option<u32>) -> Option<InFlight> {
        let taken = match limit {
            None => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        };
        taken.then(|| InFlight(Arc::clone(self)))
    }
}

/// One request's in-flight slot on a target: released when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<TargetStats>);

impl InFlight {
    /// The target's live state (to record the request's latency).
    pub fn stats(&self) -> &TargetStats {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Targets left out of a pick, by index (e.g. those a failover already tried).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Excluded(u64);

impl Excluded {
    /// No target left out.
    pub const NONE: Excluded = Excluded(0);

    /// This set and the target at `index`.
    #[must_use]
    pub fn with(self, index: usize) -> Excluded {
        Excluded(self.0 | 1u64.checked_shl(index as u32).unwrap_or(0))
    }

    /// Whether the target at `index` is left out.
    pub fn contains(self, index: usize) -> bool {
        self.0 & 1u64.checked_shl(index as u32).unwrap_or(0) != 0
    }
}

/// The outcome of a pick.
#[derive(Debug)]
pub enum Pick<'a> {
    /// The target to use, its index in the model's list, and the in-flight slot it holds.
    Chosen {
        /// The target's position in the model's `targets`.
        index: usize,
        /// The target.
        target: &'a Target,
        /// Its in-flight slot, held until the request ends.
        slot: InFlight,
    },
    /// Every target not excluded is at its `max_requests_in_flight`.
    Busy,
    /// Every target is excluded.
    Exhausted,
}

impl Model {
    /// The routing strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks a target by the model's strategy among those not in `excluded`, skipping targets
    /// at their `max_requests_in_flight`. `cost` prices a target for this request (only
    /// `least_cost` asks; `None`: no price, ranked last); `random(n)` returns a number in
    /// `[0, n)` (injectable, for tests). Allocates nothing.
    ///
    /// Targets a provider asked to leave alone (`Retry-After` on a 429, see
    /// [`TargetStats::cool_down_until`]) are left out while that lasts, unless every target
    /// left is cooling down: then the pick is made among them as if none were.
    pub fn choose(
        &self,
        excluded: Excluded,
        cost: &dyn Fn(&Target) -> Option<Picodollars>,
        random: &mut dyn FnMut(u64) -> u64,
    ) -> Pick<'_> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let cooling = self
            .targets
            .iter()
            .enumerate()
            .take(MAX_TARGETS)
            .filter(|(_, t)| t.stats.cooling(now_ms))
            .fold(excluded, |skip, (i, _)| skip.with(i));
        if cooling != excluded {
            match self.choose_among(cooling, cost, random) {
                Pick::Exhausted => {}
                pick => return pick,
            }
        }
        self.choose_among(excluded, cost, random)
    }

    /// [`Model::choose`] without the cool-down: among the targets not in `excluded`.
    fn choose_among(
        &self,
        excluded: Excluded,
        cost: &dyn Fn(&Target) -> Option<Picodollars>,
        random: &mut dyn FnMut(u64) -> u64,
    ) -> Pick<'_> {
        let n = self.targets.len().min(MAX_TARGETS);
        let start = match self.strategy {
            Strategy::RoundRobin if n > 0 => {
                (self.cursor.fetch_add(1, Ordering::Relaxed) % n as u64) as usize
            }
            _ => 0,
        };
        let mut skip = excluded;
        let mut busy = false;
        for _ in 0..n {
            let Some(index) = self.candidate(skip, start, n, cost, random) else {
                break;
            };
            let Some(target) = self.targets.get(index) else {
                break;
            };
            match target.stats.try_acquire(target.max_requests_in_flight) {
                Some(slot) => {
                    return Pick::Chosen {
                        index,
                        target,
                        slot,
                    }
                }
                None => {
                    busy = true;
                    skip = skip.with(index);
                }
            }
        }
        if busy {
            Pick::Busy
        } else {
            Pick::Exhausted
        }
    }

    /// The strategy's choice among the targets not in `skip`.
    fn candidate(
        &self,
        skip: Excluded,
        start: usize,
        n: usize,
        cost: &dyn Fn(&Target) -> Option<Picodollars>,
        random: &mut dyn FnMut(u64) -> u64,
    ) -> Option<usize> {
        // One target: no strategy to ask (and no random draw).
        if n == 1 {
            return (!skip.contains(0)).then_some(0);
        }
        let open = || {
            self.targets
                .iter()
                .enumerate()
                .take(n)
                .filter(move |(i, _)| !skip.contains(*i))
        };
        match self.strategy {
            Strategy::Weighted => weighted(open(), random),
            Strategy::Priority => open().map(|(i, _)| i).next(),
            Strategy::RoundRobin => (0..n).map(|k| (start + k) % n).find(|i| !skip.contains(*i)),
            Strategy::LeastLatency => {
                // A target never measured (new, or just added) goes first, one at a time.
                if let Some((i, _)) =
                    open().find(|(_, t)| t.stats.latency().is_none() && t.stats.in_flight() == 0)
                {
                    return Some(i);
                }
                let count = open().count() as u64;
                if count > 1 && random(1000) < EXPLORATION_PER_MILLE {
                    let k = random(count);
                    return open().nth(k as usize).map(|(i, _)| i);
                }
                open()
                    .min_by_key(|(_, t)| t.stats.latency().unwrap_or(Duration::ZERO))
                    .map(|(i, _)| i)
            }
            Strategy::LeastCost => open()
                .min_by_key(|(_, t)| cost(t).unwrap_or(Picodollars::MAX))
                .map(|(i, _)| i),
        }
    }

    /// Takes over the live state of the same targets (same provider and provider model id)
    /// and the round-robin cursor from the previous version of this model.
    pub fn adopt_routing_state(&mut self, old: &Model) {
        self.cursor = Arc::clone(&old.cursor);
        for t in &mut self.targets {
            if let Some(o) = old.targets.iter().find(|o| {
                o.provider.name == t.provider.name && o.upstream_model == t.upstream_model
            }) {
                // The new version's ejection policy applies to the state it takes over.
                o.stats.set_ejection(t.stats.ejection());
                t.stats = Arc::clone(&o.stats);
            }
        }
    }
}

/// Weighted random choice among `open` targets.
fn weighted<'a>(
    open: impl Iterator<Item = (usize, &'a Target)> + Clone,
    random: &mut dyn FnMut(u64) -> u64,
) -> Option<usize> {
    let total: u64 = open.clone().map(|(_, t)| u64::from(t.weight)).sum();
    if total == 0 {
        return open.map(|(i, _)| i).next();
    }
    let r = random(total);
    let mut acc = 0u64;
    let mut last = None;
    for (i, t) in open {
        acc += u64::from(t.weight);
        last = Some(i);
        if r < acc {
            return Some(i);
        }
    }
    last
}

impl Config {
    /// Takes over the routing state (in-flight counts, latency averages, round-robin
    /// cursors) of the models and targets that `old` has too, so a reload neither forgets
    /// what it measured nor lets a target exceed its `max_requests_in_flight`.
    pub fn adopt_routing_state(&mut self, old: &Config) {
        for (name, m) in &mut self.models {
            if let Some(o) = old.models.get(name) {
                m.adopt_routing_state(o);
            }
        }
    }
}

#[cfg(test)]
mod tests;
