//! Gemini's other methods (the Gemini API's JSON over HTTP): `POST …/models/{model}:countTokens`,
//! `:embedContent` and `:batchEmbedContents` (`/v1beta/…` or `/v1/…`), the model from the path.
//!
//! - `:countTokens` (`contents`, or `generateContentRequest`): to the provider's own
//!   `:countTokens` where the model's target is Gemini or Vertex AI Gemini (model rewritten,
//!   credential, Vertex path); answered here otherwise with the rules of
//!   `POST /v1/messages/count_tokens` (the target's tokenizer for OpenAI-family models, the
//!   documented estimate otherwise), in Gemini's shape `{"totalTokens": n}`, with
//!   `x-tollgate-token-count: provider | estimate`. No budget, no cost; logged as
//!   `count_tokens`.
//! - `:embedContent` / `:batchEmbedContents`: natively to Gemini (each request's `model`
//!   rewritten), translated to OpenAI-family embedding models (`content.parts[].text` →
//!   `input`, `outputDimensionality` → `dimensions`, `taskType` and `title` dropped: OpenAI
//!   embeddings have no task type); the answer in Gemini's shape. Priced and budgeted as
//!   embeddings: OpenAI's `usage.prompt_tokens`, Gemini's `usageMetadata.promptTokenCount`
//!   where present, else the estimate. To Vertex AI through its text-embedding `:predict`
//!   (`instances[].content`, `task_type`, `title`; `parameters.outputDimensionality`), the
//!   answer's `predictions[].embeddings.values` in Gemini's shape, usage the sum of their
//!   `statistics.token_count`.
//!
//! Neither goes down a failover chain nor takes an in-flight slot: one target, by weight.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use serde_json::{json, Map, Value};
use tollgate_core::config::{gemini_method, ApiFamily, GeminiMethod, ProviderKind, Target};
use tollgate_core::metadata as md;
use tollgate_core::{ApiError, Endpoint, Usage, UsageSource};

use super::upstream_auth::{self, Signed};
use super::{strip_query, Forwarded, Processor};
use crate::budget;
use crate::mutation::{self, set};
use crate::translator::{openai, Pair};

/// A refusal, with the model it was about when one was named.
type Refusal = (ApiError, Option<String>);

/// The API a Gemini method goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// The Gemini API itself (the answer goes back as it is).
    Gemini,
    /// Vertex AI's `:predict` of a text embedding model (errors in Google's shape already).
    VertexPredict,
    /// OpenAI's embeddings.
    OpenAi,
}

/// What the response of a forwarded Gemini method needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct GeminiCall {
    method: GeminiMethod,
    /// Where it went.
    wire: Wire,
    /// The prompt's estimated tokens (the usage of a Gemini answer without `usageMetadata`).
    estimate: u64,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param,
        message: message.into(),
    }
}

/// The upstream path of a Gemini-family target for `method` (`…/models/{m}:{method}`).
pub(super) fn gemini_path(target: &Target, method: &str) -> Option<String> {
    let path = target.path(Endpoint::GenerateContent);
    let base = path.strip_suffix(":generateContent")?;
    Some(format!("{base}:{method}"))
}

/// The `contents` a count asks about, and the rest of its `generateContentRequest` (empty when
/// the client sent `contents` alone).
fn count_request(obj: &Map<String, Value>) -> Result<(Value, Map<String, Value>), ApiError> {
    match (obj.get("contents"), obj.get("generateContentRequest")) {
        (Some(c @ Value::Array(_)), None) => Ok((c.clone(), Map::new())),
        (None, Some(Value::Object(inner))) => match inner.get("contents") {
            Some(c @ Value::Array(_)) => Ok((c.clone(), inner.clone())),
            _ => Err(invalid(
                "contents",
                "* GenerateContentRequest.contents: contents is not specified",
            )),
        },
        (Some(_), Some(_)) => Err(invalid(
            "contents",
            "Only one of `contents` and `generateContentRequest` may be set.",
        )),
        _ => Err(invalid(
            "contents",
            "Either `contents` or `generateContentRequest` must be set.",
        )),
    }
}

