//! Sender tests over a fake transport: batching limits, delay, spool while the logger is away,
//! replay in order, refusals, the full-queue path and the drain on shutdown.

use std::sync::Mutex;

use proptest::prelude::*;
use tollgate_core::metrics::OutcomeLabel;

use super::*;

#[derive(Default)]
struct FakeState {
    up: bool,
    reject: bool,
    /// Request ids the logger refuses (with the whole batch holding one), as it refuses an
    /// oversized event.
    refuse: Vec<String>,
    /// Each batch received, as its request ids.
    received: Vec<Vec<String>>,
    attempts: usize,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn up() -> Self {
        let f = Fake::default();
        f.set_up(true);
        f
    }
    fn set_up(&self, up: bool) {
        self.0.lock().unwrap().up = up;
    }
    fn batches(&self) -> Vec<Vec<String>> {
        self.0.lock().unwrap().received.clone()
    }
    fn ids(&self) -> Vec<String> {
        self.batches().concat()
    }
}

#[tonic::async_trait]
impl Transport for Fake {
    async fn send(&mut self, batch: LogBatch) -> Result<IngestAck, tonic::Status> {
        let mut s = self.0.lock().unwrap();
        s.attempts += 1;
        if s.reject {
            return Err(tonic::Status::invalid_argument("event 0 has no request_id"));
        }
        if !s.up {
            return Err(tonic::Status::unavailable("connection refused"));
        }
        if let Some(i) = batch
            .events
            .iter()
            .position(|e| s.refuse.contains(&e.request_id))
        {
            return Err(tonic::Status::invalid_argument(format!(
                "event {i} is over the 256-byte cap"
            )));
        }
        s.received
            .push(batch.events.into_iter().map(|e| e.request_id).collect());
        Ok(IngestAck::default())
    }
}

