//! OpenAI's `POST /v1/embeddings` onto providers of another dialect: the Gemini API
//! (`:batchEmbedContents`), Vertex AI (`:predict` of its text and Gemini embedding models) and
//! AWS Bedrock (`InvokeModel` of Amazon Titan Text Embeddings, or of Cohere Embed, which
//! batches), the answer written back in
//! OpenAI's list shape (`data[].embedding` in input order, `index`, `usage.prompt_tokens`).
//!
//! - `input`: a string or an array of strings (token arrays are OpenAI's own: 400 `input`);
//!   `dimensions` → Gemini's `outputDimensionality` (each request), Vertex AI's
//!   `parameters.outputDimensionality`, Titan v2's `dimensions`; `encoding_format: base64`
//!   honoured here (each vector's values as little-endian f32 bytes, as OpenAI does); `user`
//!   dropped; Gemini's `taskType` left unset (OpenAI has none).
//! - Batch limits are the providers': Gemini 100 requests per batch, Vertex AI 250 instances
//!   (gemini-embedding models one), Titan one `inputText` per `InvokeModel` call, Cohere Embed
//!   on Bedrock 96 `texts` (with `input_type: search_document`: OpenAI has no input type; no
//!   `dimensions`). Envoy makes one upstream request per client request, so a longer `input` is
//!   refused (400 naming the limit) rather than split.
//! - Usage: Vertex AI's `statistics.token_count`, Titan's `inputTextTokenCount`, Bedrock's
//!   `x-amzn-bedrock-input-token-count` header (Cohere), Gemini's
//!   `usageMetadata.promptTokenCount` when it reports one, else the request's estimate
//!   (`usage_source: estimated`).
//!
//! Anthropic (and Vertex AI's Claude models) have no embeddings API: [`Pair::route`] refuses
//! them. The request is judged, reserved, logged and failed over like every OpenAI request.
//!
//! [`Pair::route`]: crate::translator::Pair::route

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tollgate_core::config::{ApiFamily, ProviderKind, Target};
use tollgate_core::{ApiError, Endpoint, Usage, UsageSource};

use super::gemini_methods::{embed_usage, gemini_path, predict_vectors};
use super::Processor;
use crate::translator::json::RawObject;
use crate::translator::ResponseMeta;

/// The most requests of one Gemini `:batchEmbedContents` call.
pub const GEMINI_MAX_BATCH: usize = 100;

/// The most instances of one Vertex AI `:predict` call of a text embedding model.
pub const VERTEX_MAX_INSTANCES: usize = 250;

/// The most `texts` of one Cohere Embed call on Bedrock.
pub const COHERE_MAX_TEXTS: usize = 96;

/// The embeddings API a provider serves a model with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    /// The Gemini API's `:batchEmbedContents`.
    GeminiBatch,
    /// Vertex AI's `:predict` (`max` instances per call).
    VertexPredict {
        /// Instances one call takes.
        max: usize,
    },
    /// Bedrock `InvokeModel` of Amazon Titan Text Embeddings (`v2`: takes `dimensions` and
    /// `normalize`).
    Titan {
        /// Whether the model is v2.
        v2: bool,
    },
    /// Bedrock `InvokeModel` of Cohere Embed (`texts`, `input_type`).
    Cohere,
}

/// What the answer to an OpenAI embeddings request on another dialect needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct EmbedCall {
    /// `encoding_format: base64`.
    base64: bool,
    /// The request's estimated prompt tokens (the usage when the provider reports none).
    estimate: u64,
    /// Bedrock's `x-amzn-bedrock-input-token-count` response header.
    header_tokens: Option<u64>,
}

/// An OpenAI embeddings request, read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EmbedRequest {
    /// The texts, in order.
    pub inputs: Vec<String>,
    /// `dimensions`.
    pub dimensions: Option<u64>,
    /// `encoding_format: base64`.
    pub base64: bool,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param,
        message: message.into(),
    }
}

fn member(obj: &RawObject<'_>, key: &str) -> Option<Value> {
    obj.get(key)
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .filter(|v| !v.is_null())
}

