//! The response cache in the request's life ([`crate::cache`]): looked up at the request
//! body (after the key's model check and request guardrails, before a target is chosen or a
//! budget reserved), a hit answered here as an immediate response in the client's dialect; a
//! miss remembered so that the provider's complete successful answer is stored (a stream's
//! assembled on the side as it passes).

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use tollgate_core::budget as budgets;
use tollgate_core::metrics::CacheLabels;
use tollgate_core::pricing::Picodollars;
use tollgate_core::{Endpoint, Usage};
use tollgate_proto::logger::v1 as pb;

use super::{owner, unix_now, Processor};
use crate::cache::{self, replay, Directives, Entry, Family, Key, Store};
use crate::mutation::{self, set};
use crate::translator::openai;
use tollgate_core::config::CachePolicy;

/// The response header that says a cache answered (`exact` or `semantic`).
pub const CACHE_HEADER: &str = "x-tollgate-cache";

/// A request whose answer is to be stored.
#[derive(Debug)]
pub(super) struct Pending {
    key: Key,
    family: Family,
    ttl_secs: u64,
    max_entry_bytes: u64,
    /// The process's store (a reference: a clone would copy every metric handle, about 30
    /// shared reference counts touched per request).
    store: &'static Store,
    model: String,
    tenant: String,
    /// A stream's client bytes, assembled as they pass.
    assembler: Option<replay::Assembler>,
    /// The prompt's vector, for the semantic index once the answer is stored.
    semantic: Option<super::semantic::SemanticPending>,
}

/// A request the cache answered.
#[derive(Debug)]
pub(super) struct Hit {
    /// `exact` or `semantic`.
    pub(super) kind: &'static str,
    /// A semantic hit's cosine similarity (0 for an exact hit).
    pub(super) score: f32,
    pub(super) source_request_id: String,
    pub(super) model: String,
    pub(super) upstream_model: String,
    pub(super) usage: Option<Usage>,
    /// What the hit is billed: the policy's fraction of the answer's price.
    pub(super) cost: Picodollars,
    pub(super) stream: bool,
}

/// The directives of the request's `Cache-Control` (read at the request headers).
pub(super) fn directives(value: Option<&[u8]>) -> Directives {
    value.map(Directives::parse).unwrap_or_default()
}

impl Processor {
    /// Looks the request up when a cache policy applies to it: `Some` is the answer (a hit);
    /// `None` goes on to the provider (a miss remembers where to store the answer).
    pub(super) async fn cache_lookup(
        &mut self,
        endpoint: Endpoint,
        model: &str,
        parsed: &openai::ParsedRequest<'_>,
    ) -> Option<ProcessingResponse> {
        // A handle of its own (no copy): the policy borrowed from it outlives `&mut self`
        // calls below.
        let config = std::sync::Arc::clone(&self.config);
        let cfg = config.cache.as_ref()?;
        let family = match endpoint {
            // A Responses request reaches here as the chat body it means.
            Endpoint::ChatCompletions if self.responses.is_some() => Family::Responses,
            Endpoint::ChatCompletions => Family::OpenAi,
            Endpoint::Messages => Family::Anthropic,
            Endpoint::GenerateContent => Family::Gemini,
            _ => return None,
        };
        let ctx = self.ctx.as_ref()?;
        let policy = cfg.policy(&ctx.key_id, &ctx.tenant, model)?;
        if !policy.exact && policy.semantic.is_none() {
            return None;
        }
        let max_bytes = cfg.max_bytes;
        let max_entry_bytes = cfg.max_entry_bytes;
        tracing::debug!(
            no_store = self.cache_control.no_store,
            no_cache = self.cache_control.no_cache,
            "Response cache lookup"
        );
        if self.cache_control.no_store {
            self.count_lookup(model, "bypass");
            return None;
        }
        let scope = if ctx.tenant.is_empty() {
            format!("k:{}", ctx.key_id)
        } else {
            format!("t:{}", ctx.tenant)
        };
        let key = match self.responses_cache_key(&scope, &ctx.guardrails, model) {
            Some(key) => key,
            None => cache::key(
                &scope,
                &ctx.guardrails,
                endpoint.label(),
                model,
                parsed.object(),
            ),
        };
        let store = Store::shared(max_bytes, &self.metrics);
        let lookup = !self.cache_control.no_cache;
        if policy.exact {
            let hit = if lookup { store.get(&key).await } else { None };
            match hit.filter(|e| e.family == family) {
                Some(entry) => {
                    if let Some(resp) = self
                        .serve_hit(
                            &entry, "exact", 0.0, policy, endpoint, family, model, parsed,
                        )
                        .await
                    {
                        self.count_lookup(model, "hit");
                        return Some(resp);
                    }
                    self.count_lookup(model, "guardrail_refused");
                }
                None => {
                    let result = if lookup { "miss" } else { "bypass" };
                    self.count_lookup(model, result);
                }
            }
        }
        let mut semantic = None;
        // A Responses request is not looked up by meaning (its stored conversation is not in
        // the body the index embeds).
        if let Some(sem) = policy
            .semantic
            .as_ref()
            .filter(|_| family != Family::Responses)
        {
            let probe = self
                .semantic_probe(
                    sem,
                    endpoint,
                    model,
                    parsed,
                    &scope,
                    &policy.name,
                    family,
                    lookup,
                )
                .await;
            if let (Some(found), Some(pending)) = (probe.found, &probe.pending) {
                let entry = store.get(&found.key).await.filter(|e| e.family == family);
                match entry {
                    Some(entry) => {
                        if let Some(resp) = self
                            .serve_hit(
                                &entry,
                                "semantic",
                                found.score,
                                policy,
                                endpoint,
                                family,
                                model,
                                parsed,
                            )
                            .await
                        {
                            self.count_lookup(model, "semantic_hit");
                            return Some(resp);
                        }
                        self.count_lookup(model, "guardrail_refused");
                    }
                    None => {
                        // The answer expired or was evicted: its prompt goes too.
                        crate::cache::semantic::Indexes::shared()
                            .remove(&pending.index, &found.key);
                        self.count_lookup(model, "semantic_miss");
                    }
                }
            } else if probe.pending.is_some() && lookup {
                self.count_lookup(model, "semantic_miss");
            }
            semantic = probe.pending;
        }
        let ctx = self.ctx.as_ref()?;
        self.cache_pending = Some(Box::new(Pending {
            key,
            family,
            ttl_secs: policy.ttl.as_secs(),
            max_entry_bytes,
            store,
            model: model.to_owned(),
            tenant: ctx.tenant.clone(),
            assembler: parsed.stream.then(|| {
                replay::Assembler::new(
                    family,
                    usize::try_from(max_entry_bytes.saturating_mul(4)).unwrap_or(usize::MAX),
                )
            }),
            semantic,
        }));
        None
    }

