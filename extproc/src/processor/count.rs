//! `POST /v1/messages/count_tokens` (Anthropic's API): asked of the provider's own counting
//! API where it has one — Anthropic's `/v1/messages/count_tokens`, Vertex AI's
//! `…/publishers/anthropic/models/count-tokens:rawPredict` for Claude and `…:countTokens` for
//! Gemini, Gemini's `…:countTokens`, Bedrock's `CountTokens` (`…/model/{id}/count-tokens`,
//! Anthropic models) — and estimated here only where none exists (OpenAI-family providers,
//! Bedrock models its API does not count). The answer keeps Anthropic's shape
//! `{"input_tokens": n}` and says where the number came from in [`TOKEN_COUNT_HEADER`]
//! (`provider` or `estimate`). A count reserves no budget and is billed to nobody, but it is
//! logged like every other request (endpoint `count_tokens`, no tokens, no cost).

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use serde_json::{Map, Value};
use tollgate_core::config::{ApiFamily, ProviderKind, Target};
use tollgate_core::metadata as md;
use tollgate_core::{ApiError, Endpoint};

use super::upstream_auth::{self, Signed};
use super::{Forwarded, Processor};
use crate::mutation::{self, set};
use crate::translator::{openai, Pair, ResponseMeta};

/// Response header saying where a token count came from: `provider` (the provider's counting
/// API answered) or `estimate` (Tollgate counted, see [`Processor::count_tokens`]).
pub const TOKEN_COUNT_HEADER: &str = "x-tollgate-token-count";

/// A refusal, with the model it was about when one was named.
type Refusal = (ApiError, Option<String>);

/// How a target's provider counts tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    /// Anthropic's `/v1/messages/count_tokens`: the Messages body, model rewritten.
    Anthropic,
    /// Vertex AI's `count-tokens:rawPredict` for Claude: the Messages body with `model`.
    VertexAnthropic,
    /// Gemini API `:countTokens`: `{"generateContentRequest": {model, contents, …}}`.
    Gemini,
    /// Vertex AI `:countTokens` for Gemini: `{contents, systemInstruction, tools, …}`.
    VertexGemini,
    /// Bedrock `CountTokens`: `{"input": {"converse": {messages, system, toolConfig}}}`.
    Bedrock,
}

impl Counter {
    /// The counting API of `target` and its upstream path; `None` where the provider has none
    /// (OpenAI-family APIs; Bedrock models other than Anthropic's foundation models, which its
    /// `CountTokens` refuses, cross-region profiles included).
    fn of(target: &Target) -> Option<(Counter, String)> {
        let p = &target.provider;
        let model = &target.upstream_model;
        match (p.kind, target.family) {
            (ProviderKind::Anthropic, _) => Some((
                Counter::Anthropic,
                format!("{}/messages/count_tokens", p.base_path),
            )),
            (ProviderKind::Vertex, ApiFamily::Anthropic) => {
                let (project, location) = p.vertex.as_ref()?;
                Some((
                    Counter::VertexAnthropic,
                    format!(
                        "{}/projects/{project}/locations/{location}/publishers/anthropic/models/count-tokens:rawPredict",
                        p.base_path
                    ),
                ))
            }
            (ProviderKind::Vertex, _) => {
                let path = target.path(Endpoint::GenerateContent);
                let base = path.strip_suffix(":generateContent")?;
                Some((Counter::VertexGemini, format!("{base}:countTokens")))
            }
            (ProviderKind::Gemini, _) => {
                let path = target.path(Endpoint::GenerateContent);
                let base = path.strip_suffix(":generateContent")?;
                Some((Counter::Gemini, format!("{base}:countTokens")))
            }
            (ProviderKind::Bedrock, _) if model.starts_with("anthropic.") => {
                let path = target.path(Endpoint::ChatCompletions);
                let base = path.strip_suffix("/converse")?;
                Some((Counter::Bedrock, format!("{base}/count-tokens")))
            }
            (
                ProviderKind::Bedrock
                | ProviderKind::Openai
                | ProviderKind::OpenaiCompatible
                | ProviderKind::AzureOpenai
                | ProviderKind::Cohere
                | ProviderKind::Jina
                | ProviderKind::Voyage
                | ProviderKind::Tei,
                _,
            ) => None,
        }
    }

