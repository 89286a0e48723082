//! Gemini pairs: golden fixtures (Gemini client → OpenAI and Anthropic providers, OpenAI and
//! Anthropic clients → Gemini provider), a validator of what the `google-genai` SDK relies on,
//! thought signatures and call ids across a round trip, errors, and split-anywhere streams.

use super::*;

const GEMINI_TO_OPENAI: Pair = Pair {
    client: ApiFamily::Gemini,
    upstream: ApiFamily::OpenAi,
};
const GEMINI_TO_ANTHROPIC: Pair = Pair {
    client: ApiFamily::Gemini,
    upstream: ApiFamily::Anthropic,
};
const OPENAI_TO_GEMINI: Pair = Pair {
    client: ApiFamily::OpenAi,
    upstream: ApiFamily::Gemini,
};
const ANTHROPIC_TO_GEMINI: Pair = Pair {
    client: ApiFamily::Anthropic,
    upstream: ApiFamily::Gemini,
};
const GEMINI_TO_GEMINI: Pair = Pair {
    client: ApiFamily::Gemini,
    upstream: ApiFamily::Gemini,
};

/// A Gemini request (no `stream` member: streaming is in the path).
fn gemini_request(pair: Pair, rel: &str, upstream_model: &str, stream: bool) -> Vec<u8> {
    let body = fixture(rel);
    let obj = RawObject::parse(&body).unwrap();
    pair.request(&obj, upstream_model, stream, body.len())
        .unwrap()
        .0
}

