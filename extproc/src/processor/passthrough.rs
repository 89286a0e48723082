//! Passthrough routes, `/passthrough/{provider}/{path}`: any method and path of a configured
//! provider's own API, forwarded with the client's key swapped for the provider's credential
//! (a static key header, a Vertex OAuth token, or SigV4 over the body for Bedrock). The key
//! must be granted passthrough to that provider (`passthrough` section); the model allow-list
//! holds where the model is visible (in the path, or a JSON body's `model`). The body goes on
//! untouched — and is not even sent to Tollgate unless it is needed (a JSON body to read the
//! model, a Bedrock body to sign); the response passes through untouched, its usage read on
//! the side where it has a known shape, then priced, settled on the budgets and logged.

use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HeadersResponse, HttpBody, HttpHeaders, ProcessingResponse,
};
use tollgate_core::budget::{self as budgets, Reservation};
use tollgate_core::config::{passthrough_call, Provider, ProviderKind};
use tollgate_core::metadata as md;
use tollgate_core::metrics::ProviderLabel;
use tollgate_core::{ApiError, Endpoint};

use super::upstream_auth::{self, Signed};
use super::{header, owner, AuthContext, Forwarded, Processor};
use crate::mutation::{self, set};
use crate::passthrough::{self as pt, Framing, UsageReader};
use crate::translator::Pair;

/// A passthrough request on its way.
#[derive(Debug)]
pub(super) struct Call {
    provider: Arc<Provider>,
    method: String,
    /// The upstream `:path`, query kept.
    path: String,
    /// The model the path names.
    model: Option<String>,
    /// Whether the client's body is JSON (its `model` is read).
    json: bool,
    /// Client headers to remove (the key headers, when the gate ran here).
    strip: Vec<String>,
    /// Reads usage off a successful response.
    reader: Option<UsageReader>,
}

impl Call {
    /// The upstream path without its query (what the log event records).
    pub(super) fn logged_path(&self) -> &str {
        pt::without_query(&self.path)
    }
}

impl Processor {
    /// At the request headers of a passthrough request (`None`: not one): refuses an unknown
    /// provider (404), a key without a grant to it (403) or a model in the path the key may
    /// not use (403); forwards at once when the body need not be read, else waits for it.
    pub(super) async fn passthrough_headers(
        &mut self,
        h: &HttpHeaders,
        path: &str,
        method: &str,
        strip: &[String],
    ) -> Option<ProcessingResponse> {
        // Google's `?key=` is the client's key: it goes no further than the gate.
        let clean = tollgate_authz::without_query_key(path).into_owned();
        let (name, tail) = passthrough_call(&clean)?;
        let config = Arc::clone(&self.config);
        let ctx = self.ctx.as_ref()?;
        let Some(provider) = config.providers.get(name) else {
            let err = ApiError::UnknownProvider(name.to_owned());
            return Some(self.reject(&err, None));
        };
        if !config.passthrough.allows(&ctx.key_id, &ctx.tenant, name) {
            tracing::debug!(request_id = %ctx.request_id, key_id = %ctx.key_id, provider = %name, "Passthrough refused: no grant for the key");
            let err = ApiError::PassthroughNotAllowed(name.to_owned());
            return Some(self.reject(&err, None));
        }
        let model = pt::model_in_path(tail).map(|m| tollgate_core::bound::echo(&m).into_owned());
        if let Some(m) = &model {
            if !model_allowed(&config, ctx, provider, m) {
                return Some(self.reject(&ApiError::ModelNotAllowed(m.clone()), Some(m)));
            }
        }
        let json = header(&h.headers, "content-type")
            .is_some_and(|ct| Framing::of(&String::from_utf8_lossy(ct)) == Some(Framing::Json));
        let bedrock = provider.kind == ProviderKind::Bedrock;
        let call = Call {
            provider: Arc::clone(provider),
            method: method.to_owned(),
            path: pt::upstream_path(&provider.base_path, tail),
            model,
            json,
            strip: strip.to_vec(),
            reader: None,
        };
        self.passthrough = Some(Box::new(call));
        if !h.end_of_stream && (bedrock || json) {
            // The body comes (buffered) to `passthrough_body`, which forwards.
            return Some(mutation::request_headers(strip.to_vec()));
        }
        Some(match self.passthrough_forward(None).await {
            Ok((headers, remove)) => ProcessingResponse {
                response: Some(Response::RequestHeaders(HeadersResponse {
                    response: Some(mutation::common(headers, remove, None, true)),
                })),
                // The body (if any) goes straight on: Tollgate does not need it.
                mode_override: Some(ProcessingMode {
                    request_header_mode: HeaderSendMode::Send as i32,
                    response_header_mode: HeaderSendMode::Send as i32,
                    request_body_mode: BodySendMode::None as i32,
                    response_body_mode: BodySendMode::None as i32,
                    request_trailer_mode: HeaderSendMode::Skip as i32,
                    response_trailer_mode: HeaderSendMode::Skip as i32,
                }),
                ..Default::default()
            },
            Err(err) => self.reject(&err, None),
        })
    }

