//! One processor per ext_proc stream (one HTTP request): a method per phase, holding the
//! request's state between phases.
//!
//! Phases Envoy sends (see `envoy/`): the request headers (where `GET /v1/models` is answered),
//! the buffered request body (parsed once, rewritten, routed), the response headers (where the
//! response-body mode is switched per request), and the response body (BUFFERED for complete
//! JSON, STREAMED for SSE).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValueOption, Metadata};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use rand::Rng;
use tollgate_core::budget::{self as budgets, Admission, Ledger, Line, Owner, Reservation};
use tollgate_core::config::{
    ApiFamily, Capture as CaptureMode, Policy, Provider, ProviderKind, Side, ANTHROPIC_VERSION,
};
use tollgate_core::metadata as md;
use tollgate_core::metrics::{CodeLabel, Metrics, ProviderLabel, RequestLabels, TokenLabels};
use tollgate_core::ratelimit::RateStore;
use tollgate_core::{ApiError, Config, Dialect, Endpoint, Usage};
use tollgate_guardrails::Engine;
use tollgate_logger::LogHandle;

use crate::budget;
use crate::capture::Capture;
use crate::guard::{self, OpenAiStreamGuard, StreamGuard, Verdicts};
use crate::mutation::{self, set};
use crate::selfservice;
use crate::streamcap::{self, StreamCap};
use crate::translator::stream::StreamTranslator;
use crate::translator::{openai, sse::UsageFilter, Pair, ResponseMeta};
use crate::{feedback, log, webhook};

/// What ext_authz established about the request.
#[derive(Debug, Default)]
struct AuthContext {
    key_id: String,
    tenant: String,
    team: String,
    models: Vec<String>,
    path: String,
    method: String,
    request_id: String,
    /// The guardrails policy name (empty: none).
    guardrails: String,
    /// What of the payloads goes into the log event.
    capture: CaptureMode,
    /// The key's token-rate limit per minute.
    tokens_per_minute: Option<u32>,
}

