//! Rerank request reading and each provider API's request and answer.

use serde_json::{json, Value};
use tollgate_core::config::ProviderKind;

use super::*;

fn parse(v: Value) -> Result<Request, ApiError> {
    Request::parse(v.to_string().as_bytes(), false)
}

fn request() -> Request {
    parse(json!({
        "model": "rr",
        "query": "capital of france",
        "documents": ["Berlin is in Germany", {"text": "Paris is the capital of France", "id": 7}, "France"],
        "top_n": 2,
        "return_documents": true,
    }))
    .unwrap()
}

#[test]
fn reads_cohere_requests_and_refuses_bad_ones_naming_the_field() {
    let r = request();
    assert_eq!(r.model, "rr");
    assert_eq!(r.documents.len(), 3);
    assert_eq!(r.documents[1].text, "Paris is the capital of France");
    assert_eq!(
        r.documents[0].original,
        json!({"text": "Berlin is in Germany"})
    );
    assert_eq!(r.top_n, Some(2));
    assert!(r.return_documents);
    let param = |v: Value| match parse(v) {
        Err(ApiError::InvalidField { param, .. }) => param,
        other => panic!("{other:?}"),
    };
    assert_eq!(param(json!({"query": "q", "documents": ["a"]})), "model");
    assert_eq!(param(json!({"model": "m", "documents": ["a"]})), "query");
    assert_eq!(
        param(json!({"model": "m", "query": " ", "documents": ["a"]})),
        "query"
    );
    assert_eq!(
        param(json!({"model": "m", "query": "q", "documents": []})),
        "documents"
    );
    assert_eq!(param(json!({"model": "m", "query": "q"})), "documents");
    assert_eq!(
        param(json!({"model": "m", "query": "q", "documents": [1]})),
        "documents"
    );
    assert_eq!(
        param(json!({"model": "m", "query": "q", "documents": ["a"], "top_n": 0})),
        "top_n"
    );
    assert!(matches!(
        Request::parse(b"{nope", false),
        Err(ApiError::InvalidJson(_))
    ));
}

#[test]
fn object_documents_rank_their_rank_fields() {
    let r = parse(json!({
        "model": "m", "query": "q",
        "documents": [{"title": "T", "body": "B", "n": 1}],
        "rank_fields": ["body", "title"],
    }))
    .unwrap();
    assert_eq!(r.documents[0].text, "body: B\ntitle: T");
    let r =
        parse(json!({"model": "m", "query": "q", "documents": [{"title": "T", "n": 1}]})).unwrap();
    assert_eq!(r.documents[0].text, "title: T");
}

#[test]
fn each_flavor_gets_its_own_request() {
    let r = request();
    let body = |f: Flavor| -> Value { serde_json::from_slice(&f.request(&r, "up")).unwrap() };
    let docs = json!([
        "Berlin is in Germany",
        "Paris is the capital of France",
        "France"
    ]);
    assert_eq!(
        body(Flavor::Cohere),
        json!({"model": "up", "query": "capital of france", "documents": docs, "top_n": 2})
    );
    assert_eq!(
        body(Flavor::Jina),
        json!({"model": "up", "query": "capital of france", "documents": docs, "top_n": 2, "return_documents": false})
    );
    assert_eq!(
        body(Flavor::Voyage),
        json!({"model": "up", "query": "capital of france", "documents": docs, "top_k": 2, "return_documents": false, "truncation": true})
    );
    assert_eq!(
        body(Flavor::Tei),
        json!({"query": "capital of france", "texts": docs, "raw_scores": false, "return_text": false, "truncate": true})
    );
    assert_eq!(
        Flavor::of(ProviderKind::OpenaiCompatible),
        Some(Flavor::Jina)
    );
    assert_eq!(Flavor::of(ProviderKind::Anthropic), None);
    assert_eq!(Flavor::Tei.path("/tei"), "/tei/rerank");
}

