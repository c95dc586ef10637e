//! The PostgreSQL store over TLS (`sslmode` in the URL) against the machine's server. Skipped, with the reason
//! printed, when the server cannot be reached or has TLS off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::pg::TestDb;
use common::{MockUpstream, Proxy, chat_body, client, mock_config, wait_written};

const KEY: (&str, &str) = ("MOCK_KEY", "sk-mock-provider-key");
const EXTRA: &str = "[store]\nflush_interval_ms = 20\n";

/// The server's certificate file, when TLS is on.
fn server_certificate(db: &TestDb) -> Option<String> {
    if db.rows("SHOW ssl")[0][0].as_deref() != Some("on") {
        eprintln!("SKIPPED: the PostgreSQL server has ssl = off");
        return None;
    }
    db.rows("SHOW ssl_cert_file")[0][0].clone()
}

/// The proxy's connections to the test's database, as (encrypted, count).
fn proxy_connections(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(&format!(
        "SELECT s.ssl, count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
         WHERE a.application_name = 'kimi-proxy' AND a.datname = '{}' GROUP BY s.ssl",
        db.name
    ))
}

async fn one_request_is_stored(proxy: &Proxy, db: &TestDb) {
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat_body("mock/model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    wait_written(proxy, 1).await;
    assert_eq!(db.int("SELECT count(*) FROM requests"), 1);
}

#[tokio::test]
async fn sslmode_require_writes_over_an_encrypted_connection() {
    let Some(db) = TestDb::create("tls_require") else {
        return;
    };
    if server_certificate(&db).is_none() {
        return;
    }
    let mock = MockUpstream::start().await.unwrap();
    let url = format!("{}?sslmode=require", db.url());
    let proxy = Proxy::start_with_args(&mock_config(&mock, EXTRA), &[KEY], &["--db", &url]).await;
    one_request_is_stored(&proxy, &db).await;
    let connections = proxy_connections(&db);
    assert!(!connections.is_empty(), "{connections:?}");
    assert!(
        connections.iter().all(|row| row[0].as_deref() == Some("t")),
        "a plain connection: {connections:?}"
    );
}

#[tokio::test]
async fn sslmode_verify_full_refuses_a_certificate_it_cannot_verify_and_accepts_its_root() {
    let Some(db) = TestDb::create("tls_verify") else {
        return;
    };
    let Some(certificate) = server_certificate(&db) else {
        return;
    };
    // The Mozilla roots do not vouch for a machine's own certificate: the proxy does not start, and says why.
    let url = format!("{}?sslmode=verify-full", db.url());
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, mock_config(&mock, EXTRA)).unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_kimi-proxy"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &url, "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .env_clear()
        .env("MOCK_KEY", KEY.1)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the proxy neither started nor stopped")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(proxy_connections(&db).is_empty());

    // With the server's own certificate as the root, and the host name it was issued for (Debian's snake-oil
    // certificate names `localhost`), the connection is verified and encrypted.
    let readable =
        std::fs::read_to_string(&certificate).is_ok_and(|pem| pem.contains("CERTIFICATE"));
    if !readable {
        eprintln!("SKIPPED (second half): the server's certificate {certificate} cannot be read");
        return;
    }
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={certificate}",
        db.url().replace("127.0.0.1", "localhost")
    );
    let proxy = Proxy::start_with_args(&mock_config(&mock, EXTRA), &[KEY], &["--db", &url]).await;
    one_request_is_stored(&proxy, &db).await;
    let connections = proxy_connections(&db);
    assert!(
        !connections.is_empty() && connections.iter().all(|row| row[0].as_deref() == Some("t")),
        "{connections:?}"
    );
}
