//! The ext_authz service (Envoy `envoy.service.auth.v3.Authorization`, gRPC): resolves the
//! client's virtual key to its bundle, refuses missing, unknown, expired and disabled keys in
//! the client's API dialect, and hands the bundle to ext_proc as dynamic metadata. A refused
//! request never reaches ext_proc, so its `LogEvent` is emitted here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc;
use time::OffsetDateTime;
use tollgate_core::budget::{self, Ledger, Owner};
use tollgate_core::config::{looks_like_jwt, Capture, Feedback, KeyBundle};
use tollgate_core::feedback;
use tollgate_core::metadata as md;
use tollgate_core::metrics::{CodeLabel, DecisionLabel, Metrics};
use tollgate_core::ratelimit::{self, Decision, RateLimiter, RateStore};
use tollgate_core::{keys, ApiError, Dialect, Endpoint, SharedConfig};
use tollgate_logger::LogHandle;
use tollgate_proto::logger::v1::LogEvent;

pub mod control_plane;
mod cors;
use control_plane::ControlPlaneClient;

/// Headers a client key may arrive in; all of them are removed before the request goes on.
pub const KEY_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

/// gRPC status codes used in check responses.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// The key gate: resolves a request's key to its bundle and applies the coarse gates (budget
/// precheck, request- and token-rate limits). The ext_authz service asks it for every
/// `CheckRequest`; ext_proc asks the same gate at the request-headers phase when Envoy runs no
/// ext_authz filter (one gRPC exchange fewer per request). Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Gate {
    config: SharedConfig,
    metrics: Metrics,
    log: Option<LogHandle>,
    /// Request- and token-rate state per key and tenant; survives config reloads; shared with
    /// ext_proc, which charges tokens.
    limiter: Arc<dyn RateStore>,
    /// The spend ledger for the budget precheck (`None`: no precheck).
    ledger: Option<Arc<dyn Ledger>>,
    /// Where keys the file does not list are resolved (`None`: nowhere, they are unknown).
    control_plane: Option<Arc<ControlPlaneClient>>,
    /// Verifies self-contained JWT client keys (`jwt_keys`); holds the fetched JWKS sets.
    jwt: Arc<jwt::JwtVerifier>,
}

/// A request the gate let through.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The key's bundle.
    pub bundle: Arc<KeyBundle>,
    /// The request-rate decision, when the key or its tenant has a request-rate limit.
    pub rate: Option<Decision>,
    /// The token-rate decision, when the key or its tenant has a token-rate limit.
    pub tokens: Option<Decision>,
    /// The signed token naming this request for `POST /v1/feedback` (feedback on).
    pub feedback_token: Option<String>,
}

impl Admitted {
    /// The headers an admitted request's response carries: its request id, OpenAI's
    /// `x-ratelimit-*` headers for the limits that apply, and the feedback token.
    pub fn response_headers(&self, request_id: &str) -> Vec<(String, String)> {
        let mut out = vec![(md::REQUEST_ID_HEADER.to_owned(), request_id.to_owned())];
        for (d, unit) in [(&self.rate, "requests"), (&self.tokens, "tokens")] {
            if let Some(d) = d {
                out.extend(rate_headers(d, unit));
            }
        }
        if let Some(t) = &self.feedback_token {
            out.push((feedback::TOKEN_HEADER.to_owned(), t.clone()));
        }
        out
    }
}

/// A request the gate refused: why, and the state of the key's rate limits where they were
/// asked (a limited key's refusal carries them like every other answer).
#[derive(Debug, Clone)]
pub struct Denied {
    /// The refusal.
    pub error: ApiError,
    /// The request-rate decision (the refusing one for a request-rate refusal).
    pub rate: Option<Decision>,
    /// The token-rate decision (the refusing one for a token-rate refusal).
    pub tokens: Option<Decision>,
}

impl From<ApiError> for Denied {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            rate: None,
            tokens: None,
        }
    }
}

impl Denied {
    /// The refusal's headers: [`refusal_headers`], then OpenAI's `x-ratelimit-*` headers of
    /// every limit that was asked: a refusing limit says 0 remaining and when it is whole
    /// again (`x-ratelimit-reset-*`), as every other response of a limited key does.
    pub fn headers(&self, request_id: &str) -> Vec<(String, String)> {
        let mut headers = refusal_headers(&self.error, request_id);
        for (d, unit) in [(&self.rate, "requests"), (&self.tokens, "tokens")] {
            if let Some(d) = d {
                for (k, v) in rate_headers(d, unit) {
                    headers.retain(|(h, _)| *h != k);
                    headers.push((k, v));
                }
            }
        }
        headers
    }
}

