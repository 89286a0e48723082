//! One failover attempt, as the ext_proc filter in a failover cluster's upstream filter chain
//! sees it (one gRPC stream per attempt): the request in the client's dialect, which this
//! attempt's target (the chain's entry for Envoy's `x-envoy-attempt-count`) gets translated,
//! addressed and signed for, exactly as a request routed to one target; then the attempt's
//! response headers, which feed the target's live state (latency, `Retry-After` cool-down,
//! consecutive failures) and tell the request's own ext_proc which target answered. Each
//! attempt's status and latency go into the process's [`attempts::book`] under the request's
//! id, where the request's ext_proc takes them for its log event.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use tollgate_core::config::Model;
use tollgate_core::metadata as md;
use tollgate_core::metrics::FailoverLabels;
use tollgate_core::{ApiError, Dialect, Endpoint};

use super::respect::TargetRef;
use super::response::note_response;
use super::{header, strip_query, unix_now, Processor};
use crate::attempts::{self, Ending, Outcome, Pending};
use crate::mutation::{self, set};
use crate::stream::Pipeline;
use crate::translator::{openai, Pair};
use tollgate_core::config::ApiFamily;

/// Envoy's count of the attempt (1 for the first), on every upstream request.
const ATTEMPT_HEADER: &str = "x-envoy-attempt-count";

/// The credential headers a target may have been given by an earlier attempt.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
];

/// What one attempt's stream knows.
#[derive(Debug)]
pub(super) struct Attempt {
    /// The model whose chain this is.
    model: String,
    /// The request's id (Tollgate's, as the request's ext_proc knew it).
    request_id: String,
    /// The chain's first target.
    first: usize,
    /// Whether a budget applies to the request's key (the request's ext_proc decided).
    budget_lines: bool,
    /// Which attempt (1 for the first).
    number: usize,
    /// When its request headers came.
    started: Instant,
    /// The request's path and method (the client's).
    path: String,
    method: String,
    /// The request as the client sent it (the request's ext_proc kept it: Envoy replays the
    /// body the first attempt was translated into).
    pending: Arc<Pending>,
    /// This attempt's target, once the body chose it, with how its response is read.
    target: Option<Chosen>,
    /// Whether the attempt's response headers came.
    answered: bool,
}

/// The target of an attempt.
#[derive(Debug)]
struct Chosen {
    index: usize,
    sent_at: Instant,
    include_usage: bool,
    strip_usage_chunk: bool,
}

