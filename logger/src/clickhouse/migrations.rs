//! The ClickHouse schema as numbered, idempotent migrations, run by the sink when it opens
//! (so at logger start-up, before the first batch is accepted). Applied versions are recorded
//! per table in `<database>.schema_migrations`; every statement is safe to run again, so a
//! start-up interrupted between a migration and its record simply redoes it.
//!
//! `SELECT version()` decides what may run: a server older than [`OLDEST_SERVER`] is refused,
//! and a migration needing a newer server than the one answering waits (it is not recorded, so
//! it runs once the server is upgraded). Every migration below runs on 18.16, the oldest server
//! tested: no TTL, `DateTime64`, `JSONExtract*` or CTEs in them.

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;

use super::{
    add_missing_columns, ch, create_feedback_table_sql, create_table_sql, deduplicated,
    CACHE_COLUMNS, DAY_OF_START, FAILOVER_COLUMNS, MEDIA_COLUMNS, PAYLOAD_COLUMNS, RERANK_COLUMNS,
};
use crate::error::LoggerError;

/// A ClickHouse server version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major (18 in 18.16.1).
    pub major: u32,
    /// Minor (16 in 18.16.1).
    pub minor: u32,
}

impl ServerVersion {
    /// Parses what `SELECT version()` answers (`18.16.1`, `23.8.2.7`).
    pub fn parse(s: &str) -> Option<ServerVersion> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The oldest server the sink runs against (the Debian package it is tested with).
pub const OLDEST_SERVER: ServerVersion = ServerVersion {
    major: 18,
    minor: 16,
};

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in increasing order; never reused.
    pub version: u32,
    /// What it does.
    pub name: &'static str,
    /// The oldest server it may run on.
    pub min_server: ServerVersion,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "requests table (ReplacingMergeTree on request_id)",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 2,
        name: "daily spend rollup (SummingMergeTree fed by a materialized view)",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 3,
        name: "feedback table (ReplacingMergeTree on feedback_id)",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 4,
        name: "payload capture columns on the requests table",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 5,
        name: "failover attempt columns on the requests table",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 6,
        name: "response cache columns on the requests table",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 7,
        name: "media units columns (images, audio milliseconds, characters) on the requests table",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 8,
        name: "rerank search units column on the requests table",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 9,
        name: "evaluations table (ReplacingMergeTree on request_id, evaluator)",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 10,
        name: "passthrough path column on the requests table",
        min_server: OLDEST_SERVER,
    },
    Migration {
        version: 11,
        name: "semantic cache columns (similarity, parent request id) on the requests table",
        min_server: OLDEST_SERVER,
    },
];

/// The passthrough column (migration 10).
pub const PASSTHROUGH_COLUMNS: [(&str, &str); 1] = [("passthrough_path", "String")];

/// The semantic cache columns (migration 11).
pub const SEMANTIC_COLUMNS: [(&str, &str); 2] = [
    ("cache_similarity", "Float32"),
    ("parent_request_id", "String"),
];

/// The migrations still to run on `server`, given those applied, in order; those needing a
/// newer server are left for later.
pub fn pending<'a>(
    all: &'a [Migration],
    applied: &BTreeSet<u32>,
    server: ServerVersion,
) -> Vec<&'a Migration> {
    all.iter()
        .filter(|m| !applied.contains(&m.version) && m.min_server <= server)
        .collect()
}

/// The daily rollup's DDL: one row per day × tenant × key × model (summed as parts merge;
/// read it with `sum()` and `GROUP BY`). Spend is a `Decimal128(0)` of picodollars, so its
/// sums cannot overflow the way `UInt64` sums would (at ≈ 18.4 million USD).
pub fn create_rollup_sql(database: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table}_daily (
    day Date,
    tenant String,
    key_id String,
    model String,
    requests UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    reasoning_tokens UInt64,
    cost_picodollars Decimal128(0)
) ENGINE = SummingMergeTree()
PARTITION BY toYYYYMM(day)
ORDER BY (day, tenant, key_id, model)"
    )
}

/// Rollup rows summed from `from`, whose columns are named like the requests table's, the
/// start time and the model excepted (`start`, `model`: their names in `from`).
fn rollup_select(start: &str, model: &str, from: &str) -> String {
    let day = DAY_OF_START.replace("start_ns", start);
    format!(
        "SELECT {day} AS day, tenant, key_id, {model} AS model, count() AS requests, \
         sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, \
         sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens, \
         sum(reasoning_tokens) AS reasoning_tokens, \
         sum(toDecimal128(cost_picodollars, 0)) AS cost_picodollars \
         FROM {from} GROUP BY day, tenant, key_id, model"
    )
}

