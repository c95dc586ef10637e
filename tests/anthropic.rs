//! Anthropic Messages clients through the real binary to the mock speaking chat completions: requests
//! translated on the way in, answers (JSON, event streams, errors) on the way out, `count_tokens` answered
//! locally, Claude Code's model names aliased; and the official Anthropic Python SDK driving all of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    MockUpstream, Proxy, client, content_type, messages_body, mock_config, post_messages,
    read_body, recent_records, sse_events, start_proxy as proxy_for,
};
use serde_json::{Value, json};

/// The names of the events, in order, with the runs of `content_block_delta` folded into one.
fn event_outline(events: &[(String, Value)]) -> Vec<String> {
    let mut outline: Vec<String> = Vec::new();
    for (name, _) in events {
        if name == "content_block_delta" && outline.last().is_some_and(|l| l == name) {
            continue;
        }
        outline.push(name.clone());
    }
    outline
}

#[tokio::test]
async fn a_messages_request_reaches_the_chat_provider_translated_and_comes_back_as_a_message() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let response = post_messages(
        &proxy,
        "/v1/messages",
        &messages_body("mock/model", false),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("application/json"));
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(
        message["model"], "mock/model",
        "the client's own model name"
    );
    assert_eq!(message["content"][0]["type"], "text");
    assert!(
        message["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("tok0 ")
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert!(message["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));

    let upstream = mock.last_request().unwrap();
    assert_eq!(upstream.path, "/v1/chat/completions");
    let chat = upstream.json().unwrap();
    assert_eq!(chat["model"], "mock-model");
    assert_eq!(
        chat["messages"][0],
        json!({"role": "system", "content": "You are terse."})
    );
    assert_eq!(chat["messages"][1]["role"], "user");
    assert_eq!(
        upstream.header("authorization"),
        Some("Bearer mock-provider-key")
    );
    assert_eq!(
        upstream.header("x-api-key"),
        None,
        "the client's Anthropic key stays here"
    );
    assert_eq!(upstream.header("anthropic-version"), None);
}

#[tokio::test]
async fn the_path_without_v1_and_the_beta_query_are_served_too() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    for path in ["/messages", "/v1/messages?beta=true"] {
        let response = post_messages(&proxy, path, &messages_body("mock/model", false), &[]).await;
        assert_eq!(response.status(), 200, "{path}");
        let message: Value = response.json().await.unwrap();
        assert_eq!(message["type"], "message", "{path}");
        let upstream = mock.last_request().unwrap();
        assert_eq!(upstream.path, "/v1/chat/completions");
        assert_eq!(upstream.query, None, "Anthropic's query stays here");
    }
}

#[tokio::test]
async fn a_streamed_answer_arrives_as_anthropic_events_in_order() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let response = post_messages(
        &proxy,
        "/v1/messages",
        &messages_body("mock/model", true),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(content_type(&response).starts_with("text/event-stream"));
    let (body, clean) = read_body(response).await;
    assert!(clean, "the stream ended cleanly");
    let events = sse_events(&body);
    assert_eq!(
        event_outline(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(
            data["type"],
            name.as_str(),
            "each event's data names its event"
        );
    }
    assert_eq!(events[0].1["message"]["model"], "mock/model");
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        text,
        (0..8)
            .map(mock_upstream::sse_chunk_text)
            .collect::<String>()
    );
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(
        delta["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "the provider's usage: {delta}"
    );
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn thinking_and_a_tool_call_stream_as_their_own_blocks() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let headers = [("x-mock-reasoning", "2"), ("x-mock-tool-call", "1")];
    let response = post_messages(
        &proxy,
        "/v1/messages",
        &messages_body("mock/model", true),
        &headers,
    )
    .await;
    let (body, _) = read_body(response).await;
    let events = sse_events(&body);
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| &d["content_block"])
        .collect();
    let kinds: Vec<&str> = starts.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["thinking", "text", "tool_use"]);
    assert_eq!(starts[2]["name"], "get_weather");
    assert_eq!(starts[2]["id"], "call_mock");
    let deltas = |kind: &str, field: &str| -> String {
        events
            .iter()
            .filter(|(_, d)| d["delta"]["type"] == kind)
            .map(|(_, d)| d["delta"][field].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(deltas("thinking_delta", "thinking"), "think0 think1 ");
    let arguments: Value =
        serde_json::from_str(&deltas("input_json_delta", "partial_json")).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    let stop = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn an_unknown_model_is_a_not_found_error_naming_the_model_and_close_names() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let response = post_messages(
        &proxy,
        "/v1/messages",
        &messages_body("mock/modle", false),
        &[],
    )
    .await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-kimi-proxy-error"], "model_not_found");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "not_found_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("`mock/modle` does not exist"), "{message}");
    assert!(
        message.contains("mock/model"),
        "close names listed: {message}"
    );
}

#[tokio::test]
async fn an_invalid_request_is_an_invalid_request_error() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let response =
        post_messages(&proxy, "/v1/messages", &json!({"model": "mock/model"}), &[]).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages")
    );
    let response = client()
        .post(proxy.url("/v1/messages"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["type"], "error");
}

#[tokio::test]
async fn an_upstream_error_comes_back_in_anthropic_format_with_its_status() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    for stream in [false, true] {
        let response = post_messages(
            &proxy,
            "/v1/messages",
            &messages_body("mock/model", stream),
            &[("x-mock-status", "401")],
        )
        .await;
        assert_eq!(response.status(), 401);
        assert!(content_type(&response).starts_with("application/json"));
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "authentication_error");
        assert!(error["error"]["message"].as_str().unwrap().len() > 3);
    }
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let response = post_messages(
        &proxy,
        "/v1/messages",
        &messages_body("mock/model", true),
        &[("x-mock-fault", "close-mid-stream")],
    )
    .await;
    let (body, _) = read_body(response).await;
    let events = sse_events(&body);
    assert_eq!(events[0].0, "message_start");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "api_error");
}

