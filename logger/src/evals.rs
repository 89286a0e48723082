//! Evaluation scores read back (`tollgate evals`): results grouped by day (UTC, of the request's
//! start), model, key and evaluator, with their mean score, pass rate, count and failures
//! (evaluators that could not score), beside the user feedback given on the same requests
//! (how many requests of the group got feedback, and its mean score). Read from the NDJSON data
//! directory or from ClickHouse (`<table>_evaluations`, `<table>_feedback`); either way every
//! (request, evaluator) counts once and every piece of feedback once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use time::Date;

use crate::clickhouse::ClickHouseConfig;
use crate::error::LoggerError;
use crate::record::{EvaluationRecord, FeedbackRecord};
use crate::usage::{day_label, day_number};

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Which days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvalsQuery {
    /// First day included (UTC).
    pub from: Option<Date>,
    /// Last day included (UTC).
    pub to: Option<Date>,
}

impl EvalsQuery {
    fn range(&self) -> Result<(i64, i64), LoggerError> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(LoggerError::Query(format!(
                    "--from {from} is after --to {to}"
                )));
            }
        }
        let lo = self
            .from
            .map_or(i64::MIN, |d| day_number(d).saturating_mul(NANOS_PER_DAY));
        let hi = self.to.map_or(i64::MAX, |d| {
            (day_number(d) + 1).saturating_mul(NANOS_PER_DAY)
        });
        Ok((lo, hi))
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalsRow {
    /// The UTC day the requests started.
    pub day: String,
    /// The public model.
    pub model: String,
    /// The key id.
    pub key: String,
    /// The evaluator.
    pub evaluator: String,
    /// Results.
    pub count: u64,
    /// Mean score of the results that scored (none when all failed).
    pub mean_score: Option<f64>,
    /// Share of the results that scored which passed.
    pub pass_rate: Option<f64>,
    /// Results whose evaluator could not score (error or timeout).
    pub failures: u64,
    /// Requests of the group with feedback that carries a score.
    pub feedback_count: u64,
    /// Mean feedback score over those requests (each request's own mean first).
    pub feedback_mean: Option<f64>,
}

#[derive(Default)]
struct Acc {
    count: u64,
    scored: u64,
    score_sum: f64,
    passed: u64,
    failures: u64,
    requests: HashSet<String>,
}

