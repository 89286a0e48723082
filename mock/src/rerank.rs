//! The rerank APIs: Cohere v2 (`…/v2/rerank`, or a path with a `cohere` segment), Jina (a
//! `jina` segment; also plain `/v1/rerank`, which vLLM serves in the same shape), Voyage (a
//! `voyage` segment) and Hugging Face text-embeddings-inference (a `tei` segment, or `/rerank`
//! at the root). Written from each API's documentation, sharing nothing with the gateway:
//! scores come from word overlap between the query and each document (deterministic, most
//! overlap first, ties by index), usage in each API's own unit (Cohere search units, one per
//! 100 documents; Jina and Voyage `usage.total_tokens`, one token per word of the query for
//! every document plus the document's words; TEI none), errors in each API's own body
//! (Cohere `{"id", "message"}`, Jina and Voyage `{"detail"}`, TEI `{"error", "error_type"}`).
//! A model named `mock-error-<status>` answers that status.

use std::collections::HashSet;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Which API a rerank path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    Cohere,
    Jina,
    Voyage,
    Tei,
}

impl Api {
    /// The API of a path ending in `/rerank`; `None` for any other path.
    pub(crate) fn of(path: &str) -> Option<Api> {
        let prefix = path.trim_end_matches('/').strip_suffix("/rerank")?;
        let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        let has = |name: &str| segments.contains(&name);
        Some(if has("cohere") {
            Api::Cohere
        } else if has("jina") {
            Api::Jina
        } else if has("voyage") {
            Api::Voyage
        } else if has("tei") || segments.is_empty() {
            Api::Tei
        } else if segments.last() == Some(&"v2") {
            Api::Cohere
        } else {
            Api::Jina
        })
    }

    /// An error in this API's own body.
    fn error(self, status: StatusCode, message: &str, number: u64) -> Response {
        let body = match self {
            Api::Cohere => json!({ "id": format!("mock-{number}"), "message": message }),
            Api::Jina | Api::Voyage => json!({ "detail": message }),
            Api::Tei => json!({
                "error": message,
                "error_type": if status == StatusCode::UNAUTHORIZED { "Unauthorized" } else { "Validation" },
            }),
        };
        (status, Json(body)).into_response()
    }

    /// The status of a malformed request (FastAPI's 422 for Jina, TEI's 422).
    fn invalid_status(self) -> StatusCode {
        match self {
            Api::Cohere | Api::Voyage => StatusCode::BAD_REQUEST,
            Api::Jina | Api::Tei => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

fn words(s: &str) -> HashSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Answers one rerank request. `api_key`: the key the mock requires (Bearer), if any.
pub(crate) fn respond(
    api: Api,
    api_key: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    number: u64,
) -> Response {
    if let Some(key) = api_key {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == key);
        if !bearer {
            return api.error(StatusCode::UNAUTHORIZED, "invalid api token", number);
        }
    }
    let invalid = |m: &str| api.error(api.invalid_status(), m, number);
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return invalid("invalid request: body must be a JSON object");
    };
    let model = req.get("model").and_then(Value::as_str);
    if api != Api::Tei && model.is_none_or(str::is_empty) {
        return invalid("invalid request: model must be specified");
    }
    if let Some(status) = model
        .and_then(|m| m.strip_prefix("mock-error-"))
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        return api.error(status, &format!("mock error {}", status.as_u16()), number);
    }
    let Some(query) = req
        .get("query")
        .and_then(Value::as_str)
        .filter(|q| !q.is_empty())
    else {
        return invalid("invalid request: query must not be empty");
    };
    let docs_field = if api == Api::Tei {
        "texts"
    } else {
        "documents"
    };
    let Some(docs) = req.get(docs_field).and_then(Value::as_array) else {
        return invalid(&format!("invalid request: {docs_field} must be a list"));
    };
    let Some(texts) = docs
        .iter()
        .map(|d| d.as_str().map(str::to_owned))
        .collect::<Option<Vec<String>>>()
    else {
        return invalid(&format!("invalid request: {docs_field} must be strings"));
    };
    if texts.is_empty() {
        return invalid(&format!("invalid request: {docs_field} must not be empty"));
    }
    let limit_field = match api {
        Api::Voyage => "top_k",
        Api::Cohere | Api::Jina | Api::Tei => "top_n",
    };
    let limit = req
        .get(limit_field)
        .and_then(Value::as_u64)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    // Jina and Voyage return documents unless told not to (Jina's default is true).
    let return_documents = match api {
        Api::Tei => req
            .get("return_text")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Api::Jina => req
            .get("return_documents")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        Api::Voyage => req
            .get("return_documents")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Api::Cohere => false,
    };
    let q = words(query);
    let mut scored: Vec<(usize, f64)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let overlap = q.intersection(&words(t)).count() as f64;
            (i, overlap / (q.len() as f64 + 1.0))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(n) = limit {
        scored.truncate(n);
    }
    let tokens: u64 = texts
        .iter()
        .map(|t| word_count(query) + word_count(t))
        .sum();
    let model = model.unwrap_or_default();
    let body = match api {
        Api::Cohere => json!({
            "id": format!("mock-rerank-{number}"),
            "results": scored.iter().map(|(i, s)| json!({"index": i, "relevance_score": s})).collect::<Vec<_>>(),
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"search_units": texts.len().div_ceil(100)},
            },
        }),
        Api::Jina => json!({
            "model": model,
            "usage": {"total_tokens": tokens},
            "results": scored.iter().map(|(i, s)| {
                let mut r = json!({"index": i, "relevance_score": s});
                if return_documents {
                    r["document"] = json!({"text": texts[*i]});
                }
                r
            }).collect::<Vec<_>>(),
        }),
        Api::Voyage => json!({
            "object": "list",
            "data": scored.iter().map(|(i, s)| {
                let mut r = json!({"index": i, "relevance_score": s});
                if return_documents {
                    r["document"] = json!(texts[*i]);
                }
                r
            }).collect::<Vec<_>>(),
            "model": model,
            "usage": {"total_tokens": tokens},
        }),
        Api::Tei => Value::Array(
            scored
                .iter()
                .map(|(i, s)| {
                    let mut r = json!({"index": i, "score": s});
                    if return_documents {
                        r["text"] = json!(texts[*i]);
                    }
                    r
                })
                .collect(),
        ),
    };
    (StatusCode::OK, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_api() {
        assert_eq!(Api::of("/cohere/v2/rerank"), Some(Api::Cohere));
        assert_eq!(Api::of("/v2/rerank"), Some(Api::Cohere));
        assert_eq!(Api::of("/jina/v1/rerank"), Some(Api::Jina));
        assert_eq!(Api::of("/v1/rerank"), Some(Api::Jina));
        assert_eq!(Api::of("/voyage/v1/rerank"), Some(Api::Voyage));
        assert_eq!(Api::of("/tei/rerank"), Some(Api::Tei));
        assert_eq!(Api::of("/rerank"), Some(Api::Tei));
        assert_eq!(Api::of("/v1/chat/completions"), None);
    }
}
