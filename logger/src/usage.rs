//! Spend and tokens read back from what the logger stored (`tollgate usage`): grouped by any of
//! day (UTC, from the request's start time), tenant, key and model (the public model the client
//! asked for), over an optional range of days, from the NDJSON data directory or from
//! ClickHouse. Spend is summed from the exact integer `cost_picodollars`, never from the
//! float `cost_usd`, and printed as USD with all twelve decimals.
//!
//! Every event counts once: NDJSON lines are deduplicated on `request_id` here as well as in the
//! sink, and ClickHouse queries deduplicate explicitly (`GROUP BY request_id` in a subquery),
//! because a `ReplacingMergeTree` only drops duplicate rows when it happens to merge.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;
use time::Date;

use crate::clickhouse::ClickHouseConfig;
use crate::error::LoggerError;
use crate::record::Record;

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;
const PICO_PER_USD: u128 = 1_000_000_000_000;

/// What a row is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The UTC day the request started.
    Day,
    /// The key's tenant.
    Tenant,
    /// The virtual key's id.
    Key,
    /// The public model name the client asked for.
    Model,
}

impl Dimension {
    /// The column name in tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Dimension::Day => "day",
            Dimension::Tenant => "tenant",
            Dimension::Key => "key",
            Dimension::Model => "model",
        }
    }

    /// Parses `day`, `tenant`, `key` or `model`.
    pub fn parse(s: &str) -> Result<Dimension, String> {
        match s.trim() {
            "day" => Ok(Dimension::Day),
            "tenant" => Ok(Dimension::Tenant),
            "key" => Ok(Dimension::Key),
            "model" => Ok(Dimension::Model),
            other => Err(format!(
                "`{other}` is not a grouping: use day, tenant, key or model"
            )),
        }
    }

    fn of(self, r: &Record) -> String {
        match self {
            Dimension::Day => day_label(day_of(r.start_time_unix_nanos)),
            Dimension::Tenant => r.tenant.clone(),
            Dimension::Key => r.key_id.clone(),
            Dimension::Model => r.requested_model.clone(),
        }
    }
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// Grouping, in column order; empty for one total.
    pub by: Vec<Dimension>,
    /// First day included (UTC).
    pub from: Option<Date>,
    /// Last day included (UTC).
    pub to: Option<Date>,
}

impl UsageQuery {
    /// Checks the grouping has no repeats and the range is not reversed.
    pub fn validate(&self) -> Result<(), LoggerError> {
        let mut seen = HashSet::new();
        for d in &self.by {
            if !seen.insert(*d) {
                return Err(LoggerError::Query(format!(
                    "--by names `{}` twice",
                    d.label()
                )));
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(LoggerError::Query(format!(
                    "--from {from} is after --to {to}"
                )));
            }
        }
        Ok(())
    }

    /// The start-time range `[lo, hi)` in unix nanoseconds.
    fn nanos_range(&self) -> (i64, i64) {
        let lo = self
            .from
            .map_or(i64::MIN, |d| day_number(d).saturating_mul(NANOS_PER_DAY));
        let hi = self.to.map_or(i64::MAX, |d| {
            day_number(d)
                .saturating_add(1)
                .saturating_mul(NANOS_PER_DAY)
        });
        (lo, hi)
    }
}

/// Sums over a group of requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests (refused ones included).
    pub requests: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from a cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to a cache.
    pub cache_write_tokens: u64,
    /// Generated tokens spent on reasoning.
    pub reasoning_tokens: u64,
    /// Exact spend, picodollars (10⁻¹² USD).
    pub cost_picodollars: u128,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(o.cache_read_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(o.cache_write_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(o.reasoning_tokens);
        self.cost_picodollars = self.cost_picodollars.saturating_add(o.cost_picodollars);
    }

    fn of(r: &Record) -> Totals {
        Totals {
            requests: 1,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_picodollars: u128::from(r.cost_picodollars),
        }
    }
}

/// One group's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The group's values, one per dimension of the query, in its order.
    pub group: Vec<String>,
    /// Its sums.
    pub totals: Totals,
}

