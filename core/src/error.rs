//! Client-facing errors and their wire form in each client API's own dialect.
//!
//! One exhaustive function ([`ApiError::class`]) decides status and error type per variant, so
//! a new variant forces a decision. Messages never carry secrets or upstream internals.

use serde_json::json;

/// The API dialect a client speaks, which decides the shape of its error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI (and every OpenAI-compatible client).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini.
    Gemini,
    /// Cohere (`/v1/rerank`, `/v2/rerank`): errors are `{"id", "message"}`.
    Cohere,
}

impl Dialect {
    /// A short label for logs and log events: `openai`, `anthropic`, `gemini`.
    pub fn label(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Cohere => "cohere",
        }
    }

    /// The dialect a request path belongs to.
    pub fn from_path(path: &str) -> Self {
        if path.starts_with("/v1/messages") {
            Dialect::Anthropic
        } else if matches!(
            path.split_once('?').map_or(path, |(p, _)| p),
            "/v1/rerank" | "/v2/rerank"
        ) {
            Dialect::Cohere
        } else if path.starts_with("/v1beta/")
            || path.starts_with("/v1/models/") && path.contains(':')
        {
            Dialect::Gemini
        } else {
            Dialect::OpenAi
        }
    }
}

/// Every error Tollgate itself answers a client with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No key in any of the recognised headers.
    #[error("You didn't provide an API key. Provide your Tollgate key in the Authorization header using Bearer auth.")]
    MissingKey,
    /// A key that matches no configured key.
    #[error("Incorrect API key provided.")]
    InvalidKey,
    /// A key past its expiry time.
    #[error("The API key has expired.")]
    ExpiredKey,
    /// A key that an operator disabled.
    #[error("The API key has been disabled.")]
    DisabledKey,
    /// The body is not valid JSON (or not a JSON object).
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    /// A required field is missing or has the wrong type.
    #[error("{message}")]
    InvalidField {
        /// The offending field.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The model is not configured.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    /// The model exists but this key may not use it.
    #[error("This API key is not allowed to use the model `{0}`.")]
    ModelNotAllowed(String),
    /// A browser request (`Origin`) from an origin the key's (or its tenant's) `cors` policy
    /// does not list.
    #[error("This API key may not be used from this origin.")]
    OriginNotAllowed,
    /// A passthrough route (`/passthrough/{provider}/…`) naming no configured provider.
    #[error("No provider `{0}` is configured for passthrough.")]
    UnknownProvider(String),
    /// A passthrough route to a provider this key may not reach through passthrough.
    #[error("This API key is not allowed to use passthrough to the provider `{0}`.")]
    PassthroughNotAllowed(String),
    /// No such endpoint.
    #[error("Unknown request URL: {method} {path}.")]
    UnknownEndpoint {
        /// The request method.
        method: String,
        /// The request path, without its query.
        path: String,
    },
    /// The request body exceeds the configured limit.
    #[error("The request body is too large.")]
    PayloadTooLarge,
    /// The request body's JSON nests deeper, or has an object with more members, than the
    /// configured limits allow (`limits.max_json_depth`, `limits.max_json_members`).
    #[error("The request body is too complex: {what} (the limit is {max}).")]
    BodyTooComplex {
        /// What went over the limit, e.g. `objects and arrays nest too deeply`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A request-rate limit of the key or its tenant is used up.
    #[error("Rate limit reached for {unit} on this {scope}: {limit} per minute. Try again in {retry_after_secs}s.")]
    RateLimited {
        /// `requests` or `tokens`.
        unit: &'static str,
        /// `key` or `tenant`.
        scope: &'static str,
        /// The limit, requests per minute.
        limit: u32,
        /// Whole seconds until a request would be admitted.
        retry_after_secs: u64,
    },
    /// A hard budget of the key's scope cannot take this request.
    #[error("The {period} budget of this {scope} is used up (or this request's estimated cost does not fit in what is left).")]
    BudgetExceeded {
        /// `key`, `team`, `tenant` or `end_user`.
        scope: &'static str,
        /// `daily`, `weekly`, `monthly` or `total`.
        period: &'static str,
        /// Whole seconds until the period ends (`None` for a total budget).
        retry_after_secs: Option<u64>,
    },
    /// The budget ledger (Redis) cannot answer and budgets fail closed.
    #[error("Budgets cannot be checked right now. Try again shortly.")]
    BudgetUnavailable,
    /// A key the file does not list could not be checked: the control plane did not answer
    /// (or answered with a bundle that does not verify). Not a 401: the key may be valid.
    #[error("The API key could not be checked right now: the key service is unavailable. Try again shortly.")]
    KeyUnverifiable,
    /// The provider answered with an error body that is not in the client's format.
    #[error("The upstream provider returned an error (HTTP {0}).")]
    Upstream(u16),
    /// A guardrail rule with action `block` matched (named; the matched text never is).
    #[error("The {} was blocked by the guardrail rule `{rule}`.", side.label())]
    GuardrailBlocked {
        /// The rule's id.
        rule: String,
        /// Which text matched.
        side: crate::config::Side,
    },
    /// A webhook guardrail with `fail: closed` did not answer (timeout, refused, bad answer).
    #[error("The guardrail `{0}` could not check the request; it was refused rather than served unchecked.")]
    GuardrailUnavailable(String),
    /// The key's guardrails policy is not in the config this request is served with (a reload
    /// between ext_authz and ext_proc): refused rather than served unguarded.
    #[error("The guardrails policy `{0}` of this API key is not available, so the request was refused rather than served unguarded. Try again.")]
    GuardrailPolicyUnavailable(String),
    /// Every target of the model is at its `max_requests_in_flight`.
    #[error(
        "Every provider target of the model `{0}` is at its concurrency limit. Try again shortly."
    )]
    TargetsBusy(String),
    /// A feedback token that is malformed, tampered with, expired, or issued to another key.
    #[error("Invalid feedback token: {0}.")]
    InvalidFeedbackToken(String),
    /// The gateway is misconfigured or failed internally.
    #[error("The gateway could not process the request.")]
    Internal,
    /// A later failover attempt reached a Tollgate process that did not see the request (the
    /// client's body is kept by the process whose stream took the request).
    #[error("The request's failover attempt reached a gateway process that did not see the request; the gateway must run one Tollgate process per Envoy for failover models.")]
    FailoverAttemptLost,
    /// A `multipart/form-data` body that cannot be read (no boundary, truncated, a part
    /// without its name).
    #[error("We could not parse the multipart form of your request: {0}")]
    InvalidMultipart(String),
    /// An endpoint the provider of the requested model does not serve (images, audio and
    /// moderations on an Anthropic, Gemini or Bedrock model).
    #[error("The endpoint `{endpoint}` is not available for the model `{model}`: its provider (kind `{kind}`) does not serve it.")]
    EndpointNotAvailable {
        /// The client path.
        endpoint: &'static str,
        /// The requested model.
        model: String,
        /// The provider's kind.
        kind: &'static str,
    },
}

