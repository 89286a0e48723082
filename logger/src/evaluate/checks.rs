//! The evaluators themselves: one function per kind, each turning a logged event into a
//! [`Scored`] result (or [`Run::Skipped`] when it has nothing to judge). The built-in checks
//! are pure and use what the config compiled; `llm_judge` and `webhook` make one HTTP call each.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::config::evaluators::{Check, Evaluator, Judge, JudgeScale};
use tollgate_core::config::Secret;
use tollgate_guardrails::Engine;
use tollgate_proto::logger::v1::LogEvent;

use super::text::{self, Arguments, Output};

/// The `user` (OpenAI end user) of the judge's own requests: the stage never evaluates an
/// event carrying it, so judging is not judged.
pub const JUDGE_END_USER: &str = "tollgate-evaluator";

/// What the judge is told before the rubric.
pub const JUDGE_SYSTEM_UNIT: &str = "You are an evaluator. Grade the answer against the rubric. \
Reply with JSON only: {\"score\": <a number from 0 to 1>, \"reason\": \"<one sentence>\"}";
/// The same, on the 1-to-5 scale.
pub const JUDGE_SYSTEM_FIVE: &str = "You are an evaluator. Grade the answer against the rubric. \
Reply with JSON only: {\"score\": <a number from 1 to 5>, \"reason\": \"<one sentence>\"}";

/// A score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// 0 to 1.
    pub score: f64,
    /// A short label, empty when none.
    pub label: String,
    /// Why.
    pub reason: String,
}

/// What running one evaluator on one event gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Run {
    /// A score.
    Scored(Scored),
    /// The evaluator could not score (recorded with `error`).
    Failed(String),
    /// Nothing to judge: no captured output (not recorded; counted).
    Skipped,
}

fn scored(ok: bool, label: &str, reason: impl Into<String>) -> Run {
    Run::Scored(Scored {
        score: if ok { 1.0 } else { 0.0 },
        label: label.to_owned(),
        reason: reason.into(),
    })
}

/// What the calls of `llm_judge` and `webhook` share: one HTTP client, the judges' keys.
#[derive(Debug, Clone)]
pub struct Calls {
    /// Built once.
    pub http: reqwest::Client,
    /// The judges' keys, by evaluator name.
    pub judge_keys: std::collections::HashMap<String, Secret>,
}

