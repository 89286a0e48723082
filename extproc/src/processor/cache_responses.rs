//! The response cache for `POST /v1/responses` ([`crate::cache::responses`]): a Responses
//! request is keyed over its resolved conversation, and a hit is written anew with the
//! request's own envelope — a fresh `resp_…` id (and item ids), its `created_at` and echoed
//! members — whole or as a Responses event stream (`response.created` … `response.completed`
//! with usage), and kept in the response store like any served response when the request
//! lets it be stored, so `GET /v1/responses/{id}` and a later `previous_response_id` find it.

use serde_json::Value;

use super::Processor;
use crate::cache::{self, replay, Entry, Key};
use crate::responses::response::StreamEncoder;
use crate::stream::Frame;

impl Processor {
    /// The cache key of a Responses request (`None`: not one).
    pub(super) fn responses_cache_key(
        &self,
        scope: &str,
        policy: &str,
        model: &str,
    ) -> Option<Key> {
        let call = self.responses.as_ref()?;
        let (req, conversation, _) = call.cache_view();
        Some(cache::responses::key(
            scope,
            policy,
            model,
            &req.body,
            conversation,
        ))
    }

    /// The answer of a Responses hit (`stream`: as an event stream), written with this
    /// request's envelope; the response object is kept for the response store. `None` when
    /// the cached object cannot be read back (then the request goes on to the provider).
    pub(super) fn responses_cache_answer(
        &mut self,
        entry: &Entry,
        stream: bool,
    ) -> Option<(Vec<u8>, &'static str)> {
        let hub = cache::responses::decode(&entry.body)?;
        let envelope = self.responses.as_ref()?.cache_view().2.clone();
        if !stream {
            let v = envelope.complete(&hub);
            let body = serde_json::to_vec(&v).ok()?;
            self.responses_store(v);
            return Some((body, "application/json"));
        }
        let mut encoder = StreamEncoder::new(envelope);
        let mut frames: Vec<Frame<'_>> = Vec::new();
        for e in replay::events_of(&hub) {
            encoder.encode(e, &mut frames);
        }
        let mut out = Vec::with_capacity(entry.body.len() * 3 + 1024);
        for f in &frames {
            f.write(&mut out);
        }
        // What the stream's `response.completed` carries is the response stored.
        let done = cache::responses::final_of_stream(&out)
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        self.responses_store(done);
        Some((out, "text/event-stream"))
    }
}
