//! OpenAI's Files and Batches APIs, just enough for passthrough tests: `GET …/files` lists no
//! files, `POST …/files` (any body, multipart included) answers a file object with the byte
//! count it received, `POST …/batches` a batch object naming the `input_file_id` it was sent.
//! Tollgate has no endpoint of its own for either: only a passthrough route reaches them.

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The answer to a Files or Batches call (`None`: another path).
pub(crate) fn answer(method: &Method, path: &str, body: &[u8], number: u64) -> Option<Response> {
    let path = path.trim_end_matches('/');
    if *method == Method::GET && path.ends_with("/files") {
        return Some(
            Json(json!({"object": "list", "data": [], "has_more": false})).into_response(),
        );
    }
    if *method == Method::POST && path.ends_with("/files") {
        return Some(
            Json(
                json!({"id": format!("file-mock-{number}"), "object": "file",
                "bytes": body.len(), "purpose": "batch"}),
            )
            .into_response(),
        );
    }
    if *method == Method::POST && path.ends_with("/batches") {
        let input = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("input_file_id").cloned())
            .unwrap_or(Value::Null);
        return Some(
            Json(json!({
                "id": format!("batch_mock_{number}"),
                "object": "batch",
                "input_file_id": input,
                "status": "validating",
            }))
            .into_response(),
        );
    }
    None
}
