//! Spending budgets: which budgets apply to a request, the ledger that holds spend per scope
//! and period, and the reservation that ties one request's estimate to its settlement.
//!
//! A request reserves its estimated cost on every budget that applies to it, all or none,
//! before it goes upstream; a hard budget refuses a reservation that does not fit whole
//! (`spent + reserved + estimate > limit`). When the response ends the reservation is settled
//! with the real cost, or refunded when nothing was produced. A [`Reservation`] settles or
//! refunds exactly once: dropping it unsettled refunds it, so a stream that is cut never leaks
//! a reservation.
//!
//! Spend is kept per *line*: scope (key, team, tenant, end user), the scope's member and the
//! period it falls in (UTC calendar day, ISO week, month, or all time). Several budgets on
//! the same line (a soft and a hard one) share its spend.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use time::{Date, Duration, OffsetDateTime, Time};

use crate::pricing::Picodollars;

/// Who a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One virtual key.
    Key,
    /// A team (the `team` of keys).
    Team,
    /// A tenant (the `tenant` of keys).
    Tenant,
    /// An end user of the client application (header or the body's `user`).
    EndUser,
}

impl Scope {
    /// The label used in ledger lines, errors and headers.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Team => "team",
            Scope::Tenant => "tenant",
            Scope::EndUser => "end_user",
        }
    }
}

/// The period a budget's spend is counted over (UTC calendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// From 00:00 UTC to the next.
    Daily,
    /// From Monday 00:00 UTC (ISO week).
    Weekly,
    /// From the first of the month, 00:00 UTC.
    Monthly,
    /// Forever.
    Total,
}

impl Period {
    /// The label used in errors and headers.
    pub fn label(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }

    /// The start of the period holding `now`; `None` for [`Period::Total`].
    pub fn start(self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let day = now.to_offset(time::UtcOffset::UTC).date();
        let first: Date = match self {
            Period::Daily => day,
            Period::Weekly => {
                day - Duration::days(i64::from(day.weekday().number_days_from_monday()))
            }
            Period::Monthly => day.replace_day(1).unwrap_or(day),
            Period::Total => return None,
        };
        Some(first.with_time(Time::MIDNIGHT).assume_utc())
    }

    /// The end (exclusive) of the period holding `now`; `None` for [`Period::Total`].
    pub fn end(self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let start = self.start(now)?;
        Some(match self {
            Period::Daily => start + Duration::days(1),
            Period::Weekly => start + Duration::days(7),
            Period::Monthly => {
                let d = start.date();
                let (y, m) = match d.month() {
                    time::Month::December => (d.year() + 1, time::Month::January),
                    other => (d.year(), other.next()),
                };
                Date::from_calendar_date(y, m, 1).map_or(start + Duration::days(31), |n| {
                    n.with_time(Time::MIDNIGHT).assume_utc()
                })
            }
            Period::Total => return None,
        })
    }

    /// A name for the period holding `now`, part of its ledger line: `d2026-11-24`,
    /// `w2026-11-23` (the Monday), `m2026-11`, `total`.
    pub fn instance(self, now: OffsetDateTime) -> String {
        match self.start(now) {
            None => "total".to_owned(),
            Some(s) => {
                let d = s.date();
                match self {
                    Period::Daily => format!("d{d}"),
                    Period::Weekly => format!("w{d}"),
                    Period::Monthly => format!("m{:04}-{:02}", d.year(), u8::from(d.month())),
                    Period::Total => "total".to_owned(),
                }
            }
        }
    }
}

/// A validated budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The budget's id in the config (shown in `GET /v1/budget`, never to other keys).
    pub id: String,
    /// Who it limits.
    pub scope: Scope,
    /// The one member it limits; `None`: every member of the scope, each on its own.
    pub member: Option<String>,
    /// The period.
    pub period: Period,
    /// The limit.
    pub limit: Picodollars,
    /// Hard budgets refuse; soft ones only flag.
    pub hard: bool,
}

/// Who a request belongs to, for picking its budgets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner<'a> {
    /// The key's id.
    pub key: &'a str,
    /// The key's team.
    pub team: Option<&'a str>,
    /// The key's tenant.
    pub tenant: Option<&'a str>,
    /// The end user, when the request names one.
    pub end_user: Option<&'a str>,
}

impl<'a> Owner<'a> {
    /// The owner's member of `scope`, if it has one.
    pub fn member(&self, scope: Scope) -> Option<&'a str> {
        match scope {
            Scope::Key => Some(self.key),
            Scope::Team => self.team,
            Scope::Tenant => self.tenant,
            Scope::EndUser => self.end_user,
        }
        .filter(|m| !m.is_empty())
    }
}

