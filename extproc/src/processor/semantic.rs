//! The semantic cache in the request's life ([`crate::cache::semantic`]): the prompt embedded
//! by the policy's embedding model — an HTTP call from this process straight to the
//! provider's OpenAI-API `…/embeddings` endpoint with the credential Tollgate already holds
//! for it (not through Envoy: the call is Tollgate's own, made while Envoy waits on this
//! request's body phase, and a second trip through the listener would run ext_authz and
//! ext_proc again for a request no client made) — bounded in time, priced at the embedding
//! model's price, charged to the requester's budget lines as spend and logged as its own
//! `embeddings` event whose `parent_request_id` names the request it served. Also the
//! re-check of any cache hit under the requester's response guardrails.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::sync::Semaphore;
use tollgate_core::config::{ApiFamily, Semantic, Side};
use tollgate_core::error::Dialect;
use tollgate_core::metrics::CacheLabels;
use tollgate_core::pricing::Picodollars;
use tollgate_core::{Endpoint, Usage, UsageSource};

use super::upstream_auth::{self, Signed};
use super::Processor;
use crate::cache::semantic::{self as index, Indexes};
use crate::cache::{Family, Key};
use crate::guard::{self, Verdicts};

use crate::translator::openai;
use crate::{log, webhook};

/// Embedding calls in flight at once in this process; past it a lookup is a miss
/// (`result="embed_error"`), never a wait.
const MAX_EMBEDS_IN_FLIGHT: usize = 256;

/// The largest embeddings answer read, in bytes.
const MAX_EMBED_BYTES: usize = 4 * 1024 * 1024;

/// Why an embedding call gave no vector (never an error to the client: a miss).
#[derive(Debug, thiserror::Error)]
pub(super) enum EmbedError {
    /// The call took longer than the policy's `timeout_ms`.
    #[error("the embedding call timed out")]
    Timeout,
    /// The provider answered with a status other than 2xx.
    #[error("the embedding provider answered {0}")]
    Status(u16),
    /// The connection failed.
    #[error("the embedding call failed: {0}")]
    Transport(String),
    /// The answer was not an embeddings list.
    #[error("the embedding answer could not be read")]
    Decode,
    /// The model or its credential is not there (a reload between lookup and call, a Vertex
    /// token not fetched yet).
    #[error("the embedding model cannot be called")]
    Unavailable,
    /// Too many embedding calls in flight.
    #[error("too many embedding calls in flight")]
    Busy,
}

impl EmbedError {
    /// The status and error class of the call's log event.
    fn status_and_class(&self) -> (u16, &'static str) {
        match self {
            EmbedError::Timeout => (504, "embed_timeout"),
            EmbedError::Status(s) => (*s, "embed_upstream_error"),
            EmbedError::Transport(_) => (502, "embed_unreachable"),
            EmbedError::Decode => (502, "embed_bad_answer"),
            EmbedError::Unavailable => (503, "embed_unavailable"),
            EmbedError::Busy => (503, "embed_busy"),
        }
    }
}

/// What the store side keeps of a lookup: the vector goes into the index with the answer.
#[derive(Debug)]
pub(super) struct SemanticPending {
    pub(super) index: String,
    pub(super) vector: Box<[f32]>,
    pub(super) params: [u8; 32],
    pub(super) max_entries: usize,
}

/// What a semantic probe found.
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// The vector to insert when the answer is stored.
    pub(super) pending: Option<SemanticPending>,
    /// The best stored prompt at or above the threshold.
    pub(super) found: Option<index::Found>,
}

struct Embedded {
    vector: Vec<f32>,
    usage: Usage,
}

fn http() -> Option<&'static reqwest::Client> {
    static CLIENT: LazyLock<Option<reqwest::Client>> = LazyLock::new(|| {
        reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| tracing::error!(error = %e, "Cannot build the embedding HTTP client: semantic lookups will miss"))
            .ok()
    });
    CLIENT.as_ref()
}

fn permits() -> &'static Arc<Semaphore> {
    static PERMITS: LazyLock<Arc<Semaphore>> =
        LazyLock::new(|| Arc::new(Semaphore::new(MAX_EMBEDS_IN_FLIGHT)));
    &PERMITS
}

/// The client family of an entry as an API family.
pub(super) fn api_family(f: Family) -> ApiFamily {
    match f {
        Family::OpenAi => ApiFamily::OpenAi,
        Family::Anthropic => ApiFamily::Anthropic,
        Family::Gemini => ApiFamily::Gemini,
        // Judged as the chat answer it holds ([`responses_as_chat`]).
        Family::Responses => ApiFamily::OpenAi,
    }
}

/// The text and function calls of a stored Responses object as the Chat Completions answer
/// that carries them, for the response guardrails to judge.
fn responses_as_chat(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for item in v.get("output")?.as_array()? {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = part.get("text").and_then(Value::as_str) {
                        text.push_str(t);
                    }
                }
            }
            Some("function_call") => calls.push(serde_json::json!({
                "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": item.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": item.get("arguments").cloned().unwrap_or(Value::Null),
                },
            })),
            _ => {}
        }
    }
    let mut message = serde_json::json!({ "role": "assistant", "content": text });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Some(serde_json::json!({
        "object": "chat.completion",
        "choices": [{ "index": 0, "message": message, "finish_reason": "stop" }],
    }))
}