/// Reads the members of an OpenAI embeddings body that a provider of another dialect can
/// serve; refuses what it cannot (token arrays), with the member named.
pub(super) fn read(obj: &RawObject<'_>) -> Result<EmbedRequest, ApiError> {
    let tokens = || {
        invalid(
            "input",
            "Token arrays can only be embedded by OpenAI-family providers: send the text.",
        )
    };
    let inputs = match member(obj, "input") {
        None => return Err(invalid("input", "You must provide an `input`.")),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(invalid("input", "`input` must not be an empty array."))
        }
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(tokens()),
                _ => Err(invalid(
                    "input",
                    "`input` must be a string or an array of strings.",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(invalid(
                "input",
                "`input` must be a string or an array of strings.",
            ))
        }
    };
    if inputs.iter().any(String::is_empty) {
        return Err(invalid("input", "`input` must not hold an empty string."));
    }
    let dimensions =
        match member(obj, "dimensions") {
            None => None,
            Some(d) => Some(d.as_u64().filter(|d| *d > 0).ok_or_else(|| {
                invalid("dimensions", "`dimensions` must be a positive integer.")
            })?),
        };
    let base64 = match member(obj, "encoding_format") {
        None => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(invalid(
                "encoding_format",
                "`encoding_format` must be `float` or `base64`.",
            ))
        }
    };
    Ok(EmbedRequest {
        inputs,
        dimensions,
        base64,
    })
}

/// The most instances one Vertex AI `:predict` call of `model` takes: its Gemini embedding
/// models take one, its text embedding models [`VERTEX_MAX_INSTANCES`].
pub(super) fn vertex_max_instances(model: &str) -> usize {
    if model.starts_with("gemini-embedding") {
        1
    } else {
        VERTEX_MAX_INSTANCES
    }
}

/// The embeddings API of `target`'s model (`Ok(None)`: an OpenAI-family provider, which
/// takes the request as it is).
pub(super) fn wire_of(target: &Target) -> Result<Option<Wire>, ApiError> {
    let model = target.upstream_model.as_str();
    Ok(Some(match (target.provider.kind, target.family) {
        (_, ApiFamily::OpenAi) => return Ok(None),
        (ProviderKind::Gemini, ApiFamily::Gemini) => Wire::GeminiBatch,
        (ProviderKind::Vertex, ApiFamily::Gemini) => Wire::VertexPredict {
            max: vertex_max_instances(model),
        },
        (ProviderKind::Bedrock, _) if model.starts_with("amazon.titan-embed-text-v1") => {
            Wire::Titan { v2: false }
        }
        (ProviderKind::Bedrock, _) if model.starts_with("amazon.titan-embed-text") => {
            Wire::Titan { v2: true }
        }
        (ProviderKind::Bedrock, _) if model.starts_with("cohere.embed") => Wire::Cohere,
        (ProviderKind::Bedrock, _) => {
            return Err(invalid(
                "model",
                "This model is served by AWS Bedrock, where Tollgate embeds with Amazon Titan Text Embeddings (amazon.titan-embed-text-*) and Cohere Embed (cohere.embed-*) models only.",
            ))
        }
        (_, _) => {
            return Err(invalid(
                "model",
                "This model is served by a provider without an embeddings API.",
            ))
        }
    }))
}

/// The upstream `:path` of `wire` for `target`.
fn path_of(wire: Wire, target: &Target) -> Option<String> {
    match wire {
        Wire::GeminiBatch => gemini_path(target, "batchEmbedContents"),
        Wire::VertexPredict { .. } => gemini_path(target, "predict"),
        // One path for every chat endpoint (`…/model/{id}/converse`): InvokeModel is beside it.
        Wire::Titan { .. } | Wire::Cohere => target
            .path(Endpoint::ChatCompletions)
            .strip_suffix("/converse")
            .map(|base| format!("{base}/invoke")),
    }
}

