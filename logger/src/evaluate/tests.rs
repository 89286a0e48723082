use std::sync::atomic::{AtomicUsize, Ordering};

use tollgate_proto::logger::v1::{LogEvent, Payload};

use super::*;
use crate::sink::WriteSummary;

fn evaluators(yaml: &str) -> Evaluators {
    let path = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(path.path(), yaml).unwrap();
    tollgate_core::config::evaluators::load_section(path.path())
        .unwrap()
        .unwrap()
}

fn event(id: &str, response: &str) -> LogEvent {
    LogEvent {
        request_id: id.to_owned(),
        start_time_unix_nanos: 1_000_000_000,
        first_token_time_unix_nanos: 1_200_000_000,
        end_time_unix_nanos: 1_500_000_000,
        key_id: "k".into(),
        tenant: "t".into(),
        requested_model: "m".into(),
        client_api: "openai".into(),
        http_status: 200,
        payload: Some(Payload {
            mode: "full".into(),
            request_body: r#"{"messages":[{"role":"user","content":"q"}]}"#.into(),
            response_body:
                serde_json::json!({"choices":[{"message":{"role":"assistant","content":response}}]})
                    .to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Keeps what the stage writes.
#[derive(Default)]
struct Collect {
    rows: Mutex<Vec<EvaluationRecord>>,
    writes: AtomicUsize,
}

#[tonic::async_trait]
impl Sink for Collect {
    async fn write(&self, _: Vec<LogEvent>) -> Result<WriteSummary, LoggerError> {
        Ok(WriteSummary::default())
    }
    async fn write_evaluations(&self, rows: Vec<EvaluationRecord>) -> Result<u32, LoggerError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let n = rows.len() as u32;
        self.rows.lock().unwrap().extend(rows);
        Ok(n)
    }
    async fn close(&self) -> Result<(), LoggerError> {
        Ok(())
    }
}

async fn run_all(yaml: &str, events: Vec<LogEvent>) -> Vec<EvaluationRecord> {
    let sink = Arc::new(Collect::default());
    let setup = Setup::new(
        evaluators(yaml),
        &tollgate_core::env::MapEnv(Default::default()),
    )
    .unwrap();
    let stage = Stage::start(setup, sink.clone(), EvaluationMetrics::default());
    let wanted: Vec<LogEvent> = events.into_iter().filter(|e| stage.wants(e)).collect();
    stage.offer(wanted);
    stage.close(Duration::from_secs(10)).await;
    let mut rows = sink.rows.lock().unwrap().clone();
    rows.sort_by(|a, b| (&a.request_id, &a.evaluator).cmp(&(&b.request_id, &b.evaluator)));
    rows
}

#[tokio::test]
async fn built_in_checks_score_known_outputs() {
    let rows = run_all(
        r#"
evaluators:
  list:
    - { name: schema, kind: json_schema, params: { schema: { type: object, required: [answer], properties: { answer: { type: integer } } } } }
    - { name: has-42, kind: contains, params: { text: "42" } }
    - { name: no-key, kind: secrets }
    - { name: ttft, kind: ttft, params: { max_ms: 100 } }
    - { name: len, kind: length, params: { min_chars: 5 } }
"#,
        vec![
            event("a", r#"{"answer": 42}"#),
            event("b", r#"{"answer": "42"} sk-proj-abcdefghijklmnopqrstuvwxyz"#),
        ],
    )
    .await;
    let get = |id: &str, ev: &str| {
        rows.iter()
            .find(|r| r.request_id == id && r.evaluator == ev)
            .unwrap()
            .clone()
    };
    assert!(get("a", "schema").passed);
    let b = get("b", "schema");
    assert_eq!((b.passed, b.label.as_str()), (false, "invalid_json"));
    assert!(get("a", "has-42").passed && get("b", "has-42").passed);
    assert!(get("a", "no-key").passed);
    let leak = get("b", "no-key");
    assert_eq!((leak.passed, leak.reason.as_str()), (false, "found secret"));
    // 200 ms to the first token, over a 100 ms SLO.
    let ttft = get("a", "ttft");
    assert_eq!((ttft.passed, ttft.label.as_str()), (false, "slow"));
    assert!(get("a", "len").passed);
    assert_eq!(get("a", "len").kind, "length");
    assert_eq!(rows.len(), 10);
}

#[tokio::test]
async fn an_event_without_captured_output_is_skipped_by_output_checks_only() {
    let mut bare = event("c", "x");
    bare.payload = None;
    let rows = run_all(
        r#"
evaluators:
  list:
    - { name: j, kind: json_valid }
    - { name: lat, kind: latency, params: { max_ms: 1000 } }
"#,
        vec![bare],
    )
    .await;
    let names: Vec<&str> = rows.iter().map(|r| r.evaluator.as_str()).collect();
    assert_eq!(names, ["lat"]);
    assert!(rows[0].passed);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting_for_a_hung_evaluator() {
    // A webhook that never answers: every evaluation runs into its timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let yaml = format!(
        "evaluators:\n  queue_capacity: 2\n  concurrency: 1\n  list:\n    - {{ name: hook, kind: webhook, timeout_ms: 300, params: {{ url: \"http://{addr}/e\" }} }}\n"
    );
    let sink = Arc::new(Collect::default());
    let metrics = EvaluationMetrics::default();
    let setup = Setup::new(
        evaluators(&yaml),
        &tollgate_core::env::MapEnv(Default::default()),
    )
    .unwrap();
    let stage = Stage::start(setup, sink.clone(), metrics.clone());
    let started = Instant::now();
    for i in 0..20 {
        stage.offer(vec![event(&format!("e{i}"), "x")]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    let dropped = metrics
        .drops
        .get_or_create(&tollgate_core::evaluation_metrics::DropLabel {
            reason: "queue_full",
        })
        .get();
    // One in the worker at most, two queued: the rest dropped.
    assert!((17..=18).contains(&dropped), "{dropped}");
    stage.close(Duration::from_secs(10)).await;
    let rows = sink.rows.lock().unwrap().clone();
    assert_eq!(rows.len() as u64, 20 - dropped);
    assert!(rows
        .iter()
        .all(|r| r.error == "timeout after 300 ms" && !r.passed));
    hold.abort();
}
