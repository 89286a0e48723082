//! Translators: pure functions that turn request bodies and response chunks between a client
//! dialect and a provider dialect.
//!
//! A [`Pair`] names the (client dialect, provider dialect) of one request. Same-dialect pairs
//! pass bodies through with the model rewritten and usage read back ([`openai`] for the
//! OpenAI family, [`Pair::request`] for Anthropic). Cross-dialect pairs go through the
//! [`hub`]: the client's codec decodes, the provider's encodes, and back for responses,
//! errors and streams ([`codec`], [`crate::stream`]).

pub mod call_id;
pub mod codec;
pub mod completions;
pub mod error;
pub mod eventstream;
pub mod hub;
pub mod json;
pub mod json_tool;
pub mod openai;
pub mod thinking_blocks;

#[cfg(test)]
mod tests;

use tollgate_core::config::ApiFamily;
use tollgate_core::{ApiError, Endpoint, Usage};

use self::codec::{anthropic, bedrock, gemini, openai as openai_codec};
use self::error::TranslateError;
use self::hub::ErrorInfo;
use self::json::RawObject;
use crate::stream::Pipeline;

/// The dialects of one request: what the client speaks, what the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// The client's API.
    pub client: ApiFamily,
    /// The provider's API.
    pub upstream: ApiFamily,
}

/// A complete response body after translation.
#[derive(Debug, Default, PartialEq)]
pub struct Completed {
    /// The body to send instead (`None`: the provider's body goes through unchanged).
    pub body: Option<Vec<u8>>,
    /// Usage read from a successful body.
    pub usage: Option<Usage>,
}

fn family_name(f: ApiFamily) -> &'static str {
    match f {
        ApiFamily::OpenAi => "OpenAI",
        ApiFamily::Anthropic => "Anthropic",
        ApiFamily::Gemini => "Gemini",
        ApiFamily::Bedrock => "AWS Bedrock",
    }
}

/// The error dialect of a client API.
pub fn dialect_of(f: ApiFamily) -> tollgate_core::Dialect {
    match f {
        // Bedrock is no client API; its arm is never taken.
        ApiFamily::OpenAi | ApiFamily::Bedrock => tollgate_core::Dialect::OpenAi,
        ApiFamily::Anthropic => tollgate_core::Dialect::Anthropic,
        ApiFamily::Gemini => tollgate_core::Dialect::Gemini,
    }
}

/// What the processor knows of a response besides its status and body.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseMeta<'a> {
    /// The `created` of OpenAI bodies.
    pub created: u64,
    /// The response id, for providers whose bodies carry none (Bedrock).
    pub id: &'a str,
    /// The model, for providers whose bodies name none (Bedrock).
    pub model: &'a str,
    /// The provider's error type from a header (Bedrock's `x-amzn-errortype`).
    pub error_type: Option<&'a str>,
}

impl Pair {
    /// The pair of a client `endpoint` served by a provider speaking `upstream`, and the
    /// provider endpoint it goes to; an error for endpoints the provider has no counterpart of.
    pub fn route(
        endpoint: Endpoint,
        upstream: ApiFamily,
    ) -> Result<(Pair, Endpoint), TranslateError> {
        let client = match endpoint {
            Endpoint::Messages => ApiFamily::Anthropic,
            Endpoint::GenerateContent => ApiFamily::Gemini,
            _ => ApiFamily::OpenAi,
        };
        let pair = Pair { client, upstream };
        // Legacy completions go through the hub as one user turn (`completions`).
        let chat = matches!(
            endpoint,
            Endpoint::ChatCompletions
                | Endpoint::Messages
                | Endpoint::GenerateContent
                | Endpoint::Completions
        );
        let target = match (endpoint, upstream) {
            // Their own embeddings APIs (`processor/embeddings.rs`); Anthropic has none.
            (Endpoint::Embeddings, ApiFamily::Gemini | ApiFamily::Bedrock) => Endpoint::Embeddings,
            (_, ApiFamily::Anthropic) if chat => Endpoint::Messages,
            (_, ApiFamily::Gemini) if chat => Endpoint::GenerateContent,
            (Endpoint::Messages | Endpoint::GenerateContent, ApiFamily::OpenAi) => {
                Endpoint::ChatCompletions
            }
            (_, ApiFamily::Bedrock) if chat => Endpoint::ChatCompletions,
            (e, ApiFamily::OpenAi) => e,
            (e, ApiFamily::Anthropic | ApiFamily::Gemini | ApiFamily::Bedrock) => {
                return Err(TranslateError::Unsupported {
                    param: "model",
                    message: format!(
                        "This model is served by an {} provider, which has no `{}` endpoint.",
                        family_name(upstream),
                        e.suffix()
                    ),
                })
            }
        };
        Ok((pair, target))
    }

