//! Alerts end to end: the real binary, the mock upstream, the database, a webhook receiver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use common::{MockUpstream, Proxy, client, get_json, mock_config, sized_prompt};
use parking_lot::Mutex;
use serde_json::{Value, json};

const KEY: &str = "sk-mock-provider-key-never-in-alerts";

async fn chat(proxy: &Proxy, model: &str, content: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": content}]}));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

/// Polls `/api/alerts?{query}` until `pick` finds what it wants (10 s at most).
async fn wait_alerts(
    proxy: &Proxy,
    query: &str,
    what: &str,
    pick: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: Value = get_json(proxy, &format!("/api/alerts?{query}")).await;
        let data = list["data"].as_array().cloned().unwrap_or_default();
        if pick(&data) {
            return data;
        }
        assert!(Instant::now() < deadline, "{what}: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the database until `sql` (one integer) returns `want`.
async fn wait_db(proxy: &Proxy, sql: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = kimi_proxy::store::open_read_only(&proxy.db_path())
            .ok()
            .and_then(|conn| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).ok());
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn of_kind<'a>(alerts: &'a [Value], kind: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["kind"] == kind).collect()
}

#[tokio::test]
async fn error_rate_fires_once_is_stored_and_resolves_once() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        "[store]\nflush_interval_ms = 20\n\n[alerts]\ninterval_ms = 100\nerror_rate_window_secs = 60\nerror_rate_min_requests = 5\nerror_rate_clear_percent = 6\n",
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", KEY)]).await;

    // One failure of two requests is 50 %, but too few requests to say anything.
    assert_eq!(chat(&proxy, "mock/model", "ok", &[]).await, 200);
    assert_eq!(
        chat(&proxy, "mock/model", "boom", &[("x-mock-status", "500")]).await,
        500
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let list: Value = get_json(&proxy, "/api/alerts").await;
    assert_eq!(list["data"], json!([]), "{list}");

    for _ in 0..5 {
        assert_eq!(
            chat(&proxy, "mock/model", "boom", &[("x-mock-status", "500")]).await,
            500
        );
    }
    let active = wait_alerts(&proxy, "active=true", "error_rate alert", |a| {
        !of_kind(a, "error_rate").is_empty()
    })
    .await;
    let alert = of_kind(&active, "error_rate")[0].clone();
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["threshold"], 0.1);
    assert!(alert["value"].as_f64().unwrap() > 0.5, "{alert}");
    assert!(alert["resolved_at_ms"].is_null());
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("requests) over the last 60 s"),
        "{alert}"
    );
    let id = alert["id"].as_i64().unwrap();
    wait_db(
        &proxy,
        &format!("SELECT count(*) FROM alerts WHERE id = {id} AND kind = 'error_rate' AND resolved_at IS NULL"),
        1,
    )
    .await;

    // 6 errors in 126 requests (4.8 %) is under the clearing level (6 %): resolved, once.
    for _ in 0..119 {
        assert_eq!(chat(&proxy, "mock/model", "fine", &[]).await, 200);
    }
    let resolved = wait_alerts(&proxy, "active=false", "resolution", |a| {
        a.iter().any(|x| x["id"] == id)
    })
    .await;
    let alert = resolved.iter().find(|a| a["id"] == id).unwrap();
    assert_eq!(alert["resolution"], "cleared");
    assert!(alert["resolved_at_ms"].as_i64().unwrap() >= alert["fired_at_ms"].as_i64().unwrap());
    wait_db(
        &proxy,
        &format!("SELECT count(*) FROM alerts WHERE id = {id} AND resolution = 'cleared' AND resolved_at IS NOT NULL"),
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_db(
        &proxy,
        "SELECT count(*) FROM alerts WHERE kind = 'error_rate'",
        1,
    )
    .await;
    let active: Value = get_json(&proxy, "/api/alerts?active=true").await;
    assert_eq!(active["active"], 0, "{active}");

    // Acknowledging: a resolved alert through the store; an unknown id is a 404.
    let acked = client()
        .post(proxy.url(&format!("/api/alerts/{id}/ack")))
        .send()
        .await
        .unwrap();
    assert_eq!(acked.status(), 200);
    let acked: Value = acked.json().await.unwrap();
    assert!(acked["acked_at_ms"].as_i64().is_some(), "{acked}");
    let missing = client()
        .post(proxy.url("/api/alerts/999999/ack"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = client()
        .get(proxy.url("/api/alerts?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let stats: Value = get_json(&proxy, "/api/stats").await;
    assert_eq!(stats["alerts"]["fired"], 1, "{stats}");
    assert_eq!(stats["alerts"]["resolved"], 1, "{stats}");
}

/// Fails the first `fail` requests with a 503, then answers 200; keeps every body.
#[derive(Clone)]
struct Receiver {
    fail: usize,
    seen: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

async fn receive(State(r): State<Receiver>, body: Bytes) -> StatusCode {
    let n = r.seen.fetch_add(1, Ordering::SeqCst);
    r.bodies.lock().push(body);
    if n < r.fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    }
}

#[tokio::test]
async fn webhook_retries_with_backoff_and_gives_up_after_max_attempts() {
    let receiver = Receiver {
        fail: 4,
        seen: Arc::new(AtomicUsize::new(0)),
        bodies: Arc::new(Mutex::new(Vec::new())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook/{token}", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        &format!(
            "[alerts]\ninterval_ms = 100\nerror_rate_min_requests = 3\nwebhook_url = \"http://{hook}/hook/${{HOOK_TOKEN}}\"\nwebhook_max_attempts = 3\nwebhook_backoff_ms = 100\nwebhook_timeout_ms = 2000\n"
        ),
    );
    let proxy = Proxy::start(
        &config,
        &[("MOCK_KEY", KEY), ("HOOK_TOKEN", "hook-secret-token")],
    )
    .await;
    for _ in 0..3 {
        chat(&proxy, "mock/model", "boom", &[("x-mock-status", "500")]).await;
    }
    // The fired event: three attempts, all refused → given up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.seen.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "fired event not attempted 3 times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.seen.load(Ordering::SeqCst),
        3,
        "no fourth attempt for the fired event"
    );
    // The resolved event: refused once more, delivered on its second attempt.
    for _ in 0..60 {
        chat(&proxy, "mock/model", "fine", &[]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.seen.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < deadline, "resolved event not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen.load(Ordering::SeqCst), 5);

    let bodies = receiver.bodies.lock().clone();
    let parsed: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    assert!(
        parsed[..3].iter().all(|p| p == &parsed[0]),
        "the same event each attempt"
    );
    assert_eq!(parsed[0]["event"], "fired");
    assert_eq!(parsed[0]["alert"]["kind"], "error_rate");
    assert_eq!(parsed[3], parsed[4]);
    assert_eq!(parsed[4]["event"], "resolved");
    assert_eq!(parsed[4]["alert"]["id"], parsed[0]["alert"]["id"]);
    assert_eq!(parsed[4]["alert"]["resolution"], "cleared");
    for body in &bodies {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains(KEY) && !text.contains("hook-secret-token"),
            "{text}"
        );
    }

    let stats: Value = get_json(&proxy, "/api/stats").await;
    let webhook = &stats["alerts"]["webhook"];
    assert_eq!(webhook["attempts"], 5, "{stats}");
    assert_eq!(webhook["failed"], 1, "{stats}");
    assert_eq!(webhook["delivered"], 1, "{stats}");
    let shown = stats.to_string();
    assert!(!shown.contains("hook-secret-token"));
    assert!(
        !proxy.log().contains("hook-secret-token"),
        "the webhook URL is a secret"
    );
}

#[tokio::test]
async fn context_alerts_at_80_90_95_per_session_resolve_on_compaction_and_deletion() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        "[models.\"mock/small\"]\nprovider = \"mock\"\nmodel = \"mock-small\"\nmax_context_size = 10000\n\n[store]\nflush_interval_ms = 20\n\n[alerts]\ninterval_ms = 100\n",
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", KEY)]).await;
    let session = [("x-session-id", "agent-ctx"), ("x-mock-chunks", "8")];

    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(5000), &session).await,
        200
    );
    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(8500), &session).await,
        200
    );
    let active = wait_alerts(&proxy, "active=true", "80 % alert", |a| {
        of_kind(a, "context").len() == 1
    })
    .await;
    let first = of_kind(&active, "context")[0].clone();
    assert_eq!(first["threshold"], 0.8);
    assert_eq!(first["severity"], "warning");
    let session_id = first["session_id"].as_i64().unwrap();
    let value = first["value"].as_f64().unwrap();
    assert!((0.84..0.86).contains(&value), "{first}");

    // Staying above 80 % does not fire again; 92 % adds 90 %; 97 % adds 95 % (critical).
    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(8600), &session).await,
        200
    );
    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(9200), &session).await,
        200
    );
    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(9700), &session).await,
        200
    );
    let active = wait_alerts(&proxy, "active=true", "three context alerts", |a| {
        of_kind(a, "context").len() == 3
    })
    .await;
    let mut thresholds: Vec<(f64, String)> = of_kind(&active, "context")
        .iter()
        .map(|a| {
            assert_eq!(a["session_id"], session_id);
            (
                a["threshold"].as_f64().unwrap(),
                a["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    thresholds.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(
        thresholds,
        vec![
            (0.8, "warning".into()),
            (0.9, "warning".into()),
            (0.95, "critical".into())
        ]
    );
    wait_db(
        &proxy,
        &format!("SELECT count(*) FROM alerts WHERE kind = 'context' AND session_id = {session_id} AND resolved_at IS NULL"),
        3,
    )
    .await;

    // 93 %: within 5 points of 95 %, nothing changes. Then the agent compacts its history: all three resolve.
    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(9300), &session).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let list: Value = get_json(&proxy, "/api/alerts?active=true").await;
    assert_eq!(list["active"], 3, "{list}");
    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(1000), &session).await,
        200
    );
    wait_alerts(&proxy, "active=true", "all resolved", |a| {
        of_kind(a, "context").is_empty()
    })
    .await;
    wait_db(
        &proxy,
        &format!("SELECT count(*) FROM alerts WHERE kind = 'context' AND session_id = {session_id} AND resolution = 'cleared'"),
        3,
    )
    .await;

    // Filling up again fires new alerts; deleting the session resolves them.
    assert_eq!(
        chat(&proxy, "mock/small", &sized_prompt(9800), &session).await,
        200
    );
    wait_alerts(&proxy, "active=true", "re-fired", |a| {
        of_kind(a, "context").len() == 3
    })
    .await;
    let deleted = client()
        .delete(proxy.url(&format!("/api/sessions/{session_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    wait_alerts(&proxy, "active=true", "resolved by deletion", |a| {
        of_kind(a, "context").is_empty()
    })
    .await;
    let all = wait_alerts(&proxy, "", "history", |a| {
        a.iter()
            .filter(|x| x["resolution"] == "session_deleted")
            .count()
            == 3
    })
    .await;
    assert_eq!(of_kind(&all, "context").len(), 6, "three per episode");
    wait_db(
        &proxy,
        "SELECT count(*) FROM alerts WHERE resolution = 'session_deleted'",
        3,
    )
    .await;
    wait_db(
        &proxy,
        "SELECT count(*) FROM alerts WHERE kind = 'context'",
        6,
    )
    .await;
}
