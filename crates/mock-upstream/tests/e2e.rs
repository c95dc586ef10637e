//! End-to-end tests of the mock over raw HTTP/1.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mock_upstream::{MockConfig, MockUpstream, sse_chunk_text};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ------------------------------------------------------------------ client

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    content_length: Option<usize>,
    done: bool,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Next HTTP chunk (chunked encoding) or the whole remaining body.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if !self.chunked {
            self.done = true;
            let mut body = Vec::new();
            match self.content_length {
                Some(len) => {
                    body.resize(len, 0);
                    self.reader.read_exact(&mut body).await?;
                }
                None => {
                    self.reader.read_to_end(&mut body).await?;
                }
            }
            return Ok(Some(body));
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size_str = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                let mut trailer = String::new();
                let n = self.reader.read_line(&mut trailer).await?;
                if n == 0 || trailer == "\r\n" {
                    break;
                }
            }
            self.done = true;
            return Ok(None);
        }
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).await?;
        assert_eq!(&data[size..], b"\r\n");
        data.truncate(size);
        Ok(Some(data))
    }

    async fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    async fn json(&mut self) -> Value {
        let body = self.body().await;
        serde_json::from_slice(&body).unwrap()
    }

    /// All SSE frames (each HTTP chunk must be exactly one event).
    async fn events(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(chunk) = self.next_chunk().await.unwrap() {
            events.push(String::from_utf8(chunk).unwrap());
        }
        events
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();

    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut response = RawResponse {
        status,
        headers,
        reader,
        chunked: false,
        content_length: None,
        done: false,
    };
    response.chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    response.content_length = response
        .header("content-length")
        .and_then(|v| v.parse().ok());
    response
}

async fn chat(mock: &MockUpstream, headers: &[(&str, &str)], body: &Value) -> RawResponse {
    let body = serde_json::to_vec(body).unwrap();
    send(
        mock.addr(),
        "POST",
        "/v1/chat/completions",
        &[&[("content-type", "application/json")], headers].concat(),
        &body,
    )
    .await
}