    /// At the (buffered) request body of a passthrough request that needed it: the model a
    /// JSON body names is checked, then the request is forwarded, body unchanged.
    pub(super) async fn passthrough_body(&mut self, b: HttpBody) -> ProcessingResponse {
        if !b.end_of_stream {
            tracing::error!("Request body arrived in parts: request_body_mode must be BUFFERED");
            return self.reject(&ApiError::Internal, None);
        }
        let body_model = self
            .passthrough
            .as_ref()
            .filter(|c| c.json && c.model.is_none())
            .and_then(|_| pt::model_in_body(&b.body));
        if let (Some(m), Some(call), Some(ctx)) = (&body_model, &self.passthrough, &self.ctx) {
            if !model_allowed(&self.config, ctx, &call.provider, m) {
                let m = m.clone();
                return self.reject(&ApiError::ModelNotAllowed(m.clone()), Some(&m));
            }
        }
        if let Some(call) = &mut self.passthrough {
            if call.model.is_none() {
                // Client text: bounded before it reaches the log event.
                call.model = body_model.map(|m| tollgate_core::bound::echo(&m).into_owned());
            }
        }
        // Guardrails on a JSON body of a recognisable shape (refused in the provider's
        // dialect, or redacted: the redacted body goes on), and its capture.
        let (model, family) = match &self.passthrough {
            Some(c) => {
                let model = c.model.clone().unwrap_or_default();
                let family = c.provider.kind.family_of(&model);
                (model, family)
            }
            None => (String::new(), tollgate_core::config::ApiFamily::OpenAi),
        };
        let redacted = match self.guard_passthrough(&model, &b.body).await {
            Ok(r) => r,
            Err(err) => {
                let dialect = super::guard_endpoints::passthrough_dialect(family);
                let model = Some(model.as_str()).filter(|m| !m.is_empty());
                return self.reject_in(&err, model, dialect);
            }
        };
        let forwarded = self
            .passthrough_forward(Some(redacted.as_deref().unwrap_or(&b.body)))
            .await;
        match forwarded {
            Ok((mut headers, remove)) => {
                if let Some(body) = &redacted {
                    headers.push(set("content-length", body.len().to_string()));
                }
                mutation::request_body(mutation::common(headers, remove, redacted, true))
            }
            Err(err) => {
                let model = self.passthrough.as_ref().and_then(|c| c.model.clone());
                self.reject(&err, model.as_deref())
            }
        }
    }

    /// The headers that send the request to its provider (path, authority, credential,
    /// provider headers, routing header) and those to remove; reserves on the key's budgets
    /// and records the request as forwarded.
    async fn passthrough_forward(
        &mut self,
        body: Option<&[u8]>,
    ) -> Result<(Vec<HeaderValueOption>, Vec<String>), ApiError> {
        let Some(call) = &self.passthrough else {
            return Err(ApiError::Internal);
        };
        let provider = Arc::clone(&call.provider);
        let (path, method, model, mut remove) = (
            call.path.clone(),
            call.method.clone(),
            call.model.clone().unwrap_or_default(),
            call.strip.clone(),
        );
        let mut headers = Vec::with_capacity(8 + provider.headers.len());
        headers.push(set(":path", path.as_str()));
        headers.push(set(":authority", provider.authority.as_str()));
        let signed = Signed {
            authority: &provider.authority,
            path: &path,
            body: body.unwrap_or_default(),
            stream: false,
        };
        crate::aws::first_credentials(&provider).await;
        upstream_auth::passthrough_credentials(&provider, &method, &signed, &mut headers)?;
        for (k, v) in &provider.headers {
            headers.push(set(k, v.as_str()));
        }
        headers.push(set(md::ROUTE_HEADER, provider.cluster.as_str()));
        remove.extend(self.version_headers(
            provider.kind == ProviderKind::Anthropic,
            &provider,
            &mut headers,
        ));
        let stream = body.is_some_and(pt::streams);
        self.reservation = self.passthrough_reserve().await?;
        let family = provider.kind.family_of(&model);
        if let Some(ctx) = &self.ctx {
            tracing::debug!(request_id = %ctx.request_id, key_id = %ctx.key_id, provider = %provider.name, path = %pt::without_query(&path), "Passthrough request");
        }
        self.forwarded = Some(Forwarded {
            stream,
            ..Forwarded::new(
                Endpoint::Passthrough,
                model.clone(),
                provider,
                model,
                Pair {
                    client: family,
                    upstream: family,
                },
            )
        });
        Ok((headers, remove))
    }

