//! End-to-end tests of the proxy core: the real binary, real sockets, the project's mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{MockUpstream, Proxy, chat_body, client, mock_config, read_body};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup(extra: &str) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &mock_config(&mock, extra),
        &[("MOCK_KEY", "sk-mock-provider-key")],
    )
    .await;
    (mock, proxy)
}

/// Sends the same request straight to the mock and through the proxy; returns both (status, headers, body).
async fn direct_and_proxied(
    mock: &MockUpstream,
    proxy: &Proxy,
    body: &Value,
    headers: &[(&str, &str)],
) -> (
    (u16, reqwest::header::HeaderMap, Vec<u8>),
    (u16, reqwest::header::HeaderMap, Vec<u8>),
) {
    let http = client();
    let send = |url: String| {
        let mut request = http.post(url).json(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.send()
    };
    let direct = send(format!("{}/chat/completions", mock.base_url()))
        .await
        .unwrap();
    let direct = (
        direct.status().as_u16(),
        direct.headers().clone(),
        direct.bytes().await.unwrap().to_vec(),
    );
    let proxied = send(proxy.url("/v1/chat/completions")).await.unwrap();
    let proxied = (
        proxied.status().as_u16(),
        proxied.headers().clone(),
        proxied.bytes().await.unwrap().to_vec(),
    );
    (direct, proxied)
}

#[tokio::test]
async fn non_streaming_body_and_status_pass_through_unchanged() {
    let (mock, proxy) = setup("").await;
    // The upstream id is used so the body is forwarded as the client sent it.
    let body = chat_body("mock-model", false);
    let (direct, proxied) =
        direct_and_proxied(&mock, &proxy, &body, &[("x-mock-id", "fixed")]).await;
    assert_eq!(direct.0, 200);
    assert_eq!(proxied.0, 200);
    assert_eq!(
        String::from_utf8_lossy(&proxied.2),
        String::from_utf8_lossy(&direct.2)
    );
    assert_eq!(proxied.1["content-type"], direct.1["content-type"]);
    assert_eq!(proxied.1["content-length"], direct.1["content-length"]);
    // The upstream received exactly the client's bytes.
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.body.as_ref(),
        serde_json::to_vec(&body).unwrap().as_slice()
    );
}

