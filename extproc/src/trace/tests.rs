//! Sampling, the bounded queue, and the exporter against an in-process OTLP/gRPC collector.

use std::time::Duration;

use tokio::sync::mpsc;
use tollgate_core::config::{TraceProtocol, Traces};
use tollgate_proto::otlp::collector::trace_service_server::{TraceService, TraceServiceServer};
use tollgate_proto::otlp::collector::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use super::*;

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn facts<'a>(verdicts: &'a Verdicts) -> Facts<'a> {
    let now = SystemTime::now();
    Facts {
        request_id: "rid",
        key_id: "k",
        tenant: "",
        team: "",
        end_user: "someone",
        dialect: tollgate_core::Dialect::OpenAi,
        endpoint: "chat_completions",
        requested_model: "m",
        provider: "p",
        upstream_model: "m-upstream",
        stream: false,
        status: 200,
        error_class: "",
        usage: None,
        started: now,
        first_byte: None,
        ended: now,
        overhead: Duration::ZERO,
        upstream_latency: None,
        cost: None,
        guardrails: verdicts,
        payload: None,
    }
}

fn end(tracer: &Tracer, span: Box<RequestSpan>) {
    let verdicts = Verdicts::default();
    let f = facts(&verdicts);
    let end = SpanEnd {
        facts: &f,
        endpoint: Some(Endpoint::ChatCompletions),
        provider: None,
    };
    tracer.end(span, &end);
}

#[test]
fn sampling_follows_the_parent_and_else_the_ratio() {
    let (never, _rx) = Tracer::channel(0.0, 8, Metrics::default());
    let (always, _rx2) = Tracer::channel(1.0, 8, Metrics::default());
    let at = SystemTime::now();
    let unsampled = PARENT.replace("-01", "-00");
    let remote = |parent: &[u8], state: Option<&[u8]>| Remote::read(Some(parent), state);
    for _ in 0..100 {
        assert!(never.start(None, at).is_none());
        assert!(always.start(None, at).is_some());
        assert!(always
            .start(remote(unsampled.as_bytes(), None), at)
            .is_none());
    }
    // A sampled parent is followed whatever the ratio, its state kept.
    let span = never
        .start(remote(PARENT.as_bytes(), Some(b"vendor=1")), at)
        .unwrap();
    assert_eq!(hex(span.trace_id()), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        span.parent_span_id,
        Some(*b"\xb7\xad\x6b\x71\x69\x20\x33\x31")
    );
    assert_eq!(span.trace_state, "vendor=1");
    assert_ne!(span.span_id(), &span.parent_span_id.unwrap());
    // A malformed parent is none: a new trace (and then the ratio decides), without state.
    assert_eq!(remote(b"00-zz", Some(b"vendor=1")), None);

    let (half, _rx3) = Tracer::channel(0.5, 8, Metrics::default());
    let sampled = (0..4000).filter(|_| half.start(None, at).is_some()).count();
    assert!((1600..2400).contains(&sampled), "{sampled} of 4000");
}

#[test]
fn a_full_queue_drops_and_counts_rather_than_waits() {
    let metrics = Metrics::default();
    let (tracer, mut rx) = Tracer::channel(1.0, 1, metrics.clone());
    let at = SystemTime::now();
    for _ in 0..3 {
        end(&tracer, tracer.start(None, at).unwrap());
    }
    assert!(rx.try_recv().is_ok());
    assert!(rx.try_recv().is_err());
    let dropped = metrics
        .trace_spans
        .get_or_create(&tollgate_core::metrics::OutcomeLabel { outcome: "dropped" })
        .get();
    assert_eq!(dropped, 2);
}

/// An OTLP/gRPC collector that hands every request to the test, and rejects one span of
/// each batch when told to.
struct Collector {
    seen: mpsc::UnboundedSender<ExportTraceServiceRequest>,
    reject_one: bool,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.seen.send(request.into_inner()).unwrap();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: self.reject_one.then(|| ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: "one too many".to_owned(),
            }),
        }))
    }
}

async fn collector(
    reject_one: bool,
) -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector { seen, reject_one }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
}

fn config(endpoint: String, batch_size: usize) -> Traces {
    Traces {
        endpoint,
        protocol: TraceProtocol::Grpc,
        sample_ratio: 1.0,
        service_name: "tollgate-test".to_owned(),
        queue_capacity: 64,
        batch_size,
        max_delay: Duration::from_secs(60),
        timeout: Duration::from_secs(5),
    }
}

fn count(metrics: &Metrics, outcome: &'static str) -> u64 {
    metrics
        .trace_spans
        .get_or_create(&tollgate_core::metrics::OutcomeLabel { outcome })
        .get()
}

#[tokio::test]
async fn full_batches_go_at_once_and_the_rest_on_shutdown() {
    let (endpoint, mut seen) = collector(false).await;
    let metrics = Metrics::default();
    let exporter = Exporter::start(&config(endpoint, 2), metrics.clone()).unwrap();
    let tracer = exporter.tracer();
    let at = SystemTime::now();
    for _ in 0..3 {
        end(&tracer, tracer.start(None, at).unwrap());
    }
    // The first two fill a batch, sent without waiting for `max_delay` (a minute).
    let first = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap()
        .unwrap();
    let rs = &first.resource_spans[0];
    let service = &rs.resource.as_ref().unwrap().attributes[0];
    assert_eq!(service.key, "service.name");
    assert_eq!(
        service.value.as_ref().unwrap().value,
        Some(Value::StringValue("tollgate-test".to_owned()))
    );
    assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "tollgate");
    assert_eq!(rs.scope_spans[0].spans.len(), 2);
    assert_eq!(rs.scope_spans[0].spans[0].name, "chat m");
    // The third waits for its batch, and goes out when the exporter is shut down.
    assert!(seen.try_recv().is_err());
    exporter.shutdown().await;
    let last = seen.try_recv().unwrap();
    assert_eq!(last.resource_spans[0].scope_spans[0].spans.len(), 1);
    assert_eq!(count(&metrics, "exported"), 3);
    // Shut down: a span that ends now is dropped and counted.
    end(&tracer, tracer.start(None, at).unwrap());
    assert_eq!(count(&metrics, "dropped"), 1);
}

#[tokio::test]
async fn refused_and_unanswered_exports_are_counted_as_failed() {
    let (endpoint, mut seen) = collector(true).await;
    let metrics = Metrics::default();
    let exporter = Exporter::start(&config(endpoint, 2), metrics.clone()).unwrap();
    let tracer = exporter.tracer();
    let at = SystemTime::now();
    for _ in 0..2 {
        end(&tracer, tracer.start(None, at).unwrap());
    }
    seen.recv().await.unwrap();
    exporter.shutdown().await;
    assert_eq!(
        (count(&metrics, "exported"), count(&metrics, "failed")),
        (1, 1)
    );

    // Nobody listens on a port just released: the batch fails, the exporter carries on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let metrics = Metrics::default();
    let exporter = Exporter::start(&config(endpoint, 1), metrics.clone()).unwrap();
    end(
        &exporter.tracer(),
        exporter.tracer().start(None, at).unwrap(),
    );
    exporter.shutdown().await;
    assert_eq!(
        (count(&metrics, "exported"), count(&metrics, "failed")),
        (0, 1)
    );
}
