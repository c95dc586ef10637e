//! Responses ⇄ chat translation: Codex-shaped fixtures, exact expectations, a tool-call round trip, and
//! properties of the stream translator and of the tool-name map.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kimi_dialects::responses::{
    AnswerContext, ChatTarget, StreamTranslator, ToolNames, ToolRef, Translated, chat_to_response,
    items_to_store, previous_not_found, previous_response_id, request_to_chat, usage_from_event,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const CODEX_REQUEST: &str = include_str!("fixtures/responses/codex_request.json");
const KIMI_STREAM: &str = include_str!("fixtures/responses/kimi_stream.sse");

fn kimi() -> ChatTarget {
    ChatTarget {
        reasoning_effort: true,
        ..ChatTarget::new("kimi-k2-thinking")
    }
}

/// Translates `body` with fixed ids so answers compare exactly.
fn translate(body: &Value, previous: Option<&[Value]>) -> Translated {
    let mut t = request_to_chat(&serde_json::to_vec(body).unwrap(), &kimi(), previous).unwrap();
    t.answer.response_id = "resp_test".into();
    t.answer.created_at = 1_700_000_000;
    t
}

fn chat_body(t: &Translated) -> Value {
    serde_json::from_slice(&t.body).unwrap()
}

/// The `data:` payloads of a chat SSE text.
fn data_lines(sse: &str) -> Vec<&str> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect()
}

/// Parses Responses SSE bytes into `(event, data)` pairs, checking the `event:` line matches `data.type`.
fn parse_events(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).unwrap();
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut lines = block.lines();
        let event = lines.next().unwrap().strip_prefix("event: ").unwrap();
        let data: Value =
            serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert!(lines.next().is_none(), "one data line per event");
        assert_eq!(data["type"], event);
        events.push(data);
    }
    events
}

fn run_stream(
    ctx: AnswerContext,
    payloads: &[&str],
    finish: bool,
) -> (Vec<Value>, StreamTranslator) {
    let mut translator = StreamTranslator::new(ctx);
    let mut out = Vec::new();
    for p in payloads {
        translator.push(p.as_bytes(), &mut out);
    }
    if finish {
        translator.finish(&mut out);
    }
    (parse_events(&out), translator)
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

// ------------------------------------------------------------------------------------------ requests

#[test]
fn codex_request_becomes_a_chat_request() {
    let request: Value = serde_json::from_str(CODEX_REQUEST).unwrap();
    let t = translate(&request, None);
    let chat = chat_body(&t);

    assert_eq!(chat["model"], "kimi-k2-thinking");
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "system", "content": "You are Codex, a coding agent."},
            {"role": "system", "content": "<permissions instructions>sandbox: workspace-write</permissions instructions>"},
            {"role": "user", "content": "# AGENTS.md instructions for /repo\n\nRun cargo test.\n\n<environment_context>\n  <cwd>/repo</cwd>\n</environment_context>"},
            {"role": "user", "content": "Fix the failing test in src/lib.rs"},
        ])
    );
    let names: Vec<&str> = chat["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "shell",
            "apply_patch",
            "update_plan",
            "view_image",
            "list_mcp_resources",
            "read_mcp_resource",
            "write_stdin",
            "mcp__github__search_issues",
            "mcp__github__get_issue",
        ]
    );
    assert_eq!(
        chat["tools"][7],
        json!({"type": "function", "function": {
            "name": "mcp__github__search_issues",
            "description": "Search issues.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], "additionalProperties": false},
        }})
    );
    assert_eq!(chat["tool_choice"], "auto");
    assert_eq!(chat["parallel_tool_calls"], true);
    assert_eq!(chat["reasoning_effort"], "medium");
    assert_eq!(chat["stream"], true);
    assert_eq!(chat["stream_options"], json!({"include_usage": true}));
    for key in [
        "store",
        "include",
        "prompt_cache_key",
        "client_metadata",
        "instructions",
        "input",
        "reasoning",
        "metadata",
    ] {
        assert!(chat.get(key).is_none(), "{key} must not reach the provider");
    }
    let keys: Vec<&String> = chat.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "model",
            "messages",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "reasoning_effort",
            "stream",
            "stream_options"
        ]
    );

    assert!(t.stream);
    assert!(!t.store);
    assert!(
        t.conversation.is_empty(),
        "nothing is kept for store: false"
    );
    assert_eq!(t.include, ["reasoning.encrypted_content"]);
    assert_eq!(
        t.session_id.as_deref(),
        Some("0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
    );
    assert_eq!(t.client_metadata, Some(json!({"x-codex-turn": "1"})));
    assert_eq!(t.dropped.builtin_tools, 1);
    assert_eq!(t.dropped.total(), 1);
    assert_eq!(t.answer.model, "gpt-5-codex");
    assert_eq!(
        t.answer.tool_names.client("mcp__github__get_issue"),
        ToolRef {
            namespace: Some("mcp__github".into()),
            name: "get_issue".into()
        }
    );
}

