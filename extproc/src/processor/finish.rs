//! The end of a request: settle its reservation, charge its tokens to the rate limits, count
//! it in the metrics, and hand its one `LogEvent` to the log queue — once, whichever way the
//! stream ended (response done, client gone, Envoy reset).

use std::time::SystemTime;

use tollgate_core::config::Side;
use tollgate_core::metrics::{RequestLabels, TokenLabels};
use tollgate_core::Endpoint;
use tollgate_proto::logger::v1 as pb;

use super::{strip_query, Processor};
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
        self.emit_log();
        self.end_span();
        let Some(fwd) = &self.forwarded else { return };
        let status = fwd.status.unwrap_or(499);
        let provider = fwd.provider.name.clone();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: fwd.endpoint.label(),
                provider: provider.clone(),
                model: fwd.model.clone(),
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
                            model: fwd.model.clone(),
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
            endpoint = fwd.endpoint.label(),
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

    /// Hands the request's `LogEvent` to the log queue (never blocks), when logging is on.
    pub(super) fn emit_log(&mut self) {
        if self.log.is_none() {
            return;
        }
        let payload = self.capture.take().map(Capture::finish);
        let (Some(handle), Some(facts)) = (&self.log, self.facts(SystemTime::now(), payload))
        else {
            return;
        };
        handle.emit(log::event(&facts));
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
                facts.usage = fwd.usage;
                facts.upstream_latency = fwd.upstream_latency;
                facts.cost = fwd
                    .usage
                    .zip(self.config.prices.get(&fwd.upstream_model))
                    .map(|(u, p)| p.cost(&u));
            }
            (None, Some(r)) => {
                facts.requested_model = r.model.as_deref().unwrap_or("");
                facts.status = r.status;
                facts.error_class = r.class;
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

    /// Ends the reservation: the real cost when the usage is known; the whole reservation
    /// when a response was being delivered but its usage never came (a stream cut short: the
    /// provider charges for what it generated); nothing when no response came (upstream
    /// failure, client gone before the answer).
    pub(super) fn settle(&mut self) {
        let reservation = self.reservation.take();
        let (Some(fwd), Some(ledger), Some(ctx)) = (&self.forwarded, &self.ledger, &self.ctx)
        else {
            return; // dropping the reservation refunds it
        };
        let ok = fwd.status.is_some_and(|s| (200..300).contains(&s));
        let cost = fwd
            .usage
            .zip(self.config.prices.get(&fwd.upstream_model))
            .map(|(u, p)| p.cost(&u));
        let charged = match (ok, cost, &reservation) {
            (true, Some(c), _) => Some(c),
            (true, None, Some(r)) if self.first_byte_at.is_some() => Some(r.amount()),
            _ => None,
        };
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
