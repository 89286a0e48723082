//! Browsers (CORS), at the request headers: a preflight is answered here from every policy
//! that lists its origin (no key travels with one, and it never reaches a provider); a real
//! request's `Origin` is checked against its key's policy (the key's own, else its tenant's)
//! once the key is known, and every answer to it — the provider's, a stream, Tollgate's own
//! errors, Envoy's local replies after this point — carries the policy's headers.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingResponse};
use tollgate_core::config::Preflight;
use tollgate_core::metadata as md;
use tollgate_core::metrics::ResultLabel;
use tollgate_core::{keys, ApiError, Dialect};

use super::{header, Processor};
use crate::mutation::{self, set};

/// The preflight's status when it is allowed.
const PREFLIGHT_OK: u16 = 204;

/// `(name, value)` pairs as header mutations; `vary` is appended to, every other one set.
pub(super) fn cors_headers(pairs: Vec<(&'static str, String)>) -> Vec<HeaderValueOption> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            if k == "vary" {
                HeaderValueOption {
                    header: Some(HeaderValue {
                        key: k.to_owned(),
                        raw_value: v.into_bytes(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
                    ..Default::default()
                }
            } else {
                set(k, v)
            }
        })
        .collect()
}

/// The request's `Origin`, when it has a usable one.
fn origin(h: &HttpHeaders) -> Option<&str> {
    header(&h.headers, "origin")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|o| !o.is_empty())
}

impl Processor {
    /// The answer to a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`), whatever the config: `None` for any other request.
    pub(super) fn preflight(&mut self, h: &HttpHeaders) -> Option<ProcessingResponse> {
        if header(&h.headers, ":method") != Some(b"OPTIONS".as_slice()) {
            return None;
        }
        let origin = origin(h)?;
        let method = header(&h.headers, "access-control-request-method")
            .and_then(|v| std::str::from_utf8(v).ok())?;
        let requested = header(&h.headers, "access-control-request-headers")
            .and_then(|v| std::str::from_utf8(v).ok());
        // Answered here: nothing of it is left to settle or log.
        self.finished = true;
        let request_id = keys::new_request_id();
        let answer = self.config.cors.preflight(origin, method, requested);
        let allowed = matches!(answer, Preflight::Allowed(_));
        tracing::debug!(request_id, allowed, "Answered a CORS preflight");
        self.metrics
            .cors_preflights
            .get_or_create(&ResultLabel {
                result: if allowed { "allowed" } else { "refused" },
            })
            .inc();
        Some(match answer {
            Preflight::Allowed(pairs) => {
                let mut headers = cors_headers(pairs);
                headers.push(set(md::REQUEST_ID_HEADER, request_id));
                mutation::immediate_headers(PREFLIGHT_OK, Vec::new(), headers)
            }
            Preflight::Refused => {
                let path = header(&h.headers, ":path")
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                let err = ApiError::OriginNotAllowed;
                mutation::immediate_with(
                    err.status(),
                    err.body(Dialect::from_path(&path)),
                    "application/json",
                    Some(&request_id),
                    Vec::new(),
                )
            }
        })
    }

    /// The CORS headers of a refusal answered before a key's policy applies (no key, a
    /// refused key): those of every policy that lists the request's origin, so that the page
    /// can read the error; none when no policy lists it.
    pub(super) fn cors_refusal_headers(&self, h: &HttpHeaders) -> Vec<HeaderValueOption> {
        origin(h)
            .and_then(|o| self.config.cors.any_headers(o))
            .map(cors_headers)
            .unwrap_or_default()
    }

    /// Once the key is known: a request with an `Origin` that its key's policy (its own, else
    /// its tenant's) does not list is refused (403 `origin_not_allowed`); one it lists gets the
    /// policy's headers on every answer. A key without a policy is not checked.
    pub(super) fn check_origin(&mut self, h: &HttpHeaders) -> Option<ProcessingResponse> {
        let ctx = self.ctx.as_ref()?;
        let origin = origin(h)?;
        let tenant = (!ctx.tenant.is_empty()).then_some(ctx.tenant.as_str());
        let policy = self.config.cors.policy(&ctx.key_id, tenant)?;
        if policy.allows(origin) {
            let headers = cors_headers(policy.response_headers(origin));
            self.answer_headers.extend(headers);
            return None;
        }
        tracing::debug!(
            request_id = ctx.request_id.as_str(),
            key_id = ctx.key_id.as_str(),
            "Refused a request from an origin the key's CORS policy does not list"
        );
        // The page may read the refusal when another policy lists its origin (the preflight
        // passed): it says what is wrong rather than a bare CORS error.
        let headers = self.cors_refusal_headers(h);
        self.answer_headers.extend(headers);
        Some(self.reject(&ApiError::OriginNotAllowed, None))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
    use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest};
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    use tollgate_core::env::MapEnv;
    use tollgate_core::metadata as md;
    use tollgate_core::metrics::Metrics;
    use tollgate_core::Config;

