//! End-to-end tests of token accounting: the real binary counts what passes through it, reconciles with the
//! provider's usage, and never changes what the client sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{MockUpstream, Proxy, chat_body, client, get_json, mock_config, recent_records};
use futures_util::StreamExt;
use kimi_proxy::tokens::Tokenizer;
use serde_json::Value;

async fn setup() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    (mock, proxy)
}

fn mock_text(chunks: usize) -> String {
    (0..chunks).map(mock_upstream::sse_chunk_text).collect()
}

#[tokio::test]
async fn streamed_usage_is_requested_counted_and_hidden_from_the_client() {
    let (mock, proxy) = setup().await;
    let body = chat_body("mock-model", true);
    let headers = [("x-mock-id", "same"), ("x-mock-chunks", "25")];
    let send = |url: String| {
        let mut request = client().post(url).json(&body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    let direct = send(format!("{}/chat/completions", mock.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let proxied = send(proxy.url("/v1/chat/completions"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    // The upstream was asked for usage...
    let seen = mock.last_request().unwrap().json().unwrap();
    assert_eq!(seen["stream_options"]["include_usage"], true);
    // ...and the client got exactly what it would have got without the proxy.
    assert!(!String::from_utf8_lossy(&direct).contains("\"usage\""));
    assert_eq!(
        String::from_utf8_lossy(&proxied),
        String::from_utf8_lossy(&direct)
    );

    let record = &recent_records(&proxy, 1).await[0];
    let expected_completion = Tokenizer::cl100k_base().count(&mock_text(25)) as u64;
    assert_eq!(record["completion_estimated"], expected_completion);
    assert_eq!(
        record["completion_reported"], 25,
        "the mock reports one token per chunk"
    );
    assert!(record["prompt_reported"].as_u64().unwrap() > 0);
    assert_eq!(record["usage_injected"], true);
    assert_eq!(record["tokens_estimated"], false);
    assert_eq!(record["streaming"], true);
    assert_eq!(record["status"], 200);
    assert_eq!(record["error_kind"], Value::Null);
    assert_eq!(record["finish_reason"], "stop");
    assert!(record["ttft_us"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn usage_the_client_asked_for_passes_through() {
    let (mock, proxy) = setup().await;
    let mut body = chat_body("mock-model", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let send = |url: String| {
        client()
            .post(url)
            .header("x-mock-id", "same")
            .json(&body)
            .send()
    };
    let direct = send(format!("{}/chat/completions", mock.base_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let proxied = send(proxy.url("/v1/chat/completions"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&direct).contains("\"usage\""));
    assert_eq!(
        String::from_utf8_lossy(&proxied),
        String::from_utf8_lossy(&direct)
    );
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["usage_injected"], false);
    assert_eq!(record["completion_reported"], 8);
}

#[tokio::test]
async fn a_provider_that_refuses_stream_options_gets_the_request_unchanged() {
    let (mock, proxy) = setup().await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-status", "400")
        .header("x-mock-fail-times", "1")
        .header("x-mock-key", "strict-provider")
        .json(&chat_body("mock-model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].json().unwrap().get("stream_options").is_some());
    assert!(requests[1].json().unwrap().get("stream_options").is_none());
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["usage_injected"], false);
    assert_eq!(record["attempts"], 2);
}

#[tokio::test]
async fn non_streaming_answers_are_reconciled_with_their_usage() {
    let (_mock, proxy) = setup().await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-chunks", "12")
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["prompt_reported"], answer["usage"]["prompt_tokens"]);
    assert_eq!(record["completion_reported"], 12);
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        record["completion_estimated"],
        Tokenizer::cl100k_base().count(content) as u64
    );
    // System + user message, as OpenAI frames them.
    let expected_prompt = 3
        + 1
        + Tokenizer::cl100k_base().count("You are terse.")
        + 3
        + 1
        + Tokenizer::cl100k_base().count("Say hello.")
        + 3;
    assert_eq!(record["prompt_estimated"], expected_prompt as u64);
    assert!(record["prompt_accuracy"].as_f64().is_some());
    assert_eq!(record["model"], "mock/model");
    assert_eq!(record["provider"], "mock");
    assert_eq!(
        record["error_kind"],
        Value::Null,
        "a complete answer is not an error"
    );
    assert_eq!(record["finish_reason"], "stop");
}

#[tokio::test]
async fn a_stream_that_breaks_keeps_its_partial_count() {
    let (_mock, proxy) = setup().await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-fault", "close-mid-stream")
        .header("x-mock-chunks", "20")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            break;
        }
    }
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["error_kind"], "upstream_stream_error");
    assert_eq!(record["tokens_estimated"], true);
    assert_eq!(record["completion_reported"], Value::Null);
    let partial = Tokenizer::cl100k_base().count(&mock_text(10)) as u64;
    assert_eq!(
        record["completion_estimated"], partial,
        "half of the 20 chunks arrived"
    );
}

#[tokio::test]
async fn running_counts_are_visible_while_the_stream_is_live() {
    let (_mock, proxy) = setup().await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-chunks", "60")
        .header("x-mock-chunk-delay-ms", "25")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut seen = Vec::new();
    let mut received = 0;
    while let Some(chunk) = stream.next().await {
        received += 1;
        chunk.unwrap();
        if received % 15 == 0 {
            let live: Vec<Value> = get_json(&proxy, "/api/requests/live").await;
            assert_eq!(live.len(), 1, "{live:?}");
            assert_eq!(live[0]["model"], "mock/model");
            seen.push(live[0]["completion_tokens"].as_u64().unwrap());
        }
    }
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "tokens count up: {seen:?}"
    );
    recent_records(&proxy, 1).await;
    let live: Vec<Value> = get_json(&proxy, "/api/requests/live").await;
    assert!(live.is_empty(), "{live:?}");
}

#[tokio::test]
async fn a_client_that_leaves_is_recorded() {
    let (_mock, proxy) = setup().await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-chunks", "100")
        .header("x-mock-chunk-delay-ms", "20")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["error_kind"], "client_disconnected");
}

#[tokio::test]
async fn estimates_are_calibrated_by_what_the_provider_reported() {
    let (_mock, proxy) = setup().await;
    // The mock reports prompt_tokens = body bytes / 4, far from a real count: a drift to learn.
    let first = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    first.bytes().await.unwrap();
    let learned = &recent_records(&proxy, 1).await[0];
    let ratio = learned["prompt_reported"].as_f64().unwrap()
        / learned["prompt_estimated"].as_f64().unwrap();

    // Without a provider figure, the estimate is corrected by that ratio.
    let second = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-usage", "none")
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    second.bytes().await.unwrap();
    let record = &recent_records(&proxy, 2).await[0];
    assert_eq!(record["prompt_reported"], Value::Null);
    assert_eq!(record["tokens_estimated"], true);
    let raw = record["prompt_estimated"].as_f64().unwrap();
    let expected = (raw * ratio.clamp(0.5, 2.0)).round();
    assert_eq!(record["prompt_calibrated"].as_f64().unwrap(), expected);
    assert_eq!(record["prompt_tokens"].as_f64().unwrap(), expected);

    let stats: Value = get_json(&proxy, "/api/tokens").await;
    assert_eq!(stats["calibration"][0]["model"], "mock/model");
    // The same two messages twice: the second request was served from the message cache.
    assert_eq!(stats["message_cache"]["hits"], 2);
    assert_eq!(stats["message_cache"]["misses"], 2);
}

#[tokio::test]
async fn proxy_errors_after_routing_are_recorded_too() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[]).await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["error_kind"], "missing_api_key");
    assert_eq!(record["status"], 503, "the status the client got");
    assert_eq!(record["cost_usd"], 0.0);
    assert!(record["prompt_estimated"].as_u64().unwrap() > 0);
}

#[test]
fn count_tokens_command() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |args: &[&str], input: &str| {
        let mut child = Command::new(common::BIN)
            .args(args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&["count-tokens"], "hello world"), "2\n");
    assert_eq!(
        run(&["count-tokens", "--model", "o200k_base"], "hello world"),
        "2\n"
    );
    let json: Value = serde_json::from_str(&run(
        &["count-tokens", "--model", "openai/gpt-4o", "--json"],
        "héllo",
    ))
    .unwrap();
    assert_eq!(json["tokenizer"], "o200k_base");
    let chat = run(
        &["count-tokens", "--chat"],
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert!(chat.starts_with("8\n"), "{chat}");
    let detail: Value = serde_json::from_str(&run(
        &["count-tokens", "--chat", "--json", "-"],
        r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
    ))
    .unwrap();
    assert_eq!(detail["estimated"], true);
    assert_eq!(detail["media"], 765);
}

#[tokio::test]
async fn token_accounting_can_be_switched_off() {
    let mock = MockUpstream::start().await.unwrap();
    let config =
        mock_config(&mock, "").replace("[server]\n", "[server]\ntoken_accounting = false\n");
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let body = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    let seen = mock.last_request().unwrap().json().unwrap();
    assert!(
        seen.get("stream_options").is_none(),
        "no usage request when accounting is off"
    );
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["prompt_estimated"], 0);
    assert_eq!(record["completion_estimated"], 0);
    assert_eq!(record["status"], 200);
    assert!(record["latency_us"].as_u64().unwrap() > 0, "still timed");
}
