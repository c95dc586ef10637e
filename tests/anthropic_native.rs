//! An Anthropic-native provider (`type = "anthropic"`: the mock's Anthropic mode) through the real binary. For
//! Anthropic clients the request and the answer pass byte for byte (stream, JSON, errors), the provider's key
//! replaces the client's, unsupported betas and fields are removed and counted, and the record reads Anthropic's
//! usage (cache reads and writes priced); the official Anthropic SDK on this route. Chat and Responses clients are
//! translated both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    MockUpstream, anthropic_provider, client, content_type, read_body, recent_records, start_proxy,
};
use serde_json::{Value, json};

/// A Messages request for the native model, as Claude Code would shape it (system blocks, a cache mark).
fn native_body(stream: bool) -> Value {
    json!({
        "model": "claude-mock",
        "max_tokens": 1024,
        "stream": stream,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Say hello."}],
        "metadata": {"user_id": "user_abc"}
    })
}

/// POSTs raw `body` bytes to `url` with Anthropic's headers and `extra`.
async fn post_raw(url: &str, body: &[u8], extra: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client()
        .post(url)
        .header("x-api-key", "sk-ant-client-key")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The body as text with the mock's per-request number in an error's `request_id` (`req_mockN`) left out:
/// the only byte that differs between two calls.
fn without_request_seq(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.split_once("req_mock") {
        Some((head, tail)) => format!(
            "{head}req_mock{}",
            tail.trim_start_matches(|c: char| c.is_ascii_digit())
        ),
        None => text.into_owned(),
    }
}

#[tokio::test]
async fn request_and_answer_pass_byte_for_byte_stream_json_and_errors() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    let cases: [(bool, &[(&str, &str)]); 5] = [
        (false, &[]),
        (true, &[]),
        (
            true,
            &[("x-mock-reasoning", "2"), ("x-mock-tool-call", "1")],
        ),
        (false, &[("x-mock-tool-call", "1")]),
        (false, &[("x-mock-status", "400")]),
    ];
    for (stream, mock_headers) in cases {
        let body = serde_json::to_vec_pretty(&native_body(stream)).unwrap();
        let mut headers = vec![
            ("x-mock-id", "fixed"),
            (
                "anthropic-beta",
                "claude-code-20250219,interleaved-thinking-2025-05-14",
            ),
        ];
        headers.extend_from_slice(mock_headers);
        let proxied = post_raw(&proxy.url("/v1/messages?beta=true"), &body, &headers).await;
        let status = proxied.status();
        let kind = content_type(&proxied);
        let (proxied_bytes, clean) = read_body(proxied).await;
        assert!(clean);

        // What reached the provider: the client's bytes, its Anthropic headers, the provider's key.
        let upstream = mock.last_request().unwrap();
        assert_eq!(upstream.path, "/v1/messages");
        assert_eq!(upstream.query.as_deref(), Some("beta=true"));
        assert_eq!(&upstream.body[..], &body[..], "the body went as it came");
        assert_eq!(upstream.header("x-api-key"), Some("mock-provider-key"));
        assert_eq!(upstream.header("authorization"), None);
        assert_eq!(upstream.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(
            upstream.header("anthropic-beta"),
            Some("claude-code-20250219,interleaved-thinking-2025-05-14")
        );

        // The same request straight to the mock gives the same bytes.
        let direct = post_raw(
            &format!("http://{}/v1/messages", mock.addr()),
            &body,
            &headers,
        )
        .await;
        assert_eq!(direct.status(), status);
        assert_eq!(content_type(&direct), kind);
        let (direct_bytes, _) = read_body(direct).await;
        assert_eq!(
            without_request_seq(&proxied_bytes),
            without_request_seq(&direct_bytes),
            "stream={stream} {mock_headers:?}"
        );
        assert!(
            kind.starts_with(if stream && status == 200 {
                "text/event-stream"
            } else {
                "application/json"
            }),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn the_record_reads_anthropic_usage_with_cache_reads_and_writes_priced() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    for (n, stream) in [false, true].into_iter().enumerate() {
        let body = serde_json::to_vec(&native_body(stream)).unwrap();
        let headers = [
            ("x-mock-cache-read", "200"),
            ("x-mock-cache-write", "50"),
            ("x-mock-chunks", "6"),
        ];
        let response = post_raw(&proxy.url("/v1/messages"), &body, &headers).await;
        assert_eq!(response.status(), 200);
        let (answer, _) = read_body(response).await;
        // The mock reports `input_tokens` as a quarter of the body's length, and 6 output tokens.
        let input = (body.len() / 4) as u64;
        if !stream {
            let message: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(message["usage"]["input_tokens"], input);
            assert_eq!(message["usage"]["cache_read_input_tokens"], 200);
        }
        let records = recent_records(&proxy, n + 1).await;
        let record = &records[0];
        assert_eq!(record["streaming"], stream);
        assert_eq!(record["model"], "mock-anthropic/claude-mock");
        assert_eq!(record["client_api"], "messages");
        assert_eq!(record["status"], 200);
        assert_eq!(record["error_kind"], Value::Null, "{record}");
        assert_eq!(record["prompt_reported"], input + 250, "{record}");
        assert_eq!(record["prompt_tokens"], input + 250);
        assert_eq!(record["cached_reported"], 200);
        assert_eq!(record["cache_write_reported"], 50);
        assert_eq!(record["completion_reported"], 6);
        assert_eq!(record["tokens_estimated"], false);
        assert_eq!(record["finish_reason"], "end_turn");
        assert!(
            record["completion_estimated"].as_u64().unwrap() > 0,
            "the answer's text was counted too: {record}"
        );
        assert!(
            record["prompt_estimated"].as_u64().unwrap() > 0,
            "the prompt was counted: {record}"
        );
        let expected = (input as f64 * 1.0 + 200.0 * 0.1 + 50.0 * 1.25 + 6.0 * 5.0) / 1e6;
        let cost = record["cost_usd"].as_f64().unwrap();
        assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");
    }
}

#[tokio::test]
async fn unsupported_betas_and_fields_are_removed_and_counted_and_the_model_mapped() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        "{}\n[model_aliases]\n\"claude-*\" = \"mock-anthropic/claude-mock\"\n",
        anthropic_provider(
            &mock,
            "anthropic_betas = [\"claude-code-20250219\"]\nanthropic_drop_fields = [\"context_management\"]"
        )
    );
    let proxy = start_proxy(&mock, &extra).await;
    let mut body = native_body(false);
    body["model"] = json!("claude-sonnet-4-5-20250929");
    body["context_management"] = json!({"edits": [{"type": "clear_tool_uses_20250919"}]});
    let body = serde_json::to_vec(&body).unwrap();
    let response = post_raw(
        &proxy.url("/v1/messages"),
        &body,
        &[(
            "anthropic-beta",
            "claude-code-20250219,context-management-2025-06-27,effort-2025-11-24",
        )],
    )
    .await;
    assert_eq!(response.status(), 200);
    let upstream = mock.last_request().unwrap();
    assert_eq!(
        upstream.header("anthropic-beta"),
        Some("claude-code-20250219")
    );
    let sent = upstream.json().unwrap();
    assert_eq!(
        sent["model"], "claude-mock",
        "the alias mapped to the upstream id"
    );
    assert!(sent.get("context_management").is_none());
    assert_eq!(
        sent["system"],
        native_body(false)["system"],
        "the rest as it was"
    );
    assert_eq!(sent["metadata"], json!({"user_id": "user_abc"}));
    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["dropped_fields"], 3, "{}", records[0]);
}