/// How an error is classed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// HTTP status.
    pub status: u16,
    /// OpenAI `error.type`.
    pub openai_type: &'static str,
    /// OpenAI `error.code`, when it has one.
    pub openai_code: Option<&'static str>,
    /// The error's one label in metrics (`code`, `decision`) and log events (`error_class`):
    /// fixed per variant, so its values are a closed set.
    pub code: &'static str,
}

impl ApiError {
    /// Status and type of each variant.
    pub fn class(&self) -> ErrorClass {
        // (status, OpenAI `error.type`, OpenAI `error.code`, the label of metrics and logs)
        let (status, openai_type, openai_code, code) = match self {
            ApiError::MissingKey => (401, "invalid_request_error", None, "missing_api_key"),
            ApiError::InvalidKey => (
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
                "invalid_api_key",
            ),
            ApiError::ExpiredKey => (
                401,
                "invalid_request_error",
                Some("expired_api_key"),
                "expired_api_key",
            ),
            ApiError::DisabledKey => (
                401,
                "invalid_request_error",
                Some("disabled_api_key"),
                "disabled_api_key",
            ),
            ApiError::InvalidJson(_) => (
                400,
                "invalid_request_error",
                Some("invalid_json"),
                "invalid_json",
            ),
            ApiError::InvalidField { .. } => (
                400,
                "invalid_request_error",
                Some("invalid_value"),
                "invalid_value",
            ),
            ApiError::UnknownModel(_) => (
                404,
                "invalid_request_error",
                Some("model_not_found"),
                "model_not_found",
            ),
            ApiError::ModelNotAllowed(_) => (
                403,
                "permission_error",
                Some("model_not_allowed"),
                "model_not_allowed",
            ),
            ApiError::OriginNotAllowed => (
                403,
                "permission_error",
                Some("origin_not_allowed"),
                "origin_not_allowed",
            ),
            ApiError::UnknownProvider(_) => (
                404,
                "invalid_request_error",
                Some("provider_not_found"),
                "provider_not_found",
            ),
            ApiError::PassthroughNotAllowed(_) => (
                403,
                "permission_error",
                Some("passthrough_not_allowed"),
                "passthrough_not_allowed",
            ),
            ApiError::UnknownEndpoint { .. } => (
                404,
                "invalid_request_error",
                Some("unknown_url"),
                "unknown_url",
            ),
            ApiError::PayloadTooLarge => (
                413,
                "invalid_request_error",
                Some("request_too_large"),
                "request_too_large",
            ),
            ApiError::BodyTooComplex { .. } => (
                400,
                "invalid_request_error",
                Some("request_too_complex"),
                "request_too_complex",
            ),
            ApiError::RateLimited { unit, .. } => (
                429,
                *unit,
                Some("rate_limit_exceeded"),
                "rate_limit_exceeded",
            ),
            ApiError::BudgetExceeded { .. } => (
                429,
                "insufficient_quota",
                Some("budget_exceeded"),
                "budget_exceeded",
            ),
            ApiError::BudgetUnavailable => (
                503,
                "server_error",
                Some("budget_unavailable"),
                "budget_unavailable",
            ),
            ApiError::KeyUnverifiable => (
                503,
                "server_error",
                Some("key_unverifiable"),
                "key_unverifiable",
            ),
            ApiError::Upstream(status) => (*status, "upstream_error", None, "upstream_error"),
            ApiError::GuardrailBlocked { .. } => (
                400,
                "invalid_request_error",
                Some("guardrail_blocked"),
                "guardrail_blocked",
            ),
            ApiError::GuardrailUnavailable(_) => (
                503,
                "server_error",
                Some("guardrail_unavailable"),
                "guardrail_unavailable",
            ),
            ApiError::GuardrailPolicyUnavailable(_) => (
                500,
                "server_error",
                Some("guardrail_policy_unavailable"),
                "guardrail_policy_unavailable",
            ),
            ApiError::TargetsBusy(_) => (503, "server_error", Some("targets_busy"), "targets_busy"),
            ApiError::InvalidFeedbackToken(_) => (
                401,
                "invalid_request_error",
                Some("invalid_feedback_token"),
                "invalid_feedback_token",
            ),
            ApiError::Internal => (500, "server_error", None, "internal_error"),
            ApiError::FailoverAttemptLost => (
                502,
                "server_error",
                Some("failover_attempt_lost"),
                "failover_attempt_lost",
            ),
            ApiError::InvalidMultipart(_) => (
                400,
                "invalid_request_error",
                Some("invalid_multipart"),
                "invalid_multipart",
            ),
            ApiError::EndpointNotAvailable { .. } => (
                400,
                "invalid_request_error",
                Some("unsupported_endpoint"),
                "unsupported_endpoint",
            ),
        };
        ErrorClass {
            status,
            openai_type,
            openai_code,
            code,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.class().status
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidField { param, .. } => Some(param),
            ApiError::UnknownModel(_)
            | ApiError::ModelNotAllowed(_)
            | ApiError::EndpointNotAvailable { .. } => Some("model"),
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::ExpiredKey
            | ApiError::DisabledKey
            | ApiError::InvalidJson(_)
            | ApiError::OriginNotAllowed
            | ApiError::UnknownProvider(_)
            | ApiError::PassthroughNotAllowed(_)
            | ApiError::UnknownEndpoint { .. }
            | ApiError::PayloadTooLarge
            | ApiError::BodyTooComplex { .. }
            | ApiError::RateLimited { .. }
            | ApiError::BudgetExceeded { .. }
            | ApiError::BudgetUnavailable
            | ApiError::KeyUnverifiable
            | ApiError::Upstream(_)
            | ApiError::GuardrailBlocked { .. }
            | ApiError::GuardrailUnavailable(_)
            | ApiError::GuardrailPolicyUnavailable(_)
            | ApiError::TargetsBusy(_)
            | ApiError::InvalidFeedbackToken(_)
            | ApiError::InvalidMultipart(_)
            | ApiError::FailoverAttemptLost
            | ApiError::Internal => None,
        }
    }

