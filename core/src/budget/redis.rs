//! The ledger shared by many replicas: Redis, one hash per line (`s`: spent, `r`: reserved,
//! integer picodollars), every change an atomic Lua script, so a reservation checks and takes
//! all its lines at once however many replicas ask together.
//!
//! Keys are `{<prefix>}:<line>`: one hash tag, so that a Redis Cluster keeps every line in one
//! slot, where a multi-key script may run. A line expires 40 days after its last change,
//! except `total` lines, which are kept. Settlements never wait: they go through a bounded
//! queue to one background writer (retried; one that still fails is written to the pending
//! directory, [`super::pending`]), drained on shutdown within a bound: once Redis fails or
//! the bound passes, what is left goes to the pending directory at once rather than being
//! retried one by one, and the next start applies it ([`RedisLedger::apply_pending`]).
//!
//! Limits and sums are compared in the script as Lua numbers (doubles): exact up to 2^53
//! picodollars (9,007 USD) per line, and off by at most one part in 2^53 above that.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, Script};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::pending::{self, Settlement};
use super::{Balance, Ledger, LedgerError, LedgerFuture, Line, Picodollars, Reserved};

/// Seconds a line lives after its last change (`total` lines never expire).
const LINE_TTL_SECS: u64 = 40 * 86_400;
/// Settlements waiting for the writer; beyond it a settlement is dropped, counted and logged.
const SETTLE_QUEUE: usize = 10_000;
/// Attempts per settlement before it is given up (then written to the pending directory).
const SETTLE_ATTEMPTS: u32 = 5;
/// [`Ledger::flush`]'s bound (the shutdown passes its own to [`Ledger::flush_within`]).
const FLUSH_BOUND: Duration = Duration::from_secs(60);

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

// A reservation is never released below zero: a settlement applied from the pending directory
// to a Redis that lost the line must not make room it never held.
const SETTLE: &str = r"
for _, key in ipairs(KEYS) do
  if ARGV[1] ~= '0' then
    if redis.call('HINCRBY', key, 'r', '-' .. ARGV[1]) < 0 then redis.call('HSET', key, 'r', '0') end
  end
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

/// The Redis ledger.
pub struct RedisLedger {
    con: ConnectionManager,
    prefix: String,
    timeout: Duration,
    reserve: Script,
    settle: Script,
    balances: Script,
    queue: mpsc::Sender<Settlement>,
    /// The shutdown's deadline, once it has begun.
    stop: watch::Sender<Option<Instant>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
    pending_dir: Option<PathBuf>,
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
    /// `timeout`. Lines are stored under `{prefix}:`. Starts the settlement writer; without a
    /// pending directory, settlements Redis does not take are only logged.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, LedgerError> {
        Self::connect_with(url, prefix, timeout, None).await
    }

    /// [`RedisLedger::connect`], writing settlements Redis does not take (at shutdown, or
    /// after their retries) under `pending_dir` for [`RedisLedger::apply_pending`].
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        timeout: Duration,
        pending_dir: Option<PathBuf>,
    ) -> Result<Self, LedgerError> {
        let client = Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(2);
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        let (queue, rx) = mpsc::channel(SETTLE_QUEUE);
        let (stop, stop_rx) = watch::channel(None);
        let settle = Script::new(SETTLE);
        let writer = tokio::spawn(
            Writer {
                con: con.clone(),
                script: settle.clone(),
                prefix: prefix.to_owned(),
                pending_dir: pending_dir.clone(),
            }
            .run(rx, stop_rx),
        );
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
            pending_dir,
        })
    }

    /// Applies the settlements an earlier run left under the pending directory (Redis was
    /// away when it stopped), oldest first, removing each file once applied; how many were
    /// applied. On a failure the rest stays on disk for the next start (a held reservation
    /// only makes budgets stricter meanwhile). A crash between applying a file and removing
    /// it would apply that file twice on the following start.
    pub async fn apply_pending(&self) -> Result<usize, LedgerError> {
        let Some(dir) = self.pending_dir.clone() else {
            return Ok(0);
        };
        let shown = dir.display().to_string();
        let files = tokio::task::spawn_blocking(move || pending::read(&dir))
            .await
            .map_err(unavailable)?
            .map_err(|e| LedgerError::Unavailable(format!("cannot read {shown}: {e}")))?;
        let mut applied = 0;
        for (path, settlements) in files {
            for (i, s) in settlements.iter().enumerate() {
                let mut con = self.con.clone();
                if let Err(e) = self
                    .timed(apply(&mut con, &self.settle, &self.prefix, s))
                    .await
                {
                    // Keep what is left of this file (the rest of the files stay as they are).
                    let rest = settlements[i..].to_vec();
                    let (dir, old) = (
                        path.parent().map(PathBuf::from).unwrap_or_default(),
                        path.clone(),
                    );
                    let kept = tokio::task::spawn_blocking(move || {
                        pending::write(&dir, &rest).and_then(|_| std::fs::remove_file(&old))
                    })
                    .await;
                    if !matches!(kept, Ok(Ok(()))) {
                        tracing::error!(path = %path.display(), "Cannot rewrite a partly applied pending settlement file: it may apply twice");
                    }
                    return Err(e);
                }
                applied += 1;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "Cannot remove an applied pending settlement file: it will apply again");
            }
        }
        Ok(applied)
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

