//! `kimi-proxy migrate --from FILE.db --to postgres://…` on a store the real binary wrote, against the machine's
//! PostgreSQL (skipped, with the reason printed, only when the server cannot be reached).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::pg::TestDb;
use common::{MockUpstream, Proxy, client, get_with_status, mock_config, run_cli, wait_written};
use serde_json::{Value, json};

const EXTRA: &str = "input_price = 2.0\noutput_price = 8.0\n\n[store]\nflush_interval_ms = 20\n";
const KEY: (&str, &str) = ("MOCK_KEY", "sk-mock-provider-key");

async fn chat(proxy: &Proxy, text: &str, session: &str) {
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-session-id", session)
        .json(&json!({"model": "mock/model", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
}

/// A proxy on its own SQLite store, `n` requests over three client sessions, stopped; the store's sessions as the
/// API showed them.
async fn sqlite_store_with(mock: &MockUpstream, n: usize) -> (Proxy, Value) {
    let mut proxy = Proxy::start(&mock_config(mock, EXTRA), &[KEY]).await;
    for i in 0..n {
        chat(
            &proxy,
            &format!("turn {i}"),
            ["alpha", "beta", "gamma"][i % 3],
        )
        .await;
    }
    wait_written(&proxy, n as u64).await;
    let (_, sessions) =
        get_with_status(&proxy, "/api/sessions?limit=100&sort=created_at&order=asc").await;
    proxy.terminate();
    proxy.child.wait().await.unwrap();
    (proxy, sessions)
}

/// Runs the migrate command; its exit status, standard output and standard error.
fn migrate(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kimi-proxy"))
        .arg("migrate")
        .args(args)
        .env_clear()
        .env("KIMI_PROXY_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_store_is_copied_in_steps_then_verified_and_served_from_postgresql() {
    let Some(db) = TestDb::create("migrate") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let (sqlite, sessions_before) = sqlite_store_with(&mock, 12).await;
    let from = sqlite.db_path();
    let from = from.to_str().unwrap();
    // Usage imported from Claude Code's records moves too.
    let ledger = tempfile::tempdir().unwrap();
    let project = ledger.path().join("projects/-home-u-alpha");
    std::fs::create_dir_all(&project).unwrap();
    let entry = |n: u32| {
        format!(
            r#"{{"type":"assistant","isSidechain":false,"cwd":"/home/u/alpha","sessionId":"s","message":{{"id":"msg_{n}","model":"claude-sonnet-4-5","usage":{{"input_tokens":{n}0,"output_tokens":{n},"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}},"requestId":"req_{n}","timestamp":"2025-01-0{n}T10:00:00.000Z"}}"#
        ) + "\n"
    };
    std::fs::write(project.join("s.jsonl"), entry(1) + &entry(2)).unwrap();
    let imported = run_cli(
        &[
            "import",
            "claude-code",
            "--path",
            ledger.path().to_str().unwrap(),
            "--db",
            from,
            "--json",
        ],
        &[],
    );
    assert!(imported.contains("\"imported\":2"), "{imported}");
    let usage_report = |db: &str| {
        run_cli(
            &["report", "daily", "--timezone", "UTC", "--json", "--db", db],
            &[],
        )
    };
    let report_before = usage_report(from);

    // A first run stopped after 5 rows: the three sessions and two requests.
    let (ok, out, err) = migrate(&["--from", from, "--to", &db.url(), "--max-rows", "5"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("run the same command again"), "{out}");
    assert_eq!(db.int("SELECT count(*) FROM sessions"), 3);
    assert_eq!(db.int("SELECT count(*) FROM requests"), 2);

    // The next run continues where it stopped and checks the copy.
    let out = run_cli(
        &["migrate", "--from", from, "--to", &db.url(), "--json"],
        &[],
    );
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["partial"], false);
    let requests = &report["tables"][1];
    assert_eq!(requests["table"], "requests");
    assert_eq!(requests["copied"], 10, "{report}");
    assert_eq!(requests["target_rows"], 12);
    // A third run copies nothing and verifies again.
    let again: Value = serde_json::from_str(
        run_cli(
            &["migrate", "--from", from, "--to", &db.url(), "--json"],
            &[],
        )
        .trim(),
    )
    .unwrap();
    assert!(
        again["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["copied"] == 0),
        "{again}"
    );
    assert_eq!(again["verified"], true);

    assert_eq!(db.int("SELECT count(*) FROM usage_entries"), 2);
    assert_eq!(db.int("SELECT count(*) FROM ledger_files"), 1);
    assert_eq!(
        usage_report(&db.url()),
        report_before,
        "the report reads the same"
    );

    // A proxy on the PostgreSQL database shows the same sessions, and its new requests get new ids.
    let proxy =
        Proxy::start_with_args(&mock_config(&mock, EXTRA), &[KEY], &["--db", &db.url()]).await;
    let (_, sessions_after) =
        get_with_status(&proxy, "/api/sessions?limit=100&sort=created_at&order=asc").await;
    assert_eq!(sessions_after, sessions_before);
    chat(&proxy, "after the move", "alpha").await;
    wait_written(&proxy, 1).await;
    assert_eq!(db.int("SELECT count(*) FROM requests"), 13);
    assert_eq!(
        db.int("SELECT request_count FROM sessions WHERE client_key = 'alpha'"),
        5
    );
}

#[tokio::test]
async fn a_database_holding_other_rows_is_refused() {
    let Some(db) = TestDb::create("migrate_refused") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let (first, _) = sqlite_store_with(&mock, 2).await;
    let (second, _) = sqlite_store_with(&mock, 2).await;
    let (ok, out, err) = migrate(&[
        "--from",
        first.db_path().to_str().unwrap(),
        "--to",
        &db.url(),
    ]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = migrate(&[
        "--from",
        second.db_path().to_str().unwrap(),
        "--to",
        &db.url(),
    ]);
    assert!(!ok);
    assert!(err.contains("migrate into an empty database"), "{err}");
    assert!(!err.contains("password"), "{err}");
    assert_eq!(db.int("SELECT count(*) FROM requests"), 2);
}