impl AuthContext {
    fn from_metadata(md_ctx: &Metadata) -> Option<Self> {
        let s = md_ctx.filter_metadata.get(md::NAMESPACE)?;
        let text = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => String::new(),
        };
        let models = match s.fields.get(md::MODELS).and_then(|v| v.kind.as_ref()) {
            Some(Kind::ListValue(l)) => l
                .values
                .iter()
                .filter_map(|v| match &v.kind {
                    Some(Kind::StringValue(m)) => Some(m.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let ctx = AuthContext {
            key_id: text(md::KEY_ID),
            tenant: text(md::TENANT),
            team: text(md::TEAM),
            models,
            path: text(md::PATH),
            method: text(md::METHOD),
            request_id: text(md::REQUEST_ID),
            guardrails: text(md::GUARDRAILS),
            capture: CaptureMode::from_label(&text(md::CAPTURE)),
            tokens_per_minute: text(md::TOKENS_PER_MINUTE).parse().ok(),
        };
        (!ctx.key_id.is_empty()).then_some(ctx)
    }

    fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }
}

/// A request that went to a provider.
#[derive(Debug)]
struct Forwarded {
    endpoint: Endpoint,
    model: String,
    provider: Arc<Provider>,
    upstream_model: String,
    stream: bool,
    sent_at: Instant,
    upstream_latency: Option<Duration>,
    status: Option<u16>,
    pair: Pair,
    sse: Option<ResponseStream>,
    usage: Option<Usage>,
    /// The policy judging the response text, when a rule applies to it.
    response_guard: Option<Arc<Engine>>,
    /// The id of a response whose provider gives none (Bedrock), else empty.
    response_id: String,
    /// The provider's error type header (Bedrock's `x-amzn-errortype`).
    error_type: Option<String>,
    /// The stream's output allowance, when it has one.
    cap: Option<StreamCap>,
}

/// How a successful stream is handled.
#[derive(Debug)]
enum ResponseStream {
    /// Same dialect (OpenAI family): read usage, hide the usage chunk nobody asked for.
    Usage(UsageFilter, Option<Box<OpenAiStreamGuard>>),
    /// Anything else: decode and re-encode event by event.
    Translate(Box<StreamTranslator>),
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state of one ext_proc stream.
pub struct Processor {
    config: Arc<Config>,
    metrics: Metrics,
    ctx: Option<AuthContext>,
    forwarded: Option<Forwarded>,
    /// Whether the client sent its own `anthropic-version`.
    client_anthropic_version: bool,
    finished: bool,
    log: Option<LogHandle>,
    started_at: SystemTime,
    first_byte_at: Option<SystemTime>,
    overhead: Duration,
    rejected: Option<Rejected>,
    verdicts: Verdicts,
    /// The request's `content-type`, kept for payload capture.
    request_content_type: String,
    /// Payload capture, when the key's is on (and logging is).
    capture: Option<Capture>,
    /// What the webhook guardrails said about the message being handled ([`Processor::prepare`]).
    webhook: Option<webhook::Decision>,
    /// The spend ledger (`None`: budgets are not enforced by this processor).
    ledger: Option<Arc<dyn Ledger>>,
    /// The end user: from the configured header, else the body.
    end_user: Option<String>,
    /// This request's budget reservation, until it is settled or refunded.
    reservation: Option<Reservation>,
    /// Soft budgets this request went past.
    soft_exceeded: Vec<Line>,
    /// The request's token estimate, once made.
    estimate: Option<budget::Estimate>,
    /// Token-rate state shared with ext_authz (`None`: token limits are not charged).
    limiter: Option<Arc<dyn RateStore>>,
}

/// A request Tollgate answered with an error itself.
#[derive(Debug)]
struct Rejected {
    status: u16,
    class: &'static str,
    model: Option<String>,
}

fn header<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a [u8]> {
    headers.as_ref()?.headers.iter().find_map(|h| {
        (h.key == name).then_some(if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            h.raw_value.as_slice()
        })
    })
}

/// The SigV4 headers of a Bedrock request, signing exactly the `host` (`:authority`), `path`
/// and `body` Envoy sends upstream.
fn bedrock_headers(
    signer: &tollgate_core::sigv4::Signer,
    authority: &str,
    path: &str,
    body: &[u8],
    stream: bool,
    headers: &mut Vec<HeaderValueOption>,
) {
    let signed = signer.sign("POST", authority, path, body, SystemTime::now());
    headers.push(set("authorization", signed.authorization));
    headers.push(set("x-amz-date", signed.amz_date));
    headers.push(set("x-amz-content-sha256", signed.content_sha256));
    if let Some(token) = signer.session_token() {
        headers.push(set("x-amz-security-token", token));
    }
    headers.push(set("content-type", "application/json"));
    headers.push(set(
        "accept",
        if stream {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        },
    ));
}

fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

impl Processor {
    /// A processor for one stream, reading one config snapshot throughout.
    pub fn new(config: Arc<Config>, metrics: Metrics) -> Self {
        Self {
            config,
            metrics,
            ctx: None,
            forwarded: None,
            client_anthropic_version: false,
            finished: false,
            log: None,
            started_at: SystemTime::now(),
            first_byte_at: None,
            overhead: Duration::ZERO,
            rejected: None,
            verdicts: Verdicts::default(),
            request_content_type: String::new(),
            capture: None,
            webhook: None,
            ledger: None,
            end_user: None,
            reservation: None,
            soft_exceeded: Vec::new(),
            estimate: None,
            limiter: None,
        }
    }

    /// Runs the webhook guardrails the next message needs, before [`Processor::handle`]: the
    /// server's stream loop awaits this, so a slow webhook holds only this request. Only a
    /// request body, and a complete 2xx response body that is not a stream, can need any.
    pub async fn prepare(&mut self, msg: &ProcessingRequest) {
        self.webhook = None;
        if self.ctx.is_none() {
            self.ctx = msg
                .metadata_context
                .as_ref()
                .and_then(AuthContext::from_metadata);
        }
        if !matches!(
            msg.request,
            Some(Request::RequestBody(_) | Request::ResponseBody(_))
        ) {
            return;
        }
        let Ok(Some(policy)) = self.policy() else {
            return;
        };
        if !policy.has_webhooks() {
            return;
        }
        let Some(ctx) = &self.ctx else { return };
        let (side, endpoint, model, text) = match &msg.request {
            Some(Request::RequestBody(b)) => {
                let Ok(endpoint) = self.endpoint(&ctx.method, &ctx.path) else {
                    return;
                };
                let Ok(parsed) = openai::parse_request(endpoint, &b.body) else {
                    return;
                };
                let text = webhook::request_text(endpoint, &b.body);
                (Side::Request, endpoint, parsed.model, text)
            }
            Some(Request::ResponseBody(b)) => {
                let Some(fwd) = &self.forwarded else { return };
                let ok = fwd.status.is_some_and(|s| (200..300).contains(&s));
                if !ok || fwd.stream || !b.end_of_stream {
                    return;
                }
                let text = webhook::response_text(fwd.pair.upstream, &b.body);
                (Side::Response, fwd.endpoint, fwd.model.clone(), text)
            }
            _ => return,
        };
        let rules = policy.webhooks(side, endpoint, &model);
        if rules.is_empty() || text.is_empty() {
            return;
        }
        let call = webhook::Call {
            side: side.label(),
            text: &text,
            request_id: &ctx.request_id,
            key_id: &ctx.key_id,
            tenant: &ctx.tenant,
            model: &model,
            endpoint: endpoint.label(),
        };
        let started = Instant::now();
        let outcomes = webhook::Webhooks::shared().judge(&rules, &call).await;
        self.overhead += started.elapsed();
        self.webhook = Some(webhook::decide(outcomes, side));
    }

    /// Charges the request's tokens to the token-rate limits kept in `limiter`.
    pub fn with_limiter(mut self, limiter: Option<Arc<dyn RateStore>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Enforces budgets on `ledger` (shared by every stream of the process).
    pub fn with_ledger(mut self, ledger: Option<Arc<dyn Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Emits this request's `LogEvent` to `log` when it ends (logging is off with `None`).
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.log = log;
        self
    }

    /// Handles one message; `None` when Envoy expects no answer (observability mode).
    pub async fn handle(&mut self, msg: ProcessingRequest) -> Option<ProcessingResponse> {
        if self.ctx.is_none() {
            self.ctx = msg
                .metadata_context
                .as_ref()
                .and_then(AuthContext::from_metadata);
        }
        let started = Instant::now();
        let (phase, response) = match msg.request {
            Some(Request::RequestHeaders(h)) => {
                ("request_headers", self.on_request_headers(&h).await)
            }
            Some(Request::RequestBody(b)) => ("request_body", self.on_request_body(b).await),
            Some(Request::ResponseHeaders(h)) => ("response_headers", self.on_response_headers(&h)),
            Some(Request::ResponseBody(b)) => ("response_body", self.on_response_body(b)),
            Some(Request::RequestTrailers(_)) => (
                "request_trailers",
                ProcessingResponse {
                    response: Some(
                        envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::RequestTrailers(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                },
            ),
            Some(Request::ResponseTrailers(_)) => (
                "response_trailers",
                ProcessingResponse {
                    response: Some(
                        envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response::ResponseTrailers(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                },
            ),
            None => ("unknown", ProcessingResponse::default()),
        };
        self.metrics.observe_phase(phase, started);
        self.overhead += started.elapsed();
        tracing::trace!(phase, "Processed ext_proc message");
        (!msg.observability_mode).then_some(response)
    }

    fn dialect(&self) -> Dialect {
        let path = self.ctx.as_ref().map_or("", |c| c.path.as_str());
        match Dialect::from_path(path) {
            // `/v1/feedback` serves both APIs: Anthropic's SDK always sends its version header.
            Dialect::OpenAi
                if self.client_anthropic_version
                    && Endpoint::from_request("POST", strip_query(path))
                        == Some(Endpoint::Feedback) =>
            {
                Dialect::Anthropic
            }
            d => d,
        }
    }

    /// Answers with an error in the client's dialect.
    fn reject(&mut self, err: &ApiError, model: Option<&str>) -> ProcessingResponse {
        let class = err.class();
        self.rejected = Some(Rejected {
            status: class.status,
            class: class.openai_code.unwrap_or(class.openai_type),
            model: model.map(str::to_owned),
        });
        self.metrics
            .errors
            .get_or_create(&CodeLabel {
                code: class.openai_code.unwrap_or(class.openai_type),
            })
            .inc();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: "error",
                provider: "none".to_owned(),
                model: model.unwrap_or("none").to_owned(),
                status: class.status,
            })
            .inc();
        let request_id = self.ctx.as_ref().map(|c| c.request_id.as_str());
        tracing::debug!(request_id, status = class.status, error = %err, "Rejected request");
        let extra = match err {
            ApiError::BudgetExceeded {
                retry_after_secs: Some(secs),
                ..
            } => vec![set("retry-after", secs.to_string())],
            _ => Vec::new(),
        };
        mutation::immediate_with(
            class.status,
            err.body(self.dialect()),
            "application/json",
            request_id,
            extra,
        )
    }

    fn endpoint(&self, method: &str, path: &str) -> Result<Endpoint, ApiError> {
        let path = strip_query(path);
        Endpoint::from_request(method, path).ok_or_else(|| ApiError::UnknownEndpoint {
            method: method.to_owned(),
            path: path.to_owned(),
        })
    }

    async fn on_request_headers(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        let Some(ctx) = &self.ctx else {
            tracing::error!("No ext_authz metadata on the request: is ext_authz before ext_proc, and its namespace forwarded?");
            return self.reject(&ApiError::Internal, None);
        };
        let path = header(&h.headers, ":path").map_or(ctx.path.clone(), |p| {
            String::from_utf8_lossy(p).into_owned()
        });
        let method = header(&h.headers, ":method").map_or(ctx.method.clone(), |m| {
            String::from_utf8_lossy(m).into_owned()
        });
        self.client_anthropic_version = header(&h.headers, "anthropic-version").is_some();
        if ctx.capture != CaptureMode::Off {
            self.request_content_type = header(&h.headers, "content-type")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
        }
        self.end_user = header(&h.headers, &self.config.budgets.end_user_header)
            .map(|v| String::from_utf8_lossy(v).trim().to_owned())
            .filter(|v| !v.is_empty());
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
            Ok(_) => mutation::request_headers_continue(),
            Err(e) => self.reject(&e, None),
        }
    }

    fn list_models(&mut self) -> ProcessingResponse {
        let Some(ctx) = &self.ctx else {
            return self.reject(&ApiError::Internal, None);
        };
        let ids: Vec<&String> = self
            .config
            .models
            .keys()
            .filter(|m| ctx.allows(m))
            .collect();
        // Gemini clients get Gemini's list shape, Anthropic's SDK (which always sends
        // `anthropic-version`) Anthropic's.
        let body = if self.dialect() == Dialect::Gemini {
            let models: Vec<serde_json::Value> = ids
                .iter()
                .map(|m| serde_json::json!({"name": format!("models/{m}"), "displayName": m,
                    "supportedGenerationMethods": ["generateContent", "streamGenerateContent"]}))
                .collect();
            serde_json::json!({"models": models})
        } else if self.client_anthropic_version {
            let data: Vec<serde_json::Value> = ids
                .iter()
                .map(|m| serde_json::json!({"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}))
                .collect();
            serde_json::json!({"data": data, "has_more": false,
                "first_id": ids.first(), "last_id": ids.last()})
        } else {
            let data: Vec<serde_json::Value> = ids
                .iter()
                .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "tollgate"}))
                .collect();
            serde_json::json!({"object": "list", "data": data})
        }
        .to_string();
        self.answer(Endpoint::Models.label(), body)
    }

    /// A 200 JSON answer Tollgate gives itself.
    fn answer(&self, label: &'static str, body: String) -> ProcessingResponse {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: label,
                provider: "tollgate".to_owned(),
                model: "none".to_owned(),
                status: 200,
            })
            .inc();
        mutation::immediate(
            200,
            body.into_bytes(),
            "application/json",
            self.ctx.as_ref().map(|c| c.request_id.as_str()),
        )
    }

    /// `GET /v1/budget` or `GET /v1/usage` for the calling key.
    async fn self_service(&mut self, what: SelfService) -> ProcessingResponse {
        let (Some(ctx), Some(ledger)) = (&self.ctx, &self.ledger) else {
            return self.reject(&ApiError::Internal, None);
        };
        let now = time::OffsetDateTime::now_utc();
        let report = match what {
            SelfService::Budget => {
                selfservice::budget_report(
                    &self.config.budgets,
                    ledger.as_ref(),
                    &owner(ctx, self.end_user.as_deref()),
                    now,
                )
                .await
            }
            SelfService::Usage => {
                selfservice::usage_report(ledger.as_ref(), &ctx.key_id, now).await
            }
        };
        match report {
            Ok(v) => self.answer(what.label(), v.to_string()),
            Err(e) => {
                tracing::error!(error = %e, "Budget ledger unavailable");
                self.reject(&ApiError::BudgetUnavailable, None)
            }
        }
    }

    async fn on_request_body(&mut self, b: HttpBody) -> ProcessingResponse {
        match self.route(&b).await {
            Ok(resp) => resp,
            Err((err, model)) => self.reject(&err, model.as_deref()),
        }
    }

    async fn route(
        &mut self,
        b: &HttpBody,
    ) -> Result<ProcessingResponse, (ApiError, Option<String>)> {
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
        if endpoint == Endpoint::Models {
            return Ok(self.list_models());
        }
        if endpoint == Endpoint::Feedback {
            return self.record_feedback(&b.body).map_err(|e| (e, None));
        }
        if endpoint == Endpoint::CountTokens {
            return self.count_tokens(&b.body);
        }
        let path = strip_query(&ctx.path);
        let parsed = openai::parse_request_at(endpoint, path, &b.body).map_err(|e| (e, None))?;
        let model = parsed.model.clone();
        // A handle of its own: the target borrowed from it outlives `&mut self` calls below.
        let config = Arc::clone(&self.config);
        let Some(m) = config.models.get(&model) else {
            return Err((ApiError::UnknownModel(model.clone()), Some(model)));
        };
        if !ctx.allows(&model) {
            return Err((ApiError::ModelNotAllowed(model.clone()), Some(model)));
        }
        let policy = self.policy().map_err(|e| (e, Some(model.clone())))?;
        let redacted = match policy
            .as_ref()
            .and_then(|p| p.engine(Side::Request, endpoint, &model))
        {
            Some(engine) => guard::judge_request(
                engine,
                endpoint,
                parsed.object(),
                &mut self.verdicts,
                &self.metrics,
            )
            .map_err(|e| (e, Some(model.clone())))?,
            None => None,
        };
        if let Some(max) = self.config.logging.as_ref().map(|l| l.capture_max_bytes) {
            self.capture = Capture::new(ctx.capture, max).map(|mut c| {
                c.request(
                    &self.request_content_type,
                    redacted.as_deref().unwrap_or(&b.body),
                );
                c
            });
        }
        if let Some(d) = self.webhook.take() {
            self.verdicts.add(Side::Request, &d.verdict, &self.metrics);
            if let Some(e) = d.error {
                return Err((e, Some(model)));
            }
        }
        let parsed = match &redacted {
            Some(body) => openai::parse_request_at(endpoint, path, body)
                .map_err(|e| (e, Some(model.clone())))?,
            None => parsed,
        };
        let response_guard = policy
            .as_ref()
            .and_then(|p| p.engine(Side::Response, endpoint, &model))
            .filter(|_| endpoint != Endpoint::Embeddings)
            .cloned();
        let target = if m.targets.len() == 1 {
            m.targets.first()
        } else {
            m.pick(rand::rng().random_range(0..m.total_weight()))
        }
        .ok_or_else(|| (ApiError::Internal, Some(model.clone())))?;
        let provider = &target.provider;
        let (pair, upstream_endpoint) = Pair::route(endpoint, target.family)
            .map_err(|e| (e.api_error(), Some(model.clone())))?;
        // Vertex AI: the service account's current access token (refreshed in the background).
        let google_token = match &provider.google {
            Some(auth) => match auth.current(SystemTime::now()) {
                Some(t) => Some(t),
                None => {
                    tracing::warn!(provider = %provider.name, "No access token for the provider yet");
                    return Err((ApiError::Upstream(503), Some(model.clone())));
                }
            },
            None => None,
        };
        if self.end_user.is_none() {
            self.end_user = budget::end_user_in_body(parsed.object());
        }
        let (body, strip_usage_chunk, include_usage) = if !pair.is_openai_passthrough() {
            let (body, include_usage) = pair
                .request(
                    parsed.object(),
                    &target.upstream_model,
                    parsed.stream,
                    b.body.len(),
                )
                .map_err(|e| (e.api_error(), Some(model.clone())))?;
            (body, false, include_usage)
        } else {
            // A budgeted request that sets no output limit gets the one it is reserved for, so
            // the provider never generates (and bills) past its reservation.
            let limit = self.config.budgets.default_max_tokens.to_string();
            let field = match (endpoint, provider.kind) {
                (Endpoint::ChatCompletions, ProviderKind::Openai | ProviderKind::AzureOpenai) => {
                    "max_completion_tokens"
                }
                _ => "max_tokens",
            };
            let extra: &[(&str, &str)] = if self.budgeted(&target.upstream_model)
                && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
                && !budget::has_own_limit(parsed.object())
            {
                &[(field, limit.as_str())]
            } else {
                &[]
            };
            let r = parsed
                .rewrite_with(&target.upstream_model, b.body.len(), extra)
                .map_err(|e| (e, Some(model.clone())))?;
            (r.body, r.strip_usage_chunk, false)
        };

        let body = if provider.vertex.is_some() && pair.upstream == ApiFamily::Anthropic {
            crate::translator::codec::anthropic::for_vertex(&body)
        } else {
            body
        };
        let upstream_path = target.path_for(upstream_endpoint, parsed.stream);
        let mut headers = Vec::with_capacity(7 + provider.headers.len());
        headers.push(set(":path", upstream_path));
        headers.push(set(":authority", provider.authority.as_str()));
        headers.push(set(md::ROUTE_HEADER, provider.cluster.as_str()));
        headers.push(set("content-length", body.len().to_string()));
        if let Some((name, secret)) = &provider.credential_header {
            headers.push(set(name, secret.expose()));
        }
        if let Some(t) = &google_token {
            headers.push(set("authorization", t.header.expose()));
        }
        if let Some(signer) = &provider.aws {
            bedrock_headers(
                signer,
                &provider.authority,
                upstream_path,
                &body,
                parsed.stream,
                &mut headers,
            );
        }
        for (k, v) in &provider.headers {
            headers.push(set(k, v.as_str()));
        }
        // The response is read (usage) and may be rewritten (translation): it must come back
        // uncompressed. Envoy can still compress towards the client.
        let mut remove = vec![
            "accept-encoding".to_owned(),
            self.config.budgets.end_user_header.clone(),
        ];
        match pair.upstream {
            ApiFamily::Anthropic
                if !self.client_anthropic_version
                    && !provider
                        .headers
                        .iter()
                        .any(|(k, _)| k == "anthropic-version") =>
            {
                headers.push(set("anthropic-version", ANTHROPIC_VERSION));
            }
            ApiFamily::OpenAi | ApiFamily::Gemini | ApiFamily::Bedrock
                if pair.client == ApiFamily::Anthropic =>
            {
                remove.extend(["anthropic-version".to_owned(), "anthropic-beta".to_owned()]);
            }
            _ => {}
        }
        // Last: nothing after the reservation can fail, so a refusal here is the only way out.
        let reservation = self
            .reserve(endpoint, provider, &target.upstream_model, &parsed)
            .await
            .map_err(|e| (e, Some(model.clone())))?;
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        self.reservation = reservation;
        tracing::debug!(request_id = %ctx.request_id, key_id = %ctx.key_id, model = %model, provider = %provider.name, "Routing request");
        // Bedrock names neither its responses nor the model: Tollgate's request id does.
        let response_id = match (pair.upstream, pair.client) {
            (ApiFamily::Bedrock, ApiFamily::Anthropic) => format!("msg_{}", ctx.request_id),
            (ApiFamily::Bedrock, _) => format!("chatcmpl-{}", ctx.request_id),
            _ => String::new(),
        };
        let client_usage = if pair.is_openai_passthrough() {
            !strip_usage_chunk
        } else {
            include_usage
        };
        let cap = if parsed.stream {
            self.stream_cap(
                pair.client,
                endpoint,
                provider,
                &target.upstream_model,
                &parsed,
                client_usage,
            )
        } else {
            None
        };
        let sse = parsed.stream.then(|| {
            let engine = response_guard.as_ref().map(Arc::clone);
            if !pair.is_openai_passthrough() {
                ResponseStream::Translate(Box::new(
                    pair.stream_guarded(include_usage, unix_now(), engine.map(StreamGuard::new))
                        .with_identity(&response_id, &target.upstream_model),
                ))
            } else {
                ResponseStream::Usage(
                    UsageFilter::new(strip_usage_chunk),
                    engine.map(|e| Box::new(OpenAiStreamGuard::new(e))),
                )
            }
        });
        self.forwarded = Some(Forwarded {
            endpoint,
            model,
            provider: Arc::clone(provider),
            upstream_model: target.upstream_model.clone(),
            stream: parsed.stream,
            sent_at: Instant::now(),
            upstream_latency: None,
            status: None,
            pair,
            sse,
            usage: None,
            response_guard,
            response_id,
            error_type: None,
            cap,
        });
        Ok(mutation::request_body(mutation::common(
            headers,
            remove,
            Some(body),
            true,
        )))
    }

    /// `POST /v1/feedback`: checks the token (signature, expiry, same key) and the body,
    /// hands the feedback to the log queue and answers 200 itself.
    /// `POST /v1/messages/count_tokens`: the prompt's tokens as the model's provider would
    /// bill them, counted here (no upstream call): the model's own tokenizer for OpenAI and
    /// Azure models, one token per 3 bytes of text otherwise, plus 4 per message and 3 per
    /// request (the estimate budgets reserve with).
    fn count_tokens(
        &mut self,
        body: &[u8],
    ) -> Result<ProcessingResponse, (ApiError, Option<String>)> {
        let obj = openai::parse_object(body).map_err(|e| (e, None))?;
        let model: String = obj
            .get("model")
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .ok_or_else(|| {
                (
                    ApiError::InvalidField {
                        param: "model",
                        message: "`model` is required".to_owned(),
                    },
                    None,
                )
            })?;
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        let Some(target) = self
            .config
            .models
            .get(&model)
            .and_then(|m| m.targets.first())
        else {
            return Err((ApiError::UnknownModel(model.clone()), Some(model)));
        };
        if !ctx.allows(&model) {
            return Err((ApiError::ModelNotAllowed(model.clone()), Some(model)));
        }
        let counter = budget::Counter::for_target(target.provider.kind, &target.upstream_model);
        let tokens = budget::prompt_tokens(&obj, counter);
        Ok(self.answer(
            Endpoint::CountTokens.label(),
            serde_json::json!({ "input_tokens": tokens }).to_string(),
        ))
    }

    fn record_feedback(&mut self, body: &[u8]) -> Result<ProcessingResponse, ApiError> {
        let (Some(ctx), Some(settings), Some(log)) = (&self.ctx, &self.config.feedback, &self.log)
        else {
            return Err(ApiError::Internal);
        };
        let given = feedback::parse(body, settings.max_comment_bytes)?;
        let now = SystemTime::now();
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let claims = tollgate_core::feedback::verify(
            settings.secret.expose().as_bytes(),
            &given.token,
            unix,
        )
        .map_err(|e| ApiError::InvalidFeedbackToken(e.to_string()))?;
        if claims.key_id != ctx.key_id {
            return Err(ApiError::InvalidFeedbackToken(
                "it was issued to another API key".to_owned(),
            ));
        }
        let rated = claims.request_id.clone();
        log.emit(log::feedback_event(
            &ctx.request_id,
            &claims,
            given.into_proto(rated.clone()),
            now,
        ));
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: Endpoint::Feedback.label(),
                provider: "tollgate".to_owned(),
                model: "none".to_owned(),
                status: 200,
            })
            .inc();
        tracing::debug!(request_id = %ctx.request_id, rated = %rated, key_id = %ctx.key_id, "Recorded feedback");
        let answer = serde_json::json!({
            "object": "feedback",
            "id": ctx.request_id,
            "request_id": rated,
            "status": "recorded",
        });
        Ok(mutation::immediate(
            200,
            answer.to_string().into_bytes(),
            "application/json",
            Some(&ctx.request_id),
        ))
    }