fn options(batch_size: usize, max_delay_ms: u64, queue: usize) -> ShipperOptions {
    ShipperOptions {
        batch_size,
        max_delay: Duration::from_millis(max_delay_ms),
        queue_capacity: queue,
        attempts: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn event(id: impl Into<String>) -> LogEvent {
    LogEvent {
        request_id: id.into(),
        ..Default::default()
    }
}

fn count(m: &Metrics, outcome: &'static str) -> u64 {
    m.log_events.get_or_create(&OutcomeLabel { outcome }).get()
}

fn spool(dir: &tempfile::TempDir) -> Arc<Spool> {
    Arc::new(Spool::open(dir.path(), 1 << 20).unwrap())
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(start_paused = true)]
async fn a_batch_goes_out_when_full_or_when_its_delay_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::up();
    let metrics = Metrics::default();
    let shipper = Shipper::start_with(
        fake.clone(),
        spool(&dir),
        options(3, 1000, 100),
        metrics.clone(),
    );
    let h = shipper.handle();
    for i in 0..7 {
        h.emit(event(format!("e{i}")));
    }
    // Two full batches leave at once; the seventh event waits for the delay.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        fake.batches(),
        [vec!["e0", "e1", "e2"], vec!["e3", "e4", "e5"]]
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        fake.batches().len(),
        2,
        "the partial batch left before max_delay"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fake.batches().last().unwrap(), &["e6"]);
    assert_eq!((count(&metrics, "queued"), count(&metrics, "sent")), (7, 7));
    shipper.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn no_batch_exceeds_its_limit_and_nothing_is_lost_or_reordered(
        batch_size in 1usize..8, events in 0usize..40, bursts in 1usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fake = Fake::up();
            let shipper = Shipper::start_with(fake.clone(), spool(&dir), options(batch_size, 50, 1000), Metrics::default());
            let h = shipper.handle();
            let mut expected = Vec::new();
            for b in 0..bursts {
                for i in 0..events {
                    let id = format!("b{b}-e{i}");
                    expected.push(id.clone());
                    h.emit(event(id));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            shipper.shutdown().await;
            for batch in fake.batches() {
                prop_assert!(!batch.is_empty() && batch.len() <= batch_size, "batch of {}", batch.len());
            }
            prop_assert_eq!(fake.ids(), expected);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn while_the_logger_is_away_batches_spool_and_replay_in_order_later() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let metrics = Metrics::default();
    let sp = spool(&dir);
    let shipper = Shipper::start_with(
        fake.clone(),
        Arc::clone(&sp),
        options(2, 5, 100),
        metrics.clone(),
    );
    let h = shipper.handle();
    for i in 0..9 {
        h.emit(event(format!("e{i}")));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually("every event spooled", || count(&metrics, "spooled") == 9).await;
    assert!(fake.batches().is_empty());
    assert!(!sp.is_empty());

    fake.set_up(true);
    eventually("the spool replayed", || {
        sp.is_empty() && fake.ids().len() == 9
    })
    .await;
    let want: Vec<String> = (0..9).map(|i| format!("e{i}")).collect();
    assert_eq!(fake.ids(), want, "replayed out of order");
    // New events after the replay go straight out, behind the replayed ones.
    h.emit(event("late"));
    eventually("the late event", || fake.ids().len() == 10).await;
    assert_eq!(fake.ids().last().unwrap(), "late");
    assert_eq!(count(&metrics, "sent"), 10);
    assert_eq!(count(&metrics, "dropped"), 0);
    shipper.shutdown().await;
}

#[tokio::test]
async fn a_spool_left_by_an_earlier_run_is_replayed_first() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sp = spool(&dir);
        sp.push(&LogBatch {
            events: vec![event("old-1"), event("old-2")],
        })
        .unwrap();
        sp.push(&LogBatch {
            events: vec![event("old-3")],
        })
        .unwrap();
    }
    let fake = Fake::up();
    let sp = spool(&dir);
    let shipper = Shipper::start_with(
        fake.clone(),
        Arc::clone(&sp),
        options(10, 5, 100),
        Metrics::default(),
    );
    eventually("the old spool replayed", || sp.is_empty()).await;
    shipper.handle().emit(event("new"));
    eventually("the new event", || fake.ids().len() == 4).await;
    assert_eq!(fake.ids(), ["old-1", "old-2", "old-3", "new"]);
    shipper.shutdown().await;
}

#[tokio::test]
async fn a_refused_batch_is_counted_kept_aside_and_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::up();
    fake.0.lock().unwrap().reject = true;
    let metrics = Metrics::default();
    // The batch closes at 2 events, never on the delay: one batch, however slow the machine.
    let shipper = Shipper::start_with(
        fake.clone(),
        spool(&dir),
        options(2, 60_000, 100),
        metrics.clone(),
    );
    shipper.handle().emit(event("a"));
    shipper.handle().emit(event("b"));
    eventually("the refusal counted", || count(&metrics, "dropped") == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The whole batch, then each event alone (each refused on its own): never again.
    assert_eq!(fake.0.lock().unwrap().attempts, 3);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".rejected"))
        .collect();
    assert_eq!(aside.len(), 1);
    shipper.shutdown().await;
}

/// Batches waiting in the spool (files without a set-aside suffix).
fn spool_len(dir: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".batch")
        })
        .count()
}

fn aside(dir: &tempfile::TempDir) -> Vec<String> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
    {
        if e.file_name().to_string_lossy().ends_with(".rejected") {
            let bytes = std::fs::read(e.path()).unwrap();
            let batch = <LogBatch as prost::Message>::decode(bytes.as_slice()).unwrap();
            ids.extend(batch.events.into_iter().map(|e| e.request_id));
        }
    }
    ids
}

#[tokio::test]
async fn one_refused_event_never_takes_its_batch_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::up();
    fake.0.lock().unwrap().refuse = vec!["e17".to_owned()];
    let metrics = Metrics::default();
    let shipper = Shipper::start_with(
        fake.clone(),
        spool(&dir),
        options(50, 60_000, 100),
        metrics.clone(),
    );
    for i in 0..50 {
        shipper.handle().emit(event(format!("e{i}")));
    }
    // Counted first, then written aside: wait for both.
    eventually("the batch settled", || {
        count(&metrics, "sent") == 49 && count(&metrics, "dropped") == 1 && aside(&dir).len() == 1
    })
    .await;
    let mut want: Vec<String> = (0..50).map(|i| format!("e{i}")).collect();
    want.retain(|id| id != "e17");
    // Every other event delivered, in order; only the bad one kept aside.
    assert_eq!(fake.ids(), want);
    assert_eq!(aside(&dir), ["e17"]);
    // About 2·log2(50) sends, not one per event.
    let attempts = fake.0.lock().unwrap().attempts;
    assert!(attempts <= 14, "{attempts} sends");
    shipper.shutdown().await;
}