#[test]
fn small_request_exact_chat_body() {
    let request = json!({
        "model": "gpt-4.1",
        "input": "Say hi",
        "max_output_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "text": {"format": {"type": "json_schema", "name": "greeting", "schema": {"type": "object"}, "strict": true}, "verbosity": "low"},
        "reasoning": {"effort": "high"},
        "metadata": {"k": "v"},
        "truncation": "auto",
    });
    let body = serde_json::to_vec(&request).unwrap();
    let t = request_to_chat(&body, &ChatTarget::new("deepseek-chat"), None).unwrap();
    assert_eq!(
        chat_body(&t),
        json!({
            "model": "deepseek-chat",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "response_format": {"type": "json_schema", "json_schema": {"name": "greeting", "schema": {"type": "object"}, "strict": true}},
            "user": "u-1",
        })
    );
    assert_eq!(
        t.dropped.params,
        ["text.verbosity", "reasoning.effort", "truncation"]
    );
    assert!(t.store, "store defaults to true");
    assert_eq!(
        t.conversation,
        [
            json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi"}]})
        ]
    );
    assert_eq!(t.metadata, Some(json!({"k": "v"})));
    assert!(t.answer.response_id.starts_with("resp_"));
    assert_eq!(t.answer.response_id.len(), 5 + 48);

    let target = ChatTarget {
        max_completion_tokens: true,
        json_schema: false,
        ..ChatTarget::new("o4-mini")
    };
    let t = request_to_chat(&body, &target, None).unwrap();
    let chat = chat_body(&t);
    assert_eq!(chat["max_completion_tokens"], 50);
    assert_eq!(chat["response_format"], json!({"type": "json_object"}));
}

#[test]
fn input_items_map_to_messages() {
    let request = json!({
        "model": "m",
        "input": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "input_text", "text": "what is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                {"type": "input_file", "file_id": "file-1"},
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}], "encrypted_content": "gAAAA"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_issue", "namespace": "mcp__github", "arguments": "{\"number\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "issue 1"}, {"type": "input_image", "image_url": "x"}]},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
            {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ],
        "tools": [{"type": "function", "name": "shell"}],
    });
    let t = translate(&request, None);
    assert_eq!(
        chat_body(&t)["messages"],
        json!([
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ]},
            {"role": "assistant", "content": "A cat.", "reasoning_content": "think", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "mcp__github__get_issue", "arguments": "{\"number\":1}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "tool", "tool_call_id": "c2", "content": "issue 1"},
            {"role": "assistant", "content": "No."},
        ])
    );
    assert_eq!(t.dropped.encrypted_reasoning, 1);
    assert_eq!(t.dropped.content_parts, 2);
    assert_eq!(t.dropped.items, 1);
}

