//! The request body: parsed once, checked against the key (model allow-list), judged by the
//! key's guardrails (local rules and webhooks, over one text walker), captured, priced and
//! reserved, then rewritten for the target the model's routing picks, with the provider's
//! path, authority, credential and routing header.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use rand::Rng;
use tollgate_core::config::failover::{Chain, Failover};
use tollgate_core::config::{
    ApiFamily, Excluded, InFlight, Model, Pick, Policy, Provider, ProviderKind, Side, Strategy,
    Target, ANTHROPIC_VERSION,
};
use tollgate_core::metadata as md;
use tollgate_core::pricing::Picodollars;
use tollgate_core::{ApiError, Config, Endpoint};

use super::offload;
use super::upstream_auth::{self, Signed};
use super::{strip_query, unix_now, AuthContext, Forwarded, Processor};
use crate::attempts;
use crate::capture::Capture;
use crate::guard;
use crate::mutation::{self, set};
use crate::shape;
use crate::stream::Pipeline;
use crate::translator::{openai, Pair};
use crate::{budget, webhook};

/// A refusal, with the model it was about when one was named.
type Refusal = (ApiError, Option<String>);

/// A request rewritten for one target ([`Processor::apply_target`]).
pub(super) struct Applied {
    /// Headers to set (path, authority, length, credential, provider and version headers).
    pub(super) headers: Vec<HeaderValueOption>,
    /// Headers to remove.
    pub(super) remove: Vec<String>,
    /// The body, and how the response is read.
    pub(super) up: Upstream,
}

/// The body for the provider, and how its response must be read back.
pub(super) struct Upstream {
    pub(super) body: Vec<u8>,
    /// Whether the provider will send a usage chunk the client did not ask for.
    pub(super) strip_usage_chunk: bool,
    /// Whether the translated stream must carry usage to the client.
    pub(super) include_usage: bool,
}

impl Processor {
    pub(super) async fn on_request_body(&mut self, b: HttpBody) -> ProcessingResponse {
        if self.passthrough.is_some() {
            return self.passthrough_body(b).await;
        }
        // A large body's parse, guardrails and translation leave the async workers that every
        // other request (and the ext_authz service) needs.
        let routed = if b.body.len() as u64 >= self.config.body_limits.blocking_bytes {
            offload::blocking(self.route(&b)).await
        } else {
            self.route(&b).await
        };
        match routed {
            Ok(resp) => resp,
            Err((err, model)) => self.reject(&err, model.as_deref()),
        }
    }