    /// This error with every client-controlled string in it (a model name, a path, a
    /// message quoting the body) cut to [`crate::bound::MAX_ECHO_BYTES`], so that an error
    /// body or a log line never echoes a huge input back.
    pub fn bounded(&self) -> std::borrow::Cow<'_, ApiError> {
        use crate::bound::{echo, MAX_ECHO_BYTES};
        use std::borrow::Cow;
        let long = |s: &str| s.len() > MAX_ECHO_BYTES;
        let cut = |s: &str| echo(s).into_owned();
        match self {
            ApiError::InvalidJson(m) if long(m) => Cow::Owned(ApiError::InvalidJson(cut(m))),
            ApiError::InvalidField { param, message } if long(message) => {
                Cow::Owned(ApiError::InvalidField {
                    param,
                    message: cut(message),
                })
            }
            ApiError::UnknownModel(m) if long(m) => Cow::Owned(ApiError::UnknownModel(cut(m))),
            ApiError::ModelNotAllowed(m) if long(m) => {
                Cow::Owned(ApiError::ModelNotAllowed(cut(m)))
            }
            ApiError::UnknownProvider(n) if long(n) => {
                Cow::Owned(ApiError::UnknownProvider(cut(n)))
            }
            ApiError::UnknownEndpoint { method, path } if long(method) || long(path) => {
                Cow::Owned(ApiError::UnknownEndpoint {
                    method: cut(method),
                    path: cut(path),
                })
            }
            ApiError::GuardrailBlocked { rule, side } if long(rule) => {
                Cow::Owned(ApiError::GuardrailBlocked {
                    rule: cut(rule),
                    side: *side,
                })
            }
            ApiError::GuardrailUnavailable(n) if long(n) => {
                Cow::Owned(ApiError::GuardrailUnavailable(cut(n)))
            }
            ApiError::GuardrailPolicyUnavailable(n) if long(n) => {
                Cow::Owned(ApiError::GuardrailPolicyUnavailable(cut(n)))
            }
            ApiError::InvalidFeedbackToken(m) if long(m) => {
                Cow::Owned(ApiError::InvalidFeedbackToken(cut(m)))
            }
            ApiError::InvalidMultipart(m) if long(m) => {
                Cow::Owned(ApiError::InvalidMultipart(cut(m)))
            }
            ApiError::EndpointNotAvailable {
                endpoint,
                model,
                kind,
            } if long(model) => Cow::Owned(ApiError::EndpointNotAvailable {
                endpoint,
                model: cut(model),
                kind,
            }),
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::ExpiredKey
            | ApiError::DisabledKey
            | ApiError::InvalidJson(_)
            | ApiError::InvalidField { .. }
            | ApiError::UnknownModel(_)
            | ApiError::ModelNotAllowed(_)
            | ApiError::OriginNotAllowed
            | ApiError::UnknownProvider(_)
            | ApiError::PassthroughNotAllowed(_)
            | ApiError::UnknownEndpoint { .. }
            | ApiError::PayloadTooLarge
            | ApiError::BodyTooComplex { .. }
            | ApiError::RateLimited { .. }
            | ApiError::BudgetExceeded { .. }
            | ApiError::BudgetUnavailable
            | ApiError::KeyUnverifiable
            | ApiError::Upstream(_)
            | ApiError::GuardrailBlocked { .. }
            | ApiError::GuardrailUnavailable(_)
            | ApiError::GuardrailPolicyUnavailable(_)
            | ApiError::TargetsBusy(_)
            | ApiError::InvalidFeedbackToken(_)
            | ApiError::InvalidMultipart(_)
            | ApiError::EndpointNotAvailable { .. }
            | ApiError::FailoverAttemptLost
            | ApiError::Internal => Cow::Borrowed(self),
        }
    }

    /// The error body in `dialect` (client-controlled text in it bounded, see
    /// [`ApiError::bounded`]).
    pub fn body(&self, dialect: Dialect) -> Vec<u8> {
        let class = self.class();
        let message = self.bounded().to_string();
        let value = match dialect {
            Dialect::OpenAi => json!({"error": {
                "message": message,
                "type": class.openai_type,
                "param": self.param(),
                "code": class.openai_code,
            }}),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": {"type": anthropic_type(class.status), "message": message},
            }),
            Dialect::Gemini => json!({"error": {
                "code": class.status,
                "message": message,
                "status": gemini_status(class.status),
            }}),
            // Cohere's errors carry a message only (and an id, which Tollgate's
            // `x-tollgate-request-id` header stands for).
            Dialect::Cohere => json!({ "message": message }),
        };
        value.to_string().into_bytes()
    }
}

