//! The text guardrails judge on the endpoints that are not chat: the media APIs' prompts and
//! inputs, rerank queries and documents, and passthrough bodies whose shape is recognisable
//! (OpenAI chat or Responses, Anthropic messages, Gemini contents). Each walker calls `f` on
//! every string a policy reads, in place, so a redaction is written back where it was found;
//! anything else of a body stays as it came.

use serde_json::{Map, Value};
use tollgate_core::config::MediaApi;
use tollgate_guardrails::{Engine, Verdict};

use super::{merge, visit_member_text, visit_text};

/// Something that calls its argument on every text of a request or response.
pub type Walker<'a> = dyn FnMut(&mut dyn FnMut(&mut String)) + 'a;

/// A walker over one JSON value.
#[cfg(test)]
type ValueWalker = fn(&mut Value, &mut dyn FnMut(&mut String));

/// Calls `f` on the text of a JSON media request: an image generation's `prompt`, a speech
/// `input`, a moderation `input` (a string, a list of strings, or multimodal parts whose
/// `text` is read; image parts carry no text).
pub fn visit_media_json(
    api: MediaApi,
    obj: &mut Map<String, Value>,
    f: &mut dyn FnMut(&mut String),
) {
    let member = match api {
        MediaApi::ImageGenerations | MediaApi::ImageEdits => "prompt",
        MediaApi::Speech | MediaApi::Moderations => "input",
        MediaApi::Transcriptions | MediaApi::Translations => "prompt",
    };
    if let Some(v) = obj.get_mut(member) {
        visit_text(v, f);
    }
}

/// The form field of a multipart media request whose text is judged (`prompt`): image edits,
/// transcriptions and translations; `None` for the JSON APIs.
pub fn media_form_text_field(api: MediaApi) -> Option<&'static str> {
    match api {
        MediaApi::ImageEdits | MediaApi::Transcriptions | MediaApi::Translations => Some("prompt"),
        MediaApi::ImageGenerations | MediaApi::Speech | MediaApi::Moderations => None,
    }
}

/// Calls `f` on a rerank request's query and every document's text; a redacted document's
/// `text` member (what `return_documents` gives back) follows its text.
pub fn visit_rerank(request: &mut crate::rerank::Request, f: &mut dyn FnMut(&mut String)) {
    f(&mut request.query);
    for d in &mut request.documents {
        let before = d.text.clone();
        f(&mut d.text);
        if d.text != before {
            if let Some(Value::String(t)) = d.original.get_mut("text") {
                if *t == before {
                    t.clone_from(&d.text);
                } else {
                    f(t);
                }
            }
        }
    }
}

/// The shape of a passthrough JSON body, when Tollgate recognises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassthroughShape {
    /// OpenAI chat (`messages`) or Anthropic messages (`messages`, `system`).
    Messages,
    /// OpenAI Responses (`input`, `instructions`).
    Responses,
    /// Gemini `contents` (and `systemInstruction`).
    Contents,
}

impl PassthroughShape {
    /// The shape of `body`: `messages` (an array), `contents` (an array), or `input` (a
    /// string or an array) beside a `model`; `None` for anything else (judged by nothing).
    pub fn of(body: &Value) -> Option<PassthroughShape> {
        let obj = body.as_object()?;
        if obj.get("messages").is_some_and(Value::is_array) {
            Some(PassthroughShape::Messages)
        } else if obj.get("contents").is_some_and(Value::is_array) {
            Some(PassthroughShape::Contents)
        } else if obj.contains_key("model")
            && obj
                .get("input")
                .is_some_and(|i| i.is_string() || i.is_array())
        {
            Some(PassthroughShape::Responses)
        } else {
            None
        }
    }
}