/// The ledger line of a scope member in the period holding `now`.
pub fn line_key(scope: Scope, period: Period, member: &str, now: OffsetDateTime) -> String {
    format!("{}:{}:{}", scope.label(), period.instance(now), member)
}

/// One budget as it applies to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The ledger line (`tenant:m2026-11:acme`).
    pub key: String,
    /// The budget's limit.
    pub limit: Picodollars,
    /// Whether it refuses.
    pub hard: bool,
    /// The budget's scope.
    pub scope: Scope,
    /// The budget's period.
    pub period: Period,
    /// The budget's id.
    pub budget: String,
    /// When the period ends (`None`: never).
    pub ends: Option<OffsetDateTime>,
}

/// Budgets as the JSON text that carries a control-plane key's budgets from ext_authz to
/// ext_proc in dynamic metadata (limits in picodollars, exact).
pub fn budgets_to_json(budgets: &[Budget]) -> String {
    let list: Vec<serde_json::Value> = budgets
        .iter()
        .map(|b| {
            serde_json::json!({
                "id": b.id,
                "scope": b.scope.label(),
                "member": b.member,
                "period": b.period.label(),
                "limit": b.limit.to_string(),
                "hard": b.hard,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// Reads [`budgets_to_json`]'s text back; `None` when it is not that.
pub fn budgets_from_json(text: &str) -> Option<Vec<Budget>> {
    #[derive(Deserialize)]
    struct Wire {
        id: String,
        scope: Scope,
        member: Option<String>,
        period: Period,
        limit: String,
        hard: bool,
    }
    let wire: Vec<Wire> = serde_json::from_str(text).ok()?;
    wire.into_iter()
        .map(|w| {
            Some(Budget {
                id: w.id,
                scope: w.scope,
                member: w.member,
                period: w.period,
                limit: w.limit.parse().ok()?,
                hard: w.hard,
            })
        })
        .collect()
}

/// The lines of every budget in `budgets` (the config's) and in `extra` (the key's own, from
/// the control plane) that applies to `owner` at `now`.
pub fn lines_with(
    budgets: &[Budget],
    extra: &[Budget],
    owner: &Owner<'_>,
    now: OffsetDateTime,
) -> Vec<Line> {
    let mut out = lines(budgets, owner, now);
    if !extra.is_empty() {
        out.extend(lines(extra, owner, now));
    }
    out
}

/// The lines of every budget in `budgets` that applies to `owner` at `now`.
pub fn lines(budgets: &[Budget], owner: &Owner<'_>, now: OffsetDateTime) -> Vec<Line> {
    budgets
        .iter()
        .filter_map(|b| {
            let member = owner.member(b.scope)?;
            if b.member.as_deref().is_some_and(|m| m != member) {
                return None;
            }
            Some(Line {
                key: line_key(b.scope, b.period, member, now),
                limit: b.limit,
                hard: b.hard,
                scope: b.scope,
                period: b.period,
                budget: b.id.clone(),
                ends: b.period.end(now),
            })
        })
        .collect()
}

/// What a ledger holds for one line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    /// Settled spend.
    pub spent: Picodollars,
    /// Reserved by requests still in flight.
    pub reserved: Picodollars,
}

impl Balance {
    /// Spend plus reservations.
    pub fn committed(&self) -> Picodollars {
        self.spent.saturating_add(self.reserved)
    }
}

/// A ledger's answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Reserved on every line; the indexes of soft lines the reservation takes past their
    /// limit.
    Ok {
        /// Soft lines now over their limit.
        soft_exceeded: Vec<usize>,
    },
    /// Reserved on none: the index of a hard line it does not fit.
    Refused(usize),
}

/// Why a ledger could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The shared store is unreachable or failed.
    #[error("the budget ledger is unavailable: {0}")]
    Unavailable(String),
}

/// What a ledger call returns: a boxed future, so that `dyn Ledger` works with a shared
/// store that answers over the network.
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// Where spend is kept. One replica: [`MemoryLedger`]; many: [`RedisLedger`].
pub trait Ledger: Send + Sync + fmt::Debug {
    /// Reserves `amount` on every line, or on none when it does not fit a hard line
    /// (`spent + reserved + amount > limit`). Atomic with respect to every other call.
    fn reserve<'a>(&'a self, lines: &'a [Line], amount: Picodollars) -> LedgerFuture<'a, Reserved>;
    /// The balance of each line.
    fn balances<'a>(&'a self, keys: &'a [String]) -> LedgerFuture<'a, Vec<Balance>>;
    /// Adds `amount` of spend to every line of `keys` (spend kept without a reservation: a
    /// key's usage, spend restored at start-up).
    fn add_spent<'a>(&'a self, keys: &'a [String], amount: Picodollars) -> LedgerFuture<'a, ()>;
    /// Ends a reservation of `reserved` on `keys`: the reservation is released and `actual`
    /// added to the spend (0 for a refund). Never waits (it runs where a request's state is
    /// dropped): applied at once, or queued for a background writer.
    fn settle(&self, keys: Vec<String>, reserved: Picodollars, actual: Picodollars);
    /// Waits until every settlement handed to [`Ledger::settle`] is applied (at shutdown).
    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// [`Ledger::flush`] within `within`: a store that cannot apply everything by then keeps
    /// the rest where its next start finds it, and returns.
    fn flush_within(&self, within: std::time::Duration) -> LedgerFuture<'_, ()> {
        let _ = within;
        self.flush()
    }
}

/// One stored request's spend, as the logger recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend<'a> {
    /// Tollgate's request id (each counts once).
    pub request_id: &'a str,
    /// When the request started, unix nanoseconds.
    pub start_unix_nanos: i64,
    /// Who it belonged to.
    pub owner: Owner<'a>,
    /// What it cost.
    pub cost: Picodollars,
}

