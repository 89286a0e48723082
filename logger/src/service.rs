//! The `tollgate.logger.v1.LogIngest` gRPC service: validates a batch, writes it to the sink,
//! and acknowledges it only once the sink says it is durable. With an evaluation stage, the
//! sampled events of a durable batch are then offered to it without waiting
//! ([`crate::evaluate`]).

use std::sync::Arc;

use prost::Message as _;
use tollgate_proto::logger::v1::log_ingest_server::LogIngest;
use tollgate_proto::logger::v1::{IngestAck, LogBatch};
use tonic::{Request, Response, Status};

use crate::config::Limits;
use crate::error::LoggerError;
use crate::sink::Sink;

/// The ingest service over one sink.
pub struct IngestService {
    sink: Arc<dyn Sink>,
    limits: Limits,
    stage: Option<Arc<crate::evaluate::Stage>>,
}

impl IngestService {
    /// A service writing to `sink`, refusing batches outside `limits`.
    pub fn new(sink: Arc<dyn Sink>, limits: Limits) -> Self {
        Self {
            sink,
            limits,
            stage: None,
        }
    }

    /// The same, offering durable events to an evaluation stage.
    pub fn with_stage(mut self, stage: Arc<crate::evaluate::Stage>) -> Self {
        self.stage = Some(stage);
        self
    }
}

/// Checks a whole batch; the first problem refuses all of it (nothing is written).
pub fn validate(batch: &LogBatch, limits: Limits) -> Result<(), LoggerError> {
    if batch.events.len() > limits.max_batch_events {
        return Err(LoggerError::BatchTooLarge {
            count: batch.events.len(),
            max: limits.max_batch_events,
        });
    }
    for (index, e) in batch.events.iter().enumerate() {
        if e.request_id.trim().is_empty() {
            return Err(LoggerError::MissingRequestId { index });
        }
        let size = e.encoded_len();
        if size > limits.max_event_bytes {
            return Err(LoggerError::EventTooLarge {
                index,
                request_id: e.request_id.chars().take(64).collect(),
                size,
                max: limits.max_event_bytes,
            });
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl LogIngest for IngestService {
    async fn ingest(&self, request: Request<LogBatch>) -> Result<Response<IngestAck>, Status> {
        let batch = request.into_inner();
        if let Err(e) = validate(&batch, self.limits) {
            tracing::warn!(events = batch.events.len(), error = %e, "Refused a malformed batch");
            return Err(e.into());
        }
        let events = batch.events.len();
        // Copied before the write (which takes the batch), offered only after it is durable.
        let sampled: Vec<_> = match &self.stage {
            Some(stage) => batch
                .events
                .iter()
                .filter(|e| stage.wants(e))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        match self.sink.write(batch.events).await {
            Ok(s) => {
                if let Some(stage) = &self.stage {
                    if !sampled.is_empty() {
                        stage.offer(sampled);
                    }
                }
                tracing::debug!(
                    events,
                    written = s.written,
                    duplicates = s.duplicates,
                    "Stored a batch"
                );
                Ok(Response::new(IngestAck {
                    written: s.written,
                    duplicates: s.duplicates,
                }))
            }
            Err(e) => {
                tracing::error!(events, error = %e, "Could not store a batch; the sender will retry");
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ndjson::NdjsonSink;
    use tollgate_proto::logger::v1::LogEvent;

    const LIMITS: Limits = Limits {
        max_event_bytes: 200,
        max_batch_events: 3,
    };

    fn ev(id: &str) -> LogEvent {
        LogEvent {
            request_id: id.to_owned(),
            ..Default::default()
        }
    }

    async fn service() -> (tempfile::TempDir, IngestService) {
        let dir = tempfile::tempdir().unwrap();
        let sink = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
        (dir, IngestService::new(Arc::new(sink), LIMITS))
    }

    fn stored(dir: &std::path::Path) -> usize {
        crate::ndjson::files(dir)
            .unwrap()
            .iter()
            .map(|(_, p)| std::fs::read_to_string(p).unwrap().lines().count())
            .sum()
    }

    #[tokio::test]
    async fn a_batch_with_an_event_missing_its_request_id_is_refused_whole() {
        let (dir, svc) = service().await;
        let err = svc
            .ingest(Request::new(LogBatch {
                events: vec![ev("a"), ev("")],
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "event 1 has no request_id");
        assert_eq!(stored(dir.path()), 0);
    }

    #[tokio::test]
    async fn an_oversized_event_or_batch_is_refused_with_a_clear_message() {
        let (dir, svc) = service().await;
        let mut big = ev("big");
        big.requested_model = "m".repeat(300);
        let err = svc
            .ingest(Request::new(LogBatch {
                events: vec![ev("a"), big],
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with("event 1 (request_id big) is 3")
                && err.message().ends_with("over the 200-byte cap"),
            "{}",
            err.message()
        );
        let err = svc
            .ingest(Request::new(LogBatch {
                events: vec![ev("a"), ev("b"), ev("c"), ev("d")],
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "the batch has 4 events, over the cap of 3");
        assert_eq!(stored(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_valid_batch_is_acknowledged_after_it_is_stored_and_replays_are_free() {
        let (dir, svc) = service().await;
        let batch = LogBatch {
            events: vec![ev("a"), ev("b")],
        };
        let ack = svc.ingest(Request::new(batch.clone())).await.unwrap();
        assert_eq!(
            ack.get_ref(),
            &IngestAck {
                written: 2,
                duplicates: 0
            }
        );
        assert_eq!(stored(dir.path()), 2);
        let ack = svc.ingest(Request::new(batch)).await.unwrap();
        assert_eq!(
            ack.get_ref(),
            &IngestAck {
                written: 0,
                duplicates: 2
            }
        );
        assert_eq!(stored(dir.path()), 2);
    }
}
