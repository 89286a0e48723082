//! Errors the mock answers with, each rendered as an OpenAI-format error body
//! `{"error":{"message","type","param","code"}}` with the status OpenAI would use.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The OpenAI error message for a body that is not JSON, verbatim.
const INVALID_JSON_MESSAGE: &str = "We could not parse the JSON body of your request. (HINT: \
    This likely means you aren't using your HTTP library correctly. The OpenAI API expects a \
    JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to \
    fix this, please contact us through our help center at help.openai.com.)";

/// The OpenAI error message for a 5xx, verbatim.
pub(crate) const SERVER_ERROR_MESSAGE: &str =
    "The server had an error while processing your request. Sorry about that!";

/// Every error the mock can answer with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MockError {
    /// The body is not valid JSON.
    #[error("{}", INVALID_JSON_MESSAGE)]
    InvalidJson,
    /// The body is JSON but not an object.
    #[error("The request body must be a JSON object.")]
    BodyNotObject,
    /// No `model` in the body (and no Azure deployment in the path).
    #[error("you must provide a model parameter")]
    MissingModel,
    /// A required body parameter is absent.
    #[error("Missing required parameter: '{0}'.")]
    MissingParameter(&'static str),
    /// A parameter (body field, query parameter or mock header) has an unusable value.
    #[error("{message}")]
    InvalidParameter {
        param: &'static str,
        message: String,
    },
    /// The configured API key was not presented.
    #[error("Incorrect API key provided")]
    InvalidApiKey,
    /// An Azure OpenAI deployment path without `api-version`.
    #[error("Missing required query parameter: api-version")]
    MissingApiVersion,
    /// No endpoint at this path.
    #[error("Invalid URL ({method} {path})")]
    NotFound { method: Method, path: String },
    /// The path exists but not for this method.
    #[error("Invalid method for URL ({method} {path})")]
    MethodNotAllowed { method: Method, path: String },
    /// A fault requested through the `mock-error-<status>` model name.
    #[error("{}", injected_message(*.status, .model))]
    Injected { status: StatusCode, model: String },
    /// `mock-stream-error` asked for without streaming: the generation fails as a whole.
    #[error("{}", SERVER_ERROR_MESSAGE)]
    GenerationFailed,
}

/// Status, OpenAI error `type`, `param` and `code` of one error.
struct Classification {
    status: StatusCode,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl MockError {
    /// The HTTP status of this error.
    pub(crate) fn status(&self) -> StatusCode {
        self.classify().status
    }

    /// The one place that decides how each error looks on the wire.
    fn classify(&self) -> Classification {
        let invalid_request = |status, param, code| Classification {
            status,
            kind: "invalid_request_error",
            param,
            code,
        };
        match self {
            Self::InvalidJson | Self::BodyNotObject | Self::MissingModel => {
                invalid_request(StatusCode::BAD_REQUEST, None, None)
            }
            Self::MissingParameter(param) => invalid_request(
                StatusCode::BAD_REQUEST,
                Some(param),
                Some("missing_required_parameter"),
            ),
            Self::InvalidParameter { param, .. } => {
                invalid_request(StatusCode::BAD_REQUEST, Some(param), None)
            }
            Self::InvalidApiKey => {
                invalid_request(StatusCode::UNAUTHORIZED, None, Some("invalid_api_key"))
            }
            Self::MissingApiVersion => invalid_request(
                StatusCode::BAD_REQUEST,
                Some("api-version"),
                Some("missing_required_parameter"),
            ),
            Self::NotFound { .. } => invalid_request(StatusCode::NOT_FOUND, None, None),
            Self::MethodNotAllowed { .. } => {
                invalid_request(StatusCode::METHOD_NOT_ALLOWED, None, None)
            }
            Self::Injected { status, .. } => injected_classification(*status),
            Self::GenerationFailed => Classification {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                param: None,
                code: None,
            },
        }
    }
}

fn injected_classification(status: StatusCode) -> Classification {
    match status.as_u16() {
        429 => Classification {
            status,
            kind: "rate_limit_exceeded",
            param: None,
            code: Some("rate_limit_exceeded"),
        },
        401 => Classification {
            status,
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        },
        404 => Classification {
            status,
            kind: "invalid_request_error",
            param: Some("model"),
            code: Some("model_not_found"),
        },
        500..=599 => Classification {
            status,
            kind: "server_error",
            param: None,
            code: None,
        },
        _ => Classification {
            status,
            kind: "invalid_request_error",
            param: None,
            code: None,
        },
    }
}

fn injected_message(status: StatusCode, model: &str) -> String {
    match status.as_u16() {
        429 => format!(
            "Rate limit reached for {model} (mock) on requests per min (RPM): Limit 1, Used 1, \
             Requested 1. Please try again in 1s."
        ),
        401 => "Incorrect API key provided".to_owned(),
        404 => format!("The model `{model}` does not exist or you do not have access to it."),
        500..=599 => SERVER_ERROR_MESSAGE.to_owned(),
        other => format!("Mock error {other} requested through model `{model}`."),
    }
}

/// The `{"error": …}` envelope.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub error: ErrorObject<'a>,
}

/// The object inside the `{"error": …}` envelope.
#[derive(Serialize)]
pub(crate) struct ErrorObject<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl IntoResponse for MockError {
    fn into_response(self) -> Response {
        let Classification {
            status,
            kind,
            param,
            code,
        } = self.classify();
        let message = self.to_string();
        let body = ErrorBody {
            error: ErrorObject {
                message: &message,
                kind,
                param,
                code,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The body a misbehaving upstream proxy answers with (`mock-html-error`): not an OpenAI error.
pub(crate) fn html_bad_gateway() -> Response {
    const BODY: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
        <center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n\
        </html>\r\n";
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html")],
        BODY,
    )
        .into_response()
}