#[test]
fn errors_are_openai_shaped() {
    let forced = json!({
        "model": "m", "input": "hi",
        "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
        "tool_choice": {"type": "web_search"},
    });
    let err = request_to_chat(&serde_json::to_vec(&forced).unwrap(), &kimi(), None).unwrap_err();
    assert_eq!(err.status, 400);
    let body: Value = serde_json::from_slice(&err.body()).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "tool_choice");
    assert_eq!(body["error"]["code"], "unsupported_tool_choice");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("web_search")
    );

    let unknown = json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}});
    let err = request_to_chat(&serde_json::to_vec(&unknown).unwrap(), &kimi(), None).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("tool_choice"));

    let bad = request_to_chat(b"{not json", &kimi(), None).unwrap_err();
    assert_eq!(bad.status, 400);

    let role = json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]});
    let err = request_to_chat(&serde_json::to_vec(&role).unwrap(), &kimi(), None).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("input[0].role"));

    let follow = json!({"model": "m", "input": "again", "previous_response_id": "resp_gone"});
    let bytes = serde_json::to_vec(&follow).unwrap();
    assert_eq!(previous_response_id(&bytes).as_deref(), Some("resp_gone"));
    let err = request_to_chat(&bytes, &kimi(), None).unwrap_err();
    assert_eq!(err.status, 404);
    let (status, body) = previous_not_found("resp_gone");
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"error": {
            "message": "Previous response with id 'resp_gone' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }})
    );
    assert_eq!(err.body(), body);
}

// -------------------------------------------------------------------------------------- JSON answers

#[test]
fn chat_answer_becomes_a_response() {
    let request: Value = serde_json::from_str(CODEX_REQUEST).unwrap();
    let t = translate(&request, None);
    let chat = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "kimi-k2-thinking",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Looking.", "reasoning_content": "Need the file.",
            "tool_calls": [{"id": "functions.mcp__github__search_issues:0", "type": "function",
                "function": {"name": "mcp__github__search_issues", "arguments": "{\"query\":\"bug\"}"}}],
        }}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 7}},
    });
    let response = chat_to_response(&serde_json::to_vec(&chat).unwrap(), &t.answer).unwrap();
    assert_eq!(response["id"], "resp_test");
    assert_eq!(response["object"], "response");
    assert_eq!(response["created_at"], 1_700_000_000);
    assert_eq!(response["status"], "completed");
    assert_eq!(response["model"], "gpt-5-codex");
    assert_eq!(response["error"], Value::Null);
    assert_eq!(response["incomplete_details"], Value::Null);
    assert_eq!(
        response["output"],
        json!([
            {"id": "rs_test_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Need the file."}]},
            {"id": "msg_test_1", "type": "message", "status": "completed",
             "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Looking."}], "role": "assistant"},
            {"id": "fc_test_2", "type": "function_call", "status": "completed", "arguments": "{\"query\":\"bug\"}",
             "call_id": "functions.mcp__github__search_issues:0", "name": "search_issues", "namespace": "mcp__github"},
        ])
    );
    assert_eq!(
        response["usage"],
        json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
               "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 7}, "total_tokens": 120})
    );
    // Echoed request parameters.
    assert_eq!(response["instructions"], "You are Codex, a coding agent.");
    assert_eq!(response["tools"], request["tools"]);
    assert_eq!(response["tool_choice"], "auto");
    assert_eq!(response["parallel_tool_calls"], true);
    assert_eq!(
        response["reasoning"],
        json!({"effort": "medium", "summary": "auto"})
    );
    assert_eq!(response["store"], false);
    assert_eq!(response["text"], json!({"format": {"type": "text"}}));
    assert_eq!(response["metadata"], json!({}));
    assert_eq!(response["prompt_cache_key"], request["prompt_cache_key"]);
    if let Some(dir) = std::env::var_os("KIMI_DIALECTS_DUMP") {
        let path = std::path::Path::new(&dir).join("chat_response.json");
        std::fs::write(path, serde_json::to_vec(&response).unwrap()).unwrap();
    }
    let usage = usage_from_event(&serde_json::to_vec(&response).unwrap()).unwrap();
    assert_eq!(
        (
            usage.input_tokens,
            usage.cached_tokens,
            usage.reasoning_tokens
        ),
        (100, 64, 7)
    );
}