/// The answer: rows sorted by group, and the grand total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    /// The grouping.
    pub by: Vec<Dimension>,
    /// One row per group.
    pub rows: Vec<UsageRow>,
    /// Sum of every row.
    pub total: Totals,
}

impl UsageReport {
    fn from_groups(by: &[Dimension], groups: BTreeMap<Vec<String>, Totals>) -> UsageReport {
        let mut total = Totals::default();
        let rows = groups
            .into_iter()
            .filter(|(_, t)| t.requests > 0)
            .map(|(group, totals)| {
                total.add(&totals);
                UsageRow { group, totals }
            })
            .collect();
        UsageReport {
            by: by.to_vec(),
            rows,
            total,
        }
    }
}

/// Days since 1970-01-01 (UTC) of a unix-nanosecond time.
fn day_of(nanos: i64) -> i64 {
    nanos.div_euclid(NANOS_PER_DAY)
}

pub(crate) fn day_number(d: Date) -> i64 {
    i64::from(d.to_julian_day()) - i64::from(time::macros::date!(1970 - 01 - 01).to_julian_day())
}

pub(crate) fn day_label(days: i64) -> String {
    let epoch = time::macros::date!(1970 - 01 - 01).to_julian_day();
    i32::try_from(days)
        .ok()
        .and_then(|d| d.checked_add(epoch))
        .and_then(|j| Date::from_julian_day(j).ok())
        .map_or_else(|| format!("day {days}"), |d| d.to_string())
}

/// Groups records (already read) by the query, counting each `request_id` once.
pub fn summarise<'a>(records: impl IntoIterator<Item = &'a Record>, q: &UsageQuery) -> UsageReport {
    let (lo, hi) = q.nanos_range();
    let mut seen = HashSet::new();
    let mut groups: BTreeMap<Vec<String>, Totals> = BTreeMap::new();
    for r in records {
        if !(lo..hi).contains(&r.start_time_unix_nanos) || !seen.insert(r.request_id.as_str()) {
            continue;
        }
        let key = q.by.iter().map(|d| d.of(r)).collect();
        groups.entry(key).or_default().add(&Totals::of(r));
    }
    UsageReport::from_groups(&q.by, groups)
}

/// Reads the NDJSON sink's files under `dir`. Blocking.
pub fn from_ndjson(dir: &Path, q: &UsageQuery) -> Result<UsageReport, LoggerError> {
    q.validate()?;
    if !dir.is_dir() {
        return Err(LoggerError::Query(format!(
            "--data-dir {} is not a directory",
            dir.display()
        )));
    }
    let records = crate::ndjson::read_records(dir)?;
    Ok(summarise(&records, q))
}

/// Which ClickHouse table answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickHouseSource {
    /// The requests table, deduplicated on `request_id` in the query: exact whatever merges
    /// have or have not happened.
    Requests,
    /// The daily rollup (`<table>_daily`, a `SummingMergeTree` fed on insert): fast, exact as
    /// long as no duplicate insert reached the requests table (see the README).
    Rollup,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct ChRow {
    day: String,
    tenant: String,
    key_id: String,
    model: String,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    reasoning_tokens: u64,
    /// A `Decimal128(0)`, read as its binary `Int128`: ClickHouse 18.16's `toString` of a
    /// `Decimal128` of 22 digits or more garbles it (a `0` digit comes out as a NUL byte).
    cost_picodollars: i128,
}