    /// Whether bodies change dialect.
    pub fn translates(self) -> bool {
        self.client != self.upstream
    }

    /// The OpenAI → OpenAI-family pair, whose requests and streams keep their own
    /// byte-preserving path ([`openai::ParsedRequest::rewrite`], [`Pipeline`]).
    pub fn is_openai_passthrough(self) -> bool {
        self.client == ApiFamily::OpenAi && self.upstream == ApiFamily::OpenAi
    }

    /// The request body for the provider (not for the OpenAI → OpenAI pair, which keeps its
    /// own rewrite in [`openai::ParsedRequest::rewrite`]), and whether a streaming OpenAI
    /// client asked for the usage chunk.
    pub fn request(
        self,
        obj: &RawObject<'_>,
        upstream_model: &str,
        stream: bool,
        size_hint: usize,
    ) -> Result<(Vec<u8>, bool), TranslateError> {
        if !self.translates() {
            // Gemini names the model in the path, not the body.
            if self.client == ApiFamily::Gemini {
                return Ok((obj.write_with(&[], size_hint), false));
            }
            let model = serde_json::to_string(upstream_model).unwrap_or_default();
            let mut replace = vec![("model", model.as_str())];
            let messages = call_id::strip_raw_messages(obj);
            if let Some(m) = &messages {
                replace.push(("messages", m));
            }
            return Ok((obj.write_with(&replace, size_hint), false));
        }
        let req = match self.client {
            ApiFamily::OpenAi => openai_codec::request_from_wire(obj, upstream_model, stream)?,
            ApiFamily::Anthropic => anthropic::request_from_wire(obj, upstream_model, stream)?,
            ApiFamily::Gemini => gemini::request_from_wire(obj, upstream_model, stream)?,
            ApiFamily::Bedrock => return Err(no_bedrock_client()),
        };
        self.encode_request(req)
    }

    /// The provider's body for a hub request (see [`Pair::request`]), and whether a
    /// streaming OpenAI client asked for the usage chunk.
    pub fn encode_request(self, req: hub::ChatRequest) -> Result<(Vec<u8>, bool), TranslateError> {
        let mut req = req;
        // An OpenAI client's `thinking_blocks` carry Anthropic-style signatures: only the
        // Anthropic family (Anthropic, Vertex Claude, Bedrock Converse) can check them.
        if self.client == ApiFamily::OpenAi
            && !matches!(self.upstream, ApiFamily::Anthropic | ApiFamily::Bedrock)
        {
            thinking_blocks::drop_thinking(&mut req);
        }
        // Gemini's signatures ride in tool-call ids: back onto the calls for Gemini, gone for
        // everyone else.
        match self.upstream {
            ApiFamily::Gemini => call_id::for_gemini(&mut req),
            ApiFamily::OpenAi | ApiFamily::Anthropic | ApiFamily::Bedrock => {
                call_id::strip(&mut req)
            }
        }
        json_tool::check_tool_names(&req)?;
        // Providers without a JSON mode get it as one forced tool (undone on the way back).
        if matches!(self.upstream, ApiFamily::Anthropic | ApiFamily::Bedrock) {
            json_tool::into_tool(&mut req)?;
        }
        tracing::trace!(
            from = family_name(self.client),
            to = family_name(self.upstream),
            "Translated request"
        );
        let body = match self.upstream {
            ApiFamily::OpenAi => openai_codec::request_to_wire(&req),
            ApiFamily::Anthropic => anthropic::request_to_wire(&req),
            ApiFamily::Gemini => gemini::request_to_wire(&req),
            ApiFamily::Bedrock => bedrock::request_to_wire(&req)?,
        };
        Ok((body, req.include_usage))
    }