/// How one settlement's retries ended.
enum Outcome {
    Applied,
    /// Every attempt failed.
    GaveUp,
    /// The shutdown began while it was being retried (it failed at least once).
    Stopped,
}

/// The background settlement writer.
struct Writer {
    con: ConnectionManager,
    script: Script,
    prefix: String,
    pending_dir: Option<PathBuf>,
}

impl Writer {
    /// Applies queued settlements in order, each retried with backoff; a settlement that
    /// still fails goes to the pending directory. When the shutdown begins (`stop` carries
    /// its deadline), the queue is closed and drained with one attempt each until Redis
    /// fails once or the deadline passes; everything left then goes to the pending
    /// directory in one file.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Settlement>,
        mut stop: watch::Receiver<Option<Instant>>,
    ) {
        let mut left = Vec::new();
        loop {
            let s = tokio::select! {
                s = rx.recv() => match s { Some(s) => s, None => return },
                _ = stop.changed() => break,
            };
            match self.settle_with_retries(&s, &mut stop).await {
                Outcome::Applied => {}
                Outcome::GaveUp => self.keep(vec![s]).await,
                Outcome::Stopped => {
                    left.push(s);
                    break;
                }
            }
        }
        rx.close();
        let deadline = stop.borrow().unwrap_or_else(Instant::now);
        let started = Instant::now();
        // A settlement that was failing when the shutdown began says Redis is away.
        let mut reachable = left.is_empty();
        let mut applied = 0u64;
        while let Some(s) = rx.recv().await {
            if reachable {
                match tokio::time::timeout_at(
                    deadline,
                    apply(&mut self.con, &self.script, &self.prefix, &s),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        applied += 1;
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "Redis failed a settlement at shutdown: the rest goes to the pending directory");
                    }
                    Err(_) => {
                        tracing::warn!("The shutdown's flush bound passed while settling in Redis: the rest goes to the pending directory");
                    }
                }
                reachable = false;
            }
            left.push(s);
        }
        tracing::info!(
            applied,
            left = left.len(),
            took_ms = started.elapsed().as_millis(),
            "Budget settlements flushed"
        );
        if !left.is_empty() {
            self.keep(left).await;
        }
    }

    async fn settle_with_retries(
        &mut self,
        s: &Settlement,
        stop: &mut watch::Receiver<Option<Instant>>,
    ) -> Outcome {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=SETTLE_ATTEMPTS {
            let e = match apply(&mut self.con, &self.script, &self.prefix, s).await {
                Ok(_) => return Outcome::Applied,
                Err(e) => e,
            };
            if attempt == SETTLE_ATTEMPTS {
                tracing::error!(error = %e, reserved = %s.reserved, actual = %s.actual, "Gave up settling a budget reservation in Redis");
                return Outcome::GaveUp;
            }
            if stop.borrow().is_some() {
                return Outcome::Stopped;
            }
            tracing::warn!(error = %e, attempt, "Settling a budget reservation in Redis failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return Outcome::Stopped,
            }
            delay *= 2;
        }
        Outcome::GaveUp
    }

    /// Writes settlements Redis did not take to the pending directory (or logs them lost).
    async fn keep(&self, settlements: Vec<Settlement>) {
        let n = settlements.len();
        let reserved: Picodollars = settlements.iter().map(|s| s.reserved).sum();
        let actual: Picodollars = settlements.iter().map(|s| s.actual).sum();
        let Some(dir) = self.pending_dir.clone() else {
            tracing::error!(settlements = n, reserved = %reserved, actual = %actual, "Budget settlements Redis did not take are lost (no budgets.redis.pending_dir): their reservations stay held until their lines expire");
            return;
        };
        match tokio::task::spawn_blocking(move || pending::write(&dir, &settlements)).await {
            Ok(Ok(path)) => {
                tracing::warn!(settlements = n, reserved = %reserved, actual = %actual, path = %path.display(), "Wrote budget settlements Redis did not take; the next start applies them");
            }
            Ok(Err(e)) => {
                tracing::error!(settlements = n, reserved = %reserved, actual = %actual, error = %e, "Cannot write budget settlements Redis did not take: they are lost");
            }
            Err(e) => {
                tracing::error!(settlements = n, error = %e, "The pending settlement write failed: they are lost");
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
        self.flush_within(FLUSH_BOUND)
    }

    fn flush_within(&self, within: Duration) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + within;
            let _ = self.stop.send(Some(deadline));
            let writer = match self.writer.lock() {
                Ok(mut w) => w.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(mut w) = writer {
                // The writer keeps to the deadline itself; the pending file's write gets a
                // moment past it, and no more.
                match tokio::time::timeout_at(deadline + Duration::from_secs(2), &mut w).await {
                    Ok(joined) => joined
                        .map_err(|e| LedgerError::Unavailable(format!("settlement writer: {e}")))?,
                    Err(_) => {
                        w.abort();
                        return Err(LedgerError::Unavailable(
                            "the settlement writer did not finish within the flush bound"
                                .to_owned(),
                        ));
                    }
                }
            }
            Ok(())
        })
    }
}
