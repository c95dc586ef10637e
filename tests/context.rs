//! End-to-end tests of the context transforms through the real binary: what the mock upstream received, what
//! the records say, the masked originals, per-session settings, compaction and its failure path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{MockUpstream, Proxy, client, get_json, mock_config, recent_records};
use serde_json::{Value, json};

fn grep_output(lines: usize, seed: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "src/module_{seed}/file_{i}.rs:{}: let value_{i} = compute_{seed}(input, {i});\n",
                i * 7 + 3
            )
        })
        .collect()
}

/// A user task, `turns` tool turns with bulky results, a short answer, a follow-up question.
fn agent_conversation(turns: usize, lines: usize) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are a coding agent."}),
        json!({"role": "user", "content": "Find where compute is called and fix the off-by-one."}),
    ];
    for t in 0..turns {
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": format!("call_{t}"), "type": "function",
             "function": {"name": if t % 2 == 0 { "grep" } else { "read_file" }, "arguments": format!("{{\"q\":\"compute_{t}\"}}")}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": format!("call_{t}"), "content": grep_output(lines, t)}));
    }
    messages.push(json!({"role": "assistant", "content": "The call sites are listed above."}));
    messages.push(json!({"role": "user", "content": "Now fix it."}));
    json!({"model": "mock/model", "messages": messages})
}