    async fn route(&mut self, b: &HttpBody) -> Result<ProcessingResponse, Refusal> {
        let Some(ctx) = &self.ctx else {
            tracing::error!("No ext_authz metadata on the request: is ext_authz before ext_proc, and its namespace forwarded?");
            return Err((ApiError::Internal, None));
        };
        if !b.end_of_stream {
            tracing::error!("Request body arrived in parts: request_body_mode must be BUFFERED");
            return Err((ApiError::Internal, None));
        }
        let endpoint = self
            .endpoint(&ctx.method, &ctx.path)
            .map_err(|e| (e, None))?;
        // Images, audio and moderations: their own path (a multipart body is no JSON).
        if let Endpoint::Media(api) = endpoint {
            return self.route_media(api, b).await;
        }
        // One linear pass bounds the body's shape before anything parses it.
        shape::check(&b.body, &self.config.body_limits).map_err(|e| (e.api_error(), None))?;
        // A Responses request goes on as the Chat Completions body it means.
        let chat_of_responses;
        let (endpoint, b) = if endpoint == Endpoint::Responses {
            chat_of_responses = self.responses_prepare(b).await.map_err(|e| (e, None))?;
            (Endpoint::ChatCompletions, &chat_of_responses)
        } else {
            (endpoint, b)
        };
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        match endpoint {
            Endpoint::Models => return Ok(self.list_models()),
            Endpoint::Feedback => return self.record_feedback(&b.body).map_err(|e| (e, None)),
            Endpoint::CountTokens
                if tollgate_core::config::gemini_method(strip_query(&ctx.path)).is_some() =>
            {
                return self.route_gemini_method(b).await
            }
            Endpoint::CountTokens => return self.route_count_tokens(b),
            Endpoint::EmbedContent => return self.route_gemini_method(b).await,
            Endpoint::Rerank => return self.route_rerank(b).await,
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Messages
            | Endpoint::GenerateContent => {}
            Endpoint::Responses | Endpoint::Media(_) | Endpoint::Passthrough => {
                return Err((ApiError::Internal, None))
            }
        }
        let path = strip_query(&ctx.path).to_owned();
        // The one parse of the body: every step below reads its members.
        let parsed = openai::parse_request_at(endpoint, &path, &b.body).map_err(|e| (e, None))?;
        let model = parsed.model.clone();
        // A handle of its own: the target borrowed from it outlives `&mut self` calls below.
        let config = Arc::clone(&self.config);
        let m = allowed_model(&config, ctx, &model)?;
        let refusal = |e: ApiError| (e, Some(model.clone()));
        let policy = self.policy().map_err(refusal)?;
        let redacted = self
            .judge_request(policy.as_deref(), endpoint, &model, &parsed, &b.body)
            .await
            .map_err(refusal)?;
        // Redaction rewrote members: the redacted body is what goes on (parsed anew, only then).
        let parsed = match &redacted {
            Some(body) => openai::parse_request_at(endpoint, &path, body).map_err(refusal)?,
            None => parsed,
        };
        // The response cache: a hit is answered here, before a target or a budget is taken.
        if let Some(hit) = self.cache_lookup(endpoint, &model, &parsed).await {
            return Ok(hit);
        }
        let (index, target, slot) = self.choose_target(m, endpoint, &parsed).map_err(refusal)?;
        let provider = &target.provider;
        super::rerank::refuse_rerank_only(endpoint, provider.kind, &model).map_err(refusal)?;
        let (pair, upstream_endpoint) =
            Pair::route(endpoint, target.family).map_err(|e| refusal(e.api_error()))?;
        if self.end_user.is_none() {
            self.end_user = budget::end_user_in_body(parsed.object());
        }
        let budget_lines = self.budget_lines();
        // A Responses request (rewritten here into the body it means) goes to its first target
        // only: the per-attempt path reads the client's own body.
        let chain = m.failover_chain(index).filter(|_| self.responses.is_none());
        // Failover: the first attempt is prepared here, for the chain's first target, exactly
        // as a request routed to one target (the upstream ext_proc skips attempt 1). Later
        // attempts translate the client's own body for their target: it is kept in-process
        // under Envoy's request id; when it cannot be kept, the request goes to its first
        // target alone.
        let chain = chain.filter(|_| {
            self.keep_pending(
                &m.name,
                index,
                budget_lines,
                redacted.as_deref().unwrap_or(&b.body),
            )
        });
        let native = self
            .responses_native(target, redacted.is_some(), policy.as_deref(), &model)
            .map_err(refusal)?;
        let applied = self
            .apply_target(
                endpoint,
                target,
                pair,
                upstream_endpoint,
                &parsed,
                b.body.len(),
                budget_lines,
                native,
            )
            .await
            .map_err(refusal)?;
        self.embeddings_prepare(endpoint, target, &parsed);
        let mut headers = applied.headers;
        match (&chain, &m.failover) {
            (Some(chain), Some(f)) => headers.extend(failover_headers(f, chain, parsed.stream)),
            _ => headers.push(set(md::ROUTE_HEADER, provider.cluster.as_str())),
        }
        let body = Some(applied.up.body.clone());
        let (remove, up) = (applied.remove, applied.up);
        if let Some(span) = &mut self.span {
            // The provider's side of the call (a traced self-hosted server) joins this span.
            headers.push(set(
                "traceparent",
                span.attempt(provider, &target.upstream_model),
            ));
        }
        // Last: nothing after the reservation can fail, so a refusal here is the only way out.
        self.reservation = self
            .reserve(endpoint, provider, &target.upstream_model, &parsed)
            .await
            .map_err(refusal)?;
        let response_guard = policy
            .as_ref()
            .and_then(|p| p.engine(Side::Response, endpoint, &model))
            .filter(|_| endpoint != Endpoint::Embeddings)
            .cloned();
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        tracing::debug!(request_id = %ctx.request_id, key_id = %ctx.key_id, model = %model, provider = %provider.name, strategy = m.strategy().label(), "Routing request");
        // Bedrock names neither its responses nor the model: Tollgate's request id does.
        let response_id = match (pair.upstream, pair.client) {
            (ApiFamily::Bedrock, ApiFamily::Anthropic) => format!("msg_{}", ctx.request_id),
            (ApiFamily::Bedrock, _) => format!("chatcmpl-{}", ctx.request_id),
            _ => String::new(),
        };
        let client_usage = if pair.is_openai_passthrough() {
            !up.strip_usage_chunk
        } else {
            up.include_usage
        };
        let cap = parsed
            .stream
            .then(|| {
                self.stream_cap(
                    pair.client,
                    endpoint,
                    provider,
                    &target.upstream_model,
                    &parsed,
                    client_usage,
                )
            })
            .flatten()
            .map(|c| match self.responses {
                // A Responses stream ends with `response.incomplete` at the cap.
                Some(_) => c.for_responses(),
                None => c,
            });
        let sse = parsed.stream.then(|| {
            let engine = response_guard.as_ref().map(Arc::clone);
            Box::new(
                Pipeline::new(pair, up.include_usage, unix_now(), engine)
                    .strip_usage_chunk(up.strip_usage_chunk)
                    .with_identity(&response_id, &target.upstream_model)
                    .with_cap(cap)
                    .with_text_completions(
                        endpoint == Endpoint::Completions,
                        up.include_usage,
                        unix_now(),
                    ),
            )
        });
        let sse = match (
            self.responses_pipeline(
                pair,
                response_guard.as_ref(),
                &response_id,
                &target.upstream_model,
            ),
            sse,
        ) {
            (Some(p), Some(mut sse)) if parsed.stream => {
                Some(Box::new((*p).with_cap(sse.take_cap())))
            }
            (_, sse) => sse,
        };
        self.forwarded = Some(Forwarded {
            stream: parsed.stream,
            sse,
            response_guard,
            response_id,
            slot: Some(slot),
            ..Forwarded::new(
                endpoint,
                model,
                Arc::clone(provider),
                target.upstream_model.clone(),
                pair,
            )
        });
        if let (Some(fwd), Some(chain)) = (&mut self.forwarded, chain) {
            fwd.failover = Some(super::FailoverState {
                model: m.name.clone(),
                chain: chain.targets,
                attempts: 0,
                answered: None,
            });
        }
        Ok(mutation::request_body(mutation::common(
            headers, remove, body, true,
        )))
    }

