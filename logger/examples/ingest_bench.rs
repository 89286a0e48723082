//! Ingest throughput into ClickHouse through the logger's gRPC `LogIngest`: starts a logger in
//! this process with the ClickHouse sink (a fresh database per run), sends `--events` events
//! in batches of `--batch` from `--clients` concurrent gRPC clients, waits for every ack and
//! prints events per second. A benchmark, not a test: CI only builds it.
//!
//! ```sh
//! cargo run --release -p tollgate-logger --example ingest_bench -- \
//!     --clickhouse-url http://127.0.0.1:8123 --events 200000 --batch 500 --clients 4
//! ```

// A command-line tool: it prints its result, and failing loudly is fine.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::time::{Duration, Instant};

use tollgate_logger::clickhouse::ClickHouseConfig;
use tollgate_logger::config::SinkConfig;
use tollgate_logger::LoggerConfig;
use tollgate_proto::logger::v1::{LogBatch, LogEvent, Usage};

struct Args {
    url: String,
    events: usize,
    batch: usize,
    clients: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:8123".into(),
        events: 100_000,
        batch: 500,
        clients: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--clickhouse-url" => a.url = value,
            "--events" => a.events = value.parse().expect("--events: a number"),
            "--batch" => a.batch = value.parse().expect("--batch: a number"),
            "--clients" => a.clients = value.parse().expect("--clients: a number"),
            other => {
                panic!("unknown flag {other} (--clickhouse-url, --events, --batch, --clients)")
            }
        }
    }
    a
}

/// A realistic event (≈ 200 bytes encoded): ids, key, tenant, models, usage, cost, timings.
fn event(run: u128, i: usize) -> LogEvent {
    LogEvent {
        request_id: format!("bench-{run:x}-{i:09}"),
        start_time_unix_nanos: 1_795_477_929_000_000_000 + i as i64 * 1_000_000,
        first_token_time_unix_nanos: 1_795_477_929_100_000_000 + i as i64 * 1_000_000,
        end_time_unix_nanos: 1_795_477_929_400_000_000 + i as i64 * 1_000_000,
        key_id: format!("key-{}", i % 50),
        tenant: format!("tenant-{}", i % 7),
        team: "ml-platform".into(),
        client_api: "openai".into(),
        endpoint: "chat_completions".into(),
        requested_model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        upstream_model: "gpt-4o-mini-2024-07-18".into(),
        stream: i.is_multiple_of(3),
        http_status: 200,
        usage: Some(Usage {
            input_tokens: 500 + (i % 1000) as u64,
            output_tokens: 100 + (i % 300) as u64,
            source: 1,
            ..Default::default()
        }),
        cost_picodollars: 150_000_000 + i as u64,
        cost_usd: 0.00015,
        gateway_overhead_ms: 0.4,
        upstream_latency_ms: 250.0,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let database = format!("tollgate_bench_{run:x}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = LoggerConfig::new(addr, "unused".into());
    config.sink = SinkConfig::ClickHouse(ClickHouseConfig {
        url: a.url.clone(),
        database: database.clone(),
        table: "requests".into(),
        user: "default".into(),
        password: None,
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_logger::serve(listener, config, async move {
        let _ = stop_rx.await;
    }));
    // Wait for the logger (its sink runs the migrations first).
    let mut client = loop {
        if let Ok(mut c) = tollgate_logger::shipper::connect(&addr.to_string()) {
            if c.ingest(LogBatch { events: vec![] }).await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Warm-up batch (not counted).
    client
        .ingest(LogBatch {
            events: (0..a.batch).map(|i| event(run + 1, i)).collect(),
        })
        .await
        .unwrap();

    let batches: Vec<LogBatch> = (0..a.events)
        .collect::<Vec<_>>()
        .chunks(a.batch)
        .map(|c| LogBatch {
            events: c.iter().map(|&i| event(run, i)).collect(),
        })
        .collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let queue = std::sync::Arc::clone(&queue);
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            loop {
                let Some(b) = queue.lock().unwrap().pop() else {
                    return written;
                };
                written += u64::from(c.ingest(b).await.unwrap().into_inner().written);
            }
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "{} events ({} written) in batches of {} from {} clients in {:.2} s: {:.0} events/s into ClickHouse ({}, database {database})",
        a.events,
        written,
        a.batch,
        a.clients,
        elapsed.as_secs_f64(),
        a.events as f64 / elapsed.as_secs_f64(),
        a.url
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
