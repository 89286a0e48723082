//! `POST /v1/rerank` (and Cohere's `/v2/rerank`): the Cohere-shaped request checked against
//! the key (model allow-list), reserved against its budgets (search units at the model's
//! `search_unit` price, else its tokens at the input price), rewritten for the target's
//! rerank API ([`crate::rerank::wire`]), and the answer turned back into Cohere's shape with
//! the usage it reports (or the documented estimate: one token per 3 bytes of the query once
//! per document plus every document; Cohere's search-unit rule). A model whose target serves
//! no rerank answers 400 in Cohere's error shape.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use tollgate_core::budget::{self as budgets, Reservation};
use tollgate_core::config::{ApiFamily, Excluded, Pick};
use tollgate_core::metadata as md;
use tollgate_core::pricing::Picodollars;
use tollgate_core::{ApiError, Endpoint, Usage, UsageSource};

use super::upstream_auth::{self, Signed};
use super::{owner, strip_query, Forwarded, Processor};
use crate::budget;
use crate::mutation::{self, set};
use crate::rerank::{self, Flavor};
use crate::translator::Pair;

/// A refusal, with the model it was about when one was named.
type Refusal = (ApiError, Option<String>);

/// A rerank request's state between its request body and its answer.
#[derive(Debug)]
pub(super) struct RerankCall {
    /// The client's request.
    request: rerank::Request,
    /// The target's rerank API.
    flavor: Flavor,
    /// Search units billed (the provider's, else the estimate), once the answer came.
    pub(super) search_units: Option<u64>,
}

impl Processor {
    /// Routes a rerank request to its model's target.
    pub(super) async fn route_rerank(
        &mut self,
        b: &HttpBody,
    ) -> Result<ProcessingResponse, Refusal> {
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        let v1 = strip_query(&ctx.path) == "/v1/rerank";
        let mut request = rerank::Request::parse(&b.body, v1).map_err(|e| (e, None))?;
        let model = request.model.clone();
        let config = Arc::clone(&self.config);
        let m = super::route::allowed_model(&config, ctx, &model)?;
        let refusal = |e: ApiError| (e, Some(model.clone()));
        // The query and documents judged by the key's guardrails; the request captured.
        self.guard_rerank(&mut request, &b.body)
            .await
            .map_err(refusal)?;
        // `least_cost`: each target's price of this request, by the same estimate the budget
        // reservation makes.
        let bytes = |t: &str| budget::Counter::Bytes.count(t);
        let (tokens, units) = (
            request.estimated_tokens(bytes),
            request.estimated_search_units(bytes),
        );
        let cost = |t: &tollgate_core::config::Target| -> Option<Picodollars> {
            match config.search_unit_prices.get(&t.upstream_model) {
                Some(unit) => Some(Picodollars::from(units).saturating_mul(unit)),
                None => config
                    .prices
                    .get(&t.upstream_model)
                    .map(|p| budget::estimate(p, tokens, 0)),
            }
        };
        let pick = {
            let mut rng = rand::rng();
            let mut random = |n: u64| {
                if n == 0 {
                    0
                } else {
                    rand::Rng::random_range(&mut rng, 0..n)
                }
            };
            m.choose(Excluded::NONE, &cost, &mut random)
        };
        let (target, slot) = match pick {
            Pick::Chosen { target, slot, .. } => (target, slot),
            Pick::Busy => return Err(refusal(ApiError::TargetsBusy(m.name.clone()))),
            Pick::Exhausted => return Err(refusal(ApiError::Internal)),
        };
        let provider = &target.provider;
        let Some(flavor) = Flavor::of_provider(provider.kind, &provider.base_path) else {
            return Err(refusal(ApiError::InvalidField {
                param: "model",
                message: format!("The model `{model}` does not serve rerank."),
            }));
        };
        let path = flavor.path(&provider.base_path);
        let body = flavor.request(&request, &target.upstream_model);
        let mut headers = Vec::with_capacity(8 + provider.headers.len());
        headers.push(set(":path", path.as_str()));
        headers.push(set(":authority", provider.authority.as_str()));
        headers.push(set(md::ROUTE_HEADER, provider.cluster.as_str()));
        headers.push(set("content-length", body.len().to_string()));
        headers.push(set("content-type", "application/json"));
        let signed = Signed {
            authority: &provider.authority,
            path: &path,
            body: &body,
            stream: false,
        };
        upstream_auth::credentials(provider, &signed, &mut headers).map_err(refusal)?;
        for (k, v) in &provider.headers {
            headers.push(set(k, v.as_str()));
        }
        let remove = self.version_headers(false, provider, &mut headers);
        // Last: nothing after the reservation can fail.
        self.reservation = self
            .reserve_rerank(&request, provider.kind, &target.upstream_model)
            .await
            .map_err(refusal)?;
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        tracing::debug!(request_id = %ctx.request_id, key_id = %ctx.key_id, model = %model, provider = %provider.name, documents = request.documents.len(), "Routing a rerank request");
        self.forwarded = Some(Forwarded {
            slot: Some(slot),
            ..Forwarded::new(
                Endpoint::Rerank,
                model,
                Arc::clone(provider),
                target.upstream_model.clone(),
                Pair {
                    client: ApiFamily::OpenAi,
                    upstream: ApiFamily::OpenAi,
                },
            )
        });
        self.rerank = Some(Box::new(RerankCall {
            request,
            flavor,
            search_units: None,
        }));
        Ok(mutation::request_body(mutation::common(
            headers,
            remove,
            Some(body),
            true,
        )))
    }

