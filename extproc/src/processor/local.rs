//! What Tollgate answers itself, without a provider: errors in the client's dialect, the
//! model list, `GET /v1/budget` and `/v1/usage`, `POST /v1/messages/count_tokens` and
//! `POST /v1/feedback`.

use std::time::SystemTime;

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use tollgate_core::config::Target;
use tollgate_core::metrics::{CodeLabel, RequestLabels};
use tollgate_core::{ApiError, Config, Dialect, Endpoint};

use super::{owner, Processor, Rejected};
use crate::mutation::{self, set};
use crate::translator::json::RawObject;
use crate::{budget, feedback, log, selfservice};

/// Self-service answers.
#[derive(Debug, Clone, Copy)]
pub(super) enum SelfService {
    /// `GET /v1/budget`.
    Budget,
    /// `GET /v1/usage`.
    Usage,
}

impl SelfService {
    fn label(self) -> &'static str {
        match self {
            SelfService::Budget => "budget",
            SelfService::Usage => "usage",
        }
    }
}

/// The `model` label of a request's metrics: a configured model's public name, `unknown` for
/// any other name a client sent (one series per made-up name would grow without bound), `none`
/// when the request named none.
pub(super) fn model_label(config: &Config, model: Option<&str>) -> String {
    match model {
        Some(m) if config.models.contains_key(m) => m.to_owned(),
        Some(_) => "unknown".to_owned(),
        None => "none".to_owned(),
    }
}

impl Processor {
    /// Answers with an error in the client's dialect.
    pub(super) fn reject(&mut self, err: &ApiError, model: Option<&str>) -> ProcessingResponse {
        let dialect = self.dialect();
        self.reject_in(err, model, dialect)
    }

