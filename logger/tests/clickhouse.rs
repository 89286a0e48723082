//! The ClickHouse sink against a real ClickHouse (the Debian `clickhouse-server` package, which
//! `scripts/test.sh` installs): a server of our own per test (own config file, data in a
//! temporary directory, a port it picks itself), killed on drop.

// Test support outside #[test] functions: failing loudly is the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use time::macros::date;
use tollgate_core::config::Logging;
use tollgate_core::metrics::Metrics;
use tollgate_logger::clickhouse::{migrations, ClickHouseConfig, ClickHouseSink};
use tollgate_logger::config::SinkConfig;
use tollgate_logger::record::Record;
use tollgate_logger::sink::{Sink, WriteSummary};
use tollgate_logger::usage::{self, ClickHouseSource, Dimension, UsageQuery, UsageReport};
use tollgate_logger::{LoggerConfig, Shipper};
use tollgate_proto::logger::v1::{Feedback, LogEvent, Usage};

#[path = "../../tests/common/clickhouse.rs"]
mod clickhouse_server;
#[path = "../../tests/common/relay.rs"]
mod relay;
use clickhouse_server::ClickHouse;

/// The sink's settings for database `database` of `ch`, table `requests`.
fn sink_config(ch: &ClickHouse, database: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: ch.url.clone(),
        database: database.to_owned(),
        table: "requests".to_owned(),
        user: "default".to_owned(),
        password: None,
    }
}

