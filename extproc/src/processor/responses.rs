//! `POST /v1/responses` through the processor, and the stored responses' `GET` and `DELETE`.
//!
//! The request body is read once into a [`ResponsesRequest`], its stored conversation
//! expanded, and handed to the usual route as the Chat Completions body it means (so keys,
//! guardrails, estimates, budgets and translation all apply as for chat). Once the target is
//! picked, an OpenAI or Azure target with no response-side guardrail gets the Responses body
//! itself (native); every other target answers through the hub and its answer is written back
//! as a Responses object or event stream. The final response object is stored (scoped by
//! tenant) when storing is on.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use serde_json::Value;
use tollgate_core::config::{ApiFamily, Policy, ProviderKind, Side, Target};
use tollgate_core::metrics::RequestLabels;
use tollgate_core::{ApiError, Endpoint};
use tollgate_guardrails::Engine;

use super::{unix_now, Processor};
use crate::mutation;
use crate::responses::request::{self, ResponsesRequest};
use crate::responses::response::{usage_from_value, Envelope, StreamEncoder};
use crate::responses::store::{Backend, Inserted, Limits, Stored};
use crate::responses::{error_body, scope, Tap};
use crate::stream::Pipeline;
use crate::translator::codec::{
    anthropic as anthropic_codec, bedrock as bedrock_codec, gemini as gemini_codec,
    openai as openai_codec,
};
use crate::translator::{json_tool, Pair};

/// One Responses request's state.
#[derive(Debug)]
pub(super) struct ResponsesCall {
    req: ResponsesRequest,
    /// The whole conversation (stored history, then this request's input).
    conversation: Vec<Value>,
    /// Whether a stored conversation was expanded into it.
    expanded: bool,
    envelope: Envelope,
    /// Whether the provider got the Responses body itself.
    native: bool,
    /// Whether the response is stored.
    store: bool,
    /// Reads a stream's final response object.
    tap: Tap,
    /// Done storing (or given up).
    finished: bool,
    /// The usage a native stream's final event reported.
    usage: Option<tollgate_core::Usage>,
    /// A response to store, written once the response phase can wait for the store.
    pending: Option<(String, Stored)>,
}

impl ResponsesCall {
    /// The request, the whole conversation it continues and its envelope (the response
    /// cache keys and answers Responses requests with them).
    pub(super) fn cache_view(&self) -> (&ResponsesRequest, &[Value], &Envelope) {
        (&self.req, &self.conversation, &self.envelope)
    }
}

/// What an answer says to the client: its text and its tool calls.
fn said(r: &crate::translator::hub::ChatResponse) -> Vec<(&str, &str)> {
    use crate::translator::hub::Part;
    r.content
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(("", t.as_str())),
            Part::ToolCall(c) => Some((c.name.as_str(), c.arguments.as_str())),
            _ => None,
        })
        .collect()
}

/// Removes `encrypted_content` from the reasoning items Tollgate wrote (`rs_tg_…`) in a
/// stored response (a provider's own items stay as the provider gave them).
fn seal_hub_reasoning(response: &mut Value) {
    for item in response
        .get_mut("output")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let hub = item
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| id.starts_with(request::HUB_REASONING_PREFIX));
        if hub {
            if let Some(o) = item.as_object_mut() {
                o.remove("encrypted_content");
            }
        }
    }
}

/// The upstream `:path` of a provider's Responses API.
fn native_path(target: &Target) -> Option<String> {
    let p = &target.provider;
    match p.kind {
        ProviderKind::Openai => Some(format!("{}/responses", p.base_path)),
        ProviderKind::AzureOpenai => Some(format!("{}/openai/v1/responses", p.base_path)),
        ProviderKind::OpenaiCompatible
        | ProviderKind::Anthropic
        | ProviderKind::Gemini
        | ProviderKind::Vertex
        | ProviderKind::Bedrock
        | ProviderKind::Cohere
        | ProviderKind::Jina
        | ProviderKind::Voyage
        | ProviderKind::Tei => None,
    }
}

