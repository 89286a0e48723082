//! `POST …/model/{modelId}/invoke`: AWS Bedrock's InvokeModel of the Amazon Titan Text
//! Embeddings models, SigV4-verified like Converse (see [`crate::bedrock`]).
//!
//! - `amazon.titan-embed-text-v2:0`: `{"inputText", "dimensions"?: 256 | 512 | 1024 (default
//!   1024), "normalize"?: bool, "embeddingTypes"?: ["float" | "binary"]}` →
//!   `{"embedding": [...], "embeddingsByType": {"float": [...]}, "inputTextTokenCount": n}`.
//! - `amazon.titan-embed-text-v1`: `{"inputText"}` only → `{"embedding": [1536 values],
//!   "inputTextTokenCount": n}`.
//!
//! Any other member is refused as Bedrock does (`ValidationException`, "extraneous key"), an
//! empty or missing `inputText` too; other model ids are not found. `inputTextTokenCount` is
//! one per word; the answer also carries Bedrock's `x-amzn-bedrock-input-token-count` header.
//! Each vector comes from a hash of the text and has unit length.

use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::bedrock::{percent_decode, BedrockError};

/// The model id of an InvokeModel path (`…/model/{percent-encoded id}/invoke`).
pub(crate) fn invoke_path(path: &str) -> Option<String> {
    let prefix = path.strip_suffix("/invoke")?;
    let (_, id) = prefix.rsplit_once("/model/")?;
    (!id.is_empty() && !id.contains('/')).then(|| percent_decode(id))
}

fn extraneous(key: &str) -> BedrockError {
    BedrockError::validation(format!(
        "Malformed input request: extraneous key [{key}] is not permitted, please reformat your input and try again."
    ))
}

/// Answers one InvokeModel request (the signature was checked).
pub(crate) fn respond(body: &[u8], model: &str) -> Response {
    let v2 = model.starts_with("amazon.titan-embed-text-v2");
    let v1 = model.starts_with("amazon.titan-embed-text-v1");
    if !v1 && !v2 {
        return BedrockError::not_found(
            "The provided model identifier is invalid (the mock serves Amazon Titan Text Embeddings).",
        )
        .into_response();
    }
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => {
            return BedrockError::validation(
                "Malformed input request, please reformat your input and try again.".to_owned(),
            )
            .into_response()
        }
    };
    let allowed: &[&str] = if v2 {
        &["inputText", "dimensions", "normalize", "embeddingTypes"]
    } else {
        &["inputText"]
    };
    if let Some(k) = request.keys().find(|k| !allowed.contains(&k.as_str())) {
        return extraneous(k).into_response();
    }
    let Some(text) = request
        .get("inputText")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return BedrockError::validation(
            "Malformed input request: #/inputText: expected minLength: 1, please reformat your input and try again.".to_owned(),
        )
        .into_response();
    };
    let dims = match request.get("dimensions") {
        None => {
            if v2 {
                1024
            } else {
                1536
            }
        }
        Some(d) => match d.as_u64().filter(|d| [256, 512, 1024].contains(d)) {
            Some(d) => d,
            None => {
                return BedrockError::validation(
                    "Malformed input request: #/dimensions: 256, 512 or 1024, please reformat your input and try again.".to_owned(),
                )
                .into_response()
            }
        },
    };
    if request.get("normalize").is_some_and(|n| !n.is_boolean()) {
        return BedrockError::validation(
            "Malformed input request: #/normalize: expected type: Boolean, please reformat your input and try again.".to_owned(),
        )
        .into_response();
    }
    let mut seeded = text.to_owned();
    seeded.push('\n');
    let vector = crate::gemini_embed::vector(&seeded, dims);
    let tokens = crate::text::word_count(text).max(1);
    let mut answer = json!({ "embedding": vector, "inputTextTokenCount": tokens });
    if v2 {
        answer["embeddingsByType"] = json!({ "float": answer["embedding"].clone() });
    }
    let mut r = Json(answer).into_response();
    if let Ok(v) = HeaderValue::from_str(&tokens.to_string()) {
        r.headers_mut().insert(
            HeaderName::from_static("x-amzn-bedrock-input-token-count"),
            v,
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_paths_name_the_model() {
        assert_eq!(
            invoke_path("/model/amazon.titan-embed-text-v2%3A0/invoke").as_deref(),
            Some("amazon.titan-embed-text-v2:0")
        );
        assert_eq!(invoke_path("/model/x/converse"), None);
    }
}
