//! Images, audio and moderations (`/v1/images/*`, `/v1/audio/*`, `/v1/moderations`): the
//! request read once (JSON, or a multipart form whose `model` field is rewritten in place of
//! copying the upload twice), checked against the key, reserved in the model's own units and
//! sent to an OpenAI, Azure or OpenAI-compatible target; the response passed through as the
//! provider sent it (speech audio streamed, never held whole), measured for its bill.

use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingResponse};
use rand::Rng;
use tollgate_core::budget::{self as budgets, Reservation};
use tollgate_core::config::{ApiFamily, Excluded, MediaApi, Pick, ProviderKind};
use tollgate_core::metadata as md;
use tollgate_core::pricing::media::MediaUsage;
use tollgate_core::pricing::Picodollars;
use tollgate_core::{ApiError, Endpoint, Usage};

use super::finish::Bill;
use super::route::allowed_model;
use super::upstream_auth::{self, Signed};
use super::{owner, Forwarded, Processor};
use crate::media::{self, MediaRequest};
use crate::multipart;
use crate::mutation::{self, set};
use crate::shape;
use crate::translator::Pair;

/// A refusal, with the model it was about when one was named.
type Refusal = (ApiError, Option<String>);

/// A media request's state, from its body to its bill.
#[derive(Debug)]
pub(super) struct MediaCall {
    api: MediaApi,
    request: MediaRequest,
    /// What a successful response used (set when its body ends).
    units: Option<MediaUsage>,
    /// Bytes of a streamed (speech) response passed through.
    streamed_bytes: u64,
    /// The first bytes of a streamed (speech) response, for its length.
    head: Vec<u8>,
}

impl MediaCall {
    /// Whether a successful response's body streams through (speech audio).
    pub(super) fn streams(&self) -> bool {
        self.api == MediaApi::Speech
    }

    /// The media API called.
    pub(super) fn api(&self) -> MediaApi {
        self.api
    }
}

/// The config name of a provider kind, for the client's error.
fn kind_label(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "openai",
        ProviderKind::OpenaiCompatible => "openai_compatible",
        ProviderKind::AzureOpenai => "azure_openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gemini",
        ProviderKind::Vertex => "vertex",
        ProviderKind::Bedrock => "bedrock",
        ProviderKind::Cohere => "cohere",
        ProviderKind::Jina => "jina",
        ProviderKind::Voyage => "voyage",
        ProviderKind::Tei => "tei",
    }
}

