//! The ClickHouse sink (ClickHouse's HTTP interface, `RowBinary`; the `clickhouse` crate with
//! schema validation off, which ClickHouse 18.16 needs). One row per event in a table it
//! creates when missing; a batch is acknowledged once ClickHouse has answered the `INSERT`
//! (the rows are in a part on disk by then).
//!
//! Idempotent on `request_id`, also between several loggers writing one table: the sink
//! serialises its own writes and looks up which ids of a batch the table already holds (so a
//! replay costs one lookup); the rest goes into this sink's own staging table (`Memory`
//! engine, `<table>_incoming_<instance>`), and from there into the table with
//! `INSERT … SELECT … WHERE request_id NOT IN (…)`, run in one ClickHouse HTTP session shared by
//! every writer of the table. ClickHouse runs one query at a time per session (another gets
//! `SESSION_IS_LOCKED`, and the sink retries), so that check-and-insert is atomic across loggers
//! and no id is ever inserted twice; this is what keeps the daily rollup, fed by a materialized
//! view on every insert, exact. The table is also a `ReplacingMergeTree` ordered by
//! `request_id`, and readers still deduplicate.

pub mod migrations;

use std::collections::HashSet;

use serde::Deserialize;
use tollgate_core::config::Secret;
use tollgate_proto::logger::v1::LogEvent;

use crate::error::LoggerError;
use crate::record::{EvaluationRecord, FeedbackRecord, Record};
use crate::sink::{Sink, WriteSummary};

/// Where the sink writes.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    /// ClickHouse's HTTP URL, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The database (created when missing).
    pub database: String,
    /// The table (created when missing).
    pub table: String,
    /// The user.
    pub user: String,
    /// The user's password, when it has one (from the environment, never a flag; never
    /// printed).
    pub password: Option<Secret>,
}

impl ClickHouseConfig {
    /// Checks the URL and that database and table are plain identifiers.
    pub fn validate(&self) -> Result<(), LoggerError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(LoggerError::Config(format!(
                "--clickhouse-url `{}` must start with http:// or https://",
                self.url
            )));
        }
        for (flag, name) in [
            ("--clickhouse-database", &self.database),
            ("--clickhouse-table", &self.table),
        ] {
            if !tollgate_core::config::plain_identifier(name) {
                return Err(LoggerError::Config(format!(
                    "{flag} `{name}` may use only letters, digits and `_`, and not start with a digit"
                )));
            }
        }
        Ok(())
    }
}

/// The table's DDL. No `DateTime64` in ClickHouse 18.16: times are unix nanoseconds, with a
/// `Date` column derived from the start time for partitioning.
pub fn create_table_sql(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table} (
    request_id String,
    start_time_unix_nanos Int64,
    first_token_time_unix_nanos Int64,
    end_time_unix_nanos Int64,
    key_id String,
    tenant String,
    team String,
    end_user String,
    client_api String,
    endpoint String,
    requested_model String,
    provider String,
    upstream_model String,
    stream UInt8,
    http_status UInt32,
    error_class String,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    reasoning_tokens UInt64,
    usage_source String,
    cost_usd Float64,
    cost_picodollars UInt64,
    gateway_overhead_ms Float64,
    upstream_latency_ms Float64,
    guardrail_verdicts Array(String),
    event_date Date DEFAULT toDate(intDiv(start_time_unix_nanos, 1000000000))
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY request_id"
    )
}

/// The feedback table's DDL (`<table>_feedback`, migration 3): one row per piece of feedback,
/// deduplicated on `feedback_id`; join it to the requests table on `request_id`.
pub fn create_feedback_table_sql(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}_feedback (
    feedback_id String,
    request_id String,
    time_unix_nanos Int64,
    key_id String,
    tenant String,
    score Nullable(Float64),
    label String,
    comment String,
    event_date Date DEFAULT toDate(intDiv(time_unix_nanos, 1000000000))
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY feedback_id"
    )
}

/// The evaluations table's DDL (`<table>_evaluations`, migration 9): one row per evaluator
/// per request, folded on (`request_id`, `evaluator`); readers still deduplicate.
pub fn create_evaluations_table_sql(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}_evaluations (
    request_id String,
    evaluator String,
    kind String,
    score Float64,
    passed UInt8,
    label String,
    reason String,
    error String,
    latency_ms Float64,
    time_unix_nanos Int64,
    request_time_unix_nanos Int64,
    key_id String,
    tenant String,
    model String,
    event_date Date DEFAULT toDate(intDiv(request_time_unix_nanos, 1000000000))
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (request_id, evaluator)"
    )
}

