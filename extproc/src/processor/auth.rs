//! Who is calling, at the request headers: the bundle ext_authz found (dynamic metadata), or,
//! when Envoy runs no ext_authz filter, the same key gate asked here — one gRPC exchange per
//! request fewer. Requests Tollgate answers from the headers alone (`GET /v1/models`, the
//! self-service reads, a body-less POST) end here.

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};
use time::OffsetDateTime;
use tollgate_core::config::Capture as CaptureMode;
use tollgate_core::metadata as md;
use tollgate_core::{keys, ApiError, Dialect, Endpoint};

use super::local::SelfService;
use super::{header, strip_query, AuthContext, Processor};
use crate::mutation::{self, set};
use crate::trace::Remote;

/// Client headers that never travel upstream: the client's key (in any of its headers) and the
/// routing header, which is Tollgate's to set.
fn headers_to_strip() -> Vec<String> {
    tollgate_authz::KEY_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(std::iter::once(md::ROUTE_HEADER.to_owned()))
        .collect()
}

impl Processor {
    pub(super) async fn on_request_headers(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        if let Some(tracer) = &self.tracer {
            // Envoy's own span of this call when Envoy traces, else the request's context.
            let remote = self.envoy_trace.take().or_else(|| {
                Remote::read(
                    header(&h.headers, "traceparent"),
                    header(&h.headers, "tracestate"),
                )
            });
            self.span = tracer.start(remote, self.started_at);
        }
        // A CORS preflight carries no key and goes no further (`cors.rs`).
        if let Some(answer) = self.preflight(h) {
            return answer;
        }
        let text = |name: &str| header(&h.headers, name).map(|v| String::from_utf8_lossy(v));
        let mut strip = Vec::new();
        if self.ctx.is_none() {
            match self.admit(h).await {
                Ok(()) => strip = headers_to_strip(),
                Err(refusal) => return refusal,
            }
        }
        if let Some(refusal) = self.check_origin(h) {
            return refusal;
        }
        // A browser's `Origin` is Tollgate's to check, not the provider's (Anthropic refuses
        // browser requests it did not opt into).
        if header(&h.headers, "origin").is_some() {
            strip.push("origin".to_owned());
        }
        let Some(ctx) = &self.ctx else {
            tracing::error!("No ext_authz metadata on the request: is ext_authz before ext_proc, and its namespace forwarded?");
            return self.reject(&ApiError::Internal, None);
        };
        let path = text(":path").map_or(ctx.path.clone(), |p| p.into_owned());
        let method = text(":method").map_or(ctx.method.clone(), |m| m.into_owned());
        self.client_anthropic_version = header(&h.headers, "anthropic-version").is_some();
        self.cache_control = super::cache::directives(header(&h.headers, "cache-control"));
        // Kept for capture, and for a multipart form's boundary.
        let multipart = tollgate_core::config::MediaApi::from_path(strip_query(&path))
            .is_some_and(|a| a.multipart());
        if ctx.capture != CaptureMode::Off || multipart {
            self.request_content_type = text("content-type")
                .map(|v| v.into_owned())
                .unwrap_or_default();
        }
        self.end_user = text(&self.config.budgets.end_user_header)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        if let Some(answer) = self.passthrough_headers(h, &path, &method, &strip).await {
            return answer;
        }
        if let Some(id) = strip_query(&path).strip_prefix("/v1/responses/") {
            if !id.is_empty() && !id.contains('/') {
                let (id, query) = (
                    id.to_owned(),
                    path.split_once('?').map(|(_, q)| q.to_owned()),
                );
                return self
                    .stored_response(&method, &id, query.as_deref().unwrap_or(""))
                    .await;
            }
            if let Some(id) = id.strip_suffix("/input_items").filter(|i| !i.contains('/')) {
                if method == "GET" && !id.is_empty() {
                    let (id, query) = (
                        id.to_owned(),
                        path.split_once('?').map(|(_, q)| q.to_owned()),
                    );
                    return self
                        .stored_input_items(&id, query.as_deref().unwrap_or(""))
                        .await;
                }
            }
        }
        if method == "GET" {
            match strip_query(&path) {
                "/v1/budget" => return self.self_service(SelfService::Budget).await,
                "/v1/usage" => return self.self_service(SelfService::Usage).await,
                _ => {}
            }
        }
        match self.endpoint(&method, &path) {
            Ok(Endpoint::Models) => self.list_models(),
            Ok(Endpoint::Feedback) if self.config.feedback.is_none() => {
                let path = strip_query(&path).to_owned();
                self.reject(&ApiError::UnknownEndpoint { method, path }, None)
            }
            Ok(_) if h.end_of_stream => self.reject(
                &ApiError::InvalidJson("the request has no body".to_owned()),
                None,
            ),
            Ok(_) => {
                // Google's `?key=` goes no further than the gate (ext_authz has Envoy drop it).
                let mut set_headers = Vec::new();
                if let Some(raw) = text(":path") {
                    let clean = tollgate_authz::without_query_key(&raw);
                    if clean != raw {
                        set_headers.push(set(":path", clean.as_bytes()));
                    }
                }
                mutation::request_headers_with(set_headers, strip)
            }
            Err(e) => self.reject(&e, None),
        }
    }

    /// Asks the key gate about a request ext_authz did not admit: on success the request's
    /// context is set; a refusal (already counted and logged by the gate) is the immediate
    /// answer to send. Without a gate the request has no context, which the caller refuses.
    async fn admit(&mut self, h: &HttpHeaders) -> Result<(), ProcessingResponse> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        let text = |name: &str| header(&h.headers, name).map(|v| String::from_utf8_lossy(v));
        let path = text(":path").map(|p| p.into_owned()).unwrap_or_default();
        let method = text(":method").map(|m| m.into_owned()).unwrap_or_default();
        let request_id = keys::new_request_id();
        let started = std::time::Instant::now();
        let lookup =
            |name: &str| header(&h.headers, name).and_then(|v| std::str::from_utf8(v).ok());
        let decision = gate
            .admit(
                lookup,
                &path,
                &method,
                &request_id,
                OffsetDateTime::now_utc(),
            )
            .await;
        self.metrics.observe_phase("authz", started);
        match decision {
            Ok(admitted) => {
                self.answer_headers = admitted
                    .response_headers(&request_id)
                    .into_iter()
                    .map(|(k, v)| set(k.as_str(), v))
                    .collect();
                self.ctx = Some(AuthContext::from_bundle(
                    &admitted.bundle,
                    tollgate_authz::without_query_key(&path).into_owned(),
                    method,
                    request_id,
                ));
                Ok(())
            }
            Err(denied) => {
                // Answered and logged: nothing of this request is left for `finish`.
                self.finished = true;
                let err = &denied.error;
                let mut headers: Vec<_> = denied
                    .headers(&request_id)
                    .into_iter()
                    .map(|(k, v)| set(k.as_str(), v))
                    .collect();
                headers.extend(self.cors_refusal_headers(h));
                Err(mutation::immediate_headers(
                    err.status(),
                    err.body(Dialect::from_path(&path)),
                    headers,
                ))
            }
        }
    }
}