    /// Counts a lookup in `tollgate_cache_lookups_total`.
    fn count_lookup(&self, model: &str, result: &'static str) {
        self.metrics
            .cache_lookups
            .get_or_create(&CacheLabels {
                model: model.to_owned(),
                tenant: self
                    .ctx
                    .as_ref()
                    .map(|c| c.tenant.clone())
                    .unwrap_or_default(),
                result,
            })
            .inc();
    }

    /// Serves a found entry, once the requester's response guardrails passed it: `None` when
    /// they refused it (the request goes on to the provider).
    #[allow(clippy::too_many_arguments)]
    async fn serve_hit(
        &mut self,
        entry: &Entry,
        kind: &'static str,
        score: f32,
        policy: &CachePolicy,
        endpoint: Endpoint,
        family: Family,
        model: &str,
        parsed: &openai::ParsedRequest<'_>,
    ) -> Option<ProcessingResponse> {
        let redacted = self
            .recheck_hit(endpoint, model, family, &entry.body)
            .await?;
        let cost = entry
            .usage
            .and_then(|u| Some(self.config.prices.get(&entry.upstream_model)?.cost(&u)))
            .map_or(0, |c| {
                c * Picodollars::from(policy.price_millionths) / 1_000_000
            });
        if let Some(ctx) = &self.ctx {
            tracing::debug!(request_id = %ctx.request_id, source = %entry.source_request_id, model, kind, score, "Response cache hit");
        }
        let body = redacted.as_deref().unwrap_or(&entry.body);
        // A Responses hit is written anew (its own ids and envelope); one that cannot be goes
        // on as a miss.
        let written = if family == Family::Responses {
            Some(self.responses_cache_answer(entry, parsed.stream)?)
        } else {
            None
        };
        let answer = self.cache_answer(
            entry, body, kind, score, family, model, parsed, cost, written,
        );
        if family == Family::Responses {
            // A Responses hit's fresh response object goes to the response store.
            self.responses_flush().await;
        }
        Some(answer)
    }

