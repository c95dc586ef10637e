//! Hostile and broken clients against the real binary: huge headers, slow and silent clients, invalid UTF-8,
//! deep nesting, many idle connections, oversized bodies. Each gets a clear error or a timeout; the proxy keeps
//! answering and its memory stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{MockUpstream, Proxy, assert_answers, chat_body, client, mock_config};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn setup(server_extra: &str) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let config =
        mock_config(&mock, "").replace("[server]\n", &format!("[server]\n{server_extra}\n"));
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    (mock, proxy)
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (received, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

fn rss_kib(proxy: &Proxy) -> u64 {
    let pid = proxy.child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn huge_headers_get_431_or_a_clean_close() {
    let (_mock, proxy) = setup("").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1 << 20));
    request.extend_from_slice(b"\r\n\r\n");
    // The server may stop reading (and close) before the whole megabyte is written.
    let _ = stream.write_all(&request).await;
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the connection stayed open");
    if let Some(status) = status_of(&response) {
        assert_eq!(status, 431, "{}", String::from_utf8_lossy(&response));
    }

    // Many headers, each small.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
    for i in 0..10_000 {
        request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let _ = stream.write_all(&request).await;
    let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the connection stayed open");
    assert_ne!(status_of(&response), Some(200));
    assert_answers(&proxy, "mock/model").await;
}

#[tokio::test]
async fn slowloris_headers_time_out() {
    let (_mock, proxy) = setup("header_read_timeout_ms = 1000").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickle =
        b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed_after = None;
    'outer: for _ in 0..10 {
        for byte in trickle {
            if stream.write_all(&[*byte]).await.is_err() {
                closed_after = Some(started.elapsed());
                break 'outer;
            }
            // A read that returns means the server answered or closed.
            let mut buf = [0u8; 512];
            if let Ok(result) =
                tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
            {
                match result {
                    Ok(0) | Err(_) => {
                        closed_after = Some(started.elapsed());
                        break 'outer;
                    }
                    Ok(n) => {
                        let status = status_of(&buf[..n]);
                        assert!(status.is_none() || status == Some(408), "{status:?}");
                        let (_, closed) =
                            read_until_closed(&mut stream, Duration::from_secs(5)).await;
                        assert!(closed);
                        closed_after = Some(started.elapsed());
                        break 'outer;
                    }
                }
            }
        }
    }
    let closed_after = closed_after.expect("a client trickling headers was never cut off");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(6),
        "cut off after {closed_after:?}"
    );
    assert_answers(&proxy, "mock/model").await;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let (_mock, proxy) = setup("header_read_timeout_ms = 800").await;
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    // Sends one request, then idles on the kept-alive connection.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = idle.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&buf[..n]), Some(200));
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection stayed open");
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed, "an idle keep-alive connection stayed open");
}

