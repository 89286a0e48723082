//! The ClickHouse sink (ClickHouse's HTTP interface, `RowBinary`; the `clickhouse` crate with
//! schema validation off, which ClickHouse 18.16 needs). One row per event in a table it
//! creates when missing; a batch is acknowledged once ClickHouse has answered the `INSERT`
//! (the rows are in a part on disk by then).
//!
//! Idempotent on `request_id`: the sink serialises its writes and looks up which ids of a batch
//! the table already holds before inserting the rest, so a replayed batch adds no row. As a
//! second line of defence (two loggers racing), the table is a `ReplacingMergeTree` ordered by
//! `request_id`: merges keep one row per id, and `FINAL` reads see one at once.

use std::collections::HashSet;

use serde::Deserialize;
use tollgate_core::config::Secret;
use tollgate_proto::logger::v1::LogEvent;

use crate::error::LoggerError;
use crate::record::Record;
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
            let plain = name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
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
    event_date Date DEFAULT toDate(intDiv(start_time_unix_nanos, 1000000000))
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY request_id"
    )
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
    table: String,
    writes: tokio::sync::Mutex<()>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct StoredId {
    request_id: String,
}

fn ch(e: clickhouse::error::Error) -> LoggerError {
    LoggerError::ClickHouse(e.to_string())
}

impl ClickHouseSink {
    /// Connects, creating the database and the table when missing.
    pub async fn open(config: &ClickHouseConfig) -> Result<ClickHouseSink, LoggerError> {
        config.validate()?;
        let client = client(config);
        client
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS {}",
                config.database
            ))
            .execute()
            .await
            .map_err(ch)?;
        client
            .query(&create_table_sql(&config.database, &config.table))
            .execute()
            .await
            .map_err(ch)?;
        tracing::info!(url = %config.url, database = %config.database, table = %config.table, "Opened ClickHouse sink");
        Ok(ClickHouseSink {
            client: client.with_database(&config.database),
            table: config.table.clone(),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    async fn stored(&self, ids: &[&str]) -> Result<HashSet<String>, LoggerError> {
        let mut found = HashSet::new();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut q = self.client.query(&format!(
                "SELECT request_id FROM {} WHERE request_id IN ({marks})",
                self.table
            ));
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all::<StoredId>().await.map_err(ch)? {
                found.insert(row.request_id);
            }
        }
        Ok(found)
    }
}

#[tonic::async_trait]
impl Sink for ClickHouseSink {
    async fn write(&self, events: Vec<LogEvent>) -> Result<WriteSummary, LoggerError> {
        let _one_at_a_time = self.writes.lock().await;
        let mut summary = WriteSummary::default();
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
        let stored = self.stored(&ids).await?;
        let rows: Vec<Record> = fresh
            .into_iter()
            .filter(|e| !stored.contains(&e.request_id))
            .map(Record::from)
            .collect();
        summary.duplicates += u32::try_from(stored.len()).unwrap_or(u32::MAX);
        if rows.is_empty() {
            return Ok(summary);
        }
        let mut insert = self
            .client
            .insert::<Record>(&self.table)
            .await
            .map_err(ch)?;
        for r in &rows {
            insert.write(r).await.map_err(ch)?;
        }
        insert.end().await.map_err(ch)?;
        summary.written = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        Ok(summary)
    }

    async fn close(&self) -> Result<(), LoggerError> {
        // Every write ended with ClickHouse's answer: nothing is buffered here.
        let _wait_for_the_last_write = self.writes.lock().await;
        Ok(())
    }
}
