//! The mock's Responses-native mode (`POST /v1/responses`), over raw HTTP/1.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mock_upstream::{MockUpstream, sse_chunk_text};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The connection ended with an error or without the final chunk.
    cut: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// `(event line, data)` of every SSE event, checking the two agree.
    fn events(&self) -> Vec<Value> {
        let text = std::str::from_utf8(&self.body).unwrap();
        text.split("\n\n")
            .filter(|b| !b.is_empty())
            .map(|block| {
                let (event, data) = block.split_once('\n').unwrap();
                let event = event.strip_prefix("event: ").unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], event);
                data
            })
            .collect()
    }
}

async fn post(mock: &MockUpstream, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let addr = mock.addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut cut = false;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let mut body = Vec::new();
    if chunked {
        cut = true;
        while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..pos]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                cut = false;
                break;
            }
            let start = pos + 2;
            if rest.len() < start + size + 2 {
                break;
            }
            body.extend_from_slice(&rest[start..start + size]);
            rest = &rest[start + size + 2..];
        }
    } else {
        body = rest.to_vec();
    }
    Answer {
        status,
        headers,
        body,
        cut,
    }
}

fn request(stream: bool) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "gpt-5-codex",
        "instructions": "Be brief.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "store": false,
        "stream": stream,
        "reasoning": {"effort": "low", "summary": "auto"},
    }))
    .unwrap()
}

fn expected_text(chunks: usize) -> String {
    (0..chunks).map(sse_chunk_text).collect()
}

#[tokio::test]
async fn json_response_object() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(
        &mock,
        "/v1/responses",
        &[("x-mock-chunks", "3"), ("x-mock-id", "fixed")],
        &request(false),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let r = answer.json();
    assert_eq!(r["id"], "resp_fixed");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "gpt-5-codex");
    assert_eq!(r["instructions"], "Be brief.");
    assert_eq!(r["parallel_tool_calls"], false);
    assert_eq!(r["store"], false);
    assert_eq!(r["reasoning"], json!({"effort": "low", "summary": "auto"}));
    assert_eq!(r["tools"][0]["name"], "get_weather");
    assert_eq!(
        r["output"],
        json!([{"id": "msg_fixed_0", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": expected_text(3)}]}])
    );
    let usage = &r["usage"];
    assert_eq!(usage["output_tokens"], 3);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["input_tokens"].as_u64().unwrap() + 3)
    );

    // Without the /v1 prefix, with reasoning and a tool call.
    let answer = post(
        &mock,
        "/responses",
        &[
            ("x-mock-chunks", "1"),
            ("x-mock-reasoning", "2"),
            ("x-mock-tool-call", "1"),
            ("x-mock-usage", "none"),
        ],
        &request(false),
    )
    .await;
    let r = answer.json();
    let kinds: Vec<&str> = r["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reasoning", "message", "function_call"]);
    assert_eq!(r["output"][0]["summary"][0]["text"], "think0 think1 ");
    assert_eq!(r["output"][2]["arguments"], "{\"city\": \"Paris\"}");
    assert_eq!(r["output"][2]["call_id"], "call_mock");
    assert_eq!(r["usage"], Value::Null);
}

#[tokio::test]
async fn event_stream_in_api_order() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(
        &mock,
        "/v1/responses",
        &[
            ("x-mock-chunks", "2"),
            ("x-mock-reasoning", "1"),
            ("x-mock-tool-call", "1"),
        ],
        &request(true),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert!(!answer.cut);
    let events = answer.events();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
    }
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, expected_text(2));
    assert_eq!(events[12]["text"], expected_text(2));
    assert_eq!(events[0]["response"]["status"], "in_progress");
    let done = &events[21]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"].as_array().unwrap().len(), 3);
    assert_eq!(
        done["usage"]["output_tokens_details"]["reasoning_tokens"],
        1
    );
    assert_eq!(events[20]["item"]["status"], "completed");
    assert_eq!(events[15]["item"]["status"], "in_progress");
    let stats = mock.stats();
    assert_eq!(stats.streams_completed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn errors_faults_and_delays() {
    let mock = MockUpstream::start().await.unwrap();
    let answer = post(
        &mock,
        "/v1/responses",
        &[("x-mock-status", "429"), ("x-mock-retry-after", "2")],
        &request(true),
    )
    .await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("2"));
    assert_eq!(answer.json()["error"]["code"], "rate_limit_exceeded");

    let answer = post(&mock, "/v1/responses", &[], b"{nope").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["type"], "invalid_request_error");

    let answer = post(
        &mock,
        "/v1/responses",
        &[("x-mock-fault", "close-mid-stream"), ("x-mock-chunks", "6")],
        &request(true),
    )
    .await;
    assert!(answer.cut, "the body is aborted");
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    assert!(text.contains("response.output_text.delta"));
    assert!(!text.contains("response.completed"));

    let start = Instant::now();
    let answer = post(
        &mock,
        "/v1/responses",
        &[
            ("x-mock-chunks", "3"),
            ("x-mock-chunk-delay-ms", "20"),
            ("x-mock-ttft-ms", "30"),
        ],
        &request(true),
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(30 + 3 * 20));
    assert_eq!(
        answer.events().last().unwrap()["type"],
        "response.completed"
    );
}