    /// The body of the count request, from the client's Messages body.
    fn body(
        self,
        pair: Pair,
        obj: &crate::translator::json::RawObject<'_>,
        upstream_model: &str,
        size: usize,
    ) -> Result<Vec<u8>, ApiError> {
        // Anthropic's own body, model rewritten; anything else through the translator.
        let (body, _) = pair
            .request(obj, upstream_model, false, size)
            .map_err(|e| e.api_error())?;
        let keep = |names: &[&str]| -> Result<Map<String, Value>, ApiError> {
            // The translator wrote this body: it is a JSON object.
            let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&body) else {
                return Err(ApiError::Internal);
            };
            Ok(m.into_iter()
                .filter(|(k, _)| names.contains(&k.as_str()))
                .collect())
        };
        let out = match self {
            Counter::Anthropic | Counter::VertexAnthropic => return Ok(body),
            Counter::Gemini => {
                let mut request = keep(&[
                    "contents",
                    "systemInstruction",
                    "tools",
                    "toolConfig",
                    "generationConfig",
                ])?;
                request.insert("model".into(), format!("models/{upstream_model}").into());
                serde_json::json!({ "generateContentRequest": request })
            }
            Counter::VertexGemini => Value::Object(keep(&[
                "contents",
                "systemInstruction",
                "tools",
                "generationConfig",
            ])?),
            Counter::Bedrock => {
                let converse = keep(&[
                    "messages",
                    "system",
                    "toolConfig",
                    "additionalModelRequestFields",
                ])?;
                serde_json::json!({ "input": { "converse": converse } })
            }
        };
        Ok(out.to_string().into_bytes())
    }
}

impl Processor {
    /// Routes a count to the provider's counting API, or answers the estimate itself when the
    /// provider has none.
    pub(super) fn route_count_tokens(
        &mut self,
        b: &HttpBody,
    ) -> Result<ProcessingResponse, Refusal> {
        let obj = openai::parse_object(&b.body).map_err(|e| (e, None))?;
        let model = super::local::required_model(&obj)?;
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        let config = Arc::clone(&self.config);
        let m = super::route::allowed_model(&config, ctx, &model)?;
        let refusal = |e: ApiError| (e, Some(model.clone()));
        let target = super::route::pick(m).ok_or_else(|| refusal(ApiError::Internal))?;
        let Some((counter, path)) = Counter::of(target) else {
            return Ok(self.estimate_count(&obj, model, target));
        };
        let provider = &target.provider;
        let (pair, _) =
            Pair::route(Endpoint::Messages, target.family).map_err(|e| refusal(e.api_error()))?;
        let body = counter
            .body(pair, &obj, &target.upstream_model, b.body.len())
            .map_err(refusal)?;
        let mut headers = Vec::with_capacity(8 + provider.headers.len());
        headers.push(set(":path", path.as_str()));
        headers.push(set(":authority", provider.authority.as_str()));
        headers.push(set(md::ROUTE_HEADER, provider.cluster.as_str()));
        headers.push(set("content-length", body.len().to_string()));
        headers.push(set("content-type", "application/json"));
        let signed = Signed {
            authority: &provider.authority,
            path: &path,
            body: &body,
            stream: false,
        };
        upstream_auth::credentials(provider, &signed, &mut headers).map_err(refusal)?;
        for (k, v) in &provider.headers {
            headers.push(set(k, v.as_str()));
        }
        // Vertex's Claude count endpoint takes no Anthropic headers (unlike its messages).
        let remove = self.version_headers(
            matches!(counter, Counter::Anthropic),
            provider,
            &mut headers,
        );
        tracing::debug!(request_id = %ctx.request_id, key_id = %ctx.key_id, model = %model, provider = %provider.name, "Routing a token count to the provider");
        self.forwarded = Some(Forwarded::new(
            Endpoint::CountTokens,
            model,
            Arc::clone(provider),
            target.upstream_model.clone(),
            pair,
        ));
        Ok(mutation::request_body(mutation::common(
            headers,
            remove,
            Some(body),
            true,
        )))
    }