/// Columns added after the first release of the table, with their types.
const ADDED_COLUMNS: [(&str, &str); 1] = [("guardrail_verdicts", "Array(String)")];

/// The payload-capture columns (migration 4), with their types and defaults.
pub const PAYLOAD_COLUMNS: [(&str, &str); 10] = [
    ("payload_mode", "String DEFAULT 'off'"),
    ("request_bytes", "UInt64"),
    ("request_content_type", "String"),
    ("message_count", "UInt32"),
    ("tool_count", "UInt32"),
    ("response_bytes", "UInt64"),
    ("response_content_type", "String"),
    ("tool_call_count", "UInt32"),
    ("request_body", "String"),
    ("response_body", "String"),
];

/// The failover columns (migration 5): parallel arrays, one entry per attempt (ClickHouse
/// 18.16 has no JSON functions to read a nested document back).
pub const FAILOVER_COLUMNS: [(&str, &str); 5] = [
    ("attempt_providers", "Array(String)"),
    ("attempt_statuses", "Array(UInt32)"),
    ("answered_attempt", "UInt32"),
    ("attempt_latencies_ms", "Array(UInt32)"),
    ("attempt_errors", "Array(String)"),
];

/// The media units columns (migration 7).
pub const MEDIA_COLUMNS: [(&str, &str); 5] = [
    ("media_images", "UInt32"),
    ("media_image_size", "String"),
    ("media_image_quality", "String"),
    ("media_audio_ms", "UInt64"),
    ("media_characters", "UInt64"),
];
/// The rerank columns (migration 8).
pub const RERANK_COLUMNS: [(&str, &str); 1] = [("search_units", "UInt64")];
/// The response-cache columns (migration 6).
pub const CACHE_COLUMNS: [(&str, &str); 2] =
    [("cache", "String"), ("cache_source_request_id", "String")];

/// Adds each of `columns` that `database.table` lacks, in order. ClickHouse 18.16 has no
/// `ADD COLUMN IF NOT EXISTS`: `system.columns` says which exist.
pub(crate) async fn add_missing_columns(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
    columns: &[(&str, &str)],
) -> Result<(), LoggerError> {
    for (column, kind) in columns {
        let present = client
            .query(
                "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
            )
            .bind(database)
            .bind(table)
            .bind(*column)
            .fetch_one::<u64>()
            .await
            .map_err(ch)?;
        if present == 0 {
            client
                .query(&format!(
                    "ALTER TABLE {database}.{table} ADD COLUMN {column} {kind}"
                ))
                .execute()
                .await
                .map_err(ch)?;
            tracing::info!(column, "Added a column to the ClickHouse table");
        }
    }
    Ok(())
}

/// A client for `config`'s server (no database selected).
pub(crate) fn client(config: &ClickHouseConfig) -> clickhouse::Client {
    let client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_validation(false);
    match &config.password {
        Some(p) => client.with_password(p.expose()),
        None => client,
    }
}

/// Ids looked up per query.
const LOOKUP_CHUNK: usize = 1000;

/// The ClickHouse sink.
pub struct ClickHouseSink {
    client: clickhouse::Client,
    /// The same, in the session every writer of the table shares (see the module docs).
    locked: clickhouse::Client,
    database: String,
    table: String,
    staging: String,
    writes: tokio::sync::Mutex<()>,
}

/// ClickHouse's `SESSION_IS_LOCKED`: another query runs in the session.
const SESSION_IS_LOCKED: &str = "Code: 373,";

/// How long a write waits for the shared session before giving up (the sender retries).
const SESSION_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A name unique to this sink instance.
fn instance_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}_{nanos:x}_{n}", std::process::id())
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct StoredId {
    id: String,
}

/// The UTC day of `start_ns` (unix nanoseconds) as a `Date`, in any time zone the server has.
pub(crate) const DAY_OF_START: &str = "toDate(toUInt16(intDiv(start_ns, 86400000000000)))";