#[test]
fn length_and_content_filter_are_incomplete() {
    let t = translate(
        &json!({"model": "m", "input": "x", "max_output_tokens": 5}),
        None,
    );
    for (reason, detail) in [
        ("length", "max_output_tokens"),
        ("content_filter", "content_filter"),
    ] {
        let chat = json!({"choices": [{"index": 0, "finish_reason": reason, "message": {"role": "assistant", "content": "abc"}}]});
        let r = chat_to_response(&serde_json::to_vec(&chat).unwrap(), &t.answer).unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"], json!({"reason": detail}));
        assert_eq!(r["output"][0]["status"], "incomplete");
        assert_eq!(r["max_output_tokens"], 5);
        assert_eq!(r["usage"], Value::Null);
    }
    let err =
        chat_to_response(br#"{"error":{"message":"boom","code":"x"}}"#, &t.answer).unwrap_err();
    assert_eq!(err.status, 502);
}

// ------------------------------------------------------------------------------------------- streams

#[test]
fn kimi_stream_becomes_responses_events() {
    let request: Value = serde_json::from_str(CODEX_REQUEST).unwrap();
    let t = translate(&request, None);
    let (events, translator) = run_stream(t.answer.clone(), &data_lines(KIMI_STREAM), true);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.delta",
            "response.reasoning_summary_text.done",
            "response.reasoning_summary_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
    }
    assert_eq!(events[0]["response"]["status"], "in_progress");
    assert_eq!(events[0]["response"]["output"], json!([]));
    assert_eq!(
        events[4],
        json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 4, "item_id": "rs_test_0",
               "output_index": 0, "summary_index": 0, "delta": "The test fails "})
    );
    assert_eq!(
        events[8]["item"],
        json!({"id": "rs_test_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "The test fails because of an off-by-one."}]})
    );
    assert_eq!(
        events[11],
        json!({"type": "response.output_text.delta", "sequence_number": 11, "item_id": "msg_test_1",
               "output_index": 1, "content_index": 0, "delta": "Let me look ", "logprobs": []})
    );
    assert_eq!(events[13]["text"], "Let me look at the file.");
    assert_eq!(
        events[16]["item"],
        json!({"id": "fc_test_2", "type": "function_call", "status": "in_progress", "arguments": "",
               "call_id": "functions.shell:0", "name": "shell"})
    );
    assert_eq!(
        events[21],
        json!({"type": "response.function_call_arguments.done", "sequence_number": 21, "item_id": "fc_test_2",
               "output_index": 2, "name": "shell", "arguments": "{\"command\":[\"cat\",\"src/lib.rs\"]}"})
    );
    assert_eq!(
        events[24]["item"],
        json!({"id": "fc_test_3", "type": "function_call", "status": "completed",
               "arguments": "{\"query\":\"off-by-one\"}", "call_id": "functions.mcp__github__search_issues:1",
               "name": "search_issues", "namespace": "mcp__github"})
    );
    let completed = &events[25]["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"].as_array().unwrap().len(), 4);
    assert_eq!(
        completed["usage"],
        json!({"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 0},
               "output_tokens": 85, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1285})
    );
    assert_eq!(translator.final_response(), Some(completed));
    assert_eq!(translator.usage().unwrap().cached_tokens, 1024);
    // For checking by hand with the OpenAI SDK: `KIMI_DIALECTS_DUMP=/dir cargo test -p kimi-dialects`.
    if let Some(dir) = std::env::var_os("KIMI_DIALECTS_DUMP") {
        let mut translator = StreamTranslator::new(t.answer.clone());
        let mut out = Vec::new();
        for p in data_lines(KIMI_STREAM) {
            translator.push(p.as_bytes(), &mut out);
        }
        std::fs::write(std::path::Path::new(&dir).join("kimi_responses.sse"), out).unwrap();
    }
    let raw_completed = serde_json::to_vec(&events[25]).unwrap();
    assert_eq!(usage_from_event(&raw_completed).unwrap().input_tokens, 1200);
}

