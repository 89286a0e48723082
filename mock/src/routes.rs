//! HTTP front of the mock: routes by path suffix so any base path works (`/v1/…`,
//! `/openai/v1/…`, Azure `/openai/deployments/{deployment}/…`), records each API request,
//! applies latency, auth and faults on demand, then hands the JSON body to an endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::Value;

use crate::count;
use crate::error::{html_bad_gateway, MockError};
use crate::log::{Recorded, RequestLog};
use crate::params::Request;
use crate::{
    bedrock, bedrock_embed, chat, completions, embeddings, gemini, gemini_embed, media, messages,
    models, platform, rerank, responses, text, vertex, MockConfig,
};

/// Header overriding [`MockConfig::latency`] for one request, in milliseconds.
pub(crate) const LATENCY_HEADER: &str = "x-mock-latency-ms";

/// Header overriding [`MockConfig::chunk_delay`] for one request, in milliseconds.
pub(crate) const CHUNK_DELAY_HEADER: &str = "x-mock-chunk-delay-ms";

/// Header asking for a chat completions stream that never ends (any value but `0`).
pub(crate) const ENDLESS_HEADER: &str = "x-mock-endless-stream";

/// Largest request body accepted (benchmarks send big prompts).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Path prefix of the mock's own endpoints; requests there are not recorded.
const MOCK_PREFIX: &str = "/__mock/";

/// State shared by every request.
struct AppState {
    config: MockConfig,
    log: RequestLog,
    /// Numbers requests, for response ids and `x-request-id`.
    requests: AtomicU64,
    /// Vertex AI access tokens issued by the token endpoint.
    tokens: vertex::Tokens,
    /// Temporary AWS credentials handed out by the platform endpoints.
    issued: platform::Issued,
}

/// What one request is about, for the endpoint that answers it.
pub(crate) struct Exchange<'a> {
    /// Sequence number of the request, unique per router.
    pub number: u64,
    /// `created` timestamp of the response.
    pub created: u64,
    /// The model the response names: the request's, or the Azure deployment.
    pub model: &'a str,
    /// Delay between streamed chunks.
    pub chunk_delay: Duration,
    /// `mock-stream-error`: fail the stream after two content chunks.
    pub stream_error: bool,
    /// [`ENDLESS_HEADER`]: a chat completions stream repeats its content chunks forever.
    pub endless: bool,
}