/// The headers of a refusal: content type, request id, and `retry-after` plus the
/// `x-ratelimit-*` headers a rate or budget refusal tells the client.
pub fn refusal_headers(err: &ApiError, request_id: &str) -> Vec<(String, String)> {
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        (md::REQUEST_ID_HEADER.to_owned(), request_id.to_owned()),
    ];
    if let ApiError::BudgetExceeded {
        retry_after_secs: Some(secs),
        ..
    } = err
    {
        headers.push(("retry-after".to_owned(), secs.to_string()));
    }
    if let ApiError::RateLimited {
        unit,
        limit,
        retry_after_secs,
        ..
    } = err
    {
        headers.push(("retry-after".to_owned(), retry_after_secs.to_string()));
        headers.push((format!("x-ratelimit-limit-{unit}"), limit.to_string()));
        headers.push((format!("x-ratelimit-remaining-{unit}"), "0".to_owned()));
    }
    headers
}

impl Gate {
    /// A gate reading the live config, with in-memory rate state and no budget precheck.
    pub fn new(config: SharedConfig, metrics: Metrics) -> Self {
        Self {
            config,
            metrics,
            log: None,
            limiter: Arc::new(RateLimiter::new()),
            ledger: None,
            control_plane: None,
            jwt: Arc::new(jwt::JwtVerifier::new()),
        }
    }

    /// The JWT verifier, whose JWKS URLs `serve` keeps fresh.
    pub fn jwt(&self) -> &Arc<jwt::JwtVerifier> {
        &self.jwt
    }

    /// Resolves keys the config file does not list through `client` (file keys win).
    pub fn with_control_plane(mut self, client: Option<Arc<ControlPlaneClient>>) -> Self {
        self.control_plane = client;
        self
    }

    /// The key with this hash: a file key, else the control plane's (when one is configured).
    /// `Ok(None)`: unknown; `Err`: the control plane could not be asked.
    async fn lookup(
        &self,
        config: &tollgate_core::Config,
        hash: keys::KeyHash,
    ) -> Result<Option<Arc<KeyBundle>>, ApiError> {
        if let Some(b) = config.key(&hash) {
            return Ok(Some(Arc::clone(b)));
        }
        let Some(cp) = &self.control_plane else {
            return Ok(None);
        };
        cp.resolve(hash)
            .await
            .map_err(|_| ApiError::KeyUnverifiable)
    }

    /// Keeps rate-limit state in `limiter` (shared with ext_proc, which charges tokens).
    pub fn with_limiter(mut self, limiter: Arc<dyn RateStore>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Refuses requests of scopes whose hard budget is already used up, before ext_proc
    /// reserves on the same ledger.
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Emits a `LogEvent` for every refused request to `log` (logging is off with `None`).
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.log = log;
        self
    }