/// A logger serving `ch`'s database `database`, with a logger-side spool when `spool` is given:
/// its address, the sender that stops it, and its task.
fn start_logger(
    ch: &ClickHouse,
    database: &str,
    dir: &std::path::Path,
    spool: Option<PathBuf>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tollgate_logger::LoggerError>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = LoggerConfig::new(addr, dir.join("unused"));
    config.sink = SinkConfig::ClickHouse(sink_config(ch, database));
    config.spool_dir = spool;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_logger::serve(listener, config, async move {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, server)
}

fn event(id: &str, input: u64) -> LogEvent {
    LogEvent {
        request_id: id.to_owned(),
        start_time_unix_nanos: 1_795_477_929_474_111_059,
        end_time_unix_nanos: 1_795_477_929_574_111_059,
        key_id: "k1".to_owned(),
        tenant: "acme".to_owned(),
        requested_model: "mock-model".to_owned(),
        provider: "mock".to_owned(),
        stream: true,
        http_status: 200,
        usage: Some(Usage {
            input_tokens: input,
            output_tokens: input * 2,
            cache_read_tokens: 1,
            reasoning_tokens: 3,
            source: 1,
            ..Default::default()
        }),
        gateway_overhead_ms: 0.25,
        ..Default::default()
    }
}

fn feedback(id: &str, rated: &str, score: Option<f64>) -> LogEvent {
    LogEvent {
        request_id: id.to_owned(),
        start_time_unix_nanos: 1_795_477_929_474_111_059,
        key_id: "k1".to_owned(),
        tenant: "acme".to_owned(),
        endpoint: "feedback".to_owned(),
        feedback: Some(Feedback {
            request_id: rated.to_owned(),
            score,
            label: "thumbs_up".to_owned(),
            comment: "tab\there, 'quoted'".to_owned(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn feedback_lands_in_its_own_table_once_and_never_among_the_requests() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_fb");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let batch = vec![
        event("r1", 3),
        feedback("f1", "r1", Some(0.5)),
        feedback("f2", "r1", None),
    ];
    let s = sink.write(batch.clone()).await.unwrap();
    assert_eq!(
        s,
        WriteSummary {
            written: 3,
            duplicates: 0
        }
    );
    // Sent again (a lost ack), from a restarted logger: nothing twice.
    drop(sink);
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let s = sink.write(batch).await.unwrap();
    assert_eq!(
        s,
        WriteSummary {
            written: 0,
            duplicates: 3
        }
    );
    assert_eq!(
        ch.query("SELECT groupArray(request_id) FROM tg_fb.requests")
            .unwrap()
            .trim(),
        "['r1']"
    );
    assert_eq!(
        ch.query("SELECT feedback_id, request_id, key_id, tenant, score, label, comment, event_date FROM tg_fb.requests_feedback ORDER BY feedback_id FORMAT TSV")
            .unwrap(),
        "f1\tr1\tk1\tacme\t0.5\tthumbs_up\ttab\\there, \\'quoted\\'\t2026-11-23\n\
         f2\tr1\tk1\tacme\t\\N\tthumbs_up\ttab\\there, \\'quoted\\'\t2026-11-23\n"
    );
}

#[tokio::test]
async fn rows_land_with_their_usage_and_a_replay_adds_none_even_from_a_new_sink() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_sink");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let batch: Vec<LogEvent> = (0..50).map(|i| event(&format!("r{i:03}"), i + 1)).collect();
    let s = sink.write(batch.clone()).await.unwrap();
    assert_eq!(
        s,
        WriteSummary {
            written: 50,
            duplicates: 0
        }
    );
    assert_eq!(
        ch.query("SELECT count() FROM tg_sink.requests")
            .unwrap()
            .trim(),
        "50"
    );
    let row = ch
        .query("SELECT request_id, tenant, stream, http_status, input_tokens, output_tokens, cache_read_tokens, reasoning_tokens, usage_source, event_date FROM tg_sink.requests WHERE request_id = 'r007' FORMAT TSV")
        .unwrap();
    assert_eq!(
        row.trim(),
        "r007\tacme\t1\t200\t8\t16\t1\t3\tprovider\t2026-11-23"
    );

    // The same batch again, plus one new event and one repeated inside the batch.
    let mut again = batch.clone();
    again.push(event("new", 1));
    again.push(event("new", 1));
    let s = sink.write(again).await.unwrap();
    assert_eq!(
        s,
        WriteSummary {
            written: 1,
            duplicates: 51
        }
    );
    sink.close().await.unwrap();
    drop(sink);

    // A new sink (a restarted logger) on the existing table still writes nothing twice.
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let s = sink.write(batch).await.unwrap();
    assert_eq!(s.written, 0);
    // Counted without FINAL: no duplicate row exists at all, not just after a merge.
    assert_eq!(
        ch.query("SELECT count() FROM tg_sink.requests")
            .unwrap()
            .trim(),
        "51"
    );
    assert_eq!(
        ch.query("SELECT uniqExact(request_id) FROM tg_sink.requests")
            .unwrap()
            .trim(),
        "51"
    );
}

#[tokio::test]
async fn the_logger_serves_into_clickhouse_and_refuses_while_it_is_away() {
    let ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop_tx, server) = start_logger(&ch, "tg_serve", dir.path(), None);

    let logging = Logging {
        address: addr.to_string(),
        spool_dir: dir.path().join("spool"),
        batch_size: 8,
        max_delay: Duration::from_millis(20),
        queue_capacity: 1000,
        spool_max_bytes: 1 << 20,
        capture_max_bytes: 16 * 1024,
    };
    let shipper = Shipper::start(&logging, Metrics::default()).await.unwrap();
    for i in 0..30 {
        shipper.handle().emit(event(&format!("s{i}"), 5));
    }
    shipper.shutdown().await;
    assert_eq!(
        ch.query("SELECT count() FROM tg_serve.requests")
            .unwrap()
            .trim(),
        "30"
    );

    // ClickHouse away: the logger answers UNAVAILABLE (the sender keeps the batch), not a crash.
    let mut client = tollgate_logger::shipper::connect(&addr.to_string()).unwrap();
    drop(ch);
    let err = client
        .ingest(tollgate_proto::logger::v1::LogBatch {
            events: vec![event("while-away", 1)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().starts_with("ClickHouse: "),
        "{}",
        err.message()
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn with_a_logger_spool_batches_are_acknowledged_while_clickhouse_is_away_and_land_later() {
    let mut ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = Some(dir.path().join("logger-spool"));
    let (addr, stop_tx, server) = start_logger(&ch, "tg_spool", dir.path(), spool);
    let mut client = tollgate_logger::shipper::connect(&addr.to_string()).unwrap();
    let batch = |ids: std::ops::Range<u32>| tollgate_proto::logger::v1::LogBatch {
        events: ids.map(|i| event(&format!("p{i}"), 2)).collect(),
    };
    client.ingest(batch(0..5)).await.unwrap();

    ch.kill();
    // Acknowledged all the same: the batch is durable in the logger's spool.
    let ack = client.ingest(batch(5..12)).await.unwrap().into_inner();
    assert_eq!(ack.written, 7);
    ch.restart();
    let start = Instant::now();
    let mut count = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        count = ch
            .query("SELECT count() FROM tg_spool.requests")
            .unwrap_or_default();
        if count.trim() == "12" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count.trim(),
        "12",
        "the spooled batch never reached ClickHouse"
    );
    // A sidecar resending the spooled batch (its ack lost) adds nothing.
    let ack = client.ingest(batch(0..12)).await.unwrap().into_inner();
    assert_eq!((ack.written, ack.duplicates), (0, 12));
    assert_eq!(
        ch.query("SELECT count() FROM tg_spool.requests")
            .unwrap()
            .trim(),
        "12"
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_table_from_before_guardrails_gets_the_verdicts_column_and_rows_carry_them() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_old");
    // The table as the previous release created it: no `guardrail_verdicts`.
    let old = tollgate_logger::clickhouse::create_table_sql("tg_old", "requests")
        .replace("    guardrail_verdicts Array(String),\n", "");
    assert!(!old.contains("guardrail_verdicts"));
    ch.query("CREATE DATABASE tg_old").unwrap();
    ch.query(&old).unwrap();
    let sink = ClickHouseSink::open(&config).await.unwrap();
    // Opening twice adds nothing twice.
    let sink2 = ClickHouseSink::open(&config).await.unwrap();
    drop(sink2);
    let mut e = event("g1", 1);
    e.guardrail_verdicts = vec![tollgate_proto::logger::v1::GuardrailVerdict {
        rule: "email".into(),
        action: "redact".into(),
        side: "request".into(),
    }];
    sink.write(vec![e]).await.unwrap();
    let row = ch
        .query("SELECT guardrail_verdicts FROM tg_old.requests WHERE request_id = 'g1' FORMAT TSV")
        .unwrap();
    assert_eq!(row.trim(), "['request:redact:email']");
}

#[tokio::test]
async fn failover_attempts_land_as_parallel_arrays() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_fo");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let mut e = event("f1", 1);
    e.attempt_providers = vec!["openai".into(), "anthropic".into(), "bedrock".into()];
    e.attempt_statuses = vec![500, 0, 200];
    e.answered_attempt = 3;
    e.attempt_latencies_ms = vec![12, 2000, 35];
    e.attempt_errors = vec![String::new(), "timeout".into(), String::new()];
    sink.write(vec![e, event("f2", 1)]).await.unwrap();
    let rows = ch
        .query("SELECT request_id, attempt_providers, attempt_statuses, answered_attempt, attempt_latencies_ms, attempt_errors FROM tg_fo.requests ORDER BY request_id FORMAT TSV")
        .unwrap();
    assert_eq!(
        rows.trim(),
        "f1\t['openai','anthropic','bedrock']\t[500,0,200]\t3\t[12,2000,35]\t['','timeout','']\nf2\t[]\t[]\t0\t[]\t[]"
    );
}

#[tokio::test]
async fn rerank_search_units_land_in_their_column() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_rr");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let mut e = event("r1", 1);
    e.endpoint = "rerank".into();
    e.search_units = 3;
    sink.write(vec![e, event("r2", 1)]).await.unwrap();
    let rows = ch
        .query("SELECT request_id, endpoint, search_units FROM tg_rr.requests ORDER BY request_id FORMAT TSV")
        .unwrap();
    let r2_endpoint = ch
        .query("SELECT endpoint FROM tg_rr.requests WHERE request_id = 'r2' FORMAT TSV")
        .unwrap();
    assert_eq!(
        rows.trim(),
        format!("r1\trerank\t3\nr2\t{}\t0", r2_endpoint.trim())
    );
}

#[tokio::test]
async fn semantic_cache_columns_land() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_sem");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let mut hit = event("s1", 1);
    hit.cache = "semantic".into();
    hit.cache_similarity = 0.875;
    let mut embed = event("s1-embed", 1);
    embed.endpoint = "embeddings".into();
    embed.parent_request_id = "s1".into();
    sink.write(vec![hit, embed]).await.unwrap();
    let rows = ch
        .query("SELECT request_id, cache, cache_similarity, parent_request_id FROM tg_sem.requests ORDER BY request_id FORMAT TSV")
        .unwrap();
    assert_eq!(rows.trim(), "s1\tsemantic\t0.875\t\ns1-embed\t\t0\ts1");
}

/// Events over three days, two tenants, three keys and two models, with costs that overflow a
/// `UInt64` sum.
fn usage_events(prefix: &str, n: u64) -> Vec<LogEvent> {
    const DAY: i64 = 86_400 * 1_000_000_000;
    (0..n)
        .map(|i| {
            let mut e = event(&format!("{prefix}{i:04}"), i + 1);
            e.start_time_unix_nanos = 20_780 * DAY + (i as i64 % 3) * DAY + (i as i64) * 1_000;
            e.tenant = ["acme", "beta"][(i % 2) as usize].to_owned();
            e.key_id = ["k1", "k2", "k3"][(i % 3) as usize].to_owned();
            e.requested_model = ["gpt-4o", "gpt-4o-mini"][(i % 4 / 2) as usize].to_owned();
            e.cost_picodollars = if i % 5 == 0 {
                u64::MAX - i
            } else {
                i * 1_234_567
            };
            e
        })
        .collect()
}

fn all_dims() -> Vec<Dimension> {
    vec![
        Dimension::Day,
        Dimension::Tenant,
        Dimension::Key,
        Dimension::Model,
    ]
}

#[tokio::test]
async fn usage_from_clickhouse_counts_rows_inserted_twice_once() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_usage");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let events = usage_events("u", 60);
    sink.write(events.clone()).await.unwrap();
    // Duplicates that bypassed the sink's lookup (two loggers racing): every row twice, in a
    // second part that no merge has folded yet.
    ch.query("INSERT INTO tg_usage.requests SELECT * FROM tg_usage.requests")
        .unwrap();
    assert_eq!(
        ch.query("SELECT count() FROM tg_usage.requests")
            .unwrap()
            .trim(),
        "120"
    );
    let records: Vec<Record> = events.iter().map(Record::from).collect();
    for by in [
        all_dims(),
        vec![Dimension::Key],
        vec![Dimension::Model, Dimension::Day],
        vec![],
    ] {
        for (from, to) in [
            (None, None),
            (Some(date!(2026 - 11 - 24)), Some(date!(2026 - 11 - 25))),
        ] {
            let q = UsageQuery {
                by: by.clone(),
                from,
                to,
            };
            let got = usage::from_clickhouse(&config, ClickHouseSource::Requests, &q)
                .await
                .unwrap();
            assert_eq!(got, usage::summarise(&records, &q), "{q:?}");
        }
    }
    // And the figures themselves, not only agreement with the NDJSON path.
    let q = UsageQuery {
        by: vec![],
        from: None,
        to: None,
    };
    let got = usage::from_clickhouse(&config, ClickHouseSource::Requests, &q)
        .await
        .unwrap();
    let want: u128 = events.iter().map(|e| u128::from(e.cost_picodollars)).sum();
    assert!(want > u128::from(u64::MAX));
    assert_eq!(got.total.cost_picodollars, want);
    assert_eq!(got.total.requests, 60);
    assert_eq!(got.total.input_tokens, (1..=60).sum::<u64>());
}

async fn assert_rollup_matches_requests(config: &ClickHouseConfig) -> UsageReport {
    let mut all = None;
    for by in [
        all_dims(),
        vec![Dimension::Tenant],
        vec![Dimension::Key, Dimension::Day],
        vec![],
    ] {
        let q = UsageQuery {
            by: by.clone(),
            from: None,
            to: None,
        };
        let exact = usage::from_clickhouse(config, ClickHouseSource::Requests, &q)
            .await
            .unwrap();
        let rollup = usage::from_clickhouse(config, ClickHouseSource::Rollup, &q)
            .await
            .unwrap();
        assert_eq!(rollup, exact, "{by:?}");
        all.get_or_insert(exact);
    }
    all.unwrap()
}

#[tokio::test]
async fn migrations_run_once_and_backfill_the_rollup_of_an_existing_table() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_mig");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    assert_eq!(
        ch.query(
            "SELECT table_name, version FROM tg_mig.schema_migrations ORDER BY version FORMAT TSV"
        )
        .unwrap(),
        migrations::MIGRATIONS
            .iter()
            .map(|m| format!("requests\t{}\n", m.version))
            .collect::<String>()
    );
    let events = usage_events("m", 40);
    sink.write(events.clone()).await.unwrap();
    drop(sink);

    // Opening again applies nothing and records nothing twice.
    let client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_validation(false);
    assert_eq!(
        migrations::run(&client, "tg_mig", "requests")
            .await
            .unwrap(),
        Vec::<u32>::new()
    );
    assert_eq!(
        ch.query("SELECT count() FROM tg_mig.schema_migrations")
            .unwrap()
            .trim(),
        migrations::MIGRATIONS.len().to_string()
    );
    assert_rollup_matches_requests(&config).await;

    // A table from before the rollup existed, holding duplicate rows: the migration builds the
    // rollup from each request once, then feeds it from new inserts.
    for sql in [
        "DROP TABLE tg_mig.requests_daily_mv",
        "DROP TABLE tg_mig.requests_daily",
        "TRUNCATE TABLE tg_mig.schema_migrations",
        "INSERT INTO tg_mig.requests SELECT * FROM tg_mig.requests",
    ] {
        ch.query(sql).unwrap_or_else(|| panic!("{sql}"));
    }
    let sink = ClickHouseSink::open(&config).await.unwrap();
    sink.write(usage_events("after", 10)).await.unwrap();
    let report = assert_rollup_matches_requests(&config).await;
    assert_eq!(report.total.requests, 50);
    // And only once: a further start does not backfill again.
    drop(sink);
    ClickHouseSink::open(&config).await.unwrap();
    let again = assert_rollup_matches_requests(&config).await;
    assert_eq!(again.total.requests, 50);
}