async fn post(proxy: &Proxy, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = client().post(proxy.url("/v1/chat/completions")).json(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn api(proxy: &Proxy, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client().request(method.parse().unwrap(), proxy.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `path` until `ready` holds (5 s at most).
async fn eventually(proxy: &Proxy, path: &str, ready: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, value) = api(proxy, "GET", path, None).await;
        if ready(status, &value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path}: {status} {value}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn mask_id(placeholder: &str) -> String {
    let at = placeholder.find("; id ").unwrap() + 5;
    placeholder[at..at + 32].to_string()
}

const MASK_AND_OBSERVE: &str = r#"
[context.masking]
enabled = true
threshold_tokens = 200
preview_chars = 120
[context.observation]
enabled = true
keep_last_tool_turns = 1
"#;

#[tokio::test]
async fn masking_and_observation_change_what_goes_upstream_and_are_measured() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, MASK_AND_OBSERVE), &[("MOCK_KEY", "k")]).await;
    let body = agent_conversation(4, 40);
    let (status, _) = post(&proxy, &body, &[]).await;
    assert_eq!(status, 200);

    let sent = mock.last_request().unwrap().json().unwrap();
    let original = body["messages"].as_array().unwrap();
    let upstream = sent["messages"].as_array().unwrap();
    // Nothing added, removed or reordered; every call keeps its result.
    assert_eq!(upstream.len(), original.len());
    for (a, b) in original.iter().zip(upstream) {
        assert_eq!(a["role"], b["role"]);
        assert_eq!(a["tool_call_id"], b["tool_call_id"]);
        assert_eq!(a["tool_calls"], b["tool_calls"]);
    }
    let tool_contents: Vec<&str> = upstream
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    // Three old turns observed (naming their tool), the last one masked with a preview.
    for old in &tool_contents[..3] {
        assert!(
            old.starts_with("[kimi-proxy: earlier result of tool `"),
            "{old}"
        );
    }
    assert!(tool_contents[0].contains("`grep`") && tool_contents[1].contains("`read_file`"));
    let masked = tool_contents[3];
    assert!(masked.starts_with("[kimi-proxy masked"), "{masked}");
    assert!(
        masked.contains("src/module_3/file_0.rs"),
        "preview: {masked}"
    );
    // The user's messages are untouched.
    assert_eq!(upstream.last().unwrap()["content"], "Now fix it.");

    let record = &recent_records(&proxy, 1).await[0];
    let context = &record["context"];
    assert_eq!(context["transforms"], "observe,mask");
    assert_eq!(context["observed_messages"], 3);
    assert_eq!(context["masked_messages"], 1);
    let before = context["tokens_before"].as_u64().unwrap();
    let after = context["tokens_after"].as_u64().unwrap();
    assert!(after < before / 3, "{before} -> {after}");
    assert!(context["after_masking"].as_u64().unwrap() < before);
    assert_eq!(context["after_observation"].as_u64().unwrap(), after);
    assert_eq!(record["tokens_saved"].as_u64().unwrap(), before - after);
    // The record's prompt is what went upstream.
    assert_eq!(record["prompt_estimated"].as_u64().unwrap(), after);

    // The original comes back from the store.
    let id = mask_id(masked);
    let original_text = original[original.len() - 3]["content"].as_str().unwrap();
    let kept = eventually(&proxy, &format!("/api/mask/{id}"), |s, _| s == 200).await;
    assert_eq!(kept["content"], original_text);
    assert_eq!(kept["tool"], "read_file");
    assert_eq!(kept["encrypted"], false);
    let (status, _) = api(&proxy, "GET", "/api/mask/nothex", None).await;
    assert_eq!(status, 400);
    let (status, _) = api(
        &proxy,
        "GET",
        &format!("/api/mask/{}", "0".repeat(32)),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Savings reach the session and the totals.
    let sessions = eventually(&proxy, "/api/sessions", |_, v| {
        v["data"][0]["tokens_saved"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(
        sessions["data"][0]["tokens_saved"].as_u64().unwrap(),
        before - after
    );
    let tokens: Value = get_json(&proxy, "/api/tokens").await;
    assert_eq!(
        tokens["totals"]["tokens_saved"].as_u64().unwrap(),
        before - after
    );
    assert_eq!(tokens["context"]["totals"]["requests"], 1);

    // The same conversation again: identical bytes upstream (prompt caches keep hitting).
    let first = mock.last_request().unwrap().body;
    post(&proxy, &body, &[]).await;
    assert_eq!(mock.last_request().unwrap().body, first);
}

#[tokio::test]
async fn the_header_turns_transforms_off_or_on_per_request() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, MASK_AND_OBSERVE), &[("MOCK_KEY", "k")]).await;
    let body = agent_conversation(3, 40);
    let bytes = serde_json::to_vec(&body).unwrap();
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-kimi-context", "off")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = mock.last_request().unwrap();
    // The model id is renamed; everything else is the client's bytes, and the header stays here.
    let expected = String::from_utf8(bytes)
        .unwrap()
        .replace("\"mock/model\"", "\"mock-model\"");
    assert_eq!(String::from_utf8(received.body.to_vec()).unwrap(), expected);
    assert!(received.header("x-kimi-context").is_none());

    // Only observation.
    post(&proxy, &body, &[("x-kimi-context", "observe")]).await;
    let sent = mock.last_request().unwrap().json().unwrap();
    let tools: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert!(tools[0].starts_with("[kimi-proxy: earlier"));
    assert!(!tools[2].starts_with("[kimi-proxy"));

    let (status, error) = post(&proxy, &body, &[("x-kimi-context", "squash")]).await;
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("squash")
    );
}

#[tokio::test]
async fn nothing_changes_without_a_context_section() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    let body = agent_conversation(12, 40);
    post(&proxy, &body, &[]).await;
    let sent = mock.last_request().unwrap().json().unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("mock-model");
    assert_eq!(sent, expected);
    let record = &recent_records(&proxy, 1).await[0];
    assert!(record["context"].is_null());
    assert_eq!(record["tokens_saved"], 0);
}

