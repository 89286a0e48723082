//! Guardrails and payload capture on the endpoints that are not chat: the media APIs (the
//! prompt or input of JSON bodies, the `prompt` text part of multipart forms; transcripts on
//! the way back), rerank (query and documents) and passthrough (JSON bodies of a recognisable
//! shape). Each reads what its endpoint already parsed ([`crate::guard::endpoints`] walks it)
//! under the key's policy: local rules first (a redaction rewrites the text in place), then the
//! webhooks over the text as it goes on. A block is refused in the client's dialect by the
//! caller: OpenAI's for media, Cohere's for rerank, the provider's for passthrough.

use std::ops::Range;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use serde_json::{Map, Value};
use tollgate_core::config::{ApiFamily, MediaApi, Side};
use tollgate_core::{ApiError, Dialect, Endpoint};

use super::Processor;
use crate::capture::Capture;
use crate::guard::endpoints::{self, PassthroughShape};
use crate::media::MediaRequest;
use crate::multipart::Part;
use crate::mutation::{self, set};

/// A walker over the texts of one request or response: calls its argument on each string.
pub(super) type Visit<'a> = dyn FnMut(&mut dyn FnMut(&mut String)) + Send + 'a;

/// What the guardrails did to a media request.
#[derive(Debug, Default)]
pub(super) struct MediaGuarded {
    /// A JSON body's text was redacted (in the body's map): it must be written anew.
    pub(super) json_changed: bool,
    /// A form's `prompt` part redacted: its byte range and the text that replaces it.
    pub(super) form_prompt: Option<(Range<usize>, String)>,
}

impl MediaGuarded {
    /// The form `body` with its redacted prompt and, when given, its `model` value replaced:
    /// one copy of the body (the upload's bytes copied once, unchanged).
    pub(super) fn rewrite_form(
        &self,
        body: &[u8],
        model: Option<(Range<usize>, &[u8])>,
    ) -> Vec<u8> {
        let mut edits: Vec<(Range<usize>, &[u8])> = Vec::with_capacity(2);
        edits.extend(model);
        if let Some((range, text)) = &self.form_prompt {
            edits.push((range.clone(), text.as_bytes()));
        }
        replace_ranges(body, edits)
    }
}