#[test]
fn stream_ends_length_error_and_cut() {
    let t = translate(&json!({"model": "m", "input": "x"}), None);
    let text = r#"{"choices":[{"index":0,"delta":{"content":"abc"},"finish_reason":null}]}"#;
    let length = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;

    let (events, _) = run_stream(t.answer.clone(), &[text, length, "[DONE]"], true);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");

    // No [DONE] but a finish_reason: completes.
    let (events, _) = run_stream(
        t.answer.clone(),
        &[
            text,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ],
        true,
    );
    assert_eq!(events.last().unwrap()["type"], "response.completed");

    // Cut mid-answer: failed, and the open item is still closed.
    let (events, _) = run_stream(t.answer.clone(), &[text], true);
    assert_eq!(
        types(&events)[events.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.failed",
        ]
    );
    let failed = events.last().unwrap();
    assert_eq!(failed["type"], "response.failed");
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "server_error");

    // An upstream error object inside the stream.
    let error = r#"{"error":{"message":"Your request exceeded model token limit: 262144","type":"invalid_request_error"}}"#;
    let (events, _) = run_stream(t.answer.clone(), &[text, error, "[DONE]"], true);
    let failed = events.last().unwrap();
    assert_eq!(failed["type"], "response.failed");
    assert_eq!(
        failed["response"]["error"],
        json!({"code": "context_length_exceeded", "message": "Your request exceeded model token limit: 262144"})
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "response.failed")
            .count(),
        1
    );

    // Nothing at all: created, in_progress, failed.
    let (events, _) = run_stream(t.answer.clone(), &[], true);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
}

// -------------------------------------------------------------------------------------- round trips

#[test]
fn tool_call_round_trip_with_previous_response_id() {
    // Turn 1: stored, the model calls a namespaced tool.
    let first = json!({
        "model": "gpt-5", "instructions": "Be brief.", "input": "Find the bug issue",
        "tools": [{"type": "namespace", "name": "mcp__github", "description": "GitHub", "tools": [
            {"type": "function", "name": "search_issues", "parameters": {"type": "object", "properties": {}}}]}],
    });
    let t1 = translate(&first, None);
    let chat = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": null, "reasoning_content": "Search first.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "mcp__github__search_issues", "arguments": "{}"}}]}}]});
    let r1 = chat_to_response(&serde_json::to_vec(&chat).unwrap(), &t1.answer).unwrap();
    let call = &r1["output"][1];
    assert_eq!(call["name"], "search_issues");
    assert_eq!(call["namespace"], "mcp__github");
    let stored = items_to_store(&t1, &r1);
    assert_eq!(stored.len(), 3, "user message, reasoning, function_call");

    // Turn 2: the client answers the call, naming turn 1.
    let second = json!({
        "model": "gpt-5", "instructions": "Be brief.", "previous_response_id": "resp_test",
        "input": [{"type": "function_call_output", "call_id": "call_1", "output": "[#7 off-by-one]"}],
        "tools": first["tools"],
    });
    let t2 = translate(&second, Some(&stored));
    assert_eq!(
        chat_body(&t2)["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Find the bug issue"},
            {"role": "assistant", "content": null, "reasoning_content": "Search first.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "mcp__github__search_issues", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "[#7 off-by-one]"},
        ])
    );
    assert_eq!(t2.previous_response_id.as_deref(), Some("resp_test"));
    assert_eq!(t2.conversation.len(), 4);

    // Stateless (Codex, store: false): the same history sent in full gives the same messages.
    let mut history = stored.clone();
    history.push(second["input"][0].clone());
    let stateless = json!({"model": "gpt-5", "instructions": "Be brief.", "input": history, "tools": first["tools"], "store": false});
    let t3 = translate(&stateless, None);
    assert_eq!(chat_body(&t3)["messages"], chat_body(&t2)["messages"]);
}

#[test]
fn streamed_final_response_is_storable() {
    let t = translate(&json!({"model": "m", "input": "hi"}), None);
    let (_, translator) = run_stream(t.answer.clone(), &data_lines(KIMI_STREAM), false);
    let stored = items_to_store(&t, translator.final_response().unwrap());
    assert_eq!(stored.len(), 1 + 4);
    let follow = json!({"model": "m", "input": [
        {"type": "function_call_output", "call_id": "functions.shell:0", "output": "fn main() {}"},
        {"type": "function_call_output", "call_id": "functions.mcp__github__search_issues:1", "output": "none"}],
        "previous_response_id": "resp_test"});
    let t2 = translate(&follow, Some(&stored));
    let messages = chat_body(&t2)["messages"].clone();
    assert_eq!(
        messages[1]["reasoning_content"],
        "The test fails because of an off-by-one."
    );
    assert_eq!(messages[1]["content"], "Let me look at the file.");
    assert_eq!(
        messages[1]["tool_calls"][1]["function"]["name"],
        "mcp__github__search_issues"
    );
    assert_eq!(
        messages[3]["tool_call_id"],
        "functions.mcp__github__search_issues:1"
    );
}

