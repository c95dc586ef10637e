//! A provider that speaks the Responses API itself (`api = "responses"`): a Responses client's request goes
//! to `{base_url}/responses` as it was sent (the model id written in), the answer comes back byte for byte,
//! streamed or not, and the record reads the provider's own Responses usage (cached and reasoning tokens
//! included) and prices it. The mock answers `/v1/responses` as OpenAI does (crates/mock-upstream
//! `responses.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{MockUpstream, Proxy, client, mock_config, read_body, recent_records};
use serde_json::{Value, json};

/// The mock as a Responses provider, with prices so the record has a cost.
fn native_config(mock: &MockUpstream) -> String {
    mock_config(mock, "")
        .replace(
            "[providers.mock]\n",
            "[providers.mock]\napi = \"responses\"\n",
        )
        .replace(
            "max_context_size = 100000\n",
            "max_context_size = 100000\ninput_price = 2.0\noutput_price = 8.0\ncached_input_price = 0.5\n",
        )
}

async fn start() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&native_config(&mock), &[("MOCK_KEY", "k")]).await;
    (mock, proxy)
}

async fn post(url: String, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().post(url).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The same request through the proxy (model `mock/model`) and straight to the mock (its upstream id
/// `mock-model`, which the proxy writes in): both bodies, read to their end.
async fn proxied_and_direct(
    mock: &MockUpstream,
    proxy: &Proxy,
    body: &Value,
    headers: &[(&str, &str)],
) -> (Vec<u8>, Vec<u8>) {
    let proxied = post(proxy.url("/v1/responses"), body, headers).await;
    assert_eq!(proxied.status(), 200);
    let (proxied, clean) = read_body(proxied).await;
    assert!(clean);
    let mut direct_body = body.clone();
    direct_body["model"] = json!("mock-model");
    let direct = post(
        format!("{}/responses", mock.base_url()),
        &direct_body,
        headers,
    )
    .await;
    assert_eq!(direct.status(), 200);
    let (direct, clean) = read_body(direct).await;
    assert!(clean);
    (proxied, direct)
}

#[tokio::test]
async fn a_json_answer_is_the_providers_byte_for_byte_and_its_usage_is_recorded() {
    let (mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "instructions": "Be terse.", "input": "Say hello.",
        "store": true, "previous_response_id": "resp_kept_by_the_provider"});
    let headers = [
        ("x-mock-id", "fixed"),
        ("x-mock-chunks", "4"),
        ("x-mock-reasoning", "2"),
        ("x-mock-cached-tokens", "8"),
    ];
    let (proxied, direct) = proxied_and_direct(&mock, &proxy, &body, &headers).await;
    assert_eq!(
        String::from_utf8_lossy(&proxied),
        String::from_utf8_lossy(&direct)
    );

    // What the provider received: the client's request on its own path, the upstream id written in; the
    // `previous_response_id` it keeps the state of went on (the proxy's store was not asked: it has no such
    // response and would have answered 404).
    let sent = mock.requests();
    let upstream = &sent[sent.len() - 2];
    assert_eq!(upstream.path, "/v1/responses");
    let mut expected = body.clone();
    expected["model"] = json!("mock-model");
    assert_eq!(upstream.json().unwrap(), expected);

    let answer: Value = serde_json::from_slice(&proxied).unwrap();
    let usage = &answer["usage"];
    let records = recent_records(&proxy, 1).await;
    let record = &records[0];
    assert_eq!(record["client_api"], "responses");
    assert_eq!(record["status"], 200);
    assert_eq!(record["error_kind"], Value::Null, "{record}");
    assert_eq!(record["prompt_reported"], usage["input_tokens"]);
    assert_eq!(record["completion_reported"], usage["output_tokens"]);
    assert_eq!(record["cached_reported"], 8);
    assert_eq!(record["reasoning_reported"], 2);
    assert_eq!(record["finish_reason"], "stop");
    assert!(
        record["completion_estimated"].as_u64().unwrap() > 0,
        "{record}"
    );
    let (input, output) = (
        usage["input_tokens"].as_f64().unwrap(),
        usage["output_tokens"].as_f64().unwrap(),
    );
    let cost = ((input - 8.0) * 2.0 + 8.0 * 0.5 + output * 8.0) / 1e6;
    assert!(
        (record["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{record}"
    );
}

#[tokio::test]
async fn a_streamed_answer_is_the_providers_byte_for_byte_and_its_usage_is_recorded() {
    let (mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "input": "Weather in Paris?", "stream": true,
        "store": false,
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
                  {"type": "web_search"}]});
    let headers = [
        ("x-mock-id", "fixed"),
        ("x-mock-chunks", "6"),
        ("x-mock-reasoning", "3"),
        ("x-mock-tool-call", "1"),
        ("x-mock-cached-tokens", "5"),
    ];
    let (proxied, direct) = proxied_and_direct(&mock, &proxy, &body, &headers).await;
    assert_eq!(
        String::from_utf8_lossy(&proxied),
        String::from_utf8_lossy(&direct)
    );
    // The provider's own event order, hosted tool and all: nothing translated, nothing dropped.
    let events = common::sse_events(&proxied);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["response.created", "response.in_progress"]);
    assert_eq!(names.last(), Some(&"response.completed"));
    let sent = mock.requests();
    let upstream = sent[sent.len() - 2].json().unwrap();
    assert_eq!(upstream["tools"][1]["type"], "web_search");

    let usage = &events.last().unwrap().1["response"]["usage"];
    let records = recent_records(&proxy, 1).await;
    let record = &records[0];
    assert_eq!(record["client_api"], "responses");
    assert!(record["streaming"].as_bool().unwrap());
    assert_eq!(record["error_kind"], Value::Null, "{record}");
    assert_eq!(record["dropped_tools"], 0);
    assert_eq!(record["prompt_reported"], usage["input_tokens"]);
    assert_eq!(record["completion_reported"], usage["output_tokens"]);
    assert_eq!(record["cached_reported"], 5);
    assert_eq!(record["reasoning_reported"], 3);
    assert_eq!(record["finish_reason"], "tool_calls");
    assert!(
        record["reasoning_estimated"].as_u64().unwrap() > 0,
        "{record}"
    );
    // The prompt was estimated too (from the request's chat form), beside the provider's figure.
    assert!(record["prompt_estimated"].as_u64().unwrap() > 0, "{record}");
    assert!(record["cost_usd"].as_f64().unwrap() > 0.0, "{record}");
}