/// The provider's body for `req` to `upstream_model` over `wire`.
pub(super) fn request_to_wire(
    wire: Wire,
    req: &EmbedRequest,
    upstream_model: &str,
) -> Result<Vec<u8>, ApiError> {
    let too_many = |max: usize, what: &str| {
        invalid(
            "input",
            format!(
                "This model's provider embeds at most {max} input{} per request ({what}); `input` holds {}.",
                if max == 1 { "" } else { "s" },
                req.inputs.len()
            ),
        )
    };
    let body = match wire {
        Wire::GeminiBatch => {
            if req.inputs.len() > GEMINI_MAX_BATCH {
                return Err(too_many(GEMINI_MAX_BATCH, "Gemini's batchEmbedContents"));
            }
            let name = format!("models/{upstream_model}");
            let requests: Vec<Value> = req
                .inputs
                .iter()
                .map(|t| {
                    let mut r = Map::new();
                    r.insert("model".into(), name.clone().into());
                    r.insert("content".into(), json!({ "parts": [{ "text": t }] }));
                    if let Some(d) = req.dimensions {
                        r.insert("outputDimensionality".into(), d.into());
                    }
                    Value::Object(r)
                })
                .collect();
            json!({ "requests": requests })
        }
        Wire::VertexPredict { max } => {
            if req.inputs.len() > max {
                return Err(too_many(max, "Vertex AI's predict"));
            }
            let instances: Vec<Value> =
                req.inputs.iter().map(|t| json!({ "content": t })).collect();
            let mut body = json!({ "instances": instances });
            if let Some(d) = req.dimensions {
                body["parameters"] = json!({ "outputDimensionality": d });
            }
            body
        }
        Wire::Titan { v2 } => {
            let [text] = req.inputs.as_slice() else {
                return Err(too_many(1, "Bedrock InvokeModel of Amazon Titan"));
            };
            let mut body = json!({ "inputText": text });
            match (v2, req.dimensions) {
                (true, d) => {
                    if let Some(d) = d {
                        body["dimensions"] = d.into();
                    }
                    // OpenAI's vectors have unit length.
                    body["normalize"] = true.into();
                }
                (false, Some(_)) => return Err(invalid(
                    "dimensions",
                    "Amazon Titan Text Embeddings v1 has one output size: leave `dimensions` out.",
                )),
                (false, None) => {}
            }
            body
        }
        Wire::Cohere => {
            if req.inputs.len() > COHERE_MAX_TEXTS {
                return Err(too_many(COHERE_MAX_TEXTS, "Cohere Embed on Bedrock"));
            }
            if req.dimensions.is_some() {
                return Err(invalid(
                    "dimensions",
                    "Cohere Embed on Bedrock has one output size: leave `dimensions` out.",
                ));
            }
            json!({ "texts": req.inputs, "input_type": "search_document" })
        }
    };
    Ok(body.to_string().into_bytes())
}

/// The vectors of a provider's answer over `wire`, in input order, and the prompt tokens it
/// reported (`None`: not an embeddings answer).
pub(super) fn vectors_from_wire(wire: Wire, body: &[u8]) -> Option<(Vec<Value>, Option<u64>)> {
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    match wire {
        Wire::GeminiBatch => {
            let vectors = v
                .get("embeddings")?
                .as_array()?
                .iter()
                .map(|e| e.get("values").filter(|x| x.is_array()).cloned())
                .collect::<Option<Vec<_>>>()?;
            let reported = v
                .get("usageMetadata")
                .and_then(|u| u.get("promptTokenCount"))
                .and_then(Value::as_u64);
            Some((vectors, reported))
        }
        Wire::VertexPredict { .. } => predict_vectors(&v),
        Wire::Titan { .. } => {
            let e = v.get("embedding").filter(|e| e.is_array())?;
            let reported = v.get("inputTextTokenCount").and_then(Value::as_u64);
            Some((vec![e.clone()], reported))
        }
        Wire::Cohere => {
            // `embeddings_floats` (a list), or `embeddings_by_type` (`{"float": [...]}`).
            let e = v.get("embeddings")?;
            let list = e.get("float").unwrap_or(e).as_array()?;
            let vectors = list
                .iter()
                .map(|x| x.is_array().then(|| x.clone()))
                .collect::<Option<Vec<_>>>()?;
            Some((vectors, None))
        }
    }
}

