//! The local-file sink: events as NDJSON lines in `events-NNNNNNNNNN.ndjson` files under a
//! data directory, rotated by size, fsynced before a write returns, and idempotent on
//! `request_id` across restarts (the ids already stored are read back from the files at
//! start, so a replayed batch never writes a line twice). Feedback events go the same way
//! into `feedback/feedback-NNNNNNNNNN.ndjson` ([`FeedbackRecord`] lines, idempotent on
//! `feedback_id`), so readers of the request files never meet them. Evaluation results go to
//! `evaluations/evaluations-NNNNNNNNNN.ndjson` ([`EvaluationRecord`] lines, idempotent on
//! request id and evaluator).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tollgate_proto::logger::v1::LogEvent;

use crate::durable::sync_dir;
use crate::error::LoggerError;
use crate::record::{EvaluationId, EvaluationRecord, FeedbackId, FeedbackRecord, Record, RecordId};
use crate::sink::{Sink, WriteSummary};

const PREFIX: &str = "events-";
const FEEDBACK_PREFIX: &str = "feedback-";
const SUFFIX: &str = ".ndjson";
const EVALUATION_PREFIX: &str = "evaluations-";
/// The subdirectory of the data directory holding evaluation results.
pub const EVALUATION_DIR: &str = "evaluations";
/// The subdirectory of the data directory holding feedback files.
pub const FEEDBACK_DIR: &str = "feedback";

/// The NDJSON sink.
pub struct NdjsonSink {
    state: Arc<Mutex<Files>>,
}

/// Request files and feedback files.
struct Files {
    requests: State,
    feedback: State,
    evaluations: State,
}

/// One set of rotating files.
struct State {
    dir: PathBuf,
    prefix: &'static str,
    max_file_bytes: u64,
    seq: u64,
    file: Option<File>,
    len: u64,
    seen: HashSet<String>,
}

/// The path of file number `seq` under `dir`.
pub fn file_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{seq:010}{SUFFIX}"))
}

/// The sink's request files under `dir`, oldest first, with their sequence numbers.
pub fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LoggerError> {
    prefixed_files(dir, PREFIX)
}

/// Every stored evaluation result under the data directory `dir`, oldest first. Blocking.
pub fn read_evaluations(dir: &Path) -> Result<Vec<EvaluationRecord>, LoggerError> {
    read_lines(&dir.join(EVALUATION_DIR), EVALUATION_PREFIX, true)
}

/// Every stored feedback record under the data directory `dir`, oldest first. Blocking.
pub fn read_feedback(dir: &Path) -> Result<Vec<FeedbackRecord>, LoggerError> {
    read_lines(&dir.join(FEEDBACK_DIR), FEEDBACK_PREFIX, false)
}