// -------------------------------------------------------------------------------------- properties

/// One piece of a generated chat answer.
#[derive(Clone, Debug)]
enum Piece {
    Reasoning(String),
    Text(String),
    /// A tool call: chat index, name, arguments.
    Call(u8, String, String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        "[a-z é世]{1,12}".prop_map(Piece::Reasoning),
        "[a-z é世\"\\\\]{1,12}".prop_map(Piece::Text),
        (0u8..3, "[a-z]{1,6}", "[a-z{}\":]{0,12}").prop_map(|(i, n, a)| Piece::Call(i, n, a)),
    ]
}

/// Chat chunks for `pieces`, each text split at the given cut points.
fn chunks(pieces: &[Piece], cuts: &[usize], finish: &str, usage: bool) -> Vec<String> {
    let mut out = vec![
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            .to_string(),
    ];
    let mut cut = cuts.iter().cycle();
    let mut started: Vec<u8> = Vec::new();
    let split = |s: &str, n: usize| -> Vec<String> {
        let chars: Vec<char> = s.chars().collect();
        let n = n.clamp(1, chars.len().max(1));
        chars.chunks(n).map(|c| c.iter().collect()).collect()
    };
    for p in pieces {
        let n = *cut.next().unwrap_or(&1);
        match p {
            Piece::Reasoning(s) => {
                for part in split(s, n) {
                    out.push(
                        json!({"choices": [{"index": 0, "delta": {"reasoning_content": part}}]})
                            .to_string(),
                    );
                }
            }
            Piece::Text(s) => {
                for part in split(s, n) {
                    out.push(
                        json!({"choices": [{"index": 0, "delta": {"content": part}}]}).to_string(),
                    );
                }
            }
            Piece::Call(i, name, args) => {
                if !started.contains(i) {
                    started.push(*i);
                    out.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                        {"index": i, "id": format!("call_{i}"), "type": "function", "function": {"name": name, "arguments": ""}}]}}]}).to_string());
                }
                for part in split(args, n) {
                    out.push(
                        json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                        {"index": i, "function": {"arguments": part}}]}}]})
                        .to_string(),
                    );
                }
            }
        }
    }
    out.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}).to_string());
    if usage {
        out.push(json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).to_string());
    }
    out
}

/// The events with consecutive deltas of one item merged and sequence numbers removed: what must not
/// depend on how the upstream chunked its text.
fn merged(events: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for e in events {
        let mut e = e.clone();
        e.as_object_mut().unwrap().remove("sequence_number");
        let is_delta = e["type"].as_str().unwrap().ends_with(".delta");
        if is_delta
            && let Some(prev) = out.last_mut()
            && prev["type"] == e["type"]
            && prev["item_id"] == e["item_id"]
        {
            let joined = format!(
                "{}{}",
                prev["delta"].as_str().unwrap(),
                e["delta"].as_str().unwrap()
            );
            prev["delta"] = Value::String(joined);
            continue;
        }
        out.push(e);
    }
    out
}