/// The view feeding the rollup from every insert into the requests table.
pub fn create_rollup_view_sql(database: &str, table: &str) -> String {
    // Straight from the table: ClickHouse 18.16 cannot push inserts through a subquery.
    let select = rollup_select(
        "start_time_unix_nanos",
        "requested_model",
        &format!("{database}.{table}"),
    );
    format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{table}_daily_mv TO {database}.{table}_daily AS {select}")
}

/// Rollup rows summed from the deduplicated requests table (`filter`: its `WHERE` clause).
fn exact_rollup_select(database: &str, table: &str, filter: &str) -> String {
    rollup_select(
        "start_ns",
        "model_",
        &format!(
            "(SELECT start_ns, tenant_ AS tenant, key_ AS key_id, model_, \
             input_ AS input_tokens, output_ AS output_tokens, cache_read_ AS cache_read_tokens, \
             cache_write_ AS cache_write_tokens, reasoning_ AS reasoning_tokens, cost_ AS cost_picodollars \
             FROM {})",
            deduplicated(&format!("{database}.{table}"), filter)
        ),
    )
}

/// Fills the rollup from the rows already stored (each `request_id` once).
fn backfill_rollup_sql(database: &str, table: &str) -> String {
    let select = exact_rollup_select(database, table, "");
    format!("INSERT INTO {database}.{table}_daily {select}")
}

