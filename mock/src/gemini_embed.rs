//! `POST …/models/{model}:embedContent` and `:batchEmbedContents`: the Gemini API's embeddings.
//! `embedContent` takes `{content: {parts: [{text}]}, taskType?, title?, outputDimensionality?,
//! model?}` and answers `{"embedding": {"values": [...]}}`; `batchEmbedContents` takes
//! `{requests: [EmbedContentRequest]}`, each naming `model: "models/{model}"` of the path, and
//! answers `{"embeddings": [{"values": [...]}]}` in request order. As the Gemini API documents
//! it, neither answer carries usage. Each vector is derived from a hash of the content's
//! texts (so the same text always gets the same vector), has unit length, and
//! [`DEFAULT_DIMENSIONS`] values unless `outputDimensionality` asks for another length. The
//! key comes in `x-goog-api-key` or the `key` query parameter; errors in Google's shape.
//!
//! Vertex AI's text embeddings, `POST …/publishers/google/models/{model}:predict` (bearer
//! token): `{instances: [{content, task_type?, title?}], parameters?: {outputDimensionality?,
//! autoTruncate?}}` → `{predictions: [{embeddings: {values, statistics: {token_count,
//! truncated}}}], metadata: {billableCharacterCount}}`, `token_count` one per word.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::gemini;

/// Vector length without `outputDimensionality` (the mock's, shorter than Google's 3072).
pub const DEFAULT_DIMENSIONS: u64 = 8;

/// The most `outputDimensionality` accepts (gemini-embedding-001's full size).
const MAX_DIMENSIONS: u64 = 3072;

/// The method of an embeddings path: `(model, batch)`.
pub(crate) fn call(path: &str) -> Option<(&str, bool)> {
    let (prefix, last) = path.rsplit_once('/')?;
    if !prefix.ends_with("/models") {
        return None;
    }
    let (model, method) = last.split_once(':')?;
    let batch = match method {
        "embedContent" => false,
        "batchEmbedContents" => true,
        _ => return None,
    };
    (!model.is_empty()).then_some((model, batch))
}

fn invalid(message: &str) -> Response {
    gemini::error_response(StatusCode::BAD_REQUEST, message)
}

/// One request's vector, or the message of the 400 it gets.
fn embed(request: &Value, model: &str, batch: bool, at: &str) -> Result<Value, String> {
    let named = request.get("model").and_then(Value::as_str);
    let want = format!("models/{model}");
    match (named, batch) {
        (None, true) => return Err(format!("* {at}.model: model is required")),
        (Some(m), _) if m != want => {
            return Err(format!(
                "* {at}.model: the model `{m}` does not match `{want}` of the URL"
            ))
        }
        _ => {}
    }
    let parts = request
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("* {at}.content: content is not specified"))?;
    let mut text = String::new();
    for p in parts {
        let t = p
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("* {at}.content.parts: the mock embeds text parts only"))?;
        text.push_str(t);
        text.push('\n');
    }
    let dims = match request.get("outputDimensionality") {
        None => DEFAULT_DIMENSIONS,
        Some(d) => d
            .as_u64()
            .filter(|d| (1..=MAX_DIMENSIONS).contains(d))
            .ok_or_else(|| {
                format!("* {at}.outputDimensionality: must be between 1 and {MAX_DIMENSIONS}")
            })?,
    };
    Ok(json!({ "values": vector(&text, dims) }))
}

/// A unit vector of `dims` values from a hash of `text`.
pub(crate) fn vector(text: &str, dims: u64) -> Vec<f64> {
    // FNV-1a, then xorshift for each value.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut raw: Vec<f64> = (0..dims)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h % 2000) as f64 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        for v in &mut raw {
            *v = f64::from((*v / norm) as f32);
        }
    }
    raw
}

/// Answers one embeddings request (the key was checked).
pub(crate) fn respond(body: &[u8], model: &str, batch: bool) -> Response {
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return invalid("Invalid JSON payload received."),
    };
    if !batch {
        return match embed(&Value::Object(request), model, false, "EmbedContentRequest") {
            Ok(e) => Json(json!({ "embedding": e })).into_response(),
            Err(m) => invalid(&m),
        };
    }
    let Some(requests) = request
        .get("requests")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    else {
        return invalid("* BatchEmbedContentsRequest.requests: requests is not specified");
    };
    let mut out = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        match embed(
            r,
            model,
            true,
            &format!("BatchEmbedContentsRequest.requests[{i}]"),
        ) {
            Ok(e) => out.push(e),
            Err(m) => return invalid(&m),
        }
    }
    Json(json!({ "embeddings": out })).into_response()
}

/// Answers Vertex AI's `:predict` for a text embedding model (the token was checked);
/// `model`'s gemini-embedding models take one instance per request, as Vertex AI documents.
pub(crate) fn predict(body: &[u8], model: &str) -> Response {
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return invalid("Invalid JSON payload received."),
    };
    let Some(instances) = request
        .get("instances")
        .and_then(Value::as_array)
        .filter(|i| !i.is_empty())
    else {
        return invalid("instances is required");
    };
    if model.starts_with("gemini-embedding") && instances.len() > 1 {
        return invalid("Unable to submit request because the model supports only 1 instance per request. Reduce the number of instances and try again.");
    }
    let dims = match request
        .get("parameters")
        .and_then(|p| p.get("outputDimensionality"))
    {
        None => DEFAULT_DIMENSIONS,
        Some(d) => match d.as_u64().filter(|d| (1..=MAX_DIMENSIONS).contains(d)) {
            Some(d) => d,
            None => return invalid("parameters.outputDimensionality is out of range"),
        },
    };
    let mut predictions = Vec::with_capacity(instances.len());
    let mut chars = 0usize;
    for (i, instance) in instances.iter().enumerate() {
        let Some(content) = instance.get("content").and_then(Value::as_str) else {
            return invalid(&format!("instances[{i}].content is required"));
        };
        chars += content.chars().filter(|c| !c.is_whitespace()).count();
        let mut text = content.to_owned();
        text.push('\n');
        predictions.push(json!({"embeddings": {
            "values": vector(&text, dims),
            "statistics": {"token_count": crate::text::word_count(content), "truncated": false},
        }}));
    }
    Json(json!({
        "predictions": predictions,
        "metadata": {"billableCharacterCount": chars},
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_model_and_the_method() {
        assert_eq!(call("/v1beta/models/e:embedContent"), Some(("e", false)));
        assert_eq!(call("/v1/models/e:batchEmbedContents"), Some(("e", true)));
        assert_eq!(call("/v1beta/models/e:generateContent"), None);
    }

    #[test]
    fn vectors_are_unit_length_and_follow_the_text() {
        let a = vector("hello", 8);
        assert_eq!(a.len(), 8);
        let n: f64 = a.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-5, "{n}");
        assert_eq!(a, vector("hello", 8));
        assert_ne!(a, vector("world", 8));
    }

    #[test]
    fn batch_requests_must_name_the_path_model() {
        let r = json!({"content": {"parts": [{"text": "a"}]}});
        assert!(embed(&r, "e", true, "x").is_err());
        assert!(embed(&r, "e", false, "x").is_ok());
        let named = json!({"model": "models/other", "content": {"parts": [{"text": "a"}]}});
        assert!(embed(&named, "e", false, "x").is_err());
        let dims = json!({"model": "models/e", "outputDimensionality": 3,
            "content": {"parts": [{"text": "a"}]}});
        assert_eq!(
            embed(&dims, "e", true, "x").unwrap()["values"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
}