#[tokio::test]
async fn count_tokens_is_answered_locally_as_an_estimate() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let mut body = messages_body("mock/model", false);
    body.as_object_mut().unwrap().remove("max_tokens");
    let response = post_messages(&proxy, "/v1/messages/count_tokens", &body, &[]).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-kimi-proxy-estimate"));
    let count: Value = response.json().await.unwrap();
    let small = count["input_tokens"].as_u64().unwrap();
    assert!(small > 5 && small < 100, "{count}");
    body["messages"][0]["content"] = json!("Say hello. ".repeat(200));
    let count: Value = post_messages(&proxy, "/v1/messages/count_tokens", &body, &[])
        .await
        .json()
        .await
        .unwrap();
    assert!(
        count["input_tokens"].as_u64().unwrap() > small + 300,
        "{count}"
    );
    assert!(mock.requests().is_empty(), "nothing went upstream");
    let unknown = post_messages(
        &proxy,
        "/v1/messages/count_tokens",
        &messages_body("nope", false),
        &[],
    )
    .await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"]["type"],
        "not_found_error"
    );
}

#[tokio::test]
async fn the_record_names_the_messages_api_and_claude_codes_session() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "").await;
    let response = post_messages(
        &proxy,
        "/v1/messages",
        &messages_body("mock/model", true),
        &[("x-claude-code-session-id", "cc-session-1")],
    )
    .await;
    read_body(response).await;
    let mut body = messages_body("mock/model", false);
    body["metadata"] =
        json!({"user_id": r#"{"device_id":"d","account_uuid":"a","session_id":"cc-session-2"}"#});
    post_messages(&proxy, "/v1/messages", &body, &[])
        .await
        .bytes()
        .await
        .unwrap();
    let records = recent_records(&proxy, 2).await;
    let sessions: Vec<&str> = records
        .iter()
        .map(|r| r["client_session"].as_str().unwrap())
        .collect();
    assert!(
        sessions.contains(&"cc-session-1") && sessions.contains(&"cc-session-2"),
        "{sessions:?}"
    );
    for record in &records {
        assert_eq!(record["client_api"], "messages");
        assert_eq!(record["status"], 200);
        assert!(
            record["completion_tokens"].as_u64().unwrap() > 0,
            "counted from the provider's answer"
        );
    }
}

#[tokio::test]
async fn claude_model_names_are_aliased_and_answered_under_their_own_name() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "[model_aliases]\n\"claude-*\" = \"mock/model\"\n").await;
    let response = post_messages(
        &proxy,
        "/v1/messages",
        &messages_body("claude-sonnet-4-5-20250929", false),
        &[],
    )
    .await;
    assert_eq!(response.status(), 200);
    let message: Value = response.json().await.unwrap();
    assert_eq!(message["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["model"],
        "mock-model"
    );
    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["model"], "mock/model");
}