    /// A passthrough request's reservation: nothing can be estimated of an arbitrary call,
    /// so it holds the smallest amount, which a hard budget already spent refuses (429); the
    /// real cost is settled when the response's usage is known.
    async fn passthrough_reserve(&mut self) -> Result<Option<Reservation>, ApiError> {
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
        self.reserve_on(lines, 1, now).await
    }

    /// The response headers of a passthrough request: a successful JSON, SSE or AWS
    /// event-stream body is streamed through Tollgate (unchanged) to read its usage; anything
    /// else does not come to Tollgate at all.
    pub(super) fn passthrough_response_headers(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        let status = header(&h.headers, ":status")
            .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
            .unwrap_or(0u16);
        let from_upstream = header(&h.headers, "x-envoy-upstream-service-time").is_some();
        let content_type = header(&h.headers, "content-type")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let Some(fwd) = &mut self.forwarded else {
            return mutation::response_headers(Default::default(), BodySendMode::None);
        };
        fwd.status = Some(status);
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
        let framing = Framing::of(&content_type).filter(|_| ok && !h.end_of_stream);
        if framing.is_some_and(|f| f != Framing::Json) {
            fwd.stream = true;
        }
        let family = fwd.pair.upstream;
        if let Some(c) = &mut self.capture {
            c.response_headers(&content_type);
        }
        let mut headers = self.answer_headers.clone();
        headers.push(set(md::PROVIDER_HEADER, fwd.provider.name.as_str()));
        if let Some(call) = &mut self.passthrough {
            call.reader = framing.map(|f| UsageReader::new(family, f));
        }
        if h.end_of_stream || framing.is_none() {
            // No body comes to Tollgate: the request ends here for it.
            self.response_done = h.end_of_stream || !ok;
            self.first_byte_at.get_or_insert_with(SystemTime::now);
            self.finish();
        }
        mutation::response_headers(
            mutation::common(headers, vec![], None, false),
            if framing.is_some() {
                BodySendMode::Streamed
            } else {
                BodySendMode::None
            },
        )
    }

    /// One chunk of a passthrough response: read for usage, passed on unchanged.
    pub(super) fn passthrough_response_body(&mut self, b: &HttpBody) -> ProcessingResponse {
        if self.first_byte_at.is_none() && !b.body.is_empty() {
            self.first_byte_at = Some(SystemTime::now());
        }
        let usage = self.passthrough.as_mut().and_then(|c| {
            let r = c.reader.as_mut()?;
            r.push(&b.body, b.end_of_stream);
            r.usage()
        });
        if let (Some(fwd), Some(u)) = (&mut self.forwarded, usage) {
            fwd.usage = Some(u);
        }
        if let Some(c) = &mut self.capture {
            c.response_chunk(&b.body);
        }
        if b.end_of_stream {
            self.response_done = true;
            self.finish();
        }
        mutation::response_body(Default::default())
    }
}

/// Whether the key may use `model` (a provider model id) at `provider`: the key allows the
/// name itself, or a configured model it may use whose target on this provider is that id.
fn model_allowed(
    config: &tollgate_core::Config,
    ctx: &AuthContext,
    provider: &Provider,
    model: &str,
) -> bool {
    ctx.allows(model)
        || config.models.values().any(|m| {
            ctx.allows(&m.name)
                && m.targets
                    .iter()
                    .any(|t| t.provider.name == provider.name && t.upstream_model == model)
        })
}
