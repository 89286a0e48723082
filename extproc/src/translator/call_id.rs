//! Gemini's `thoughtSignature` carried through clients in the tool-call id.
//!
//! Gemini (and Vertex Gemini) signs the first `functionCall` of a turn with opaque bytes that
//! must come back on that call in the next turn's history, or Gemini 3 models refuse it.
//! OpenAI chat clients have no field for them and Anthropic clients may drop thinking blocks,
//! but both echo the tool-call id unchanged: a call read from Gemini gets the id
//! `{base}_tgsig{mode}{payload}`, where `base` is the id it would have had anyway and the
//! payload is the signature in the characters every provider accepts in an id
//! (`[A-Za-z0-9_-]`). Mode `a`: canonical base64 with `+`→`-`, `/`→`_` and the padding
//! dropped (restored exactly from the length); mode `b`: any other string, as unpadded
//! base64url of its bytes.
//!
//! On the way to a provider the id is split again: Gemini gets the signature back on the call
//! ([`for_gemini`]), every other provider the plain `base` in both the call and its result
//! ([`strip`], [`strip_raw_messages`] for the byte-preserving same-dialect paths), so the id
//! stays valid there (OpenAI caps ids at 40 characters) and the encoding never leaks.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use super::hub::{ChatRequest, Part};
use super::json::RawObject;

/// What separates the id from its signature.
const MARKER: &str = "_tgsig";

/// The signature Google documents for a call that no Gemini model issued (history written by
/// another provider, or by the client): it tells Gemini 3 to skip the check.
pub const FOREIGN_CALL_SIGNATURE: &str = "skip_thought_signature_validator";

fn canonical_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The id `base` carrying `signature`.
pub fn with_signature(base: &str, signature: &str) -> String {
    let mut id = String::with_capacity(base.len() + MARKER.len() + 1 + signature.len() * 4 / 3);
    id.push_str(base);
    id.push_str(MARKER);
    if canonical_base64(signature) {
        id.push('a');
        id.extend(signature.trim_end_matches('=').chars().map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        }));
    } else {
        id.push('b');
        id.push_str(&URL_SAFE_NO_PAD.encode(signature.as_bytes()));
    }
    id
}

/// The plain id and the signature an id carries (`None`: it carries none, and is returned
/// whole).
pub fn split(id: &str) -> (&str, Option<String>) {
    let Some(at) = id.find(MARKER) else {
        return (id, None);
    };
    let (base, rest) = (&id[..at], &id[at + MARKER.len()..]);
    let payload = rest.get(1..).unwrap_or_default();
    if payload.is_empty()
        || !payload
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return (id, None);
    }
    let signature = match rest.as_bytes().first() {
        Some(b'a') => {
            let mut s: String = payload
                .chars()
                .map(|c| match c {
                    '-' => '+',
                    '_' => '/',
                    c => c,
                })
                .collect();
            while !s.len().is_multiple_of(4) {
                s.push('=');
            }
            Some(s)
        }
        Some(b'b') => URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        _ => None,
    };
    match signature {
        Some(s) => (base, Some(s)),
        None => (id, None),
    }
}

fn plain(id: &mut String) {
    if let (base, Some(_)) = split(id) {
        *id = base.to_owned();
    }
}

/// Every call and result id of `req` without its signature, for a provider other than Gemini.
pub fn strip(req: &mut ChatRequest) {
    for m in &mut req.messages {
        for p in &mut m.content {
            match p {
                Part::ToolCall(c) => plain(&mut c.id),
                Part::ToolResult(r) => plain(&mut r.call_id),
                _ => {}
            }
        }
    }
}

/// `req` for Gemini: the signature an id carries goes back onto its call (as the hub carries
/// Gemini signatures: on a thinking block just before the call), unless a signed thinking
/// block already stands there; the first call of a turn that has no signature at all (a call
/// another provider made) gets [`FOREIGN_CALL_SIGNATURE`]. Ids lose their signatures.
pub fn for_gemini(req: &mut ChatRequest) {
    for m in &mut req.messages {
        let mut content = Vec::with_capacity(m.content.len() + 1);
        let mut first_call = true;
        for mut p in std::mem::take(&mut m.content) {
            match &mut p {
                Part::ToolCall(c) => {
                    let signed_before = matches!(content.last(),
                        Some(Part::Thinking { signature: Some(s), .. }) if !s.is_empty());
                    let (base, signature) = split(&c.id);
                    let signature = signature.or_else(|| {
                        (first_call && !signed_before).then(|| FOREIGN_CALL_SIGNATURE.to_owned())
                    });
                    c.id = base.to_owned();
                    first_call = false;
                    if let Some(s) = signature.filter(|_| !signed_before) {
                        match content.last_mut() {
                            // Unsigned thoughts just before the call: the signature is theirs.
                            Some(Part::Thinking { signature, .. }) => *signature = Some(s),
                            _ => content.push(Part::Thinking {
                                text: String::new(),
                                signature: Some(s),
                            }),
                        }
                    }
                }
                Part::ToolResult(r) => plain(&mut r.call_id),
                _ => {}
            }
            content.push(p);
        }
        m.content = content;
    }
}

