//! The ledger shared by many replicas: Redis, one hash per line (`s`: spent, `r`: reserved,
//! integer picodollars), every change an atomic Lua script, so a reservation checks and takes
//! all its lines at once however many replicas ask together.
//!
//! Keys are `{<prefix>}:<line>`: one hash tag, so that a Redis Cluster keeps every line in one
//! slot, where a multi-key script may run. A line expires 40 days after its last change,
//! except `total` lines, which are kept. Settlements never wait: they go through a bounded
//! queue to one background writer (retried, then logged), drained on shutdown.
//!
//! Limits and sums are compared in the script as Lua numbers (doubles): exact up to 2^53
//! picodollars (9,007 USD) per line, and off by at most one part in 2^53 above that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, Script};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Balance, Ledger, LedgerError, LedgerFuture, Line, Picodollars, Reserved};

/// Seconds a line lives after its last change (`total` lines never expire).
const LINE_TTL_SECS: u64 = 40 * 86_400;
/// Settlements waiting for the writer; beyond it a settlement is dropped, counted and logged.
const SETTLE_QUEUE: usize = 10_000;
/// Attempts per settlement before it is given up (its reservation then expires with its line).
const SETTLE_ATTEMPTS: u32 = 5;

const RESERVE: &str = r"
local amount = tonumber(ARGV[1])
local soft = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 's', 'r')
  local committed = tonumber(v[1] or '0') + tonumber(v[2] or '0')
  if committed + amount > tonumber(ARGV[2 * i]) then
    if ARGV[2 * i + 1] == '1' then return {0, i} end
    soft[#soft + 1] = i
  end
end
local seen = {}
for _, key in ipairs(KEYS) do
  if not seen[key] then
    seen[key] = true
    redis.call('HINCRBY', key, 'r', ARGV[1])
    if not string.find(key, ':total:', 1, true) then redis.call('EXPIRE', key, ARGV[#ARGV]) end
  end
end
return {1, unpack(soft)}
";

const SETTLE: &str = r"
for _, key in ipairs(KEYS) do
  if ARGV[1] ~= '0' then redis.call('HINCRBY', key, 'r', '-' .. ARGV[1]) end
  if ARGV[2] ~= '0' then redis.call('HINCRBY', key, 's', ARGV[2]) end
  if not string.find(key, ':total:', 1, true) then redis.call('EXPIRE', key, ARGV[3]) end
end
return 1
";

const BALANCES: &str = r"
local out = {}
for _, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 's', 'r')
  out[#out + 1] = v[1] or '0'
  out[#out + 1] = v[2] or '0'
end
return out
";

#[derive(Debug)]
struct Settlement {
    keys: Vec<String>,
    reserved: Picodollars,
    actual: Picodollars,
}

/// The Redis ledger.
pub struct RedisLedger {
    con: ConnectionManager,
    prefix: String,
    timeout: Duration,
    reserve: Script,
    settle: Script,
    balances: Script,
    queue: mpsc::Sender<Settlement>,
    stop: watch::Sender<bool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never printed.
        f.debug_struct("RedisLedger")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

/// An amount as Redis's 64-bit integers take it.
fn int(p: Picodollars) -> String {
    p.min(i64::MAX as u128).to_string()
}

impl RedisLedger {
    /// Connects to `url` (`redis://[:password@]host:port/db`); every call gives up after
    /// `timeout`. Lines are stored under `{prefix}:`. Starts the settlement writer.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, LedgerError> {
        let client = Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(2);
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        let (queue, rx) = mpsc::channel(SETTLE_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let settle = Script::new(SETTLE);
        let writer = tokio::spawn(write_settlements(
            con.clone(),
            settle.clone(),
            prefix.to_owned(),
            rx,
            stop_rx,
        ));
        Ok(Self {
            con,
            prefix: prefix.to_owned(),
            timeout,
            reserve: Script::new(RESERVE),
            settle,
            balances: Script::new(BALANCES),
            queue,
            stop,
            writer: Mutex::new(Some(writer)),
            dropped: AtomicU64::new(0),
        })
    }

    fn key(&self, line: &str) -> String {
        redis_key(&self.prefix, line)
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, LedgerError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(LedgerError::Unavailable(format!(
                "no answer from Redis within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// The connection, for other state kept in the same Redis (shared rate limits).
    pub fn connection(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// Settlements dropped because the writer's queue was full.
    pub fn dropped_settlements(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn redis_key(prefix: &str, line: &str) -> String {
    format!("{{{prefix}}}:{line}")
}

async fn apply(
    con: &mut ConnectionManager,
    script: &Script,
    prefix: &str,
    s: &Settlement,
) -> redis::RedisResult<i64> {
    let mut inv = script.prepare_invoke();
    for k in &s.keys {
        inv.key(redis_key(prefix, k));
    }
    inv.arg(int(s.reserved))
        .arg(int(s.actual))
        .arg(LINE_TTL_SECS)
        .invoke_async(con)
        .await
}

/// The background writer: applies queued settlements in order, each retried with backoff;
/// drains the queue when told to stop.
async fn write_settlements(
    mut con: ConnectionManager,
    script: Script,
    prefix: String,
    mut rx: mpsc::Receiver<Settlement>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let s = tokio::select! {
            s = rx.recv() => match s { Some(s) => s, None => return },
            _ = stop.changed() => {
                rx.close();
                while let Some(s) = rx.recv().await {
                    settle_with_retries(&mut con, &script, &prefix, &s).await;
                }
                return;
            }
        };
        settle_with_retries(&mut con, &script, &prefix, &s).await;
    }
}

async fn settle_with_retries(
    con: &mut ConnectionManager,
    script: &Script,
    prefix: &str,
    s: &Settlement,
) {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=SETTLE_ATTEMPTS {
        match apply(con, script, prefix, s).await {
            Ok(_) => return,
            Err(e) if attempt == SETTLE_ATTEMPTS => {
                tracing::error!(error = %e, reserved = %s.reserved, actual = %s.actual, "Gave up settling a budget reservation in Redis; it expires with its line");
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "Settling a budget reservation in Redis failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

impl Ledger for RedisLedger {
    fn reserve<'a>(&'a self, lines: &'a [Line], amount: Picodollars) -> LedgerFuture<'a, Reserved> {
        Box::pin(async move {
            let mut inv = self.reserve.prepare_invoke();
            inv.arg(int(amount));
            for l in lines {
                inv.key(self.key(&l.key))
                    .arg(l.limit.to_string())
                    .arg(if l.hard { "1" } else { "0" });
            }
            inv.arg(LINE_TTL_SECS);
            let mut con = self.con.clone();
            let out: Vec<i64> = self.timed(inv.invoke_async(&mut con)).await?;
            let index = |i: i64| usize::try_from(i - 1).unwrap_or(0);
            match out.split_first() {
                Some((0, rest)) => Ok(Reserved::Refused(rest.first().map_or(0, |&i| index(i)))),
                Some((_, rest)) => Ok(Reserved::Ok {
                    soft_exceeded: rest.iter().map(|&i| index(i)).collect(),
                }),
                None => Err(LedgerError::Unavailable(
                    "Redis answered a reservation with nothing".to_owned(),
                )),
            }
        })
    }

    fn balances<'a>(&'a self, keys: &'a [String]) -> LedgerFuture<'a, Vec<Balance>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut inv = self.balances.prepare_invoke();
            for k in keys {
                inv.key(self.key(k));
            }
            let mut con = self.con.clone();
            let out: Vec<String> = self.timed(inv.invoke_async(&mut con)).await?;
            let n = |s: &String| s.parse::<i128>().map_or(0, |v| v.max(0).unsigned_abs());
            Ok(out
                .chunks(2)
                .map(|c| Balance {
                    spent: c.first().map_or(0, n),
                    reserved: c.get(1).map_or(0, n),
                })
                .collect())
        })
    }

    fn add_spent<'a>(&'a self, keys: &'a [String], amount: Picodollars) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let mut con = self.con.clone();
            let s = Settlement {
                keys: keys.to_vec(),
                reserved: 0,
                actual: amount,
            };
            self.timed(apply(&mut con, &self.settle, &self.prefix, &s))
                .await
                .map(|_| ())
        })
    }

    fn settle(&self, keys: Vec<String>, reserved: Picodollars, actual: Picodollars) {
        let s = Settlement {
            keys,
            reserved,
            actual,
        };
        if let Err(e) = self.queue.try_send(s) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "The Redis settlement queue is full: a settlement was dropped (its reservation expires with its line)");
        }
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.stop.send(true);
            let writer = match self.writer.lock() {
                Ok(mut w) => w.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(w) = writer {
                w.await
                    .map_err(|e| LedgerError::Unavailable(format!("settlement writer: {e}")))?;
            }
            Ok(())
        })
    }
}