    /// A complete response body (status `status`) for the client.
    pub fn complete(self, status: u16, body: &[u8], created: u64) -> Completed {
        self.complete_with(
            status,
            body,
            &ResponseMeta {
                created,
                ..Default::default()
            },
        )
    }

    /// A complete response body (status `status`) for the client, with what else is known of
    /// the response.
    pub fn complete_with(self, status: u16, body: &[u8], meta: &ResponseMeta<'_>) -> Completed {
        let created = meta.created;
        if !(200..300).contains(&status) {
            return Completed {
                body: self.error(status, body, meta.error_type),
                usage: None,
            };
        }
        if !self.translates() {
            return Completed {
                body: None,
                usage: match self.upstream {
                    ApiFamily::OpenAi => openai::usage_from_body(body),
                    ApiFamily::Anthropic => {
                        anthropic::response_from_wire(body).ok().map(|r| r.usage)
                    }
                    ApiFamily::Gemini => gemini::usage_from_body(body),
                    ApiFamily::Bedrock => bedrock::response_from_wire(body, meta.id, meta.model)
                        .ok()
                        .map(|r| r.usage),
                },
            };
        }
        let parsed = match self.upstream {
            ApiFamily::OpenAi => openai_codec::response_from_wire(body),
            ApiFamily::Anthropic => anthropic::response_from_wire(body),
            ApiFamily::Gemini => gemini::response_from_wire(body),
            ApiFamily::Bedrock => bedrock::response_from_wire(body, meta.id, meta.model),
        };
        match parsed {
            Ok(mut r) => {
                json_tool::unwrap_response(&mut r);
                Completed {
                    body: Some(match self.client {
                        ApiFamily::OpenAi | ApiFamily::Bedrock => {
                            openai_codec::response_to_wire(&r, created)
                        }
                        ApiFamily::Anthropic => anthropic::response_to_wire(&r),
                        ApiFamily::Gemini => gemini::response_to_wire(&r),
                    }),
                    usage: Some(r.usage),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not translate the provider's response");
                Completed {
                    body: Some(self.own_error(&e.api_error())),
                    usage: None,
                }
            }
        }
    }

    /// An error body in the client's dialect (`None`: the provider's is already one).
    fn error(self, status: u16, body: &[u8], error_type: Option<&str>) -> Option<Vec<u8>> {
        let info: Option<ErrorInfo> = match self.upstream {
            ApiFamily::OpenAi => openai_codec::error_from_wire(status, body),
            ApiFamily::Anthropic => anthropic::error_from_wire(status, body),
            ApiFamily::Gemini => gemini::error_from_wire(status, body),
            ApiFamily::Bedrock => bedrock::error_from_wire(status, body, error_type),
        };
        match info {
            Some(_) if !self.translates() => None,
            Some(info) => Some(match self.client {
                ApiFamily::OpenAi | ApiFamily::Bedrock => openai_codec::error_to_wire(&info),
                ApiFamily::Anthropic => anthropic::error_to_wire(&info),
                ApiFamily::Gemini => gemini::error_to_wire(&info),
            }),
            None => Some(self.own_error(&ApiError::Upstream(status))),
        }
    }

    fn own_error(self, e: &ApiError) -> Vec<u8> {
        e.body(dialect_of(self.client))
    }

    /// The stream pipeline of this pair, without guardrails (`include_usage`: an OpenAI
    /// client asked for the usage chunk; `created`: the `created` of OpenAI chunks).
    pub fn stream(self, include_usage: bool, created: u64) -> Pipeline {
        Pipeline::new(self, include_usage, created, None)
    }
}

/// No client speaks Bedrock: [`Pair::route`] never pairs one, so this answers a bug, not a user.
fn no_bedrock_client() -> TranslateError {
    TranslateError::Unsupported {
        param: "model",
        message: "Requests in Bedrock's format are not accepted.".to_owned(),
    }
}
