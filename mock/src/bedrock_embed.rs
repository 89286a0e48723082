//! `POST …/model/{modelId}/invoke`: AWS Bedrock's InvokeModel of the Amazon Titan Text
//! Embeddings models, SigV4-verified like Converse (see [`crate::bedrock`]).
//!
//! - `amazon.titan-embed-text-v2:0`: `{"inputText", "dimensions"?: 256 | 512 | 1024 (default
//!   1024), "normalize"?: bool, "embeddingTypes"?: ["float" | "binary"]}` →
//!   `{"embedding": [...], "embeddingsByType": {"float": [...]}, "inputTextTokenCount": n}`.
//! - `amazon.titan-embed-text-v1`: `{"inputText"}` only → `{"embedding": [1536 values],
//!   "inputTextTokenCount": n}`.
//! - `cohere.embed-*` (Cohere Embed v3 on Bedrock): `{"texts": [1..=96 strings], "input_type":
//!   "search_document" | "search_query" | "classification" | "clustering", "truncate"?,
//!   "embedding_types"?}` → `{"id", "response_type": "embeddings_floats", "texts",
//!   "embeddings": [[1024 values], ...]}` (`embeddings_by_type` with `{"float": [...]}` when
//!   `embedding_types` is given); no token count in the body, only the header below.
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

fn with_token_header(mut r: Response, tokens: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&tokens.to_string()) {
        r.headers_mut().insert(
            HeaderName::from_static("x-amzn-bedrock-input-token-count"),
            v,
        );
    }
    r
}

/// Cohere Embed on Bedrock.
fn cohere(request: &Map<String, Value>, number: u64) -> Response {
    let allowed = [
        "texts",
        "input_type",
        "truncate",
        "embedding_types",
        "images",
    ];
    if let Some(k) = request.keys().find(|k| !allowed.contains(&k.as_str())) {
        return extraneous(k).into_response();
    }
    let texts: Option<Vec<&str>> = request
        .get("texts")
        .and_then(Value::as_array)
        .filter(|t| (1..=96).contains(&t.len()))
        .and_then(|t| t.iter().map(Value::as_str).collect());
    let Some(texts) = texts else {
        return BedrockError::validation(
            "Malformed input request: #/texts: expected 1 to 96 strings, please reformat your input and try again.".to_owned(),
        )
        .into_response();
    };
    let kinds = [
        "search_document",
        "search_query",
        "classification",
        "clustering",
    ];
    if !request
        .get("input_type")
        .and_then(Value::as_str)
        .is_some_and(|t| kinds.contains(&t))
    {
        return BedrockError::validation(
            "Malformed input request: #/input_type: required, one of search_document, search_query, classification, clustering, please reformat your input and try again.".to_owned(),
        )
        .into_response();
    }
    let vectors: Vec<Vec<f64>> = texts
        .iter()
        .map(|t| crate::gemini_embed::vector(&format!("{t}\n"), 1024))
        .collect();
    let tokens: u64 = texts
        .iter()
        .map(|t| crate::text::word_count(t).max(1))
        .sum();
    let answer = if request.contains_key("embedding_types") {
        json!({"id": format!("mock-embed-{number}"), "response_type": "embeddings_by_type",
            "texts": texts, "embeddings": {"float": vectors}})
    } else {
        json!({"id": format!("mock-embed-{number}"), "response_type": "embeddings_floats",
            "texts": texts, "embeddings": vectors})
    };
    with_token_header(Json(answer).into_response(), tokens)
}

/// Answers one InvokeModel request (the signature was checked).
pub(crate) fn respond(body: &[u8], model: &str, number: u64) -> Response {
    if model.starts_with("cohere.embed") {
        return match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => cohere(&m, number),
            _ => BedrockError::validation(
                "Malformed input request, please reformat your input and try again.".to_owned(),
            )
            .into_response(),
        };
    }
    let v2 = model.starts_with("amazon.titan-embed-text-v2");
    let v1 = model.starts_with("amazon.titan-embed-text-v1");
    if !v1 && !v2 {
        return BedrockError::not_found(
            "The provided model identifier is invalid (the mock serves Titan and Cohere embeddings).",
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
    with_token_header(Json(answer).into_response(), tokens)
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

    fn answer(model: &str, body: Value) -> (u16, Value) {
        let r = respond(body.to_string().as_bytes(), model, 1);
        let status = r.status().as_u16();
        let bytes = futures::executor::block_on(axum::body::to_bytes(r.into_body(), 1 << 24));
        (status, serde_json::from_slice(&bytes.unwrap()).unwrap())
    }

    #[test]
    fn titan_and_cohere_check_their_request_shapes() {
        let (s, v) = answer(
            "amazon.titan-embed-text-v2:0",
            json!({"inputText": "a b", "dimensions": 256}),
        );
        assert_eq!(s, 200);
        assert_eq!(v["embedding"].as_array().unwrap().len(), 256);
        assert_eq!(v["inputTextTokenCount"], 2);
        for bad in [
            json!({"inputText": "a", "dimensions": 100}),
            json!({"inputText": ""}),
            json!({"input": "a"}),
            json!({"inputText": "a", "normalize": "yes"}),
        ] {
            assert_eq!(answer("amazon.titan-embed-text-v2:0", bad).0, 400);
        }
        assert_eq!(
            answer(
                "amazon.titan-embed-text-v1",
                json!({"inputText": "a", "normalize": true})
            )
            .0,
            400
        );
        let (s, v) = answer(
            "cohere.embed-english-v3",
            json!({"texts": ["a", "b"], "input_type": "search_document"}),
        );
        assert_eq!(s, 200);
        assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
        assert_eq!(
            answer("cohere.embed-english-v3", json!({"texts": ["a"]})).0,
            400
        );
        assert_eq!(
            answer(
                "cohere.embed-english-v3",
                json!({"texts": [], "input_type": "search_query"})
            )
            .0,
            400
        );
        assert_eq!(answer("other.model", json!({"inputText": "a"})).0, 404);
    }
}