#[tokio::test]
async fn a_chat_client_of_a_native_model_is_translated_both_ways() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-cache-read", "40")
        .json(&common::chat_body("claude-mock", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("application/json"));
    let completion: Value = response.json().await.unwrap();
    assert_eq!(completion["object"], "chat.completion");
    let message = &completion["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    assert!(message["content"].as_str().unwrap().starts_with("tok0 "));
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");

    // The provider got a Messages request: the system prompt at the top, `max_tokens` (Anthropic requires it).
    let upstream = mock.last_request().unwrap();
    assert_eq!(upstream.path, "/v1/messages");
    assert_eq!(upstream.header("x-api-key"), Some("mock-provider-key"));
    assert_eq!(upstream.header("anthropic-version"), Some("2023-06-01"));
    let sent = upstream.json().unwrap();
    assert_eq!(sent["model"], "claude-mock");
    assert_eq!(sent["system"][0]["text"], "You are terse.");
    assert_eq!(sent["messages"][0]["role"], "user");
    assert!(sent["max_tokens"].as_u64().unwrap() > 0);
    let input = (upstream.body.len() / 4) as u64;
    assert_eq!(completion["usage"]["prompt_tokens"], input + 40);
    assert_eq!(
        completion["usage"]["prompt_tokens_details"]["cached_tokens"],
        40
    );

    // The record read the provider's Anthropic usage.
    let records = recent_records(&proxy, 1).await;
    let record = &records[0];
    assert_eq!(record["client_api"], "chat");
    assert_eq!(record["prompt_reported"], input + 40, "{record}");
    assert_eq!(record["cached_reported"], 40);
    assert_eq!(record["finish_reason"], "end_turn");
    assert_eq!(record["error_kind"], Value::Null);
}

#[tokio::test]
async fn a_chat_client_streams_from_a_native_model_with_tool_calls_and_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    let mut body = common::chat_body("claude-mock", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-tool-call", "1")
        .header("x-mock-chunks", "3")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("text/event-stream"));
    let (bytes, clean) = read_body(response).await;
    assert!(clean);
    let text = String::from_utf8(bytes).unwrap();
    let data: Vec<&str> = text
        .split("\n\n")
        .filter_map(|event| event.trim().strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        content,
        (0..3)
            .map(mock_upstream::sse_chunk_text)
            .collect::<String>()
    );
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    let usage = chunks.last().unwrap();
    assert_eq!(
        usage["choices"],
        json!([]),
        "the usage chunk the client asked for"
    );
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["finish_reason"], "tool_use");
    assert_eq!(records[0]["tokens_estimated"], false, "{}", records[0]);
}

