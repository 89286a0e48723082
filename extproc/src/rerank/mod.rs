//! `POST /v1/rerank` (and Cohere's `/v2/rerank`): the client's request in Cohere's shape,
//! read and checked once ([`Request::parse`]), rewritten for the provider's rerank API
//! ([`wire`]: Cohere v2, Jina and vLLM, Voyage, text-embeddings-inference), and the
//! provider's answer turned back into Cohere's shape with the usage it reports (search
//! units, tokens) or, where it reports none, the documented estimate. Pure functions: the
//! processor (`processor/rerank.rs`) owns the exchange.

pub mod wire;

use serde_json::{json, Map, Value};
use tollgate_core::config::rerank::estimate_search_units;
use tollgate_core::ApiError;

pub use wire::Flavor;

/// The most documents one request may rank (Cohere's limit).
pub const MAX_DOCUMENTS: usize = 10_000;

/// One document to rank: the text the provider ranks, and what the client sent (a string,
/// or an object), which `return_documents` gives back.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The text ranked.
    pub text: String,
    /// The client's document as it came: `{"text": …}` for a string document.
    pub original: Value,
}

/// A client's rerank request, in Cohere's shape (v1 and v2 alike).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The public model.
    pub model: String,
    /// The query.
    pub query: String,
    /// The documents, in the client's order.
    pub documents: Vec<Document>,
    /// How many results to return (all when `None`).
    pub top_n: Option<usize>,
    /// Whether each result carries its document.
    pub return_documents: bool,
    /// Cohere v2's `max_tokens_per_doc` (passed on to Cohere v2).
    pub max_tokens_per_doc: Option<u64>,
    /// Cohere v1's `max_chunks_per_doc` (passed on to Cohere v1).
    pub max_chunks_per_doc: Option<u64>,
    /// Cohere v2's `priority` (passed on to Cohere v2).
    pub priority: Option<u64>,
    /// Whether the client called Cohere's v1 path (`/v1/rerank`): its answer says
    /// `api_version` 1.
    pub v1: bool,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param,
        message: message.into(),
    }
}

impl Request {
    /// Reads a client's body: `model`, `query` (non-empty), `documents` (non-empty, strings
    /// or objects: an object's `text`, else its `rank_fields` or all its string members as
    /// `name: value` lines), `top_n` (positive), `return_documents`,
    /// `max_tokens_per_doc` and `priority` (Cohere v2), `max_chunks_per_doc` (Cohere v1); each
    /// passed to the Cohere version that knows it and dropped for other providers.
    pub fn parse(body: &[u8], v1: bool) -> Result<Request, ApiError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(ApiError::InvalidJson(
                "the body must be a JSON object".into(),
            ));
        };
        let model = match obj.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(invalid("model", "`model` is required")),
        };
        let query = match obj.get("query") {
            Some(Value::String(q)) if !q.trim().is_empty() => q.clone(),
            Some(Value::String(_)) => return Err(invalid("query", "`query` must not be empty")),
            Some(_) => return Err(invalid("query", "`query` must be a string")),
            None => return Err(invalid("query", "`query` is required")),
        };
        let rank_fields: Option<Vec<String>> = match obj.get("rank_fields") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|f| f.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| invalid("rank_fields", "`rank_fields` must list strings"))?,
            ),
            Some(_) => return Err(invalid("rank_fields", "`rank_fields` must list strings")),
        };
        let documents = match obj.get("documents") {
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(invalid("documents", "`documents` must not be empty"))
            }
            Some(Value::Array(a)) if a.len() > MAX_DOCUMENTS => {
                return Err(invalid(
                    "documents",
                    format!("`documents` may hold at most {MAX_DOCUMENTS} documents"),
                ))
            }
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, d)| document(i, d, rank_fields.as_deref()))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(invalid("documents", "`documents` must be an array")),
            None => return Err(invalid("documents", "`documents` is required")),
        };
        let top_n = match obj.get("top_n") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => return Err(invalid("top_n", "`top_n` must be a positive integer")),
            },
        };
        let return_documents = match obj.get("return_documents") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(invalid(
                    "return_documents",
                    "`return_documents` must be a boolean",
                ))
            }
        };
        let max_tokens_per_doc = match obj.get("max_tokens_per_doc") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                invalid(
                    "max_tokens_per_doc",
                    "`max_tokens_per_doc` must be a positive integer",
                )
            })?),
        };
        let max_chunks_per_doc = match obj.get("max_chunks_per_doc") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                invalid(
                    "max_chunks_per_doc",
                    "`max_chunks_per_doc` must be a positive integer",
                )
            })?),
        };
        let priority =
            match obj.get("priority") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    invalid("priority", "`priority` must be a non-negative integer")
                })?),
            };
        Ok(Request {
            model,
            query,
            documents,
            top_n,
            return_documents,
            max_tokens_per_doc,
            max_chunks_per_doc,
            priority,
            v1,
        })
    }

    /// How many results the answer holds.
    pub fn result_count(&self) -> usize {
        self.top_n
            .map_or(self.documents.len(), |n| n.min(self.documents.len()))
    }

    /// The tokens of the query and every document by `count` (for the budget estimate and
    /// the usage of a provider that reports none): the query once per document, as rerankers
    /// read it (Voyage's rule: query tokens × documents + document tokens).
    pub fn estimated_tokens(&self, count: impl Fn(&str) -> u64) -> u64 {
        let query = count(&self.query);
        self.documents
            .iter()
            .map(|d| query.saturating_add(count(&d.text)))
            .fold(0u64, u64::saturating_add)
    }

    /// The search units of this request by Cohere's rule (see
    /// [`estimate_search_units`]).
    pub fn estimated_search_units(&self, count: impl Fn(&str) -> u64) -> u64 {
        let docs: Vec<u64> = self.documents.iter().map(|d| count(&d.text)).collect();
        estimate_search_units(count(&self.query), &docs)
    }
}

