//! Rate limits shared by many replicas: the same GCRA state (one theoretical arrival time per
//! scope) in Redis, in microseconds (exact in Lua's doubles), read and updated by one Lua
//! script per check, so replicas admit together exactly what one would. The decisions
//! themselves are computed by the same code as the local store, from the state the script
//! saw. When Redis cannot answer, rate limits fail open (logged): budgets, not rate limits,
//! are what must never be exceeded.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use super::{evaluate, Checked, RateFuture, RateStore, WINDOW_NANOS};

/// Reads every scope's arrival time and, when every limit admits one unit and `ARGV[2]` is
/// `1`, counts it. ARGV: now (µs), charge, window (µs), then one interval (µs) per key.
const CHECK: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local tats = {}
local admit = true
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  tats[i] = tat
  local from = tat
  if from < now then from = now end
  if from + tonumber(ARGV[3 + i]) - now > window then admit = false end
end
if admit and ARGV[2] == '1' then
  for i, key in ipairs(KEYS) do
    local from = tats[i]
    if from < now then from = now end
    local new = from + tonumber(ARGV[3 + i])
    redis.call('SET', key, string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1000)
  end
end
local out = {}
for i = 1, #tats do out[i] = string.format('%d', tats[i]) end
return out
";

/// Adds `ARGV[2]` units to every scope. ARGV: now (µs), units, then one interval (µs) per key.
const CHARGE: &str = r"
local now = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + tonumber(ARGV[2]) * tonumber(ARGV[2 + i])
  redis.call('SET', key, string.format('%d', new), 'PX', math.floor((new - now) / 1000) + 1000)
end
return 1
";

/// The Redis rate store.
pub struct RedisRates {
    con: ConnectionManager,
    prefix: String,
    timeout: Duration,
    check: Script,
    charge: Script,
    /// Bounds the token charges in flight (each a short task).
    charges: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for RedisRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRates")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Token charges in flight at most; past it a charge is dropped and logged.
const CHARGES_IN_FLIGHT: usize = 1024;

fn micros(nanos: u64) -> u64 {
    nanos / 1000
}

fn interval_us(per_minute: u32) -> u64 {
    micros(WINDOW_NANOS / u64::from(per_minute.max(1)))
}

impl RedisRates {
    /// A store on `con` (shared with the budget ledger), keys under `{prefix}:rate:`.
    pub fn new(con: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self {
            con,
            prefix: prefix.to_owned(),
            timeout,
            check: Script::new(CHECK),
            charge: Script::new(CHARGE),
            charges: std::sync::Arc::new(tokio::sync::Semaphore::new(CHARGES_IN_FLIGHT)),
        }
    }

    fn key(&self, scope: &str) -> String {
        format!("{{{}}}:rate:{scope}", self.prefix)
    }

    async fn run(&self, limits: &[(&str, u32)], now_nanos: u64, charge: bool) -> Checked {
        let mut inv = self.check.prepare_invoke();
        inv.arg(micros(now_nanos))
            .arg(if charge { "1" } else { "0" })
            .arg(micros(WINDOW_NANOS));
        for (scope, n) in limits {
            inv.key(self.key(scope)).arg(interval_us(*n));
        }
        let mut con = self.con.clone();
        let seen: Result<Vec<String>, String> =
            match tokio::time::timeout(self.timeout, inv.invoke_async(&mut con)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            };
        let map: HashMap<String, u64> = match seen {
            Ok(tats) => limits
                .iter()
                .zip(tats)
                .map(|((s, _), t)| ((*s).to_owned(), t.parse::<u64>().unwrap_or(0) * 1000))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "Redis rate limits unavailable: the request is not limited");
                HashMap::new()
            }
        };
        evaluate(&map, limits, now_nanos, charge).0
    }
}

impl RateStore for RedisRates {
    fn check_all<'a>(&'a self, limits: &'a [(&'a str, u32)], now_nanos: u64) -> RateFuture<'a> {
        Box::pin(self.run(limits, now_nanos, true))
    }

    fn check_tokens<'a>(&'a self, limits: &'a [(&'a str, u32)], now_nanos: u64) -> RateFuture<'a> {
        Box::pin(self.run(limits, now_nanos, false))
    }

    fn charge_tokens(&self, limits: Vec<(String, u32)>, tokens: u64, now_nanos: u64) {
        let Ok(permit) = std::sync::Arc::clone(&self.charges).try_acquire_owned() else {
            tracing::warn!("Too many token charges in flight to Redis: one was dropped");
            return;
        };
        let keys: Vec<(String, u64)> = limits
            .iter()
            .map(|(scope, n)| (self.key(scope), interval_us(*n)))
            .collect();
        let script = self.charge.clone();
        let mut con = self.con.clone();
        let timeout = self.timeout;
        // Bounded by the semaphore; a charge lost at shutdown only forgives some tokens.
        tokio::spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.arg(micros(now_nanos)).arg(tokens);
            for (key, interval) in &keys {
                inv.key(key).arg(*interval);
            }
            let r: Result<redis::RedisResult<i64>, _> =
                tokio::time::timeout(timeout * 4, inv.invoke_async(&mut con)).await;
            if !matches!(r, Ok(Ok(_))) {
                tracing::warn!("Could not charge tokens to a Redis rate limit");
            }
            drop(permit);
        });
    }
}