#[tokio::test]
async fn a_native_providers_error_reaches_a_chat_client_as_a_chat_error() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-status", "400")
        .json(&common::chat_body("claude-mock", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mock upstream error"),
        "{error}"
    );
}

#[tokio::test]
async fn a_responses_client_of_a_native_model_gets_a_response() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    let response = client()
        .post(proxy.url("/v1/responses"))
        .json(&json!({"model": "claude-mock", "input": "Say hello.", "store": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed", "{answer}");
    assert!(
        answer["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("tok0 "),
        "{answer}"
    );
    assert_eq!(mock.last_request().unwrap().path, "/v1/messages");
}

#[tokio::test]
async fn the_official_anthropic_python_sdk_works_on_the_native_route() {
    let Some(python) = common::anthropic_sdk_python() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    common::run_anthropic_sdk_script(&python, &proxy, "claude-mock").await;
    let upstream = mock.requests();
    assert!(
        upstream.iter().all(|r| r.path == "/v1/messages"),
        "every call went to the provider's Messages endpoint"
    );
    let tool_result = upstream
        .iter()
        .filter_map(|r| r.json())
        .flat_map(|body| body["messages"].as_array().cloned().unwrap_or_default())
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|block| block["type"] == "tool_result")
        .expect("the tool result went upstream as Anthropic's block");
    assert_eq!(tool_result["content"], "18 C, sunny");
}

#[tokio::test]
async fn masking_rewrites_a_bulky_tool_result_block_on_the_native_route() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        "{}\n[context.masking]\nenabled = true\nthreshold_tokens = 200\npreview_chars = 120\n",
        anthropic_provider(&mock, "")
    );
    let proxy = start_proxy(&mock, &extra).await;
    let bulky: String = (0..300)
        .map(|i| format!("src/module/file_{i}.rs: fn item_{i}() {{}}\n"))
        .collect();
    let small = "ok";
    let body = json!({
        "model": "claude-mock",
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": "Look around."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Reading.", "signature": "c2lnbmF0dXJl"},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "src"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"cmd": "true"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": bulky, "cache_control": {"type": "ephemeral"}},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": small}]}
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "Seen."}]},
            {"role": "user", "content": "Now fix it."}
        ]
    });
    let response = post_raw(
        &proxy.url("/v1/messages"),
        &serde_json::to_vec(&body).unwrap(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let results = &sent["messages"][2]["content"];
    let masked = results[0]["content"].as_str().unwrap();
    assert!(masked.starts_with("[kimi-proxy masked"), "{masked}");
    assert!(masked.contains("`Read`"), "names the tool: {masked}");
    assert!(masked.contains("src/module/file_0.rs"), "preview: {masked}");
    assert_eq!(results[0]["tool_use_id"], "toolu_1");
    assert_eq!(results[0]["cache_control"], json!({"type": "ephemeral"}));
    assert_eq!(
        results[1], body["messages"][2]["content"][1],
        "a small result stays"
    );
    // Everything else as the client sent it (the thinking signature included).
    assert_eq!(sent["messages"][1], body["messages"][1]);
    assert_eq!(sent["messages"][4], body["messages"][4]);

    let record = &recent_records(&proxy, 1).await[0];
    let context = &record["context"];
    assert_eq!(context["transforms"], "mask", "{record}");
    assert_eq!(context["masked_messages"], 1);
    let before = context["tokens_before"].as_u64().unwrap();
    let after = context["tokens_after"].as_u64().unwrap();
    assert!(after * 5 < before, "{before} -> {after}");
    assert_eq!(record["tokens_saved"].as_u64().unwrap(), before - after);

    // The original is kept, as for chat requests.
    let at = masked.find("; id ").unwrap() + 5;
    let id = &masked[at..at + 32];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let response = client()
            .get(proxy.url(&format!("/api/mask/{id}")))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let kept: Value = response.json().await.unwrap();
            assert_eq!(kept["content"], bulky.as_str());
            assert_eq!(kept["tool"], "Read");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the original was not kept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn count_tokens_goes_to_a_provider_that_offers_it_and_is_local_otherwise() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        "{}\n[model_aliases]\n\"claude-*\" = \"mock-anthropic/claude-mock\"\n",
        anthropic_provider(
            &mock,
            "count_tokens = true\nanthropic_betas = [\"token-counting-2024-11-01\"]\nanthropic_drop_fields = [\"context_management\"]"
        )
    );
    let proxy = start_proxy(&mock, &extra).await;
    let mut body = native_body(false);
    body.as_object_mut().unwrap().remove("max_tokens");
    body["model"] = json!("claude-sonnet-4-5-20250929");
    body["context_management"] = json!({"edits": []});
    let bytes = serde_json::to_vec(&body).unwrap();
    let response = post_raw(
        &proxy.url("/v1/messages/count_tokens?beta=true"),
        &bytes,
        &[(
            "anthropic-beta",
            "token-counting-2024-11-01,context-management-2025-06-27",
        )],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        !response.headers().contains_key("x-kimi-proxy-estimate"),
        "the provider's count is not an estimate"
    );
    let count: Value = response.json().await.unwrap();
    let upstream = mock.last_request().unwrap();
    assert_eq!(upstream.path, "/v1/messages/count_tokens");
    assert_eq!(upstream.query.as_deref(), Some("beta=true"));
    assert_eq!(upstream.header("x-api-key"), Some("mock-provider-key"));
    assert_eq!(upstream.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        upstream.header("anthropic-beta"),
        Some("token-counting-2024-11-01")
    );
    let sent = upstream.json().unwrap();
    assert_eq!(sent["model"], "claude-mock");
    assert!(sent.get("context_management").is_none());
    // The mock counts a quarter of the body it received: the provider's number, not the proxy's.
    assert_eq!(
        count,
        json!({"input_tokens": upstream.body.len() / 4}),
        "the mock's own count"
    );
    // The provider's errors come back as it sent them.
    let response = post_raw(
        &proxy.url("/v1/messages/count_tokens"),
        &bytes,
        &[("x-mock-status", "400")],
    )
    .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mock upstream error"),
        "{error}"
    );

    // Without `count_tokens` the same provider's requests are counted locally, nothing goes upstream.
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, "")).await;
    let mut body = native_body(false);
    body.as_object_mut().unwrap().remove("max_tokens");
    let response = post_raw(
        &proxy.url("/v1/messages/count_tokens"),
        &serde_json::to_vec(&body).unwrap(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-kimi-proxy-estimate"));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn observation_masking_and_masking_rewrite_old_tool_results_on_the_native_route() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        "{}\n[context.observation]\nenabled = true\nkeep_last_tool_turns = 1\n\
         [context.masking]\nenabled = true\nthreshold_tokens = 200\n",
        anthropic_provider(&mock, "")
    );
    let proxy = start_proxy(&mock, &extra).await;
    let listing = |tag: &str| -> String {
        (0..300)
            .map(|i| format!("src/{tag}/file_{i}.rs: fn item_{i}() {{}}\n"))
            .collect()
    };
    let tool_use = |id: &str, name: &str| {
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": id, "name": name, "input": {}}
        ]})
    };
    let body = json!({
        "model": "claude-mock",
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": "Look around."},
            tool_use("toolu_1", "Read"),
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": listing("a"), "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_2", "name": "Grep", "input": {}},
                {"type": "tool_use", "id": "toolu_3", "name": "Bash", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": listing("b")}]},
                {"type": "tool_result", "tool_use_id": "toolu_3", "content": "exit status 2", "is_error": true}
            ]},
            tool_use("toolu_4", "Read"),
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_4", "content": listing("c")}
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "Seen."}]},
            {"role": "user", "content": "Now fix it."}
        ]
    });
    let response = post_raw(
        &proxy.url("/v1/messages"),
        &serde_json::to_vec(&body).unwrap(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 9, "no message added or removed");
    // Results older than the last tool turn: the observation placeholder, the block's other members kept.
    let first = &messages[2]["content"][0];
    let text = first["content"].as_str().unwrap();
    assert!(
        text.starts_with("[kimi-proxy: earlier result of tool `Read` omitted ("),
        "{text}"
    );
    assert_eq!(first["tool_use_id"], "toolu_1");
    assert_eq!(first["cache_control"], json!({"type": "ephemeral"}));
    let second = &messages[4]["content"];
    assert!(
        second[0]["content"]
            .as_str()
            .unwrap()
            .contains("tool `Grep` omitted"),
        "{second}"
    );
    assert_eq!(
        second[1], body["messages"][4]["content"][1],
        "an error stays"
    );
    // The last tool turn's result is not observed, but masked (bulky).
    let last = messages[6]["content"][0]["content"].as_str().unwrap();
    assert!(last.starts_with("[kimi-proxy masked"), "{last}");
    assert!(last.contains("src/c/file_0.rs"), "{last}");
    for i in [0, 1, 3, 5, 7, 8] {
        assert_eq!(messages[i], body["messages"][i], "message {i} as sent");
    }

    let record = &recent_records(&proxy, 1).await[0];
    let context = &record["context"];
    assert_eq!(context["transforms"], "observe,mask", "{record}");
    assert_eq!(context["observed_messages"], 2);
    assert_eq!(context["masked_messages"], 1);
    let before = context["tokens_before"].as_u64().unwrap();
    let after = context["tokens_after"].as_u64().unwrap();
    let after_masking = context["after_masking"].as_u64().unwrap();
    assert!(after * 20 < before, "{before} -> {after}");
    assert!(after < after_masking && after_masking < before, "{context}");
    assert_eq!(record["tokens_saved"].as_u64().unwrap(), before - after);
}

