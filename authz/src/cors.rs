//! Browsers (CORS) in the ext_authz shape: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) carries no key, so it is let on without one, to ext_proc,
//! which answers it at its request headers and never forwards it; a refusal here carries the
//! CORS headers of the policies that list the request's origin, so the page can read it.

use envoy_types::ext_authz::v3::pb::{CheckResponse, HttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::google::rpc;
use tollgate_core::metadata as md;
use tollgate_core::Config;

use super::{header, GRPC_OK, KEY_HEADERS};

/// Whether the request is a CORS preflight.
pub(crate) fn is_preflight<'h>(method: &str, lookup: impl Fn(&str) -> Option<&'h str>) -> bool {
    method == "OPTIONS"
        && lookup("origin").is_some_and(|o| !o.trim().is_empty())
        && lookup("access-control-request-method").is_some()
}

/// A preflight let on to ext_proc without a key and without a bundle (no metadata: ext_proc
/// answers it before it looks for one). The key and routing headers go, as for every request.
pub(crate) fn pass_preflight() -> CheckResponse {
    let mut headers_to_remove: Vec<String> = KEY_HEADERS.iter().map(|h| (*h).to_owned()).collect();
    headers_to_remove.push(md::ROUTE_HEADER.to_owned());
    CheckResponse {
        status: Some(rpc::Status {
            code: GRPC_OK,
            ..Default::default()
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers_to_remove,
            ..Default::default()
        })),
    }
}

/// Adds the CORS headers of every policy listing `origin` to a refusal.
pub(crate) fn add_refusal_headers(resp: &mut CheckResponse, config: &Config, origin: Option<&str>) {
    let Some(pairs) = origin.and_then(|o| config.cors.any_headers(o.trim())) else {
        return;
    };
    if let Some(HttpResponse::DeniedResponse(d)) = &mut resp.http_response {
        for (k, v) in pairs {
            let action = if k == "vary" {
                HeaderAppendAction::AppendIfExistsOrAdd
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd
            };
            d.headers.push(header(k, &v, action));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use time::OffsetDateTime;
    use tollgate_core::env::MapEnv;
    use tollgate_core::metrics::Metrics;
    use tollgate_core::Config;

    use crate::{AuthzService, GRPC_OK};

    fn decide(
        method: &str,
        headers: &[(&str, &str)],
    ) -> envoy_types::ext_authz::v3::pb::CheckResponse {
        let yaml = r#"
providers: { p: { kind: openai, base_url: "http://127.0.0.1:1/v1" } }
models: { m: { targets: [{ provider: p, model: m }] } }
tenants:
  web: { cors: { origins: ["https://app.example.com"] } }
"#;
        let config = Config::from_yaml(yaml, &MapEnv::default()).unwrap();
        let service =
            AuthzService::new(Arc::new(ArcSwap::from_pointee(config)), Metrics::default());
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.into(),
                        path: "/v1/chat/completions".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(service.decide(&req, OffsetDateTime::now_utc()))
    }

    #[test]
    fn a_preflight_goes_on_without_a_key_and_without_a_bundle() {
        let r = decide(
            "OPTIONS",
            &[
                ("origin", "https://whoever.test"),
                ("access-control-request-method", "POST"),
            ],
        );
        assert_eq!(r.status.unwrap().code, GRPC_OK);
        assert!(r.dynamic_metadata.is_none());
        // Not a preflight (no requested method): the key is needed as ever.
        let r = decide("OPTIONS", &[("origin", "https://whoever.test")]);
        assert_ne!(r.status.unwrap().code, GRPC_OK);
    }

    #[test]
    fn a_refusal_is_readable_by_a_listed_origin_only() {
        let cors_origin = |origin: &str| {
            let r = decide("POST", &[("origin", origin)]);
            let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
                panic!("not denied")
            };
            assert_eq!(d.status.unwrap().code, 401);
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "access-control-allow-origin")
                .map(|h| h.value.clone())
        };
        assert_eq!(
            cors_origin("https://app.example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(cors_origin("https://evil.test"), None);
    }
}
