//! The dashboard's WebSocket (`/ws`) through the real binary: snapshot, events in order, sessions, resync, and a
//! stalled client that is cut off without slowing anyone down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{MockUpstream, Proxy, assert_answers, chat_body, client, get_json, mock_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A dashboard client that checks the sequence numbers as it reads.
struct Dashboard {
    ws: Ws,
    last_seq: u64,
}

impl Dashboard {
    async fn connect(proxy: &Proxy, query: &str) -> (Dashboard, Value) {
        let url = format!("ws://{}/ws{}", proxy.addr, query);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut dashboard = Dashboard { ws, last_seq: 0 };
        let init = dashboard.raw_next().await;
        assert_eq!(init["type"], "init", "{init}");
        dashboard.last_seq = init["seq"].as_u64().unwrap();
        (dashboard, init)
    }

    async fn raw_next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("no message within 10 s")
                .expect("socket closed")
                .unwrap();
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => panic!("closed by the server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next event; asserts there is no gap in the numbering.
    async fn next(&mut self) -> Value {
        let event = self.raw_next().await;
        let seq = event["seq"].as_u64().unwrap();
        if event["type"] == "init" {
            self.last_seq = seq;
        } else {
            assert_eq!(seq, self.last_seq + 1, "gap before {event}");
            self.last_seq = seq;
        }
        event
    }

    /// Reads until an event of `kind` matching `pred` arrives; returns it with everything read before.
    async fn until(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            if event["type"] == kind && pred(&event["data"]) {
                return (event, seen);
            }
            seen.push(event);
        }
    }

    async fn send(&mut self, command: Value) {
        self.ws
            .send(Message::Text(command.to_string().into()))
            .await
            .unwrap();
    }
}

async fn start() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &mock_config(&mock, "[store]\nflush_interval_ms = 20"),
        &[("MOCK_KEY", "k")],
    )
    .await;
    (mock, proxy)
}