#[tokio::test]
async fn masked_originals_are_encrypted_at_rest_with_a_key() {
    let mock = MockUpstream::start().await.unwrap();
    let config = format!("[context]\nencryption_key = \"${{MASK_KEY}}\"\n{MASK_AND_OBSERVE}");
    let key = "11".repeat(32);
    let proxy = Proxy::start(
        &mock_config(&mock, &config),
        &[("MOCK_KEY", "k"), ("MASK_KEY", &key)],
    )
    .await;
    let body = agent_conversation(2, 60);
    let (status, _) = post(&proxy, &body, &[]).await;
    assert_eq!(status, 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let masked = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| {
            m["content"]
                .as_str()
                .filter(|c| c.starts_with("[kimi-proxy masked"))
        })
        .unwrap()
        .to_string();
    let id = mask_id(&masked);
    let kept = eventually(&proxy, &format!("/api/mask/{id}"), |s, _| s == 200).await;
    assert_eq!(kept["encrypted"], true);
    assert!(kept["content"].as_str().unwrap().contains("compute_1"));
    let conn = rusqlite::Connection::open(proxy.db_path()).unwrap();
    let (raw, preview): (Vec<u8>, Option<String>) = conn
        .query_row(
            "SELECT content, preview FROM masked_content WHERE hash = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("compute_1"));
    assert!(preview.is_none());
}

/// On the PostgreSQL store: originals kept (plain, and sealed with a key) and read back through the API.
#[tokio::test]
async fn masked_originals_are_kept_in_postgresql() {
    let Some(db) = common::pg::TestDb::create("masks") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start_with_args(
        &mock_config(&mock, MASK_AND_OBSERVE),
        &[("MOCK_KEY", "k")],
        &["--db", &db.url()],
    )
    .await;
    let (status, _) = post(&proxy, &agent_conversation(2, 60), &[]).await;
    assert_eq!(status, 200);
    let id = mask_id(&first_masked(&mock));
    let kept = eventually(&proxy, &format!("/api/mask/{id}"), |s, _| s == 200).await;
    assert_eq!(kept["encrypted"], false);
    assert!(kept["content"].as_str().unwrap().contains("compute_1"));
    assert!(kept["preview"].as_str().unwrap().len() < kept["content"].as_str().unwrap().len());
    let (status, _) = api(
        &proxy,
        "GET",
        &format!("/api/mask/{}", "0".repeat(32)),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        db.int(&format!(
            "SELECT count(*) FROM masked_content WHERE hash = '{id}'"
        )),
        1
    );
    proxy.terminate();

    // With a key: sealed in the database, opened by the API.
    let config = format!("[context]\nencryption_key = \"${{MASK_KEY}}\"\n{MASK_AND_OBSERVE}");
    let key = "11".repeat(32);
    let proxy = Proxy::start_with_args(
        &mock_config(&mock, &config),
        &[("MOCK_KEY", "k"), ("MASK_KEY", &key)],
        &["--db", &db.url()],
    )
    .await;
    let (status, _) = post(&proxy, &agent_conversation(3, 50), &[]).await;
    assert_eq!(status, 200);
    let id = mask_id(&first_masked(&mock));
    let kept = eventually(&proxy, &format!("/api/mask/{id}"), |s, _| s == 200).await;
    assert_eq!(kept["encrypted"], true);
    assert!(kept["content"].as_str().unwrap().contains("compute_"));
    let raw = db.rows(&format!(
        "SELECT encode(content, 'escape'), preview IS NULL FROM masked_content WHERE hash = '{id}'"
    ));
    assert!(
        !raw[0][0].as_deref().unwrap().contains("compute_"),
        "{raw:?}"
    );
    assert_eq!(raw[0][1].as_deref(), Some("t"));
    proxy.terminate();
}

/// The first masked placeholder the mock received last.
fn first_masked(mock: &MockUpstream) -> String {
    let sent = mock.last_request().unwrap().json().unwrap();
    sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|m| {
            m["content"]
                .as_str()
                .filter(|c| c.starts_with("[kimi-proxy masked"))
        })
        .unwrap()
        .to_string()
}

const COMPACT: &str = r#"
[context.compaction]
enabled = true
threshold = 0.5
keep_last_exchanges = 2
cooldown_secs = 600
"#;

fn small_window(mock: &MockUpstream, extra: &str) -> String {
    mock_config(mock, extra).replace("max_context_size = 100000", "max_context_size = 4000")
}

