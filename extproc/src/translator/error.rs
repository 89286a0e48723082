//! Why a translation failed, and the one exhaustive mapping of each reason onto a client error.

use tollgate_core::ApiError;

/// A request or response that cannot be carried into the other dialect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The client's request is malformed (a member of the wrong shape).
    #[error("{message}")]
    InvalidRequest {
        /// The offending member.
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The request uses something the target provider's API cannot express.
    #[error("{message}")]
    Unsupported {
        /// The member that cannot be carried over.
        param: &'static str,
        /// What cannot be carried over.
        message: String,
    },
    /// The provider's successful response is not what its API documents.
    #[error("the provider's response could not be read: {0}")]
    UpstreamBody(String),
}

impl TranslateError {
    /// The error the client gets.
    pub fn api_error(&self) -> ApiError {
        match self {
            TranslateError::InvalidRequest { param, message }
            | TranslateError::Unsupported { param, message } => ApiError::InvalidField {
                param,
                message: message.clone(),
            },
            TranslateError::UpstreamBody(_) => ApiError::Upstream(502),
        }
    }
}

/// A malformed-member error.
pub fn invalid(param: &'static str, e: impl std::fmt::Display) -> TranslateError {
    TranslateError::InvalidRequest {
        param,
        message: format!("Invalid `{param}`: {e}"),
    }
}

impl From<TranslateError> for ApiError {
    fn from(e: TranslateError) -> Self {
        e.api_error()
    }
}