/// Whether ids in these raw messages may carry signatures (a fast scan, no parse).
fn may_carry(raw: &str) -> bool {
    memchr::memmem::find(raw.as_bytes(), MARKER.as_bytes()).is_some()
}

/// For the same-dialect paths that keep the client's bytes (OpenAI → OpenAI family,
/// Anthropic → Anthropic): the `messages` member rewritten with plain ids, when any id in it
/// carries a signature (`None`, the common case, after one scan: leave it as it is).
pub fn strip_raw_messages(obj: &RawObject<'_>) -> Option<String> {
    let raw = obj.get("messages")?.get();
    if !may_carry(raw) {
        return None;
    }
    let mut messages: Value = serde_json::from_str(raw).ok()?;
    let mut changed = false;
    let mut fix = |v: &mut Value| {
        if let Some(id) = v.as_str() {
            if let (base, Some(_)) = split(id) {
                *v = Value::String(base.to_owned());
                changed = true;
            }
        }
    };
    for m in messages.as_array_mut()? {
        // OpenAI: `tool_calls[].id`, `tool_call_id`.
        for c in m
            .get_mut("tool_calls")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(id) = c.get_mut("id") {
                fix(id);
            }
        }
        if let Some(id) = m.get_mut("tool_call_id") {
            fix(id);
        }
        // Anthropic: `tool_use.id`, `tool_result.tool_use_id`.
        for b in m
            .get_mut("content")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            match b.get("type").and_then(Value::as_str) {
                Some("tool_use") => {
                    if let Some(id) = b.get_mut("id") {
                        fix(id);
                    }
                }
                Some("tool_result") => {
                    if let Some(id) = b.get_mut("tool_use_id") {
                        fix(id);
                    }
                }
                _ => {}
            }
        }
    }
    changed.then(|| messages.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translator::hub::{Message, Role, ToolCall, ToolResult};

    #[test]
    fn signatures_round_trip_through_ids_in_id_safe_characters() {
        for sig in [
            "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ==",
            "ab+/cd==",
            "abc+/d9=",
            "AAAA",
            "not base64: !?",
            "short=",
        ] {
            let id = with_signature("call_resp_0", sig);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{id}"
            );
            assert_eq!(split(&id), ("call_resp_0", Some(sig.to_owned())), "{id}");
        }
        assert_eq!(split("call_abc"), ("call_abc", None));
        assert_eq!(split("toolu_01_tgsig"), ("toolu_01_tgsig", None));
        assert_eq!(split("x_tgsigz123"), ("x_tgsigz123", None));
    }

    fn call(id: &str) -> Part {
        Part::ToolCall(ToolCall {
            id: id.into(),
            name: "f".into(),
            arguments: "{}".into(),
        })
    }

    fn result(id: &str) -> Part {
        Part::ToolResult(ToolResult {
            call_id: id.into(),
            content: vec![Part::Text("ok".into())],
            is_error: false,
        })
    }

    fn request(first: &str, second: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message {
                    role: Role::Assistant,
                    content: vec![Part::Text("x".into()), call(first), call(second)],
                },
                Message {
                    role: Role::User,
                    content: vec![result(first), result(second)],
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn other_providers_get_plain_ids_gemini_its_signature_back() {
        let signed = with_signature("call_r_0", "c2ln");
        let mut req = request(&signed, "call_r_1");
        strip(&mut req);
        assert_eq!(req, request("call_r_0", "call_r_1"));

        let mut req = request(&signed, "call_r_1");
        for_gemini(&mut req);
        assert_eq!(
            req.messages[0].content,
            vec![
                Part::Text("x".into()),
                Part::Thinking {
                    text: String::new(),
                    signature: Some("c2ln".into())
                },
                call("call_r_0"),
                call("call_r_1"),
            ]
        );
        assert_eq!(
            req.messages[1].content,
            vec![result("call_r_0"), result("call_r_1")]
        );

        // A call no Gemini model made: the documented bypass.
        let mut req = request("call_openai", "call_2");
        for_gemini(&mut req);
        assert_eq!(
            req.messages[0].content[1],
            Part::Thinking {
                text: String::new(),
                signature: Some(FOREIGN_CALL_SIGNATURE.into())
            }
        );
        assert_eq!(req.messages[0].content.len(), 4);
    }

    #[test]
    fn raw_messages_are_rewritten_only_when_an_id_carries_a_signature() {
        let signed = with_signature("call_r_0", "c2ln");
        let body = format!(
            r#"{{"messages":[{{"role":"assistant","tool_calls":[{{"id":"{signed}","type":"function","function":{{"name":"f","arguments":"{{}}"}}}}]}},{{"role":"tool","tool_call_id":"{signed}","content":"ok"}},{{"role":"assistant","content":[{{"type":"tool_use","id":"{signed}","name":"f","input":{{}}}}]}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"{signed}","content":"ok"}}]}}]}}"#
        );
        let obj = RawObject::parse(body.as_bytes()).unwrap();
        let fixed = strip_raw_messages(&obj).unwrap();
        assert!(!fixed.contains(MARKER), "{fixed}");
        assert_eq!(fixed.matches("\"call_r_0\"").count(), 4, "{fixed}");
        let plain = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(
            strip_raw_messages(&RawObject::parse(plain.as_bytes()).unwrap()),
            None
        );
    }
}