fn document(i: usize, d: &Value, rank_fields: Option<&[String]>) -> Result<Document, ApiError> {
    match d {
        Value::String(s) => Ok(Document {
            text: s.clone(),
            original: json!({ "text": s }),
        }),
        Value::Object(o) => {
            let text = match (o.get("text"), rank_fields) {
                (Some(Value::String(t)), None) => t.clone(),
                (_, fields) => fields_text(o, fields),
            };
            if text.is_empty() {
                return Err(invalid(
                    "documents",
                    format!("`documents[{i}]` has no text to rank"),
                ));
            }
            Ok(Document {
                text,
                original: d.clone(),
            })
        }
        _ => Err(invalid(
            "documents",
            format!("`documents[{i}]` must be a string or an object"),
        )),
    }
}

/// An object document as text: `name: value` lines of `fields` (or of every string member).
fn fields_text(o: &Map<String, Value>, fields: Option<&[String]>) -> String {
    let line = |k: &str, v: &Value| v.as_str().map(|s| format!("{k}: {s}"));
    let lines: Vec<String> = match fields {
        Some(fields) => fields
            .iter()
            .filter_map(|f| o.get(f).and_then(|v| line(f, v)))
            .collect(),
        None => o.iter().filter_map(|(k, v)| line(k, v)).collect(),
    };
    lines.join("\n")
}

/// One ranked result: the document's index in the request and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// The index in the request's `documents`.
    pub index: usize,
    /// The relevance score.
    pub score: f64,
}

/// What a provider's successful answer said: the results (most relevant first) and the usage
/// it reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Results, most relevant first.
    pub results: Vec<Ranked>,
    /// The provider's response id, when it gives one.
    pub id: Option<String>,
    /// Search units the provider billed (Cohere).
    pub search_units: Option<u64>,
    /// Tokens the provider billed (Jina, Voyage, vLLM).
    pub tokens: Option<u64>,
}

/// The answer in Cohere's shape: `id`, `results[{index, relevance_score, document?}]` (at
/// most `top_n`, most relevant first) and `meta` (`api_version`, `billed_units` with the
/// search units or tokens billed).
pub fn client_answer(
    req: &Request,
    answer: &Answer,
    id: &str,
    search_units: Option<u64>,
    tokens: Option<u64>,
) -> Vec<u8> {
    let mut results = answer.results.clone();
    // Most relevant first, ties by index (stable whatever order the provider used).
    results.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    results.retain(|r| r.index < req.documents.len());
    results.truncate(req.result_count());
    let results: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut v = json!({ "index": r.index, "relevance_score": r.score });
            if let (true, Some(d), Value::Object(m)) =
                (req.return_documents, req.documents.get(r.index), &mut v)
            {
                m.insert("document".into(), d.original.clone());
            }
            v
        })
        .collect();
    let mut billed = Map::new();
    if let Some(n) = search_units {
        billed.insert("search_units".into(), n.into());
    }
    if let Some(n) = tokens {
        billed.insert("input_tokens".into(), n.into());
    }
    let id = answer.id.as_deref().unwrap_or(id);
    json!({
        "id": id,
        "results": results,
        "meta": {
            "api_version": { "version": if req.v1 { "1" } else { "2" } },
            "billed_units": billed,
        },
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests;