pub(crate) fn router(config: MockConfig) -> Router {
    let state = Arc::new(AppState {
        config,
        log: RequestLog::default(),
        requests: AtomicU64::new(0),
        tokens: vertex::Tokens::default(),
        issued: platform::Issued::default(),
    });
    Router::new()
        .route(
            "/__mock/requests",
            get(list_requests).delete(clear_requests),
        )
        .fallback(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn list_requests(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.log.to_json())
}

async fn clear_requests(State(state): State<Arc<AppState>>) -> StatusCode {
    state.log.clear();
    StatusCode::NO_CONTENT
}

/// Every path other than the mock's own: record, answer, tag with `x-request-id`.
async fn api(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let number = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if !uri.path().starts_with(MOCK_PREFIX) {
        state.log.record(Recorded {
            method: method.clone(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            headers: headers.clone(),
            body: body.clone(),
        });
    }
    tracing::debug!(%method, path = uri.path(), number, "Mock request");
    let mut response = match answer(&state, number, &method, &uri, &headers, &body).await {
        Ok(response) => response,
        // Anthropic's, Gemini's and Bedrock's APIs answer errors in their own formats.
        Err(error)
            if uri.path().trim_end_matches('/').ends_with("/messages")
                || vertex::publisher_call(uri.path()).is_some_and(|(p, _, _)| p == "anthropic") =>
        {
            messages::error_response(error.status(), &error.to_string())
        }
        Err(error) if gemini::call(uri.path()).is_some() => {
            gemini::error_response(error.status(), &error.to_string())
        }
        Err(error) if bedrock::parse_path(uri.path()).is_some() => {
            bedrock::BedrockError::from_mock(&error).into_response()
        }
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&format!("req-mock-{number}")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    response
}

async fn answer(
    state: &AppState,
    number: u64,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, MockError> {
    let latency = millis_header(headers, LATENCY_HEADER)?.unwrap_or(state.config.latency);
    let chunk_delay =
        millis_header(headers, CHUNK_DELAY_HEADER)?.unwrap_or(state.config.chunk_delay);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    // The platforms' credentials endpoints.
    let ttl = state.config.credential_ttl;
    if *method == Method::POST && uri.path() == "/" {
        return Ok(platform::sts(&state.issued, ttl, number, body));
    }
    if *method == Method::GET && platform::is_container(uri.path()) {
        return Ok(platform::container(
            &state.issued,
            ttl,
            number,
            uri.path(),
            headers,
        ));
    }
    if let Some(r) = platform::imds(&state.issued, ttl, number, method, uri.path(), headers) {
        return Ok(r);
    }
    if *method == Method::GET && uri.path() == platform::GCE_TOKEN_PATH {
        return Ok(platform::gce_token(ttl, headers, || {
            state.tokens.issue(number)
        }));
    }
    if *method == Method::POST && uri.path().ends_with("/token") {
        let key = state.config.google_public_key.as_deref();
        return Ok(vertex::token(key, &state.tokens, number, body));
    }
    if let Some(response) = answer_count(state, method, uri, headers, body) {
        return Ok(response);
    }
    if let Some(response) = answer_gemini_embed(state, method, uri, headers, body) {
        return Ok(response);
    }
    if let Some((publisher, model, call)) = vertex::publisher_call(uri.path()) {
        if !state.tokens.authorized(headers) {
            return Err(MockError::InvalidApiKey);
        }
        if publisher == "anthropic" {
            return answer_vertex_anthropic(number, body, (model, call), chunk_delay);
        }
    }
    if let Some((model, stream)) = gemini::call(uri.path()) {
        return answer_gemini(
            state,
            number,
            method,
            uri,
            headers,
            body,
            (model, stream),
            chunk_delay,
        );
    }
    if let (true, Some(op)) = (*method == Method::POST, media::operation(uri.path())) {
        let deployment = uri
            .path()
            .split_once("/openai/deployments/")
            .and_then(|(_, rest)| rest.split('/').next());
        if let Some(key) = &state.config.api_key {
            if !authorized(headers, key, deployment.is_some()) {
                return Err(MockError::InvalidApiKey);
            }
        }
        if deployment.is_some() && !has_api_version(uri.query()) {
            return Err(MockError::MissingApiVersion);
        }
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return media::respond(op, deployment, headers, body, number, created, chunk_delay);
    }
    if let (true, Some(api)) = (*method == Method::POST, rerank::Api::of(uri.path())) {
        let key = state.config.api_key.as_deref();
        return Ok(rerank::respond(api, key, headers, body, number));
    }
    if let Some(response) = crate::files::answer(method, uri.path(), body, number) {
        return Ok(response);
    }
    // Bedrock InvokeModel of the Titan embedding models: SigV4 as for Converse.
    if let (true, Some(model)) = (
        *method == Method::POST,
        bedrock_embed::invoke_path(uri.path()),
    ) {
        let verified = bedrock::verify_issued(
            method.as_str(),
            uri.path(),
            uri.query().unwrap_or_default(),
            headers,
            body,
            std::time::SystemTime::now(),
            &state.issued,
        );
        return Ok(match verified {
            Ok(()) => bedrock_embed::respond(body, &model, number),
            Err(e) => e.into_response(),
        });
    }
    let route = Route::parse(method, uri.path())?;
    // Bedrock: the model is in the path, and every request must carry a valid SigV4 signature.
    let bedrock_model = match route.operation {
        Operation::Converse { .. } => {
            let verified = bedrock::verify_issued(
                method.as_str(),
                uri.path(),
                uri.query().unwrap_or_default(),
                headers,
                body,
                std::time::SystemTime::now(),
                &state.issued,
            );
            if let Err(e) = verified {
                return Ok(e.into_response());
            }
            bedrock::parse_path(uri.path()).map(|(model, _)| model)
        }
        _ => None,
    };
    let path_model = route.deployment.or(bedrock_model.as_deref());
    if let Some(key) = state
        .config
        .api_key
        .as_ref()
        .filter(|_| bedrock_model.is_none())
    {
        if !authorized(headers, key, route.deployment.is_some()) {
            return Err(MockError::InvalidApiKey);
        }
    }
    if route.deployment.is_some() && !has_api_version(uri.query()) {
        return Err(MockError::MissingApiVersion);
    }

    let respond: fn(&Request, &Exchange<'_>) -> Result<Response, MockError> = match route.operation
    {
        Operation::ListModels => return Ok(models::list()),
        Operation::RetrieveModel(id) => return Ok(models::retrieve(id)),
        Operation::Chat => chat::respond,
        Operation::Completions => completions::respond,
        Operation::Embeddings => embeddings::respond,
        Operation::Messages => messages::respond,
        Operation::Responses => responses::respond,
        Operation::Converse { stream: false } => |r, e| bedrock::respond(r, e, false),
        Operation::Converse { stream: true } => |r, e| bedrock::respond(r, e, true),
    };
    let request: Value = serde_json::from_slice(body).map_err(|_| MockError::InvalidJson)?;
    let Value::Object(request) = request else {
        return Err(MockError::BodyNotObject);
    };
    let body_model = body_model(&request)?;
    let model = path_model.or(body_model).ok_or(MockError::MissingModel)?;

    let fault = match path_model.map(Fault::of).transpose()?.flatten() {
        Some(fault) => Some(fault),
        None => body_model.map(Fault::of).transpose()?.flatten(),
    };
    let mut exchange = match exchange(number, model, chunk_delay, fault)? {
        Ok(exchange) => exchange,
        Err(response) => return Ok(response),
    };
    exchange.endless = headers
        .get(ENDLESS_HEADER)
        .is_some_and(|v| v.as_bytes() != b"0");
    respond(&request, &exchange)
}

/// Answers the providers' token-counting APIs (see [`count`]), each checking its own
/// credential; `None` for any other path.
fn answer_count(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    if *method != Method::POST {
        return None;
    }
    let path = uri.path();
    let api_key = state.config.api_key.as_deref();
    if let Some((publisher, model, call)) = vertex::publisher_call(path) {
        let count = match (publisher, model, call) {
            ("anthropic", "count-tokens", "rawPredict") => count::anthropic,
            ("google", _, "countTokens") => {
                return Some(if state.tokens.authorized(headers) {
                    count::gemini(body, model, true)
                } else {
                    gemini::error_response(
                        StatusCode::UNAUTHORIZED,
                        &MockError::InvalidApiKey.to_string(),
                    )
                })
            }
            _ => return None,
        };
        return Some(if state.tokens.authorized(headers) {
            count(body)
        } else {
            messages::error_response(
                StatusCode::UNAUTHORIZED,
                &MockError::InvalidApiKey.to_string(),
            )
        });
    }
    if let Some((prefix, last)) = path.rsplit_once('/') {
        if let (true, Some(model)) = (
            prefix.ends_with("/models"),
            last.strip_suffix(":countTokens"),
        ) {
            let in_query = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .any(|pair| api_key.is_some_and(|k| pair.strip_prefix("key=") == Some(k)));
            let ok = api_key.is_none_or(|k| in_query || authorized(headers, k, true));
            return Some(if ok {
                count::gemini(body, model, false)
            } else {
                gemini::error_response(
                    StatusCode::BAD_REQUEST,
                    "API key not valid. Please pass a valid API key.",
                )
            });
        }
    }
    if path
        .trim_end_matches('/')
        .ends_with("/messages/count_tokens")
    {
        let ok = api_key.is_none_or(|k| authorized(headers, k, false));
        return Some(if ok {
            count::anthropic(body)
        } else {
            messages::error_response(
                StatusCode::UNAUTHORIZED,
                &MockError::InvalidApiKey.to_string(),
            )
        });
    }
    let model = count::bedrock_path(path)?;
    let verified = bedrock::verify_issued(
        method.as_str(),
        path,
        uri.query().unwrap_or_default(),
        headers,
        body,
        std::time::SystemTime::now(),
        &state.issued,
    );
    Some(match verified {
        Ok(()) => count::bedrock(body, &model),
        Err(e) => e.into_response(),
    })
}

/// Answers Gemini's `:embedContent` and `:batchEmbedContents` (see [`gemini_embed`]), the key in
/// `x-goog-api-key` or the `key` query parameter, and Vertex AI's `:predict` of Google's text
/// embedding models (its bearer token); `None` for any other path.
fn answer_gemini_embed(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    if let Some(("google", model, "predict")) = vertex::publisher_call(uri.path()) {
        if *method != Method::POST {
            return None;
        }
        return Some(if state.tokens.authorized(headers) {
            gemini_embed::predict(body, model)
        } else {
            gemini::error_response(
                StatusCode::UNAUTHORIZED,
                &MockError::InvalidApiKey.to_string(),
            )
        });
    }
    let (model, batch) = gemini_embed::call(uri.path())?;
    if *method != Method::POST || vertex::publisher_call(uri.path()).is_some() {
        return None;
    }
    let api_key = state.config.api_key.as_deref();
    let in_query = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|pair| api_key.is_some_and(|k| pair.strip_prefix("key=") == Some(k)));
    if !api_key.is_none_or(|k| in_query || authorized(headers, k, true)) {
        return Some(gemini::error_response(
            StatusCode::BAD_REQUEST,
            "API key not valid. Please pass a valid API key.",
        ));
    }
    Some(gemini_embed::respond(body, model, batch))
}

/// The exchange of a request to `model`, or the answer its fault asks for instead.
fn exchange(
    number: u64,
    model: &str,
    chunk_delay: Duration,
    fault: Option<Fault>,
) -> Result<Result<Exchange<'_>, Response>, MockError> {
    match fault {
        Some(Fault::Status(status)) => {
            return Err(MockError::Injected {
                status,
                model: model.to_owned(),
            })
        }
        Some(Fault::Html) => return Ok(Err(html_bad_gateway())),
        Some(Fault::StreamError) | None => {}
    }
    Ok(Ok(Exchange {
        number,
        created: text::unix_now(),
        model,
        chunk_delay,
        stream_error: matches!(fault, Some(Fault::StreamError)),
        endless: false,
    }))
}

/// Answers a Gemini `generateContent` path: the model (and its fault) from the path, the key
/// in `x-goog-api-key` or the `key` query parameter.
#[allow(clippy::too_many_arguments)]
fn answer_gemini(
    state: &AppState,
    number: u64,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    (model, stream): (&str, bool),
    chunk_delay: Duration,
) -> Result<Response, MockError> {
    if *method != Method::POST {
        return Err(MockError::MethodNotAllowed {
            method: method.clone(),
            path: uri.path().to_owned(),
        });
    }
    let query = uri.query().unwrap_or_default();
    // Vertex AI paths were checked for their bearer token.
    let vertex = vertex::publisher_call(uri.path()).is_some();
    if let (Some(key), false) = (&state.config.api_key, vertex) {
        let in_query = query
            .split('&')
            .any(|pair| pair.strip_prefix("key=") == Some(key.as_str()));
        if !in_query && !authorized(headers, key, true) {
            return Err(MockError::InvalidApiKey);
        }
    }
    let request: Value = serde_json::from_slice(body).map_err(|_| MockError::InvalidJson)?;
    let Value::Object(request) = request else {
        return Err(MockError::BodyNotObject);
    };
    let exchange = match exchange(number, model, chunk_delay, Fault::of(model)?)? {
        Ok(exchange) => exchange,
        Err(response) => return Ok(response),
    };
    let sse = query.split('&').any(|pair| pair == "alt=sse");
    gemini::respond(&request, &exchange, stream, sse)
}

/// Answers Vertex AI's `rawPredict` / `streamRawPredict` for an Anthropic model: a Messages
/// body without `model` and with Vertex's `anthropic_version`.
fn answer_vertex_anthropic(
    number: u64,
    body: &Bytes,
    (model, call): (&str, &str),
    chunk_delay: Duration,
) -> Result<Response, MockError> {
    let stream = match call {
        "rawPredict" => false,
        "streamRawPredict" => true,
        _ => {
            return Err(MockError::NotFound {
                method: Method::POST,
                path: format!("…/models/{model}:{call}"),
            })
        }
    };
    let request: Value = serde_json::from_slice(body).map_err(|_| MockError::InvalidJson)?;
    let Value::Object(mut request) = request else {
        return Err(MockError::BodyNotObject);
    };
    vertex::check_anthropic_body(&request).map_err(|message| MockError::InvalidParameter {
        param: "anthropic_version",
        message,
    })?;
    if stream {
        request.insert("stream".into(), Value::Bool(true));
    }
    // Vertex AI serves a model as Anthropic's when its id starts with `claude`: fault models
    // come as `claude-mock-error-429`, `claude-mock-stream-error`…
    let fault = Fault::of(model.strip_prefix("claude-").unwrap_or(model))?;
    let exchange = match exchange(number, model, chunk_delay, fault)? {
        Ok(exchange) => exchange,
        Err(response) => return Ok(response),
    };
    messages::respond(&request, &exchange)
}

/// The endpoint a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation<'a> {
    Chat,
    Completions,
    Embeddings,
    Messages,
    /// OpenAI Responses (`…/responses`).
    Responses,
    /// Bedrock `converse` or `converse-stream`.
    Converse {
        stream: bool,
    },
    ListModels,
    RetrieveModel(&'a str),
}

/// A request's endpoint and, on an Azure OpenAI path, its deployment.
#[derive(Debug, PartialEq, Eq)]
struct Route<'a> {
    operation: Operation<'a>,
    deployment: Option<&'a str>,
}

impl<'a> Route<'a> {
    fn parse(method: &Method, path: &'a str) -> Result<Self, MockError> {
        let not_found = || MockError::NotFound {
            method: method.clone(),
            path: path.to_owned(),
        };
        let trimmed = path.trim_end_matches('/');
        let route = if let Some((_, stream)) = bedrock::parse_path(trimmed) {
            Route {
                operation: Operation::Converse { stream },
                deployment: None,
            }
        } else if let Some((_, rest)) = trimmed.split_once("/openai/deployments/") {
            let (deployment, operation) = rest.split_once('/').ok_or_else(not_found)?;
            let operation = match operation {
                "chat/completions" => Operation::Chat,
                "completions" => Operation::Completions,
                "embeddings" => Operation::Embeddings,
                "responses" => Operation::Responses,
                _ => return Err(not_found()),
            };
            if deployment.is_empty() {
                return Err(not_found());
            }
            Route {
                operation,
                deployment: Some(deployment),
            }
        } else {
            Route {
                operation: Operation::from_suffix(trimmed).ok_or_else(not_found)?,
                deployment: None,
            }
        };
        let expected = match route.operation {
            Operation::Chat
            | Operation::Completions
            | Operation::Embeddings
            | Operation::Messages
            | Operation::Responses
            | Operation::Converse { .. } => Method::POST,
            Operation::ListModels | Operation::RetrieveModel(_) => Method::GET,
        };
        if *method != expected {
            return Err(MockError::MethodNotAllowed {
                method: method.clone(),
                path: path.to_owned(),
            });
        }
        Ok(route)
    }
}

impl<'a> Operation<'a> {
    fn from_suffix(path: &'a str) -> Option<Self> {
        if path.ends_with("/chat/completions") {
            Some(Self::Chat)
        } else if path.ends_with("/completions") {
            Some(Self::Completions)
        } else if path.ends_with("/embeddings") {
            Some(Self::Embeddings)
        } else if path.ends_with("/messages") {
            Some(Self::Messages)
        } else if path.ends_with("/responses") {
            Some(Self::Responses)
        } else if path.ends_with("/models") {
            Some(Self::ListModels)
        } else {
            match path.rsplit_once('/') {
                Some((prefix, id)) if prefix.ends_with("/models") && !id.is_empty() => {
                    Some(Self::RetrieveModel(id))
                }
                _ => None,
            }
        }
    }
}

/// A fault asked for through the model name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `mock-error-<status>`.
    Status(StatusCode),
    /// `mock-stream-error`.
    StreamError,
    /// `mock-html-error`.
    Html,
}

impl Fault {
    fn of(model: &str) -> Result<Option<Self>, MockError> {
        match model {
            "mock-stream-error" => return Ok(Some(Self::StreamError)),
            "mock-html-error" => return Ok(Some(Self::Html)),
            _ => {}
        }
        let Some(code) = model.strip_prefix("mock-error-") else {
            return Ok(None);
        };
        code.parse::<u16>()
            .ok()
            .filter(|code| (400..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok())
            .map(|status| Some(Self::Status(status)))
            .ok_or_else(|| MockError::InvalidParameter {
                param: "model",
                message: format!(
                    "Mock fault model `{model}` needs a status between 400 and 599, \
                     e.g. mock-error-429."
                ),
            })
    }
}

/// The body's `model`, when it is a non-empty string.
fn body_model(request: &Request) -> Result<Option<&str>, MockError> {
    match request.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(model)) if model.is_empty() => Ok(None),
        Some(Value::String(model)) => Ok(Some(model)),
        Some(_) => Err(MockError::InvalidParameter {
            param: "model",
            message: "Invalid type for 'model': expected a string.".to_owned(),
        }),
    }
}

