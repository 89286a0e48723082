//! Request-rate limits per key and per tenant: GCRA (the generic cell rate algorithm), exact
//! and O(1) per check, one timestamp per limited scope. A limit of N per minute admits a burst
//! of N and then one request every 60/N seconds; a refusal says how long until the next
//! request would be admitted, and every answer says how many remain (OpenAI's
//! `x-ratelimit-*` headers).
//!
//! This is the local (one replica) store. Limits shared by many replicas need a shared store
//! (Redis, a later step); the arithmetic stays the same.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The window every limit is expressed over.
pub(crate) const WINDOW_NANOS: u64 = 60_000_000_000;

/// A limit's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The limit, requests per minute.
    pub limit: u32,
    /// Requests still admitted right now after this one.
    pub remaining: u32,
    /// Time until the limit is fully replenished.
    pub reset_after: Duration,
    /// For a refusal: time until a request would be admitted.
    pub retry_after: Duration,
}

/// Per-scope GCRA state: the theoretical arrival time of the next request, in nanoseconds of
/// the caller's monotonic clock.
#[derive(Debug, Default)]
pub struct RateLimiter {
    tat: Mutex<HashMap<String, u64>>,
}

/// Past this many scopes, idle ones (fully replenished) are dropped on the next insert.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    /// A limiter with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks (and, when admitted, counts) one request of `scope` against `per_minute`, at
    /// `now_nanos` on a monotonic clock.
    pub fn check(&self, scope: &str, per_minute: u32, now_nanos: u64) -> Decision {
        self.check_all(&[(scope, per_minute)], now_nanos)
            .unwrap_or_else(|(_, d)| d)
    }

    /// Checks one request against several limits at once (a key's and its tenant's): it is
    /// counted against all of them only if all admit it. `Ok` carries the tightest decision
    /// (fewest remaining) for the headers; `Err` the index and decision of the refusing limit
    /// that frees up last. An empty list admits.
    pub fn check_all(
        &self,
        limits: &[(&str, u32)],
        now_nanos: u64,
    ) -> Result<Decision, (usize, Decision)> {
        let mut map = match self.tat.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (answer, updates) = evaluate(&map, limits, now_nanos, true);
        let decision = answer?;
        let new_scope = updates
            .iter()
            .any(|(i, _)| limits.get(*i).is_some_and(|(s, _)| !map.contains_key(*s)));
        if new_scope && map.len() > PRUNE_ABOVE {
            map.retain(|_, t| *t > now_nanos);
        }
        for (i, new_tat) in updates {
            if let Some(&(scope, _)) = limits.get(i) {
                map.insert(scope.to_owned(), new_tat);
            }
        }
        Ok(decision)
    }

    /// Checks token-rate limits (`per_minute` tokens each) without charging: a request is
    /// admitted while every limit has room for a token, since its size is known only once it
    /// has run ([`RateLimiter::charge_tokens`]). `Ok` carries the tightest decision (tokens
    /// remaining); `Err` the index and decision of the limit that frees up last.
    pub fn check_tokens(
        &self,
        limits: &[(&str, u32)],
        now_nanos: u64,
    ) -> Result<Decision, (usize, Decision)> {
        let map = match self.tat.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        evaluate(&map, limits, now_nanos, false).0
    }

    /// Charges `tokens` to each token-rate limit, after the request ran. A large request may
    /// take a limit into debt: the next ones wait until it is paid off.
    pub fn charge_tokens(&self, limits: &[(&str, u32)], tokens: u64, now_nanos: u64) {
        let mut map = match self.tat.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        for &(scope, per_minute) in limits {
            let interval = WINDOW_NANOS / u64::from(per_minute.max(1));
            let tat = map.get(scope).copied().unwrap_or(0).max(now_nanos);
            map.insert(
                scope.to_owned(),
                tat.saturating_add(tokens.saturating_mul(interval)),
            );
        }
    }
}

