//! Faults around the proxy, against the real binary: an upstream that resets, stalls or sends garbage; a
//! database that fills its disk or turns read-only while the proxy runs. The proxy keeps answering, reports
//! what happened, keeps the records it holds, and recovers by itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{
    MockUpstream, Proxy, assert_answers, chat_body, client, get_json, mock_config, read_body,
    recent_records,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Short enough for the stall faults to end the test quickly, long enough that an answering mock never hits them
/// on a loaded machine.
const TIMEOUTS: &str = "[providers.mock.timeouts]\nfirst_byte_ms = 2000\nidle_ms = 2000\n";

/// How long a test waits for the writer to reach a state: generous, since only a failing test waits this long.
const WRITER_DEADLINE: Duration = Duration::from_secs(60);

/// Says on the terminal (past libtest's capture, so it shows without `--nocapture`) why a test did not run.
fn skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {reason}");
}

/// Sends one request with `x-mock-fault: fault`; returns the status and whether the body ended cleanly.
async fn faulty(proxy: &Proxy, fault: &str, stream: bool) -> (u16, bool, Vec<u8>) {
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-mock-fault", fault)
        .header("x-mock-chunks", "10")
        .json(&chat_body("mock/model", stream))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let (received, clean) = read_body(response).await;
    (status, clean, received)
}

#[tokio::test]
async fn upstream_faults_get_clear_errors_and_records() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, TIMEOUTS), &[("MOCK_KEY", "k")]).await;

    // Reset mid-stream: the client sees the stream break (no clean end, no [DONE]).
    let (status, clean, body) = faulty(&proxy, "close-mid-stream", true).await;
    assert_eq!(status, 200);
    assert!(!clean && !body.ends_with(b"data: [DONE]\n\n"));
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["error_kind"], "upstream_stream_error");
    assert_answers(&proxy, "mock/model").await;

    // A stream that stalls after its first event is cut after the idle timeout.
    let (status, clean, _) = faulty(&proxy, "stall", true).await;
    assert_eq!(status, 200);
    assert!(!clean, "a stalled stream must not look complete");
    let record = &recent_records(&proxy, 3).await[0];
    assert_eq!(record["error_kind"], "upstream_idle_timeout");
    assert_answers(&proxy, "mock/model").await;

    // No headers at all: a 504 in the OpenAI format, after the first-byte timeout (retried, bounded).
    let (status, clean, body) = faulty(&proxy, "stall-headers", false).await;
    assert_eq!(status, 504);
    assert!(clean);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");
    let record = &recent_records(&proxy, 5).await[0];
    assert_eq!(record["error_kind"], "upstream_timeout");
    assert_answers(&proxy, "mock/model").await;

    // Garbage in an event stream: forwarded as it came (the proxy is transparent), recorded as unreadable.
    let (status, clean, body) = faulty(&proxy, "garbage", true).await;
    assert_eq!(status, 200);
    assert!(clean);
    assert!(body.starts_with(b"this is not SSE"));
    let record = &recent_records(&proxy, 7).await[0];
    assert_eq!(record["error_kind"], "upstream_unreadable_stream");
    assert_answers(&proxy, "mock/model").await;
}

