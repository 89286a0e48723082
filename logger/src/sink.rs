//! The sink contract: where validated events end up. A sink's `write` returns only once the
//! events are durable, and is idempotent on `request_id`.

use tollgate_proto::logger::v1::LogEvent;

use crate::error::LoggerError;
use crate::record::EvaluationRecord;

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Events stored by this write.
    pub written: u32,
    /// Events skipped because their `request_id` was already stored (or repeated in the batch).
    pub duplicates: u32,
}

/// A durable, idempotent destination for log events.
#[tonic::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Stores `events`, skipping any whose `request_id` is already stored; returns once every
    /// stored event is durable. On error nothing of the batch may be assumed stored, and the
    /// caller may resend it whole.
    async fn write(&self, events: Vec<LogEvent>) -> Result<WriteSummary, LoggerError>;

    /// Stores evaluation results, skipping any (`request_id`, `evaluator`) already stored;
    /// returns once they are durable. Sinks without a place for them refuse them.
    async fn write_evaluations(&self, rows: Vec<EvaluationRecord>) -> Result<u32, LoggerError> {
        let _ = rows;
        Err(LoggerError::Config(
            "this sink does not store evaluation results".into(),
        ))
    }

    /// Flushes and closes; called once, after the last write.
    async fn close(&self) -> Result<(), LoggerError>;
}