/// The answer of every limit for one unit at `now_nanos` (`charge`: the unit is counted, as a
/// request is; otherwise only room for it is asked, as for tokens), and each admitting
/// limit's new theoretical arrival time.
#[allow(clippy::type_complexity)]
pub(crate) fn evaluate(
    map: &HashMap<String, u64>,
    limits: &[(&str, u32)],
    now_nanos: u64,
    charge: bool,
) -> (Result<Decision, (usize, Decision)>, Vec<(usize, u64)>) {
    let mut tightest: Option<Decision> = None;
    let mut refused: Option<(usize, Decision)> = None;
    let mut updates: Vec<(usize, u64)> = Vec::with_capacity(limits.len());
    for (i, &(scope, per_minute)) in limits.iter().enumerate() {
        let per_minute = per_minute.max(1);
        let interval = WINDOW_NANOS / u64::from(per_minute);
        let tat = map.get(scope).copied().unwrap_or(0).max(now_nanos);
        let new_tat = tat + interval;
        let ahead = new_tat - now_nanos;
        if ahead > WINDOW_NANOS {
            let d = Decision {
                allowed: false,
                limit: per_minute,
                remaining: 0,
                reset_after: Duration::from_nanos(tat - now_nanos),
                retry_after: Duration::from_nanos(ahead - WINDOW_NANOS),
            };
            if refused.is_none_or(|(_, r)| d.retry_after > r.retry_after) {
                refused = Some((i, d));
            }
            continue;
        }
        let held = if charge { ahead } else { tat - now_nanos };
        let d = Decision {
            allowed: true,
            limit: per_minute,
            remaining: u32::try_from((WINDOW_NANOS - held) / interval).unwrap_or(u32::MAX),
            reset_after: Duration::from_nanos(held),
            retry_after: Duration::ZERO,
        };
        if tightest.is_none_or(|t| d.remaining < t.remaining) {
            tightest = Some(d);
        }
        updates.push((i, new_tat));
    }
    let answer = match refused {
        Some(r) => Err(r),
        None => Ok(tightest.unwrap_or(Decision {
            allowed: true,
            limit: 0,
            remaining: u32::MAX,
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
        })),
    };
    (answer, updates)
}

/// A limit check's answer: the tightest admitting decision, or the index and decision of the
/// refusing limit that frees up last.
pub type Checked = Result<Decision, (usize, Decision)>;

/// What a rate store returns: a boxed future, so that `dyn RateStore` works with a shared
/// store that answers over the network.
pub type RateFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Checked> + Send + 'a>>;

/// Where rate-limit state is kept: [`RateLimiter`] in one replica, [`RedisRates`] shared.
pub trait RateStore: Send + Sync + std::fmt::Debug {
    /// [`RateLimiter::check_all`].
    fn check_all<'a>(&'a self, limits: &'a [(&'a str, u32)], now_nanos: u64) -> RateFuture<'a>;
    /// [`RateLimiter::check_tokens`].
    fn check_tokens<'a>(&'a self, limits: &'a [(&'a str, u32)], now_nanos: u64) -> RateFuture<'a>;
    /// [`RateLimiter::charge_tokens`]; never waits (it runs where a request's state is
    /// dropped).
    fn charge_tokens(&self, limits: Vec<(String, u32)>, tokens: u64, now_nanos: u64);
}

impl RateStore for RateLimiter {
    fn check_all<'a>(&'a self, limits: &'a [(&'a str, u32)], now_nanos: u64) -> RateFuture<'a> {
        Box::pin(std::future::ready(RateLimiter::check_all(
            self, limits, now_nanos,
        )))
    }

    fn check_tokens<'a>(&'a self, limits: &'a [(&'a str, u32)], now_nanos: u64) -> RateFuture<'a> {
        Box::pin(std::future::ready(RateLimiter::check_tokens(
            self, limits, now_nanos,
        )))
    }

    fn charge_tokens(&self, limits: Vec<(String, u32)>, tokens: u64, now_nanos: u64) {
        let pairs: Vec<(&str, u32)> = limits.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        RateLimiter::charge_tokens(self, &pairs, tokens, now_nanos);
    }
}

mod redis;
pub use self::redis::RedisRates;