    /// The immediate response of a hit: the cached answer whole, or replayed as a stream, or
    /// `written` (a Responses hit, written with its own envelope).
    #[allow(clippy::too_many_arguments)]
    fn cache_answer(
        &mut self,
        entry: &Entry,
        answer: &[u8],
        kind: &'static str,
        score: f32,
        family: Family,
        model: &str,
        parsed: &openai::ParsedRequest<'_>,
        cost: Picodollars,
        written: Option<(Vec<u8>, &'static str)>,
    ) -> ProcessingResponse {
        let (body, content_type) = if let Some(written) = written {
            written
        } else if parsed.stream {
            let include_usage = parsed
                .object()
                .get("stream_options")
                .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
                .and_then(|v| v.get("include_usage")?.as_bool())
                .unwrap_or(false);
            match replay::stream_of(family, answer, include_usage, unix_now()) {
                Some(s) => (s, "text/event-stream"),
                None => (answer.to_vec(), "application/json"),
            }
        } else {
            (answer.to_vec(), "application/json")
        };
        self.charge_hit(cost);
        self.cache_hit = Some(Box::new(Hit {
            kind,
            score,
            source_request_id: entry.source_request_id.clone(),
            model: model.to_owned(),
            upstream_model: entry.upstream_model.clone(),
            usage: entry.usage,
            cost,
            stream: parsed.stream,
        }));
        self.first_byte_at = Some(std::time::SystemTime::now());
        let mut extra = self.answer_headers.clone();
        extra.push(set(CACHE_HEADER, kind));
        let request_id = self.ctx.as_ref().map(|c| c.request_id.clone());
        mutation::immediate_with(200, body, content_type, request_id.as_deref(), extra)
    }

    /// Charges a hit's cost (the policy's fraction of the answer's price) to the request's
    /// budget lines, as spend: a hit is never refused by a budget (nothing is reserved).
    pub(super) fn charge_hit(&self, cost: Picodollars) {
        let (Some(ledger), Some(ctx)) = (&self.ledger, &self.ctx) else {
            return;
        };
        if cost == 0 {
            return;
        }
        let lines = budgets::lines_with(
            &self.config.budgets.limits,
            &ctx.budgets,
            &owner(ctx, self.end_user.as_deref()),
            time::OffsetDateTime::now_utc(),
        );
        let mut keys: Vec<String> = lines.into_iter().map(|l| l.key).collect();
        keys.extend(crate::selfservice::usage_lines(
            &ctx.key_id,
            self.started_at.into(),
        ));
        keys.sort();
        keys.dedup();
        ledger.settle(keys, 0, cost);
    }

    /// Takes the client's bytes of one stream chunk (a stream whose answer is to be stored).
    pub(super) fn cache_stream_bytes(&mut self, bytes: &[u8]) {
        if let Some(a) = self
            .cache_pending
            .as_mut()
            .and_then(|p| p.assembler.as_mut())
        {
            a.push(bytes);
        }
    }

    /// Stores the answer of a request that missed, once its response is complete: `body`, a
    /// complete answer in the client's dialect, or (`None`) the stream assembled on the side.
    /// Only a 2xx answer that stopped normally and that no response guardrail blocked or
    /// output cap cut is stored.
    pub(super) async fn cache_store(&mut self, body: Option<&[u8]>) {
        let Some(pending) = self.cache_pending.take() else {
            return;
        };
        let Some(fwd) = &self.forwarded else { return };
        if !fwd.status.is_some_and(|s| (200..300).contains(&s)) {
            return;
        }
        let blocked = self.verdicts.list().iter().any(|v| v.action == "block");
        let cut = fwd
            .sse
            .as_ref()
            .and_then(|p| p.cap())
            .is_some_and(crate::streamcap::StreamCap::was_cut);
        let usage = fwd
            .usage
            .or_else(|| fwd.sse.as_ref().and_then(|p| p.usage()));
        let upstream_model = fwd.upstream_model.clone();
        if blocked || cut {
            return;
        }
        let Pending {
            key,
            family,
            ttl_secs,
            max_entry_bytes,
            store,
            model,
            tenant,
            assembler,
            semantic,
        } = *pending;
        let body = match (body, assembler) {
            (Some(b), _) => replay::decode_complete(family, b)
                .filter(replay::normal_stop)
                .map(|_| b.to_vec()),
            (None, Some(a)) => a.finish(usage, unix_now()),
            (None, None) => None,
        };
        let Some(body) = body else { return };
        let labels = |result| CacheLabels {
            model: model.clone(),
            tenant: tenant.clone(),
            result,
        };
        if body.len() as u64 > max_entry_bytes {
            self.metrics
                .cache_stores
                .get_or_create(&labels("too_large"))
                .inc();
            return;
        }
        let entry = Entry {
            body,
            family,
            usage,
            upstream_model,
            source_request_id: self
                .ctx
                .as_ref()
                .map(|c| c.request_id.clone())
                .unwrap_or_default(),
            ttl_secs,
        };
        let result = if store.put(key, entry).await {
            if let Some(s) = semantic {
                Self::semantic_insert(s, family, key, std::time::Duration::from_secs(ttl_secs));
            }
            "stored"
        } else {
            "error"
        };
        self.metrics
            .cache_stores
            .get_or_create(&labels(result))
            .inc();
    }

    /// The log event's cache members, for a request the cache answered.
    pub(super) fn cache_log(&self, event: &mut pb::LogEvent) {
        if let Some(hit) = &self.cache_hit {
            event.cache = hit.kind.to_owned();
            event.cache_source_request_id = hit.source_request_id.clone();
            event.cache_similarity = hit.score;
        }
    }
}
