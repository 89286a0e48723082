//! OpenAI client → OpenAI-family provider: validate the request, rewrite the model to the
//! provider's id, make streams report usage, and read usage and errors back.
//!
//! [`parse_request`] is also the first step for every other pair: Anthropic requests share
//! the `model` and `stream` members it checks.

use serde::Deserialize;
use serde_json::value::RawValue;
use tollgate_core::usage::{OpenAiUsage, Usage};
use tollgate_core::{ApiError, Endpoint};

use super::json::{RawObject, RawObjectError};

/// A client request, parsed once.
#[derive(Debug)]
pub struct ParsedRequest<'a> {
    obj: RawObject<'a>,
    /// The public model the client asked for.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
}

/// What a rewrite produced.
#[derive(Debug)]
pub struct Rewritten {
    /// The body to send upstream.
    pub body: Vec<u8>,
    /// Whether the upstream will send a usage chunk the client did not ask for.
    pub strip_usage_chunk: bool,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        param,
        message: message.into(),
    }
}

/// `body` as one JSON object, or the client error saying why not.
pub fn parse_object(body: &[u8]) -> Result<RawObject<'_>, ApiError> {
    RawObject::parse(body).map_err(|e| match e {
        RawObjectError::Syntax(m) => ApiError::InvalidJson(m),
        RawObjectError::Duplicate(k) => ApiError::InvalidJson(format!("duplicate member `{k}`")),
    })
}

/// Parses and validates a request body for `endpoint` at `path` (without its query), which
/// names the model and the streaming of Gemini requests.
pub fn parse_request_at<'a>(
    endpoint: Endpoint,
    path: &str,
    body: &'a [u8],
) -> Result<ParsedRequest<'a>, ApiError> {
    if endpoint != Endpoint::GenerateContent {
        return parse_request(endpoint, body);
    }
    let (model, stream) = tollgate_core::config::gemini_call(path)
        .ok_or_else(|| invalid("model", "The path names no model."))?;
    Ok(ParsedRequest {
        obj: parse_object(body)?,
        model: model.to_owned(),
        stream,
    })
}

/// Parses and validates a request body for `endpoint`.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<ParsedRequest<'_>, ApiError> {
    let obj = parse_object(body)?;
    let model = match obj.get("model") {
        None => return Err(invalid("model", "You must provide a model parameter.")),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map_err(|_| invalid("model", "`model` must be a string."))?,
    };
    if model.is_empty() {
        return Err(invalid("model", "You must provide a model parameter."));
    }
    let stream = match obj.get("stream") {
        None => false,
        Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
            .map_err(|_| invalid("stream", "`stream` must be a boolean."))?
            .unwrap_or(false),
    };
    if stream && endpoint == Endpoint::Embeddings {
        return Err(invalid("stream", "Embeddings cannot be streamed."));
    }
    Ok(ParsedRequest { obj, model, stream })
}

impl<'a> ParsedRequest<'a> {
    /// The body's members.
    pub fn object(&self) -> &RawObject<'a> {
        &self.obj
    }

    /// The body for the provider: `upstream_model` in place of the public name, and for a
    /// stream, `stream_options.include_usage` switched on.
    pub fn rewrite(&self, upstream_model: &str, size_hint: usize) -> Result<Rewritten, ApiError> {
        self.rewrite_with(upstream_model, size_hint, &[])
    }

    /// [`ParsedRequest::rewrite`], with `extra` members set too (JSON text values).
    pub fn rewrite_with(
        &self,
        upstream_model: &str,
        size_hint: usize,
        extra: &[(&str, &str)],
    ) -> Result<Rewritten, ApiError> {
        let model_json = serde_json::to_string(upstream_model).unwrap_or_default();
        let mut replace: Vec<(&str, &str)> = vec![("model", &model_json)];
        replace.extend_from_slice(extra);
        if !self.stream {
            return Ok(Rewritten {
                body: self.obj.write_with(&replace, size_hint),
                strip_usage_chunk: false,
            });
        }
        let (options, strip) = stream_options(self.obj.get("stream_options"))?;
        if let Some(o) = &options {
            replace.push(("stream_options", o));
        }
        Ok(Rewritten {
            body: self.obj.write_with(&replace, size_hint),
            strip_usage_chunk: strip,
        })
    }
}

