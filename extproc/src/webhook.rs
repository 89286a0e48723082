//! Webhook guardrails: rules whose detector is `{webhook: {url, timeout_ms, fail}}`. Tollgate
//! POSTs the text (request side: the user text of the request; response side: the assistant
//! text of a complete, non-streamed response) as JSON:
//!
//! ```json
//! {"rule": "moderation", "side": "request", "text": "...", "request_id": "...",
//!  "key_id": "...", "tenant": "...", "model": "...", "endpoint": "chat_completions"}
//! ```
//!
//! and expects `200` with `{"action": "allow"}`, `{"action": "flag", "rule": "name"}` or
//! `{"action": "block", "rule": "name"}` (`rule` optional; the verdict is named
//! `<rule id>:<name>`, or the rule id alone, and a name of other than 1 to 64 letters, digits,
//! `_`, `-`, `.` is ignored). Anything else (another status, other JSON, a timeout, a refused
//! connection) is an unanswered call: with `fail: open` the request goes on and a flag
//! `<rule id>:unavailable` is recorded, with `fail: closed` it is refused with 503
//! `guardrail_unavailable`. The calls of one request run concurrently, awaited by the server's
//! stream loop (no tokio worker blocks), through one HTTP client built once, at most
//! [`MAX_IN_FLIGHT`] at a time per process.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tollgate_core::config::{ApiFamily, Side, WebhookRule};
use tollgate_core::{ApiError, Endpoint};
use tollgate_guardrails::Verdict;

use crate::guard::{text_members, visit_member_text, visit_response_text};
use crate::translator::json::RawObject;

/// Webhook calls in flight per process; more wait (within their rule's timeout).
pub const MAX_IN_FLIGHT: usize = 256;

/// The shared client of every webhook call.
#[derive(Debug)]
pub struct Webhooks {
    http: Option<reqwest::Client>,
    permits: Arc<Semaphore>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Self::new()
    }
}

impl Webhooks {
    /// Builds the client once (connection pool shared by every request).
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "Cannot build the webhook HTTP client: webhook guardrails will be unanswered")
            })
            .ok();
        Self {
            http,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// The process-wide client (built on first use).
    pub fn shared() -> &'static Webhooks {
        static SHARED: std::sync::LazyLock<Webhooks> = std::sync::LazyLock::new(Webhooks::new);
        &SHARED
    }

    /// Calls every rule's webhook about `text`, concurrently; one outcome per rule, in order.
    pub async fn judge(&self, rules: &[&WebhookRule], call: &Call<'_>) -> Vec<Outcome> {
        futures::future::join_all(rules.iter().map(|r| self.one(r, call))).await
    }

    async fn one(&self, rule: &WebhookRule, call: &Call<'_>) -> Outcome {
        let answered = tokio::time::timeout(rule.timeout, async {
            let http = self.http.as_ref().ok_or("no HTTP client")?;
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| "no permits left")?;
            let body = Body {
                rule: &rule.id,
                call,
            };
            let resp = http
                .post(&rule.url)
                .json(&body)
                .send()
                .await
                .map_err(|_| "unreachable")?;
            if !resp.status().is_success() {
                return Err("non-2xx answer");
            }
            let bytes = resp.bytes().await.map_err(|_| "unreadable answer")?;
            serde_json::from_slice::<Answer>(&bytes)
                .map_err(|_| "answer is not the contract's JSON")
        })
        .await;
        let answer = match answered {
            Ok(Ok(a)) => a,
            Ok(Err(why)) => return unanswered(rule, call, why),
            Err(_) => return unanswered(rule, call, "timed out"),
        };
        let name = match answer.rule.as_deref().filter(|n| valid_name(n)) {
            Some(n) => format!("{}:{n}", rule.id),
            None => rule.id.clone(),
        };
        match answer.action.as_str() {
            "allow" => Outcome::Allow,
            "flag" => Outcome::Flag(name),
            "block" if rule.may_block => Outcome::Block(name),
            "block" => Outcome::Flag(name),
            _ => unanswered(rule, call, "unknown action"),
        }
    }
}

fn unanswered(rule: &WebhookRule, call: &Call<'_>, why: &'static str) -> Outcome {
    tracing::warn!(rule = %rule.id, request_id = call.request_id, why, fail_open = rule.fail_open, "Webhook guardrail did not answer");
    if rule.fail_open {
        Outcome::Flag(format!("{}:unavailable", rule.id))
    } else {
        Outcome::Unavailable(rule.id.clone())
    }
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// What a call is about (sent with every rule's call).
#[derive(Debug, Serialize)]
pub struct Call<'a> {
    /// `request` or `response`.
    pub side: &'static str,
    /// The text judged.
    pub text: &'a str,
    /// Tollgate's request id.
    pub request_id: &'a str,
    /// The key's id.
    pub key_id: &'a str,
    /// The key's tenant.
    pub tenant: &'a str,
    /// The public model asked for.
    pub model: &'a str,
    /// The endpoint label.
    pub endpoint: &'static str,
}

