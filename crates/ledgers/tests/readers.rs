//! The readers on fixtures written here, in each agent's own format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};

use kimi_ledgers::{Agent, Cursor, FileRead, UsageEntry, read_file, record_files};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn read(agent: Agent, path: &Path, cursor: &Cursor) -> (Vec<UsageEntry>, FileRead) {
    let mut entries = Vec::new();
    let r = read_file(agent, path, cursor, &mut |e| entries.push(e)).unwrap();
    (entries, r)
}

fn claude_line(ts: &str, msg: &str, req: &str, input: u64, output: u64, sidechain: bool) -> String {
    format!(
        r#"{{"parentUuid":null,"isSidechain":{sidechain},"userType":"external","cwd":"/home/u/proj","sessionId":"s1","version":"1.0.80","type":"assistant","message":{{"id":"{msg}","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{{"type":"text","text":"hi"}}],"usage":{{"input_tokens":{input},"cache_creation_input_tokens":300,"cache_read_input_tokens":4000,"cache_creation":{{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200}},"output_tokens":{output},"service_tier":"standard"}}}},"requestId":"{req}","uuid":"u-{msg}","timestamp":"{ts}"}}"#
    ) + "\n"
}

#[test]
fn claude_entries_torn_and_malformed_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("projects/-home-u-proj/s1.jsonl");
    let mut text = String::new();
    text += r#"{"type":"user","message":{"role":"user","content":"hello"},"timestamp":"2025-01-01T10:00:00.000Z","sessionId":"s1"}"#;
    text += "\n";
    text += &claude_line("2025-01-01T10:00:01.000Z", "msg_1", "req_1", 10, 20, false);
    text += "{not json at all\n";
    text += &claude_line("2025-01-01T10:00:02.000Z", "msg_2", "req_2", 11, 21, false);
    // A line being written: no newline yet.
    let torn = claude_line("2025-01-01T10:00:03.000Z", "msg_3", "req_3", 12, 22, false);
    text += &torn[..torn.len() / 2];
    write(&file, &text);

    let (entries, r) = read(Agent::ClaudeCode, &file, &Cursor::default());
    assert_eq!(entries.len(), 2);
    assert_eq!(r.malformed, 1);
    assert!(r.pending_bytes > 0);
    let e = &entries[0];
    assert_eq!(e.key, "msg_1:req_1");
    assert_eq!(e.timestamp_ms, 1_735_725_601_000);
    assert_eq!(e.session.as_deref(), Some("s1"));
    assert_eq!(e.project.as_deref(), Some("/home/u/proj"));
    assert_eq!(e.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(
        (
            e.input_tokens,
            e.output_tokens,
            e.cache_creation_tokens,
            e.cache_creation_1h_tokens,
            e.cache_read_tokens
        ),
        (10, 20, 300, 200, 4000)
    );

    // The rest of the torn line arrives: the next read starts where the last stopped and gets it whole.
    append(&file, &torn[torn.len() / 2..]);
    let (more, r2) = read(Agent::ClaudeCode, &file, &r.cursor);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].key, "msg_3:req_3");
    assert_eq!(r2.malformed, 0);
    assert!(!r2.restarted);
    assert_eq!(r2.pending_bytes, 0);
}

#[test]
fn claude_sidechains_are_found_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let projects = dir.path().join("projects");
    write(
        &projects.join("p/s1.jsonl"),
        &claude_line("2025-01-01T10:00:01Z", "msg_1", "req_1", 1, 2, false),
    );
    write(
        &projects.join("p/s1/subagents/agent-a.jsonl"),
        &claude_line("2025-01-01T10:00:05Z", "msg_9", "req_9", 3, 4, true),
    );
    // Given the config directory, records are found under projects/, sidechains included.
    let files = record_files(Agent::ClaudeCode, &[dir.path().to_path_buf()]);
    assert_eq!(files.len(), 2);
    let sidechain = files
        .iter()
        .find(|f| f.to_string_lossy().contains("subagents"))
        .unwrap();
    let (side, _) = read(Agent::ClaudeCode, sidechain, &Cursor::default());
    assert!(side[0].sidechain);
    assert_eq!(side[0].message_id.as_deref(), Some("msg_9"));
}