    /// Rewrites a request in the client's dialect for `target`: the body (translated, or
    /// the model id rewritten), `:path`, `:authority`, `content-length`, the provider's
    /// credential (signed over the new body) and headers, and the API-version headers. One
    /// function for both paths: a request routed to one target, and each failover attempt in
    /// the upstream ext_proc. `native`: the body and path of a Responses request that goes
    /// to OpenAI or Azure as itself.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_target(
        &self,
        endpoint: Endpoint,
        target: &Target,
        pair: Pair,
        upstream_endpoint: Endpoint,
        parsed: &openai::ParsedRequest<'_>,
        size: usize,
        budget_lines: bool,
        native: Option<(Vec<u8>, String)>,
    ) -> Result<Applied, ApiError> {
        let provider = &target.provider;
        // OpenAI embeddings to Gemini, Vertex AI or Bedrock: their own API and path.
        let hub_embeddings = super::embeddings::hub_request(endpoint, target, parsed.object())?;
        let native = native.or(hub_embeddings);
        let mut up = match &native {
            Some(_) if endpoint == Endpoint::Embeddings => Upstream {
                body: Vec::new(),
                strip_usage_chunk: false,
                include_usage: false,
            },
            _ => self.upstream_body(endpoint, target, pair, parsed, size, budget_lines)?,
        };
        // A Responses request to OpenAI or Azure goes on as itself (`responses_native`).
        let native_path = native.map(|(body, path)| {
            up.body = body;
            up.strip_usage_chunk = false;
            path
        });
        let upstream_path = native_path
            .as_deref()
            .unwrap_or_else(|| target.path_for(upstream_endpoint, parsed.stream));
        let mut headers = Vec::with_capacity(8 + provider.headers.len());
        headers.push(set(":path", upstream_path));
        headers.push(set(":authority", provider.authority.as_str()));
        headers.push(set("content-length", up.body.len().to_string()));
        let signed = Signed {
            authority: &provider.authority,
            path: upstream_path,
            body: &up.body,
            stream: parsed.stream,
        };
        // Only a provider's very first request may wait (bounded) for fetched credentials.
        crate::aws::first_credentials(provider).await;
        upstream_auth::credentials(provider, &signed, &mut headers)?;
        for (k, v) in &provider.headers {
            headers.push(set(k, v.as_str()));
        }
        let remove = self.version_headers(
            pair.upstream == ApiFamily::Anthropic,
            provider,
            &mut headers,
        );
        Ok(Applied {
            headers,
            remove,
            up,
        })
    }

    /// Keeps what a failover request's later attempts need (the client's body, the chain)
    /// under Envoy's request id; `false` when it cannot be kept (no id, or the store's byte
    /// bound): the request then goes to its first target alone.
    fn keep_pending(&mut self, model: &str, first: usize, budget_lines: bool, body: &[u8]) -> bool {
        let (Some(envoy_id), Some(ctx)) = (&self.envoy_request_id, &self.ctx) else {
            tracing::warn!(
                model,
                "No x-request-id on a failover request: it goes to its first target alone"
            );
            return false;
        };
        let kept = attempts::pending().put(
            envoy_id,
            attempts::Pending {
                request_id: ctx.request_id.clone(),
                model: model.to_owned(),
                first,
                budget_lines,
                method: ctx.method.clone(),
                path: ctx.path.clone(),
                body: body.to_vec(),
                sent_at: Instant::now(),
            },
        );
        if !kept {
            tracing::warn!(model, bytes = body.len(), "A failover request could not be kept for later attempts (store full, or its x-request-id in use): it goes to its first target alone");
        }
        self.pending_failover = kept;
        kept
    }

    /// The model's target for this request by its strategy, with the in-flight slot it
    /// takes; a 503 when every target is at its `max_requests_in_flight`. (A failover would
    /// ask `Model::choose` again with the targets it tried in the `Excluded` set.)
    fn choose_target<'m>(
        &self,
        m: &'m Model,
        endpoint: Endpoint,
        parsed: &openai::ParsedRequest<'_>,
    ) -> Result<(usize, &'m Target, InFlight), ApiError> {
        // Tokens for `least_cost`: the prompt (counted once, with the first target's
        // tokenizer) and the output the request asks for at most.
        let tokens = match (m.strategy(), m.targets.first()) {
            (Strategy::LeastCost, Some(first)) => {
                let est = self.estimate(endpoint, &first.provider, &first.upstream_model, parsed);
                Some((est.prompt_tokens, est.max_output_tokens))
            }
            _ => None,
        };
        let prices = &self.config.prices;
        let cost = |t: &Target| -> Option<Picodollars> {
            let (prompt, output) = tokens?;
            prices
                .get(&t.upstream_model)
                .map(|p| budget::estimate(p, prompt, output))
        };
        let mut rng = rand::rng();
        let mut random = |n: u64| if n == 0 { 0 } else { rng.random_range(0..n) };
        match m.choose(Excluded::NONE, &cost, &mut random) {
            Pick::Chosen {
                index,
                target,
                slot,
            } => Ok((index, target, slot)),
            Pick::Busy => {
                tracing::warn!(model = %m.name, "Every target of the model is at its max_requests_in_flight: refusing with 503");
                Err(ApiError::TargetsBusy(m.name.clone()))
            }
            Pick::Exhausted => Err(ApiError::Internal),
        }
    }

    /// Judges the request under the key's policy: its local rules (which may redact: the body
    /// to send instead is returned), then, unless they blocked, its webhooks, all reading the
    /// user text through the one walker. Captures the body the provider will see.
    pub(super) async fn judge_request(
        &mut self,
        policy: Option<&Policy>,
        endpoint: Endpoint,
        model: &str,
        parsed: &openai::ParsedRequest<'_>,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let redacted = match policy.and_then(|p| p.engine(Side::Request, endpoint, model)) {
            Some(engine) => guard::judge_request(
                engine,
                endpoint,
                parsed.object(),
                &mut self.verdicts,
                &self.metrics,
            )?,
            None => None,
        };
        if let (Some(max), Some(ctx)) = (
            self.config.logging.as_ref().map(|l| l.capture_max_bytes),
            &self.ctx,
        ) {
            self.capture = Capture::new(ctx.capture, max).map(|mut c| {
                c.request(
                    &self.request_content_type,
                    redacted.as_deref().unwrap_or(body),
                );
                c
            });
        }
        let rules = policy.map_or_else(Vec::new, |p| p.webhooks(Side::Request, endpoint, model));
        if !rules.is_empty() {
            let text = webhook::request_text(endpoint, parsed.object());
            if let Some(d) = self
                .call_webhooks(&rules, Side::Request, endpoint, model, &text)
                .await
            {
                self.verdicts.add(Side::Request, &d.verdict, &self.metrics);
                if let Some(e) = d.error {
                    return Err(e);
                }
            }
        }
        Ok(redacted)
    }

    /// Calls the webhook `rules` of one side about `text`: `None` when there is nothing to
    /// judge. The calls run concurrently on this stream's task: a slow webhook holds only
    /// this request.
    pub(super) async fn call_webhooks(
        &mut self,
        rules: &[&tollgate_core::config::WebhookRule],
        side: Side,
        endpoint: Endpoint,
        model: &str,
        text: &str,
    ) -> Option<webhook::Decision> {
        let ctx = self.ctx.as_ref()?;
        if rules.is_empty() || text.is_empty() {
            return None;
        }
        let call = webhook::Call {
            side: side.label(),
            text,
            request_id: &ctx.request_id,
            key_id: &ctx.key_id,
            tenant: &ctx.tenant,
            model,
            endpoint: endpoint.label(),
        };
        let started = Instant::now();
        let outcomes = webhook::Webhooks::shared().judge(rules, &call).await;
        // Time spent waiting on webhooks is gateway overhead too.
        self.overhead += started.elapsed();
        Some(webhook::decide(outcomes, side))
    }

    /// The body for `target`: translated for another dialect, or, for OpenAI-family
    /// passthrough, the model rewritten (and a budgeted request that sets no output limit
    /// given the one it is reserved for, so the provider never generates, and bills, past it).
    fn upstream_body(
        &self,
        endpoint: Endpoint,
        target: &Target,
        pair: Pair,
        parsed: &openai::ParsedRequest<'_>,
        size: usize,
        budget_lines: bool,
    ) -> Result<Upstream, ApiError> {
        let provider = &target.provider;
        let mut up = if pair.is_openai_passthrough() {
            let limit = self.config.budgets.default_max_tokens.to_string();
            let field = match (endpoint, provider.kind) {
                (Endpoint::ChatCompletions, ProviderKind::Openai | ProviderKind::AzureOpenai) => {
                    "max_completion_tokens"
                }
                _ => "max_tokens",
            };
            let mut extra: Vec<(&str, &str)> = if budget_lines
                && self.config.prices.get(&target.upstream_model).is_some()
                && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
                && !budget::has_own_limit(parsed.object())
            {
                vec![(field, limit.as_str())]
            } else {
                Vec::new()
            };
            // Tool-call ids that carry a Gemini signature go to this provider plain.
            let messages = (endpoint == Endpoint::ChatCompletions)
                .then(|| crate::translator::call_id::strip_raw_messages(parsed.object()))
                .flatten();
            // Anthropic-style `thinking_blocks` (a Responses conversation's) go no further.
            let messages = match (&messages, parsed.object().get("messages")) {
                (Some(m), _) => {
                    crate::translator::thinking_blocks::strip_raw_messages(m).or(messages)
                }
                (None, Some(raw)) if endpoint == Endpoint::ChatCompletions => {
                    crate::translator::thinking_blocks::strip_raw_messages(raw.get())
                }
                (None, _) => None,
            };
            if let Some(m) = &messages {
                extra.push(("messages", m));
            }
            let r = parsed.rewrite_with(&target.upstream_model, size, &extra)?;
            Upstream {
                body: r.body,
                strip_usage_chunk: r.strip_usage_chunk,
                include_usage: false,
            }
        } else {
            let (body, include_usage) = if endpoint == Endpoint::Completions {
                // Legacy completions: one user turn through the hub (`translator/completions`).
                crate::translator::completions::request_from_wire(
                    parsed.object(),
                    &target.upstream_model,
                    parsed.stream,
                )
                .and_then(|req| pair.encode_request(req))
            } else {
                pair.request(parsed.object(), &target.upstream_model, parsed.stream, size)
            }
            .map_err(|e| e.api_error())?;
            Upstream {
                body,
                strip_usage_chunk: false,
                include_usage,
            }
        };
        if provider.vertex.is_some() && pair.upstream == ApiFamily::Anthropic {
            up.body = crate::translator::codec::anthropic::for_vertex(&up.body);
        }
        Ok(up)
    }

    /// The API-version headers: Anthropic's `anthropic-version` when the client sent none,
    /// Anthropic's headers removed on the way to a provider of another dialect (from any
    /// client). Returns the headers to
    /// remove: with these, the client's `accept-encoding` (the response is read, so it must
    /// come back uncompressed; Envoy can still compress towards the client) and the
    /// end-user header.
    pub(super) fn version_headers(
        &self,
        anthropic_dialect: bool,
        provider: &Provider,
        headers: &mut Vec<HeaderValueOption>,
    ) -> Vec<String> {
        let mut remove = vec![
            "accept-encoding".to_owned(),
            self.config.budgets.end_user_header.clone(),
        ];
        if !anthropic_dialect {
            // Whatever the client speaks: the client-header allow-list (README, "Hostile input
            // at the edge") lets these through for Anthropic-dialect providers only.
            remove.extend(["anthropic-version".to_owned(), "anthropic-beta".to_owned()]);
        } else if !self.client_anthropic_version
            && !provider
                .headers
                .iter()
                .any(|(k, _)| k == "anthropic-version")
        {
            headers.push(set("anthropic-version", ANTHROPIC_VERSION));
        }
        remove
    }

    /// The policy of the request's key, from this config snapshot.
    pub(super) fn policy(&self) -> Result<Option<Arc<Policy>>, ApiError> {
        let Some(ctx) = &self.ctx else {
            return Ok(None);
        };
        if ctx.guardrails.is_empty() {
            return Ok(None);
        }
        match self.config.guardrails.policies.get(&ctx.guardrails) {
            Some(p) => Ok(Some(Arc::clone(p))),
            None => {
                // Fail closed: the key has a policy this snapshot does not know (a reload
                // between ext_authz and ext_proc).
                tracing::error!(request_id = %ctx.request_id, key_id = %ctx.key_id, policy = %ctx.guardrails, "The key's guardrails policy is not in this config: refusing the request");
                Err(ApiError::GuardrailPolicyUnavailable(ctx.guardrails.clone()))
            }
        }
    }
}