impl Processor {
    /// Embeds the request's prompt and looks it up in the index of (`scope`, `policy`,
    /// `model`); `lookup: false` (`Cache-Control: no-cache`) only embeds, for the store.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn semantic_probe(
        &mut self,
        sem: &Semantic,
        endpoint: Endpoint,
        model: &str,
        parsed: &openai::ParsedRequest<'_>,
        scope: &str,
        policy: &str,
        family: Family,
        lookup: bool,
    ) -> Probe {
        let Some(text) = index::prompt_text(endpoint, parsed.object()) else {
            return Probe::default();
        };
        let tenant = self
            .ctx
            .as_ref()
            .map(|c| c.tenant.clone())
            .unwrap_or_default();
        let labels = |result| CacheLabels {
            model: model.to_owned(),
            tenant: tenant.clone(),
            result,
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        let called = self.embed(sem, &text).await;
        // Waiting on the embedding provider is time this request spent in Tollgate.
        self.overhead += clock.elapsed();
        self.log_embedding(sem, started, &called);
        let embedded = match called {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, model = %sem.model, "Semantic cache: the prompt was not embedded, treated as a miss");
                self.metrics
                    .cache_lookups
                    .get_or_create(&labels("embed_error"))
                    .inc();
                return Probe::default();
            }
        };
        let Some(vector) = index::normalise(embedded.vector) else {
            self.metrics
                .cache_lookups
                .get_or_create(&labels("embed_error"))
                .inc();
            return Probe::default();
        };
        let params = index::params_of(endpoint, parsed.object());
        // The embedding model names the index too: a reload that changes it never compares
        // vectors of two models.
        let name = index::index_name(scope, &format!("{policy}\u{0}{}", sem.model), model);
        let found = if lookup {
            Indexes::shared()
                .best(&name, &vector, &params, family, Instant::now())
                .filter(|f| f.score >= sem.threshold)
                // Rounding may put an equal prompt a hair above 1.
                .map(|f| index::Found {
                    score: f.score.min(1.0),
                    ..f
                })
        } else {
            None
        };
        Probe {
            pending: Some(SemanticPending {
                index: name,
                vector,
                params,
                max_entries: sem.max_entries,
            }),
            found,
        }
    }

    /// Calls the embedding model's provider (one target, by weight) for `text`, bounded by
    /// the policy's timeout.
    async fn embed(&self, sem: &Semantic, text: &str) -> Result<Embedded, EmbedError> {
        let _permit = permits()
            .clone()
            .try_acquire_owned()
            .map_err(|_| EmbedError::Busy)?;
        let m = self
            .config
            .models
            .get(&sem.model)
            .ok_or(EmbedError::Unavailable)?;
        let target = super::route::pick(m).ok_or(EmbedError::Unavailable)?;
        let provider = &target.provider;
        let path = target.path(Endpoint::Embeddings);
        let body = serde_json::json!({
            "model": target.upstream_model,
            "input": text,
            "encoding_format": "float",
        })
        .to_string()
        .into_bytes();
        let mut headers = Vec::new();
        upstream_auth::credentials(
            provider,
            &Signed {
                authority: &provider.authority,
                path,
                body: &body,
                stream: false,
            },
            &mut headers,
        )
        .map_err(|_| EmbedError::Unavailable)?;
        let scheme = match provider.scheme {
            tollgate_core::config::Scheme::Http => "http",
            tollgate_core::config::Scheme::Https => "https",
        };
        let client = http().ok_or(EmbedError::Unavailable)?;
        let mut req = client
            .post(format!("{scheme}://{}{path}", provider.authority))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in &provider.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        for h in headers {
            if let Some(h) = h.header {
                req = req.header(h.key, h.raw_value);
            }
        }
        let call = async {
            let resp = req
                .send()
                .await
                .map_err(|e| EmbedError::Transport(e.without_url().to_string()))?;
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                return Err(EmbedError::Status(status));
            }
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_EMBED_BYTES as u64)
            {
                return Err(EmbedError::Decode);
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| EmbedError::Transport(e.without_url().to_string()))?;
            if bytes.len() > MAX_EMBED_BYTES {
                return Err(EmbedError::Decode);
            }
            decode(&bytes).ok_or(EmbedError::Decode)
        };
        tokio::time::timeout(sem.timeout, call)
            .await
            .map_err(|_| EmbedError::Timeout)?
    }

    /// Prices the embedding call, charges it to the requester's budget lines and hands its
    /// log event (its own request id, `parent_request_id` the request it served) to the log
    /// queue.
    fn log_embedding(
        &self,
        sem: &Semantic,
        started: SystemTime,
        called: &Result<Embedded, EmbedError>,
    ) {
        let target = self
            .config
            .models
            .get(&sem.model)
            .and_then(|m| m.targets.first());
        let upstream_model = target.map_or("", |t| t.upstream_model.as_str());
        let usage = called.as_ref().ok().map(|e| e.usage);
        let cost: Option<Picodollars> = usage
            .as_ref()
            .and_then(|u| Some(self.config.prices.get(upstream_model)?.cost(u)));
        if let Some(c) = cost {
            self.charge_hit(c);
        }
        let (Some(handle), Some(ctx)) = (&self.log, &self.ctx) else {
            return;
        };
        let (status, class) = match called {
            Ok(_) => (200, ""),
            Err(e) => e.status_and_class(),
        };
        let id = format!("{}-embed", ctx.request_id);
        let empty = Verdicts::default();
        let facts = log::Facts {
            request_id: &id,
            key_id: &ctx.key_id,
            tenant: &ctx.tenant,
            team: &ctx.team,
            end_user: self.end_user.as_deref().unwrap_or(""),
            dialect: Dialect::OpenAi,
            endpoint: Endpoint::Embeddings.label(),
            requested_model: &sem.model,
            provider: target.map_or("", |t| t.provider.name.as_str()),
            upstream_model,
            stream: false,
            status,
            error_class: class,
            usage,
            started,
            first_byte: None,
            ended: SystemTime::now(),
            overhead: Duration::ZERO,
            upstream_latency: SystemTime::now().duration_since(started).ok(),
            cost,
            guardrails: &empty,
            payload: None,
        };
        let mut event = log::event(&facts);
        event.parent_request_id = ctx.request_id.clone();
        handle.emit(event);
    }

    /// Re-checks a cached answer under the requester's response guardrails (webhooks, then
    /// local rules): `None` when one blocks (or a webhook refuses): the hit is not served;
    /// `Some(None)` to serve it as it is; `Some(Some(body))` to serve it redacted.
    pub(super) async fn recheck_hit(
        &mut self,
        endpoint: Endpoint,
        model: &str,
        family: Family,
        body: &[u8],
    ) -> Option<Option<Vec<u8>>> {
        let policy = self.policy().ok()?;
        let Some(policy) = policy else {
            return Some(None);
        };
        let engine = policy.engine(Side::Response, endpoint, model).cloned();
        let rules = policy.webhooks(Side::Response, endpoint, model);
        if engine.is_none() && rules.is_empty() {
            return Some(None);
        }
        let client = api_family(family);
        let mut doc = if family == Family::Responses {
            responses_as_chat(body)?
        } else {
            serde_json::from_slice::<Value>(body).ok()?
        };
        // Recorded only when the hit is served: a refused hit leaves no verdict behind (the
        // provider's answer is judged on its own).
        let mut seen: Vec<tollgate_guardrails::Verdict> = Vec::new();
        if !rules.is_empty() {
            let text = webhook::response_text(&doc, client);
            if let Some(d) = self
                .call_webhooks(&rules, Side::Response, endpoint, model, &text)
                .await
            {
                if d.error.is_some() || d.verdict.blocked_by.is_some() {
                    return None;
                }
                seen.push(d.verdict);
            }
        }
        let mut redacted = None;
        if let Some(engine) = engine {
            let (verdict, body) = guard::judge_response_value(&engine, client, &mut doc)?;
            if verdict.blocked_by.is_some() {
                return None;
            }
            seen.push(verdict);
            redacted = body;
        }
        // A Responses hit is not served redacted (its answer is written from the stored
        // object): the provider answers, and the request's own guardrails redact that.
        if family == Family::Responses && redacted.is_some() {
            return None;
        }
        for v in &seen {
            self.verdicts.add(Side::Response, v, &self.metrics);
        }
        Some(redacted)
    }

    /// Puts a stored answer's prompt into its index.
    pub(super) fn semantic_insert(
        pending: SemanticPending,
        family: Family,
        key: Key,
        ttl: Duration,
    ) {
        Indexes::shared().insert(
            &pending.index,
            pending.vector,
            pending.params,
            family,
            key,
            ttl,
            pending.max_entries,
        );
    }
}

/// The first vector and the usage of an OpenAI embeddings answer.
fn decode(bytes: &[u8]) -> Option<Embedded> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let vector = v
        .get("data")?
        .get(0)?
        .get("embedding")?
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect::<Option<Vec<f32>>>()?;
    let input = v
        .get("usage")
        .and_then(|u| u.get("prompt_tokens"))
        .and_then(Value::as_u64);
    let usage = Usage {
        input_tokens: input.unwrap_or(0),
        source: if input.is_some() {
            UsageSource::Provider
        } else {
            UsageSource::Estimated
        },
        ..Usage::default()
    };
    Some(Embedded { vector, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embeddings_answer_is_decoded() {
        let e = decode(br#"{"object":"list","data":[{"embedding":[0.5,-1.0]}],"usage":{"prompt_tokens":7,"total_tokens":7}}"#).unwrap();
        assert_eq!(e.vector, vec![0.5, -1.0]);
        assert_eq!(e.usage.input_tokens, 7);
        assert!(decode(br#"{"data":[{"embedding":"AAAA"}]}"#).is_none());
    }
}