    /// Decides one request from its headers (`header` looks one up by its lower-case name),
    /// path and method: `Ok` with the key's bundle and limits, or the refusal, which is
    /// counted and logged here. Pure apart from the clock, the config snapshot, the rate
    /// store, the ledger and the log queue.
    pub async fn admit<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
        path: &str,
        method: &str,
        request_id: &str,
        now: OffsetDateTime,
    ) -> Result<Admitted, Denied> {
        // An owned snapshot: it is held across the ledger and rate-store calls.
        let config = self.config.load_full();
        // A key header first, else Google's `?key=` (removed from the path by the caller).
        let in_query = query_key(path);
        let key = presented_key_in(&header).or(in_query.as_deref());
        let resolved = match key {
            // A JWT client key is verified with no lookup (jwt.rs); any other key by its hash.
            Some(key) if !config.jwt_keys.issuers.is_empty() && looks_like_jwt(key) => {
                self.jwt.verify(&config, key).map(Some).map_err(|refusal| {
                    tracing::info!(
                        request_id,
                        reason = refusal.label(),
                        "Refused a JWT client key"
                    );
                    refusal.api_error()
                })
            }
            Some(key) => self.lookup(&config, keys::hash_key(key)).await,
            None => Ok(None),
        };
        let bundle = resolved.as_ref().ok().and_then(Option::as_ref);
        let decision = match (key, &resolved) {
            (None, _) => Err(ApiError::MissingKey),
            (Some(_), Err(e)) => Err(e.clone()),
            (Some(_), Ok(None)) => Err(ApiError::InvalidKey),
            (Some(_), Ok(Some(b))) if b.disabled => Err(ApiError::DisabledKey),
            (Some(_), Ok(Some(b))) if b.expires_at.is_some_and(|t| t <= now) => {
                Err(ApiError::ExpiredKey)
            }
            (Some(_), Ok(Some(b))) => Ok(b),
        };
        // Budgets already used up: refused here, before the rate limits count the request
        // and without reading the body.
        let decision = match decision {
            Ok(b) => {
                let end_user = header(&config.budgets.end_user_header)
                    .map(str::trim)
                    .filter(|v| !v.is_empty());
                self.precheck(&config, b, end_user, now).await.map(|()| b)
            }
            Err(e) => Err(e),
        };
        let now_nanos = u64::try_from(now.unix_timestamp_nanos()).unwrap_or(0);
        let decision = match decision {
            Ok(b) => self.rate_limits(&config, b, now_nanos).await,
            Err(e) => Err(Denied::from(e)),
        };
        match decision {
            Ok((bundle, rate, tokens)) => {
                self.metrics
                    .authz
                    .get_or_create(&DecisionLabel { decision: "allow" })
                    .inc();
                let feedback_token = config
                    .feedback
                    .as_ref()
                    .map(|f| feedback_token(f, bundle, request_id, now));
                Ok(Admitted {
                    bundle: Arc::clone(bundle),
                    rate,
                    tokens,
                    feedback_token,
                })
            }
            Err(denied) => {
                let err = &denied.error;
                let label = err.class().code;
                self.metrics
                    .authz
                    .get_or_create(&DecisionLabel { decision: label })
                    .inc();
                self.metrics
                    .errors
                    .get_or_create(&CodeLabel { code: label })
                    .inc();
                tracing::debug!(request_id, decision = label, "Denied request");
                if let Some(log) = &self.log {
                    log.emit(denied_event(
                        request_id,
                        bundle.map(|b| b.as_ref()),
                        path,
                        method,
                        err,
                        now,
                    ));
                }
                Err(denied)
            }
        }
    }
}

/// The ext_authz gRPC service: asks the [`Gate`] and answers in ext_authz's terms.
pub struct AuthzService {
    gate: Gate,
}

impl AuthzService {
    /// A service reading the live config.
    pub fn new(config: SharedConfig, metrics: Metrics) -> Self {
        Self {
            gate: Gate::new(config, metrics),
        }
    }

    /// Keeps rate-limit state in `limiter` (shared with ext_proc, which charges tokens).
    pub fn with_limiter(mut self, limiter: Arc<dyn RateStore>) -> Self {
        self.gate = self.gate.with_limiter(limiter);
        self
    }

    /// Refuses requests of scopes whose hard budget is already used up, before they reach
    /// ext_proc (which reserves on the same ledger).
    pub fn with_ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.gate = self.gate.with_ledger(ledger);
        self
    }

    /// Emits a `LogEvent` for every refused request to `log` (logging is off with `None`).
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.gate = self.gate.with_log(log);
        self
    }

    /// Resolves keys the config file does not list through the control plane.
    pub fn with_control_plane(mut self, client: Option<Arc<ControlPlaneClient>>) -> Self {
        self.gate = self.gate.with_control_plane(client);
        self
    }

    /// The gate this service asks, to share with ext_proc.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Decides one check request. Pure apart from the clock, the config snapshot and the log
    /// queue (a refusal is recorded there).
    pub async fn decide(&self, req: &CheckRequest, now: OffsetDateTime) -> CheckResponse {
        let empty = HashMap::new();
        let http = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let headers = http.map(|h| &h.headers).unwrap_or(&empty);
        let path = http.map(|h| h.path.as_str()).unwrap_or("/");
        let method = http.map(|h| h.method.as_str()).unwrap_or("");
        let request_id = keys::new_request_id();
        let lookup = |name: &str| headers.get(name).map(String::as_str);
        // A CORS preflight carries no key: ext_proc answers it (`cors.rs`).
        if cors::is_preflight(method, lookup) {
            return cors::pass_preflight();
        }
        match self
            .gate
            .admit(lookup, path, method, &request_id, now)
            .await
        {
            Ok(admitted) => allow(&admitted, path, method, &request_id),
            Err(denied) => {
                let mut resp = deny(&denied, Dialect::from_path(path), &request_id);
                cors::add_refusal_headers(&mut resp, &self.gate.config.load(), lookup("origin"));
                resp
            }
        }
    }
}

