//! The PostgreSQL store through the real binary (`--db postgres://…`), on a fresh database per test. Skipped,
//! with the reason printed, only when the PostgreSQL server cannot be reached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::pg::TestDb;
use common::{MockUpstream, Proxy, client, get_with_status, mock_config, send, wait_written};
use serde_json::{Value, json};

/// Prices so that cost is checked too (USD per million tokens).
const EXTRA: &str = "input_price = 2.0\noutput_price = 8.0\n\n[store]\nflush_interval_ms = 20\n";

async fn start(mock: &MockUpstream, db: &TestDb) -> Proxy {
    Proxy::start_with_args(
        &mock_config(mock, EXTRA),
        &[("MOCK_KEY", "sk-mock-provider-key")],
        &["--db", &db.url()],
    )
    .await
}

async fn chat(proxy: &Proxy, text: &str, session: Option<&str>) -> u16 {
    let mut request = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&json!({
            "model": "mock/model",
            "messages": [{"role": "user", "content": text}]
        }));
    if let Some(session) = session {
        request = request.header("x-session-id", session);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

fn sum(rows: &[Value], key: &str) -> f64 {
    rows.iter().map(|r| r[key].as_f64().unwrap()).sum()
}

#[tokio::test]
async fn requests_through_the_proxy_are_stored_in_postgresql() {
    let Some(db) = TestDb::create("stored") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start(&mock, &db).await;
    for i in 0..5 {
        assert_eq!(
            chat(&proxy, &format!("client turn {i}"), Some("pg-agent")).await,
            200
        );
    }
    assert_eq!(chat(&proxy, "a conversation of its own", None).await, 200);
    wait_written(&proxy, 6).await;

    // The rows are in PostgreSQL itself, at the schema version SQLite has.
    assert_eq!(db.int("SELECT count(*) FROM requests"), 6);
    assert_eq!(
        db.int("SELECT max(version) FROM schema_version"),
        kimi_proxy::store::LATEST_VERSION
    );

    let (status, list) = get_with_status(&proxy, "/api/sessions?limit=100").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 2, "{list}");
    let sessions = list["data"].as_array().unwrap();
    let agent = sessions
        .iter()
        .find(|s| s["client_key"] == "pg-agent")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(agent["source"], "client");
    assert_eq!(agent["request_count"], 5);
    let conversation = sessions
        .iter()
        .find(|s| s["source"] == "conversation")
        .unwrap();
    assert_eq!(conversation["request_count"], 1);

    // Aggregates are the sums of the session's requests; tokens and cost are what the proxy counted.
    let id = agent["id"].as_i64().unwrap();
    let (status, page) =
        get_with_status(&proxy, &format!("/api/sessions/{id}/requests?limit=100")).await;
    assert_eq!(status, 200, "{page}");
    let rows = page["data"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(sum(rows, "prompt_tokens") > 0.0);
    assert_eq!(
        agent["prompt_tokens"].as_f64().unwrap(),
        sum(rows, "prompt_tokens")
    );
    assert_eq!(
        agent["completion_tokens"].as_f64().unwrap(),
        sum(rows, "completion_tokens")
    );
    let cost = sum(rows, "cost_usd");
    let expected =
        (sum(rows, "prompt_tokens") * 2.0 + sum(rows, "completion_tokens") * 8.0) / 1_000_000.0;
    assert!((cost - expected).abs() < 1e-9, "cost {cost} vs {expected}");
    assert!((agent["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9);
    assert_eq!(rows[0]["streaming"], false);
    assert_eq!(rows[0]["client_session"], "pg-agent");

    // The proxy's own in-memory records agree with what was stored.
    let (_, recent) = get_with_status(&proxy, "/api/requests/recent?limit=100").await;
    let recent = recent.as_array().unwrap();
    let recent_prompt: f64 = recent
        .iter()
        .filter(|r| r["client_session"] == "pg-agent")
        .map(|r| r["prompt_tokens"].as_f64().unwrap())
        .sum();
    assert_eq!(recent_prompt, sum(rows, "prompt_tokens"), "{recent:?}");

    let (status, one) = get_with_status(&proxy, &format!("/api/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["request_count"], 5, "{one}");
    let (_, stats) = get_with_status(&proxy, "/api/stats/store").await;
    assert_eq!(stats["database"]["requests"], 6, "{stats}");
    assert_eq!(stats["database"]["sessions"], 2);
    assert!(!stats["path"].as_str().unwrap().contains("password"));

    // What is not on PostgreSQL yet says so.
    let (status, body) = get_with_status(&proxy, "/api/export?format=csv").await;
    assert_eq!(status, 501, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not available on the PostgreSQL store yet"),
        "{body}"
    );
}

#[tokio::test]
async fn two_proxies_on_one_database_share_rows_and_session_aggregates() {
    let Some(db) = TestDb::create("two") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let a = start(&mock, &db).await;
    let b = start(&mock, &db).await;
    const EACH: usize = 40;
    // Both instances write the same client session at once, and one each of their own.
    let send = |proxy: &Proxy, own: &'static str| {
        let proxy_url = proxy.url("/v1/chat/completions");
        async move {
            let mut tasks = Vec::new();
            for i in 0..EACH {
                let url = proxy_url.clone();
                tasks.push(tokio::spawn(async move {
                    let session = if i % 4 == 0 { own } else { "shared" };
                    let response = client()
                        .post(url)
                        .header("x-session-id", session)
                        .json(&json!({
                            "model": "mock/model",
                            "messages": [{"role": "user", "content": format!("turn {i} of {own}")}]
                        }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    response.bytes().await.unwrap();
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    tokio::join!(send(&a, "only-a"), send(&b, "only-b"));
    wait_written(&a, EACH as u64).await;
    wait_written(&b, EACH as u64).await;

    assert_eq!(db.int("SELECT count(*) FROM requests"), 2 * EACH as i64);
    assert_eq!(
        db.int("SELECT count(*) FROM sessions WHERE client_key = 'shared'"),
        1
    );
    // Every request of a session is counted once in its aggregates, whichever instance wrote it.
    let mismatched = db.int(
        "SELECT count(*) FROM sessions s WHERE s.request_count <> (SELECT count(*) FROM requests r WHERE r.session_id = s.id)
            OR s.prompt_tokens <> (SELECT coalesce(sum(prompt_tokens), 0) FROM requests r WHERE r.session_id = s.id)
            OR s.completion_tokens <> (SELECT coalesce(sum(completion_tokens), 0) FROM requests r WHERE r.session_id = s.id)",
    );
    assert_eq!(mismatched, 0, "{:?}", db.rows("SELECT * FROM sessions"));

    // Both instances show the same sessions.
    let (_, from_a) =
        get_with_status(&a, "/api/sessions?limit=100&sort=created_at&order=asc").await;
    let (_, from_b) =
        get_with_status(&b, "/api/sessions?limit=100&sort=created_at&order=asc").await;
    assert_eq!(from_a, from_b);
    assert_eq!(from_a["total"], 3, "{from_a}");
    let shared = from_a["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client_key"] == "shared")
        .unwrap()
        .clone();
    assert_eq!(shared["request_count"], 2 * (EACH - EACH / 4), "{shared}");
    let id = shared["id"].as_i64().unwrap();
    let (_, page) = get_with_status(&b, &format!("/api/sessions/{id}/requests?limit=1000")).await;
    let rows = page["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * (EACH - EACH / 4));
    assert!((shared["cost_usd"].as_f64().unwrap() - sum(rows, "cost_usd")).abs() < 1e-9);
}

#[tokio::test]
async fn a_postgresql_outage_is_survived_records_held_then_written_in_order() {
    let Some(db) = TestDb::create("outage") else {
        return;
    };
    let relay = common::pg::PgRelay::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start_with_args(
        &mock_config(&mock, EXTRA),
        &[("MOCK_KEY", "sk-mock-provider-key")],
        &["--db", &relay.url(&db)],
    )
    .await;
    for i in 0..3 {
        assert_eq!(
            chat(&proxy, &format!("before {i}"), Some("outage")).await,
            200
        );
    }
    wait_written(&proxy, 3).await;

    relay.down();
    // The proxy answers throughout; the writer holds what it cannot write.
    for i in 0..5 {
        assert_eq!(
            chat(&proxy, &format!("during {i}"), Some("outage")).await,
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = get_with_status(&proxy, "/api/stats/store").await;
        let writer = &stats["writer"];
        if writer["held"] == 5 {
            assert_eq!(writer["written"], 3, "{stats}");
            assert_eq!(writer["healthy"], false, "{stats}");
            assert!(writer["write_errors"].as_u64().unwrap() >= 1);
            assert!(stats["database_error"].is_string(), "{stats}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records not held: {stats}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.int("SELECT count(*) FROM requests"), 3);

    relay.up();
    wait_written(&proxy, 8).await;
    let (_, stats) = get_with_status(&proxy, "/api/stats/store").await;
    assert_eq!(stats["writer"]["held"], 0, "{stats}");
    assert_eq!(stats["writer"]["dropped"], 0, "{stats}");
    assert_eq!(stats["writer"]["healthy"], true, "{stats}");
    assert_eq!(db.int("SELECT count(*) FROM requests"), 8);
    // In order: the held records come after the ones written before the outage.
    let previews = db.rows("SELECT preview FROM requests ORDER BY id");
    let previews: Vec<String> = previews
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert_eq!(
        previews[..3],
        ["before 0", "before 1", "before 2"],
        "{previews:?}"
    );
    assert!(
        previews[3..].iter().all(|p| p.starts_with("during")),
        "{previews:?}"
    );
    let (_, list) = get_with_status(&proxy, "/api/sessions?limit=10").await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["data"][0]["request_count"], 8, "{list}");
}

#[tokio::test]
async fn sessions_are_managed_through_the_api_on_postgresql() {
    let Some(db) = TestDb::create("manage") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start(&mock, &db).await;
    let (status, manual) = send(
        &proxy,
        "POST",
        "/api/sessions",
        Some(json!({"name": "refactor", "model": "mock/model"})),
    )
    .await;
    assert_eq!(status, 201, "{manual}");
    assert_eq!(manual["active"], true);
    assert_eq!(manual["context_window"], 100000);
    let id = manual["id"].as_i64().unwrap();
    // The active session takes requests without a client id.
    assert_eq!(chat(&proxy, "inside the manual session", None).await, 200);
    wait_written(&proxy, 1).await;
    let (_, manual) = get_with_status(&proxy, &format!("/api/sessions/{id}")).await;
    assert_eq!(manual["request_count"], 1, "{manual}");

    let (status, _) = send(
        &proxy,
        "PATCH",
        &format!("/api/sessions/{id}"),
        Some(json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        &proxy,
        "POST",
        &format!("/api/sessions/{id}/deactivate"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        db.rows(&format!(
            "SELECT name, active FROM sessions WHERE id = {id}"
        )),
        vec![vec![Some("renamed".to_string()), Some("0".to_string())]]
    );
    let (status, body) = send(&proxy, "DELETE", &format!("/api/sessions/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(db.int("SELECT count(*) FROM sessions"), 0);
    assert_eq!(db.int("SELECT count(*) FROM requests"), 0);
    let (status, _) = get_with_status(&proxy, &format!("/api/sessions/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn dropped_fields_and_cache_writes_are_stored_in_postgresql() {
    let Some(db) = TestDb::create("adapted") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        &common::anthropic_provider(&mock, common::ADAPTING_PROVIDER),
    );
    let proxy = Proxy::start_with_args(
        &config,
        &[("MOCK_KEY", "mock-provider-key")],
        &["--db", &db.url()],
    )
    .await;
    common::adapted_anthropic_request(&proxy).await;
    let rows = common::stored_requests(&proxy, 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["dropped_fields"], 2, "{}", rows[0]);
    assert_eq!(rows[0]["cache_write_reported"], 50, "{}", rows[0]);
    assert_eq!(
        db.int("SELECT sum(dropped_fields) + sum(cache_write_reported) FROM requests"),
        52
    );
}

#[tokio::test]
async fn a_conversation_continued_on_the_other_instance_stays_one_session() {
    let Some(db) = TestDb::create("conversation") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let a = start(&mock, &db).await;
    let b = start(&mock, &db).await;
    let mut history = vec![json!({"role": "system", "content": "You review Rust code."})];
    let mut written = [0u64; 2];
    for turn in 0..4 {
        let (proxy, which) = if turn % 2 == 0 { (&a, 0) } else { (&b, 1) };
        history
            .push(json!({"role": "user", "content": format!("Question {turn} about lifetimes.")}));
        let response = client()
            .post(proxy.url("/v1/chat/completions"))
            .json(&json!({"model": "mock/model", "messages": history}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        history.push(json!({"role": "assistant", "content": format!("Answer {turn}.")}));
        written[which] += 1;
        // The next turn goes to the other instance once this one's row is in the database.
        wait_written(proxy, written[which]).await;
    }
    // Another conversation, on B only, is a session of its own.
    let response = client()
        .post(b.url("/v1/chat/completions"))
        .json(&json!({"model": "mock/model", "messages": [
            {"role": "system", "content": "You review Rust code."},
            {"role": "user", "content": "Something else entirely."}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    wait_written(&b, 3).await;

    let sessions = db.rows("SELECT id, request_count, source FROM sessions ORDER BY id");
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(
        db.int("SELECT request_count FROM sessions ORDER BY id LIMIT 1"),
        4,
        "all four turns, served by both instances, in one session: {sessions:?}"
    );
    assert_eq!(
        db.int("SELECT count(DISTINCT session_id) FROM requests"),
        2,
        "{:?}",
        db.rows("SELECT id, session_id, message_count FROM requests ORDER BY started_at")
    );
}

#[tokio::test]
async fn killing_one_instance_mid_stream_loses_nothing_already_written() {
    let Some(db) = TestDb::create("killed") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let mut a = start(&mock, &db).await;
    let b = start(&mock, &db).await;
    for i in 0..10 {
        assert_eq!(chat(&a, &format!("a {i}"), Some("both")).await, 200);
    }
    wait_written(&a, 10).await;

    // A long stream on A, cut by A's death after its first chunk.
    let mut stream = client()
        .post(a.url("/v1/chat/completions"))
        .header("x-mock-chunks", "200")
        .header("x-mock-chunk-delay-ms", "50")
        .json(&json!({"model": "mock/model", "stream": true,
                      "messages": [{"role": "user", "content": "a long answer"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());
    for i in 0..5 {
        assert_eq!(chat(&b, &format!("b {i}"), Some("both")).await, 200);
    }
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let mut cut = false;
    while !cut {
        match stream.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => cut = true,
        }
    }
    // B goes on serving, and writing.
    for i in 5..10 {
        assert_eq!(chat(&b, &format!("b {i}"), Some("both")).await, 200);
    }
    wait_written(&b, 10).await;

    // Everything A had written is there, with B's; the stream A never finished is not.
    assert_eq!(db.int("SELECT count(*) FROM requests"), 20);
    assert_eq!(
        db.int("SELECT request_count FROM sessions WHERE client_key = 'both'"),
        20
    );
    assert_eq!(
        db.int("SELECT count(*) FROM requests WHERE streaming = 1"),
        0,
        "{:?}",
        db.rows("SELECT id, status, error_kind FROM requests WHERE streaming = 1")
    );
}