/// Runs a shell command, panicking with its output on failure.
fn sh(command: &str) -> std::process::Output {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`{command}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs mounted for one test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

async fn store_stats(proxy: &Proxy) -> Value {
    get_json::<Value>(proxy, "/api/stats/store").await["writer"].clone()
}

/// Waits (up to `limit`) until `done` holds for the writer's stats; returns them.
async fn wait_writer(proxy: &Proxy, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let stats = store_stats(proxy).await;
        if done(&stats) {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writer never got there: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count_rows(db: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_full_disk_is_survived_and_held_records_are_written_after() {
    let scratch = tempfile::tempdir().unwrap();
    let disk_dir = scratch.path().join("disk");
    let Some(_disk) = SmallDisk::mount(&disk_dir, "1m") else {
        skip(
            "a_full_disk_is_survived_and_held_records_are_written_after",
            "cannot mount a tmpfs here (needs root and mount rights); the read-only test covers recovery",
        );
        return;
    };
    let db = disk_dir.join("kimi.db");
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start_with_args(
        &mock_config(&mock, ""),
        &[("MOCK_KEY", "k")],
        &["--db", db.to_str().unwrap()],
    )
    .await;
    for _ in 0..3 {
        assert_answers(&proxy, "mock/model").await;
    }
    wait_writer(&proxy, WRITER_DEADLINE, |w| w["written"] == 3).await;

    // Fill the disk.
    let filler = disk_dir.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=1000"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    for _ in 0..40 {
        assert_answers(&proxy, "mock/model").await;
    }
    let failing = wait_writer(&proxy, WRITER_DEADLINE, |w| {
        w["healthy"] == false && w["write_errors"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(
        failing["held"].as_u64().unwrap() > 0,
        "records are held: {failing}"
    );
    assert_eq!(failing["dropped"], 0);
    let stats: Value = get_json(&proxy, "/api/stats/store").await;
    assert!(
        stats["writer"]["last_error"]
            .as_str()
            .unwrap()
            .contains("full"),
        "{stats}"
    );
    assert!(proxy.log().contains("store write failed"));

    // Space again: everything held is written, nothing was lost.
    std::fs::remove_file(&filler).unwrap();
    let recovered = wait_writer(&proxy, WRITER_DEADLINE, |w| {
        w["healthy"] == true && w["held"] == 0 && w["written"] == 43
    })
    .await;
    assert_eq!(recovered["dropped"], 0);
    assert!(proxy.log().contains("store writable again"));
    assert_eq!(count_rows(&db), 43);
}

/// The unprivileged user the proxy runs as when the tests run as root (root writes read-only files).
const NOBODY: &str = "65534";
const AS_NOBODY: [&str; 4] = ["--reuid=65534", "--regid=65534", "--clear-groups", "--"];

/// Starts the proxy as an unprivileged user: as `nobody` through `setpriv` when the tests run as root, as
/// the current user otherwise. `Err` says why that is impossible here. `Ok` carries whether it runs as nobody.
async fn start_unprivileged(
    config: &str,
    data: &Path,
    db: &Path,
) -> Result<(tokio::process::Child, std::net::SocketAddr, PathBuf, bool), String> {
    let log = data.join("proxy.log");
    let config_path = data.join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let as_nobody = is_root();
    let mut command = if as_nobody {
        sh(&format!("chown -R {NOBODY}:{NOBODY} {}", data.display()));
        // Can nobody be switched to, and write the data directory (the whole path must be searchable)?
        let probe = std::process::Command::new("setpriv")
            .args(AS_NOBODY)
            .args(["test", "-w"])
            .arg(data)
            .output();
        match probe {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                return Err(format!(
                    "running as root, but nobody cannot write {} through setpriv: {}",
                    data.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            Err(error) => return Err(format!("running as root without setpriv ({error})")),
        }
        let mut command = Command::new("setpriv");
        command.args(AS_NOBODY).arg(common::BIN);
        command
    } else {
        Command::new(common::BIN)
    };
    command
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--db")
        .arg(db)
        .env_clear()
        .env("KIMI_PROXY_LOG", "info")
        .env("MOCK_KEY", "k")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "proxy exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr, log, as_nobody))
}

#[tokio::test]
async fn a_database_turning_read_only_is_survived() {
    let scratch = tempfile::tempdir().unwrap();
    sh(&format!("chmod 755 {}", scratch.path().display()));
    let data = scratch.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("kimi.db");
    let mock = MockUpstream::start().await.unwrap();
    let (_child, addr, log, as_nobody) =
        match start_unprivileged(&mock_config(&mock, ""), &data, &db).await {
            Ok(started) => started,
            Err(reason) => {
                skip("a_database_turning_read_only_is_survived", &reason);
                return;
            }
        };
    let url = |path: &str| format!("http://{addr}{path}");
    let send = || async {
        let response = client()
            .post(url("/v1/chat/completions"))
            .json(&chat_body("mock/model", false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    };
    let writer = || async {
        let stats: Value = client()
            .get(url("/api/stats/store"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["writer"].clone()
    };
    let wait = |limit: Duration, done: fn(&Value) -> bool| async move {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let stats = writer().await;
            if done(&stats) {
                return stats;
            }
            assert!(tokio::time::Instant::now() < deadline, "writer: {stats}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for _ in 0..3 {
        send().await;
    }
    wait(WRITER_DEADLINE, |w| w["written"] == 3).await;

    // The database file is replaced by a read-only copy (as a backup tool restoring it might).
    let copy = data.join("kimi.db.ro");
    sh(&format!(
        "cp {db} {copy} && chmod 444 {copy} && mv -f {copy} {db} && rm -f {db}-wal {db}-shm",
        db = db.display(),
        copy = copy.display()
    ));
    for _ in 0..10 {
        send().await;
    }
    let failing = wait(WRITER_DEADLINE, |w| {
        w["healthy"] == false && w["held"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(failing["dropped"], 0, "{failing}");
    assert!(
        failing["last_error"].as_str().unwrap().contains("readonly"),
        "{failing}"
    );

    // Writable again (SQLite created its -wal and -shm files with the database's read-only mode, so they are
    // fixed too, as an operator would with `chmod 644 kimi.db*`): the held records are written, nothing lost.
    let owner = if as_nobody {
        format!("chown {NOBODY}:{NOBODY} {db}* && ", db = db.display())
    } else {
        String::new()
    };
    sh(&format!("{owner}chmod 644 {db}*", db = db.display()));
    let recovered = wait(WRITER_DEADLINE, |w| {
        w["healthy"] == true && w["held"] == 0 && w["written"] == 13
    })
    .await;
    assert_eq!(recovered["dropped"], 0);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("store write failed"), "{log}");
    assert!(log.contains("store writable again"), "{log}");
    assert!(count_rows(&db) >= 10);
}