/// The SQL of a usage query (placeholders: the range's bounds, as days since 1970-01-01 for
/// the rollup, as unix nanoseconds for the requests table).
pub fn clickhouse_sql(table: &str, source: ClickHouseSource, by: &[Dimension]) -> String {
    let day_of_start = format!("toString({})", crate::clickhouse::DAY_OF_START);
    let (day, tenant, key, model) = match source {
        ClickHouseSource::Requests => (day_of_start.as_str(), "tenant_", "key_", "model_"),
        ClickHouseSource::Rollup => ("toString(day)", "tenant", "key_id", "model"),
    };
    let pick = |d: Dimension, expr: &str| {
        if by.contains(&d) {
            expr.to_owned()
        } else {
            "''".to_owned()
        }
    };
    let dims = format!(
        "{} AS day_, {} AS tenant_out, {} AS key_out, {} AS model_out",
        pick(Dimension::Day, day),
        pick(Dimension::Tenant, tenant),
        pick(Dimension::Key, key),
        pick(Dimension::Model, model)
    );
    let group = "GROUP BY day_, tenant_out, key_out, model_out ORDER BY day_, tenant_out, key_out, model_out";
    match source {
        ClickHouseSource::Requests => format!(
            "SELECT {dims}, count() AS requests, sum(input_) AS input_tokens, sum(output_) AS output_tokens, \
             sum(cache_read_) AS cache_read_tokens, sum(cache_write_) AS cache_write_tokens, \
             sum(reasoning_) AS reasoning_tokens, sum(toDecimal128(cost_, 0)) AS cost_picodollars \
             FROM {} {group}",
            crate::clickhouse::deduplicated(
                table,
                "WHERE start_time_unix_nanos >= ? AND start_time_unix_nanos < ?"
            )
        ),
        ClickHouseSource::Rollup => format!(
            "SELECT {dims}, sum(requests) AS requests, sum(input_tokens) AS input_tokens, \
             sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens, \
             sum(cache_write_tokens) AS cache_write_tokens, sum(reasoning_tokens) AS reasoning_tokens, \
             sum(cost_picodollars) AS cost_picodollars \
             FROM {table}_daily WHERE toUInt16(day) >= ? AND toUInt16(day) <= ? {group}"
        ),
    }
}

/// Reads ClickHouse (the database and table of `config`).
pub async fn from_clickhouse(
    config: &ClickHouseConfig,
    source: ClickHouseSource,
    q: &UsageQuery,
) -> Result<UsageReport, LoggerError> {
    q.validate()?;
    config.validate()?;
    let client = crate::clickhouse::client(config).with_database(&config.database);
    let sql = clickhouse_sql(&config.table, source, &q.by);
    let query = match source {
        ClickHouseSource::Requests => {
            let (lo, hi) = q.nanos_range();
            client.query(&sql).bind(lo).bind(hi)
        }
        ClickHouseSource::Rollup => {
            // A `Date` is a UInt16 of days since 1970-01-01.
            let day = |d: Option<Date>, none: i64| d.map_or(none, day_number).clamp(0, 65_535);
            client
                .query(&sql)
                .bind(day(q.from, 0))
                .bind(day(q.to, 65_535))
        }
    };
    let rows = query
        .fetch_all::<ChRow>()
        .await
        .map_err(|e| LoggerError::ClickHouse(e.to_string()))?;
    let mut groups = BTreeMap::new();
    for r in rows {
        let cost = u128::try_from(r.cost_picodollars).map_err(|_| {
            LoggerError::ClickHouse(format!("a spend sum is negative: {}", r.cost_picodollars))
        })?;
        let group =
            q.by.iter()
                .map(|d| match d {
                    Dimension::Day => r.day.clone(),
                    Dimension::Tenant => r.tenant.clone(),
                    Dimension::Key => r.key_id.clone(),
                    Dimension::Model => r.model.clone(),
                })
                .collect();
        let t = Totals {
            requests: r.requests,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cache_read_tokens: r.cache_read_tokens,
            cache_write_tokens: r.cache_write_tokens,
            reasoning_tokens: r.reasoning_tokens,
            cost_picodollars: cost,
        };
        groups.entry(group).or_insert_with(Totals::default).add(&t);
    }
    Ok(UsageReport::from_groups(&q.by, groups))
}

/// The summed spend of one owner (key, team, tenant, end user) over the requests that started
/// in one span between period starts (what `serve` restores its ledger from).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, clickhouse::Row)]
pub struct OwnerSpend {
    /// The virtual key's id.
    pub key_id: String,
    /// The key's team ("" when none).
    pub team: String,
    /// The key's tenant ("" when none).
    pub tenant: String,
    /// The end user ("" when none).
    pub end_user: String,
    /// The newest of the given period starts at or before these requests' starts; `i64::MIN`
    /// for requests older than all of them.
    pub since: i64,
    /// Exact spend, picodollars: a `Decimal128(0)` read as its binary `Int128` (see [`ChRow`]).
    pub cost_picodollars: i128,
}