/// The token-rate limits of a key and its tenant: `(scope, per minute, "key" | "tenant")`.
pub fn token_limits(
    key_id: &str,
    key_per_minute: Option<u32>,
    tenant: Option<&str>,
    tenants: &HashMap<String, u32>,
    tenant_fallback: Option<u32>,
) -> Vec<(String, u32, &'static str)> {
    let mut limits = Vec::with_capacity(2);
    if let Some(n) = key_per_minute {
        limits.push((format!("tpm:key:{key_id}"), n, "key"));
    }
    if let Some((t, n)) =
        tenant.and_then(|t| tenants.get(t).copied().or(tenant_fallback).map(|n| (t, n)))
    {
        limits.push((format!("tpm:tenant:{t}"), n, "tenant"));
    }
    limits
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `6m0s`, `1.5s`, `20ms`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let minutes = (secs / 60.0).floor() as u64;
    let rest = secs - (minutes * 60) as f64;
    let rest = format!("{:.3}", rest);
    let rest = rest.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{rest}s")
    } else {
        format!("{rest}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_burst_of_the_limit_then_one_per_interval() {
        let l = RateLimiter::new();
        let t0 = 1000 * S;
        for i in 0..6 {
            let d = l.check("k", 6, t0);
            assert!(d.allowed, "request {i} of the burst");
            assert_eq!(d.remaining, 5 - i);
        }
        let refused = l.check("k", 6, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        assert_eq!(refused.reset_after, Duration::from_secs(60));
        // A refusal does not count: 10 s later exactly one more is admitted.
        assert!(!l.check("k", 6, t0 + 10 * S - 1).allowed);
        let d = l.check("k", 6, t0 + 10 * S);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!l.check("k", 6, t0 + 10 * S).allowed);
        // A minute of quiet replenishes everything.
        assert_eq!(l.check("k", 6, t0 + 80 * S).remaining, 5);
    }

    #[test]
    fn scopes_are_independent() {
        let l = RateLimiter::new();
        assert!(l.check("a", 1, S).allowed);
        assert!(!l.check("a", 1, S).allowed);
        assert!(l.check("b", 1, S).allowed);
    }

    #[test]
    fn a_sustained_rate_is_held_exactly() {
        let l = RateLimiter::new();
        // 600/min offered for 10 minutes against 60/min: 60 burst + 1 per second after that.
        let admitted = (0..6000u64)
            .filter(|i| l.check("k", 60, 10 * S + i * S / 10).allowed)
            .count();
        assert_eq!(admitted, 60 + 599);
    }

    #[test]
    fn concurrent_checks_never_admit_more_than_the_limit() {
        let l = std::sync::Arc::new(RateLimiter::new());
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let l = std::sync::Arc::clone(&l);
                    s.spawn(move || (0..100).filter(|_| l.check("k", 50, S).allowed).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 50);
    }

    #[test]
    fn a_request_counts_against_all_its_limits_or_none() {
        let l = RateLimiter::new();
        // The tenant allows 2, the key 5: the third request is refused by the tenant and
        // must not use up the key's allowance.
        for _ in 0..2 {
            assert!(l.check_all(&[("key", 5), ("tenant", 2)], S).is_ok());
        }
        let (i, d) = l.check_all(&[("key", 5), ("tenant", 2)], S).unwrap_err();
        assert_eq!((i, d.limit), (1, 2));
        assert_eq!(d.retry_after, Duration::from_secs(30));
        assert_eq!(
            l.check("key", 5, S).remaining,
            2,
            "the refusal took nothing from the key"
        );
        let ok = l
            .check_all(&[("key", 5), ("other-tenant", 100)], S)
            .unwrap();
        assert_eq!(
            (ok.limit, ok.remaining),
            (5, 1),
            "the tightest limit is reported"
        );
        assert!(l.check_all(&[], S).is_ok());
    }

    #[test]
    fn token_limits_admit_while_there_is_room_and_charge_afterwards() {
        let l = RateLimiter::new();
        let lim = [("tpm:key", 600u32)]; // 10 tokens a second
        let d = l.check_tokens(&lim, S).unwrap();
        assert_eq!(d.remaining, 600);
        // A request of 900 tokens runs (admitted: there was room) and puts the key in debt.
        l.charge_tokens(&lim, 900, S);
        let (i, d) = l.check_tokens(&lim, S).unwrap_err();
        assert_eq!(i, 0);
        // 90 s of tokens charged: room for one token again after 30.1 s.
        assert_eq!(d.retry_after, Duration::from_millis(30_100));
        assert!(l.check_tokens(&lim, S + 30 * S).is_err());
        assert_eq!(l.check_tokens(&lim, S + 31 * S).unwrap().remaining, 10);
        // Checking never charges.
        assert_eq!(l.check_tokens(&lim, S + 31 * S).unwrap().remaining, 10);
    }

    #[test]
    fn resets_print_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(60)), "1m0s");
        assert_eq!(format_reset(Duration::from_secs(6)), "6s");
    }

    #[test]
    fn a_tenant_token_limit_comes_from_the_file_else_from_the_key() {
        let file: HashMap<String, u32> = [("acme".to_owned(), 100u32)].into();
        // The file's entry wins over what the key came with.
        assert_eq!(
            token_limits("k", Some(10), Some("acme"), &file, Some(5)),
            vec![
                ("tpm:key:k".to_owned(), 10, "key"),
                ("tpm:tenant:acme".to_owned(), 100, "tenant")
            ]
        );
        // A tenant the file does not know: the key's (a control-plane bundle's tenant).
        assert_eq!(
            token_limits("k", None, Some("other"), &file, Some(5)),
            vec![("tpm:tenant:other".to_owned(), 5, "tenant")]
        );
        assert!(token_limits("k", None, Some("other"), &file, None).is_empty());
        assert!(token_limits("k", None, None, &file, Some(5)).is_empty());
    }
}
