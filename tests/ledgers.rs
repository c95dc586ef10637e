//! `kimi-proxy import` and `kimi-proxy report` on agents' records written here, and ccusage on the same
//! Claude Code fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::pg::TestDb;
use common::{MockUpstream, Proxy, mock_config, run_cli};
use serde_json::Value;

/// One Claude Code assistant entry, as Claude Code writes it (fields per ccusage's schema).
#[derive(Clone)]
struct Claude {
    ts: &'static str,
    session: &'static str,
    cwd: &'static str,
    msg: String,
    req: String,
    model: &'static str,
    input: u64,
    output: u64,
    creation: u64,
    read: u64,
    cost: Option<f64>,
    sidechain: bool,
}

impl Claude {
    fn new(ts: &'static str, n: u32) -> Claude {
        Claude {
            ts,
            session: "sess-a",
            cwd: "/home/u/alpha",
            msg: format!("msg_{n:04}"),
            req: format!("req_{n:04}"),
            model: "claude-sonnet-4-5-20250929",
            input: 10 + u64::from(n),
            output: 100 + 3 * u64::from(n),
            creation: 1000 + u64::from(n),
            read: 20_000 + 7 * u64::from(n),
            cost: Some(0.01 * f64::from(n + 1)),
            sidechain: false,
        }
    }