impl Processor {
    /// Keeps Responses API responses in `store`.
    pub fn with_response_store(mut self, store: Backend) -> Self {
        self.response_store = store;
        self
    }

    /// Reads a Responses body: the Chat Completions body the route goes on with (the request's
    /// state kept in `self.responses`).
    pub(super) async fn responses_prepare(&mut self, b: &HttpBody) -> Result<HttpBody, ApiError> {
        let req = request::parse(&b.body)?;
        let Some(ctx) = &self.ctx else {
            return Err(ApiError::Internal);
        };
        let settings = &self.config.responses;
        let history = match &req.previous_response_id {
            None => Vec::new(),
            Some(_) if !settings.store => {
                return Err(ApiError::InvalidField {
                    param: "previous_response_id",
                    message: "This gateway does not store responses (responses.store is off): send the whole conversation in `input`.".to_owned(),
                })
            }
            Some(id) => match self
                .response_store
                .get(&scope(&ctx.tenant, &ctx.key_id), id)
                .await
            {
                Ok(Some(stored)) => stored.history(),
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e, "Cannot read a stored response");
                    return Err(e.api_error());
                }
                Ok(None) => {
                    return Err(ApiError::InvalidField {
                        param: "previous_response_id",
                        message: format!(
                            "Previous response with id '{}' not found.",
                            tollgate_core::bound::echo(id)
                        ),
                    })
                }
            },
        };
        let conversation = req.conversation(&history);
        let chat = req.chat_body(&conversation)?;
        let envelope = Envelope {
            id: format!("resp_{}", ctx.request_id),
            created_at: unix_now(),
            model: req.model.clone(),
            echo: req.echo(),
            include_encrypted: req.includes("reasoning.encrypted_content"),
            sealed: Default::default(),
        };
        let store = settings.store && req.store;
        self.responses = Some(Box::new(ResponsesCall {
            expanded: req.previous_response_id.is_some(),
            req,
            conversation,
            envelope,
            native: false,
            store,
            tap: Tap::default(),
            finished: false,
            usage: None,
            pending: None,
        }));
        Ok(HttpBody {
            body: chat,
            end_of_stream: true,
            ..Default::default()
        })
    }

    /// For a Responses request whose target serves the Responses API and whose response needs
    /// no judging in the chat shape: the body and `:path` it gets instead.
    pub(super) fn responses_native(
        &mut self,
        target: &Target,
        redacted: bool,
        policy: Option<&Policy>,
        model: &str,
    ) -> Result<Option<(Vec<u8>, String)>, ApiError> {
        let Some(call) = &self.responses else {
            return Ok(None);
        };
        let judged = policy.is_some_and(|p| {
            p.engine(Side::Response, Endpoint::ChatCompletions, model)
                .is_some()
                || !p
                    .webhooks(Side::Response, Endpoint::ChatCompletions, model)
                    .is_empty()
        });
        let Some(path) = native_path(target).filter(|_| !redacted && !judged) else {
            return Ok(None);
        };
        let limit = (self.budget_lines()
            && self.config.prices.get(&target.upstream_model).is_some()
            && call
                .req
                .body
                .get("max_output_tokens")
                .is_none_or(Value::is_null))
        .then_some(self.config.budgets.default_max_tokens);
        let body = call.req.native_body(
            &target.upstream_model,
            call.expanded.then_some(call.conversation.as_slice()),
            limit,
        )?;
        if let Some(call) = &mut self.responses {
            call.native = true;
            // The provider gets the whole conversation; the client sees its own id back.
            if let Some(prev) = call.req.previous_response_id.clone() {
                call.tap = Tap::patching(prev);
            }
        }
        Ok(Some((body, path)))
    }

    /// The stream pipeline of a Responses request through the hub (`None`: not one).
    pub(super) fn responses_pipeline(
        &self,
        pair: Pair,
        guard: Option<&Arc<Engine>>,
        response_id: &str,
        upstream_model: &str,
    ) -> Option<Box<Pipeline>> {
        let call = self.responses.as_ref().filter(|c| !c.native)?;
        let encoder = StreamEncoder::new(call.envelope.clone());
        Some(Box::new(
            Pipeline::new(pair, false, unix_now(), None)
                .with_identity(response_id, upstream_model)
                .into_responses(encoder, guard.map(Arc::clone)),
        ))
    }

    /// The client's bytes of a Responses stream chunk: read for the final response, stored at
    /// the end (its usage is the request's for a native stream); `Some`: the bytes to send
    /// instead (a native stream's lifecycle events given back the client's
    /// `previous_response_id`).
    pub(super) fn responses_stream_chunk(&mut self, out: &[u8], end: bool) -> Option<Vec<u8>> {
        let call = self.responses.as_mut()?;
        let replaced = call.tap.push(out, end);
        let done = call.tap.done.take();
        if let Some(resp) = &done {
            if call.native {
                call.usage = usage_from_value(&resp["usage"]);
            }
        }
        if let (Some(fwd), Some(u)) = (&mut self.forwarded, call.usage) {
            fwd.usage = Some(u);
        }
        if let Some(resp) = done {
            self.responses_store(resp);
        } else if end {
            self.responses_store(Value::Null);
        }
        replaced
    }

    /// A complete Responses answer: the provider's own (native: its usage read), or the
    /// response object written from the hub's chat body. Errors keep the OpenAI shape the
    /// route already gave them.
    pub(super) fn responses_complete(
        &mut self,
        ok: bool,
        body: Option<Vec<u8>>,
        provider_body: &[u8],
    ) -> Option<Vec<u8>> {
        let Some(call) = &self.responses else {
            return body;
        };
        if !ok {
            return body;
        }
        if call.native {
            let mut v: Value = serde_json::from_slice(provider_body).unwrap_or_default();
            let patch = match (&call.req.previous_response_id, v.as_object_mut()) {
                (Some(prev), Some(o)) => {
                    o.insert("previous_response_id".into(), Value::String(prev.clone()));
                    true
                }
                _ => false,
            };
            if let (Some(fwd), Some(u)) = (&mut self.forwarded, usage_from_value(&v["usage"])) {
                fwd.usage = Some(u);
            }
            let out = if patch {
                serde_json::to_vec(&v).ok()
            } else {
                body
            };
            self.responses_store(v);
            return out;
        }
        let chat = body.as_deref().unwrap_or(provider_body);
        let mut hub = match openai_codec::response_from_wire(chat) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the chat answer of a Responses request");
                return Some(ApiError::Upstream(502).body(tollgate_core::Dialect::OpenAi));
            }
        };
        json_tool::unwrap_response(&mut hub);
        // The chat body written from the provider's answer has no place for thinking
        // signatures: the provider's own body, read by its codec, has them. It is taken when
        // it says what the (possibly redacted) chat body says.
        if let Some(mut own) = self.forwarded.as_ref().and_then(|f| {
            match f.pair.upstream {
                ApiFamily::Anthropic => anthropic_codec::response_from_wire(provider_body),
                ApiFamily::Gemini => gemini_codec::response_from_wire(provider_body),
                ApiFamily::Bedrock => bedrock_codec::response_from_wire(
                    provider_body,
                    &f.response_id,
                    &f.upstream_model,
                ),
                ApiFamily::OpenAi => return None,
            }
            .ok()
        }) {
            json_tool::unwrap_response(&mut own);
            if said(&own) == said(&hub) {
                hub = own;
            } else {
                tracing::debug!("A redacted Responses answer keeps no thinking signatures");
            }
        }
        if let Some(u) = self.forwarded.as_ref().and_then(|f| f.usage) {
            hub.usage = u;
        }
        // The store keeps the reasoning's `encrypted_content`; the client gets it when it asked.
        let v = call.envelope.complete(&hub);
        let out = serde_json::to_vec(&call.envelope.for_client(&v)).ok();
        self.responses_store(v);
        out.or(body)
    }

    /// Keeps the final response object (once) for [`Processor::responses_flush`], when storing
    /// is on for this request.
    pub(super) fn responses_store(&mut self, response: Value) {
        let Some(call) = &mut self.responses else {
            return;
        };
        if call.finished {
            return;
        }
        call.finished = true;
        let Some(id) = response
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        if !call.store {
            return;
        }
        let mut response = response;
        call.envelope.sealed.restore(&mut response);
        let stored = Stored {
            response,
            input: std::mem::take(&mut call.conversation),
        };
        call.pending = Some((id, stored));
    }

    /// Writes the response kept by [`Processor::responses_store`] to the store.
    pub(super) async fn responses_flush(&mut self) {
        let (Some(call), Some(ctx)) = (&mut self.responses, &self.ctx) else {
            return;
        };
        let Some((id, stored)) = call.pending.take() else {
            return;
        };
        let settings = &self.config.responses;
        let limits = Limits {
            max_entries: settings.max_entries,
            max_bytes: settings.max_bytes,
            ttl: settings.ttl,
        };
        let scope = scope(&ctx.tenant, &ctx.key_id);
        match self
            .response_store
            .insert(&scope, &id, stored, limits)
            .await
        {
            Ok(Inserted::Stored) => {}
            Ok(Inserted::TooLarge) => {
                tracing::warn!(request_id = %ctx.request_id, response_id = %tollgate_core::bound::echo(&id), "A response larger than an eighth of responses.max_bytes was not stored");
            }
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, error = %e, "Cannot store a response: previous_response_id and GET will not find it");
            }
        }
    }

    /// `GET /v1/responses/{id}/input_items` (`limit` 1 to 100, default 20; `order` `desc`, the
    /// default, or `asc`; `after` an item id) for the calling key's tenant: the stored
    /// conversation's input items (an item without an `id` is listed as `item_<n>`).
    pub(super) async fn stored_input_items(&mut self, id: &str, query: &str) -> ProcessingResponse {
        let Some(ctx) = &self.ctx else {
            return self.reject(&ApiError::Internal, None);
        };
        let request_id = ctx.request_id.clone();
        let scope = scope(&ctx.tenant, &ctx.key_id);
        let headers = self.answer_headers.clone();
        let reply = |status: u16, body: Vec<u8>| {
            mutation::immediate_with(status, body, "application/json", Some(&request_id), headers)
        };
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        let limit = match param("limit").map(str::parse::<usize>) {
            None => 20,
            Some(Ok(n)) if (1..=100).contains(&n) => n,
            Some(_) => {
                let msg = "`limit` must be an integer between 1 and 100.";
                return reply(
                    400,
                    error_body(msg, "invalid_request_error", Some("limit"), None),
                );
            }
        };
        let desc = match param("order") {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(_) => {
                let msg = "`order` must be `asc` or `desc`.";
                return reply(
                    400,
                    error_body(msg, "invalid_request_error", Some("order"), None),
                );
            }
        };
        let stored = if self.config.responses.store {
            match self.response_store.get(&scope, id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(request_id = %request_id, error = %e, "Cannot read the response store");
                    let err = e.api_error();
                    return reply(err.status(), err.body(tollgate_core::Dialect::OpenAi));
                }
            }
        } else {
            None
        };
        let Some(stored) = stored else {
            let msg = format!(
                "Response with id '{}' not found.",
                tollgate_core::bound::echo(id)
            );
            return reply(404, error_body(&msg, "invalid_request_error", None, None));
        };
        let mut items: Vec<Value> = stored
            .input
            .iter()
            .enumerate()
            .map(|(n, item)| {
                let mut item = item.clone();
                if let Some(o) = item.as_object_mut() {
                    if !o.get("id").is_some_and(Value::is_string) {
                        o.insert("id".into(), Value::String(format!("item_{n}")));
                    }
                    if !o.contains_key("type") {
                        o.insert("type".into(), "message".into());
                    }
                }
                item
            })
            .collect();
        if desc {
            items.reverse();
        }
        if let Some(after) = param("after") {
            if let Some(pos) = items.iter().position(|i| i["id"] == after) {
                items.drain(..=pos);
            }
        }
        let has_more = items.len() > limit;
        items.truncate(limit);
        let body = serde_json::json!({
            "object": "list",
            "first_id": items.first().map(|i| i["id"].clone()),
            "last_id": items.last().map(|i| i["id"].clone()),
            "has_more": has_more,
            "data": items,
        });
        reply(200, serde_json::to_vec(&body).unwrap_or_default())
    }

    /// `GET` or `DELETE /v1/responses/{id}` for the calling key's tenant (`query`: the
    /// request's query; `include[]=reasoning.encrypted_content` gives the reasoning items
    /// Tollgate wrote their `encrypted_content`, as OpenAI's `GET` does).
    pub(super) async fn stored_response(
        &mut self,
        method: &str,
        id: &str,
        query: &str,
    ) -> ProcessingResponse {
        let sealed = !query.split('&').any(|kv| {
            matches!(
                kv.split_once('='),
                Some((
                    "include" | "include[]" | "include%5B%5D",
                    "reasoning.encrypted_content"
                ))
            )
        });
        let Some(ctx) = &self.ctx else {
            return self.reject(&ApiError::Internal, None);
        };
        let request_id = ctx.request_id.clone();
        let scope = scope(&ctx.tenant, &ctx.key_id);
        let reply = |status: u16, body: Vec<u8>, headers| {
            mutation::immediate_with(status, body, "application/json", Some(&request_id), headers)
        };
        let headers = self.answer_headers.clone();
        let label = |status: u16| RequestLabels {
            endpoint: "responses_stored",
            provider: "tollgate".to_owned(),
            model: "none".to_owned(),
            status,
        };
        if !self.config.responses.store {
            self.metrics.requests.get_or_create(&label(404)).inc();
            let msg = "This gateway does not store responses (responses.store is off).";
            return reply(
                404,
                error_body(msg, "invalid_request_error", None, None),
                headers,
            );
        }
        let not_found = || {
            let msg = format!(
                "Response with id '{}' not found.",
                tollgate_core::bound::echo(id)
            );
            error_body(&msg, "invalid_request_error", None, None)
        };
        let found = match method {
            "GET" => self.response_store.get(&scope, id).await.map(|s| {
                s.and_then(|s| {
                    let mut response = s.response;
                    if sealed {
                        seal_hub_reasoning(&mut response);
                    }
                    serde_json::to_vec(&response).ok()
                })
            }),
            "DELETE" => self.response_store.delete(&scope, id).await.map(|d| {
                d.then(|| {
                    serde_json::to_vec(&serde_json::json!(
                        {"id": id, "object": "response.deleted", "deleted": true}
                    ))
                    .unwrap_or_default()
                })
            }),
            _ => {
                let err = ApiError::UnknownEndpoint {
                    method: method.to_owned(),
                    path: format!("/v1/responses/{id}"),
                };
                return self.reject(&err, None);
            }
        };
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(request_id = %request_id, error = %e, "Cannot read the response store");
                let err = e.api_error();
                self.metrics
                    .requests
                    .get_or_create(&label(err.status()))
                    .inc();
                return reply(
                    err.status(),
                    err.body(tollgate_core::Dialect::OpenAi),
                    headers,
                );
            }
        };
        match found {
            Some(body) => {
                self.metrics.requests.get_or_create(&label(200)).inc();
                reply(200, body, headers)
            }
            None => {
                self.metrics.requests.get_or_create(&label(404)).inc();
                reply(404, not_found(), headers)
            }
        }
    }
}
