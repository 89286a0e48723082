//! The body of `POST /v1/feedback`: `{"token": "<x-tollgate-feedback-token>", "score": 1,
//! "label": "thumbs_up", "comment": "..."}`. The token goes in the body (not a header), so a
//! browser or a backend can forward it as it came; `score` (any finite number) or `label` (up
//! to 128 bytes) or both are required, `comment` is optional and capped by
//! `feedback.max_comment_bytes`. Unknown members are refused, so a typo is not silently lost.

use serde::Deserialize;
use tollgate_core::config::MAX_FEEDBACK_LABEL_BYTES;
use tollgate_core::ApiError;
use tollgate_proto::logger::v1 as pb;

/// A parsed feedback body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    /// The feedback token from the rated response.
    pub token: String,
    /// A score, any finite number.
    #[serde(default)]
    pub score: Option<f64>,
    /// A short label.
    #[serde(default)]
    pub label: Option<String>,
    /// Free text.
    #[serde(default)]
    pub comment: Option<String>,
}

impl Given {
    /// The proto form, about `request_id` (taken from the verified token).
    pub fn into_proto(self, request_id: String) -> pb::Feedback {
        pb::Feedback {
            request_id,
            score: self.score,
            label: self.label.unwrap_or_default(),
            comment: self.comment.unwrap_or_default(),
        }
    }
}

/// Parses and checks a feedback body (400s in the client's dialect on any problem).
pub fn parse(body: &[u8], max_comment_bytes: usize) -> Result<Given, ApiError> {
    let given: Given =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let invalid = |param: &'static str, message: String| ApiError::InvalidField { param, message };
    if given.token.trim().is_empty() {
        return Err(invalid(
            "token",
            "`token` must be the x-tollgate-feedback-token of the response you rate.".into(),
        ));
    }
    if given.score.is_none() && given.label.as_deref().is_none_or(str::is_empty) {
        return Err(invalid(
            "score",
            "Give a `score`, a `label`, or both.".into(),
        ));
    }
    if given
        .label
        .as_ref()
        .is_some_and(|l| l.len() > MAX_FEEDBACK_LABEL_BYTES)
    {
        return Err(invalid(
            "label",
            format!("`label` is longer than {MAX_FEEDBACK_LABEL_BYTES} bytes."),
        ));
    }
    if given
        .comment
        .as_ref()
        .is_some_and(|c| c.len() > max_comment_bytes)
    {
        return Err(invalid(
            "comment",
            format!("`comment` is longer than {max_comment_bytes} bytes."),
        ));
    }
    Ok(given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_body_parses_and_bad_ones_are_400s_naming_the_field() {
        let g = parse(br#"{"token":"t","score":1,"comment":"nice"}"#, 10).unwrap();
        assert_eq!(g.score, Some(1.0));
        let p = g.into_proto("rid".into());
        assert_eq!((p.request_id.as_str(), p.comment.as_str()), ("rid", "nice"));
        assert!(parse(br#"{"token":"t","label":"up"}"#, 10).is_ok());
        let param = |body: &[u8]| match parse(body, 10) {
            Err(ApiError::InvalidField { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(br#"{"token":"t"}"#), "score");
        assert_eq!(param(br#"{"token":" ","score":1}"#), "token");
        assert_eq!(
            param(br#"{"token":"t","score":1,"comment":"12345678901"}"#),
            "comment"
        );
        let long = format!(r#"{{"token":"t","label":"{}"}}"#, "x".repeat(129));
        assert_eq!(param(long.as_bytes()), "label");
        for bad in [
            &b"{"[..],
            br#"{"token":"t","score":"high"}"#,
            br#"{"token":"t","score":1,"extra":1}"#,
            b"[]",
        ] {
            assert!(
                matches!(parse(bad, 10), Err(ApiError::InvalidJson(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