/// Adds to the rollup whatever it lacks for `days` (days since 1970-01-01, UTC) compared with
/// the deduplicated requests table: the rows of an insert that reached the table but not the
/// view, when ClickHouse died between the two (it writes the table first). Run it in the
/// writers' shared session, so that no insert is half done while it compares.
pub fn reconcile_rollup_sql(database: &str, table: &str, days: &[i64]) -> String {
    let days = days
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let exact = exact_rollup_select(
        database,
        table,
        &format!("WHERE intDiv(start_time_unix_nanos, 86400000000000) IN ({days})"),
    );
    let signed = |sign: &str| {
        format!(
            "{sign}toInt64(requests) AS r_, {sign}toInt64(input_tokens) AS i_, \
             {sign}toInt64(output_tokens) AS o_, {sign}toInt64(cache_read_tokens) AS cr_, \
             {sign}toInt64(cache_write_tokens) AS cw_, {sign}toInt64(reasoning_tokens) AS re_, \
             {sign}cost_picodollars AS c_"
        )
    };
    format!(
        "INSERT INTO {database}.{table}_daily SELECT day, tenant, key_id, model, \
         toUInt64(sum(r_)), toUInt64(sum(i_)), toUInt64(sum(o_)), toUInt64(sum(cr_)), \
         toUInt64(sum(cw_)), toUInt64(sum(re_)), sum(c_) FROM ( \
         SELECT day, tenant, key_id, model, {} FROM ({exact}) \
         UNION ALL \
         SELECT day, tenant, key_id, model, {} FROM {database}.{table}_daily WHERE toUInt16(day) IN ({days}) \
         ) GROUP BY day, tenant, key_id, model HAVING sum(r_) > 0",
        signed(""),
        signed("-")
    )
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Text {
    value: String,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Version {
    version: u32,
}

async fn execute(client: &clickhouse::Client, sql: &str) -> Result<(), LoggerError> {
    client.query(sql).execute().await.map_err(ch)
}

async fn text(client: &clickhouse::Client, sql: &str) -> Result<String, LoggerError> {
    Ok(client
        .query(sql)
        .fetch_one::<Text>()
        .await
        .map_err(ch)?
        .value)
}

/// The server's version, refused when older than [`OLDEST_SERVER`].
pub async fn server_version(client: &clickhouse::Client) -> Result<ServerVersion, LoggerError> {
    let raw = text(client, "SELECT version() AS value").await?;
    let v = ServerVersion::parse(&raw).ok_or_else(|| {
        LoggerError::ClickHouse(format!("cannot read the server version `{raw}`"))
    })?;
    if v < OLDEST_SERVER {
        return Err(LoggerError::Config(format!(
            "ClickHouse {v} is older than {OLDEST_SERVER}, the oldest server Tollgate supports"
        )));
    }
    Ok(v)
}

async fn apply(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
    m: &Migration,
) -> Result<(), LoggerError> {
    match m.version {
        1 => execute(client, &create_table_sql(database, table)).await,
        2 => {
            execute(client, &create_rollup_sql(database, table)).await?;
            let view = text(
                client,
                &format!("SELECT toString(count()) AS value FROM system.tables WHERE database = '{database}' AND name = '{table}_daily_mv'"),
            )
            .await?;
            if view.trim() == "0" {
                // No view yet: (re)build the rollup from what is stored, then start feeding it.
                // Truncating first makes a rerun after a crash between the two start over.
                execute(client, &format!("TRUNCATE TABLE {database}.{table}_daily")).await?;
                execute(client, &backfill_rollup_sql(database, table)).await?;
                execute(client, &create_rollup_view_sql(database, table)).await?;
            }
            Ok(())
        }
        3 => execute(client, &create_feedback_table_sql(database, table)).await,
        4 => add_missing_columns(client, database, table, &PAYLOAD_COLUMNS).await,
        5 => add_missing_columns(client, database, table, &FAILOVER_COLUMNS).await,
        6 => add_missing_columns(client, database, table, &CACHE_COLUMNS).await,
        7 => add_missing_columns(client, database, table, &MEDIA_COLUMNS).await,
        8 => add_missing_columns(client, database, table, &RERANK_COLUMNS).await,
        9 => {
            execute(
                client,
                &super::create_evaluations_table_sql(database, table),
            )
            .await
        }
        10 => add_missing_columns(client, database, table, &PASSTHROUGH_COLUMNS).await,
        11 => add_missing_columns(client, database, table, &SEMANTIC_COLUMNS).await,
        other => Err(LoggerError::Task(format!("no migration numbered {other}"))),
    }
}

/// Brings `database` (created when missing) up to date for `table`: creates
/// `schema_migrations`, then runs every pending migration in order, recording each.
pub async fn run(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<Vec<u32>, LoggerError> {
    let server = server_version(client).await?;
    execute(client, &format!("CREATE DATABASE IF NOT EXISTS {database}")).await?;
    execute(
        client,
        &format!(
            "CREATE TABLE IF NOT EXISTS {database}.schema_migrations (
    table_name String,
    version UInt32,
    name String,
    applied_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree()
ORDER BY (table_name, version)"
        ),
    )
    .await?;
    let applied: BTreeSet<u32> = client
        .query(&format!(
            "SELECT DISTINCT version FROM {database}.schema_migrations WHERE table_name = ?"
        ))
        .bind(table)
        .fetch_all::<Version>()
        .await
        .map_err(ch)?
        .into_iter()
        .map(|v| v.version)
        .collect();
    for m in MIGRATIONS {
        if !applied.contains(&m.version) && m.min_server > server {
            tracing::warn!(version = m.version, name = m.name, needs = %m.min_server, server = %server, "Leaving a migration for a newer ClickHouse");
        }
    }
    let mut done = Vec::new();
    for m in pending(MIGRATIONS, &applied, server) {
        apply(client, database, table, m).await?;
        client
            .query(&format!(
                "INSERT INTO {database}.schema_migrations (table_name, version, name) VALUES (?, ?, ?)"
            ))
            .bind(table)
            .bind(m.version)
            .bind(m.name)
            .execute()
            .await
            .map_err(ch)?;
        tracing::info!(database, table, version = m.version, name = m.name, %server, "Applied a ClickHouse migration");
        done.push(m.version);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        let v = ServerVersion::parse("18.16.1").unwrap();
        assert_eq!(v, OLDEST_SERVER);
        assert!(ServerVersion::parse("23.8.2.7").unwrap() > v);
        assert!(ServerVersion::parse("18.14.19").unwrap() < v);
        assert_eq!(ServerVersion::parse("garbage"), None);
    }

    #[test]
    fn a_migration_for_a_newer_server_waits_without_blocking_the_rest() {
        let newer = ServerVersion {
            major: 23,
            minor: 3,
        };
        let all = [
            Migration {
                version: 1,
                name: "a",
                min_server: OLDEST_SERVER,
            },
            Migration {
                version: 2,
                name: "ttl",
                min_server: newer,
            },
            Migration {
                version: 3,
                name: "c",
                min_server: OLDEST_SERVER,
            },
        ];
        let versions = |v: Vec<&Migration>| v.iter().map(|m| m.version).collect::<Vec<_>>();
        let none = BTreeSet::new();
        assert_eq!(versions(pending(&all, &none, OLDEST_SERVER)), [1, 3]);
        assert_eq!(versions(pending(&all, &none, newer)), [1, 2, 3]);
        let applied: BTreeSet<u32> = [1, 3].into_iter().collect();
        assert_eq!(
            versions(pending(&all, &applied, OLDEST_SERVER)),
            Vec::<u32>::new()
        );
        assert_eq!(versions(pending(&all, &applied, newer)), [2]);
    }
}