#[test]
fn each_flavor_answer_becomes_cohere_shape() {
    let r = request();
    let cohere = Flavor::Cohere
        .answer(br#"{"id":"abc","results":[{"index":1,"relevance_score":0.9},{"index":2,"relevance_score":0.5}],"meta":{"api_version":{"version":"2"},"billed_units":{"search_units":1}}}"#)
        .unwrap();
    assert_eq!(cohere.search_units, Some(1));
    let out: Value =
        serde_json::from_slice(&client_answer(&r, &cohere, "req-1", Some(1), None)).unwrap();
    assert_eq!(out["id"], "abc");
    assert_eq!(out["meta"]["billed_units"]["search_units"], 1);
    assert_eq!(out["results"][0]["index"], 1);
    assert_eq!(
        out["results"][0]["document"],
        json!({"text": "Paris is the capital of France", "id": 7})
    );
    let voyage = Flavor::Voyage
        .answer(br#"{"object":"list","data":[{"index":2,"relevance_score":0.4},{"index":1,"relevance_score":0.8}],"model":"up","usage":{"total_tokens":31}}"#)
        .unwrap();
    assert_eq!(voyage.tokens, Some(31));
    let out: Value =
        serde_json::from_slice(&client_answer(&r, &voyage, "req-2", None, Some(31))).unwrap();
    assert_eq!(out["id"], "req-2");
    assert_eq!(out["results"][0]["index"], 1, "most relevant first: {out}");
    assert_eq!(out["meta"]["billed_units"]["input_tokens"], 31);
    // TEI ranks every text: the answer is cut to top_n here.
    let tei = Flavor::Tei
        .answer(br#"[{"index":1,"score":0.9},{"index":2,"score":0.3},{"index":0,"score":0.1}]"#)
        .unwrap();
    let out: Value = serde_json::from_slice(&client_answer(&r, &tei, "x", None, None)).unwrap();
    assert_eq!(out["results"].as_array().unwrap().len(), 2);
    assert!(Flavor::Jina.answer(b"[]").is_none());
}

#[test]
fn provider_errors_give_their_message() {
    assert_eq!(
        Flavor::Cohere
            .error_message(br#"{"id":"x","message":"invalid request: bad"}"#)
            .as_deref(),
        Some("invalid request: bad")
    );
    assert_eq!(
        Flavor::Voyage
            .error_message(br#"{"detail":"no"}"#)
            .as_deref(),
        Some("no")
    );
    assert_eq!(
        Flavor::Tei
            .error_message(br#"{"error":"too long","error_type":"Validation"}"#)
            .as_deref(),
        Some("too long")
    );
    assert_eq!(Flavor::Jina.error_message(b"<html>"), None);
}

#[test]
fn estimates_count_the_query_once_per_document() {
    let r = request();
    let bytes = |t: &str| (t.len() as u64).div_ceil(3);
    let q = bytes("capital of france");
    let expect = 3 * q
        + bytes("Berlin is in Germany")
        + bytes("Paris is the capital of France")
        + bytes("France");
    assert_eq!(r.estimated_tokens(bytes), expect);
    assert_eq!(r.estimated_search_units(bytes), 1);
}

#[test]
fn each_cohere_version_gets_its_own_knobs_and_others_none() {
    let r = parse(json!({
        "model": "rr", "query": "q", "documents": ["a", "b"],
        "max_tokens_per_doc": 512, "max_chunks_per_doc": 3, "priority": 7,
    }))
    .unwrap();
    let body = |f: Flavor| -> Value { serde_json::from_slice(&f.request(&r, "up")).unwrap() };
    let v2 = body(Flavor::Cohere);
    assert_eq!(
        (&v2["max_tokens_per_doc"], &v2["priority"]),
        (&json!(512), &json!(7))
    );
    assert!(v2.get("max_chunks_per_doc").is_none(), "{v2}");
    let v1 = body(Flavor::CohereV1);
    assert_eq!(v1["max_chunks_per_doc"], 3, "{v1}");
    assert!(
        v1.get("max_tokens_per_doc").is_none() && v1.get("priority").is_none(),
        "{v1}"
    );
    for f in [Flavor::Jina, Flavor::Voyage, Flavor::Tei] {
        let b = body(f);
        for k in ["max_tokens_per_doc", "max_chunks_per_doc", "priority"] {
            assert!(b.get(k).is_none(), "{f:?}: {b}");
        }
    }
    assert_eq!(
        Flavor::of_provider(ProviderKind::Cohere, "/cohere/v1"),
        Some(Flavor::CohereV1)
    );
    assert_eq!(
        Flavor::of_provider(ProviderKind::Cohere, "/v2"),
        Some(Flavor::Cohere)
    );
    assert_eq!(
        Flavor::of_provider(ProviderKind::Jina, "/v1"),
        Some(Flavor::Jina)
    );
    let bad = parse(json!({"model": "rr", "query": "q", "documents": ["a"], "priority": -1}));
    assert!(matches!(
        bad,
        Err(ApiError::InvalidField {
            param: "priority",
            ..
        })
    ));
}
