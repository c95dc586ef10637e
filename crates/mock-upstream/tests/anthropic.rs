//! The Anthropic-native mode over raw HTTP/1.1: the event stream is well formed, JSON answers and errors are in
//! Anthropic's format.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mock_upstream::{MockConfig, MockUpstream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// POSTs `body` to `path` with `headers` (`Connection: close`); returns the status and the de-chunked body.
async fn post(
    mock: &MockUpstream,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let body = serde_json::to_vec(body).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut tcp = TcpStream::connect(mock.addr()).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
    if !chunked {
        return (status, headers, rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        rest = &rest[eol + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    (status, headers, body)
}

fn request(stream: bool) -> Value {
    json!({"model": "claude-mock", "max_tokens": 100, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// Checks the stream's order and returns the message it builds.
fn accumulate(body: &[u8]) -> Value {
    let text = std::str::from_utf8(body).unwrap();
    let mut message = Value::Null;
    let mut open: Option<u64> = None;
    let mut next = 0;
    let mut names = Vec::new();
    let mut partial = String::new();
    for frame in text.split_terminator("\n\n") {
        let (event, data) = frame.split_once('\n').unwrap();
        let name = event.strip_prefix("event: ").unwrap();
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["type"], name);
        names.push(name.to_owned());
        match name {
            "message_start" => message = data["message"].clone(),
            "content_block_start" => {
                assert_eq!(open, None);
                assert_eq!(data["index"], next);
                open = Some(next);
                next += 1;
                message["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(data["content_block"].clone());
            }
            "content_block_delta" => {
                assert_eq!(data["index"].as_u64(), open);
                let block = message["content"]
                    .as_array_mut()
                    .unwrap()
                    .last_mut()
                    .unwrap();
                let d = &data["delta"];
                match d["type"].as_str().unwrap() {
                    "text_delta" => {
                        block["text"] = json!(format!(
                            "{}{}",
                            block["text"].as_str().unwrap(),
                            d["text"].as_str().unwrap()
                        ))
                    }
                    "thinking_delta" => {
                        block["thinking"] = json!(format!(
                            "{}{}",
                            block["thinking"].as_str().unwrap(),
                            d["thinking"].as_str().unwrap()
                        ))
                    }
                    "signature_delta" => block["signature"] = d["signature"].clone(),
                    "input_json_delta" => partial.push_str(d["partial_json"].as_str().unwrap()),
                    other => panic!("{other}"),
                }
            }
            "content_block_stop" => {
                assert_eq!(data["index"].as_u64(), open);
                let block = message["content"]
                    .as_array_mut()
                    .unwrap()
                    .last_mut()
                    .unwrap();
                if block["type"] == "tool_use" {
                    block["input"] = serde_json::from_str(&partial).unwrap();
                }
                open = None;
            }
            "message_delta" => {
                assert_eq!(open, None);
                message["stop_reason"] = data["delta"]["stop_reason"].clone();
                message["usage"]["output_tokens"] = data["usage"]["output_tokens"].clone();
            }
            "ping" | "message_stop" => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.get(1).map(String::as_str), Some("ping"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    assert_eq!(names[names.len() - 2], "message_delta");
    message
}

#[tokio::test]
async fn stream_is_well_formed_and_matches_the_json_answer() {
    let mock = MockUpstream::start().await.unwrap();
    let headers = [
        ("x-mock-chunks", "5"),
        ("x-mock-reasoning", "2"),
        ("x-mock-tool-call", "1"),
        ("x-mock-id", "fixed"),
    ];
    for path in ["/v1/messages", "/messages"] {
        let (status, resp_headers, body) = post(&mock, path, &headers, &request(true)).await;
        assert_eq!(status, 200);
        assert!(
            resp_headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "text/event-stream")
        );
        let streamed = accumulate(&body);
        let (status, _, body) = post(&mock, path, &headers, &request(false)).await;
        assert_eq!(status, 200);
        let whole: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(streamed["content"], whole["content"]);
        assert_eq!(streamed["stop_reason"], "tool_use");
        assert_eq!(whole["stop_reason"], "tool_use");
        assert_eq!(whole["id"], "msg_fixed");
        assert_eq!(whole["model"], "claude-mock");
        assert_eq!(whole["content"][0]["type"], "thinking");
        assert_eq!(
            whole["content"][1]["text"],
            "tok0 tok1 tok2 tok3 héllo 世界4 "
        );
        assert_eq!(
            whole["content"][2],
            json!({"type": "tool_use", "id": "toolu_mock", "name": "get_weather", "input": {"city": "Paris"}})
        );
        assert_eq!(whole["usage"]["output_tokens"], 7);
        assert!(whole["usage"]["input_tokens"].as_u64().unwrap() > 0);
    }
    let stats = mock.stats();
    assert_eq!(
        stats
            .streams_completed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn count_tokens_and_errors() {
    let mock = MockUpstream::start_with(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            required_key: Some("sk-ant-test".into()),
            ..MockConfig::default()
        },
    )
    .await
    .unwrap();
    let key = [("x-api-key", "sk-ant-test")];
    let (status, _, body) = post(&mock, "/v1/messages/count_tokens", &key, &request(false)).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);

    let (status, _, body) = post(
        &mock,
        "/v1/messages",
        &[("x-api-key", "wrong")],
        &request(false),
    )
    .await;
    assert_eq!(status, 401);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");

    for (code, kind) in [
        ("400", "invalid_request_error"),
        ("403", "permission_error"),
        ("413", "request_too_large"),
        ("429", "rate_limit_error"),
        ("500", "api_error"),
        ("529", "overloaded_error"),
    ] {
        let headers = [key[0], ("x-mock-status", code), ("x-mock-retry-after", "3")];
        let (status, resp_headers, body) =
            post(&mock, "/v1/messages", &headers, &request(true)).await;
        assert_eq!(status.to_string(), code);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], kind, "{code}");
        assert!(v["error"]["message"].as_str().unwrap().contains(code));
        assert!(
            resp_headers
                .iter()
                .any(|(k, v)| k == "retry-after" && v == "3")
        );
    }

    let (status, _, body) = post(
        &mock,
        "/v1/messages",
        &key,
        &json!({"model": "m", "messages": []}),
    )
    .await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}