impl Processor {
    /// Routes a media request: read, allowed, priced and reserved, rewritten for its target.
    pub(super) async fn route_media(
        &mut self,
        api: MediaApi,
        b: &HttpBody,
    ) -> Result<ProcessingResponse, Refusal> {
        let endpoint = Endpoint::Media(api);
        let (request, mut json) = if api.multipart() {
            let r = media::read_form(api, &b.body, &self.request_content_type)
                .map_err(|e| (e, None))?;
            (r, None)
        } else {
            shape::check(&b.body, &self.config.body_limits).map_err(|e| (e.api_error(), None))?;
            let (r, obj) = media::read_json(api, &b.body).map_err(|e| (e, None))?;
            (r, Some(obj))
        };
        let model = request.model.clone();
        let config = Arc::clone(&self.config);
        let Some(ctx) = &self.ctx else {
            return Err((ApiError::Internal, None));
        };
        let m = allowed_model(&config, ctx, &model)?;
        let refusal = |e: ApiError| (e, Some(model.clone()));
        // The prompt or input judged by the key's guardrails; the request captured.
        let guarded = self
            .guard_media(api, &model, json.as_mut(), &request, &b.body)
            .await
            .map_err(refusal)?;
        // No cost-aware strategy: a media request is not priced in tokens.
        let pick = {
            let mut rng = rand::rng();
            let mut random = |n: u64| if n == 0 { 0 } else { rng.random_range(0..n) };
            m.choose(Excluded::NONE, &|_| None, &mut random)
        };
        let (target, slot) = match pick {
            Pick::Chosen { target, slot, .. } => (target, slot),
            Pick::Busy => return Err(refusal(ApiError::TargetsBusy(m.name.clone()))),
            Pick::Exhausted => return Err(refusal(ApiError::Internal)),
        };
        let provider = &target.provider;
        let Some(path) = api.upstream_path(
            provider.kind,
            &provider.base_path,
            &target.upstream_model,
            provider.api_version.as_deref(),
        ) else {
            return Err(refusal(ApiError::EndpointNotAvailable {
                endpoint: api.client_path(),
                model: model.clone(),
                kind: kind_label(provider.kind),
            }));
        };
        // The provider's model id in the body: a JSON body re-written, a form's `model` field
        // replaced in one copy of the body; nothing copied when the ids are the same.
        let upstream_model = target.upstream_model.as_str();
        let body = match (json, &request.model_range) {
            (Some(mut obj), _)
                if guarded.json_changed
                    || obj.get("model").and_then(|v| v.as_str()) != Some(upstream_model) =>
            {
                obj.insert("model".into(), upstream_model.into());
                Some(serde_json::to_vec(&obj).map_err(|_| refusal(ApiError::Internal))?)
            }
            (None, Some(range)) if guarded.form_prompt.is_some() => Some(guarded.rewrite_form(
                &b.body,
                (model != upstream_model).then(|| (range.clone(), upstream_model.as_bytes())),
            )),
            (None, Some(range)) if model != upstream_model => Some(multipart::replace(
                &b.body,
                range.clone(),
                upstream_model.as_bytes(),
            )),
            _ => None,
        };
        let sent = body.as_deref().unwrap_or(&b.body);
        let mut headers = Vec::with_capacity(8 + provider.headers.len());
        headers.push(set(":path", path.as_str()));
        headers.push(set(":authority", provider.authority.as_str()));
        headers.push(set("content-length", sent.len().to_string()));
        upstream_auth::credentials(
            provider,
            &Signed {
                authority: &provider.authority,
                path: &path,
                body: sent,
                stream: false,
            },
            &mut headers,
        )
        .map_err(refusal)?;
        for (k, v) in &provider.headers {
            headers.push(set(k, v.as_str()));
        }
        let remove = self.version_headers(false, provider, &mut headers);
        headers.push(set(md::ROUTE_HEADER, provider.cluster.as_str()));
        let estimate = self.media_estimate(api, upstream_model, &request);
        self.reservation = self.reserve_media(estimate).await.map_err(refusal)?;
        tracing::debug!(request_id = %ctx_id(self), model = %model, provider = %provider.name, endpoint = api.label(), "Routing media request");
        self.media = Some(Box::new(MediaCall {
            api,
            request,
            units: None,
            streamed_bytes: 0,
            head: Vec::new(),
        }));
        self.forwarded = Some(Forwarded {
            slot: Some(slot),
            ..Forwarded::new(
                endpoint,
                model,
                Arc::clone(provider),
                upstream_model.to_owned(),
                Pair {
                    client: ApiFamily::OpenAi,
                    upstream: ApiFamily::OpenAi,
                },
            )
        });
        Ok(mutation::request_body(mutation::common(
            headers, remove, body, true,
        )))
    }

    /// The most a media request can cost before it is sent, from its model's media price
    /// (images asked for, characters, the upload's length); `None` when it cannot be known
    /// (a token-billed model, an upload of unknown length).
    fn media_estimate(
        &self,
        api: MediaApi,
        upstream_model: &str,
        request: &MediaRequest,
    ) -> Option<Picodollars> {
        let price = self.config.prices.media(upstream_model)?;
        // Token-billed models: the tokens estimated by modality.
        let tokens = match price.tokens {
            Some(_) => media::token_estimate(api, request, None),
            None => MediaUsage::default(),
        };
        let units = MediaUsage {
            images: match api {
                MediaApi::ImageGenerations | MediaApi::ImageEdits => request.images,
                _ => 0,
            },
            size: request.size.clone(),
            quality: request.quality.clone(),
            // An upload whose header says nothing: its size at the bitrate floor.
            audio_ms: match api {
                MediaApi::Transcriptions | MediaApi::Translations => request
                    .audio_ms
                    .unwrap_or_else(|| crate::audio::estimate_ms(request.audio_bytes)),
                _ => 0,
            },
            characters: request.characters,
            ..tokens
        };
        price.cost(&units)
    }

    /// Reserves `amount` on every budget that applies to the request (as [`Self::reserve`]
    /// does for a token estimate): `Ok(None)` when none does or nothing can be estimated.
    async fn reserve_media(
        &mut self,
        amount: Option<Picodollars>,
    ) -> Result<Option<Reservation>, ApiError> {
        let (Some(_), Some(ctx), Some(amount)) = (&self.ledger, &self.ctx, amount) else {
            return Ok(None);
        };
        let now = time::OffsetDateTime::now_utc();
        let lines = budgets::lines_with(
            &self.config.budgets.limits,
            &ctx.budgets,
            &owner(ctx, self.end_user.as_deref()),
            now,
        );
        if lines.is_empty() {
            return Ok(None);
        }
        self.reserve_on(lines, amount, now).await
    }

