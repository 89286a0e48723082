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
