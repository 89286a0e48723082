//! `POST …/embeddings`: the OpenAI Embeddings API. Each vector is derived deterministically
//! from a hash of its input and has unit length; `encoding_format: "base64"` sends the same f32
//! values as little-endian bytes in standard base64, as OpenAI does.
//!
//! Models whose id starts with [`BOW_MODEL`] embed text by meaning, crudely: a hashed bag of
//! words (lowercased runs of letters and digits, two characters or more, each adding 1 to
//! the bucket its FNV-1a hash picks, [`BOW_DIMENSIONS`] buckets by default), so a reworded
//! question ("What is the capital of France?" / "what's the capital of france") scores a
//! cosine near 0.9 and an unrelated one near 0: a deterministic model for the semantic
//! cache's tests.

use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::error::MockError;
use crate::params::{self, Request};
use crate::routes::Exchange;
use crate::text::word_count;

/// Vector length when the request gives no `dimensions`.
const DEFAULT_DIMENSIONS: u64 = 8;

/// The model id prefix of the bag-of-words embedding model.
pub(crate) const BOW_MODEL: &str = "mock-embed-bow";

/// The bag-of-words model's vector length when the request gives no `dimensions`.
const BOW_DIMENSIONS: u64 = 256;

/// Largest `dimensions` accepted (text-embedding-3-large has 3072).
const MAX_DIMENSIONS: u64 = 8192;

/// Answers one embeddings request.
pub(crate) fn respond(request: &Request, exchange: &Exchange<'_>) -> Result<Response, MockError> {
    if exchange.stream_error {
        return Err(MockError::GenerationFailed);
    }
    let inputs = inputs(request)?;
    let bow = exchange.model.starts_with(BOW_MODEL);
    let dimensions = match params::positive_integer(request, "dimensions")? {
        None if bow => BOW_DIMENSIONS,
        None => DEFAULT_DIMENSIONS,
        Some(dimensions) if dimensions <= MAX_DIMENSIONS => dimensions,
        Some(_) => {
            return Err(MockError::InvalidParameter {
                param: "dimensions",
                message: format!("Invalid value for 'dimensions': at most {MAX_DIMENSIONS}."),
            })
        }
    };
    let dimensions = usize::try_from(dimensions).unwrap_or(usize::MAX);
    let base64 = match request.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(_) => {
            return Err(MockError::InvalidParameter {
                param: "encoding_format",
                message: "Invalid value for 'encoding_format': expected 'float' or 'base64'."
                    .to_owned(),
            })
        }
    };

    let data: Vec<Embedding> = inputs
        .iter()
        .zip(0..)
        .map(|(input, index)| {
            let vector = match input {
                Input::Text(text) if bow => bag_of_words(text, dimensions),
                _ => vector(input.hash(), dimensions),
            };
            Embedding {
                object: "embedding",
                index,
                embedding: if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Encoded::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    // f32 widened to f64 prints the exact f32 value, so a client parsing the
                    // JSON gets the same numbers as one decoding the base64 bytes.
                    Encoded::Float(vector.into_iter().map(f64::from).collect())
                },
            }
        })
        .collect();
    let tokens = inputs.iter().map(Input::tokens).sum();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: exchange.model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}

/// One input to embed.
enum Input<'a> {
    Text(&'a str),
    Tokens(Vec<u64>),
}

impl Input<'_> {
    /// Tokens: words of a text (at least 1), or the number of token ids.
    fn tokens(&self) -> u64 {
        match self {
            Self::Text(text) => word_count(text).max(1),
            Self::Tokens(tokens) => tokens.len() as u64,
        }
    }

    /// FNV-1a over a kind tag and the input, stable across platforms and Rust versions.
    fn hash(&self) -> u64 {
        let mut hash = Fnv1a::default();
        match self {
            Self::Text(text) => {
                hash.write(b"t");
                hash.write(text.as_bytes());
            }
            Self::Tokens(tokens) => {
                hash.write(b"k");
                for token in tokens {
                    hash.write(&token.to_le_bytes());
                }
            }
        }
        hash.0
    }
}

/// `input`: a string, an array of strings, an array of token ids or an array of token-id arrays.
fn inputs(request: &Request) -> Result<Vec<Input<'_>>, MockError> {
    let invalid = || MockError::InvalidParameter {
        param: "input",
        message: "Invalid type for 'input': expected a string, an array of strings, an array of \
                  tokens or an array of token arrays."
            .to_owned(),
    };
    match request.get("input") {
        None | Some(Value::Null) => Err(MockError::MissingParameter("input")),
        Some(Value::String(text)) => Ok(vec![Input::Text(text)]),
        Some(Value::Array(items)) if items.is_empty() => Err(invalid()),
        Some(Value::Array(items)) => {
            if let Some(tokens) = token_ids(items) {
                return Ok(vec![Input::Tokens(tokens)]);
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(text) => Some(Input::Text(text)),
                    Value::Array(tokens) => token_ids(tokens).map(Input::Tokens),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(invalid)
        }
        Some(_) => Err(invalid()),
    }
}

/// The items as token ids, or `None` unless every one is a non-negative integer.
fn token_ids(items: &[Value]) -> Option<Vec<u64>> {
    items.iter().map(Value::as_u64).collect()
}

/// A unit vector of `dimensions` values drawn from a splitmix64 sequence seeded by `seed`.
fn vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut values: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // The top 24 bits, exactly representable in f32, mapped to [-1, 1).
            ((z >> 40) as f32 / (1u32 << 23) as f32) - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for value in &mut values {
            *value /= norm;
        }
    }
    values
}

/// A unit vector of `dimensions` buckets counting the text's words (see [`BOW_MODEL`]); all
/// zeros for a text without a word of two characters.
fn bag_of_words(text: &str, dimensions: usize) -> Vec<f32> {
    let mut values = vec![0f32; dimensions];
    let lower = text.to_lowercase();
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
    {
        let mut hash = Fnv1a::default();
        hash.write(word.as_bytes());
        let bucket = usize::try_from(hash.0 % dimensions.max(1) as u64).unwrap_or(0);
        if let Some(v) = values.get_mut(bucket) {
            *v += 1.0;
        }
    }
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for value in &mut values {
            *value /= norm;
        }
    }
    values
}

/// 64-bit FNV-1a.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct Embedding {
    object: &'static str,
    index: u32,
    embedding: Encoded,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Encoded {
    Float(Vec<f64>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bag_of_words_scores_rewordings_high_and_other_questions_low() {
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let a = bag_of_words("What is the capital of France?", 256);
        let b = bag_of_words("what's the capital of france", 256);
        let c = bag_of_words("How do I bake sourdough bread at home?", 256);
        assert!(cos(&a, &b) > 0.85, "{}", cos(&a, &b));
        assert!(cos(&a, &c) < 0.3, "{}", cos(&a, &c));
        assert!(bag_of_words("a ?", 8).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn vectors_are_deterministic_unit_vectors() {
        let a = vector(Input::Text("hello").hash(), 16);
        assert_eq!(a, vector(Input::Text("hello").hash(), 16));
        assert_ne!(a, vector(Input::Text("hello!").hash(), 16));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
}