#[tokio::test]
async fn invalid_utf8_gets_a_clear_400() {
    let (mock, proxy) = setup("").await;
    let mut body =
        br#"{"model": "mock/model", "messages": [{"role": "user", "content": "bad "#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(br#""}]}"#);
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert_eq!(json["error"]["code"], "invalid_json");

    // Invalid UTF-8 in a header the proxy reads is ignored, not fatal.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let body = serde_json::to_vec(&chat_body("mock/model", false)).unwrap();
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Session-Id: ",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&[0xff, 0xfe, b'a']);
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(&body);
    stream.write_all(&request).await.unwrap();
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        status_of(&response),
        Some(200),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_overflow() {
    let (mock, proxy) = setup("max_body_bytes = 8388608").await;
    for depth in [200, 100_000, 1_000_000] {
        let mut body =
            br#"{"model": "mock/model", "messages": [{"role": "user", "content": "x", "extra": "#
                .to_vec();
        body.extend(std::iter::repeat_n(b'[', depth));
        body.extend(std::iter::repeat_n(b']', depth));
        body.extend_from_slice(b"}]}");
        let response = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "depth {depth}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"]["code"], "invalid_json", "depth {depth}");
    }
    // Deep nesting inside a tool call's arguments (a string, mended by the lenient parser).
    let arguments = format!("{}{}", "{'a':".repeat(50_000), "1}".repeat(50_000));
    let body = serde_json::json!({"model": "mock/model", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]});
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_answers(&proxy, "mock/model").await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_a_413() {
    let (mock, proxy) = setup("max_body_bytes = 65536").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b' '; 16 * 1024];
    // Keeps sending until the proxy answers; a proxy that buffered without a limit would read all 64 MiB.
    let mut sent = 0usize;
    while sent < 64 << 20 {
        let head = format!("{:x}\r\n", chunk.len());
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
        sent += chunk.len();
        let mut peek = [0u8; 1];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut peek)).await
            && n > 0
        {
            break;
        }
    }
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        status_of(&response),
        Some(413),
        "{}",
        String::from_utf8_lossy(&response[..response.len().min(300)])
    );
    assert!(
        sent < 8 << 20,
        "the proxy read {sent} bytes before refusing"
    );
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn thousands_of_idle_connections_stay_bounded() {
    let (_mock, proxy) = setup("header_read_timeout_ms = 60000").await;
    assert_answers(&proxy, "mock/model").await;
    let before = rss_kib(&proxy);
    let mut idle = Vec::new();
    for _ in 0..3000 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        // Half send part of a request, half nothing at all.
        if idle.len() % 2 == 0 {
            stream
                .write_all(b"GET /v1/models HTTP/1.1\r\nHo")
                .await
                .unwrap();
        }
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(&proxy);
    let started = Instant::now();
    assert_answers(&proxy, "mock/model").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let per_connection = (during.saturating_sub(before) * 1024) / 3000;
    eprintln!(
        "RSS {before} KiB → {during} KiB with 3000 idle connections ({per_connection} bytes each)"
    );
    // A silent connection costs ~0.5 KiB (a small task); one that started a request holds hyper's 8 KiB read
    // and 8 KiB write buffers plus its state (~28 KiB in this unoptimised test build). `max_connections`
    // and the header timeout bound the total.
    assert!(
        per_connection < 40 * 1024,
        "{per_connection} bytes per idle connection"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_service_recovers() {
    // The header timeout is generous: on a loaded machine the forty connections take a while to open, and none
    // of them may time out before the forty-first arrives.
    let (_mock, proxy) = setup("max_connections = 40\nheader_read_timeout_ms = 4000").await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The 41st is closed at once.
    let mut extra = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let (response, closed) = read_until_closed(&mut extra, Duration::from_secs(1)).await;
    assert!(
        closed && response.is_empty(),
        "a connection over the limit was served"
    );
    // Freeing a slot lets the next client in.
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_answers(&proxy, "mock/model").await;
    // The silent ones time out by themselves; then everyone is served again.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for _ in 0..45 {
        let response = client().get(proxy.url("/v1/models")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(proxy.log().contains("too many client connections"));
}

/// Sends the headers of a POST announcing `declared` bytes of body, then only `sent` of them.
async fn start_unfinished_body(
    proxy: &Proxy,
    path: &str,
    declared: usize,
    sent: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    stream
}

fn body_of(response: &[u8]) -> Value {
    let text = String::from_utf8_lossy(response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_body_that_never_completes_gets_a_408_and_frees_its_slot() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, "").replace(
        "[server]\n",
        "[server]\nmax_connections = 8\nbody_read_timeout_ms = 2000\nbody_idle_timeout_ms = 1000\n",
    );
    let proxy = Proxy::start(
        &config,
        &[
            ("MOCK_KEY", "k"),
            ("KIMI_PROXY_ADMIN_TOKEN", "an-admin-token-long-enough"),
        ],
    )
    .await;
    // Every slot taken by bodies that never finish: the login form (no credentials needed) and a proxy route
    // (no virtual keys set). One of each trickles a byte now and then, so only the total deadline ends it.
    let mut stalled = Vec::new();
    for i in 0..8 {
        let path = if i % 2 == 0 {
            "/login"
        } else {
            "/v1/chat/completions"
        };
        stalled.push(start_unfinished_body(&proxy, path, 8000, b"token=").await);
    }
    let mut trickling = stalled.split_off(6);
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for stream in &mut trickling {
                let _ = stream.write_all(b"a").await;
            }
        }
        trickling
    });
    let started = Instant::now();
    for mut stream in stalled {
        let (response, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(closed, "a connection with an unfinished body stayed open");
        assert_eq!(
            status_of(&response),
            Some(408),
            "{}",
            String::from_utf8_lossy(&response)
        );
        let json = body_of(&response);
        assert_eq!(json["error"]["code"], "body_timeout", "{json}");
    }
    let mut trickling = trickle.await.unwrap();
    for stream in &mut trickling {
        let (response, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed, "a trickling body outlived the total deadline");
        assert_eq!(status_of(&response), Some(408));
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // Every slot is free again.
    for _ in 0..10 {
        assert_answers(&proxy, "mock/model").await;
    }
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        10
    );
}

/// The client preface of HTTP/2 with prior knowledge (h2c), and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let (_mock, proxy) = setup("idle_timeout_ms = 1000\nmax_connections = 4").await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(H2_PREFACE).await.unwrap();
        idle.push(stream);
    }
    for stream in &mut idle {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(closed, "an idle HTTP/2 connection stayed open");
    }
    assert_answers(&proxy, "mock/model").await;
}

#[tokio::test]
async fn an_unanswered_http2_ping_closes_the_connection() {
    // The idle timeout is long: only the keep-alive ping can end this connection.
    let (_mock, proxy) = setup(
        "idle_timeout_ms = 600000\nhttp2_keep_alive_interval_ms = 500\nhttp2_keep_alive_timeout_ms = 500",
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(H2_PREFACE).await.unwrap();
    // Reads (and so acknowledges nothing, answers no PING) until the server gives up.
    let (received, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "a client that answers no PING kept its connection");
    // A PING frame (type 6) was sent.
    assert!(
        received
            .windows(4)
            .any(|w| w[3] == 6 && w[0] == 0 && w[1] == 0 && w[2] == 8),
        "no PING seen"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_the_record_says_why() {
    let (mock, proxy) = setup("write_timeout_ms = 1000").await;
    // A small receive window, so the answer fills the buffers quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy.addr).await.unwrap();
    let body = serde_json::to_vec(&chat_body("mock/model", true)).unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nx-mock-chunks: 400000\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    // Never reads. The proxy cuts the connection once a write waited a second, and records why.
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        let list: Vec<Value> = common::get_json(&proxy, "/api/requests/recent?limit=10").await;
        if let Some(record) = list.into_iter().next() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled stream was never cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["error_kind"], "client_write_timeout", "{record}");
    assert!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    assert_answers(&proxy, "mock/model").await;
    drop(stream);
}

/// A second `messages` key would go upstream with the first one counted, previewed and routed: refused like a
/// second `model`.
#[tokio::test]
async fn a_duplicate_messages_key_is_refused() {
    let (mock, proxy) = setup("").await;
    for body in [
        r#"{"model":"mock/model","messages":[{"role":"user","content":"seen"}],"messages":[{"role":"user","content":"hidden"}]}"#,
        r#"{"model":"mock/model","messages":[],"\u006dessages":[{"role":"user","content":"hidden"}]}"#,
    ] {
        let response = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"]["code"], "invalid_request", "{json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages"),
            "{json}"
        );
    }
    assert_eq!(
        mock.stats()
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