/// The official SDK asks the same deterministic question three times: the answer, then the same answer from the
/// cache, then the cached answer replayed as Anthropic's event stream (which the SDK assembles into the same
/// message). One request reaches the provider.
const CACHE_SCRIPT: &str = r#"
import os, anthropic
client = anthropic.Anthropic(
    base_url=os.environ["PROXY_URL"], api_key="sk-ant-client-key",
    default_headers={"x-mock-tool-call": "1", "x-mock-reasoning": "2", "x-mock-cache-read": "30"},
)
ask = dict(model="claude-mock", max_tokens=256, extra_body={"temperature": 0},
           messages=[{"role": "user", "content": "What is the weather in Paris?"}],
           tools=[{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}])
first = client.messages.with_raw_response.create(**ask)
assert first.headers.get("x-kimi-proxy-cache") is None, first.headers
message = first.parse()
# An answer is stored when its record is finished (the prompt count may still run after the body ends).
import json, time, urllib.request
for _ in range(100):
    with urllib.request.urlopen(os.environ["PROXY_URL"] + "/api/requests/recent?limit=5") as recent:
        if json.load(recent):
            break
    time.sleep(0.05)
kinds = [b.type for b in message.content]
assert "thinking" in kinds and "tool_use" in kinds and "text" in kinds, kinds
second = client.messages.with_raw_response.create(**ask)
assert second.headers.get("x-kimi-proxy-cache") == "hit", second.headers
assert second.parse().model_dump() == message.model_dump()
with client.messages.stream(**ask) as stream:
    events = [event.type for event in stream]
    replayed = stream.get_final_message()
