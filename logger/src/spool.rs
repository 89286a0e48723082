//! The sidecar's disk spool: batches that could not reach the logger (or did not fit the
//! in-memory queue), one file per batch (`NNNNNNNNNNNNNNNNNNNN.batch`, the protobuf
//! `LogBatch`), replayed oldest first. A file appears whole or not at all (written to a
//! temporary name, fsynced, renamed, directory fsynced), and the spool is capped in bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use tollgate_proto::logger::v1::LogBatch;

use crate::durable::sync_dir;
use crate::error::LoggerError;

const SUFFIX: &str = ".batch";
const TMP_SUFFIX: &str = ".tmp";

/// A spool directory.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Batches and bytes spooled, kept up to date when set ([`Spool::with_gauges`]).
    gauges: Option<(Gauge, Gauge)>,
}

struct State {
    next_seq: u64,
    /// Spooled files by sequence number, with their sizes.
    files: BTreeMap<u64, u64>,
    bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, forgetting temporary files a crash left behind
    /// (their batches were never taken off the queue for good). Blocking.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, LoggerError> {
        std::fs::create_dir_all(dir).map_err(|e| LoggerError::io("cannot create", dir, e))?;
        let mut files = BTreeMap::new();
        let mut bytes = 0;
        let rd = std::fs::read_dir(dir).map_err(|e| LoggerError::io("cannot list", dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| LoggerError::io("cannot list", dir, e))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(TMP_SUFFIX) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name
                .strip_suffix(SUFFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            files.insert(seq, len);
            bytes += len;
        }
        let next_seq = files.keys().next_back().map_or(1, |s| s + 1);
        if !files.is_empty() {
            tracing::info!(dir = %dir.display(), batches = files.len(), bytes, "Found spooled log batches; they will be replayed");
        }
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(State {
                next_seq,
                files,
                bytes,
            }),
            gauges: None,
        })
    }

    /// Keeps `batches` and `bytes` set to what the spool holds (`tollgate_log_spool_batches`,
    /// `tollgate_log_spool_bytes`).
    pub fn with_gauges(mut self, batches: Gauge, bytes: Gauge) -> Self {
        self.gauges = Some((batches, bytes));
        if let Ok(state) = self.lock() {
            self.publish(&state);
        }
        self
    }

    fn publish(&self, state: &State) {
        if let Some((batches, bytes)) = &self.gauges {
            batches.set(i64::try_from(state.files.len()).unwrap_or(i64::MAX));
            bytes.set(i64::try_from(state.bytes).unwrap_or(i64::MAX));
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, LoggerError> {
        self.state
            .lock()
            .map_err(|_| LoggerError::Task("the spool's lock is poisoned".into()))
    }

    fn path(&self, seq: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{seq:020}{suffix}"))
    }

    /// Whether no batch waits in the spool.
    pub fn is_empty(&self) -> bool {
        self.lock().map(|s| s.files.is_empty()).unwrap_or(false)
    }

    /// Batches waiting in the spool.
    pub fn len(&self) -> usize {
        self.lock().map(|s| s.files.len()).unwrap_or(0)
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), LoggerError> {
        let tmp = path.with_extension("tmp");
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(LoggerError::io("cannot write", path, e));
        }
        sync_dir(&self.dir)
    }

    /// Appends a batch (durably) behind every batch already spooled. Blocking.
    pub fn push(&self, batch: &LogBatch) -> Result<(), LoggerError> {
        let bytes = batch.encode_to_vec();
        let len = bytes.len() as u64;
        let mut state = self.lock()?;
        if state.bytes.saturating_add(len) > self.max_bytes {
            return Err(LoggerError::SpoolFull {
                bytes: state.bytes,
                max: self.max_bytes,
            });
        }
        let seq = state.next_seq;
        self.write_file(&self.path(seq, SUFFIX), &bytes)?;
        state.next_seq += 1;
        state.files.insert(seq, len);
        state.bytes += len;
        self.publish(&state);
        Ok(())
    }

    /// The oldest spooled batch, with its sequence number. A file that no longer decodes is
    /// renamed `*.corrupt`, logged and skipped. Blocking.
    pub fn oldest(&self) -> Result<Option<(u64, LogBatch)>, LoggerError> {
        loop {
            let Some(seq) = self.lock()?.files.keys().next().copied() else {
                return Ok(None);
            };
            let path = self.path(seq, SUFFIX);
            let bytes =
                std::fs::read(&path).map_err(|e| LoggerError::io("cannot read", &path, e))?;
            match LogBatch::decode(bytes.as_slice()) {
                Ok(batch) => return Ok(Some((seq, batch))),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "A spooled batch does not decode; setting it aside as .corrupt");
                    self.set_aside(seq, ".corrupt")?;
                }
            }
        }
    }

    /// Deletes a batch the logger acknowledged. Blocking.
    pub fn remove(&self, seq: u64) -> Result<(), LoggerError> {
        let path = self.path(seq, SUFFIX);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LoggerError::io("cannot remove", &path, e)),
        }
        self.forget(seq)
    }

    /// Rewrites the spooled batch `seq` as `batch` (what is left of it once part of it was
    /// delivered), keeping its place in the replay order. Blocking.
    pub fn replace(&self, seq: u64, batch: &LogBatch) -> Result<(), LoggerError> {
        let bytes = batch.encode_to_vec();
        let len = bytes.len() as u64;
        let mut state = self.lock()?;
        let Some(old) = state.files.get(&seq).copied() else {
            return Ok(());
        };
        self.write_file(&self.path(seq, SUFFIX), &bytes)?;
        state.files.insert(seq, len);
        state.bytes = state.bytes.saturating_sub(old).saturating_add(len);
        self.publish(&state);
        Ok(())
    }

    /// Moves a batch out of the replay order, keeping it on disk as `NNN<suffix>` for an
    /// operator to look at. Blocking.
    pub fn set_aside(&self, seq: u64, suffix: &str) -> Result<(), LoggerError> {
        let from = self.path(seq, SUFFIX);
        let to = self.path(seq, suffix);
        std::fs::rename(&from, &to).map_err(|e| LoggerError::io("cannot rename", &from, e))?;
        self.forget(seq)
    }

    /// Writes a batch straight to the set-aside name `NNN<suffix>` (a batch the logger refused
    /// that never was in the spool). Blocking.
    pub fn keep_aside(&self, batch: &LogBatch, suffix: &str) -> Result<PathBuf, LoggerError> {
        let mut state = self.lock()?;
        let seq = state.next_seq;
        state.next_seq += 1;
        drop(state);
        let path = self.path(seq, suffix);
        self.write_file(&path, &batch.encode_to_vec())?;
        Ok(path)
    }

    /// Runs a blocking spool operation off the async workers.
    pub async fn blocking<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Spool) -> Result<R, LoggerError> + Send + 'static,
    ) -> Result<R, LoggerError> {
        let spool = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(|e| LoggerError::Task(e.to_string()))?
    }

    fn forget(&self, seq: u64) -> Result<(), LoggerError> {
        let mut state = self.lock()?;
        if let Some(len) = state.files.remove(&seq) {
            state.bytes = state.bytes.saturating_sub(len);
        }
        self.publish(&state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_proto::logger::v1::LogEvent;

    fn batch(ids: &[&str]) -> LogBatch {
        LogBatch {
            events: ids
                .iter()
                .map(|id| LogEvent {
                    request_id: (*id).to_owned(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn ids(b: &LogBatch) -> Vec<&str> {
        b.events.iter().map(|e| e.request_id.as_str()).collect()
    }

    #[test]
    fn batches_come_back_oldest_first_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..12 {
            spool.push(&batch(&[&format!("r{i}")])).unwrap();
        }
        let (seq, first) = spool.oldest().unwrap().unwrap();
        assert_eq!(ids(&first), ["r0"]);
        spool.remove(seq).unwrap();
        drop(spool);
        // A crash left a temporary file: it is ignored.
        std::fs::write(dir.path().join("00000000000000000099.tmp"), b"junk").unwrap();

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&batch(&["after-restart"])).unwrap();
        let mut order = Vec::new();
        while let Some((seq, b)) = spool.oldest().unwrap() {
            order.extend(ids(&b).into_iter().map(str::to_owned));
            spool.remove(seq).unwrap();
        }
        let mut expected: Vec<String> = (1..12).map(|i| format!("r{i}")).collect();
        expected.push("after-restart".to_owned());
        assert_eq!(order, expected);
        assert!(spool.is_empty());
        assert!(!dir.path().join("00000000000000000099.tmp").exists());
    }

    #[test]
    fn the_spool_refuses_what_would_pass_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch(&["0123456789"]).encode_to_vec().len() as u64;
        let spool = Spool::open(dir.path(), 2 * one).unwrap();
        spool.push(&batch(&["0123456789"])).unwrap();
        spool.push(&batch(&["abcdefghij"])).unwrap();
        let err = spool.push(&batch(&["klmnopqrst"])).unwrap_err();
        assert!(matches!(err, LoggerError::SpoolFull { .. }), "{err}");
        let (seq, _) = spool.oldest().unwrap().unwrap();
        spool.remove(seq).unwrap();
        spool.push(&batch(&["klmnopqrst"])).unwrap();
        assert_eq!(spool.len(), 2);
    }

    #[test]
    fn gauges_follow_what_the_spool_holds() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&batch(&["before"])).unwrap();
        let (batches, bytes) = (Gauge::default(), Gauge::default());
        let spool = spool.with_gauges(batches.clone(), bytes.clone());
        assert_eq!(batches.get(), 1);
        let one = bytes.get();
        assert!(one > 0);
        spool.push(&batch(&["after"])).unwrap();
        assert_eq!((batches.get(), bytes.get() > one), (2, true));
        let (seq, _) = spool.oldest().unwrap().unwrap();
        spool.remove(seq).unwrap();
        let (seq, _) = spool.oldest().unwrap().unwrap();
        spool.set_aside(seq, ".rejected").unwrap();
        assert_eq!((batches.get(), bytes.get()), (0, 0));
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(&batch(&["a"])).unwrap();
        spool.push(&batch(&["b"])).unwrap();
        std::fs::write(spool.path(1, SUFFIX), [0xff, 0xff, 0xff]).unwrap();
        let (_, b) = spool.oldest().unwrap().unwrap();
        assert_eq!(ids(&b), ["b"]);
        assert!(spool.path(1, ".corrupt").exists());
    }
}
