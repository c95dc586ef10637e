//! The OpenAI Responses API through the proxy to a chat completions provider (the mock), over real sockets:
//! the translation both ways, the event stream's order, stored responses and `previous_response_id`, what is
//! dropped, errors; and the official OpenAI Python SDK (`client.responses.create`) end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::pg::TestDb;
use common::{MockUpstream, Proxy, client, mock_config, recent_records};
use serde_json::{Value, json};

async fn start() -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&mock_config(&mock, ""), &[("MOCK_KEY", "k")]).await;
    (mock, proxy)
}

async fn create(proxy: &Proxy, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().post(proxy.url("/v1/responses")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The chat request the mock received last.
fn last_chat_request(mock: &MockUpstream) -> Value {
    let request = mock.last_request().expect("the mock saw a request");
    assert_eq!(request.path, "/v1/chat/completions");
    request.json().unwrap()
}

#[tokio::test]
async fn a_responses_request_is_answered_with_a_response_by_a_chat_provider() {
    let (mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "instructions": "Be terse.", "input": "Say hello."});
    let response = create(&proxy, &body, &[]).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(answer["status"], "completed");
    assert_eq!(answer["model"], "mock/model");
    assert!(answer["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(answer["output"][0]["type"], "message");
    let text = answer["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty());
    assert!(answer["usage"]["input_tokens"].as_u64().unwrap() > 0);

    let chat = last_chat_request(&mock);
    assert_eq!(chat["model"], "mock-model", "the upstream id, as for chat");
    assert_eq!(chat["messages"][0]["role"], "system");
    assert_eq!(chat["messages"][1]["content"], "Say hello.");

    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["client_api"], "responses");
    assert_eq!(records[0]["status"], 200);
    assert!(records[0]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_streamed_response_sends_the_apis_events_in_order_with_consecutive_sequence_numbers() {
    let (_mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "input": "Say hello.", "stream": true});
    let response = create(&proxy, &body, &[("x-mock-chunks", "5")]).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let (bytes, clean) = common::read_body(response).await;
    assert!(clean);
    let events = common::sse_events(&bytes);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["response.created", "response.in_progress"]);
    assert_eq!(names.last(), Some(&"response.completed"));
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i as u64, "{name}");
    }
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "response.output_text.delta")
            .count(),
        5
    );
    let (_, completed) = events.last().unwrap();
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    assert!(
        completed["response"]["usage"]["output_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["client_api"], "responses");
    assert_eq!(
        records[0]["error_kind"],
        Value::Null,
        "recorded as complete: {}",
        records[0]
    );
}

#[tokio::test]
async fn a_streamed_tool_call_arrives_as_a_function_call_item() {
    let (_mock, proxy) = start().await;
    let body = json!({
        "model": "mock/model", "input": "Weather in Paris?", "stream": true,
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
    });
    let response = create(&proxy, &body, &[("x-mock-tool-call", "1")]).await;
    let (bytes, _) = common::read_body(response).await;
    let events = common::sse_events(&bytes);
    let done: Vec<&Value> = events
        .iter()
        .filter(|(n, d)| n == "response.output_item.done" && d["item"]["type"] == "function_call")
        .map(|(_, d)| &d["item"])
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["name"], "get_weather");
    assert!(
        events
            .iter()
            .any(|(n, _)| n == "response.function_call_arguments.delta")
    );
}

#[tokio::test]
async fn previous_response_id_continues_the_stored_conversation() {
    let (mock, proxy) = start().await;
    continues_the_stored_conversation(&mock, &proxy).await;
}

async fn continues_the_stored_conversation(mock: &MockUpstream, proxy: &Proxy) {
    let first: Value = create(
        proxy,
        &json!({"model": "mock/model", "input": "My name is Ada."}),
        &[],
    )
    .await
    .json()
    .await
    .unwrap();
    let id = first["id"].as_str().unwrap();
    let said = first["output"][0]["content"][0]["text"].as_str().unwrap();

    let second = create(
        proxy,
        &json!({"model": "mock/model", "input": "What is my name?", "previous_response_id": id}),
        &[],
    )
    .await;
    assert_eq!(second.status(), 200);
    let chat = last_chat_request(mock);
    let messages = chat["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{chat}");
    assert_eq!(messages[0]["content"], "My name is Ada.");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], said);
    assert_eq!(messages[2]["content"], "What is my name?");
}