#[tokio::test]
async fn snapshot_then_request_events_in_order() {
    let (_mock, proxy) = start().await;
    let (mut dash, init) = Dashboard::connect(&proxy, "?tz_offset_min=-60").await;
    let data = &init["data"];
    assert_eq!(data["server"]["store"], true);
    assert_eq!(data["models"][0]["key"], "mock/model");
    assert_eq!(data["models"][0]["context_window"], 100000);
    assert_eq!(data["models"][0]["key_ready"], true);
    assert_eq!(data["today"]["requests"], 0);
    assert!(data["stats"]["dashboard_clients"].as_u64().unwrap() >= 1);

    let answer = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let (started, _) = dash.until("request.started", |_| true).await;
    assert_eq!(started["data"]["model"], "mock/model");
    assert_eq!(started["data"]["streaming"], false);
    let id = started["data"]["id"].clone();
    let (finished, _) = dash.until("request.finished", |d| d["id"] == id).await;
    let record = &finished["data"];
    assert_eq!(record["status"], 200);
    assert!(record["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(record["completion_tokens"].as_u64().unwrap() > 0);
    assert!(record["latency_us"].as_u64().unwrap() > 0);
    assert!(record.get("message_hashes").is_none());

    // The store commits it: which session, and the session as it is now.
    let (stored, _) = dash.until("request.stored", |_| true).await;
    let session_id = stored["data"]["requests"][0]["session_id"].clone();
    assert_eq!(stored["data"]["requests"][0]["id"], id);
    assert!(session_id.is_i64());
    let (created, _) = dash
        .until("session.created", |d| d["session"]["id"] == session_id)
        .await;
    let session = &created["data"]["session"];
    assert_eq!(session["request_count"], 1);
    assert_eq!(session["context_window"], 100000);
    assert!(session["context_tokens"].as_i64().unwrap() > 0);

    // A resync gives a snapshot that holds the request, with its session.
    dash.send(json!({"type": "resync"})).await;
    let (init, _) = dash.until("init", |_| true).await;
    let recent = &init["data"]["recent"][0];
    assert_eq!(recent["id"], id);
    assert_eq!(recent["session_id"], session_id);
    assert_eq!(init["data"]["today"]["requests"], 1);
    assert_eq!(init["data"]["totals"]["requests"], 1);
    assert_eq!(init["data"]["sessions"][0]["id"], session_id);

    // The hub timed each event it wrote to this client: publication to the socket.
    let stats: Value = get_json(&proxy, "/api/stats").await;
    let delivery = &stats["histograms_us"]["dashboard_delivery"]["since_start"];
    assert!(delivery["count"].as_u64().unwrap() >= 4, "{delivery}");
    assert!(delivery["max"].as_u64().unwrap() < 10_000_000, "{delivery}");
}

#[tokio::test]
async fn a_command_larger_than_one_read_is_answered() {
    // The server reads 1 KiB at a time; a 3 KiB command (under the 4 KiB limit) arrives in several reads.
    let (_mock, proxy) = start().await;
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;
    dash.send(json!({"type": "resync", "note": "x".repeat(3_000)}))
        .await;
    let (init, _) = dash.until("init", |_| true).await;
    assert_eq!(init["data"]["server"]["store"], true);
}

#[tokio::test]
async fn a_stream_counts_up_then_finishes() {
    let (_mock, proxy) = start().await;
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;
    let send = tokio::spawn({
        let url = proxy.url("/v1/chat/completions");
        async move {
            let response = client()
                .post(url)
                .header("x-mock-chunks", "60")
                .header("x-mock-chunk-delay-ms", "50")
                .json(&chat_body("mock/model", true))
                .send()
                .await
                .unwrap();
            response.bytes().await.unwrap()
        }
    });
    let (started, _) = dash.until("request.started", |_| true).await;
    assert_eq!(started["data"]["streaming"], true);
    let id = started["data"]["id"].clone();
    let (finished, before) = dash.until("request.finished", |d| d["id"] == id).await;
    let counts: Vec<u64> = before
        .iter()
        .filter(|e| e["type"] == "request.progress")
        .filter_map(|e| {
            e["data"]["requests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id)
                .map(|r| r["completion_tokens"].as_u64().unwrap())
        })
        .collect();
    // 3 s of streaming at up to four updates a second: several (fewer on a starved machine), each larger than
    // the last.
    assert!(counts.len() >= 2, "progress counts {counts:?}");
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    // The running count is ours: it ends at our estimate (the provider's figure may differ).
    let ours = finished["data"]["completion_estimated"].as_u64().unwrap();
    assert!(
        *counts.last().unwrap() <= ours,
        "{counts:?} vs {}",
        finished["data"]
    );
    send.await.unwrap();
}

#[tokio::test]
async fn session_changes_are_pushed() {
    let (_mock, proxy) = start().await;
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;
    let http = client();
    let created: Value = http
        .post(proxy.url("/api/sessions"))
        .json(&json!({"name": "first", "model": "mock/model"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].clone();
    let (event, _) = dash.until("session.created", |_| true).await;
    assert_eq!(event["data"]["session"]["name"], "first");
    let (event, _) = dash.until("session.activated", |_| true).await;
    assert_eq!(event["data"]["session_id"], id);

    http.patch(proxy.url(&format!("/api/sessions/{id}")))
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .unwrap();
    let (event, _) = dash.until("session.updated", |_| true).await;
    assert_eq!(event["data"]["session"]["name"], "renamed");

    // A request without a client id goes to the active session: the gauge's session is updated.
    http.post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    let (event, _) = dash
        .until("session.updated", |d| d["session"]["request_count"] == 1)
        .await;
    assert_eq!(event["data"]["session"]["id"], id);

    http.post(proxy.url(&format!("/api/sessions/{id}/deactivate")))
        .send()
        .await
        .unwrap();
    let (event, _) = dash.until("session.activated", |_| true).await;
    assert_eq!(event["data"]["session_id"], Value::Null);

    // The session's context settings reach every dashboard.
    let put = http
        .put(proxy.url(&format!("/api/sessions/{id}/context")))
        .json(&json!({"masking": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let (event, _) = tokio::time::timeout(
        Duration::from_secs(5),
        dash.until("session.updated", |d| {
            d["session"]["id"] == json!(id) && d["session"]["context_settings"]["masking"] == true
        }),
    )
    .await
    .expect("no session.updated with the new context settings within 5 s");
    assert_eq!(
        event["data"]["session"]["context_settings"]["compaction"],
        Value::Null
    );

    http.delete(proxy.url(&format!("/api/sessions/{id}")))
        .send()
        .await
        .unwrap();
    let (event, _) = dash.until("session.deleted", |_| true).await;
    assert_eq!(event["data"]["ids"], json!([id]));

    // Selecting a session: the snapshot carries its requests.
    let other: Value = http
        .post(proxy.url("/api/sessions"))
        .json(&json!({"name": "second"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    http.post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    dash.until("session.updated", |d| d["session"]["id"] == other["id"])
        .await;
    dash.send(json!({"type": "select_session", "session_id": other["id"]}))
        .await;
    let (init, _) = dash.until("init", |_| true).await;
    assert_eq!(init["data"]["selected_session_id"], other["id"]);
    let rows = init["data"]["session_requests"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["session_id"], other["id"]);
}

/// A client that completes the handshake and then never reads is cut off; a reading client gets every event
/// in order meanwhile, and the proxy keeps answering.
#[tokio::test]
async fn a_stalled_client_is_cut_off_and_slows_nobody() {
    let (_mock, proxy) = start().await;
    // The stalled client: a real handshake, then nothing is ever read. A small receive buffer keeps the
    // kernel from absorbing megabytes on its behalf.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(proxy.addr).await.unwrap();
    let (stalled, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.addr), tcp)
        .await
        .unwrap();
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;

    // Enough events to overflow the stalled client's socket buffers and its backlog.
    let body = json!({
        "model": "mock/model",
        "messages": [{"role": "user", "content": "x ".repeat(2000)}]
    });
    let load = tokio::spawn({
        let url = proxy.url("/v1/chat/completions");
        async move {
            let http = client();
            let started = Instant::now();
            let mut answered = 0;
            while started.elapsed() < Duration::from_secs(60) && answered < 3000 {
                let batch: Vec<_> = (0..16)
                    .map(|i| {
                        let mut body = body.clone();
                        body["user"] = json!(format!("client-{i}"));
                        http.post(&url).json(&body).send()
                    })
                    .collect();
                for response in futures_util::future::join_all(batch).await {
                    assert_eq!(response.unwrap().status(), 200);
                    answered += 1;
                }
            }
            answered
        }
    });
    // The reading client keeps up (its `next` asserts there is no gap) and sees the stalled one cut off.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut cut = false;
    while Instant::now() < deadline {
        let event = dash.next().await;
        if event["type"] == "stats" && event["data"]["hub"]["slow_clients_cut"].as_u64() >= Some(1)
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the stalled client was never cut off");
    load.abort();
    drop(stalled);
    // The proxy still answers.
    assert_answers(&proxy, "mock/model").await;
}

/// SIGTERM with a dashboard open: the dashboard is told the server goes away, and the process exits promptly.
#[tokio::test]
async fn shutdown_closes_dashboards() {
    let (_mock, mut proxy) = start().await;
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;
    proxy.terminate();
    let close = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), dash.ws.next())
            .await
            .expect("no close frame within 5 s")
            .expect("socket ended without a close frame")
            .unwrap();
        if let Message::Close(frame) = message {
            break frame.expect("a close code");
        }
    };
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    let exit = tokio::time::timeout(Duration::from_secs(5), proxy.child.wait())
        .await
        .expect("the proxy did not exit within 5 s")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// An alert fired by the engine reaches the dashboard as an `alert` event, and a fresh snapshot lists it.
#[tokio::test]
async fn alerts_are_pushed_and_in_the_snapshot() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &mock_config(
            &mock,
            "[store]\nflush_interval_ms = 20\n\n[alerts]\ninterval_ms = 100\nerror_rate_min_requests = 3\n",
        ),
        &[("MOCK_KEY", "k")],
    )
    .await;
    let (mut dash, init) = Dashboard::connect(&proxy, "").await;
    assert_eq!(init["data"]["alerts"], json!([]));
    for _ in 0..4 {
        let answer = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("x-mock-status", "500")
            .json(&chat_body("mock/model", false))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 500);
    }
    let (event, _) = dash
        .until("alert", |d| d["alert"]["kind"] == "error_rate")
        .await;
    assert_eq!(event["data"]["event"], "fired");
    let id = event["data"]["alert"]["id"].clone();
    dash.send(json!({"type": "resync"})).await;
    let (init, _) = dash.until("init", |_| true).await;
    let active = init["data"]["alerts"].as_array().unwrap();
    assert!(active.iter().any(|a| a["id"] == id), "{active:?}");
}

async fn start_with(server: &str) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, "[store]\nflush_interval_ms = 20")
        .replace("[server]\n", &format!("[server]\n{server}\n"));
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    (mock, proxy)
}

/// The tests that count connection slots or flood a proxy with commands run one at a time: beside each other on a
/// two-core machine, the flood's load delayed the slot test's sockets past its assumptions.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Dashboards have their own limit, and each holds one of the `max_connections` slots while it is open.
#[tokio::test]
async fn dashboards_are_bounded_and_hold_connection_slots() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_mock, proxy) = start_with("max_dashboards = 2\nmax_connections = 3").await;
    let (_one, _) = Dashboard::connect(&proxy, "").await;
    let (_two, _) = Dashboard::connect(&proxy, "").await;
    match tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("a third dashboard was not refused: {:?}", other.map(|_| ())),
    }
    // Two upgraded sockets hold two slots: one is left, once the refused third socket has closed. A socket the
    // server refuses is closed at once (EOF); one it holds stays silent until the header deadline. On a loaded
    // machine the third socket may still hold its slot when `idle` arrives: then `idle` is refused, and the
    // round starts again.
    use tokio::io::AsyncReadExt;
    async fn refused(socket: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), socket.read(&mut byte)).await;
        read.is_ok()
    }
    let mut held = None;
    for _ in 0..30 {
        let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
        if refused(&mut idle).await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let beyond = client().get(proxy.url("/v1/models")).send().await;
        if beyond.is_err() {
            held = Some(idle);
            break;
        }
        assert!(
            refused(&mut idle).await,
            "a connection beyond max_connections was served while dashboards and an idle socket were open"
        );
    }
    let mut idle = held.expect("the last connection slot never came free");
    use tokio::io::AsyncWriteExt;
    idle.shutdown().await.unwrap();
    drop(idle);
    drop(_one);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_answers(&proxy, "mock/model").await;
}

