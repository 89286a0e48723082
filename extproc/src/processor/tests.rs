//! Processor tests driven by hand-made ext_proc messages.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders};
use envoy_types::pb::google::protobuf::{Struct, Value};
use tollgate_core::env::MapEnv;

use super::*;

const CONFIG: &str = r#"
providers: { p: { kind: openai, base_url: "http://127.0.0.1:1/v1" } }
models: { m: { targets: [{ provider: p, model: m }] } }
guardrails:
  policies:
    strict: { rules: [{ id: cards, detector: credit_card, action: block }] }
"#;

fn message(request: Request, metadata: &[(&str, &str)]) -> ProcessingRequest {
    let fields: HashMap<String, Value> = metadata
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                Value {
                    kind: Some(Kind::StringValue((*v).to_owned())),
                },
            )
        })
        .collect();
    let mut fields = fields;
    fields.insert(
        md::MODELS.to_owned(),
        Value {
            kind: Some(Kind::ListValue(
                envoy_types::pb::google::protobuf::ListValue {
                    values: vec![Value {
                        kind: Some(Kind::StringValue("*".to_owned())),
                    }],
                },
            )),
        },
    );
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(md::NAMESPACE.to_owned(), Struct { fields });
    ProcessingRequest {
        request: Some(request),
        metadata_context: Some(Metadata {
            filter_metadata,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn headers(path: &str, extra: &[(&str, &str)]) -> Request {
    let mut list = vec![(":path", path), (":method", "POST")];
    list.extend_from_slice(extra);
    Request::RequestHeaders(HttpHeaders {
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
        end_of_stream: false,
        ..Default::default()
    })
}

fn body(text: &str) -> Request {
    Request::RequestBody(HttpBody {
        body: text.as_bytes().to_vec(),
        end_of_stream: true,
        ..Default::default()
    })
}

/// Sends the headers and body of a request from a key whose policy is `policy` (as ext_authz
/// saw it) and returns the immediate response, if any.
async fn immediate(
    path: &str,
    extra: &[(&str, &str)],
    policy: &str,
) -> Option<(i32, serde_json::Value)> {
    let config = Config::from_yaml(CONFIG, &MapEnv::from_pairs([])).unwrap();
    let mut p = Processor::new(Arc::new(config), Metrics::default());
    let metadata = [
        (md::KEY_ID, "k"),
        (md::PATH, path),
        (md::METHOD, "POST"),
        (md::REQUEST_ID, "rid"),
        (md::GUARDRAILS, policy),
    ];
    p.handle(message(headers(path, extra), &metadata))
        .await
        .unwrap();
    let r = p
        .handle(message(
            body(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#),
            &metadata,
        ))
        .await
        .unwrap();
    match r.response {
        Some(Response::ImmediateResponse(i)) => Some((
            i.status.unwrap().code,
            serde_json::from_slice(&i.body).unwrap(),
        )),
        _ => None,
    }
}

#[tokio::test]
async fn a_key_whose_policy_vanished_is_refused_naming_the_policy_not_served_unguarded() {
    let (status, body) = immediate("/v1/chat/completions", &[], "gone")
        .await
        .unwrap();
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "guardrail_policy_unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`gone`"),
        "{body}"
    );
    let (status, body) = immediate(
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        "gone",
    )
    .await
    .unwrap();
    assert_eq!(status, 500);
    assert_eq!(
        (&body["type"], &body["error"]["type"]),
        (&serde_json::json!("error"), &serde_json::json!("api_error"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`gone`"));
    // The policy that exists lets a clean request through to routing.
    assert!(immediate("/v1/chat/completions", &[], "strict")
        .await
        .is_none());
}