/// `table` with one row per `request_id` (`filter` is its `WHERE` clause, or empty): whatever
/// merges have or have not happened, a duplicate insert counts once. Columns: `request_id`,
/// `start_ns`, `tenant_`, `key_`, `model_` (the requested model), `input_`, `output_`,
/// `cache_read_`, `cache_write_`, `reasoning_`, `cost_` (picodollars).
pub(crate) fn deduplicated(table: &str, filter: &str) -> String {
    format!(
        "(SELECT request_id, any(start_time_unix_nanos) AS start_ns, any(tenant) AS tenant_, \
         any(key_id) AS key_, any(team) AS team_, any(end_user) AS end_user_, \
         any(requested_model) AS model_, any(input_tokens) AS input_, \
         any(output_tokens) AS output_, any(cache_read_tokens) AS cache_read_, \
         any(cache_write_tokens) AS cache_write_, any(reasoning_tokens) AS reasoning_, \
         any(cost_picodollars) AS cost_ FROM {table} {filter} GROUP BY request_id)"
    )
}

pub(crate) fn ch(e: clickhouse::error::Error) -> LoggerError {
    LoggerError::ClickHouse(e.to_string())
}

impl ClickHouseSink {
    /// Connects, and brings the schema up to date ([`migrations`]: the database, the table and its
    /// daily rollup, created when missing).
    pub async fn open(config: &ClickHouseConfig) -> Result<ClickHouseSink, LoggerError> {
        config.validate()?;
        let client = client(config);
        migrations::run(&client, &config.database, &config.table).await?;
        // Tables created before a column existed get it (columns are only ever added).
        add_missing_columns(&client, &config.database, &config.table, &ADDED_COLUMNS).await?;
        let client = client.with_database(&config.database);
        let staging = format!("{}_incoming_{}", config.table, instance_suffix());
        client
            .query(&format!(
                "CREATE TABLE IF NOT EXISTS {staging} AS {} ENGINE = Memory",
                config.table
            ))
            .execute()
            .await
            .map_err(ch)?;
        // `session_id` is an HTTP parameter, which the client sends its settings as.
        let locked = client.clone().with_setting(
            "session_id",
            format!("tollgate-writer-{}-{}", config.database, config.table),
        );
        tracing::info!(url = %config.url, database = %config.database, table = %config.table, "Opened ClickHouse sink");
        Ok(ClickHouseSink {
            client,
            locked,
            database: config.database.clone(),
            table: config.table.clone(),
            staging,
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Moves the staged rows whose ids the table does not hold yet into it.
    async fn insert_staged(&self) -> Result<(), LoggerError> {
        let (table, staging) = (&self.table, &self.staging);
        self.execute_locked(&format!(
            "INSERT INTO {table} SELECT * FROM {staging} WHERE request_id NOT IN \
             (SELECT request_id FROM {table} WHERE request_id IN (SELECT request_id FROM {staging}))"
        ))
        .await
    }

    /// Runs `sql` in the session every writer of the table shares, waiting while another
    /// writer holds it.
    async fn execute_locked(&self, sql: &str) -> Result<(), LoggerError> {
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(2);
        loop {
            match self.locked.query(sql).execute().await {
                Ok(()) => return Ok(()),
                Err(e)
                    if e.to_string().contains(SESSION_IS_LOCKED)
                        && start.elapsed() < SESSION_WAIT =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(ch(e)),
            }
        }
    }

    /// The ids among `ids` that `table`'s column `column` holds already.
    async fn stored(
        &self,
        table: &str,
        column: &str,
        ids: &[&str],
    ) -> Result<HashSet<String>, LoggerError> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut q = self.client.query(&format!(
                "SELECT {column} AS id FROM {table} WHERE {column} IN ({marks})"
            ));
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all::<StoredId>().await.map_err(ch)? {
                found.insert(row.id);
            }
        }
        Ok(found)
    }

    /// Stores the feedback events among `events` that `<table>_feedback` lacks. Feedback is
    /// rare and has no rollup fed from it, so a lookup then a plain insert is enough (the
    /// `ReplacingMergeTree` folds the duplicate of a race between two loggers).
    async fn write_feedback(&self, events: &[&LogEvent]) -> Result<WriteSummary, LoggerError> {
        let table = format!("{}_feedback", self.table);
        let ids: Vec<&str> = events.iter().map(|e| e.request_id.as_str()).collect();
        let stored = self.stored(&table, "feedback_id", &ids).await?;
        let mut unique = HashSet::new();
        let rows: Vec<FeedbackRecord> = events
            .iter()
            .filter(|e| !stored.contains(&e.request_id) && unique.insert(e.request_id.as_str()))
            .filter_map(|e| FeedbackRecord::from_event(e))
            .collect();
        let written = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        let summary = WriteSummary {
            written,
            duplicates: u32::try_from(events.len()).unwrap_or(u32::MAX) - written,
        };
        if rows.is_empty() {
            return Ok(summary);
        }
        let mut insert = self
            .client
            .insert::<FeedbackRecord>(&table)
            .await
            .map_err(ch)?;
        for r in &rows {
            insert.write(r).await.map_err(ch)?;
        }
        insert.end().await.map_err(ch)?;
        Ok(summary)
    }
}

impl ClickHouseSink {
    /// The evaluations table's name.
    fn evaluations_table(&self) -> String {
        format!("{}_evaluations", self.table)
    }
}

#[tonic::async_trait]
impl Sink for ClickHouseSink {
    /// A plain insert: results come from one logger's stage, replays are folded by the
    /// `ReplacingMergeTree` and by readers, who deduplicate on (`request_id`, `evaluator`).
    async fn write_evaluations(&self, rows: Vec<EvaluationRecord>) -> Result<u32, LoggerError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let table = self.evaluations_table();
        let mut insert = self
            .client
            .insert::<EvaluationRecord>(&table)
            .await
            .map_err(ch)?;
        for r in &rows {
            insert.write(r).await.map_err(ch)?;
        }
        insert.end().await.map_err(ch)?;
        Ok(u32::try_from(rows.len()).unwrap_or(u32::MAX))
    }