#[tokio::test]
async fn the_rollup_matches_the_deduplicated_requests_when_batches_are_sent_again() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_rollup");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let batch = usage_events("b", 60);
    sink.write(batch.clone()).await.unwrap();
    // The same batch again, through the same sink and through a second one (a restarted or
    // second logger).
    assert_eq!(sink.write(batch.clone()).await.unwrap().written, 0);
    let other = ClickHouseSink::open(&config).await.unwrap();
    assert_eq!(other.write(batch.clone()).await.unwrap().written, 0);
    // Overlapping batches from the two sinks at once: both look the ids up before either has
    // inserted, so only the shared-session insert keeps the second copy out.
    let (left, right) = (usage_events("c", 30), usage_events("c", 45));
    tokio::join!(
        async {
            sink.write(left.clone()).await.unwrap();
            sink.write(right.clone()).await.unwrap();
        },
        async {
            other.write(right.clone()).await.unwrap();
            other.write(left.clone()).await.unwrap();
        }
    );
    let report = assert_rollup_matches_requests(&config).await;
    assert_eq!(report.total.requests, 105);
    // Not one duplicate row, even before any merge.
    assert_eq!(
        ch.query("SELECT count() FROM tg_rollup.requests")
            .unwrap()
            .trim(),
        "105"
    );
    assert_eq!(
        ch.query("SELECT sum(requests) FROM tg_rollup.requests_daily")
            .unwrap()
            .trim(),
        "105"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_sent_while_clickhouse_is_killed_and_restarted_land_exactly_once() {
    const N: usize = 400;
    let mut ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    let logger_spool = dir.path().join("logger-spool");
    let (addr, stop_tx, server) =
        start_logger(&ch, "tg_fault", dir.path(), Some(logger_spool.clone()));
    let logging = Logging {
        address: addr.to_string(),
        spool_dir: dir.path().join("sidecar-spool"),
        batch_size: 10,
        max_delay: Duration::from_millis(10),
        queue_capacity: 10_000,
        spool_max_bytes: 1 << 24,
        capture_max_bytes: 16 * 1024,
    };
    let shipper = Shipper::start(&logging, Metrics::default()).await.unwrap();
    let handle = shipper.handle();
    let emitter = tokio::spawn(async move {
        for e in usage_events("f", N as u64) {
            handle.emit(e);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });

    // Mid-run: some rows are in, many are still to come.
    let start = Instant::now();
    while ch
        .query("SELECT count() FROM tg_fault.requests")
        .and_then(|c| c.trim().parse::<usize>().ok())
        .unwrap_or(0)
        < 50
    {
        assert!(start.elapsed() < Duration::from_secs(30), "no rows arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(|| ch.kill());
    assert!(!emitter.is_finished(), "the run ended before the kill");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spooled = std::fs::read_dir(&logger_spool).unwrap().count();
    assert!(
        spooled > 0,
        "nothing went to the logger's spool while ClickHouse was down"
    );
    tokio::task::block_in_place(|| ch.restart());
    emitter.await.unwrap();
    shipper.shutdown().await;

    let start = Instant::now();
    let mut count = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        count = ch
            .query("SELECT count() FROM tg_fault.requests")
            .unwrap_or_default();
        if count.trim() == N.to_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly N rows, counted without FINAL: none lost, none twice.
    assert_eq!(count.trim(), N.to_string(), "rows in ClickHouse");
    assert_eq!(
        ch.query("SELECT uniqExact(request_id) FROM tg_fault.requests")
            .unwrap()
            .trim(),
        N.to_string()
    );
    // `tollgate usage` (the deduplicated requests table) has every request and its exact spend.
    // Not asserted: that the rollup agrees. A kill in the middle of an insert can leave it
    // short, and the repair on replay does not always catch all of it yet (README, "Known
    // gaps").
    let q = UsageQuery {
        by: all_dims(),
        from: None,
        to: None,
    };
    let got = usage::from_clickhouse(
        &sink_config(&ch, "tg_fault"),
        ClickHouseSource::Requests,
        &q,
    )
    .await
    .unwrap();
    let records: Vec<Record> = usage_events("f", N as u64)
        .iter()
        .map(Record::from)
        .collect();
    assert_eq!(got, usage::summarise(&records, &q));
    assert_eq!(got.total.requests, N as u64);
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(std::fs::read_dir(&logger_spool).unwrap().count(), 0);
}

#[tokio::test]
async fn rows_the_rollup_missed_are_added_when_their_batch_comes_again() {
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_heal");
    let sink = ClickHouseSink::open(&config).await.unwrap();
    sink.write(usage_events("h", 20)).await.unwrap();
    // An insert that reached the table but not the view (ClickHouse died between the two).
    let lost = usage_events("lost", 30);
    ch.query("DETACH TABLE tg_heal.requests_daily_mv").unwrap();
    let other = ClickHouseSink::open(&config).await.unwrap();
    other.write(lost[..25].to_vec()).await.unwrap();
    ch.query("ATTACH TABLE tg_heal.requests_daily_mv").unwrap();
    assert_eq!(
        ch.query("SELECT sum(requests) FROM tg_heal.requests_daily")
            .unwrap()
            .trim(),
        "20"
    );
    // The sender, without an answer, sends the batch again (with more events this time).
    let s = sink.write(lost.clone()).await.unwrap();
    assert_eq!((s.written, s.duplicates), (5, 25));
    let report = assert_rollup_matches_requests(&config).await;
    assert_eq!(report.total.requests, 50);
    // Healing twice adds nothing.
    sink.write(lost).await.unwrap();
    let again = assert_rollup_matches_requests(&config).await;
    assert_eq!(again, report);
}

#[tokio::test]
async fn spend_since_sums_per_owner_and_span_and_restores_what_the_requests_would() {
    use tollgate_core::budget::{restored_lines, restored_period_starts, Owner, Spend};
    fn spend<'a>(id: &'a str, start: i64, who: [&'a String; 4], cost: u128) -> Spend<'a> {
        let [key, team, tenant, end_user] = who;
        Spend {
            request_id: id,
            start_unix_nanos: start,
            owner: Owner {
                key,
                team: Some(team),
                tenant: Some(tenant),
                end_user: Some(end_user),
            },
            cost,
        }
    }
    const DAY: i64 = 86_400 * 1_000_000_000;
    let ch = ClickHouse::start();
    let config = sink_config(&ch, "tg_restore");
    // No table yet: no spend, not an error.
    let now = time::macros::datetime!(2026-11-26 12:00 UTC);
    let starts = restored_period_starts(now);
    assert!(usage::spend_since(&config, &starts)
        .await
        .unwrap()
        .is_empty());
    let sink = ClickHouseSink::open(&config).await.unwrap();
    let mut events = usage_events("r", 60);
    for (i, e) in events.iter_mut().enumerate() {
        e.team = ["", "red"][i % 2].to_owned();
        e.end_user = ["", "alice", "bob"][i % 3].to_owned();
        if i % 7 == 0 {
            // Last month: in `total` only.
            e.start_time_unix_nanos -= 30 * DAY;
        }
    }
    sink.write(events.clone()).await.unwrap();
    // Rows that bypassed the sink's lookup: every one twice.
    ch.query("INSERT INTO tg_restore.requests SELECT * FROM tg_restore.requests")
        .unwrap();
    let sums = usage::spend_since(&config, &starts).await.unwrap();
    assert!(sums.len() < events.len(), "{sums:?}");
    let records: Vec<Record> = events.iter().map(Record::from).collect();
    let expected = restored_lines(
        records.iter().map(|r| {
            let who = [&r.key_id, &r.team, &r.tenant, &r.end_user];
            spend(
                &r.request_id,
                r.start_time_unix_nanos,
                who,
                r.cost_picodollars.into(),
            )
        }),
        now,
    );
    let ids: Vec<String> = (0..sums.len()).map(|i| i.to_string()).collect();
    let got = restored_lines(
        sums.iter().zip(&ids).map(|(s, id)| {
            let who = [&s.key_id, &s.team, &s.tenant, &s.end_user];
            spend(
                id,
                s.since,
                who,
                u128::try_from(s.cost_picodollars).unwrap(),
            )
        }),
        now,
    );
    assert_eq!(got, expected);
    let total: u128 = events.iter().map(|e| u128::from(e.cost_picodollars)).sum();
    let acme_beta = expected["tenant:total:acme"] + expected["tenant:total:beta"];
    assert_eq!(acme_beta, total);
    assert!(expected["tenant:m2026-11:acme"] < expected["tenant:total:acme"]);
}
