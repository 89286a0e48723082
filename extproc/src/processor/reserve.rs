//! Budgets at the request body: the token estimate, the reservation on every budget that
//! applies, and the output allowance of a stream.

use tollgate_core::budget::{self as budgets, Admission, Reservation};
use tollgate_core::config::{ApiFamily, Provider};
use tollgate_core::{ApiError, Endpoint};

use super::{owner, Processor};
use crate::budget;
use crate::streamcap::StreamCap;
use crate::translator::openai;

/// Response header naming the soft budgets a request went past.
pub const BUDGET_WARNING_HEADER: &str = "x-tollgate-budget-warning";

impl Processor {
    /// Reserves the request's estimated cost on every budget that applies to it: `Ok(None)`
    /// when none does (or the model has no price), a 429 when a hard one cannot take it.
    pub(super) async fn reserve(
        &mut self,
        endpoint: Endpoint,
        provider: &Provider,
        upstream_model: &str,
        parsed: &openai::ParsedRequest<'_>,
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
        let Some(price) = self.config.prices.get(upstream_model) else {
            tracing::warn!(request_id = %ctx.request_id, model = %upstream_model, "No price for the model: the request is not charged to its budgets (add it under pricing.models)");
            self.metrics.budget("unpriced");
            return Ok(None);
        };
        let est = self.estimate(endpoint, provider, upstream_model, parsed);
        let amount = budget::estimate(price, est.prompt_tokens, est.max_output_tokens);
        self.estimate = Some(est);
        self.reserve_on(lines, amount, now).await
    }

    /// Reserves `amount` on `lines` (the budgets that apply to this request, none empty): the
    /// reservation, a 429 when a hard budget cannot take it, and what the ledger's failure
    /// means under `budgets.on_ledger_error`. Soft budgets it goes past are kept for the
    /// response's warning header.
    pub(super) async fn reserve_on(
        &mut self,
        lines: Vec<budgets::Line>,
        amount: tollgate_core::pricing::Picodollars,
        now: time::OffsetDateTime,
    ) -> Result<Option<Reservation>, ApiError> {
        let (Some(ledger), Some(ctx)) = (&self.ledger, &self.ctx) else {
            return Ok(None);
        };
        match Reservation::reserve(ledger, lines, amount).await {
            Ok(Admission::Admitted(r, soft)) => {
                self.metrics.budget("reserved");
                for l in &soft {
                    self.metrics.budget("soft_exceeded");
                    tracing::warn!(request_id = %ctx.request_id, budget = %l.budget, scope = l.scope.label(), period = l.period.label(), "Soft budget exceeded");
                }
                self.soft_exceeded = soft;
                Ok(Some(r))
            }
            Ok(Admission::Refused(line)) => {
                self.metrics.budget("refused");
                tracing::debug!(request_id = %ctx.request_id, budget = %line.budget, "Budget refused the request");
                Err(ApiError::BudgetExceeded {
                    scope: line.scope.label(),
                    period: line.period.label(),
                    retry_after_secs: line
                        .ends
                        .map(|e| (e - now).whole_seconds().max(1).unsigned_abs()),
                })
            }
            Err(e) if self.config.budgets.fail_open => {
                self.metrics.budget("ledger_error");
                tracing::error!(request_id = %ctx.request_id, error = %e, "Budget ledger unavailable: the request goes on unreserved (budgets.on_ledger_error: fail_open)");
                Ok(None)
            }
            Err(e) => {
                self.metrics.budget("ledger_error");
                tracing::error!(request_id = %ctx.request_id, error = %e, "Budget ledger unavailable: the request is refused (budgets.on_ledger_error: fail_closed)");
                Err(ApiError::BudgetUnavailable)
            }
        }
    }

    /// Whether a budget applies to the request's key (with a ledger): a reservation will be
    /// made for a request to a priced model. (Once per request; each failover attempt
    /// checks its own target's price.)
    pub(super) fn budget_lines(&self) -> bool {
        let (Some(_), Some(ctx)) = (&self.ledger, &self.ctx) else {
            return false;
        };
        !budgets::lines_with(
            &self.config.budgets.limits,
            &ctx.budgets,
            &owner(ctx, self.end_user.as_deref()),
            time::OffsetDateTime::now_utc(),
        )
        .is_empty()
    }

    pub(super) fn estimate(
        &self,
        endpoint: Endpoint,
        provider: &Provider,
        upstream_model: &str,
        parsed: &openai::ParsedRequest<'_>,
    ) -> budget::Estimate {
        let counter = budget::Counter::for_target(provider.kind, upstream_model);
        let obj = parsed.object();
        budget::Estimate {
            counter,
            prompt_tokens: budget::prompt_tokens(obj, counter),
            max_output_tokens: budget::max_output_tokens(
                obj,
                endpoint,
                self.config.budgets.default_max_tokens,
            ),
            own_limit: budget::has_own_limit(obj),
        }
    }

    /// The output allowance of a stream: the smallest of the per-request token cap, what the
    /// per-request cost cap leaves after the prompt, and, for a reserved request that set no
    /// limit of its own, the output its reservation covers (so no stream runs past what its
    /// budgets granted). `None`: nothing limits it.
    pub(super) fn stream_cap(
        &mut self,
        client: ApiFamily,
        endpoint: Endpoint,
        provider: &Provider,
        upstream_model: &str,
        parsed: &openai::ParsedRequest<'_>,
        client_usage: bool,
    ) -> Option<StreamCap> {
        let b = &self.config.budgets;
        if b.max_output_tokens_per_request.is_none()
            && b.max_cost_per_request.is_none()
            && self.reservation.is_none()
        {
            return None;
        }
        let est = match self.estimate {
            Some(e) => e,
            None => self.estimate(endpoint, provider, upstream_model, parsed),
        };
        let b = &self.config.budgets;
        let price = self.config.prices.get(upstream_model);
        let by_cost = b.max_cost_per_request.zip(price).map(|(cap, p)| {
            let prompt = budget::estimate(p, est.prompt_tokens, 0);
            match u128::from(p.output.0) {
                0 => u64::MAX,
                per_token => {
                    u64::try_from(cap.saturating_sub(prompt) / per_token).unwrap_or(u64::MAX)
                }
            }
        });
        let by_reservation =
            (self.reservation.is_some() && !est.own_limit).then_some(est.max_output_tokens);
        let allowance = [b.max_output_tokens_per_request, by_cost, by_reservation]
            .into_iter()
            .flatten()
            .min()?;
        Some(StreamCap::new(
            client,
            est.counter,
            allowance,
            est.prompt_tokens,
            client_usage,
        ))
    }
}