#[test]
fn truncated_or_replaced_files_are_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    write(
        &file,
        &claude_line("2025-01-01T10:00:01Z", "m1", "r1", 1, 1, false),
    );
    let (_, r) = read(Agent::ClaudeCode, &file, &Cursor::default());
    // Truncated (shorter than the cursor).
    write(&file, "");
    let (e, r2) = read(Agent::ClaudeCode, &file, &r.cursor);
    assert!(e.is_empty());
    assert!(r2.restarted);
    // Replaced by another file (rotation): a new inode, read from the start even when longer.
    let other = dir.path().join("s.new");
    let two = claude_line("2025-01-01T10:00:01Z", "m1", "r1", 1, 1, false)
        + &claude_line("2025-01-01T10:00:02Z", "m2", "r2", 1, 1, false);
    write(&other, &two);
    std::fs::rename(&other, &file).unwrap();
    let (e, r3) = read(Agent::ClaudeCode, &file, &r.cursor);
    assert!(r3.restarted);
    assert_eq!(e.len(), 2);
}

fn codex_token_count(ts: &str, total: (u64, u64, u64, u64), last: (u64, u64, u64, u64)) -> String {
    let usage = |(i, c, o, r): (u64, u64, u64, u64)| {
        format!(
            r#"{{"input_tokens":{i},"cached_input_tokens":{c},"output_tokens":{o},"reasoning_output_tokens":{r},"total_tokens":{}}}"#,
            i + o
        )
    };
    format!(
        r#"{{"timestamp":"{ts}","type":"event_msg","payload":{{"type":"token_count","info":{{"total_token_usage":{},"last_token_usage":{},"model_context_window":272000}},"rate_limits":null}}}}"#,
        usage(total),
        usage(last)
    ) + "\n"
}

pub fn codex_fixture(dir: &Path) -> PathBuf {
    let file = dir.join("sessions/2025/09/10/rollout-2025-09-10T10-00-00-0199aaaa-bbbb-7ccc-8ddd-eeeeffff0000.jsonl");
    let mut text = String::new();
    text += r#"{"timestamp":"2025-09-10T10:00:00.000Z","type":"session_meta","payload":{"id":"0199aaaa-bbbb-7ccc-8ddd-eeeeffff0000","timestamp":"2025-09-10T10:00:00.000Z","cwd":"/home/u/codexproj","originator":"codex_cli_rs","cli_version":"0.36.0"}}"#;
    text += "\n";
    text += r#"{"timestamp":"2025-09-10T10:00:01.000Z","type":"turn_context","payload":{"cwd":"/home/u/codexproj","approval_policy":"on-request","sandbox_policy":{"mode":"workspace-write"},"model":"gpt-5-codex","summary":"auto"}}"#;
    text += "\n";
    text += &codex_token_count(
        "2025-09-10T10:00:05.000Z",
        (1000, 200, 50, 10),
        (1000, 200, 50, 10),
    );
    // The same totals again (Codex repeats token_count with rate-limit updates): nothing new.
    text += &codex_token_count(
        "2025-09-10T10:00:06.000Z",
        (1000, 200, 50, 10),
        (1000, 200, 50, 10),
    );
    text += &codex_token_count(
        "2025-09-10T10:00:09.000Z",
        (2500, 1100, 80, 10),
        (1500, 900, 30, 0),
    );
    write(&file, &text);
    file
}

#[test]
fn codex_cumulative_counters_become_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let file = codex_fixture(dir.path());
    assert_eq!(
        record_files(Agent::Codex, &[dir.path().join("sessions")]),
        vec![file.clone()]
    );
    let (e, r) = read(Agent::Codex, &file, &Cursor::default());
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(r.malformed, 0);
    assert_eq!(
        (
            e[0].input_tokens,
            e[0].cache_read_tokens,
            e[0].output_tokens
        ),
        (800, 200, 50)
    );
    assert_eq!(
        (
            e[1].input_tokens,
            e[1].cache_read_tokens,
            e[1].output_tokens
        ),
        (600, 900, 30)
    );
    assert_eq!(e[1].model.as_deref(), Some("gpt-5-codex"));
    assert_eq!(e[1].project.as_deref(), Some("/home/u/codexproj"));
    assert_eq!(
        e[1].session.as_deref(),
        Some("0199aaaa-bbbb-7ccc-8ddd-eeeeffff0000")
    );

    // Following: the running totals, model and project carry over in the cursor.
    append(
        &file,
        &codex_token_count(
            "2025-09-10T10:00:20Z",
            (4000, 2000, 100, 20),
            (1500, 900, 20, 10),
        ),
    );
    let (more, _) = read(Agent::Codex, &file, &r.cursor);
    assert_eq!(more.len(), 1);
    assert_eq!(
        (
            more[0].input_tokens,
            more[0].cache_read_tokens,
            more[0].output_tokens
        ),
        (600, 900, 20)
    );
    assert_eq!(more[0].model.as_deref(), Some("gpt-5-codex"));
}

