//! NDJSON sink tests: durability layout, rotation, idempotency within and across restarts.

use super::*;
use tollgate_proto::logger::v1::Usage;

pub(crate) fn event(id: &str, input: u64) -> LogEvent {
    LogEvent {
        request_id: id.to_owned(),
        requested_model: "mock-model".to_owned(),
        http_status: 200,
        usage: Some(Usage {
            input_tokens: input,
            output_tokens: 2 * input,
            source: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn lines(dir: &Path) -> Vec<Record> {
    read_records(dir).unwrap()
}

#[tokio::test]
async fn writes_one_line_per_event_with_its_usage() {
    let dir = tempfile::tempdir().unwrap();
    let sink = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
    let s = sink
        .write(vec![event("a", 1), event("b", 2)])
        .await
        .unwrap();
    assert_eq!(
        s,
        WriteSummary {
            written: 2,
            duplicates: 0
        }
    );
    let got = lines(dir.path());
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].request_id, "b");
    assert_eq!((got[1].input_tokens, got[1].output_tokens), (2, 4));
    assert_eq!(got[1].usage_source, "provider");
}

#[tokio::test]
async fn a_replayed_batch_writes_nothing_twice_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
    sink.write(vec![event("a", 1), event("b", 2)])
        .await
        .unwrap();
    // The same batch again (its ack was lost), and a batch repeating an id inside itself.
    let again = sink
        .write(vec![event("a", 1), event("b", 2)])
        .await
        .unwrap();
    assert_eq!(
        again,
        WriteSummary {
            written: 0,
            duplicates: 2
        }
    );
    let inner = sink
        .write(vec![event("c", 3), event("c", 3)])
        .await
        .unwrap();
    assert_eq!(
        inner,
        WriteSummary {
            written: 1,
            duplicates: 1
        }
    );
    sink.close().await.unwrap();
    drop(sink);

    let reopened = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
    let s = reopened
        .write(vec![event("a", 1), event("c", 3), event("d", 4)])
        .await
        .unwrap();
    assert_eq!(
        s,
        WriteSummary {
            written: 1,
            duplicates: 2
        }
    );
    let ids: Vec<String> = lines(dir.path())
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn files_rotate_by_size_without_splitting_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let sink = NdjsonSink::open(dir.path(), 1024).unwrap();
    for i in 0..20 {
        sink.write(vec![
            event(&format!("r{i}-x"), i),
            event(&format!("r{i}-y"), i),
        ])
        .await
        .unwrap();
    }
    let f = files(dir.path()).unwrap();
    assert!(f.len() > 3, "expected several files, got {f:?}");
    for (_, p) in &f {
        let len = std::fs::metadata(p).unwrap().len();
        let lines = std::fs::read_to_string(p).unwrap().lines().count();
        // Under the cap, or a single batch that alone is larger.
        assert!(len <= 1024 || lines == 2, "{} is {len} bytes", p.display());
        assert_eq!(lines % 2, 0, "a batch was split across files");
    }
    assert_eq!(lines(dir.path()).len(), 40);
    // A restart continues in the newest file and still knows every id.
    drop(sink);
    let sink = NdjsonSink::open(dir.path(), 1024).unwrap();
    let s = sink.write(vec![event("r0-x", 0)]).await.unwrap();
    assert_eq!(s.duplicates, 1);
}

#[tokio::test]
async fn a_partial_last_line_from_a_crash_is_cut_off_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let sink = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
    sink.write(vec![event("a", 1)]).await.unwrap();
    drop(sink);
    let (_, path) = files(dir.path()).unwrap().pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"request_id":"b","start_ti"#).unwrap();
    drop(f);

    let sink = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
    // "b" was never acknowledged, so it is not a duplicate: it is written whole.
    let s = sink.write(vec![event("b", 2)]).await.unwrap();
    assert_eq!(s.written, 1);
    let ids: Vec<String> = lines(dir.path())
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test]
async fn feedback_goes_to_its_own_files_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fb = |id: &str| LogEvent {
        request_id: id.to_owned(),
        key_id: "k1".to_owned(),
        feedback: Some(tollgate_proto::logger::v1::Feedback {
            request_id: "a".to_owned(),
            score: Some(1.0),
            label: String::new(),
            comment: "good".to_owned(),
        }),
        ..Default::default()
    };
    let sink = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
    let s = sink
        .write(vec![event("a", 1), fb("f1"), fb("f1")])
        .await
        .unwrap();
    assert_eq!(
        s,
        WriteSummary {
            written: 2,
            duplicates: 1
        }
    );
    sink.close().await.unwrap();
    drop(sink);
    let sink = NdjsonSink::open(dir.path(), 1 << 20).unwrap();
    let s = sink.write(vec![fb("f1"), fb("f2")]).await.unwrap();
    assert_eq!(s.written, 1);
    let requests = lines(dir.path());
    assert_eq!(
        requests.len(),
        1,
        "feedback among the requests: {requests:?}"
    );
    let feedback = read_feedback(dir.path()).unwrap();
    let ids: Vec<(&str, &str)> = feedback
        .iter()
        .map(|f| (f.feedback_id.as_str(), f.request_id.as_str()))
        .collect();
    assert_eq!(ids, [("f1", "a"), ("f2", "a")]);
    assert_eq!(
        (feedback[0].score, feedback[0].comment.as_str()),
        (Some(1.0), "good")
    );
}