/// Runs `ev` on `e` (its timeout is applied by the caller).
pub async fn run(ev: &Evaluator, e: &LogEvent, calls: &Calls) -> Run {
    let ms = |from: i64, to: i64| (to - from) as f64 / 1e6;
    match &ev.check {
        Check::Latency(max) => {
            if e.end_time_unix_nanos <= 0 || e.start_time_unix_nanos <= 0 {
                return Run::Failed("the event has no start or end time".into());
            }
            let took = ms(e.start_time_unix_nanos, e.end_time_unix_nanos);
            let limit = max.as_secs_f64() * 1e3;
            return scored(
                took <= limit,
                if took <= limit { "" } else { "slow" },
                format!("took {took:.1} ms (SLO {limit:.0} ms)"),
            );
        }
        Check::Ttft(max) => {
            if e.first_token_time_unix_nanos <= 0 {
                return Run::Skipped;
            }
            let took = ms(e.start_time_unix_nanos, e.first_token_time_unix_nanos);
            let limit = max.as_secs_f64() * 1e3;
            return scored(
                took <= limit,
                if took <= limit { "" } else { "slow" },
                format!("first token after {took:.1} ms (SLO {limit:.0} ms)"),
            );
        }
        _ => {}
    }
    let Some(out) = text::output(e) else {
        return Run::Skipped;
    };
    match &ev.check {
        Check::JsonValid => match serde_json::from_str::<Value>(out.text.trim()) {
            Ok(_) => scored(true, "", ""),
            Err(err) => scored(false, "invalid_json", format!("not JSON: {err}")),
        },
        Check::JsonSchema(schema) => match serde_json::from_str::<Value>(out.text.trim()) {
            Ok(v) => match schema.iter_errors(&v).next() {
                None => scored(true, "", ""),
                Some(err) => scored(
                    false,
                    "schema_mismatch",
                    format!("at `{}`: {err}", err.instance_path()),
                ),
            },
            Err(err) => scored(false, "invalid_json", format!("not JSON: {err}")),
        },
        Check::Regex(re) => {
            let m = re.is_match(&out.text);
            scored(m, if m { "" } else { "no_match" }, "")
        }
        Check::Contains { text, ignore_case } => {
            let found = contains(&out.text, text, *ignore_case);
            scored(found, if found { "" } else { "missing" }, "")
        }
        Check::NotContains { text, ignore_case } => {
            let found = contains(&out.text, text, *ignore_case);
            scored(!found, if found { "present" } else { "" }, "")
        }
        Check::Length { min, max } => {
            let n = out.text.chars().count();
            let short = min.is_some_and(|m| n < m);
            let long = max.is_some_and(|m| n > m);
            let label = if short {
                "too_short"
            } else if long {
                "too_long"
            } else {
                ""
            };
            scored(!short && !long, label, format!("{n} characters"))
        }
        Check::Refusal(phrases) => {
            let lower = out
                .text
                .to_lowercase()
                .replace(['\u{2019}', '\u{2018}'], "'");
            match phrases.iter().find(|p| lower.contains(p.as_str())) {
                Some(p) => scored(false, "refusal", format!("says `{p}`")),
                None => scored(true, "", ""),
            }
        }
        Check::Pii(engine) => leaks(engine, &out, &super::PII_MARKERS),
        Check::Secrets(engine) => leaks(engine, &out, &super::SECRET_MARKERS),
        Check::ToolCalls => tool_calls(e, &out),
        Check::LlmJudge(judge) => match calls.judge_keys.get(&ev.name) {
            Some(key) => self::judge(judge, key, e, &out, calls).await,
            None => Run::Failed("the judge's key was not loaded".into()),
        },
        Check::Webhook { url } => webhook(url, ev, e, &out, calls).await,
        // Handled above.
        Check::Latency(_) | Check::Ttft(_) => Run::Skipped,
    }
}

fn contains(haystack: &str, needle: &str, ignore_case: bool) -> bool {
    if ignore_case {
        haystack.to_lowercase().contains(needle)
    } else {
        haystack.contains(needle)
    }
}

/// Detector matches in the output, plus the markers capture's redaction left where it removed
/// a match (`[REDACTED:email]`): the leak happened even though the stored text hides it.
fn leaks(engine: &Engine, out: &Output, markers: &[&str]) -> Run {
    let mut found: Vec<String> = engine.check(&out.text).verdict.flagged;
    for m in markers {
        if out.text.contains(&format!("[REDACTED:{m}]")) && !found.iter().any(|f| f == m) {
            found.push((*m).to_owned());
        }
    }
    if out.text.contains("[WITHHELD by Tollgate") && markers.contains(&"secret") {
        found.push("private_key".to_owned());
    }
    if found.is_empty() {
        scored(true, "", "")
    } else {
        scored(false, "leak", format!("found {}", found.join(", ")))
    }
}