assert "content_block_delta" in events, events
assert replayed.model_dump() == message.model_dump(), (replayed, message)
print("all checks passed")
"#;

#[tokio::test]
async fn the_response_cache_answers_an_anthropic_client_as_json_and_as_a_replayed_stream() {
    let Some(python) = common::anthropic_sdk_python() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        "{}\n[cache]\nenabled = true\n",
        anthropic_provider(&mock, "")
    );
    let proxy = start_proxy(&mock, &extra).await;
    let output = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(CACHE_SCRIPT)
        .env("PROXY_URL", proxy.url(""))
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(mock.requests().len(), 1, "the provider was asked once");
    let records = recent_records(&proxy, 3).await;
    let hits: Vec<bool> = records
        .iter()
        .map(|r| r["cache_hit"].as_bool().unwrap())
        .collect();
    assert_eq!(hits.iter().filter(|h| **h).count(), 2, "{records:?}");
    // The hits count what the answer counted (Anthropic's usage, the cache read included), at no cost.
    let miss = records.iter().find(|r| r["cache_hit"] == false).unwrap();
    for hit in records.iter().filter(|r| r["cache_hit"] == true) {
        assert_eq!(hit["completion_tokens"], miss["completion_tokens"], "{hit}");
        assert_eq!(hit["client_api"], "messages");
    }

    // A chat request is never answered with a cached Anthropic message (nor the reverse): another key.
    let mut chat = common::chat_body("claude-mock", false);
    chat["temperature"] = json!(0);
    chat["messages"] = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-kimi-proxy-cache").is_none());
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
}