/// Calls `f` on the user text of a passthrough body of `shape`: message contents (text parts,
/// tool results, tool-call arguments), Anthropic's `system`, Gemini's parts and
/// `systemInstruction`, the Responses API's `instructions` and `input` (a string, or items
/// whose `content` is a string or text parts, and `function_call_output` outputs).
pub fn visit_passthrough(
    shape: PassthroughShape,
    body: &mut Value,
    f: &mut dyn FnMut(&mut String),
) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    match shape {
        PassthroughShape::Messages => {
            if let Some(s) = obj.get_mut("system") {
                visit_text(s, f);
            }
            if let Some(m) = obj.get_mut("messages") {
                visit_member_text("messages", m, f);
            }
        }
        PassthroughShape::Contents => {
            if let Some(s) = obj.get_mut("systemInstruction") {
                visit_member_text("systemInstruction", s, f);
            }
            if let Some(c) = obj.get_mut("contents") {
                visit_member_text("contents", c, f);
            }
        }
        PassthroughShape::Responses => {
            if let Some(Value::String(s)) = obj.get_mut("instructions") {
                f(s);
            }
            match obj.get_mut("input") {
                Some(Value::String(s)) => f(s),
                Some(Value::Array(items)) => {
                    for item in items {
                        if let Some(c) = item.get_mut("content") {
                            visit_text(c, f);
                        }
                        if let Some(Value::String(s)) = item.get_mut("output") {
                            f(s);
                        }
                        if let Some(Value::String(s)) = item.get_mut("arguments") {
                            f(s);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Judges every text a walker visits under `engine`, redacting in place: the verdict, and
/// whether any text changed.
pub fn judge_visited(engine: &Engine, visit: &mut Walker<'_>) -> (Verdict, bool) {
    let mut verdict = Verdict::default();
    let mut changed = false;
    visit(&mut |s: &mut String| {
        let out = engine.check(s);
        if let Some(text) = out.redacted_text {
            *s = text;
            changed = true;
        }
        merge(&mut verdict, out.verdict);
    });
    (verdict, changed)
}

/// The texts a walker visits, one per line (what a webhook guardrail is sent).
pub fn visited_text(visit: &mut Walker<'_>) -> String {
    let mut out: Vec<String> = Vec::new();
    visit(&mut |s: &mut String| out.push(s.clone()));
    out.join("\n")
}

/// Calls `f` on the text of a transcription or translation answer: `text` (json and
/// verbose_json) and each verbose_json segment's `text`. A body that is not JSON (`text`,
/// `srt`, `vtt` formats) is text itself: see [`crate::processor`].
pub fn visit_transcript(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    if let Some(Value::String(s)) = v.get_mut("text") {
        f(s);
    }
    if let Some(Value::Array(segments)) = v.get_mut("segments") {
        for s in segments {
            if let Some(Value::String(t)) = s.get_mut("text") {
                f(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_guardrails::{Action, Detector, RuleSpec};

    fn engine() -> Engine {
        Engine::new(&[
            RuleSpec {
                id: "deny".into(),
                detector: Detector::DenyList(vec!["forbidden".into()]),
                action: Action::Block,
            },
            RuleSpec {
                id: "email".into(),
                detector: Detector::Email,
                action: Action::Redact,
            },
        ])
        .unwrap()
    }

    fn judge_value(v: &mut Value, visit: ValueWalker) -> (Verdict, bool) {
        let e = engine();
        judge_visited(&e, &mut |f| visit(v, f))
    }

    #[test]
    fn media_texts_are_judged_and_redacted_in_place() {
        let mut obj = json!({"model": "m", "prompt": "a cat, mail a@b.co", "size": "a@b.co"});
        let e = engine();
        let map = obj.as_object_mut().unwrap();
        let (v, changed) = judge_visited(&e, &mut |f| {
            visit_media_json(MediaApi::ImageGenerations, map, f)
        });
        assert!(changed && v.blocked_by.is_none());
        assert_eq!(obj["prompt"], "a cat, mail [REDACTED:email]");
        // Only the prompt is text: other members stay.
        assert_eq!(obj["size"], "a@b.co");
        let mut moderation = json!({"input": [{"type": "text", "text": "so forbidden"},
            {"type": "image_url", "image_url": {"url": "forbidden"}}]});
        let map = moderation.as_object_mut().unwrap();
        let (v, _) = judge_visited(&e, &mut |f| visit_media_json(MediaApi::Moderations, map, f));
        assert_eq!(v.blocked_by.as_deref(), Some("deny"));
        let mut list = json!({"input": ["fine", "forbidden"]});
        let map = list.as_object_mut().unwrap();
        let (v, _) = judge_visited(&e, &mut |f| visit_media_json(MediaApi::Moderations, map, f));
        assert_eq!(v.blocked_by.as_deref(), Some("deny"));
        let mut speech = json!({"input": "say forbidden"});
        let map = speech.as_object_mut().unwrap();
        let (v, _) = judge_visited(&e, &mut |f| visit_media_json(MediaApi::Speech, map, f));
        assert_eq!(v.blocked_by.as_deref(), Some("deny"));
    }

    #[test]
    fn passthrough_shapes_are_recognised_and_judged() {
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "x forbidden"}]});
        assert_eq!(
            PassthroughShape::of(&chat),
            Some(PassthroughShape::Messages)
        );
        let mut anthropic = json!({"model": "m", "system": "mail a@b.co",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]});
        let (v, changed) = judge_value(&mut anthropic, |v, f| {
            visit_passthrough(PassthroughShape::Messages, v, f)
        });
        assert!(changed && v.blocked_by.is_none());
        assert_eq!(anthropic["system"], "mail [REDACTED:email]");
        let mut gemini = json!({"contents": [{"role": "user", "parts": [{"text": "forbidden"}]}]});
        assert_eq!(
            PassthroughShape::of(&gemini),
            Some(PassthroughShape::Contents)
        );
        let (v, _) = judge_value(&mut gemini, |v, f| {
            visit_passthrough(PassthroughShape::Contents, v, f)
        });
        assert_eq!(v.blocked_by.as_deref(), Some("deny"));
        let mut responses = json!({"model": "m", "instructions": "be brief",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "forbidden"}]}]});
        assert_eq!(
            PassthroughShape::of(&responses),
            Some(PassthroughShape::Responses)
        );
        let (v, _) = judge_value(&mut responses, |v, f| {
            visit_passthrough(PassthroughShape::Responses, v, f)
        });
        assert_eq!(v.blocked_by.as_deref(), Some("deny"));
        // Anything else: no shape, judged by nothing.
        assert_eq!(PassthroughShape::of(&json!({"purpose": "batch"})), None);
        assert_eq!(PassthroughShape::of(&json!(["forbidden"])), None);
    }

    #[test]
    fn rerank_queries_and_documents_are_judged() {
        let mut r = crate::rerank::Request::parse(
            br#"{"model":"m","query":"q a@b.co","documents":["d a@b.co",{"text":"e a@b.co"}]}"#,
            false,
        )
        .unwrap();
        let e = engine();
        let (v, changed) = judge_visited(&e, &mut |f| visit_rerank(&mut r, f));
        assert!(changed && v.blocked_by.is_none());
        assert_eq!(r.query, "q [REDACTED:email]");
        assert_eq!(r.documents[0].text, "d [REDACTED:email]");
        assert_eq!(r.documents[1].original["text"], "e [REDACTED:email]");
        assert_eq!(
            visited_text(&mut |f| visit_rerank(&mut r, f)),
            "q [REDACTED:email]\nd [REDACTED:email]\ne [REDACTED:email]"
        );
    }

    #[test]
    fn transcripts_are_read_in_json_and_verbose_json() {
        let mut v = json!({"text": "forbidden", "segments": [{"text": "a@b.co"}]});
        let (verdict, changed) = judge_value(&mut v, visit_transcript);
        assert_eq!(verdict.blocked_by.as_deref(), Some("deny"));
        assert!(changed);
        assert_eq!(v["segments"][0]["text"], "[REDACTED:email]");
    }
}
