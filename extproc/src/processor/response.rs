//! The response: its headers decide how the body is read (streamed for a successful stream,
//! buffered otherwise, not at all for a reply that never came from a provider); stream chunks
//! go through usage reading, guardrails, the output cap and capture; a complete body is
//! translated into the client's dialect, judged (local rules and webhooks over one parse of
//! it) and captured.

use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingResponse};
use tollgate_core::config::{ApiFamily, Side};
use tollgate_core::metadata as md;
use tollgate_core::metrics::{Metrics, ProviderLabel};
use tollgate_core::{keys, ApiError, Endpoint};

use super::{header, respect, unix_now, Processor, BUDGET_WARNING_HEADER, TOKEN_COUNT_HEADER};
use crate::guard;
use crate::mutation::{self, set};
use crate::translator::ResponseMeta;
use crate::webhook;

/// The latency sample a failed attempt counts as (at least), under `least_latency`.
const FAILED_ATTEMPT_LATENCY: std::time::Duration = std::time::Duration::from_secs(2);

impl Processor {
    pub(super) fn on_response_headers(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        if self.passthrough.is_some() && self.forwarded.is_some() {
            return self.passthrough_response_headers(h);
        }
        let Some(fwd) = &mut self.forwarded else {
            // A reply that never came from a provider through us (a local reply): leave its
            // body, and name it like every other response.
            let mut headers = self.answer_headers.clone();
            // A local reply before the gate ran (Envoy's 413 from the body limit) gets an id
            // too; one that has its id (an ext_authz refusal) keeps it.
            if headers.is_empty() && header(&h.headers, md::REQUEST_ID_HEADER).is_none() {
                headers.push(set(md::REQUEST_ID_HEADER, keys::new_request_id()));
            }
            return mutation::response_headers(
                mutation::common(headers, vec![], None, false),
                BodySendMode::None,
            );
        };
        let status = header(&h.headers, ":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
            .unwrap_or(0u16);
        fwd.status = Some(status);
        if let Some(c) = &mut self.capture {
            let ct = header(&h.headers, "content-type").unwrap_or_default();
            c.response_headers(&String::from_utf8_lossy(ct));
        }
        let from_upstream = header(&h.headers, "x-envoy-upstream-service-time").is_some();
        let answer = header(&h.headers, md::ANSWER_HEADER).and_then(super::upstream::parse_answer);
        if fwd.failover.is_none() {
            if let Some(target) = respect::TargetRef::of(fwd) {
                note_response(
                    target,
                    status,
                    from_upstream,
                    fwd.sent_at.elapsed(),
                    header(&h.headers, "retry-after"),
                    &self.metrics,
                );
            }
        } else if let Some(answer) = answer {
            // Each attempt noted its own outcome; the answer is read as its target's.
            self.answered_by(answer);
        } else if from_upstream {
            // The first attempt answered: no upstream ext_proc saw it.
            let retry_after = header(&h.headers, "retry-after").map(<[u8]>::to_vec);
            self.first_attempt_answered(status, retry_after.as_deref());
        }
        let Some(fwd) = &mut self.forwarded else {
            return mutation::response_headers(Default::default(), BodySendMode::None);
        };
        if from_upstream {
            fwd.upstream_latency = Some(fwd.sent_at.elapsed());
            self.metrics
                .upstream_latency
                .get_or_create(&ProviderLabel {
                    provider: fwd.provider.name.clone(),
                })
                .observe(fwd.sent_at.elapsed().as_secs_f64());
        }
        let ok = (200..300).contains(&status);
        let bedrock = fwd.pair.upstream == ApiFamily::Bedrock;
        if bedrock && ok && fwd.endpoint == Endpoint::Embeddings {
            let tokens = header(&h.headers, "x-amzn-bedrock-input-token-count").map(<[u8]>::to_vec);
            self.embeddings_headers(tokens.as_deref());
        }
        let Some(fwd) = &mut self.forwarded else {
            return mutation::response_headers(Default::default(), BodySendMode::None);
        };
        if bedrock && !ok {
            fwd.error_type = header(&h.headers, "x-amzn-errortype")
                .map(|t| String::from_utf8_lossy(t).into_owned());
        }
        let (mode, mut remove) = if ok && fwd.stream {
            (BodySendMode::Streamed, vec!["content-length".to_owned()])
        } else if ok && self.media.as_ref().is_some_and(|m| m.streams()) {
            // Speech audio goes through chunk by chunk, unchanged, never held whole.
            (BodySendMode::Streamed, Vec::new())
        } else {
            (BodySendMode::Buffered, Vec::new())
        };
        if fwd.failover.is_some() {
            remove.push(md::ANSWER_HEADER.to_owned());
        }
        let mut headers = self.answer_headers.clone();
        headers.push(set(md::PROVIDER_HEADER, fwd.provider.name.as_str()));
        if ok && fwd.endpoint == Endpoint::CountTokens {
            headers.push(set(TOKEN_COUNT_HEADER, "provider"));
        }
        // Bedrock streams in AWS event-stream framing; the client gets SSE.
        if bedrock && ok && fwd.stream {
            headers.push(set("content-type", "text/event-stream"));
        }
        if !self.soft_exceeded.is_empty() {
            let warning: Vec<String> = self
                .soft_exceeded
                .iter()
                .map(|l| format!("{} {} budget exceeded", l.scope.label(), l.period.label()))
                .collect();
            headers.push(set(BUDGET_WARNING_HEADER, warning.join(", ")));
        }
        if h.end_of_stream {
            self.response_done = true;
            self.finish();
        }
        mutation::response_headers(mutation::common(headers, remove, None, false), mode)
    }

    pub(super) async fn on_response_body(&mut self, b: HttpBody) -> ProcessingResponse {
        if self.passthrough.is_some() && self.forwarded.is_some() {
            return self.passthrough_response_body(&b);
        }
        if self.media.is_some() {
            return self.media_response(&b).await;
        }
        let Some(fwd) = &mut self.forwarded else {
            return mutation::response_body(Default::default());
        };
        let ok = fwd.status.is_some_and(|s| (200..300).contains(&s));
        if self.first_byte_at.is_none() && !b.body.is_empty() {
            self.first_byte_at = Some(SystemTime::now());
        }
        if let (true, Some(span)) = (ok, &mut self.span) {
            span.response_body(&b.body);
        }
        let response = if ok && fwd.sse.is_some() {
            self.stream_chunk(&b)
        } else {
            self.complete_body(&b).await
        };
        if b.end_of_stream {
            self.response_done = true;
            self.finish();
            if ok && self.forwarded.as_ref().is_some_and(|f| f.sse.is_some()) {
                self.cache_store(None).await;
            }
        }
        self.responses_flush().await;
        response
    }

    /// One chunk of a successful stream through its pipeline: usage, guardrails (or
    /// translation), the output cap, capture.
    fn stream_chunk(&mut self, b: &HttpBody) -> ProcessingResponse {
        let Some(pipeline) = self.forwarded.as_mut().and_then(|f| f.sse.as_mut()) else {
            return mutation::response_body(Default::default());
        };
        let out = pipeline.push_chunk(&b.body, b.end_of_stream, self.capture.as_mut());
        let usage = pipeline.usage();
        if let Some(fwd) = &mut self.forwarded {
            fwd.usage = usage;
        }
        if let Some(c) = &mut self.capture {
            c.response_bytes(out.as_ref().map_or(b.body.len(), Vec::len));
        }
        self.cache_stream_bytes(out.as_deref().unwrap_or(&b.body));
        let out = self
            .responses_stream_chunk(out.as_deref().unwrap_or(&b.body), b.end_of_stream)
            .or(out);
        mutation::response_body(match out {
            Some(out) => mutation::common(vec![], vec![], Some(out), false),
            None => Default::default(),
        })
    }

    /// A complete (buffered) response: translated into the client's dialect, then, when it
    /// succeeded, judged by the response webhooks and local rules over one parse of it.
    async fn complete_body(&mut self, b: &HttpBody) -> ProcessingResponse {
        if let Some(call) = self.gemini {
            let status = self.forwarded.as_ref().and_then(|f| f.status).unwrap_or(0);
            return match self.gemini_answer(call, status, &b.body) {
                Ok(body) => {
                    if let Some(c) = &mut self.capture {
                        c.response_body(body.as_deref().unwrap_or(&b.body));
                    }
                    json_body(body)
                }
                Err(err) => self.refuse_response(err, ApiFamily::Gemini, b.end_of_stream),
            };
        }
        if self.embeddings.is_some() {
            // OpenAI embeddings answered by a provider of another dialect.
            let status = self.forwarded.as_ref().and_then(|f| f.status).unwrap_or(0);
            if let Some(body) = self.embeddings_answer(status, &b.body) {
                if b.end_of_stream && (200..300).contains(&status) {
                    self.cache_store(Some(&body)).await;
                }
                if let Some(c) = &mut self.capture {
                    c.response_body(&body);
                }
                return json_body(Some(body));
            }
        }
        let Some(fwd) = &mut self.forwarded else {
            return mutation::response_body(Default::default());
        };
        let status = fwd.status.unwrap_or(0);
        let ok = (200..300).contains(&status);
        if fwd.endpoint == Endpoint::Rerank {
            return match self.rerank_answer(status, &b.body) {
                Ok(body) => {
                    if let Some(c) = &mut self.capture {
                        c.response_body(body.as_deref().unwrap_or(&b.body));
                    }
                    json_body(body)
                }
                Err(err) => self.refuse_rerank_response(err, b.end_of_stream),
            };
        }
        if fwd.endpoint == Endpoint::CountTokens {
            return match self.count_answer(status, &b.body) {
                Ok(body) => json_body(body),
                Err(err) => self.refuse_response(err, ApiFamily::Anthropic, b.end_of_stream),
            };
        }
        let meta = ResponseMeta {
            created: unix_now(),
            id: &fwd.response_id,
            model: &fwd.upstream_model,
            error_type: fwd.error_type.as_deref(),
        };
        // Gemini and Vertex say how long to wait in the 429's body (`RetryInfo`), not a header.
        if status == 429 && fwd.pair.upstream == ApiFamily::Gemini {
            if let (Some(wait), Some(target)) =
                (respect::retry_info(&b.body), respect::TargetRef::of(fwd))
            {
                respect::cool_target(&self.metrics, target, wait);
            }
        }
        let done = fwd.pair.complete_with(status, &b.body, &meta);
        if ok {
            fwd.usage = done.usage;
        }
        let client = fwd.pair.client;
        // A legacy completion through the hub: judged as the chat answer, sent as a text one.
        let text_completion = ok && fwd.endpoint == Endpoint::Completions && fwd.pair.translates();
        let mut body = done.body;
        if ok && !fwd.stream {
            match self
                .judge_response(client, body.as_deref().unwrap_or(&b.body))
                .await
            {
                Ok(Some(redacted)) => body = Some(redacted),
                Ok(None) => {}
                Err(err) => return self.refuse_response(err, client, b.end_of_stream),
            }
        }
        if text_completion {
            body = body
                .as_deref()
                .and_then(crate::translator::completions::text_completion_of_chat)
                .or(body);
        }
        let body = self.responses_complete(ok, body, &b.body);
        if b.end_of_stream {
            self.cache_store(Some(body.as_deref().unwrap_or(&b.body)))
                .await;
        }
        if let Some(c) = &mut self.capture {
            c.response_body(body.as_deref().unwrap_or(&b.body));
        }
        json_body(body)
    }

    /// Judges a complete response in the client's dialect: the key's response webhooks, then
    /// its local rules, both reading the assistant text of one parse of the body. `Ok(Some)`:
    /// the redacted body to send instead; `Err`: the refusal that replaces the response.
    async fn judge_response(
        &mut self,
        client: ApiFamily,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(fwd) = &self.forwarded else {
            return Ok(None);
        };
        let (endpoint, model, engine) =
            (fwd.endpoint, fwd.model.clone(), fwd.response_guard.clone());
        let policy = self.policy().ok().flatten();
        let rules = policy
            .as_ref()
            .map_or_else(Vec::new, |p| p.webhooks(Side::Response, endpoint, &model));
        if rules.is_empty() && engine.is_none() {
            return Ok(None);
        }
        let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(body) else {
            tracing::debug!("A response body that is not JSON went through unjudged");
            return Ok(None);
        };
        if !rules.is_empty() {
            let text = webhook::response_text(&doc, client);
            if let Some(d) = self
                .call_webhooks(&rules, Side::Response, endpoint, &model, &text)
                .await
            {
                self.verdicts.add(Side::Response, &d.verdict, &self.metrics);
                if let Some(err) = d.error {
                    return Err(err);
                }
            }
        }
        let Some(engine) = engine else {
            return Ok(None);
        };
        let Some((verdict, redacted)) = guard::judge_response_value(&engine, client, &mut doc)
        else {
            tracing::debug!("A response body that is not a JSON object went through unjudged");
            return Ok(None);
        };
        self.verdicts.add(Side::Response, &verdict, &self.metrics);
        if let Some(rule) = verdict.blocked_by {
            return Err(ApiError::GuardrailBlocked {
                rule,
                side: Side::Response,
            });
        }
        Ok(redacted)
    }

    /// Replaces a complete response with `err` in the client's dialect.
    pub(super) fn refuse_response(
        &mut self,
        err: ApiError,
        client: ApiFamily,
        end: bool,
    ) -> ProcessingResponse {
        let dialect = crate::translator::dialect_of(client);
        if let Some(fwd) = &mut self.forwarded {
            fwd.status = Some(err.status());
        }
        let request_id = self.ctx.as_ref().map(|c| c.request_id.clone());
        if end {
            self.finish();
        }
        mutation::immediate_with(
            err.status(),
            err.body(dialect),
            "application/json",
            request_id.as_deref(),
            self.answer_headers.clone(),
        )
    }
}

/// The response-body answer: `body` (JSON) in place of the provider's, or the provider's as it
/// came when `None`.
fn json_body(body: Option<Vec<u8>>) -> ProcessingResponse {
    mutation::response_body(match body {
        Some(body) => mutation::common(
            vec![
                set("content-type", "application/json"),
                set("content-length", body.len().to_string()),
            ],
            vec![],
            Some(body),
            false,
        ),
        None => Default::default(),
    })
}

/// Notes the outcome of one attempt on its target: its time to first byte for
/// `least_latency` (a failed attempt — no answer, a 5xx or a 429 — counts as at least
/// `FAILED_ATTEMPT_LATENCY`, so traffic moves away), the consecutive-failure count that ejects
/// a target, and a 429's `Retry-After` cool-down. `from_upstream`: the provider answered (not
/// Envoy's own reply).
pub(super) fn note_response(
    target: respect::TargetRef<'_>,
    status: u16,
    from_upstream: bool,
    ttfb: Duration,
    retry_after_value: Option<&[u8]>,
    metrics: &Metrics,
) {
    let failed = respect::target_failed(from_upstream, status);
    target.stats.record_latency(if failed {
        ttfb.max(FAILED_ATTEMPT_LATENCY)
    } else {
        ttfb
    });
    respect::note_target_outcome(metrics, target, failed);
    // A provider's 429 with `Retry-After` takes the target out of rotation that long.
    if from_upstream && status == 429 {
        if let Some(wait) = retry_after_value.and_then(retry_after) {
            respect::cool_target(metrics, target, wait);
        }
    }
}

/// The longest `Retry-After` honoured: a provider asking for more is tried again after this.
const MAX_RETRY_AFTER: Duration = respect::MAX_PROVIDER_WAIT;

/// A `Retry-After` value in seconds (the form providers send; an HTTP date is not read),
/// capped at [`MAX_RETRY_AFTER`].
fn retry_after(value: &[u8]) -> Option<Duration> {
    let secs: f64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())))
}