#[tokio::test]
async fn dropped_fields_and_cache_writes_are_stored_and_shown_in_the_request_rows() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start_proxy(&mock, &anthropic_provider(&mock, common::ADAPTING_PROVIDER)).await;
    common::adapted_anthropic_request(&proxy).await;
    let rows = common::stored_requests(&proxy, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["dropped_fields"], 2, "{}", rows[0]);
    assert_eq!(rows[0]["cache_write_reported"], 50, "{}", rows[0]);
    assert_eq!(rows[0]["cached_reported"], 200, "{}", rows[0]);
    assert_eq!(rows[0]["client_api"], "messages");
}

/// A long agent conversation in Anthropic's shape: a task, `steps` tool turns (a `tool_use` turn and the
/// `user` turn with its bulky `tool_result`), an answer and a new question.
fn long_agent_conversation(steps: usize) -> Value {
    let mut messages = vec![json!({"role": "user", "content": "Look around the repository."})];
    for step in 0..steps {
        let id = format!("toolu_{step}");
        messages.push(json!({"role": "assistant", "content": [
            {"type": "text", "text": format!("Reading part {step}.")},
            {"type": "tool_use", "id": id, "name": "Read", "input": {"path": format!("src/part_{step}")}}
        ]}));
        let listing: String = (0..120)
            .map(|i| format!("src/part_{step}/file_{i}.rs: fn item_{i}() {{}}\n"))
            .collect();
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": id, "content": listing}
        ]}));
    }
    messages.push(json!({"role": "assistant", "content": [{"type": "text", "text": "Seen."}]}));
    messages.push(json!({"role": "user", "content": "Now fix it."}));
    json!({
        "model": "claude-mock",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "Read", "description": "Reads a path", "input_schema": {"type": "object"}}],
        "messages": messages
    })
}

