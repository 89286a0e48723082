//! The logger's settings (from `tollgate logger` flags, or set by `tollgate up`) and the
//! limits its ingest service enforces.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::clickhouse::ClickHouseConfig;
use crate::error::LoggerError;

/// Which sink stores the events.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// Rotating NDJSON files (the default, and what `tollgate up` uses).
    Ndjson {
        /// The directory (created when missing).
        data_dir: PathBuf,
        /// An NDJSON file is rotated once it would grow past this size, in bytes. A file may
        /// exceed it by at most one batch: a batch is never split across files.
        max_file_bytes: u64,
    },
    /// A ClickHouse table.
    ClickHouse(ClickHouseConfig),
}

/// Everything `tollgate logger` needs.
#[derive(Debug, Clone)]
pub struct LoggerConfig {
    /// The gRPC address to listen on.
    pub listen: SocketAddr,
    /// Where events are stored.
    pub sink: SinkConfig,
    /// The largest event accepted, in encoded bytes; a batch holding a larger one is refused
    /// with `INVALID_ARGUMENT`.
    pub max_event_bytes: usize,
    /// The most events in one batch; a larger batch is refused with `INVALID_ARGUMENT`.
    pub max_batch_events: usize,
    /// The logger-side spool: when set, a batch the sink cannot take right now is kept here,
    /// acknowledged, and replayed into the sink once it is back. Without it the logger answers
    /// `UNAVAILABLE` and the sidecars keep the batch.
    pub spool_dir: Option<PathBuf>,
    /// The logger-side spool's size cap in bytes.
    pub spool_max_bytes: u64,
    /// The evaluation stage (`tollgate logger --config`'s `evaluators` section); `None`: off.
    pub evaluators: Option<crate::evaluate::Setup>,
    /// The evaluation stage's metrics (served by `--metrics-listen`).
    pub evaluation_metrics: tollgate_core::evaluation_metrics::EvaluationMetrics,
}

/// Default of [`LoggerConfig::spool_max_bytes`]: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Default of [`LoggerConfig::max_file_bytes`]: 128 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// Default of [`LoggerConfig::max_event_bytes`]: 256 KiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;
/// Default of [`LoggerConfig::max_batch_events`].
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 10_000;

impl LoggerConfig {
    /// A config with the NDJSON sink in `data_dir` and the default limits.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            sink: SinkConfig::Ndjson {
                data_dir,
                max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            },
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            evaluators: None,
            evaluation_metrics: Default::default(),
        }
    }

    /// Checks every limit, naming the flag at fault.
    pub fn validate(&self) -> Result<(), LoggerError> {
        match &self.sink {
            SinkConfig::Ndjson {
                data_dir,
                max_file_bytes,
            } => {
                if data_dir.as_os_str().is_empty() {
                    return Err(LoggerError::Config("--data-dir must not be empty".into()));
                }
                if *max_file_bytes < 1024 {
                    return Err(LoggerError::Config(
                        "--max-file-bytes must be at least 1024".into(),
                    ));
                }
            }
            SinkConfig::ClickHouse(c) => c.validate()?,
        }
        if !(64..=16 * 1024 * 1024).contains(&self.max_event_bytes) {
            return Err(LoggerError::Config(
                "--max-event-bytes must be between 64 and 16777216".into(),
            ));
        }
        if self.spool_dir.is_some() && self.spool_max_bytes < 1024 * 1024 {
            return Err(LoggerError::Config(
                "--spool-max-bytes must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if !(1..=100_000).contains(&self.max_batch_events) {
            return Err(LoggerError::Config(
                "--max-batch-events must be between 1 and 100000".into(),
            ));
        }
        Ok(())
    }

    /// The limits the ingest service checks.
    pub fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_batch_events: self.max_batch_events,
        }
    }

    /// The largest gRPC message accepted: a full batch of the largest events, capped at
    /// 256 MiB. A larger message never reaches validation (`RESOURCE_EXHAUSTED`).
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_events
            .saturating_mul(self.max_event_bytes.saturating_add(8))
            .min(256 * 1024 * 1024)
    }
}

/// What a batch must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest event, in encoded bytes.
    pub max_event_bytes: usize,
    /// The most events in one batch.
    pub max_batch_events: usize,
}