#[tokio::test]
async fn compaction_sends_a_summary_and_reuses_it() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&small_window(&mock, COMPACT), &[("MOCK_KEY", "k")]).await;
    let body = agent_conversation(8, 12);
    let (status, _) = post(&proxy, &body, &[("x-session-id", "agent-1")]).await;
    assert_eq!(status, 200);
    let sent = mock.last_request().unwrap().json().unwrap();
    let upstream = sent["messages"].as_array().unwrap();
    let original = body["messages"].as_array().unwrap();
    assert!(upstream.len() < original.len());
    assert_eq!(upstream[0], original[0]);
    let summary = upstream[1]["content"].as_str().unwrap();
    assert!(summary.starts_with("[kimi-proxy compacted"), "{summary}");
    assert!(
        summary.contains("Task: Find where compute is called"),
        "{summary}"
    );
    // The kept tail is the original's tail, byte for byte, and every kept result has its call.
    let tail = &upstream[2..];
    assert_eq!(tail, &original[original.len() - tail.len()..]);
    let calls: Vec<&str> = tail
        .iter()
        .flat_map(|m| m["tool_calls"].as_array().into_iter().flatten())
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for result in tail.iter().filter(|m| m["role"] == "tool") {
        assert!(calls.contains(&result["tool_call_id"].as_str().unwrap()));
    }
    let record = &recent_records(&proxy, 1).await[0];
    assert_eq!(record["context"]["compaction"], "new");
    let before = record["context"]["tokens_before"].as_u64().unwrap();
    let after = record["context"]["after_compaction"].as_u64().unwrap();
    assert!(after < before / 2, "{before} -> {after}");

    // The next turn: the same summary (same bytes), the new messages after it.
    let first = mock.last_request().unwrap().json().unwrap();
    let mut next = body.clone();
    let messages = next["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": "Fixed."}));
    messages.push(json!({"role": "user", "content": "Thanks, run the tests."}));
    post(&proxy, &next, &[("x-session-id", "agent-1")]).await;
    let second = mock.last_request().unwrap().json().unwrap();
    assert_eq!(second["messages"][1], first["messages"][1]);
    let record = &recent_records(&proxy, 2).await[0];
    assert_eq!(record["context"]["compaction"], "reused");
}

#[tokio::test]
async fn a_failing_summary_model_still_answers_with_the_original_request() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        r#"{COMPACT}summary = {{ model = "broken/model" }}
summary_timeout_ms = 3000

[providers.broken]
base_url = "http://127.0.0.1:9"
[providers.broken.retry]
max_attempts = 1

[models."broken/model"]
provider = "broken"
model = "broken"
max_context_size = 100000
"#
    );
    let proxy = Proxy::start(&small_window(&mock, &extra), &[("MOCK_KEY", "k")]).await;
    let body = agent_conversation(8, 12);
    let (status, answer) = post(&proxy, &body, &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["choices"][0]["message"]["content"].is_string());
    let sent = mock.last_request().unwrap().json().unwrap();
    let mut expected = body.clone();
    expected["model"] = json!("mock-model");
    assert_eq!(sent, expected);
    let records = recent_records(&proxy, 2).await;
    let main = records.iter().find(|r| r["model"] == "mock/model").unwrap();
    assert_eq!(main["context"]["compaction"], "failed");
    assert!(
        main["context"]["error"]
            .as_str()
            .unwrap()
            .starts_with("compaction: ")
    );
    assert_eq!(main["tokens_saved"], 0);
    // The summary attempt is a request of its own.
    let summary = records
        .iter()
        .find(|r| r["model"] == "broken/model")
        .unwrap();
    assert!(summary["error_kind"].is_string());
}