/// Every tool call must name a declared tool and carry arguments that are JSON (an object)
/// matching that tool's parameters schema. Score: the share of valid calls.
fn tool_calls(e: &LogEvent, out: &Output) -> Run {
    let calls = match (&out.body, &out.stream_calls) {
        (Some(body), _) => text::tool_calls(body),
        (None, Some(calls)) => calls.clone(),
        (None, None) if e.stream => {
            return Run::Failed(
                "the stream's capture did not keep its tool calls (more than 64, or captured before tool calls were)".into(),
            )
        }
        (None, None) => {
            return Run::Failed(
                "the captured response is not JSON (cut at capture_max_bytes?)".into(),
            )
        }
    };
    if calls.is_empty() {
        return scored(true, "no_tool_calls", "");
    }
    let declared = text::request(e)
        .map(|r| text::declared_tools(&r))
        .unwrap_or_default();
    let mut problems = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let Some(tool) = declared.iter().find(|t| t.name == call.name) else {
            problems.push(format!("call {i}: `{}` is not a declared tool", call.name));
            continue;
        };
        let args = match &call.arguments {
            Arguments::Json(v) => v.clone(),
            Arguments::Text(t) => match serde_json::from_str::<Value>(t) {
                Ok(v) => v,
                Err(err) => {
                    problems.push(format!(
                        "call {i} (`{}`): arguments are not JSON: {err}",
                        call.name
                    ));
                    continue;
                }
            },
        };
        if let Some(schema) = &tool.parameters {
            // The schema comes with the request: it can only be compiled here.
            match jsonschema::validator_for(schema) {
                Ok(v) => {
                    if let Some(err) = v.iter_errors(&args).next() {
                        problems.push(format!(
                            "call {i} (`{}`): arguments do not match the schema at `{}`: {err}",
                            call.name,
                            err.instance_path()
                        ));
                    }
                }
                Err(err) => problems.push(format!(
                    "call {i} (`{}`): the declared schema does not compile: {err}",
                    call.name
                )),
            }
        }
    }
    let valid = calls.len() - problems.len();
    Run::Scored(Scored {
        score: valid as f64 / calls.len() as f64,
        label: if problems.is_empty() {
            String::new()
        } else {
            "invalid_tool_call".to_owned()
        },
        reason: problems.join("; "),
    })
}

/// The judge's answer, as asked for.
#[derive(Debug, Deserialize)]
struct Verdict {
    score: f64,
    #[serde(default)]
    reason: String,
}

/// Reads a score (and reason) from the judge's reply: the JSON object asked for, or failing
/// that a `score: N` in the text. Normalised to 0..1 by `scale`.
pub fn parse_verdict(reply: &str, scale: JudgeScale) -> Result<Scored, String> {
    let json = reply
        .find('{')
        .zip(reply.rfind('}'))
        .and_then(|(a, b)| reply.get(a..=b))
        .and_then(|s| serde_json::from_str::<Verdict>(s).ok());
    let (raw, reason) = match json {
        Some(v) => (v.score, v.reason),
        None => {
            let lower = reply.to_lowercase();
            let at = lower
                .find("score")
                .ok_or_else(|| format!("no score in the judge's reply `{}`", clip(reply)))?;
            let rest = lower.get(at + 5..).unwrap_or_default();
            let num: String = rest
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let n = num
                .parse::<f64>()
                .map_err(|_| format!("no score in the judge's reply `{}`", clip(reply)))?;
            (n, String::new())
        }
    };
    let score = match scale {
        JudgeScale::Unit if (0.0..=1.0).contains(&raw) => raw,
        JudgeScale::Five if (1.0..=5.0).contains(&raw) => (raw - 1.0) / 4.0,
        JudgeScale::Unit => return Err(format!("the judge's score {raw} is not between 0 and 1")),
        JudgeScale::Five => return Err(format!("the judge's score {raw} is not between 1 and 5")),
    };
    Ok(Scored {
        score,
        label: String::new(),
        reason,
    })
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

async fn judge(judge: &Judge, key: &Secret, e: &LogEvent, out: &Output, calls: &Calls) -> Run {
    let question = text::request(e)
        .map(|r| text::input_text(&r))
        .unwrap_or_default();
    let system = match judge.scale {
        JudgeScale::Unit => JUDGE_SYSTEM_UNIT,
        JudgeScale::Five => JUDGE_SYSTEM_FIVE,
    };
    let body = serde_json::json!({
        "model": judge.model,
        "max_tokens": judge.max_tokens,
        "temperature": 0,
        "user": JUDGE_END_USER,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!(
                "Rubric:\n{}\n\nQuestion:\n{}\n\nAnswer:\n{}", judge.rubric, question, out.text
            )},
        ],
    });
    let sent = calls
        .http
        .post(&judge.url)
        .bearer_auth(key.expose())
        .header("x-tollgate-end-user", JUDGE_END_USER)
        .json(&body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(err) => return Run::Failed(format!("judge call failed: {}", without_url(&err))),
    };
    let status = resp.status();
    let answer: Value = match resp.json().await {
        Ok(v) => v,
        Err(err) => {
            return Run::Failed(format!(
                "judge answered {status} with no JSON: {}",
                without_url(&err)
            ))
        }
    };
    if !status.is_success() {
        let msg = answer
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Run::Failed(format!("judge answered {status}: {}", clip(msg)));
    }
    let reply = text::response_text(&answer);
    match parse_verdict(&reply, judge.scale) {
        Ok(s) => Run::Scored(s),
        Err(err) => Run::Failed(err),
    }
}