impl Gate {
    /// Refuses a key whose hard budget (or its team's, tenant's, or the end user's named in
    /// the header) is already used up. A ledger that cannot answer lets the request on to
    /// ext_proc, whose reservation decides (and fails as configured).
    async fn precheck(
        &self,
        config: &tollgate_core::Config,
        b: &KeyBundle,
        end_user: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), ApiError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        let owner = Owner {
            key: &b.id,
            team: b.team.as_deref(),
            tenant: b.tenant.as_deref(),
            end_user,
        };
        let lines = budget::lines_with(&config.budgets.limits, &b.extra_budgets, &owner, now);
        match budget::precheck(ledger.as_ref(), &lines).await {
            Ok(Some(i)) => {
                self.metrics.budget("prechecked_refused");
                let line = lines.get(i);
                Err(ApiError::BudgetExceeded {
                    scope: line.map_or("key", |l| l.scope.label()),
                    period: line.map_or("total", |l| l.period.label()),
                    retry_after_secs: line
                        .and_then(|l| l.ends)
                        .map(|e| (e - now).whole_seconds().max(1).unsigned_abs()),
                })
            }
            Ok(None) | Err(_) => Ok(()),
        }
    }
}

impl Gate {
    /// The key's and its tenant's request-rate limits (counted only when all admit), then
    /// their token-rate limits (room is asked; ext_proc charges the real tokens at the end).
    /// A refusal carries the decisions of both kinds (the token limits are only looked at
    /// after a request-rate refusal) for its headers.
    async fn rate_limits<'b>(
        &self,
        config: &tollgate_core::Config,
        b: &'b Arc<KeyBundle>,
        now_nanos: u64,
    ) -> Result<(&'b Arc<KeyBundle>, Option<Decision>, Option<Decision>), Denied> {
        let refusal = |unit, scope, d: Decision| ApiError::RateLimited {
            unit,
            scope,
            limit: d.limit,
            retry_after_secs: d.retry_after.as_nanos().div_ceil(1_000_000_000) as u64,
        };
        let mut requests: Vec<(String, u32, &'static str)> = Vec::with_capacity(2);
        if let Some(n) = b.requests_per_minute {
            requests.push((format!("key:{}", b.id), n, "key"));
        }
        if let Some((t, n)) = b.tenant.as_ref().and_then(|t| {
            config
                .tenant_requests_per_minute
                .get(t)
                .copied()
                .or(b.tenant_requests_per_minute)
                .map(|n| (t, n))
        }) {
            requests.push((format!("tenant:{t}"), n, "tenant"));
        }
        let tokens = ratelimit::token_limits(
            &b.id,
            b.tokens_per_minute,
            b.tenant.as_deref(),
            &config.tenant_tokens_per_minute,
            b.tenant_tokens_per_minute,
        );
        let request_pairs: Vec<(&str, u32)> =
            requests.iter().map(|(s, n, _)| (s.as_str(), *n)).collect();
        let token_pairs: Vec<(&str, u32)> =
            tokens.iter().map(|(s, n, _)| (s.as_str(), *n)).collect();
        let scope =
            |limits: &[(String, u32, &'static str)], i: usize| limits.get(i).map_or("key", |l| l.2);
        let mut rate = None;
        if !requests.is_empty() {
            match self.limiter.check_all(&request_pairs, now_nanos).await {
                Ok(d) => rate = Some(d),
                Err((i, d)) => {
                    // Looked at, not charged: the refusal reports the token limits too.
                    let tokens = if token_pairs.is_empty() {
                        None
                    } else {
                        let looked = self.limiter.check_tokens(&token_pairs, now_nanos).await;
                        Some(looked.unwrap_or_else(|(_, d)| d))
                    };
                    return Err(Denied {
                        error: refusal("requests", scope(&requests, i), d),
                        rate: Some(d),
                        tokens,
                    });
                }
            }
        }
        let mut answer_tokens = None;
        if !tokens.is_empty() {
            match self.limiter.check_tokens(&token_pairs, now_nanos).await {
                Ok(d) => answer_tokens = Some(d),
                Err((i, d)) => {
                    return Err(Denied {
                        error: refusal("tokens", scope(&tokens, i), d),
                        rate,
                        tokens: Some(d),
                    });
                }
            }
        }
        Ok((b, rate, answer_tokens))
    }
}

/// The `LogEvent` of a request refused here, with the key's owner when the key is known.
pub fn denied_event(
    request_id: &str,
    bundle: Option<&KeyBundle>,
    path: &str,
    method: &str,
    err: &ApiError,
    now: OffsetDateTime,
) -> LogEvent {
    let class = err.class();
    let nanos = i64::try_from(now.unix_timestamp_nanos()).unwrap_or(0);
    let bare = path.split_once('?').map_or(path, |(p, _)| p);
    LogEvent {
        request_id: request_id.to_owned(),
        start_time_unix_nanos: nanos,
        end_time_unix_nanos: nanos,
        key_id: bundle.map(|b| b.id.clone()).unwrap_or_default(),
        tenant: bundle.and_then(|b| b.tenant.clone()).unwrap_or_default(),
        team: bundle.and_then(|b| b.team.clone()).unwrap_or_default(),
        client_api: Dialect::from_path(path).label().to_owned(),
        endpoint: Endpoint::from_request(method, bare)
            .map_or("unknown", Endpoint::label)
            .to_owned(),
        http_status: u32::from(class.status),
        error_class: class.code.to_owned(),
        ..Default::default()
    }
}

/// The query parameter Google's REST examples carry the API key in (`?key=…`).
pub const KEY_QUERY_PARAMETER: &str = "key";

/// The key in `path`'s query (`?key=…`, as Gemini clients may send it), percent-decoded.
pub fn query_key(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    let (_, query) = path.split_once('?')?;
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(KEY_QUERY_PARAMETER)?.strip_prefix('='))?;
    let decoded = percent_decode(raw)?;
    (!decoded.trim().is_empty()).then_some(decoded)
}

/// `path` without its `key` query parameters (the rest of the query kept as it was), so the
/// key goes nowhere past the gate: not upstream, not into logs, traces or events.
pub fn without_query_key(path: &str) -> std::borrow::Cow<'_, str> {
    let Some((bare, query)) = path.split_once('?') else {
        return path.into();
    };
    let is_key = |pair: &&str| {
        *pair == KEY_QUERY_PARAMETER
            || pair
                .strip_prefix(KEY_QUERY_PARAMETER)
                .is_some_and(|rest| rest.starts_with('='))
    };
    if !query.split('&').any(|p| is_key(&p)) {
        return path.into();
    }
    let rest: Vec<&str> = query.split('&').filter(|p| !is_key(p)).collect();
    if rest.iter().all(|p| p.is_empty()) {
        bare.to_owned().into()
    } else {
        format!("{bare}?{}", rest.join("&")).into()
    }
}