#[tokio::test]
async fn streaming_bytes_are_identical() {
    let (mock, proxy) = setup("").await;
    let body = chat_body("mock-model", true);
    let headers = [
        ("x-mock-id", "fixed"),
        ("x-mock-chunks", "40"),
        ("x-mock-tool-call", "1"),
        ("x-mock-reasoning", "3"),
    ];
    let (direct, proxied) = direct_and_proxied(&mock, &proxy, &body, &headers).await;
    assert_eq!(proxied.0, 200);
    assert_eq!(proxied.1["content-type"], "text/event-stream");
    assert!(direct.2.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(
        String::from_utf8_lossy(&proxied.2),
        String::from_utf8_lossy(&direct.2)
    );
}

#[tokio::test]
async fn streaming_events_arrive_before_the_upstream_finishes() {
    let (mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-chunks", "10")
        .header("x-mock-chunk-delay-ms", "100")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    // The mock needs ~1 s for the whole stream; the first event is here long before that.
    assert_eq!(mock.stats().streams_completed.load(Ordering::SeqCst), 0);
    let mut events = 1;
    while let Some(chunk) = stream.next().await {
        events += chunk.unwrap().windows(2).filter(|w| w == b"\n\n").count();
    }
    assert!(events >= 12, "{events} events");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(mock.stats().streams_completed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn catalog_key_is_rewritten_to_the_upstream_id() {
    let (mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = mock.last_request().unwrap().json().unwrap();
    assert_eq!(seen["model"], "mock-model");
    // Everything else, key order included, is preserved.
    let keys: Vec<&str> = seen
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["model", "stream", "messages"]);
}

#[tokio::test]
async fn headers_follow_rfc_9110() {
    let (mock, proxy) = setup("").await;
    let body = serde_json::to_vec(&chat_body("mock/model", false)).unwrap();
    // A raw request, so hop-by-hop headers really are on the wire.
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:9\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close, x-hop\r\nX-Hop: drop-me\r\nKeep-Alive: timeout=5\r\n\
         TE: trailers\r\nAccept-Encoding: gzip\r\nAuthorization: Bearer client-key\r\nX-Custom: kept\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("x-request-id: mock-"), "{text}");
    assert!(
        text.contains("x-ratelimit-remaining-requests: 99"),
        "{text}"
    );

    let seen = mock.last_request().unwrap();
    assert_eq!(seen.header("x-custom"), Some("kept"));
    for hop in ["x-hop", "keep-alive", "te", "accept-encoding"] {
        assert_eq!(seen.header(hop), None, "{hop} was forwarded");
    }
    assert_eq!(seen.header("host"), Some(mock.addr().to_string().as_str()));
    // The provider's key replaces the client's.
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-mock-provider-key")
    );
}

#[tokio::test]
async fn retries_transient_failures_before_the_first_byte() {
    let (mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-status", "503")
        .header("x-mock-fail-times", "2")
        .header("x-mock-key", "retry-1")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(mock.stats().requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn honours_retry_after_and_passes_the_last_429_through() {
    let (mock, proxy) = setup("").await;
    let started = Instant::now();
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-status", "429")
        .header("x-mock-retry-after", "1")
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    // Three attempts with a 1 s Retry-After between them.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mock.stats().requests.load(Ordering::SeqCst), 3);
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(
        response.headers().get("x-kimi-proxy-error").is_none(),
        "upstream errors are not rewritten"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-status", "400")
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(mock.stats().requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn never_retries_once_the_stream_started() {
    let (mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-fault", "close-mid-stream")
        .header("x-mock-chunks", "10")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (received, clean) = read_body(response).await;
    assert!(
        !clean,
        "the client must see the stream break, not a clean end"
    );
    assert!(!received.ends_with(b"data: [DONE]\n\n"));
    assert!(!received.is_empty());
    assert_eq!(mock.stats().requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream() {
    let (mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-chunks", "50")
        .header("x-mock-chunk-delay-ms", "50")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(2);
    while mock.stats().streams_cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "upstream stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.stats().streams_completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_json_is_a_400_that_says_where() {
    let (_mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": \"mock/model\",\n \"messages\": [,]}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-kimi-proxy-error"], "invalid_json");
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 2"), "{message}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_json");
}

#[tokio::test]
async fn oversized_body_is_a_413() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, "").replace("[server]\n", "[server]\nmax_body_bytes = 1024\n");
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let big = "x".repeat(4096);
    let mut body = chat_body("mock/model", false);
    body["messages"][1]["content"] = Value::String(big);
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "body_too_large");
    assert_eq!(mock.stats().requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_model_is_a_404_with_suggestions() {
    let (_mock, proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/modle", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mock/model"),
        "{body}"
    );
}

#[tokio::test]
async fn missing_key_is_a_503_naming_the_variable_and_warned_at_start() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[]).await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MOCK_KEY")
    );
    assert_eq!(
        mock.stats().requests.load(Ordering::SeqCst),
        0,
        "never sent with an empty key"
    );
    let log = proxy.log();
    assert!(
        log.contains("MOCK_KEY") && log.contains("mock"),
        "start-up warning missing: {log}"
    );

    // With its own key, the client gets through, and that key is what the upstream sees.
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth("sk-client-own")
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some("Bearer sk-client-own")
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_and_timeout_a_504() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        r#"
[providers.dead]
base_url = "http://{closed}/v1"
[providers.dead.retry]
max_attempts = 2
initial_backoff_ms = 5
[models."dead/model"]
provider = "dead"
max_context_size = 1000

[providers.slow]
base_url = "{base}"
[providers.slow.timeouts]
first_byte_ms = 300
idle_ms = 300
[models."slow/model"]
provider = "slow"
model = "mock-model"
max_context_size = 1000
"#,
        base = mock.base_url()
    );
    let proxy = Proxy::start(&mock_config(&mock, &extra), &[("MOCK_KEY", "k")]).await;

    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("dead/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");

    let started = Instant::now();
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-fault", "stall-headers")
        .json(&chat_body("slow/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");

    // A stream that stalls after its first event is cut after the idle timeout.
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-fault", "stall")
        .json(&chat_body("slow/model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let mut stream = response.bytes_stream();
    let mut broke = false;
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            broke = true;
            break;
        }
    }
    assert!(broke);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn tool_calls_are_repaired_before_forwarding() {
    let (mock, proxy) = setup("").await;
    let body = serde_json::json!({
        "model": "mock-model",
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{'tz': 'CET',}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"}
        ]
    });
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = mock.last_request().unwrap().json().unwrap();
    let calls = &seen["messages"][1]["tool_calls"];
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(calls[1]["function"]["arguments"], "{\"tz\":\"CET\"}");
    assert_eq!(calls[1]["id"], "call_2");
}

#[tokio::test]
async fn models_are_listed_in_openai_format_with_and_without_prefix() {
    let (_mock, proxy) = setup("").await;
    for path in ["/v1/models", "/models"] {
        let response = client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "list");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0]["id"], "mock/model");
        assert_eq!(data[0]["object"], "model");
        assert_eq!(data[0]["context_length"], 100000);
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_openai_errors() {
    let (_mock, proxy) = setup("").await;
    let response = client().get(proxy.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let response = client()
        .get(proxy.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn provider_key_never_reaches_the_client_or_the_log() {
    let (_mock, proxy) = setup("").await;
    let http = client();
    let mut seen = String::new();
    for (headers, body) in [
        (vec![], chat_body("mock/model", false)),
        (vec![], chat_body("mock/model", true)),
        (
            vec![("x-mock-status", "401")],
            chat_body("mock/model", false),
        ),
        (vec![], chat_body("nope", false)),
    ] {
        let mut request = http
            .post(proxy.url("/v1/chat/completions"))
            .header("x-mock-echo-authorization", "1")
            .json(&body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        // Asked to, the mock echoes the Authorization it received in `x-mock-echo-authorization` (a test aid no
        // real provider has); every other header and the body are checked.
        for (name, value) in response.headers() {
            if name != "x-mock-echo-authorization" {
                seen.push_str(&format!("{name}: {value:?}\n"));
            }
        }
        seen.push_str(&response.text().await.unwrap());
    }
    assert!(
        !seen.contains("sk-mock-provider-key"),
        "key leaked to the client: {seen}"
    );
    assert!(
        !proxy.log().contains("sk-mock-provider-key"),
        "key leaked into the log"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish() {
    let (mock, mut proxy) = setup("").await;
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-chunks", "10")
        .header("x-mock-chunk-delay-ms", "50")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    proxy.terminate();
    let body = response.text().await.unwrap();
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "in-flight stream was cut: {body}"
    );
    let exit = tokio::time::timeout(Duration::from_secs(5), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(mock.stats().streams_completed.load(Ordering::SeqCst), 1);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}

#[test]
fn check_config_validates_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[providers.openai]\napi_key = \"${OPENAI_API_KEY}\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .env_clear()
        .env("OPENAI_API_KEY", "sk-canary-check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("openai/gpt-4o"));
    assert!(stdout.contains("configuration OK"));
    assert!(stdout.contains("NVIDIA_API_KEY is not set"));
    assert!(!stdout.contains("sk-canary-check-config"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\n\n[providers.nvidia]\nbase_ulr = \"https://x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("base_ulr") && stderr.contains("line 4"),
        "{stderr}"
    );
}

/// A second provider on the same mock that, like OpenRouter, ends every stream with its usage chunk. Its
/// upstream id has the length of its catalog key, so the mock's usage figures (from the body length) match.
const USAGE_ALWAYS_PROVIDER: &str = r#"
[providers.always]
base_url = "MOCK_BASE"
api_key = "${MOCK_KEY}"
usage_always = true

[models."always/mdl"]
provider = "always"
model = "always-mdl"
max_context_size = 100000
"#;

/// Every combination a client can meet: it asked for usage or not, the upstream sends usage always or only
/// when asked, the stream comes chunked or as one body with a length. The client's bytes equal the direct
/// answer's, and a length, when announced, is the length sent.
#[tokio::test]
async fn answers_match_direct_for_every_usage_and_framing_combination() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = USAGE_ALWAYS_PROVIDER.replace("MOCK_BASE", &mock.base_url());
    let proxy = Proxy::start(
        &mock_config(&mock, &extra),
        &[("MOCK_KEY", "sk-mock-provider-key")],
    )
    .await;
    let http = client();
    for stream in [true, false] {
        for client_asked in [false, true] {
            for upstream_always in [false, true] {
                for fixed_length in [false, true] {
                    // Catalog key and upstream id have the same length, so the mock sees bodies of one size.
                    let (key, upstream_id) = if upstream_always {
                        ("always/mdl", "always-mdl")
                    } else {
                        ("mock/model", "mock-model")
                    };
                    let mut body = chat_body(key, stream);
                    if client_asked {
                        body["stream_options"] = serde_json::json!({"include_usage": true});
                    }
                    let mut direct_body = body.clone();
                    direct_body["model"] = upstream_id.into();
                    let send = |url: String, body: &Value| {
                        let mut request = http
                            .post(url)
                            .json(body)
                            .header("x-mock-id", "fixed")
                            .header("x-mock-chunks", "30");
                        if upstream_always {
                            request = request.header("x-mock-usage", "always");
                        }
                        if fixed_length {
                            request = request.header("x-mock-stream-body", "fixed");
                        }
                        request.send()
                    };
                    let case = format!(
                        "stream={stream} client_asked={client_asked} upstream_always={upstream_always} fixed_length={fixed_length}"
                    );
                    let direct = send(
                        format!("{}/chat/completions", mock.base_url()),
                        &direct_body,
                    )
                    .await
                    .unwrap();
                    let direct_bytes = direct.bytes().await.unwrap();
                    let proxied = send(proxy.url("/v1/chat/completions"), &body)
                        .await
                        .unwrap();
                    assert_eq!(proxied.status(), 200, "{case}");
                    let announced = proxied
                        .headers()
                        .get("content-length")
                        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
                    let proxied_bytes = proxied
                        .bytes()
                        .await
                        .unwrap_or_else(|e| panic!("{case}: body cut short: {e}"));
                    if let Some(length) = announced {
                        assert_eq!(length, proxied_bytes.len(), "{case}: announced length");
                    }
                    assert_eq!(
                        String::from_utf8_lossy(&proxied_bytes),
                        String::from_utf8_lossy(&direct_bytes),
                        "{case}"
                    );
                    let usage_chunks = proxied_bytes
                        .windows(b"\"choices\":[]".len())
                        .filter(|w| w == b"\"choices\":[]")
                        .count();
                    if stream {
                        let expected = usize::from(client_asked || upstream_always);
                        assert_eq!(usage_chunks, expected, "{case}: usage chunks");
                    }
                }
            }
        }
    }
}

/// A Kimi thinking model refuses a follow-up whose assistant tool-call message lost its reasoning. The proxy
/// saw that reasoning stream past and puts it back — only where it is missing.
#[tokio::test]
async fn a_dropped_reasoning_is_put_back_for_a_model_that_needs_it() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, "").replace(
        "max_context_size = 100000\n",
        "max_context_size = 100000\nreasoning_echo = true\n",
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "sk-mock-provider-key")]).await;

    // A streamed answer that reasons, then calls a tool.
    let first = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-reasoning", "3")
        .header("x-mock-tool-call", "1")
        .json(&chat_body("mock/model", true))
        .send()
        .await
        .unwrap();
    let (bytes, complete) = read_body(first).await;
    assert!(complete);
    let text = String::from_utf8_lossy(&bytes);
    let call_id = text
        .split("\"id\":\"")
        .filter_map(|rest| rest.split('"').next())
        .find(|id| id.starts_with("call"))
        .expect("a tool call id in the stream")
        .to_string();
    // The memory is filled when the answer's record is made.
    common::recent_records(&proxy, 1).await;

    let follow_up = |reasoning: Option<&str>| {
        let mut assistant = serde_json::json!({
            "role": "assistant", "content": "",
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"}}]
        });
        if let Some(reasoning) = reasoning {
            assistant["reasoning_content"] = reasoning.into();
        }
        serde_json::json!({"model": "mock/model", "messages": [
            {"role": "user", "content": "Weather?"},
            assistant,
            {"role": "tool", "tool_call_id": call_id, "content": "sunny"}
        ]})
    };
    for dropped in [None, Some("")] {
        let answer = client()
            .post(proxy.url("/v1/chat/completions"))
            .json(&follow_up(dropped))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let seen = mock.last_request().unwrap().json().unwrap();
        assert_eq!(
            seen["messages"][1]["reasoning_content"], "think0 think1 think2 ",
            "{dropped:?}: {seen}"
        );
    }

    // A message that carries its reasoning reaches the provider exactly as sent.
    let kept = follow_up(Some("my own"));
    let answer = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&kept)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let seen = mock.last_request().unwrap().json().unwrap();
    assert_eq!(seen["messages"][1]["reasoning_content"], "my own");

    // Each mend is counted on its request.
    let recent = common::recent_records(&proxy, 4).await;
    let fixes: Vec<u64> = recent
        .iter()
        .take(3)
        .map(|r| r["tool_call_fixes"].as_u64().unwrap())
        .collect();
    assert_eq!(fixes, vec![0, 1, 1], "{recent:?}");
}
