//! Pure builders for ext_proc responses: header mutations, body replacements, immediate
//! replies and processing-mode overrides.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, processing_response::Response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingResponse,
};
use tollgate_core::metadata::REQUEST_ID_HEADER;

/// A header set (overwriting any existing value), value as raw bytes.
pub fn set(key: &str, value: impl Into<Vec<u8>>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A common response: header sets and removals, an optional new body, optional route-cache clear.
pub fn common(
    set_headers: Vec<HeaderValueOption>,
    remove_headers: Vec<String>,
    body: Option<Vec<u8>>,
    clear_route_cache: bool,
) -> CommonResponse {
    let header_mutation =
        (!set_headers.is_empty() || !remove_headers.is_empty()).then_some(HeaderMutation {
            set_headers,
            remove_headers,
        });
    CommonResponse {
        header_mutation,
        body_mutation: body.map(|b| BodyMutation {
            mutation: Some(Mutation::Body(b)),
        }),
        clear_route_cache,
        ..Default::default()
    }
}

/// Continue the request-body phase with `common`.
pub fn request_body(common: CommonResponse) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestBody(BodyResponse {
            response: Some(common),
        })),
        ..Default::default()
    }
}

/// Continue the response-body phase with `common`.
pub fn response_body(common: CommonResponse) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseBody(BodyResponse {
            response: Some(common),
        })),
        ..Default::default()
    }
}

/// Continue the request-headers phase, removing `remove` (nothing when empty).
pub fn request_headers(remove: Vec<String>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: (!remove.is_empty()).then(|| common(Vec::new(), remove, None, false)),
        })),
        ..Default::default()
    }
}

/// Continue the request-headers phase, setting `headers` and removing `remove`.
pub fn request_headers_with(
    headers: Vec<HeaderValueOption>,
    remove: Vec<String>,
) -> ProcessingResponse {
    if headers.is_empty() {
        return request_headers(remove);
    }
    ProcessingResponse {
        response: Some(Response::RequestHeaders(HeadersResponse {
            response: Some(common(headers, remove, None, false)),
        })),
        ..Default::default()
    }
}

/// Continue the response-headers phase with `common`, switching the response body mode.
pub fn response_headers(common: CommonResponse, body_mode: BodySendMode) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ResponseHeaders(HeadersResponse {
            response: Some(common),
        })),
        mode_override: Some(ProcessingMode {
            request_header_mode: HeaderSendMode::Skip as i32,
            response_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: BodySendMode::None as i32,
            response_body_mode: body_mode as i32,
            request_trailer_mode: HeaderSendMode::Skip as i32,
            response_trailer_mode: HeaderSendMode::Skip as i32,
        }),
        ..Default::default()
    }
}

/// A reply Tollgate sends itself, without going upstream.
pub fn immediate(
    status: u16,
    body: Vec<u8>,
    content_type: &str,
    request_id: Option<&str>,
) -> ProcessingResponse {
    immediate_with(status, body, content_type, request_id, Vec::new())
}

/// [`immediate`] with `extra` headers (`retry-after`, ...).
pub fn immediate_with(
    status: u16,
    body: Vec<u8>,
    content_type: &str,
    request_id: Option<&str>,
    extra: Vec<HeaderValueOption>,
) -> ProcessingResponse {
    let mut headers = vec![set("content-type", content_type)];
    headers.extend(extra);
    if let Some(id) = request_id {
        headers.push(set(REQUEST_ID_HEADER, id));
    }
    immediate_headers(status, body, headers)
}

/// A reply Tollgate sends itself with exactly `headers`.
pub fn immediate_headers(
    status: u16,
    body: Vec<u8>,
    headers: Vec<HeaderValueOption>,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Response::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: Some(HeaderMutation {
                set_headers: headers,
                remove_headers: Vec::new(),
            }),
            body,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Adds `header` to an immediate reply (any other response is left as it is).
pub fn add_immediate_header(response: &mut ProcessingResponse, header: HeaderValueOption) {
    if let Some(Response::ImmediateResponse(r)) = &mut response.response {
        r.headers
            .get_or_insert_with(Default::default)
            .set_headers
            .push(header);
    }
}
