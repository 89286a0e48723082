//! The rerank APIs on the wire, one [`Flavor`] each: the body Tollgate sends
//! ([`Flavor::request`]) and the answer it reads ([`Flavor::answer`], [`Flavor::error_message`]).
//!
//! - Cohere v2 `POST {base}/rerank`: `{model, query, documents: [str], top_n,
//!   max_tokens_per_doc, priority}` → `{id, results[{index, relevance_score}],
//!   meta.billed_units.search_units}`; errors `{"message"}`.
//! - Cohere v1 (a `cohere` provider whose base URL ends in `/v1`) `POST {base}/rerank`:
//!   `{model, query, documents: [str], top_n, max_chunks_per_doc, return_documents: false}`,
//!   answered as v2.
//! - Jina `POST {base}/rerank` (vLLM serves the same at `/v1/rerank`): `{model, query,
//!   documents, top_n, return_documents}` → `{model, usage.total_tokens, results[{index,
//!   relevance_score}]}`; errors `{"detail"}` (vLLM: `{"error": {"message"}}` or `{"message"}`).
//! - Voyage `POST {base}/rerank`: `{query, documents, model, top_k, return_documents,
//!   truncation}` → `{object: "list", data[{index, relevance_score}], model,
//!   usage.total_tokens}`; errors `{"detail"}`.
//! - text-embeddings-inference `POST {base}/rerank`: `{query, texts, raw_scores, return_text,
//!   truncate}` → `[{index, score}]`; errors `{"error", "error_type"}`.

use serde_json::{json, Value};
use tollgate_core::config::ProviderKind;

use super::{Answer, Ranked, Request};

/// A provider's rerank API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Cohere v2.
    Cohere,
    /// Cohere v1 (a `cohere` provider whose base path ends in `/v1`).
    CohereV1,
    /// Jina, and vLLM's Cohere/Jina-compatible rerank (`openai_compatible` providers).
    Jina,
    /// Voyage AI.
    Voyage,
    /// Hugging Face text-embeddings-inference.
    Tei,
}

impl Flavor {
    /// The rerank API of a provider kind; `None` for the kinds that serve no rerank.
    pub fn of(kind: ProviderKind) -> Option<Flavor> {
        match kind {
            ProviderKind::Cohere => Some(Flavor::Cohere),
            ProviderKind::Jina | ProviderKind::OpenaiCompatible => Some(Flavor::Jina),
            ProviderKind::Voyage => Some(Flavor::Voyage),
            ProviderKind::Tei => Some(Flavor::Tei),
            ProviderKind::Openai
            | ProviderKind::AzureOpenai
            | ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Vertex
            | ProviderKind::Bedrock => None,
        }
    }

    /// The rerank API of a provider of `kind` at `base_path`: Cohere's v1 API where the base
    /// path ends in `/v1`, else as [`Flavor::of`].
    pub fn of_provider(kind: ProviderKind, base_path: &str) -> Option<Flavor> {
        match Flavor::of(kind)? {
            Flavor::Cohere if base_path.trim_end_matches('/').ends_with("/v1") => {
                Some(Flavor::CohereV1)
            }
            f => Some(f),
        }
    }

    /// The upstream `:path` under a provider's base path.
    pub fn path(self, base_path: &str) -> String {
        format!("{base_path}/rerank")
    }

    /// The body for the provider: the model its id, the documents as texts, never the
    /// documents back (Tollgate adds the client's own when it asks for them).
    pub fn request(self, req: &Request, upstream_model: &str) -> Vec<u8> {
        let texts: Vec<&str> = req.documents.iter().map(|d| d.text.as_str()).collect();
        let mut body = match self {
            Flavor::Cohere => json!({
                "model": upstream_model,
                "query": req.query,
                "documents": texts,
            }),
            Flavor::CohereV1 => json!({
                "model": upstream_model,
                "query": req.query,
                "documents": texts,
                "return_documents": false,
            }),
            Flavor::Jina => json!({
                "model": upstream_model,
                "query": req.query,
                "documents": texts,
                "return_documents": false,
            }),
            Flavor::Voyage => json!({
                "model": upstream_model,
                "query": req.query,
                "documents": texts,
                "return_documents": false,
                "truncation": true,
            }),
            Flavor::Tei => json!({
                "query": req.query,
                "texts": texts,
                "raw_scores": false,
                "return_text": false,
                "truncate": true,
            }),
        };
        if let Value::Object(m) = &mut body {
            match (self, req.top_n) {
                (Flavor::Cohere | Flavor::CohereV1 | Flavor::Jina, Some(n)) => {
                    m.insert("top_n".into(), n.into());
                }
                (Flavor::Voyage, Some(n)) => {
                    m.insert("top_k".into(), n.into());
                }
                // TEI ranks every text: the answer is cut to `top_n` here.
                (Flavor::Tei, _) | (_, None) => {}
            }
            // Each Cohere version's own knobs; other APIs have no equivalent (dropped).
            if let (Flavor::Cohere, Some(n)) = (self, req.max_tokens_per_doc) {
                m.insert("max_tokens_per_doc".into(), n.into());
            }
            if let (Flavor::Cohere, Some(n)) = (self, req.priority) {
                m.insert("priority".into(), n.into());
            }
            if let (Flavor::CohereV1, Some(n)) = (self, req.max_chunks_per_doc) {
                m.insert("max_chunks_per_doc".into(), n.into());
            }
        }
        body.to_string().into_bytes()
    }

    /// Reads a successful answer; `None` when it is not the API's shape.
    pub fn answer(self, body: &[u8]) -> Option<Answer> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let ranked = |items: &Value, score: &str| -> Option<Vec<Ranked>> {
            items
                .as_array()?
                .iter()
                .map(|r| {
                    Some(Ranked {
                        index: usize::try_from(r.get("index")?.as_u64()?).ok()?,
                        score: r.get(score)?.as_f64()?,
                    })
                })
                .collect()
        };
        let tokens = |v: &Value| v.pointer("/usage/total_tokens").and_then(Value::as_u64);
        let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
        Some(match self {
            Flavor::Cohere | Flavor::CohereV1 => Answer {
                results: ranked(v.get("results")?, "relevance_score")?,
                id,
                search_units: v
                    .pointer("/meta/billed_units/search_units")
                    .and_then(Value::as_u64),
                tokens: None,
            },
            Flavor::Jina => Answer {
                results: ranked(v.get("results")?, "relevance_score")?,
                id,
                search_units: None,
                tokens: tokens(&v),
            },
            Flavor::Voyage => Answer {
                results: ranked(v.get("data")?, "relevance_score")?,
                id: None,
                search_units: None,
                tokens: tokens(&v),
            },
            Flavor::Tei => Answer {
                results: ranked(&v, "score")?,
                id: None,
                search_units: None,
                tokens: None,
            },
        })
    }

    /// The message of a provider's error body (Cohere `message`, Jina/Voyage `detail`, TEI
    /// `error`, OpenAI-style `error.message`), bounded; `None` when it has none.
    pub fn error_message(self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let m = text("/message")
            .or_else(|| text("/detail"))
            .or_else(|| text("/error/message"))
            .or_else(|| text("/error"))
            .or_else(|| {
                // FastAPI's validation errors: `detail: [{msg, …}]`.
                v.pointer("/detail/0/msg")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })?;
        const MAX: usize = 512;
        Some(if m.len() > MAX {
            let mut end = MAX;
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &m[..end])
        } else {
            m
        })
    }
}
