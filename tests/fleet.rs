//! Several real proxy processes on one PostgreSQL database (a fresh one per test): instance ids on rows, logs
//! and metrics, one live view of every instance's requests, the fleet in `/api/stats`, and alerts fired once by
//! the leader, the leadership passing on when the leader is killed. Skipped, with the reason printed, only when
//! the PostgreSQL server cannot be reached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use common::pg::{PgRelay, TestDb};
use common::{MockUpstream, Proxy, client, get_with_status, mock_config, sized_prompt};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "sk-mock-provider-key";

async fn start(mock: &MockUpstream, db: &TestDb, extra: &str) -> Proxy {
    let extra = format!(
        "[models.\"mock/small\"]\nprovider = \"mock\"\nmodel = \"mock-small\"\nmax_context_size = 10000\n\n[store]\nflush_interval_ms = 20\n\n{extra}"
    );
    Proxy::start_with_args(
        &mock_config(mock, &extra),
        &[("MOCK_KEY", KEY)],
        &["--db", &db.url()],
    )
    .await
}

async fn chat(proxy: &Proxy, model: &str, content: &str, session: &str) -> u16 {
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-session-id", session)
        .header("x-mock-chunks", "8")
        .json(&json!({"model": model, "messages": [{"role": "user", "content": content}]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

/// Polls `path` on `proxy` until `done` holds (15 s at most).
async fn wait_for(proxy: &Proxy, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = get_with_status(proxy, path).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fleet_ids(stats: &Value) -> Vec<String> {
    stats["fleet"]["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["instance"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Opens a dashboard on `on`, sends a request through `via`, and returns the `request.finished` event's data
/// that `on` shows for it.
async fn seen_on(on: &Proxy, via: &Proxy, via_id: &str) -> Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", on.addr))
        .await
        .unwrap();
    // The dashboard counts as watching once the server has sent its snapshot.
    let init = ws.next().await.unwrap().unwrap();
    assert!(init.to_text().unwrap().contains("\"init\""));
    assert_eq!(
        chat(via, "mock/model", "served elsewhere", "fleet-view").await,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no request.finished from {via_id}\n{}", on.log()))
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["type"] == "request.finished" && event["data"]["instance"] == via_id {
            return event["data"].clone();
        }
    }
}

#[tokio::test]
async fn a_dashboard_on_one_instance_sees_the_others_requests_and_the_fleet() {
    let Some(db) = TestDb::create("fleet_view") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    // A takes the default id (host name and port), B is named.
    let a = start(&mock, &db, "").await;
    let b = start(&mock, &db, "[cluster]\ninstance_id = \"edge-b\"\n").await;
    let a_id = format!(":{}", a.addr.port());

    // Both are listening once each has heard the other's stats.
    let stats = wait_for(&a, "/api/stats?fleet=1", "A hears B", |s| {
        fleet_ids(s).contains(&"edge-b".to_string())
    })
    .await;
    let own = stats["instance"].as_str().unwrap().to_string();
    assert!(own.ends_with(&a_id), "{stats}");
    wait_for(&b, "/api/stats?fleet=1", "B hears A", |s| {
        fleet_ids(s).contains(&own)
    })
    .await;

    let remote = seen_on(&a, &b, "edge-b").await;
    assert_eq!(remote["model"], "mock/model", "{remote}");
    assert_eq!(remote["remote"], true, "{remote}");
    assert!(remote["row_id"].as_i64().is_some(), "{remote}");
    assert!(remote["session_id"].as_i64().is_some(), "{remote}");
    assert!(
        remote["completion_tokens"].as_u64().unwrap() > 0,
        "{remote}"
    );
    let (_, b_recent) = get_with_status(&b, "/api/requests/recent?limit=1").await;
    assert_eq!(remote["id"], b_recent[0]["id"], "{b_recent}");
    assert_eq!(b_recent[0]["instance"], "edge-b");

    // A's own request: each row carries the id of the instance that served it.
    assert_eq!(
        chat(&a, "mock/model", "served by a", "fleet-view").await,
        200
    );
    common::wait_written(&a, 1).await;
    let rows =
        db.rows("SELECT instance, count(*) FROM requests GROUP BY instance ORDER BY instance");
    let mut expected = vec![
        vec![Some("edge-b".to_string()), Some("1".to_string())],
        vec![Some(own.clone()), Some("1".to_string())],
    ];
    expected.sort();
    let mut rows = rows;
    rows.sort();
    assert_eq!(rows, expected);
    assert_eq!(
        db.int("SELECT max(version) FROM schema_version"),
        kimi_proxy::store::LATEST_VERSION
    );
    // The stored rows, through the API of either instance, say who served them.
    let session = remote["session_id"].as_i64().unwrap();
    let (_, page) =
        get_with_status(&a, &format!("/api/sessions/{session}/requests?limit=10")).await;
    let instances: Vec<&str> = page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .filter_map(|r| r["instance"].as_str())
        .collect();
    assert_eq!(instances.len(), 2, "{page}");

    // The fleet view: both instances, and their sum, on either.
    let stats = wait_for(&a, "/api/stats?fleet=1", "both counted", |s| {
        s["fleet"]["total"]["requests_total"] == 2
    })
    .await;
    let fleet = &stats["fleet"];
    assert_eq!(fleet["total"]["instances"], 2, "{stats}");
    let list = fleet["instances"].as_array().unwrap();
    assert_eq!(list[0]["instance"], own.as_str());
    assert_eq!(list[0]["this"], true);
    assert_eq!(list[1]["instance"], "edge-b");
    assert_eq!(list[1]["requests_total"], 1);
    assert_eq!(
        list.iter().filter(|i| i["leader"] == true).count(),
        1,
        "{stats}"
    );
    let (_, plain) = get_with_status(&a, "/api/stats").await;
    assert!(plain["fleet"].is_null(), "{plain}");

    // Metrics and logs name the instance.
    let metrics = client()
        .get(b.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("kimi_proxy_instance_info{instance=\"edge-b\"} 1"),
        "{metrics}"
    );
    // (colours stripped: the log file is written as a terminal would show it)
    let log: String = b
        .log()
        .split('\x1b')
        .map(|part| match part.strip_prefix('[') {
            Some(rest) => rest.split_once('m').map_or(rest, |(_, text)| text),
            None => part,
        })
        .collect();
    assert!(
        log.lines()
            .any(|l| l.contains("request recorded") && l.contains("instance=edge-b")),
        "{log}"
    );
}

/// Counts the context alerts fired, as a webhook receiver.
async fn hook(State(fired): State<Arc<AtomicUsize>>, body: Bytes) -> StatusCode {
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    if event["event"] == "fired" && event["alert"]["kind"] == "context" {
        fired.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::NO_CONTENT
}

async fn wait_count(count: &AtomicUsize, want: usize, what: &str, logs: &[&Proxy]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while count.load(Ordering::SeqCst) < want {
        assert!(
            Instant::now() < deadline,
            "{what}: {} fired\n{}",
            count.load(Ordering::SeqCst),
            logs.iter()
                .map(|p| p.log())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn alerts_fire_once_per_fleet_and_the_leadership_passes_when_the_leader_dies() {
    let Some(db) = TestDb::create("fleet_alerts") else {
        return;
    };
    let fired = Arc::new(AtomicUsize::new(0));
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = receiver.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(Arc::clone(&fired));
    tokio::spawn(async move { axum::serve(receiver, app).await.unwrap() });
    let mock = MockUpstream::start().await.unwrap();
    let alerts = |id: &str| {
        format!(
            "[alerts]\ninterval_ms = 100\nwebhook_url = \"http://{hook_addr}/hook\"\n\n[cluster]\ninstance_id = \"{id}\"\n"
        )
    };
    let mut a = start(&mock, &db, &alerts("node-a")).await;
    wait_for(&a, "/api/stats", "A leads", |s| {
        s["alerts"]["leader"] == true
    })
    .await;
    let b = start(&mock, &db, &alerts("node-b")).await;
    wait_for(&b, "/api/stats?fleet=1", "B joined", |s| {
        s["fleet"]["connection"]["connected"] == true
            && fleet_ids(s).contains(&"node-a".to_string())
    })
    .await;
    let (_, b_stats) = get_with_status(&b, "/api/stats").await;
    assert_eq!(b_stats["alerts"]["leader"], false, "{b_stats}");

    // A session served by the follower crosses 80 % of its context: the leader fires, once.
    assert_eq!(
        chat(&b, "mock/small", &sized_prompt(8500), "ctx-one").await,
        200
    );
    wait_count(&fired, 1, "the leader fires for B's session", &[&a, &b]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fired.load(Ordering::SeqCst), 1, "fired twice");
    let (_, a_stats) = get_with_status(&a, "/api/stats").await;
    let (_, b_stats) = get_with_status(&b, "/api/stats").await;
    assert_eq!(a_stats["alerts"]["fired"], 1, "{a_stats}");
    assert_eq!(b_stats["alerts"]["fired"], 0, "{b_stats}");

    // The leader dies without a word: its connection closes, its lock goes, B takes over.
    let killed_at = Instant::now();
    a.child.kill().await.unwrap();
    wait_for(&b, "/api/stats", "B leads", |s| {
        s["alerts"]["leader"] == true
    })
    .await;
    let takeover = killed_at.elapsed();
    eprintln!("leadership passed in {} ms", takeover.as_millis());
    let metrics = client()
        .get(b.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kimi_proxy_fleet_leader 1"), "{metrics}");

    assert_eq!(
        chat(&b, "mock/small", &sized_prompt(8500), "ctx-two").await,
        200
    );
    wait_count(&fired, 2, "the new leader fires", &[&b]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fired.load(Ordering::SeqCst), 2);
    // The new leader numbered its alert after the old one's: both are in the history.
    assert_eq!(
        db.int("SELECT count(DISTINCT id) FROM alerts WHERE kind = 'context'"),
        2,
        "{:?}",
        db.rows("SELECT id, kind, session_id, message FROM alerts")
    );
}

#[tokio::test]
async fn the_live_view_comes_back_after_the_database_connection_is_cut() {
    let Some(db) = TestDb::create("fleet_cut") else {
        return;
    };
    let relay = PgRelay::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let url = relay.url(&db);
    let config = |id: &str| {
        mock_config(
            &mock,
            &format!("[store]\nflush_interval_ms = 20\n\n[cluster]\ninstance_id = \"{id}\"\n"),
        )
    };
    let a = Proxy::start_with_args(&config("cut-a"), &[("MOCK_KEY", KEY)], &["--db", &url]).await;
    let b = Proxy::start_with_args(&config("cut-b"), &[("MOCK_KEY", KEY)], &["--db", &url]).await;
    let connected = |s: &Value| s["fleet"]["connection"]["connected"] == true;
    wait_for(&a, "/api/stats?fleet=1", "A connected", connected).await;
    wait_for(&b, "/api/stats?fleet=1", "B connected", connected).await;

    // Every connection to the database cut, and refused for a while: PostgreSQL restarting, as the proxies see it.
    relay.down();
    wait_for(&a, "/api/stats?fleet=1", "A notices", |s| {
        s["fleet"]["connection"]["connected"] == false
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.up();
    for proxy in [&a, &b] {
        wait_for(proxy, "/api/stats?fleet=1", "reconnected", |s| {
            connected(s) && s["fleet"]["connection"]["reconnects"].as_u64() >= Some(1)
        })
        .await;
    }
    let remote = seen_on(&a, &b, "cut-b").await;
    assert_eq!(remote["model"], "mock/model", "{remote}");
    // Exactly one leader again.
    let (_, sa) = get_with_status(&a, "/api/stats").await;
    let (_, sb) = get_with_status(&b, "/api/stats").await;
    let leaders = [&sa, &sb]
        .iter()
        .filter(|s| s["alerts"]["leader"] == true)
        .count();
    assert_eq!(leaders, 1, "{sa}\n{sb}");
}