/// Structural checks every produced stream must pass.
fn assert_well_formed(events: &[Value]) {
    assert!(events.len() >= 3);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["sequence_number"].as_u64(),
            Some(i as u64),
            "consecutive sequence numbers"
        );
    }
    assert_eq!(events[0]["type"], "response.created");
    assert_eq!(events[1]["type"], "response.in_progress");
    let terminal = [
        "response.completed",
        "response.incomplete",
        "response.failed",
    ];
    let last = events.last().unwrap()["type"].as_str().unwrap();
    assert!(terminal.contains(&last), "{last}");
    assert_eq!(
        events
            .iter()
            .filter(|e| terminal.contains(&e["type"].as_str().unwrap()))
            .count(),
        1
    );
    let mut open: Vec<(u64, String)> = Vec::new();
    let mut next_index = 0u64;
    let mut done = 0usize;
    for e in events {
        match e["type"].as_str().unwrap() {
            "response.output_item.added" => {
                let index = e["output_index"].as_u64().unwrap();
                assert_eq!(index, next_index, "output indexes are handed out in order");
                next_index += 1;
                open.push((index, e["item"]["id"].as_str().unwrap().to_owned()));
            }
            "response.output_item.done" => {
                let key = (
                    e["output_index"].as_u64().unwrap(),
                    e["item"]["id"].as_str().unwrap().to_owned(),
                );
                let at = open
                    .iter()
                    .position(|o| *o == key)
                    .expect("done for an added item");
                open.remove(at);
                done += 1;
            }
            kind if kind.contains(".delta")
                || kind.ends_with(".done") && kind != "response.output_item.done" =>
            {
                let key = (
                    e["output_index"].as_u64().unwrap(),
                    e["item_id"].as_str().unwrap().to_owned(),
                );
                assert!(open.contains(&key), "{kind} for an open item");
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "every added item is done: {open:?}");
    let final_output = events.last().unwrap()["response"]["output"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(final_output, done);
}

fn feed(ctx: &AnswerContext, payloads: &[String], done: bool) -> Vec<Value> {
    let mut translator = StreamTranslator::new(ctx.clone());
    let mut out = Vec::new();
    for p in payloads {
        translator.push(p.as_bytes(), &mut out);
    }
    if done {
        translator.push(b"[DONE]", &mut out);
    }
    translator.finish(&mut out);
    parse_events(&out)
}

fn context() -> AnswerContext {
    let mut t = translate(&json!({"model": "m", "input": "x"}), None);
    t.answer.response_id = "resp_p".into();
    t.answer
}

proptest! {
    #[test]
    fn chunking_does_not_change_the_events(
        pieces in prop::collection::vec(piece(), 0..8),
        cuts_a in prop::collection::vec(1usize..6, 1..8),
        cuts_b in prop::collection::vec(1usize..6, 1..8),
        finish in prop_oneof![Just("stop"), Just("tool_calls"), Just("length")],
        usage: bool,
    ) {
        let ctx = context();
        let a = feed(&ctx, &chunks(&pieces, &cuts_a, finish, usage), true);
        let b = feed(&ctx, &chunks(&pieces, &cuts_b, finish, usage), true);
        let whole = feed(&ctx, &chunks(&pieces, &[usize::MAX], finish, usage), true);
        prop_assert_eq!(merged(&a), merged(&whole));
        prop_assert_eq!(merged(&b), merged(&whole));
        assert_well_formed(&a);
    }

    #[test]
    fn streams_are_well_formed(
        pieces in prop::collection::vec(piece(), 0..10),
        cuts in prop::collection::vec(1usize..4, 1..4),
        keep in 0usize..40,
        done: bool,
        error: bool,
    ) {
        let ctx = context();
        let mut payloads = chunks(&pieces, &cuts, "stop", true);
        payloads.truncate(keep);
        if error {
            payloads.push(r#"{"error":{"message":"overloaded","type":"server_error"}}"#.into());
        }
        assert_well_formed(&feed(&ctx, &payloads, done));
    }

    #[test]
    fn flattened_names_map_back(
        tools in prop::collection::vec(
            (prop::option::of("[a-zA-Z0-9_.:/ -]{0,40}"), "[a-zA-Z0-9_.:/ -]{1,70}"), 1..30),
    ) {
        let mut names = ToolNames::new();
        let mut seen = std::collections::HashMap::new();
        for (ns, name) in &tools {
            let chat = names.insert(ns.as_deref(), name);
            prop_assert!(!chat.is_empty() && chat.len() <= 64, "{}", chat);
            prop_assert!(chat.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{}", chat);
            let back = names.client(&chat);
            prop_assert_eq!(back.namespace.as_deref(), ns.as_deref());
            prop_assert_eq!(&back.name, name);
            if let Some(previous) = seen.insert(chat.clone(), (ns.clone(), name.clone())) {
                prop_assert_eq!(previous, (ns.clone(), name.clone()), "one chat name, one tool");
            }
            prop_assert_eq!(names.chat_name(ns.as_deref(), name), Some(chat.as_str()));
        }
    }
}