/// One embedding request's texts (its parts' `text`, joined by newlines).
fn content_text(request: &Value, what: &str) -> Result<String, ApiError> {
    let Some(parts) = request
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
    else {
        return Err(invalid(
            "content",
            format!("* {what}.content: content is not specified"),
        ));
    };
    let mut texts = Vec::with_capacity(parts.len());
    for p in parts {
        match p.get("text").and_then(Value::as_str) {
            Some(t) => texts.push(t),
            None => {
                return Err(invalid(
                    "content",
                    format!(
                        "* {what}.content.parts: only text parts can be embedded through Tollgate"
                    ),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

/// The embedding requests of a body: one for `:embedContent`, `requests[]` for
/// `:batchEmbedContents` (each naming the path's model, when it names one).
fn embed_requests(
    method: GeminiMethod,
    obj: &Map<String, Value>,
    model: &str,
) -> Result<Vec<Value>, ApiError> {
    if method != GeminiMethod::BatchEmbedContents {
        return Ok(vec![Value::Object(obj.clone())]);
    }
    let Some(requests) = obj
        .get("requests")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    else {
        return Err(invalid(
            "requests",
            "* BatchEmbedContentsRequest.requests: requests is not specified",
        ));
    };
    let want = format!("models/{model}");
    for (i, r) in requests.iter().enumerate() {
        match r.get("model") {
            None => {}
            Some(Value::String(m)) if *m == want || m == model => {}
            Some(_) => {
                return Err(invalid(
                    "model",
                    format!("* BatchEmbedContentsRequest.requests[{i}].model: the model must be `{want}`, the model of the URL"),
                ))
            }
        }
    }
    Ok(requests.clone())
}

/// The `outputDimensionality` every request asks for (one value for an OpenAI `dimensions`).
fn dimensions(requests: &[Value]) -> Result<Option<u64>, ApiError> {
    let mut out: Option<u64> = None;
    for r in requests {
        let Some(d) = r.get("outputDimensionality") else {
            continue;
        };
        let d = d.as_u64().filter(|d| *d > 0).ok_or_else(|| {
            invalid(
                "outputDimensionality",
                "* outputDimensionality must be a positive integer",
            )
        })?;
        match out {
            Some(o) if o != d => {
                return Err(invalid(
                    "outputDimensionality",
                    "* The requests of one batch must ask for the same outputDimensionality when the model is served by an OpenAI-family provider",
                ))
            }
            _ => out = Some(d),
        }
    }
    Ok(out)
}

impl Processor {
    /// Routes `:countTokens`, `:embedContent` or `:batchEmbedContents` (see the module).
    pub(super) async fn route_gemini_method(
        &mut self,
        b: &HttpBody,
    ) -> Result<ProcessingResponse, Refusal> {
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        let path = strip_query(&ctx.path).to_owned();
        let Some((model, method)) = gemini_method(&path) else {
            return Err((
                ApiError::UnknownEndpoint {
                    method: ctx.method.clone(),
                    path,
                },
                None,
            ));
        };
        let model = model.to_owned();
        let obj = match serde_json::from_slice::<Value>(&b.body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err((
                    ApiError::InvalidJson("the body must be a JSON object".to_owned()),
                    None,
                ))
            }
            Err(e) => return Err((ApiError::InvalidJson(e.to_string()), None)),
        };
        let config = Arc::clone(&self.config);
        let m = super::route::allowed_model(&config, ctx, &model)?;
        let refusal = |e: ApiError| (e, Some(model.clone()));
        let target = super::route::pick(m).ok_or_else(|| refusal(ApiError::Internal))?;
        match method {
            GeminiMethod::CountTokens => self.gemini_count(&obj, model.clone(), target),
            GeminiMethod::EmbedContent | GeminiMethod::BatchEmbedContents => {
                self.gemini_embed(method, &obj, &b.body, model.clone(), target)
                    .await
            }
        }
        .map_err(refusal)
    }

    /// `:countTokens`: to Gemini's or Vertex AI's own count, else estimated here.
    fn gemini_count(
        &mut self,
        obj: &Map<String, Value>,
        model: String,
        target: &Target,
    ) -> Result<ProcessingResponse, ApiError> {
        let (contents, inner) = count_request(obj)?;
        let upstream = &target.upstream_model;
        let body = match (target.provider.kind, target.family) {
            (ProviderKind::Gemini, ApiFamily::Gemini) if inner.is_empty() => {
                json!({ "contents": contents })
            }
            (ProviderKind::Gemini, ApiFamily::Gemini) => {
                let mut inner = inner;
                inner.insert("model".into(), format!("models/{upstream}").into());
                json!({ "generateContentRequest": inner })
            }
            (ProviderKind::Vertex, ApiFamily::Gemini) => {
                // Vertex AI's `CountTokensRequest` has the request's members at the top.
                let mut out = Map::new();
                out.insert("contents".into(), contents);
                for k in ["systemInstruction", "tools", "generationConfig"] {
                    if let Some(v) = inner.get(k) {
                        out.insert(k.into(), v.clone());
                    }
                }
                Value::Object(out)
            }
            _ => return Ok(self.gemini_estimate_count(&contents, &inner, model, target)),
        };
        let path = gemini_path(target, "countTokens").ok_or(ApiError::Internal)?;
        let body = body.to_string().into_bytes();
        let pair = Pair {
            client: ApiFamily::Gemini,
            upstream: ApiFamily::Gemini,
        };
        self.forward_gemini(
            Endpoint::CountTokens,
            model,
            target,
            pair,
            &path,
            body,
            GeminiCall {
                method: GeminiMethod::CountTokens,
                wire: Wire::Gemini,
                estimate: 0,
            },
        )
    }

    /// A count answered here, by the rules of `count_tokens` (`local.rs`): the target's
    /// tokenizer for OpenAI-family models, one token per 3 bytes otherwise, plus 4 per
    /// content (a message) and 3 per request.
    fn gemini_estimate_count(
        &mut self,
        contents: &Value,
        inner: &Map<String, Value>,
        model: String,
        target: &Target,
    ) -> ProcessingResponse {
        let mut prompt = Map::new();
        prompt.insert("messages".into(), contents.clone());
        if let Some(s) = inner.get("systemInstruction") {
            prompt.insert("system".into(), s.clone());
        }
        if let Some(t) = inner.get("tools") {
            prompt.insert("tools".into(), t.clone());
        }
        let bytes = Value::Object(prompt).to_string();
        let counter = budget::Counter::for_target(target.provider.kind, &target.upstream_model);
        let tokens = openai::parse_object(bytes.as_bytes())
            .map(|o| budget::prompt_tokens(&o, counter))
            .unwrap_or(0);
        self.estimated_count = Some(model);
        let mut answer = self.answer(
            Endpoint::CountTokens.label(),
            json!({ "totalTokens": tokens }).to_string(),
        );
        mutation::add_immediate_header(&mut answer, set(super::TOKEN_COUNT_HEADER, "estimate"));
        answer
    }

    /// `:embedContent` / `:batchEmbedContents`: natively to Gemini, translated to OpenAI-family
    /// embeddings; judged, reserved and priced as embeddings.
    async fn gemini_embed(
        &mut self,
        method: GeminiMethod,
        obj: &Map<String, Value>,
        client_body: &[u8],
        model: String,
        target: &Target,
    ) -> Result<ProcessingResponse, ApiError> {
        let requests = embed_requests(method, obj, &model)?;
        let what = match method {
            GeminiMethod::BatchEmbedContents => "BatchEmbedContentsRequest.requests[]",
            _ => "EmbedContentRequest",
        };
        let texts = requests
            .iter()
            .map(|r| content_text(r, what))
            .collect::<Result<Vec<_>, _>>()?;
        let upstream = target.upstream_model.as_str();
        let wire = match (target.provider.kind, target.family) {
            (ProviderKind::Gemini, _) => Wire::Gemini,
            (
                ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenai,
                _,
            ) => Wire::OpenAi,
            (ProviderKind::Vertex, ApiFamily::Gemini) => Wire::VertexPredict,
            (ProviderKind::Vertex, _)
            | (
                ProviderKind::Anthropic
                | ProviderKind::Bedrock
                | ProviderKind::Cohere
                | ProviderKind::Jina
                | ProviderKind::Voyage
                | ProviderKind::Tei,
                _,
            ) => {
                return Err(invalid(
                    "model",
                    "This model is served by a provider without an embeddings API.",
                ))
            }
        };
        let dims = match wire {
            Wire::OpenAi | Wire::VertexPredict => dimensions(&requests)?,
            Wire::Gemini => None,
        };
        // The OpenAI form of the request: what guardrails judge and budgets estimate (and, for
        // an OpenAI-family target, what goes upstream).
        let mut openai_body =
            json!({ "model": upstream, "input": texts, "encoding_format": "float" });
        if let Some(d) = dims {
            openai_body["dimensions"] = d.into();
        }
        let openai_bytes = openai_body.to_string().into_bytes();
        let parsed = openai::parse_request(Endpoint::Embeddings, &openai_bytes)?;
        let policy = self.policy()?;
        let redacted = self
            .judge_request(
                policy.as_deref(),
                Endpoint::Embeddings,
                &model,
                &parsed,
                client_body,
            )
            .await?;
        let parsed = match &redacted {
            Some(r) => openai::parse_request(Endpoint::Embeddings, r)?,
            None => parsed,
        };
        let counter = budget::Counter::for_target(target.provider.kind, upstream);
        let estimate = budget::prompt_tokens(parsed.object(), counter);
        let (path, body) = match wire {
            Wire::Gemini => {
                let path = gemini_path(
                    target,
                    match method {
                        GeminiMethod::BatchEmbedContents => "batchEmbedContents",
                        _ => "embedContent",
                    },
                )
                .ok_or(ApiError::Internal)?;
                // Redacted texts replace each request's parts.
                let redacted_texts: Option<Vec<String>> = redacted.as_ref().and_then(|r| {
                    serde_json::from_slice::<Value>(r)
                        .ok()?
                        .get("input")?
                        .as_array()?
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect()
                });
                let name = format!("models/{upstream}");
                let mut out: Vec<Value> = requests;
                for (i, r) in out.iter_mut().enumerate() {
                    if let Some(o) = r.as_object_mut() {
                        if method == GeminiMethod::BatchEmbedContents || o.contains_key("model") {
                            o.insert("model".into(), name.clone().into());
                        }
                        if let Some(t) = redacted_texts.as_ref().and_then(|t| t.get(i)) {
                            o.insert("content".into(), json!({ "parts": [{ "text": t }] }));
                        }
                    }
                }
                let body = match method {
                    GeminiMethod::BatchEmbedContents => json!({ "requests": out }),
                    _ => out.into_iter().next().unwrap_or_default(),
                };
                (path, body.to_string().into_bytes())
            }
            Wire::VertexPredict => {
                let path = gemini_path(target, "predict").ok_or(ApiError::Internal)?;
                let max = super::embeddings::vertex_max_instances(&target.upstream_model);
                if requests.len() > max {
                    return Err(invalid(
                        "requests",
                        format!(
                            "This model is served by Vertex AI, which embeds at most {max} text{} per request; the batch holds {}.",
                            if max == 1 { "" } else { "s" },
                            requests.len()
                        ),
                    ));
                }
                let inputs = parsed_inputs(redacted.as_deref().unwrap_or(&openai_bytes));
                let instances: Vec<Value> = requests
                    .iter()
                    .zip(inputs)
                    .map(|(r, content)| {
                        let mut i = Map::new();
                        i.insert("content".into(), content.into());
                        for (from, to) in [("taskType", "task_type"), ("title", "title")] {
                            if let Some(v) = r.get(from) {
                                i.insert(to.into(), v.clone());
                            }
                        }
                        Value::Object(i)
                    })
                    .collect();
                let mut body = json!({ "instances": instances });
                if let Some(d) = dims {
                    body["parameters"] = json!({ "outputDimensionality": d });
                }
                (path, body.to_string().into_bytes())
            }
            Wire::OpenAi => (
                target.path(Endpoint::Embeddings).to_owned(),
                redacted.clone().unwrap_or(openai_bytes.clone()),
            ),
        };
        let pair = Pair {
            client: ApiFamily::Gemini,
            upstream: match wire {
                Wire::OpenAi => ApiFamily::OpenAi,
                Wire::Gemini | Wire::VertexPredict => ApiFamily::Gemini,
            },
        };
        self.reservation = self
            .reserve(Endpoint::Embeddings, &target.provider, upstream, &parsed)
            .await?;
        self.forward_gemini(
            Endpoint::EmbedContent,
            model,
            target,
            pair,
            &path,
            body,
            GeminiCall {
                method,
                wire,
                estimate,
            },
        )
    }

    /// Sends `body` to `target` at `path`: headers, credential, the forwarded state.
    #[allow(clippy::too_many_arguments)]
    fn forward_gemini(
        &mut self,
        endpoint: Endpoint,
        model: String,
        target: &Target,
        pair: Pair,
        path: &str,
        body: Vec<u8>,
        call: GeminiCall,
    ) -> Result<ProcessingResponse, ApiError> {
        let provider = &target.provider;
        let mut headers = Vec::with_capacity(8 + provider.headers.len());
        headers.push(set(":path", path));
        headers.push(set(":authority", provider.authority.as_str()));
        headers.push(set(md::ROUTE_HEADER, provider.cluster.as_str()));
        headers.push(set("content-length", body.len().to_string()));
        headers.push(set("content-type", "application/json"));
        let signed = Signed {
            authority: &provider.authority,
            path,
            body: &body,
            stream: false,
        };
        upstream_auth::credentials(provider, &signed, &mut headers)?;
        for (k, v) in &provider.headers {
            headers.push(set(k, v.as_str()));
        }
        let remove = self.version_headers(false, provider, &mut headers);
        if let Some(ctx) = &self.ctx {
            tracing::debug!(request_id = %ctx.request_id, key_id = %ctx.key_id, model = %model, provider = %provider.name, endpoint = endpoint.label(), "Routing a Gemini method");
        }
        self.gemini = Some(call);
        self.forwarded = Some(Forwarded::new(
            endpoint,
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

    /// The answer of a forwarded Gemini method, in Gemini's shape (`Ok(None)`: the provider's
    /// body goes through as it is); sets the request's usage. `Err` for a success that does
    /// not carry what it must.
    pub(super) fn gemini_answer(
        &mut self,
        call: GeminiCall,
        status: u16,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let ok = (200..300).contains(&status);
        if !ok {
            return Ok((call.wire == Wire::OpenAi).then(|| openai_error_as_gemini(status, body)));
        }
        let provider = self
            .forwarded
            .as_ref()
            .map(|f| f.provider.name.clone())
            .unwrap_or_default();
        let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) else {
            tracing::warn!(provider = %provider, "A Gemini method's answer is not a JSON object");
            return Err(ApiError::Upstream(502));
        };
        let (out, usage) = match call.method {
            GeminiMethod::CountTokens => {
                if !v.get("totalTokens").is_some_and(Value::is_u64) {
                    tracing::warn!(provider = %provider, "The provider's token count answer holds no count");
                    return Err(ApiError::Upstream(502));
                }
                let kept: Map<String, Value> = v
                    .into_iter()
                    .filter(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "totalTokens"
                                | "cachedContentTokenCount"
                                | "promptTokensDetails"
                                | "cacheTokensDetails"
                        )
                    })
                    .collect();
                (Some(Value::Object(kept).to_string().into_bytes()), None)
            }
            GeminiMethod::EmbedContent | GeminiMethod::BatchEmbedContents
                if call.wire == Wire::Gemini =>
            {
                let reported = v
                    .get("usageMetadata")
                    .and_then(|u| u.get("promptTokenCount"))
                    .and_then(Value::as_u64);
                let usage = match reported {
                    Some(n) => embed_usage(n, UsageSource::Provider),
                    None => embed_usage(call.estimate, UsageSource::Estimated),
                };
                (None, Some(usage))
            }
            GeminiMethod::EmbedContent | GeminiMethod::BatchEmbedContents => {
                let read = match call.wire {
                    Wire::VertexPredict => predict_vectors(&v),
                    Wire::OpenAi | Wire::Gemini => openai_vectors(&v).map(|vs| {
                        let n = v
                            .get("usage")
                            .and_then(|u| u.get("prompt_tokens"))
                            .and_then(Value::as_u64);
                        (vs, n)
                    }),
                };
                let Some((vectors, reported)) = read else {
                    tracing::warn!(provider = %provider, "The provider's embeddings answer holds no float vectors");
                    return Err(ApiError::Upstream(502));
                };
                let usage = match reported {
                    Some(n) => embed_usage(n, UsageSource::Provider),
                    None => embed_usage(call.estimate, UsageSource::Estimated),
                };
                let out = match call.method {
                    GeminiMethod::BatchEmbedContents => json!({
                        "embeddings": vectors.into_iter().map(|values| json!({ "values": values })).collect::<Vec<_>>()
                    }),
                    _ => {
                        json!({ "embedding": { "values": vectors.into_iter().next().unwrap_or_default() } })
                    }
                };
                (Some(out.to_string().into_bytes()), Some(usage))
            }
        };
        if let (Some(fwd), Some(u)) = (&mut self.forwarded, usage) {
            fwd.usage = Some(u);
        }
        Ok(out)
    }
}

pub(super) fn embed_usage(input_tokens: u64, source: UsageSource) -> Usage {
    Usage {
        input_tokens,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        source,
    }
}

/// The `input` strings of an OpenAI embeddings body Tollgate wrote.
fn parsed_inputs(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("input")?
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Vertex AI's `predictions[].embeddings.values`, and the sum of their
/// `statistics.token_count` when every one has it.
pub(super) fn predict_vectors(v: &Map<String, Value>) -> Option<(Vec<Value>, Option<u64>)> {
    let predictions = v.get("predictions")?.as_array()?;
    let mut vectors = Vec::with_capacity(predictions.len());
    let mut tokens = Some(0u64);
    for p in predictions {
        let e = p.get("embeddings")?;
        let values = e.get("values")?;
        if !values.is_array() {
            return None;
        }
        vectors.push(values.clone());
        let n = e
            .get("statistics")
            .and_then(|s| s.get("token_count"))
            .and_then(Value::as_u64);
        tokens = tokens.zip(n).map(|(a, b)| a + b);
    }
    Some((vectors, tokens))
}

/// OpenAI's `data[].embedding` vectors in `index` order (`None`: not float vectors).
fn openai_vectors(v: &Map<String, Value>) -> Option<Vec<Value>> {
    let data = v.get("data")?.as_array()?;
    let mut out: Vec<(u64, Value)> = Vec::with_capacity(data.len());
    for (i, d) in data.iter().enumerate() {
        let e = d.get("embedding")?;
        if !e.is_array() {
            return None;
        }
        let index = d.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
        out.push((index, e.clone()));
    }
    out.sort_by_key(|(i, _)| *i);
    Some(out.into_iter().map(|(_, e)| e).collect())
}

/// An OpenAI-family provider's error in Gemini's shape: its status, its message when it has one.
fn openai_error_as_gemini(status: u16, body: &[u8]) -> Vec<u8> {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("error")?
                .get("message")?
                .as_str()
                .map(|m| tollgate_core::bound::echo(m).into_owned())
        })
        .unwrap_or_else(|| format!("The provider answered with status {status}."));
    json!({ "error": {
        "code": status,
        "message": message,
        "status": tollgate_core::error::gemini_status(status),
    }})
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        match serde_json::from_str(s).unwrap() {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn a_count_takes_contents_or_a_generate_content_request() {
        let (c, inner) =
            count_request(&obj(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#)).unwrap();
        assert!(c.is_array() && inner.is_empty());
        let (_, inner) = count_request(&obj(
            r#"{"generateContentRequest":{"model":"models/x","contents":[]}}"#,
        ))
        .unwrap();
        assert_eq!(inner["model"], "models/x");
        assert!(count_request(&obj("{}")).is_err());
        assert!(count_request(&obj(r#"{"generateContentRequest":{}}"#)).is_err());
    }

    #[test]
    fn batch_requests_name_the_path_model_and_hold_text() {
        let body = obj(
            r#"{"requests":[{"model":"models/e","content":{"parts":[{"text":"a"},{"text":"b"}]}}]}"#,
        );
        let r = embed_requests(GeminiMethod::BatchEmbedContents, &body, "e").unwrap();
        assert_eq!(content_text(&r[0], "x").unwrap(), "a\nb");
        assert!(embed_requests(GeminiMethod::BatchEmbedContents, &body, "other").is_err());
        assert!(embed_requests(GeminiMethod::BatchEmbedContents, &obj("{}"), "e").is_err());
        let image = serde_json::json!({"content":{"parts":[{"inlineData":{"data":"AA=="}}]}});
        assert!(content_text(&image, "x").is_err());
        assert!(content_text(&serde_json::json!({}), "x").is_err());
    }

    #[test]
    fn one_dimension_per_batch_for_openai() {
        let r = |d: &[u64]| -> Vec<Value> {
            d.iter()
                .map(|d| serde_json::json!({ "outputDimensionality": d }))
                .collect()
        };
        assert_eq!(dimensions(&r(&[4, 4])).unwrap(), Some(4));
        assert_eq!(dimensions(&[]).unwrap(), None);
        assert!(dimensions(&r(&[4, 8])).is_err());
    }

    #[test]
    fn vertex_predictions_give_vectors_and_their_token_counts() {
        let v = obj(
            r#"{"predictions":[{"embeddings":{"values":[1.0],"statistics":{"token_count":2}}},{"embeddings":{"values":[2.0],"statistics":{"token_count":3}}}]}"#,
        );
        let (vectors, tokens) = predict_vectors(&v).unwrap();
        assert_eq!(vectors.len(), 2);
        assert_eq!(tokens, Some(5));
        let partial = obj(r#"{"predictions":[{"embeddings":{"values":[1.0]}}]}"#);
        assert_eq!(predict_vectors(&partial).unwrap().1, None);
        assert!(predict_vectors(&obj(r#"{"predictions":[{}]}"#)).is_none());
        assert_eq!(
            parsed_inputs(br#"{"input":["a","b"]}"#),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    #[test]
    fn openai_vectors_follow_their_index_and_errors_become_gemini_shaped() {
        let v = obj(r#"{"data":[{"index":1,"embedding":[2.0]},{"index":0,"embedding":[1.0]}]}"#);
        assert_eq!(
            openai_vectors(&v).unwrap(),
            vec![serde_json::json!([1.0]), serde_json::json!([2.0])]
        );
        assert!(openai_vectors(&obj(r#"{"data":[{"embedding":"AAAA"}]}"#)).is_none());
        let e: Value = serde_json::from_slice(&openai_error_as_gemini(
            400,
            br#"{"error":{"message":"bad dims"}}"#,
        ))
        .unwrap();
        assert_eq!(
            e,
            serde_json::json!({"error":{"code":400,"message":"bad dims","status":"INVALID_ARGUMENT"}})
        );
    }
}