/// The `stream_options` to send (None: keep the client's) and whether the client did not ask
/// for usage.
fn stream_options(raw: Option<&RawValue>) -> Result<(Option<String>, bool), ApiError> {
    let bad = || invalid("stream_options", "`stream_options` must be an object.");
    let mut map = match raw.map(|r| serde_json::from_str::<serde_json::Value>(r.get())) {
        None | Some(Ok(serde_json::Value::Null)) => serde_json::Map::new(),
        Some(Ok(serde_json::Value::Object(m))) => m,
        Some(_) => return Err(bad()),
    };
    if map.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return Ok((None, false));
    }
    map.insert("include_usage".into(), serde_json::Value::Bool(true));
    Ok((Some(serde_json::Value::Object(map).to_string()), true))
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

/// Usage from a complete (non-streamed) response body.
pub fn usage_from_body(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage
        .map(Usage::from)
}

#[derive(Deserialize)]
#[allow(dead_code)] // only its shape is checked
struct ErrorEnvelope {
    error: ErrorObject,
}

#[derive(Deserialize)]
#[allow(dead_code)] // only its presence is checked
struct ErrorObject {
    #[allow(dead_code)]
    message: String,
}

/// Whether `body` is an OpenAI-format error (`{"error": {"message": …}}`).
pub fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<ErrorEnvelope>(body).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn non_streaming_requests_only_get_their_model_rewritten() {
        let body =
            br#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#;
        let p = parse_request(Endpoint::ChatCompletions, body).unwrap();
        assert_eq!((p.model.as_str(), p.stream), ("fast", false));
        let r = p.rewrite("gpt-4o-mini-2024-07-18", body.len()).unwrap();
        let v = value(&r.body);
        assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
        assert_eq!(v["temperature"], 0.2);
        assert!(v.get("stream_options").is_none());
        assert!(!r.strip_usage_chunk);
    }

    #[test]
    fn streams_always_ask_for_usage_and_remember_whether_the_client_did() {
        let body = br#"{"model":"m","stream":true,"messages":[]}"#;
        let r = parse_request(Endpoint::ChatCompletions, body)
            .unwrap()
            .rewrite("u", 0)
            .unwrap();
        assert_eq!(value(&r.body)["stream_options"]["include_usage"], true);
        assert!(r.strip_usage_chunk);

        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let r = parse_request(Endpoint::Completions, body)
            .unwrap()
            .rewrite("u", 0)
            .unwrap();
        assert!(!r.strip_usage_chunk);

        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let r = parse_request(Endpoint::ChatCompletions, body)
            .unwrap()
            .rewrite("u", 0)
            .unwrap();
        let v = value(&r.body);
        assert_eq!(
            (
                v["stream_options"]["include_usage"].as_bool(),
                v["stream_options"]["x"].as_i64()
            ),
            (Some(true), Some(1))
        );
        assert!(r.strip_usage_chunk);
    }

    #[test]
    fn bad_requests_are_named() {
        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "invalid_json"),
            (b"[]", "invalid_json"),
            (br#"{"messages":[]}"#, "model"),
            (br#"{"model":5}"#, "model"),
            (br#"{"model":"m","stream":"yes"}"#, "stream"),
            (br#"{"model":"m","model":"n"}"#, "invalid_json"),
        ];
        for (body, want) in cases {
            let err = parse_request(Endpoint::ChatCompletions, body).unwrap_err();
            let v = value(&err.body(tollgate_core::Dialect::OpenAi));
            assert_eq!(err.status(), 400);
            assert!(
                v["error"]["param"] == want || v["error"]["code"] == want,
                "{body:?}: {v}"
            );
        }
        let err =
            parse_request(Endpoint::Embeddings, br#"{"model":"e","stream":true}"#).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn usage_and_errors_are_read_from_bodies() {
        let u = usage_from_body(
            br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        )
        .unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (3, 2));
        assert!(usage_from_body(b"{}").is_none());
        assert!(is_openai_error(br#"{"error":{"message":"m","type":"t"}}"#));
        assert!(!is_openai_error(b"<html>bad gateway</html>"));
    }
}