/// A client that floods pings (and never reads the pongs) is cut off instead of growing the server's buffers.
#[tokio::test]
async fn a_ping_flood_is_cut_off() {
    let (_mock, proxy) = start().await;
    let (mut flooder, _) = Dashboard::connect(&proxy, "").await;
    let mut cut = false;
    for _ in 0..5_000 {
        if flooder
            .ws
            .send(Message::Ping(vec![0u8; 125].into()))
            .await
            .is_err()
        {
            cut = true;
            break;
        }
    }
    if !cut {
        // The server's close arrives among the pongs.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(10), flooder.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let frame = frame.unwrap();
                    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
                    cut = true;
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                // Closed without a close frame (the server may drop a socket it cannot write to).
                Ok(None) | Ok(Some(Err(_))) => {
                    cut = true;
                    break;
                }
                // Still open and silent: not cut.
                Err(_) => break,
            }
        }
    }
    assert!(cut, "a client flooding pings was never cut off");
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;
    let (stats, _) = dash.until("stats", |_| true).await;
    assert!(
        stats["data"]["hub"]["slow_clients_cut"].as_u64() >= Some(1),
        "{stats}"
    );
}

/// A burst of `resync` commands gets one fresh snapshot, not one per command.
#[tokio::test]
async fn resync_bursts_are_coalesced() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_mock, proxy) = start().await;
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;
    for _ in 0..40 {
        dash.send(json!({"type": "resync"})).await;
    }
    let mut inits = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), dash.ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["type"] == "init" {
                    inits += 1;
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(other) => panic!("the socket ended: {other:?}"),
        }
    }
    assert!(
        (1..=2).contains(&inits),
        "{inits} snapshots for a burst of 40 resyncs"
    );
}

