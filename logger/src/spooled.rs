//! The logger-side spool: a sink wrapper that keeps the logger acknowledging batches while its
//! sink (ClickHouse) is away. A batch the sink cannot take right now (an `UNAVAILABLE` error)
//! is written durably to a local [`Spool`] and acknowledged; a background task replays the
//! spool into the sink, oldest first, once it is back. Replays rely on the sink being
//! idempotent on `request_id`, so a batch that was stored after all is not stored twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_proto::logger::v1::{LogBatch, LogEvent};

use crate::error::LoggerError;
use crate::sink::{Sink, WriteSummary};
use crate::spool::Spool;

/// A sink with a disk spool in front of it.
pub struct SpooledSink {
    inner: Arc<dyn Sink>,
    spool: Arc<Spool>,
    stop: watch::Sender<bool>,
    replay: Mutex<Option<JoinHandle<()>>>,
}

impl SpooledSink {
    /// Wraps `inner`; the replay task tries the spool every `retry` (and at once at start, for
    /// batches an earlier run left).
    pub fn new(inner: Arc<dyn Sink>, spool: Arc<Spool>, retry: Duration) -> SpooledSink {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(replay(
            Arc::clone(&inner),
            Arc::clone(&spool),
            retry,
            stop_rx,
        ));
        SpooledSink {
            inner,
            spool,
            stop,
            replay: Mutex::new(Some(task)),
        }
    }
}

/// Replays the spool into the sink until it is empty or the sink fails; returns the events
/// stored.
async fn drain(inner: &Arc<dyn Sink>, spool: &Arc<Spool>) -> Result<u64, LoggerError> {
    let mut stored = 0;
    while let Some((seq, batch)) = spool.blocking(|s| s.oldest()).await? {
        let n = batch.events.len() as u64;
        inner.write(batch.events).await?;
        spool.blocking(move |s| s.remove(seq)).await?;
        stored += n;
    }
    Ok(stored)
}

async fn replay(
    inner: Arc<dyn Sink>,
    spool: Arc<Spool>,
    retry: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if !spool.is_empty() {
            match drain(&inner, &spool).await {
                Ok(n) => tracing::info!(events = n, "Replayed the logger's spool into the sink"),
                Err(e) => tracing::debug!(error = %e, "Sink still away; replay later"),
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

#[tonic::async_trait]
impl Sink for SpooledSink {
    async fn write(&self, events: Vec<LogEvent>) -> Result<WriteSummary, LoggerError> {
        let n = events.len();
        match self.inner.write(events.clone()).await {
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tracing::warn!(events = n, error = %e, "Sink unavailable: spooling the batch on the logger");
                self.spool
                    .blocking(move |s| s.push(&LogBatch { events }))
                    .await?;
                Ok(WriteSummary {
                    written: u32::try_from(n).unwrap_or(u32::MAX),
                    duplicates: 0,
                })
            }
            other => other,
        }
    }

    async fn write_evaluations(
        &self,
        rows: Vec<crate::record::EvaluationRecord>,
    ) -> Result<u32, LoggerError> {
        // Results are not spooled: the stage retries, then counts them dropped.
        self.inner.write_evaluations(rows).await
    }

    async fn close(&self) -> Result<(), LoggerError> {
        let _ = self.stop.send(true);
        let task = self.replay.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        // A last try, so that a clean stop leaves as little as possible behind.
        if !self.spool.is_empty() {
            if let Err(e) = drain(&self.inner, &self.spool).await {
                tracing::warn!(batches = self.spool.len(), error = %e, "Stopping with batches in the logger's spool; the next start replays them");
            }
        }
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// An idempotent in-memory sink that can be switched off.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        stored: Mutex<Vec<String>>,
    }

    #[tonic::async_trait]
    impl Sink for Flaky {
        async fn write(&self, events: Vec<LogEvent>) -> Result<WriteSummary, LoggerError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(LoggerError::ClickHouse("connection refused".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            let seen: HashSet<String> = stored.iter().cloned().collect();
            let mut s = WriteSummary::default();
            for e in events {
                if seen.contains(&e.request_id) {
                    s.duplicates += 1;
                } else {
                    stored.push(e.request_id);
                    s.written += 1;
                }
            }
            Ok(s)
        }
        async fn close(&self) -> Result<(), LoggerError> {
            Ok(())
        }
    }

    fn batch(ids: &[&str]) -> Vec<LogEvent> {
        ids.iter()
            .map(|id| LogEvent {
                request_id: (*id).to_owned(),
                ..Default::default()
            })
            .collect()
    }

    #[tokio::test]
    async fn while_the_sink_is_away_batches_are_acknowledged_from_the_spool_and_replayed_later() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(Flaky::default());
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
        let sink = SpooledSink::new(inner.clone(), Arc::clone(&spool), Duration::from_millis(10));

        sink.write(batch(&["a", "b"])).await.unwrap();
        inner.down.store(true, Ordering::SeqCst);
        let s = sink.write(batch(&["c"])).await.unwrap();
        assert_eq!(s.written, 1);
        sink.write(batch(&["d", "e"])).await.unwrap();
        assert_eq!(spool.len(), 2);

        inner.down.store(false, Ordering::SeqCst);
        for _ in 0..300 {
            if spool.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(spool.is_empty());
        assert_eq!(*inner.stored.lock().unwrap(), ["a", "b", "c", "d", "e"]);
        sink.close().await.unwrap();
    }

    #[tokio::test]
    async fn other_errors_are_not_hidden_in_the_spool() {
        struct Broken;
        #[tonic::async_trait]
        impl Sink for Broken {
            async fn write(&self, _: Vec<LogEvent>) -> Result<WriteSummary, LoggerError> {
                Err(LoggerError::Task("bug".into()))
            }
            async fn close(&self) -> Result<(), LoggerError> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
        let sink = SpooledSink::new(Arc::new(Broken), Arc::clone(&spool), Duration::from_secs(1));
        assert!(sink.write(batch(&["a"])).await.is_err());
        assert!(spool.is_empty());
        sink.close().await.unwrap();
    }
}
