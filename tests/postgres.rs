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

/// The same traffic, one request at a time, through `proxy`: a client session whose id and text a spreadsheet
/// would run as formulas, a conversation of its own, an upstream failure.
async fn export_traffic(proxy: &Proxy) {
    for i in 0..4 {
        let text = format!("=HYPERLINK(\"http://evil.example/?{i}\",\"click, here\")");
        assert_eq!(chat(proxy, &text, Some("=agent,1")).await, 200);
    }
    assert_eq!(chat(proxy, "a \"quoted\" question", None).await, 200);
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-status", "500")
        .json(&json!({"model": "mock/model", "messages": [{"role": "user", "content": "boom"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    response.bytes().await.unwrap();
    wait_written(proxy, 6).await;
}

async fn text_of(proxy: &Proxy, path: &str) -> (String, String) {
    let response = client().get(proxy.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    (kind, response.text().await.unwrap())
}

/// Columns that do not depend on when or how fast a request ran.
const STABLE: &[&str] = &[
    "session_id",
    "model",
    "status",
    "streaming",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "preview",
    "client_session",
    "error_kind",
    "finish_reason",
];

#[tokio::test]
async fn exports_on_postgresql_match_sqlite_for_the_same_traffic() {
    let Some(db) = TestDb::create("export") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let pg = start(&mock, &db).await;
    let sqlite = Proxy::start_with_args(
        &mock_config(&mock, EXTRA),
        &[("MOCK_KEY", "sk-mock-provider-key")],
        &[],
    )
    .await;
    export_traffic(&pg).await;
    export_traffic(&sqlite).await;

    let (kind, pg_csv) = text_of(&pg, "/api/export?format=csv").await;
    assert_eq!(kind, "text/csv; charset=utf-8");
    let (_, lite_csv) = text_of(&sqlite, "/api/export?format=csv").await;
    let pg_lines: Vec<&str> = pg_csv.split("\r\n").collect();
    let lite_lines: Vec<&str> = lite_csv.split("\r\n").collect();
    assert_eq!(pg_lines.len(), 8, "{pg_csv}");
    assert_eq!(pg_lines.len(), lite_lines.len());
    assert_eq!(
        pg_lines[0], lite_lines[0],
        "the same columns, in the same order"
    );
    // Formula cells are neutralised on both, the same way.
    for csv in [&pg_csv, &lite_csv] {
        assert!(csv.contains("\"'=agent,1\""), "{csv}");
        assert!(
            csv.contains("\"'=HYPERLINK(\"\"http://evil.example/?0\"\",\"\"click, here\"\")\""),
            "{csv}"
        );
    }

    let pg_rows: Value =
        serde_json::from_str(&text_of(&pg, "/api/export?format=json").await.1).unwrap();
    let lite_rows: Value =
        serde_json::from_str(&text_of(&sqlite, "/api/export?format=json").await.1).unwrap();
    let (pg_rows, lite_rows) = (pg_rows.as_array().unwrap(), lite_rows.as_array().unwrap());
    assert_eq!(pg_rows.len(), 6);
    assert_eq!(pg_rows.len(), lite_rows.len());
    for (p, l) in pg_rows.iter().zip(lite_rows) {
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(p), keys(l));
        for column in STABLE {
            // An estimate (the failed request's prompt) depends on each proxy's calibration so far.
            if p["tokens_estimated"] == true && column.ends_with("_tokens") {
                continue;
            }
            assert_eq!(p[column], l[column], "{column}: {p} vs {l}");
        }
        // Types too: flags are booleans, costs numbers, on both.
        assert!(
            p["streaming"].is_boolean() && p["cost_usd"].is_number(),
            "{p}"
        );
    }
    assert_eq!(sum(pg_rows, "cost_usd"), sum(lite_rows, "cost_usd"));
    assert!(sum(pg_rows, "prompt_tokens") > 0.0);

    // One session's export, and a time window that holds nothing.
    let session = pg_rows[0]["session_id"].as_i64().unwrap();
    let (kind, one) = text_of(&pg, &format!("/api/sessions/{session}/export?format=json")).await;
    assert_eq!(kind, "application/json");
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 4, "{one}");
    assert!(
        one.as_array()
            .unwrap()
            .iter()
            .all(|r| r["client_session"] == "=agent,1")
    );
    let (_, none) = text_of(&pg, "/api/export?format=csv&until=1").await;
    assert_eq!(none, format!("{}\r\n", pg_lines[0]));
    let (status, _) = get_with_status(&pg, "/api/sessions/999999/export").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn alerts_fired_on_postgresql_are_listed_restored_and_acked() {
    let Some(db) = TestDb::create("alerts") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        &format!(
            "{EXTRA}\n[alerts]\ninterval_ms = 100\nerror_rate_window_secs = 60\nerror_rate_min_requests = 5\n"
        ),
    );
    let args = ["--db".to_string(), db.url()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &args).await;
    for _ in 0..6 {
        let response = client()
            .post(first.url("/v1/chat/completions"))
            .header("x-mock-status", "500")
            .json(
                &json!({"model": "mock/model", "messages": [{"role": "user", "content": "boom"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
    }
    // Fired, and written to PostgreSQL by the writer.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let rows =
            db.rows("SELECT id FROM alerts WHERE kind = 'error_rate' AND resolved_at IS NULL");
        if let Some(row) = rows.first() {
            break row[0].clone().unwrap().parse::<i64>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no alert stored: {}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, active) = get_with_status(&first, "/api/alerts?active=true").await;
    assert_eq!(active["data"][0]["id"], id, "{active}");
    first.terminate();
    first.child.wait().await.unwrap();

    // A new run closes it as `restart` (the engine takes over from the table), lists it from PostgreSQL and acks
    // it there.
    let second = Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &args).await;
    let (status, history) = get_with_status(&second, "/api/alerts?active=false").await;
    assert_eq!(status, 200, "{history}");
    let listed = &history["data"][0];
    assert_eq!(listed["id"], id, "{history}");
    assert_eq!(listed["kind"], "error_rate");
    assert_eq!(listed["severity"], "critical");
    assert_eq!(listed["resolution"], "restart");
    assert!(listed["value"].as_f64().unwrap() > 0.5, "{listed}");
    assert!(listed["acked_at_ms"].is_null());
    let (status, acked) = send(&second, "POST", &format!("/api/alerts/{id}/ack"), None).await;
    assert_eq!(status, 200, "{acked}");
    assert!(acked["acked_at_ms"].as_i64().is_some(), "{acked}");
    assert_eq!(
        db.int(&format!(
            "SELECT count(*) FROM alerts WHERE id = {id} AND acked_at IS NOT NULL AND resolution = 'restart'"
        )),
        1
    );
    let (status, _) = send(&second, "POST", "/api/alerts/999999/ack", None).await;
    assert_eq!(status, 404);
}

/// Moves a session and its requests `days` days into the past.
fn age(db: &TestDb, client_key: &str, days: i64) {
    let ms = days * 86_400_000;
    db.rows(&format!(
        "UPDATE requests SET started_at = started_at - {ms} WHERE session_id = \
             (SELECT id FROM sessions WHERE client_key = '{client_key}');
         UPDATE sessions SET last_activity = last_activity - {ms}, active = 0 WHERE client_key = '{client_key}'"
    ));
}

#[tokio::test]
async fn retention_deletes_old_rows_on_postgresql_in_batches() {
    let Some(db) = TestDb::create("retention") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, &format!("{EXTRA}retention_days = 30\n"));
    let args = ["--db".to_string(), db.url()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // `retention_days` is taken on PostgreSQL (it used to be refused at start).
    let mut first = Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &args).await;
    for (i, key) in ["old", "older", "recent"].iter().enumerate() {
        assert_eq!(chat(&first, &format!("turn {i}"), Some(key)).await, 200);
    }
    wait_written(&first, 3).await;
    // 12,000 more old requests of `older`, more than two of retention's transactions take.
    let columns = db.rows(
        "SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) FROM information_schema.columns \
         WHERE table_name = 'requests' AND column_name NOT IN ('id')",
    )[0][0]
        .clone()
        .unwrap();
    let copied = columns.replace("session_id, ", "");
    db.rows(&format!(
        "INSERT INTO requests ({copied}) SELECT {copied} FROM requests, generate_series(1, 12000) \
         WHERE client_session = 'older';
         UPDATE requests SET started_at = started_at - {} WHERE session_id IS NULL",
        40 * 86_400_000i64
    ));
    age(&db, "old", 40);
    age(&db, "older", 40);
    assert_eq!(db.int("SELECT count(*) FROM requests"), 12_003);

    // Through the API: old requests and idle sessions go; no VACUUM on PostgreSQL.
    let (status, outcome) = send(
        &first,
        "POST",
        "/api/maintenance/retention",
        Some(json!({"days": 30})),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["sessions_deleted"], 2, "{outcome}");
    // The sessionless ones; a deleted session's requests go with it, uncounted (as on SQLite).
    assert_eq!(outcome["requests_deleted"], 12_000, "{outcome}");
    assert_eq!(outcome["vacuumed"], false, "{outcome}");
    assert_eq!(db.int("SELECT count(*) FROM requests"), 1);
    assert_eq!(
        db.rows("SELECT client_key FROM sessions"),
        vec![vec![Some("recent".to_string())]]
    );
    let (_, list) = get_with_status(&first, "/api/sessions").await;
    assert_eq!(list["total"], 1, "{list}");

    // The daily run (at start) on PostgreSQL.
    age(&db, "recent", 31);
    first.terminate();
    first.child.wait().await.unwrap();
    let second = Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &args).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.int("SELECT count(*) FROM sessions") > 0 {
        assert!(
            Instant::now() < deadline,
            "retention did not run: {}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.int("SELECT count(*) FROM requests"), 0);
    assert!(
        second.log().contains("retention applied"),
        "{}",
        second.log()
    );
}

#[tokio::test]
async fn the_command_line_works_on_a_postgresql_store() {
    let Some(db) = TestDb::create("cli") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = start(&mock, &db).await;
    assert_eq!(chat(&proxy, "first task", Some("cli-a")).await, 200);
    assert_eq!(chat(&proxy, "=1+1 second task", Some("cli-b")).await, 200);
    wait_written(&proxy, 2).await;
    let url = db.url();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--db", &url]);
        common::run_cli(&all, &[])
    };
    let list = run(&["sessions", "list"]);
    assert!(list.contains("cli-a") && list.contains("cli-b"), "{list}");
    // KIMI_PROXY_DB selects it too.
    let listed: Value = serde_json::from_str(&common::run_cli(
        &["sessions", "list", "--json"],
        &[("KIMI_PROXY_DB", &url)],
    ))
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let b = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["client_key"] == "cli-b")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let show: Value =
        serde_json::from_str(&run(&["sessions", "show", &b.to_string(), "--json"])).unwrap();
    assert_eq!(show["session"]["request_count"], 1, "{show}");
    assert_eq!(show["latest_requests"][0]["preview"], "=1+1 second task");
    let csv = run(&["sessions", "export", &b.to_string(), "--format", "csv"]);
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains("\"'=1+1 second task\""), "{csv}");
    let tail = run(&["requests", "tail", "-n", "5"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.contains("mock/model"), "{tail}");

    // --follow prints what the server writes after it started (with `-n 0`, nothing before).
    let mut follow = std::process::Command::new(common::BIN)
        .args([
            "requests", "tail", "--follow", "--json", "-n", "0", "--db", &url,
        ])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(chat(&proxy, "while following", Some("cli-a")).await, 200);
    let previews = tokio::task::spawn_blocking(move || {
        let mut previews = Vec::new();
        while let Ok(line) = seen.recv_timeout(Duration::from_secs(10)) {
            let row: Value = serde_json::from_str(&line).unwrap();
            previews.push(row["preview"].as_str().unwrap_or("").to_string());
            if previews.len() == 1 {
                break;
            }
        }
        previews
    })
    .await
    .unwrap();
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert_eq!(previews, ["while following"]);

    let deleted = run(&["sessions", "delete", &b.to_string(), "424242"]);
    assert!(deleted.contains("deleted 1 of 2"), "{deleted}");
    assert_eq!(db.int("SELECT count(*) FROM sessions"), 1);
    assert_eq!(db.int("SELECT count(*) FROM requests"), 2);
}
