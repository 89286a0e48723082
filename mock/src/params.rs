//! Reading OpenAI request parameters from a JSON request body, with the OpenAI-style 400 a real
//! provider gives for a value of the wrong type or range.

use serde_json::{Map, Value};

use crate::error::MockError;

/// A parsed JSON request body.
pub(crate) type Request = Map<String, Value>;

/// A boolean parameter; absent or `null` is `false`.
pub(crate) fn flag(request: &Request, name: &'static str) -> Result<bool, MockError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(MockError::InvalidParameter {
            param: name,
            message: format!("Invalid type for '{name}': expected a boolean."),
        }),
    }
}

/// Whether the stream should end with a usage chunk (`stream_options.include_usage`).
/// Like OpenAI, `stream_options` is rejected on a request that does not stream.
pub(crate) fn include_usage(request: &Request, stream: bool) -> Result<bool, MockError> {
    match request.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(_) if !stream => Err(MockError::InvalidParameter {
            param: "stream_options",
            message: "The 'stream_options' parameter is only allowed when 'stream' is enabled."
                .to_owned(),
        }),
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(value)) => Ok(*value),
            Some(_) => Err(MockError::InvalidParameter {
                param: "stream_options.include_usage",
                message: "Invalid type for 'stream_options.include_usage': expected a boolean."
                    .to_owned(),
            }),
        },
        Some(_) => Err(MockError::InvalidParameter {
            param: "stream_options",
            message: "Invalid type for 'stream_options': expected an object.".to_owned(),
        }),
    }
}

/// A positive integer parameter; absent or `null` is `None`.
pub(crate) fn positive_integer(
    request: &Request,
    name: &'static str,
) -> Result<Option<u64>, MockError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(number) if number >= 1 => Ok(Some(number)),
            _ => Err(MockError::InvalidParameter {
                param: name,
                message: format!("Invalid value for '{name}': expected an integer >= 1."),
            }),
        },
    }
}

/// The completion length limit: the smaller of `max_tokens` and `max_completion_tokens`.
pub(crate) fn max_tokens(request: &Request) -> Result<Option<u64>, MockError> {
    let legacy = positive_integer(request, "max_tokens")?;
    let current = positive_integer(request, "max_completion_tokens")?;
    Ok(match (legacy, current) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}