/// `body` with each range replaced by its bytes, in one copy (ranges that overlap an earlier
/// one or fall outside the body are left alone).
fn replace_ranges(body: &[u8], mut edits: Vec<(Range<usize>, &[u8])>) -> Vec<u8> {
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (r, value) in edits {
        let (Some(before), true) = (
            body.get(at..r.start),
            r.end <= body.len() && r.start <= r.end,
        ) else {
            continue;
        };
        out.extend_from_slice(before);
        out.extend_from_slice(value);
        at = r.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    out
}

/// The dialect a passthrough refusal is written in: the provider's own (Bedrock answers
/// errors as `{"message": …}`, which is Cohere's shape too).
pub(super) fn passthrough_dialect(family: ApiFamily) -> Dialect {
    match family {
        ApiFamily::OpenAi => Dialect::OpenAi,
        ApiFamily::Anthropic => Dialect::Anthropic,
        ApiFamily::Gemini => Dialect::Gemini,
        ApiFamily::Bedrock => Dialect::Cohere,
    }
}

/// A form's fields as captured: each text part's value (the redacted prompt where one was),
/// each file part a placeholder naming its file, content type and size. A name given twice
/// becomes a list.
fn form_summary(body: &[u8], parts: &[Part], prompt: Option<&(Range<usize>, String)>) -> Vec<u8> {
    let mut fields = Map::new();
    for p in parts {
        let value = match (&p.filename, prompt) {
            (Some(file), _) => Value::String(format!(
                "[file `{}`, {}, {} bytes: not captured]",
                tollgate_core::bound::echo(file),
                p.content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
                p.data.len()
            )),
            (None, Some((range, text))) if *range == p.data => Value::String(text.clone()),
            (None, _) => Value::String(
                String::from_utf8_lossy(body.get(p.data.clone()).unwrap_or_default()).into_owned(),
            ),
        };
        match fields.get_mut(&p.name) {
            Some(Value::Array(list)) => list.push(value),
            Some(first) => {
                let first = first.take();
                fields.insert(p.name.clone(), Value::Array(vec![first, value]));
            }
            None => {
                fields.insert(p.name.clone(), value);
            }
        }
    }
    Value::Object(fields).to_string().into_bytes()
}

/// An images answer as captured: each image's `b64_json` replaced by a placeholder giving its
/// size (`None`: nothing to replace).
fn images_summary(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let mut replaced = false;
    for item in v.get_mut("data")?.as_array_mut()? {
        if let Some(Value::String(b64)) = item.get_mut("b64_json") {
            *b64 = format!("[base64 image, {} bytes: not captured]", b64.len());
            replaced = true;
        }
    }
    replaced.then(|| v.to_string().into_bytes())
}

/// A rerank request as captured after a redaction: the client's request with its redacted
/// query and documents.
fn rerank_summary(r: &crate::rerank::Request) -> Vec<u8> {
    let documents: Vec<Value> = r.documents.iter().map(|d| d.original.clone()).collect();
    let mut v = serde_json::json!({"model": r.model, "query": r.query, "documents": documents,
        "return_documents": r.return_documents});
    if let Some(n) = r.top_n {
        v["top_n"] = n.into();
    }
    v.to_string().into_bytes()
}

impl Processor {
    /// Judges the texts `visit` walks on `side` under the key's policy for `endpoint` and
    /// `model` (`any_model`: a model that may be no configured one, judged by the rules scoped
    /// to no model): local rules, redacting in place, then the webhooks over the text as it
    /// goes on. `Ok(true)` when a rule redacted; `Err` when one blocked (or a fail-closed
    /// webhook did not answer).
    pub(super) async fn judge_texts(
        &mut self,
        side: Side,
        endpoint: Endpoint,
        model: &str,
        any_model: bool,
        visit: &mut Visit<'_>,
    ) -> Result<bool, ApiError> {
        let Some(policy) = self.policy()? else {
            return Ok(false);
        };
        let engine = if any_model {
            policy.engine_for_any_model(side, endpoint, model)
        } else {
            policy.engine(side, endpoint, model)
        };
        let mut changed = false;
        if let Some(engine) = engine {
            let (verdict, redacted) = endpoints::judge_visited(engine, visit);
            self.verdicts.add(side, &verdict, &self.metrics);
            if let Some(rule) = verdict.blocked_by {
                return Err(ApiError::GuardrailBlocked { rule, side });
            }
            changed = redacted;
        }
        let rules = policy.webhooks(side, endpoint, model);
        if !rules.is_empty() {
            let text = endpoints::visited_text(visit);
            if let Some(d) = self
                .call_webhooks(&rules, side, endpoint, model, &text)
                .await
            {
                self.verdicts.add(side, &d.verdict, &self.metrics);
                if let Some(e) = d.error {
                    return Err(e);
                }
            }
        }
        Ok(changed)
    }

    /// A new capture for this request, when the key's capture and logging are on.
    fn new_capture(&self) -> Option<Capture> {
        let max = self.config.logging.as_ref()?.capture_max_bytes;
        Capture::new(self.ctx.as_ref()?.capture, max)
    }

    /// Judges a media request's text (a JSON body's prompt or input, in `json` in place; a
    /// form's `prompt` part) and starts its capture (a form captured as its fields, each file
    /// a placeholder).
    pub(super) async fn guard_media(
        &mut self,
        api: MediaApi,
        model: &str,
        json: Option<&mut Map<String, Value>>,
        request: &MediaRequest,
        body: &[u8],
    ) -> Result<MediaGuarded, ApiError> {
        let endpoint = Endpoint::Media(api);
        let mut out = MediaGuarded::default();
        match json {
            Some(obj) => {
                out.json_changed = self
                    .judge_texts(Side::Request, endpoint, model, false, &mut |f| {
                        endpoints::visit_media_json(api, obj, f)
                    })
                    .await?;
                if let Some(mut c) = self.new_capture() {
                    let redacted = out
                        .json_changed
                        .then(|| Value::Object(obj.clone()).to_string());
                    c.request(
                        &self.request_content_type,
                        redacted.as_ref().map_or(body, |r| r.as_bytes()),
                    );
                    self.capture = Some(c);
                }
            }
            None => {
                let field = endpoints::media_form_text_field(api);
                let part = field.and_then(|f| {
                    request
                        .parts
                        .iter()
                        .find(|p| p.name == f && p.filename.is_none())
                });
                if let Some(p) = part {
                    let mut text =
                        String::from_utf8_lossy(body.get(p.data.clone()).unwrap_or_default())
                            .into_owned();
                    let changed = self
                        .judge_texts(Side::Request, endpoint, model, false, &mut |f| f(&mut text))
                        .await?;
                    if changed {
                        out.form_prompt = Some((p.data.clone(), text));
                    }
                }
                if let Some(mut c) = self.new_capture() {
                    let summary = form_summary(body, &request.parts, out.form_prompt.as_ref());
                    c.request_form(&self.request_content_type, body.len(), &summary);
                    self.capture = Some(c);
                }
            }
        }
        Ok(out)
    }

    /// Judges a rerank request's query and documents (redacted in place) and starts its
    /// capture (the client's body, or the redacted request).
    pub(super) async fn guard_rerank(
        &mut self,
        request: &mut crate::rerank::Request,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let model = request.model.clone();
        let changed = self
            .judge_texts(Side::Request, Endpoint::Rerank, &model, false, &mut |f| {
                endpoints::visit_rerank(request, f)
            })
            .await?;
        if let Some(mut c) = self.new_capture() {
            let redacted = changed.then(|| rerank_summary(request));
            c.request(
                &self.request_content_type,
                redacted.as_deref().unwrap_or(body),
            );
            self.capture = Some(c);
        }
        Ok(())
    }

    /// Judges a passthrough request's JSON body when its shape is recognisable (OpenAI chat
    /// or Responses, Anthropic messages, Gemini contents; anything else goes on unjudged) and
    /// starts its capture. `Ok(Some)`: the redacted body to forward instead.
    pub(super) async fn guard_passthrough(
        &mut self,
        model: &str,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let policy = self.policy()?;
        let capture = self.new_capture();
        if policy.is_none() && capture.is_none() {
            return Ok(None);
        }
        let mut redacted = None;
        if policy.is_some() {
            if let Ok(mut doc) = serde_json::from_slice::<Value>(body) {
                if let Some(shape) = PassthroughShape::of(&doc) {
                    let changed = self
                        .judge_texts(
                            Side::Request,
                            Endpoint::Passthrough,
                            model,
                            true,
                            &mut |f| endpoints::visit_passthrough(shape, &mut doc, f),
                        )
                        .await?;
                    if changed {
                        redacted = Some(doc.to_string().into_bytes());
                    }
                }
            }
        }
        if let Some(mut c) = capture {
            c.request(
                &self.request_content_type,
                redacted.as_deref().unwrap_or(body),
            );
            self.capture = Some(c);
        }
        Ok(redacted)
    }

    /// A media response's body: a transcript judged by the response guardrails (refused in
    /// OpenAI's shape, or redacted), captured (speech audio as its size only, images' base64
    /// as placeholders), then measured for its bill as before.
    pub(super) async fn media_response(&mut self, b: &HttpBody) -> ProcessingResponse {
        let Some((api, streams)) = self.media.as_ref().map(|m| (m.api(), m.streams())) else {
            return self.media_response_body(b);
        };
        let ok = self
            .forwarded
            .as_ref()
            .and_then(|f| f.status)
            .is_some_and(|s| (200..300).contains(&s));
        if streams && ok {
            if let Some(c) = &mut self.capture {
                c.response_bytes(b.body.len());
            }
            return self.media_response_body(b);
        }
        let transcript = matches!(api, MediaApi::Transcriptions | MediaApi::Translations);
        let judged = if ok && transcript {
            self.judge_transcript(api, &b.body).await
        } else {
            Ok(None)
        };
        match judged {
            Ok(redacted) => {
                let sent = redacted.as_deref().unwrap_or(&b.body);
                if let Some(c) = &mut self.capture {
                    match images_summary(sent) {
                        Some(summary) => c.response_summary(sent.len(), &summary),
                        None => c.response_body(sent),
                    }
                }
                let unchanged = self.media_response_body(b);
                match redacted {
                    Some(body) => mutation::response_body(mutation::common(
                        vec![set("content-length", body.len().to_string())],
                        vec![],
                        Some(body),
                        false,
                    )),
                    None => unchanged,
                }
            }
            Err(err) => {
                // The provider billed the transcript: its usage is read before the refusal.
                let measured = HttpBody {
                    body: b.body.clone(),
                    end_of_stream: false,
                    ..Default::default()
                };
                let _ = self.media_response_body(&measured);
                self.refuse_response(err, ApiFamily::OpenAi, b.end_of_stream)
            }
        }
    }

    /// Judges a transcription or translation answer under the key's response rules: `text`
    /// and segments of a JSON answer, the whole body of a `text`, `srt` or `vtt` one.
    /// `Ok(Some)`: the redacted body.
    async fn judge_transcript(
        &mut self,
        api: MediaApi,
        body: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(model) = self.forwarded.as_ref().map(|f| f.model.clone()) else {
            return Ok(None);
        };
        let endpoint = Endpoint::Media(api);
        match serde_json::from_slice::<Value>(body) {
            Ok(mut v) if v.is_object() => {
                let changed = self
                    .judge_texts(Side::Response, endpoint, &model, false, &mut |f| {
                        endpoints::visit_transcript(&mut v, f)
                    })
                    .await?;
                Ok(changed.then(|| v.to_string().into_bytes()))
            }
            _ => {
                let mut text = String::from_utf8_lossy(body).into_owned();
                let changed = self
                    .judge_texts(Side::Response, endpoint, &model, false, &mut |f| {
                        f(&mut text)
                    })
                    .await?;
                Ok(changed.then(|| text.into_bytes()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_is_rewritten_in_one_copy_and_captured_without_its_file() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nmail a@b.co\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\xff--b\r\n\r\n--b--\r\n";
        let parts = crate::multipart::parse(body, "b").unwrap();
        let guarded = MediaGuarded {
            json_changed: false,
            form_prompt: Some((parts[1].data.clone(), "mail [REDACTED:email]".into())),
        };
        let out = guarded.rewrite_form(body, Some((parts[0].data.clone(), b"whisper-1")));
        let again = crate::multipart::parse(&out, "b").unwrap();
        assert_eq!(&out[again[0].data.clone()], b"whisper-1");
        assert_eq!(&out[again[1].data.clone()], b"mail [REDACTED:email]");
        assert_eq!(&out[again[2].data.clone()], &body[parts[2].data.clone()]);
        let summary: Value =
            serde_json::from_slice(&form_summary(body, &parts, guarded.form_prompt.as_ref()))
                .unwrap();
        assert_eq!(summary["prompt"], "mail [REDACTED:email]");
        assert_eq!(summary["model"], "whisper");
        let file = summary["file"].as_str().unwrap();
        let size = format!("{} bytes", parts[2].data.len());
        assert!(
            file.contains("a.wav") && file.contains("audio/wav") && file.contains(&size),
            "{file}"
        );
    }

    #[test]
    fn base64_images_are_captured_as_their_size() {
        let body = br#"{"created":1,"data":[{"b64_json":"aGVsbG8="},{"url":"u"}]}"#;
        let summary: Value = serde_json::from_slice(&images_summary(body).unwrap()).unwrap();
        assert_eq!(
            summary["data"][0]["b64_json"],
            "[base64 image, 8 bytes: not captured]"
        );
        assert_eq!(summary["data"][1]["url"], "u");
        assert!(images_summary(br#"{"text":"x"}"#).is_none());
    }
}