/// Groups `evals` (deduplicated on request and evaluator, the newest kept) and puts the
/// feedback on the same requests beside them.
pub fn summarise(
    evals: Vec<EvaluationRecord>,
    feedback: Vec<FeedbackRecord>,
    q: &EvalsQuery,
) -> Result<Vec<EvalsRow>, LoggerError> {
    let (lo, hi) = q.range()?;
    let mut latest: HashMap<(String, String), EvaluationRecord> = HashMap::new();
    for e in evals {
        if !(lo..hi).contains(&e.request_time_unix_nanos) {
            continue;
        }
        let k = (e.request_id.clone(), e.evaluator.clone());
        match latest.get(&k) {
            Some(old) if old.time_unix_nanos >= e.time_unix_nanos => {}
            _ => {
                latest.insert(k, e);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut per_request: HashMap<String, (f64, u64)> = HashMap::new();
    for f in feedback {
        if !seen.insert(f.feedback_id.clone()) {
            continue;
        }
        if let Some(s) = f.score {
            let e = per_request.entry(f.request_id).or_insert((0.0, 0));
            e.0 += s;
            e.1 += 1;
        }
    }
    let mut groups: BTreeMap<(String, String, String, String), Acc> = BTreeMap::new();
    for e in latest.into_values() {
        let day = day_label(e.request_time_unix_nanos.div_euclid(NANOS_PER_DAY));
        let a = groups
            .entry((day, e.model, e.key_id, e.evaluator))
            .or_default();
        a.count += 1;
        if e.error.is_empty() {
            a.scored += 1;
            a.score_sum += e.score;
            a.passed += u64::from(e.passed);
        } else {
            a.failures += 1;
        }
        a.requests.insert(e.request_id);
    }
    Ok(groups
        .into_iter()
        .map(|((day, model, key, evaluator), a)| {
            let means: Vec<f64> = a
                .requests
                .iter()
                .filter_map(|r| per_request.get(r))
                .map(|(sum, n)| sum / *n as f64)
                .collect();
            EvalsRow {
                day,
                model,
                key,
                evaluator,
                count: a.count,
                mean_score: (a.scored > 0).then(|| a.score_sum / a.scored as f64),
                pass_rate: (a.scored > 0).then(|| a.passed as f64 / a.scored as f64),
                failures: a.failures,
                feedback_count: means.len() as u64,
                feedback_mean: (!means.is_empty())
                    .then(|| means.iter().sum::<f64>() / means.len() as f64),
            }
        })
        .collect())
}

/// The report from the NDJSON data directory. Blocking.
pub fn from_ndjson(dir: &Path, q: &EvalsQuery) -> Result<Vec<EvalsRow>, LoggerError> {
    let evals = crate::ndjson::read_evaluations(dir)?;
    let feedback = crate::ndjson::read_feedback(dir)?;
    summarise(evals, feedback, q)
}

/// The report from ClickHouse: `<table>_evaluations` and `<table>_feedback`, each
/// deduplicated in the query.
pub async fn from_clickhouse(
    config: &ClickHouseConfig,
    q: &EvalsQuery,
) -> Result<Vec<EvalsRow>, LoggerError> {
    config.validate()?;
    let (lo, hi) = q.range()?;
    let client = crate::clickhouse::client(config).with_database(&config.database);
    let t = &config.table;
    // Columns in `EvaluationRecord`'s field order (RowBinary is positional).
    let evals = client
        .query(&format!(
            "SELECT request_id, evaluator, any(kind), any(score), any(passed), any(label), \
             any(reason), any(error), any(latency_ms), max(time_unix_nanos), \
             any(request_time_unix_nanos), any(key_id), any(tenant), any(model) \
             FROM {t}_evaluations WHERE request_time_unix_nanos >= ? AND request_time_unix_nanos < ? \
             GROUP BY request_id, evaluator"
        ))
        .bind(lo)
        .bind(hi)
        .fetch_all::<EvaluationRecord>()
        .await
        .map_err(crate::clickhouse::ch)?;
    let feedback = client
        .query(&format!(
            "SELECT feedback_id, any(request_id), any(time_unix_nanos), any(key_id), any(tenant), \
             any(score), any(label), any(comment) FROM {t}_feedback \
             WHERE request_id IN (SELECT request_id FROM {t}_evaluations \
             WHERE request_time_unix_nanos >= ? AND request_time_unix_nanos < ?) \
             GROUP BY feedback_id"
        ))
        .bind(lo)
        .bind(hi)
        .fetch_all::<FeedbackRecord>()
        .await
        .map_err(crate::clickhouse::ch)?;
    summarise(evals, feedback, q)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// The report as an aligned table.
pub fn render_table(rows: &[EvalsRow]) -> String {
    let mut lines = vec![[
        "day",
        "model",
        "key",
        "evaluator",
        "count",
        "mean_score",
        "pass_rate",
        "failures",
        "feedback_n",
        "feedback_mean",
    ]
    .map(str::to_owned)
    .to_vec()];
    for r in rows {
        lines.push(vec![
            r.day.clone(),
            r.model.clone(),
            r.key.clone(),
            r.evaluator.clone(),
            r.count.to_string(),
            opt(r.mean_score, 3),
            opt(r.pass_rate, 3),
            r.failures.to_string(),
            r.feedback_count.to_string(),
            opt(r.feedback_mean, 3),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 4 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// The report as JSON: `{"rows": [...]}`.
pub fn render_json(rows: &[EvalsRow]) -> String {
    let mut s = serde_json::json!({ "rows": rows }).to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, evaluator: &str, score: f64, error: &str) -> EvaluationRecord {
        EvaluationRecord {
            request_id: id.into(),
            evaluator: evaluator.into(),
            kind: "regex".into(),
            score,
            passed: score >= 0.5 && error.is_empty(),
            label: String::new(),
            reason: String::new(),
            error: error.into(),
            latency_ms: 1.0,
            time_unix_nanos: 2,
            request_time_unix_nanos: 1_700_000_000_000_000_000,
            key_id: "k".into(),
            tenant: "t".into(),
            model: "m".into(),
        }
    }

    #[test]
    fn groups_deduplicate_and_sit_beside_feedback() {
        let evals = vec![
            ev("a", "r", 1.0, ""),
            ev("a", "r", 1.0, ""),
            ev("b", "r", 0.0, ""),
            ev("c", "r", 0.0, "timeout after 5 ms"),
        ];
        let fb = |id: &str, req: &str, score| FeedbackRecord {
            feedback_id: id.into(),
            request_id: req.into(),
            time_unix_nanos: 3,
            key_id: "k".into(),
            tenant: "t".into(),
            score,
            label: String::new(),
            comment: String::new(),
        };
        let feedback = vec![
            fb("f1", "a", Some(1.0)),
            fb("f1", "a", Some(1.0)),
            fb("f2", "b", Some(0.0)),
            fb("f3", "b", None),
        ];
        let rows = summarise(evals, feedback, &EvalsQuery::default()).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.day.as_str(), r.count, r.failures), ("2023-11-14", 3, 1));
        assert_eq!((r.mean_score, r.pass_rate), (Some(0.5), Some(0.5)));
        assert_eq!((r.feedback_count, r.feedback_mean), (2, Some(0.5)));
        let table = render_table(&rows);
        assert!(table.starts_with("day "), "{table}");
        assert!(table.contains("0.500"), "{table}");
    }
}
