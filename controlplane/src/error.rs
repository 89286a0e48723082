//! The control plane's error type and the one place where each error becomes an HTTP status
//! and a JSON body `{"error": {"code": ..., "message": ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer`, or a token that is not an admin token.
    #[error("missing or wrong admin token (Authorization: Bearer <token>)")]
    Unauthorized,
    /// A sidecar call without a valid `x-tollgate-signature`.
    #[error("{0}")]
    BadSignature(String),
    /// The request cannot be read: malformed JSON, a bad query string.
    #[error("{0}")]
    BadRequest(String),
    /// The request was read but a field is not acceptable; names the field path.
    #[error("{0}")]
    Invalid(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// `resolve-key`: unknown, revoked or expired key.
    #[error("unknown, revoked or expired key")]
    UnknownKey,
    /// The request conflicts with what is stored (an id that exists, a revoked key).
    #[error("{0}")]
    Conflict(String),
    /// No route for this path.
    #[error("no such endpoint")]
    NoRoute,
    /// The route exists, but not for this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The storage failed (details logged, not sent).
    #[error("storage unavailable")]
    Storage(String),
}

impl ApiError {
    /// The HTTP status and the stable error code of each variant.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::BadSignature(_) => (StatusCode::UNAUTHORIZED, "bad_signature"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::UnknownKey => (StatusCode::NOT_FOUND, "unknown_key"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Storage(detail) = &self {
            tracing::error!(error = %detail, "Storage call failed");
        }
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, axum::Json(body)).into_response()
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::Storage(format!("sqlite: {e}"))
    }
}

impl From<postgres::Error> for ApiError {
    fn from(e: postgres::Error) -> Self {
        ApiError::Storage(format!("postgres: {e}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::Storage(format!("stored document: {e}"))
    }
}
