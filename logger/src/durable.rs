//! Small helpers for writes that must survive a crash (used by the NDJSON sink and the spool).

use std::fs::File;
use std::path::Path;

use crate::error::LoggerError;

/// Fsyncs a directory, so that files created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), LoggerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LoggerError::io("cannot fsync", dir, e))
}