#[derive(Serialize)]
struct Body<'a> {
    rule: &'a str,
    #[serde(flatten)]
    call: &'a Call<'a>,
}

#[derive(Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    rule: Option<String>,
}

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to say.
    Allow,
    /// Let through, recorded under this name.
    Flag(String),
    /// Refused, under this name.
    Block(String),
    /// Unanswered with `fail: closed`: refused (503), naming the rule.
    Unavailable(String),
}

/// What the webhooks of one side decided: the verdict to record and, when refused, the error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// The verdict (blocks and flags by name).
    pub verdict: Verdict,
    /// The refusal, when a webhook blocked or a fail-closed one did not answer.
    pub error: Option<ApiError>,
}

/// Folds the outcomes into one decision (the first refusal wins).
pub fn decide(outcomes: Vec<Outcome>, side: Side) -> Decision {
    let mut d = Decision::default();
    for o in outcomes {
        match o {
            Outcome::Allow => {}
            Outcome::Flag(name) => d.verdict.flagged.push(name),
            Outcome::Block(name) => {
                if d.error.is_none() {
                    d.error = Some(ApiError::GuardrailBlocked {
                        rule: name.clone(),
                        side,
                    });
                }
                d.verdict.blocked_by.get_or_insert(name);
            }
            Outcome::Unavailable(rule) => {
                if d.error.is_none() {
                    d.error = Some(ApiError::GuardrailUnavailable(rule.clone()));
                }
                d.verdict
                    .blocked_by
                    .get_or_insert(format!("{rule}:unavailable"));
            }
        }
    }
    d
}

/// The user text of a request body, one string per line, read through the same walker as
/// the local rules (so every dialect's text is judged: Gemini's `contents[].parts` too).
pub fn request_text(endpoint: Endpoint, obj: &RawObject<'_>) -> String {
    let mut out = Vec::new();
    let mut take = |s: &mut String| out.push(std::mem::take(s));
    for member in text_members(endpoint) {
        let Some(raw) = obj.get(member) else { continue };
        let Ok(mut value) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        visit_member_text(member, &mut value, &mut take);
    }
    out.join("\n")
}

/// The assistant text of a complete response in `family`'s format, one string per line.
pub fn response_text(body: &Value, family: ApiFamily) -> String {
    let mut v = body.clone();
    let mut out = Vec::new();
    let mut take = |s: &mut String| out.push(std::mem::take(s));
    visit_response_text(&mut v, family, &mut take);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_fold_into_one_decision_and_the_first_refusal_wins() {
        let d = decide(
            vec![
                Outcome::Allow,
                Outcome::Flag("mod:pii".into()),
                Outcome::Unavailable("slow".into()),
                Outcome::Block("mod:toxic".into()),
            ],
            Side::Request,
        );
        assert_eq!(d.verdict.flagged, ["mod:pii"]);
        assert_eq!(d.verdict.blocked_by.as_deref(), Some("slow:unavailable"));
        assert_eq!(d.error, Some(ApiError::GuardrailUnavailable("slow".into())));
        assert_eq!(
            decide(vec![Outcome::Allow], Side::Request),
            Decision::default()
        );
    }

    #[test]
    fn texts_are_read_in_both_dialects() {
        let body = br#"{"model":"m","system":"sys","messages":[{"role":"user","content":[{"type":"text","text":"a"}]},{"role":"user","content":"b"}]}"#;
        let obj = RawObject::parse(body).unwrap();
        assert_eq!(request_text(Endpoint::Messages, &obj), "sys\na\nb");
        assert_eq!(request_text(Endpoint::ChatCompletions, &obj), "a\nb");
        let json = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
        let openai = json(br#"{"choices":[{"message":{"content":"hi"}},{"text":"legacy"}]}"#);
        assert_eq!(response_text(&openai, ApiFamily::OpenAi), "hi\nlegacy");
        let anthropic = json(br#"{"content":[{"type":"text","text":"hello"}]}"#);
        assert_eq!(response_text(&anthropic, ApiFamily::Anthropic), "hello");
        assert!(valid_name("toxic.v2") && !valid_name("") && !valid_name("a b"));
    }

    #[test]
    fn gemini_requests_and_responses_are_read_too() {
        // Issue 12: the webhook walker once skipped `contents[].parts` (and so judged nothing of
        // a Gemini request).
        let body = br#"{"systemInstruction":{"parts":[{"text":"sys"}]},"contents":[{"role":"user","parts":[{"text":"hello"},{"text":"there"}]}]}"#;
        let obj = RawObject::parse(body).unwrap();
        assert_eq!(
            request_text(Endpoint::GenerateContent, &obj),
            "sys\nhello\nthere"
        );
        let gemini: Value = serde_json::from_slice(
            br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"answer"}]}}]}"#,
        )
        .unwrap();
        assert_eq!(response_text(&gemini, ApiFamily::Gemini), "answer");
    }
}