/// Every period a ledger restores.
const RESTORED_PERIODS: [Period; 4] = [
    Period::Daily,
    Period::Weekly,
    Period::Monthly,
    Period::Total,
];

/// The starts (unix nanoseconds, newest first, no repeats) of the periods holding `now` that
/// have one (`total` has none). A store that sums spend before handing it to
/// [`restored_lines`] may group requests by the newest of these at or before their start: a
/// sum stamped with that start lands in exactly the periods each of its requests would.
pub fn restored_period_starts(now: OffsetDateTime) -> Vec<i64> {
    let mut starts: Vec<i64> = RESTORED_PERIODS
        .iter()
        .filter_map(|p| p.start(now))
        .filter_map(|s| i64::try_from(s.unix_timestamp_nanos()).ok())
        .collect();
    starts.sort_unstable_by(|a, b| b.cmp(a));
    starts.dedup();
    starts
}

/// The spend per ledger line in the periods holding `now` (every scope member, every
/// period: the lines any budget and the key usage report read), from stored requests, each
/// request id counted once. What a ledger restores at start-up.
pub fn restored_lines<'a>(
    spends: impl IntoIterator<Item = Spend<'a>>,
    now: OffsetDateTime,
) -> HashMap<String, Picodollars> {
    const PERIODS: [Period; 4] = RESTORED_PERIODS;
    const SCOPES: [Scope; 4] = [Scope::Key, Scope::Team, Scope::Tenant, Scope::EndUser];
    let starts: Vec<(Period, i128)> = PERIODS
        .iter()
        .map(|p| {
            (
                *p,
                p.start(now).map_or(i128::MIN, |s| s.unix_timestamp_nanos()),
            )
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut lines: HashMap<String, Picodollars> = HashMap::new();
    for s in spends {
        if s.cost == 0 || !seen.insert(s.request_id) {
            continue;
        }
        for &(period, start) in &starts {
            if i128::from(s.start_unix_nanos) < start {
                continue;
            }
            for scope in SCOPES {
                if let Some(member) = s.owner.member(scope) {
                    let e = lines
                        .entry(line_key(scope, period, member, now))
                        .or_default();
                    *e = e.saturating_add(s.cost);
                }
            }
        }
    }
    lines
}

/// The index of the first hard line already at or past its limit (an admission precheck that
/// reserves nothing).
pub async fn precheck(ledger: &dyn Ledger, lines: &[Line]) -> Result<Option<usize>, LedgerError> {
    let hard: Vec<(usize, &Line)> = lines.iter().enumerate().filter(|(_, l)| l.hard).collect();
    if hard.is_empty() {
        return Ok(None);
    }
    let keys: Vec<String> = hard.iter().map(|(_, l)| l.key.clone()).collect();
    let balances = ledger.balances(&keys).await?;
    Ok(hard
        .iter()
        .zip(balances)
        .find(|((_, l), b)| b.committed() >= l.limit)
        .map(|((i, _), _)| *i))
}

/// The in-process ledger of one replica: a map of lines under one lock. Lines of past
/// periods are dropped once nothing is reserved on them and the map is large.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    lines: Mutex<HashMap<String, Balance>>,
}

/// Past this many lines, settled lines of finished periods are dropped on the next insert.
const PRUNE_ABOVE: usize = 100_000;

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Balance>> {
        match self.lines.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl MemoryLedger {
    fn reserve_now(&self, lines: &[Line], amount: Picodollars) -> Reserved {
        let mut map = self.map();
        let mut soft_exceeded = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let after = map
                .get(&line.key)
                .copied()
                .unwrap_or_default()
                .committed()
                .saturating_add(amount);
            if after > line.limit {
                if line.hard {
                    return Reserved::Refused(i);
                }
                soft_exceeded.push(i);
            }
        }
        if map.len() > PRUNE_ABOVE {
            let now = OffsetDateTime::now_utc();
            let current: Vec<String> = [Period::Daily, Period::Weekly, Period::Monthly]
                .iter()
                .map(|p| p.instance(now))
                .collect();
            map.retain(|k, b| {
                b.reserved > 0 || k.contains(":total:") || current.iter().any(|c| k.contains(c))
            });
        }
        // Two budgets may share a ledger line (a soft and a hard one on the same scope,
        // period and member): each is checked, the line is reserved on once.
        for key in distinct_keys(lines) {
            let b = map.entry(key).or_default();
            b.reserved = b.reserved.saturating_add(amount);
        }
        Reserved::Ok { soft_exceeded }
    }

    /// Balances, read at once (for tests and tools).
    pub fn balances_now(&self, keys: &[String]) -> Vec<Balance> {
        let map = self.map();
        keys.iter()
            .map(|k| map.get(k).copied().unwrap_or_default())
            .collect()
    }
}

impl Ledger for MemoryLedger {
    fn reserve<'a>(&'a self, lines: &'a [Line], amount: Picodollars) -> LedgerFuture<'a, Reserved> {
        let r = self.reserve_now(lines, amount);
        Box::pin(std::future::ready(Ok(r)))
    }

    fn balances<'a>(&'a self, keys: &'a [String]) -> LedgerFuture<'a, Vec<Balance>> {
        let b = self.balances_now(keys);
        Box::pin(std::future::ready(Ok(b)))
    }

    fn add_spent<'a>(&'a self, keys: &'a [String], amount: Picodollars) -> LedgerFuture<'a, ()> {
        let mut map = self.map();
        for k in keys {
            let b = map.entry(k.clone()).or_default();
            b.spent = b.spent.saturating_add(amount);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn settle(&self, keys: Vec<String>, reserved: Picodollars, actual: Picodollars) {
        let mut map = self.map();
        for k in keys {
            let b = map.entry(k).or_default();
            b.reserved = b.reserved.saturating_sub(reserved);
            b.spent = b.spent.saturating_add(actual);
        }
    }
}

/// One request's reservation: settled or refunded exactly once. Dropping it unsettled
/// refunds it.
pub struct Reservation {
    ledger: Arc<dyn Ledger>,
    keys: Vec<String>,
    amount: Picodollars,
    done: bool,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("keys", &self.keys)
            .field("amount", &self.amount)
            .field("done", &self.done)
            .finish()
    }
}

/// The ledger lines of `lines`, each once, in order (budgets may share a line).
pub fn distinct_keys(lines: &[Line]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(lines.len());
    for l in lines {
        if !keys.contains(&l.key) {
            keys.push(l.key.clone());
        }
    }
    keys
}

/// A reservation attempt's outcome.
#[derive(Debug)]
pub enum Admission {
    /// Reserved; the soft lines it takes past their limit.
    Admitted(Reservation, Vec<Line>),
    /// Refused by this hard line.
    Refused(Line),
}

impl Reservation {
    /// Reserves `amount` on every line of `lines`, all or none.
    pub async fn reserve(
        ledger: &Arc<dyn Ledger>,
        lines: Vec<Line>,
        amount: Picodollars,
    ) -> Result<Admission, LedgerError> {
        match ledger.reserve(&lines, amount).await? {
            Reserved::Refused(i) => {
                let line = lines
                    .into_iter()
                    .nth(i)
                    .ok_or_else(|| LedgerError::Unavailable("bad line index".to_owned()))?;
                Ok(Admission::Refused(line))
            }
            Reserved::Ok { soft_exceeded } => {
                // Settled once per ledger line, however many budgets share it.
                let keys = distinct_keys(&lines);
                let soft = lines
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| soft_exceeded.contains(i))
                    .map(|(_, l)| l)
                    .collect();
                Ok(Admission::Admitted(
                    Reservation {
                        ledger: Arc::clone(ledger),
                        keys,
                        amount,
                        done: false,
                    },
                    soft,
                ))
            }
        }
    }

    /// The amount reserved.
    pub fn amount(&self) -> Picodollars {
        self.amount
    }

    /// The ledger lines it holds.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The ledger it was made on.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Replaces the reservation with the real cost.
    pub fn settle(mut self, actual: Picodollars) {
        self.finish(actual);
    }

    /// Gives the whole reservation back.
    pub fn refund(mut self) {
        self.finish(0);
    }

    fn finish(&mut self, actual: Picodollars) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.ledger
            .settle(std::mem::take(&mut self.keys), self.amount, actual);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(0);
    }
}

pub mod pending;
mod redis;
pub use self::redis::RedisLedger;

#[cfg(test)]
mod tests;
