//! `GET …/models` and `GET …/models/{id}`: the OpenAI Models API with the one mock model.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// The id of the model the mock lists.
pub(crate) const MODEL_ID: &str = "mock-model";

/// `created` of every model: fixed, so listings are deterministic (2023-11-14).
const MODEL_CREATED: u64 = 1_700_000_000;

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl<'a> Model<'a> {
    fn new(id: &'a str) -> Self {
        Self {
            id,
            object: "model",
            created: MODEL_CREATED,
            owned_by: "tollgate-mock",
        }
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: [Model<'a>; 1],
}

/// The model list.
pub(crate) fn list() -> Response {
    Json(ModelList {
        object: "list",
        data: [Model::new(MODEL_ID)],
    })
    .into_response()
}

/// One model; the mock serves any model name, so it describes any id asked for.
pub(crate) fn retrieve(id: &str) -> Response {
    Json(Model::new(id)).into_response()
}