/// One vector as OpenAI's base64: its values as little-endian f32 bytes (`None`: a value is
/// not a number).
fn base64_of(vector: &Value) -> Option<String> {
    let values = vector.as_array()?;
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for x in values {
        // OpenAI's base64 carries f32s: the narrowing is the format's.
        #[allow(clippy::cast_possible_truncation)]
        let f = x.as_f64()? as f32;
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// OpenAI's embeddings list of `vectors` (in input order) from `model`.
pub(super) fn response_to_wire(
    vectors: Vec<Value>,
    model: &str,
    prompt_tokens: u64,
    base64: bool,
) -> Option<Vec<u8>> {
    let mut data = Vec::with_capacity(vectors.len());
    for (index, v) in vectors.into_iter().enumerate() {
        let embedding = if base64 {
            Value::String(base64_of(&v)?)
        } else {
            v
        };
        data.push(json!({ "object": "embedding", "index": index, "embedding": embedding }));
    }
    Some(
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
        })
        .to_string()
        .into_bytes(),
    )
}

/// The body and `:path` of an OpenAI embeddings request for `target` when its provider speaks
/// another dialect (`Ok(None)`: any other request, which keeps its usual path).
pub(super) fn hub_request(
    endpoint: Endpoint,
    target: &Target,
    obj: &RawObject<'_>,
) -> Result<Option<(Vec<u8>, String)>, ApiError> {
    if endpoint != Endpoint::Embeddings {
        return Ok(None);
    }
    let Some(wire) = wire_of(target)? else {
        return Ok(None);
    };
    let req = read(obj)?;
    let body = request_to_wire(wire, &req, &target.upstream_model)?;
    let path = path_of(wire, target).ok_or(ApiError::Internal)?;
    Ok(Some((body, path)))
}

impl Processor {
    /// Keeps what the answer of an OpenAI embeddings request needs (`endpoint` another: none).
    pub(super) fn embeddings_prepare(
        &mut self,
        endpoint: Endpoint,
        target: &Target,
        parsed: &crate::translator::openai::ParsedRequest<'_>,
    ) {
        if endpoint != Endpoint::Embeddings {
            return;
        }
        let base64 = member(parsed.object(), "encoding_format")
            .is_some_and(|f| f.as_str() == Some("base64"));
        let estimate = self
            .estimate(endpoint, &target.provider, &target.upstream_model, parsed)
            .prompt_tokens;
        self.embeddings = Some(EmbedCall {
            base64,
            estimate,
            header_tokens: None,
        });
    }

    /// Keeps Bedrock's input token count header of an embeddings answer.
    pub(super) fn embeddings_headers(&mut self, token_count: Option<&[u8]>) {
        if let Some(call) = &mut self.embeddings {
            call.header_tokens = token_count
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok());
        }
    }

    /// The answer of an OpenAI embeddings request that a provider of another dialect gave
    /// (`None`: not one, the usual path reads it): OpenAI's list shape, or the provider's
    /// error in OpenAI's shape; sets the request's usage.
    pub(super) fn embeddings_answer(&mut self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        let call = self.embeddings?;
        let config = std::sync::Arc::clone(&self.config);
        let fwd = self.forwarded.as_mut()?;
        if fwd.endpoint != Endpoint::Embeddings || !fwd.pair.translates() {
            return None;
        }
        if !(200..300).contains(&status) {
            let meta = ResponseMeta {
                error_type: fwd.error_type.as_deref(),
                ..Default::default()
            };
            return fwd.pair.complete_with(status, body, &meta).body;
        }
        // The target that answered (failover may have moved it).
        let wire = config.models.get(&fwd.model).and_then(|m| {
            m.targets
                .iter()
                .find(|t| {
                    std::sync::Arc::ptr_eq(&t.provider, &fwd.provider)
                        && t.upstream_model == fwd.upstream_model
                })
                .and_then(|t| wire_of(t).ok().flatten())
        });
        let read = wire.and_then(|w| vectors_from_wire(w, body));
        let Some((vectors, reported)) = read else {
            tracing::warn!(provider = %fwd.provider.name, "The provider's embeddings answer holds no vectors");
            return Some(ApiError::Upstream(502).body(tollgate_core::Dialect::OpenAi));
        };
        let usage: Usage = match reported.or(call.header_tokens) {
            Some(n) => embed_usage(n, UsageSource::Provider),
            None => embed_usage(call.estimate, UsageSource::Estimated),
        };
        fwd.usage = Some(usage);
        match response_to_wire(
            vectors,
            &fwd.upstream_model,
            usage.input_tokens,
            call.base64,
        ) {
            Some(out) => Some(out),
            None => {
                tracing::warn!(provider = %fwd.provider.name, "The provider's embeddings answer holds a value that is not a number");
                fwd.usage = None;
                Some(ApiError::Upstream(502).body(tollgate_core::Dialect::OpenAi))
            }
        }
    }
}

