//! The end of a request: decide its bill once (provider usage, else the whole reservation of
//! a response whose usage never came), settle its reservation with it, charge its tokens to
//! the rate limits, count it in the metrics, and hand its one `LogEvent` (carrying the same
//! bill) to the log queue — once, whichever way the stream ended (response done, client gone,
//! Envoy reset).

use std::time::SystemTime;

use tollgate_core::budget::Reservation;
use tollgate_core::config::Side;
use tollgate_core::metrics::{RequestLabels, TokenLabels};
use tollgate_core::pricing::Picodollars;
use tollgate_core::{Endpoint, Usage, UsageSource};
use tollgate_proto::logger::v1 as pb;

use super::{strip_query, Processor};
use crate::attempts::{self, Outcome};
use crate::capture::Capture;
use crate::streamcap::{self, StreamCap};
use crate::{log, selfservice, trace};

impl Processor {
    /// Records the outcome of a forwarded request, once.
    pub(super) fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if std::mem::take(&mut self.pending_failover) {
            // No attempt of this request comes after its end.
            if let Some(id) = &self.envoy_request_id {
                crate::attempts::pending().remove(id);
            }
        }
        // The target's in-flight slot is free as soon as its response is over.
        if let Some(f) = &mut self.forwarded {
            f.slot = None;
        }
        let stream_verdict = self
            .forwarded
            .as_ref()
            .and_then(|f| f.sse.as_ref())
            .and_then(|p| p.verdict());
        if let Some(v) = stream_verdict {
            self.verdicts.add(Side::Response, &v, &self.metrics);
        }
        self.settle();
        self.charge_tokens();
        // Taken whether or not logging is on: the book keeps nothing nobody reads.
        let outcomes = self.take_attempt_outcomes();
        self.emit_log(&outcomes);
        self.end_span();
        let Some(fwd) = &self.forwarded else { return };
        let endpoint = self.request_endpoint().unwrap_or(fwd.endpoint);
        let status = fwd.status.unwrap_or(499);
        let provider = fwd.provider.name.clone();
        // A passthrough request's model is the client's text: a label only when configured.
        let model = match fwd.endpoint {
            Endpoint::Passthrough if fwd.model.is_empty() => "none".to_owned(),
            Endpoint::Passthrough => super::local::model_label(&self.config, Some(&fwd.model)),
            _ => fwd.model.clone(),
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.label(),
                provider: provider.clone(),
                model: model.clone(),
                status,
            })
            .inc();
        if let Some(u) = fwd.usage {
            for (kind, n) in u.by_kind() {
                if n > 0 {
                    self.metrics
                        .tokens
                        .get_or_create(&TokenLabels {
                            provider: provider.clone(),
                            model: model.clone(),
                            kind,
                        })
                        .inc_by(n);
                }
            }
        }
        let ctx = self.ctx.as_ref();
        tracing::info!(
            request_id = ctx.map_or("", |c| c.request_id.as_str()),
            key_id = ctx.map_or("", |c| c.key_id.as_str()),
            tenant = ctx.map_or("", |c| c.tenant.as_str()),
            team = ctx.map_or("", |c| c.team.as_str()),
            endpoint = endpoint.label(),
            model = %fwd.model,
            provider = %provider,
            stream = fwd.stream,
            status,
            input_tokens = fwd.usage.map(|u| u.input_tokens),
            output_tokens = fwd.usage.map(|u| u.output_tokens),
            duration_ms = fwd.sent_at.elapsed().as_secs_f64() * 1000.0,
            "Request finished"
        );
    }

    /// The outcomes the upstream ext_proc streams of a failover request's attempts recorded
    /// for it (none without failover, or when they ran on another replica).
    fn take_attempt_outcomes(&self) -> Vec<Outcome> {
        match (
            &self.ctx,
            self.forwarded.as_ref().and_then(|f| f.failover.as_ref()),
        ) {
            (Some(ctx), Some(_)) => attempts::book().take(&ctx.request_id),
            _ => Vec::new(),
        }
    }

    /// Hands the request's `LogEvent` to the log queue (never blocks), when logging is on.
    pub(super) fn emit_log(&mut self, outcomes: &[Outcome]) {
        if self.log.is_none() {
            return;
        }
        let payload = self.capture.take().map(Capture::finish);
        let (Some(handle), Some(facts)) = (&self.log, self.facts(SystemTime::now(), payload))
        else {
            return;
        };
        let mut event = log::event(&facts);
        self.media_event(&mut event);
        event.search_units = self.rerank_search_units();
        self.cache_log(&mut event);
        if let Some(call) = &self.passthrough {
            event.passthrough_path = call.logged_path().to_owned();
        }
        if let Some(fwd) = &self.forwarded {
            if let Some(f) = &fwd.failover {
                self.failover_attempts(fwd, f, outcomes, &mut event);
            }
        }
        handle.emit(event);
    }

    /// The attempts of a failover request, into its event: the chain's providers up to the
    /// attempt that answered (or the last one recorded, when none answered), each with the
    /// status and latency its upstream ext_proc stream recorded in `outcomes`. An attempt
    /// not recorded (its stream ran on another replica) gets status 0 and latency 0, except
    /// the answering one: the status the client got and the upstream latency seen here.
    fn failover_attempts(
        &self,
        fwd: &super::Forwarded,
        f: &super::FailoverState,
        outcomes: &[Outcome],
        event: &mut pb::LogEvent,
    ) {
        let Some(m) = self.config.models.get(&f.model) else {
            return;
        };
        let recorded = outcomes
            .iter()
            .filter(|o| f.chain.get(o.number.wrapping_sub(1)) == Some(&o.target))
            .map(|o| o.number)
            .max()
            .unwrap_or(0);
        let made = f.attempts.max(recorded);
        for (n, i) in f.chain.iter().take(made).enumerate() {
            let Some(t) = m.targets.get(*i) else { continue };
            let seen = outcomes
                .iter()
                .find(|o| o.number == n + 1 && o.target == *i);
            let (status, latency_ms, error) = match seen {
                Some(o) => (u32::from(o.status), o.latency_ms, o.ending.label()),
                None if n + 1 == f.attempts => (
                    u32::from(fwd.status.unwrap_or(0)),
                    fwd.upstream_latency.map_or(0, Outcome::millis),
                    "",
                ),
                None => (0, 0, attempts::NOT_SEEN),
            };
            event.attempt_providers.push(t.provider.name.clone());
            event.attempt_statuses.push(status);
            event.attempt_latencies_ms.push(latency_ms);
            event.attempt_errors.push(error.to_owned());
        }
        event.answered_attempt = u32::try_from(f.attempts).unwrap_or(0);
    }

    /// Ends the request's span and queues it (never blocks), when it has one.
    pub(super) fn end_span(&mut self) {
        let (Some(span), Some(tracer)) = (self.span.take(), &self.tracer) else {
            return;
        };
        let Some(facts) = self.facts(SystemTime::now(), None) else {
            return;
        };
        let end = trace::SpanEnd {
            facts: &facts,
            endpoint: self.request_endpoint(),
            provider: self.forwarded.as_ref().map(|f| &*f.provider),
        };
        tracer.end(span, &end);
    }

    /// The endpoint the request asked for, when it names one.
    fn request_endpoint(&self) -> Option<Endpoint> {
        // A Responses request goes on as the chat body it means; it is logged as itself.
        if self.responses.is_some() {
            return Some(Endpoint::Responses);
        }
        self.forwarded.as_ref().map(|f| f.endpoint).or_else(|| {
            let ctx = self.ctx.as_ref()?;
            Endpoint::from_request(&ctx.method, strip_query(&ctx.path))
        })
    }

    /// What the request's log event and span say about it, ended at `ended`; `None` for a
    /// request that was not admitted, or that Tollgate answered without an error and without
    /// a provider (`GET /v1/models`: not an LLM call).
    fn facts(&self, ended: SystemTime, payload: Option<pb::Payload>) -> Option<log::Facts<'_>> {
        let ctx = self.ctx.as_ref()?;
        let mut facts = log::Facts {
            request_id: &ctx.request_id,
            key_id: &ctx.key_id,
            tenant: &ctx.tenant,
            team: &ctx.team,
            end_user: self.end_user.as_deref().unwrap_or(""),
            dialect: self.dialect(),
            endpoint: self.request_endpoint().map_or("unknown", Endpoint::label),
            requested_model: "",
            provider: "",
            upstream_model: "",
            stream: false,
            status: 0,
            error_class: "",
            usage: None,
            started: self.started_at,
            first_byte: self.first_byte_at,
            ended,
            overhead: self.overhead,
            upstream_latency: None,
            cost: None,
            guardrails: &self.verdicts,
            payload,
        };
        match (&self.forwarded, &self.rejected) {
            (Some(fwd), _) => {
                let status = fwd.status.unwrap_or(499);
                facts.requested_model = &fwd.model;
                facts.provider = &fwd.provider.name;
                facts.upstream_model = &fwd.upstream_model;
                facts.stream = fwd.stream;
                facts.status = status;
                // A response a guardrail blocked (whole or mid-stream) is classed as such.
                facts.error_class = if self
                    .verdicts
                    .list()
                    .iter()
                    .any(|v| v.action == "block" && v.side == Side::Response)
                {
                    "guardrail_blocked"
                } else if fwd
                    .sse
                    .as_ref()
                    .and_then(|p| p.cap())
                    .is_some_and(StreamCap::was_cut)
                {
                    streamcap::OUTPUT_CAP
                } else {
                    log::upstream_error_class(status)
                };
                // The bill settled with (a request not settled yet gets the same rule).
                let bill = self
                    .bill
                    .unwrap_or_else(|| self.decide_bill(self.reservation.as_ref()));
                facts.usage = bill.usage;
                facts.upstream_latency = fwd.upstream_latency;
                facts.cost = bill.cost;
            }
            (None, Some(r)) => {
                facts.requested_model = r.model.as_deref().unwrap_or("");
                facts.status = r.status;
                facts.error_class = r.class;
            }
            // Answered by the response cache: its answer's usage, the hit's cost.
            (None, None) if self.cache_hit.is_some() => {
                if let Some(hit) = &self.cache_hit {
                    facts.requested_model = &hit.model;
                    facts.provider = "cache";
                    facts.upstream_model = &hit.upstream_model;
                    facts.stream = hit.stream;
                    facts.status = 200;
                    facts.usage = hit.usage;
                    facts.cost = Some(hit.cost);
                }
            }
            // A token count Tollgate estimated: no provider, no tokens, no cost.
            (None, None) if self.estimated_count.is_some() => {
                facts.requested_model = self.estimated_count.as_deref().unwrap_or("");
                facts.status = 200;
            }
            // Answered by Tollgate without an error (`GET /v1/models`): not an LLM call.
            (None, None) => return None,
        }
        Some(facts)
    }

    /// Charges the tokens the request used to its key's and tenant's token-rate limits.
    pub(super) fn charge_tokens(&self) {
        let (Some(limiter), Some(ctx), Some(fwd)) = (&self.limiter, &self.ctx, &self.forwarded)
        else {
            return;
        };
        let Some(u) = fwd.usage else { return };
        let limits = tollgate_core::ratelimit::token_limits(
            &ctx.key_id,
            ctx.tokens_per_minute,
            Some(ctx.tenant.as_str()).filter(|t| !t.is_empty()),
            &self.config.tenant_tokens_per_minute,
            ctx.tenant_tokens_per_minute,
        );
        if limits.is_empty() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        limiter.charge_tokens(
            limits.into_iter().map(|(s, n, _)| (s, n)).collect(),
            u.input_tokens.saturating_add(u.output_tokens),
            now,
        );
    }

    /// What the request is billed, decided once as it ends. A successful response that
    /// started but was cut before its end (the client cancelled; an upstream reset or
    /// timeout; Envoy reset the ext_proc stream), or that ended without usage (an error event
    /// mid-stream, a response without `usage`), is billed its whole reservation, as the
    /// estimate's tokens: the provider charges for what it generated, which nobody counted
    /// (the partial usage some providers send at a stream's start, Anthropic's
    /// `message_start`, counts the prompt only). Otherwise the provider's usage at the model's
    /// price, whatever the client finally got (the provider billed it); else nothing (no
    /// response came, or nothing was reserved).
    fn decide_bill(&self, reservation: Option<&Reservation>) -> Bill {
        let Some(fwd) = &self.forwarded else {
            return Bill::default();
        };
        if let Some(bill) = self.media_bill() {
            return bill;
        }
        let ok = fwd.status.is_some_and(|s| (200..300).contains(&s));
        let started = ok && self.first_byte_at.is_some();
        let usage_bill = |u: Usage| Bill {
            usage: Some(u),
            cost: self.rerank_cost(&fwd.upstream_model).or_else(|| {
                self.config
                    .prices
                    .get(&fwd.upstream_model)
                    .map(|p| p.cost(&u))
            }),
        };
        match (fwd.usage, self.response_done) {
            (Some(u), true) => return usage_bill(u),
            (Some(u), false) if !started || reservation.is_none() => return usage_bill(u),
            _ => {}
        }
        match (started, reservation, self.estimate) {
            (true, Some(r), Some(est)) => Bill {
                usage: Some(Usage {
                    input_tokens: est.prompt_tokens,
                    output_tokens: est.max_output_tokens,
                    cache_read_tokens: 0,
                    cache_write_tokens: 0,
                    reasoning_tokens: 0,
                    source: UsageSource::Reservation,
                }),
                cost: Some(r.amount()),
            },
            _ => fwd.usage.map(usage_bill).unwrap_or_default(),
        }
    }

    /// Ends the reservation with the request's [`Bill`] (decided here, once): its cost when
    /// it has one, else a refund. The log event and the span carry the same bill, so the
    /// ledger, `tollgate usage` and the spend restored at start-up agree.
    pub(super) fn settle(&mut self) {
        let reservation = self.reservation.take();
        let bill = self.decide_bill(reservation.as_ref());
        self.bill = Some(bill);
        let (Some(_), Some(ledger), Some(ctx)) = (&self.forwarded, &self.ledger, &self.ctx) else {
            return; // dropping the reservation refunds it
        };
        let charged = bill.cost;
        // The key's own spend per period (`GET /v1/usage`), on the lines the reservation
        // does not already hold.
        let mut usage = selfservice::usage_lines(&ctx.key_id, self.started_at.into());
        if let Some(r) = reservation {
            usage.retain(|k| !r.keys().contains(k));
            match charged {
                Some(c) => r.settle(c),
                None => r.refund(),
            }
        }
        if let Some(c) = charged.filter(|c| *c > 0) {
            ledger.settle(usage, 0, c);
        }
    }
}

/// What one request is billed: the usage its log event carries and the cost its reservation
/// settles with (and its log event records).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Bill {
    /// The provider's usage, or the reservation's estimate ([`UsageSource::Reservation`]).
    pub(super) usage: Option<Usage>,
    /// The cost: of the usage at the model's price, or the reservation.
    pub(super) cost: Option<Picodollars>,
}