    /// [`Self::reject`] in `dialect` (a passthrough request is refused in its provider's).
    pub(super) fn reject_in(
        &mut self,
        err: &ApiError,
        model: Option<&str>,
        dialect: tollgate_core::Dialect,
    ) -> ProcessingResponse {
        let class = err.class();
        self.rejected = Some(Rejected {
            status: class.status,
            class: class.code,
            // A client's model name: bounded before it reaches the log event and the span.
            model: model.map(|m| tollgate_core::bound::echo(m).into_owned()),
        });
        self.metrics
            .errors
            .get_or_create(&CodeLabel { code: class.code })
            .inc();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: "error",
                provider: "none".to_owned(),
                model: model_label(&self.config, model),
                status: class.status,
            })
            .inc();
        let request_id = self.ctx.as_ref().map(|c| c.request_id.as_str());
        tracing::debug!(request_id, status = class.status, error = %err.bounded(), "Rejected request");
        let extra = match err {
            ApiError::BudgetExceeded {
                retry_after_secs: Some(secs),
                ..
            } => vec![set("retry-after", secs.to_string())],
            _ => Vec::new(),
        };
        let mut extra = extra;
        extra.extend(self.answer_headers.iter().cloned());
        mutation::immediate_with(
            class.status,
            err.body(dialect),
            "application/json",
            request_id,
            extra,
        )
    }

    pub(super) fn list_models(&mut self) -> ProcessingResponse {
        let Some(ctx) = &self.ctx else {
            return self.reject(&ApiError::Internal, None);
        };
        let ids: Vec<&String> = self
            .config
            .models
            .keys()
            .filter(|m| ctx.allows(m))
            .collect();
        // Gemini clients get Gemini's list shape, Anthropic's SDK (which always sends
        // `anthropic-version`) Anthropic's.
        let body = if self.dialect() == Dialect::Gemini {
            let models: Vec<serde_json::Value> = ids
                .iter()
                .map(|m| serde_json::json!({"name": format!("models/{m}"), "displayName": m,
                    "supportedGenerationMethods": ["generateContent", "streamGenerateContent"]}))
                .collect();
            serde_json::json!({"models": models})
        } else if self.client_anthropic_version {
            let data: Vec<serde_json::Value> = ids
                .iter()
                .map(|m| serde_json::json!({"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}))
                .collect();
            serde_json::json!({"data": data, "has_more": false,
                "first_id": ids.first(), "last_id": ids.last()})
        } else {
            let data: Vec<serde_json::Value> = ids
                .iter()
                .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "tollgate"}))
                .collect();
            serde_json::json!({"object": "list", "data": data})
        }
        .to_string();
        self.answer(Endpoint::Models.label(), body)
    }

    /// A 200 JSON answer Tollgate gives itself.
    pub(super) fn answer(&self, label: &'static str, body: String) -> ProcessingResponse {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: label,
                provider: "tollgate".to_owned(),
                model: "none".to_owned(),
                status: 200,
            })
            .inc();
        mutation::immediate_with(
            200,
            body.into_bytes(),
            "application/json",
            self.ctx.as_ref().map(|c| c.request_id.as_str()),
            self.answer_headers.clone(),
        )
    }

    /// `GET /v1/budget` or `GET /v1/usage` for the calling key.
    pub(super) async fn self_service(&mut self, what: SelfService) -> ProcessingResponse {
        let (Some(ctx), Some(ledger)) = (&self.ctx, &self.ledger) else {
            return self.reject(&ApiError::Internal, None);
        };
        let now = time::OffsetDateTime::now_utc();
        let report = match what {
            SelfService::Budget => {
                selfservice::budget_report(
                    &self.config.budgets,
                    &ctx.budgets,
                    ledger.as_ref(),
                    &owner(ctx, self.end_user.as_deref()),
                    now,
                )
                .await
            }
            SelfService::Usage => {
                selfservice::usage_report(ledger.as_ref(), &ctx.key_id, now).await
            }
        };
        match report {
            Ok(v) => self.answer(what.label(), v.to_string()),
            Err(e) => {
                tracing::error!(error = %e, "Budget ledger unavailable");
                self.reject(&ApiError::BudgetUnavailable, None)
            }
        }
    }

    /// `POST /v1/messages/count_tokens` for a model whose provider cannot count (see
    /// [`super::count`]): the prompt's tokens estimated here for the picked `target`, marked
    /// `x-tollgate-token-count: estimate`: the model's own tokenizer for OpenAI and Azure
    /// models, one token per 3 bytes of text otherwise, plus 4 per message and 3 per request
    /// (the estimate budgets reserve with).
    pub(super) fn estimate_count(
        &mut self,
        obj: &RawObject<'_>,
        model: String,
        target: &Target,
    ) -> ProcessingResponse {
        let counter = budget::Counter::for_target(target.provider.kind, &target.upstream_model);
        let tokens = budget::prompt_tokens(obj, counter);
        self.estimated_count = Some(model);
        let mut answer = self.answer(
            Endpoint::CountTokens.label(),
            serde_json::json!({ "input_tokens": tokens }).to_string(),
        );
        mutation::add_immediate_header(&mut answer, set(super::TOKEN_COUNT_HEADER, "estimate"));
        answer
    }

    /// `POST /v1/feedback`: checks the token (signature, expiry, same key) and the body,
    /// hands the feedback to the log queue and answers 200 itself.
    pub(super) fn record_feedback(&mut self, body: &[u8]) -> Result<ProcessingResponse, ApiError> {
        let (Some(ctx), Some(settings), Some(log)) = (&self.ctx, &self.config.feedback, &self.log)
        else {
            return Err(ApiError::Internal);
        };
        let given = feedback::parse(body, settings.max_comment_bytes)?;
        let now = SystemTime::now();
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let claims = tollgate_core::feedback::verify(
            settings.secret.expose().as_bytes(),
            &given.token,
            unix,
        )
        .map_err(|e| ApiError::InvalidFeedbackToken(e.to_string()))?;
        if claims.key_id != ctx.key_id {
            return Err(ApiError::InvalidFeedbackToken(
                "it was issued to another API key".to_owned(),
            ));
        }
        let rated = claims.request_id.clone();
        log.emit(log::feedback_event(
            &ctx.request_id,
            &claims,
            given.into_proto(rated.clone()),
            now,
        ));
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: Endpoint::Feedback.label(),
                provider: "tollgate".to_owned(),
                model: "none".to_owned(),
                status: 200,
            })
            .inc();
        tracing::debug!(request_id = %ctx.request_id, rated = %rated, key_id = %ctx.key_id, "Recorded feedback");
        let answer = serde_json::json!({
            "object": "feedback",
            "id": ctx.request_id,
            "request_id": rated,
            "status": "recorded",
        });
        Ok(mutation::immediate_with(
            200,
            answer.to_string().into_bytes(),
            "application/json",
            Some(&ctx.request_id),
            self.answer_headers.clone(),
        ))
    }
}

/// The `model` a count request names: required.
pub(super) fn required_model(obj: &RawObject<'_>) -> Result<String, (ApiError, Option<String>)> {
    obj.get("model")
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .ok_or_else(|| {
            (
                ApiError::InvalidField {
                    param: "model",
                    message: "`model` is required".to_owned(),
                },
                None,
            )
        })
}