#[tokio::test]
async fn an_llm_summary_replaces_the_middle_and_is_recorded() {
    let mock = MockUpstream::start().await.unwrap();
    let extra = format!(
        r#"{COMPACT}summary = {{ model = "mock/summarizer" }}

[models."mock/summarizer"]
provider = "mock"
model = "mock-summarizer"
max_context_size = 100000
input_price = 1.0
"#
    );
    let proxy = Proxy::start(&small_window(&mock, &extra), &[("MOCK_KEY", "k")]).await;
    let body = agent_conversation(8, 12);
    let (status, _) = post(&proxy, &body, &[]).await;
    assert_eq!(status, 200);
    let requests = mock.requests();
    let asked = requests
        .iter()
        .find_map(|r| r.json().filter(|j| j["model"] == "mock-summarizer"))
        .expect("the summary model was asked");
    assert!(
        asked["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("compute_0")
    );
    let sent = mock.last_request().unwrap().json().unwrap();
    assert_eq!(sent["model"], "mock-model");
    let summary = sent["messages"][1]["content"].as_str().unwrap();
    assert!(summary.starts_with("[kimi-proxy compacted"));
    assert!(
        !summary.contains("Task: "),
        "not the extractive digest: {summary}"
    );
    let records = recent_records(&proxy, 2).await;
    let cost = records
        .iter()
        .find(|r| r["model"] == "mock/summarizer")
        .unwrap();
    assert!(cost["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn session_settings_and_the_manual_compaction_preview() {
    let mock = MockUpstream::start().await.unwrap();
    // Nothing enabled by config: the session turns masking on.
    let proxy = Proxy::start(
        &mock_config(&mock, "[context.masking]\nthreshold_tokens = 200\n"),
        &[("MOCK_KEY", "k")],
    )
    .await;
    let (status, session) = api(
        &proxy,
        "POST",
        "/api/sessions",
        Some(json!({"name": "work", "activate": true})),
    )
    .await;
    assert_eq!(status, 201);
    let id = session["id"].as_i64().unwrap();
    let (status, settings) = api(
        &proxy,
        "PUT",
        &format!("/api/sessions/{id}/context"),
        Some(json!({"masking": true})),
    )
    .await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["settings"]["masking"], true);
    let (status, _) = api(
        &proxy,
        "PUT",
        &format!("/api/sessions/{id}/context"),
        Some(json!({"masks": true})),
    )
    .await;
    assert_eq!(status, 400);

    let body = agent_conversation(3, 40);
    post(&proxy, &body, &[]).await;
    let sent = mock.last_request().unwrap().json().unwrap();
    assert!(sent["messages"].as_array().unwrap().iter().any(|m| {
        m["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("[kimi-proxy masked"))
    }));
    let detail = eventually(&proxy, &format!("/api/sessions/{id}"), |_, v| {
        v["request_count"] == 1
    })
    .await;
    assert_eq!(detail["context_settings"]["masking"], true);
    assert!(detail["tokens_saved"].as_u64().unwrap() > 0);

    // The preview: what compacting that latest request would do.
    let (status, preview) = api(
        &proxy,
        "POST",
        &format!("/api/sessions/{id}/compact/preview"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    let preview = &preview["preview"];
    assert_eq!(preview["can_compact"], true);
    assert!(preview["tokens_after"].as_u64() < preview["tokens_before"].as_u64());
    assert!(preview["messages_after"].as_u64() < preview["messages_before"].as_u64());

    // A manual compaction: the next request is compacted once.
    let (status, _) = api(&proxy, "POST", &format!("/api/sessions/{id}/compact"), None).await;
    assert_eq!(status, 202);
    post(&proxy, &body, &[]).await;
    let compacted = mock.last_request().unwrap().json().unwrap();
    assert!(
        compacted["messages"].as_array().unwrap().len()
            < body["messages"].as_array().unwrap().len()
    );
    post(&proxy, &body, &[]).await;
    let again = mock.last_request().unwrap().json().unwrap();
    assert_eq!(
        again["messages"].as_array().unwrap().len(),
        body["messages"].as_array().unwrap().len()
    );

    // Clearing the settings.
    let (status, cleared) = api(
        &proxy,
        "PUT",
        &format!("/api/sessions/{id}/context"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(cleared["settings"]["masking"].is_null());
    let (status, _) = api(&proxy, "PUT", "/api/sessions/999/context", Some(json!({}))).await;
    assert_eq!(status, 404);
}