/// The SQL of [`spend_since`]: the requests table deduplicated on `request_id`, summed per
/// owner and per span between `starts` (unix nanoseconds, newest first).
pub fn spend_since_sql(table: &str, starts: &[i64]) -> String {
    let mut since = String::from("multiIf(");
    for s in starts {
        let _ = write!(since, "start_ns >= toInt64({s}), toInt64({s}), ");
    }
    let _ = write!(since, "toInt64('{}'))", i64::MIN);
    if starts.is_empty() {
        since = format!("toInt64('{}')", i64::MIN);
    }
    format!(
        "SELECT key_, team_, tenant_, end_user_, {since} AS since, \
         sum(toDecimal128(cost_, 0)) AS cost FROM {} \
         WHERE cost_ > 0 GROUP BY key_, team_, tenant_, end_user_, since",
        crate::clickhouse::deduplicated(table, "")
    )
}

/// Reads the spend of every owner from ClickHouse (the database and table of `config`), each
/// `request_id` once, summed per span between `starts` (newest first; see [`OwnerSpend`]). A
/// table that does not exist yet holds no spend.
pub async fn spend_since(
    config: &ClickHouseConfig,
    starts: &[i64],
) -> Result<Vec<OwnerSpend>, LoggerError> {
    config.validate()?;
    let client = crate::clickhouse::client(config);
    let exists: u8 = client
        .query(&format!(
            "EXISTS TABLE {}.{}",
            config.database, config.table
        ))
        .fetch_one()
        .await
        .map_err(crate::clickhouse::ch)?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let rows = client
        .with_database(&config.database)
        .query(&spend_since_sql(&config.table, starts))
        .fetch_all::<OwnerSpend>()
        .await
        .map_err(crate::clickhouse::ch)?;
    if let Some(r) = rows.iter().find(|r| r.cost_picodollars < 0) {
        return Err(LoggerError::ClickHouse(format!(
            "a spend sum is negative: {}",
            r.cost_picodollars
        )));
    }
    Ok(rows)
}

/// Picodollars as USD with all twelve decimals (`1234500000` → `0.001234500000`).
pub fn format_usd(pico: u128) -> String {
    format!("{}.{:012}", pico / PICO_PER_USD, pico % PICO_PER_USD)
}