fn event_json(event: &str) -> Value {
    let payload = event
        .strip_prefix("data: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not one SSE event: {event:?}"));
    serde_json::from_str(payload).unwrap()
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn expected_text(chunks: usize) -> String {
    (0..chunks).map(sse_chunk_text).collect()
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn models_list_with_and_without_prefix() {
    let mock = MockUpstream::start().await.unwrap();
    assert_eq!(mock.base_url(), format!("http://{}/v1", mock.addr()));
    for path in ["/v1/models", "/models"] {
        let mut resp = send(mock.addr(), "GET", path, &[], b"").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.json().await,
            json!({"object":"list","data":[{"id":"mock-model","object":"model","created":1700000000,"owned_by":"mock"}]})
        );
    }
    let mut resp = send(mock.addr(), "GET", "/v1/nope", &[], b"").await;
    assert_eq!(resp.status, 404);
    assert!(resp.json().await["error"]["message"].is_string());
    assert_eq!(mock.stats().requests.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn json_completion_shape_and_headers() {
    let mock = MockUpstream::start().await.unwrap();
    let request = json!({"model":"kimi-k2","messages":[{"role":"user","content":"hi"}]});
    let body_len = serde_json::to_vec(&request).unwrap().len() as u64;
    let mut resp = chat(
        &mock,
        &[
            ("authorization", "Bearer sk-upstream"),
            ("x-mock-chunks", "6"),
            ("x-mock-echo-authorization", "1"),
        ],
        &request,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-request-id"), Some("mock-1"));
    assert_eq!(resp.header("x-ratelimit-remaining-requests"), Some("99"));
    assert_eq!(resp.header("x-ratelimit-limit-requests"), Some("100"));
    assert_eq!(
        resp.header("x-mock-echo-authorization"),
        Some("Bearer sk-upstream")
    );
    let raw = resp.body().await;
    let text = expected_text(6);
    let p = body_len / 4;
    let expected = format!(
        r#"{{"id":"chatcmpl-mock-1","object":"chat.completion","created":1700000000,"model":"kimi-k2","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{p},"completion_tokens":6,"total_tokens":{}}}}}"#,
        p + 6
    );
    assert_eq!(String::from_utf8(raw).unwrap(), expected);

    // Not asked to echo → no echo header, even with a key; the same input gives the same bytes apart from the
    // sequence number.
    let mut again = chat(
        &mock,
        &[
            ("authorization", "Bearer sk-upstream"),
            ("x-mock-chunks", "6"),
        ],
        &request,
    )
    .await;
    assert_eq!(again.header("x-mock-echo-authorization"), None);
    assert_eq!(again.header("x-request-id"), Some("mock-2"));
    let again = String::from_utf8(again.body().await).unwrap();
    assert_eq!(
        again,
        expected.replace("chatcmpl-mock-1", "chatcmpl-mock-2")
    );

    let last = mock.last_request().unwrap();
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.header("X-Mock-Chunks"), Some("6"));
    assert_eq!(last.json().unwrap(), request);
}

#[tokio::test]
async fn invalid_json_is_openai_400() {
    let mock = MockUpstream::start().await.unwrap();
    let mut resp = send(mock.addr(), "POST", "/chat/completions", &[], b"{nope").await;
    assert_eq!(resp.status, 400);
    let err = resp.json().await;
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"]["message"].is_string());
    assert!(err["error"]["param"].is_null());
    assert!(err["error"]["code"].is_null());
    assert_eq!(mock.last_request().unwrap().body.as_ref(), b"{nope");
}

#[tokio::test]
async fn sse_events_are_separate_frames_in_order() {
    let mock = MockUpstream::start().await.unwrap();
    let mut resp = chat(
        &mock,
        &[("x-mock-chunks", "5"), ("x-mock-chunk-delay-ms", "2")],
        &json!({"model":"m1","stream":true}),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    let events = resp.events().await;
    // role + 5 content + finish + [DONE]; no usage without include_usage.
    assert_eq!(events.len(), 8, "{events:?}");
    let role = event_json(&events[0]);
    assert_eq!(role["object"], "chat.completion.chunk");
    assert_eq!(role["model"], "m1");
    assert_eq!(role["id"], "chatcmpl-mock-1");
    assert_eq!(
        role["choices"][0]["delta"],
        json!({"role":"assistant","content":""})
    );
    assert!(role["choices"][0]["finish_reason"].is_null());
    let mut text = String::new();
    for (i, event) in events[1..6].iter().enumerate() {
        let chunk = event_json(event);
        assert_eq!(chunk["choices"][0]["delta"]["content"], sse_chunk_text(i));
        text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    assert_eq!(text, expected_text(5));
    let finish = event_json(&events[6]);
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[7], "data: [DONE]\n\n");

    let stats = mock.stats();
    assert_eq!(stats.streams_started.load(Ordering::Relaxed), 1);
    assert_eq!(stats.streams_completed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.streams_cancelled.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn usage_chunk_only_when_requested() {
    let mock = MockUpstream::start().await.unwrap();
    let with_usage = json!({"stream":true,"stream_options":{"include_usage":true}});
    let events = chat(&mock, &[("x-mock-chunks", "2")], &with_usage)
        .await
        .events()
        .await;
    assert_eq!(events.len(), 6, "{events:?}");
    let usage = event_json(&events[4]);
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["model"], "mock-model");
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    let p = usage["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(usage["usage"]["total_tokens"].as_u64().unwrap(), p + 2);
    assert_eq!(events[5], "data: [DONE]\n\n");

    // include_usage false → no usage chunk.
    let no_usage = json!({"stream":true,"stream_options":{"include_usage":false}});
    let events = chat(&mock, &[("x-mock-chunks", "2")], &no_usage)
        .await
        .events()
        .await;
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));

    // x-mock-usage: always / none override.
    let events = chat(
        &mock,
        &[("x-mock-chunks", "2"), ("x-mock-usage", "always")],
        &no_usage,
    )
    .await
    .events()
    .await;
    assert_eq!(events.len(), 6);
    assert!(events[4].contains("\"usage\""));
    let events = chat(
        &mock,
        &[("x-mock-chunks", "2"), ("x-mock-usage", "none")],
        &with_usage,
    )
    .await
    .events()
    .await;
    assert_eq!(events.len(), 5);
    let json = chat(&mock, &[("x-mock-usage", "none")], &json!({}))
        .await
        .json()
        .await;
    assert!(json.get("usage").is_none());
}

#[tokio::test]
async fn reasoning_and_tool_call_stream() {
    let mock = MockUpstream::start().await.unwrap();
    let headers = [
        ("x-mock-chunks", "1"),
        ("x-mock-reasoning", "2"),
        ("x-mock-tool-call", "1"),
    ];
    let events = chat(&mock, &headers, &json!({"stream":true}))
        .await
        .events()
        .await;
    let deltas: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| event_json(e)["choices"][0].clone())
        .collect();
    assert_eq!(deltas.len(), 9, "{events:?}");
    assert_eq!(deltas[1]["delta"], json!({"reasoning_content":"think0 "}));
    assert_eq!(deltas[2]["delta"], json!({"reasoning_content":"think1 "}));
    assert_eq!(deltas[3]["delta"], json!({"content":"tok0 "}));
    assert_eq!(
        deltas[4]["delta"],
        json!({"tool_calls":[{"index":0,"id":"call_mock","type":"function","function":{"name":"get_weather","arguments":""}}]})
    );
    let args: String = deltas[5..8]
        .iter()
        .map(|d| {
            d["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(args, "{\"city\": \"Paris\"}");
    assert_eq!(deltas[8]["finish_reason"], "tool_calls");

    let json = chat(&mock, &headers, &json!({})).await.json().await;
    let message = &json["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "think0 think1 ");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        "{\"city\": \"Paris\"}"
    );
    assert_eq!(json["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn status_with_retry_after() {
    let mock = MockUpstream::start().await.unwrap();
    let mut resp = chat(
        &mock,
        &[("x-mock-status", "429"), ("x-mock-retry-after", "7")],
        &json!({"stream":true}),
    )
    .await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("7"));
    assert_eq!(resp.header("x-request-id"), Some("mock-1"));
    let err = resp.json().await;
    assert_eq!(err["error"]["type"], "rate_limit_exceeded");
    assert!(err["error"]["param"].is_null());

    let mut resp = chat(&mock, &[("x-mock-status", "503")], &json!({})).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), None);
    assert_eq!(resp.json().await["error"]["type"], "server_error");

    let mut resp = chat(&mock, &[("x-mock-status", "banana")], &json!({})).await;
    assert_eq!(resp.status, 200);
    resp.body().await;
    assert_eq!(mock.stats().streams_started.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn fail_times_then_success_per_key() {
    let mock = MockUpstream::start().await.unwrap();
    let headers_a = [
        ("x-mock-status", "500"),
        ("x-mock-fail-times", "2"),
        ("x-mock-key", "a"),
    ];
    let headers_b = [
        ("x-mock-status", "500"),
        ("x-mock-fail-times", "1"),
        ("x-mock-key", "b"),
    ];
    let mut statuses = Vec::new();
    for headers in [&headers_a, &headers_b, &headers_a, &headers_a, &headers_b] {
        let mut resp = chat(&mock, headers, &json!({})).await;
        resp.body().await;
        statuses.push(resp.status);
    }
    assert_eq!(statuses, [500, 500, 500, 200, 200]);
}

#[tokio::test]
async fn cancellation_is_counted_when_client_leaves() {
    let mock = MockUpstream::start().await.unwrap();
    let mut resp = chat(
        &mock,
        &[("x-mock-chunks", "200"), ("x-mock-chunk-delay-ms", "5")],
        &json!({"stream":true}),
    )
    .await;
    let first = resp.next_chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    resp.next_chunk().await.unwrap().unwrap();
    drop(resp);
    let stats = mock.stats();
    wait_until("streams_cancelled", || {
        stats.streams_cancelled.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.streams_started.load(Ordering::Relaxed), 1);
    assert_eq!(stats.streams_completed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn faults() {
    let mock = MockUpstream::start().await.unwrap();

    // close-mid-stream: role + half the chunks, then an incomplete body.
    let mut resp = chat(
        &mock,
        &[("x-mock-chunks", "6"), ("x-mock-fault", "close-mid-stream")],
        &json!({"stream":true}),
    )
    .await;
    let mut frames = Vec::new();
    let outcome = loop {
        match resp.next_chunk().await {
            Ok(Some(frame)) => frames.push(frame),
            other => break other,
        }
    };
    assert!(outcome.is_err(), "body must end abnormally: {outcome:?}");
    assert_eq!(frames.len(), 4);

    // close-mid-stream in JSON mode: half a document, then an abort.
    let mut resp = chat(&mock, &[("x-mock-fault", "close-mid-stream")], &json!({})).await;
    assert_eq!(resp.status, 200);
    let half = resp.next_chunk().await.unwrap().unwrap();
    assert!(half.starts_with(b"{\"id\":\"chatcmpl-mock-2\""));
    assert!(resp.next_chunk().await.is_err());

    // garbage
    let mut resp = chat(
        &mock,
        &[("x-mock-fault", "garbage")],
        &json!({"stream":true}),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.body().await, b"this is not SSE\n\x00\xff{{{\n\n");

    // stall: headers + role chunk, then nothing.
    let mut resp = chat(&mock, &[("x-mock-fault", "stall")], &json!({"stream":true})).await;
    assert_eq!(resp.status, 200);
    resp.next_chunk().await.unwrap().unwrap();
    let next = tokio::time::timeout(Duration::from_millis(150), resp.next_chunk()).await;
    assert!(next.is_err(), "stalled stream must not send more");
    drop(resp);

    // stall-headers: no response head at all.
    let pending = tokio::time::timeout(
        Duration::from_millis(150),
        chat(&mock, &[("x-mock-fault", "stall-headers")], &json!({})),
    )
    .await;
    assert!(pending.is_err());

    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = mock.stats();
    assert_eq!(stats.streams_started.load(Ordering::Relaxed), 2);
    assert_eq!(stats.streams_completed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.streams_cancelled.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn delays_apply() {
    let config = MockConfig {
        default_chunks: 2,
        ..MockConfig::default()
    };
    let mock = MockUpstream::start_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let started = Instant::now();
    let mut resp = chat(
        &mock,
        &[("x-mock-delay-ms", "60"), ("x-mock-ttft-ms", "60")],
        &json!({"stream":true}),
    )
    .await;
    let headers_at = started.elapsed();
    assert!(headers_at >= Duration::from_millis(60), "{headers_at:?}");
    let events = resp.events().await;
    assert!(started.elapsed() >= headers_at + Duration::from_millis(50));
    assert_eq!(events.len(), 5);
}

#[tokio::test]
async fn large_body() {
    let mock = MockUpstream::start().await.unwrap();
    let json = chat(&mock, &[("x-mock-body-kb", "256")], &json!({}))
        .await
        .json()
        .await;
    let content = json["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with(&expected_text(8)));
    assert_eq!(content.len(), 256 * 1024);
}

#[tokio::test]
async fn request_ring_is_bounded() {
    let mock = MockUpstream::start().await.unwrap();
    for i in 0..70 {
        let mut resp = send(
            mock.addr(),
            "POST",
            "/v1/chat/completions?i=1",
            &[],
            format!("{{\"i\":{i}}}").as_bytes(),
        )
        .await;
        resp.body().await;
    }
    let requests = mock.requests();
    assert_eq!(requests.len(), 64);
    assert_eq!(requests[0].json().unwrap()["i"], 6);
    assert_eq!(requests[63].json().unwrap()["i"], 69);
    assert_eq!(requests[0].query.as_deref(), Some("i=1"));
    assert_eq!(mock.stats().requests.load(Ordering::Relaxed), 70);
}

#[tokio::test]
async fn drop_shuts_down() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    // A stalled stream and an idle keep-alive connection must both end.
    let mut stalled = chat(&mock, &[("x-mock-fault", "stall")], &json!({"stream":true})).await;
    stalled.next_chunk().await.unwrap().unwrap();
    drop(mock);
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stalled.next_chunk().await {
                Ok(Some(_)) => {}
                other => break other,
            }
        }
    })
    .await;
    assert!(matches!(end, Ok(Err(_))), "{end:?}");
    wait_until_refused(addr).await;
}

async fn wait_until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        assert!(Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn binary_prints_listen_line_and_serves() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args(["--listen", "127.0.0.1:0", "--chunks", "3"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .unwrap()
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("mock-upstream listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let addr: SocketAddr = url.strip_suffix("/v1").unwrap().parse().unwrap();
    let mut resp = send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        br#"{"stream":false}"#,
    )
    .await;
    assert_eq!(resp.status, 200);
    let json = resp.json().await;
    assert_eq!(json["choices"][0]["message"]["content"], expected_text(3));
    child.kill().await.unwrap();
}