/// Whether the request carries the configured key: `api-key` (`x-api-key`, `x-goog-api-key`)
/// always; `Authorization: Bearer` too, except on Azure and Gemini paths, which take keys in
/// their own header only.
fn authorized(headers: &HeaderMap, key: &str, azure: bool) -> bool {
    let api_key = ["api-key", "x-api-key", "x-goog-api-key"]
        .iter()
        .any(|name| {
            headers
                .get(*name)
                .is_some_and(|value| value.as_bytes() == key.as_bytes())
        });
    if api_key || azure {
        return api_key;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == key)
}

/// Whether the query string has a non-empty `api-version`.
fn has_api_version(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(name, value)| name == "api-version" && !value.is_empty())
    })
}

/// A millisecond-count header, if present.
fn millis_header(headers: &HeaderMap, name: &'static str) -> Result<Option<Duration>, MockError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(|millis| Some(Duration::from_millis(millis)))
        .ok_or_else(|| MockError::InvalidParameter {
            param: name,
            message: format!("Invalid value for header '{name}': expected milliseconds."),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Option<Route<'_>> {
        Route::parse(&method, path).ok()
    }

    #[test]
    fn routes_by_suffix_under_any_base_path() {
        for path in [
            "/v1/chat/completions",
            "/openai/v1/chat/completions",
            "/api/v1/chat/completions/",
        ] {
            assert_eq!(
                parse(Method::POST, path).map(|route| route.operation),
                Some(Operation::Chat),
                "{path}"
            );
        }
        assert_eq!(
            parse(Method::POST, "/v1/completions").map(|r| r.operation),
            Some(Operation::Completions)
        );
        assert_eq!(
            parse(Method::POST, "/x/embeddings").map(|r| r.operation),
            Some(Operation::Embeddings)
        );
        assert_eq!(
            parse(Method::GET, "/v1/models").map(|r| r.operation),
            Some(Operation::ListModels)
        );
        assert_eq!(
            parse(Method::GET, "/v1/models/gpt-4o").map(|r| r.operation),
            Some(Operation::RetrieveModel("gpt-4o"))
        );
        assert!(parse(Method::POST, "/v1/nothing").is_none());
        assert!(parse(Method::GET, "/v1/chat/completions").is_none());
    }

    #[test]
    fn azure_paths_carry_the_deployment() {
        let route = parse(
            Method::POST,
            "/openai/deployments/gpt4o-prod/chat/completions",
        );
        assert_eq!(
            route,
            Some(Route {
                operation: Operation::Chat,
                deployment: Some("gpt4o-prod"),
            })
        );
        assert!(parse(Method::POST, "/openai/deployments/x/images").is_none());
        assert!(parse(Method::POST, "/openai/deployments//embeddings").is_none());
    }

    #[test]
    fn fault_models() {
        assert_eq!(
            Fault::of("mock-error-429").ok().flatten(),
            Some(Fault::Status(StatusCode::TOO_MANY_REQUESTS))
        );
        assert_eq!(Fault::of("gpt-4o").ok().flatten(), None);
        assert!(Fault::of("mock-error-200").is_err());
        assert!(Fault::of("mock-error-abc").is_err());
    }

    #[test]
    fn api_version_must_be_non_empty() {
        assert!(has_api_version(Some("a=b&api-version=2024-10-21")));
        assert!(!has_api_version(Some("api-version=")));
        assert!(!has_api_version(None));
    }
}