#[tokio::test]
async fn a_stored_response_can_be_read_listed_and_deleted() {
    let (_mock, proxy) = start().await;
    read_listed_and_deleted(&proxy).await;
}

async fn read_listed_and_deleted(proxy: &Proxy) {
    let first: Value = create(
        proxy,
        &json!({"model": "mock/model", "input": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
        ]}),
        &[],
    )
    .await
    .json()
    .await
    .unwrap();
    let id = first["id"].as_str().unwrap();

    let got: Value = common::get_json(proxy, &format!("/v1/responses/{id}")).await;
    assert_eq!(got, first);

    let items: Value = common::get_json(proxy, &format!("/v1/responses/{id}/input_items")).await;
    assert_eq!(items["object"], "list");
    let data = items["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        data[0]["content"][0]["text"], "two",
        "newest first by default"
    );
    assert_eq!(items["has_more"], false);
    let asc: Value = common::get_json(
        proxy,
        &format!("/v1/responses/{id}/input_items?order=asc&limit=1"),
    )
    .await;
    assert_eq!(asc["data"][0]["content"][0]["text"], "one");
    assert_eq!(asc["has_more"], true);

    let deleted: Value = client()
        .delete(proxy.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        deleted,
        json!({"id": id, "object": "response", "deleted": true})
    );
    let gone = client()
        .get(proxy.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn an_unknown_previous_response_id_gets_the_apis_404() {
    let (mock, proxy) = start().await;
    let response = create(
        &proxy,
        &json!({"model": "mock/model", "input": "hi", "previous_response_id": "resp_nope"}),
        &[],
    )
    .await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error,
        json!({"error": {
            "message": "Previous response with id 'resp_nope' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }})
    );
    assert!(mock.last_request().is_none(), "nothing went upstream");
}

#[tokio::test]
async fn store_false_keeps_nothing() {
    let (_mock, proxy) = start().await;
    let first: Value = create(
        &proxy,
        &json!({"model": "mock/model", "input": "hi", "store": false}),
        &[],
    )
    .await
    .json()
    .await
    .unwrap();
    let id = first["id"].as_str().unwrap();
    let got = client()
        .get(proxy.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 404);
}

#[tokio::test]
async fn hosted_tools_are_dropped_with_a_header_and_a_count_in_the_record() {
    let (mock, proxy) = start().await;
    let body = json!({
        "model": "mock/model", "input": "hi", "tool_choice": "auto",
        "tools": [
            {"type": "web_search"},
            {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
        ],
    });
    let response = create(&proxy, &body, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-kimi-proxy-dropped-tools"], "1");
    let chat = last_chat_request(&mock);
    assert_eq!(chat["tools"].as_array().unwrap().len(), 1);
    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["dropped_tools"], 1);

    let plain = create(&proxy, &json!({"model": "mock/model", "input": "hi"}), &[]).await;
    assert!(plain.headers().get("x-kimi-proxy-dropped-tools").is_none());
}

#[tokio::test]
async fn tool_choice_forcing_a_dropped_tool_is_refused() {
    let (mock, proxy) = start().await;
    let body = json!({
        "model": "mock/model", "input": "hi",
        "tools": [{"type": "web_search"}],
        "tool_choice": {"type": "web_search"},
    });
    let response = create(&proxy, &body, &[]).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "tool_choice");
    assert!(mock.last_request().is_none());
}

#[tokio::test]
async fn an_upstream_error_reaches_the_client_as_an_openai_error() {
    let (_mock, proxy) = start().await;
    for stream in [false, true] {
        let body = json!({"model": "mock/model", "input": "hi", "stream": stream});
        let response = create(&proxy, &body, &[("x-mock-status", "400")]).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].is_string(), "{error}");
        assert!(error["error"]["type"].is_string(), "{error}");
    }
}

#[tokio::test]
async fn the_session_comes_from_codex_headers_or_the_prompt_cache_key() {
    let (_mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "input": "hi", "prompt_cache_key": "conv-1"});
    create(&proxy, &body, &[("session-id", "codex-session")]).await;
    create(&proxy, &body, &[]).await;
    let records = recent_records(&proxy, 2).await;
    let sessions: Vec<&Value> = records.iter().map(|r| &r["client_session"]).collect();
    assert!(sessions.contains(&&json!("codex-session")), "{sessions:?}");
    assert!(sessions.contains(&&json!("conv-1")), "{sessions:?}");
}