    /// Reserves a rerank request's estimated cost: its estimated search units at the model's
    /// `search_unit` price, else its estimated tokens at the input price. `Ok(None)` when no
    /// budget applies or the model has no price.
    async fn reserve_rerank(
        &mut self,
        request: &rerank::Request,
        kind: tollgate_core::config::ProviderKind,
        upstream_model: &str,
    ) -> Result<Option<Reservation>, ApiError> {
        let (Some(_), Some(ctx)) = (&self.ledger, &self.ctx) else {
            return Ok(None);
        };
        let now = time::OffsetDateTime::now_utc();
        let lines = budgets::lines_with(
            &self.config.budgets.limits,
            &ctx.budgets,
            &owner(ctx, self.end_user.as_deref()),
            now,
        );
        if lines.is_empty() {
            return Ok(None);
        }
        let counter = budget::Counter::for_target(kind, upstream_model);
        let tokens = request.estimated_tokens(|t| counter.count(t));
        let amount = match (
            self.config.search_unit_prices.get(upstream_model),
            self.config.prices.get(upstream_model),
        ) {
            (Some(unit), _) => {
                Picodollars::from(request.estimated_search_units(|t| counter.count(t)))
                    .saturating_mul(unit)
            }
            (None, Some(price)) => budget::estimate(price, tokens, 0),
            (None, None) => {
                tracing::warn!(request_id = %ctx.request_id, model = %upstream_model, "No price for the rerank model: the request is not charged to its budgets (add it under pricing.models)");
                self.metrics.budget("unpriced");
                return Ok(None);
            }
        };
        self.estimate = Some(budget::Estimate {
            counter,
            prompt_tokens: tokens,
            max_output_tokens: 0,
            own_limit: true,
        });
        self.reserve_on(lines, amount, now).await
    }

    /// The provider's answer in Cohere's shape, its usage recorded: the provider's search
    /// units (Cohere) or tokens (Jina, Voyage, vLLM), the rest estimated. An error keeps its
    /// status with Cohere's `{"message"}` body. `Err`: a success that is not the API's shape.
    pub(super) fn rerank_answer(
        &mut self,
        status: u16,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let (Some(call), Some(fwd)) = (self.rerank.as_mut(), self.forwarded.as_mut()) else {
            return Ok(None);
        };
        if !(200..300).contains(&status) {
            let message = call
                .flavor
                .error_message(body)
                .unwrap_or_else(|| format!("The provider answered with status {status}."));
            return Ok(Some(
                serde_json::json!({ "message": message })
                    .to_string()
                    .into_bytes(),
            ));
        }
        let Some(answer) = call.flavor.answer(body) else {
            tracing::warn!(provider = %fwd.provider.name, "The provider's rerank answer is not its API's shape");
            return Err(ApiError::Upstream(502));
        };
        let counter = budget::Counter::for_target(fwd.provider.kind, &fwd.upstream_model);
        let (input_tokens, source) = match answer.tokens {
            Some(n) => (n, UsageSource::Provider),
            None => (
                call.request.estimated_tokens(|t| counter.count(t)),
                UsageSource::Estimated,
            ),
        };
        // Search units: Cohere's own figure; elsewhere Cohere's rule, so every rerank
        // request is counted in the same unit.
        let search_units = answer
            .search_units
            .unwrap_or_else(|| call.request.estimated_search_units(|t| counter.count(t)));
        call.search_units = Some(search_units);
        fwd.usage = Some(Usage {
            input_tokens,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            source,
        });
        let request_id = self.ctx.as_ref().map_or("", |c| c.request_id.as_str());
        let billed_units = (answer.search_units, answer.tokens);
        Ok(Some(rerank::client_answer(
            &call.request,
            &answer,
            request_id,
            billed_units.0,
            billed_units.1,
        )))
    }

    /// The cost of a rerank request's usage at the model's `search_unit` price, when it has
    /// one (`None`: priced per token like every other request).
    pub(super) fn rerank_cost(&self, upstream_model: &str) -> Option<Picodollars> {
        let units = self.rerank.as_ref()?.search_units?;
        let unit = self.config.search_unit_prices.get(upstream_model)?;
        Some(Picodollars::from(units).saturating_mul(unit))
    }

    /// The search units of a rerank request, for its log event (0 for every other request).
    pub(super) fn rerank_search_units(&self) -> u64 {
        self.rerank
            .as_ref()
            .and_then(|c| c.search_units)
            .unwrap_or(0)
    }
}

/// Refuses a request for another endpoint to a target that serves rerank only.
pub(super) fn refuse_rerank_only(
    endpoint: Endpoint,
    kind: tollgate_core::config::ProviderKind,
    model: &str,
) -> Result<(), ApiError> {
    if kind.rerank_only() && endpoint != Endpoint::Rerank {
        return Err(ApiError::InvalidField {
            param: "model",
            message: format!("The model `{model}` serves only POST /v1/rerank."),
        });
    }
    Ok(())
}

impl Processor {
    /// Replaces a rerank answer with `err` in Cohere's error shape.
    pub(super) fn refuse_rerank_response(
        &mut self,
        err: ApiError,
        end: bool,
    ) -> ProcessingResponse {
        if let Some(fwd) = &mut self.forwarded {
            fwd.status = Some(err.status());
        }
        let request_id = self.ctx.as_ref().map(|c| c.request_id.clone());
        if end {
            self.finish();
        }
        mutation::immediate_with(
            err.status(),
            err.body(tollgate_core::Dialect::Cohere),
            "application/json",
            request_id.as_deref(),
            self.answer_headers.clone(),
        )
    }
}