#[tokio::test]
async fn chat_clients_of_a_responses_provider_still_use_chat_completions() {
    let (mock, proxy) = start().await;
    common::assert_answers(&proxy, "mock/model").await;
    assert_eq!(mock.last_request().unwrap().path, "/v1/chat/completions");
}

#[tokio::test]
async fn an_unknown_api_is_a_config_error() {
    let mock = MockUpstream::start().await.unwrap();
    let config =
        mock_config(&mock, "").replace("[providers.mock]\n", "[providers.mock]\napi = \"grpc\"\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_clear()
        .env("MOCK_KEY", "k")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    // The parser points at the line: `api = "grpc"`, and says what is accepted.
    assert!(text.contains("api = \"grpc\""), "{text}");
    assert!(text.contains("expected `chat` or `responses`"), "{text}");
}

#[tokio::test]
async fn a_responses_provider_gets_codexs_headers() {
    let (mock, proxy) = start().await;
    let headers = [
        ("originator", "codex_exec"),
        ("session-id", "s-1"),
        ("x-codex-window-id", "s-1:0"),
    ];
    let body = json!({"model": "mock/model", "input": "hi"});
    let response = post(proxy.url("/v1/responses"), &body, &headers).await;
    assert_eq!(response.status(), 200);
    let sent = mock.last_request().unwrap();
    for (name, value) in headers {
        assert_eq!(sent.header(name), Some(value), "{name}");
    }
}