#[tokio::test]
async fn stored_responses_outlive_a_restart_of_the_proxy() {
    let db = tempfile::tempdir().unwrap();
    outlive_a_restart(db.path().join("kimi.db").to_str().unwrap()).await;
}

/// The same on PostgreSQL: the follow-up, `GET` and `DELETE` after a restart can only come from the database.
#[tokio::test]
async fn stored_responses_live_in_postgresql() {
    let Some(db) = TestDb::create("responses") else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start_with_args(
        &mock_config(&mock, ""),
        &[("MOCK_KEY", "k")],
        &["--db", &db.url()],
    )
    .await;
    continues_the_stored_conversation(&mock, &proxy).await;
    read_listed_and_deleted(&proxy).await;
    assert_eq!(db.int("SELECT count(*) FROM responses"), 2);
    proxy.terminate();
    let mut proxy = proxy;
    proxy.child.wait().await.unwrap();
    // A row older than the retention (30 days by default): deleted by the next instance's first write.
    db.rows(
        "INSERT INTO responses (id, created_at, response, items) VALUES ('resp_old', 1000, '{}', '[]')",
    );
    outlive_a_restart(&db.url()).await;
    assert_eq!(
        db.int("SELECT count(*) FROM responses WHERE id = 'resp_old'"),
        0
    );
    assert_eq!(db.int("SELECT count(*) FROM responses"), 3);
}