    /// One piece of a media response's body, passed through unchanged: a streamed (speech)
    /// chunk is only counted; a complete (JSON or text) body is read for its usage.
    pub(super) fn media_response_body(&mut self, b: &HttpBody) -> ProcessingResponse {
        if self.first_byte_at.is_none() && !b.body.is_empty() {
            self.first_byte_at = Some(std::time::SystemTime::now());
        }
        let ok = self
            .forwarded
            .as_ref()
            .and_then(|f| f.status)
            .is_some_and(|s| (200..300).contains(&s));
        if let (Some(call), Some(fwd)) = (&mut self.media, &mut self.forwarded) {
            if call.streams() && ok {
                call.streamed_bytes += b.body.len() as u64;
                let room = crate::audio::HEAD_BYTES.saturating_sub(call.head.len());
                call.head
                    .extend_from_slice(&b.body[..room.min(b.body.len())]);
            } else if ok {
                let (units, tokens) = media::response_usage(call.api, &call.request, &b.body);
                call.units = Some(units);
                fwd.usage = tokens;
            }
        }
        if b.end_of_stream {
            self.response_done = true;
            self.finish();
        }
        mutation::response_body(Default::default())
    }

    /// The bill of a media request (`None` for any other request): a successful response's
    /// units at the model's media price, else its tokens at the model's token price;
    /// moderations are free unless priced; nothing for a failed one.
    pub(super) fn media_bill(&self) -> Option<Bill> {
        let call = self.media.as_ref()?;
        let fwd = self.forwarded.as_ref()?;
        // A success's units are read before anything else decides (a response guardrail that
        // refuses the transcript still pays for it: the provider billed it).
        if !fwd.status.is_some_and(|s| (200..300).contains(&s)) && call.units.is_none() {
            return Some(Bill::default());
        }
        // Speech is billed on its input, which the provider charges whether or not the
        // client heard all of it.
        let price = self.config.prices.media(&fwd.upstream_model);
        let token_billed = price.is_some_and(|p| p.tokens.is_some());
        let units = match (&call.units, call.api) {
            (_, MediaApi::Speech) => Some(MediaUsage {
                characters: call.request.characters,
                ..self.speech_tokens(call, token_billed)
            }),
            // A token-billed answer without `usage` (a `text` transcript): the estimate.
            (Some(u), api) if token_billed && !u.has_tokens() => Some(MediaUsage {
                images: u.images,
                size: u.size.clone(),
                quality: u.quality.clone(),
                audio_ms: u.audio_ms,
                ..media::token_estimate(api, &call.request, None)
            }),
            (u, _) => u.clone(),
        };
        let by_units = units.as_ref().zip(price).and_then(|(u, p)| p.cost(u));
        let by_tokens = |u: &Usage| {
            self.config
                .prices
                .get(&fwd.upstream_model)
                .map(|p| p.cost(u))
        };
        let cost = by_units
            .or_else(|| fwd.usage.as_ref().and_then(by_tokens))
            .or((call.api == MediaApi::Moderations).then_some(0));
        // Tokens estimated rather than reported are logged as such.
        let usage = fwd.usage.or_else(|| {
            let u = units.as_ref().filter(|u| token_billed && u.has_tokens())?;
            Some(Usage {
                input_tokens: u.text_tokens + u.image_tokens + u.audio_tokens,
                output_tokens: u.output_tokens,
                cache_read_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 0,
                source: tollgate_core::UsageSource::Estimated,
            })
        });
        Some(Bill { usage, cost })
    }

    /// The tokens of a speech answer of a token-billed model (none for others): the input's
    /// characters, and the audio's length read from the streamed audio where its format tells
    /// (MP3, WAV, PCM), else estimated from the characters.
    fn speech_tokens(&self, call: &MediaCall, token_billed: bool) -> MediaUsage {
        if !token_billed {
            return MediaUsage::default();
        }
        let pcm = call.request.response_format == "pcm";
        let ms = crate::audio::streamed_ms(&call.head, call.streamed_bytes, pcm);
        media::token_estimate(MediaApi::Speech, &call.request, ms)
    }

    /// Writes the units a media request was billed in into its log event.
    pub(super) fn media_event(&self, event: &mut tollgate_proto::logger::v1::LogEvent) {
        let Some(call) = &self.media else { return };
        let units = match call.api {
            MediaApi::Speech => MediaUsage {
                characters: call.request.characters,
                ..MediaUsage::default()
            },
            _ => call.units.clone().unwrap_or_default(),
        };
        event.media_images = units.images;
        if units.images > 0 {
            event.media_image_size = units.size;
            event.media_image_quality = units.quality;
        }
        event.media_audio_ms = units.audio_ms;
        event.media_characters = units.characters;
        if call.streams() {
            tracing::debug!(request_id = %event.request_id, bytes = call.streamed_bytes, "Streamed media response passed through");
        }
    }
}

fn ctx_id(p: &Processor) -> &str {
    p.ctx.as_ref().map_or("", |c| c.request_id.as_str())
}