/// The pair and endpoint `Pair::route` gives an OpenAI embeddings request to `family`.
#[cfg(test)]
fn route_of(family: ApiFamily) -> Option<(crate::translator::Pair, Endpoint)> {
    crate::translator::Pair::route(Endpoint::Embeddings, family).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::openai::parse_object;

    fn req(body: &str) -> Result<EmbedRequest, ApiError> {
        read(&parse_object(body.as_bytes()).unwrap())
    }

    fn wire_json(wire: Wire, body: &str, model: &str) -> Value {
        serde_json::from_slice(&request_to_wire(wire, &req(body).unwrap(), model).unwrap()).unwrap()
    }

    #[test]
    fn inputs_are_strings_and_token_arrays_are_refused() {
        let r =
            req(r#"{"model":"e","input":"hi","dimensions":4,"encoding_format":"base64"}"#).unwrap();
        assert_eq!(
            r,
            EmbedRequest {
                inputs: vec!["hi".into()],
                dimensions: Some(4),
                base64: true
            }
        );
        assert_eq!(req(r#"{"input":["a","b"]}"#).unwrap().inputs.len(), 2);
        for bad in [
            r#"{"input":[1,2,3]}"#,
            r#"{"input":[[1,2,3]]}"#,
            r#"{"input":[]}"#,
            r#"{"input":""}"#,
            r#"{"input":5}"#,
            r#"{}"#,
            r#"{"input":"a","dimensions":0}"#,
            r#"{"input":"a","encoding_format":"int8"}"#,
        ] {
            let e = req(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
        let e = req(r#"{"input":[[1,2,3]]}"#).unwrap_err();
        let v: Value = serde_json::from_slice(&e.body(tollgate_core::Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["param"], "input", "{v}");
    }

    /// Golden request bodies, one per provider API.
    #[test]
    fn each_provider_gets_its_own_request_shape() {
        assert_eq!(
            wire_json(
                Wire::GeminiBatch,
                r#"{"input":["a","b"],"dimensions":4}"#,
                "gemini-embedding-001"
            ),
            json!({"requests": [
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4},
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 4},
            ]})
        );
        assert_eq!(
            wire_json(
                Wire::VertexPredict { max: 250 },
                r#"{"input":["a","b"],"dimensions":4}"#,
                "text-embedding-005"
            ),
            json!({"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 4}})
        );
        assert_eq!(
            wire_json(Wire::VertexPredict { max: 1 }, r#"{"input":"a"}"#, "g"),
            json!({"instances": [{"content": "a"}]})
        );
        assert_eq!(
            wire_json(
                Wire::Titan { v2: true },
                r#"{"input":["a"],"dimensions":256}"#,
                "amazon.titan-embed-text-v2:0"
            ),
            json!({"inputText": "a", "dimensions": 256, "normalize": true})
        );
        assert_eq!(
            wire_json(
                Wire::Cohere,
                r#"{"input":["a","b"]}"#,
                "cohere.embed-english-v3"
            ),
            json!({"texts": ["a", "b"], "input_type": "search_document"})
        );
        assert_eq!(
            wire_json(
                Wire::Titan { v2: false },
                r#"{"input":"a"}"#,
                "amazon.titan-embed-text-v1"
            ),
            json!({"inputText": "a"})
        );
    }

    #[test]
    fn batch_limits_are_the_providers_and_named() {
        let two = req(r#"{"input":["a","b"]}"#).unwrap();
        for wire in [Wire::Titan { v2: true }, Wire::VertexPredict { max: 1 }] {
            let e = request_to_wire(wire, &two, "m").unwrap_err();
            assert!(e.to_string().contains("at most 1 input per request"), "{e}");
        }
        let many = EmbedRequest {
            inputs: vec!["x".into(); GEMINI_MAX_BATCH + 1],
            dimensions: None,
            base64: false,
        };
        let e = request_to_wire(Wire::GeminiBatch, &many, "m").unwrap_err();
        assert!(e.to_string().contains("at most 100 inputs"), "{e}");
        let dims = req(r#"{"input":"a","dimensions":8}"#).unwrap();
        assert!(request_to_wire(Wire::Titan { v2: false }, &dims, "m").is_err());
        assert!(request_to_wire(Wire::Cohere, &dims, "m").is_err());
        let many = EmbedRequest {
            inputs: vec!["x".into(); COHERE_MAX_TEXTS + 1],
            dimensions: None,
            base64: false,
        };
        assert!(request_to_wire(Wire::Cohere, &many, "m").is_err());
    }

    /// Golden answers: each provider's answer becomes OpenAI's list, its usage read.
    #[test]
    fn answers_become_openai_lists() {
        let (v, n) = vectors_from_wire(
            Wire::GeminiBatch,
            br#"{"embeddings":[{"values":[0.5,-0.25]},{"values":[1.0,0.0]}]}"#,
        )
        .unwrap();
        assert_eq!((v.len(), n), (2, None));
        let (v, n) = vectors_from_wire(
            Wire::VertexPredict { max: 250 },
            br#"{"predictions":[{"embeddings":{"values":[0.5],"statistics":{"token_count":3,"truncated":false}}}]}"#,
        )
        .unwrap();
        assert_eq!((v.len(), n), (1, Some(3)));
        let (v, n) = vectors_from_wire(
            Wire::Titan { v2: true },
            br#"{"embedding":[0.5,-0.25],"inputTextTokenCount":7,"embeddingsByType":{"float":[0.5,-0.25]}}"#,
        )
        .unwrap();
        assert_eq!((v.clone(), n), (vec![json!([0.5, -0.25])], Some(7)));
        assert!(vectors_from_wire(Wire::Titan { v2: true }, br#"{"message":"x"}"#).is_none());
        for cohere in [
            &br#"{"id":"x","response_type":"embeddings_floats","texts":["a","b"],"embeddings":[[0.5],[1.0]]}"#[..],
            &br#"{"id":"x","response_type":"embeddings_by_type","embeddings":{"float":[[0.5],[1.0]]}}"#[..],
        ] {
            let (v, n) = vectors_from_wire(Wire::Cohere, cohere).unwrap();
            assert_eq!((v, n), (vec![json!([0.5]), json!([1.0])], None));
        }
        assert!(vectors_from_wire(Wire::GeminiBatch, b"nope").is_none());

        let out: Value =
            serde_json::from_slice(&response_to_wire(v.clone(), "titan", 7, false).unwrap())
                .unwrap();
        assert_eq!(
            out,
            json!({"object": "list", "model": "titan",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
                "usage": {"prompt_tokens": 7, "total_tokens": 7}})
        );
        // base64: little-endian f32 bytes, as OpenAI sends them.
        let out: Value =
            serde_json::from_slice(&response_to_wire(v, "titan", 7, true).unwrap()).unwrap();
        let b64 = out["data"][0]["embedding"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, vec![0.5f32, -0.25]);
        assert!(response_to_wire(vec![json!(["x"])], "m", 1, true).is_none());
    }

    #[test]
    fn anthropic_has_no_embeddings_and_the_others_route() {
        assert!(route_of(ApiFamily::Anthropic).is_none());
        for f in [ApiFamily::Gemini, ApiFamily::Bedrock, ApiFamily::OpenAi] {
            let (pair, e) = route_of(f).unwrap();
            assert_eq!((pair.client, e), (ApiFamily::OpenAi, Endpoint::Embeddings));
        }
    }
}
