//! The logger over real gRPC: the sidecar's shipper (its real tonic client) against the real
//! server and NDJSON sink, graceful shutdown, and a malformed batch refused on the wire.

use std::time::Duration;

use tollgate_core::config::Logging;
use tollgate_core::metrics::{Metrics, OutcomeLabel};
use tollgate_logger::{LoggerConfig, Shipper};
use tollgate_proto::logger::v1::{LogBatch, LogEvent};

fn event(id: &str) -> LogEvent {
    LogEvent {
        request_id: id.to_owned(),
        http_status: 200,
        ..Default::default()
    }
}

#[tokio::test]
async fn shipped_events_are_stored_once_and_a_graceful_shutdown_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = dir.path().join("data");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tollgate_logger::serve(
        listener,
        LoggerConfig::new(addr, data.clone()),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let metrics = Metrics::default();
    let logging = Logging {
        address: addr.to_string(),
        spool_dir: dir.path().join("spool"),
        batch_size: 7,
        max_delay: Duration::from_secs(60),
        queue_capacity: 100,
        spool_max_bytes: 1 << 20,
        capture_max_bytes: 16 * 1024,
    };
    let shipper = Shipper::start(&logging, metrics.clone()).await.unwrap();
    let h = shipper.handle();
    for i in 0..20 {
        h.emit(event(&format!("r{i}")));
    }
    // The last 6 only leave because shutdown drains the queue (max_delay is a minute).
    shipper.shutdown().await;
    let sent = metrics
        .log_events
        .get_or_create(&OutcomeLabel { outcome: "sent" })
        .get();
    assert_eq!(sent, 20);

    // A replay of the same events is acknowledged and stored nowhere twice.
    let mut client = tollgate_logger::shipper::connect(&addr.to_string()).unwrap();
    let ack = client
        .ingest(LogBatch {
            events: vec![event("r0"), event("r19"), event("new")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.written, ack.duplicates), (1, 2));

    let err = client
        .ingest(LogBatch {
            events: vec![event("ok"), event("")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "event 1 has no request_id");

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    let ids: Vec<String> = tollgate_logger::ndjson::read_records(&data)
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    let mut want: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    want.push("new".to_owned());
    assert_eq!(ids, want);
}