/// A Gemini client stream as `google-genai` reads it: `data: ` events only (no `event:` line,
/// no `[DONE]`), each a whole `GenerateContentResponse` with one candidate; function calls
/// whole, with object `args`; exactly one `finishReason`, on the last chunk, which alone
/// carries `usageMetadata`; or an `{"error":…}` chunk ending it.
fn validate_gemini(sse: &[u8]) -> Vec<Value> {
    let evs = events(sse);
    let mut chunks = Vec::new();
    let mut finishes = 0;
    for (i, (name, data)) in evs.iter().enumerate() {
        assert!(name.is_none(), "Gemini events have no event: line");
        assert_ne!(data, "[DONE]");
        let v: Value = serde_json::from_str(data).unwrap();
        let last = i + 1 == evs.len();
        if v.get("error").is_some() {
            assert!(data.starts_with("{\"error\":"), "{data}");
            assert!(v["error"]["code"].is_u64() && v["error"]["status"].is_string());
            assert!(last, "error must be last");
            chunks.push(v);
            continue;
        }
        let candidates = v["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 1);
        let c = &candidates[0];
        assert_eq!(c["index"], 0);
        assert_eq!(c["content"]["role"], "model");
        for p in c["content"]["parts"].as_array().unwrap() {
            if let Some(call) = p.get("functionCall") {
                assert!(call["name"].is_string() && call["args"].is_object(), "{p}");
            } else {
                assert!(p["text"].is_string(), "{p}");
            }
        }
        if c.get("finishReason").is_some() {
            finishes += 1;
            assert!(last, "finishReason must be on the last chunk");
            assert!(v["usageMetadata"]["promptTokenCount"].is_u64());
            assert!(v["usageMetadata"]["totalTokenCount"].is_u64());
        } else {
            assert!(v.get("usageMetadata").is_none(), "usage before the end");
        }
        chunks.push(v);
    }
    if chunks.last().is_none_or(|c| c.get("error").is_none()) {
        assert_eq!(finishes, 1, "one finishReason");
    }
    chunks
}

/// The parts of every chunk, in order.
fn stream_parts(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .flat_map(|c| {
            c["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Gemini client → OpenAI provider
// ---------------------------------------------------------------------------------------------

#[test]
fn gemini_to_openai_request() {
    let body = gemini_request(
        GEMINI_TO_OPENAI,
        "gemini_to_openai/request.json",
        "gpt-4o",
        true,
    );
    golden("gemini_to_openai/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["stream"], true);
    // Uppercase OpenAPI types became JSON Schema's lowercase ones.
    assert_eq!(
        v["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(
        v["response_format"]["json_schema"]["schema"]["type"],
        "object"
    );
    // Id-less calls got ids, and each response the id of its call.
    let calls = &v["messages"][2]["tool_calls"];
    assert_eq!(v["messages"][3]["tool_call_id"], calls[0]["id"]);
    assert_eq!(v["messages"][4]["tool_call_id"], calls[1]["id"]);
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert_eq!(v["tool_choice"]["function"]["name"], "get_weather");
}

#[test]
fn gemini_to_openai_response() {
    let body = fixture("anthropic_to_openai/response.json");
    let done = GEMINI_TO_OPENAI.complete(200, &body, CREATED);
    golden(
        "gemini_to_openai/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let v: Value = serde_json::from_slice(done.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][1]["functionCall"]["args"],
        json!({"city": "Paris"})
    );
    assert_eq!(v["usageMetadata"]["cachedContentTokenCount"], 1024);
}

#[test]
fn gemini_to_openai_stream() {
    let input = fixture("anthropic_to_openai/stream.sse");
    let (out, usage) = translate_stream(GEMINI_TO_OPENAI, false, &[&input]);
    golden("gemini_to_openai/stream.expected.sse", &out);
    let chunks = validate_gemini(&out);
    let parts = stream_parts(&chunks);
    let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
    assert_eq!(text, "Météo à Paris 🌍");
    let calls: Vec<&Value> = parts.iter().filter_map(|p| p.get("functionCall")).collect();
    assert_eq!(calls.len(), 2);
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 80);
    assert_eq!(usage.unwrap().input_tokens, 80);
}

// ---------------------------------------------------------------------------------------------
// Gemini client → Anthropic provider
// ---------------------------------------------------------------------------------------------

#[test]
fn gemini_to_anthropic_request() {
    let body = gemini_request(
        GEMINI_TO_ANTHROPIC,
        "gemini_to_anthropic/request.json",
        "claude-sonnet-4-5",
        false,
    );
    golden("gemini_to_anthropic/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let turn = &v["messages"][1]["content"];
    // The thoughts and the signature of the call after them make one signed thinking block.
    assert_eq!(turn[0]["type"], "thinking");
    assert_eq!(
        turn[0]["thinking"],
        "The user wants the weather. I will call the tool."
    );
    assert_eq!(turn[0]["signature"], "c2lnLTE=");
    // Two calls of one tool: each result answers its own call, by position.
    let results = &v["messages"][2]["content"];
    assert_eq!(results[0]["tool_use_id"], turn[1]["id"]);
    assert_eq!(results[1]["tool_use_id"], turn[2]["id"]);
    assert_eq!(results[1]["content"], "{\"result\":\"21°C\"}");
    assert_eq!(
        v["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(
        v["tools"][0]["input_schema"]["properties"]["days"]["type"],
        "integer"
    );
}

#[test]
fn gemini_json_mode_reaches_anthropic_as_the_json_tool() {
    // Beside the request's own function declarations the emulation cannot work: 400.
    let body = fixture("gemini_to_openai/request.json");
    let obj = RawObject::parse(&body).unwrap();
    let e = GEMINI_TO_ANTHROPIC
        .request(&obj, "c", false, 0)
        .unwrap_err();
    assert_eq!(e.api_error().status(), 400);
    assert!(e.to_string().contains("JSON mode"), "{e}");
    // Alone, the schema becomes the forced tool.
    let body = br#"{"contents":[{"role":"user","parts":[{"text":"a city"}]}],
        "generationConfig":{"responseMimeType":"application/json",
        "responseSchema":{"type":"OBJECT","properties":{"name":{"type":"STRING"}}}}}"#;
    let (out, _) = GEMINI_TO_ANTHROPIC
        .request(&RawObject::parse(body).unwrap(), "c", false, 0)
        .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let tool = crate::translator::json_tool::JSON_TOOL;
    assert_eq!(v["tools"][0]["name"], tool, "{v}");
    assert_eq!(v["tool_choice"]["name"], tool, "{v}");
    assert_eq!(
        v["tools"][0]["input_schema"]["properties"]["name"]["type"], "string",
        "{v}"
    );
}

#[test]
fn gemini_to_anthropic_response() {
    let body = fixture("openai_to_anthropic/response.json");
    let done = GEMINI_TO_ANTHROPIC.complete(200, &body, CREATED);
    golden(
        "gemini_to_anthropic/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let u = done.usage.unwrap();
    assert_eq!((u.input_tokens, u.output_tokens), (582, 91));
}

#[test]
fn gemini_to_anthropic_stream() {
    let input = fixture("openai_to_anthropic/stream.sse");
    let (out, usage) = translate_stream(GEMINI_TO_ANTHROPIC, false, &[&input]);
    golden("gemini_to_anthropic/stream.expected.sse", &out);
    let chunks = validate_gemini(&out);
    let last = chunks.last().unwrap();
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 89);
    assert_eq!(usage.unwrap().output_tokens, 89);
}

// ---------------------------------------------------------------------------------------------
// OpenAI client → Gemini provider
// ---------------------------------------------------------------------------------------------

#[test]
fn openai_to_gemini_request() {
    let body = gemini_request(
        OPENAI_TO_GEMINI,
        "openai_to_anthropic/request.json",
        "gemini-2.5-flash",
        true,
    );
    golden("openai_to_gemini/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v.get("model").is_none() && v.get("stream").is_none());
    // Both results in one user turn, named after their calls.
    let results = &v["contents"][2]["parts"];
    assert_eq!(results[0]["functionResponse"]["name"], "get_weather");
    assert_eq!(results[1]["functionResponse"]["name"], "get_time");
    assert_eq!(v["generationConfig"]["maxOutputTokens"], 512);
}

#[test]
fn openai_json_mode_reaches_gemini() {
    let body = br#"{"model":"g","messages":[{"role":"user","content":"hi"}],
        "response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object"}}}}"#;
    let obj = RawObject::parse(body).unwrap();
    let (out, _) = OPENAI_TO_GEMINI.request(&obj, "g", false, 0).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["generationConfig"]["responseMimeType"],
        "application/json"
    );
    assert_eq!(
        v["generationConfig"]["responseJsonSchema"],
        json!({"type": "object"})
    );
}

#[test]
fn openai_to_gemini_response() {
    let body = fixture("openai_to_gemini/response.json");
    let done = OPENAI_TO_GEMINI.complete(200, &body, CREATED);
    golden(
        "openai_to_gemini/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let v: Value = serde_json::from_slice(done.body.as_deref().unwrap()).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let u = done.usage.unwrap();
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.reasoning_tokens
        ),
        (1200, 100, 1024, 60)
    );
}

#[test]
fn openai_to_gemini_stream() {
    let input = fixture("openai_to_gemini/stream.sse");
    for include_usage in [true, false] {
        let (out, usage) = translate_stream(OPENAI_TO_GEMINI, include_usage, &[&input]);
        if include_usage {
            golden("openai_to_gemini/stream.expected.sse", &out);
        }
        let chunks = validate_openai(&out, include_usage);
        let calls: Vec<&Value> = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .flat_map(|c| c["delta"]["tool_calls"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(
            calls.len(),
            4,
            "two calls, each an opening and an arguments delta"
        );
        assert_eq!(calls.last().unwrap()["index"], 1);
        let u = usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_tokens),
            (120, 42, 64)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic client → Gemini provider
// ---------------------------------------------------------------------------------------------

#[test]
fn anthropic_to_gemini_request() {
    let body = gemini_request(
        ANTHROPIC_TO_GEMINI,
        "anthropic_to_openai/request.json",
        "gemini-2.5-pro",
        true,
    );
    golden("anthropic_to_gemini/request.expected.json", &body);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let turn = &v["contents"][1]["parts"];
    assert_eq!(turn[0], json!({"text": "Need the tool.", "thought": true}));
    // The thinking block's signature goes onto the part after it.
    assert_eq!(turn[1]["thoughtSignature"], "c2lnbmF0dXJl");
    assert_eq!(
        v["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        2000
    );
    assert_eq!(v["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
}

#[test]
fn anthropic_to_gemini_response() {
    let body = fixture("openai_to_gemini/response.json");
    let done = ANTHROPIC_TO_GEMINI.complete(200, &body, CREATED);
    golden(
        "anthropic_to_gemini/response.expected.json",
        done.body.as_deref().unwrap(),
    );
    let v: Value = serde_json::from_slice(done.body.as_deref().unwrap()).unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["usage"]["output_tokens"], 100);
}

#[test]
fn anthropic_to_gemini_stream() {
    let input = fixture("openai_to_gemini/stream.sse");
    let (out, _) = translate_stream(ANTHROPIC_TO_GEMINI, false, &[&input]);
    golden("anthropic_to_gemini/stream.expected.sse", &out);
    let evs = validate_anthropic(&out);
    let delta = &evs[evs.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 42);
    assert_eq!(delta["usage"]["cache_read_input_tokens"], 64);
}

/// What an Anthropic client gets from Gemini and echoes back reaches Gemini as Gemini sent it:
/// the signature on the first call, the calls and their results paired by name.
#[test]
fn thought_signatures_and_calls_survive_a_round_trip_through_another_dialect() {
    let body = fixture("openai_to_gemini/response.json");
    let done = ANTHROPIC_TO_GEMINI.complete(200, &body, CREATED);
    let msg: Value = serde_json::from_slice(done.body.as_deref().unwrap()).unwrap();
    let calls: Vec<&Value> = msg["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect();
    let next = json!({"model": "g", "max_tokens": 100, "messages": [
        {"role": "user", "content": "Weather in Paris and Lyon?"},
        {"role": "assistant", "content": msg["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": "21°C"},
            {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "18°C"},
        ]},
    ]});
    let raw = next.to_string();
    let obj = RawObject::parse(raw.as_bytes()).unwrap();
    let (out, _) = ANTHROPIC_TO_GEMINI.request(&obj, "g", false, 0).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let original: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["contents"][1]["parts"],
        original["candidates"][0]["content"]["parts"]
    );
    let results = &v["contents"][2]["parts"];
    assert_eq!(results[0]["functionResponse"]["name"], "get_weather");
    assert_eq!(
        results[0]["functionResponse"]["response"],
        json!({"result": "21°C"})
    );
}

// ---------------------------------------------------------------------------------------------
// Gemini → Gemini, and errors
// ---------------------------------------------------------------------------------------------

#[test]
fn gemini_passthrough_keeps_the_body_and_reads_usage() {
    let body = fixture("gemini_to_anthropic/request.json");
    let out = gemini_request(
        GEMINI_TO_GEMINI,
        "gemini_to_anthropic/request.json",
        "x",
        true,
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap(),
        serde_json::from_slice::<Value>(&body).unwrap()
    );
    let input = fixture("openai_to_gemini/stream.sse");
    let (out, usage) = translate_stream(GEMINI_TO_GEMINI, false, &[&input]);
    assert_eq!(out, input);
    assert_eq!(usage.unwrap().cache_read_tokens, 64);
    let resp = fixture("openai_to_gemini/response.json");
    let done = GEMINI_TO_GEMINI.complete(200, &resp, 0);
    assert_eq!(done.body, None);
    assert_eq!(done.usage.unwrap().reasoning_tokens, 60);
}

#[test]
fn errors_cross_between_gemini_and_the_other_dialects() {
    // Gemini provider errors → OpenAI and Anthropic clients.
    let err = br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
    let v: Value =
        serde_json::from_slice(&OPENAI_TO_GEMINI.complete(429, err, 0).body.unwrap()).unwrap();
    assert_eq!(v["error"]["message"], "Resource has been exhausted");
    let v: Value =
        serde_json::from_slice(&ANTHROPIC_TO_GEMINI.complete(429, err, 0).body.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(GEMINI_TO_GEMINI.complete(429, err, 0).body, None);
    // OpenAI and Anthropic errors, and bodies that are none → Gemini clients.
    let openai = br#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"upstream_unavailable"}}"#;
    let anthropic =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    for (pair, status, body, want) in [
        (GEMINI_TO_OPENAI, 400, &openai[..], "INVALID_ARGUMENT"),
        (GEMINI_TO_ANTHROPIC, 503, &anthropic[..], "UNAVAILABLE"),
        (GEMINI_TO_OPENAI, 502, b"<html>", "INTERNAL"),
        // Envoy's local reply (OpenAI-shaped, string code) is not a Gemini error.
        (GEMINI_TO_GEMINI, 503, &openai[..], "UNAVAILABLE"),
    ] {
        let v: Value =
            serde_json::from_slice(&pair.complete(status, body, 0).body.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], status, "{v}");
        assert_eq!(v["error"]["status"], want, "{v}");
    }
    // Mid-stream, both ways.
    let sse = concat!(
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hi\"}]},\"index\":0}]}\r\n\r\n",
        "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n",
    );
    let (out, _) = translate_stream(ANTHROPIC_TO_GEMINI, false, &[sse.as_bytes()]);
    let evs = validate_anthropic(&out);
    assert_eq!(evs.last().unwrap()["error"]["type"], "overloaded_error");
    let (out, _) = translate_stream(OPENAI_TO_GEMINI, false, &[sse.as_bytes()]);
    validate_openai(&out, false);
    let (_, last) = events(&out).pop().unwrap();
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["error"]["message"], "The model is overloaded.");
    let sse = concat!(
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let (out, _) = translate_stream(GEMINI_TO_ANTHROPIC, false, &[sse.as_bytes()]);
    let chunks = validate_gemini(&out);
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], 529);
    assert_eq!(last["error"]["message"], "Overloaded");
}

#[test]
fn gemini_requests_the_other_apis_cannot_express_are_refused() {
    for body in [
        &br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"candidateCount":2}}"#[..],
        br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"tools":[{"googleSearch":{}}]}"#,
        br#"{"contents":[{"role":"user","parts":[{"inlineData":{"mimeType":"audio/wav","data":"AAAA"}}]}]}"#,
        br#"{"contents":[{"role":"user","parts":[{"executableCode":{"code":"1"}}]}]}"#,
        br#"{"contents":"nope"}"#,
        br#"{}"#,
    ] {
        let obj = RawObject::parse(body).unwrap();
        let e = GEMINI_TO_OPENAI.request(&obj, "x", false, 0).unwrap_err();
        assert_eq!(e.api_error().status(), 400, "{}", String::from_utf8_lossy(body));
    }
    // Legacy completions go to generateContent, embeddings to their own API (issue 15).
    assert_eq!(
        Pair::route(Endpoint::Completions, ApiFamily::Gemini)
            .unwrap()
            .1,
        Endpoint::GenerateContent
    );
    assert!(Pair::route(Endpoint::Embeddings, ApiFamily::Gemini).is_ok());
}

#[test]
fn gemini_paths_route_to_each_provider() {
    assert_eq!(
        Pair::route(Endpoint::GenerateContent, ApiFamily::OpenAi).unwrap(),
        (GEMINI_TO_OPENAI, Endpoint::ChatCompletions)
    );
    assert_eq!(
        Pair::route(Endpoint::GenerateContent, ApiFamily::Anthropic).unwrap(),
        (GEMINI_TO_ANTHROPIC, Endpoint::Messages)
    );
    assert_eq!(
        Pair::route(Endpoint::Messages, ApiFamily::Gemini).unwrap(),
        (ANTHROPIC_TO_GEMINI, Endpoint::GenerateContent)
    );
}

proptest! {
    #[test]
    fn gemini_pairs_translate_the_same_wherever_the_upstream_splits(
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
        include_usage in any::<bool>(),
    ) {
        for (pair, rel) in [
            (OPENAI_TO_GEMINI, "openai_to_gemini/stream.sse"),
            (ANTHROPIC_TO_GEMINI, "openai_to_gemini/stream.sse"),
            (GEMINI_TO_GEMINI, "openai_to_gemini/stream.sse"),
            (GEMINI_TO_OPENAI, "anthropic_to_openai/stream.sse"),
            (GEMINI_TO_ANTHROPIC, "openai_to_anthropic/stream.sse"),
        ] {
            let input = fixture(rel);
            let (whole, whole_usage) = translate_stream(pair, include_usage, &[&input]);
            let (split, split_usage) = translate_stream(pair, include_usage, &split_at(&input, &cuts));
            prop_assert_eq!(&whole, &split, "{:?} {}", pair, rel);
            prop_assert_eq!(whole_usage, split_usage);
        }
    }
}

#[test]
fn thinking_config_is_read_in_either_spelling() {
    // `google-genai` 3.x sends `thinking_budget`; the REST reference spells `thinkingBudget`.
    for config in [
        json!({"thinkingBudget": 2048, "includeThoughts": true}),
        json!({"thinking_budget": 2048, "include_thoughts": true}),
    ] {
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"thinkingConfig": config}})
        .to_string();
        let obj = RawObject::parse(body.as_bytes()).unwrap();
        let (out, _) = GEMINI_TO_ANTHROPIC.request(&obj, "c", false, 0).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["thinking"]["budget_tokens"], 2048, "{config}");
    }
}
