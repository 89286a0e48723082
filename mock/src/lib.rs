//! Built-in mock OpenAI, Anthropic, Gemini and Bedrock provider: an HTTP server speaking the
//! OpenAI wire format (chat completions, legacy completions, embeddings, models, Responses,
//! Azure OpenAI deployment paths; JSON and SSE streaming), the Anthropic Messages format (`…/messages`, JSON
//! and SSE, errors in Anthropic's shape), the Gemini format (`…/models/{model}:generateContent`,
//! `:streamGenerateContent` with or without `alt=sse`, errors in Google's shape; the model and
//! its faults come from the path) and AWS Bedrock Converse (`…/model/{id}/converse[-stream]`,
//! SigV4 verified, streams in the AWS event-stream framing; see [`bedrock`]), with
//! deterministic replies, tool calls when the request offers tools, faults on demand and a
//! request log. It stands in
//! for real LLM providers in `tollgate up`, the end-to-end tests and the benchmark.
//!
//! Magic inputs:
//! - model `mock-error-<status>` (400..=599): that status with an OpenAI error body
//!   (429 adds `retry-after`);
//! - model `mock-stream-error`: a stream that sends two content chunks, then an in-stream error
//!   event, and ends without `[DONE]` (a non-streaming request gets a 500);
//! - model `mock-html-error`: 502 with an HTML body, as a misbehaving proxy would answer;
//! - a last user message naming two or more of the offered tools: a call of each (parallel
//!   calls; OpenAI's streamed with their argument fragments interleaved by `index`);
//! - `reasoning_effort` (other than `none`) on a chat completion: 3 reasoning tokens in
//!   `completion_tokens_details`;
//! - limits real providers put on tool-call ids in history: OpenAI at most 40 characters,
//!   Bedrock 1–64 of `[a-zA-Z0-9_-]` (400 otherwise); Gemini signs the first call of every
//!   reply and refuses history whose first call in a model turn lacks that signature;
//! - the same fault models work as Bedrock model ids in Converse paths, answered in Bedrock's
//!   error format (`mock-stream-error` ends the event stream with a
//!   `modelStreamErrorException`);
//! - the same models in a Gemini path (`…/models/mock-error-429:generateContent`), answered in
//!   Google's format (a 429 as Google's: no `retry-after`, a `google.rpc.RetryInfo` of `1.5s`
//!   in `error.details`), and behind Vertex AI's Anthropic publisher with a `claude-` prefix
//!   (`…/publishers/anthropic/models/claude-mock-stream-error:streamRawPredict`);
//! - the rerank APIs of Cohere, Jina (and vLLM), Voyage and text-embeddings-inference at
//!   `…/rerank` paths, the API picked by a path segment (see `rerank.rs`);
//! - header `x-mock-latency-ms`: time to first byte for this request;
//! - header `x-mock-chunk-delay-ms`: delay between streamed chunks for this request;
//! - header `x-mock-endless-stream: 1` on a streamed chat completion: the content chunks repeat
//!   forever (`x-mock-chunk-delay-ms` apart, 100 ms when unset), never finishing;
//! - the credentials endpoints of AWS (STS at `POST /`, container credentials, IMDSv2) and of
//!   the GCE metadata server, handing out short-lived credentials the Bedrock and Vertex routes
//!   accept (see [`platform`]);
//! - `reasoning.effort` (other than `none`) on a Responses request: a reasoning item whose
//!   `encrypted_content` (`gAAAA-mock-…`) must come back unchanged in later input (400
//!   otherwise); `previous_response_id` is refused (the gateway expands conversations itself);
//! - Bedrock InvokeModel of Amazon Titan Text Embeddings (`…/model/{id}/invoke`, SigV4
//!   verified; see `bedrock_embed.rs`); Vertex AI's gemini-embedding models take one
//!   `:predict` instance per request, as Vertex AI documents;
//! - `GET /__mock/requests` lists the last 200 requests, `DELETE /__mock/requests` clears them.

pub mod bedrock;
mod bedrock_embed;
mod chat;
mod completions;
pub mod count;
mod embeddings;
mod error;
mod files;
mod gemini;
mod gemini_embed;
mod log;
mod media;
mod messages;
mod models;
mod params;
pub mod platform;
mod rerank;
mod responses;
mod routes;
mod sse;
mod text;
mod thinking;
mod vertex;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt;

/// How the mock behaves; every field has a neutral default.
#[derive(Clone, Default)]
pub struct MockConfig {
    /// Delay before the response headers (time to first byte).
    pub latency: Duration,
    /// Delay between streamed chunks.
    pub chunk_delay: Duration,
    /// When set, requests must carry this key as `Authorization: Bearer <k>`, `api-key: <k>`,
    /// `x-api-key: <k>` or (Gemini) `x-goog-api-key: <k>`; otherwise 401.
    pub api_key: Option<String>,
    /// The public key (PEM) of the service account whose JWT assertions the Vertex AI token
    /// endpoint (`POST …/token`) accepts; without it the endpoint refuses every assertion.
    pub google_public_key: Option<String>,
    /// How long the temporary AWS credentials (STS, container, instance metadata) and GCE
    /// metadata tokens handed out live (zero: an hour). See [`platform`].
    pub credential_ttl: Duration,
}

impl fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockConfig")
            .field("latency", &self.latency)
            .field("chunk_delay", &self.chunk_delay)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("google_public_key", &self.google_public_key.is_some())
            .field("credential_ttl", &self.credential_ttl)
            .finish()
    }
}

/// The mock as an axum router, for serving in process (tests) or behind [`serve`].
pub fn router(config: MockConfig) -> axum::Router {
    routes::router(config)
}

/// Serves the mock on `listener` until `shutdown` resolves, then drains open connections.
///
/// Accepted connections get `TCP_NODELAY`, so small streamed chunks are not held back by
/// Nagle's algorithm (the mock is the upstream for latency benchmarks).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "Could not set TCP_NODELAY on a mock connection");
        }
    });
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}