#[tokio::test]
async fn compaction_replaces_older_turns_with_a_user_summary_on_the_native_route() {
    let mock = MockUpstream::start().await.unwrap();
    // About 13k prompt tokens against a 200k window: over a 2% threshold.
    let extra = format!(
        "{}\n[context.compaction]\nenabled = true\nthreshold = 0.02\nkeep_last_exchanges = 3\n",
        anthropic_provider(&mock, "")
    );
    let proxy = start_proxy(&mock, &extra).await;
    let body = long_agent_conversation(8);
    let bytes = serde_json::to_vec(&body).unwrap();

    // Compaction off for this request: the body reaches the provider byte for byte.
    let response = post_raw(
        &proxy.url("/v1/messages"),
        &bytes,
        &[("x-kimi-context", "-compact")],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(&mock.last_request().unwrap().body[..], &bytes[..]);
    let record = &recent_records(&proxy, 1).await[0];
    assert!(
        record["context"]["compacted_messages"]
            .as_u64()
            .unwrap_or(0)
            == 0,
        "{record}"
    );

    // On: the task and the first seven tool turns become one summary turn; the last tool turn (its `tool_use`
    // with its `tool_result`), the answer and the question stay as sent, and so does everything else.
    let response = post_raw(&proxy.url("/v1/messages"), &bytes, &[]).await;
    assert_eq!(response.status(), 200);
    let sent: Value = mock.last_request().unwrap().json().unwrap();
    let messages = sent["messages"].as_array().unwrap();
    let original = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5, "{sent}");
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["content"][0]["type"], "text");
    let summary = messages[0]["content"][0]["text"].as_str().unwrap();
    assert!(
        summary.starts_with("[kimi-proxy compacted 15 earlier messages ("),
        "{summary}"
    );
    assert!(
        summary.contains("Task: Look around the repository."),
        "{summary}"
    );
    assert!(
        summary.contains("Read({\"path\":\"src/part_6\"})"),
        "{summary}"
    );
    assert_eq!(&messages[1..], &original[15..]);
    assert_eq!(messages[1]["content"][1]["id"], "toolu_7");
    assert_eq!(messages[2]["content"][0]["tool_use_id"], "toolu_7");
    for key in ["model", "max_tokens", "system", "tools"] {
        assert_eq!(sent[key], body[key], "{key}");
    }

    let record = &recent_records(&proxy, 2).await[0];
    let context = &record["context"];
    assert_eq!(context["transforms"], "compact", "{record}");
    assert_eq!(context["compaction"], "new", "{record}");
    assert_eq!(context["compacted_messages"], 15);
    let before = context["tokens_before"].as_u64().unwrap();
    let after = context["tokens_after"].as_u64().unwrap();
    assert_eq!(
        context["after_compaction"].as_u64(),
        Some(after),
        "{context}"
    );
    assert!(before > 10_000 && after * 4 < before, "{before} -> {after}");
    assert_eq!(record["tokens_saved"].as_u64().unwrap(), before - after);

    // The conversation resent (here: the same request): the remembered compaction, the same bytes upstream
    // (so the provider's prompt cache still hits).
    let compacted = mock.last_request().unwrap().body;
    let response = post_raw(&proxy.url("/v1/messages"), &bytes, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.last_request().unwrap().body, compacted);
    let record = &recent_records(&proxy, 3).await[0];
    assert_eq!(record["context"]["compaction"], "reused", "{record}");
}

#[tokio::test]
async fn observation_then_compaction_on_the_native_route_is_one_outcome() {
    let mock = MockUpstream::start().await.unwrap();
    // Observation leaves the old turns small (a few hundred tokens): a short summary, or it would not be smaller
    // (the record then says `summary not smaller` and nothing is compacted).
    let extra = format!(
        "{}\n[context.observation]\nenabled = true\nkeep_last_tool_turns = 1\n\
         [context.compaction]\nenabled = true\nthreshold = 0.002\nkeep_last_exchanges = 3\nsummary_max_tokens = 60\n",
        anthropic_provider(&mock, "")
    );
    let proxy = start_proxy(&mock, &extra).await;
    let body = long_agent_conversation(8);
    let response = post_raw(
        &proxy.url("/v1/messages"),
        &serde_json::to_vec(&body).unwrap(),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    let sent: Value = mock.last_request().unwrap().json().unwrap();
    let messages = sent["messages"].as_array().unwrap();
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(messages.len(), 5, "{}", record["context"]);
    assert!(
        messages[0]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("[kimi-proxy compacted 15 earlier messages")
    );
    // The last tool turn's result is kept whole (observation keeps the last tool turn).
    assert_eq!(messages[2], body["messages"][16]);

    let context = &record["context"];
    assert_eq!(context["transforms"], "observe,compact", "{record}");
    assert_eq!(context["observed_messages"], 7, "{context}");
    assert_eq!(context["compacted_messages"], 15, "{context}");
    let before = context["tokens_before"].as_u64().unwrap();
    let after_observation = context["after_observation"].as_u64().unwrap();
    let after = context["tokens_after"].as_u64().unwrap();
    assert!(
        after < after_observation && after_observation * 2 < before,
        "{context}"
    );
    assert_eq!(record["tokens_saved"].as_u64().unwrap(), before - after);
}