    fn line(&self) -> String {
        let cost = self
            .cost
            .map(|c| format!(r#""costUSD":{c},"#))
            .unwrap_or_default();
        format!(
            r#"{{"parentUuid":"p","isSidechain":{side},"userType":"external","cwd":"{cwd}","sessionId":"{session}","version":"1.0.98","gitBranch":"main","type":"assistant",{cost}"message":{{"id":"{msg}","type":"message","role":"assistant","model":"{model}","content":[{{"type":"text","text":"ok"}}],"stop_reason":"end_turn","usage":{{"input_tokens":{input},"cache_creation_input_tokens":{creation},"cache_read_input_tokens":{read},"cache_creation":{{"ephemeral_5m_input_tokens":{creation},"ephemeral_1h_input_tokens":0}},"output_tokens":{output},"service_tier":"standard"}}}},"requestId":"{req}","uuid":"u-{msg}-{req}","timestamp":"{ts}"}}"#,
            side = self.sidechain,
            cwd = self.cwd,
            session = self.session,
            msg = self.msg,
            model = self.model,
            input = self.input,
            creation = self.creation,
            read = self.read,
            output = self.output,
            req = self.req,
            ts = self.ts,
        ) + "\n"
    }
}

fn user_line(ts: &str) -> String {
    format!(
        r#"{{"parentUuid":null,"isSidechain":false,"type":"user","message":{{"role":"user","content":"do it"}},"uuid":"x","timestamp":"{ts}","sessionId":"sess-a","cwd":"/home/u/alpha"}}"#
    ) + "\n"
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A Claude config directory without sidechains: two projects, three days, a session resumed into a second
/// file that repeats two entries, a malformed line and a line still being written.
fn claude_fixture(root: &Path) -> Vec<Claude> {
    let projects = root.join("projects");
    let mut all = Vec::new();
    let a: Vec<Claude> = vec![
        Claude::new("2025-01-01T09:00:00.000Z", 1),
        Claude::new("2025-01-01T23:59:59.500Z", 2),
        Claude::new("2025-01-02T00:00:00.500Z", 3),
        Claude::new("2025-01-02T12:00:00.000Z", 4),
    ];
    let mut text = user_line("2025-01-01T08:59:00.000Z");
    for e in &a {
        text += &e.line();
    }
    text += "{\"type\":\"assistant\",\"message\":{\"usage\":{\"input_tokens\": 5,\n";
    write(&projects.join("-home-u-alpha/sess-a.jsonl"), &text);
    all.extend(a.iter().cloned());
    // Resumed: the new file starts by repeating the last two entries of the first.
    let mut b = Claude::new("2025-01-03T08:00:00.000Z", 5);
    b.session = "sess-b";
    let mut text = a[2].line() + &a[3].line() + &b.line();
    let torn = Claude::new("2025-01-03T09:00:00.000Z", 6).line();
    text += &torn[..torn.len() - 40];
    write(&projects.join("-home-u-alpha/sess-b.jsonl"), &text);
    all.push(b);
    // Another project, another model.
    let mut c = Claude::new("2025-01-02T15:30:00.000Z", 7);
    c.session = "sess-c";
    c.cwd = "/home/u/beta";
    c.model = "claude-opus-4-1-20250805";
    write(&projects.join("-home-u-beta/sess-c.jsonl"), &c.line());
    all.push(c);
    all
}

/// Sidechains added to the fixture: a subagent's own two calls, and a replay of a parent message under another
/// request id (the /btw copy ccusage's #913 describes), which must not count again.
fn add_sidechains(root: &Path) -> Vec<Claude> {
    let mut own = vec![
        Claude::new("2025-01-02T12:00:05.000Z", 8),
        Claude::new("2025-01-02T12:00:09.000Z", 9),
    ];
    for e in &mut own {
        e.sidechain = true;
    }
    let mut replay = Claude::new("2025-01-02T12:00:00.000Z", 4);
    replay.req = "req_replayed".into();
    replay.sidechain = true;
    let text = replay.line() + &own[0].line() + &own[1].line();
    write(
        &root.join("projects/-home-u-alpha/sess-a/subagents/agent-1.jsonl"),
        &text,
    );
    own
}

struct Env {
    dir: tempfile::TempDir,
    /// The PostgreSQL store instead of the SQLite file.
    pg: Option<TestDb>,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
        }
    }

    /// An environment whose store is a fresh PostgreSQL database (`None`: the server cannot be reached).
    fn postgres(test: &str) -> Option<Env> {
        Some(Env {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(TestDb::create(test)?),
        })
    }

    fn db(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url(),
            None => self
                .dir
                .path()
                .join("data/kimi-proxy.db")
                .display()
                .to_string(),
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn run(&self, args: &[&str]) -> String {
        let home = self.home().display().to_string();
        let db = self.db();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", &db]);
        run_cli(&all, &[("HOME", &home)])
    }

    fn import(&self, agent: &str, path: &Path) -> Value {
        let path = path.display().to_string();
        let out = self.run(&["import", agent, "--path", &path, "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["sources"][0].clone()
    }

    fn report(&self, args: &[&str]) -> Value {
        let mut all = vec!["report"];
        all.extend(args);
        all.push("--json");
        serde_json::from_str(&self.run(&all)).unwrap()
    }
}

fn sum(entries: &[Claude], f: impl Fn(&Claude) -> u64) -> u64 {
    entries.iter().map(f).sum()
}

#[test]
fn claude_code_import_is_idempotent_and_counts_what_it_skipped() {
    let env = Env::new();
    let claude = env.dir.path().join("claude");
    let entries = claude_fixture(&claude);
    let first = env.import("claude-code", &claude);
    assert_eq!(first["files"], 3);
    assert_eq!(first["imported"], entries.len() as u64, "{first}");
    // The resumed session's two repeated entries.
    assert_eq!(first["already_known"], 2, "{first}");
    assert_eq!(first["malformed"], 1, "{first}");
    assert!(first["pending_bytes"].as_u64().unwrap() > 0);
    assert_eq!(first["first_ms"], 1_735_722_000_000_i64);

    let again = env.import("claude-code", &claude);
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["entries_read"], 0, "{again}");

    let report = env.report(&["daily", "--timezone", "UTC"]);
    let totals = &report["totals"];
    assert_eq!(totals["requests"], entries.len() as u64);
    assert_eq!(totals["input_tokens"], sum(&entries, |e| e.input));
    assert_eq!(totals["output_tokens"], sum(&entries, |e| e.output));
    assert_eq!(
        totals["cache_creation_tokens"],
        sum(&entries, |e| e.creation)
    );
    assert_eq!(totals["cache_read_tokens"], sum(&entries, |e| e.read));
    assert!(totals["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(report["timezone"], "UTC");

    // The text report states its time zone.
    let text = env.run(&["report", "project", "--timezone", "UTC"]);
    assert!(text.contains("time zone UTC"), "{text}");
    assert!(text.contains("/home/u/beta"), "{text}");

    // Sidechains: the subagent's own calls count, its replay of a parent message does not.
    let own = add_sidechains(&claude);
    let third = env.import("claude-code", &claude);
    assert_eq!(third["imported"], own.len() as u64, "{third}");
    assert_eq!(third["already_known"], 1, "{third}");
    let report = env.report(&["daily", "--timezone", "UTC", "--source", "claude-code"]);
    assert_eq!(
        report["totals"]["output_tokens"],
        sum(&entries, |e| e.output) + sum(&own, |e| e.output)
    );
}

/// The same fixture imported into SQLite and into PostgreSQL: the second import into PostgreSQL adds nothing,
/// and every report (per day, project, session; with the sidechains added later) is the same on both.
#[test]
fn an_import_into_postgresql_reports_what_sqlite_does() {
    let Some(pg) = Env::postgres("ledgers") else {
        return;
    };
    let sqlite = Env::new();
    let claude = sqlite.dir.path().join("claude");
    let entries = claude_fixture(&claude);
    let first = pg.import("claude-code", &claude);
    assert_eq!(first["imported"], entries.len() as u64, "{first}");
    assert_eq!(first, sqlite.import("claude-code", &claude));
    let again = pg.import("claude-code", &claude);
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["entries_read"], 0, "{again}");
    let db = pg.pg.as_ref().unwrap();
    assert_eq!(
        db.int("SELECT count(*) FROM usage_entries"),
        entries.len() as i64
    );
    assert_eq!(db.int("SELECT count(*) FROM ledger_files"), 3);
    add_sidechains(&claude);
    assert_eq!(
        pg.import("claude-code", &claude),
        sqlite.import("claude-code", &claude)
    );
    for args in [
        &["daily", "--timezone", "UTC", "--breakdown"][..],
        &["weekly", "--timezone", "Europe/Paris"],
        &["project", "--timezone", "UTC"],
        &[
            "session",
            "--since",
            "2025-01-01",
            "--until",
            "2025-01-01",
            "--timezone",
            "UTC",
        ],
        &["daily", "--timezone", "UTC", "--project", "/home/u/beta"],
    ] {
        let ours = pg.report(args);
        assert!(
            ours["totals"]["requests"].as_u64().unwrap() > 0,
            "{args:?}: {ours}"
        );
        assert_eq!(ours, sqlite.report(args), "{args:?}");
    }
    assert_eq!(
        pg.run(&["report", "project", "--timezone", "UTC"]),
        sqlite.run(&["report", "project", "--timezone", "UTC"])
    );

    // A database created before the ledger tables were on PostgreSQL gets them when next opened.
    db.rows("DROP TABLE usage_entries; DROP TABLE ledger_files");
    let fresh = pg.import("claude-code", &claude);
    assert!(fresh["imported"].as_u64().unwrap() > 0, "{fresh}");
    let args = ["daily", "--timezone", "UTC", "--breakdown"];
    assert_eq!(pg.report(&args), sqlite.report(&args));
}

#[test]
fn days_are_counted_in_the_given_time_zone() {
    let env = Env::new();
    let claude = env.dir.path().join("claude");
    claude_fixture(&claude);
    env.import("claude-code", &claude);
    let days = |tz: &str| -> Vec<String> {
        env.report(&["daily", "--timezone", tz])["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(days("UTC"), ["2025-01-01", "2025-01-02", "2025-01-03"]);
    // 23:59:59 UTC on the 1st is the 2nd in Tokyo; 08:00 UTC on the 3rd is still the 3rd.
    let tokyo = env.report(&["daily", "--timezone", "Asia/Tokyo"]);
    let rows = tokyo["rows"].as_array().unwrap();
    assert_eq!(rows[0]["key"], "2025-01-01");
    assert_eq!(rows[0]["requests"], 1);
    // In Los Angeles, midnight UTC on the 2nd is still the 1st.
    let la = env.report(&["daily", "--timezone", "America/Los_Angeles"]);
    assert_eq!(la["rows"][0]["key"], "2025-01-01");
    assert_eq!(la["rows"][0]["requests"], 3);
    // --since/--until are days in the report's zone.
    let one = env.report(&[
        "daily",
        "--timezone",
        "UTC",
        "--since",
        "2025-01-02",
        "--until",
        "20250102",
    ]);
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    assert_eq!(one["totals"]["requests"], 3);
    let monthly = env.report(&["monthly", "--timezone", "UTC"]);
    assert_eq!(monthly["rows"][0]["key"], "2025-01");
    let weekly = env.report(&["weekly", "--timezone", "UTC"]);
    // 2025-01-01 is a Wednesday: its week starts on Monday 2024-12-30.
    assert_eq!(weekly["rows"][0]["key"], "2024-12-30");
}

fn codex_token_count(ts: &str, total: (u64, u64, u64)) -> String {
    let (i, c, o) = total;
    format!(
        r#"{{"timestamp":"{ts}","type":"event_msg","payload":{{"type":"token_count","info":{{"total_token_usage":{{"input_tokens":{i},"cached_input_tokens":{c},"output_tokens":{o},"reasoning_output_tokens":0,"total_tokens":{t}}},"last_token_usage":{{"input_tokens":0,"cached_input_tokens":0,"output_tokens":0,"reasoning_output_tokens":0,"total_tokens":0}},"model_context_window":272000}},"rate_limits":null}}}}"#,
        t = i + o
    ) + "\n"
}

#[test]
fn codex_cumulative_counters_import_as_per_turn_deltas() {
    let env = Env::new();
    let codex = env.dir.path().join("codex");
    let file = codex.join("sessions/2025/09/10/rollout-2025-09-10T10-00-00-0199aaaa-bbbb-7ccc-8ddd-eeeeffff0000.jsonl");
    let text = [
        r#"{"timestamp":"2025-09-10T10:00:00.000Z","type":"session_meta","payload":{"id":"0199aaaa-bbbb-7ccc-8ddd-eeeeffff0000","timestamp":"2025-09-10T10:00:00.000Z","cwd":"/home/u/gamma","originator":"codex_cli_rs","cli_version":"0.36.0"}}"#.to_string() + "\n",
        r#"{"timestamp":"2025-09-10T10:00:01.000Z","type":"turn_context","payload":{"cwd":"/home/u/gamma","approval_policy":"on-request","model":"gpt-5-codex","summary":"auto"}}"#.to_string() + "\n",
        codex_token_count("2025-09-10T10:00:05.000Z", (1000, 200, 50)),
        codex_token_count("2025-09-10T10:00:06.000Z", (1000, 200, 50)),
        codex_token_count("2025-09-10T10:01:00.000Z", (3000, 1200, 90)),
    ]
    .concat();
    write(&file, &text);
    let first = env.import("codex", &codex);
    assert_eq!(first["imported"], 2, "{first}");
    let report = env.report(&["session", "--timezone", "UTC"]);
    let t = &report["totals"];
    // Input excludes cached tokens: 3000 - 1200.
    assert_eq!(
        (
            t["input_tokens"].as_i64(),
            t["cache_read_tokens"].as_i64(),
            t["output_tokens"].as_i64()
        ),
        (Some(1800), Some(1200), Some(90))
    );
    // gpt-5-codex is in the catalog: 1.25 in, 0.125 cached, 10 out per million.
    let expected = (1800.0 * 1.25 + 1200.0 * 0.125 + 90.0 * 10.0) / 1e6;
    assert!(
        (t["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9,
        "{t}"
    );
    assert_eq!(
        report["rows"][0]["key"],
        "codex/0199aaaa-bbbb-7ccc-8ddd-eeeeffff0000"
    );
    assert_eq!(env.import("codex", &codex)["imported"], 0);
}

#[test]
fn cline_continue_and_kimi_cli_records_import() {
    let env = Env::new();
    let base = env.dir.path();
    let cline = base.join("cline/state/taskHistory.json");
    write(
        &cline,
        r#"[{"id":"1736000000000","ts":1736000000000,"task":"a","tokensIn":120,"tokensOut":45,"cacheWrites":1000,"cacheReads":5000,"totalCost":0.0123,"cwdOnTaskInitialization":"/home/u/app","modelId":"claude-sonnet-4-5"}]"#,
    );
    assert_eq!(env.import("cline", &base.join("cline"))["imported"], 1);
    // The task went on: the aggregate grew and replaces the earlier one.
    write(
        &cline,
        r#"[{"id":"1736000000000","ts":1736000000000,"task":"a","tokensIn":220,"tokensOut":90,"cacheWrites":1000,"cacheReads":9000,"totalCost":0.02,"cwdOnTaskInitialization":"/home/u/app","modelId":"claude-sonnet-4-5"}]"#,
    );
    let grown = env.import("cline", &base.join("cline"));
    assert_eq!(grown["updated"], 1, "{grown}");

    let cont = base.join("continue/dev_data/0.2.0/tokensGenerated.jsonl");
    write(
        &cont,
        &(r#"{"eventName":"tokensGenerated","schema":"0.2.0","createdAt":"2025-03-01T12:00:00.000Z","userId":"","userAgent":"VSCode","selectedProfileId":"local","model":"gpt-4.1","provider":"openai","promptTokens":1500,"generatedTokens":300}"#.to_string() + "\n"),
    );
    assert_eq!(
        env.import("continue", &base.join("continue"))["imported"],
        1
    );

    let kimi = base.join("kimi/sessions/0123456789abcdef0123456789abcdef/sess-1/wire.jsonl");
    write(
        &kimi,
        &[
            r#"{"type":"metadata","protocol_version":"1.3"}"#,
            r#"{"timestamp":1757000001.25,"message":{"type":"StatusUpdate","payload":{"token_usage":{"input_other":900,"output":120,"input_cache_read":3000,"input_cache_creation":0},"message_id":"chatcmpl-1"}}}"#,
            "",
        ]
        .join("\n"),
    );
    assert_eq!(env.import("kimi-cli", &base.join("kimi"))["imported"], 1);

    let report = env.report(&["daily", "--timezone", "UTC"]);
    let sources: Vec<String> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
        })
        .collect();
    for s in ["cline", "continue", "kimi-cli"] {
        assert!(sources.iter().any(|x| x == s), "{sources:?}");
    }
    let cline_only = env.report(&["daily", "--source", "cline"]);
    assert_eq!(cline_only["totals"]["output_tokens"], 90);
    assert!((cline_only["totals"]["agent_cost_usd"].as_f64().unwrap() - 0.02).abs() < 1e-12);
}

#[tokio::test]
async fn a_request_the_proxy_served_is_counted_once() {
    served_once(None).await;
}

/// The same on PostgreSQL: the import matches the proxied request there, `report` and `/api/usage` read it.
#[tokio::test]
async fn a_request_the_proxy_served_is_counted_once_on_postgresql() {
    let Some(db) = TestDb::create("served") else {
        return;
    };
    served_once(Some(&db)).await;
    assert_eq!(
        db.int("SELECT count(*) FROM usage_entries WHERE proxied_request_id IS NOT NULL"),
        1
    );
}

async fn served_once(pg: Option<&TestDb>) {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(&mock, "");
    let proxy = match pg {
        Some(pg) => {
            Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &["--db", &pg.url()]).await
        }
        None => Proxy::start(&config, &[("MOCK_KEY", "k")]).await,
    };
    common::assert_answers(&proxy, "mock/model").await;
    let records = common::recent_records(&proxy, 1).await;
    let r = &records[0];
    let started = r["started_at_ms"].as_i64().unwrap();
    let prompt = r["prompt_tokens"].as_u64().unwrap();
    let completion = r["completion_tokens"].as_u64().unwrap();
    // The writer commits before the import looks for the request.
    common::wait_written(&proxy, 1).await;
    let db = match pg {
        Some(pg) => pg.url(),
        None => proxy.db_path().display().to_string(),
    };

    // The same call as an agent recorded it (written on completion, a second later), and one it made directly.
    let ts = jiff::Timestamp::from_millisecond(started + 1000)
        .unwrap()
        .to_string();
    let ts2 = jiff::Timestamp::from_millisecond(started + 60_000)
        .unwrap()
        .to_string();
    let mut same = Claude::new("x", 1);
    same.model = "mock-model";
    same.input = prompt;
    same.output = completion;
    same.creation = 0;
    same.read = 0;
    let mut direct = Claude::new("x", 2);
    direct.model = "claude-sonnet-4-5-20250929";
    let dir = tempfile::tempdir().unwrap();
    let text = same
        .line()
        .replace("\"timestamp\":\"x\"", &format!("\"timestamp\":\"{ts}\""))
        + &direct
            .line()
            .replace("\"timestamp\":\"x\"", &format!("\"timestamp\":\"{ts2}\""));
    write(&dir.path().join("projects/p/s.jsonl"), &text);
    let out = run_cli(
        &[
            "import",
            "claude-code",
            "--path",
            dir.path().to_str().unwrap(),
            "--json",
            "--db",
            &db,
        ],
        &[],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sources"][0]["served_by_proxy"], 1, "{v}");
    assert_eq!(v["sources"][0]["imported"], 2, "{v}");
    let report: Value =
        serde_json::from_str(&run_cli(&["report", "daily", "--json", "--db", &db], &[])).unwrap();
    // The proxied request and the direct call: two, not three.
    assert_eq!(report["totals"]["requests"], 2, "{report}");
    let sources = report["rows"][0]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2, "{report}");

    // The dashboard's view: per-source totals and a source filter.
    let by_source: Value = common::get_json(&proxy, "/api/usage?period=source&timezone=UTC").await;
    let keys: Vec<&str> = by_source["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["claude-code", "proxy"], "{by_source}");
    let proxied: Value = common::get_json(&proxy, "/api/usage?source=proxy").await;
    assert_eq!(proxied["totals"]["requests"], 1, "{proxied}");
    let status = common::client()
        .get(proxy.url("/api/usage?period=hourly"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
    // The dashboard's report is the command's.
    let api: Value = common::get_json(&proxy, "/api/usage?period=daily&timezone=UTC").await;
    let cli: Value = serde_json::from_str(&run_cli(
        &[
            "report",
            "daily",
            "--json",
            "--timezone",
            "UTC",
            "--db",
            &db,
        ],
        &[],
    ))
    .unwrap();
    assert_eq!(api, cli);
    proxy.terminate();
}

/// ccusage, pinned: the last release that runs as plain JavaScript (`dist/index.js`; later ones need a native
/// package per platform). Installed once under target/.
const CCUSAGE: &str = "ccusage@18.0.11";

fn ccusage() -> Option<PathBuf> {
    if std::process::Command::new("npm")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED: npm is not installed, so ccusage cannot be compared (install Node.js and npm)"
        );
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ccusage-18.0.11");
    let script = dir.join("node_modules/ccusage/dist/index.js");
    if !script.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&dir)
            .arg(CCUSAGE)
            .status()
            .unwrap();
        assert!(status.success(), "npm install {CCUSAGE} failed");
    }
    assert!(
        script.exists(),
        "{} missing after npm install",
        script.display()
    );
    Some(script)
}

fn ccusage_daily(script: &Path, config_dir: &Path, home: &Path) -> Value {
    let output = std::process::Command::new("node")
        .arg(script)
        .args(["daily", "--json", "--offline", "--timezone", "UTC"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CLAUDE_CONFIG_DIR", config_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ccusage: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn ccusage_daily_totals_equal_ours_and_ours_include_sidechains() {
    let Some(script) = ccusage() else {
        return;
    };
    let env = Env::new();
    let claude = env.dir.path().join("claude");
    std::fs::create_dir_all(env.home()).unwrap();
    claude_fixture(&claude);
    env.import("claude-code", &claude);

    let theirs = ccusage_daily(&script, &claude, &env.home());
    let ours = env.report(&["daily", "--timezone", "UTC"]);
    let their_days = theirs["daily"].as_array().unwrap();
    let our_days = ours["rows"].as_array().unwrap();
    assert_eq!(
        their_days.len(),
        our_days.len(),
        "ccusage {theirs}\nours {ours}"
    );
    for (t, o) in their_days.iter().zip(our_days) {
        assert_eq!(t["date"], o["key"]);
        assert_eq!(t["inputTokens"], o["input_tokens"], "{t}\n{o}");
        assert_eq!(t["outputTokens"], o["output_tokens"], "{t}\n{o}");
        assert_eq!(
            t["cacheCreationTokens"], o["cache_creation_tokens"],
            "{t}\n{o}"
        );
        assert_eq!(t["cacheReadTokens"], o["cache_read_tokens"], "{t}\n{o}");
        // Every fixture entry records its cost: ccusage shows it, we keep it beside the catalog's.
        let (tc, oc) = (
            t["totalCost"].as_f64().unwrap(),
            o["agent_cost_usd"].as_f64().unwrap(),
        );
        assert!((tc - oc).abs() < 1e-9, "{tc} vs {oc}");
    }

    // With the subagents' sidechains ours include their own calls (and not their replays of the parent's).
    let own = add_sidechains(&claude);
    env.import("claude-code", &claude);
    let ours_after = env.report(&["daily", "--timezone", "UTC"]);
    let before: u64 = their_days
        .iter()
        .map(|d| d["outputTokens"].as_u64().unwrap())
        .sum();
    assert_eq!(
        ours_after["totals"]["output_tokens"].as_u64().unwrap(),
        before + sum(&own, |e| e.output)
    );
    // ccusage (this release) counts the sidechain's replay of the parent's message a second time.
    let theirs_after = ccusage_daily(&script, &claude, &env.home());
    eprintln!(
        "ccusage with sidechains: output {}; ours {}",
        theirs_after["totals"]["outputTokens"], ours_after["totals"]["output_tokens"]
    );
    let replayed = Claude::new("2025-01-02T12:00:00.000Z", 4).output;
    assert_eq!(
        theirs_after["totals"]["outputTokens"].as_u64().unwrap(),
        ours_after["totals"]["output_tokens"].as_u64().unwrap() + replayed
    );
}

/// Polls `report` until its total of requests is `n` (up to 10 s).
async fn wait_for_requests(db: &str, n: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let report: Value = serde_json::from_str(&run_cli(
            &["report", "daily", "--json", "--timezone", "UTC", "--db", db],
            &[],
        ))
        .unwrap();
        if report["totals"]["requests"] == n {
            return report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} requests, have {}",
            report["totals"]["requests"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serve_follows_a_growing_file_and_survives_rotation_and_truncation() {
    follow("", None).await;
}

#[tokio::test]
async fn serve_follows_by_polling_when_not_watching() {
    follow("watch = false\n", None).await;
}

#[tokio::test]
async fn serve_follows_into_postgresql() {
    let Some(db) = TestDb::create("follow") else {
        return;
    };
    follow("", Some(&db)).await;
    assert_eq!(db.int("SELECT count(*) FROM usage_entries"), 5);
}

async fn follow(extra: &str, pg: Option<&TestDb>) {
    let mock = MockUpstream::start().await.unwrap();
    let claude = tempfile::tempdir().unwrap();
    let file = claude.path().join("projects/p/sess.jsonl");
    write(&file, &Claude::new("2025-02-01T10:00:00Z", 1).line());
    let config = mock_config(
        &mock,
        &format!("[ledgers]\nfollow = [\"claude-code\"]\npoll_ms = 100\n{extra}"),
    );
    let dir = claude.path().to_str().unwrap().to_string();
    let env = [("MOCK_KEY", "k"), ("CLAUDE_CONFIG_DIR", dir.as_str())];
    let (proxy, db) = match pg {
        Some(pg) => (
            Proxy::start_with_args(&config, &env, &["--db", &pg.url()]).await,
            pg.url(),
        ),
        None => {
            let proxy = Proxy::start(&config, &env).await;
            let db = proxy.db_path().display().to_string();
            (proxy, db)
        }
    };
    // An answer over HTTP means the server has opened its store: `report` finds the file from then on.
    let (status, _) = common::get_with_status(&proxy, "/api/stats/store").await;
    assert_eq!(status, 200);
    wait_for_requests(&db, 1).await;
    // Watching (inotify) unless told not to; the log line ends with the `watching` field.
    let log = proxy.log();
    let line = log
        .lines()
        .find(|l| l.contains("following the agents' usage records"))
        .unwrap();
    let watching = if extra.is_empty() { "true" } else { "false" };
    assert!(line.ends_with(watching), "{line}");

    // The file grows, the last line in two writes.
    let second = Claude::new("2025-02-01T10:01:00Z", 2).line();
    let third = Claude::new("2025-02-01T10:02:00Z", 3).line();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(second.as_bytes()).unwrap();
        f.write_all(&third.as_bytes()[..20]).unwrap();
        f.flush().unwrap();
        wait_for_requests(&db, 2).await;
        f.write_all(&third.as_bytes()[20..]).unwrap();
    }
    wait_for_requests(&db, 3).await;

    // Rotation: the file is replaced by a new one holding the old lines and a new one.
    let rotated = claude.path().join("projects/p/sess.jsonl.tmp");
    let all = Claude::new("2025-02-01T10:00:00Z", 1).line()
        + &second
        + &third
        + &Claude::new("2025-02-01T10:03:00Z", 4).line();
    write(&rotated, &all);
    std::fs::rename(&rotated, &file).unwrap();
    wait_for_requests(&db, 4).await;

    // Truncation, then new content: read from the start again, nothing counted twice.
    std::fs::write(&file, "").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    std::fs::write(&file, Claude::new("2025-02-01T10:04:00Z", 5).line()).unwrap();
    let report = wait_for_requests(&db, 5).await;
    assert_eq!(report["rows"][0]["sources"][0], "claude-code");
    proxy.terminate();
}