/// A target by weight alone, for `count_tokens` forwarded to a provider's counting API: not a
/// generation, so it neither takes an in-flight slot nor feeds `least_latency`.
pub(super) fn pick(m: &Model) -> Option<&Target> {
    if m.targets.len() == 1 {
        m.targets.first()
    } else {
        m.pick(rand::rng().random_range(0..m.total_weight()))
    }
}

/// The model `model` names, if the config has it and the key may use it.
pub(super) fn allowed_model<'c>(
    config: &'c Config,
    ctx: &AuthContext,
    model: &str,
) -> Result<&'c Model, Refusal> {
    let Some(m) = config.models.get(model) else {
        return Err((
            ApiError::UnknownModel(model.to_owned()),
            Some(model.to_owned()),
        ));
    };
    if !ctx.allows(model) {
        return Err((
            ApiError::ModelNotAllowed(model.to_owned()),
            Some(model.to_owned()),
        ));
    }
    Ok(m)
}

/// The headers that send a request down its failover chain: the chain's composite cluster
/// and Envoy's retry settings for it (honoured because Tollgate, not the client, sets them:
/// Envoy strips a client's `x-envoy-*`).
fn failover_headers(f: &Failover, chain: &Chain, stream: bool) -> Vec<HeaderValueOption> {
    let mut headers = Vec::with_capacity(7);
    headers.push(set(md::ROUTE_HEADER, chain.cluster_name()));
    headers.push(set(
        "x-envoy-max-retries",
        chain.targets.len().saturating_sub(1).to_string(),
    ));
    headers.push(set("x-envoy-retry-on", f.retry_on()));
    if f.on_429() {
        headers.push(set("x-envoy-retriable-status-codes", "429"));
    }
    if let Some(ms) = f.per_try_timeout_ms {
        headers.push(set(
            "x-envoy-upstream-rq-per-try-timeout-ms",
            ms.to_string(),
        ));
    }
    // The overall deadline would cut a stream that has started: streams keep the route's.
    if let (Some(ms), false) = (f.timeout_ms, stream) {
        headers.push(set("x-envoy-upstream-rq-timeout-ms", ms.to_string()));
    }
    headers
}