/// A client that speaks an API the proxy does not serve, or names a model it does not know, is answered with
/// an error — and that refusal is counted, exported and shown, never silent.
#[tokio::test]
async fn refused_requests_are_counted_and_shown_with_their_client() {
    let (_mock, proxy) = start().await;
    let (mut dash, _) = Dashboard::connect(&proxy, "").await;

    // An API the proxy does not serve (embeddings), with its query.
    let unknown_route = client()
        .post(proxy.url("/v1/embeddings?beta=true"))
        .header("user-agent", "claude-cli/2.1.197 (external, sdk-cli)")
        .json(&json!({"model": "claude-sonnet-4-5", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_route.status(), 404);
    let (refused, _) = dash.until("request.refused", |_| true).await;
    let data = &refused["data"];
    assert_eq!(data["path"], "/v1/embeddings");
    assert_eq!(data["status"], 404);
    assert_eq!(data["code"], "not_found");
    assert_eq!(data["client_app"], "Claude Code 2.1.197");

    let unknown_model = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("user-agent", "OpenAI/Python 1.57.0")
        .json(&chat_body("no-such-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_model.status(), 404);
    let (refused, _) = dash.until("request.refused", |_| true).await;
    assert_eq!(refused["data"]["code"], "model_not_found");
    assert_eq!(refused["data"]["client_app"], "OpenAI Python SDK 1.57.0");

    // The dashboard's own page and assets are not API calls: their 404s are not refusals.
    let asset = client()
        .get(proxy.url("/no-such-asset.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 404);

    let stats: Value = get_json(&proxy, "/api/stats").await;
    assert_eq!(stats["errors_total"]["not_found"], 1, "{stats}");
    assert_eq!(stats["errors_total"]["model_not_found"], 1, "{stats}");
    let metrics = client()
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kimi_proxy_request_errors_total{kind=\"model_not_found\"} 1"),
        "{metrics}"
    );
    assert!(proxy.log().contains("refused"), "{}", proxy.log());

    // A request that is served names its client in the record and in the session it opens.
    let served = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("user-agent", "codex_exec/0.171.0 (Debian 12; x86_64)")
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let (finished, _) = dash.until("request.finished", |_| true).await;
    assert_eq!(finished["data"]["client_app"], "Codex 0.171.0");
    assert_eq!(finished["data"]["client_api"], "chat");
    let (created, _) = dash.until("session.created", |_| true).await;
    assert_eq!(created["data"]["session"]["client_app"], "Codex 0.171.0");
}
