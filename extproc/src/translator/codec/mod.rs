//! Codecs between one dialect's wire format and the [`hub`](super::hub): requests, complete
//! responses, errors, and stream decoders/encoders that work one SSE event at a time.

pub mod anthropic;
pub mod openai;

use serde::de::DeserializeOwned;

use super::error::{invalid, TranslateError};
use super::json::RawObject;

/// A top-level member deserialized from its raw slice (`None` when absent or `null`).
pub(crate) fn member<T: DeserializeOwned>(
    obj: &RawObject<'_>,
    key: &'static str,
) -> Result<Option<T>, TranslateError> {
    match obj.get(key) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| invalid(key, e)),
    }
}

/// Serializes a JSON value we built ourselves (cannot fail for `serde_json::Value`).
pub(crate) fn to_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}
