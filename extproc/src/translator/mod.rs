//! Translators: pure functions that turn request bodies and response chunks between a client
//! dialect and a provider dialect. Only OpenAI → OpenAI-family exists so far; it rewrites the
//! model, asks for streamed usage, and reads usage back.

pub mod json;
pub mod openai;
pub mod sse;