/// Anthropic's `error.type` for a status.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// Gemini's (Google RPC) `error.status` for a status.
pub fn gemini_status(status: u16) -> &'static str {
    match status {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn openai_body_has_the_documented_shape() {
        let e = ApiError::UnknownModel("gpt-x".into());
        let v = parse(e.body(Dialect::OpenAi));
        assert_eq!(e.status(), 404);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-x"));
        let v = parse(ApiError::MissingKey.body(Dialect::OpenAi));
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn other_dialects_follow_their_apis() {
        let v = parse(ApiError::InvalidKey.body(Dialect::Anthropic));
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let v = parse(ApiError::ModelNotAllowed("m".into()).body(Dialect::Gemini));
        assert_eq!(v["error"]["code"], 403);
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    }

    #[test]
    fn a_budget_refusal_is_a_429_naming_scope_and_period() {
        let e = ApiError::BudgetExceeded {
            scope: "tenant",
            period: "monthly",
            retry_after_secs: Some(60),
        };
        let v = parse(e.body(Dialect::OpenAi));
        assert_eq!(e.status(), 429);
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert_eq!(v["error"]["type"], "insufficient_quota");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains("monthly budget of this tenant"), "{m}");
        let v = parse(e.body(Dialect::Anthropic));
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn huge_client_text_is_never_echoed_whole() {
        let huge = "m".repeat(1 << 20);
        for e in [
            ApiError::UnknownModel(huge.clone()),
            ApiError::ModelNotAllowed(huge.clone()),
            ApiError::InvalidJson(huge.clone()),
            ApiError::UnknownEndpoint {
                method: huge.clone(),
                path: format!("/v1beta/models/{huge}:generateContent"),
            },
            ApiError::InvalidField {
                param: "model",
                message: huge.clone(),
            },
        ] {
            for d in [Dialect::OpenAi, Dialect::Anthropic, Dialect::Gemini] {
                let body = e.body(d);
                assert!(body.len() < 2048, "{e:?}: {} bytes", body.len());
                let v = parse(body);
                let m = v["error"]["message"].as_str().unwrap();
                assert!(m.contains("…[+"), "{m}");
            }
        }
        let e = ApiError::UnknownModel(huge);
        let m = e.bounded().to_string();
        assert!(m.ends_with("does not exist or you do not have access to it."));
        // Short text stays as it is.
        assert!(matches!(
            ApiError::UnknownModel("gpt".into()).bounded(),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_body_too_complex_is_a_400_in_each_dialect() {
        let e = ApiError::BodyTooComplex {
            what: "an object has too many members",
            max: 1000,
        };
        assert_eq!(e.status(), 400);
        let v = parse(e.body(Dialect::OpenAi));
        assert_eq!(v["error"]["code"], "request_too_complex");
        let v = parse(e.body(Dialect::Anthropic));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v = parse(e.body(Dialect::Gemini));
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    }

    #[test]
    fn dialect_follows_the_path() {
        assert_eq!(Dialect::from_path("/v1/chat/completions"), Dialect::OpenAi);
        assert_eq!(Dialect::from_path("/v1/messages"), Dialect::Anthropic);
        assert_eq!(
            Dialect::from_path("/v1beta/models/gemini-2.0-flash:generateContent"),
            Dialect::Gemini
        );
    }

    #[test]
    fn rerank_paths_answer_in_cohere_shape() {
        assert_eq!(Dialect::from_path("/v1/rerank"), Dialect::Cohere);
        assert_eq!(Dialect::from_path("/v2/rerank?x=1"), Dialect::Cohere);
        assert_eq!(Dialect::from_path("/v1/rerankers"), Dialect::OpenAi);
        let v = parse(ApiError::ModelNotAllowed("m".into()).body(Dialect::Cohere));
        assert!(v["message"].as_str().unwrap().contains("`m`"), "{v}");
        assert!(v.get("error").is_none(), "{v}");
    }
}