/// The report as an aligned table: group columns left-aligned, numbers right-aligned, then a
/// `total` line.
pub fn render_table(r: &UsageReport) -> String {
    let mut header: Vec<String> = r.by.iter().map(|d| d.label().to_owned()).collect();
    header.extend(
        ["requests", "input_tokens", "output_tokens", "cost_usd"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let nums = |t: &Totals| {
        vec![
            t.requests.to_string(),
            t.input_tokens.to_string(),
            t.output_tokens.to_string(),
            format_usd(t.cost_picodollars),
        ]
    };
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in &r.rows {
        let mut l: Vec<String> = row
            .group
            .iter()
            .map(|g| {
                if g.is_empty() {
                    "-".to_owned()
                } else {
                    g.clone()
                }
            })
            .collect();
        l.extend(nums(&row.totals));
        lines.push(l);
    }
    let mut total: Vec<String> = r.by.iter().map(|_| String::new()).collect();
    if let Some(first) = total.first_mut() {
        "total".clone_into(first);
    }
    total.extend(nums(&r.total));
    lines.push(total);
    let cols = r.by.len() + 4;
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (c, (cell, w)) in l.iter().zip(&widths).enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            if c < r.by.len() {
                let _ = write!(line, "{cell:<w$}");
            } else {
                let _ = write!(line, "{cell:>w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn totals_json(t: &Totals) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("requests".into(), t.requests.into());
    m.insert("input_tokens".into(), t.input_tokens.into());
    m.insert("output_tokens".into(), t.output_tokens.into());
    m.insert("cache_read_tokens".into(), t.cache_read_tokens.into());
    m.insert("cache_write_tokens".into(), t.cache_write_tokens.into());
    m.insert("reasoning_tokens".into(), t.reasoning_tokens.into());
    // Strings: a spend sum outgrows the 2^53 a JSON reader's double holds exactly at ≈ 9007 USD.
    m.insert(
        "cost_picodollars".into(),
        t.cost_picodollars.to_string().into(),
    );
    m.insert("cost_usd".into(), format_usd(t.cost_picodollars).into());
    m
}

/// The report as one JSON object: `{"by": [...], "rows": [{<dimension>: ..., <sums>}], "total":
/// {<sums>}}`; spend as strings (`cost_picodollars` exact, `cost_usd` with twelve decimals).
pub fn render_json(r: &UsageReport) -> String {
    let rows: Vec<serde_json::Value> = r
        .rows
        .iter()
        .map(|row| {
            let mut m = serde_json::Map::new();
            for (d, g) in r.by.iter().zip(&row.group) {
                m.insert(d.label().into(), g.clone().into());
            }
            m.extend(totals_json(&row.totals));
            serde_json::Value::Object(m)
        })
        .collect();
    let by: Vec<&str> = r.by.iter().map(|d| d.label()).collect();
    let v = serde_json::json!({
        "by": by,
        "rows": rows,
        "total": totals_json(&r.total),
    });
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, day: i64, tenant: &str, key: &str, model: &str, cost: u64) -> Record {
        Record::from(&tollgate_proto::logger::v1::LogEvent {
            request_id: id.into(),
            start_time_unix_nanos: day * NANOS_PER_DAY + 5,
            key_id: key.into(),
            tenant: tenant.into(),
            client_api: "openai".into(),
            endpoint: "chat_completions".into(),
            requested_model: model.into(),
            http_status: 200,
            usage: Some(tollgate_proto::logger::v1::Usage {
                input_tokens: 10,
                output_tokens: 20,
                source: tollgate_proto::logger::v1::UsageSource::Provider.into(),
                ..Default::default()
            }),
            cost_picodollars: cost,
            ..Default::default()
        })
    }

    #[test]
    fn usd_keeps_every_picodollar() {
        assert_eq!(format_usd(0), "0.000000000000");
        assert_eq!(format_usd(1), "0.000000000001");
        assert_eq!(format_usd(1_234_500_000_000), "1.234500000000");
        assert_eq!(
            format_usd(u128::from(u64::MAX) * 3),
            "55340232.221128654845"
        );
    }

    #[test]
    fn groups_count_each_request_once_and_respect_the_day_range() {
        let d = day_number(time::macros::date!(2026 - 11 - 23));
        let recs = vec![
            rec("a", d, "acme", "k1", "gpt", u64::MAX),
            rec("a", d, "acme", "k1", "gpt", u64::MAX),
            rec("b", d, "acme", "k1", "gpt", u64::MAX),
            rec("c", d + 1, "acme", "k2", "gpt", 7),
            rec("d", d - 1, "beta", "k3", "gpt", 9),
        ];
        let q = UsageQuery {
            by: vec![Dimension::Tenant, Dimension::Day],
            from: Some(time::macros::date!(2026 - 11 - 23)),
            to: Some(time::macros::date!(2026 - 11 - 24)),
        };
        let r = summarise(&recs, &q);
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].group, ["acme", "2026-11-23"]);
        assert_eq!(r.rows[0].totals.requests, 2);
        assert_eq!(r.rows[0].totals.cost_picodollars, 2 * u128::from(u64::MAX));
        assert_eq!(r.rows[1].group, ["acme", "2026-11-24"]);
        assert_eq!(r.total.requests, 3);
        assert_eq!(r.total.cost_picodollars, 2 * u128::from(u64::MAX) + 7);
    }

    #[test]
    fn a_repeated_dimension_or_a_reversed_range_is_refused() {
        let q = UsageQuery {
            by: vec![Dimension::Key, Dimension::Key],
            from: None,
            to: None,
        };
        assert!(q.validate().is_err());
        let q = UsageQuery {
            by: vec![],
            from: Some(time::macros::date!(2026 - 11 - 24)),
            to: Some(time::macros::date!(2026 - 11 - 23)),
        };
        assert!(q.validate().is_err());
    }
}