    use super::super::Processor;

    const CONFIG: &str = r#"
providers: { p: { kind: openai, base_url: "http://127.0.0.1:1/v1" } }
models: { m: { targets: [{ provider: p, model: m }] } }
tenants:
  web: { cors: { origins: ["https://*.example.com"], exposed_headers: [x-extra] } }
"#;

    fn processor() -> Processor {
        let config = Config::from_yaml(CONFIG, &MapEnv::from_pairs([])).unwrap();
        Processor::new(Arc::new(config), Metrics::default())
    }

    /// The request headers, with ext_authz's metadata of key `k` of `tenant` when given.
    fn request(
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        tenant: Option<&str>,
    ) -> ProcessingRequest {
        let mut list = vec![(":path", path), (":method", method)];
        list.extend_from_slice(extra);
        let headers = HttpHeaders {
            headers: Some(HeaderMap {
                headers: list
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: (*k).to_owned(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            end_of_stream: method == "GET",
            ..Default::default()
        };
        let metadata_context = tenant.map(|t| {
            let s = |v: &str| Value {
                kind: Some(Kind::StringValue(v.to_owned())),
            };
            let fields: HashMap<String, Value> = [
                (md::KEY_ID, s("k")),
                (md::TENANT, s(t)),
                (md::PATH, s(path)),
                (md::METHOD, s(method)),
                (md::REQUEST_ID, s("rid")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            Metadata {
                filter_metadata: [(md::NAMESPACE.to_owned(), Struct { fields })].into(),
                ..Default::default()
            }
        });
        ProcessingRequest {
            request: Some(Request::RequestHeaders(headers)),
            metadata_context,
            ..Default::default()
        }
    }

    fn immediate(r: Response) -> (i32, HashMap<String, String>) {
        let Response::ImmediateResponse(i) = r else {
            panic!("not an immediate response: {r:?}")
        };
        let headers = i
            .headers
            .unwrap()
            .set_headers
            .into_iter()
            .map(|h| {
                let h = h.header.unwrap();
                (h.key, String::from_utf8(h.raw_value).unwrap())
            })
            .collect();
        (i.status.unwrap().code, headers)
    }

    #[tokio::test]
    async fn a_preflight_is_answered_without_a_key() {
        let mut p = processor();
        let pre = [
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ];
        let r = p
            .handle(request("OPTIONS", "/v1/chat/completions", &pre, None))
            .await
            .unwrap();
        let (status, h) = immediate(r.response.unwrap());
        assert_eq!(status, 204);
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(
            h["access-control-allow-headers"],
            "authorization, content-type"
        );
        assert!(h.contains_key(md::REQUEST_ID_HEADER));

        let mut p = processor();
        let evil = [
            ("origin", "https://example.com.evil"),
            ("access-control-request-method", "POST"),
        ];
        let r = p
            .handle(request("OPTIONS", "/v1/chat/completions", &evil, None))
            .await
            .unwrap();
        let (status, h) = immediate(r.response.unwrap());
        assert_eq!(status, 403);
        assert!(!h.contains_key("access-control-allow-origin"));
    }

    #[tokio::test]
    async fn a_request_from_an_origin_its_key_does_not_allow_is_refused() {
        let mut p = processor();
        let r = p
            .handle(request(
                "POST",
                "/v1/chat/completions",
                &[("origin", "https://evil.test")],
                Some("web"),
            ))
            .await
            .unwrap();
        let (status, h) = immediate(r.response.unwrap());
        assert_eq!(status, 403);
        assert!(!h.contains_key("access-control-allow-origin"));

        // Allowed: the origin goes no further, and Tollgate's answers carry the headers.
        let mut p = processor();
        let r = p
            .handle(request(
                "POST",
                "/v1/chat/completions",
                &[("origin", "https://a.example.com")],
                Some("web"),
            ))
            .await
            .unwrap();
        let Some(Response::RequestHeaders(h)) = r.response else {
            panic!("{r:?}")
        };
        let removed = h.response.unwrap().header_mutation.unwrap().remove_headers;
        assert!(removed.contains(&"origin".to_owned()), "{removed:?}");
        let mut p = processor();
        let r = p
            .handle(request(
                "GET",
                "/v1/models",
                &[("origin", "https://a.example.com")],
                Some("web"),
            ))
            .await
            .unwrap();
        let (status, h) = immediate(r.response.unwrap());
        assert_eq!(status, 200);
        assert_eq!(h["access-control-allow-origin"], "https://a.example.com");
        assert!(h["access-control-expose-headers"].contains("x-extra"));

        // A key of a tenant without a policy: not checked.
        let mut p = processor();
        let r = p
            .handle(request(
                "POST",
                "/v1/chat/completions",
                &[("origin", "https://evil.test")],
                Some("other"),
            ))
            .await
            .unwrap();
        assert!(matches!(r.response, Some(Response::RequestHeaders(_))));
    }
}