/// What a webhook evaluator receives.
#[derive(Debug, Serialize)]
struct WebhookBody<'a> {
    evaluator: &'a str,
    request_id: &'a str,
    key_id: &'a str,
    tenant: &'a str,
    model: &'a str,
    endpoint: &'a str,
    http_status: u32,
    input: String,
    output: &'a str,
    latency_ms: f64,
}

/// What a webhook evaluator answers.
#[derive(Debug, Deserialize)]
struct WebhookAnswer {
    score: f64,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn webhook(url: &str, ev: &Evaluator, e: &LogEvent, out: &Output, calls: &Calls) -> Run {
    let body = WebhookBody {
        evaluator: &ev.name,
        request_id: &e.request_id,
        key_id: &e.key_id,
        tenant: &e.tenant,
        model: &e.requested_model,
        endpoint: &e.endpoint,
        http_status: e.http_status,
        input: text::request(e)
            .map(|r| text::input_text(&r))
            .unwrap_or_default(),
        output: &out.text,
        latency_ms: (e.end_time_unix_nanos - e.start_time_unix_nanos) as f64 / 1e6,
    };
    let resp = match calls.http.post(url).json(&body).send().await {
        Ok(r) => r,
        Err(err) => return Run::Failed(format!("webhook call failed: {}", without_url(&err))),
    };
    let status = resp.status();
    if !status.is_success() {
        return Run::Failed(format!("webhook answered {status}"));
    }
    match resp.json::<WebhookAnswer>().await {
        Ok(a) if (0.0..=1.0).contains(&a.score) => Run::Scored(Scored {
            score: a.score,
            label: a.label.filter(|l| l.len() <= 64).unwrap_or_default(),
            reason: a.reason.map(|r| clip(&r)).unwrap_or_default(),
        }),
        Ok(a) => Run::Failed(format!("webhook score {} is not between 0 and 1", a.score)),
        Err(err) => Run::Failed(format!(
            "webhook answer is not {{score, label?, reason?}}: {}",
            without_url(&err)
        )),
    }
}

/// A reqwest error without its URL (which may carry credentials in userinfo).
fn without_url(err: &reqwest::Error) -> String {
    let mut s = err.to_string();
    if let Some(u) = err.url() {
        s = s.replace(u.as_str(), "<url>");
    }
    s
}

/// The HTTP client of every evaluator call, built once.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Cannot build the evaluator HTTP client with its options; using the defaults");
            reqwest::Client::new()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_replies_are_read_as_json_or_text_and_normalised() {
        let s = parse_verdict(r#"Sure. {"score": 4, "reason": "good"}"#, JudgeScale::Five).unwrap();
        assert_eq!((s.score, s.reason.as_str()), (0.75, "good"));
        let s = parse_verdict("Score: 0.8 because", JudgeScale::Unit).unwrap();
        assert_eq!(s.score, 0.8);
        assert!(parse_verdict("Score: 7", JudgeScale::Five).is_err());
        assert!(parse_verdict("no idea", JudgeScale::Unit).is_err());
    }
}