#[tokio::test]
async fn a_spooled_batch_with_a_refused_event_is_replayed_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.0.lock().unwrap().refuse = vec!["b3".to_owned(), "b4".to_owned()];
    let metrics = Metrics::default();
    let shipper = Shipper::start_with(
        fake.clone(),
        spool(&dir),
        options(8, 60_000, 100),
        metrics.clone(),
    );
    for i in 0..8 {
        shipper.handle().emit(event(format!("b{i}")));
    }
    eventually("the batch spooled", || count(&metrics, "spooled") == 8).await;
    fake.set_up(true);
    eventually("the spool replayed", || {
        count(&metrics, "dropped") == 2 && fake.ids().len() == 6
    })
    .await;
    assert_eq!(fake.ids(), ["b0", "b1", "b2", "b5", "b6", "b7"]);
    eventually("the spool emptied", || spool_len(&dir) == 0).await;
    let mut refused = aside(&dir);
    refused.sort();
    assert_eq!(refused, ["b3", "b4"]);
    shipper.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_spools_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let sp = spool(&dir);
    let metrics = Metrics::default();
    // A queue nobody reads, of capacity 2.
    let (tx, _rx) = mpsc::channel(2);
    let h = LogHandle {
        shipping: Some(Shipping {
            tx,
            spool: Arc::clone(&sp),
            overflows: Arc::default(),
        }),
        metrics: metrics.clone(),
    };
    for i in 0..5 {
        h.emit(event(format!("e{i}")));
    }
    assert_eq!(
        (count(&metrics, "queued"), count(&metrics, "spooled")),
        (2, 3)
    );
    let mut spooled = Vec::new();
    while let Some((seq, b)) = sp.oldest().unwrap() {
        spooled.extend(b.events.into_iter().map(|e| e.request_id));
        sp.remove(seq).unwrap();
    }
    assert_eq!(spooled, ["e2", "e3", "e4"]);
}

#[tokio::test]
async fn shutdown_sends_what_is_queued_and_spools_what_cannot_go() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::up();
    let shipper = Shipper::start_with(
        fake.clone(),
        spool(&dir),
        options(100, 60_000, 1000),
        Metrics::default(),
    );
    for i in 0..5 {
        shipper.handle().emit(event(format!("e{i}")));
    }
    shipper.shutdown().await;
    assert_eq!(fake.ids().len(), 5, "queued events lost on shutdown");

    let fake = Fake::default();
    let sp = spool(&dir);
    let metrics = Metrics::default();
    let shipper = Shipper::start_with(
        fake.clone(),
        Arc::clone(&sp),
        options(100, 60_000, 1000),
        metrics.clone(),
    );
    let h = shipper.handle();
    for i in 0..5 {
        h.emit(event(format!("d{i}")));
    }
    shipper.shutdown().await;
    assert_eq!(count(&metrics, "spooled"), 5);
    // After shutdown, an emit still lands in the spool rather than vanishing.
    h.emit(event("after"));
    assert_eq!(count(&metrics, "spooled"), 6);
    assert_eq!(sp.len(), 2);
}

/// A logger that takes the connection and never answers.
struct Hang;

#[tonic::async_trait]
impl Transport for Hang {
    async fn send(&mut self, _batch: LogBatch) -> Result<IngestAck, tonic::Status> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_logger_that_hangs_cannot_hold_the_shutdown_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let sp = spool(&dir);
    let metrics = Metrics::default();
    let shipper = Shipper::start_with(Hang, Arc::clone(&sp), options(2, 1, 1000), metrics.clone());
    for i in 0..7 {
        shipper.handle().emit(event(format!("h{i}")));
    }
    // The sender is waiting on its first batch, which will never be answered.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    shipper.shutdown_within(Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // Nothing sent, nothing lost: every event is in the spool for the next start.
    assert_eq!(count(&metrics, "sent"), 0);
    assert_eq!(count(&metrics, "spooled"), 7);
    assert_eq!(count(&metrics, "dropped"), 0);
    let mut spooled = Vec::new();
    while let Some((seq, b)) = sp.oldest().unwrap() {
        spooled.extend(b.events.into_iter().map(|e| e.request_id));
        sp.remove(seq).unwrap();
    }
    spooled.sort();
    let want: Vec<String> = (0..7).map(|i| format!("h{i}")).collect();
    assert_eq!(spooled, want);
}