async fn outlive_a_restart(db: &str) {
    let mock = MockUpstream::start().await.unwrap();
    let args = ["--db", db];
    let config = mock_config(&mock, "");
    let proxy = Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &args).await;
    let first: Value = create(&proxy, &json!({"model": "mock/model", "input": "hi"}), &[])
        .await
        .json()
        .await
        .unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    proxy.terminate();
    let mut proxy = proxy;
    proxy.child.wait().await.unwrap();

    let again = Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &args).await;
    let got: Value = common::get_json(&again, &format!("/v1/responses/{id}")).await;
    assert_eq!(got, first);
    let follow_up = create(
        &again,
        &json!({"model": "mock/model", "input": "more", "previous_response_id": id}),
        &[],
    )
    .await;
    assert_eq!(follow_up.status(), 200);
    let chat = last_chat_request(&mock);
    assert_eq!(chat["messages"][0]["content"], "hi", "{chat}");
    assert_eq!(chat["messages"].as_array().unwrap().len(), 3, "{chat}");
    let follow_up: Value = follow_up.json().await.unwrap();
    let follow_id = follow_up["id"].as_str().unwrap().to_string();
    // Deleted from the database; the follow-up's own row stays.
    let deleted = client()
        .delete(again.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    again.terminate();
    let mut again = again;
    again.child.wait().await.unwrap();
    let last = Proxy::start_with_args(&config, &[("MOCK_KEY", "k")], &args).await;
    let gone = client()
        .get(last.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let kept: Value = common::get_json(&last, &format!("/v1/responses/{follow_id}")).await;
    assert_eq!(kept["id"], follow_id.as_str());
    last.terminate();
}

/// The official OpenAI Python SDK (latest from PyPI, in a venv under `target/`) through the proxy to the chat
/// mock: `responses.create` plain and streamed, the stream helper's final response, a function tool call and
/// its result sent back with `previous_response_id` (plain and streamed), `retrieve`, `input_items.list`,
/// `cancel` (refused: nothing runs in the background), `delete`, and the 404 a deleted id then gets.
#[tokio::test]
async fn the_openai_python_sdk_speaks_responses_through_the_proxy() {
    let Some(python) =
        tokio::task::spawn_blocking(|| common::sdk_python("openai-sdk-venv", "openai"))
            .await
            .unwrap()
    else {
        return;
    };
    let (mock, proxy) = start().await;
    let seen = common::run_openai_responses_sdk_script(&python, &proxy, "mock/model", false).await;
    assert_eq!(seen["text"]["model"], "mock/model");
    assert!(
        seen["stream"]["types"]
            .as_array()
            .unwrap()
            .contains(&json!("response.output_text.delta"))
    );
    assert_eq!(
        seen["not_found"]["code"], "previous_response_not_found",
        "{seen}"
    );
    assert_eq!(
        seen["cancel_refused"]["message"], "Cannot cancel a synchronous response.",
        "{seen}"
    );

    // The tool result went to the chat provider as a tool message answering the assistant's call.
    let call_id = seen["tool"]["call_id"].as_str().unwrap();
    let tool_turn = mock
        .requests()
        .into_iter()
        .filter_map(|r| r.json())
        .find(|chat| {
            chat["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["role"] == "tool" && m["content"] == "sunny, 21 C")
        })
        .expect("the tool result reached the provider");
    let messages = tool_turn["messages"].as_array().unwrap();
    let asked = messages
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the assistant's call is in the conversation");
    assert_eq!(asked["tool_calls"][0]["id"], call_id);
    assert_eq!(asked["tool_calls"][0]["function"]["name"], "get_weather");
    let answered = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(answered["tool_call_id"], call_id);

    let records = recent_records(&proxy, 8).await;
    assert!(records.iter().all(|r| r["client_api"] == "responses"));
}

/// The real Codex CLI (`@openai/codex` from npm, under `target/`), headless (`codex exec`), with a
/// `model_providers` entry whose `base_url` is the proxy and `wire_api = "responses"`: its turn is answered
/// by the chat mock through the translation, recorded as a Responses request of Codex's session.
#[tokio::test]
async fn codex_exec_runs_a_turn_through_the_proxy_to_a_chat_provider() {
    let Some(codex) = tokio::task::spawn_blocking(common::codex_cli)
        .await
        .unwrap()
    else {
        return;
    };
    let (mock, proxy) = start().await;
    let home = tempfile::tempdir().unwrap();
    let config = format!(
        r#"model = "mock/model"
model_provider = "kimi-proxy"

[model_providers.kimi-proxy]
name = "kimi-proxy"
base_url = "{}"
wire_api = "responses"
env_key = "KIMI_PROXY_API_KEY"
"#,
        proxy.url("/v1")
    );
    std::fs::write(home.path().join("config.toml"), config).unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(&codex)
        .args(["exec", "--skip-git-repo-check", "Say hello."])
        .current_dir(work.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("CODEX_HOME", home.path())
        .env("KIMI_PROXY_API_KEY", "unused")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "codex exec failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("héllo 世界"), "{stdout}");

    let chat = last_chat_request(&mock);
    assert_eq!(chat["model"], "mock-model");
    assert_eq!(chat["stream"], true);
    // Codex may have a request of its own still in flight when it exits (cut, recorded as such): the turn is
    // the complete one.
    let records = recent_records(&proxy, 1).await;
    let turn = records
        .iter()
        .find(|r| r["error_kind"].is_null() && r["status"] == 200)
        .unwrap_or_else(|| panic!("no complete request: {records:?}"));
    assert_eq!(turn["client_api"], "responses");
    assert!(
        turn["client_app"].as_str().unwrap().starts_with("Codex"),
        "{turn}"
    );
    assert!(turn["client_session"].is_string(), "Codex's session-id");
    assert!(turn["completion_tokens"].as_u64().unwrap() > 0, "{turn}");
}

#[tokio::test]
async fn a_cached_chat_answer_is_translated_like_a_fresh_one() {
    let (mock, proxy) = start().await;
    let body = json!({"model": "mock/model", "input": "Say hello.", "temperature": 0});
    let cache_on = [("x-kimi-proxy-cache", "on")];
    let fresh: Value = create(&proxy, &body, &cache_on).await.json().await.unwrap();
    // The answer is cached when its record is finished.
    recent_records(&proxy, 1).await;
    let hit = create(&proxy, &body, &cache_on).await;
    assert_eq!(hit.headers()["x-kimi-proxy-cache"], "hit");
    let hit: Value = hit.json().await.unwrap();
    assert_eq!(hit["output"][0]["content"], fresh["output"][0]["content"]);
    assert_ne!(hit["id"], fresh["id"], "a Response of its own");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let replay = create(&proxy, &streamed, &cache_on).await;
    assert_eq!(replay.headers()["x-kimi-proxy-cache"], "hit");
    let (bytes, _) = common::read_body(replay).await;
    let events = common::sse_events(&bytes);
    assert_eq!(events.last().unwrap().0, "response.completed");
    assert_eq!(mock.requests().len(), 1, "both came from the cache");
}

/// What Codex sends beside the body (originator, session and thread ids, `x-codex-*`; the issue's capture of
/// Codex 0.171), and OpenAI-only headers.
const CODEX_HEADERS: [(&str, &str); 9] = [
    ("originator", "codex_exec"),
    ("session-id", "s-1"),
    ("thread-id", "t-1"),
    ("x-client-request-id", "r-1"),
    ("x-codex-turn-metadata", "{\"turn_id\":\"1\"}"),
    ("x-codex-window-id", "s-1:0"),
    ("openai-beta", "responses=experimental"),
    ("x-openai-subagent", "review"),
    ("chatgpt-account-id", "acct-1"),
];

#[tokio::test]
async fn codex_and_openai_only_headers_do_not_reach_a_chat_provider() {
    let (mock, proxy) = start().await;
    let mut headers = CODEX_HEADERS.to_vec();
    headers.push(("x-custom-keep", "1"));
    let body = json!({"model": "mock/model", "input": "hi"});
    assert_eq!(create(&proxy, &body, &headers).await.status(), 200);
    let sent = mock.last_request().unwrap();
    for (name, _) in CODEX_HEADERS {
        assert_eq!(sent.header(name), None, "{name} reached the chat provider");
    }
    assert_eq!(sent.header("x-custom-keep"), Some("1"));
    // The proxy still read the session from them.
    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["client_session"], "s-1");
}

/// A proxy whose only provider is a raw upstream answering every request with `answer`.
async fn start_raw(answer: &'static [u8]) -> (MockUpstream, Proxy) {
    let mock = MockUpstream::start().await.unwrap();
    let addr = common::raw_upstream(answer).await;
    let config = mock_config(&mock, "").replace(&mock.base_url(), &format!("http://{addr}/v1"));
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    (mock, proxy)
}

#[tokio::test]
async fn a_stream_the_translation_ends_with_response_failed_is_recorded_as_the_client_saw_it() {
    // A 200 chat stream that turns into an error event (as providers report trouble mid-stream) and ends: the
    // upstream's answer is whole, the client's Response failed.
    let (_mock, proxy) = start_raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
          data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
          data: {\"error\":{\"message\":\"overloaded mid-stream\",\"type\":\"server_error\",\"code\":\"overloaded\"}}\n\n",
    )
    .await;
    let body = json!({"model": "mock/model", "input": "hi", "stream": true});
    let response = create(&proxy, &body, &[]).await;
    assert_eq!(response.status(), 200);
    let (bytes, _) = common::read_body(response).await;
    let events = common::sse_events(&bytes);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.failed", "{events:?}");
    assert_eq!(data["response"]["status"], "failed");

    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["status"], 200, "{}", records[0]);
    assert_eq!(
        records[0]["error_kind"], "response_failed",
        "{}",
        records[0]
    );
}

#[tokio::test]
async fn a_json_answer_the_translation_refuses_is_recorded_with_the_status_the_client_got() {
    let (_mock, proxy) = start_raw(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 53\r\nconnection: close\r\n\r\n\
          {\"error\":{\"message\":\"quota exceeded\",\"code\":\"quota\"}}",
    )
    .await;
    let body = json!({"model": "mock/model", "input": "hi"});
    let response = create(&proxy, &body, &[]).await;
    assert_eq!(response.status(), 502);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "quota exceeded");

    let records = recent_records(&proxy, 1).await;
    assert_eq!(records[0]["status"], 502, "{}", records[0]);
    assert_eq!(
        records[0]["error_kind"], "translation_failed",
        "{}",
        records[0]
    );
}

#[tokio::test]
async fn a_models_capabilities_say_how_reasoning_effort_and_the_output_limit_are_sent() {
    let mock = MockUpstream::start().await.unwrap();
    let config = mock_config(
        &mock,
        r#"
[models."mock/reasoner"]
provider = "mock"
model = "mock-reasoner"
max_context_size = 100000
capabilities = ["tools", "reasoning_effort", "max_completion_tokens"]
"#,
    );
    let proxy = Proxy::start(&config, &[("MOCK_KEY", "k")]).await;
    let body = |model: &str| json!({"model": model, "input": "hi", "reasoning": {"effort": "high"}, "max_output_tokens": 64});
    assert_eq!(
        create(&proxy, &body("mock/reasoner"), &[]).await.status(),
        200
    );
    let chat = last_chat_request(&mock);
    assert_eq!(chat["reasoning_effort"], "high", "{chat}");
    assert_eq!(chat["max_completion_tokens"], 64, "{chat}");
    assert!(chat.get("max_tokens").is_none(), "{chat}");

    assert_eq!(create(&proxy, &body("mock/model"), &[]).await.status(), 200);
    let chat = last_chat_request(&mock);
    assert!(chat.get("reasoning_effort").is_none(), "{chat}");
    assert_eq!(chat["max_tokens"], 64, "{chat}");
}