fn prefixed_files(dir: &Path, prefix: &str) -> Result<Vec<(u64, PathBuf)>, LoggerError> {
    if (prefix == FEEDBACK_PREFIX || prefix == EVALUATION_PREFIX) && !dir.exists() {
        return Ok(Vec::new());
    }
    let rd = std::fs::read_dir(dir).map_err(|e| LoggerError::io("cannot list", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| LoggerError::io("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let seq = name
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(SUFFIX))
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every stored record under `dir`, oldest file first (for tools and tests; it reads every
/// file whole). Blocking.
pub fn read_records(dir: &Path) -> Result<Vec<Record>, LoggerError> {
    read_lines(dir, PREFIX, false)
}

/// [`read_records`] for a reader running beside a live logger: a partial last line (being
/// written, or left by a crash) is skipped instead of failing the read. Blocking.
pub fn read_records_live(dir: &Path) -> Result<Vec<Record>, LoggerError> {
    read_lines(dir, PREFIX, true)
}

fn read_lines<T: serde::de::DeserializeOwned>(
    dir: &Path,
    prefix: &str,
    skip_partial_tail: bool,
) -> Result<Vec<T>, LoggerError> {
    let mut out = Vec::new();
    let files = prefixed_files(dir, prefix)?;
    let last_file = files.len().saturating_sub(1);
    for (i, (_, path)) in files.iter().enumerate() {
        let text =
            std::fs::read_to_string(path).map_err(|e| LoggerError::io("cannot read", path, e))?;
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (j, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(record) => out.push(record),
                Err(_)
                    if skip_partial_tail && i == last_file && j + 1 == lines.len() && !complete => {
                }
                Err(e) => {
                    return Err(LoggerError::io(
                        "cannot parse a line of",
                        path,
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    ))
                }
            }
        }
    }
    Ok(out)
}

impl NdjsonSink {
    /// Opens (or creates) the sink in `dir`: reads back every stored request (and feedback)
    /// id, and cuts off a partial last line left by a crash mid-write (its batch was never
    /// acknowledged, so the sender still has it). Blocking: call it from a blocking context.
    pub fn open(dir: &Path, max_file_bytes: u64) -> Result<NdjsonSink, LoggerError> {
        let requests = State::open(dir, PREFIX, max_file_bytes, |line| {
            serde_json::from_slice::<RecordId>(line)
                .ok()
                .map(|r| r.request_id)
        })?;
        let feedback = State::open(
            &dir.join(FEEDBACK_DIR),
            FEEDBACK_PREFIX,
            max_file_bytes,
            |line| {
                serde_json::from_slice::<FeedbackId>(line)
                    .ok()
                    .map(|r| r.feedback_id)
            },
        )?;
        let evaluations = State::open(
            &dir.join(EVALUATION_DIR),
            EVALUATION_PREFIX,
            max_file_bytes,
            |line| {
                serde_json::from_slice::<EvaluationId>(line)
                    .ok()
                    .map(|r| format!("{}/{}", r.request_id, r.evaluator))
            },
        )?;
        Ok(NdjsonSink {
            state: Arc::new(Mutex::new(Files {
                requests,
                feedback,
                evaluations,
            })),
        })
    }

    fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Files) -> Result<T, LoggerError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, LoggerError>> {
        let state = Arc::clone(&self.state);
        async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = state
                    .lock()
                    .map_err(|_| LoggerError::Task("the NDJSON sink's lock is poisoned".into()))?;
                f(&mut guard)
            })
            .await
            .map_err(|e| LoggerError::Task(e.to_string()))?
        }
    }
}