/// Whether `h` are the request headers of a later attempt (Envoy's count ≥ 2) of a failover
/// request routed to a failover chain, which this process did not keep: the request's own
/// stream went to another Tollgate process behind the same Envoy.
fn lost_attempt(h: &HttpHeaders) -> bool {
    let later = header(&h.headers, ATTEMPT_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
        .is_some_and(|n| n >= 2);
    let chain = header(&h.headers, md::ROUTE_HEADER).is_some_and(|v| {
        v.strip_prefix(tollgate_core::config::failover::CLUSTER_PREFIX.as_bytes())
            .is_some_and(|rest| rest.starts_with(b"~"))
    });
    later && chain
}

impl Attempt {
    /// An attempt's stream, when the request's Envoy id names a pending failover request
    /// (which the request's ext_proc kept in [`attempts::pending`]); `None` for a request's
    /// own stream. Nothing of the chain travels in headers: every attempt sees the request
    /// headers as the attempts before it left them (Envoy shares one header map between
    /// them), and Envoy's `x-request-id` and `x-envoy-attempt-count` are all it needs.
    fn from_headers(h: &HttpHeaders) -> Option<Attempt> {
        let id = std::str::from_utf8(header(&h.headers, "x-request-id")?).ok()?;
        let pending = attempts::pending().get(id)?;
        let number = header(&h.headers, ATTEMPT_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(1usize)
            .max(1);
        Some(Attempt::of(pending, number))
    }

    fn of(pending: Arc<Pending>, number: usize) -> Attempt {
        Attempt {
            model: pending.model.clone(),
            request_id: pending.request_id.clone(),
            first: pending.first,
            budget_lines: pending.budget_lines,
            number,
            started: Instant::now(),
            path: pending.path.clone(),
            method: pending.method.clone(),
            pending,
            target: None,
            answered: false,
        }
    }

    /// The target index of this attempt in `m`'s chain.
    fn target_index(&self, m: &Model) -> Option<usize> {
        m.failover_chain(self.first)?
            .targets
            .get(self.number - 1)
            .copied()
    }
}

/// The Envoy request id in a message's attributes (`request.id`, which the failover
/// cluster's response-only ext_proc sends with a failed first attempt's response headers).
fn attribute_request_id(msg: &ProcessingRequest) -> Option<&str> {
    use envoy_types::pb::google::protobuf::value::Kind;
    msg.attributes
        .values()
        .find_map(|s| match &s.fields.get("request.id")?.kind {
            Some(Kind::StringValue(v)) => Some(v.as_str()),
            _ => None,
        })
}

impl Processor {
    /// Handles `msg` when this stream belongs to a failover attempt (its request headers
    /// carry the chain); `None` for a request's own stream.
    pub(super) async fn upstream_phase(
        &mut self,
        msg: &ProcessingRequest,
    ) -> Option<ProcessingResponse> {
        match &msg.request {
            Some(Request::RequestHeaders(h)) if self.upstream.is_none() => {
                let Some(attempt) = Attempt::from_headers(h) else {
                    return lost_attempt(h).then(|| {
                        // Answered here rather than taken for a request of its own (a 401 for
                        // want of a key would tell the client its key is wrong).
                        self.finished = true;
                        tracing::warn!("A failover attempt reached a Tollgate process that did not see its request");
                        let e = ApiError::FailoverAttemptLost;
                        let dialect = header(&h.headers, ":path")
                            .and_then(|p| std::str::from_utf8(p).ok())
                            .map_or(Dialect::OpenAi, Dialect::from_path);
                        mutation::immediate(e.status(), e.body(dialect), "application/json", None)
                    });
                };
                // Not a request of its own: nothing to settle or log when the stream ends.
                self.finished = true;
                self.client_anthropic_version = header(&h.headers, "anthropic-version").is_some();
                tracing::debug!(model = %attempt.model, attempt = attempt.number, "Failover attempt");
                if attempt.number == 2 && !attempts::book().has(&attempt.request_id, 1) {
                    self.first_attempt_unanswered(&attempt);
                }
                self.upstream = Some(attempt);
                Some(mutation::request_headers(Vec::new()))
            }
            Some(Request::RequestBody(b)) if self.upstream.is_some() => {
                Some(match self.attempt_body(b).await {
                    Ok(r) => r,
                    Err(e) => {
                        let dialect = self
                            .upstream
                            .as_ref()
                            .map_or(Dialect::OpenAi, |a| Dialect::from_path(&a.path));
                        tracing::warn!(error = %e, "A failover attempt could not be prepared");
                        mutation::immediate(e.status(), e.body(dialect), "application/json", None)
                    }
                })
            }
            Some(Request::ResponseHeaders(h)) if self.upstream.is_some() => {
                Some(self.attempt_response(h))
            }
            Some(Request::ResponseHeaders(h))
                if self.forwarded.is_none() && attribute_request_id(msg).is_some() =>
            {
                // Not a request of its own: nothing to settle or log when the stream ends.
                self.finished = true;
                let pending = attribute_request_id(msg).and_then(|id| attempts::pending().get(id));
                Some(match pending {
                    Some(p) => self.first_attempt_failed(p, h),
                    None => mutation::response_headers(Default::default(), BodySendMode::None),
                })
            }
            _ => None,
        }
    }

    /// The attempt's request: the body (in the client's dialect) applied to this attempt's
    /// target, with the same function as a request routed to one target.
    async fn attempt_body(&mut self, b: &HttpBody) -> Result<ProcessingResponse, ApiError> {
        let config = std::sync::Arc::clone(&self.config);
        let Some(attempt) = &self.upstream else {
            return Err(ApiError::Internal);
        };
        let Some(m) = config.models.get(&attempt.model) else {
            // The config changed between the request's ext_proc and this attempt.
            return Err(ApiError::UnknownModel(attempt.model.clone()));
        };
        let Some((index, target)) = attempt
            .target_index(m)
            .and_then(|i| Some((i, m.targets.get(i)?)))
        else {
            tracing::warn!(model = %m.name, attempt = attempt.number, "A failover attempt past the model's chain");
            return Err(ApiError::Internal);
        };
        let path = strip_query(&attempt.path).to_owned();
        let endpoint = Endpoint::from_request(&attempt.method, &path).ok_or_else(|| {
            ApiError::UnknownEndpoint {
                method: attempt.method.clone(),
                path: path.clone(),
            }
        })?;
        let (number, first, budget_lines) = (attempt.number, attempt.first, attempt.budget_lines);
        if number == 1 {
            // The request's ext_proc prepared the first attempt (a bootstrap whose upstream
            // filter does not skip attempt 1 sends it here too): it goes on as it is.
            if let Some(a) = &mut self.upstream {
                a.target = Some(Chosen {
                    index,
                    sent_at: Instant::now(),
                    include_usage: false,
                    strip_usage_chunk: false,
                });
            }
            return Ok(mutation::request_body(Default::default()));
        }
        let _replayed = b;
        let pending = Arc::clone(&attempt.pending);
        let parsed = openai::parse_request_at(endpoint, &path, &pending.body)?;
        let (pair, upstream_endpoint) =
            Pair::route(endpoint, target.family).map_err(|e| e.api_error())?;
        let applied = self
            .apply_target(
                endpoint,
                target,
                pair,
                upstream_endpoint,
                &parsed,
                pending.body.len(),
                budget_lines,
                None,
            )
            .await?;
        if number > 1 {
            // The attempt before this one failed: a failover from its target to this one.
            let from = m
                .failover_chain(first)
                .and_then(|c| c.targets.get(number - 2).copied())
                .and_then(|i| m.targets.get(i))
                .map_or_else(String::new, |t| t.provider.name.clone());
            self.metrics
                .failovers
                .get_or_create(&FailoverLabels {
                    model: m.name.clone(),
                    from,
                    to: target.provider.name.clone(),
                })
                .inc();
        }
        if let Some(a) = &mut self.upstream {
            a.target = Some(Chosen {
                index,
                sent_at: Instant::now(),
                include_usage: applied.up.include_usage,
                strip_usage_chunk: applied.up.strip_usage_chunk,
            });
        }
        let mut remove = applied.remove;
        let chain = m
            .failover_chain(first)
            .map(|c| c.targets)
            .unwrap_or_default();
        if number > 1 {
            // What earlier attempts set for their targets is still on the request: their
            // credentials and provider headers must not reach this one.
            remove.extend(CREDENTIAL_HEADERS.iter().map(|h| (*h).to_owned()));
            for t in chain
                .iter()
                .take(number - 1)
                .filter_map(|i| m.targets.get(*i))
            {
                if let Some((name, _)) = &t.provider.credential_header {
                    remove.push((*name).to_owned());
                }
                remove.extend(t.provider.headers.iter().map(|(k, _)| k.clone()));
            }
        }
        if number >= chain.len() {
            // The chain's last attempt: no later one needs Envoy's count.
            remove.push(ATTEMPT_HEADER.to_owned());
        }
        let set_here: Vec<&str> = applied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref().map(|h| h.key.as_str()))
            .collect();
        remove.retain(|r| !set_here.contains(&r.as_str()));
        remove.sort();
        remove.dedup();
        Ok(mutation::request_body(mutation::common(
            applied.headers,
            remove,
            Some(applied.up.body),
            false,
        )))
    }

    /// The attempt's response headers: the target's live state learns the outcome, and the
    /// response names the target (for the request's ext_proc, which removes the header).
    fn attempt_response(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        let config = std::sync::Arc::clone(&self.config);
        let answer = self.upstream.as_ref().and_then(|a| {
            let chosen = a.target.as_ref()?;
            let target = config.models.get(&a.model)?.targets.get(chosen.index)?;
            Some((a, chosen, target, a.model.as_str()))
        });
        let mut headers = Vec::new();
        if let Some((a, chosen, target, model)) = answer {
            let number = a.number;
            let status = header(&h.headers, ":status")
                .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                .unwrap_or(0u16);
            attempts::book().record(
                &a.request_id,
                Outcome {
                    number,
                    target: chosen.index,
                    status,
                    ending: Ending::Answered,
                    latency_ms: Outcome::millis(chosen.sent_at.elapsed()),
                },
            );
            note_response(
                TargetRef {
                    stats: &target.stats,
                    provider: &target.provider.name,
                    model,
                    upstream_model: &target.upstream_model,
                },
                status,
                true,
                chosen.sent_at.elapsed(),
                header(&h.headers, "retry-after"),
                &self.metrics,
            );
            headers.push(set(
                md::ANSWER_HEADER,
                format!(
                    "{};{number};{};{}",
                    chosen.index,
                    u8::from(chosen.strip_usage_chunk),
                    u8::from(chosen.include_usage)
                ),
            ));
        }
        if let Some(a) = &mut self.upstream {
            a.answered = true;
        }
        mutation::response_headers(
            mutation::common(headers, Vec::new(), None, false),
            BodySendMode::None,
        )
    }
}

impl Processor {
    /// A failed first attempt's response headers (the failover cluster's response-only
    /// ext_proc runs for attempt 1 only when its status is a 5xx or a 429): the first
    /// target's live state learns the failure (latency, `Retry-After`, consecutive
    /// failures), the outcome book its status, and the response names the target, so that
    /// the request's stream, should this answer reach the client, does not note it again.
    fn first_attempt_failed(
        &mut self,
        pending: Arc<Pending>,
        h: &HttpHeaders,
    ) -> ProcessingResponse {
        let config = Arc::clone(&self.config);
        let status = header(&h.headers, ":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
            .unwrap_or(0u16);
        let elapsed = pending.sent_at.elapsed();
        let mut headers = Vec::new();
        if let Some((index, target)) = config.models.get(&pending.model).and_then(|m| {
            let i = *m.failover_chain(pending.first)?.targets.first()?;
            Some((i, m.targets.get(i)?))
        }) {
            tracing::debug!(model = %pending.model, status, "A failover request's first attempt failed");
            attempts::book().record(
                &pending.request_id,
                Outcome {
                    number: 1,
                    target: index,
                    status,
                    ending: Ending::Answered,
                    latency_ms: Outcome::millis(elapsed),
                },
            );
            note_response(
                TargetRef {
                    stats: &target.stats,
                    provider: &target.provider.name,
                    model: &pending.model,
                    upstream_model: &target.upstream_model,
                },
                status,
                true,
                elapsed,
                header(&h.headers, "retry-after"),
                &self.metrics,
            );
            headers.push(set(md::ANSWER_HEADER, format!("{index};1;0;0")));
        }
        mutation::response_headers(
            mutation::common(headers, Vec::new(), None, false),
            BodySendMode::None,
        )
    }

    /// Records attempt `number` of `a`, which ended without response headers (the per-try
    /// `timeout`, or a reset): in the attempt book, and as a failure of its `target`.
    fn attempt_unanswered(
        &self,
        a: &Attempt,
        number: usize,
        index: usize,
        target: &tollgate_core::config::Target,
        elapsed: std::time::Duration,
        timeout: bool,
    ) {
        attempts::book().record(
            &a.request_id,
            Outcome {
                number,
                target: index,
                status: 0,
                ending: if timeout {
                    Ending::Timeout
                } else {
                    Ending::Reset
                },
                latency_ms: Outcome::millis(elapsed),
            },
        );
        note_response(
            TargetRef {
                stats: &target.stats,
                provider: &target.provider.name,
                model: &a.model,
                upstream_model: &target.upstream_model,
            },
            0,
            false,
            elapsed,
            None,
            &self.metrics,
        );
    }

    /// The second attempt of a request whose first attempt left no outcome: no response
    /// headers came (a refused connection, a reset, the per-try timeout). The first target
    /// learns the failure; the timeout is told from a reset by the time since the request's
    /// ext_proc sent it on (an end within the last tenth of the per-try timeout, or later).
    fn first_attempt_unanswered(&self, a: &Attempt) {
        let config = Arc::clone(&self.config);
        let Some(m) = config.models.get(&a.model) else {
            return;
        };
        let Some((index, target)) = m
            .failover_chain(a.first)
            .and_then(|c| c.targets.first().copied())
            .and_then(|i| Some((i, m.targets.get(i)?)))
        else {
            return;
        };
        let elapsed = a.pending.sent_at.elapsed();
        let timeout = m
            .failover
            .as_ref()
            .and_then(|f| f.per_try_timeout_ms)
            .is_some_and(|ms| elapsed.as_millis().saturating_mul(10) >= u128::from(ms) * 9);
        tracing::debug!(model = %a.model, provider = %target.provider.name, timeout, "A failover request's first attempt ended without an answer");
        self.attempt_unanswered(a, 1, index, target, elapsed, timeout);
    }

    /// A failover request answered by its first attempt (no upstream ext_proc saw that
    /// attempt): its outcome is noted here, as for a request routed to one target.
    pub(super) fn first_attempt_answered(&mut self, status: u16, retry_after: Option<&[u8]>) {
        let Some(fwd) = &mut self.forwarded else {
            return;
        };
        let Some(f) = &mut fwd.failover else { return };
        let Some(&index) = f.chain.first() else {
            return;
        };
        f.attempts = 1;
        f.answered = Some(index);
        let Some(fwd) = &self.forwarded else { return };
        if let Some(target) = TargetRef::of(fwd) {
            note_response(
                target,
                status,
                true,
                fwd.sent_at.elapsed(),
                retry_after,
                &self.metrics,
            );
        }
    }
}

impl Processor {
    /// A failover request's response came from the target at `answer` (index, attempt,
    /// strip usage chunk, include usage): from here on, its body is read, priced and named
    /// as that target's.
    pub(super) fn answered_by(&mut self, answer: (usize, usize, bool, bool)) {
        let (index, number, strip_usage_chunk, include_usage) = answer;
        let config = std::sync::Arc::clone(&self.config);
        let request_id = self
            .ctx
            .as_ref()
            .map(|c| c.request_id.clone())
            .unwrap_or_default();
        let Some(fwd) = &mut self.forwarded else {
            return;
        };
        let Some(f) = &mut fwd.failover else {
            return;
        };
        f.attempts = number;
        f.answered = Some(index);
        if f.chain.first() == Some(&index) {
            return;
        }
        let Some(target) = config
            .models
            .get(&f.model)
            .and_then(|m| m.targets.get(index))
        else {
            return;
        };
        let Ok((pair, _)) = Pair::route(fwd.endpoint, target.family) else {
            return;
        };
        fwd.provider = std::sync::Arc::clone(&target.provider);
        fwd.upstream_model = target.upstream_model.clone();
        fwd.pair = pair;
        fwd.response_id = match (pair.upstream, pair.client) {
            (ApiFamily::Bedrock, ApiFamily::Anthropic) => format!("msg_{request_id}"),
            (ApiFamily::Bedrock, _) => format!("chatcmpl-{request_id}"),
            _ => String::new(),
        };
        if let Some(old) = &mut fwd.sse {
            let cap = old.take_cap();
            let engine = fwd.response_guard.as_ref().map(std::sync::Arc::clone);
            fwd.sse = Some(Box::new(
                Pipeline::new(pair, include_usage, unix_now(), engine)
                    .strip_usage_chunk(strip_usage_chunk)
                    .with_identity(&fwd.response_id, &target.upstream_model)
                    .with_cap(cap)
                    .with_text_completions(
                        fwd.endpoint == Endpoint::Completions,
                        include_usage,
                        unix_now(),
                    ),
            ));
        }
    }
}

impl Processor {
    /// An attempt's stream that ends before its response headers came (Envoy gave up on it:
    /// the per-try timeout, a reset): a failure of its target, noted like a failed answer.
    pub(super) fn end_attempt(&mut self) {
        let Some(a) = &self.upstream else { return };
        if a.answered {
            return;
        }
        let Some(chosen) = &a.target else {
            // Ended before its body came (Envoy could not connect to the target): status 0,
            // timed from its request headers.
            if let Some(index) = self
                .config
                .models
                .get(&a.model)
                .and_then(|m| a.target_index(m))
            {
                tracing::debug!(model = %a.model, attempt = a.number, "A failover attempt ended before its body");
                attempts::book().record(
                    &a.request_id,
                    Outcome {
                        number: a.number,
                        target: index,
                        status: 0,
                        ending: Ending::Reset,
                        latency_ms: Outcome::millis(a.started.elapsed()),
                    },
                );
            }
            return;
        };
        let Some(target) = self
            .config
            .models
            .get(&a.model)
            .and_then(|m| m.targets.get(chosen.index))
        else {
            return;
        };
        let elapsed = chosen.sent_at.elapsed();
        // Envoy's per-try timer starts before this stream sees the attempt: an end within
        // the last tenth of the per-try timeout (from the attempt's headers) is the timeout.
        let since_headers = a.started.elapsed().as_millis();
        let timeout = self
            .config
            .models
            .get(&a.model)
            .and_then(|m| m.failover.as_ref()?.per_try_timeout_ms)
            .is_some_and(|ms| since_headers.saturating_mul(10) >= u128::from(ms) * 9);
        tracing::debug!(model = %a.model, attempt = a.number, provider = %target.provider.name, timeout, "A failover attempt ended without an answer");
        self.attempt_unanswered(a, a.number, chosen.index, target, elapsed, timeout);
    }
}

/// The answer header's fields: target index, attempt number, strip usage chunk, include usage.
pub(super) fn parse_answer(value: &[u8]) -> Option<(usize, usize, bool, bool)> {
    let mut parts = std::str::from_utf8(value).ok()?.split(';');
    let index = parts.next()?.parse().ok()?;
    let number = parts.next()?.parse().ok()?;
    let strip = parts.next()? == "1";
    let include = parts.next()? == "1";
    Some((index, number, strip, include))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HttpHeaders {
        HttpHeaders {
            headers: Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).to_owned(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_attempt_reads_its_pending_request_and_number() {
        let kept = attempts::pending().put(
            "envoy-id-upstream-test",
            Pending {
                request_id: "req-1".into(),
                model: "team/chat-a".into(),
                first: 2,
                budget_lines: true,
                method: "POST".into(),
                path: "/v1beta/models/x:generateContent?alt=sse".into(),
                body: b"{}".to_vec(),
                sent_at: Instant::now(),
            },
        );
        assert!(kept);
        let a = Attempt::from_headers(&headers(&[
            ("x-request-id", "envoy-id-upstream-test"),
            (ATTEMPT_HEADER, "3"),
            // An earlier attempt's path: the kept one is the client's.
            (":path", "/v1/messages"),
        ]))
        .unwrap();
        assert_eq!(
            (
                a.model.as_str(),
                a.request_id.as_str(),
                a.first,
                a.budget_lines,
                a.number
            ),
            ("team/chat-a", "req-1", 2, true, 3)
        );
        assert_eq!(
            (a.method.as_str(), a.path.as_str()),
            ("POST", "/v1beta/models/x:generateContent?alt=sse")
        );
        // Without Envoy's count it is the first attempt; an unknown id is not an attempt.
        let a =
            Attempt::from_headers(&headers(&[("x-request-id", "envoy-id-upstream-test")])).unwrap();
        assert_eq!(a.number, 1);
        assert!(Attempt::from_headers(&headers(&[("x-request-id", "other")])).is_none());
        assert!(Attempt::from_headers(&headers(&[(":path", "/v1/chat/completions")])).is_none());
        // A later attempt of a chain this process did not keep is told apart from a request.
        let lost = headers(&[
            ("x-request-id", "kept-by-another-process"),
            (ATTEMPT_HEADER, "2"),
            (md::ROUTE_HEADER, "tollgate-failover~a~b"),
        ]);
        assert!(Attempt::from_headers(&lost).is_none() && lost_attempt(&lost));
        assert!(!lost_attempt(&headers(&[
            (ATTEMPT_HEADER, "1"),
            (md::ROUTE_HEADER, "tollgate-failover~a~b"),
        ])));
        assert!(!lost_attempt(&headers(&[
            (ATTEMPT_HEADER, "2"),
            (md::ROUTE_HEADER, "openai"),
        ])));
        attempts::pending().remove("envoy-id-upstream-test");
        assert!(
            Attempt::from_headers(&headers(&[("x-request-id", "envoy-id-upstream-test")]))
                .is_none()
        );
    }

    #[test]
    fn the_answer_header_round_trips() {
        assert_eq!(parse_answer(b"2;3;0;1"), Some((2, 3, false, true)));
        assert_eq!(parse_answer(b"2;3"), None);
    }
}