/// Decodes `%XX` escapes and `+` (a space); `None` when the result is not UTF-8.
fn percent_decode(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !raw.contains(['%', '+']) {
        return Some(raw.into());
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |at: usize| b.get(at).and_then(|d| char::from(*d).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Into::into)
}

/// The key a client presented, from the first header that carries one.
pub fn presented_key(headers: &HashMap<String, String>) -> Option<&str> {
    presented_key_in(|name| headers.get(name).map(String::as_str))
}

/// The key a client presented, with `header` looking a header up by its lower-case name.
pub fn presented_key_in<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Option<&'h str> {
    if let Some(v) = header("authorization") {
        let v = v.trim();
        if v.len() > 7
            && v.get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
        {
            return v.get(7..).map(str::trim).filter(|k| !k.is_empty());
        }
    }
    ["x-api-key", "api-key", "x-goog-api-key"]
        .iter()
        .find_map(|h| header(h))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// OpenAI's `x-ratelimit-*-{unit}` headers (`requests` or `tokens`) for an admitted request.
fn rate_headers(d: &Decision, unit: &str) -> [(String, String); 3] {
    [
        (format!("x-ratelimit-limit-{unit}"), d.limit.to_string()),
        (
            format!("x-ratelimit-remaining-{unit}"),
            d.remaining.to_string(),
        ),
        (
            format!("x-ratelimit-reset-{unit}"),
            ratelimit::format_reset(d.reset_after),
        ),
    ]
}

/// The signed token naming this request, for `POST /v1/feedback`.
pub fn feedback_token(
    settings: &Feedback,
    bundle: &KeyBundle,
    request_id: &str,
    now: OffsetDateTime,
) -> String {
    let iat = now.unix_timestamp();
    let ttl = i64::try_from(settings.token_ttl.as_secs()).unwrap_or(i64::MAX);
    feedback::sign(
        settings.secret.expose().as_bytes(),
        &feedback::Claims {
            request_id: request_id.to_owned(),
            key_id: bundle.id.clone(),
            tenant: bundle.tenant.clone().unwrap_or_default(),
            iat,
            exp: iat.saturating_add(ttl),
        },
    )
}

fn allow(admitted: &Admitted, path: &str, method: &str, request_id: &str) -> CheckResponse {
    let bundle = admitted.bundle.as_ref();
    let models = match &bundle.models {
        tollgate_core::config::ModelAccess::All => vec![string("*")],
        tollgate_core::config::ModelAccess::Only(set) => set.iter().map(|m| string(m)).collect(),
    };
    let mut fields = HashMap::with_capacity(8);
    fields.insert(md::KEY_ID.to_owned(), string(&bundle.id));
    if let Some(t) = &bundle.tenant {
        fields.insert(md::TENANT.to_owned(), string(t));
    }
    if let Some(t) = &bundle.team {
        fields.insert(md::TEAM.to_owned(), string(t));
    }
    if let Some(g) = &bundle.guardrails {
        fields.insert(md::GUARDRAILS.to_owned(), string(g));
    }
    if bundle.capture != Capture::Off {
        fields.insert(md::CAPTURE.to_owned(), string(bundle.capture.label()));
    }
    if let Some(n) = bundle.tokens_per_minute {
        fields.insert(md::TOKENS_PER_MINUTE.to_owned(), string(&n.to_string()));
    }
    if let Some(n) = bundle.tenant_tokens_per_minute {
        fields.insert(
            md::TENANT_TOKENS_PER_MINUTE.to_owned(),
            string(&n.to_string()),
        );
    }
    if !bundle.extra_budgets.is_empty() {
        fields.insert(
            md::BUDGETS.to_owned(),
            string(&budget::budgets_to_json(&bundle.extra_budgets)),
        );
    }
    fields.insert(
        md::MODELS.to_owned(),
        Value {
            kind: Some(Kind::ListValue(ListValue { values: models })),
        },
    );
    fields.insert(md::PATH.to_owned(), string(&without_query_key(path)));
    fields.insert(md::METHOD.to_owned(), string(method));
    fields.insert(md::REQUEST_ID.to_owned(), string(request_id));

    let mut headers_to_remove: Vec<String> = KEY_HEADERS.iter().map(|h| (*h).to_owned()).collect();
    // The routing header is Tollgate's to set; a client must not pick a cluster itself.
    headers_to_remove.push(md::ROUTE_HEADER.to_owned());
    CheckResponse {
        status: Some(rpc::Status {
            code: GRPC_OK,
            ..Default::default()
        }),
        dynamic_metadata: Some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers_to_remove,
            response_headers_to_add: admitted
                .response_headers(request_id)
                .iter()
                .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                .collect(),
            // Google's `?key=`: gone before the request goes on.
            query_parameters_to_remove: vec![KEY_QUERY_PARAMETER.to_owned()],
            ..Default::default()
        })),
    }
}

fn deny(denied: &Denied, dialect: Dialect, request_id: &str) -> CheckResponse {
    let err = &denied.error;
    let status = err.status();
    let body = String::from_utf8(err.body(dialect)).unwrap_or_default();
    let grpc_code = if status == 401 {
        GRPC_UNAUTHENTICATED
    } else {
        GRPC_PERMISSION_DENIED
    };
    let headers = denied
        .headers(request_id)
        .iter()
        .map(|(k, v)| header(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code,
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body,
        })),
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let response = self
            .decide(request.get_ref(), OffsetDateTime::now_utc())
            .await;
        self.gate.metrics.observe_phase("authz", started);
        Ok(tonic::Response::new(response))
    }
}

pub mod jwt;

#[cfg(test)]
mod tests;