    /// The provider's answer to a count, in Anthropic's shape: `{"input_tokens": n}` from
    /// Anthropic's `input_tokens`, Gemini's `totalTokens` or Bedrock's `inputTokens`; a
    /// provider's error in Anthropic's dialect (`Ok(None)`: its body goes through as it is);
    /// `Err` for a success that carries no count.
    pub(super) fn count_answer(
        &self,
        status: u16,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(fwd) = self.forwarded.as_ref() else {
            return Ok(None);
        };
        if !(200..300).contains(&status) {
            let meta = ResponseMeta {
                error_type: fwd.error_type.as_deref(),
                ..Default::default()
            };
            return Ok(fwd.pair.complete_with(status, body, &meta).body);
        }
        let count = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            ["input_tokens", "inputTokens", "totalTokens"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_u64))
        });
        match count {
            // Written anew even from Anthropic: only the count goes back, in one shape.
            Some(n) => Ok(Some(
                serde_json::json!({ "input_tokens": n })
                    .to_string()
                    .into_bytes(),
            )),
            None => {
                tracing::warn!(provider = %fwd.provider.name, "The provider's token count answer holds no count");
                Err(ApiError::Upstream(502))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tollgate_core::env::MapEnv;
    use tollgate_core::Config;

    use super::*;

    #[test]
    fn each_provider_counts_at_its_own_path_or_not_at_all() {
        let yaml = r#"
providers:
  a: { kind: anthropic, base_url: "https://api.anthropic.com/v1", credential: { env: K } }
  g: { kind: gemini, credential: { env: K } }
  v: { kind: vertex, project: p, location: us-east5, credential: { env: SA } }
  b: { kind: bedrock, aws: { region: us-east-1, access_key_id: { env: K }, secret_access_key: { env: K } } }
  o: { kind: openai, base_url: "https://api.openai.com/v1" }
models:
  a: { targets: [{ provider: a, model: claude-x }] }
  g: { targets: [{ provider: g, model: gemini-x }] }
  vc: { targets: [{ provider: v, model: claude-x@1 }] }
  vg: { targets: [{ provider: v, model: gemini-x }] }
  b: { targets: [{ provider: b, model: "anthropic.claude-x-v1:0" }] }
  bx: { targets: [{ provider: b, model: "us.anthropic.claude-x-v1:0" }] }
  o: { targets: [{ provider: o, model: gpt-x }] }
"#;
        let sa = r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----","token_uri":"http://x/token"}"#;
        let env = MapEnv::from_pairs([("K", "secret"), ("SA", sa)]);
        let config = Config::from_yaml(yaml, &env).unwrap();
        let path = |m: &str| Counter::of(&config.models[m].targets[0]);
        let some = |c: Counter, p: &str| Some((c, p.to_owned()));
        assert_eq!(
            path("a"),
            some(Counter::Anthropic, "/v1/messages/count_tokens")
        );
        assert_eq!(
            path("g"),
            some(Counter::Gemini, "/v1beta/models/gemini-x:countTokens")
        );
        assert_eq!(
            path("vc"),
            some(
                Counter::VertexAnthropic,
                "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
            )
        );
        assert_eq!(
            path("vg"),
            some(
                Counter::VertexGemini,
                "/v1/projects/p/locations/us-east5/publishers/google/models/gemini-x:countTokens"
            )
        );
        assert_eq!(
            path("b"),
            some(
                Counter::Bedrock,
                "/model/anthropic.claude-x-v1%3A0/count-tokens"
            )
        );
        assert_eq!(path("bx"), None, "cross-region profiles cannot be counted");
        assert_eq!(path("o"), None);
    }
}