#[test]
fn cline_task_history() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state/taskHistory.json");
    write(
        &file,
        r#"[{"id":"1736000000000","ts":1736000000000,"task":"fix it","tokensIn":120,"tokensOut":45,"cacheWrites":1000,"cacheReads":5000,"totalCost":0.0123,"size":1,"cwdOnTaskInitialization":"/home/u/app","modelId":"claude-sonnet-4-5"},
            {"id":"broken"},
            {"id":"1736000001000","ts":1736000001000,"task":"t","tokensIn":1,"tokensOut":2,"totalCost":0}]"#,
    );
    let (e, r) = read(Agent::Cline, &file, &Cursor::default());
    assert_eq!(e.len(), 2);
    assert_eq!(r.malformed, 1);
    assert_eq!(
        (
            e[0].input_tokens,
            e[0].output_tokens,
            e[0].cache_creation_tokens,
            e[0].cache_read_tokens
        ),
        (120, 45, 1000, 5000)
    );
    assert_eq!(e[0].agent_cost_usd, Some(0.0123));
    assert_eq!(e[0].project.as_deref(), Some("/home/u/app"));
    // Unchanged file: nothing read again.
    let (again, _) = read(Agent::Cline, &file, &r.cursor);
    assert!(again.is_empty());
    // A torn document (being rewritten) is counted, not fatal.
    write(&file, "[{\"id\":");
    let (none, r3) = read(Agent::Cline, &file, &Cursor::default());
    assert!(none.is_empty());
    assert_eq!(r3.malformed, 1);
}

#[test]
fn continue_tokens_generated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dev_data/0.2.0/tokensGenerated.jsonl");
    write(
        &file,
        concat!(
            r#"{"eventName":"tokensGenerated","schema":"0.2.0","createdAt":"2025-03-01T12:00:00.000Z","userId":"","userAgent":"VSCode/1.9 (Continue/1.0)","selectedProfileId":"local","model":"gpt-4o","provider":"openai","promptTokens":1500,"generatedTokens":300}"#,
            "\n",
            r#"{"eventName":"tokensGenerated","schema":"0.2.0","createdAt":"garbage","model":"x","provider":"y","promptTokens":1,"generatedTokens":1}"#,
            "\n"
        ),
    );
    assert_eq!(
        record_files(Agent::Continue, &[dir.path().join("dev_data")]),
        vec![file.clone()]
    );
    let (e, r) = read(Agent::Continue, &file, &Cursor::default());
    assert_eq!(e.len(), 1);
    assert_eq!(r.malformed, 1);
    assert_eq!((e[0].input_tokens, e[0].output_tokens), (1500, 300));
    assert_eq!(e[0].model.as_deref(), Some("gpt-4o"));
}

#[test]
fn kimi_cli_wire_status_updates() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("config.toml"),
        "default_model = \"kimi\"\n[models.kimi]\nprovider = \"kimi-code\"\nmodel = \"kimi-for-coding\"\n",
    );
    let file = dir
        .path()
        .join("sessions/0123456789abcdef0123456789abcdef/sess-1/wire.jsonl");
    write(
        &file,
        concat!(
            r#"{"type":"metadata","protocol_version":"1.3"}"#,
            "\n",
            r#"{"timestamp":1757000000.5,"message":{"type":"TurnBegin","payload":{"user_input":"hi"}}}"#,
            "\n",
            r#"{"timestamp":1757000001.25,"message":{"type":"StatusUpdate","payload":{"context_usage":0.1,"token_usage":{"input_other":900,"output":120,"input_cache_read":3000,"input_cache_creation":0},"message_id":"chatcmpl-1"}}}"#,
            "\n"
        ),
    );
    let files = record_files(Agent::KimiCli, &[dir.path().join("sessions")]);
    assert_eq!(files, vec![file.clone()]);
    let (e, _) = read(Agent::KimiCli, &file, &Cursor::default());
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].timestamp_ms, 1_757_000_001_250);
    assert_eq!(
        (
            e[0].input_tokens,
            e[0].output_tokens,
            e[0].cache_read_tokens
        ),
        (900, 120, 3000)
    );
    assert_eq!(e[0].model.as_deref(), Some("kimi-for-coding"));
    assert_eq!(e[0].session.as_deref(), Some("sess-1"));
    assert_eq!(e[0].key, "sess-1:chatcmpl-1");
}