    /// The policy of the request's key, from this config snapshot.
    fn policy(&self) -> Result<Option<Arc<Policy>>, ApiError> {
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

    fn on_response_headers(&mut self, h: &HttpHeaders) -> ProcessingResponse {
        let Some(fwd) = &mut self.forwarded else {
            // A reply that never came from a provider through us (a local reply): leave it.
            return mutation::response_headers(
                mutation::common(vec![], vec![], None, false),
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
        if header(&h.headers, "x-envoy-upstream-service-time").is_some() {
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
        if bedrock && !ok {
            fwd.error_type = header(&h.headers, "x-amzn-errortype")
                .map(|t| String::from_utf8_lossy(t).into_owned());
        }
        let (mode, remove) = if ok && fwd.stream {
            (BodySendMode::Streamed, vec!["content-length".to_owned()])
        } else {
            (BodySendMode::Buffered, Vec::new())
        };
        let mut headers = Vec::new();
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
            self.finish();
        }
        mutation::response_headers(mutation::common(headers, remove, None, false), mode)
    }

    fn on_response_body(&mut self, b: HttpBody) -> ProcessingResponse {
        let Some(fwd) = &mut self.forwarded else {
            return mutation::response_body(Default::default());
        };
        let status = fwd.status.unwrap_or(0);
        let ok = (200..300).contains(&status);
        if self.first_byte_at.is_none() && !b.body.is_empty() {
            self.first_byte_at = Some(SystemTime::now());
        }
        let mut common = Default::default();
        match &mut fwd.sse {
            Some(ResponseStream::Usage(filter, guard)) if ok => {
                let out = filter.push(&b.body, b.end_of_stream);
                let out = match guard {
                    Some(g) => Some(g.push(out.as_deref().unwrap_or(&b.body), b.end_of_stream)),
                    None => out,
                };
                let out = match &mut fwd.cap {
                    Some(cap) => Some(cap.push(out.as_deref().unwrap_or(&b.body), b.end_of_stream)),
                    None => out,
                };
                if let Some(c) = &mut self.capture {
                    c.response_chunk(out.as_deref().unwrap_or(&b.body), b.end_of_stream);
                }
                if let Some(out) = out {
                    common = mutation::common(vec![], vec![], Some(out), false);
                }
                fwd.usage = filter.usage();
            }
            Some(ResponseStream::Translate(t)) if ok => {
                let mut out = t.push(&b.body, b.end_of_stream);
                if let Some(cap) = &mut fwd.cap {
                    out = cap.push(&out, b.end_of_stream);
                }
                if let Some(c) = &mut self.capture {
                    c.response_chunk(&out, b.end_of_stream);
                }
                common = mutation::common(vec![], vec![], Some(out), false);
                fwd.usage = t.usage();
            }
            _ => {
                let meta = ResponseMeta {
                    created: unix_now(),
                    id: &fwd.response_id,
                    model: &fwd.upstream_model,
                    error_type: fwd.error_type.as_deref(),
                };
                let mut done = fwd.pair.complete_with(status, &b.body, &meta);
                if ok {
                    fwd.usage = done.usage;
                }
                if let Some(d) = self.webhook.take() {
                    self.verdicts.add(Side::Response, &d.verdict, &self.metrics);
                    if let Some(err) = d.error {
                        let client = fwd.pair.client;
                        return self.refuse_response(err, client, b.end_of_stream);
                    }
                }
                if let (true, Some(engine)) = (ok, fwd.response_guard.clone()) {
                    let client = fwd.pair.client;
                    let body = done.body.as_deref().unwrap_or(&b.body);
                    match guard::judge_response(&engine, client, body) {
                        Some((verdict, redacted)) => {
                            self.verdicts.add(Side::Response, &verdict, &self.metrics);
                            if let Some(rule) = verdict.blocked_by {
                                return self.block_response(rule, client, b.end_of_stream);
                            }
                            if redacted.is_some() {
                                done.body = redacted;
                            }
                        }
                        None => tracing::debug!(
                            "A response body that is not a JSON object went through unjudged"
                        ),
                    }
                }
                if let Some(c) = &mut self.capture {
                    c.response_body(done.body.as_deref().unwrap_or(&b.body));
                }
                if let Some(body) = done.body {
                    common = mutation::common(
                        vec![
                            set("content-type", "application/json"),
                            set("content-length", body.len().to_string()),
                        ],
                        vec![],
                        Some(body),
                        false,
                    );
                }
            }
        }
        if b.end_of_stream {
            self.finish();
        }
        mutation::response_body(common)
    }

    /// Replaces a complete response that a guardrail blocked with an error in the client's
    /// dialect.
    fn block_response(&mut self, rule: String, client: ApiFamily, end: bool) -> ProcessingResponse {
        let err = ApiError::GuardrailBlocked {
            rule,
            side: Side::Response,
        };
        self.refuse_response(err, client, end)
    }

    /// Replaces a complete response with `err` in the client's dialect.
    fn refuse_response(
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
        mutation::immediate(
            err.status(),
            err.body(dialect),
            "application/json",
            request_id.as_deref(),
        )
    }

    /// Marks the stream failed: after an error response Envoy sends nothing more on it.
    pub fn abandon(&mut self) {
        self.finish();
    }

    /// Records the outcome of a forwarded request, once.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let stream_verdict = match self.forwarded.as_ref().and_then(|f| f.sse.as_ref()) {
            Some(ResponseStream::Translate(t)) => t.guard().map(StreamGuard::verdict),
            Some(ResponseStream::Usage(_, g)) => g.as_deref().map(OpenAiStreamGuard::verdict),
            None => None,
        };
        if let Some(v) = stream_verdict {
            self.verdicts.add(Side::Response, &v, &self.metrics);
        }
        self.settle();
        self.charge_tokens();
        self.emit_log();
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
            for (kind, n) in [
                ("input", u.input_tokens),
                ("output", u.output_tokens),
                ("cache_read", u.cache_read_tokens),
                ("cache_write", u.cache_write_tokens),
                ("reasoning", u.reasoning_tokens),
            ] {
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
}

impl Processor {
    /// Hands the request's `LogEvent` to the log queue (never blocks), when logging is on.
    fn emit_log(&mut self) {
        let (Some(handle), Some(ctx)) = (&self.log, &self.ctx) else {
            return;
        };
        let endpoint = self
            .forwarded
            .as_ref()
            .map(|f| f.endpoint)
            .or_else(|| Endpoint::from_request(&ctx.method, strip_query(&ctx.path)))
            .map_or("unknown", Endpoint::label);
        let mut facts = log::Facts {
            request_id: &ctx.request_id,
            key_id: &ctx.key_id,
            tenant: &ctx.tenant,
            team: &ctx.team,
            end_user: self.end_user.as_deref().unwrap_or(""),
            dialect: self.dialect(),
            endpoint,
            requested_model: "",
            provider: "",
            upstream_model: "",
            stream: false,
            status: 0,
            error_class: "",
            usage: None,
            started: self.started_at,
            first_byte: self.first_byte_at,
            ended: SystemTime::now(),
            overhead: self.overhead,
            upstream_latency: None,
            cost: None,
            guardrails: &self.verdicts,
            payload: self.capture.take().map(Capture::finish),
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
                } else if fwd.cap.as_ref().is_some_and(StreamCap::was_cut) {
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
            // Answered by Tollgate without an error (`GET /v1/models`): not an LLM call.
            (None, None) => return,
        }
        handle.emit(log::event(&facts));
    }
}

/// Response header naming the soft budgets a request went past.
pub const BUDGET_WARNING_HEADER: &str = "x-tollgate-budget-warning";

impl Processor {
    /// Reserves the request's estimated cost on every budget that applies to it: `Ok(None)`
    /// when none does (or the model has no price), a 429 when a hard one cannot take it.
    async fn reserve(
        &mut self,
        endpoint: Endpoint,
        provider: &Provider,
        upstream_model: &str,
        parsed: &openai::ParsedRequest<'_>,
    ) -> Result<Option<Reservation>, ApiError> {
        let (Some(ledger), Some(ctx)) = (&self.ledger, &self.ctx) else {
            return Ok(None);
        };
        let now = time::OffsetDateTime::now_utc();
        let lines = budgets::lines(
            &self.config.budgets.limits,
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

    /// Whether a reservation will be made for a request to `upstream_model`: a ledger, a
    /// budget that applies, and a price.
    fn budgeted(&self, upstream_model: &str) -> bool {
        let (Some(_), Some(ctx)) = (&self.ledger, &self.ctx) else {
            return false;
        };
        self.config.prices.get(upstream_model).is_some()
            && !budgets::lines(
                &self.config.budgets.limits,
                &owner(ctx, self.end_user.as_deref()),
                time::OffsetDateTime::now_utc(),
            )
            .is_empty()
    }

    fn estimate(
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
    fn stream_cap(
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

    /// Charges the tokens the request used to its key's and tenant's token-rate limits.
    fn charge_tokens(&self) {
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
    fn settle(&mut self) {
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

/// Self-service answers.
#[derive(Debug, Clone, Copy)]
enum SelfService {
    /// `GET /v1/budget`.
    Budget,
    /// `GET /v1/usage`.
    Usage,
}

impl SelfService {
    fn label(self) -> &'static str {
        match self {
            SelfService::Budget => "budget",
            SelfService::Usage => "usage",
        }
    }
}

/// The owner of a request, for its budgets.
fn owner<'a>(ctx: &'a AuthContext, end_user: Option<&'a str>) -> Owner<'a> {
    Owner {
        key: &ctx.key_id,
        team: Some(ctx.team.as_str()),
        tenant: Some(ctx.tenant.as_str()),
        end_user,
    }
}

#[cfg(test)]
mod tests;

impl Drop for Processor {
    fn drop(&mut self) {
        // A stream that ends before the response did (client gone, upstream reset) still counts.
        self.finish();
    }
}