    async fn write(&self, events: Vec<LogEvent>) -> Result<WriteSummary, LoggerError> {
        let _one_at_a_time = self.writes.lock().await;
        let (feedback, events): (Vec<LogEvent>, Vec<LogEvent>) =
            events.into_iter().partition(|e| e.feedback.is_some());
        let mut summary = if feedback.is_empty() {
            WriteSummary::default()
        } else {
            self.write_feedback(&feedback.iter().collect::<Vec<_>>())
                .await?
        };
        if events.is_empty() {
            return Ok(summary);
        }
        let mut unique = HashSet::new();
        let mut fresh = Vec::with_capacity(events.len());
        for e in &events {
            if unique.insert(e.request_id.as_str()) {
                fresh.push(e);
            } else {
                summary.duplicates += 1;
            }
        }
        let ids: Vec<&str> = fresh.iter().map(|e| e.request_id.as_str()).collect();
        let stored = self.stored(&self.table, "request_id", &ids).await?;
        let rows: Vec<Record> = fresh
            .into_iter()
            .filter(|e| !stored.contains(&e.request_id))
            .map(Record::from)
            .collect();
        summary.duplicates += u32::try_from(stored.len()).unwrap_or(u32::MAX);
        if !stored.is_empty() {
            // Part of this batch was stored before: perhaps by an insert that ClickHouse died in
            // the middle of, after the table took it and before the rollup's view did.
            let mut days: Vec<i64> = events
                .iter()
                .filter(|e| stored.contains(&e.request_id))
                .map(|e| e.start_time_unix_nanos.div_euclid(86_400_000_000_000))
                .collect();
            days.sort_unstable();
            days.dedup();
            let database = self.database.as_str();
            self.execute_locked(&migrations::reconcile_rollup_sql(
                database,
                &self.table,
                &days,
            ))
            .await?;
        }
        if rows.is_empty() {
            return Ok(summary);
        }
        let truncate = format!("TRUNCATE TABLE {}", self.staging);
        self.client.query(&truncate).execute().await.map_err(ch)?;
        let mut insert = self
            .client
            .insert::<Record>(&self.staging)
            .await
            .map_err(ch)?;
        for r in &rows {
            insert.write(r).await.map_err(ch)?;
        }
        insert.end().await.map_err(ch)?;
        self.insert_staged().await?;
        summary.written += u32::try_from(rows.len()).unwrap_or(u32::MAX);
        Ok(summary)
    }

    async fn close(&self) -> Result<(), LoggerError> {
        // Every write ended with ClickHouse's answer: nothing is buffered here.
        let _wait_for_the_last_write = self.writes.lock().await;
        // The staging table goes; if ClickHouse is away it stays behind, empty (a `Memory`
        // table holds nothing across a server restart), for an operator to drop.
        let drop = format!("DROP TABLE IF EXISTS {}", self.staging);
        if let Err(e) = self.client.query(&drop).execute().await {
            tracing::warn!(table = %self.staging, error = %e, "Could not drop this logger's staging table");
        }
        Ok(())
    }
}