#[tokio::test]
async fn a_virtual_key_in_x_api_key_is_accepted_and_never_forwarded() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = "[[server.client_keys]]\nname = \"claude\"\nkey = \"${CLAUDE_KEY}\"\n";
    let proxy = Proxy::start(
        &mock_config(&mock, extra),
        &[
            ("MOCK_KEY", "mock-provider-key"),
            ("CLAUDE_KEY", "vk-claude-0123456789abcdef"),
        ],
    )
    .await;
    let body = messages_body("mock/model", false);
    // post_messages sends a wrong x-api-key: refused in Anthropic's format.
    let refused = post_messages(&proxy, "/v1/messages", &body, &[]).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["type"],
        "authentication_error"
    );
    let accepted = client()
        .post(proxy.url("/v1/messages"))
        .header("x-api-key", "vk-claude-0123456789abcdef")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let upstream = mock.last_request().unwrap();
    assert_eq!(upstream.header("x-api-key"), None);
    assert_eq!(
        upstream.header("authorization"),
        Some("Bearer mock-provider-key")
    );
    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["virtual_key"], "claude");
}

#[tokio::test]
async fn head_slash_is_answered_without_the_page_with_or_without_an_admin_token() {
    let mock = MockUpstream::start().await.unwrap();
    for admin_token in ["", "admin_token = \"${ADMIN}\""] {
        let config = mock_config(&mock, "").replace(
            "shutdown_grace_ms = 3000",
            &format!("shutdown_grace_ms = 3000\n{admin_token}"),
        );
        let proxy = Proxy::start(
            &config,
            &[("MOCK_KEY", "k"), ("ADMIN", "admin-token-0123456789")],
        )
        .await;
        let response = client().head(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{admin_token}");
        assert!(response.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_official_anthropic_python_sdk_works_through_the_proxy() {
    let Some(python) = common::anthropic_sdk_python() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "[model_aliases]\n\"claude-*\" = \"mock/model\"\n").await;
    common::run_anthropic_sdk_script(&python, &proxy, "claude-sonnet-4-5-20250929").await;
    // The tool result went upstream as chat's `tool` message, answering the provider's call id.
    let tool_message = mock
        .requests()
        .iter()
        .filter_map(|r| r.json())
        .flat_map(|body| body["messages"].as_array().cloned().unwrap_or_default())
        .find(|m| m["role"] == "tool")
        .expect("a tool message went upstream");
    assert_eq!(tool_message["tool_call_id"], "call_mock");
    assert_eq!(tool_message["content"], "18 C, sunny");
}

#[tokio::test]
async fn the_claude_code_cli_says_hi_through_the_proxy() {
    let Some(claude) = common::claude_code_cli() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = proxy_for(&mock, "[model_aliases]\n\"claude-*\" = \"mock/model\"\n").await;
    let home = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(&claude[0])
        .args([&claude[1], "-p", "say hi"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("ANTHROPIC_BASE_URL", proxy.url(""))
        .env("ANTHROPIC_API_KEY", "sk-ant-unused")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("tok0 tok1"),
        "claude -p failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records = recent_records(&proxy, 1).await;
    let record = &records[0];
    assert_eq!(record["client_api"], "messages");
    assert!(
        record["client_app"]
            .as_str()
            .unwrap()
            .starts_with("Claude Code"),
        "{record}"
    );
    assert!(
        record["client_session"].is_string(),
        "Claude Code's session id is recorded"
    );
}
