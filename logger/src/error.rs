//! The logger crate's errors, and the one exhaustive function that maps each to a gRPC code
//! (and so to whether a sender should retry).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the logger and its sidecar-side shipper.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// An event has no `request_id` (the idempotency key).
    #[error("event {index} has no request_id")]
    MissingRequestId {
        /// Position of the event in its batch.
        index: usize,
    },
    /// An event is larger than the configured cap.
    #[error("event {index} (request_id {request_id}) is {size} bytes, over the {max}-byte cap")]
    EventTooLarge {
        /// Position of the event in its batch.
        index: usize,
        /// Its request id.
        request_id: String,
        /// Its encoded size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// A batch has more events than allowed.
    #[error("the batch has {count} events, over the cap of {max}")]
    BatchTooLarge {
        /// Events in the batch.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A file of the sink or spool could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The spool is at its size cap.
    #[error("the spool is full ({bytes} of {max} bytes)")]
    SpoolFull {
        /// Bytes in the spool.
        bytes: u64,
        /// The cap.
        max: u64,
    },
    /// ClickHouse refused or could not be reached.
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    /// An invalid setting.
    #[error("invalid logger config: {0}")]
    Config(String),
    /// An invalid `tollgate usage` query.
    #[error("invalid usage query: {0}")]
    Query(String),
    /// The listen address is unavailable.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A background task failed (panicked or was cancelled) or a lock was poisoned.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl LoggerError {
    /// The gRPC code a client sees for this error. `INVALID_ARGUMENT` means resending the same
    /// batch can never succeed; every other code means "try again later".
    pub fn code(&self) -> tonic::Code {
        match self {
            LoggerError::MissingRequestId { .. }
            | LoggerError::EventTooLarge { .. }
            | LoggerError::BatchTooLarge { .. }
            | LoggerError::Query(_) => tonic::Code::InvalidArgument,
            LoggerError::Io { .. } | LoggerError::SpoolFull { .. } | LoggerError::ClickHouse(_) => {
                tonic::Code::Unavailable
            }
            LoggerError::Config(_)
            | LoggerError::Listen { .. }
            | LoggerError::Transport(_)
            | LoggerError::Task(_) => tonic::Code::Internal,
        }
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        LoggerError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

impl From<LoggerError> for tonic::Status {
    fn from(e: LoggerError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}