impl State {
    /// Opens one set of files (`prefix`) in `dir`; `read_id` finds a stored line's id.
    fn open(
        dir: &Path,
        prefix: &'static str,
        max_file_bytes: u64,
        read_id: fn(&[u8]) -> Option<String>,
    ) -> Result<State, LoggerError> {
        std::fs::create_dir_all(dir).map_err(|e| LoggerError::io("cannot create", dir, e))?;
        let files = prefixed_files(dir, prefix)?;
        let mut seen = HashSet::new();
        let mut unreadable = 0usize;
        for (i, (_, path)) in files.iter().enumerate() {
            let mut text = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut text))
                .map_err(|e| LoggerError::io("cannot read", path, e))?;
            let last = i + 1 == files.len();
            let complete = match text.iter().rposition(|&b| b == b'\n') {
                Some(end) => end + 1,
                None => 0,
            };
            if complete < text.len() {
                if last {
                    tracing::warn!(path = %path.display(), bytes = text.len() - complete, "Cutting off a partial last line left by an interrupted write");
                    OpenOptions::new()
                        .write(true)
                        .open(path)
                        .and_then(|f| {
                            f.set_len(complete as u64)?;
                            f.sync_all()
                        })
                        .map_err(|e| LoggerError::io("cannot truncate", path, e))?;
                } else {
                    unreadable += 1;
                }
            }
            for line in text
                .get(..complete)
                .unwrap_or_default()
                .split(|&b| b == b'\n')
            {
                if line.is_empty() {
                    continue;
                }
                match read_id(line) {
                    Some(id) => {
                        seen.insert(id);
                    }
                    None => unreadable += 1,
                }
            }
        }
        if unreadable > 0 {
            tracing::warn!(dir = %dir.display(), lines = unreadable, "Skipped unreadable lines while reading back stored request ids");
        }
        let (seq, len, file) = match files.last() {
            Some((seq, path)) => {
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(|e| LoggerError::io("cannot open", path, e))?;
                let len = f
                    .seek(SeekFrom::End(0))
                    .map_err(|e| LoggerError::io("cannot open", path, e))?;
                (*seq, len, Some(f))
            }
            None => (0, 0, None),
        };
        tracing::info!(dir = %dir.display(), files = files.len(), stored = seen.len(), "Opened NDJSON files");
        Ok(State {
            dir: dir.to_owned(),
            prefix,
            max_file_bytes,
            seq,
            file,
            len,
            seen,
        })
    }

    fn current_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}{:010}{SUFFIX}", self.prefix, self.seq))
    }

    /// Opens the next file when the current one is missing or `incoming` would push it past
    /// the size cap (a non-empty file only: a batch is never split).
    fn rotate_if_needed(&mut self, incoming: u64) -> Result<(), LoggerError> {
        let full = self.len > 0 && self.len.saturating_add(incoming) > self.max_file_bytes;
        if self.file.is_some() && !full {
            return Ok(());
        }
        if let Some(old) = self.file.take() {
            let path = self.current_path();
            old.sync_all()
                .map_err(|e| LoggerError::io("cannot fsync", &path, e))?;
        }
        self.seq += 1;
        let path = self.current_path();
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| LoggerError::io("cannot create", &path, e))?;
        sync_dir(&self.dir)?;
        tracing::info!(path = %path.display(), "Opened a new NDJSON file");
        self.file = Some(f);
        self.len = 0;
        Ok(())
    }

    /// Appends one line per row, skipping ids already stored (`id` gives a row's).
    fn append<R: serde::Serialize>(
        &mut self,
        rows: &[R],
        id: impl Fn(&R) -> String,
    ) -> Result<u32, LoggerError> {
        let mut buf = Vec::new();
        let mut ids = HashSet::new();
        for row in rows {
            let key = id(row);
            if self.seen.contains(&key) || !ids.insert(key) {
                continue;
            }
            serde_json::to_writer(&mut buf, row)
                .map_err(|e| LoggerError::Task(format!("cannot serialise a row: {e}")))?;
            buf.push(b'\n');
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.rotate_if_needed(buf.len() as u64)?;
        let path = self.current_path();
        let Some(file) = self.file.as_mut() else {
            return Err(LoggerError::Task("no NDJSON file open".into()));
        };
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(self.len);
            return Err(LoggerError::io("cannot write", &path, e));
        }
        self.len += buf.len() as u64;
        let n = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        self.seen.extend(ids);
        Ok(n)
    }

    /// Appends one line per event (`row` gives its stored form), skipping ids already stored.
    fn write<R: serde::Serialize>(
        &mut self,
        events: &[&LogEvent],
        row: impl Fn(&LogEvent) -> Option<R>,
    ) -> Result<WriteSummary, LoggerError> {
        let mut buf = Vec::new();
        let mut ids = HashSet::new();
        let mut summary = WriteSummary::default();
        for e in events {
            if self.seen.contains(&e.request_id) || !ids.insert(e.request_id.as_str()) {
                summary.duplicates += 1;
                continue;
            }
            let Some(row) = row(e) else { continue };
            serde_json::to_writer(&mut buf, &row)
                .map_err(|e| LoggerError::Task(format!("cannot serialise an event: {e}")))?;
            buf.push(b'\n');
            summary.written += 1;
        }
        if buf.is_empty() {
            return Ok(summary);
        }
        self.rotate_if_needed(buf.len() as u64)?;
        let path = self.current_path();
        let Some(file) = self.file.as_mut() else {
            return Err(LoggerError::Task("no NDJSON file open".into()));
        };
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Leave no half batch behind: the sender will resend all of it.
            let _ = file.set_len(self.len);
            return Err(LoggerError::io("cannot write", &path, e));
        }
        self.len += buf.len() as u64;
        for id in ids {
            self.seen.insert(id.to_owned());
        }
        Ok(summary)
    }
}

#[tonic::async_trait]
impl Sink for NdjsonSink {
    async fn write(&self, events: Vec<LogEvent>) -> Result<WriteSummary, LoggerError> {
        self.with_state(move |s| {
            let (feedback, requests): (Vec<&LogEvent>, Vec<&LogEvent>) =
                events.iter().partition(|e| e.feedback.is_some());
            let mut summary = s.requests.write(&requests, |e| Some(Record::from(e)))?;
            if !feedback.is_empty() {
                let f = s.feedback.write(&feedback, FeedbackRecord::from_event)?;
                summary.written += f.written;
                summary.duplicates += f.duplicates;
            }
            Ok(summary)
        })
        .await
    }

    async fn write_evaluations(&self, rows: Vec<EvaluationRecord>) -> Result<u32, LoggerError> {
        self.with_state(move |s| s.evaluations.append(&rows, EvaluationRecord::id))
            .await
    }

    async fn close(&self) -> Result<(), LoggerError> {
        self.with_state(|s| {
            for files in [&mut s.requests, &mut s.feedback, &mut s.evaluations] {
                if let Some(f) = files.file.take() {
                    let path = files.current_path();
                    f.sync_all()
                        .map_err(|e| LoggerError::io("cannot fsync", &path, e))?;
                }
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
